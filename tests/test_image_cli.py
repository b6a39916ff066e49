"""The image options of the command line: psfkit info, --hdu, --channel, the scale options, bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.io import fits
from typer.testing import CliRunner

from psfkit.cli import app
from psfkit.datasets.simulate import simulate_field

runner = CliRunner()


def _run(*args):
    from psfkit.cli import main

    try:
        main(list(map(str, args)))
    except SystemExit as exc:
        return exc.code
    return 0


@pytest.fixture(scope="module")
def field():
    img, truth = simulate_field((120, 160), 12, seed=21, min_separation=14, edge=10)
    return np.clip(img, 0, 65535).astype(np.uint16), truth


def test_info_prints_what_the_header_knows(shared_data):
    path = shared_data / "nites_j17490840_seq" / "J17490840-001.fit"
    result = runner.invoke(app, ["info", str(path)])
    assert result.exit_code == 0, result.output
    out = result.output
    for text in ("shape (ny, nx)", "[1027, 1056]", "float32", "0.6598", "206.265 x XPIXSZ=13 um / FOCALLEN=4064 mm",
                 "1.22", "14", "65535", "2014-07-27T21:05:43", "BOTTOM-UP", "WCS", "uint16"):
        assert text in out, text
    data = json.loads(runner.invoke(app, ["info", str(path), "--json", "--focal-length", "2032"]).output)
    assert data["image scale (arcsec/px)"] == pytest.approx(206.264806 * 13 / 2032)
    assert "--focal-length 2032" in data["scale rule"]
    assert data["WCS"] is False and data["bayer pattern"] is None


def test_info_bayer_and_scale_option(shared_data):
    path = shared_data / "panoptes_canon_bayer" / "PAN001_20160909T081434_solved.fits"
    data = json.loads(runner.invoke(app, ["info", str(path), "--json"]).output)
    assert data["bayer pattern"] == "RGGB" and data["shape (ny, nx)"] == [350, 350]
    assert data["frame shape (ny, nx)"] == [700, 700] and data["WCS"] is True
    assert "green" in data["measured plane"]
    data = json.loads(runner.invoke(app, ["info", str(path), "--json", "--channel", "mosaic", "--scale", "10"]).output)
    assert data["shape (ny, nx)"] == [700, 700] and data["image scale (arcsec/px)"] == 10.0


def test_find_per_channel_on_an_rgb_tiff(tmp_path, field, capsys):
    import tifffile
    from astropy.table import Table

    grey, _ = field
    rgb = np.stack([grey // 2, grey, grey // 3], axis=-1)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    out = tmp_path / "stars.ecsv"
    code = _run("find", tmp_path / "rgb.tif", "--channel", "all", "-o", out)
    assert code == 0
    assert "measured on each plane (R, G, B" in capsys.readouterr().out
    table = Table.read(out)
    assert table.colnames[0] == "channel" and set(table["channel"]) == {"R", "G", "B"}
    code = _run("find", tmp_path / "rgb.tif", "--channel", "G", "-o", tmp_path / "g.csv")
    assert code == 0
    g = Table.read(tmp_path / "g.csv")
    assert len(g) == int(np.sum(table["channel"] == "G"))


def test_fit_at_a_full_frame_position_of_a_bayer_frame(tmp_path, field):
    grey, truth = field
    hdu = fits.PrimaryHDU(grey)
    hdu.header["BAYERPAT"] = "RGGB"
    hdu.writeto(tmp_path / "osc.fits")
    i = int(np.argmax(truth["flux"]))
    x, y = float(truth["x"][i]), float(truth["y"][i])
    result = runner.invoke(app, ["fit", str(tmp_path / "osc.fits"), "--at", f"{x + 1:.2f},{y - 1:.2f}", "--json"])
    assert result.exit_code == 0, result.output
    d = json.loads(result.output)
    assert d["x_fit"] == pytest.approx(x, abs=0.3) and d["y_fit"] == pytest.approx(y, abs=0.3)


def test_hdu_by_name_on_the_command_line(tmp_path, field):
    grey, _ = field
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(grey, name="SCI")]).writeto(tmp_path / "mef.fits")
    result = runner.invoke(app, ["info", str(tmp_path / "mef.fits"), "--hdu", "SCI", "--json"])
    assert json.loads(result.output)["hdu"] == "SCI"


@pytest.mark.parametrize("command", ["find", "fit", "info", "phot", "compare"])
def test_bad_files_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, command):
    fits.PrimaryHDU(np.arange(100 * 120, dtype=np.uint16).reshape(100, 120)).writeto(tmp_path / "full.fits")
    data = (tmp_path / "full.fits").read_bytes()
    (tmp_path / "cut.fits").write_bytes(data[:5000])
    extra = {"find": ["-o", tmp_path / "out.csv", "--overlay", tmp_path / "o.png"], "fit": [], "info": [],
             "phot": ["-o", tmp_path / "out.csv"], "compare": ["--at", "5,5"]}[command]
    capsys.readouterr()
    code = _run(command, tmp_path / "cut.fits", *extra)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("psfkit: error:") and "cut.fits" in err and "truncated" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.fits", "full.fits"]
    code = _run(command, tmp_path / "cut.fits", "--channel", "X", *extra)
    assert code == 2


def test_one_plane_commands_refuse_channel_all(tmp_path, field):
    grey, _ = field
    fits.PrimaryHDU(grey).writeto(tmp_path / "g.fits")
    assert _run("fit", tmp_path / "g.fits", "--channel", "all") == 2
