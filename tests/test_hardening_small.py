"""The smaller findings of issue 15, point 7 (the files' side): a named pipe, the xisf library's
prints, numpy warnings, NaN magnitudes with a reason, and what a NaN means in a written list."""

from __future__ import annotations

import json
import os
import threading
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

import psfkit
from psfkit import flags as F
from psfkit.cli import main
from psfkit.errors import PsfkitError


def _run(argv) -> int:
    try:
        main([str(a) for a in argv])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this system")
def test_named_pipe_is_refused_without_hanging(tmp_path, capsys):
    pipe = tmp_path / "frame.fits"
    os.mkfifo(pipe)
    result: dict = {}

    def run() -> None:
        result["code"] = _run(["info", pipe])

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "reading a named pipe hangs"
    assert result["code"] == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a regular file" in err[0]
    with pytest.raises(PsfkitError, match="not a regular file"):
        psfkit.load_image("/dev/null")


def test_info_json_is_pure_json_for_an_xisf_file_the_library_prints_about(tmp_path, capsys):
    """The xisf library prints "Unsupported Property type" to stdout for some properties."""
    from xisf import XISF

    path = tmp_path / "frame.xisf"
    data = np.random.default_rng(1).normal(100, 5, (32, 32, 1)).astype(np.float32)
    props = {"Observation:Object:Name": {"id": "Observation:Object:Name", "type": "String", "value": "M 67"}}
    XISF.write(str(path), data, creator_app="test", image_metadata={"XISFProperties": props}, xisf_metadata={})
    raw = path.read_bytes()
    assert raw.count(b'type="String"') >= 1
    path.write_bytes(raw.replace(b'type="String"', b'type="Strang"'))  # same length: a type it does not know
    assert _run(["info", path, "--json"]) == 0
    out = capsys.readouterr().out
    info = json.loads(out)  # nothing but the JSON object
    assert info["format"] == "XISF" and out.strip().startswith("{")


def test_fwhm_map_without_a_full_cell_warns_nothing(tmp_path):
    from psfkit.viz.plots import plot_fwhm_map

    table = Table({"x_fit": [10.0, 200.0, 400.0], "y_fit": [10.0, 250.0, 490.0], "fwhm": [3.0, 3.1, 2.9],
                   "roundness": [0.9, 0.95, 0.85]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_fwhm_map(table, (500, 500), tmp_path / "map.png")
    assert (tmp_path / "map.png").stat().st_size > 0


def test_real_frames_raise_no_numpy_warning(shared_data, tmp_path):
    """find, phot and the pictures on real frames, with every RuntimeWarning an error."""
    from psfkit.aperture.stars import star_photometry
    from psfkit.viz.plots import plot_fwhm_map, plot_overlay

    for name in ("iraf_devpix_m51.fits", "spitzer_glimpse_irac2_crowded.fits", "saao1m_ste3_raw_a8280271.fits"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            img = psfkit.load_image(shared_data / name)
            stars = psfkit.find_stars(img)
            star_photometry(img, stars)
            plot_overlay(img.data, stars, tmp_path / "o.png")
            if len(stars) >= 3:
                plot_fwhm_map(stars, img.shape, tmp_path / "m.png")


def test_negative_aperture_flux_has_a_flag(tmp_path):
    """A 'star' below the sky: NaN magnitudes, and the flag that says why."""
    from psfkit.aperture.photometry import aperture_photometry
    from psfkit.datasets.simulate import render_stars, star_params

    rng = np.random.default_rng(5)
    p = star_params("gaussian", np.array([30.0, 70.0]), np.array([30.0, 30.0]), [2e4, -2e3], 3.0, 3.0, 0.0)
    data = render_stars((60, 100), p) + 100.0 + rng.normal(0, 1.0, (60, 100))
    img = psfkit.io.image.Image(data=data)
    t = aperture_photometry(img, [30.0, 70.0], [30.0, 30.0], fwhm=3.0)
    good, dark = t[0], t[1]
    assert good["flux_aper"] > 0 and np.isfinite(good["mag_aper"])
    assert not good["phot_flags"] & F.APERTURE_FLUX_NOT_POSITIVE
    assert dark["flux_aper"] < 0 and np.isnan(dark["mag_aper"]) and np.isnan(dark["mag_aper_err"])
    assert dark["phot_flags"] & F.APERTURE_FLUX_NOT_POSITIVE
    assert "aperture_flux_not_positive" in F.decode_phot_flags(int(dark["phot_flags"]))
    assert psfkit.decode_phot_flags(8) == ["aperture_flux_not_positive"]


def test_fitted_flux_at_zero_has_a_flag():
    """A dip below the sky: the amplitude stops at its bound 0, the flux is 0, the magnitude NaN, and flagged."""
    rng = np.random.default_rng(0)
    data = 200 + rng.normal(0, 1, (60, 60))
    data[28:33, 28:33] -= 5
    row = psfkit.fit_stars(psfkit.io.image.Image(data=data), [30.0], [30.0], search_radius=None, box=15)[0]
    assert row["flux_fit"] <= 0 and np.isnan(row["mag"]) and np.isnan(row["mag_err"])
    assert row["flags"] & F.FLUX_NOT_POSITIVE
    assert "flux_not_positive" in psfkit.decode_flags(int(row["flags"]))
    good = psfkit.fit_stars(psfkit.io.image.Image(data=data + 1000 * np.exp(
        -((np.arange(60)[None, :] - 12.0) ** 2 + (np.arange(60)[:, None] - 12.0) ** 2) / 4.5)), [12.0], [12.0])[0]
    assert np.isfinite(good["mag"]) and not good["flags"] & F.FLUX_NOT_POSITIVE


@pytest.mark.parametrize("suffix", [".ecsv", ".fits"])
def test_written_list_says_what_a_nan_means(tmp_path, sample_path, suffix):
    stars = psfkit.find_stars(sample_path, angle=False)  # a Gaussian without the angle: beta, angle_err NaN
    assert np.all(np.isnan(stars["beta"])) and np.all(np.isnan(stars["angle_err"]))
    out = psfkit.write_star_list(stars, tmp_path / f"stars{suffix}")
    if suffix == ".ecsv":
        meta = Table.read(out).meta["nan_means"]
        assert meta["beta"].startswith("not applicable") and meta["angle_err"].startswith("not applicable")
        assert meta["mag"].startswith("not applicable") and "flux_not_positive" in meta["mag"]
    else:
        header = fits.getheader(out, 1)
        assert header["NAN_MEANS_BETA"].startswith("not applicable")
        assert header["NAN_MEANS_ANGLE_ERR"] == "not applicable: the angle was not fitted"
