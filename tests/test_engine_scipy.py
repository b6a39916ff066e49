"""The batched engine agrees with an independent solver: scipy.optimize.least_squares.

The same stamps, the same per-pixel weights, the same pixel-integrated model
values; scipy uses its own finite-difference Jacobian (not ours) and its own
trust-region algorithm, star by star, at tight tolerances.

How the parameters are compared: a difference counts relative to the larger of
the parameter's magnitude and 1 (so x0 ~ 7 px may differ by 7e-5 px, a
background of 100 ADU by 1e-3 ADU), and must be below 1e-5 of that; it must
also be below 1e-3 of the parameter's statistical error (the engine stops when
its steps are far below the errors).  Angles are compared modulo pi after the
axes are put in the same order.  The covariances agree to 1e-3 relative
(weighted fits); an unweighted fit's sandwich covariance is checked against
the one built from the true pixel variances.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import least_squares

from psfkit.datasets.simulate import simulate_stamps
from psfkit.psf.engine import NoiseModel, fit_stamps
from psfkit.psf.models import GaussianPSF, MoffatPSF
from psfkit.psf.stamps import initial_params

GAIN, READ_NOISE = 1.5, 6.0


def _stamps(model_name, seed, n=8, size=19, angle=None):
    rng = np.random.default_rng(seed)
    flux = np.exp(rng.uniform(np.log(800), np.log(3e5), n))
    fwhm = rng.uniform(2.0, 4.0, n)
    r = rng.uniform(0.6, 0.95, n)
    stamps, truth = simulate_stamps(
        n, size=size, model=model_name, flux=flux, fwhm_x=fwhm / np.sqrt(r), fwhm_y=fwhm * np.sqrt(r),
        angle_deg=rng.uniform(-90, 90, n) if angle is None else angle, beta=rng.uniform(2.0, 5.0, n),
        background=120.0, gain=GAIN, read_noise=READ_NOISE, seed=seed,
    )
    return stamps, truth


def _start(model, stamps, truth):
    n, h, w = stamps.shape
    usable = np.ones(stamps.shape, dtype=bool)
    centre = np.stack([np.rint(truth["x0"]), np.rint(truth["y0"])], axis=1)
    p0 = initial_params(model, stamps, usable, centre)
    # start the angle and the elongation near the truth so both solvers sit in the same branch
    p0[:, model.i_angle] = np.radians(truth["angle"]) + 0.1
    p0[:, model.i_width_x] *= 1.1
    p0[:, model.i_width_y] *= 0.9
    return p0


def _scipy_fit(model, stamp, p0, variance, free, k):
    h, w = stamp.shape
    data = stamp.ravel()
    sig = np.sqrt(variance.ravel())
    fidx = np.flatnonzero(free)
    lo, hi = (b[0, fidx] for b in model.bounds(1))

    def resid(q):
        p = p0.copy()
        p[fidx] = q
        return (data - model.evaluate(p[None], (h, w), free=free, k=k)[0][0]) / sig

    res = least_squares(resid, p0[fidx], jac="3-point", method="trf", bounds=(lo, hi), x_scale="jac",
                        ftol=1e-15, xtol=1e-15, gtol=1e-15, max_nfev=5000)
    p = p0.copy()
    p[fidx] = res.x
    cov = np.linalg.inv(res.jac.T @ res.jac)
    return p, cov


def _canonical(model, p, cov):
    """Swap axes so that width_x >= width_y (angle + pi/2), fold the angle modulo pi."""
    p = p.copy()
    cov = cov.copy()
    ia, ib, it = model.i_width_x, model.i_width_y, model.i_angle
    if p[ia] < p[ib]:
        q = np.arange(p.size)
        q[ia], q[ib] = ib, ia
        p = p[q]
        cov = cov[np.ix_(q, q)]
        p[it] += np.pi / 2
    p[it] = (p[it] + np.pi / 2) % np.pi - np.pi / 2
    return p, cov


def _compare(model, engine_p, engine_cov, scipy_p, scipy_cov, free, *, check_cov=True):
    fidx = np.flatnonzero(free)
    full_cov = np.zeros((model.n_params, model.n_params))
    full_cov[np.ix_(fidx, fidx)] = scipy_cov
    pe, ce = _canonical(model, engine_p, engine_cov)
    ps, cs = _canonical(model, scipy_p, full_cov)
    d = pe - ps
    it = model.i_angle
    d[it] = (d[it] + np.pi / 2) % np.pi - np.pi / 2
    err = np.sqrt(np.diag(cs))
    for i in fidx:
        name = model.param_names[i]
        assert abs(d[i]) <= 1e-5 * max(abs(ps[i]), 1.0), f"{name}: engine {pe[i]!r} scipy {ps[i]!r}"
        assert abs(d[i]) <= 1e-3 * err[i], f"{name}: difference {d[i]:.3g} vs error {err[i]:.3g}"
    if check_cov:
        ee = np.sqrt(np.diag(ce))[fidx]
        np.testing.assert_allclose(ee, err[fidx], rtol=1e-3)


@pytest.mark.parametrize("model_name", ["gaussian", "moffat"])
def test_engine_matches_scipy_with_fixed_variance(model_name):
    """Weighted by a given variance array (fixed during the fit), angle (and beta) free."""
    model = GaussianPSF() if model_name == "gaussian" else MoffatPSF()
    stamps, truth = _stamps(model_name, seed=3 if model_name == "gaussian" else 4)
    n, h, w = stamps.shape
    variance = np.clip(stamps, 0, None) / GAIN + (READ_NOISE / GAIN) ** 2
    p0 = _start(model, stamps, truth)
    free = model.default_free()
    fit = fit_stamps(model, stamps, p0, variance=variance, free=free)
    assert np.all(fit.flags == 0)
    ks = fit.extra["subsampling"]
    for i in range(n):
        ps, cs = _scipy_fit(model, stamps[i], p0[i], variance[i], free, int(ks[i]))
        _compare(model, fit.params[i], fit.covariance[i], ps, cs, free)


def test_engine_matches_scipy_with_noise_model():
    """With gain and read noise the engine reweights with the model; at its solution, scipy with
    those final weights (held fixed) finds the same parameters."""
    model = GaussianPSF()
    stamps, truth = _stamps("gaussian", seed=5)
    noise = NoiseModel(gain=GAIN, read_noise=READ_NOISE / GAIN)
    p0 = _start(model, stamps, truth)
    free = model.default_free()
    fit = fit_stamps(model, stamps, p0, noise=noise, free=free)
    assert np.all(fit.flags == 0)
    ks = fit.extra["subsampling"]
    for i in range(len(stamps)):
        expected = model.evaluate(fit.params[i : i + 1], stamps.shape[1:], k=int(ks[i]))[0][0]
        var = noise.variance(expected).reshape(stamps.shape[1:])
        ps, cs = _scipy_fit(model, stamps[i], p0[i], var, free, int(ks[i]))
        _compare(model, fit.params[i], fit.covariance[i], ps, cs, free)


def test_engine_matches_scipy_unweighted_axis_aligned():
    """Unweighted (Siril's way), angle fixed at 0: the exact-erf path.  The parameters are scipy's;
    the covariance is a sandwich estimate (the star's photon noise makes the noise uneven), which
    must agree with the sandwich built from scipy's Jacobian and the *true* pixel variances."""
    model = GaussianPSF(angle=False)
    stamps, truth = _stamps("gaussian", seed=6, angle=0.0)  # the model is right: axis-aligned stars
    p0 = _start(model, stamps, truth)
    p0[:, model.i_angle] = 0.0
    free = model.default_free()
    fit = fit_stamps(model, stamps, p0, free=free)
    assert not fit.weighted and np.all(fit.flags == 0)
    h, w = stamps.shape[1:]
    fidx = np.flatnonzero(free)
    ratios = []
    for i in range(len(stamps)):
        ps, cs = _scipy_fit(model, stamps[i], p0[i], np.ones((h, w)), free, 1)
        _compare(model, fit.params[i], fit.covariance[i], ps, cs, free, check_cov=False)
        # the true variance of each pixel (the simulation's gain and read noise) -> sandwich covariance
        mu, jac = model.evaluate(ps[None], (h, w), free=free, jacobian=True)
        var = mu[0] / GAIN + (READ_NOISE / GAIN) ** 2
        bread = np.linalg.inv(jac[0].T @ jac[0])
        true_cov = bread @ (jac[0].T @ (jac[0] * var[:, None])) @ bread
        ratios.append(np.sqrt(np.diag(fit.covariance[i])[fidx] / np.diag(true_cov)))
    ratios = np.array(ratios)
    # per star the estimate is noisy (it comes from one stamp's residuals); on average it is right
    assert np.all((ratios > 0.5) & (ratios < 1.6)), ratios
    assert np.mean(ratios) == pytest.approx(1.0, abs=0.1)
