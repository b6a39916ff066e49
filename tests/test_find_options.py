"""``find_stars`` and ``psfkit find`` options a Siril user expects (a FWHM guess, a minimum SNR, the
N brightest stars), the angle fitted by Siril's two-stage rule by default, and a summary whose
counts add up.  Each checked against the truth of a simulated field, the CLI in-process."""

from __future__ import annotations

import re

import numpy as np
import pytest
from astropy.io import fits
from scipy.spatial import cKDTree

import psfkit
from psfkit.cli import main
from psfkit.datasets.simulate import simulate_field
from psfkit.detect.find import find_stars


def run_cli(capsys, *args) -> tuple[int, str, str]:
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def field():
    img, truth = simulate_field((300, 400), 60, seed=21, fwhm=3.4, roundness=0.9, flux_range=(300, 2e5),
                                min_separation=12, edge=8, gain=1.5, read_noise=6.0)
    return img.astype(np.float32), truth


@pytest.fixture(scope="module")
def field_path(field, tmp_path_factory):
    path = tmp_path_factory.mktemp("opts") / "field.fits"
    fits.writeto(path, field[0], fits.Header({"GAIN": 1.5, "RDNOISE": 6.0}))
    return path


def _match(table, truth):
    d, i = cKDTree(np.stack([table["x_fit"], table["y_fit"]], 1)).query(np.stack([truth["x"], truth["y"]], 1))
    return d, i


def test_elongated_stars_at_random_angles_have_unbiased_roundness_by_default():
    # 600 isolated stars, roundness 0.8, angles uniform in [-90, 90): the default find fits the angle
    # where the first, angle-free fit says the star is elliptic (Siril's rule); without the angle the
    # roundness of a star at 45 degrees reads round
    img, truth = simulate_field((1400, 1400), 600, seed=5, fwhm=3.5, roundness=0.8, angle_deg="random",
                                flux_range=(3e3, 3e5), min_separation=22, edge=15, gain=1.5, read_noise=6.0)
    stars = find_stars(img.astype(np.float32), gain=1.5, read_noise=6.0)
    d, i = _match(stars, truth)
    ok = d < 1.0
    assert ok.sum() >= 590
    true_r = np.asarray(truth["fwhm_y"] / truth["fwhm_x"])[ok]
    bias = np.asarray(stars["roundness"])[i[ok]] - true_r
    se = bias.std() / np.sqrt(ok.sum())
    assert se < 0.0015  # enough stars to resolve a bias of 0.005
    assert abs(bias.mean()) <= 0.005, bias.mean()
    # the angle column is filled: within a few degrees of the truth (axial difference)
    dang = (np.asarray(stars["angle"])[i[ok]] - np.asarray(truth["angle"])[ok] + 90.0) % 180.0 - 90.0
    assert np.median(np.abs(dang)) < 3.0
    # Siril 1.0's angle-free fit: the bias the default removes
    flat = find_stars(img.astype(np.float32), gain=1.5, read_noise=6.0, angle=False)
    d, i = _match(flat, truth)
    ok = d < 1.0
    assert np.mean(np.asarray(flat["roundness"])[i[ok]] - np.asarray(truth["fwhm_y"] / truth["fwhm_x"])[ok]) > 0.02


def test_max_stars_keeps_the_brightest_and_counts_the_rest(field):
    img, truth = field
    every = find_stars(img, gain=1.5, read_noise=6.0)
    top = find_stars(img, gain=1.5, read_noise=6.0, max_stars=10, keep_rejected=True)
    acc = top[top["accepted"]]
    assert len(acc) == 10
    assert np.allclose(np.sort(acc["flux_fit"]), np.sort(every["flux_fit"][:10]))
    s = top.meta["summary"]
    assert s["beyond_max_stars"] == len(every) - 10 == int(np.sum(top["reject_reason"] == "beyond_max_stars"))
    assert s["n_stars"] + s["beyond_max_stars"] + sum(s["rejected"].values()) == s["n_candidates"]


def test_min_snr_rejects_the_faint_stars(field):
    img, truth = field
    strict = find_stars(img, gain=1.5, read_noise=6.0, min_snr=50.0, keep_rejected=True)
    acc = strict[strict["accepted"]]
    assert np.all(acc["snr"] >= 50.0)
    low = strict[strict["reject_reason"] == "low_snr"]
    assert len(low) >= 5 and np.all(low["snr"] < 50.0)


def test_fwhm_is_a_first_guess_not_the_answer(field):
    img, truth = field
    for guess in (2.0, 7.0):
        stars = find_stars(img, gain=1.5, read_noise=6.0, fwhm=guess)
        assert stars.meta["frame_fwhm"] == pytest.approx(3.4, rel=0.05)
        d, _ = _match(stars, truth)
        assert np.all(d[truth["snr"] >= 15] < 0.5)


def test_cli_find_options(field_path, field, tmp_path, capsys):
    _, truth = field
    code, out, err = run_cli(capsys, "find", field_path, "-o", tmp_path / "s.ecsv", "--max-stars", "12",
                             "--min-snr", "10", "--fwhm", "5", "--angle", "yes")
    assert code == 0, err
    table = psfkit.read_star_list(tmp_path / "s.ecsv")
    assert len(table) == 12 and np.all(table["snr"] >= 10)
    assert table.meta["settings"]["angle"] is True and table.meta["settings"]["fwhm"] == 5.0
    assert "beyond --max-stars" in out
    code, out, err = run_cli(capsys, "find", field_path, "--angle", "no")
    assert code == 0, err


def test_summary_counts_add_up_with_deblend(pairs_fits, capsys):
    code, out, err = run_cli(capsys, "find", pairs_fits, "--deblend")
    assert code == 0, err
    m = re.search(r"(\d+) stars from (\d+) candidates \+ (\d+) companion candidates", out)
    assert m, out
    n_stars, n_cand, n_comp = map(int, m.groups())
    rejected = sum(int(c) for c in re.findall(r"rejected\s+(\d+)", out))
    assert n_comp >= 1 and n_stars + rejected == n_cand + n_comp


@pytest.mark.parametrize("command", ["fit", "info", "compare", "find"])
def test_channel_help_is_whole(command):
    from typer.testing import CliRunner

    from psfkit.cli import app

    out = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
    text = " ".join(out.output.split())
    assert "R, G, B or mosaic." in text  # the sentence ends: not cut off at "mosaic;"
    assert ("'all' or a list like R,G,B" in text) == (command == "find")
