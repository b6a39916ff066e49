"""Compiled (numba) fitting engine for the analytic models: one Levenberg-Marquardt per star.

:func:`psfkit.psf.engine.fit_stamps` hands a whole batch to :func:`fit_batch`, which
runs, for every star in parallel (``prange`` over stars, one star per thread at
a time, no Python per iteration): the model and its analytic Jacobian, the
normal equations ``J^T W J`` and ``J^T W r`` accumulated pixel by pixel (the
Jacobian is never stored), a damped Cholesky solve, the accept/reject step with
projected bounds, the convergence test, the Poisson reweighting passes (weights
from the model) and the final chi-square, ``J^T W J`` and residual sum.  It is
the same algorithm, step for step, as the numpy reference in
:mod:`psfkit.psf.engine` (``PSFKIT_BACKEND=numpy``), and the formulas are those of
:mod:`psfkit.psf.models`; ``tests/test_compiled.py`` compares the two.

Models (``kind``): 0 = Gaussian (``k = 0``: analytic pixel integral, see
:meth:`psfkit.psf.models.GaussianPSF._integrated_analytic`; ``k >= 1``: ``k x k``
Gauss-Legendre nodes, ``k = 1`` point sampling), 1 = axis-aligned Gaussian with
the exact erf pixel integral, 2 = Moffat (``k x k`` Gauss-Legendre nodes).

Set the environment variable ``PSFKIT_BACKEND=numpy`` to turn this path off.
The number of threads is numba's (``NUMBA_NUM_THREADS``, default: all cores).
"""

from __future__ import annotations

import math

import numpy as np

from psfkit.backend import compiled_available, numba_cache_dir

__all__ = ["available", "fit_batch", "normal_equations", "threads", "values", "GAUSSIAN", "GAUSSIAN_ERF", "MOFFAT"]

GAUSSIAN, GAUSSIAN_ERF, MOFFAT = 0, 1, 2
_KMAX = 16

numba_cache_dir()  # a user cache folder when the package folder is read-only (README)

try:  # numba is a dependency, but keep the pure-numpy path working without it
    import numba
    from llvmlite import ir
    from numba import njit, prange, types
    from numba.extending import intrinsic

    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    _HAVE_NUMBA = False


def available() -> bool:
    """True when the compiled path can be used (:func:`psfkit.backend.compiled_available`)."""
    return _HAVE_NUMBA and compiled_available()


def threads() -> int:
    """Threads the compiled engine runs on (0 when it is not available)."""
    return int(numba.get_num_threads()) if available() else 0


def _node_table():
    from psfkit.psf.models import gauss_legendre_offsets

    offs = np.zeros((_KMAX + 1, _KMAX))
    offw = np.zeros((_KMAX + 1, _KMAX))
    for k in range(1, _KMAX + 1):
        o, w = gauss_legendre_offsets(k)
        offs[k, :k] = o
        offw[k, :k] = w
    return offs, offw


if _HAVE_NUMBA:
    _SQRT2 = math.sqrt(2.0)
    _SQRT2PI = math.sqrt(2.0 * math.pi)
    _INV_SQRT2PI = 1.0 / _SQRT2PI
    _K4 = -1.0 / 120.0 / 24.0  # the pixel box's 4th cumulant / 4! (models.GaussianPSF.BOX_K4)
    _K6 = 1.0 / 252.0 / 720.0  # its 6th cumulant / 6!

    _LOG2E = 1.4426950408889634
    _LN2_HI = 0.693145751953125  # ln 2 in two parts: k * _LN2_HI is exact for |k| < 2^11
    _LN2_LO = 1.4286068203094173e-06
    _EXP_FLOOR = -708.0  # exp of this is still a normal double

    @intrinsic
    def _bits_as_float(typingctx, bits):
        """The float64 whose IEEE-754 bits are the int64 ``bits`` (a bit cast, vectorised with the loop)."""
        sig = types.float64(types.int64)

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.DoubleType())

        return sig, codegen

    @njit(cache=True, inline="always")
    def _exp_nonpositive(y):
        """exp(y) for y <= 0 without a call, so that a loop over pixels vectorises (libm's exp is a
        call per value): exp(y) = 2^k exp(r) with k = round(y / ln 2), |r| <= ln(2) / 2, exp(r) by its
        Taylor series to r^12 (relative error ~2e-16, as libm's) and 2^k written as its exponent
        bits. Below exp(-708) ~ 3e-308 the value stays ~3e-308 (0 to the precision of any sum).
        """
        y = min(max(y, _EXP_FLOOR), 0.0)
        kf = math.floor(y * _LOG2E + 0.5)
        r = (y - kf * _LN2_HI) - kf * _LN2_LO
        t = 1.0 / 479001600.0
        t = t * r + 1.0 / 39916800.0
        t = t * r + 1.0 / 3628800.0
        t = t * r + 1.0 / 362880.0
        t = t * r + 1.0 / 40320.0
        t = t * r + 1.0 / 5040.0
        t = t * r + 1.0 / 720.0
        t = t * r + 1.0 / 120.0
        t = t * r + 1.0 / 24.0
        t = t * r + 1.0 / 6.0
        t = t * r + 0.5
        t = t * r + 1.0
        t = t * r + 1.0
        return t * _bits_as_float((np.int64(kf) + 1023) << 52)

    @njit(cache=True, _nrt=False)
    def _gauss_setup(p, box):
        """The per-star part of the rotated Gaussian: the precision matrix of the (pixel-convolved)
        profile, the amplitude scale and the derivatives of
        (pxx, pxy, pyy, log scale) with respect to sx, sy and the angle (``q``, 3 x 4 values).
        """
        sx = p[4]
        sy = p[5]
        c = math.cos(p[6])
        s = math.sin(p[6])
        sx2 = sx * sx
        sy2 = sy * sy
        a = sx2 * c * c + sy2 * s * s + box / 12.0
        cc = sx2 * s * s + sy2 * c * c + box / 12.0
        b = (sx2 - sy2) * c * s
        det = a * cc - b * b
        pxx = cc / det
        pyy = a / det
        pxy = -b / det
        scale = sx * sy / math.sqrt(det)
        q0 = _dq_row(2.0 * sx * c * c, 2.0 * sx * c * s, 2.0 * sx * s * s, 1.0 / sx, a, b, cc, det, pxx, pxy, pyy)
        q1 = _dq_row(2.0 * sy * s * s, -2.0 * sy * c * s, 2.0 * sy * c * c, 1.0 / sy, a, b, cc, det, pxx, pxy, pyy)
        q2 = _dq_row(2.0 * c * s * (sy2 - sx2), (sx2 - sy2) * (c * c - s * s), 2.0 * c * s * (sx2 - sy2), 0.0, a, b,
                     cc, det, pxx, pxy, pyy)
        return pxx, pxy, pyy, scale, q0 + q1 + q2

    @njit(cache=True, inline="always")
    def _dq_row(da, db, dc, dls, a, b, cc, det, pxx, pxy, pyy):
        """d(pxx, pxy, pyy, log scale) / d(one of sx, sy, angle) from that parameter's derivatives of the
        covariance (a, b, cc) = (Sxx, Sxy, Syy) and of log(sx sy).
        """
        dd = da * cc + a * dc - 2.0 * b * db
        return (dc - pxx * dd) / det, (-db - pxy * dd) / det, (da - pyy * dd) / det, dls - 0.5 * dd / det

    @njit(cache=True, _nrt=False)
    def _eval_gauss(p, box, jac, val, xs, ys):
        """Gaussian values and Jacobian (7, h*w): analytic pixel integral (box=1) or point sampling (box=0)."""
        # row 0 (the background's, 1) holds exp(-Q/2) until the pixel loop has used it
        pxx, pxy, pyy, scale, q = _gauss_setup(p, box)
        cf = _box_coefficients(_K4 * box, _K6 * box, pxx) + _box_coefficients(_K4 * box, _K6 * box, pyy)
        _gauss_pixels(xs, ys, p[2], p[3], p[0], p[1], pxx, pxy, pyy, scale, cf, q, val, jac)

    @njit(cache=True, inline="always", fastmath={"contract"})
    def _gauss_pixel(dx, dy, A, pxx, pxy, pyy, scale, cf, q):
        """One pixel of :func:`_eval_gauss`: the profile (unit amplitude) and the Jacobian's columns 2-6.

        ``cf`` holds the box corrections of models.GaussianPSF._box_correction as polynomials in u^2
        with per-star coefficients (Horner form, :func:`_box_coefficients` for x then y); ``q`` the
        derivatives of (pxx, pxy, pyy, log scale) with respect to sx, sy and the angle (12 values).
        """
        ax3, ax2, ax1, ax0, bx2, bx1, bx0, cx2, cx1, cx0 = (cf[0], cf[1], cf[2], cf[3], cf[4], cf[5], cf[6],
                                                            cf[7], cf[8], cf[9])
        ay3, ay2, ay1, ay0, by2, by1, by0, cy2, cy1, cy0 = (cf[10], cf[11], cf[12], cf[13], cf[14], cf[15], cf[16],
                                                            cf[17], cf[18], cf[19])
        u = pxx * dx + pxy * dy
        v = pxy * dx + pyy * dy
        e = _exp_nonpositive(-0.5 * (dx * u + dy * v))  # exp(-Q/2)
        u2 = u * u
        v2 = v * v
        cx = ((ax3 * u2 + ax2) * u2 + ax1) * u2 + ax0
        cx_u = ((bx2 * u2 + bx1) * u2 + bx0) * u
        cx_p = (cx2 * u2 + cx1) * u2 + cx0
        cy = ((ay3 * v2 + ay2) * v2 + ay1) * v2 + ay0
        cy_u = ((by2 * v2 + by1) * v2 + by0) * v
        cy_p = (cy2 * v2 + cy1) * v2 + cy0
        corr = 1.0 + cx + cy
        prof = scale * e * corr
        ga = A * scale * e
        t_xx = -0.5 * dx * dx * corr + cx_u * dx + cx_p
        t_xy = -dx * dy * corr + cx_u * dy + cy_u * dx
        t_yy = -0.5 * dy * dy * corr + cy_u * dy + cy_p
        return (prof, ga * (u * corr - (cx_u * pxx + cy_u * pxy)), ga * (v * corr - (cx_u * pxy + cy_u * pyy)),
                ga * (q[3] * corr + t_xx * q[0] + t_xy * q[1] + t_yy * q[2]),
                ga * (q[7] * corr + t_xx * q[4] + t_xy * q[5] + t_yy * q[6]),
                ga * (q[11] * corr + t_xx * q[8] + t_xy * q[9] + t_yy * q[10]))

    # contract: a * b + c may become one fused multiply-add (rounding differs from numpy's at ~1e-16)
    @njit(cache=True, fastmath={"contract"}, _nrt=False)
    def _gauss_pixels(xs, ys, x0, y0, B, A, pxx, pxy, pyy, scale, cf, q, val, jac):
        """The per-pixel part of :func:`_eval_gauss`: one branch-free loop (vectorised by LLVM)."""
        j0, j1, j2, j3, j4, j5, j6 = jac[0], jac[1], jac[2], jac[3], jac[4], jac[5], jac[6]
        for m in range(xs.size):
            prof, g2, g3, g4, g5, g6 = _gauss_pixel(xs[m] - x0, ys[m] - y0, A, pxx, pxy, pyy, scale, cf, q)
            val[m] = B + A * prof
            j0[m] = 1.0
            j1[m] = prof
            j2[m] = g2
            j3[m] = g3
            j4[m] = g4
            j5[m] = g5
            j6[m] = g6

    @njit(cache=True, inline="always")
    def _box_coefficients(k4, k6, p):
        """Coefficients in u^2 of k4 He4 + k6 He6 (a), of its u-derivative / u (b) and p-derivative (c)."""
        p2 = p * p
        return (k6, k4 - 15.0 * k6 * p, 45.0 * k6 * p2 - 6.0 * k4 * p, 3.0 * k4 * p2 - 15.0 * k6 * p2 * p,
                6.0 * k6, 4.0 * k4 - 60.0 * k6 * p, 90.0 * k6 * p2 - 12.0 * k4 * p,
                -15.0 * k6, 90.0 * k6 * p - 6.0 * k4, 6.0 * k4 * p - 45.0 * k6 * p2)

    @njit(cache=True, _nrt=False)
    def _eval_gauss_sub(p, h, w, offs, offw, jac, val):
        """Gaussian values and Jacobian with k x k Gauss-Legendre nodes per pixel."""
        k = offs.size
        B = p[0]
        A = p[1]
        x0 = p[2]
        y0 = p[3]
        isx2 = 1.0 / (p[4] * p[4])
        isy2 = 1.0 / (p[5] * p[5])
        c = math.cos(p[6])
        s = math.sin(p[6])
        isx = 1.0 / p[4]
        isy = 1.0 / p[5]
        for rr in range(h):
            for cc in range(w):
                m = rr * w + cc
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
                val[m] = B + A * e_sum
                jac[0, m] = 1.0
                jac[1, m] = e_sum
                jac[2, m] = A * g2
                jac[3, m] = A * g3
                jac[4, m] = A * g4
                jac[5, m] = A * g5
                jac[6, m] = A * g6

    @njit(cache=True, _nrt=False)
    def _erf_axis(x0, sx, w, ix, dix0, dixs):
        """Integral of exp(-u^2/2) over each pixel of one axis and its derivatives (models._phi_diff).

        Neighbouring pixels share an edge: one erfc and one exponential per edge. The difference of
        the normal CDF is taken in the tail where both terms are small (accurate far out).
        """
        s_prev = 0.0
        t_prev = 0.0
        ph_prev = 0.0
        for c in range(w + 1):
            t = (c - 0.5 - x0) / sx
            s_t = math.erfc(abs(t) / _SQRT2)  # the small tail, 2 Phi(-|t|)
            ph = math.exp(-0.5 * t * t) * _INV_SQRT2PI
            if c > 0:
                ul, uh = t_prev, t
                if ul > 0:  # Phi(uh) - Phi(ul) = (erfc(ul/r2) - erfc(uh/r2)) / 2, both upper tails
                    d = 0.5 * (s_prev - s_t)
                else:  # = (erfc(-uh/r2) - erfc(-ul/r2)) / 2; erfc(-ul/r2) is the tail s_prev
                    d = 0.5 * ((s_t if uh <= 0 else 2.0 - s_t) - s_prev)
                ix[c - 1] = sx * _SQRT2PI * d
                dix0[c - 1] = -_SQRT2PI * (ph - ph_prev)
                dixs[c - 1] = _SQRT2PI * (d - (uh * ph - ul * ph_prev))
            s_prev = s_t
            t_prev = t
            ph_prev = ph

    @njit(cache=True, _nrt=False)
    def _eval_gauss_erf(p, h, w, jac, val, rows):
        """Axis-aligned Gaussian, exact erf pixel integral: values and Jacobian (angle column 0).

        ``rows`` is scratch, (6, max(h, w)).
        """
        B = p[0]
        A = p[1]
        x0 = p[2]
        y0 = p[3]
        sx = p[4]
        sy = p[5]
        ix, dix0, dixs, iy, diy0, diys = rows[0], rows[1], rows[2], rows[3], rows[4], rows[5]
        _erf_axis(x0, sx, w, ix, dix0, dixs)
        _erf_axis(y0, sy, h, iy, diy0, diys)
        for rr in range(h):
            ay = A * iy[rr]
            ady0 = A * diy0[rr]
            adys = A * diys[rr]
            base = rr * w
            for c in range(w):
                m = base + c
                prod = iy[rr] * ix[c]
                val[m] = B + A * prod
                jac[0, m] = 1.0
                jac[1, m] = prod
                jac[2, m] = ay * dix0[c]
                jac[3, m] = ady0 * ix[c]
                jac[4, m] = ay * dixs[c]
                jac[5, m] = adys * ix[c]
                jac[6, m] = 0.0

    # The Moffat's node loop repeats the Gaussian's (_eval_gauss_sub) on purpose: compiled kernels kept
    # apart for speed, one specialised loop per model (a shared loop testing the model at every node is slower).
    @njit(cache=True, _nrt=False)
    def _eval_moffat_sub(p, h, w, offs, offw, jac, val):
        """Moffat values and Jacobian (8, h*w) with k x k Gauss-Legendre nodes per pixel."""
        k = offs.size
        B = p[0]
        A = p[1]
        x0 = p[2]
        y0 = p[3]
        iax2 = 1.0 / (p[4] * p[4])
        iay2 = 1.0 / (p[5] * p[5])
        c = math.cos(p[6])
        s = math.sin(p[6])
        beta = p[7]
        iax = 1.0 / p[4]
        iay = 1.0 / p[5]
        for rr in range(h):
            for cc in range(w):
                m = rr * w + cc
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
                        q = ww * math.exp(-beta * logu)
                        D = -beta * q / u  # times A later
                        p_sum += q
                        g2 += -2.0 * D * (xp * c * iax2 - yp * s * iay2)
                        g3 += -2.0 * D * (xp * s * iax2 + yp * c * iay2)
                        g4 += -2.0 * D * xp * xp * iax2 * iax
                        g5 += -2.0 * D * yp * yp * iay2 * iay
                        g6 += 2.0 * D * xp * yp * (iax2 - iay2)
                        g7 += -q * logu
                val[m] = B + A * p_sum
                jac[0, m] = 1.0
                jac[1, m] = p_sum
                jac[2, m] = A * g2
                jac[3, m] = A * g3
                jac[4, m] = A * g4
                jac[5, m] = A * g5
                jac[6, m] = A * g6
                jac[7, m] = A * g7

    @njit(cache=True, _nrt=False)
    def _star_eval(kind, k, p, h, w, offs, offw, jac, val, rows, xs, ys):
        """Model values and full Jacobian (n_params, h*w) of one star; ``rows`` is scratch (6, max(h, w))."""
        if kind == 1:
            _eval_gauss_erf(p, h, w, jac, val, rows)
        elif kind == 2:
            _eval_moffat_sub(p, h, w, offs[k, :k], offw[k, :k], jac, val)
        elif k == 0:
            _eval_gauss(p, 1.0, jac, val, xs, ys)
        elif k == 1:
            _eval_gauss(p, 0.0, jac, val, xs, ys)
        else:
            _eval_gauss_sub(p, h, w, offs[k, :k], offw[k, :k], jac, val)

    # sums over pixels may be reordered (vectorised); every other operation is IEEE-exact as written
    @njit(cache=True, fastmath={"reassoc", "contract"}, _nrt=False)
    def _normal7(jac, val, data, wgt, jtj, jtr, n):
        """:func:`_normal` with the first ``n`` (6 or 7) Jacobian rows the free parameters (the default
        Gaussian; the Moffat with beta fixed; the axis-aligned Gaussian): two passes over the pixels,
        every sum of a pass in a register (rows 0-3 with each other, then rows 4-6 with all; row 6's
        sums are not written when n is 6), against one pass per pair of columns.
        """
        j0, j1, j2, j3, j4, j5, j6 = jac[0], jac[1], jac[2], jac[3], jac[4], jac[5], jac[6]
        chi2 = r0 = r1 = r2 = r3 = 0.0
        s00 = s10 = s11 = s20 = s21 = s22 = s30 = s31 = s32 = s33 = 0.0
        for q in range(data.size):
            w = wgt[q]
            r = data[q] - val[q]
            t = w * r
            chi2 += t * r
            a0, a1, a2, a3 = j0[q], j1[q], j2[q], j3[q]
            r0 += t * a0
            r1 += t * a1
            r2 += t * a2
            r3 += t * a3
            w0, w1, w2, w3 = w * a0, w * a1, w * a2, w * a3
            s00 += w0 * a0
            s10 += w1 * a0
            s11 += w1 * a1
            s20 += w2 * a0
            s21 += w2 * a1
            s22 += w2 * a2
            s30 += w3 * a0
            s31 += w3 * a1
            s32 += w3 * a2
            s33 += w3 * a3
        r4 = r5 = r6 = 0.0
        s40 = s41 = s42 = s43 = s44 = s50 = s51 = s52 = s53 = s54 = s55 = 0.0
        s60 = s61 = s62 = s63 = s64 = s65 = s66 = 0.0
        for q in range(data.size):
            w = wgt[q]
            t = w * (data[q] - val[q])
            a0, a1, a2, a3, a4, a5, a6 = j0[q], j1[q], j2[q], j3[q], j4[q], j5[q], j6[q]
            r4 += t * a4
            r5 += t * a5
            r6 += t * a6
            w4, w5, w6 = w * a4, w * a5, w * a6
            s40 += w4 * a0
            s41 += w4 * a1
            s42 += w4 * a2
            s43 += w4 * a3
            s44 += w4 * a4
            s50 += w5 * a0
            s51 += w5 * a1
            s52 += w5 * a2
            s53 += w5 * a3
            s54 += w5 * a4
            s55 += w5 * a5
            s60 += w6 * a0
            s61 += w6 * a1
            s62 += w6 * a2
            s63 += w6 * a3
            s64 += w6 * a4
            s65 += w6 * a5
            s66 += w6 * a6
        lower = (s00, s10, s11, s20, s21, s22, s30, s31, s32, s33, s40, s41, s42, s43, s44, s50, s51, s52, s53, s54,
                 s55, s60, s61, s62, s63, s64, s65, s66)
        i = 0
        for a in range(n):
            for b in range(a + 1):
                jtj[a, b] = lower[i]
                jtj[b, a] = lower[i]
                i += 1
        rhs = (r0, r1, r2, r3, r4, r5, r6)
        for a in range(n):
            jtr[a] = rhs[a]
        return chi2

    @njit(cache=True, _nrt=False)
    def _normal(jac, val, data, wgt, fidx, jtj, jtr, wr, wj):
        """chi2, J^T W J (symmetric) and J^T W r of one star from its Jacobian and model values."""
        nf = fidx.size
        if (nf == 7 or nf == 6) and fidx[nf - 1] == nf - 1 and jac.shape[0] >= 7:  # fidx increases: the first nf rows
            return _normal7(jac, val, data, wgt, jtj, jtr, nf)
        return _normal_any(jac, val, data, wgt, fidx, jtj, jtr, wr, wj)

    @njit(cache=True, fastmath={"reassoc", "contract"}, _nrt=False)
    def _normal_any(jac, val, data, wgt, fidx, jtj, jtr, wr, wj):
        """:func:`_normal` for any set of free parameters: one pass over the pixels per pair of columns."""
        m = data.size
        nf = fidx.size
        chi2 = 0.0
        for q in range(m):
            r = data[q] - val[q]
            t = wgt[q] * r
            wr[q] = t
            chi2 += t * r
        for a in range(nf):
            ja = jac[fidx[a]]
            s = 0.0
            for q in range(m):
                s += ja[q] * wr[q]
                wj[q] = ja[q] * wgt[q]
            jtr[a] = s
            b = 0
            while b + 1 <= a:  # two columns per pass over the pixels
                jb = jac[fidx[b]]
                jc = jac[fidx[b + 1]]
                s0 = 0.0
                s1 = 0.0
                for q in range(m):
                    s0 += wj[q] * jb[q]
                    s1 += wj[q] * jc[q]
                jtj[a, b] = s0
                jtj[b, a] = s0
                jtj[a, b + 1] = s1
                jtj[b + 1, a] = s1
                b += 2
            if b == a:
                jb = jac[fidx[b]]
                s0 = 0.0
                for q in range(m):
                    s0 += wj[q] * jb[q]
                jtj[a, a] = s0
        return chi2

    @njit(cache=True, _nrt=False)
    def _cholesky(a, low):
        """Lower Cholesky factor L of a (n x n) into low, with 1 / L[i, i] on its diagonal (the solves
        then multiply, not divide); False when a is not positive definite.
        """
        n = a.shape[0]
        for i in range(n):
            for j in range(i + 1):
                s = a[i, j]
                for q in range(j):
                    s -= low[i, q] * low[j, q]
                if i == j:
                    if not (s > 0.0) or not math.isfinite(s):
                        return False
                    low[i, i] = 1.0 / math.sqrt(s)
                else:
                    low[i, j] = s * low[j, j]
        return True

    @njit(cache=True, _nrt=False)
    def _cho_solve(low, b, x):
        """X = a^-1 b from :func:`_cholesky`'s factor."""
        n = low.shape[0]
        for i in range(n):
            s = b[i]
            for q in range(i):
                s -= low[i, q] * x[q]
            x[i] = s * low[i, i]
        for i in range(n - 1, -1, -1):
            s = x[i]
            for q in range(i + 1, n):
                s -= low[q, i] * x[q]
            x[i] = s * low[i, i]

    @njit(cache=True, _nrt=False)
    def _cho_inverse(a, low, out):
        """a^-1 of a symmetric positive definite matrix via Cholesky; False (out untouched) otherwise.

        L^-1 overwrites the factor (column by column), then a^-1 = L^-T L^-1.
        """
        n = a.shape[0]
        if not _cholesky(a, low):
            return False
        for j in range(n):  # the diagonal already holds 1 / L[j, j]
            for i in range(j + 1, n):
                s = 0.0
                for q in range(j, i):
                    s += low[i, q] * low[q, j]
                low[i, j] = -s * low[i, i]
        for i in range(n):
            for j in range(i + 1):
                s = 0.0
                for q in range(i, n):
                    s += low[q, i] * low[q, j]
                out[i, j] = s
                out[j, i] = s
        return True

    @njit(cache=True, _nrt=False)
    def _weights(kind_w, mask, var_fixed, expected, gain, rn2, wgt):
        """Pixel weights: fixed (kind_w 0: 1/var_fixed), from the model (1: Poisson + read noise) or
        from the model plus a fixed part (2: Poisson + var_fixed, which holds the read noise too).
        """
        inv_gain = 1.0 / gain
        for m in range(wgt.size):  # branch-free, so that it vectorises
            if kind_w == 0:
                var = var_fixed[m]
            elif kind_w == 1:
                var = max(expected[m], 0.0) * inv_gain + rn2
            else:
                var = max(expected[m], 0.0) * inv_gain + var_fixed[m]
            good = mask[m] & (var > 0.0) & (var < np.inf)
            wgt[m] = 1.0 / var if good else 0.0

    @njit(cache=True, _nrt=False)
    def _newton_step_small(p, jtj, jtr, lo, hi, fidx, rtol, ws):
        """True when the undamped projected Gauss-Newton step is below rtol standard errors (its length
        in the metric of J^T W J, step . J^T W r, below rtol**2: fitting._newton_step_small).
        """
        system, low, rhs, step, blocked = ws[4], ws[5], ws[6], ws[7], ws[9]
        nf = fidx.size
        for a in range(nf):
            pa = p[fidx[a]]
            out = (pa <= lo[fidx[a]] and jtr[a] < 0.0) or (pa >= hi[fidx[a]] and jtr[a] > 0.0)
            blocked[a] = 1.0 if out else 0.0
        for a in range(nf):
            for b in range(nf):
                system[a, b] = 0.0 if (blocked[a] == 1.0 or blocked[b] == 1.0) else jtj[a, b]
            if blocked[a] == 1.0:
                system[a, a] = 1.0
                rhs[a] = 0.0
            else:
                rhs[a] = jtr[a]
        if not _cholesky(system, low):
            return False
        _cho_solve(low, rhs, step)
        gain = 0.0
        for a in range(nf):
            gain += step[a] * rhs[a]
        return gain <= rtol * rtol

    @njit(cache=True, _nrt=False)
    def _lm_star(kind, k, p, data, wgt, h, w, fidx, lo, hi, offs, offw, max_iter, rtol, step_tol, ws, cur):
        """One Levenberg-Marquardt run on one star (the numpy path's ``_lm``, step for step).

        ``ws`` holds the Jacobian and values at ``p`` in slot ``cur`` (evaluated by the caller);
        ``p`` is updated in place.  Returns (chi2, iterations, converged, slot of the final point).
        """
        (jac2, val2, jtj2, jtr2, system, low, rhs, step, trial, blocked, work, wr, wj, rows, xs, ys, _) = ws
        nf = fidx.size
        lam = 1e-3
        chi2 = _normal(jac2[cur], val2[cur], data, wgt, fidx, jtj2[cur], jtr2[cur], wr, wj)
        if not math.isfinite(chi2):
            return chi2, 0, False, cur
        jtj = jtj2[cur]
        jtr = jtr2[cur]
        iters = 0
        for _ in range(max_iter):
            nxt = 1 - cur
            jtj = jtj2[cur]
            jtr = jtr2[cur]
            dmax = 0.0
            for a in range(nf):
                if jtj[a, a] > dmax:
                    dmax = jtj[a, a]
            for a in range(nf):
                pa = p[fidx[a]]
                out = (pa <= lo[fidx[a]] and jtr[a] < 0.0) or (pa >= hi[fidx[a]] and jtr[a] > 0.0)
                blocked[a] = 1.0 if out else 0.0
            floor = 1e-12 * dmax + 1e-300
            for a in range(nf):
                if blocked[a] == 1.0:
                    for b in range(nf):
                        system[a, b] = 0.0
                    system[a, a] = 1.0
                    rhs[a] = 0.0
                    continue
                for b in range(nf):
                    system[a, b] = 0.0 if blocked[b] == 1.0 else jtj[a, b]
                d = jtj[a, a]
                system[a, a] = d + lam * (d if d > floor else floor)
                rhs[a] = jtr[a]
            ok = _cholesky(system, low)
            if ok:
                _cho_solve(low, rhs, step)
                for a in range(nf):
                    if not math.isfinite(step[a]):
                        ok = False
            if not ok:
                step[:] = 0.0
            for j in range(p.size):
                trial[j] = p[j]
            for a in range(nf):
                j = fidx[a]
                t = p[j] + step[a]
                if t < lo[j]:
                    t = lo[j]
                if t > hi[j]:
                    t = hi[j]
                trial[j] = t
            _star_eval(kind, k, trial, h, w, offs, offw, jac2[nxt], val2[nxt], rows, xs, ys)
            t_chi2 = _normal(jac2[nxt], val2[nxt], data, wgt, fidx, jtj2[nxt], jtr2[nxt], wr, wj)
            better = ok and math.isfinite(t_chi2) and t_chi2 <= chi2
            iters += 1
            # step small compared with the statistical errors? (its length in the metric of jtj)
            for a in range(nf):
                work[a] = trial[fidx[a]] - p[fidx[a]]
            length2 = 0.0
            for a in range(nf):
                for b in range(nf):
                    length2 += work[a] * jtj[a, b] * work[b]
            small = length2 <= step_tol * step_tol
            tiny_gain = better and (chi2 - t_chi2) <= 1e-12 * (chi2 if chi2 > 1e-300 else 1e-300)
            near = False
            if better:
                for j in range(p.size):
                    p[j] = trial[j]
                chi2 = t_chi2
                cur = nxt
                lam = lam / 5.0
                if lam < 1e-12:
                    lam = 1e-12
                # or the Gauss-Newton step from the new point is already below rtol x the standard errors
                near = _newton_step_small(p, jtj2[cur], jtr2[cur], lo, hi, fidx, rtol, ws)
            else:
                lam = lam * 10.0
            if (better and (small or tiny_gain or near)) or (not better and lam > 1e10):
                return chi2, iters, True, cur
        return chi2, iters, False, cur

    @njit(cache=True)
    def _workspace(n_params, nf, m, h, w, xs, ys):
        return (np.zeros((2, n_params, m)), np.zeros((2, m)), np.zeros((2, nf, nf)), np.zeros((2, nf)),
                np.zeros((nf, nf)), np.zeros((nf, nf)), np.zeros(nf), np.zeros(nf), np.zeros(n_params),
                np.zeros(nf), np.zeros(nf), np.zeros(m), np.zeros(m), np.zeros((6, max(h, w))), xs, ys, np.zeros(m))

    @njit(cache=True, _nrt=False)
    def _fit_one(i, kind, ks, params, data, mask, var_fixed, kind_w, gain, rn2, h, w, fidx, lo, hi, offs, offw,
                 max_iter, rtol, pass_rtol, step_factor, passes, out_chi2, out_jtj, out_jtr, out_rss, out_iters,
                 out_conv, out_cov, out_cov_ok, ws, wgt):
        """The whole fit of star i: first values, LM passes with reweighting, final statistics."""
        m = data.shape[1]
        k = ks[i]
        p = params[i]
        jac2, val2, jtj2, jtr2 = ws[0], ws[1], ws[2], ws[3]
        wr, wj, rows, star = ws[11], ws[12], ws[13], ws[16]
        for q in range(m):  # masked pixels (NaN, say) as 0: their weight is 0, and 0 x NaN is not
            star[q] = data[i, q] if mask[i, q] else 0.0
        cur = 0
        _star_eval(kind, k, p, h, w, offs, offw, jac2[cur], val2[cur], rows, ws[14], ws[15])
        total = 0
        conv = False
        for i_pass in range(passes):
            # weights from the model at the current parameters (or fixed), then LM
            _weights(kind_w, mask[i], var_fixed[i], val2[cur], gain, rn2, wgt)
            tol = rtol if i_pass == passes - 1 else max(rtol, pass_rtol)
            chi2, it, conv, cur = _lm_star(kind, k, p, star, wgt, h, w, fidx, lo[i], hi[i], offs, offw,
                                           max_iter, tol, step_factor * tol, ws, cur)
            total += it
        _weights(kind_w, mask[i], var_fixed[i], val2[cur], gain, rn2, wgt)
        chi2 = _normal(jac2[cur], val2[cur], star, wgt, fidx, jtj2[cur], jtr2[cur], wr, wj)
        rss = 0.0
        for q in range(m):
            if mask[i, q]:
                r = star[q] - val2[cur, q]
                rss += r * r
        out_chi2[i] = chi2
        out_rss[i] = rss
        out_iters[i] = total
        out_conv[i] = conv
        for a in range(fidx.size):
            out_jtr[i, a] = jtr2[cur, a]
            for b in range(fidx.size):
                out_jtj[i, a, b] = jtj2[cur, a, b]
        out_cov_ok[i] = _cho_inverse(jtj2[cur], ws[5], out_cov[i])

    @njit(parallel=True, cache=True)
    def _fit_batch(kind, ks, params, data, mask, var_fixed, kind_w, gain, rn2, h, w, fidx, lo, hi, offs, offw,
                   max_iter, rtol, pass_rtol, step_factor, passes, out_chi2, out_jtj, out_jtr, out_rss, out_iters,
                   out_conv, out_cov, out_cov_ok, xs, ys, block):
        n, m = data.shape
        nf = fidx.size
        npar = params.shape[1]
        nblocks = (n + block - 1) // block
        for b in prange(nblocks):  # one workspace per block of stars, one star at a time per thread
            ws = _workspace(npar, nf, m, h, w, xs, ys)
            wgt = np.zeros(m)
            for i in range(b * block, min(n, (b + 1) * block)):
                _fit_one(i, kind, ks, params, data, mask, var_fixed, kind_w, gain, rn2, h, w, fidx, lo, hi, offs,
                         offw, max_iter, rtol, pass_rtol, step_factor, passes, out_chi2, out_jtj, out_jtr, out_rss,
                         out_iters, out_conv, out_cov, out_cov_ok, ws, wgt)

    @njit(parallel=True, cache=True)
    def _normal_batch(kind, ks, params, data, wgt, h, w, fidx, offs, offw, out_chi2, out_jtj, out_jtr, out_val, xs,
                      ys):
        n, m = data.shape
        npar = params.shape[1]
        for i in prange(n):
            jac = np.zeros((npar, m))
            wr = np.zeros(m)
            wj = np.zeros(m)
            rows = np.zeros((6, max(h, w)))
            _star_eval(kind, ks[i], params[i], h, w, offs, offw, jac, out_val[i], rows, xs, ys)
            out_chi2[i] = _normal(jac, out_val[i], data[i], wgt[i], fidx, out_jtj[i], out_jtr[i], wr, wj)


    @njit(parallel=True, cache=True)
    def _values_batch(kind, ks, params, h, w, offs, offw, out_val, xs, ys):
        n = params.shape[0]
        npar = params.shape[1]
        for i in prange(n):
            jac = np.zeros((npar, h * w))
            rows = np.zeros((6, max(h, w)))
            _star_eval(kind, ks[i], params[i], h, w, offs, offw, jac, out_val[i], rows, xs, ys)


_TABLES: dict = {}


def _tables():
    if "nodes" not in _TABLES:
        _TABLES["nodes"] = _node_table()
    return _TABLES["nodes"]


def _grid(h, w):
    """Column and row of every pixel of a flattened (h, w) stamp, as floats."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.ascontiguousarray(xx.ravel(), dtype=np.float64), np.ascontiguousarray(yy.ravel(), dtype=np.float64)


def _ks(ks, n):
    ks = np.broadcast_to(np.asarray(ks, dtype=np.int64), (n,))
    if np.any((ks < 0) | (ks > _KMAX)):
        raise ValueError(f"pixel-integration orders must be in [0, {_KMAX}]")
    return np.ascontiguousarray(ks)


def values(kind, params, shape, ks):
    """Model values (n, h*w) on flattened stamps, compiled (what the fits evaluate)."""
    h, w = shape
    params = np.ascontiguousarray(params, dtype=np.float64)
    n = params.shape[0]
    val = np.zeros((n, h * w))
    offs, offw = _tables()
    _values_batch(kind, _ks(ks, n), params, h, w, offs, offw, val, *_grid(h, w))
    return val


def normal_equations(kind, params, data, weight, shape, free, ks):
    """chi2 (n,), J^T W J (n, nf, nf), J^T W r (n, nf) and model values (n, h*w) on flattened stamps.

    ``kind`` is :data:`GAUSSIAN`, :data:`GAUSSIAN_ERF` or :data:`MOFFAT`; ``ks`` the
    pixel-integration order per star (0: the Gaussian's analytic integral).
    """
    h, w = shape
    params = np.ascontiguousarray(params, dtype=np.float64)
    data = np.ascontiguousarray(data, dtype=np.float64)
    weight = np.ascontiguousarray(weight, dtype=np.float64)
    fidx = np.flatnonzero(free).astype(np.int64)
    n, nf = params.shape[0], fidx.size
    chi2 = np.zeros(n)
    jtj = np.zeros((n, nf, nf))
    jtr = np.zeros((n, nf))
    val = np.zeros((n, h * w))
    offs, offw = _tables()
    _normal_batch(kind, _ks(ks, n), params, data, weight, h, w, fidx, offs, offw, chi2, jtj, jtr, val, *_grid(h, w))
    return chi2, jtj, jtr, val


def fit_batch(kind, params, data, mask, shape, free, lo, hi, ks, *, variance=None, gain=None, read_noise=0.0,
              max_iter=100, rtol=1e-5, passes=1, pass_rtol=None, step_factor=None):
    """Levenberg-Marquardt on every star of a batch, compiled; the numpy path's ``_lm`` and passes.

    Parameters
    ----------
    kind : int
        :data:`GAUSSIAN`, :data:`GAUSSIAN_ERF` or :data:`MOFFAT`.
    params : ndarray (n, n_params)
        Starting parameters (inside the bounds); not modified.
    data : ndarray (n, h*w)
        Flattened stamps (masked pixels may hold anything, NaN included).
    mask : ndarray of bool (n, h*w)
        Pixels that count.
    shape : (h, w)
    free : ndarray of bool (n_params,)
    lo, hi : ndarray (n, n_params)
    ks : ndarray of int (n,)
        Pixel-integration order per star (0: analytic Gaussian integral, 1: point sampling).
    variance : ndarray (n, h*w), optional
        Fixed pixel variances (weights 1 / variance); otherwise ``gain`` is required.
    gain, read_noise : float
        Variance ``max(model, 0) / gain + read_noise**2`` from the model at the start of every pass
        (plus ``variance`` when both are given).
    max_iter, rtol, passes : int, float, int
        Iterations per pass, convergence tolerance (steps below ``rtol`` standard errors), passes.
    pass_rtol, step_factor : float
        Tolerance of the passes before the last and the accepted-step test's factor, required:
        :data:`psfkit.psf.engine.PASS_RTOL` and :data:`psfkit.psf.engine.STEP_RTOL_FACTOR` are their one place.

    Returns
    -------
    params, chi2, jtj, jtr, rss, iterations, converged, covariance, covariance_ok
        Final values with the final weights (the model's, recomputed after the last pass);
        the covariance ``jtj^-1`` by Cholesky where ``jtj`` is positive definite (``covariance_ok``).
    """
    if pass_rtol is None or step_factor is None:
        raise TypeError("fit_batch needs pass_rtol and step_factor (psfkit.psf.engine holds their values)")
    h, w = shape
    n = params.shape[0]
    p = np.array(params, dtype=np.float64, order="C", copy=True)
    data = np.ascontiguousarray(data, dtype=np.float64)
    mask = np.ascontiguousarray(mask, dtype=np.bool_)
    fidx = np.flatnonzero(free).astype(np.int64)
    nf = fidx.size
    if variance is not None and gain is not None:  # the model's Poisson variance plus this one
        var = np.ascontiguousarray(variance + float(read_noise) ** 2, dtype=np.float64)
        kind_w, g, rn2 = 2, float(gain), 0.0
    elif variance is not None:
        var = np.ascontiguousarray(variance, dtype=np.float64)
        kind_w, g, rn2 = 0, 1.0, 0.0
    else:
        var = np.zeros((n, 1))
        kind_w, g, rn2 = 1, float(gain), float(read_noise) ** 2
    out_chi2 = np.zeros(n)
    out_jtj = np.zeros((n, nf, nf))
    out_jtr = np.zeros((n, nf))
    out_rss = np.zeros(n)
    out_iters = np.zeros(n, dtype=np.int64)
    out_conv = np.zeros(n, dtype=np.bool_)
    out_cov = np.full((n, nf, nf), np.nan)
    out_cov_ok = np.zeros(n, dtype=np.bool_)
    offs, offw = _tables()
    _fit_batch(kind, _ks(ks, n), p, data, mask, var, kind_w, g, rn2, h, w, fidx,
               np.ascontiguousarray(lo, dtype=np.float64), np.ascontiguousarray(hi, dtype=np.float64), offs, offw,
               int(max_iter), float(rtol), float(pass_rtol), float(step_factor), int(passes),
               out_chi2, out_jtj, out_jtr, out_rss, out_iters, out_conv,
               out_cov, out_cov_ok, *_grid(h, w), 16)
    return p, out_chi2, out_jtj, out_jtr, out_rss, out_iters, out_conv, out_cov, out_cov_ok
