"""Kernels of the detection stage: numpy references, and their numba twins where numba runs.

The compiled twins live in :mod:`psfkit.detect._kernels_compiled`, imported only when they
run: ``PSFKIT_BACKEND=numpy`` (or numba missing, or a frame too small to repay numba's start-up,
see :func:`psfkit.backend.compiled_available`) selects the numpy path; tests compare the two.
"""

from __future__ import annotations

import numpy as np

from psfkit.backend import compiled_available, warm_up

__all__ = ["gaussian_smooth", "spline_rows", "warm_up_kernels"]


def _load_compiled() -> None:
    """Import numba and the compiled kernels, and load one from numba's cache: the first load sets
    up numba's compiler for the process (~0.4 s, more than the import itself).
    """
    from psfkit.detect import _kernels_compiled

    a = np.zeros((1, 1), dtype=np.float32)
    _kernels_compiled.smooth_rows(a, np.ones(1, dtype=np.float32), np.empty_like(a))


def warm_up_kernels(*, pixels: int) -> bool:
    """Start loading numba and the compiled kernels in a background thread ahead of a frame of
    this many pixels that will be measured compiled (:func:`psfkit.backend.warm_up`).

    Examples
    --------
    >>> warm_up_kernels(pixels=512 * 512)  # small: measured by the numpy twins, nothing to load
    False
    """
    return warm_up(pixels=pixels, load=_load_compiled)


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
    if compiled_available():
        from psfkit.detect import _kernels_compiled

        _kernels_compiled.spline_rows(np.ascontiguousarray(coef, dtype=np.float64),
                                      np.ascontiguousarray(idx, dtype=np.intp),
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


def _smooth_axis_numpy(src: np.ndarray, w: np.ndarray, axis: int, out: np.ndarray) -> None:
    """``src`` correlated with ``w`` along ``axis``, edges by the nearest pixel, summed in float64
    and stored in ``out`` (scipy.ndimage.correlate1d's result, in blocks of about a million pixels).
    """
    r = (len(w) - 1) // 2
    n = src.shape[axis]
    other = src.shape[1 - axis]
    step = max(1, 1_000_000 // max(n + 2 * r, 1))
    for b0 in range(0, other, step):
        b1 = min(other, b0 + step)
        block = src[b0:b1] if axis == 1 else src[:, b0:b1].T
        pad = np.concatenate([np.repeat(block[:, :1], r, axis=1), block, np.repeat(block[:, -1:], r, axis=1)],
                             axis=1).astype(np.float64)
        acc = w[0] * pad[:, :n]
        for t in range(1, len(w)):
            acc += w[t] * pad[:, t:t + n]
        if axis == 1:
            out[b0:b1] = acc
        else:
            out[:, b0:b1] = acc.T


def gaussian_smooth(arr: np.ndarray, sigma: float, *, truncate: float = 3.0,
                    out: np.ndarray | None = None) -> np.ndarray:
    """Gaussian smoothing of a 2-D float32 frame, edges by the nearest pixel.

    The same filter as ``scipy.ndimage.gaussian_filter(arr, sigma, mode="nearest",
    truncate=truncate)``: in numpy (each axis summed in float64, as scipy does), or compiled
    and run on every core, the smoothing being the detection stage's largest cost on a large
    frame.

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
    if arr.ndim != 2:
        from scipy import ndimage

        return ndimage.gaussian_filter(arr, sigma, mode="nearest", truncate=truncate, output=out)
    w = _gaussian_weights(sigma, truncate)
    src = np.ascontiguousarray(arr, dtype=np.float32)
    tmp = np.empty_like(src)
    if out is None:
        out = np.empty_like(src)
    if compiled_available():
        from psfkit.detect import _kernels_compiled

        w32 = w.astype(np.float32)
        _kernels_compiled.smooth_rows(src, w32, tmp)
        _kernels_compiled.smooth_cols(tmp, w32, out)
    else:
        _smooth_axis_numpy(src, w, 1, tmp)
        _smooth_axis_numpy(tmp, w, 0, out)
    return out
