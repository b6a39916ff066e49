"""The frame's PSF fit engine (psfkit.psf.frame_fit): compiled against numpy, against the generic engine, truth."""

from __future__ import annotations

import numpy as np
import pytest

from psfkit.datasets.simulate import simulate_stamps, star_params
from psfkit.psf import _frame_kernels
from psfkit.psf import frame_fit as FF
from psfkit.psf.empirical import FramePSF
from psfkit.psf.engine import NoiseModel, fit_stamps
from psfkit.psf.models import MoffatPSF

GAIN, RN = 1.5, 6.0


def _effective_grid(fwhm, o=2, reach=10, beta=3.0, roundness=1.0, angle=0.0):
    """The pixel-integrated Moffat sampled every 1/o pixel (an effective PSF grid), unit sum over pixels."""
    s = 2 * reach * o + 1
    offs = (np.arange(s) - (s - 1) / 2) / o
    xx, yy = np.meshgrid(offs, offs)
    p = star_params("moffat", [0.0], [0.0], [1.0], [fwhm / np.sqrt(roundness)], [fwhm * np.sqrt(roundness)], [angle],
                    beta)
    rows = np.repeat(p, xx.size, axis=0)
    rows[:, 2] = -xx.ravel()
    rows[:, 3] = -yy.ravel()
    grid = MoffatPSF(angle=True).evaluate(rows, (1, 1), k=8)[0].reshape(s, s)
    return grid * (o * o) / grid.sum()


def _varying_psf():
    """A degree-2 PSF over a 2000 x 2000 frame: wider towards +x, elongated towards +y."""
    base = _effective_grid(3.0)
    wide = _effective_grid(3.3)
    long = _effective_grid(3.0, roundness=0.8, angle=20.0)
    coef = np.zeros((6, *base.shape))
    coef[0] = base
    coef[1] = 0.5 * (wide - base)
    coef[2] = 0.5 * (long - base)
    coef[3] = 0.1 * (wide - base)
    return FramePSF(coef, 2, 2, (1000.0, 1000.0), (1000.0, 1000.0), 100)


def _stamps_of(psf, n, seed, flux=(300.0, 3e5), size=15):
    """Stamps drawn from the frame's PSF itself (Poisson + read noise), origins spread over the frame."""
    from psfkit.psf.empirical import render_stars

    rng = np.random.default_rng(seed)
    origin = rng.integers(0, 1985, (n, 2)).astype(float)
    x0 = 7.0 + rng.uniform(-0.5, 0.5, n)
    y0 = 7.0 + rng.uniform(-0.5, 0.5, n)
    f = np.exp(rng.uniform(np.log(flux[0]), np.log(flux[1]), n))
    stamps = np.empty((n, size, size))
    for i in range(n):  # each star rendered on its own small frame at its own place
        local = render_stars(_shifted(psf, origin[i]), (size, size), [x0[i]], [y0[i]], [f[i]])
        expected = 100.0 + local
        stamps[i] = rng.poisson(expected * GAIN) / GAIN + rng.normal(0, RN / GAIN, expected.shape)
    truth = np.column_stack([np.full(n, 100.0), f, x0, y0, origin])
    return stamps, truth


def _shifted(psf, origin):
    """The same PSF with the frame's coordinates moved so that a stamp's pixel (0, 0) is ``origin``."""
    return FramePSF(psf.coefficients, psf.oversampling, psf.degree,
                    (psf.centre[0] - origin[0], psf.centre[1] - origin[1]), psf.scale, psf.n_stars)


@pytest.fixture(scope="module")
def varying():
    psf = _varying_psf()
    stamps, truth = _stamps_of(psf, 400, seed=1)
    return psf, stamps, truth


def _start(truth, seed=2):
    rng = np.random.default_rng(seed)
    p0 = truth.copy()
    p0[:, 0] += 5.0
    p0[:, 1] *= 0.8
    p0[:, 2:4] += rng.uniform(-0.4, 0.4, (len(p0), 2))
    return p0


@pytest.mark.skipif(not _frame_kernels.available(), reason="the compiled kernel is off (PSFKIT_BACKEND=numpy)")
@pytest.mark.parametrize("extra", ["none", "variance", "mask"])
def test_compiled_fit_matches_numpy(varying, extra):
    psf, stamps, truth = varying
    p0 = _start(truth)
    kw = dict(noise=NoiseModel(GAIN, RN / GAIN))
    if extra == "variance":  # e.g. a neighbour's light taken out: its photon noise stays
        kw["variance"] = np.random.default_rng(4).uniform(0, 50, stamps.shape)
    if extra == "mask":
        mask = np.ones(stamps.shape, bool)
        mask[::3, 2:5, 9:12] = False
        kw["weight_mask"] = mask
    a = FF.fit_frame_stamps(psf.model(), stamps, p0, **kw)
    b = FF.fit_frame_stamps(psf.model(), stamps, p0, backend="numpy", **kw)
    assert np.count_nonzero(a.flags) <= 2
    np.testing.assert_array_equal(a.flags, b.flags)
    np.testing.assert_array_equal(a.iterations, b.iterations)
    ok = a.flags == 0
    err = b.errors[ok, :4]
    assert np.max(np.abs(a.params[ok, :4] - b.params[ok, :4]) / err) < 1e-8
    np.testing.assert_allclose(a.errors[ok, :4], err, rtol=1e-9)
    np.testing.assert_allclose(a.chi2[ok], b.chi2[ok], rtol=1e-9)
    np.testing.assert_allclose(a.rss[ok], b.rss[ok], rtol=1e-9)


def test_fit_agrees_with_the_generic_engine_and_the_truth(varying):
    psf, stamps, truth = varying
    model = psf.model()
    p0 = _start(truth)
    noise = NoiseModel(GAIN, RN / GAIN)
    fit = FF.fit_frame_stamps(model, stamps, p0, noise=noise)
    n = len(p0)
    lo, hi = model.bounds(n)
    lo[:, 2:4], hi[:, 2:4] = -1.0, 15.0
    ref = fit_stamps(model, stamps, p0, noise=noise, bounds=(lo, hi))
    ok = (fit.flags == 0) & (ref.flags == 0)
    assert ok.sum() >= n - 4
    # the same weighted least squares (weights from the model, reweighted to their fixed point)
    diff = np.abs(fit.params[ok, :4] - ref.params[ok, :4]) / ref.errors[ok, :4]
    assert np.median(diff) < 1e-3 and np.max(diff) < 0.05
    np.testing.assert_allclose(fit.errors[ok, :4], ref.errors[ok, :4], rtol=2e-3)
    # and the truth: unbiased, the errors honest (the PSF here is exactly the stars')
    pull = (fit.params[ok, :4] - truth[ok, :4]) / fit.errors[ok, :4]
    assert np.all(np.abs(np.mean(pull[:, 1:], axis=0)) < 0.2)
    assert np.all((np.std(pull, axis=0) > 0.88) & (np.std(pull, axis=0) < 1.12))


def test_fit_stars_uses_the_frame_engine():
    """fit_stars with the frame's PSF goes through fit_frame_stamps (same numbers as calling it)."""
    from psfkit.io.image import Image
    from psfkit.psf.fit import fit_stars

    grid = _effective_grid(3.0)
    psf = FramePSF(grid[None], 2, 0, (60.0, 60.0), (60.0, 60.0), 50)
    stamps, truth = simulate_stamps(1, size=121, model="moffat", fwhm_x=3.0, flux=5e4, background=100.0,
                                    gain=GAIN, read_noise=RN / GAIN, jitter=40.0, seed=3)
    img = Image(data=stamps[0], gain=GAIN, read_noise=RN)
    table = fit_stars(img, truth["x0"], truth["y0"], model=psf.model())
    assert table["flux_fit"][0] == pytest.approx(5e4, rel=5 * table["flux_err"][0] / 5e4)
    assert table["x_fit"][0] == pytest.approx(truth["x0"][0], abs=5 * table["x_err"][0])
    assert table["flags"][0] == 0


@pytest.mark.skipif(not _frame_kernels.available(), reason="the compiled kernel is off (PSFKIT_BACKEND=numpy)")
@pytest.mark.parametrize(("o", "own_error"), [(1, False), (2, False), (3, False), (2, True)])
def test_compiled_matches_numpy_off_the_grid(o, own_error):
    """A PSF grid smaller than the stamps (pixels off it are zero), stars near the stamps' edges and a
    varying PSF, at several oversamplings, with and without the PSF's own uncertainty (node variance
    and profile error in the weights): the compiled fit reads the same nodes as the numpy twin."""
    reach = 4
    base = _effective_grid(3.0, o=o, reach=reach)
    wide = _effective_grid(3.4, o=o, reach=reach)
    coef = np.zeros((3, *base.shape))
    coef[0] = base
    coef[1] = 0.5 * (wide - base)
    psf = FramePSF(coef, o, 1, (500.0, 500.0), (500.0, 500.0), 100)
    if own_error:
        node_var = (0.03 * base) ** 2 + 1e-10 * base.max() ** 2
        psf = FramePSF(coef, o, 1, (500.0, 500.0), (500.0, 500.0), 100, variance=node_var, profile_error=0.02,
                       flux_error=0.005)
    rng = np.random.default_rng(7)
    n, size = 60, 17
    origin = rng.integers(0, 980, (n, 2)).astype(float)
    x0 = rng.uniform(1.0, size - 2.0, n)  # up to 7 px off the stamp's centre: part of the star off the grid
    y0 = rng.uniform(1.0, size - 2.0, n)
    flux = rng.uniform(2e3, 5e4, n)
    from psfkit.psf.empirical import render_stars

    stamps = np.empty((n, size, size))
    for i in range(n):
        local = render_stars(_shifted(FramePSF(coef, o, 1, (500.0, 500.0), (500.0, 500.0), 100), origin[i]),
                             (size, size), [x0[i]], [y0[i]], [flux[i]])
        stamps[i] = rng.poisson((100.0 + local) * GAIN) / GAIN + rng.normal(0, RN / GAIN, (size, size))
    p0 = np.column_stack([np.full(n, 90.0), 0.9 * flux, x0 + rng.uniform(-0.3, 0.3, n),
                          y0 + rng.uniform(-0.3, 0.3, n), origin])
    kw = dict(noise=NoiseModel(GAIN, RN / GAIN))
    a = FF.fit_frame_stamps(psf.model(), stamps, p0, **kw)
    b = FF.fit_frame_stamps(psf.model(), stamps, p0, backend="numpy", **kw)
    np.testing.assert_array_equal(a.flags, b.flags)
    np.testing.assert_array_equal(a.iterations, b.iterations)
    ok = a.flags == 0
    assert ok.sum() >= n - 5
    err = b.errors[ok, :4]
    assert np.max(np.abs(a.params[ok, :4] - b.params[ok, :4]) / err) < 1e-8
    np.testing.assert_allclose(a.chi2[ok], b.chi2[ok], rtol=1e-9)


@pytest.mark.skipif(not _frame_kernels.available(), reason="the compiled kernel is off (PSFKIT_BACKEND=numpy)")
def test_compiled_fit_does_not_depend_on_the_threads(varying):
    """Stars in parallel, nothing shared: one thread or all, bit for bit the same answers."""
    import numba

    psf, stamps, truth = varying
    p0 = _start(truth)
    kw = dict(noise=NoiseModel(GAIN, RN / GAIN))
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = FF.fit_frame_stamps(psf.model(), stamps, p0, **kw)
    finally:
        numba.set_num_threads(threads)
    many = FF.fit_frame_stamps(psf.model(), stamps, p0, **kw)
    np.testing.assert_array_equal(one.params, many.params)
    np.testing.assert_array_equal(one.covariance, many.covariance)
    np.testing.assert_array_equal(one.iterations, many.iterations)


@pytest.mark.skipif(not _frame_kernels.available(), reason="the compiled kernel is off (PSFKIT_BACKEND=numpy)")
def test_shared_cholesky_solves_like_numpy():
    """The engine's compiled Cholesky (used by both compiled fits): solutions and inverses of random
    symmetric positive definite systems as numpy.linalg gives them; False for a matrix that is not."""
    from psfkit.psf._compiled import _cho_inverse, _cho_solve, _cholesky

    rng = np.random.default_rng(11)
    for n in (1, 2, 4, 7):
        for _ in range(20):
            m = rng.normal(size=(n, n)) * rng.uniform(0.1, 1e3, n)  # badly scaled columns, as J^T W J has
            a = m.T @ m + 1e-3 * np.eye(n)
            b = rng.normal(size=n)
            low = np.zeros((n, n))
            x = np.zeros(n)
            assert _cholesky(a, low)
            _cho_solve(low, b, x)
            ref = np.linalg.solve(a, b)
            cond = np.linalg.cond(a)
            assert np.max(np.abs(x - ref)) <= 1e-13 * cond * np.max(np.abs(ref))
            inv = np.zeros((n, n))
            assert _cho_inverse(a, low, inv)
            np.testing.assert_allclose(inv @ a, np.eye(n), atol=1e-13 * cond)
    not_pd = np.diag([1.0, -1.0, 2.0, 3.0])
    assert not _cholesky(not_pd, np.zeros((4, 4)))
    assert not _cholesky(np.full((4, 4), np.nan), np.zeros((4, 4)))
