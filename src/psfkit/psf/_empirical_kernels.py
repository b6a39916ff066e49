"""Compiled (numba) cubic B-spline evaluation for the frame's PSF, beside its numpy reference.

:func:`psfkit.psf.empirical.cubic_interpolate` calls :func:`interpolate` here when the compiled
path is available (``PSFKIT_BACKEND``); the numpy code in that module is the reference that
``tests/test_empirical.py`` compares against.  Kept apart from the numpy twin for speed (about
20x on stamps of the frame's stars): the numpy version gathers a (N, P, 4, 4) array.
"""

from __future__ import annotations

import math

import numpy as np

from psfkit.backend import HAVE_NUMBA, compiled_available, numba_cache_dir

__all__ = ["available", "interpolate", "node_median_mad"]


def available() -> bool:
    """True when the compiled kernel is used."""
    return HAVE_NUMBA and compiled_available()


if HAVE_NUMBA:
    numba_cache_dir()  # a user cache folder when the package folder is read-only (README)
    from numba import njit, prange

    @njit(cache=True, inline="always")
    def _weights(t, w, dw):  # pragma: no cover - compiled
        s = 1.0 - t
        t2 = t * t
        t3 = t2 * t
        w[0] = s * s * s / 6.0
        w[1] = (3.0 * t3 - 6.0 * t2 + 4.0) / 6.0
        w[2] = (-3.0 * t3 + 3.0 * t2 + 3.0 * t + 1.0) / 6.0
        w[3] = t3 / 6.0
        dw[0] = -0.5 * s * s
        dw[1] = 1.5 * t2 - 2.0 * t
        dw[2] = -1.5 * t2 + t + 0.5
        dw[3] = 0.5 * t2

    @njit(parallel=True, cache=True)
    def _interpolate(coef, u, v, out, du, dv, want):  # pragma: no cover - compiled
        n, p = u.shape
        stride = 0 if coef.shape[0] == 1 else 1
        sy, sx = coef.shape[1], coef.shape[2]
        for i in prange(n):
            g = i * stride
            wu = np.empty(4)
            dwu = np.empty(4)
            wv = np.empty(4)
            dwv = np.empty(4)
            for j in range(p):
                uu = u[i, j]
                vv = v[i, j]
                if not (uu >= 0.0 and uu <= sx - 1 and vv >= 0.0 and vv <= sy - 1):
                    out[i, j] = 0.0
                    if want:
                        du[i, j] = 0.0
                        dv[i, j] = 0.0
                    continue
                iu = int(math.floor(uu))
                iv = int(math.floor(vv))
                _weights(uu - iu, wu, dwu)
                _weights(vv - iv, wv, dwv)
                acc = 0.0
                accu = 0.0
                accv = 0.0
                for a in range(4):
                    y = iv + a - 1
                    if y < 0 or y >= sy:
                        continue
                    row = 0.0
                    rowd = 0.0
                    for b in range(4):
                        x = iu + b - 1
                        if x < 0 or x >= sx:
                            continue
                        c = coef[g, y, x]
                        row += wu[b] * c
                        rowd += dwu[b] * c
                    acc += wv[a] * row
                    accu += wv[a] * rowd
                    accv += dwv[a] * row
                out[i, j] = acc
                if want:
                    du[i, j] = accu
                    dv[i, j] = accv


    @njit(cache=True)
    def _node_median_mad(z, order, start, count, med, mad):  # pragma: no cover - compiled
        for k in range(count.shape[0]):
            m = count[k]
            if m == 0:
                continue
            seg = np.empty(m)
            for i in range(m):
                seg[i] = z[order[start[k] + i]]
            seg.sort()
            c = seg[m // 2]
            for i in range(m):
                seg[i] = abs(seg[i] - c)
            seg.sort()
            med[k] = c
            mad[k] = seg[m // 2]


def node_median_mad(z: np.ndarray, nodes: np.ndarray, n_nodes: int):
    """The compiled twin of :func:`psfkit.psf.empirical.node_median_mad` (same arguments)."""
    order = np.argsort(nodes, kind="stable")
    count = np.bincount(nodes, minlength=n_nodes)
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    med = np.zeros(n_nodes)
    mad = np.zeros(n_nodes)
    _node_median_mad(np.ascontiguousarray(z, dtype=np.float64), order, start, count, med, mad)
    return med, mad


def interpolate(coefficients: np.ndarray, u: np.ndarray, v: np.ndarray, derivatives: bool):
    """The compiled twin of :func:`psfkit.psf.empirical.cubic_interpolate` (same arguments)."""
    coef = np.ascontiguousarray(coefficients, dtype=np.float64)
    u = np.ascontiguousarray(u, dtype=np.float64)
    v = np.ascontiguousarray(v, dtype=np.float64)
    out = np.empty(u.shape)
    du = np.empty(u.shape) if derivatives else np.empty((1, 1))
    dv = np.empty(u.shape) if derivatives else np.empty((1, 1))
    _interpolate(coef, u, v, out, du, dv, derivatives)
    return (out, du, dv) if derivatives else out
