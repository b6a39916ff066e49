"""Compiled (numba) fit of the frame's PSF: flux, x, y and background of every star, stars in parallel.

:func:`psfkit.psf.frame_fit.fit_frame_stamps` hands a batch here when the compiled path is
available (``PSFKIT_BACKEND``); its numpy twin in that module runs the same algorithm, step for
step, and ``tests/test_frame_fit.py`` compares the two.

Per star (no Python per iteration, no (pixels x nodes) array, nothing written that another star
reads, so that each star's result is the same whatever the threads and their order):

- **The PSF's nodes, as phase planes.**  The stamp's pixels lie ``o = oversampling`` nodes apart,
  so the B-spline coefficients are split once per batch into ``o`` planes (plane ``f`` holds the
  node columns ``f, f + o, f + 2 o, ...``), padded with zero nodes: each of the four cubic taps of
  a row of pixels then reads consecutive values of one plane, and every loop over pixels runs
  over contiguous memory (vectorised).  A PSF that does not vary is read where it lies; a varying
  one is combined with the star's polynomial terms (evaluated once per star, by the caller) on
  the node rows the stamp needs, again only if the star moves off them.
- **Values and derivatives.**  Every column shares one fractional node position, and every row
  another: the four cubic B-spline weights (and their derivatives) are computed once per
  evaluation, and the 4 x 4 sums separate into a pass along the rows and one along the columns,
  over the pixels whose node position is on the grid (the others are zero).
- **Levenberg-Marquardt with Poisson reweighting.**  The weights are the inverse of the model's
  variance (``max(model, 0) / gain + read_noise**2``, plus a fixed per-pixel variance, plus the
  PSF's own variance times the flux squared); a trial step is judged with the weights of the point
  it leaves, and once accepted the weights are recomputed at the new point, so that the fit
  converges on the fixed point that the analytic engine's reweighting passes approach.  It stops
  when the projected Gauss-Newton step from the new point is below ``rtol`` standard errors.  The
  trial's chi-square (old weights) and its own normal equations (new weights) come from one pass
  over the pixels, the sums held in registers.  The 4 x 4 systems are solved with the analytic
  engine's Cholesky (:mod:`psfkit.psf._compiled`).

Pixel rows are held ``wp`` apart (the stamp's width rounded up to whole vectors; the extra
columns are left out like masked pixels).
"""

from __future__ import annotations

import math

import numpy as np

from psfkit.backend import HAVE_NUMBA, compiled_available, numba_cache_dir

__all__ = ["available", "fit_batch", "phase_planes"]

#: zero nodes around the grid: two rows above and below, two plane columns (2 o nodes) each side
_PAD = 2


def available() -> bool:
    """True when the compiled kernel is used."""
    return HAVE_NUMBA and compiled_available()


def phase_planes(coef: np.ndarray, o: int, extra: int = 0) -> np.ndarray:
    """The B-spline coefficients (K, S, S) as ``o`` phase planes with zero nodes around them:
    ``(K, o, S + 4, ceil(S / o) + 4 + extra)``, node ``(r, n)`` at ``[:, n % o, r + 2, n // o + 2]``
    (``extra`` zero plane columns more on the right, so that a row of ``extra`` pixels may be read
    whole from any pixel on the grid).

    Examples
    --------
    >>> planes = phase_planes(np.arange(50.0).reshape(2, 5, 5), 2)
    >>> planes.shape
    (2, 2, 9, 7)
    >>> float(planes[0, 1, 2 + 4, 3 // 2 + 2])  # node (4, 3) of term 0
    23.0
    """
    k, s, _ = coef.shape
    out = np.zeros((k, o, s + 2 * _PAD, -(-s // o) + 2 * _PAD + extra))
    for f in range(o):
        cols = coef[:, :, f::o]
        out[:, f, _PAD:_PAD + s, _PAD:_PAD + cols.shape[2]] = cols
    return out


if HAVE_NUMBA:
    numba_cache_dir()  # a user cache folder when the package folder is read-only (README)
    from numba import njit, prange

    # the cubic B-spline's weights and their derivatives: the stacking kernels' (one formula)
    from psfkit.psf._compiled import _cho_inverse, _cho_solve, _cholesky
    from psfkit.psf._empirical_kernels import _spline_value, _weights

    # sums over pixels may be reordered (vectorised); each star's result stays the same from run to run
    _FM = {"reassoc", "contract"}

    #: unsigned offsets: numba leaves out the wrap of negative indices, and the loops vectorise
    _U = np.uint64

    @njit(cache=True, inline="always")
    def _on_grid(z0, n, o, smax):  # pragma: no cover - compiled
        """First and end of the pixels i < n whose node position ``z0 + i * o`` is on the grid [0, smax]."""
        first = n
        end = 0
        for i in range(n):
            z = z0 + i * o
            if z >= 0.0 and z <= smax:
                if i < first:
                    first = i
                end = i + 1
        return first, end

    @njit(cache=True, fastmath=_FM, _nrt=False)
    def _build_window(coefp, terms, row0, col0, planes):  # pragma: no cover - compiled
        """planes[f, r, q] = sum_k terms[k] coefp[k, f, row0 + r, col0 + q] (the rows the grid has)."""
        nk, o, nrow, sq = coefp.shape
        nw = _U(planes.shape[2])
        for f in range(o):
            for r in range(min(planes.shape[1], nrow - row0)):
                dst = planes[f, r]
                off = _U(col0)
                t = terms[0]
                src = coefp[0, f, row0 + r]
                for q in range(nw):
                    dst[q] = t * src[off + q]
                for k in range(1, nk):
                    t = terms[k]
                    src = coefp[k, f, row0 + r]
                    for q in range(nw):
                        dst[q] += t * src[off + q]

    @njit(cache=True, _nrt=False)
    def _ensure_window(coefp, terms, o, c, smax, x0, y0, h, w, wp, margin, planes, corner):  # pragma: no cover
        """Combine the terms on the nodes a centre (x0, y0) needs, unless ``planes`` holds them already:
        the padded grid's node rows from ``corner[0]`` on (-1: none yet) and plane columns from
        ``corner[1]`` on.  ``margin`` more node rows (and a plane column more) each side, so that a
        star moving by up to a pixel keeps them.
        """
        ux0 = c - x0 * o
        vy0 = c - y0 * o
        ja, jb = _on_grid(ux0, w, o, smax)
        ia, ib = _on_grid(vy0, h, o, smax)
        if ja >= jb or ia >= ib:
            return
        iv0 = int(math.floor(vy0))
        r_first = iv0 - 1 + _PAD + o * ia
        r_end = iv0 - 1 + _PAD + o * (ib - 1) + 4
        cb = int(math.floor(ux0)) - 1 + _PAD * o + o * ja
        q_first = cb // o
        q_end = (cb + 3) // o + wp
        pr, nw = planes.shape[1], planes.shape[2]
        if (corner[0] < 0 or r_first < corner[0] or r_end > corner[0] + pr or q_first < corner[1]
                or q_end > corner[1] + nw):
            corner[0] = max(0, r_first - margin)
            corner[1] = max(0, min(q_first - 1, coefp.shape[3] - nw))
            _build_window(coefp, terms, corner[0], corner[1], planes)

    @njit(cache=True, fastmath=_FM, _nrt=False)
    def _evaluate(planes, row0, col0, o, c, smax, x0, y0, h, w, wp, rows, rowsd, cm, wu, dwu, wv, dwv, prof, du, dv,
                  want):  # pragma: no cover - compiled
        """The unit-flux PSF (and d/du, d/dv in node units) at the stamp's pixels for a centre (x0, y0);
        zero where a pixel's node position is off the grid (and in the columns from ``w`` to ``wp``).
        ``planes`` holds the padded grid's node rows from ``row0`` on and plane columns from ``col0`` on.
        No branch in the inner loops, one output per loop, whole rows of ``wp`` (so that they vectorise).
        """
        ux0 = c - x0 * o
        vy0 = c - y0 * o
        ja, jb = _on_grid(ux0, w, o, smax)
        ia, ib = _on_grid(vy0, h, o, smax)
        for j in range(wp):
            cm[j] = 1.0 if (j >= ja and j < jb) else 0.0
        if ja >= jb or ia >= ib:
            for k in range(h * wp):
                prof[k] = 0.0
                if want:
                    du[k] = 0.0
                    dv[k] = 0.0
            return
        fu = math.floor(ux0)
        fv = math.floor(vy0)
        iu0 = int(fu)
        iv0 = int(fv)
        _weights(ux0 - fu, wu, dwu)
        _weights(vy0 - fv, wv, dwv)
        w0, w1, w2, w3 = wu[0], wu[1], wu[2], wu[3]
        d0, d1, d2, d3 = dwu[0], dwu[1], dwu[2], dwu[3]
        pr, sq = planes.shape[1], planes.shape[2]
        fl = planes.reshape(planes.size)
        ro = rows.reshape(rows.size)
        rd = rowsd.reshape(rowsd.size)
        # the four taps of pixel ja: padded node column cb + b, in plane (cb + b) % o from column (cb + b) // o
        cb = iu0 - 1 + _PAD * o + o * ja
        t0 = (cb % o) * pr * sq + cb // o - col0
        t1 = ((cb + 1) % o) * pr * sq + (cb + 1) // o - col0
        t2 = ((cb + 2) % o) * pr * sq + (cb + 2) // o - col0
        t3 = ((cb + 3) % o) * pr * sq + (cb + 3) // o - col0
        nj = _U(wp)  # from pixel ja on, wp of them (the padding's zeros past the grid; rows 2 wp long)
        # the pass along the rows (row rr of the buffer: node row iv0 - 1 + rr), the rows and columns
        # on the grid only: each node row convolved with the column weights (and their derivatives)
        top = iv0 - 1 + _PAD - row0
        for rr in range(o * ia, o * (ib - 1) + 4):
            roff = (top + rr) * sq
            b0 = _U(t0 + roff)
            b1 = _U(t1 + roff)
            b2 = _U(t2 + roff)
            b3 = _U(t3 + roff)
            bo = _U(rr * 2 * wp + ja)
            for j in range(nj):
                ro[bo + j] = w0 * fl[b0 + j] + w1 * fl[b1 + j] + w2 * fl[b2 + j] + w3 * fl[b3 + j]
            if want:
                for j in range(nj):
                    rd[bo + j] = d0 * fl[b0 + j] + d1 * fl[b1 + j] + d2 * fl[b2 + j] + d3 * fl[b3 + j]
        # the pass along the columns, every pixel (the buffers' other entries are finite: zero weights)
        v0, v1, v2, v3 = wv[0], wv[1], wv[2], wv[3]
        e0, e1, e2, e3 = dwv[0], dwv[1], dwv[2], dwv[3]
        uwp = _U(wp)
        stride = _U(2 * wp)  # (an int times an unsigned int would be a float in numba)
        for i in range(h):
            rm = 1.0 if (i >= ia and i < ib) else 0.0
            ra = _U(o * i * 2 * wp)
            rb = ra + stride
            rc = rb + stride
            rdd = rc + stride
            po = _U(i * wp)
            for j in range(uwp):
                prof[po + j] = rm * cm[j] * (v0 * ro[ra + j] + v1 * ro[rb + j] + v2 * ro[rc + j] + v3 * ro[rdd + j])
            if want:
                for j in range(uwp):
                    du[po + j] = rm * cm[j] * (v0 * rd[ra + j] + v1 * rd[rb + j] + v2 * rd[rc + j] + v3 * rd[rdd + j])
                for j in range(uwp):
                    dv[po + j] = rm * cm[j] * (e0 * ro[ra + j] + e1 * ro[rb + j] + e2 * ro[rc + j] + e3 * ro[rdd + j])

    @njit(cache=True, fastmath=_FM, _nrt=False)
    def _normal(p, prof, du, dv, data, mk, var_fixed, psf_var, gdiv, rn2, perr2, o, old_wgt, wgt, jtj,
                jtr):  # pragma: no cover - compiled
        """One pass over the pixels at parameters p: the chi-square with the weights ``old_wgt`` (those of
        the point a step leaves), then the weights of this point's model (``wgt``), the chi-square,
        J^T W J (upper triangle, row by row) and J^T W r with them.  ``mk``: 1 for a pixel used, else 0
        (its data 0); ``gdiv``: the gain (inf without a Poisson term).
        """
        m = prof.shape[0]
        B = p[0]
        F = p[1]
        fo = -F * o
        ff = F * F
        chi2_old = 0.0
        chi2 = 0.0
        g0 = g1 = g2 = g3 = 0.0
        a00 = a01 = a02 = a03 = a11 = a12 = a13 = a22 = a23 = a33 = 0.0
        for k in range(m):
            pk = prof[k]
            val = B + F * pk
            var = rn2 + max(val, 0.0) / gdiv + var_fixed[k] + ff * (psf_var[k] + perr2 * pk * pk)
            wk = mk[k] / var if var > 0.0 else 0.0
            wgt[k] = wk
            r = data[k] - val
            chi2_old += old_wgt[k] * r * r
            wr = wk * r
            chi2 += wr * r
            j2 = fo * du[k]
            j3 = fo * dv[k]
            g0 += wr
            g1 += wr * pk
            g2 += wr * j2
            g3 += wr * j3
            a00 += wk
            wj1 = wk * pk
            a01 += wj1
            a02 += wk * j2
            a03 += wk * j3
            a11 += wj1 * pk
            a12 += wj1 * j2
            a13 += wj1 * j3
            wj2 = wk * j2
            a22 += wj2 * j2
            a23 += wj2 * j3
            a33 += wk * j3 * j3
        jtr[0], jtr[1], jtr[2], jtr[3] = g0, g1, g2, g3
        jtj[0, 0], jtj[0, 1], jtj[0, 2], jtj[0, 3] = a00, a01, a02, a03
        jtj[1, 1], jtj[1, 2], jtj[1, 3] = a11, a12, a13
        jtj[2, 2], jtj[2, 3] = a22, a23
        jtj[3, 3] = a33
        for i in range(4):
            for j in range(i):
                jtj[i, j] = jtj[j, i]
        return chi2_old, chi2

    @njit(cache=True, _nrt=False)
    def _solve(a, b, x, low):  # pragma: no cover - compiled
        """Solve a x = b by the engine's Cholesky; False when a is not positive definite or x not finite."""
        if not _cholesky(a, low):
            return False
        _cho_solve(low, b, x)
        for i in range(x.shape[0]):
            if not math.isfinite(x[i]):
                return False
        return True

    @njit(cache=True, _nrt=False)
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
    def _workspace(h, wp, o, margin):  # pragma: no cover - compiled
        """One thread's buffers for stamps of h rows held ``wp`` pixels apart."""
        m = h * wp
        nr = o * (h - 1) + 4
        pr = nr + 2 * margin
        nw = (wp + 3 + 2 + 7) // 8 * 8  # plane columns of a window: a row of pixels, its taps, one more each side
        grids = (np.zeros((o, pr, nw)), np.zeros((o, pr, nw)), np.zeros((nr, 2 * wp)), np.zeros((nr, 2 * wp)))
        v = (np.zeros(wp), np.zeros(4), np.zeros(4), np.zeros(4), np.zeros(4))
        pix = (np.zeros(m), np.zeros(m), np.zeros(m), np.zeros(m), np.zeros(m), np.zeros(m), np.zeros(m),
               np.zeros(m), np.zeros(m), np.zeros(m), np.zeros(m), np.zeros(m), np.zeros(m), np.zeros(m))
        small = (np.zeros((4, 4)), np.zeros((4, 4)), np.zeros((4, 4)), np.zeros((4, 4)), np.zeros(4), np.zeros(4),
                 np.zeros(4), np.zeros(4), np.zeros(4), np.zeros(4), np.zeros(2, np.int64), np.zeros(2, np.int64))
        return grids, v, pix, small

    @njit(cache=True, _nrt=False)
    def _fit_one(i, coefp, terms, glob, data, mask, var_fixed, has_fixed, pv_coefp, has_psf_var, pv_terms, pv_glob,
                 gdiv, rn2, perr2, o, c, smax, h, w, margin, lo, hi, max_iter, rtol, step_tol, params, cov, out_chi2,
                 out_rss, out_iter, out_conv, out_ok, ws):  # pragma: no cover - compiled
        (own, vown, rows, rowsd), (cm, wu, dwu, wv, dwv), pix, small = ws
        (prof, du, dv, tprof, tdu, tdv, pvar, tpvar, wgt, twgt, dat, mk, vfix, zero) = pix
        (jtj, tjtj, sysm, low, jtr, tjtr, rhs, step, p, trial, corner, vcorner) = small
        wp = cm.shape[0]
        m = h * wp
        lo_i = lo[i]
        hi_i = hi[i]
        for q in range(4):
            p[q] = min(max(params[i, q], lo_i[q]), hi_i[q])
            if not math.isfinite(p[q]):
                out_ok[i] = False
                return
        # the used pixels' data (others 0, never NaN) and the fixed variance, rows wp apart (the columns
        # from w on, the PSF's variance without one and ``zero`` stay as the workspace made them: 0)
        di = data[i]
        mi = mask[i]
        for y in range(h):
            for x in range(w):
                k = y * wp + x
                use = mi[y * w + x]
                mk[k] = 1.0 if use else 0.0
                dat[k] = di[y * w + x] if use else 0.0
                if has_fixed:
                    vfix[k] = var_fixed[i, y * w + x]
        # the PSF (and its variance) of the star's place: the grid itself when it does not vary
        tm = terms[i]
        planes = coefp[0] if glob else own
        corner[0] = 0 if glob else -1
        corner[1] = 0
        vplanes = pv_coefp[0] if pv_glob else vown
        vcorner[0] = 0 if pv_glob else -1
        vcorner[1] = 0
        if not glob:
            _ensure_window(coefp, tm, o, c, smax, p[2], p[3], h, w, wp, margin, planes, corner)
        _evaluate(planes, corner[0], corner[1], o, c, smax, p[2], p[3], h, w, wp, rows, rowsd, cm, wu, dwu, wv, dwv,
                  prof, du, dv, True)
        if has_psf_var:
            if not pv_glob:
                _ensure_window(pv_coefp, pv_terms[i], o, c, smax, p[2], p[3], h, w, wp, margin, vplanes, vcorner)
            _psf_var(vplanes, vcorner, o, c, smax, p, h, w, wp, rows, rowsd, cm, wu, dwu, wv, dwv, pvar)
        _, chi2 = _normal(p, prof, du, dv, dat, mk, vfix, pvar, gdiv, rn2, perr2, o, zero, wgt, jtj, jtr)
        lam = 1e-3
        it = 0
        converged = False
        ok = math.isfinite(chi2)
        while ok and it < max_iter:
            _projected(jtj, jtr, p, lo_i, hi_i, lam, sysm, rhs)
            solved = _solve(sysm, rhs, step, low)
            it += 1
            better = False
            t_chi2 = np.inf
            t_new = np.inf
            if solved:
                for q in range(4):
                    trial[q] = min(max(p[q] + step[q], lo_i[q]), hi_i[q])
                if not glob:
                    _ensure_window(coefp, tm, o, c, smax, trial[2], trial[3], h, w, wp, margin, planes, corner)
                _evaluate(planes, corner[0], corner[1], o, c, smax, trial[2], trial[3], h, w, wp, rows, rowsd, cm, wu,
                          dwu, wv, dwv, tprof, tdu, tdv, True)
                if has_psf_var:
                    if not pv_glob:
                        _ensure_window(pv_coefp, pv_terms[i], o, c, smax, trial[2], trial[3], h, w, wp, margin,
                                       vplanes, vcorner)
                    _psf_var(vplanes, vcorner, o, c, smax, trial, h, w, wp, rows, rowsd, cm, wu, dwu, wv, dwv, tpvar)
                # the trial's chi-square with the current weights, and its own normal equations
                t_chi2, t_new = _normal(trial, tprof, tdu, tdv, dat, mk, vfix, tpvar, gdiv, rn2, perr2, o, wgt, twgt,
                                        tjtj, tjtr)
                better = math.isfinite(t_chi2) and t_chi2 <= chi2
            if better:
                # the step's length in the metric of J^T W J (before the weights move)
                small_step = 0.0
                for q in range(4):
                    dq = trial[q] - p[q]
                    for r in range(4):
                        small_step += dq * jtj[q, r] * (trial[r] - p[r])
                tiny = chi2 - t_chi2 <= 1e-12 * max(chi2, 1e-300)
                # the trial becomes the point: swap the buffers
                p, trial = trial, p
                prof, tprof = tprof, prof
                du, tdu = tdu, du
                dv, tdv = tdv, dv
                wgt, twgt = twgt, wgt
                pvar, tpvar = tpvar, pvar
                jtj, tjtj = tjtj, jtj
                jtr, tjtr = tjtr, jtr
                chi2 = t_new
                lam = max(lam / 5.0, 1e-12)
                # the Gauss-Newton step from the new point, projected on the bounds
                _projected(jtj, jtr, p, lo_i, hi_i, 0.0, sysm, rhs)
                near = False
                if _solve(sysm, rhs, step, low):
                    g = 0.0
                    for q in range(4):
                        g += step[q] * rhs[q]
                    near = g >= 0.0 and g <= rtol * rtol
                if (small_step <= step_tol * step_tol) or tiny or near:
                    converged = True
                    break
            else:
                lam *= 10.0
                if lam > 1e10:
                    converged = True
                    break
        # final statistics: chi2, residual sum and J^T W J at the solution with its weights
        rss = 0.0
        for k in range(m):
            r = dat[k] - p[0] - p[1] * prof[k]
            rss += mk[k] * r * r
        if _cho_inverse(jtj, low, sysm):
            for q in range(4):
                for r in range(4):
                    cov[i, q, r] = sysm[q, r]
        else:
            ok = False
            for q in range(4):
                for r in range(4):
                    cov[i, q, r] = np.nan
        for q in range(4):
            params[i, q] = p[q]
        out_chi2[i] = chi2
        out_rss[i] = rss
        out_iter[i] = it
        out_conv[i] = converged
        out_ok[i] = ok

    @njit(cache=True, _nrt=False)
    def _psf_var(vplanes, vcorner, o, c, smax, p, h, w, wp, rows, rowsd, cm, wu, dwu, wv, dwv,
                 out):  # pragma: no cover - compiled
        """The PSF's own variance (unit flux) at the stamp's pixels, >= 0."""
        _evaluate(vplanes, vcorner[0], vcorner[1], o, c, smax, p[2], p[3], h, w, wp, rows, rowsd, cm, wu, dwu, wv,
                  dwv, out, out, out, False)
        for k in range(out.shape[0]):
            out[k] = max(out[k], 0.0)

    @njit(parallel=True, cache=True)
    def _fit_batch(coefp, terms, glob, data, mask, var_fixed, has_fixed, pv_coefp, has_psf_var, pv_terms, pv_glob,
                   gdiv, rn2, perr2, s, h, w, wp, lo, hi, max_iter, rtol, step_tol, params, cov, out_chi2, out_rss,
                   out_iter, out_conv, out_ok, nblocks):  # pragma: no cover - compiled
        n = params.shape[0]
        o = coefp.shape[1]
        c = (s - 1) / 2.0
        smax = s - 1.0
        margin = o  # node rows held beyond the stamp's, so that a star moving by up to a pixel keeps them
        per = (n + nblocks - 1) // nblocks
        for b in prange(nblocks):
            ws = _workspace(h, wp, o, margin)
            for i in range(b * per, min(n, (b + 1) * per)):
                _fit_one(i, coefp, terms, glob, data, mask, var_fixed, has_fixed, pv_coefp, has_psf_var, pv_terms,
                         pv_glob, gdiv, rn2, perr2, o, c, smax, h, w, margin, lo, hi, max_iter, rtol, step_tol, params,
                         cov, out_chi2, out_rss, out_iter, out_conv, out_ok, ws)


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
    o = int(oversampling)
    wp = (int(w) + 7) // 8 * 8  # pixel rows of whole vectors; the planes padded for them and for a window
    params = np.array(params, dtype=np.float64, order="C")
    cov = np.full((n, 4, 4), np.nan)
    out_chi2 = np.full(n, np.nan)
    out_rss = np.full(n, np.nan)
    out_iter = np.zeros(n, dtype=np.int64)
    out_conv = np.zeros(n, dtype=np.bool_)
    out_ok = np.zeros(n, dtype=np.bool_)
    has_fixed = var_fixed is not None
    vf = np.ascontiguousarray(var_fixed, dtype=np.float64) if has_fixed else np.zeros((1, 1))
    coef = np.asarray(coef, dtype=np.float64)
    terms = np.ascontiguousarray(terms, dtype=np.float64)
    has_pv = psf_var_coef is not None
    if has_pv:
        pvc = phase_planes(np.asarray(psf_var_coef, dtype=np.float64), o, wp + 8)
        pvt = np.ascontiguousarray(psf_var_terms, dtype=np.float64)
    else:
        pvc, pvt = np.zeros((1, o, 1, 1)), np.ones((1, 1))  # never read
    nblocks = min(n, 8 * numba.get_num_threads()) if n else 1
    gdiv = float(gain) if gain and gain > 0 else np.inf  # max(model, 0) / gdiv: no Poisson term without a gain
    _fit_batch(phase_planes(coef, o, wp + 8), terms, _constant(terms), np.ascontiguousarray(data, dtype=np.float64),
               np.ascontiguousarray(mask, dtype=np.bool_), vf, has_fixed, pvc, has_pv, pvt, _constant(pvt),
               gdiv, float(read_noise) ** 2, float(profile_error) ** 2, int(coef.shape[-1]), int(h), int(w), wp,
               np.ascontiguousarray(lo, dtype=np.float64), np.ascontiguousarray(hi, dtype=np.float64), int(max_iter),
               float(rtol), float(rtol * step_factor), params, cov, out_chi2, out_rss, out_iter, out_conv, out_ok,
               max(nblocks, 1))
    return params, cov, out_chi2, out_rss, out_iter, out_conv, out_ok


def _constant(terms: np.ndarray) -> bool:
    """True when every star's PSF is the first term's grid itself (one term, valued 1)."""
    return bool(terms.shape[1] == 1 and np.all(terms == 1.0))


if HAVE_NUMBA:

    @njit(parallel=True, cache=True)
    def _add_neighbours(stamps, origin, coef, grid, x, y, flux, start, star, half, o, s):  # pragma: no cover
        n, h, w = stamps.shape
        c = (s - 1) / 2.0
        b = 2 * half + 1
        for i in prange(n):
            dw = np.empty(4)
            wu = np.empty(4)
            wv = np.empty(4)
            ox = origin[i, 0]
            oy = origin[i, 1]
            for k in range(start[i], start[i + 1]):
                j = star[k]
                g = grid[k]
                cx = int(np.rint(x[j])) - half
                cy = int(np.rint(y[j])) - half
                for py in range(max(0, oy - cy), min(b, oy + h - cy)):
                    vv = (py + cy - y[j]) * o + c
                    if not (vv >= 0.0 and vv <= s - 1):
                        continue
                    iv = int(math.floor(vv))
                    _weights(vv - iv, wv, dw)
                    for px in range(max(0, ox - cx), min(b, ox + w - cx)):
                        uu = (px + cx - x[j]) * o + c
                        if not (uu >= 0.0 and uu <= s - 1):
                            continue
                        iu = int(math.floor(uu))
                        _weights(uu - iu, wu, dw)
                        stamps[i, cy + py - oy, cx + px - ox] += _spline_value(coef, g, iu, iv, wu, wv, s) * flux[j]


def add_neighbours(stamps, origin, coefficients, grid, x, y, flux, start, star, half, oversampling):
    """Stars drawn with the frame's PSF on other stars' stamps, in place; returns ``stamps``.

    ``stamps`` (N, h, w) float64, C-contiguous, with their first pixels ``origin`` (N, 2) on the
    frame; stamp ``i`` receives the stars ``star[start[i]:start[i + 1]]`` (indices into ``x``,
    ``y``, ``flux``), pair ``k`` drawn with the spline grid ``coefficients[grid[k]]``.  Each star
    is drawn as :func:`psfkit.psf._empirical_kernels.add_stars` draws it on the frame (the square
    of ``half`` pixels about its nearest pixel; the same value in each pixel), clipped to the stamp.
    """
    _add_neighbours(stamps, np.ascontiguousarray(origin, dtype=np.int64), np.ascontiguousarray(coefficients,
                    dtype=np.float64), np.ascontiguousarray(grid, dtype=np.int64),
                    np.ascontiguousarray(x, dtype=np.float64), np.ascontiguousarray(y, dtype=np.float64),
                    np.ascontiguousarray(flux, dtype=np.float64), np.ascontiguousarray(start, dtype=np.int64),
                    np.ascontiguousarray(star, dtype=np.int64), int(half), float(oversampling),
                    int(coefficients.shape[-1]))
    return stamps
