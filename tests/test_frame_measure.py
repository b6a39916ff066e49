"""measure_with_frame_psf's own steps: neighbours' light drawn on the stamps, the stamps' starting background."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from psfkit.psf import _frame_kernels
from psfkit.psf.empirical import FramePSF, neighbour_light, own_light, render_stars
from psfkit.psf.stamps import _row_nanmedian, cut_stamps


def _varying_psf(o=2, reach=8):
    """A degree-1 Gaussian-like PSF over a 300 x 200 frame, wider towards +x (unit sum per pixel)."""
    s = 2 * reach * o + 1
    offs = (np.arange(s) - (s - 1) / 2) / o
    r2 = offs[:, None] ** 2 + offs[None, :] ** 2
    base = np.exp(-r2 / (2 * 1.3**2))
    wide = np.exp(-r2 / (2 * 1.5**2))
    base *= o * o / base.sum()
    wide *= o * o / wide.sum()
    coef = np.zeros((3, s, s))
    coef[0] = base
    coef[1] = 0.5 * (wide - base)
    return FramePSF(coef, o, 1, (150.0, 100.0), (150.0, 100.0), 50)


@pytest.mark.skipif(not _frame_kernels.available(), reason="the compiled kernels are off (PSFKIT_BACKEND=numpy)")
@pytest.mark.parametrize("size", [9, 15, 41])
def test_neighbour_light_on_stamps_is_the_frame_drawn_less_each_own(size):
    """Crowded stars, some off the edges, some not drawn: the compiled stamps equal the drawn frame cut
    (each stamp less its own star), the reference way of taking neighbours out."""
    rng = np.random.default_rng(3)
    shape = (200, 300)
    n = 150
    x = rng.uniform(-3.0, shape[1] + 2.0, n)
    y = rng.uniform(-3.0, shape[0] + 2.0, n)
    flux = rng.uniform(100.0, 1e4, n)
    flux[::17] = np.nan  # not drawn
    flux[5] = -3.0
    psf = _varying_psf()
    cx, cy = np.clip(x, 0, shape[1] - 1), np.clip(y, 0, shape[0] - 1)
    _, inside, origin, _ = cut_stamps(np.zeros(shape), cx, cy, size)
    got = neighbour_light(psf, shape, origin, size, x, y, flux)
    drawn = np.isfinite(flux) & (flux > 0)
    frame = render_stars(psf, shape, x[drawn], y[drawn], flux[drawn])
    cut, _, _, _ = cut_stamps(frame, cx, cy, size)
    own = own_light(psf, origin.astype(float), cut.shape[1:], x, y, np.where(drawn, flux, np.nan))
    want = np.where(inside, cut - own, 0.0)
    assert np.abs(want).max() > 100.0  # neighbours' light is there to take out
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9 * np.nanmax(flux))


def test_row_median_is_nanmedian():
    rng = np.random.default_rng(0)
    for width in (1, 2, 5, 60, 61):
        a = rng.normal(size=(300, width))
        a[rng.random(a.shape) < 0.4] = np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows
            want = np.nanmedian(a, axis=1)
        np.testing.assert_array_equal(_row_nanmedian(a), want)
