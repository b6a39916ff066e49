"""Simulated frames of the hard kinds (issue 12): cosmic rays, a galaxy, saturated stars.

Truth from psfkit.datasets.simulate (photon noise from the pixel-integrated PSF, fixed seeds).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

import psfkit
from psfkit import flags as F
from psfkit.datasets.simulate import add_noise, render_galaxy, render_stars, simulate_field, star_params
from psfkit.io.image import Image


def _match(table, x, y, radius):
    """Index of the nearest accepted star within ``radius`` of each (x, y), -1 where none."""
    if len(table) == 0:
        return np.full(len(x), -1)
    d, i = cKDTree(np.c_[table["x_fit"], table["y_fit"]]).query(np.c_[x, y])
    return np.where(d <= radius, i, -1)


def test_cosmic_ray_raw_frame():
    """700x700 raw frame, six stars of FWHM 7.5 px, 250 cosmic-ray hits: every star found, no hit
    kept, the FWHM within 7 % (the hits, sharper than any PSF, do not set the frame's FWHM)."""
    img, truth = simulate_field((700, 700), 6, fwhm=7.5, roundness=1.0, flux_range=(4e4, 2e5), background=300.0,
                                gain=1.9, read_noise=5.0, cosmic_rays=250, min_separation=80.0, edge=40, seed=3)
    stars = psfkit.find_stars(Image(img.astype(np.float32)), gain=1.9, read_noise=5.0)
    assert abs(stars.meta["frame_fwhm"] / 7.5 - 1) < 0.07
    found = _match(stars, truth["x"], truth["y"], 2.0)
    assert (found >= 0).all(), f"stars not found: {truth[found < 0]}"
    hits = np.array([(x, y) for _, x, y in truth.meta["artefacts"]], dtype=float)
    on_star = cKDTree(np.c_[truth["x"], truth["y"]]).query(hits)[0] < 3 * 7.5
    kept = _match(stars, hits[~on_star, 0], hits[~on_star, 1], 3.0)
    assert (kept < 0).all(), f"{int((kept >= 0).sum())} cosmic-ray hits kept as stars"
    assert len(stars) == 6
    assert abs(np.median(stars["fwhm"]) / 7.5 - 1) < 0.07


def test_galaxy_frame():
    """1024x1024, a large galaxy (exponential disk, bulge, 40 knots) and 180 stars of FWHM 3 px:
    completeness >= 0.97 away from the galaxy, no knot kept, the FWHM within 5 %."""
    rng = np.random.default_rng(12)
    shape, gain, rn, sky = (1024, 1024), 1.5, 6.0, 200.0
    light, knots = render_galaxy(shape, 512.0, 512.0, disk_peak=2500.0, disk_scale=70.0, bulge_peak=20000.0,
                                 bulge_fwhm=25.0, axis_ratio=0.7, angle_deg=30.0, n_knots=40,
                                 knot_peak=(0.3, 1.0), knot_fwhm=(6.0, 12.0), seed=5)
    n = 180
    x, y = rng.uniform(10, 1013, n), rng.uniform(10, 1013, n)
    flux = np.exp(rng.uniform(np.log(3000.0), np.log(3e5), n))
    stars_light = render_stars(shape, star_params("gaussian", x, y, flux, 3.0, 3.0, 0.0))
    data = add_noise(sky + light + stars_light, gain=gain, read_noise=rn, rng=rng).astype(np.float32)
    stars = psfkit.find_stars(Image(data), gain=gain, read_noise=rn)
    # away from the galaxy: its light below one sky noise; bright enough for a clear detection
    noise = np.sqrt(sky / gain + (rn / gain) ** 2)
    peak_snr = flux / (2 * np.pi * (3.0 / 2.3548) ** 2) / noise
    away = (light[np.rint(y).astype(int), np.rint(x).astype(int)] < noise) & (peak_snr >= 10)
    found = _match(stars, x, y, 1.5) >= 0
    assert away.sum() > 100
    assert found[away].mean() >= 0.97
    kept = _match(stars, knots["x"], knots["y"], 3.0)
    assert (kept < 0).all(), f"{int((kept >= 0).sum())} knots kept as stars"
    matched = _match(stars, x[away], y[away], 1.5)
    fw = np.asarray(stars["fwhm"])[matched[matched >= 0]]
    assert abs(np.median(fw) / 3.0 - 1) < 0.05
    assert abs(np.median(stars["fwhm"]) / 3.0 - 1) < 0.05


@pytest.mark.parametrize("known_level", [True, False])
def test_heavily_saturated_stars(known_level):
    """Eight stars saturated over tens of pixels among fainter ones: all listed (accepted) and
    flagged saturated, centred within 0.5 px; with the level unknown (saturation=None) their flat
    tops are recognised all the same."""
    rng = np.random.default_rng(8)
    shape, sat = (400, 400), 60000.0
    gx, gy = np.meshgrid(np.arange(60, 400, 90.0), np.arange(80, 400, 160.0))
    bx, by = gx.ravel() + rng.uniform(-3, 3, 8), gy.ravel() + rng.uniform(-3, 3, 8)
    fx, fy = rng.uniform(20, 380, 40), rng.uniform(20, 380, 40)
    keep = cKDTree(np.c_[bx, by]).query(np.c_[fx, fy])[0] > 40
    fx, fy = fx[keep], fy[keep]
    bright = np.exp(rng.uniform(np.log(3e7), np.log(3e8), 8))  # peaks 40-400x the saturation level
    p = star_params("gaussian", np.r_[bx, fx], np.r_[by, fy], np.r_[bright, rng.uniform(2e3, 4e4, len(fx))],
                    3.5, 3.5, 0.0)
    data = np.minimum(add_noise(render_stars(shape, p) + 500.0, gain=1.0, read_noise=5.0, rng=rng), sat)
    assert all((data[int(round(b)) - 6:int(round(b)) + 7, int(round(a)) - 6:int(round(a)) + 7] >= sat).sum() >= 20
               for a, b in zip(bx, by))
    stars = psfkit.find_stars(Image(data.astype(np.float32)), gain=1.0, read_noise=5.0,
                              saturation=sat if known_level else None, keep_rejected=True)
    acc = stars[stars["accepted"]]
    i = _match(acc, bx, by, 0.5)
    assert (i >= 0).all(), f"saturated stars lost: {stars[_match(stars, bx, by, 3.0)]}"
    assert ((np.asarray(acc["flags"])[i] & F.SATURATED) != 0).all()
    assert not np.isin(stars["reject_reason"][~stars["accepted"]], ["too_narrow"]).any() or \
        (_match(stars[stars["reject_reason"] == "too_narrow"], bx, by, 5.0) < 0).all()


def test_plateau_region_matches_scipy_label():
    """find's flat-top test grows the plateau from the peak (4-connected) without scipy.ndimage: the
    same region as ``ndimage.label``'s component under the peak."""
    from scipy import ndimage

    from psfkit.detect.find import _connected

    rng = np.random.default_rng(1)
    for _ in range(100):
        m = rng.random((21, 21)) > 0.45
        iy, ix = rng.integers(0, 21, 2)
        lab, _ = ndimage.label(m)
        assert np.array_equal((lab == lab[iy, ix]) & m[iy, ix], _connected(m, iy, ix))
