"""Each star's own FWHM, roundness and angle with the frame's PSF: the PSF stretched by a per-star linear map.

The frame's PSF gives every star the same shape (the PSF's at its place).  A star that is wider (a
focus change, a galaxy), narrower (a cosmic ray, a hot pixel) or elongated differently (trailing,
a binary) says so only through its own shape, as Siril's Dynamic PSF reports it with its Gaussian.
Here each star is fitted with the frame's PSF mapped by its own symmetric linear map ``A``,
7 parameters per star (background ``B``, flux ``F``, centre ``r0``, and ``a``, ``b``, ``c``):

    A = I + [[a, b], [b, c]],   q = A^-1 (r - r0),
    model(r) = B + F / det A * (P(q) + (A^-2 - I) : H(q) / 24).

``P`` is the frame's effective PSF at the star's place (the PSF convolved with the pixel, unit sum)
and ``H`` its Hessian in pixels.  Dividing by ``det A`` keeps the model's sum, so ``F`` stays the
total flux.  The second term puts the pixel back: stretching the effective PSF stretches its pixel
too, and the star is the *true* PSF stretched and then convolved with the pixel; to second order
the difference is a convolution with covariance ``(I - A A^T) / 12`` px^2, that term.  So ``A``
maps the PSF without the pixel onto the star without the pixel (without the term, stars 0.8 and
1.3 times the PSF's width read 1.1 % narrow and 0.6 % wide at FWHM 3 px).  ``A = I`` is the PSF
itself; ``A = s I`` a star ``s`` times wider; ``A = R diag(s1, s2) R^T`` an elongation along an angle.

The fit is Levenberg-Marquardt with the Poisson weights of the model (recomputed at every accepted
step, a trial judged with the weights of the point it leaves, as :mod:`psfkit.psf.frame_fit` does),
the PSF's own uncertainty (its node variance and profile error) in every pixel's variance, all
stars at once, from the 4-parameter fit's solution and the identity.  It ends when a step, or the
Gauss-Newton step from an accepted point, is below ``STEP_TOL`` standard errors.  The whole loop is
compiled (:mod:`psfkit.psf._shape_kernels`, numba, per star, stars in parallel) with a numpy twin
(this module's loop on :func:`normal_equations_numpy`).  ``A`` is kept positive definite with eigenvalues in [0.5, 3]
(a trial outside is refused; a star that ends within 2 % of a bound has no shape).

**From A to the columns.**  The star's half-maximum region is the PSF's (at its place, pixel taken
out: :func:`psfkit.psf.empirical._contour_shape`) mapped by ``A``: its area is ``det A`` times the
PSF's and its second-moment matrix is ``A M A^T``, ``M`` the moments of the uniform ellipse of the
PSF's ``fwhm_x``, ``fwhm_y`` and ``angle``:

    fwhm = fwhm_PSF * sqrt(det A)                        (the circle of the contour's area),
    fwhm_x, fwhm_y = the axes of A M A^T (empirical._axes: exact for an elliptical contour),
    angle = its major axis's direction (folded into [-90, 90)), roundness = fwhm_y / fwhm_x.

At ``A = I`` every column is the PSF's own at the star's place.  The errors are propagated from
the fit's covariance of ``(a, b, c)`` (flux, centre and background marginalised), with the PSF's
own FWHM reading (0.2 %, docs/psf.md) added in quadrature to the three FWHM columns (and 0.28 %,
the ratio of two axes read so, to ``roundness``).

Flux, centre and background stay those of the 4-parameter fit (:mod:`psfkit.psf.frame_fit`), at
the Cramer-Rao limit when the PSF is the star's: three more free parameters would only widen them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from psfkit.psf.empirical import FramePSF, _contour_shape

__all__ = ["ShapeFit", "fit_shapes", "normal_equations_numpy", "psf_moments", "shape_columns", "measure_shapes",
           "SHAPE_COLUMNS", "FWHM_READING"]

#: the columns the shape fit gives (each with its ``_err``)
SHAPE_COLUMNS = ("fwhm", "fwhm_x", "fwhm_y", "roundness", "angle")
#: the accuracy of the PSF's own FWHM read on its contour (a fraction; docs/psf.md): a floor under
#: every star's FWHM errors, since every star's FWHM is the PSF's times its map
FWHM_READING = 0.002
#: the fit stops when its step is below this many standard errors
STEP_TOL = 0.01
#: the linear map's eigenvalues are kept within these (narrower: no star; wider: no point source)
MIN_STRETCH, MAX_STRETCH = 0.5, 3.0


@dataclass
class ShapeFit:
    """The per-star shape fit: ``params`` (N, 7) = background, flux, x0, y0 (stamp coordinates), a, b, c;
    ``covariance`` (N, 7, 7); ``chi2``, ``iterations``; ``ok`` (converged, covariance positive definite,
    the map within its bounds).
    """

    params: np.ndarray
    covariance: np.ndarray
    chi2: np.ndarray
    iterations: np.ndarray
    ok: np.ndarray


def _weights2(t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cubic B-spline weights of the 4 nodes at -1, 0, 1, 2 for a fraction t, their first and second derivatives."""
    s = 1.0 - t
    t2 = t * t
    w = np.stack([s * s * s, 3 * t2 * t - 6 * t2 + 4, -3 * t2 * t + 3 * t2 + 3 * t + 1, t2 * t], axis=-1) / 6.0
    dw = np.stack([-0.5 * s * s, 1.5 * t2 - 2 * t, -1.5 * t2 + t + 0.5, 0.5 * t2], axis=-1)
    d2w = np.stack([s, 3 * t - 2, 1 - 3 * t, t], axis=-1)
    return w, dw, d2w


def _spline_hessian(grids: np.ndarray, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, ...]:
    """Value, d/du, d/dv, d2/du2, d2/dudv, d2/dv2 of per-row cubic B-splines (numpy; zero off the grid).

    Values and first derivatives are :func:`psfkit.psf.empirical.cubic_interpolate`'s.
    """
    n = u.shape[0]
    sy, sx = grids.shape[1], grids.shape[2]
    iu, iv = np.floor(u).astype(np.intp), np.floor(v).astype(np.intp)
    wu, dwu, d2wu = _weights2(u - iu)
    wv, dwv, d2wv = _weights2(v - iv)
    offs = np.arange(-1, 3)
    cu, cv = iu[..., None] + offs, iv[..., None] + offs
    okx, oky = (cu >= 0) & (cu < sx), (cv >= 0) & (cv < sy)
    wu, dwu, d2wu = (np.where(okx, a, 0.0) for a in (wu, dwu, d2wu))
    wv, dwv, d2wv = (np.where(oky, a, 0.0) for a in (wv, dwv, d2wv))
    rows = np.arange(n)[:, None, None, None] if grids.shape[0] > 1 else np.zeros((n, 1, 1, 1), np.intp)
    g = grids[rows, np.clip(cv, 0, sy - 1)[..., :, None], np.clip(cu, 0, sx - 1)[..., None, :]]
    gx, gdx, gdxx = (np.einsum("npij,npj->npi", g, a) for a in (wu, dwu, d2wu))
    inside = (u >= 0) & (u <= sx - 1) & (v >= 0) & (v <= sy - 1)
    out = [np.einsum("npi,npi->np", a, b) for a, b in ((gx, wv), (gdx, wv), (gx, dwv), (gdxx, wv), (gdx, dwv),
                                                        (gx, d2wv))]
    return tuple(np.where(inside, a, 0.0) for a in out)


def _map_constants(params: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per star: det A, A^-1 (i00, i01, i11), G = A^-2 - I (g11, g12, g22) and dG/d(a, b, c) (3 x 3)."""
    a11, a12, a22 = 1.0 + params[:, 4], params[:, 5], 1.0 + params[:, 6]
    det = a11 * a22 - a12 * a12
    inv = np.empty((len(params), 2, 2))
    inv[:, 0, 0], inv[:, 0, 1], inv[:, 1, 0], inv[:, 1, 1] = a22 / det, -a12 / det, -a12 / det, a11 / det
    g = inv @ inv - np.eye(2)
    dg = []
    for e in ((1.0, 0.0, 0.0, 0.0), (0.0, 1.0, 1.0, 0.0), (0.0, 0.0, 0.0, 1.0)):  # E_a, E_b, E_c
        e = np.reshape(e, (2, 2))
        dinv = -inv @ e @ inv
        d = dinv @ inv + inv @ dinv
        dg.append(np.stack([d[:, 0, 0], d[:, 0, 1], d[:, 1, 1]], axis=-1))
    return (det, inv[:, 0, 0], inv[:, 0, 1], inv[:, 1, 1], np.stack([g[:, 0, 0], g[:, 0, 1], g[:, 1, 1]], axis=-1),
            np.stack(dg, axis=1))


def normal_equations_numpy(coef, terms, data, mask, params, old_wgt, *, oversampling, width, var_fixed=None,
                           psf_var=None, profile_error=0.0, gain=0.0, read_noise=0.0):
    """The normal equations of the shape fit at ``params`` (numpy reference of the compiled kernel).

    The model of a pixel is ``B + F / det A * (P(q) + (A^-2 - I) : H(q) / 24)`` with ``q = A^-1 (r - r0)``,
    ``P`` the effective PSF's spline and ``H`` its Hessian (px^-2): the second term gives the stretched
    star its pixel back (the grid holds the PSF convolved with the pixel, and stretching it stretches
    the pixel too: to second order a convolution with covariance ``(I - A^2) / 12``).  The Jacobian
    leaves out that term's change through ``q`` (third derivatives; a small term's small change).

    Parameters
    ----------
    coef : ndarray (K, S, S)
        B-spline coefficients of the PSF's polynomial terms; ``terms`` (N, K) each star's term values.
    data, mask : ndarray (N, P)
        The stamps' pixels (row-major, ``width`` pixels a row) and which count.
    params : ndarray (N, 7)
        background, flux, x0, y0 (stamp coordinates), a, b, c.
    old_wgt : ndarray (N, P)
        The weights of the point a trial leaves: the chi-square that judges the trial uses them.
    oversampling, width : int
    var_fixed : ndarray (N, P), optional
        A fixed per-pixel variance (a neighbour's light's photon noise).
    psf_var : ndarray (S, S), optional
        The PSF's node variance (unit flux), taken at each pixel's nearest node: a weight, no spline.
    profile_error, gain, read_noise : float
        The PSF's profile error (fraction), gain (e-/ADU, 0: no Poisson term) and read noise (ADU).

    Returns
    -------
    chi2_old, chi2 : ndarray (N,)
        The chi-square with ``old_wgt`` and with this point's own weights.
    jtj : ndarray (N, 7, 7), jtr : ndarray (N, 7)
        ``J^T W J`` and ``J^T W r`` with this point's weights.
    weights : ndarray (N, P)
    """
    n, m = data.shape
    o = float(oversampling)
    s = coef.shape[-1]
    c0 = (s - 1) / 2.0
    k = np.arange(m)
    xs, ys = (k % width)[None, :], (k // width)[None, :]
    det, i00, i01, i11, g, dg = _map_constants(params)
    det, i00, i01, i11 = (a[:, None] for a in (det, i00, i01, i11))
    dx, dy = xs - params[:, 2:3], ys - params[:, 3:4]
    qx, qy = i00 * dx + i01 * dy, i01 * dx + i11 * dy
    grids = coef[:1] if coef.shape[0] == 1 else np.einsum("nk,kij->nij", terms, coef)
    p, pu, pv, puu, puv, pvv = _spline_hessian(grids, qx * o + c0, qy * o + c0)
    gx, gy = pu * o, pv * o
    hxx, hxy, hyy = puu * o * o, puv * o * o, pvv * o * o
    corr = (g[:, 0:1] * hxx + 2.0 * g[:, 1:2] * hxy + g[:, 2:3] * hyy) / 24.0
    pc = p + corr
    prof = pc / det
    B, F = params[:, 0:1], params[:, 1:2]
    val = B + F * prof
    var = np.full(val.shape, float(read_noise) ** 2)
    if gain:
        var = var + np.where(val > 0, val, 0.0) / gain
    if var_fixed is not None:
        var = var + var_fixed
    own = float(profile_error) ** 2 * prof * prof
    if psf_var is not None:  # the node variance at the nearest node (a weight: no spline needed)
        iu, iv = np.floor(qx * o + c0 + 0.5).astype(np.intp), np.floor(qy * o + c0 + 0.5).astype(np.intp)
        on = (iu >= 0) & (iu < s) & (iv >= 0) & (iv < s)
        nv = np.where(on, np.asarray(psf_var)[np.clip(iv, 0, s - 1), np.clip(iu, 0, s - 1)], 0.0)
        own = own + np.where(nv > 0, nv, 0.0) / det**2
    var = var + F * F * own
    wgt = np.where(mask & (var > 0), 1.0 / np.where(var > 0, var, 1.0), 0.0)
    r = np.where(mask, data - val, 0.0)
    fd = F / det

    def dcorr(j):
        return (dg[:, j, 0:1] * hxx + 2.0 * dg[:, j, 1:2] * hxy + dg[:, j, 2:3] * hyy) / 24.0

    jac = np.stack([np.ones_like(p), prof, -fd * (gx * i00 + gy * i01), -fd * (gx * i01 + gy * i11),
                    fd * (-qx * (gx * i00 + gy * i01) - pc * i00 + dcorr(0)),
                    fd * (-(gx * (i00 * qy + i01 * qx) + gy * (i01 * qy + i11 * qx)) - 2.0 * pc * i01 + dcorr(1)),
                    fd * (-qy * (gx * i01 + gy * i11) - pc * i11 + dcorr(2))], axis=-1)
    chi2_old = np.einsum("nm,nm->n", old_wgt * r, r)
    chi2 = np.einsum("nm,nm->n", wgt * r, r)
    jtj = np.einsum("nmi,nm,nmj->nij", jac, wgt, jac)
    jtr = np.einsum("nmi,nm->ni", jac, wgt * r)
    return chi2_old, chi2, jtj, jtr, wgt


def _stretch_ok(q: np.ndarray) -> np.ndarray:
    """The maps within [MIN_STRETCH, MAX_STRETCH] (both eigenvalues of A), finite."""
    a11, a12, a22 = 1.0 + q[:, 4], q[:, 5], 1.0 + q[:, 6]
    tr, det = a11 + a22, a11 * a22 - a12 * a12
    disc = np.sqrt(np.maximum(tr * tr / 4 - det, 0.0))
    lo, hi = tr / 2 - disc, tr / 2 + disc
    return np.all(np.isfinite(q), axis=1) & (lo >= MIN_STRETCH) & (hi <= MAX_STRETCH)


def fit_shapes(psf: FramePSF, stamps: np.ndarray, start: np.ndarray, origin: np.ndarray, *,
               weight_mask: np.ndarray | None = None, variance: np.ndarray | None = None, gain: float = 0.0,
               read_noise: float = 0.0, psf_uncertainty: bool = True, max_iter: int = 40,
               backend: str = "auto") -> ShapeFit:
    """Fit background, flux, centre and a linear map of the frame's PSF to every stamp, all at once.

    Parameters
    ----------
    psf : FramePSF
        The frame's PSF; each star is fitted with the PSF of its place (its starting centre).
    stamps : ndarray (N, h, w)
        The stamps (NaN pixels left out).
    start : ndarray (N, 4)
        background, flux, x0, y0 (stamp coordinates): the 4-parameter fit's solution.  The map starts
        at the identity.
    origin : ndarray (N, 2)
        Each stamp's first pixel (x, y) on the frame.
    weight_mask : ndarray of bool (N, h, w), optional
        False for pixels to leave out.
    variance : ndarray (N, h, w), optional
        A fixed per-pixel variance added to the model's (a neighbour's light's photon noise); with
        ``gain`` 0 and ``read_noise`` 0 it is the whole variance.
    gain, read_noise : float
        e-/ADU (0: no Poisson term) and the read noise in ADU.
    psf_uncertainty : bool
        The PSF's node variance and profile error in every pixel's variance (as the 4-parameter fit).
    max_iter : int
        Levenberg-Marquardt iterations at most.
    backend : {"auto", "numpy"}
        ``"numpy"`` forces the numpy twin of the compiled normal equations.

    Returns
    -------
    ShapeFit

    Examples
    --------
    >>> import psfkit
    >>> from psfkit.datasets.simulate import simulate_field
    >>> from psfkit.psf.empirical import build_frame_psf
    >>> from psfkit.psf.stamps import cut_stamps
    >>> data, truth = simulate_field((300, 300), 120, model="moffat", fwhm=3.0, beta=3.0, seed=1)
    >>> psf = build_frame_psf(psfkit.Image(data=data, gain=1.5, read_noise=6.0), degree=0)
    >>> bright = np.argsort(-np.asarray(truth["flux"]))[:5]
    >>> x, y, flux = (np.asarray(truth[k])[bright] for k in ("x", "y", "flux"))
    >>> stamps, inside, origin, _ = cut_stamps(data, x, y, 15)
    >>> start = np.column_stack([np.full(5, 200.0), flux, x - origin[:, 0], y - origin[:, 1]])
    >>> fit = fit_shapes(psf, stamps, start, origin, weight_mask=inside, gain=1.5, read_noise=4.0)
    >>> bool(np.all(np.abs(fit.params[fit.ok, 4:]) < 0.05))  # the stars are the PSF: A = I
    True
    """
    from psfkit.psf import _shape_kernels

    stamps = np.asarray(stamps, dtype=float)
    n, h, w = stamps.shape
    mask = np.isfinite(stamps)
    if weight_mask is not None:
        mask &= np.asarray(weight_mask, dtype=bool)
    data = np.where(mask, stamps, 0.0).reshape(n, h * w)
    var_fixed = None
    if variance is not None:
        var_fixed = np.asarray(variance, dtype=float).reshape(n, h * w)
        bad = ~np.isfinite(var_fixed)
        mask &= ~bad.reshape(n, h, w)
        var_fixed = np.where(bad, 0.0, var_fixed)
    m = mask.reshape(n, h * w)
    start = np.asarray(start, dtype=float).reshape(n, 4)
    origin = np.asarray(origin, dtype=float).reshape(n, 2)
    # the PSF's spline cut to the nodes a stamp can reach under the narrowest map (exact inside)
    o = psf.oversampling
    c = (psf.size - 1) // 2
    reach = int(math.ceil(o * (math.hypot(h, w) / 2.0 + 2.0) / MIN_STRETCH)) + 3
    cut = slice(c - min(c, reach), c + min(c, reach) + 1)
    coef = psf.spline_terms()[:, cut, cut]
    terms = psf.terms(start[:, 2] + origin[:, 0], start[:, 3] + origin[:, 1])
    node_var = getattr(psf, "variance", None)
    psf_var = np.asarray(node_var, dtype=float)[cut, cut] if psf_uncertainty and node_var is not None else None
    kw = dict(oversampling=o, width=w, psf_var=psf_var, gain=float(gain or 0.0), read_noise=float(read_noise or 0.0),
              profile_error=float(getattr(psf, "profile_error", 0.0) or 0.0) if psf_uncertainty else 0.0)
    compiled = backend != "numpy" and _shape_kernels.available() and n > 0

    def normal(rows, q, old):  # the numpy twin, 256 stars at a time
        vf = None if var_fixed is None else var_fixed[rows]
        parts = [normal_equations_numpy(coef, terms[rows[i:i + 256]], data[rows[i:i + 256]], m[rows[i:i + 256]],
                                        q[i:i + 256], old[i:i + 256],
                                        var_fixed=None if vf is None else vf[i:i + 256], **kw)
                 for i in range(0, len(rows), 256)]
        if not parts:
            return np.zeros(0), np.zeros(0), np.zeros((0, 7, 7)), np.zeros((0, 7)), np.zeros((0, h * w))
        return tuple(np.concatenate([part[k] for part in parts]) for k in range(5))

    p = np.zeros((n, 7))
    p[:, :4] = start
    finite = np.all(np.isfinite(p), axis=1) & (np.count_nonzero(m, axis=1) > 7)
    p[~finite] = 0.0
    if compiled:  # the same loop per star, compiled, stars in parallel
        p, cov, chi2, iters, converged, inv_ok = _shape_kernels.fit_batch(
            coef, terms, data, m, p, finite, var_fixed=var_fixed, max_iter=max_iter, step_tol=STEP_TOL, **kw)
        near_bound = ~_stretch_ok(np.column_stack([p[:, :4], 1.02 * p[:, 4:]]))  # within 2 % of a bound
        ok = finite & converged & inv_ok & ~near_bound
        p[~finite, :4] = start[~finite]
        p[~finite, 4:] = np.nan
        cov[~finite] = np.nan
        return ShapeFit(p, cov, np.where(finite, chi2, np.nan), iters, ok)
    allrows = np.arange(n)
    _, chi2, jtj, jtr, wgt = normal(allrows, p, np.zeros((n, h * w)))
    lam = np.full(n, 1e-3)
    iters = np.zeros(n, dtype=np.int64)
    converged = np.zeros(n, dtype=bool)
    active = np.flatnonzero(finite & np.isfinite(chi2))
    eye = np.eye(7)
    for _ in range(max_iter):
        if active.size == 0:
            break
        a = jtj[active]
        diag = np.diagonal(a, axis1=1, axis2=2)
        floor = 1e-12 * diag.max(axis=1, keepdims=True) + 1e-300
        system = a + lam[active, None, None] * eye * np.maximum(diag, floor)[:, None, :]
        step, solved = _solve(system, jtr[active])
        iters[active] += 1
        trial = p[active] + step
        valid = solved & _stretch_ok(trial)
        t_old, t_chi2, t_jtj, t_jtr, t_wgt = normal(active, np.where(valid[:, None], trial, p[active]),
                                                    wgt[active])
        better = valid & np.isfinite(t_old) & (t_old <= chi2[active])
        # a step below STEP_TOL standard errors (in the metric of J^T W J) ends the fit, taken or not: the
        # Jacobian leaves out the pixel term's change through q, so the last tiny steps need not lower chi2
        small = np.einsum("ni,nij,nj->n", step, a, step) <= STEP_TOL**2
        tiny = (chi2[active] - t_old) <= 1e-10 * np.maximum(chi2[active], 1e-300)
        acc = active[better]
        p[acc], chi2[acc], jtj[acc], jtr[acc], wgt[acc] = (trial[better], t_chi2[better], t_jtj[better],
                                                           t_jtr[better], t_wgt[better])
        lam[acc] = np.maximum(lam[acc] / 5.0, 1e-12)
        lam[active[~better]] *= 10.0
        # the Gauss-Newton step from an accepted point below STEP_TOL: no further trial needed
        gn, gn_ok = _solve(jtj[acc], jtr[acc])
        gg = np.einsum("ni,ni->n", gn, jtr[acc])
        near = np.zeros(active.size, dtype=bool)
        near[better] = gn_ok & (gg >= 0.0) & (gg <= STEP_TOL**2)
        done = np.where(better, small | tiny | near, (small & solved) | (lam[active] > 1e10))
        converged[active[done]] = True
        active = active[~done]
    cov = np.full((n, 7, 7), np.nan)
    inv_ok = np.zeros(n, dtype=bool)
    rows = np.flatnonzero(finite)
    if rows.size:
        inv, ok_rows = _solve(jtj[rows], np.broadcast_to(eye, (rows.size, 7, 7)).copy())
        cov[rows[ok_rows]] = inv[ok_rows]
        inv_ok[rows] = ok_rows & np.all(np.diagonal(inv, axis1=1, axis2=2) > 0, axis=1)
    near_bound = ~_stretch_ok(np.column_stack([p[:, :4], 1.02 * p[:, 4:]]))  # within 2 % of a bound
    ok = finite & converged & inv_ok & ~near_bound
    p[~finite, :4] = start[~finite]
    p[~finite, 4:] = np.nan
    return ShapeFit(p, cov, np.where(finite, chi2, np.nan), iters, ok)


def _solve(system: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Batched solves (rhs (N, 7) or (N, 7, K)); ok where the system is positive definite and the answer finite.

    A batched Cholesky factorisation says which systems are positive definite; only when one is not
    (rare: the factorisation of the whole batch fails) are they sorted by their eigenvalues.
    """
    n = len(system)
    out = np.zeros(rhs.shape)
    if n == 0:
        return out, np.zeros(0, dtype=bool)
    try:
        np.linalg.cholesky(system)
        pd = np.ones(n, dtype=bool)
    except np.linalg.LinAlgError:
        pd = np.all(np.linalg.eigvalsh(system) > 0, axis=1)
    idx = np.flatnonzero(pd)
    if idx.size:
        b = rhs[idx]
        out[idx] = (np.linalg.solve(system[idx], b[..., None])[..., 0] if b.ndim == 2
                    else np.linalg.solve(system[idx], b))
    ok = pd & np.all(np.isfinite(out.reshape(n, -1)), axis=1)
    out[~ok] = 0.0
    return out, ok


# ---------------------------------------------------------------------------------------------
# from the map to the columns


def _moments_of_axes(fwhm_x, fwhm_y, angle_deg):
    """(mxx, myy, mxy) of the uniform ellipse with these full axes at this angle (moment = axis^2 / 16)."""
    t = np.radians(angle_deg)
    c, s = np.cos(t), np.sin(t)
    lx, ly = np.asarray(fwhm_x) ** 2 / 16.0, np.asarray(fwhm_y) ** 2 / 16.0
    return lx * c * c + ly * s * s, lx * s * s + ly * c * c, (lx - ly) * c * s


def psf_moments(grid: np.ndarray, oversampling: int) -> np.ndarray:
    """What the shape columns need of a PSF grid: ``[fwhm, mxx, myy, mxy]``, the pixel taken out.

    ``fwhm`` is the half-maximum contour's circle and ``m`` the second moments of the uniform ellipse
    of its ``fwhm_x``, ``fwhm_y`` and ``angle`` (:func:`psfkit.psf.empirical._contour_shape`).

    Examples
    --------
    >>> o, s = 2, 41
    >>> t = (np.arange(s) - 20) / o
    >>> xx, yy = np.meshgrid(t, t)
    >>> grid = np.exp(-(xx**2 + yy**2) / (2 * 1.3**2)) / (2 * np.pi * 1.3**2) * o**2
    >>> q = psf_moments(grid, o)
    >>> bool(abs(q[1] - q[0] ** 2 / 16) < 1e-3 * q[1] and abs(q[3]) < 1e-3 * q[1])  # round: m = fwhm^2 / 16
    True
    """
    fwhm, fx, fy, angle = _contour_shape(grid, oversampling)
    return np.array([fwhm, *_moments_of_axes(fx, fy, angle)])


def _psf_moments_at(psf: FramePSF, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """:func:`psf_moments` of the PSF at frame positions (N, 4).

    A constant PSF is read once.  A varying one is read once, at the frame's centre, and its change
    across the field is taken as the shape fit takes a star's: the centre's PSF mapped onto the PSF
    of each place by a linear map ``A`` (:func:`_maps_onto`), so that the moments there are
    ``A M A^T`` and the FWHM ``fwhm * sqrt(det A)`` (the same reading of a map as every star's; one
    contour reading instead of 25, each a Moffat fit of the grid's core: 2 s for a field's columns
    before).  The maps are fitted at each star for up to 9 stars, else on a 5 x 5 grid over the
    stars' extent with a bicubic spline through the moments there (exact at the grid's nodes; a
    global cubic surface through a 5 x 5 grid was tried first: with no x^2 y^2 term it read the
    varying field's PSF 3 % narrow at the centre, to meet its corners).  A place whose map fails is
    read on its own contour.
    """
    from scipy.interpolate import RectBivariateSpline

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(x)
    ref = psf.at(*psf.centre)[0]
    base = psf_moments(ref, psf.oversampling)
    if psf.degree == 0 or n == 0:
        return np.tile(base, (n, 1))
    fin = np.isfinite(x) & np.isfinite(y)
    if not fin.any():
        return np.full((n, 4), np.nan)
    if n <= 9:
        px, py = np.where(fin, x, psf.centre[0]), np.where(fin, y, psf.centre[1])
    else:
        gx = np.linspace(x[fin].min() - 1.0, x[fin].max() + 1.0, 5)
        gy = np.linspace(y[fin].min() - 1.0, y[fin].max() + 1.0, 5)
        xx, yy = np.meshgrid(gx, gy)
        px, py = xx.ravel(), yy.ravel()
    grids = psf.at(px, py)
    abc, ok = _maps_onto(psf, ref, grids, float(base[0]) if np.isfinite(base[0]) else 3.0)
    values = np.full((len(px), 4), np.nan)
    values[ok] = _moments_of_map(abc[ok], base)
    for k in np.flatnonzero(~ok):  # no map: the place's own contour
        values[k] = psf_moments(grids[k], psf.oversampling)
    if n <= 9:
        return np.where(fin[:, None], values, np.nan)
    values = values.reshape(5, 5, 4)
    out = np.full((n, 4), np.nan)
    for k in range(4):
        v = values[:, :, k]
        if not np.all(np.isfinite(v)):  # a reading failed: the median of the others there
            v = np.where(np.isfinite(v), v, np.nanmedian(v))
        spline = RectBivariateSpline(gy, gx, v, kx=3, ky=3, s=0)
        out[fin, k] = spline.ev(y[fin], x[fin])
    return out


def psf_shape_at(psf: FramePSF, x: Any, y: Any) -> np.ndarray:
    """The PSF's own ``(fwhm, fwhm_x, fwhm_y, angle)`` (N, 4) at frame positions, read as the shape
    columns read it (:func:`_psf_moments_at`: one contour at the frame's centre, linear maps onto each
    place's PSF; within 0.05 % of each place's own contour, :meth:`FramePSF.shape_at`).

    Examples
    --------
    >>> o, s = 2, 41
    >>> t = (np.arange(s) - 20) / o
    >>> xx, yy = np.meshgrid(t, t)
    >>> grid = np.exp(-(xx**2 + yy**2) / (2 * 1.3**2)) / (2 * np.pi * 1.3**2) * o**2
    >>> psf = FramePSF(grid[None], o, 0, (50.0, 50.0), (50.0, 50.0), 1)
    >>> [round(float(v), 2) for v in psf_shape_at(psf, [10.0], [20.0])[0, :3]]  # round: one width every way
    [2.98, 2.98, 2.98]
    """
    x, y = np.atleast_1d(np.asarray(x, dtype=float)), np.atleast_1d(np.asarray(y, dtype=float))
    return _shape_of_map(np.zeros((len(x), 3)), _psf_moments_at(psf, x, y))


def _maps_onto(psf: FramePSF, ref: np.ndarray, grids: np.ndarray, fwhm: float) -> tuple[np.ndarray, np.ndarray]:
    """The linear maps (K, 3: a, b, c) that take the PSF ``ref`` (a grid of ``psf``'s) onto each of
    ``grids``: :func:`fit_shapes` with ``ref`` as a constant PSF on the grids' pixel-spaced nodes within
    ``fwhm`` (``ref``'s, px) of the centre (noise-free stamps, uniform weights, the star at a node), and
    where each fit is ``ok``.
    """
    o = psf.oversampling
    c = (ref.shape[0] - 1) // 2
    # the pixels within one FWHM of the centre: the core around the half-maximum contour (a stamp of
    # +-5 px read the maps 0.2-0.4 % off the places' own contours, +-1 FWHM within 0.05 %)
    hw = max(2, min(c // o, int(round(fwhm))))
    cut = slice(c - o * hw, c + o * hw + 1, o)
    stamps = np.asarray(grids, dtype=float)[:, cut, cut]
    k = len(stamps)
    const = FramePSF(np.asarray(ref, dtype=float)[None], o, 0, psf.centre, psf.scale, psf.n_stars)
    start = np.column_stack([np.zeros(k), np.ones(k), np.full(k, float(hw)), np.full(k, float(hw))])
    noise = 1e-6 * float(np.max(np.abs(stamps))) if stamps.size else 1.0
    fit = fit_shapes(const, stamps, start, np.zeros((k, 2)), read_noise=noise, psf_uncertainty=False)
    return fit.params[:, 4:7], np.asarray(fit.ok, dtype=bool)


def _moments_of_map(abc: np.ndarray, moments: np.ndarray) -> np.ndarray:
    """:func:`psf_moments` (N, 4) of a PSF of ``moments`` (4,) mapped by each A (``abc`` (N, 3))."""
    a11, b, a22 = 1.0 + abc[:, 0], abc[:, 1], 1.0 + abc[:, 2]
    fwhm, mxx, myy, mxy = moments
    # A M A^T
    sxx = a11 * (a11 * mxx + b * mxy) + b * (a11 * mxy + b * myy)
    sxy = b * (a11 * mxx + b * mxy) + a22 * (a11 * mxy + b * myy)
    syy = b * (b * mxx + a22 * mxy) + a22 * (b * mxy + a22 * myy)
    with np.errstate(invalid="ignore"):
        f = fwhm * np.sqrt(a11 * a22 - b * b)
    return np.column_stack([f, sxx, syy, sxy])


def _shape_of_map(abc: np.ndarray, moments: np.ndarray) -> np.ndarray:
    """(fwhm, fwhm_x, fwhm_y, angle_deg) (N, 4) of the PSF (``moments`` from :func:`psf_moments`) mapped by A."""
    a, b, c = abc[:, 0], abc[:, 1], abc[:, 2]
    fwhm_psf, mxx, myy, mxy = moments.T
    a11, a22 = 1.0 + a, 1.0 + c
    # A M A^T
    p11, p12 = a11 * mxx + b * mxy, a11 * mxy + b * myy
    p21, p22 = b * mxx + a22 * mxy, b * mxy + a22 * myy
    sxx, sxy, syy = p11 * a11 + p12 * b, p11 * b + p12 * a22, p21 * b + p22 * a22
    with np.errstate(invalid="ignore"):
        fwhm = fwhm_psf * np.sqrt(a11 * a22 - b * b)  # the contour's area times det A
    # empirical._axes on every star at once (the same formula, vectorised)
    tr, dt = sxx + syy, sxx * syy - sxy * sxy
    with np.errstate(invalid="ignore"):
        disc = np.sqrt(np.maximum(tr * tr / 4 - dt, 0.0))
        fx, fy = 4.0 * np.sqrt(np.maximum(tr / 2 + disc, 0.0)), 4.0 * np.sqrt(np.maximum(tr / 2 - disc, 1e-12))
    good = np.isfinite(sxx) & np.isfinite(syy) & np.isfinite(sxy)
    fx, fy = np.where(good, fx, np.nan), np.where(good, fy, np.nan)
    angle = 0.5 * np.degrees(np.arctan2(2.0 * sxy, sxx - syy))
    return np.column_stack([fwhm, fx, fy, angle])


def shape_columns(fit: ShapeFit, moments: np.ndarray) -> dict[str, np.ndarray]:
    """``fwhm``, ``fwhm_x``, ``fwhm_y``, ``roundness``, ``angle`` and their ``_err`` of each star.

    Parameters
    ----------
    fit : ShapeFit
        From :func:`fit_shapes`.
    moments : ndarray (N, 4)
        :func:`psf_moments` of the PSF at each star's place.

    Returns
    -------
    dict of column name -> ndarray (NaN where the fit is not ``ok``)

    Examples
    --------
    A map 1.1 times the identity widens every FWHM by 10 %:

    >>> m = np.array([[3.0, 9 / 16, 9 / 16, 0.0]])
    >>> fit = ShapeFit(np.array([[0, 1, 0, 0, 0.1, 0, 0.1]]), np.eye(7)[None] * 1e-6, np.ones(1), np.ones(1),
    ...                np.ones(1, bool))
    >>> cols = shape_columns(fit, m)
    >>> round(float(cols["fwhm"][0]), 6), round(float(cols["roundness"][0]), 6)
    (3.3, 1.0)
    """
    from psfkit.psf.measure import fold_angle

    abc = np.asarray(fit.params[:, 4:7], dtype=float)
    cov = np.asarray(fit.covariance[:, 4:7, 4:7], dtype=float)
    base = _shape_of_map(abc, moments)
    h = 1e-6
    grads = np.zeros((len(abc), 4, 3))
    for j in range(3):
        d = np.zeros(3)
        d[j] = h
        up, down = _shape_of_map(abc + d, moments), _shape_of_map(abc - d, moments)
        diff = up - down
        diff[:, 3] = (diff[:, 3] + 90.0) % 180.0 - 90.0  # the angle's difference across its fold
        grads[:, :, j] = diff / (2 * h)
    with np.errstate(invalid="ignore", divide="ignore"):
        rnd = base[:, 2] / base[:, 1]
        g_rnd = (grads[:, 2] - grads[:, 1] * rnd[:, None]) / base[:, 1:2]
    cols: dict[str, np.ndarray] = {}
    values = {"fwhm": base[:, 0], "fwhm_x": base[:, 1], "fwhm_y": base[:, 2], "roundness": rnd,
              "angle": fold_angle(base[:, 3])}
    gradients = {"fwhm": grads[:, 0], "fwhm_x": grads[:, 1], "fwhm_y": grads[:, 2], "roundness": g_rnd,
                 "angle": grads[:, 3]}
    ok = np.asarray(fit.ok, bool) & np.all(np.isfinite(base), axis=1) & (base[:, 2] > 0)
    for name in SHAPE_COLUMNS:
        var = np.einsum("ni,nij,nj->n", gradients[name], cov, gradients[name])
        cols[name] = np.where(ok, values[name], np.nan)
        if name.startswith("fwhm"):  # the PSF's own FWHM is read to FWHM_READING (docs/psf.md)
            var = var + (FWHM_READING * values[name]) ** 2
        elif name == "roundness":  # ... and so each of its axes: their ratio to sqrt(2) times that
            var = var + (math.sqrt(2.0) * FWHM_READING * values[name]) ** 2
        cols[f"{name}_err"] = np.where(ok, np.sqrt(np.clip(var, 0.0, None)), np.nan)
    return cols


def measure_shapes(psf: FramePSF, data: np.ndarray, x: np.ndarray, y: np.ndarray, flux: np.ndarray,
                   background: np.ndarray, *, box: int, gain: float = 0.0, read_noise: float = 0.0,
                   neighbour_light: Callable[[np.ndarray, int], np.ndarray] | None = None,
                   saturation: float | None = None, noise: np.ndarray | None = None,
                   backend: str = "auto") -> dict[str, np.ndarray]:
    """Each star's own shape columns (:data:`SHAPE_COLUMNS` and errors) from its 4-parameter fit.

    Parameters
    ----------
    psf : FramePSF
    data : ndarray (ny, nx)
        The frame.
    x, y, flux, background : ndarray (N,)
        The 4-parameter fit's centre (frame pixels), total flux and background: the start.
    box : int
        The fitting box (odd), as the 4-parameter fit's.
    gain, read_noise : float
        e-/ADU (0: no Poisson term; then ``noise`` gives each star's constant pixel noise) and ADU.
    neighbour_light : callable, optional
        ``neighbour_light(origin, box)`` -> (N, box, box): the other stars' light in each stamp
        (as :func:`psfkit.fit_stars` takes it), subtracted, its photon noise kept in the weights.
    saturation : float, optional
        Pixels at or above it are left out.
    noise : ndarray (N,), optional
        Each star's pixel noise (ADU) when there is no gain.
    backend : {"auto", "numpy"}

    Returns
    -------
    dict of column name -> ndarray (N,), NaN where the shape fit failed.

    Examples
    --------
    >>> import psfkit
    >>> from psfkit.datasets.simulate import simulate_field
    >>> from psfkit.psf.empirical import build_frame_psf
    >>> data, truth = simulate_field((300, 300), 60, model="moffat", fwhm=3.0, beta=3.0, seed=1, min_separation=20)
    >>> psf = build_frame_psf(psfkit.Image(data=data, gain=1.5, read_noise=6.0), degree=0)
    >>> top = np.argsort(-np.asarray(truth["flux"]))[:3]
    >>> cols = measure_shapes(psf, data, np.asarray(truth["x"])[top], np.asarray(truth["y"])[top],
    ...                       np.asarray(truth["flux"])[top], np.full(3, 200.0), box=15, gain=1.5, read_noise=4.0)
    >>> bool(np.all(np.abs(cols["fwhm"] / 3.0 - 1) < 0.01))
    True
    """
    from psfkit.psf.stamps import cut_stamps, saturation_mask

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    flux, background = np.asarray(flux, dtype=float), np.asarray(background, dtype=float)
    lost = ~(np.isfinite(x) & np.isfinite(y))  # no centre: no stamp, NaN columns
    x, y = np.where(lost, 0.0, x), np.where(lost, 0.0, y)
    stamps, inside, origin, _ = cut_stamps(data, x, y, box)
    inside = inside & ~lost[:, None, None]
    usable = inside & np.isfinite(stamps)
    if saturation is not None:
        usable &= ~(saturation_mask(stamps, saturation) & inside)
    variance = None
    if neighbour_light is not None:
        light = np.where(inside, np.nan_to_num(np.asarray(neighbour_light(origin, box), dtype=float)), 0.0)
        stamps = stamps - light
        if gain:
            variance = np.clip(light, 0.0, None) / gain
    if not gain and noise is not None:  # no noise model: each star's constant pixel noise
        variance = np.broadcast_to(np.asarray(noise, dtype=float)[:, None, None] ** 2, stamps.shape).copy()
    origin = origin.astype(float)
    start = np.column_stack([background, flux, x - origin[:, 0], y - origin[:, 1]])
    fit = fit_shapes(psf, stamps, start, origin, weight_mask=usable, variance=variance, gain=gain,
                     read_noise=read_noise, backend=backend)
    return shape_columns(fit, _psf_moments_at(psf, x, y))
