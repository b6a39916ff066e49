"""The star list: averages and exports (Siril .lst, CSV, ECSV, FITS, DS9 regions).

Coordinates inside psfkit are 0-based pixel centres (x = column, y = row).
They are converted only here, at the file boundary:

- DS9 regions (``.reg``): 1-based ``image`` coordinates (pixel centre of the first pixel = 1, 1).
- Siril star lists (``.lst``): Siril 1.2 writes positions with the origin at the
  top-left corner of the first pixel and pixel centres at index + 0.5, y down;
  for a frame stored bottom-up (FITS default) row index i is displayed as row ny-1-i.
  So x_siril = x + 0.5 and y_siril = (ny - 1 - y) + 0.5 for bottom-up frames,
  y + 0.5 for top-down ones (ROWORDER = TOP-DOWN).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table

from psfkit import flags as F
from psfkit.errors import PsfkitError
from psfkit.io.outputs import atomic_output, remember_input
from psfkit.utils import robust_sigma

__all__ = ["average", "write_star_list", "read_star_list", "siril_parameters", "nan_meanings", "STAR_LIST_FORMATS",
           "LST_DEFAULTS", "NAN_MEANS"]

STAR_LIST_FORMATS = (".csv", ".ecsv", ".fits", ".fit", ".lst", ".reg")

#: What a NaN means in each column (docs/columns.md); written into ECSV and FITS star lists
#: (``meta["nan_means"]``; FITS keywords ``NAN_MEANS_<COLUMN>``).  Short: a FITS value holds 60 characters.
NAN_MEANS = {
    "beta": "not applicable: the model has no beta (not a Moffat)",
    "beta_err": "not applicable: the model has no beta, or beta was fixed",
    "angle_err": "not applicable: the angle was not fitted",
    "mag": "not applicable: flux_fit <= 0 (flag flux_not_positive)",
    "mag_err": "not applicable: flux_fit <= 0 (flag flux_not_positive)",
    "snr": "undefined: flux_err is 0 or undefined",
    "mag_aper": "not applicable: flux_aper <= 0 (phot_flags bit 8)",
    "mag_aper_err": "not applicable: flux_aper <= 0 (phot_flags bit 8)",
    "snr_aper": "undefined: flux_aper_err is 0 or undefined",
    "flux_aper_err": "undefined: too few sky pixels (phot_flags bit 4)",
    "sky": "undefined: fewer than 5 sky pixels (phot_flags bit 4)",
    "flux_aper_total": "not applicable: no aperture correction could be made",
    "flux_aper_total_err": "not applicable: no aperture correction could be made",
    "flux_ratio": "not applicable: no PSF flux or no aperture correction",
    "flux_ratio_err": "not applicable: no PSF flux or no aperture correction",
}
_ERR_NAN = "undefined: singular covariance (flag singular_covariance)"


def nan_meanings(colnames: Any) -> dict[str, str]:
    """What a NaN means in each of these columns (those where it can mean something particular).

    Examples
    --------
    >>> nan_meanings(["x_fit", "x_err", "beta"])["beta"]
    'not applicable: the model has no beta (not a Moffat)'
    >>> nan_meanings(["x_fit", "x_err"])["x_err"]
    'undefined: singular covariance (flag singular_covariance)'
    """
    out = {}
    for name in colnames:
        if name in NAN_MEANS:
            out[name] = NAN_MEANS[name]
        elif name.endswith("_err"):
            out[name] = _ERR_NAN
    return out

_AVERAGE_COLUMNS = ["background", "amplitude", "fwhm_x", "fwhm_y", "fwhm", "fwhm_x_arcsec", "fwhm_y_arcsec",
                    "fwhm_arcsec", "roundness", "angle", "beta", "rmse", "snr", "flux_fit", "mag"]
_SHAPE_COLUMNS = {"fwhm_x", "fwhm_y", "fwhm", "fwhm_x_arcsec", "fwhm_y_arcsec", "fwhm_arcsec", "roundness",
                  "angle", "beta", "amplitude"}


def average(table: Table) -> dict[str, Any]:
    """Mean, median and robust scatter of the main columns of a star list.

    Saturated stars (flag bit ``saturated``) are left out of the shape
    statistics (FWHM, roundness, angle, beta, amplitude).  The angle uses the
    axial (doubled-angle) mean.  ``snr_weighted_mean`` weights by SNR^2; it is NaN when the
    list has no ``snr`` column (Siril .lst and DS9 .reg files do not carry one), never the plain
    mean under another name; ``meta`` then says why (``out["snr_weighted"]``).

    Returns
    -------
    dict
        ``{"n_stars": N, "n_used_shape": M, "snr_weighted": note, column: {"mean", "median",
        "std_robust", "snr_weighted_mean", "n"}}``.

    Examples
    --------
    >>> from astropy.table import Table
    >>> avg = average(Table({"fwhm": [3.0, 3.2, 3.4], "snr": [10.0, 20.0, 40.0]}))
    >>> round(avg["fwhm"]["snr_weighted_mean"], 4)
    3.3429
    >>> average(Table({"fwhm": [3.0, 3.2]}))["fwhm"]["snr_weighted_mean"]
    nan
    """
    if "accepted" in table.colnames:
        table = table[np.asarray(table["accepted"], dtype=bool)]
    n = len(table)
    out: dict[str, Any] = {"n_stars": int(n)}
    if n == 0:
        out["n_used_shape"] = 0
        return out
    flags = np.asarray(table["flags"]) if "flags" in table.colnames else np.zeros(n, dtype=int)
    unsat = (flags & F.SATURATED) == 0
    out["n_used_shape"] = int(unsat.sum())
    has_snr = "snr" in table.colnames
    snr = np.asarray(table["snr"], dtype=float) if has_snr else np.full(n, np.nan)
    out["snr_weighted"] = "weights SNR^2" if has_snr else "no snr column in this list: no SNR-weighted mean"
    for name in _AVERAGE_COLUMNS:
        if name not in table.colnames:
            continue
        v = np.asarray(table[name], dtype=float)
        sel = np.isfinite(v) & (unsat if name in _SHAPE_COLUMNS else True)
        if not sel.any():
            continue
        x = v[sel]
        w = np.nan_to_num(snr[sel], nan=0.0) ** 2
        if name == "angle":
            z = np.exp(2j * np.radians(x))
            # rounded to 1e-9 deg: an unfitted angle (all 0) averages to 0, not to -1e-15
            mean = round(float(np.degrees(np.angle(z.mean()) / 2)), 9) + 0.0
            wmean = round(float(np.degrees(np.angle((w * z).sum()) / 2)), 9) + 0.0 if w.sum() > 0 else math.nan
            med = float(np.median(x))
        else:
            mean = float(np.mean(x))
            wmean = float(np.sum(w * x) / w.sum()) if w.sum() > 0 else math.nan
            med = float(np.median(x))
        mad = robust_sigma(x)
        out[name] = {"mean": mean, "median": med, "std_robust": mad, "snr_weighted_mean": wmean, "n": int(sel.sum())}
    return out


def _ny(table: Table, image_shape: tuple[int, int] | None) -> int | None:
    if image_shape is not None:
        return int(image_shape[0])
    shape = table.meta.get("image_shape")
    return int(shape[0]) if shape else None


def write_star_list(table: Table, path: str | os.PathLike, *, image_shape: tuple[int, int] | None = None,
                    overwrite: bool = True, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Write a star list; the format follows the suffix (.csv .ecsv .fits .lst .reg).

    The file is written to a temporary name and renamed, so a failure leaves no half file; a
    path that is one of ``inputs`` (or any file this process read) is refused
    (:func:`psfkit.io.outputs.atomic_output`).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import psfkit
    >>> stars = psfkit.find_stars(psfkit.load_image(psfkit.sample_image_path()))
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = psfkit.write_star_list(stars, Path(folder) / "stars.ecsv")
    ...     back = psfkit.read_star_list(path)
    >>> len(back) == len(stars)
    True
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in STAR_LIST_FORMATS:
        raise PsfkitError(f"{p}: unknown star-list format {suffix!r}; use one of {', '.join(STAR_LIST_FORMATS)}")
    if not p.parent.exists():
        raise PsfkitError(f"{p.parent}: no such folder")
    if p.exists() and not overwrite:
        raise PsfkitError(f"{p}: exists")
    with atomic_output(p, inputs=inputs) as tmp:
        if suffix == ".csv":
            _write_csv(table, tmp)
        elif suffix == ".ecsv":
            t = table.copy()
            t.meta = _yaml_safe({**t.meta, "nan_means": nan_meanings(t.colnames)})
            t.write(tmp, format="ascii.ecsv", overwrite=True)
        elif suffix in (".fits", ".fit"):
            t = _plain(table)
            for key, value in _flat_meta({**table.meta, "nan_means": nan_meanings(table.colnames)}).items():
                t.meta[key[:60]] = value
            import warnings

            from astropy.io.fits.verify import VerifyWarning

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", VerifyWarning)
                t.write(tmp, format="fits", overwrite=True)
        elif suffix == ".lst":
            tmp.write_text(_siril_lst(table, _ny(table, image_shape)))
        elif suffix == ".reg":
            tmp.write_text(_ds9_regions(table))
    return p


def _csv_fields(column: Any) -> list[str] | None:
    """One column's CSV fields as astropy's ``ascii.csv`` writer gives them (floats as Python's
    repr of their double value, integers, True/False, text stripped), or None for a column it
    does not cover (several values per row, bytes, objects).
    """
    values = np.asarray(column)
    kind = values.dtype.kind
    if values.ndim != 1:
        return None
    if kind == "f" and values.dtype.itemsize <= 8:
        return [repr(v) for v in values.astype(float).tolist()]
    if kind in "iu":
        return [str(v) for v in values.tolist()]
    if kind == "b":
        return ["True" if v else "False" for v in values.tolist()]
    if kind == "U":
        return [v.strip() for v in values.tolist()]
    return None


def _write_csv(table: Table, path: Path) -> None:
    """The star list as CSV: the text astropy's ``ascii.csv`` writer gives (tests compare the two),
    written with the csv module (several times faster on a frame's thousands of stars).
    """
    import csv

    columns = [_csv_fields(table[name]) for name in table.colnames]
    if any(c is None for c in columns):
        _plain(table).write(path, format="ascii.csv", overwrite=True)
        return
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(table.colnames)
        out.writerows(zip(*columns))


def _plain(table: Table) -> Table:
    t = Table()
    for name in table.colnames:
        col = table[name]
        t[name] = np.asarray(col)
    return t


def _yaml_safe(meta: Any) -> Any:
    if isinstance(meta, dict):
        return {str(k): _yaml_safe(v) for k, v in meta.items() if not callable(v)}
    if isinstance(meta, (list, tuple)):
        return [_yaml_safe(v) for v in meta]
    if isinstance(meta, (np.floating, np.integer, np.bool_)):
        return meta.item()
    if meta is None or isinstance(meta, (str, int, float, bool)):
        return meta
    return str(meta)


def _flat_meta(meta: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in meta.items():
        key = f"{prefix}{k}".upper().replace(" ", "_")
        if isinstance(v, dict):
            out.update(_flat_meta(v, key + "_"))
        elif isinstance(v, (int, float, str, bool)) and not (isinstance(v, float) and not math.isfinite(v)):
            out[key] = v if not isinstance(v, str) else v[:60]
    return out


def _siril_layers(channel: Any) -> np.ndarray:
    """Siril's layer numbers of a ``channel`` column: R, G, B -> 0, 1, 2; plane numbers as
    they are; luminance and anything else -> 0 (Siril's layer of a grey image).
    """
    names = {"r": 0, "red": 0, "g": 1, "green": 1, "b": 2, "blue": 2}
    out = []
    for c in np.asarray(channel).tolist():
        text = str(c).strip().lower()
        out.append(int(text) if text.lstrip("-").isdigit() else names.get(text, 0))
    return np.asarray(out, dtype=int)


#: psfkit find's defaults, written in a Siril .lst header when the list's metadata does not say
#: (a list sent back by the web page); tests/test_catalog.py checks they are find_stars' own.
LST_DEFAULTS = {"threshold": 5.0, "min_roundness": 0.3}


def _detection_box(fwhm: float) -> int:
    """The fitting box of psfkit find for stars of this FWHM: about 4 FWHM, odd, 9 to 101 px."""
    box = min(max(int(math.ceil(4.0 * fwhm)), 9), 101)
    return box + 1 - box % 2


def siril_parameters(table: Table) -> str:
    """The settings line of a Siril star list (``sigma=... layer=...``), from a star list's metadata.

    The one place that fills Siril's fields for every writer (the CLI, the web page's export):
    ``sigma`` is the detection threshold, ``roundness`` the roundness limit (0 when the test was
    off), ``radius`` half the fitting box, ``profile`` 1 for a Moffat and ``minbeta`` a bound no
    row's beta is below (1.5, Siril's default, or the lowest beta rounded down to 0.1: psfkit does
    not reject stars by beta).  What the metadata does not hold takes psfkit find's defaults
    (:data:`LST_DEFAULTS`; the box from the stars' median FWHM, as find chooses it).

    Parameters
    ----------
    table : Table
        A star list; ``meta["settings"]``, ``meta["box"]`` and ``meta["model"]`` are read when present.

    Returns
    -------
    str
        The line without its leading ``# ``.

    Examples
    --------
    >>> from astropy.table import Table
    >>> siril_parameters(Table({"fwhm": [3.0, 3.2], "beta": [1.35, 2.0]}, meta={"model": "moffat"}))[:60]
    'sigma=5.00 roundness=0.30 radius=6 relax=0 profile=1 minbeta'
    """
    settings = table.meta.get("settings", {}) or {}
    model = str(table.meta.get("model", settings.get("model") or "gaussian"))
    moffat = model.startswith("moffat")
    threshold = settings.get("threshold") or LST_DEFAULTS["threshold"]
    roundness = settings["min_roundness"] if "min_roundness" in settings else LST_DEFAULTS["min_roundness"]
    box = table.meta.get("box") or settings.get("box")
    if not box and "fwhm" in table.colnames and len(table):
        fwhm = np.asarray(table["fwhm"], dtype=float)
        if np.isfinite(fwhm).any():
            box = _detection_box(float(np.nanmedian(fwhm)))
    min_beta = 1.5
    if moffat and "beta" in table.colnames and len(table):
        beta = np.asarray(table["beta"], dtype=float)
        if np.isfinite(beta).any():
            min_beta = min(min_beta, math.floor(10.0 * float(np.nanmin(beta))) / 10.0)
    return ("sigma=%3.2f roundness=%3.2f radius=%d relax=%d profile=%d minbeta=%3.1f max_stars=%d layer=%d "  # noqa: UP031
            "minA=%3.2f maxA=%3.2f maxR=%3.2f" % (float(threshold), float(roundness or 0.0), int(box or 0) // 2, 0,
                                                  int(moffat), min_beta, len(table), 0, 0.0, 0.0, 1.0))


def _siril_lst(table: Table, ny: int | None) -> str:
    """Siril's star list (``save_list`` in Siril 1.2+): tab-separated, brightest first.

    The first three lines are Siril's: the number of stars, the detection
    settings (``# sigma=... layer=...``, with psfkit's threshold, roundness and
    box radius in Siril's fields) and the column header
    ``star# layer B A beta X Y FWHMx [px] FWHMy [px] FWHMx ["] FWHMy ["] angle RMSE mag Sat Profile RA Dec``.
    A fourth comment line records the row order and image height so that
    :func:`read_star_list` can undo the conversion.  Rows follow Siril's
    number formats, with 4 decimals instead of 2 for X, Y and the FWHMs (Siril's
    reader takes any float).  X, Y: origin at the top-left corner, pixel centres
    at index + 0.5, y down.  ``angle``: degrees counter-clockwise from +x as the
    frame is displayed (psfkit's angle for bottom-up frames, its negative for
    top-down ones).  B and A stay in data units.  ``Sat`` is 1 for saturated
    stars; ``beta`` is -1 for the Gaussian; RA/Dec are 0 without a WCS.  Only
    accepted stars are written (the layout has no column for rejected candidates).
    """
    if "accepted" in table.colnames:  # the layout has no column for rejected candidates
        table = table[np.asarray(table["accepted"], dtype=bool)]
    top_down = str(table.meta.get("roworder", "")).upper() == "TOP-DOWN"
    settings = table.meta.get("settings", {}) or {}
    model = str(table.meta.get("model", settings.get("model", "gaussian")))
    moffat = model.startswith("moffat")
    profile = "Moffat" if moffat else "Gaussian"
    n = len(table)
    lines = [
        f"# {n} stars found using the following parameters:",
        "# " + siril_parameters(table),
        f"# psfkit: rows {'TOP-DOWN' if top_down else 'BOTTOM-UP'}; image height "
        f"{ny if ny is not None else 'unknown'}; B and A in data units",
        "# star#\tlayer\tB\tA\tbeta\tX\tY\tFWHMx [px]\tFWHMy [px]\tFWHMx [\"]\tFWHMy [\"]\tangle\tRMSE\tmag\tSat"
        "\tProfile\tRA\tDec",
    ]
    if n == 0:
        return "\n".join(lines) + "\n"

    def col(name: str, fill: float = 0.0) -> np.ndarray:
        if name not in table.colnames:
            return np.full(n, fill)
        v = np.asarray(table[name], dtype=float)
        return np.where(np.isfinite(v), v, fill)

    x = col("x_fit") + 0.5
    y = col("y_fit")
    if top_down or ny is None:
        y_siril = y + 0.5
    else:
        y_siril = (ny - 1 - y) + 0.5
    angle = col("angle") * (-1.0 if top_down else 1.0)
    beta = col("beta", -1.0) if moffat else np.full(n, -1.0)
    if "flags" in table.colnames:
        sat = ((np.asarray(table["flags"]) & F.SATURATED) != 0).astype(int)
    else:
        sat = np.zeros(n, int)
    layer = _siril_layers(table["channel"]) if "channel" in table.colnames else np.zeros(n, int)
    cols = [layer, col("background"), col("amplitude"), beta, x, y_siril, col("fwhm_x"), col("fwhm_y"),
            col("fwhm_x_arcsec"), col("fwhm_y_arcsec"), angle, col("rmse"), col("mag"), sat]
    order = np.argsort(-np.nan_to_num(np.asarray(table["flux_fit"], dtype=float), nan=-np.inf), kind="stable")
    fmt = ("%d\t%d\t%10.6f\t%10.6f\t%10.2f\t%10.4f\t%10.4f\t%10.4f\t%10.4f\t%10.4f\t%10.4f"
           "\t%3.2f\t%10.3e\t%10.2f\t%d\t%s\t%f\t%f")
    ra, dec = col("ra"), col("dec")
    for k, i in enumerate(order, start=1):
        lines.append(fmt % ((k,) + tuple(c[i] for c in cols) + (profile, ra[i], dec[i])))
    return "\n".join(lines) + "\n"


def _ds9_regions(table: Table) -> str:
    lines = ["# Region file format: DS9 version 4.1", "# written by psfkit: ellipses with the FWHM axes and angle",
             "global color=green width=1", "image"]
    for row in table:
        x, y = float(row["x_fit"]) + 1.0, float(row["y_fit"]) + 1.0
        fx, fy, ang = float(row["fwhm_x"]), float(row["fwhm_y"]), float(row["angle"])
        if not all(map(math.isfinite, (x, y, fx, fy))):
            continue
        ang = ang if math.isfinite(ang) else 0.0
        color = ""
        if "accepted" in table.colnames and not bool(row["accepted"]):
            color = f" # color=red text={{{row['reject_reason']}}}"
        lines.append(f"ellipse({x:.4f},{y:.4f},{fx / 2:.4f},{fy / 2:.4f},{ang:.3f}){color}")
    return "\n".join(lines) + "\n"


def read_star_list(path: str | os.PathLike, *, image_shape: tuple[int, int] | None = None) -> Table:
    """Read a star list written by :func:`write_star_list` (or Siril), back in psfkit's conventions.

    Examples
    --------
    A Siril .lst file counts rows from the other end: give the image's shape both ways.

    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> import psfkit
    >>> stars = psfkit.find_stars(psfkit.load_image(psfkit.sample_image_path()))
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = psfkit.write_star_list(stars, Path(folder) / "stars.lst", image_shape=(256, 256))
    ...     back = psfkit.read_star_list(path, image_shape=(256, 256))
    >>> bool(np.allclose(back["y_fit"], stars["y_fit"], atol=1e-3))
    True
    """
    p = Path(path)
    if not p.exists():
        raise PsfkitError(f"{p}: no such file")
    remember_input(p)
    suffix = p.suffix.lower()
    try:
        if suffix == ".csv":
            t = Table.read(p, format="ascii.csv")
            if "accepted" in t.colnames and t["accepted"].dtype.kind in "US":  # CSV has no bool type
                t["accepted"] = np.char.lower(np.asarray(t["accepted"], dtype=str)) == "true"
            if "reject_reason" in t.colnames:
                t["reject_reason"] = np.asarray(t["reject_reason"].filled("") if t.masked or hasattr(
                    t["reject_reason"], "filled") else t["reject_reason"], dtype=str)
            return t
        if suffix == ".ecsv":
            return Table.read(p, format="ascii.ecsv")
        if suffix in (".fits", ".fit"):
            return Table.read(p, format="fits")
        if suffix == ".lst":
            return _read_lst(p, image_shape)
        if suffix == ".reg":
            return _read_reg(p)
    except PsfkitError:
        raise
    except Exception as exc:
        raise PsfkitError(f"{p}: not a readable {suffix} star list ({exc.__class__.__name__})") from None
    raise PsfkitError(f"{p}: unknown star-list format {suffix!r}")


def _read_lst(p: Path, image_shape) -> Table:
    """Siril star list (written by Siril or psfkit) -> psfkit columns and 0-based coordinates.

    The y conversion needs the image height and row order: from ``image_shape``,
    else from psfkit's comment line; without either (a list written by Siril
    itself) ``y_fit`` is left out and ``x_siril``/``y_siril`` are kept.
    """
    rows = []
    header = None
    top_down, ny_file, meta = False, None, {}
    for line in p.read_text().splitlines():
        if line.startswith("# psfkit:") or line.startswith("# rows:"):
            top_down = "TOP-DOWN" in line
            m = re.search(r"image height:? (\d+)", line)
            ny_file = int(m.group(1)) if m else None
        elif line.startswith("# sigma="):
            meta["siril_parameters"] = line[2:].strip()
        if line.startswith("#"):
            if "star#" in line:
                header = [h.strip() for h in line.lstrip("#").split("\t")]
            continue
        if line.strip():
            rows.append([v.strip() for v in line.split("\t")])
    if header is None:
        raise PsfkitError(f"{p}: not a Siril star list (no '# star#' column header)")
    names = {"B": "background", "A": "amplitude", "beta": "beta", "X": "x_siril", "Y": "y_siril",
             "FWHMx [px]": "fwhm_x", "FWHMy [px]": "fwhm_y", 'FWHMx ["]': "fwhm_x_arcsec",
             'FWHMy ["]': "fwhm_y_arcsec", "angle": "angle", "RMSE": "rmse", "mag": "mag", "RA": "ra", "Dec": "dec"}
    t = Table(meta=meta)
    n = len(rows)
    for j, h in enumerate(header):
        if h in names:
            t[names[h]] = np.array([float(r[j]) for r in rows]) if n else np.zeros(0)
    if "Sat" in header:
        j = header.index("Sat")
        sat = np.array([int(r[j]) for r in rows], dtype=np.int64) if n else np.zeros(0, np.int64)
        t["flags"] = np.where(sat != 0, F.SATURATED, 0).astype(np.int64)
    if "Profile" in header and n:
        t.meta["model"] = rows[0][header.index("Profile")].lower()
    if "beta" in t.colnames:
        t["beta"] = np.where(t["beta"] < 0, np.nan, t["beta"])
    for name in ("fwhm_x_arcsec", "fwhm_y_arcsec", "ra", "dec"):
        if name in t.colnames and n and np.all(t[name] == 0):
            t.remove_column(name)  # Siril writes 0 when unknown
    ny = int(image_shape[0]) if image_shape is not None else ny_file
    t["x_fit"] = t["x_siril"] - 0.5
    if top_down:
        t["y_fit"] = t["y_siril"] - 0.5
    elif ny is not None:
        t["y_fit"] = (ny - 1) - (t["y_siril"] - 0.5)
    if "angle" in t.colnames and top_down:
        t["angle"] = -t["angle"]
    if "fwhm_x" in t.colnames:
        with np.errstate(divide="ignore", invalid="ignore"):
            t["fwhm"] = np.sqrt(t["fwhm_x"] * t["fwhm_y"])
            t["roundness"] = t["fwhm_y"] / t["fwhm_x"]
    t.meta["roworder"] = "TOP-DOWN" if top_down else "BOTTOM-UP"
    if ny is not None:
        t.meta["image_shape"] = [ny, None]
    return t


def _read_reg(p: Path) -> Table:
    """The ellipses of a DS9 region file; red ones (written with the rejected candidates) come back with
    ``accepted`` False and their ``reject_reason`` (the region's text).
    """
    xs, ys, ax, ay, an, ok, why = [], [], [], [], [], [], []
    for line in p.read_text().splitlines():
        if line.startswith("ellipse("):
            inside = line[len("ellipse("):line.index(")")]
            a, b, c, d, e = (float(v) for v in inside.split(","))
            xs.append(a - 1.0)
            ys.append(b - 1.0)
            ax.append(2 * c)
            ay.append(2 * d)
            an.append(e)
            rejected = "color=red" in line
            ok.append(not rejected)
            text = re.search(r"text=\{([^}]*)\}", line)
            why.append(text.group(1) if rejected and text else "")
    table = Table({"x_fit": xs, "y_fit": ys, "fwhm_x": ax, "fwhm_y": ay, "angle": an})
    if not all(ok):
        table["accepted"] = np.array(ok, dtype=bool)
        table["reject_reason"] = np.array(why, dtype=str)
    return table
