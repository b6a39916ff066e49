"""``psfkit fit IMAGE --at X,Y [--box N] [--model ...] [--json]`` run as a real process.

A simulated star with known truth is written to a FITS file (0-based position
(40.3, 30.7): the CLI speaks the API's 0-based coordinates), fitted through the
command line, and read back from the text block and from the JSON.  Bad input
must give exactly one line ``psfkit: error: ...`` on stderr, exit code 2 and
no traceback.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from _helpers import CliResult, run_cli
from astropy.io import fits

from psfkit.datasets.simulate import add_noise, render_stars, star_params
from psfkit.psf.models import FWHM_PER_SIGMA, GaussianPSF

TRUE_X, TRUE_Y, TRUE_FLUX, TRUE_FWHM = 40.3, 30.7, 60000.0, 3.2

JSON_KEYS = {
    "x_fit", "y_fit", "x_err", "y_err", "fwhm_x", "fwhm_y", "fwhm_x_err", "fwhm_y_err", "roundness", "roundness_err",
    "angle", "angle_err", "background", "background_err", "amplitude", "amplitude_err", "flux_fit", "flux_err",
    "mag", "mag_err", "rmse", "reduced_chi2", "flags", "flag_names", "model",
}


def run(*args: str) -> CliResult:
    return run_cli(*args)


@pytest.fixture(scope="module")
def star_file(tmp_path_factory):
    rng = np.random.default_rng(7)
    p = star_params("gaussian", TRUE_X, TRUE_Y, TRUE_FLUX, TRUE_FWHM * 1.1, TRUE_FWHM / 1.1, 25.0)
    expected = 300.0 + render_stars((64, 80), p, model="gaussian")
    img = add_noise(expected, gain=2.0, read_noise=6.0, rng=rng)
    header = fits.Header()
    header["GAIN"] = 2.0
    header["RDNOISE"] = 6.0
    header["FOCALLEN"] = 1000.0
    header["XPIXSZ"] = 4.8
    path = tmp_path_factory.mktemp("cli") / "star.fits"
    fits.writeto(path, img.astype(np.float32), header)
    return path


@pytest.fixture(scope="module")
def psf_file(tmp_path_factory):
    s = TRUE_FWHM / FWHM_PER_SIGMA
    arr = GaussianPSF().evaluate(np.array([[0.0, 1.0, 12.0, 12.0, 1.1 * s, s / 1.1, np.radians(25.0)]]), (25, 25))[0]
    arr = arr.reshape(25, 25)
    path = tmp_path_factory.mktemp("psf") / "psf.fits"
    fits.writeto(path, arr / arr.max())  # unit peak, on purpose
    return path


def test_fit_text_block(star_file):
    res = run("fit", star_file, "--at", "42,29")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert str(star_file) in out.splitlines()[0]
    for label in ("B =", "A =", "x0 =", "y0 =", "FWHMX =", "FWHMY =", "r =", "Angle =", "RMSE =", "reduced chi2",
                  "Flux =", "Magnitude =", "Flags = none", "Image scale = 0.9901"):
        assert label in out, label
    # values in the text block are the fit's: x0 within 0.05 px of the truth
    x0 = float(out.split("x0 = ")[1].split()[0])
    y0 = float(out.split("y0 = ")[1].split()[0])
    assert abs(x0 - TRUE_X) < 0.05 and abs(y0 - TRUE_Y) < 0.05
    assert res.stderr == ""


@pytest.mark.parametrize("model", ["gaussian", "moffat"])
def test_fit_json_keys_and_values(star_file, model):
    res = run("fit", star_file, "--at", "42,29", "--box", "17", "--model", model, "--json")
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    assert JSON_KEYS <= set(d), JSON_KEYS - set(d)
    assert d["model"] == model
    assert d["n_pixels_fit"] == 17 * 17
    assert abs(d["x_fit"] - TRUE_X) < max(4 * d["x_err"], 0.02)
    assert abs(d["y_fit"] - TRUE_Y) < max(4 * d["y_err"], 0.02)
    if model == "gaussian":
        assert d["flags"] == 0 and d["flag_names"] == []
    else:  # the star is a Gaussian: the Moffat's beta runs to its upper bound, and says so
        assert d["flag_names"] in ([], ["at_bound"])
        assert d["flag_names"] == [] or d["beta"] == pytest.approx(20.0)
    assert d["fwhm_x"] >= d["fwhm_y"] and d["roundness"] == pytest.approx(d["fwhm_y"] / d["fwhm_x"])
    assert d["fwhm_x_arcsec"] == pytest.approx(d["fwhm_x"] * 206.264806 * 4.8 / 1000.0, rel=1e-6)
    assert d["mag"] == pytest.approx(-2.5 * np.log10(d["flux_fit"]))
    assert d["mag_err"] == pytest.approx(1.0857 * d["flux_err"] / d["flux_fit"], rel=1e-3)
    for key in JSON_KEYS - {"flags", "flag_names", "model"}:
        assert d[key] is not None and np.isfinite(d[key]), key
    assert abs(d["fwhm"] - TRUE_FWHM) < 0.1
    if model == "gaussian":
        assert abs(d["flux_fit"] - TRUE_FLUX) < 4 * d["flux_err"]
        assert d["beta"] is None  # NaN becomes null, valid JSON
        assert abs((d["angle"] - 25.0 + 90) % 180 - 90) < 4 * d["angle_err"]
    else:
        assert d["beta"] > 1.0


def test_fit_json_with_psf_file(star_file, psf_file):
    res = run("fit", star_file, "--at", "42,29", "--model", psf_file, "--json")
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    assert d["model"] == "image"
    assert d["psf_normalisation"] == "unit peak"
    assert abs(d["flux_fit"] - TRUE_FLUX) < 4 * d["flux_err"]


def test_fit_without_position_finds_the_star(star_file):
    res = run("fit", star_file, "--json")
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    assert np.hypot(d["x_fit"] - TRUE_X, d["y_fit"] - TRUE_Y) < 0.1


def test_fit_real_frame(shared_data):
    res = run("fit", shared_data / "stellarphot_feder_cutout_fwhm.fits", "--at", "49,49", "--json")
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    assert 4.5 < d["fwhm"] < 8.0
    assert d["fwhm_arcsec"] == pytest.approx(d["fwhm"] * 0.58012, rel=1e-4)


def _bad_inputs(star_file, tmp):
    bad = tmp / "bad.fits"
    bad.write_text("this is not a FITS file\n")
    cube = tmp / "cube.fits"
    fits.writeto(cube, np.ones((3, 9, 9)), overwrite=True)
    return {
        "missing file": ["fit", tmp / "nope.fits", "--at", "1,1"],
        "unreadable file": ["fit", bad, "--at", "1,1"],
        "position outside": ["fit", star_file, "--at", "500,10"],
        "negative position": ["fit", star_file, "--at", "-3,10"],
        "box < 3": ["fit", star_file, "--at", "42,29", "--box", "2"],
        "PSF file not 2-D": ["fit", star_file, "--at", "42,29", "--model", cube],
        "PSF file unreadable": ["fit", star_file, "--at", "42,29", "--model", bad],
        "unknown model": ["fit", star_file, "--at", "42,29", "--model", "sersic"],
        "bad --at": ["fit", star_file, "--at", "42;29"],
        "zero gain": ["fit", star_file, "--at", "42,29", "--gain", "0"],
        "negative read noise": ["fit", star_file, "--at", "42,29", "--read-noise", "-3"],
        "beta without moffat": ["fit", star_file, "--at", "42,29", "--beta", "3"],
        "beta below 1": ["fit", star_file, "--at", "42,29", "--model", "moffat", "--beta", "0.5"],
        "nan zero point": ["fit", star_file, "--at", "42,29", "--zero-point", "nan"],
        "no image": ["fit"],
        "box not a number": ["fit", star_file, "--box", "abc"],
        "unknown option": ["fit", star_file, "--nope", "1"],
        "unknown command": ["fitt", star_file],
    }


@pytest.mark.parametrize("case", ["missing file", "unreadable file", "position outside", "negative position",
                                  "box < 3", "PSF file not 2-D", "PSF file unreadable", "unknown model", "bad --at",
                                  "zero gain", "negative read noise", "beta without moffat", "beta below 1",
                                  "nan zero point", "no image", "box not a number", "unknown option",
                                  "unknown command"])
def test_fit_bad_input_one_line_exit_2(star_file, tmp_path, case):
    args = _bad_inputs(star_file, tmp_path)[case]
    res = run(*args)
    assert res.returncode == 2, (case, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("psfkit: error: ")
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    assert res.stdout == ""


@pytest.mark.parametrize("args", [["--model", "moffat", "--beta", "0.5"], ["--at", "100,100", "--search-radius", "-3"]])
def test_bad_model_options_are_one_line_errors(args):
    import psfkit

    out = run_cli("fit", str(psfkit.sample_image_path()), *args)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
