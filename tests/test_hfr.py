"""Half-flux radius: Gaussian stars (HFR = FWHM / 2) over SNR 20-1000, donuts against the annulus' HFR."""

from __future__ import annotations

import math

import numpy as np
import pytest

from psfkit.aperture.hfr import half_flux_radius
from psfkit.datasets.simulate import add_noise, render_stars, star_params
from psfkit.detect.find import find_stars

GAIN, READ_NOISE, SKY = 1.5, 6.0, 200.0


def flux_for_snr(snr: float, fwhm: float) -> float:
    """The total flux (ADU) whose optimal-PSF SNR is `snr` on this sky (simulate_field's formula)."""
    area = 4 * math.pi * (fwhm / 2.3548) ** 2
    bg_var = SKY / GAIN + (READ_NOISE / GAIN) ** 2
    # snr^2 (f / g + area bg_var) = f^2
    a, b, c = 1.0, -snr**2 / GAIN, -snr**2 * area * bg_var
    return (-b + math.sqrt(b * b - 4 * a * c)) / 2


def grid_field(fwhm: float, flux: float, *, n_side: int = 10, step: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    g = (np.arange(n_side) + 0.5) * step
    x, y = np.meshgrid(g, g)
    x = x.ravel() + rng.uniform(-0.5, 0.5, x.size)
    y = y.ravel() + rng.uniform(-0.5, 0.5, y.size)
    p = star_params("gaussian", x, y, flux, fwhm, fwhm, 0.0)
    shape = (n_side * step, n_side * step)
    data = add_noise(render_stars(shape, p) + SKY, gain=GAIN, read_noise=READ_NOISE, rng=rng)
    return data, x, y


@pytest.mark.parametrize("snr", [20, 50, 200, 1000])
@pytest.mark.parametrize("fwhm", [2.5, 4.0])
def test_gaussian_hfr_is_half_the_fwhm(snr, fwhm):
    data, x, y = grid_field(fwhm, flux_for_snr(snr, fwhm), seed=int(snr + 10 * fwhm))
    t = half_flux_radius(data, x, y, radius=2 * fwhm, recentre=False)
    ratio = np.median(t["hfr"]) / (fwhm / 2)
    assert abs(ratio - 1) < 0.03, ratio
    # the automatic radius and centre, from positions 0.9 px off, find the same (a plain centroid of
    # the pixels above the sky, pulled towards the start by the noise, read 5-14 % large at SNR 20)
    auto = half_flux_radius(data, x + 0.7, y - 0.6)
    assert abs(np.median(auto["hfr"]) / (fwhm / 2) - 1) < 0.03, np.median(auto["hfr"]) / (fwhm / 2)
    assert np.median(np.hypot(auto["x"] - x, auto["y"] - y)) < 0.05 + 3.0 * fwhm / snr  # the start was 0.92 px off


@pytest.mark.parametrize("snr", [20, 50, 200, 1000])
def test_find_stars_hfr_column(snr):
    fwhm = 3.5
    data, x, y = grid_field(fwhm, flux_for_snr(snr, fwhm), seed=snr)
    stars = find_stars(data, gain=GAIN, read_noise=READ_NOISE)
    assert len(stars) > 0.8 * len(x)
    assert "hfr" in stars.colnames and "hfr_arcsec" not in stars.colnames
    assert abs(np.median(stars["hfr"]) / (fwhm / 2) - 1) < 0.03
    assert abs(np.median(stars["hfr"] / (stars["fwhm"] / 2)) - 1) < 0.03


def annulus(shape, cx, cy, r1, r2, flux, *, over: int = 8):
    """A uniform annulus r1 < r < r2 (a defocused star behind a central obstruction), pixel-integrated."""
    ny, nx = shape
    yy, xx = np.mgrid[0 : ny * over, 0 : nx * over]
    r = np.hypot((xx + 0.5) / over - 0.5 - cx, (yy + 0.5) / over - 0.5 - cy)
    ring = ((r > r1) & (r < r2)).astype(float).reshape(ny, over, nx, over).mean(axis=(1, 3))
    return ring * flux / ring.sum()


@pytest.mark.parametrize("r1, r2", [(5.0, 11.0), (9.0, 22.0)])
def test_donut_hfr_matches_the_annulus(r1, r2):
    rng = np.random.default_rng(int(r2))
    shape = (120, 240)
    truth = math.sqrt((r1**2 + r2**2) / 2)  # half the area of the ring lies inside this radius
    stars = annulus(shape, 60.3, 59.6, r1, r2, 4e5) + annulus(shape, 180.6, 60.2, r1, r2, 4e5)
    data = add_noise(stars + SKY, gain=GAIN, read_noise=READ_NOISE, rng=rng)
    t = half_flux_radius(data, [62.0, 178.0], [58.0, 61.0])  # rough positions: centred on the light
    assert np.allclose(t["hfr"], truth, rtol=0.03), (list(t["hfr"]), truth)
    assert np.allclose(t["x"], [60.3, 180.6], atol=0.3)


def test_bad_input():
    from psfkit.errors import PsfkitError

    data = np.zeros((50, 50))
    with pytest.raises(PsfkitError, match="outside the image"):
        half_flux_radius(data, 70, 10)
    with pytest.raises(PsfkitError, match="radius"):
        half_flux_radius(data, 10, 10, radius=0)
    t = half_flux_radius(data, 25, 25)  # no light: NaN, no crash
    assert np.isnan(t["hfr"][0])
