"""The detection stage's numba kernels, imported only when they run (:mod:`psfkit.detect._kernels`
holds their numpy twins and chooses between them).

Importing this module imports numba (about 0.3 s, and 0.3-0.4 s more to load the first cached
kernel): a small frame is measured with the numpy twins and never pays it (:mod:`psfkit.backend`).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from psfkit.backend import numba_cache_dir

numba_cache_dir()  # a user cache folder when the package folder is read-only (README)

__all__ = ["spline_rows", "smooth_rows", "smooth_cols"]


@njit(parallel=True, cache=True)
def spline_rows(coef, idx, basis, out):  # pragma: no cover - compiled
    """out[y, x] = sum_k basis[k, x] * coef[y, idx[x], k] (the twin: ``_kernels._spline_rows_numpy``)."""
    ny, nx = out.shape
    for y in prange(ny):
        for x in range(nx):
            i = idx[x]
            out[y, x] = (basis[0, x] * coef[y, i, 0] + basis[1, x] * coef[y, i, 1]
                         + basis[2, x] * coef[y, i, 2] + basis[3, x] * coef[y, i, 3])


@njit(parallel=True, cache=True)
def smooth_rows(src, w, out):  # pragma: no cover - compiled
    """Each row correlated with the kernel ``w``, edges by the nearest pixel (float32)."""
    ny, nx = src.shape
    r = (len(w) - 1) // 2
    for y in prange(ny):
        row = src[y]
        # the row padded with its edge pixels (mode "nearest"), then taps outer and pixels
        # inner, summed in the output row: the inner loop vectorises (7-12x a per-pixel loop)
        pad = np.empty(nx + 2 * r, dtype=np.float32)
        pad[r:r + nx] = row
        pad[:r] = row[0]
        pad[r + nx:] = row[nx - 1]
        acc = out[y]
        w0 = w[0]
        for x in range(nx):
            acc[x] = w0 * pad[x]
        for t in range(1, len(w)):
            wt = w[t]
            for x in range(nx):
                acc[x] += wt * pad[x + t]


@njit(parallel=True, cache=True)
def smooth_cols(src, w, out):  # pragma: no cover - compiled
    """Each column correlated with the kernel ``w``, edges by the nearest pixel (float32)."""
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
