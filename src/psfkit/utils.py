"""Small helpers shared by every room of psfkit (no science of its own).

One place for what several modules need: a robust standard deviation (astropy's MAD-based
estimate), JSON-ready values, brighter-first thinning of close neighbours, and checks of
user input that raise :class:`~psfkit.errors.PsfkitError` with a one-line message.

Examples
--------
>>> import numpy as np
>>> from psfkit.utils import json_value, robust_sigma
>>> json_value({"a": np.float64("nan"), "b": np.int64(3)})
{'a': None, 'b': 3}
>>> round(robust_sigma(np.random.default_rng(0).normal(0.0, 2.0, 100_000)), 1)
2.0
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from psfkit.errors import PsfkitError

__all__ = ["json_value", "robust_sigma", "thin_brighter_first", "check_positive"]


def json_value(value: Any) -> Any:
    """A JSON-ready copy of ``value``: NaN and infinities become None, numpy scalars and arrays Python.

    Dicts, lists and tuples are converted element by element (a tuple becomes a list).

    Parameters
    ----------
    value : any
        A number, string, numpy scalar or array, or a dict/list of them.

    Returns
    -------
    any
        The same value with only JSON types in it.

    Examples
    --------
    >>> import numpy as np
    >>> json_value([np.float32(1.5), float("inf"), np.bool_(True), np.arange(2)])
    [1.5, None, True, [0, 1]]
    """
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_value(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.generic):  # numpy strings and the rest
        return value.item()
    return value


def robust_sigma(values: Any, *, axis: int | None = None, ignore_nan: bool = False) -> Any:
    """Standard deviation from the median absolute deviation, ``1.4826 MAD`` (:func:`astropy.stats.mad_std`).

    Insensitive to stars, hot pixels and cosmic rays in a sample of sky pixels: the estimate of
    a Gaussian's sigma that a minority of outliers does not move.

    Parameters
    ----------
    values : array-like
    axis : int, optional
        Axis along which to compute it (default: the whole array).
    ignore_nan : bool
        Leave NaN out (default: a NaN in the sample gives NaN).

    Returns
    -------
    float or ndarray
        A float for ``axis=None``, else an array.

    Examples
    --------
    >>> robust_sigma([1.0, 2.0, 3.0, 4.0, 1000.0])
    1.482602218505602
    """
    from astropy.stats import mad_std

    out = mad_std(np.asarray(values, dtype=float), axis=axis, ignore_nan=ignore_nan)
    return float(out) if axis is None else np.asarray(out)


def thin_brighter_first(x: Any, y: Any, radius: float) -> np.ndarray:
    """Which sources stay when, of any two within ``radius`` px, only the brighter does.

    The sources must come brightest first.  Each is kept unless a brighter source that is itself
    kept lies within ``radius`` (a greedy non-maximum suppression: a source dropped by a brighter
    one does not drop a third).

    Parameters
    ----------
    x, y : array-like (N,)
        Positions (px), brightest first.
    radius : float
        Separation (px) at or below which the fainter source goes.

    Returns
    -------
    ndarray of bool (N,)
        True for the sources kept.

    Examples
    --------
    >>> thin_brighter_first([1.0, 0.0, 10.0, 2.0], [0.0, 0.0, 0.0, 0.0], 1.5)
    array([ True, False,  True, False])
    """
    xs = np.asarray(x, dtype=float)
    keep = np.ones(xs.size, dtype=bool)
    if xs.size < 2:
        return keep
    from scipy.spatial import cKDTree

    pairs = cKDTree(np.stack([xs, np.asarray(y, dtype=float)], axis=1)).query_pairs(radius)
    for i, j in sorted(pairs):  # i < j: i is the brighter; by the time (i, j) comes, i's fate is settled
        if keep[i]:
            keep[j] = False
    return keep


def check_positive(value: Any, name: str, *, allow_none: bool = False) -> float | None:
    """``value`` as a float when it is a finite positive number, else a :class:`PsfkitError` naming ``name``.

    Parameters
    ----------
    value : any
    name : str
        How the user knows the setting (``"--gain"``, ``"the gain"``), for the message.
    allow_none : bool
        None passes through as None.

    Returns
    -------
    float or None

    Examples
    --------
    >>> check_positive(2, "the gain")
    2.0
    >>> check_positive(-1, "the gain")
    Traceback (most recent call last):
    ...
    psfkit.errors.PsfkitError: the gain must be a positive number, got -1
    """
    if value is None and allow_none:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise PsfkitError(f"{name} must be a positive number, got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise PsfkitError(f"{name} must be a positive number, got {value!r}")
    return v
