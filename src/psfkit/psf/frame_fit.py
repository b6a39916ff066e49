"""Every star fitted with the frame's own PSF: flux, x, y and background, all stars in one batch.

:func:`fit_frame_stamps` is what :func:`psfkit.fit_stars` runs for a
:class:`~psfkit.psf.empirical.FramePSFModel` (and so :func:`psfkit.psf.empirical.measure_with_frame_psf`
and ``psfkit find --model frame|FILE``).  Each star is fitted with the PSF of its own place on
the frame (the PSF's polynomial evaluated at the star's starting position: within a fit the star
moves by a fraction of a pixel, over which the PSF does not change).

The fit is weighted Levenberg-Marquardt with the Poisson weights of the model
(``max(model, 0) / gain + read_noise**2``, plus any fixed per-pixel variance), recomputed at
every accepted step, so that it converges on the fixed point that the analytic engine's
reweighting passes approach (the Poisson maximum-likelihood estimate).  Its covariance is the
inverse of ``J^T W J`` at the solution.

Two engines run the same algorithm: the compiled one (:mod:`psfkit.psf._frame_kernels`, numba,
stars in parallel) and the numpy reference here (:func:`fit_batch_numpy`, also the path with
``PSFKIT_BACKEND=numpy``); ``tests/test_frame_fit.py`` checks that they agree.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from psfkit import flags as F
from psfkit.psf.empirical import FramePSF, cubic_interpolate

__all__ = ["fit_frame_stamps", "fit_batch_numpy"]


def _evaluate(grids: np.ndarray, p: np.ndarray, o: int, c: float, shape: tuple[int, int], derivatives: bool = True):
    """The unit-flux PSF on the stamps (and d/du, d/dv in node units) for centres p[:, 2:4]."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    u = (xx.ravel()[None, :] - p[:, 2:3]) * o + c
    v = (yy.ravel()[None, :] - p[:, 3:4]) * o + c
    return cubic_interpolate(grids, u, v, derivatives=derivatives, backend="numpy")


def _normal(p, prof, du, dv, data, mask, wgt, o):
    """chi2, J^T W J (N, 4, 4) and J^T W r (N, 4) with the weights wgt."""
    val = p[:, :1] + p[:, 1:2] * prof
    r = np.where(mask, data - val, 0.0)
    jac = np.stack([np.ones_like(prof), prof, -p[:, 1:2] * o * du, -p[:, 1:2] * o * dv], axis=-1)
    wr = wgt * r
    chi2 = np.einsum("nm,nm->n", wr, r)
    jtj = np.einsum("nmi,nm,nmj->nij", jac, wgt, jac)
    jtr = np.einsum("nmi,nm->ni", jac, wr)
    return chi2, jtj, jtr


def pixel_weights(model, mask, var_fixed, psf_var, gain, rn2):
    """Each pixel's inverse variance (0 off the mask): read noise, the model's Poisson noise (``gain`` > 0),
    a fixed variance (``var_fixed``, or None) and the PSF's own (``psf_var``: flux**2 times its variance).

    One formula for the 4-parameter fits and the group fits (:mod:`psfkit.psf.group_fit`).
    """
    var = np.full(model.shape, rn2)
    if gain > 0:
        var = var + np.where(model > 0, model, 0.0) / gain
    if var_fixed is not None:
        var = var + var_fixed
    var = var + psf_var
    return np.where(mask & (var > 0), 1.0 / np.where(var > 0, var, 1.0), 0.0)


def _weights(p, prof, mask, var_fixed, psf_var, gain, rn2, perr2):
    own = perr2 * prof * prof if psf_var is None else psf_var + perr2 * prof * prof
    return pixel_weights(p[:, :1] + p[:, 1:2] * prof, mask, var_fixed, p[:, 1:2] ** 2 * own, gain, rn2)


def _projected(a, g, p, lo, hi, lam):
    """Damped systems (N, 4, 4) and right-hand sides with the parameters blocked at a bound held fixed."""
    diag = np.diagonal(a, axis1=1, axis2=2)
    floor = 1e-12 * diag.max(axis=1, keepdims=True) + 1e-300
    system = a + lam[:, None, None] * np.eye(4) * np.where(diag > floor, diag, floor)[:, None, :]
    blocked = ((p <= lo) & (g < 0)) | ((p >= hi) & (g > 0))
    keep = ~blocked
    system = system * keep[:, :, None] * keep[:, None, :] + np.eye(4) * blocked[:, :, None]
    return system, g * keep


def _solve(system, rhs):
    """Solutions and ok (positive definite, finite), one per row."""
    n = len(system)
    x = np.zeros_like(rhs)
    ok = np.zeros(n, dtype=bool)
    if n == 0:
        return x, ok
    eig_ok = np.all(np.linalg.eigvalsh(system) > 0, axis=1) if n else ok
    idx = np.flatnonzero(eig_ok)
    if idx.size:
        x[idx] = np.linalg.solve(system[idx], rhs[idx][..., None])[..., 0]
    ok = eig_ok & np.all(np.isfinite(x), axis=1)
    x[~ok] = 0.0
    return x, ok


def fit_batch_numpy(coef, terms, data, mask, lo, hi, params, *, oversampling, shape, var_fixed=None,
                    psf_var_coef=None, psf_var_terms=None, profile_error=0.0, gain=0.0, read_noise=0.0, max_iter=50,
                    rtol=1e-5, step_factor=0.01, chunk=256):
    """The numpy reference of :func:`psfkit.psf._frame_kernels.fit_batch`: same arguments, same results.

    Returns ``(params, cov, chi2, rss, iterations, converged, ok)``.
    """
    n = params.shape[0]
    if n > chunk:
        parts = [fit_batch_numpy(coef, terms[i:i + chunk], data[i:i + chunk], mask[i:i + chunk], lo[i:i + chunk],
                                 hi[i:i + chunk], params[i:i + chunk], oversampling=oversampling, shape=shape,
                                 var_fixed=None if var_fixed is None else var_fixed[i:i + chunk],
                                 psf_var_coef=psf_var_coef,
                                 psf_var_terms=None if psf_var_terms is None else psf_var_terms[i:i + chunk],
                                 profile_error=profile_error, gain=gain, read_noise=read_noise,
                                 max_iter=max_iter, rtol=rtol,
                                 step_factor=step_factor, chunk=chunk)
                 for i in range(0, n, chunk)]
        return tuple(np.concatenate([q[k] for q in parts]) for k in range(7))
    o = int(oversampling)
    s = coef.shape[-1]
    c = (s - 1) / 2.0
    rn2 = float(read_noise) ** 2
    perr2 = float(profile_error) ** 2
    gain = float(gain or 0.0)
    step_tol = rtol * step_factor
    data = np.where(mask, data, 0.0)
    grids = np.einsum("nk,kij->nij", terms, coef)
    vgrids = None if psf_var_coef is None else np.einsum("nk,kij->nij", psf_var_terms, psf_var_coef)
    p = np.clip(params, lo, hi)
    finite = np.all(np.isfinite(p), axis=1)
    p = np.where(finite[:, None], p, 0.0)

    def psf_var_at(q, rows):
        if vgrids is None:
            return None
        return np.maximum(_evaluate(vgrids[rows], q, o, c, shape, False), 0.0)

    def vf(rows):
        return None if var_fixed is None else var_fixed[rows]

    allrows = np.arange(n)
    prof, du, dv = _evaluate(grids, p, o, c, shape)
    wgt = _weights(p, prof, mask, vf(allrows), psf_var_at(p, allrows), gain, rn2, perr2)
    chi2, jtj, jtr = _normal(p, prof, du, dv, data, mask, wgt, o)
    lam = np.full(n, 1e-3)
    iters = np.zeros(n, dtype=np.int64)
    converged = np.zeros(n, dtype=bool)
    active = np.flatnonzero(finite & np.isfinite(chi2))
    for _ in range(max_iter):
        if active.size == 0:
            break
        a = jtj[active]
        pa = p[active]
        system, rhs = _projected(a, jtr[active], pa, lo[active], hi[active], lam[active])
        step, solved = _solve(system, rhs)
        iters[active] += 1
        trial = np.clip(pa + step, lo[active], hi[active])
        tprof, tdu, tdv = _evaluate(grids[active], trial, o, c, shape)
        tr = np.where(mask[active], data[active] - trial[:, :1] - trial[:, 1:2] * tprof, 0.0)
        t_chi2 = np.einsum("nm,nm->n", wgt[active] * tr, tr)
        better = solved & np.isfinite(t_chi2) & (t_chi2 <= chi2[active])
        d = trial - pa
        small = np.einsum("ni,nij,nj->n", d, a, d) <= step_tol**2
        tiny = (chi2[active] - t_chi2) <= 1e-12 * np.maximum(chi2[active], 1e-300)
        acc = active[better]
        p[acc] = trial[better]
        prof[acc], du[acc], dv[acc] = tprof[better], tdu[better], tdv[better]
        wgt[acc] = _weights(p[acc], prof[acc], mask[acc], vf(acc), psf_var_at(p[acc], acc), gain, rn2, perr2)
        chi2[acc], jtj[acc], jtr[acc] = _normal(p[acc], prof[acc], du[acc], dv[acc], data[acc], mask[acc], wgt[acc], o)
        lam[acc] = np.maximum(lam[acc] / 5.0, 1e-12)
        rej = active[~better]
        lam[rej] *= 10.0
        sys_n, rhs_n = _projected(jtj[acc], jtr[acc], p[acc], lo[acc], hi[acc], np.zeros(acc.size))
        nstep, nok = _solve(sys_n, rhs_n)
        g = np.einsum("ni,ni->n", nstep, rhs_n)
        near = nok & (g >= 0) & (g <= rtol**2)
        done = np.zeros(active.size, dtype=bool)
        done[better] = small[better] | tiny[better] | near
        done[~better] = lam[rej] > 1e10
        converged[active[done]] = True
        active = active[~done]
    r = np.where(mask, data - p[:, :1] - p[:, 1:2] * prof, 0.0)
    rss = np.einsum("nm,nm->n", r, r)
    eye = np.broadcast_to(np.eye(4), jtj.shape)
    cov = np.full((n, 4, 4), np.nan)
    inv_ok = np.zeros(n, dtype=bool)
    for col in range(4):
        x, okc = _solve(jtj, np.ascontiguousarray(eye[:, :, col]))
        cov[:, :, col] = x
        inv_ok = okc if col == 0 else inv_ok & okc
    cov[~inv_ok] = np.nan
    ok = inv_ok & finite & np.isfinite(chi2)
    p = np.where(finite[:, None], p, params)
    chi2 = np.where(finite, chi2, np.nan)
    rss = np.where(finite, rss, np.nan)
    cov[~finite] = np.nan
    return p, cov, chi2, rss, iters, converged & finite, ok


def fit_frame_stamps(
    model: Any,
    data: np.ndarray,
    p0: np.ndarray,
    *,
    weight_mask: np.ndarray | None = None,
    variance: np.ndarray | None = None,
    noise: Any = None,
    bounds: tuple[np.ndarray, np.ndarray] | None = None,
    max_iter: int = 50,
    rtol: float = 1e-5,
    psf_uncertainty: bool = True,
    backend: str = "auto",
):
    """Fit background, flux, x0 and y0 of every stamp with the frame's PSF (the stamp's origin fixed).

    Parameters
    ----------
    model : FramePSFModel or FramePSF
        The frame's PSF; its parameters are ``background, flux, x0, y0, x_origin, y_origin``.
    data : ndarray, shape (N, h, w)
        The stamps; NaN pixels are left out.
    p0 : ndarray, shape (N, 6)
        The start: background, flux, x0, y0 (stamp coordinates) and the stamp's first pixel on the frame.
    weight_mask : ndarray of bool (N, h, w), optional
        False for pixels to leave out.
    variance : ndarray (N, h, w), optional
        A fixed per-pixel variance: with ``noise`` added to the model's variance, else the weights.
    noise : NoiseModel, optional
        Gain and read noise (data units): the weights from the model.
    bounds : (lower, upper), each (N, 6), optional
        Default: flux >= 0, the centre within a pixel of the stamp.
    max_iter : int
        Levenberg-Marquardt iterations at most.
    rtol : float
        Convergence when the Gauss-Newton step is below ``rtol`` standard errors (as
        :func:`psfkit.psf.engine.fit_stamps`).
    psf_uncertainty : bool
        Add the PSF's own uncertainty to each pixel's variance, so that the weights and the errors hold
        it: the variance of its nodes (:attr:`FramePSF.variance`) and its profile error (the stars'
        own departures from it, :attr:`FramePSF.profile_error` times the model), both times the flux
        squared; and to the flux's variance ``(FramePSF.flux_error * flux)**2`` (see docs/psf.md).
    backend : {"auto", "numpy"}
        ``"numpy"`` forces the numpy reference.

    Returns
    -------
    StampFit
        As :func:`psfkit.psf.engine.fit_stamps` returns it, with the model's six parameters
        (the origin's rows and columns of the covariance zero).

    Raises
    ------
    ValueError
        Without ``noise`` or ``variance`` (the unweighted fit is the generic engine's).

    Examples
    --------
    >>> import psfkit
    >>> from psfkit.datasets.simulate import simulate_field
    >>> from psfkit.psf.empirical import build_frame_psf
    >>> from psfkit.psf.engine import NoiseModel
    >>> from psfkit.psf.stamps import cut_stamps
    >>> data, truth = simulate_field((300, 300), 120, model="moffat", fwhm=3.0, beta=3.0, seed=1)
    >>> psf = build_frame_psf(psfkit.Image(data=data, gain=1.5, read_noise=6.0), degree=0)
    >>> stamps, inside, origin, _ = cut_stamps(data, truth["x"], truth["y"], 15)
    >>> p0 = np.column_stack([np.full(len(origin), 200.0), truth["flux"], truth["x"] - origin[:, 0],
    ...                       truth["y"] - origin[:, 1], origin[:, 0], origin[:, 1]])
    >>> fit = fit_frame_stamps(psf.model(), stamps, p0, weight_mask=inside, noise=NoiseModel(1.5, 4.0))
    >>> good = np.asarray(truth["snr"]) > 20
    >>> bool(abs(np.median(fit.params[good, 1] / truth["flux"][good]) - 1) < 0.01)
    True
    """
    from psfkit.psf import _frame_kernels
    from psfkit.psf.engine import StampFit

    frame_psf: FramePSF = getattr(model, "frame_psf", model)
    if noise is None and variance is None:
        raise ValueError("fit_frame_stamps needs a noise model or a variance (weights)")
    data = np.asarray(data, dtype=float)
    n, h, w = data.shape
    p0 = np.asarray(p0, dtype=float).reshape(n, 6)
    mask = np.isfinite(data)
    if weight_mask is not None:
        mask &= np.asarray(weight_mask, dtype=bool)
    if bounds is None:
        lo = np.tile([-np.inf, 0.0, -1.0, -1.0], (n, 1))
        hi = np.tile([np.inf, np.inf, float(w), float(h)], (n, 1))
    else:
        lo, hi = (np.asarray(b, dtype=float)[:, :4] for b in bounds)
    flat = data.reshape(n, h * w)  # masked pixels are never read
    m = mask.reshape(n, h * w)
    var_fixed = None
    gain, rn = 0.0, 0.0
    if noise is not None:
        gain, rn = float(noise.gain), float(noise.read_noise)
        if variance is not None:
            var_fixed = np.asarray(variance, dtype=float).reshape(n, h * w)
    else:  # fixed weights: the given variance, no model term
        var_fixed = np.asarray(variance, dtype=float).reshape(n, h * w)
    if var_fixed is not None:
        bad = ~np.isfinite(var_fixed)
        if bad.any():
            m = m & ~bad
            var_fixed = np.where(bad, 0.0, var_fixed)
    x_frame = p0[:, 2] + p0[:, 4]
    y_frame = p0[:, 3] + p0[:, 5]
    coef = frame_psf.spline_terms()
    terms = frame_psf.terms(x_frame, y_frame)
    args = (coef, terms, flat, m, lo, hi, p0[:, :4].copy())
    kw = dict(oversampling=frame_psf.oversampling, shape=(h, w), var_fixed=var_fixed, gain=gain, read_noise=rn,
              max_iter=max_iter, rtol=rtol)
    node_variance = getattr(frame_psf, "variance", None)
    if psf_uncertainty and node_variance is not None:
        # the PSF's own variance per node, interpolated by the same B-spline (values as coefficients:
        # a smoothing that keeps it positive), times flux**2 in each pixel's variance
        kw["psf_var_coef"] = np.asarray(node_variance, dtype=float)[None]
        kw["psf_var_terms"] = np.ones((n, 1))
    if psf_uncertainty:
        kw["profile_error"] = float(getattr(frame_psf, "profile_error", 0.0) or 0.0)
    if backend != "numpy" and _frame_kernels.available() and n:
        p, cov4, chi2, rss, iters, conv, ok = _frame_kernels.fit_batch(*args, **kw)
    else:
        p, cov4, chi2, rss, iters, conv, ok = fit_batch_numpy(*args, **kw)
    params = p0.copy()
    params[:, :4] = p
    cov = np.zeros((n, 6, 6))
    cov[:, :4, :4] = cov4
    flux_error = float(getattr(frame_psf, "flux_error", 0.0) or 0.0) if psf_uncertainty else 0.0
    if flux_error > 0:  # the light the PSF misplaces coherently over the pixels (FramePSF.flux_error)
        cov[:, 1, 1] += (flux_error * p[:, 1]) ** 2
    flags = np.zeros(n, dtype=np.int64)
    flags[~conv] |= F.NOT_CONVERGED
    diag_ok = np.all(np.diagonal(cov4, axis1=1, axis2=2) > 0, axis=1)
    good = ok & diag_ok
    flags[~good] |= F.SINGULAR_COVARIANCE
    cov[~good] = np.nan
    free = np.array([True, True, True, True, False, False])
    at_bound = np.any(((p <= lo) | (p >= hi)) & (np.isfinite(lo) | np.isfinite(hi)), axis=1)
    flags[at_bound] |= F.AT_BOUND
    n_pix = m.sum(axis=1)
    flags[n_pix <= 6] |= F.TOO_FEW_PIXELS
    flags[~np.all(np.isfinite(params), axis=1) | ~np.isfinite(chi2)] |= F.FIT_FAILED
    return StampFit(params=params, covariance=cov, chi2=chi2, rss=rss, n_pixels=n_pix, n_free=4,
                    iterations=iters.astype(int), flags=flags, free=free, weighted=True,
                    extra={"subsampling": np.ones(n, dtype=int)})
