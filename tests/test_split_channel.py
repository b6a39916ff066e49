"""A file that is already one colour plane of a Bayer sensor (CLRCHNL, CHNLXSTP, CHNLYSTP beside the
sensor's BAYERPAT) is measured as it is, at the plane's scale, and ``psfkit info`` says so."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.io import fits

import psfkit
from psfkit.cli import main
from psfkit.datasets.simulate import simulate_field
from psfkit.io.image import describe_image, load_image

FOCALLEN, XPIXSZ = 400.0, 3.76  # the sensor's pitch: 1.939 "/px; the red plane's pixels are 2 apart
SENSOR_SCALE = 206.265 * XPIXSZ / FOCALLEN
FWHM_PLANE = 3.0  # px of the plane = 6 sensor px


@pytest.fixture(scope="module")
def red_plane(tmp_path_factory):
    img, truth = simulate_field((256, 300), 40, seed=4, fwhm=FWHM_PLANE, roundness=1.0, flux_range=(5e3, 1e5),
                                min_separation=15, edge=10, gain=1.5, read_noise=6.0)
    header = fits.Header({"BAYERPAT": "RGGB", "CLRCHNL": "R", "CHNLXSTP": 2, "CHNLYSTP": 2, "FOCALLEN": FOCALLEN,
                          "XPIXSZ": XPIXSZ, "YPIXSZ": XPIXSZ, "GAIN": 1.5, "RDNOISE": 6.0})
    path = tmp_path_factory.mktemp("split") / "red.fits"
    fits.writeto(path, np.round(img).astype(np.uint16), header)
    return path, truth


def test_split_channel_file_is_measured_as_it_is_at_the_planes_scale(red_plane):
    path, truth = red_plane
    img = load_image(path)
    assert img.shape == (256, 300) and img.pixel_map is None  # not de-Bayered again
    assert img.meta["layout"] == "grey" and img.meta["channel"] == "R"
    assert img.pixel_scale == pytest.approx(2 * SENSOR_SCALE, rel=1e-5)
    stars = psfkit.find_stars(img)
    assert len(stars) >= 38
    true_arcsec = FWHM_PLANE * 2 * SENSOR_SCALE
    assert np.median(stars["fwhm_arcsec"]) == pytest.approx(true_arcsec, rel=0.03)
    # the same file as a red plane asked by name is the same image; another colour is an error
    assert load_image(path, channel="R").shape == (256, 300)
    with pytest.raises(psfkit.PsfkitError, match="already one colour plane"):
        load_image(path, channel="G")


def test_info_says_which_rule_applied(red_plane, capsys):
    path, _ = red_plane
    info = describe_image(path)  # a path is accepted
    assert "already one colour plane" in info["measured plane"] and "CLRCHNL='R'" in info["measured plane"]
    assert "BAYERPAT (RGGB)" in info["measured plane"]
    assert "x 2 for a plane of every 2x2 sensor pixels" in info["scale rule"]
    try:
        main(["info", str(path), "--json"])
    except SystemExit as exc:
        assert not exc.code
    printed = json.loads(capsys.readouterr().out)
    assert printed["image scale (arcsec/px)"] == pytest.approx(2 * SENSOR_SCALE, rel=1e-5)
    assert "already one colour plane" in printed["measured plane"]


def test_a_wcs_scale_is_the_planes_own(tmp_path):
    # a WCS describes the stored pixels: no step applied to it
    header = fits.Header({"BAYERPAT": "RGGB", "CLRCHNL": "G", "CHNLXSTP": 2, "CHNLYSTP": 2, "CTYPE1": "RA---TAN",
                          "CTYPE2": "DEC--TAN", "CDELT1": -1e-3, "CDELT2": 1e-3, "CRPIX1": 10, "CRPIX2": 10,
                          "CRVAL1": 10.0, "CRVAL2": 20.0})
    path = tmp_path / "g.fits"
    fits.writeto(path, np.random.default_rng(1).normal(100, 5, (40, 40)).astype(np.float32), header)
    img = load_image(path)
    assert img.pixel_scale == pytest.approx(3.6, rel=1e-6) and img.meta["channel"] == "G"
