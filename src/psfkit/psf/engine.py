"""The batched fitting engine: Levenberg-Marquardt over N stamps at once.

Every caller (one star, a whole frame, the web window, a night of frames) fits
through :func:`fit_stamps`.  The stamps of a batch share a shape ``(h, w)``;
pixels outside the image, NaN, saturated or masked pixels carry zero weight.

Two engines run the same algorithm.  For the Gaussian and the Moffat the
default is compiled (:mod:`psfkit.psf._compiled`): the whole fit of each star runs
in numba, stars in parallel.  The numpy engine, the reference (and the path of
the other models, or of everything with ``PSFKIT_BACKEND=numpy``), is vectorised
over stars: each step builds the normal equations of all still-active stars
with batched matrix products and solves them together; stars that have
converged drop out of the active set.  ``tests/test_compiled.py`` checks that
both give the same answers.

Noise model and weights
-----------------------
With a known ``gain`` (e-/ADU) the variance of a pixel is
``model / gain + read_noise**2`` (read noise in data units): the fit is
iteratively reweighted with the *model*, not the data, which makes it
the Poisson maximum-likelihood estimate and reaches the Cramer-Rao bound.
Given an explicit ``variance`` array, that is used as it is.  With neither,
the fit is unweighted (as Siril's): every pixel gets the background variance
measured on the stamp's border (median absolute deviation), so the reduced
chi-square stays readable, and the covariance is a sandwich estimate whose
pixel variances (background + signal-proportional) are fitted to the residuals
(:func:`_unweighted_covariance`), so the errors stay honest for bright stars.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from psfkit import flags as F
from psfkit.psf.models import PSFModel
from psfkit.utils import robust_sigma

__all__ = ["StampFit", "fit_stamps", "NoiseModel"]


@dataclass(frozen=True)
class NoiseModel:
    """Per-pixel variance ``max(model, 0) / gain + read_noise**2`` in data units squared.

    The one place of the formula: the fit's weights, compare's common weights and the
    simulator's noise levels use it (the compiled engine repeats it in its loop, for speed).

    Parameters
    ----------
    gain : float
        Electrons per data unit.
    read_noise : float
        Read noise in data units (ADU), not electrons.

    Examples
    --------
    >>> import numpy as np
    >>> NoiseModel(gain=2.0, read_noise=3.0).variance(np.array([100.0, -5.0]))
    array([59.,  9.])
    """

    gain: float
    read_noise: float = 0.0

    def variance(self, expected: np.ndarray) -> np.ndarray:
        """Variance of each pixel, data units squared: Poisson noise of ``expected`` (>= 0) plus read noise."""
        return np.clip(expected, 0.0, None) / self.gain + self.read_noise**2


@dataclass
class StampFit:
    """Result of :func:`fit_stamps` for a batch of N stamps.

    Attributes
    ----------
    params : ndarray (N, n_params)
        Best-fit parameters (stamp-local coordinates for x0, y0).
    covariance : ndarray (N, n_params, n_params)
        Covariance of the parameters (zero rows/columns for fixed ones).
    chi2 : ndarray (N,)
        Weighted sum of squared residuals.
    rss : ndarray (N,)
        Unweighted sum of squared residuals (for the RMSE).
    n_pixels : ndarray (N,)
        Pixels with non-zero weight.
    n_free : int
        Number of fitted parameters.
    iterations : ndarray (N,)
    flags : ndarray (N,) of int
        Bits of :mod:`psfkit.flags`.
    free : ndarray (n_params,) or (N, n_params) of bool

    Examples
    --------
    >>> from psfkit.datasets.simulate import simulate_stamps, star_params
    >>> from psfkit.psf.models import GaussianPSF
    >>> stamps, truth = simulate_stamps(20, fwhm_x=3.0, gain=1.0, read_noise=5.0, seed=0)
    >>> p0 = 1.1 * star_params("gaussian", truth["x0"], truth["y0"], truth["flux"], truth["fwhm_x"],
    ...                        truth["fwhm_y"], truth["angle"], None, truth["background"])
    >>> fit = fit_stamps(GaussianPSF(), stamps, p0, noise=NoiseModel(gain=1.0, read_noise=5.0))
    >>> fit.params.shape, fit.errors.shape, int(fit.flags.max())
    ((20, 7), (20, 7), 0)
    >>> 0.7 < float(fit.reduced_chi2.mean()) < 1.3
    True
    """

    params: np.ndarray
    covariance: np.ndarray
    chi2: np.ndarray
    rss: np.ndarray
    n_pixels: np.ndarray
    n_free: int | np.ndarray
    iterations: np.ndarray
    flags: np.ndarray
    free: np.ndarray
    weighted: bool = True
    extra: dict = field(default_factory=dict)

    @property
    def errors(self) -> np.ndarray:
        """1-sigma errors, sqrt of the covariance diagonal (N, n_params)."""
        return np.sqrt(np.clip(np.diagonal(self.covariance, axis1=1, axis2=2), 0.0, None))

    @property
    def reduced_chi2(self) -> np.ndarray:
        """Chi-square per degree of freedom (pixels less free parameters, at least 1), one per stamp."""
        dof = np.maximum(self.n_pixels - self.n_free, 1)
        return self.chi2 / dof

    @property
    def rmse(self) -> np.ndarray:
        """Root mean square of the unweighted residuals, data units, one per stamp."""
        return np.sqrt(self.rss / np.maximum(self.n_pixels, 1))


def _solve_batch(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Solve a[i] x = b[i] for a batch; returns (x, ok) with ok False where singular."""
    n = a.shape[0]
    x = np.zeros_like(b)
    ok = np.ones(n, dtype=bool)
    try:
        x = np.linalg.solve(a, b[..., None])[..., 0]
    except np.linalg.LinAlgError:
        for i in range(n):
            try:
                x[i] = np.linalg.solve(a[i], b[i])
            except np.linalg.LinAlgError:
                ok[i] = False
    ok &= np.all(np.isfinite(x), axis=1)
    x[~ok] = 0.0
    return x, ok


def _compiled_kind(model, p, free) -> int | None:
    """The compiled engine's model code for this batch, or None (numpy path)."""
    from psfkit.backend import compiled_available
    from psfkit.psf.models import GaussianPSF, MoffatPSF

    if not compiled_available() or type(model) not in (GaussianPSF, MoffatPSF):
        return None  # (before importing the compiled engine: it imports numba)
    from psfkit.psf import _compiled

    if not _compiled.available():
        return None
    if type(model) is GaussianPSF:
        return _compiled.GAUSSIAN_ERF if _exact_erf_path(model, p, free) else _compiled.GAUSSIAN
    if type(model) is MoffatPSF:
        return _compiled.MOFFAT
    return None


def model_values(model: PSFModel, p: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Values (N, h*w) of the model with parameters p on stamps of this shape, as the fits see
    them (the same pixel integration), on the compiled engine where it covers the model.
    """
    p = np.asarray(p, dtype=float)
    kind = _compiled_kind(model, p, model.default_free()) if len(p) else None
    if kind is None:
        return model.evaluate(p, shape)[0]
    from psfkit.psf import _compiled

    ks = np.ones(len(p), dtype=int) if kind == _compiled.GAUSSIAN_ERF else model.subsampling(p)
    return _compiled.values(kind, p, shape, ks)


def _exact_erf_path(model, p, free) -> bool:
    from psfkit.psf.models import GaussianPSF

    return (
        isinstance(model, GaussianPSF) and model.sampling == "integrated" and not free[model.i_angle]
        and bool(np.all(p[:, model.i_angle] == 0.0))
    )


def _normal_equations(model, p, data, weight, shape, free, k):
    """chi2, J^T W J, J^T W r, model values and residuals for parameters p (n, P) on flattened stamps."""
    val, jac = model.evaluate(p, shape, free=free, jacobian=True, k=k)
    r = data - val
    wr = weight * r
    chi2 = np.einsum("nm,nm->n", wr, r)
    jw = jac * weight[:, :, None]
    jtj = np.matmul(jw.transpose(0, 2, 1), jac)
    jtr = np.einsum("nmp,nm->np", jac, wr)
    return chi2, jtj, jtr, val, r


#: a pass followed by a reweighting pass only sets that pass's weights, and an error of e sigma in
#: them moves the next answer by ~0.02 e sigma: such passes stop at this tolerance (their error then
#: moves the answer by ~2e-4 sigma), the last at rtol
PASS_RTOL = 1e-2

#: an accepted step says less about the distance to the minimum than the Gauss-Newton step from the
#: new point (a damped or slowly converging fit takes small steps far from it): the step test is held to
#: rtol x this factor, the Gauss-Newton test to rtol
STEP_RTOL_FACTOR = 0.01


def _newton_step_small(p, jtj, jtr, lo, hi, fidx, rtol):
    """True where the undamped (projected) Gauss-Newton step is below rtol standard errors.

    The step's length in the metric of J^T W J (the chi-square it would gain, step . J^T W r)
    is below rtol**2: by Cauchy-Schwarz each parameter's step is then below rtol x its
    standard error, and the minimum is that close.  The fit stops there instead of taking
    (and evaluating) that last step.
    """
    if p.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    nf = fidx.size
    eye = np.eye(nf)
    pf = p[:, fidx]
    blocked = ((pf <= lo[:, fidx]) & (jtr < 0)) | ((pf >= hi[:, fidx]) & (jtr > 0))
    keep = ~blocked
    system = jtj * keep[:, :, None] * keep[:, None, :] + eye * blocked[:, :, None]
    rhs = jtr * keep
    step, ok = _solve_batch(system, rhs)
    gain = np.einsum("np,np->n", step, rhs)  # >= 0 for a positive definite system (the compiled path's Cholesky)
    return ok & (gain >= 0) & (gain <= rtol**2)


def _lm(model, p0, data, weight, shape, free, lo, hi, k, max_iter, rtol):
    """Vectorised Levenberg-Marquardt; returns (p, chi2, jtj, iterations, converged)."""
    n = p0.shape[0]
    p = p0.copy()
    fidx = np.flatnonzero(free)
    nf = fidx.size
    lam = np.full(n, 1e-3)
    chi2, jtj, jtr, _, _ = _normal_equations(model, p, data, weight, shape, free, k)
    iters = np.zeros(n, dtype=int)
    converged = np.zeros(n, dtype=bool)
    active = np.flatnonzero(np.isfinite(chi2))
    eye = np.eye(nf)
    for _ in range(max_iter):
        if active.size == 0:
            break
        a_jtj = jtj[active]
        a_jtr = jtr[active]
        diag = np.diagonal(a_jtj, axis1=1, axis2=2)
        floor = 1e-12 * diag.max(axis=1, keepdims=True) + 1e-300
        damp = lam[active, None, None] * (eye * np.maximum(diag, floor)[:, None, :])
        # a parameter on its bound that the gradient pushes outwards stays there for this step
        # (projected LM); without this the clipped step is not a descent step and the fit crawls
        pf = p[active][:, fidx]
        blocked = ((pf <= lo[active][:, fidx]) & (a_jtr < 0)) | ((pf >= hi[active][:, fidx]) & (a_jtr > 0))
        keep = ~blocked
        system = (a_jtj + damp) * keep[:, :, None] * keep[:, None, :] + eye * blocked[:, :, None]
        step, ok = _solve_batch(system, a_jtr * keep)
        pa = p[active]
        trial = pa.copy()
        trial[:, fidx] = pa[:, fidx] + step
        trial = np.clip(trial, lo[active], hi[active])
        t_chi2, t_jtj, t_jtr, _, _ = _normal_equations(model, trial, data[active], weight[active], shape, free, k)
        better = ok & np.isfinite(t_chi2) & (t_chi2 <= chi2[active])
        iters[active] += 1
        # step small compared with the statistical errors? (its length in the metric of J^T W J: this
        # bounds every parameter's step in units of its standard error, see _newton_step_small)
        actual = trial[:, fidx] - pa[:, fidx]
        small = np.einsum("np,npq,nq->n", actual, a_jtj, actual) <= (STEP_RTOL_FACTOR * rtol) ** 2
        dchi = chi2[active] - t_chi2
        tiny_gain = better & (dchi <= 1e-12 * np.maximum(chi2[active], 1e-300))
        acc = active[better]
        p[acc] = trial[better]
        chi2[acc] = t_chi2[better]
        jtj[acc] = t_jtj[better]
        jtr[acc] = t_jtr[better]
        lam[acc] = np.maximum(lam[acc] / 5.0, 1e-12)
        rej = active[~better]
        lam[rej] = lam[rej] * 10.0
        # converged: an accepted step below rtol / 100 x the standard errors, or no chi2 left to gain;
        # a step rejected even under huge damping means the minimum is reached to machine precision
        # or the Gauss-Newton step from the new point is already below rtol x the standard errors
        near = np.zeros(active.size, dtype=bool)
        near[better] = _newton_step_small(p[acc], jtj[acc], jtr[acc], lo[acc], hi[acc], fidx, rtol)
        done = (better & (small | tiny_gain | near)) | (~better & (lam[active] > 1e10))
        converged[active[done]] = True
        active = active[~done]
    return p, chi2, jtj, iters, converged


def fit_stamps(
    model: PSFModel,
    data: np.ndarray,
    p0: np.ndarray,
    *,
    weight_mask: np.ndarray | None = None,
    variance: np.ndarray | None = None,
    noise: NoiseModel | None = None,
    free: np.ndarray | None = None,
    bounds: tuple[np.ndarray, np.ndarray] | None = None,
    max_iter: int = 100,
    rtol: float = 1e-5,
    reweight: int = 2,
    chunk: int | None = None,
) -> StampFit:
    """Fit a model to a batch of stamps by weighted least squares.

    Parameters
    ----------
    model : PSFModel
    data : ndarray, shape (N, h, w)
        The stamps, in data units.  NaN pixels are ignored.
    p0 : ndarray, shape (N, n_params)
        Starting parameters (stamp-local coordinates).
    weight_mask : ndarray of bool, shape (N, h, w), optional
        True for pixels to use (False: masked, saturated, off the image).
    variance : ndarray, shape (N, h, w), optional
        Per-pixel variance (e.g. a user's error array squared); fixed during the fit.
        With ``noise`` too it is added to the model's variance (e.g. the photon noise of
        neighbours' light taken out of the stamps).
    noise : NoiseModel, optional
        Gain and read noise: weights from the model, iteratively updated.
    free : ndarray of bool, shape (n_params,), optional
        Parameters to fit (default: ``model.default_free()``).
    bounds : (lower, upper), each (N, n_params), optional
        Default: ``model.bounds(N)``.
    max_iter : int
        Levenberg-Marquardt iterations per pass at most.
    rtol : float
        Convergence when the Gauss-Newton step from the new point is below
        ``rtol`` standard errors, measured in the metric of J^T W J (which bounds
        every parameter's step by ``rtol`` times its standard error: the answer is
        then within ``rtol`` standard errors of the minimum), or the step just
        taken is below ``rtol / 100`` of them.
    reweight : int
        Extra passes with the variance recomputed from the fitted model
        (only with ``noise``).
    chunk : int, optional
        Stars per vectorised block (bounds memory); default from the stamp size.

    Returns
    -------
    StampFit

    Examples
    --------
    Twenty simulated stars from a first guess 10 % off; the fitted x0 agree with the truth within their errors:

    >>> import numpy as np
    >>> from psfkit.datasets.simulate import simulate_stamps, star_params
    >>> from psfkit.psf.models import GaussianPSF
    >>> stamps, truth = simulate_stamps(20, fwhm_x=3.0, gain=1.0, read_noise=5.0, seed=0)
    >>> p_true = star_params("gaussian", truth["x0"], truth["y0"], truth["flux"], truth["fwhm_x"],
    ...                      truth["fwhm_y"], truth["angle"], None, truth["background"])
    >>> fit = fit_stamps(GaussianPSF(), stamps, 1.1 * p_true, noise=NoiseModel(gain=1.0, read_noise=5.0))
    >>> pull = (fit.params[:, 2] - p_true[:, 2]) / fit.errors[:, 2]
    >>> bool(np.all(np.abs(pull) < 4))
    True
    """
    data = np.asarray(data, dtype=float)
    if data.ndim != 3:
        raise ValueError(f"data must have shape (N, h, w), got {data.shape}")
    n, h, w = data.shape
    p0 = np.asarray(p0, dtype=float).reshape(n, model.n_params)
    free = model.default_free() if free is None else np.asarray(free, dtype=bool)
    lo, hi = model.bounds(n) if bounds is None else bounds
    mask = np.isfinite(data)
    if weight_mask is not None:
        mask &= np.asarray(weight_mask, dtype=bool)
    kind = _compiled_kind(model, p0, free) if n else None
    if kind is not None:
        return _fit_compiled(kind, model, data, p0, mask, variance, noise, free, lo, hi, max_iter, rtol, reweight)
    if chunk is None:
        # the numpy path materialises (stars, pixels x nodes, parameters) arrays: bound their size
        kmax = max(int(model.subsampling(p0).max()), 1) if n else 1
        chunk = max(16, int(4e6 // (h * w * kmax * kmax * max(int(free.sum()), 1))))
    if n > chunk:
        parts = [
            fit_stamps(
                model, data[i : i + chunk], p0[i : i + chunk],
                weight_mask=mask[i : i + chunk],
                variance=None if variance is None else variance[i : i + chunk],
                noise=noise, free=free, bounds=(lo[i : i + chunk], hi[i : i + chunk]),
                max_iter=max_iter, rtol=rtol, reweight=reweight, chunk=chunk,
            )
            for i in range(0, n, chunk)
        ]
        return _concat(parts)

    # group stars by their pixel-integration order so each star's model does not depend on the batch
    ks = model.subsampling(np.clip(p0, lo, hi))
    if _exact_erf_path(model, p0, free):
        ks = np.ones_like(ks)  # the erf integral is exact: no node count to choose
    if np.unique(ks).size > 1:
        out = None
        for k in np.unique(ks):
            sel = np.flatnonzero(ks == k)
            part = fit_stamps(
                model, data[sel], p0[sel], weight_mask=mask[sel],
                variance=None if variance is None else variance[sel], noise=noise, free=free,
                bounds=(lo[sel], hi[sel]), max_iter=max_iter, rtol=rtol, reweight=reweight, chunk=chunk,
            )
            out = _scatter(out, part, sel, n)
        return out
    k = int(ks[0]) if n else 1

    flat = np.where(mask, data, 0.0).reshape(n, h * w)
    m = mask.reshape(n, h * w)
    n_pix = m.sum(axis=1)
    p = np.clip(p0, lo, hi)
    weighted = variance is not None or noise is not None

    def weights_for(expected):
        if variance is not None and noise is not None:
            var = noise.variance(expected) + np.asarray(variance, dtype=float).reshape(n, h * w)
        elif variance is not None:
            var = np.asarray(variance, dtype=float).reshape(n, h * w)
        elif noise is not None:
            var = noise.variance(expected)
        else:
            var = np.broadcast_to(border_var[:, None], flat.shape)
        wgt = np.where(m & (var > 0) & np.isfinite(var), 1.0 / np.where(var > 0, var, 1.0), 0.0)
        return wgt

    border_var = _border_variance(np.where(mask, data, np.nan)) if not weighted else None
    passes = 1 + (reweight if noise is not None else 0)
    if noise is not None:
        # first pass: variance from a smoothed version of the data's own level (robust start)
        expected = model.evaluate(p, (h, w), free=free, k=k)[0]
    else:
        expected = flat
    total_iters = np.zeros(n, dtype=int)
    for i_pass in range(passes):
        wgt = weights_for(expected)
        tol = rtol if i_pass == passes - 1 else max(rtol, PASS_RTOL)
        p, chi2, jtj, iters, converged = _lm(model, p, flat, wgt, (h, w), free, lo, hi, k, max_iter, tol)
        total_iters += iters
        expected = model.evaluate(p, (h, w), free=free, k=k)[0]
    # final statistics at the solution with the final weights
    wgt = weights_for(expected) if noise is not None else wgt
    chi2, jtj, _, val, r = _normal_equations(model, p, flat, wgt, (h, w), free, k)
    rss = np.einsum("nm,nm->n", r * m, r)
    return _finish(model, p, chi2, jtj, rss, n_pix, total_iters, converged, free, lo, hi, weighted,
                   np.full(n, k), None if weighted else (flat, wgt, border_var, (h, w)))


def _fit_compiled(kind, model, data, p0, mask, variance, noise, free, lo, hi, max_iter, rtol, reweight):
    """:func:`fit_stamps` on the compiled engine (:func:`psfkit.psf._compiled.fit_batch`): same algorithm."""
    from psfkit.psf import _compiled

    n, h, w = data.shape
    p = np.clip(p0, lo, hi)
    ks = np.ones(n, dtype=int) if kind == _compiled.GAUSSIAN_ERF else model.subsampling(p)
    m = mask.reshape(n, h * w)
    n_pix = m.sum(axis=1)
    weighted = variance is not None or noise is not None
    border_var = None
    if variance is not None and noise is not None:  # the model's variance plus this one
        passes = 1 + reweight
        var, gain, rn = np.asarray(variance, dtype=float).reshape(n, h * w), noise.gain, noise.read_noise
    elif variance is not None:  # fixed weights
        passes = 1
        var, gain, rn = np.asarray(variance, dtype=float).reshape(n, h * w), None, 0.0
    elif noise is not None:
        var, passes, gain, rn = None, 1 + reweight, noise.gain, noise.read_noise
    else:
        border_var = _border_variance(np.where(mask, data, np.nan))
        var, passes, gain, rn = np.broadcast_to(border_var[:, None], (n, h * w)), 1, None, 0.0
    p, chi2, jtj, _, rss, iters, converged, cov_free, cov_ok = _compiled.fit_batch(
        kind, p, data.reshape(n, h * w), m, (h, w), free, lo, hi, ks, variance=var, gain=gain, read_noise=rn,
        max_iter=max_iter, rtol=rtol, passes=passes, pass_rtol=PASS_RTOL, step_factor=STEP_RTOL_FACTOR,
    )
    unweighted = None
    if not weighted:
        flat = np.where(mask, data, 0.0).reshape(n, h * w)
        unweighted = (flat, np.where(m, 1.0 / border_var[:, None], 0.0), border_var, (h, w))
    return _finish(model, p, chi2, jtj, rss, n_pix, iters.astype(int), converged, free, lo, hi, weighted, ks,
                   unweighted, (cov_free, cov_ok))


def _finish(model, p, chi2, jtj, rss, n_pix, total_iters, converged, free, lo, hi, weighted, ks, unweighted,
            inverse=None):
    """Covariance, flags and the :class:`StampFit` from the final normal equations of either path.

    ``unweighted`` is ``(flat data, weights, border variance, stamp shape)`` for an unweighted fit (its
    covariance is the sandwich estimate), else None.  ``inverse`` is ``(jtj^-1, ok)`` where already
    computed (the compiled path's Cholesky inverse); the others are inverted here.
    """
    n = p.shape[0]
    flags = np.zeros(n, dtype=np.int64)
    flags[~converged] |= F.NOT_CONVERGED
    nf = int(free.sum())
    if inverse is not None:  # the compiled path's: NaN where not computed, and ours to fill
        cov_free, todo = inverse[0], ~inverse[1]
    else:
        cov_free, todo = np.full((n, nf, nf), np.nan), np.ones(n, dtype=bool)
    idx = np.flatnonzero(todo)
    try:
        cov_free[idx] = np.linalg.inv(jtj[idx])
    except np.linalg.LinAlgError:
        for i in idx:
            try:
                cov_free[i] = np.linalg.inv(jtj[i])
            except np.linalg.LinAlgError:
                cov_free[i] = np.nan
    good = np.all(np.isfinite(cov_free), axis=(1, 2))
    diag_ok = np.all(np.diagonal(cov_free, axis1=1, axis2=2) > 0, axis=1)
    good &= diag_ok
    flags[~good] |= F.SINGULAR_COVARIANCE
    if unweighted is not None:
        flat, wgt, border_var, shape = unweighted
        for k in np.unique(ks):
            sel = np.flatnonzero(ks == k)
            val = model.evaluate(p[sel], shape, free=free, k=int(k))[0]
            cov_free[sel] = _unweighted_covariance(model, p[sel], flat[sel] - val, wgt[sel], border_var[sel],
                                                   shape, free, int(k), cov_free[sel], good[sel])
    if nf == model.n_params:
        cov = np.where(good[:, None, None], cov_free, np.nan)
    else:
        cov = np.zeros((n, model.n_params, model.n_params))
        fidx = np.flatnonzero(free)
        cov[:, fidx[:, None], fidx[None, :]] = np.where(good[:, None, None], cov_free, np.nan)
    at_bound = np.any(((p <= lo) | (p >= hi)) & free[None, :] & (np.isfinite(lo) | np.isfinite(hi)), axis=1)
    flags[at_bound] |= F.AT_BOUND
    flags[n_pix <= nf + 2] |= F.TOO_FEW_PIXELS
    bad = ~np.all(np.isfinite(p), axis=1) | ~np.isfinite(chi2)
    flags[bad] |= F.FIT_FAILED
    return StampFit(
        params=p, covariance=cov, chi2=chi2, rss=rss, n_pixels=n_pix, n_free=nf,
        iterations=total_iters, flags=flags, free=free.copy(), weighted=weighted,
        extra={"subsampling": np.asarray(ks, dtype=int)},
    )


def _unweighted_covariance(model, p, r, wgt, border_var, shape, free, k, cov_free, good):
    """Covariance of an unweighted fit: the sandwich (J^T J)^-1 J^T V J (J^T J)^-1.

    Every pixel had the same weight, but the noise is not the same everywhere: the star's own
    photon noise adds to the background's.  ``(J^T J)^-1 x rss/dof`` assumes it is, and understates
    the errors of bright stars (threefold at SNR 1000).  Here ``V = a + b s`` per pixel, with ``s``
    the model above the background, ``a`` the background's variance and ``b`` an effective 1/gain,
    both >= 0 and fitted to the squared residuals through their expectation
    ``E[r_k^2] = ((I - H) V (I - H))_kk = a (1 - h_k) + b (s_k (1 - 2 h_k) + (H S H)_kk)``
    (``H`` the hat matrix: a bright core's noise leaks into the fitted wings).
    """
    val, jac = model.evaluate(p, shape, free=free, jacobian=True, k=k)
    use = wgt > 0
    jm = jac * use[:, :, None]
    a_inv = np.where(good[:, None, None], cov_free, 0.0) / border_var[:, None, None]  # (J^T J)^-1
    star = np.where(use, np.clip(val - p[:, :1], 0.0, None), 0.0)
    m_s = np.matmul(jm.transpose(0, 2, 1), jm * star[:, :, None])  # J^T S J
    q_mat = np.matmul(np.matmul(a_inv, m_s), a_inv)
    h = np.einsum("nmi,nmi->nm", np.matmul(jm, a_inv), jm)  # diag(J A J^T); 4x faster than one 3-operand einsum
    c = np.where(use, 1.0 - h, 0.0)
    d = np.where(use, star * (1.0 - 2.0 * h) + np.einsum("nmi,nmi->nm", np.matmul(jm, q_mat), jm), 0.0)
    r2 = np.where(use, r * r, 0.0)
    wt = use.astype(float)
    for _ in range(3):  # least squares, then weighted by 1 / E[r^2]^2 (the variance of r^2 is 2 E[r^2]^2)
        a, b = _variance_coefficients(c, d, r2, wt)
        expect = a[:, None] * c + b[:, None] * d
        # weights scaled to at most 1e12 per star (a fit is blind to a common factor); a star
        # whose expected residuals are all zero (a degenerate fit) keeps uniform weights
        scale = np.max(expect, axis=1, keepdims=True)
        ok = np.isfinite(scale) & (scale > 0)
        scale = np.where(ok, scale, 1.0)
        wt = np.where(use, (scale / np.maximum(np.where(ok, expect, scale), 1e-6 * scale)) ** 2, 0.0)
    return a[:, None, None] * a_inv + b[:, None, None] * q_mat


def _variance_coefficients(c, d, r2, wt):
    """Non-negative (a, b) of the weighted least-squares fit r2 ~ a c + b d, per star."""
    cc, cd, dd = (np.einsum("nm,nm,nm->n", wt, u, v) for u, v in ((c, c), (c, d), (d, d)))
    cr, dr = np.einsum("nm,nm,nm->n", wt, c, r2), np.einsum("nm,nm,nm->n", wt, d, r2)
    det = cc * dd - cd * cd
    ok = det > 1e-12 * np.maximum(cc * dd, 1e-300)
    safe = np.where(ok, det, 1.0)
    a_only = cr / np.where(cc > 0, cc, 1.0)
    a = np.where(ok, (dd * cr - cd * dr) / safe, a_only)
    b = np.where(ok, (cc * dr - cd * cr) / safe, 0.0)
    neg_b = b < 0  # no signal-dependent noise seen: a constant variance
    a = np.where(neg_b, a_only, a)
    b = np.where(neg_b, 0.0, b)
    neg_a = a < 0  # all of it signal-dependent
    b = np.where(neg_a, dr / np.where(dd > 0, dd, 1.0), b)
    a = np.where(neg_a, 0.0, a)
    return a, b


def _border_variance(stamps: np.ndarray) -> np.ndarray:
    """Robust background variance per stamp from its border pixels (MAD), for unweighted fits."""
    import warnings

    border = np.concatenate([stamps[:, 0, :], stamps[:, -1, :], stamps[:, 1:-1, 0], stamps[:, 1:-1, -1]], axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mad = robust_sigma(border, axis=1, ignore_nan=True)
        fallback = np.nanstd(stamps.reshape(len(stamps), -1), axis=1)
    var = np.where(np.isfinite(mad) & (mad > 0), mad, fallback) ** 2
    return np.where(np.isfinite(var) & (var > 0), var, 1.0)


def _concat(parts: list[StampFit]) -> StampFit:
    first = parts[0]
    return StampFit(
        params=np.concatenate([q.params for q in parts]),
        covariance=np.concatenate([q.covariance for q in parts]),
        chi2=np.concatenate([q.chi2 for q in parts]),
        rss=np.concatenate([q.rss for q in parts]),
        n_pixels=np.concatenate([q.n_pixels for q in parts]),
        n_free=first.n_free,
        iterations=np.concatenate([q.iterations for q in parts]),
        flags=np.concatenate([q.flags for q in parts]),
        free=first.free,
        weighted=first.weighted,
        extra={"subsampling": np.concatenate([q.extra["subsampling"] for q in parts])},
    )


def _scatter(out: StampFit | None, part: StampFit, sel: np.ndarray, n: int) -> StampFit:
    if out is None:
        P = part.params.shape[1]
        out = StampFit(
            params=np.zeros((n, P)), covariance=np.zeros((n, P, P)), chi2=np.zeros(n), rss=np.zeros(n),
            n_pixels=np.zeros(n, dtype=int), n_free=part.n_free, iterations=np.zeros(n, dtype=int),
            flags=np.zeros(n, dtype=np.int64), free=part.free, weighted=part.weighted,
            extra={"subsampling": np.zeros(n, dtype=int)},
        )
    for name in ("params", "covariance", "chi2", "rss", "n_pixels", "iterations", "flags"):
        getattr(out, name)[sel] = getattr(part, name)
    out.extra["subsampling"][sel] = part.extra["subsampling"]
    return out
