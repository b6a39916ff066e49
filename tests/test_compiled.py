"""The compiled (numba) normal equations give the numpy engine's answers."""

from __future__ import annotations

import numpy as np
import pytest

from psfkit import _compiled
from psfkit.fitting import NoiseModel, _normal_equations, fit_stamps
from psfkit.models import GaussianPSF, MoffatPSF
from psfkit.simulate import simulate_stamps
from psfkit.stamps import initial_params

CASES = [
    (GaussianPSF(angle=True), "gaussian", True),
    (GaussianPSF(angle=False), "gaussian", False),
    (GaussianPSF(angle=True, sampling="point"), "gaussian", True),
    (MoffatPSF(angle=True, beta=2.5), "moffat", True),
    (MoffatPSF(angle=True), "moffat", True),
]


@pytest.mark.parametrize("model,kind,angle", CASES, ids=[repr(c[0]) for c in CASES])
def test_normal_equations_match_numpy(model, kind, angle):
    assert _compiled.available()
    stamps, _ = simulate_stamps(12, size=13, model=kind, fwhm_x=3.2, fwhm_y=2.4, angle_deg=40, beta=2.5, seed=3)
    rng = np.random.default_rng(1)
    p = initial_params(model, stamps, np.ones(stamps.shape, bool), np.full((12, 2), 6.0))
    if angle:
        p[:, 6] = rng.uniform(-1, 1, 12)
        p[:, 5] *= 0.8
    flat = stamps.reshape(12, -1)
    weight = rng.uniform(0.5, 2.0, flat.shape) * (rng.random(flat.shape) > 0.1)  # some masked pixels
    free = model.default_free()
    k = 3
    ref = _normal_equations(model, p, flat, weight, (13, 13), free, k, residuals=True)
    got = _normal_equations(model, p, flat, weight, (13, 13), free, k, residuals=False)
    assert got[3] is None  # the compiled path answered
    for a, b in zip(ref[:3], got[:3]):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-9 * np.abs(a).max())


@pytest.mark.parametrize("model,kind,angle", CASES[:4], ids=[repr(c[0]) for c in CASES[:4]])
def test_fits_match_numpy_backend(monkeypatch, model, kind, angle):
    stamps, _ = simulate_stamps(40, size=15, model=kind, fwhm_x=3.4, fwhm_y=2.8, angle_deg=30, beta=2.5,
                                flux=2e4, seed=5)
    p0 = initial_params(model, stamps, np.ones(stamps.shape, bool), np.full((40, 2), 7.0))
    if angle:
        p0[:, 6] = 0.2
    compiled = fit_stamps(model, stamps, p0, noise=NoiseModel(1.0, 5.0))
    monkeypatch.setenv("PSFKIT_BACKEND", "numpy")
    assert not _compiled.available()
    numpy_fit = fit_stamps(model, stamps, p0, noise=NoiseModel(1.0, 5.0))
    assert np.all(compiled.flags == numpy_fit.flags)
    diff = np.abs(compiled.params - numpy_fit.params) / np.maximum(numpy_fit.errors, 1e-12)
    assert np.nanmax(diff) < 1e-3
    np.testing.assert_allclose(compiled.covariance, numpy_fit.covariance, rtol=1e-5, atol=1e-12)
