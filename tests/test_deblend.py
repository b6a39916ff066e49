"""The crowded-field pass (find_stars(deblend=True), psfkit.detect.deblend): neighbours subtracted,
companions hidden in a brighter star's light found, and no companion made of a misfit."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

import psfkit
from psfkit.datasets.simulate import add_noise, render_stars, simulate_field, star_params

FWHM = 3.5


def _matched(table, x, y, radius=1.5):
    """For each truth, whether an accepted star lies within radius, and the index of the nearest."""
    d, j = cKDTree(np.c_[table["x_fit"], table["y_fit"]]).query(np.c_[x, y])
    return d < radius, j


@pytest.fixture(scope="module")
def pairs():
    """Bright stars on a grid, each with a fainter companion 1.2-2.5 FWHM away (flux ratio 0.1-0.6)."""
    rng = np.random.default_rng(4)
    px, py = np.meshgrid(np.arange(30, 300, 40.0), np.arange(30, 300, 40.0))
    px = px.ravel() + rng.uniform(-3, 3, px.size)
    py = py.ravel() + rng.uniform(-3, 3, py.size)
    n = px.size
    fp = 10 ** rng.uniform(4, 5.3, n)
    d = rng.uniform(1.2, 2.5, n) * FWHM
    th = rng.uniform(0, 2 * np.pi, n)
    x = np.r_[px, px + d * np.cos(th)]
    y = np.r_[py, py + d * np.sin(th)]
    flux = np.r_[fp, fp * rng.uniform(0.1, 0.6, n)]
    p = star_params("gaussian", x, y, flux, FWHM, FWHM * 0.9, 20.0)
    img = add_noise(render_stars((320, 320), p) + 200.0, gain=1.5, read_noise=6.0, rng=rng)
    return img, x, y, flux, n


def test_hidden_companions_are_found_and_their_stars_measured_better(pairs):
    img, x, y, flux, n = pairs
    plain = psfkit.find_stars(img, gain=1.5, read_noise=6.0, angle=True)
    deep = psfkit.find_stars(img, gain=1.5, read_noise=6.0, angle=True, deblend=True)
    found_plain, _ = _matched(plain, x, y)
    found, j = _matched(deep, x, y)
    assert found[:n].all()  # every bright star
    assert found[n:].mean() >= 0.9 and found[n:].mean() >= found_plain[n:].mean() + 0.1
    # nothing that is not a star: every accepted star is one of the truths
    d, _ = cKDTree(np.c_[x, y]).query(np.c_[deep["x_fit"], deep["y_fit"]])
    assert np.all(d < 1.5)
    assert deep.meta["summary"]["companions_found"] == int(np.sum(deep["detection_pass"] == 2)) > 0
    # the bright stars' fluxes no longer carry their companions' light
    _, jp = _matched(plain, x, y)
    err_plain = np.median(np.abs(np.asarray(plain["flux_fit"])[jp[:n]] / flux[:n] - 1))
    err = np.median(np.abs(np.asarray(deep["flux_fit"])[j[:n]] / flux[:n] - 1))
    assert err < err_plain
    # companions' fluxes: the found ones within a few reported errors of the truth (median pull)
    comp = found[n:] & (np.asarray(deep["detection_pass"])[j[n:]] == 2)
    pulls = (np.asarray(deep["flux_fit"])[j[n:]][comp] - flux[n:][comp]) / np.asarray(deep["flux_err"])[j[n:]][comp]
    assert abs(np.median(pulls)) < 3


def test_isolated_stars_get_no_companions():
    img, truth = simulate_field((300, 300), 40, seed=5, fwhm=FWHM, roundness=1.0, min_separation=25, edge=12,
                                gain=1.5, read_noise=6.0, flux_range=(2e3, 3e5))
    deep = psfkit.find_stars(img, gain=1.5, read_noise=6.0, deblend=True, keep_rejected=True)
    assert int(np.sum(deep["accepted"] & (deep["detection_pass"] == 2))) == 0
    plain = psfkit.find_stars(img, gain=1.5, read_noise=6.0)
    assert len(plain) == int(np.sum(deep["accepted"]))


def test_a_profile_the_model_misses_makes_no_companion():
    """Bright Moffat (beta 2.5) stars fitted with the Gaussian leave ring residuals: not companions."""
    rng = np.random.default_rng(8)
    x, y = np.meshgrid(np.arange(25, 300, 50.0), np.arange(25, 300, 50.0))
    x = x.ravel() + rng.uniform(-2, 2, x.size)
    y = y.ravel() + rng.uniform(-2, 2, y.size)
    p = star_params("moffat", x, y, 10 ** rng.uniform(4.5, 5.5, x.size), FWHM, FWHM * 0.85, 35.0, beta=2.5)
    img = add_noise(render_stars((300, 300), p, model="moffat") + 200.0, gain=1.5, read_noise=6.0, rng=rng)
    deep = psfkit.find_stars(img, gain=1.5, read_noise=6.0, deblend=True, keep_rejected=True)
    assert int(np.sum(deep["accepted"] & (deep["detection_pass"] == 2))) == 0
    assert int(np.sum(deep["accepted"])) == x.size


def test_neighbour_light_takes_a_neighbour_out_of_a_fit():
    """A faint star 2 FWHM from one 30 times brighter: with the bright star's model subtracted
    (fit_stars(neighbour_light=...)) its flux is right, and its error counts the neighbour's noise."""
    rng = np.random.default_rng(2)
    truth = star_params("gaussian", [40.0, 40.0 + 2 * FWHM], [40.0, 40.3], [3e5, 1e4], FWHM, FWHM, 0.0)
    clean = render_stars((80, 80), truth)
    bright = render_stars((80, 80), truth[:1])
    pulls, errs, errs_alone = [], [], []
    for _ in range(40):
        img = add_noise(clean + 100.0, gain=1.0, read_noise=5.0, rng=rng)

        def light(origin, box):
            cx, cy = origin[:, 0] + box // 2, origin[:, 1] + box // 2
            from psfkit.psf.stamps import cut_stamps

            return np.nan_to_num(cut_stamps(bright, cx.astype(float), cy.astype(float), box)[0])

        t = psfkit.fit_stars(img, [47.0], [40.3], box=15, gain=1.0, read_noise=5.0, neighbour_light=light,
                             search_radius=None)
        pulls.append((t["flux_fit"][0] - 1e4) / t["flux_err"][0])
        errs.append(t["flux_err"][0])
        alone = psfkit.fit_stars(add_noise(render_stars((80, 80), truth[1:]) + 100.0, gain=1.0, read_noise=5.0,
                                           rng=rng), [47.0], [40.3], box=15, gain=1.0, read_noise=5.0,
                                 search_radius=None)
        errs_alone.append(alone["flux_err"][0])
    assert abs(np.mean(pulls)) < 0.5
    assert 0.7 < np.std(pulls) < 1.4
    assert np.median(errs) > 1.03 * np.median(errs_alone)  # the neighbour's photon noise is in the error


def test_real_crowded_frame(shared_data):
    img = psfkit.load_image(shared_data / "spitzer_glimpse_irac2_crowded.fits")
    plain = psfkit.find_stars(img)
    every = psfkit.find_stars(img, deblend=True, keep_rejected=True)
    deep = every[every["accepted"]]
    extra = int(np.sum(deep["detection_pass"] == 2))
    assert 0 < extra < 0.05 * len(plain)
    comp = deep[deep["detection_pass"] == 2]
    assert np.all(comp["snr"] >= 3) and np.all(np.isfinite(comp["flux_err"]))
    # each companion sits beside a star of the first pass: found 0.8-3 FWHM away, then fitted (a fit
    # may move by up to max_center_shift, 1.5 FWHM); that star may have failed the tests after its refit
    first = every[every["detection_pass"] == 1]
    d, _ = cKDTree(np.c_[first["x_fit"], first["y_fit"]]).query(np.c_[comp["x_fit"], comp["y_fit"]])
    fwhm = deep.meta["frame_fwhm"]
    assert np.all(d < 4.5 * fwhm)
    assert len(deep) >= len(plain)


def test_two_stars_fitted_as_one_are_split():
    """Pairs 1.5 FWHM apart, flux ratios 0.3 and 0.25: the first pass fits each as one star (centre
    between them, reduced chi-square in the hundreds); the pass splits them and measures both."""
    rng = np.random.default_rng(9)
    x = np.array([40.0, 45.3, 100.0, 104.5, 160.0])
    y = np.array([40.0, 41.0, 60.0, 57.3, 45.0])
    flux = np.array([1e5, 3e4, 8e4, 2e4, 5e4])
    p = star_params("gaussian", x, y, flux, FWHM, FWHM, 0.0)
    img = add_noise(render_stars((100, 200), p) + 100.0, gain=1.5, read_noise=6.0, rng=rng)
    plain = psfkit.find_stars(img, gain=1.5, read_noise=6.0)
    # the first pass does not see both stars of a pair: it fits them as one (reduced chi-square in
    # the hundreds) or rejects that blend as extended (wider than the frame's stars)
    assert len(plain) <= 4 and not _matched(plain, x, y, radius=0.3)[0].all()
    deep = psfkit.find_stars(img, gain=1.5, read_noise=6.0, deblend=True)
    found, j = _matched(deep, x, y, radius=0.3)
    assert found.all() and len(deep) == 5
    pulls = (np.asarray(deep["flux_fit"])[j] - flux) / np.asarray(deep["flux_err"])[j]
    assert np.all(np.abs(pulls) < 4), pulls
    assert np.all(deep["reduced_chi2"] < 1.5)


def test_without_a_gain_the_companion_is_still_found():
    """Unweighted fits (no gain): a bright star's reduced chi-square stays above 2 however well it fits,
    so the companion is judged by how much it lowers it."""
    rng = np.random.default_rng(3)
    p = star_params("gaussian", np.array([30.0, 35.0, 55.0]), np.array([30.0, 32.0, 50.0]),
                    np.array([5e4, 1.2e4, 3e4]), FWHM, FWHM * 0.9, 20.0)
    img = add_noise(render_stars((80, 80), p) + 200.0, gain=1.5, read_noise=6.0, rng=rng)
    plain = psfkit.find_stars(img)
    deep = psfkit.find_stars(img, deblend=True)
    assert plain.meta["weighted"] is False
    assert len(plain) == 2 and len(deep) == 3
    found, j = _matched(deep, [30.0, 35.0, 55.0], [30.0, 32.0, 50.0], radius=0.5)
    assert found.all()
    assert deep["flux_fit"][j[0]] == pytest.approx(5e4, rel=0.03)


def test_a_fit_off_the_frame_is_left_alone():
    """edge=None keeps a star whose fitted centre is just off the frame; the pass leaves it as it is."""
    rng = np.random.default_rng(5)
    p = star_params("gaussian", np.array([-1.2, 6.0, 40.0]), np.array([30.0, 33.0, 40.0]),
                    np.array([4e4, 2e4, 3e4]), FWHM, FWHM, 0.0)
    img = add_noise(render_stars((80, 80), p) + 200.0, gain=1.5, read_noise=6.0, rng=rng)
    plain = psfkit.find_stars(img, gain=1.5, read_noise=6.0, edge=None, fwhm=FWHM)
    deep = psfkit.find_stars(img, gain=1.5, read_noise=6.0, edge=None, fwhm=FWHM, deblend=True)
    assert len(deep) == len(plain)
