"""Aperture photometry: exact overlap against photutils, sky and CCD errors, pulls against truth, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _helpers import run_cli
from astropy.io import fits
from photutils.aperture import CircularAperture, EllipticalAperture
from photutils.aperture import aperture_photometry as pu_aperture_photometry

import psfkit
from psfkit.aperture.growth import curve_of_growth, optimal_radius
from psfkit.aperture.overlap import circular_overlap, elliptical_overlap
from psfkit.aperture.photometry import aperture_photometry
from psfkit.aperture.stars import star_photometry
from psfkit.aperture.sums import aperture_sums
from psfkit.datasets.simulate import add_noise, render_stars, star_params
from psfkit.errors import PsfkitError

GAIN, RN, SKY = 2.0, 6.0, 300.0


# ---------------------------------------------------------------- exact overlap
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_circular_sums_match_photutils_exact(backend):
    rng = np.random.default_rng(3)
    data = rng.normal(100.0, 10.0, (200, 220))
    x = rng.uniform(15, 205, 300)
    y = rng.uniform(15, 185, 300)
    for r in (0.3, 0.5, 1.0, 2.71, 4.0, 9.3):
        s, area, full = aperture_sums(data, x, y, r, backend=backend)
        ref = pu_aperture_photometry(data, CircularAperture(np.c_[x, y], r), method="exact")["aperture_sum"]
        np.testing.assert_allclose(s, np.asarray(ref), rtol=1e-6)
        np.testing.assert_allclose(area, full, rtol=1e-9)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_elliptical_sums_match_photutils_exact(backend):
    rng = np.random.default_rng(4)
    data = rng.normal(100.0, 10.0, (200, 200))
    x = rng.uniform(15, 185, 200)
    y = rng.uniform(15, 185, 200)
    # a tiny ellipse inside one pixel, a needle, a circle, axes along the grid: the compiled loop's special cases
    for a, b, theta in ((3.0, 2.0, 0.3), (5.5, 1.2, -1.0), (0.7, 0.4, 2.0), (4.0, 4.0, 0.0), (8.0, 3.0, 1.5708),
                        (0.3, 0.2, 0.1), (20.0, 0.5, 0.77), (6.0, 4.0, np.radians(30.0))):
        s, area, full = aperture_sums(data, x, y, a=a, b=b, theta=theta, backend=backend)
        ref = pu_aperture_photometry(data, EllipticalAperture(np.c_[x, y], a, b, theta=theta), method="exact")
        np.testing.assert_allclose(s, np.asarray(ref["aperture_sum"]), rtol=1e-6)
        np.testing.assert_allclose(area, full, rtol=1e-9)


def test_overlap_weights_are_areas():
    # a circle's weights sum to pi r^2, an ellipse's to pi a b, and a circle equals an ellipse with a = b
    rng = np.random.default_rng(5)
    x, y = 10 + rng.uniform(-0.5, 0.5, 50), 10 + rng.uniform(-0.5, 0.5, 50)
    r = rng.uniform(0.2, 6.0, 50)
    wc = circular_overlap(x, y, r, 8)
    we = elliptical_overlap(x, y, r, r, rng.uniform(-3, 3, 50), 8)
    np.testing.assert_allclose(wc.sum(axis=(1, 2)), np.pi * r**2, rtol=1e-12)
    np.testing.assert_allclose(wc, we, atol=1e-12)
    assert wc.min() >= 0 and wc.max() <= 1


def test_numba_and_numpy_paths_agree_with_nans_and_edges():
    rng = np.random.default_rng(6)
    data = rng.normal(50.0, 5.0, (120, 100))
    data[rng.integers(0, 120, 200), rng.integers(0, 100, 200)] = np.nan
    x = rng.uniform(-0.5, 99.5, 400)  # many apertures cut by the edges
    y = rng.uniform(-0.5, 119.5, 400)
    for kw in (dict(r=3.3), dict(a=5.0, b=2.5, theta=0.7)):
        s1, a1, f1 = aperture_sums(data, x, y, backend="numpy", **kw)
        s2, a2, f2 = aperture_sums(data, x, y, backend="numba", **kw)
        np.testing.assert_allclose(s1, s2, rtol=1e-10, atol=1e-9)
        np.testing.assert_allclose(a1, a2, rtol=1e-10, atol=1e-12)
        assert np.all(a1 <= f1 + 1e-9) and np.any(a1 < f1 - 0.5)


def test_bad_radii_are_one_line_errors():
    with pytest.raises(PsfkitError):
        aperture_sums(np.zeros((10, 10)), [5], [5], -1.0)
    with pytest.raises(PsfkitError):
        aperture_photometry(np.zeros((10, 10)), [50], [5], fwhm=2.0)
    with pytest.raises(PsfkitError):
        aperture_photometry(np.ones((40, 40)), [20], [20], fwhm=2.0, radius=5.0, annulus=(4.0, 8.0))


# ---------------------------------------------------------------- sky and errors
def test_sky_and_ccd_error_on_pure_noise():
    # no star: the flux scatters around 0 with the CCD-equation error (sky term only)
    rng = np.random.default_rng(7)
    img = add_noise(np.full((400, 400), SKY), gain=GAIN, read_noise=RN, rng=rng)
    g = np.arange(30, 380, 25.0)
    xx, yy = np.meshgrid(g, g)
    t = aperture_photometry(img, xx.ravel(), yy.ravel(), fwhm=3.0, gain=GAIN)
    np.testing.assert_allclose(np.median(t["sky"]), SKY, rtol=2e-3)
    pull = t["flux_aper"] / t["flux_aper_err"]
    assert abs(np.mean(pull)) < 0.25 and 0.85 < np.std(pull) < 1.15
    expected_sigma = np.sqrt(SKY / GAIN + (RN / GAIN) ** 2)
    np.testing.assert_allclose(np.median(t["sky_sigma"]), expected_sigma, rtol=0.05)


def _grid_frame(model, seed, n_side=7, spacing=40, fwhm=4.0):
    rng = np.random.default_rng(seed)
    g = np.arange(n_side) * spacing + spacing
    xx, yy = np.meshgrid(g, g)
    x = xx.ravel() + rng.uniform(-0.5, 0.5, xx.size)
    y = yy.ravel() + rng.uniform(-0.5, 0.5, xx.size)
    flux = 10 ** rng.uniform(3.3, 5.5, x.size)  # SNR about 15 to 600
    p = star_params(model, x, y, flux, fwhm * 1.1, fwhm / 1.1, 30.0, 3.0)
    shape = (spacing * (n_side + 1),) * 2
    # Moffat wings rendered far out, so the truth is the total flux
    img = SKY + render_stars(shape, p, model=model, radius=60 if model == "moffat" else None)
    return add_noise(img, gain=GAIN, read_noise=RN, rng=rng), x, y, flux


@pytest.mark.slow
@pytest.mark.parametrize("model", ["gaussian", "moffat"])
def test_psf_and_corrected_aperture_flux_pulls(model):
    psf_pull, aper_pull, ratio = [], [], []
    for seed in range(2):
        img, x, y, flux = _grid_frame(model, seed + 10)
        stars = psfkit.fit_stars(img, x, y, model=model, gain=GAIN, read_noise=RN)
        out = star_photometry(img, stars, gain=GAIN)
        assert out.meta["aperture_correction"]["n_stars"] >= 10
        psf_pull += list((out["flux_fit"] - flux) / out["flux_err"])
        aper_pull += list((out["flux_aper_total"] - flux) / out["flux_aper_total_err"])
        ratio += list(out["flux_ratio"][flux > 3e4])
    psf_pull, aper_pull = np.array(psf_pull), np.array(aper_pull)
    for pull in (psf_pull, aper_pull):
        assert 0.85 < np.std(pull) < 1.15
        assert abs(np.mean(pull)) < 0.35
    # bright stars: the two fluxes agree to a per cent or so
    assert abs(np.median(ratio) - 1.0) < 0.015


def _psf_image():
    """A non-analytic PSF: a slightly elliptical core with a 3 per cent halo (peak 1, not unit sum)."""
    yy, xx = np.mgrid[0:41, 0:41] - 20.0
    r2 = xx**2 + (yy * 1.15) ** 2
    return np.exp(-r2 / (2 * 1.6**2)) + 0.03 * np.exp(-r2 / (2 * 4.0**2))


def _model_frame(mdl, params, x, y, seed, size, half, **kw):
    """Sky + each star rendered from the model itself (``params`` at unit position) + Poisson/read noise."""
    img = np.full((size, size), SKY)
    for k in range(x.size):
        cx, cy = int(round(x[k])), int(round(y[k]))
        q = params[k:k + 1].copy()
        q[0, 2], q[0, 3] = x[k] - (cx - half), y[k] - (cy - half)
        vals = mdl.evaluate(q, (2 * half + 1, 2 * half + 1), **kw)[0].reshape(2 * half + 1, 2 * half + 1)
        img[cy - half:cy + half + 1, cx - half:cx + half + 1] += vals
    return add_noise(img, gain=GAIN, read_noise=RN, rng=np.random.default_rng(seed))


@pytest.mark.slow
@pytest.mark.parametrize("model", ["lorentzian", "image"])
def test_lorentzian_and_image_psf_flux_pulls(model):
    # the same acceptance for the two other models, each the true one. The Lorentzian's flux is its light
    # within 2.5 FWHM (its total diverges): the corrected aperture flux must estimate that same quantity.
    # Its wings reach far, so its stars stand 80 px apart (neighbours' wings in the sky annulus bias the
    # aperture flux of faint stars low: crowded Lorentzian fields are beyond this test).
    from psfkit.psf.models import ImagePSF, LorentzianPSF

    psf_pull, aper_pull = [], []
    n_side, spacing, seeds = (5, 80, 4) if model == "lorentzian" else (7, 40, 2)
    for seed in range(seeds):
        rng = np.random.default_rng(seed + 20)
        g = np.arange(n_side) * spacing + spacing
        xx, yy = np.meshgrid(g, g)
        x = xx.ravel() + rng.uniform(-0.5, 0.5, xx.size)
        y = yy.ravel() + rng.uniform(-0.5, 0.5, xx.size)
        flux = 10 ** rng.uniform(3.3, 5.5, x.size)  # SNR about 15 to 600
        n = x.size
        if model == "lorentzian":
            mdl = LorentzianPSF(angle=True)
            p = np.stack([np.zeros(n), np.ones(n), x, y, np.full(n, 2.2), np.full(n, 1.8), np.full(n, 0.5),
                          np.ones(n)], axis=1)
            p[:, 1] = flux / mdl.flux_and_gradient(p)[0]  # amplitude for the wanted flux, by its definition
            # rendered out to 50 px: a neighbour's light (and the step where it is cut off) stays 30 px away,
            # outside the fitting box and the sky annulus (4-6 FWHM = 16-24 px)
            img = _model_frame(mdl, p, x, y, seed, spacing * (n_side + 1), 50, k=6)
            fit_model, phot_model = "lorentzian", None
        else:
            mdl = ImagePSF(_psf_image())
            p = np.stack([np.zeros(n), flux, x, y], axis=1)
            img = _model_frame(mdl, p, x, y, seed, spacing * (n_side + 1), 20)
            fit_model = phot_model = mdl
        stars = psfkit.fit_stars(img, x, y, model=fit_model, gain=GAIN, read_noise=RN)
        out = star_photometry(img, stars, gain=GAIN, model=phot_model)
        corr = out.meta["aperture_correction"]
        assert corr["n_stars"] >= 10 and corr["model"] == ("lorentzian" if model == "lorentzian" else "image")
        psf_pull += list((out["flux_fit"] - flux) / out["flux_err"])
        aper_pull += list((out["flux_aper_total"] - flux) / out["flux_aper_total_err"])
    for pull in (np.array(psf_pull), np.array(aper_pull)):
        assert 0.85 < np.std(pull) < 1.15
        assert abs(np.mean(pull)) < 0.35


def test_curve_of_growth_and_optimal_radius():
    img, x, y, flux = _grid_frame("gaussian", 3)
    radii = np.array([1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0])
    g = curve_of_growth(img, x, y, radii, fwhm=4.0, gain=GAIN)
    bright = flux > 1e5
    # the curve rises to the total flux of a Gaussian (all light within 3 FWHM)
    np.testing.assert_allclose(np.median(g.flux[bright, -1] / flux[bright]), 1.0, atol=0.01)
    assert np.all(np.median(np.diff(g.flux[bright], axis=1), axis=0)[:3] > 0)
    best = optimal_radius(g)
    # faint stars are sky-limited: best SNR near 0.7 FWHM (2.8 px); bright ones use bigger apertures
    faint = flux < 4000
    assert 1.5 <= np.median(best[faint]) <= 4.0
    assert np.median(best[bright]) >= np.median(best[faint])


def test_elliptical_apertures_from_fitted_shape():
    img, x, y, flux = _grid_frame("gaussian", 4)
    stars = psfkit.fit_stars(img, x, y, gain=GAIN, read_noise=RN, angle=True)
    circ = star_photometry(img, stars, gain=GAIN)
    ell = star_photometry(img, stars, gain=GAIN, elliptical=True)
    assert ell.meta["phot_aperture"].startswith("elliptical")
    np.testing.assert_allclose(ell["aperture_area"], circ["aperture_area"], rtol=1e-9)  # same area
    # an aperture of the star's own shape at the same area holds more light (before correction)
    bright = flux > 3e4
    assert np.median(ell["flux_aper"][bright] / circ["flux_aper"][bright]) > 1.0
    pull = (ell["flux_aper_total"] - flux) / ell["flux_aper_total_err"]
    assert abs(np.mean(pull)) < 0.5 and np.std(pull) < 1.3


# ---------------------------------------------------------------- real frames and the CLI
def test_real_frame_every_star_of_find(sample_path):
    img = psfkit.load_image(sample_path)
    ratios = {}
    for model in ("gaussian", "moffat"):
        stars = psfkit.find_stars(img, model=model)
        out = star_photometry(img, stars)
        assert len(out) == len(stars) and "flux_ratio" in out.colnames
        assert np.isfinite(out.meta["aperture_correction"]["correction"])
        ok = (out["snr_aper"] > 50) & (out["phot_flags"] == 0) & (out["flags"] == 0)
        assert ok.sum() >= 3
        ratios[model] = float(np.median(out["flux_ratio"][ok]))
    # real stars have wings a Gaussian lacks: its flux to infinity falls short of the corrected
    # aperture flux (0.84 on the sample), a Moffat's holds them (0.95; docs/flux.md)
    assert abs(ratios["moffat"] - 1.0) < 0.10
    assert ratios["gaussian"] < ratios["moffat"] and ratios["gaussian"] < 1.0


def test_phot_cli_positions_and_star_list(tmp_path, shared_data):
    frame = shared_data / "stellarphot_feder_cutout_fwhm.fits"
    out = run_cli("phot", str(frame), "--at", "49,49", "--json", check=True)
    rows = json.loads(out.stdout)
    assert len(rows) == 1 and abs(rows[0]["x_fit"] - 49.3) < 1 and rows[0]["flux_aper"] > 0
    assert 0.7 < rows[0]["flux_ratio"] < 1.3
    # a saved star list read back
    img = psfkit.load_image(frame)
    t = psfkit.fit_stars(img, [49], [49])
    psfkit.write_star_list(t, tmp_path / "stars.ecsv")
    out2 = run_cli("phot", str(frame), "--stars", str(tmp_path / "stars.ecsv"), "--radius", "6", "--annulus", "25,35",
                   "-o", str(tmp_path / "phot.ecsv"), check=True)
    assert "aperture r = 6.00 px" in out2.stdout
    back = psfkit.read_star_list(tmp_path / "phot.ecsv")
    assert "flux_aper" in back.colnames and back["aperture_radius"][0] == pytest.approx(6.0)
    # a PSF image as the model: its light beyond the largest aperture comes from that image
    yy, xx = np.mgrid[0:41, 0:41] - 20.0
    fits.writeto(tmp_path / "psf.fits", np.exp(-(xx**2 + yy**2) / (2 * 2.6**2)))
    out3 = run_cli("phot", str(frame), "--at", "49,49", "--model", str(tmp_path / "psf.fits"), check=True)
    assert "fitted image model" in out3.stdout and "PSF/aper" in out3.stdout
    bad = run_cli("phot", str(frame), "--at", "49,49", "--annulus", "3")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
