"""The detection stage's compiled kernels against their references (scipy, dense algebra)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from psfkit.detect import _kernels as K
from psfkit.detect import background as B


@pytest.mark.parametrize("shape,sigma", [((37, 53), 1.0), ((200, 150), 1.7), ((5, 4), 0.8)])
def test_gaussian_smooth_equals_scipy(shape, sigma):
    rng = np.random.default_rng(3)
    arr = rng.normal(100.0, 10.0, shape).astype(np.float32)
    arr[shape[0] // 2, shape[1] // 2] += 5000.0  # a spike: the kernel's shape shows
    before = arr.copy()
    ref = ndimage.gaussian_filter(arr, sigma, mode="nearest", truncate=3.0)
    got = K.gaussian_smooth(arr, sigma, truncate=3.0)
    assert np.array_equal(arr, before)  # input untouched
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=2e-6, atol=2e-6 * np.abs(ref).max())
    inplace = arr.copy()
    K.gaussian_smooth(inplace, sigma, truncate=3.0, out=inplace)
    np.testing.assert_allclose(inplace, ref, rtol=2e-6, atol=2e-6 * np.abs(ref).max())


@pytest.mark.parametrize("backend", ["auto", "numpy"])
@pytest.mark.parametrize("ny,nx,gy,gx", [(300, 460, 4, 7), (130, 257, 2, 8), (64, 96, 1, 3)])
def test_level_map_equals_the_dense_spline_product(monkeypatch, backend, ny, nx, gy, gx):
    if backend == "numpy":
        monkeypatch.setenv("PSFKIT_BACKEND", "numpy")
    rng = np.random.default_rng(7)
    cells = (300 + 20 * rng.random((gy, gx))).astype(np.float32)
    cy, cx = ny // gy, nx // gx
    dense = (B._interpolation_weights(ny, gy, cy).astype(float) @ cells.astype(float)
             @ B._interpolation_weights(nx, gx, cx).T.astype(float))
    got = B._level_map(cells, ny, nx, cy, cx)
    assert got.shape == (ny, nx) and got.dtype == np.float32
    np.testing.assert_allclose(got, dense, rtol=1e-6)
