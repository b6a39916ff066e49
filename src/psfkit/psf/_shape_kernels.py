"""Compiled (numba) per-star shape fit with the frame's PSF: the whole Levenberg-Marquardt loop, stars in parallel.

:func:`psfkit.psf.frame_shape.fit_shapes` calls :func:`fit_batch` here when the compiled path is
available (``PSFKIT_BACKEND``): the same loop as its numpy twin (same steps, same decisions), per
star, with no Python per iteration.  :func:`normal_equations` is the compiled twin of
:func:`psfkit.psf.frame_shape.normal_equations_numpy` (same arguments, same results);
``tests/test_frame_shape.py`` compares both pairs.

Per star and pixel: the pixel's offset from the centre mapped by the inverse of the star's linear
map, ``q = A^-1 (r - r0)``; the PSF's cubic B-spline (its gradient and Hessian) at ``q``; the
model ``B + F / det A * (P(q) + (A^-2 - I) : H(q) / 24)`` (the second term gives the stretched
star its pixel back: see the numpy twin), its variance (Poisson and read noise, a fixed per-pixel
variance, the PSF's own uncertainty times the flux squared), the weights, the chi-square with the
previous point's weights and with this one's, and ``J^T W J`` and ``J^T W r`` of the 7 parameters.

As in :mod:`psfkit.psf._frame_kernels` (whose conventions are imported, not copied): one pass over
the pixels gives a trial's chi-square and its normal equations, the 35 sums held in registers (a
first pass over the pixels reads the spline, scattered; a second, with no branch, vectorises);
the spline's taps are scalars (the grid padded with two zero nodes, so that no tap is tested);
a varying PSF's terms are combined only on the nodes the stamp reaches (with a margin, again only
when a step leaves them); each thread's buffers are made once; the 7 x 7 systems are solved with
the analytic engine's Cholesky.  Each star's result does not depend on the threads.
"""

from __future__ import annotations

import math

import numpy as np

from psfkit.backend import HAVE_NUMBA, compiled_available, numba_cache_dir

__all__ = ["available", "fit_batch", "normal_equations"]


def available() -> bool:
    """True when the compiled kernel is used."""
    return HAVE_NUMBA and compiled_available()


if HAVE_NUMBA:
    numba_cache_dir()  # a user cache folder when the package folder is read-only (README)
    from numba import njit, prange

    # the 4-parameter fit's conventions: sums reordered (vectorised) but each star's result the same from
    # run to run; the analytic engine's Cholesky
    from psfkit.psf._compiled import _cho_inverse, _cho_solve, _cholesky
    from psfkit.psf._frame_kernels import _FM

    @njit(cache=True, inline="always")
    def _taps(t):  # pragma: no cover - compiled
        """The cubic B-spline's 4 weights at a fraction t, their first and second derivatives (scalars;
        the stacking kernels' weights, psfkit.psf._empirical_kernels._weights, and the twin's).
        """
        s = 1.0 - t
        t2 = t * t
        sixth = 1.0 / 6.0
        return (s * s * s * sixth, (3.0 * t2 * t - 6.0 * t2 + 4.0) * sixth,
                (-3.0 * t2 * t + 3.0 * t2 + 3.0 * t + 1.0) * sixth, t2 * t * sixth,
                -0.5 * s * s, 1.5 * t2 - 2.0 * t, -1.5 * t2 + t + 0.5, 0.5 * t2,
                s, 3.0 * t - 2.0, 1.0 - 3.0 * t, t)

    @njit(cache=True, inline="always")
    def _row(g, off, w0, w1, w2, w3, d0, d1, d2, d3, e0, e1, e2, e3):  # pragma: no cover - compiled
        c0, c1, c2, c3 = g[off], g[off + 1], g[off + 2], g[off + 3]
        return (w0 * c0 + w1 * c1 + w2 * c2 + w3 * c3, d0 * c0 + d1 * c1 + d2 * c2 + d3 * c3,
                e0 * c0 + e1 * c1 + e2 * c2 + e3 * c3)

    @njit(cache=True, _nrt=False)
    def _reach(s, o, c0, h, w, x0, y0, i00, i01, i11, win):  # pragma: no cover - compiled
        """The padded grid's node rows [win[0], win[1]) and columns [win[2], win[3]) that the stamp's pixels
        read at this centre and map (q is affine in the pixel: its extremes are at the stamp's corners).
        """
        umin = vmin = np.inf
        umax = vmax = -np.inf
        for yy in (0.0, h - 1.0):
            for xx in (0.0, w - 1.0):
                dx = xx - x0
                dy = yy - y0
                u = (i00 * dx + i01 * dy) * o + c0
                v = (i01 * dx + i11 * dy) * o + c0
                umin = min(umin, u)
                umax = max(umax, u)
                vmin = min(vmin, v)
                vmax = max(vmax, v)
        smax = s - 1.0
        win[0] = int(math.floor(min(max(vmin, 0.0), smax))) + 1
        win[1] = int(math.floor(min(max(vmax, 0.0), smax))) + 5
        win[2] = int(math.floor(min(max(umin, 0.0), smax))) + 1
        win[3] = int(math.floor(min(max(umax, 0.0), smax))) + 5

    @njit(cache=True, fastmath=_FM, _nrt=False)
    def _ensure(coefp, terms, s, o, c0, h, w, p, grid, held, win):  # pragma: no cover - compiled
        """The star's PSF (its terms combined) on the padded nodes that p's pixels read, unless ``grid``
        holds them already (``held``: its rows and columns; held[0] < 0: none yet); ``o`` nodes more each
        side, so that the fit's next steps mostly keep them.
        """
        a11 = 1.0 + p[4]
        a12 = p[5]
        a22 = 1.0 + p[6]
        det = a11 * a22 - a12 * a12
        _reach(s, o, c0, h, w, p[2], p[3], a22 / det, -a12 / det, a11 / det, win)
        if held[0] >= 0 and win[0] >= held[0] and win[1] <= held[1] and win[2] >= held[2] and win[3] <= held[3]:
            return
        sp = coefp.shape[1]
        held[0] = max(0, win[0] - o)
        held[1] = min(sp, win[1] + o)
        held[2] = max(0, win[2] - o)
        held[3] = min(sp, win[3] + o)
        nk = coefp.shape[0]
        for y in range(held[0], held[1]):
            t = terms[0]
            for x in range(held[2], held[3]):
                grid[y, x] = t * coefp[0, y, x]
            for k in range(1, nk):
                t = terms[k]
                for x in range(held[2], held[3]):
                    grid[y, x] += t * coefp[k, y, x]

    @njit(cache=True, fastmath=_FM, _nrt=False)
    def _star(grid, s, o, c0, h, w, p, data, mask, vfix, has_fixed, vcoef, has_var, gain, rn2, perr2, old, wgt, jtj,
              jtr, buf):  # pragma: no cover - compiled
        """One star's pass over its pixels at p: (chi2 with ``old``, chi2), this point's weights into
        ``wgt``, J^T W J (7 x 7) and J^T W r into ``jtj``, ``jtr``.  ``grid``: the PSF's spline coefficients
        with two zero nodes around (the nodes a pixel reads filled).
        """
        sp = grid.shape[1]
        g = grid.reshape(grid.size)
        bx, by, bp, bu, bv, buu, buv, bvv, bn, bm = buf[0], buf[1], buf[2], buf[3], buf[4], buf[5], buf[6], buf[7], \
            buf[8], buf[9]
        o2 = o * o
        smax = s - 1.0
        B = p[0]
        F = p[1]
        x0 = p[2]
        y0 = p[3]
        a11 = 1.0 + p[4]
        a12 = p[5]
        a22 = 1.0 + p[6]
        det = a11 * a22 - a12 * a12
        i00 = a22 / det
        i01 = -a12 / det
        i11 = a11 / det
        g11 = i00 * i00 + i01 * i01 - 1.0
        g12 = i00 * i01 + i01 * i11
        g22 = i01 * i01 + i11 * i11 - 1.0
        # d(A^-2)/d(a, b, c): with D = A^-1 E A^-1, -(D A^-1 + A^-1 D)
        da11, da12, da22 = i00 * i00, i00 * i01, i01 * i01
        q00 = -2.0 * (da11 * i00 + da12 * i01)
        q01 = -((da11 * i01 + da12 * i11) + (i00 * da12 + i01 * da22))
        q02 = -2.0 * (da12 * i01 + da22 * i11)
        db11, db12, db22 = 2.0 * i00 * i01, i00 * i11 + i01 * i01, 2.0 * i01 * i11
        q10 = -2.0 * (db11 * i00 + db12 * i01)
        q11 = -((db11 * i01 + db12 * i11) + (i00 * db12 + i01 * db22))
        q12 = -2.0 * (db12 * i01 + db22 * i11)
        dc11, dc12, dc22 = i01 * i01, i01 * i11, i11 * i11
        q20 = -2.0 * (dc11 * i00 + dc12 * i01)
        q21 = -((dc11 * i01 + dc12 * i11) + (i00 * dc12 + i01 * dc22))
        q22 = -2.0 * (dc12 * i01 + dc22 * i11)
        fd = F / det
        idet = 1.0 / det
        nvs = idet * idet
        ig = 1.0 / gain if gain > 0.0 else 0.0
        ff = F * F
        co = 0.0
        cn = 0.0
        r0 = r1 = r2 = r3 = r4 = r5 = r6 = 0.0
        a00 = a01 = a02 = a03 = a04 = a05 = a06 = 0.0
        a11_ = a12_ = a13 = a14 = a15 = a16 = 0.0
        a22_ = a23 = a24 = a25 = a26 = 0.0
        a33 = a34 = a35 = a36 = 0.0
        a44 = a45 = a46 = 0.0
        a55 = a56 = 0.0
        a66 = 0.0
        # pass 1 (gathers): the spline, its gradient and Hessian, and the node variance, at every pixel
        for y in range(h):
            dy = y - y0
            for x in range(w):
                k = y * w + x
                dx = x - x0
                qx = i00 * dx + i01 * dy
                qy = i01 * dx + i11 * dy
                bx[k] = qx
                by[k] = qy
                uu = qx * o + c0
                vv = qy * o + c0
                pv = pu = pvv = puv = puu = pp = 0.0
                if mask[k] and uu >= 0.0 and uu <= smax and vv >= 0.0 and vv <= smax:
                    fu = math.floor(uu)
                    fv = math.floor(vv)
                    w0, w1, w2, w3, d0, d1, d2, d3, e0, e1, e2, e3 = _taps(uu - fu)
                    v0, v1, v2, v3, f0, f1, f2, f3, h0, h1, h2, h3 = _taps(vv - fv)
                    off = (int(fv) + 1) * sp + int(fu) + 1  # node (iv - 1, iu - 1) of the padded grid
                    ra, rad, radd = _row(g, off, w0, w1, w2, w3, d0, d1, d2, d3, e0, e1, e2, e3)
                    rb, rbd, rbdd = _row(g, off + sp, w0, w1, w2, w3, d0, d1, d2, d3, e0, e1, e2, e3)
                    rc, rcd, rcdd = _row(g, off + 2 * sp, w0, w1, w2, w3, d0, d1, d2, d3, e0, e1, e2, e3)
                    rd, rdd, rddd = _row(g, off + 3 * sp, w0, w1, w2, w3, d0, d1, d2, d3, e0, e1, e2, e3)
                    pp = v0 * ra + v1 * rb + v2 * rc + v3 * rd
                    pu = v0 * rad + v1 * rbd + v2 * rcd + v3 * rdd
                    pv = f0 * ra + f1 * rb + f2 * rc + f3 * rd
                    puu = v0 * radd + v1 * rbdd + v2 * rcdd + v3 * rddd
                    puv = f0 * rad + f1 * rbd + f2 * rcd + f3 * rdd
                    pvv = h0 * ra + h1 * rb + h2 * rc + h3 * rd
                bp[k] = pp
                bu[k] = pu
                bv[k] = pv
                buu[k] = puu
                buv[k] = puv
                bvv[k] = pvv
                nvk = 0.0
                if has_var:  # the node variance at the nearest node (a weight: no spline needed)
                    iu = int(math.floor(uu + 0.5))
                    iv = int(math.floor(vv + 0.5))
                    if iu >= 0 and iu < s and iv >= 0 and iv < s:
                        nv = vcoef[iv, iu]
                        if nv > 0.0:
                            nvk = nv * nvs
                bn[k] = nvk
                bm[k] = 1.0 if mask[k] else 0.0
        # pass 2 (no branch, vectorised): model, weights, chi-squares and the normal equations' sums
        for k in range(h * w):
            qx = bx[k]
            qy = by[k]
            gx = bu[k] * o
            gy = bv[k] * o
            hxx = buu[k] * o2
            hxy = buv[k] * o2
            hyy = bvv[k] * o2
            pc = bp[k] + (g11 * hxx + 2.0 * g12 * hxy + g22 * hyy) * _24
            prof = pc * idet
            val = B + F * prof
            var = rn2 + max(val, 0.0) * ig + vfix[k] + ff * (perr2 * prof * prof + bn[k])
            wk = bm[k] / var if var > 0.0 else 0.0
            wgt[k] = wk
            r = bm[k] * (data[k] - val)
            co += old[k] * r * r
            wr = wk * r
            cn += wr * r
            tx = gx * i00 + gy * i01
            ty = gx * i01 + gy * i11
            j1 = prof
            j2 = -fd * tx
            j3 = -fd * ty
            j4 = fd * (-qx * tx - pc * i00 + (q00 * hxx + 2.0 * q01 * hxy + q02 * hyy) * _24)
            j5 = fd * (-(gx * (i00 * qy + i01 * qx) + gy * (i01 * qy + i11 * qx)) - 2.0 * pc * i01
                       + (q10 * hxx + 2.0 * q11 * hxy + q12 * hyy) * _24)
            j6 = fd * (-qy * ty - pc * i11 + (q20 * hxx + 2.0 * q21 * hxy + q22 * hyy) * _24)
            r0 += wr
            r1 += wr * j1
            r2 += wr * j2
            r3 += wr * j3
            r4 += wr * j4
            r5 += wr * j5
            r6 += wr * j6
            a00 += wk
            w1_ = wk * j1
            a01 += w1_
            a02 += wk * j2
            a03 += wk * j3
            a04 += wk * j4
            a05 += wk * j5
            a06 += wk * j6
            a11_ += w1_ * j1
            a12_ += w1_ * j2
            a13 += w1_ * j3
            a14 += w1_ * j4
            a15 += w1_ * j5
            a16 += w1_ * j6
            w2_ = wk * j2
            a22_ += w2_ * j2
            a23 += w2_ * j3
            a24 += w2_ * j4
            a25 += w2_ * j5
            a26 += w2_ * j6
            w3_ = wk * j3
            a33 += w3_ * j3
            a34 += w3_ * j4
            a35 += w3_ * j5
            a36 += w3_ * j6
            w4_ = wk * j4
            a44 += w4_ * j4
            a45 += w4_ * j5
            a46 += w4_ * j6
            w5_ = wk * j5
            a55 += w5_ * j5
            a56 += w5_ * j6
            a66 += wk * j6 * j6
        jtr[0], jtr[1], jtr[2], jtr[3], jtr[4], jtr[5], jtr[6] = r0, r1, r2, r3, r4, r5, r6
        jtj[0, 0], jtj[0, 1], jtj[0, 2], jtj[0, 3], jtj[0, 4], jtj[0, 5], jtj[0, 6] = a00, a01, a02, a03, a04, a05, a06
        jtj[1, 1], jtj[1, 2], jtj[1, 3], jtj[1, 4], jtj[1, 5], jtj[1, 6] = a11_, a12_, a13, a14, a15, a16
        jtj[2, 2], jtj[2, 3], jtj[2, 4], jtj[2, 5], jtj[2, 6] = a22_, a23, a24, a25, a26
        jtj[3, 3], jtj[3, 4], jtj[3, 5], jtj[3, 6] = a33, a34, a35, a36
        jtj[4, 4], jtj[4, 5], jtj[4, 6] = a44, a45, a46
        jtj[5, 5], jtj[5, 6] = a55, a56
        jtj[6, 6] = a66
        for i in range(7):
            for j in range(i):
                jtj[i, j] = jtj[j, i]
        return co, cn

    @njit(cache=True)
    def _workspace(sp, m):  # pragma: no cover - compiled
        """One thread's buffers: a padded grid, pixel weights (3), 7 x 7 matrices (5), 7-vectors (6), windows,
        and the pixel pass's 10 per-pixel rows.
        """
        return (np.zeros((sp, sp)), np.zeros(m), np.zeros(m), np.zeros(m),
                (np.zeros((7, 7)), np.zeros((7, 7)), np.zeros((7, 7)), np.zeros((7, 7)), np.zeros((7, 7))),
                (np.zeros(7), np.zeros(7), np.zeros(7), np.zeros(7), np.zeros(7), np.zeros(7)),
                np.full(4, -1, np.int64), np.zeros(4, np.int64), np.zeros((10, m)))

    @njit(parallel=True, cache=True)
    def _normal_batch(coefp, terms, glob, s, o, h, w, vcoef, has_var, data, mask, vfix, has_fixed, params, old, gain,
                      rn2, perr2, wgt, chi2_old, chi2, jtj, jtr, nblocks):  # pragma: no cover - compiled
        n = params.shape[0]
        c0 = (s - 1) / 2.0
        per = (n + nblocks - 1) // nblocks
        for b in prange(nblocks):
            grid, _, _, _, _, _, held, win, buf = _workspace(coefp.shape[1], h * w)
            for i in range(b * per, min(n, (b + 1) * per)):
                if glob:
                    gi = coefp[0]
                else:
                    held[0] = -1
                    _ensure(coefp, terms[i], s, o, c0, h, w, params[i], grid, held, win)
                    gi = grid
                co, cn = _star(gi, s, o, c0, h, w, params[i], data[i], mask[i], vfix[i if has_fixed else 0],
                               has_fixed, vcoef, has_var, gain, rn2, perr2, old[i], wgt[i], jtj[i], jtr[i], buf)
                chi2_old[i] = co
                chi2[i] = cn

    @njit(cache=True, _nrt=False)
    def _stretch_ok1(q):  # pragma: no cover - compiled
        """frame_shape._stretch_ok for one star (both eigenvalues of A within the bounds, all finite)."""
        for k in range(7):
            if not math.isfinite(q[k]):
                return False
        a11 = 1.0 + q[4]
        a12 = q[5]
        a22 = 1.0 + q[6]
        tr = a11 + a22
        det = a11 * a22 - a12 * a12
        disc = math.sqrt(max(tr * tr / 4 - det, 0.0))
        return tr / 2 - disc >= _MIN and tr / 2 + disc <= _MAX

    @njit(cache=True, _nrt=False)
    def _fit_one(i, coefp, terms, glob, s, o, c0, h, w, vcoef, has_var, data, mask, vfix, has_fixed, gain, rn2,
                 perr2, max_iter, step_tol, params, cov, out_chi2, out_iter, out_conv, out_inv, ws):  # pragma: no cover
        grid, wgt, twgt, zero, mats, vecs, held, win, buf = ws
        jtj, tjtj, sysm, low, inv = mats
        jtr, tjtr, step, p, trial, _ = vecs
        for q in range(7):
            p[q] = params[i, q]
        held[0] = -1
        di = data[i]
        mi = mask[i]
        vi = vfix[i if has_fixed else 0]
        gi = coefp[0]
        if not glob:
            _ensure(coefp, terms[i], s, o, c0, h, w, p, grid, held, win)
            gi = grid
        _, chi2 = _star(gi, s, o, c0, h, w, p, di, mi, vi, has_fixed, vcoef, has_var, gain, rn2, perr2, zero, wgt,
                        jtj, jtr, buf)
        lam = 1e-3
        it = 0
        converged = False
        if math.isfinite(chi2):
            while it < max_iter:
                # the damped system (the twin's: lam times the diagonal, floored)
                dmax = 0.0
                for q in range(7):
                    if jtj[q, q] > dmax:
                        dmax = jtj[q, q]
                floor = 1e-12 * dmax + 1e-300
                for q in range(7):
                    for r in range(7):
                        sysm[q, r] = jtj[q, r]
                    sysm[q, q] = jtj[q, q] + lam * max(jtj[q, q], floor)
                solved = _cholesky(sysm, low)
                if solved:
                    _cho_solve(low, jtr, step)
                    for q in range(7):
                        if not math.isfinite(step[q]):
                            solved = False
                if not solved:
                    for q in range(7):
                        step[q] = 0.0
                it += 1
                small = 0.0
                for q in range(7):
                    trial[q] = p[q] + step[q]
                    for r in range(7):
                        small += step[q] * jtj[q, r] * step[r]
                small_ok = small <= step_tol * step_tol
                better = False
                t_old = np.inf
                t_new = np.inf
                if solved and _stretch_ok1(trial):
                    if not glob:
                        _ensure(coefp, terms[i], s, o, c0, h, w, trial, grid, held, win)
                    t_old, t_new = _star(gi, s, o, c0, h, w, trial, di, mi, vi, has_fixed, vcoef, has_var, gain, rn2,
                                         perr2, wgt, twgt, tjtj, tjtr, buf)
                    better = math.isfinite(t_old) and t_old <= chi2
                if better:
                    tiny = (chi2 - t_old) <= 1e-10 * max(chi2, 1e-300)
                    p, trial = trial, p
                    wgt, twgt = twgt, wgt
                    jtj, tjtj = tjtj, jtj
                    jtr, tjtr = tjtr, jtr
                    chi2 = t_new
                    lam = max(lam / 5.0, 1e-12)
                    # the Gauss-Newton step from the new point: below the tolerance, no further trial
                    near = False
                    if _cholesky(jtj, low):
                        _cho_solve(low, jtr, step)
                        g = 0.0
                        for q in range(7):
                            g += step[q] * jtr[q]
                        near = g >= 0.0 and g <= step_tol * step_tol
                    done = small_ok or tiny or near
                else:
                    lam *= 10.0
                    done = (small_ok and solved) or lam > 1e10
                if done:
                    converged = True
                    break
        out_inv[i] = False
        if _cho_inverse(jtj, low, inv):
            pos = True
            for q in range(7):
                if not inv[q, q] > 0.0:
                    pos = False
            out_inv[i] = pos
            for q in range(7):
                for r in range(7):
                    cov[i, q, r] = inv[q, r]
        for q in range(7):
            params[i, q] = p[q]
        out_chi2[i] = chi2
        out_iter[i] = it
        out_conv[i] = converged

    @njit(parallel=True, cache=True)
    def _fit_batch(coefp, terms, glob, s, o, h, w, vcoef, has_var, data, mask, vfix, has_fixed, gain, rn2, perr2,
                   max_iter, step_tol, params, cov, out_chi2, out_iter, out_conv, out_inv, active,
                   nblocks):  # pragma: no cover - compiled
        n = params.shape[0]
        c0 = (s - 1) / 2.0
        per = (n + nblocks - 1) // nblocks
        for b in prange(nblocks):
            ws = _workspace(coefp.shape[1], h * w)
            for i in range(b * per, min(n, (b + 1) * per)):
                if active[i]:
                    _fit_one(i, coefp, terms, glob, s, o, c0, h, w, vcoef, has_var, data, mask, vfix, has_fixed,
                             gain, rn2, perr2, max_iter, step_tol, params, cov, out_chi2, out_iter, out_conv,
                             out_inv, ws)


_24 = 1.0 / 24.0  # the pixel term's factor

#: the map's eigenvalue bounds (frame_shape.MIN_STRETCH, MAX_STRETCH; repeated here so that the kernel
#: module does not import its caller: tests/test_frame_shape.py checks they agree)
_MIN, _MAX = 0.5, 3.0


def _padded(coef: np.ndarray) -> np.ndarray:
    """The spline coefficients (K, S, S) with two zero nodes around: every tap of a position on the grid
    is then inside the array (no test per tap).
    """
    k, s, _ = coef.shape
    out = np.zeros((k, s + 4, s + 4))
    out[:, 2:s + 2, 2:s + 2] = coef
    return out


def _args(coef, terms, psf_var):
    coef = np.asarray(coef, dtype=np.float64)
    terms = np.ascontiguousarray(terms, dtype=np.float64)
    glob = bool(terms.shape[1] == 1 and np.all(terms == 1.0))  # every star's PSF the first term's grid itself
    has_var = psf_var is not None
    vcoef = np.ascontiguousarray(psf_var if has_var else np.zeros((1, 1)), dtype=np.float64)
    return _padded(coef), terms, glob, int(coef.shape[-1]), vcoef, has_var


def _blocks(n: int) -> int:
    import numba

    return max(1, min(n, 8 * numba.get_num_threads()))


def normal_equations(coef, terms, data, mask, params, old_wgt, *, oversampling, width, var_fixed=None,
                     psf_var=None, profile_error=0.0, gain=0.0, read_noise=0.0):
    """The compiled twin of :func:`psfkit.psf.frame_shape.normal_equations_numpy` (same arguments and
    results): ``(chi2_old, chi2, jtj (N, 7, 7), jtr (N, 7), weights (N, P))``.
    """
    n, m = data.shape
    has_fixed = var_fixed is not None
    coefp, terms, glob, s, vcoef, has_var = _args(coef, terms, psf_var)
    wgt = np.zeros((n, m))
    chi2_old = np.zeros(n)
    chi2 = np.zeros(n)
    jtj = np.zeros((n, 7, 7))
    jtr = np.zeros((n, 7))
    _normal_batch(coefp, terms, glob, s, float(oversampling), m // int(width), int(width), vcoef, has_var,
                  np.ascontiguousarray(data, dtype=np.float64), np.ascontiguousarray(mask, dtype=np.bool_),
                  np.ascontiguousarray(var_fixed if has_fixed else np.zeros((1, m)), dtype=np.float64), has_fixed,
                  np.ascontiguousarray(params, dtype=np.float64), np.ascontiguousarray(old_wgt, dtype=np.float64),
                  float(gain or 0.0), float(read_noise) ** 2, float(profile_error) ** 2, wgt, chi2_old, chi2, jtj, jtr,
                  _blocks(n))
    return chi2_old, chi2, jtj, jtr, wgt


def fit_batch(coef, terms, data, mask, params, active, *, oversampling, width, var_fixed=None, psf_var=None,
              profile_error=0.0, gain=0.0, read_noise=0.0, max_iter=40, step_tol=0.01):
    """The whole Levenberg-Marquardt fit of every active star, per star and in parallel: the compiled twin
    of the loop in :func:`psfkit.psf.frame_shape.fit_shapes` (same steps, same decisions).

    ``params`` (N, 7) the start.  Returns ``(params, cov (N, 7, 7), chi2, iterations, converged,
    inverse_ok)``: ``inverse_ok`` where J^T W J at the end is positive definite with a positive diagonal
    of its inverse (``cov`` NaN elsewhere).
    """
    n, m = data.shape
    has_fixed = var_fixed is not None
    coefp, terms, glob, s, vcoef, has_var = _args(coef, terms, psf_var)
    params = np.array(params, dtype=np.float64, order="C")
    cov = np.full((n, 7, 7), np.nan)
    out_chi2 = np.full(n, np.nan)
    out_iter = np.zeros(n, dtype=np.int64)
    out_conv = np.zeros(n, dtype=np.bool_)
    out_inv = np.zeros(n, dtype=np.bool_)
    _fit_batch(coefp, terms, glob, s, float(oversampling), m // int(width), int(width), vcoef, has_var,
               np.ascontiguousarray(data, dtype=np.float64), np.ascontiguousarray(mask, dtype=np.bool_),
               np.ascontiguousarray(var_fixed if has_fixed else np.zeros((1, m)), dtype=np.float64), has_fixed,
               float(gain or 0.0), float(read_noise) ** 2, float(profile_error) ** 2, int(max_iter), float(step_tol),
               params, cov, out_chi2, out_iter, out_conv, out_inv, np.ascontiguousarray(active, dtype=np.bool_),
               _blocks(n))
    return params, cov, out_chi2, out_iter, out_conv, out_inv
