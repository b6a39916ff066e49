"""Compiled (numba) fit of the frame's PSF: flux, x, y and background of every star, stars in parallel.

:func:`psfkit.psf.frame_fit.fit_frame_stamps` hands a batch here when the compiled path is
available (``PSFKIT_BACKEND``); its numpy twin in that module runs the same algorithm, step for
step, and ``tests/test_frame_fit.py`` compares the two.

Per star (no Python per iteration, no (pixels x nodes) array):

- **The PSF of the star's place.**  The B-spline coefficients of the PSF's polynomial terms are
  combined with the terms at the star's starting position, on a patch of nodes just larger than
  the stamp (rebuilt if the star moves off it).
- **Values and derivatives.**  The stamp's pixels lie on a lattice ``oversampling`` nodes apart,
  so every column shares one fractional node position, and every row another: the four cubic
  B-spline weights (and their derivatives) are computed once per evaluation, and the 4 x 4 sums
  separate into a pass along the rows and one along the columns.
- **Levenberg-Marquardt with Poisson reweighting.**  The weights are the inverse of the model's
  variance (``max(model, 0) / gain + read_noise**2``, plus a fixed per-pixel variance, plus the
  PSF's own variance times the flux squared); a trial step is judged with the weights of the point
  it leaves, and once accepted the weights are recomputed at the new point, so that the fit
  converges on the fixed point that the analytic engine's reweighting passes approach.  It stops
  when the projected Gauss-Newton step from the new point is below ``rtol`` standard errors.
"""

from __future__ import annotations

import math

import numpy as np

from psfkit.backend import HAVE_NUMBA, compiled_available, numba_cache_dir

__all__ = ["available", "fit_batch"]


def available() -> bool:
    """True when the compiled kernel is used."""
    return HAVE_NUMBA and compiled_available()


if HAVE_NUMBA:
    numba_cache_dir()  # a user cache folder when the package folder is read-only (README)
    from numba import njit, prange

    # the cubic B-spline's weights and their derivatives: the stacking kernels' (one formula)
    from psfkit.psf._empirical_kernels import _weights

    @njit(cache=True)
    def _build_patch(coef, terms, u0, v0, patch):  # pragma: no cover - compiled
        """patch[r, q] = sum_k terms[k] coef[k, v0 + r, u0 + q] (zero off the grid)."""
        nk, s = coef.shape[0], coef.shape[1]
        ps = patch.shape[0]
        patch[:, :] = 0.0
        r0, r1 = max(0, -v0), min(ps, s - v0)
        q0, q1 = max(0, -u0), min(ps, s - u0)
        for k in range(nk):
            t = terms[k]
            for r in range(r0, r1):
                gy = v0 + r
                for q in range(q0, q1):
                    patch[r, q] += t * coef[k, gy, u0 + q]

    @njit(cache=True)
    def _evaluate(patch, pu0, pv0, s, o, c, x0, y0, h, w, rows, rowsd, wu, dwu, wv, dwv, prof, du, dv,
                  want):  # pragma: no cover - compiled
        """The unit-flux PSF (and d/du, d/dv in node units) at the stamp's pixels for a centre (x0, y0);
        zero where a pixel's node position is off the grid.  No branch in the inner loops.
        """
        ux0 = c - x0 * o
        vy0 = c - y0 * o
        fu = math.floor(ux0)
        fv = math.floor(vy0)
        iu0 = int(fu)
        iv0 = int(fv)
        _weights(ux0 - fu, wu, dwu)
        _weights(vy0 - fv, wv, dwv)
        w0, w1, w2, w3 = wu[0], wu[1], wu[2], wu[3]
        d0, d1, d2, d3 = dwu[0], dwu[1], dwu[2], dwu[3]
        nr = o * (h - 1) + 4
        smax = s - 1.0
        b0 = iu0 - 1 - pu0
        # the pass along the rows: each needed node row convolved with the column weights (and their
        # derivatives); columns whose node position is off the grid get zero weights
        for rr in range(nr):
            prow = patch[iv0 - 1 + rr - pv0]
            for j in range(w):
                base = b0 + j * o
                a0 = prow[base]
                a1 = prow[base + 1]
                a2 = prow[base + 2]
                a3 = prow[base + 3]
                rows[rr, j] = w0 * a0 + w1 * a1 + w2 * a2 + w3 * a3
            if want:
                for j in range(w):
                    base = b0 + j * o
                    rowsd[rr, j] = d0 * prow[base] + d1 * prow[base + 1] + d2 * prow[base + 2] + d3 * prow[base + 3]
        v0, v1, v2, v3 = wv[0], wv[1], wv[2], wv[3]
        e0, e1, e2, e3 = dwv[0], dwv[1], dwv[2], dwv[3]
        for i in range(h):
            vv = vy0 + i * o
            rm = 1.0 if (vv >= 0.0 and vv <= smax) else 0.0
            rr = o * i
            ra = rows[rr]
            rb = rows[rr + 1]
            rc = rows[rr + 2]
            rd = rows[rr + 3]
            m0 = i * w
            for j in range(w):
                uu = ux0 + j * o
                f = rm if (uu >= 0.0 and uu <= smax) else 0.0
                prof[m0 + j] = f * (v0 * ra[j] + v1 * rb[j] + v2 * rc[j] + v3 * rd[j])
            if want:
                sa = rowsd[rr]
                sb = rowsd[rr + 1]
                sc = rowsd[rr + 2]
                sd = rowsd[rr + 3]
                for j in range(w):
                    uu = ux0 + j * o
                    f = rm if (uu >= 0.0 and uu <= smax) else 0.0
                    du[m0 + j] = f * (v0 * sa[j] + v1 * sb[j] + v2 * sc[j] + v3 * sd[j])
                    dv[m0 + j] = f * (e0 * ra[j] + e1 * rb[j] + e2 * rc[j] + e3 * rd[j])

    @njit(cache=True)
    def _ensure_patch(coef, terms, o, c, x0, y0, h, w, margin, patch, corner):  # pragma: no cover - compiled
        """Rebuild the patch when the nodes of a centre (x0, y0) are not all on it."""
        iu0 = int(math.floor(c - x0 * o))
        iv0 = int(math.floor(c - y0 * o))
        ps = patch.shape[0]
        if (iu0 - 1 < corner[0] or iu0 + o * (w - 1) + 2 >= corner[0] + ps
                or iv0 - 1 < corner[1] or iv0 + o * (h - 1) + 2 >= corner[1] + ps):
            corner[0] = iu0 - 1 - margin
            corner[1] = iv0 - 1 - margin
            _build_patch(coef, terms, corner[0], corner[1], patch)

    @njit(cache=True)
    def _normal(p, prof, du, dv, data, mask, var_fixed, has_fixed, psf_var, gain, rn2, perr2, o, old_wgt, wgt,
                jtj, jtr):  # pragma: no cover - compiled
        """One pass over the pixels at parameters p: the chi-square with the weights ``old_wgt`` (those of
        the point a step leaves), then the weights of this point's model (``wgt``), the chi-square,
        J^T W J (upper triangle, row by row) and J^T W r with them.
        """
        m = prof.shape[0]
        B = p[0]
        F = p[1]
        for q in range(10):
            jtj[q] = 0.0
        for q in range(4):
            jtr[q] = 0.0
        chi2_old = 0.0
        chi2 = 0.0
        fo = -F * o
        ff = F * F
        for k in range(m):
            if not mask[k]:
                wgt[k] = 0.0
                continue
            val = B + F * prof[k]
            var = rn2
            if gain > 0.0 and val > 0.0:
                var += val / gain
            if has_fixed:
                var += var_fixed[k]
            var += ff * (psf_var[k] + perr2 * prof[k] * prof[k])
            wk = 1.0 / var if var > 0.0 else 0.0
            wgt[k] = wk
            r = data[k] - val
            chi2_old += old_wgt[k] * r * r
            wr = wk * r
            chi2 += wr * r
            j1 = prof[k]
            j2 = fo * du[k]
            j3 = fo * dv[k]
            jtr[0] += wr
            jtr[1] += wr * j1
            jtr[2] += wr * j2
            jtr[3] += wr * j3
            jtj[0] += wk
            jtj[1] += wk * j1
            jtj[2] += wk * j2
            jtj[3] += wk * j3
            wj1 = wk * j1
            jtj[4] += wj1 * j1
            jtj[5] += wj1 * j2
            jtj[6] += wj1 * j3
            wj2 = wk * j2
            jtj[7] += wj2 * j2
            jtj[8] += wj2 * j3
            jtj[9] += wk * j3 * j3
        return chi2_old, chi2

    @njit(cache=True)
    def _unpack(jtj, a):  # pragma: no cover - compiled
        idx = 0
        for i in range(4):
            for j in range(i, 4):
                a[i, j] = jtj[idx]
                a[j, i] = jtj[idx]
                idx += 1

    @njit(cache=True)
    def _solve(a, b, x, low):  # pragma: no cover - compiled
        """Cholesky solve of a 4x4 system; False when not positive definite."""
        n = 4
        for i in range(n):
            for j in range(i + 1):
                s = a[i, j]
                for k in range(j):
                    s -= low[i, k] * low[j, k]
                if i == j:
                    if not (s > 0.0):
                        return False
                    low[i, i] = math.sqrt(s)
                else:
                    low[i, j] = s / low[j, j]
        for i in range(n):
            s = b[i]
            for k in range(i):
                s -= low[i, k] * x[k]
            x[i] = s / low[i, i]
        for i in range(n - 1, -1, -1):
            s = x[i]
            for k in range(i + 1, n):
                s -= low[k, i] * x[k]
            x[i] = s / low[i, i]
        for i in range(n):
            if not math.isfinite(x[i]):
                return False
        return True

    @njit(cache=True)
    def _projected(a, g, p, lo, hi, lam, sys, rhs):  # pragma: no cover - compiled
        """The damped system with the parameters blocked at a bound (pushed outwards) held fixed."""
        dmax = 0.0
        for i in range(4):
            if a[i, i] > dmax:
                dmax = a[i, i]
        for i in range(4):
            blocked = (p[i] <= lo[i] and g[i] < 0.0) or (p[i] >= hi[i] and g[i] > 0.0)
            for j in range(4):
                sys[i, j] = a[i, j]
            d = a[i, i]
            floor = 1e-12 * dmax + 1e-300
            sys[i, i] = a[i, i] + lam * (d if d > floor else floor)
            rhs[i] = g[i]
            if blocked:
                for j in range(4):
                    sys[i, j] = 0.0
                    sys[j, i] = 0.0
                sys[i, i] = 1.0
                rhs[i] = 0.0

    @njit(cache=True)
    def _psf_var(coef, terms, o, c, p, h, w, margin, vpatch, vcorner, s, rows, rowsd, wu, dwu, wv, dwv, out,
                 scratch):  # pragma: no cover - compiled
        """The PSF's own variance (unit flux) at the stamp's pixels, >= 0."""
        _ensure_patch(coef, terms, o, c, p[2], p[3], h, w, margin, vpatch, vcorner)
        _evaluate(vpatch, vcorner[0], vcorner[1], s, o, c, p[2], p[3], h, w, rows, rowsd, wu, dwu, wv, dwv, out,
                  scratch, scratch, False)
        for k in range(out.shape[0]):
            if out[k] < 0.0:
                out[k] = 0.0

    @njit(cache=True)
    def _fit_one(i, coef, terms, data, mask, var_fixed, has_fixed, psf_var_coef, has_psf_var, psf_var_terms, gain,
                 rn2, perr2, o, c, s, h, w, lo, hi, max_iter, rtol, step_tol, params, cov, out_chi2, out_rss, out_iter,
                 out_conv, out_ok, ws):  # pragma: no cover - compiled
        (patch, vpatch, corner, vcorner, rows, rowsd, wu, dwu, wv, dwv, prof, du, dv, tprof, tdu, tdv, pvar, tpvar,
         wgt, twgt, jtj, tjtj, jtr, tjtr, a, sysm, rhs, step, low, p, trial, margin) = ws
        m = h * w
        for q in range(4):
            p[q] = min(max(params[i, q], lo[i, q]), hi[i, q])
            if not math.isfinite(p[q]):
                out_ok[i] = False
                return
        corner[0] = -(10**9)
        corner[1] = -(10**9)
        vcorner[0] = -(10**9)
        vcorner[1] = -(10**9)
        tm = terms[i]
        _ensure_patch(coef, tm, o, c, p[2], p[3], h, w, margin, patch, corner)
        _evaluate(patch, corner[0], corner[1], s, o, c, p[2], p[3], h, w, rows, rowsd, wu, dwu, wv, dwv, prof, du, dv,
                  True)
        if has_psf_var:
            _psf_var(psf_var_coef, psf_var_terms[i], o, c, p, h, w, margin, vpatch, vcorner, s, rows, rowsd, wu, dwu,
                     wv, dwv, pvar, tdu)
        datai = data[i]
        maski = mask[i]
        vfi = var_fixed[i] if has_fixed else var_fixed[0]
        _, chi2 = _normal(p, prof, du, dv, datai, maski, vfi, has_fixed, pvar, gain, rn2, perr2, o, wgt, wgt, jtj,
                          jtr)
        lam = 1e-3
        it = 0
        converged = False
        ok = math.isfinite(chi2)
        while ok and it < max_iter:
            _unpack(jtj, a)
            _projected(a, jtr, p, lo[i], hi[i], lam, sysm, rhs)
            solved = _solve(sysm, rhs, step, low)
            it += 1
            better = False
            if solved:
                for q in range(4):
                    trial[q] = min(max(p[q] + step[q], lo[i, q]), hi[i, q])
                _ensure_patch(coef, tm, o, c, trial[2], trial[3], h, w, margin, patch, corner)
                _evaluate(patch, corner[0], corner[1], s, o, c, trial[2], trial[3], h, w, rows, rowsd, wu, dwu, wv,
                          dwv, tprof, tdu, tdv, True)
                if has_psf_var:
                    _psf_var(psf_var_coef, psf_var_terms[i], o, c, trial, h, w, margin, vpatch, vcorner, s, rows,
                             rowsd, wu, dwu, wv, dwv, tpvar, twgt)
                # the trial's chi-square with the current weights, and its own normal equations
                t_chi2, t_new = _normal(trial, tprof, tdu, tdv, datai, maski, vfi, has_fixed, tpvar, gain, rn2, perr2,
                                        o, wgt, twgt, tjtj, tjtr)
                better = math.isfinite(t_chi2) and t_chi2 <= chi2
            if better:
                # the step's length in the metric of J^T W J (before the weights move)
                small = 0.0
                for q in range(4):
                    dq = trial[q] - p[q]
                    for r in range(4):
                        small += dq * a[q, r] * (trial[r] - p[r])
                tiny = chi2 - t_chi2 <= 1e-12 * max(chi2, 1e-300)
                for q in range(4):
                    p[q] = trial[q]
                for k in range(m):
                    prof[k] = tprof[k]
                    du[k] = tdu[k]
                    dv[k] = tdv[k]
                    wgt[k] = twgt[k]
                    pvar[k] = tpvar[k]
                for q in range(10):
                    jtj[q] = tjtj[q]
                for q in range(4):
                    jtr[q] = tjtr[q]
                chi2 = t_new
                lam = max(lam / 5.0, 1e-12)
                # the Gauss-Newton step from the new point, projected on the bounds
                _unpack(jtj, a)
                _projected(a, jtr, p, lo[i], hi[i], 0.0, sysm, rhs)
                near = False
                if _solve(sysm, rhs, step, low):
                    g = 0.0
                    for q in range(4):
                        g += step[q] * rhs[q]
                    near = g >= 0.0 and g <= rtol * rtol
                if (small <= step_tol * step_tol) or tiny or near:
                    converged = True
                    break
            else:
                lam *= 10.0
                if lam > 1e10:
                    converged = True
                    break
        # final statistics: chi2, residual sum and J^T W J at the solution with its weights
        rss = 0.0
        npix = 0
        for k in range(m):
            if maski[k]:
                r = datai[k] - p[0] - p[1] * prof[k]
                rss += r * r
                npix += 1
        _unpack(jtj, a)
        inv_ok = True
        for col in range(4):
            for q in range(4):
                rhs[q] = 1.0 if q == col else 0.0
            if not _solve(a, rhs, step, low):
                inv_ok = False
                break
            for q in range(4):
                cov[i, q, col] = step[q]
        if not inv_ok:
            for q in range(4):
                for r in range(4):
                    cov[i, q, r] = np.nan
        for q in range(4):
            params[i, q] = p[q]
        out_chi2[i] = chi2
        out_rss[i] = rss
        out_iter[i] = it
        out_conv[i] = converged
        out_ok[i] = inv_ok and ok

    @njit(cache=True)
    def _workspace(h, w, o, nodes_patch):  # pragma: no cover - compiled
        m = h * w
        nr = o * (h - 1) + 4
        ps = nodes_patch
        return (np.zeros((ps, ps)), np.zeros((ps, ps)), np.zeros(2, np.int64), np.zeros(2, np.int64),
                np.zeros((nr, w)), np.zeros((nr, w)), np.zeros(4), np.zeros(4), np.zeros(4), np.zeros(4),
                np.zeros(m), np.zeros(m), np.zeros(m), np.zeros(m), np.zeros(m), np.zeros(m), np.zeros(m),
                np.zeros(m), np.zeros(m), np.zeros(m), np.zeros(10), np.zeros(10), np.zeros(4), np.zeros(4),
                np.zeros((4, 4)), np.zeros((4, 4)), np.zeros(4), np.zeros(4), np.zeros((4, 4)), np.zeros(4),
                np.zeros(4), o)

    @njit(parallel=True, cache=True)
    def _fit_batch(coef, terms, data, mask, var_fixed, has_fixed, psf_var_coef, has_psf_var, psf_var_terms, gain,
                   rn2, perr2, o, h, w, lo, hi, max_iter, rtol, step_tol, params, cov, out_chi2, out_rss, out_iter,
                   out_conv, out_ok, nblocks):  # pragma: no cover - compiled
        n = params.shape[0]
        s = coef.shape[1]
        c = (s - 1) / 2.0
        ps = o * (max(h, w) - 1) + 4 + 2 * o + 1
        per = (n + nblocks - 1) // nblocks
        for b in prange(nblocks):
            ws = _workspace(h, w, o, ps)
            for i in range(b * per, min(n, (b + 1) * per)):
                _fit_one(i, coef, terms, data, mask, var_fixed, has_fixed, psf_var_coef, has_psf_var, psf_var_terms,
                         gain, rn2, perr2, o, c, s, h, w, lo, hi, max_iter, rtol, step_tol, params, cov, out_chi2,
                         out_rss, out_iter, out_conv, out_ok, ws)


def fit_batch(coef, terms, data, mask, lo, hi, params, *, oversampling, shape, var_fixed=None, psf_var_coef=None,
              psf_var_terms=None, profile_error=0.0, gain=0.0, read_noise=0.0, max_iter=50, rtol=1e-5,
              step_factor=0.01):
    """Fit (background, flux, x0, y0) of every stamp; the compiled twin of
    :func:`psfkit.psf.frame_fit.fit_batch_numpy` (same arguments and results).

    ``coef`` (K, S, S): the B-spline coefficients of the PSF's terms; ``terms`` (N, K): each star's
    term values.  ``data`` and ``mask`` (N, h*w); ``params`` (N, 4) the start, stamp coordinates.
    Returns ``(params, cov, chi2, rss, iterations, converged, ok)``.
    """
    import numba

    h, w = shape
    n = params.shape[0]
    params = np.ascontiguousarray(params, dtype=np.float64).copy()
    cov = np.full((n, 4, 4), np.nan)
    out_chi2 = np.full(n, np.nan)
    out_rss = np.full(n, np.nan)
    out_iter = np.zeros(n, dtype=np.int64)
    out_conv = np.zeros(n, dtype=np.bool_)
    out_ok = np.zeros(n, dtype=np.bool_)
    has_fixed = var_fixed is not None
    vf = np.ascontiguousarray(var_fixed, dtype=np.float64) if has_fixed else np.zeros((1, h * w))
    has_pv = psf_var_coef is not None
    pvc = np.ascontiguousarray(psf_var_coef, dtype=np.float64) if has_pv else np.zeros((1, 4, 4))
    pvt = np.ascontiguousarray(psf_var_terms, dtype=np.float64) if has_pv else np.zeros((n, 1))
    nblocks = min(n, 8 * numba.get_num_threads()) if n else 1
    _fit_batch(np.ascontiguousarray(coef, dtype=np.float64), np.ascontiguousarray(terms, dtype=np.float64),
               np.ascontiguousarray(data, dtype=np.float64), np.ascontiguousarray(mask, dtype=np.bool_), vf, has_fixed,
               pvc, has_pv, pvt, float(gain or 0.0), float(read_noise) ** 2, float(profile_error) ** 2,
               int(oversampling), int(h), int(w),
               np.ascontiguousarray(lo, dtype=np.float64), np.ascontiguousarray(hi, dtype=np.float64), int(max_iter),
               float(rtol), float(rtol * step_factor), params, cov, out_chi2, out_rss, out_iter, out_conv, out_ok,
               max(nblocks, 1))
    return params, cov, out_chi2, out_rss, out_iter, out_conv, out_ok
