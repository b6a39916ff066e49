"""Small helpers shared by every room of psfkit (no science of its own).

One place for what several modules need: a robust standard deviation (astropy's MAD-based
estimate), JSON-ready values, brighter-first thinning of close neighbours, the sub-pixel
position of a peak, and checks of user input that raise :class:`~psfkit.errors.PsfkitError`
with a one-line message.

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

__all__ = ["json_value", "robust_sigma", "weighted_median", "pairs_within", "thin_brighter_first", "subpixel_peak",
           "check_positive"]


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


def weighted_median(values: Any, weights: Any) -> float:
    """The weighted median: the smallest value at which the cumulative weight reaches half the total.

    Values or weights that are not finite, and non-positive weights, are left out; NaN when none is
    left.  Used where the values differ in precision (a Moffat beta fitted on faint stars scatters
    over 1-20, on bright ones over a few per cent), so that the precise ones decide.

    Parameters
    ----------
    values, weights : array-like
        Same shape; weights are typically inverse variances.

    Returns
    -------
    float

    Examples
    --------
    >>> weighted_median([1.0, 2.0, 10.0], [1.0, 1.0, 1.0])
    2.0
    >>> weighted_median([1.0, 2.0, 10.0], [5.0, 1.0, 1.0])
    1.0
    """
    v = np.asarray(values, dtype=float).ravel()
    w = np.asarray(weights, dtype=float).ravel()
    ok = np.isfinite(v) & np.isfinite(w) & (w > 0)
    if not ok.any():
        return float("nan")
    v, w = v[ok], w[ok]
    order = np.argsort(v)
    cum = np.cumsum(w[order])
    return float(v[order][np.searchsorted(cum, 0.5 * cum[-1])])


def pairs_within(x: Any, y: Any, radius: float, *,
                 other: tuple[Any, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs of points at most ``radius`` px apart (a grid of cells of that size, numpy only).

    The neighbour search of the star finder: each point is compared only with the points of its
    own and the 8 surrounding cells, so the cost grows with the number of pairs, not its square
    (and the detection path does not import scipy.spatial, about 0.1 s of start-up).

    Parameters
    ----------
    x, y : array-like (N,)
        Positions (px).
    radius : float
        Separation (px) at or below which two points pair (``dx**2 + dy**2 <= radius**2``).
    other : (x2, y2), optional
        A second set: pairs (i, j) of a point i of the first and j of the second.  Without it,
        the pairs of the first set with itself, i < j.

    Returns
    -------
    i, j : ndarray of int
        The pairs, sorted by i then j.

    Examples
    --------
    >>> i, j = pairs_within([0.0, 1.0, 5.0, 1.5], [0.0, 0.0, 0.0, 0.5], 1.0)
    >>> i.tolist(), j.tolist()
    ([0, 1], [1, 3])
    >>> i, j = pairs_within([0.0, 4.0], [0.0, 0.0], 2.0, other=([1.0, 3.0, 9.0], [1.0, 0.0, 0.0]))
    >>> i.tolist(), j.tolist()
    ([0, 1], [0, 1])
    """
    ax, ay = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    bx, by = (ax, ay) if other is None else (np.asarray(other[0], dtype=float).ravel(),
                                             np.asarray(other[1], dtype=float).ravel())
    empty = np.zeros(0, dtype=np.intp)
    r = float(radius)
    if len(ax) == 0 or len(bx) == 0 or not r >= 0:
        return empty, empty
    ok_a = np.isfinite(ax) & np.isfinite(ay)
    ok_b = np.isfinite(bx) & np.isfinite(by)
    ia, ib = np.flatnonzero(ok_a), np.flatnonzero(ok_b)
    if len(ia) == 0 or len(ib) == 0:
        return empty, empty
    cell = max(r, 1e-9)
    x0 = min(ax[ia].min(), bx[ib].min())
    y0 = min(ay[ia].min(), by[ib].min())
    ca = np.floor((ax[ia] - x0) / cell).astype(np.int64), np.floor((ay[ia] - y0) / cell).astype(np.int64)
    cb = np.floor((bx[ib] - x0) / cell).astype(np.int64), np.floor((by[ib] - y0) / cell).astype(np.int64)
    width = int(max(ca[0].max(), cb[0].max())) + 3
    key_b = (cb[1] + 1) * width + (cb[0] + 1)
    order = np.argsort(key_b, kind="stable")
    sorted_keys = key_b[order]
    ii, jj = [], []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            key = (ca[1] + 1 + dy) * width + (ca[0] + 1 + dx)
            lo = np.searchsorted(sorted_keys, key, side="left")
            hi = np.searchsorted(sorted_keys, key, side="right")
            counts = hi - lo
            total = int(counts.sum())
            if total == 0:
                continue
            rows = np.repeat(np.arange(len(ia)), counts)
            starts = np.repeat(lo - np.cumsum(counts) + counts, counts)
            ii.append(ia[rows])
            jj.append(ib[order[starts + np.arange(total)]])
    if not ii:
        return empty, empty
    i, j = np.concatenate(ii), np.concatenate(jj)
    d2 = (ax[i] - bx[j]) ** 2 + (ay[i] - by[j]) ** 2
    keep = d2 <= r * r
    if other is None:
        keep &= i < j
    i, j = i[keep], j[keep]
    sort = np.lexsort((j, i))
    return i[sort], j[sort]


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
    for i, j in zip(*(a.tolist() for a in pairs_within(xs, y, radius))):
        # sorted, i < j: i is the brighter; by the time (i, j) comes, i's fate is settled
        if keep[i]:
            keep[j] = False
    return keep


def subpixel_peak(values: np.ndarray, rows: Any, cols: Any, *, edge: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel position of peaks: a parabola through the 3 values along each axis at each pixel.

    The offset along an axis is ``(a - c) / (2 (a - 2 b + c))`` for the values ``a, b, c`` before,
    at and after the peak, clamped to +-0.5 px; it is 0 where the curvature is not negative.  On
    the array's first or last row/column there is no value beyond the peak: ``edge="none"`` gives
    no offset there; ``edge="nearest"`` takes the peak's own value for the missing neighbour (the
    offset then leans half a pixel towards the edge, as the star finder's candidates always have).

    Parameters
    ----------
    values : ndarray (ny, nx)
        A smoothed image.
    rows, cols : array-like of int (N,)
        The peak pixels.
    edge : {"none", "nearest"}
        The rule on the array's border (see above).

    Returns
    -------
    x, y : ndarray (N,)
        Refined column and row positions.

    Examples
    --------
    >>> import numpy as np
    >>> yy, xx = np.mgrid[0:9, 0:9]
    >>> img = np.exp(-((xx - 4.3) ** 2 + (yy - 3.8) ** 2) / 4.0)
    >>> x, y = subpixel_peak(img, [4], [4])
    >>> round(float(x[0]), 2), round(float(y[0]), 2)
    (4.28, 3.82)
    """
    iy = np.atleast_1d(np.asarray(rows, dtype=np.int64))
    ix = np.atleast_1d(np.asarray(cols, dtype=np.int64))
    ny, nx = values.shape
    offsets = []
    for idx, size, step in ((ix, nx, (0, 1)), (iy, ny, (1, 0))):
        inner = (idx > 0) & (idx < size - 1) if edge == "none" else True
        lo_r, lo_c = np.clip(iy - step[0], 0, ny - 1), np.clip(ix - step[1], 0, nx - 1)
        hi_r, hi_c = np.clip(iy + step[0], 0, ny - 1), np.clip(ix + step[1], 0, nx - 1)
        a, b, c = values[lo_r, lo_c], values[iy, ix], values[hi_r, hi_c]
        den = a - 2 * b + c
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.where(inner & (den < 0), np.clip(0.5 * (a - c) / den, -0.5, 0.5), 0.0)
        offsets.append(d.astype(float))
    return ix + offsets[0], iy + offsets[1]


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
        raise PsfkitError(f"{name} must be a positive number, got {value}")
    return v
