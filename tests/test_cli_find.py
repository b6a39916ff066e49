"""``psfkit find`` and ``psfkit average`` run as real processes, and ``psfkit demo``.

A simulated field with a truth table is written to a FITS file with the header
keywords a camera writes (GAIN, RDNOISE, FOCALLEN, XPIXSZ), found through the
command line, and the list, the pictures and the printed summary are checked
against the truth.  Bad input must give exactly one line ``psfkit: error: ...``
on stderr, exit code 2 and no traceback.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from _helpers import CliResult, run_cli
from astropy.io import fits
from scipy.spatial import cKDTree

import psfkit
from psfkit.datasets.simulate import simulate_field

FOCALLEN, XPIXSZ = 800.0, 3.76  # 206.265 * 3.76 / 800 = 0.9694 "/px
SCALE = 206.265 * XPIXSZ / FOCALLEN
FWHM = 3.4


def run(*args) -> CliResult:
    return run_cli(*args)


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    img, truth = simulate_field((300, 400), 60, seed=21, fwhm=FWHM, roundness=0.9, flux_range=(3e3, 2e5),
                                hot_pixels=10, min_separation=12, edge=8, gain=1.5, read_noise=6.0)
    path = tmp_path_factory.mktemp("cli") / "field.fits"
    header = fits.Header({"GAIN": 1.5, "RDNOISE": 6.0, "FOCALLEN": FOCALLEN, "XPIXSZ": XPIXSZ, "YPIXSZ": XPIXSZ,
                          "XBINNING": 1, "YBINNING": 1})
    fits.writeto(path, img.astype(np.float32), header)
    return path, truth


def test_find_prints_summary_and_writes_list_and_pictures(field, tmp_path):
    path, truth = field
    out = run("find", path, "-o", tmp_path / "stars.csv", "--overlay", tmp_path / "overlay.png",
              "--fwhm-map", tmp_path / "map.png", "--keep-rejected")
    assert out.returncode == 0, out.stderr
    m = re.search(r"(\d+) stars from (\d+) candidates", out.stdout)
    assert m, out.stdout
    n_stars, n_cand = int(m.group(1)), int(m.group(2))
    rejected = sum(int(c) for c in re.findall(r"rejected\s+(\d+)", out.stdout))
    assert n_stars + rejected == n_cand and rejected >= 5  # hot pixels rejected, with their reason
    assert "too_narrow" in out.stdout
    fw = re.search(r'median FWHM ([\d.]+) px = ([\d.]+)"', out.stdout)
    assert float(fw.group(1)) == pytest.approx(FWHM, rel=0.05)
    assert float(fw.group(2)) == pytest.approx(FWHM * SCALE, rel=0.05)
    # the CSV: one row per candidate (--keep-rejected), GUIDE.md names, 0-based coordinates
    table = psfkit.read_star_list(tmp_path / "stars.csv")
    assert len(table) == n_cand and int(np.sum(table["accepted"])) == n_stars
    assert {"x_fit", "y_fit", "fwhm_x", "fwhm_y", "roundness", "flux_fit", "flux_err", "snr", "flags",
            "fwhm_x_arcsec", "reject_reason"} <= set(table.colnames)
    stars = table[table["accepted"]]
    d, i = cKDTree(np.stack([stars["x_fit"], stars["y_fit"]], 1)).query(np.stack([truth["x"], truth["y"]], 1))
    assert np.all(d[truth["snr"] >= 10] < 0.3)  # every star found, at its 0-based position
    assert np.all(table["reject_reason"][~table["accepted"]] != "")
    # pictures: real PNGs the size of the frame, with green rings and (rejected) red ones
    import matplotlib.image as mpimg

    rgba = mpimg.imread(tmp_path / "overlay.png")
    assert rgba.shape[0] > 100 and rgba.shape[1] > 100
    rgb = rgba[..., :3]
    green = (rgb[..., 1] > 0.8) & (rgb[..., 0] < 0.4)
    red = (rgb[..., 0] > 0.8) & (rgb[..., 1] < 0.4)
    assert green.sum() > 100 and red.sum() > 10
    assert mpimg.imread(tmp_path / "map.png").std() > 0.05


@pytest.mark.parametrize("suffix", [".lst", ".reg"])  # every format's round trip: test_catalog.py
def test_find_writes_every_format(field, tmp_path, suffix):
    path, truth = field
    out = run("find", path, "-o", tmp_path / f"stars{suffix}", "--threshold", "6")
    assert out.returncode == 0, out.stderr
    n_stars = int(re.search(r"(\d+) stars from", out.stdout).group(1))
    back = psfkit.read_star_list(tmp_path / f"stars{suffix}", image_shape=(300, 400))
    assert len(back) == n_stars
    d, _ = cKDTree(np.stack([back["x_fit"], back["y_fit"]], 1)).query(np.stack([truth["x"], truth["y"]], 1))
    assert np.all(d[truth["snr"] >= 15] < 0.3)


def test_find_options_model_and_angle(field, tmp_path):
    path, truth = field
    out = run("find", path, "-o", tmp_path / "m.ecsv", "--model", "moffat", "--angle", "true")
    assert out.returncode == 0, out.stderr
    t = psfkit.read_star_list(tmp_path / "m.ecsv")
    assert t.meta["settings"]["model"] == "moffat" and t.meta["settings"]["angle"] is True
    assert np.all(np.isfinite(t["beta"]))
    # the true angle is 30 deg (simulate_field's default) for the elongated stars
    bright = t[t["snr"] > 100]
    assert np.median(bright["angle"]) == pytest.approx(30.0, abs=5.0)


def test_average_command(field, tmp_path):
    path, _ = field
    assert run("find", path, "-o", tmp_path / "s.csv").returncode == 0
    out = run("average", tmp_path / "s.csv")
    assert out.returncode == 0, out.stderr
    n = len(psfkit.read_star_list(tmp_path / "s.csv"))
    assert f"{n} stars" in out.stdout
    line = next(text for text in out.stdout.splitlines() if text.startswith("fwhm "))
    mean, median = (float(v) for v in line.split()[1:3])
    assert median == pytest.approx(FWHM, rel=0.05)


def test_lst_with_keep_rejected_says_it_keeps_the_stars_only(field, tmp_path):
    path, _ = field
    out = run("find", path, "-o", tmp_path / "s.lst", "--keep-rejected")
    assert out.returncode == 0, out.stderr
    note = next(line for line in out.stdout.splitlines() if line.startswith("note: s.lst"))
    n = len(psfkit.read_star_list(tmp_path / "s.lst"))
    assert f"the {n} accepted stars only" in note
    # the same list as .csv keeps the rejected candidates, and says nothing
    out = run("find", path, "-o", tmp_path / "s.csv", "--keep-rejected")
    assert "note:" not in out.stdout
    assert len(psfkit.read_star_list(tmp_path / "s.csv")) > n


@pytest.mark.parametrize("args,needle", [
    (["find", "{tmp}/missing.fits"], "no such file"),
    (["find", "{img}", "-o", "{tmp}/stars.txt"], "suffix"),
    (["find", "{img}", "--model", "lorentz"], "--model"),
    (["find", "{img}", "--overlay", "{tmp}/nofolder/o.png"], "no such folder"),
    (["find", "{img}", "--hdu", "7"], "hdu"),
    (["average", "{img}"], "star list"),
    (["find", "{img}", "--gain", "-1"], "gain"),
    (["find", "{img}", "--read-noise", "-3"], "read noise"),
    (["find", "{img}", "--min-roundness", "2"], "min_roundness"),
    (["find", "{img}", "--min-roundness", "-1"], "min_roundness"),
    (["find", "{img}", "--angle", "sometimes"], "--angle"),
    (["find", "{img}", "--fwhm", "0"], "--fwhm"),
    (["find", "{img}", "--min-snr", "-2"], "--min-snr"),
    (["find", "{img}", "--max-stars", "0"], "--max-stars"),
])
def test_bad_input_is_one_line_exit_2(field, tmp_path, args, needle):
    path, _ = field
    args = [a.format(tmp=tmp_path, img=path) for a in args]
    out = run(*args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("psfkit: error:"), out.stderr
    assert needle.lower() in lines[0].lower()
    assert "Traceback" not in out.stderr


def test_demo_finds_the_sample_and_writes_list_and_overlay(tmp_path, sample_path):
    out = run("demo", "--outdir", tmp_path / "demo")
    assert out.returncode == 0, out.stderr
    stars = psfkit.read_star_list(tmp_path / "demo" / "stars.csv")
    direct = psfkit.find_stars(sample_path, angle=True, model="auto")  # find's default: it chooses
    assert f"PSF: {direct.meta['psf_choice']}" in out.stdout
    assert len(stars) == len(direct) >= 10
    assert np.allclose(np.sort(stars["x_fit"]), np.sort(direct["x_fit"]))
    lst = psfkit.read_star_list(tmp_path / "demo" / "stars.lst")
    assert len(lst) == len(stars)
    assert (tmp_path / "demo" / "overlay.png").stat().st_size > 10_000
