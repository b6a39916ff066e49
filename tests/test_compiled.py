"""The compiled (numba) engine gives the numpy reference engine's answers, and the analytic pixel integral is right.

``PSFKIT_BACKEND=numpy`` selects the reference path (vectorised numpy Levenberg-Marquardt); the
default path runs the whole fit of every star in numba.  Both run the same algorithm, so on the
same stamps the parameters agree to ~1e-6 relative (and far below their errors), the
covariances to ~1e-6, the flags and the pixel-integration orders exactly, for every model and
mode the compiled path covers.
"""

from __future__ import annotations

import numpy as np
import pytest

from psfkit.datasets.simulate import simulate_stamps
from psfkit.psf import _compiled
from psfkit.psf.engine import NoiseModel, _normal_equations, fit_stamps
from psfkit.psf.models import FWHM_PER_SIGMA, GaussianPSF, MoffatPSF
from psfkit.psf.stamps import initial_params

pytestmark = pytest.mark.skipif(not _compiled.available(), reason="the compiled engine is turned off")

# (model, simulated profile, fit the angle, FWHM of the stars): the Gaussian's analytic integral (FWHM >= 2.2),
# its Gauss-Legendre rule (narrow stars), point sampling, the exact erf (angle fixed at 0), the Moffat
CASES = [
    (GaussianPSF(angle=True), "gaussian", True, 3.2),
    (GaussianPSF(angle=True), "gaussian", True, 1.6),
    (GaussianPSF(angle=True, sampling="point"), "gaussian", True, 3.2),
    (GaussianPSF(angle=False), "gaussian", False, 3.2),
    (MoffatPSF(angle=True, beta=2.5), "moffat", True, 3.2),
    (MoffatPSF(angle=True), "moffat", True, 3.2),
]
IDS = [f"{c[0]!r}-fwhm{c[3]}" for c in CASES]


def _kind(model, free):
    if isinstance(model, MoffatPSF):
        return _compiled.MOFFAT
    if model.sampling == "integrated" and not free[model.i_angle]:
        return _compiled.GAUSSIAN_ERF
    return _compiled.GAUSSIAN


@pytest.mark.parametrize("model,kind,angle,fwhm", CASES, ids=IDS)
def test_normal_equations_match_numpy(model, kind, angle, fwhm):
    n = 12
    stamps, _ = simulate_stamps(n, size=13, model=kind, fwhm_x=fwhm * 1.15, fwhm_y=fwhm * 0.85, angle_deg=40,
                                beta=2.5, seed=3)
    rng = np.random.default_rng(1)
    p = initial_params(model, stamps, np.ones(stamps.shape, bool), np.full((n, 2), 6.0))
    if angle:
        p[:, 6] = rng.uniform(-1, 1, n)
        p[:, 5] *= 0.8
    flat = stamps.reshape(n, -1)
    weight = rng.uniform(0.5, 2.0, flat.shape) * (rng.random(flat.shape) > 0.1)  # some masked pixels
    free = model.default_free()
    ks = np.ones(n, dtype=int) if _kind(model, free) == _compiled.GAUSSIAN_ERF else model.subsampling(p)
    got = _compiled.normal_equations(_kind(model, free), p, flat, weight, (13, 13), free, ks)
    for k in np.unique(ks):
        sel = ks == k
        ref = _normal_equations(model, p[sel], flat[sel], weight[sel], (13, 13), free, int(k))
        for a, b in zip((ref[0], ref[1], ref[2], ref[3]), got):
            np.testing.assert_allclose(b[sel], a, rtol=1e-9, atol=1e-9 * np.abs(a).max())


def _pair(monkeypatch, model, stamps, p0, **kw):
    # a tight tolerance: where rounding flips one path's convergence test, the other stops one step
    # later, a difference of at most ~rtol standard errors
    kw.setdefault("rtol", 1e-7)
    compiled = fit_stamps(model, stamps, p0, **kw)
    monkeypatch.setenv("PSFKIT_BACKEND", "numpy")
    assert not _compiled.available()
    reference = fit_stamps(model, stamps, p0, **kw)
    monkeypatch.delenv("PSFKIT_BACKEND")
    return compiled, reference


def _assert_same(compiled, reference):
    assert np.all(compiled.flags == reference.flags)
    assert np.all(compiled.extra["subsampling"] == reference.extra["subsampling"])
    np.testing.assert_array_equal(compiled.n_pixels, reference.n_pixels)
    errors = np.maximum(reference.errors, 1e-300)
    # both stop within rtol (1e-7 here) of the errors from the same minimum: far below the errors ...
    assert np.nanmax(np.abs(compiled.params - reference.params) / errors) < 1e-4
    # ... and ~1e-6 relative
    np.testing.assert_allclose(compiled.params, reference.params, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(compiled.covariance, reference.covariance, rtol=1e-5, atol=1e-14)
    np.testing.assert_allclose(compiled.chi2, reference.chi2, rtol=1e-6)
    np.testing.assert_allclose(compiled.rss, reference.rss, rtol=1e-6)


@pytest.mark.parametrize("model,kind,angle,fwhm", CASES, ids=IDS)
def test_fits_match_numpy_backend(monkeypatch, model, kind, angle, fwhm):
    """Poisson weights from the model with two reweighting passes (the default of fit_stars with a gain)."""
    n = 40
    stamps, _ = simulate_stamps(n, size=15, model=kind, fwhm_x=fwhm * 1.1, fwhm_y=fwhm * 0.9, angle_deg=30,
                                beta=2.5, flux=2e4, seed=5)
    p0 = initial_params(model, stamps, np.ones(stamps.shape, bool), np.full((n, 2), 7.0))
    if angle:
        p0[:, 6] = 0.2
    compiled, reference = _pair(monkeypatch, model, stamps, p0, noise=NoiseModel(1.0, 5.0))
    assert np.all(compiled.flags == 0)
    _assert_same(compiled, reference)


@pytest.mark.parametrize("mode", ["variance", "variance and noise", "unweighted"])
def test_fits_match_numpy_backend_other_weights(monkeypatch, mode):
    """A fixed variance array, alone or added to a noise model's variance, and the unweighted fit
    (sandwich covariance), with masked pixels."""
    n = 30
    model = GaussianPSF()
    stamps, _ = simulate_stamps(n, size=15, fwhm_x=3.6, fwhm_y=2.8, angle_deg=-50, flux=3e4, seed=7)
    mask = np.ones(stamps.shape, bool)
    mask[::3, 0, :4] = False
    p0 = initial_params(model, stamps, mask, np.full((n, 2), 7.0))
    p0[:, 6] = -0.5
    kw = dict(weight_mask=mask)
    if mode.startswith("variance"):
        kw["variance"] = np.clip(stamps, 1, None) / 1.0 + 25.0
    if mode.endswith("noise"):
        kw["noise"] = NoiseModel(1.0, 5.0)
    compiled, reference = _pair(monkeypatch, model, stamps, p0, **kw)
    assert compiled.weighted == (mode != "unweighted")
    # the same passes (at rtol 1e-7 a star's last steps sit at the rounding floor of chi2, where the two
    # paths' sums, in different orders, may accept or reject differently: compare the mean)
    assert abs(compiled.iterations.mean() - reference.iterations.mean()) < 1.0
    _assert_same(compiled, reference)


def test_mixed_integration_orders_in_one_batch(monkeypatch):
    """Narrow and wide stars in one batch: each star keeps its own order (0 analytic, >= 4 nodes) on both paths."""
    model = GaussianPSF()
    a, _ = simulate_stamps(10, size=15, fwhm_x=1.8, fwhm_y=1.5, angle_deg=20, flux=2e4, seed=8)
    b, _ = simulate_stamps(10, size=15, fwhm_x=4.0, fwhm_y=3.0, angle_deg=20, flux=2e4, seed=9)
    stamps = np.concatenate([a, b])
    p0 = initial_params(model, stamps, np.ones(stamps.shape, bool), np.full((20, 2), 7.0))
    p0[:, 6] = 0.3
    compiled, reference = _pair(monkeypatch, model, stamps, p0, noise=NoiseModel(2.0, 3.0))
    ks = compiled.extra["subsampling"]
    assert np.any(ks[:10] >= 4) and np.all(ks[10:] == 0)
    _assert_same(compiled, reference)


def test_stars_out_of_reach_are_flagged_the_same(monkeypatch):
    """An empty stamp and one with too few pixels: the same flags from both paths, no exception."""
    model = GaussianPSF()
    stamps, _ = simulate_stamps(4, size=11, fwhm_x=3.0, fwhm_y=3.0, flux=1e4, seed=2)
    stamps[1] = 100.0  # flat: no star
    mask = np.ones(stamps.shape, bool)
    mask[2, :, :] = False
    mask[2, 5, 4:7] = True  # three pixels
    p0 = initial_params(model, stamps, mask, np.full((4, 2), 5.0))
    compiled, reference = _pair(monkeypatch, model, stamps, p0, weight_mask=mask, noise=NoiseModel(1.0, 3.0))
    # the flat stamp's fit is degenerate (amplitude -> 0, shape undefined): where it stops depends on
    # rounding, so only its amplitude is compared (nothing there, on both paths)
    real = np.array([0, 2, 3])
    np.testing.assert_array_equal(compiled.flags[real], reference.flags[real])
    assert compiled.flags[2] != 0
    for fit in (compiled, reference):
        assert np.all(np.isfinite(fit.params[1])) and fit.params[1, 1] < 1e-6 * fit.params[0, 1]
    ok = (compiled.flags == 0) & (reference.flags == 0) & (reference.params[:, 1] > 10 * reference.errors[:, 1])
    assert ok.sum() == 2  # the two real stars (the flat stamp's shape is undefined)
    np.testing.assert_allclose(compiled.params[ok], reference.params[ok], rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------- the analytic pixel integral
@pytest.mark.parametrize("fwhm_minor", [2.2, 2.6, 3.0, 4.5, 8.0])
@pytest.mark.parametrize("ratio,angle", [(1.0, 0.0), (2.0, 0.0), (1.25, 0.52), (2.0, 0.8)])
def test_analytic_pixel_integral_accuracy(fwhm_minor, ratio, angle):
    """Moment-matched Gaussian + 4th/6th box cumulants: within 1e-5 of the peak of a 16-node rule, any angle."""
    m = GaussianPSF()
    s = fwhm_minor / FWHM_PER_SIGMA
    worst = 0.0
    for off in np.linspace(0.0, 0.5, 4):
        p = np.array([[0.0, 1.0, 15.0 + off, 15.0 + 0.7 * off, ratio * s, s, angle]])
        assert m.subsampling(p)[0] == 0
        exact, _ = m.evaluate(p, (31, 31), k=16)
        analytic, _ = m.evaluate(p, (31, 31))
        worst = max(worst, float(np.abs(analytic - exact).max() / exact.max()))
        assert analytic.sum() == pytest.approx(exact.sum(), rel=1e-6)  # flux kept
    assert worst <= 1e-5


def test_analytic_jacobian_matches_finite_differences():
    m = GaussianPSF()
    p = np.array([[12.0, 300.0, 7.3, 6.8, 1.6, 1.1, 0.5]])
    free = np.ones(7, dtype=bool)
    _, jac = m.evaluate(p, (15, 14), free=free, jacobian=True, k=0)
    fd = np.zeros_like(jac)
    for i in range(7):
        h = 1e-6 * max(1.0, abs(p[0, i]))
        up, dn = p.copy(), p.copy()
        up[0, i] += h
        dn[0, i] -= h
        fd[0, :, i] = (m.evaluate(up, (15, 14), k=0)[0][0] - m.evaluate(dn, (15, 14), k=0)[0][0]) / (2 * h)
    scale = np.abs(fd).max(axis=1, keepdims=True)
    np.testing.assert_allclose(jac / scale, fd / scale, atol=2e-7)


def test_compiled_row_exponentials_survive_far_wings():
    """A very narrow star far from a stamp's edge: the per-row exponential recurrence gives the direct values."""
    p = np.array([[0.0, 1.0, 1.2, 12.7, 0.3, 0.06, 0.3]])
    flat = np.zeros((1, 15 * 15))
    got = _compiled.normal_equations(_compiled.GAUSSIAN, p, flat, np.ones_like(flat), (15, 15),
                                     np.ones(7, bool), [1])[3]
    ref = GaussianPSF(sampling="point").evaluate(p, (15, 15))[0]
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-300)


def test_unknown_backend_is_a_clean_error(monkeypatch):
    from psfkit.errors import PsfkitError
    from psfkit.psf import _compiled

    monkeypatch.setenv("PSFKIT_BACKEND", "fortran")
    with pytest.raises(PsfkitError, match="PSFKIT_BACKEND must be auto, numba or numpy"):
        _compiled.available()
    monkeypatch.setenv("PSFKIT_BACKEND", "NumPy")
    assert _compiled.available() is False
