"""Compiled (numba) normal equations of the per-star shape fit with the frame's PSF, stars in parallel.

:func:`psfkit.psf.frame_shape.fit_shapes` calls :func:`normal_equations` here when the compiled path
is available (``PSFKIT_BACKEND``); :func:`psfkit.psf.frame_shape.normal_equations_numpy` is its numpy
twin (same arguments, same results) and ``tests/test_frame_shape.py`` compares the two.

Per star and pixel: the pixel's offset from the centre mapped by the inverse of the star's linear
map, ``q = A^-1 (r - r0)``; the PSF's cubic B-spline (its gradient and Hessian) at ``q``; the
model ``B + F / det A * (P(q) + (A^-2 - I) : H(q) / 24)`` (the second term gives the stretched
star its pixel back: see the numpy twin), its variance (Poisson and read noise, a fixed per-pixel variance, the PSF's
own uncertainty times the flux squared), the weights, the chi-square with the previous point's
weights and with this one's, and ``J^T W J`` (upper triangle) and ``J^T W r`` of the 7 parameters.
"""

from __future__ import annotations

import math

import numpy as np

from psfkit.backend import HAVE_NUMBA, compiled_available, numba_cache_dir

__all__ = ["available", "normal_equations"]


def available() -> bool:
    """True when the compiled kernel is used."""
    return HAVE_NUMBA and compiled_available()


if HAVE_NUMBA:
    numba_cache_dir()  # a user cache folder when the package folder is read-only (README)
    from numba import njit, prange

    # the cubic B-spline's weights and their derivatives: the stacking kernels' (one formula)
    from psfkit.psf._empirical_kernels import _weights

    @njit(cache=True, inline="always")
    def _weights2(t, w, dw, d2w):  # pragma: no cover - compiled
        _weights(t, w, dw)
        d2w[0] = 1.0 - t
        d2w[1] = 3.0 * t - 2.0
        d2w[2] = 1.0 - 3.0 * t
        d2w[3] = t

    @njit(cache=True)
    def _spline(grid, uu, vv, wu, dwu, d2wu, wv, dwv, d2wv, out, second):  # pragma: no cover - compiled
        """Out = value, d/du, d/dv (and d2/du2, d2/dudv, d2/dv2 when ``second``) of a spline grid at a
        node position; zero off the grid.
        """
        sy, sx = grid.shape
        for q in range(6):
            out[q] = 0.0
        if not (uu >= 0.0 and uu <= sx - 1 and vv >= 0.0 and vv <= sy - 1):
            return
        iu = int(math.floor(uu))
        iv = int(math.floor(vv))
        _weights2(uu - iu, wu, dwu, d2wu)
        _weights2(vv - iv, wv, dwv, d2wv)
        for a in range(4):
            y = iv + a - 1
            if y < 0 or y >= sy:
                continue
            row = 0.0
            rowd = 0.0
            rowdd = 0.0
            for b in range(4):
                x = iu + b - 1
                if x < 0 or x >= sx:
                    continue
                c = grid[y, x]
                row += wu[b] * c
                rowd += dwu[b] * c
                rowdd += d2wu[b] * c
            out[0] += wv[a] * row
            out[1] += wv[a] * rowd
            out[2] += dwv[a] * row
            if second:
                out[3] += wv[a] * rowdd
                out[4] += dwv[a] * rowd
                out[5] += d2wv[a] * row

    @njit(cache=True)
    def _dg(d11, d12, d22, i00, i01, i11, out, j):  # pragma: no cover - compiled
        """d(A^-2)/dtheta for dA^-1/dtheta = -D, D = A^-1 E A^-1 (symmetric): -(D A^-1 + A^-1 D)."""
        out[j, 0] = -2.0 * (d11 * i00 + d12 * i01)
        out[j, 1] = -((d11 * i01 + d12 * i11) + (i00 * d12 + i01 * d22))
        out[j, 2] = -2.0 * (d12 * i01 + d22 * i11)

    @njit(parallel=True, cache=True)
    def _normal(coef, terms, vcoef, has_var, data, mask, var_fixed, has_fixed, params, old_wgt, o, w, gain, rn2,
                perr2, wgt, chi2_old, chi2, jtj, jtr):  # pragma: no cover - compiled
        n, m = data.shape
        nk, s = coef.shape[0], coef.shape[1]
        c0 = (s - 1) / 2.0
        o2 = o * o
        for i in prange(n):
            wu = np.empty(4)
            dwu = np.empty(4)
            d2wu = np.empty(4)
            wv = np.empty(4)
            dwv = np.empty(4)
            d2wv = np.empty(4)
            sp = np.empty(6)
            jac = np.empty(7)
            dg = np.empty((3, 3))
            if nk == 1:
                grid = coef[0]
            else:
                grid = np.zeros((s, s))
                for k in range(nk):
                    t = terms[i, k]
                    for y in range(s):
                        for x in range(s):
                            grid[y, x] += t * coef[k, y, x]
            B, F, x0, y0 = params[i, 0], params[i, 1], params[i, 2], params[i, 3]
            a11 = 1.0 + params[i, 4]
            a12 = params[i, 5]
            a22 = 1.0 + params[i, 6]
            det = a11 * a22 - a12 * a12
            i00 = a22 / det
            i01 = -a12 / det
            i11 = a11 / det
            g11 = i00 * i00 + i01 * i01 - 1.0
            g12 = i00 * i01 + i01 * i11
            g22 = i01 * i01 + i11 * i11 - 1.0
            _dg(i00 * i00, i00 * i01, i01 * i01, i00, i01, i11, dg, 0)
            _dg(2.0 * i00 * i01, i00 * i11 + i01 * i01, 2.0 * i01 * i11, i00, i01, i11, dg, 1)
            _dg(i01 * i01, i01 * i11, i11 * i11, i00, i01, i11, dg, 2)
            fd = F / det
            for q in range(28):
                jtj[i, q] = 0.0
            for q in range(7):
                jtr[i, q] = 0.0
            co = 0.0
            cn = 0.0
            for k in range(m):
                if not mask[i, k]:
                    wgt[i, k] = 0.0
                    continue
                dx = (k % w) - x0
                dy = (k // w) - y0
                qx = i00 * dx + i01 * dy
                qy = i01 * dx + i11 * dy
                _spline(grid, qx * o + c0, qy * o + c0, wu, dwu, d2wu, wv, dwv, d2wv, sp, True)
                p = sp[0]
                gx = sp[1] * o
                gy = sp[2] * o
                hxx = sp[3] * o2
                hxy = sp[4] * o2
                hyy = sp[5] * o2
                pc = p + (g11 * hxx + 2.0 * g12 * hxy + g22 * hyy) / 24.0
                prof = pc / det
                val = B + F * prof
                var = rn2
                if gain > 0.0 and val > 0.0:
                    var += val / gain
                if has_fixed:
                    var += var_fixed[i, k]
                own = perr2 * prof * prof
                if has_var:  # the node variance at the nearest node (a weight: no spline needed)
                    iu = int(math.floor(qx * o + c0 + 0.5))
                    iv = int(math.floor(qy * o + c0 + 0.5))
                    if iu >= 0 and iu < s and iv >= 0 and iv < s:
                        nv = vcoef[iv, iu]
                        if nv > 0.0:
                            own += nv / (det * det)
                var += F * F * own
                wk = 1.0 / var if var > 0.0 else 0.0
                wgt[i, k] = wk
                r = data[i, k] - val
                co += old_wgt[i, k] * r * r
                cn += wk * r * r
                jac[0] = 1.0
                jac[1] = prof
                jac[2] = -fd * (gx * i00 + gy * i01)
                jac[3] = -fd * (gx * i01 + gy * i11)
                jac[4] = fd * (-qx * (gx * i00 + gy * i01) - pc * i00
                               + (dg[0, 0] * hxx + 2.0 * dg[0, 1] * hxy + dg[0, 2] * hyy) / 24.0)
                jac[5] = fd * (-(gx * (i00 * qy + i01 * qx) + gy * (i01 * qy + i11 * qx)) - 2.0 * pc * i01
                               + (dg[1, 0] * hxx + 2.0 * dg[1, 1] * hxy + dg[1, 2] * hyy) / 24.0)
                jac[6] = fd * (-qy * (gx * i01 + gy * i11) - pc * i11
                               + (dg[2, 0] * hxx + 2.0 * dg[2, 1] * hxy + dg[2, 2] * hyy) / 24.0)
                wr = wk * r
                idx = 0
                for a in range(7):
                    jtr[i, a] += wr * jac[a]
                    wa = wk * jac[a]
                    for b in range(a, 7):
                        jtj[i, idx] += wa * jac[b]
                        idx += 1
            chi2_old[i] = co
            chi2[i] = cn


def normal_equations(coef, terms, data, mask, params, old_wgt, *, oversampling, width, var_fixed=None,
                     psf_var=None, profile_error=0.0, gain=0.0, read_noise=0.0):
    """The compiled twin of :func:`psfkit.psf.frame_shape.normal_equations_numpy` (same arguments and
    results): ``(chi2_old, chi2, jtj (N, 7, 7), jtr (N, 7), weights (N, P))``.
    """
    n, m = data.shape
    has_fixed = var_fixed is not None
    has_var = psf_var is not None
    wgt = np.zeros((n, m))
    chi2_old = np.zeros(n)
    chi2 = np.zeros(n)
    packed = np.zeros((n, 28))
    jtr = np.zeros((n, 7))
    _normal(np.ascontiguousarray(coef, dtype=np.float64), np.ascontiguousarray(terms, dtype=np.float64),
            np.ascontiguousarray(psf_var if has_var else np.zeros((1, 1)), dtype=np.float64), has_var,
            np.ascontiguousarray(data, dtype=np.float64), np.ascontiguousarray(mask, dtype=np.bool_),
            np.ascontiguousarray(var_fixed if has_fixed else np.zeros((1, 1)), dtype=np.float64), has_fixed,
            np.ascontiguousarray(params, dtype=np.float64), np.ascontiguousarray(old_wgt, dtype=np.float64),
            float(oversampling), int(width), float(gain or 0.0), float(read_noise) ** 2, float(profile_error) ** 2,
            wgt, chi2_old, chi2, packed, jtr)
    iu = np.triu_indices(7)
    jtj = np.zeros((n, 7, 7))
    jtj[:, iu[0], iu[1]] = packed
    jtj[:, iu[1], iu[0]] = packed
    return chi2_old, chi2, jtj, jtr, wgt
