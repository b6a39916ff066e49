"""Compiled (numba) normal equations for the analytic models.

The Levenberg-Marquardt loop in :mod:`psfkit.fitting` stays in numpy; what costs
is building, for every star, chi2, J^T W J and J^T W r over its pixels (and
their Gauss-Legendre sub-nodes).  Here that is one fused loop per star
(``prange`` over stars, so every core works), without materialising the
Jacobian.  The formulas are those of :mod:`psfkit.models` (the pure-numpy path,
which the tests compare against to 1e-9 relative).

Set the environment variable ``PSFKIT_BACKEND=numpy`` to turn this path off.
"""

from __future__ import annotations

import math
import os

import numpy as np

__all__ = ["available", "gaussian_normal_equations", "moffat_normal_equations"]

try:  # numba is a dependency, but keep the pure-numpy path working without it
    import numba
    from numba import njit, prange

    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    _HAVE_NUMBA = False


def available() -> bool:
    """True when the compiled path can be used."""
    return _HAVE_NUMBA and os.environ.get("PSFKIT_BACKEND", "auto").lower() != "numpy"


if _HAVE_NUMBA:
    _SQRT2 = math.sqrt(2.0)
    _SQRT2PI = math.sqrt(2.0 * math.pi)
    _INV_SQRT2PI = 1.0 / _SQRT2PI

    @njit(cache=True, inline="always")
    def _phi_diff(a, b):
        if a > 0:
            return 0.5 * (math.erfc(a / _SQRT2) - math.erfc(b / _SQRT2))
        return 0.5 * (math.erfc(-b / _SQRT2) - math.erfc(-a / _SQRT2))

    @njit(cache=True, inline="always")
    def _accumulate(g, fidx, wt, r, jtj, jtr, i):
        nf = fidx.size
        for p in range(nf):
            gp = g[fidx[p]] * wt
            jtr[i, p] += gp * r
            for q in range(p + 1):
                jtj[i, p, q] += gp * g[fidx[q]]

    @njit(parallel=True, cache=True)
    def _gauss_erf(params, data, weight, h, w, fidx, chi2, jtj, jtr):
        n = params.shape[0]
        for i in prange(n):
            B = params[i, 0]
            A = params[i, 1]
            x0 = params[i, 2]
            y0 = params[i, 3]
            sx = params[i, 4]
            sy = params[i, 5]
            ix = np.empty(w)
            dix0 = np.empty(w)
            dixs = np.empty(w)
            iy = np.empty(h)
            diy0 = np.empty(h)
            diys = np.empty(h)
            for c in range(w):
                uh = (c + 0.5 - x0) / sx
                ul = (c - 0.5 - x0) / sx
                d = _phi_diff(ul, uh)
                ph = math.exp(-0.5 * uh * uh) * _INV_SQRT2PI
                pl = math.exp(-0.5 * ul * ul) * _INV_SQRT2PI
                ix[c] = sx * _SQRT2PI * d
                dix0[c] = -_SQRT2PI * (ph - pl)
                dixs[c] = _SQRT2PI * (d - (uh * ph - ul * pl))
            for rr in range(h):
                uh = (rr + 0.5 - y0) / sy
                ul = (rr - 0.5 - y0) / sy
                d = _phi_diff(ul, uh)
                ph = math.exp(-0.5 * uh * uh) * _INV_SQRT2PI
                pl = math.exp(-0.5 * ul * ul) * _INV_SQRT2PI
                iy[rr] = sy * _SQRT2PI * d
                diy0[rr] = -_SQRT2PI * (ph - pl)
                diys[rr] = _SQRT2PI * (d - (uh * ph - ul * pl))
            g = np.zeros(7)
            g[0] = 1.0
            acc = 0.0
            for rr in range(h):
                for c in range(w):
                    m = rr * w + c
                    wt = weight[i, m]
                    if wt == 0.0:
                        continue
                    prod = iy[rr] * ix[c]
                    val = B + A * prod
                    r = data[i, m] - val
                    acc += wt * r * r
                    g[1] = prod
                    g[2] = A * iy[rr] * dix0[c]
                    g[3] = A * diy0[rr] * ix[c]
                    g[4] = A * iy[rr] * dixs[c]
                    g[5] = A * diys[rr] * ix[c]
                    _accumulate(g, fidx, wt, r, jtj, jtr, i)
            chi2[i] = acc

    @njit(parallel=True, cache=True)
    def _gauss_sub(params, data, weight, h, w, fidx, offs, offw, chi2, jtj, jtr):
        n = params.shape[0]
        k = offs.size
        for i in prange(n):
            B = params[i, 0]
            A = params[i, 1]
            x0 = params[i, 2]
            y0 = params[i, 3]
            isx2 = 1.0 / (params[i, 4] * params[i, 4])
            isy2 = 1.0 / (params[i, 5] * params[i, 5])
            c = math.cos(params[i, 6])
            s = math.sin(params[i, 6])
            isx = 1.0 / params[i, 4]
            isy = 1.0 / params[i, 5]
            g = np.zeros(7)
            acc = 0.0
            for rr in range(h):
                for cc in range(w):
                    m = rr * w + cc
                    wt = weight[i, m]
                    if wt == 0.0:
                        continue
                    e_sum = 0.0
                    g2 = 0.0
                    g3 = 0.0
                    g4 = 0.0
                    g5 = 0.0
                    g6 = 0.0
                    for a in range(k):
                        dy = rr + offs[a] - y0
                        for b in range(k):
                            dx = cc + offs[b] - x0
                            ww = offw[a] * offw[b]
                            xp = dx * c + dy * s
                            yp = -dx * s + dy * c
                            e = ww * math.exp(-0.5 * (xp * xp * isx2 + yp * yp * isy2))
                            e_sum += e
                            g2 += e * (xp * c * isx2 - yp * s * isy2)
                            g3 += e * (xp * s * isx2 + yp * c * isy2)
                            g4 += e * xp * xp * isx2 * isx
                            g5 += e * yp * yp * isy2 * isy
                            g6 += -e * xp * yp * (isx2 - isy2)
                    val = B + A * e_sum
                    r = data[i, m] - val
                    acc += wt * r * r
                    g[0] = 1.0
                    g[1] = e_sum
                    g[2] = A * g2
                    g[3] = A * g3
                    g[4] = A * g4
                    g[5] = A * g5
                    g[6] = A * g6
                    _accumulate(g, fidx, wt, r, jtj, jtr, i)
            chi2[i] = acc

    @njit(parallel=True, cache=True)
    def _moffat_sub(params, data, weight, h, w, fidx, offs, offw, chi2, jtj, jtr):
        n = params.shape[0]
        k = offs.size
        for i in prange(n):
            B = params[i, 0]
            A = params[i, 1]
            x0 = params[i, 2]
            y0 = params[i, 3]
            iax2 = 1.0 / (params[i, 4] * params[i, 4])
            iay2 = 1.0 / (params[i, 5] * params[i, 5])
            c = math.cos(params[i, 6])
            s = math.sin(params[i, 6])
            beta = params[i, 7]
            iax = 1.0 / params[i, 4]
            iay = 1.0 / params[i, 5]
            g = np.zeros(8)
            acc = 0.0
            for rr in range(h):
                for cc in range(w):
                    m = rr * w + cc
                    wt = weight[i, m]
                    if wt == 0.0:
                        continue
                    p_sum = 0.0
                    g2 = 0.0
                    g3 = 0.0
                    g4 = 0.0
                    g5 = 0.0
                    g6 = 0.0
                    g7 = 0.0
                    for a in range(k):
                        dy = rr + offs[a] - y0
                        for b in range(k):
                            dx = cc + offs[b] - x0
                            ww = offw[a] * offw[b]
                            xp = dx * c + dy * s
                            yp = -dx * s + dy * c
                            u = 1.0 + xp * xp * iax2 + yp * yp * iay2
                            logu = math.log(u)
                            p = ww * math.exp(-beta * logu)
                            D = -beta * p / u  # times A later
                            p_sum += p
                            g2 += -2.0 * D * (xp * c * iax2 - yp * s * iay2)
                            g3 += -2.0 * D * (xp * s * iax2 + yp * c * iay2)
                            g4 += -2.0 * D * xp * xp * iax2 * iax
                            g5 += -2.0 * D * yp * yp * iay2 * iay
                            g6 += 2.0 * D * xp * yp * (iax2 - iay2)
                            g7 += -p * logu
                    val = B + A * p_sum
                    r = data[i, m] - val
                    acc += wt * r * r
                    g[0] = 1.0
                    g[1] = p_sum
                    g[2] = A * g2
                    g[3] = A * g3
                    g[4] = A * g4
                    g[5] = A * g5
                    g[6] = A * g6
                    g[7] = A * g7
                    _accumulate(g, fidx, wt, r, jtj, jtr, i)
            chi2[i] = acc


def _finish(jtj):
    # fill the upper triangle
    iu = np.triu_indices(jtj.shape[1], 1)
    jtj[:, iu[0], iu[1]] = jtj[:, iu[1], iu[0]]
    return jtj


def _offsets(k: int):
    from .models import gauss_legendre_offsets

    off, wts = gauss_legendre_offsets(k)
    return np.ascontiguousarray(off), np.ascontiguousarray(wts)


def gaussian_normal_equations(params, data, weight, shape, free, k, erf):
    """chi2 (n,), J^T W J (n, nf, nf), J^T W r (n, nf) of the Gaussian on flattened stamps."""
    h, w = shape
    params = np.ascontiguousarray(params, dtype=np.float64)
    data = np.ascontiguousarray(data, dtype=np.float64)
    weight = np.ascontiguousarray(weight, dtype=np.float64)
    fidx = np.flatnonzero(free).astype(np.int64)
    n, nf = params.shape[0], fidx.size
    chi2 = np.zeros(n)
    jtj = np.zeros((n, nf, nf))
    jtr = np.zeros((n, nf))
    if erf:
        _gauss_erf(params, data, weight, h, w, fidx, chi2, jtj, jtr)
    else:
        off, wts = _offsets(max(int(k), 1))
        _gauss_sub(params, data, weight, h, w, fidx, off, wts, chi2, jtj, jtr)
    return chi2, _finish(jtj), jtr


def moffat_normal_equations(params, data, weight, shape, free, k):
    """chi2, J^T W J, J^T W r of the Moffat on flattened stamps."""
    h, w = shape
    params = np.ascontiguousarray(params, dtype=np.float64)
    data = np.ascontiguousarray(data, dtype=np.float64)
    weight = np.ascontiguousarray(weight, dtype=np.float64)
    fidx = np.flatnonzero(free).astype(np.int64)
    n, nf = params.shape[0], fidx.size
    chi2 = np.zeros(n)
    jtj = np.zeros((n, nf, nf))
    jtr = np.zeros((n, nf))
    off, wts = _offsets(max(int(k), 1))
    _moffat_sub(params, data, weight, h, w, fidx, off, wts, chi2, jtj, jtr)
    return chi2, _finish(jtj), jtr
