"""Star lists: averages and every export format read back."""

from __future__ import annotations

import numpy as np
import pytest

import psfkit
from psfkit import flags as F
from psfkit.simulate import simulate_field


@pytest.fixture(scope="module")
def table():
    img, truth = simulate_field((256, 256), 40, seed=8, min_separation=15, edge=8, saturation=30000,
                                flux_range=(2e3, 2e6))
    return psfkit.find_stars(img, gain=1.5, read_noise=6.0, angle=True, saturation=30000.0)


@pytest.mark.parametrize("suffix", [".csv", ".ecsv", ".fits", ".lst", ".reg"])
def test_export_roundtrip(tmp_path, table, suffix):
    path = psfkit.write_star_list(table, tmp_path / f"stars{suffix}")
    back = psfkit.read_star_list(path)
    assert len(back) == len(table)
    order = np.argsort(-np.asarray(table["flux_fit"]))  # .lst is brightest first too
    tol = 1e-4 if suffix in (".reg", ".lst") else 0
    assert np.allclose(back["x_fit"], np.asarray(table["x_fit"])[order] if suffix == ".lst" else table["x_fit"], atol=tol)
    assert np.allclose(back["y_fit"], np.asarray(table["y_fit"])[order] if suffix == ".lst" else table["y_fit"], atol=tol)
    assert np.allclose(back["fwhm_x"], np.asarray(table["fwhm_x"])[order] if suffix == ".lst" else table["fwhm_x"], atol=tol)


def test_file_conventions(tmp_path, table):
    reg = psfkit.write_star_list(table, tmp_path / "s.reg").read_text()
    first = next(l for l in reg.splitlines() if l.startswith("ellipse("))
    x, y = (float(v) for v in first[8:].split(",")[:2])
    assert x == pytest.approx(table["x_fit"][0] + 1, abs=1e-3)  # DS9 is 1-based
    lst = psfkit.write_star_list(table, tmp_path / "s.lst").read_text().splitlines()
    row = next(l for l in lst if not l.startswith("#")).split("\t")
    ny = table.meta["image_shape"][0]
    brightest = int(np.argmax(table["flux_fit"]))
    assert float(row[5]) == pytest.approx(table["x_fit"][brightest] + 0.5, abs=1e-5)
    assert float(row[6]) == pytest.approx(ny - 1 - table["y_fit"][brightest] + 0.5, abs=1e-5)
    ecsv = psfkit.read_star_list(psfkit.write_star_list(table, tmp_path / "s.ecsv"))
    assert ecsv.meta["settings"]["threshold"] == 5.0


def test_average_against_numpy(table):
    avg = psfkit.average(table)
    unsat = (np.asarray(table["flags"]) & F.SATURATED) == 0
    assert avg["n_stars"] == len(table)
    assert avg["n_used_shape"] == unsat.sum() < len(table)
    assert avg["fwhm"]["median"] == pytest.approx(np.median(np.asarray(table["fwhm"])[unsat]))
    w = np.asarray(table["snr"]) ** 2
    assert avg["flux_fit"]["snr_weighted_mean"] == pytest.approx(np.sum(w * table["flux_fit"]) / w.sum())


def test_unknown_suffix_is_clean_error(tmp_path, table):
    with pytest.raises(psfkit.PsfkitError):
        psfkit.write_star_list(table, tmp_path / "stars.txt")
    assert not list(tmp_path.iterdir())
