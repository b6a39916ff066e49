"""Crowded fields with the frame's own PSF (find_stars(deblend=True, psf="frame"), psfkit.detect.crowded):
stars found to the noise on the residual, few false ones, a residual at the noise, the residual file,
and the residual layer of the web page."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from _helpers import run_cli
from astropy.io import fits
from scipy.spatial import cKDTree

import psfkit
from psfkit.datasets.simulate import simulate_field
from psfkit.detect.crowded import colour_classes, subtract_stars

GAIN, READ_NOISE, FWHM = 1.5, 6.0, 3.2
#: the density of the acceptance field (5,000 stars on 1024 x 1024 px)
DENSITY = 5000 / 1024**2


def crowded_field(size: int, seed: int):
    """A Moffat (beta 3) field of FWHM 3.2 px at the acceptance field's density, positions uniform
    (about 92.5 % of the stars have no brighter star within 1 FWHM)."""
    n = int(round(DENSITY * size * size))
    return simulate_field((size, size), n, model="moffat", fwhm=FWHM, beta=3.0, gain=GAIN, read_noise=READ_NOISE,
                          seed=seed)


def score(stars, truth, radius=1.5):
    """Completeness at S/N >= 10 (a truth with an accepted star within radius) and the false rate
    (accepted stars with no truth within radius)."""
    d, _ = cKDTree(np.c_[stars["x_fit"], stars["y_fit"]]).query(np.c_[truth["x"], truth["y"]])
    bright = np.asarray(truth["snr"]) >= 10
    d2, _ = cKDTree(np.c_[truth["x"], truth["y"]]).query(np.c_[stars["x_fit"], stars["y_fit"]])
    return float(np.mean(d[bright] < radius)), float(np.mean(d2 >= radius))


@pytest.fixture(scope="module")
def crowded():
    data, truth = crowded_field(448, seed=2)
    img = psfkit.Image(data=data, gain=GAIN, read_noise=READ_NOISE)
    stars = psfkit.find_stars(img, deblend=True, psf="frame", keep_rejected=True)
    return data, truth, stars


@pytest.mark.slow
def test_crowded_field_completeness_and_false_rate(crowded):
    data, truth, every = crowded
    stars = every[every["accepted"]]
    completeness, false = score(stars, truth)
    assert completeness >= 0.92, completeness
    assert false <= 0.01, false
    # better than the analytic model's pass on the same frame
    analytic = psfkit.find_stars(psfkit.Image(data=data, gain=GAIN, read_noise=READ_NOISE), deblend=True)
    assert completeness > score(analytic, truth)[0] + 0.1
    # the stars found on the residual are real stars
    found = stars[stars["detection_pass"] == 2]
    assert len(found) > 0.1 * len(stars)
    assert score(found, truth)[1] <= 0.05
    # total fluxes: the frame's PSF has unit sum, so the median flux ratio of bright stars is 1
    d, i = cKDTree(np.c_[truth["x"], truth["y"]]).query(np.c_[stars["x_fit"], stars["y_fit"]])
    ok = (d < 0.5) & (np.asarray(truth["snr"])[i] >= 50)
    ratio = np.asarray(stars["flux_fit"])[ok] / np.asarray(truth["flux"])[i[ok]]
    assert abs(np.median(ratio) - 1) < 0.01
    assert "flux_fit_analytic" in stars.colnames and stars.meta["crowded"]["passes"] >= 1


@pytest.mark.slow
def test_the_residual_is_at_the_noise_at_bright_stars(crowded):
    """Within 1 FWHM of the bright stars the residual's scatter is within 15 % of the noise (sky, read
    noise and the stars' own photon noise)."""
    data, truth, every = crowded
    stars = every[every["accepted"]]
    res = subtract_stars(data, every, stars.meta["frame_psf"])
    light = data - res
    level = 200.0  # the simulated sky
    var = (level + np.clip(light, 0, None)) / GAIN + (READ_NOISE / GAIN) ** 2
    bright = np.asarray(truth["snr"]) >= 100
    yy, xx = np.mgrid[0:data.shape[0], 0:data.shape[1]]
    near = np.zeros(data.shape, bool)
    for x, y in zip(np.asarray(truth["x"])[bright], np.asarray(truth["y"])[bright]):
        x0, y0 = int(round(x)), int(round(y))
        sl = np.s_[max(y0 - 4, 0):y0 + 5, max(x0 - 4, 0):x0 + 5]
        near[sl] |= np.hypot(xx[sl] - x, yy[sl] - y) <= FWHM
    z = (res - level)[near] / np.sqrt(var[near])
    # the scatter, robust to the few pixels of stars too close to be resolved
    scatter = 1.4826 * np.median(np.abs(z - np.median(z)))
    assert 0.85 < scatter < 1.15, scatter
    assert abs(np.median(z)) < 0.15


def test_colour_classes_keep_close_stars_apart():
    rng = np.random.default_rng(1)
    x, y = rng.uniform(0, 100, (2, 300))
    flux = rng.uniform(1, 10, 300)
    classes = colour_classes(x, y, flux, 6.0)
    assert sorted(np.concatenate(classes).tolist()) == list(range(300))
    for c in classes:
        if len(c) > 1:
            d, _ = cKDTree(np.c_[x[c], y[c]]).query(np.c_[x[c], y[c]], k=2)
            assert d[:, 1].min() > 6.0
    assert np.argmax(flux) in classes[0]  # the brightest star's class first


def test_too_few_stars_for_a_psf_run_the_analytic_pass():
    data, truth = simulate_field((96, 96), 5, fwhm=3.0, seed=0, edge=12, min_separation=15)
    stars = psfkit.find_stars(data, gain=GAIN, read_noise=READ_NOISE, deblend=True, psf="frame")
    assert "fallback" in stars.meta["crowded"] and "frame_psf" not in stars.meta
    assert len(stars) == 5


@pytest.fixture(scope="module")
def small_crowded_fits(tmp_path_factory):
    """A 256 x 256 Moffat frame of 120 stars (GAIN and RDNOISE in the header) and its truth: enough
    isolated stars for the frame's PSF, a few neighbours within 2 FWHM."""
    path = tmp_path_factory.mktemp("crowded") / "crowded.fits"
    data, truth = simulate_field((256, 256), 120, model="moffat", fwhm=FWHM, beta=3.0, flux_range=(2e3, 1e5),
                                 min_separation=6, edge=10, gain=GAIN, read_noise=READ_NOISE, seed=6)
    hdr = fits.Header({"GAIN": GAIN, "RDNOISE": READ_NOISE})
    fits.writeto(path, data.astype(np.float32), hdr)
    return path, truth


def test_find_residual_writes_the_frame_minus_every_star(small_crowded_fits, tmp_path):
    path, truth = small_crowded_fits
    before = path.read_bytes()
    out, res_path = tmp_path / "stars.ecsv", tmp_path / "res.fits"
    r = run_cli("find", str(path), "--deblend", "-o", str(out), "--residual", str(res_path), check=True)
    assert "crowded pass with the frame's PSF" in r.stdout and f"wrote {res_path}" in r.stdout
    assert path.read_bytes() == before
    with fits.open(res_path) as hdul:
        res = hdul[0].data.astype(float)
        assert hdul[0].header["IMAGETYP"] == "residual"
        assert "frame's PSF" in hdul[0].header["STARPSF"]
    data = fits.getdata(path).astype(float)
    stars = psfkit.read_star_list(out)
    assert res.shape == data.shape
    # the residual is the frame less the stars: its scatter is the sky's, far below the frame's
    sky = np.sqrt(200.0 / GAIN + (READ_NOISE / GAIN) ** 2)
    assert 1.4826 * np.median(np.abs(res - np.median(res))) < 1.3 * sky
    assert np.std(res) < 0.25 * np.std(data)
    # what was taken out is the stars' light: their total flux
    assert np.sum(data - res) == pytest.approx(np.sum(stars["flux_fit"]), rel=0.01)


def test_find_residual_never_overwrites_the_input(small_crowded_fits, tmp_path):
    path, _ = small_crowded_fits
    before = path.read_bytes()
    r = run_cli("find", str(path), "--deblend", "--residual", str(path))
    assert r.returncode == 2 and "psfkit: error:" in r.stderr
    assert path.read_bytes() == before
    r = run_cli("find", str(path), "--residual", str(tmp_path / "res.png"))
    assert r.returncode == 2 and ".fits" in r.stderr


def test_residual_with_the_analytic_model(small_crowded_fits, tmp_path):
    """--residual without the frame's PSF (--model gaussian): the stars drawn with their fitted model."""
    path, _ = small_crowded_fits
    res_path = tmp_path / "res.fits"
    run_cli("find", str(path), "--model", "gaussian", "--residual", str(res_path), check=True)
    res = fits.getdata(res_path).astype(float)
    data = fits.getdata(path).astype(float)
    assert np.std(res) < 0.5 * np.std(data)
    assert "gaussian" in fits.getheader(res_path)["STARPSF"]


def test_web_residual_layer(small_crowded_fits):
    """The page's residual layer: no residual before a detection with deblend, then its tiles."""
    from psfkit.web import create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    path, _ = small_crowded_fits
    q = "level=0&tx=0&ty=0&black=150&white=400&layer=residual"
    with TestClient(create_app(path.parent), base_url="http://127.0.0.1:8765") as c:
        assert c.get(f"/api/tile?path={path.name}&{q}").status_code == 400
        r = c.post("/api/detect", json={"path": path.name, "deblend": True})
        assert r.status_code == 200 and r.json()["residual"] is True
        tile = c.get(f"/api/tile?path={path.name}&{q}")
        frame = c.get(f"/api/tile?path={path.name}&{q.replace('residual', 'frame')}")
        assert tile.status_code == 200 and tile.headers["content-type"] == "image/png"
        assert tile.content != frame.content
        # a detection without deblend forgets it
        assert c.post("/api/detect", json={"path": path.name}).json()["residual"] is False
        assert c.get(f"/api/tile?path={path.name}&{q}").status_code == 400
