"""Sums of the pixels inside circular or elliptical apertures, with the exact pixel overlap."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from psfkit.aperture.overlap import _gather, _stamp_grid, circular_overlap, elliptical_overlap
from psfkit.errors import PsfkitError

__all__ = ["aperture_sums"]


def _use_compiled(backend: str) -> bool:
    if backend not in ("auto", "numpy", "numba"):
        raise PsfkitError(f"backend must be 'auto', 'numpy' or 'numba', not {backend!r}")
    if backend == "numpy":
        return False
    from psfkit.backend import HAVE_NUMBA, compiled_available

    if backend == "numba" and not HAVE_NUMBA:  # pragma: no cover
        raise PsfkitError("backend 'numba' asked but numba is not installed")
    return HAVE_NUMBA and (backend == "numba" or compiled_available())


def aperture_sums(
    data: np.ndarray,
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    r: float | np.ndarray | None = None,
    *,
    a: float | np.ndarray | None = None,
    b: float | np.ndarray | None = None,
    theta: float | np.ndarray = 0.0,
    mask: np.ndarray | None = None,
    chunk: int = 4096,
    backend: str = "auto",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sums of the pixels inside circular (``r``) or elliptical (``a, b, theta``) apertures, exact overlap.

    Parameters
    ----------
    data : ndarray (ny, nx)
    x, y : array-like (N,)
        0-based centres.
    r : float or ndarray, optional
        Circle radii (px).
    a, b, theta : float or ndarray, optional
        Ellipse semi-axes (px) and angle (radians, counter-clockwise from +x), instead of ``r``.
    mask : ndarray of bool, optional
        True for pixels to leave out (as NaN pixels are).
    chunk : int
        Apertures per vectorised batch of the numpy path (bounds the memory).
    backend : {"auto", "numpy", "numba"}
        "auto": the compiled loop when numba is there (and ``PSFKIT_BACKEND`` is not
        ``numpy``), else the vectorised numpy path; both give the same sums to rounding.

    Returns
    -------
    sums : ndarray (N,)
        Sum of pixel value x overlap area; NaN/masked/off-image pixels count 0.
    area : ndarray (N,)
        Overlap area of the usable pixels (px^2).
    full_area : ndarray (N,)
        Geometric area of the aperture (pi r^2 or pi a b); ``area < full_area`` means pixels were lost.

    Examples
    --------
    On a frame of ones a sum is the aperture's area, pi r^2:

    >>> import numpy as np
    >>> sums, area, full_area = aperture_sums(np.ones((50, 50)), [25.0], [25.0], 5.0)
    >>> round(float(sums[0]), 4), round(float(full_area[0]), 4)
    (78.5398, 78.5398)
    """
    arr = np.asarray(data, dtype=float)
    xs = np.atleast_1d(np.asarray(x, dtype=float))
    ys = np.atleast_1d(np.asarray(y, dtype=float))
    if xs.shape != ys.shape:
        raise PsfkitError("x and y must have the same length")
    n = xs.size
    elliptical = r is None
    if elliptical:
        if a is None or b is None:
            raise PsfkitError("give a radius r, or the semi-axes a and b of an ellipse")
        aa = np.broadcast_to(np.asarray(a, dtype=float), xs.shape)
        bb = np.broadcast_to(np.asarray(b, dtype=float), xs.shape)
        tt = np.broadcast_to(np.asarray(theta, dtype=float), xs.shape)
        extent = np.maximum(aa, bb)
        full = np.pi * aa * bb
    else:
        rr = np.broadcast_to(np.asarray(r, dtype=float), xs.shape)
        extent = rr
        full = np.pi * rr * rr
    if n and (not np.all(np.isfinite(extent)) or np.any(extent <= 0)):
        raise PsfkitError("aperture radii must be positive numbers")
    if mask is not None:
        if np.shape(mask) != arr.shape:
            raise PsfkitError(f"the mask has shape {np.shape(mask)}, the image {arr.shape}")
        arr = np.where(np.asarray(mask, dtype=bool), np.nan, arr)
    sums = np.zeros(n)
    area = np.zeros(n)
    if n and _use_compiled(backend):
        from psfkit.aperture import _overlap_compiled as compiled

        if elliptical:
            compiled.sum_ellipses(np.ascontiguousarray(arr), xs, ys, np.ascontiguousarray(aa), np.ascontiguousarray(bb),
                             np.ascontiguousarray(tt), sums, area)
        else:
            compiled.sum_circles(np.ascontiguousarray(arr), xs, ys, np.ascontiguousarray(rr), sums, area)
        return sums, area, full
    # group apertures by stamp size so small ones do not pay for big ones
    halves = np.ceil(extent + 1.0).astype(np.int64) if n else np.zeros(0, dtype=np.int64)
    for half in np.unique(halves):
        sel_all = np.flatnonzero(halves == half)
        for start in range(0, sel_all.size, chunk):
            sel = sel_all[start:start + chunk]
            if elliptical:
                w = elliptical_overlap(xs[sel], ys[sel], aa[sel], bb[sel], tt[sel], int(half))
            else:
                w = circular_overlap(xs[sel], ys[sel], rr[sel], int(half))
            ox, oy = _stamp_grid(xs[sel], ys[sel], int(half))
            vals, _ = _gather(arr, ox, oy, 2 * int(half) + 1)
            good = np.isfinite(vals)
            sums[sel] = np.einsum("nij,nij->n", w, np.where(good, vals, 0.0))
            area[sel] = np.einsum("nij,nij->n", w, good.astype(float))
    return sums, area, full
