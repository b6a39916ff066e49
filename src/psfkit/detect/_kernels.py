"""Compiled kernels of the detection stage (numba), each beside its numpy reference.

``PSFKIT_BACKEND=numpy`` (or numba missing) selects the numpy path; tests compare the two.
"""

from __future__ import annotations

import numpy as np

from psfkit.backend import compiled_available, numba_cache_dir

numba_cache_dir()  # a user cache folder when the package folder is read-only (README)

try:  # numba is a dependency, but the numpy path works without it
    from numba import njit, prange

    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    _HAVE_NUMBA = False

__all__ = ["gaussian_smooth", "spline_rows"]


def _spline_rows_numpy(coef: np.ndarray, idx: np.ndarray, basis: np.ndarray, out: np.ndarray) -> None:
    """out[y, x] = sum_k basis[k, x] * coef[y, idx[x], k], in blocks of rows."""
    ny = out.shape[0]
    step = max(1, 2_000_000 // max(out.shape[1], 1))
    for y0 in range(0, ny, step):
        y1 = min(ny, y0 + step)
        acc = np.zeros((y1 - y0, out.shape[1]), dtype=np.float64)
        for k in range(coef.shape[2]):
            acc += basis[k][None, :] * coef[y0:y1, :, k][:, idx]
        out[y0:y1] = acc


if _HAVE_NUMBA:

    @njit(parallel=True, cache=True)
    def _spline_rows_numba(coef, idx, basis, out):  # pragma: no cover - compiled
        ny, nx = out.shape
        for y in prange(ny):
            for x in range(nx):
                i = idx[x]
                out[y, x] = (basis[0, x] * coef[y, i, 0] + basis[1, x] * coef[y, i, 1]
                             + basis[2, x] * coef[y, i, 2] + basis[3, x] * coef[y, i, 3])


def spline_rows(coef: np.ndarray, idx: np.ndarray, basis: np.ndarray, *, dtype=np.float32) -> np.ndarray:
    """Evaluate one piecewise cubic per row at the same positions for every row.

    Parameters
    ----------
    coef : ndarray, shape (ny, n_intervals, 4)
        Polynomial coefficients per row and interval, highest power first (scipy's
        ``PPoly.c`` transposed).
    idx : ndarray of int, shape (nx,)
        Interval of each output column.
    basis : ndarray, shape (4, nx)
        Weights of the four coefficients at each column (powers of the offset
        from the interval's start, or their linear extrapolation).

    Returns
    -------
    ndarray, shape (ny, nx)
    """
    out = np.empty((coef.shape[0], len(idx)), dtype=dtype)
    if _HAVE_NUMBA and compiled_available():
        _spline_rows_numba(np.ascontiguousarray(coef, dtype=np.float64), np.ascontiguousarray(idx, dtype=np.intp),
                           np.ascontiguousarray(basis, dtype=np.float64), out)
    else:
        _spline_rows_numpy(coef, idx, basis, out)
    return out


def _gaussian_weights(sigma: float, truncate: float) -> np.ndarray:
    """scipy.ndimage's 1-D Gaussian kernel (radius = int(truncate * sigma + 0.5), unit sum)."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


if _HAVE_NUMBA:

    @njit(parallel=True, cache=True)
    def _smooth_rows_numba(src, w, out):  # pragma: no cover - compiled
        ny, nx = src.shape
        r = (len(w) - 1) // 2
        for y in prange(ny):
            row = src[y]
            # the row padded with its edge pixels (mode "nearest"), then taps outer and pixels
            # inner into a private buffer: the inner loop vectorises (7-12x a per-pixel loop)
            pad = np.empty(nx + 2 * r, dtype=np.float32)
            pad[r:r + nx] = row
            pad[:r] = row[0]
            pad[r + nx:] = row[nx - 1]
            acc = np.zeros(nx, dtype=np.float32)
            for t in range(len(w)):
                wt = w[t]
                for x in range(nx):
                    acc[x] += wt * pad[x + t]
            out[y] = acc

    @njit(parallel=True, cache=True)
    def _smooth_cols_numba(src, w, out):  # pragma: no cover - compiled
        ny, nx = src.shape
        r = (len(w) - 1) // 2
        for y in prange(ny):
            acc = np.zeros(nx, dtype=np.float32)
            for k in range(-r, r + 1):
                yy = min(max(y + k, 0), ny - 1)
                wk = w[k + r]
                for x in range(nx):
                    acc[x] += wk * src[yy, x]
            out[y] = acc


def gaussian_smooth(arr: np.ndarray, sigma: float, *, truncate: float = 3.0,
                    out: np.ndarray | None = None) -> np.ndarray:
    """Gaussian smoothing of a 2-D float32 frame, edges by the nearest pixel.

    The same filter as ``scipy.ndimage.gaussian_filter(arr, sigma, mode="nearest",
    truncate=truncate)`` (the numpy reference path calls it), compiled and run on
    every core: the smoothing is the detection stage's largest cost.

    Parameters
    ----------
    arr : ndarray (float32)
        The frame (not modified).
    sigma : float
        Standard deviation of the kernel (px).
    truncate : float
        Kernel radius in units of sigma.
    out : ndarray (float32, C-contiguous), optional
        Where to write the result; may be ``arr`` itself (smoothing in place saves a
        frame-sized buffer).

    Returns
    -------
    ndarray (float32)
    """
    if not (_HAVE_NUMBA and compiled_available()) or arr.ndim != 2:
        from scipy import ndimage

        return ndimage.gaussian_filter(arr, sigma, mode="nearest", truncate=truncate, output=out)
    w = _gaussian_weights(sigma, truncate).astype(np.float32)
    src = np.ascontiguousarray(arr, dtype=np.float32)
    tmp = np.empty_like(src)
    _smooth_rows_numba(src, w, tmp)
    if out is None:
        out = np.empty_like(src)
    _smooth_cols_numba(tmp, w, out)
    return out
