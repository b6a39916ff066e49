"""Absurd arguments answered in one line, boxes clipped to the image (issue 15, point 4), and frames
with extreme pixel values measured like ordinary ones (point 5)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.io import fits

import psfkit
from psfkit.cli import main
from psfkit.datasets.simulate import simulate_field


def _run(argv) -> int:
    try:
        main([str(a) for a in argv])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture(scope="module")
def field():
    data, truth = simulate_field((160, 160), 14, fwhm=3.0, min_separation=14, edge=12, seed=3, flux_range=(4e3, 2e5))
    return data.astype(np.float64), truth


@pytest.fixture
def small_fits(tmp_path, field):
    path = tmp_path / "small.fits"
    fits.writeto(path, field[0][:64, :64].astype(np.float32))
    return path


# ---------------------------------------------------------------- arguments


def test_fit_box_is_clipped_to_the_image(small_fits, capsys):
    assert _run(["fit", small_fits, "--box", "10001", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert np.isfinite(out["x_fit"])
    img = psfkit.load_image(small_fits)
    assert psfkit.fit_star(img, box=10001).table.meta["box"] == 63  # the largest odd box inside 64 px


def test_compare_box_is_clipped_to_the_image(small_fits):
    from psfkit.analysis.compare import compare_models

    img = psfkit.load_image(small_fits)
    y, x = np.unravel_index(np.argmax(img.data), img.shape)
    result = compare_models(img, float(x), float(y), box=4001)
    assert result.table.meta["box"] == 63


def test_box_beyond_any_image_and_workers_beyond_the_machine(small_fits, tmp_path, capsys):
    import os

    for argv in (["fit", small_fits, "--box", "99999999999999999999"],
                 ["compare", small_fits, "--at", "30,30", "--box", "99999999999999999999"],
                 ["seq", small_fits, "-o", tmp_path / "o", "--workers", str(4 * (os.cpu_count() or 1) + 1)]):
        assert _run(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("psfkit: error:"), err
    assert not (tmp_path / "o").exists()


def test_fitting_box_rules():
    from psfkit.errors import PsfkitError
    from psfkit.psf.stamps import MAX_BOX, clip_box

    assert clip_box(16, (256, 256)) == 17
    assert clip_box(10001, (256, 256)) == 255
    assert clip_box(10001, (4000, 3000)) == MAX_BOX
    with pytest.raises(PsfkitError, match="at least 5"):
        clip_box(3, (64, 64), minimum=5)
    with pytest.raises(PsfkitError, match="whole number"):
        clip_box(7.5, (64, 64))


# ---------------------------------------------------------------- extreme values


def _matched(table, truth, tol=1.0):
    """Truth stars found within tol px."""
    found = np.column_stack([np.asarray(table["x_fit"]), np.asarray(table["y_fit"])])
    hits = 0
    for x, y in zip(truth["x"], truth["y"]):
        if len(found) and np.min(np.hypot(found[:, 0] - x, found[:, 1] - y)) < tol:
            hits += 1
    return hits


@pytest.mark.parametrize("scale, dtype", [(1e33, np.float32), (1e300, np.float64), (1e-300, np.float64),
                                          (1e-40, np.float32)])
def test_detection_does_not_depend_on_the_scale(tmp_path, field, scale, dtype):
    data, truth = field
    base = psfkit.find_stars(psfkit.io.image.Image(data=data.astype(np.float32)))
    assert _matched(base, truth) >= 12
    with np.errstate(under="ignore"):
        scaled = (data * scale).astype(dtype)
    path = tmp_path / "scaled.fits"
    fits.writeto(path, scaled)
    got = psfkit.find_stars(str(path))
    assert len(got) == len(base) and _matched(got, truth) == _matched(base, truth)
    # the same stars, the same shapes; fluxes and background in the frame's own units
    order = np.lexsort((np.round(base["y_fit"]), np.round(base["x_fit"])))
    order_s = np.lexsort((np.round(got["y_fit"]), np.round(got["x_fit"])))
    np.testing.assert_allclose(got["x_fit"][order_s], base["x_fit"][order], atol=0.01)
    np.testing.assert_allclose(got["fwhm"][order_s], base["fwhm"][order], rtol=1e-3)
    np.testing.assert_allclose(got["flux_fit"][order_s] / scale, base["flux_fit"][order], rtol=1e-3)
    np.testing.assert_allclose(got["mag"][order_s] + 2.5 * np.log10(scale), base["mag"][order], atol=1e-3)
    assert got.meta["background"] / scale == pytest.approx(base.meta["background"], rel=1e-3)


def test_one_pixel_at_minus_3e38(tmp_path, field):
    data, truth = field
    frame = data.astype(np.float32)
    frame[20, 150] = -3e38
    path = tmp_path / "dead.fits"
    fits.writeto(path, frame)
    got = psfkit.find_stars(str(path))
    assert _matched(got, truth) >= 12


def test_fit_stars_without_positions_is_an_empty_table(field):
    img = psfkit.io.image.Image(data=field[0])
    one = psfkit.fit_stars(img, [80.0], [80.0])
    for kwargs in ({}, {"model": "moffat"}, {"model": "moffat", "angle": True, "box": 11}):
        empty = psfkit.fit_stars(img, [], [], **kwargs)
        assert len(empty) == 0 and "flux_fit" in empty.colnames
    assert psfkit.fit_stars(img, np.zeros(0), np.zeros(0)).colnames == one.colnames


def test_seq_failure_reasons_are_words(tmp_path, field, capsys):
    night = tmp_path / "night"
    night.mkdir()
    fits.writeto(night / "a_good.fits", field[0].astype(np.float32))
    fits.writeto(night / "b_nan.fits", np.full((64, 64), np.nan, np.float32))
    fits.writeto(night / "c_tiny.fits", (field[0] * 1e-300))
    code = _run(["seq", night, "-o", tmp_path / "out", "--workers", "0", "-q", "--no-plots"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and err[0].startswith("failed: ") and "b_nan.fits: " in err[0], err
    assert "NaN" in err[0] and "reshape" not in err[0] and "Error" not in err[0]
    from astropy.table import Table

    summary = Table.read(tmp_path / "out" / "summary.ecsv")
    assert sorted(summary["frame"]) == ["a_good", "c_tiny"]  # the 1e-300 frame is measured
    assert summary["n_stars"][0] == summary["n_stars"][1] >= 12
