"""Star tables to and from the page's compact JSON form (``columns`` + ``rows``)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from astropy.table import Table
from fastapi import HTTPException

from psfkit.flags import decode_flags

__all__ = ["table_to_rows", "rows_to_table", "parse_bool", "missing_for_format", "DERIVED_COLUMNS", "FORMAT_COLUMNS"]

#: Columns the page gets for reading only; they are not part of a star list.
DERIVED_COLUMNS = ("flag_names",)
_INT_COLUMNS = {"id", "flags", "iterations", "n_pixels_fit", "channel"}
_COLUMN = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")
_TRUE = frozenset({"true", "t", "yes", "y", "1", "on"})
_FALSE = frozenset({"false", "f", "no", "n", "0", "off", ""})

#: Columns each export format cannot do without (the others are optional: written as blanks or defaults).
#: Siril's .lst lists stars brightest first (``flux_fit``); a DS9 region is an ellipse of the FWHM axes at the angle.
FORMAT_COLUMNS = {
    "lst": ("x_fit", "y_fit", "flux_fit"),
    "reg": ("x_fit", "y_fit", "fwhm_x", "fwhm_y", "angle"),
    "csv": ("x_fit", "y_fit"),
    "ecsv": ("x_fit", "y_fit"),
    "fits": ("x_fit", "y_fit"),
}


def parse_bool(value: Any, *, name: str = "value") -> bool:
    """A yes/no value from JSON or text: true/false, yes/no, y/n, on/off, 1/0 (any case), or a JSON boolean.

    ``None`` is False.  Anything else is refused (HTTP 400) rather than guessed: ``bool("no")`` is True
    in Python, which is how a rejected star once became accepted in an export.

    Examples
    --------
    >>> [parse_bool(v) for v in (True, "no", "False", "0", 1, "yes", None)]
    [True, False, False, False, True, True, False]
    """
    if value is None:
        return False
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise HTTPException(400, f"{name}: {str(value)[:40]!r} is not a yes/no value (true/false, yes/no, 1/0)")


def missing_for_format(columns: Sequence[str], fmt: str) -> list[str]:
    """The columns an export in format ``fmt`` needs that ``columns`` lacks.

    Examples
    --------
    >>> missing_for_format(["x_fit", "y_fit"], "reg")
    ['fwhm_x', 'fwhm_y', 'angle']
    """
    needed = list(FORMAT_COLUMNS.get(fmt, ()))
    if fmt == "reg" and "accepted" in columns:  # rejected candidates are labelled with their reason
        needed.append("reject_reason")
    return [c for c in needed if c not in columns]


def _json_column(values: np.ndarray) -> list[Any]:
    """A column as a list of Python values, NaN and infinities as None (JSON null)."""
    out = values.tolist()
    if values.dtype.kind == "f":
        bad = ~np.isfinite(values)
        if bad.any():
            for k in np.flatnonzero(bad):
                out[k] = None
    return out


def table_to_rows(table: Table) -> dict[str, Any]:
    """``{"columns": [...], "rows": [[...], ...]}`` with JSON-ready values (NaN and inf -> None).

    Column by column (vectorised), so a table of thousands of stars converts in milliseconds.
    """
    cols = [c for c in table.colnames if table[c].ndim == 1]
    lists = [_json_column(np.asarray(table[c])) for c in cols]
    if "flags" in cols:
        names = {int(v): ",".join(decode_flags(int(v))) for v in np.unique(np.asarray(table["flags"]))}
        lists.append([names[int(v)] for v in np.asarray(table["flags"])])
        cols = cols + ["flag_names"]
    rows = [list(r) for r in zip(*lists)] if len(table) else []
    return {"columns": cols, "rows": rows}


def rows_to_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    """A star table from the page's rows; every name and value checked (400 on a bad one)."""
    if len(set(columns)) != len(columns):
        raise HTTPException(400, "columns: a name appears twice")
    for c in columns:
        if not _COLUMN.match(c):
            raise HTTPException(400, f"columns: {c[:40]!r} is not a column name")
    for needed in ("x_fit", "y_fit"):
        if needed not in columns:
            raise HTTPException(400, f"columns: {needed} is missing")
    n = len(columns)
    for k, r in enumerate(rows):
        if len(r) != n:
            raise HTTPException(400, f"rows[{k}]: {len(r)} values for {n} columns")
    table = Table()
    for j, name in enumerate(columns):
        if name in DERIVED_COLUMNS:
            continue
        values = [r[j] for r in rows]
        kinds = {type(v) for v in values if v is not None}
        if name == "accepted" or kinds == {bool}:
            table[name] = np.array([parse_bool(v, name=name) for v in values], dtype=bool)
        elif kinds <= {int, float, bool}:
            arr = np.array([math.nan if v is None else float(v) for v in values], dtype=float)
            if name in _INT_COLUMNS:
                arr = np.where(np.isfinite(arr), arr, 0).astype(np.int64)
            table[name] = arr
        elif kinds <= {str}:
            if any(len(v) > 200 for v in values if v is not None):
                raise HTTPException(400, f"{name}: text values are limited to 200 characters")
            table[name] = np.array(["" if v is None else v for v in values], dtype=str)
        else:
            raise HTTPException(400, f"{name}: mixes numbers and text")
    for name in ("x_fit", "y_fit"):
        if len(table) and not np.all(np.isfinite(table[name])):
            raise HTTPException(400, f"{name}: every star needs a finite position")
    return table
