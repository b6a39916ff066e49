"""Mesh background and noise against a known sky: gradient, vignetting, stars, NaN, masks."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.stats import sigma_clipped_stats

from psfkit import estimate_background
from psfkit.datasets.simulate import simulate_field
from psfkit.detect.find import find_candidates


def _sky(shape=(600, 900), vignetting=0.4):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    # a linear gradient and a vignetting fall-off to 1 - vignetting in the corners
    r2 = ((xx - shape[1] / 2) ** 2 + (yy - shape[0] / 2) ** 2) / ((shape[0] / 2) ** 2 + (shape[1] / 2) ** 2)
    return (1000.0 + 0.3 * xx + 0.2 * yy) * (1.0 - vignetting * r2)


def test_background_follows_gradient_and_vignetting_under_stars():
    rng = np.random.default_rng(3)
    sky = _sky()
    stars, _ = simulate_field(sky.shape, 400, seed=3, background=0.0, read_noise=0.0, gain=1e6,
                              flux_range=(2e3, 2e5), fwhm=3.0)
    data = sky + stars + rng.normal(0.0, 10.0, sky.shape)
    bkg = estimate_background(data)
    resid = bkg.level - sky
    inner = resid[40:-40, 40:-40]  # cells' centres: interpolation is linear inside them
    assert np.median(np.abs(inner)) < 1.0  # a tenth of the noise
    assert np.percentile(np.abs(inner), 99) < 4.0
    assert bkg.noise == pytest.approx(10.0, rel=0.05)
    # a single sigma-clipped number cannot follow the sky: the mesh is ~40x better
    _, med, _ = sigma_clipped_stats(data)
    assert np.median(np.abs(sky - med)) > 30 * np.median(np.abs(inner))


def test_nan_and_masked_pixels_are_ignored_and_input_untouched():
    rng = np.random.default_rng(4)
    sky = _sky((400, 400), vignetting=0.15)
    data = sky + rng.normal(0.0, 5.0, sky.shape)
    data[100:140, :] = np.nan  # a dead band
    mask = np.zeros(data.shape, bool)
    mask[250:300, 250:300] = True
    data[250:300, 250:300] = 60000.0  # a saturated blob hidden by the mask
    before = data.copy()
    bkg = estimate_background(data, mask=mask)
    assert np.all(np.isfinite(bkg.level))
    ok = np.isfinite(data) & ~mask
    assert np.median(np.abs(bkg.level - sky)[ok]) < 1.0  # a fifth of the noise
    assert np.all(np.abs(bkg.level - sky)[260:290, 260:290] < 5.0)  # the masked blob left no trace
    assert bkg.noise == pytest.approx(5.0, rel=0.08)
    np.testing.assert_array_equal(np.isnan(before), np.isnan(data))
    np.testing.assert_array_equal(before[np.isfinite(before)], data[np.isfinite(data)])
    # the NaN band gives no candidates, and a NaN frame is a clean error
    cands = find_candidates(data, bkg, threshold=5.0)
    assert not np.any((cands["y"] > 99) & (cands["y"] < 140))


def test_candidates_are_strict_local_maxima_above_threshold():
    img, truth = simulate_field((300, 300), 60, seed=9, min_separation=12, edge=8, flux_range=(3e3, 3e4))
    bkg = estimate_background(img)
    c = find_candidates(img, bkg, threshold=5.0)
    from scipy.spatial import cKDTree

    d, _ = cKDTree(np.stack([c["x"], c["y"]], 1)).query(np.stack([truth["x"], truth["y"]], 1))
    assert np.all(d < 1.0)  # every (bright, isolated) star has a candidate within a pixel
    assert np.all(c["significance"] > 5.0)
    # a higher threshold keeps a subset: the faint stars go
    faint = np.sort(np.asarray(c["significance"]))[len(c) // 4]
    c_hi = find_candidates(img, bkg, threshold=faint)
    assert len(c_hi) < len(c) and np.all(c_hi["significance"] > faint)


def test_all_nan_frame_is_a_clean_error():
    import psfkit

    with pytest.raises(psfkit.PsfkitError):
        estimate_background(np.full((64, 64), np.nan))
