"""Star lists: averages and every export format read back."""

from __future__ import annotations

import numpy as np
import pytest

import psfkit
from psfkit import flags as F
from psfkit.datasets.simulate import simulate_field


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
    for name in ("x_fit", "y_fit", "fwhm_x"):
        expected = np.asarray(table[name])[order] if suffix == ".lst" else table[name]
        assert np.allclose(back[name], expected, atol=tol), name


def test_csv_is_astropys_text(tmp_path, table):
    """The CSV writer (the csv module, for speed) writes byte for byte what astropy's ascii.csv
    writer does: a find list with the rejected candidates (text column), and every dtype's edge cases.
    """
    from astropy.table import Table

    rng = np.random.default_rng(0)
    n = 400
    values = np.concatenate([rng.normal(0, 1, 200) * 10.0 ** rng.integers(-30, 30, 200),
                             [np.nan, np.inf, -np.inf, -0.0, 0.0, 1e16, 1e-5, 1e-4, 0.1, 2.0 ** 60],
                             rng.integers(-5, 5, n - 210).astype(float)])
    odd = Table({"f": values, "f32": values.astype(np.float32), "i": rng.integers(-10**12, 10**12, n),
                 "u8": rng.integers(0, 255, n).astype(np.uint8), "ok": rng.random(n) > 0.5,
                 "s": rng.choice(["", " ", "poor_fit", "a,b", 'q"x', " lead", "tail ", "two words", "\u00e9"], n)})
    rejected = table.copy()
    rejected["reject_reason"] = np.where(np.arange(len(rejected)) % 3 == 0, "", "low_snr")
    rejected["accepted"] = rejected["reject_reason"] == ""
    for k, t in enumerate([table, rejected, odd, odd[:0], Table({"s": [""]})]):
        ours = psfkit.write_star_list(t, tmp_path / f"ours{k}.csv")
        plain = Table({name: np.asarray(t[name]) for name in t.colnames})
        plain.write(tmp_path / f"astropy{k}.csv", format="ascii.csv")
        assert ours.read_bytes() == (tmp_path / f"astropy{k}.csv").read_bytes()


def test_file_conventions(tmp_path, table):
    reg = psfkit.write_star_list(table, tmp_path / "s.reg").read_text()
    first = next(line for line in reg.splitlines() if line.startswith("ellipse("))
    x, y = (float(v) for v in first[8:].split(",")[:2])
    assert x == pytest.approx(table["x_fit"][0] + 1, abs=1e-3)  # DS9 is 1-based
    lst = psfkit.write_star_list(table, tmp_path / "s.lst").read_text().splitlines()
    row = next(line for line in lst if not line.startswith("#")).split("\t")
    ny = table.meta["image_shape"][0]
    brightest = int(np.argmax(table["flux_fit"]))
    assert float(row[5]) == pytest.approx(table["x_fit"][brightest] + 0.5, abs=1e-4)
    assert float(row[6]) == pytest.approx(ny - 1 - table["y_fit"][brightest] + 0.5, abs=1e-4)
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


def test_siril_lst_layout(tmp_path, table):
    """Siril's save_list layout: 3 header lines Siril's reader checks, 18 tab-separated columns,
    16 leading tokens in the types Siril's sscanf reads, Sat = 1 for saturated stars."""
    lines = psfkit.write_star_list(table, tmp_path / "s.lst").read_text().splitlines()
    assert lines[0] == f"# {len(table)} stars found using the following parameters:"
    assert lines[1].startswith("# sigma=5.00 roundness=0.30 radius=")
    header = next(line for line in lines if line.startswith("# star#")).lstrip("# ").split("\t")
    assert header == ["star#", "layer", "B", "A", "beta", "X", "Y", "FWHMx [px]", "FWHMy [px]", 'FWHMx ["]',
                      'FWHMy ["]', "angle", "RMSE", "mag", "Sat", "Profile", "RA", "Dec"]
    rows = [line.split("\t") for line in lines if not line.startswith("#")]
    assert len(rows) == len(table) and all(len(r) == 18 for r in rows)
    assert [int(r[0]) for r in rows] == list(range(1, len(table) + 1))
    for r in rows:
        [float(v) for v in r[2:14]]
        assert r[15] == "Gaussian" and float(r[4]) == -1
    sat_rows = sum(int(r[14]) for r in rows)
    assert sat_rows == int(np.sum((np.asarray(table["flags"]) & F.SATURATED) != 0)) > 0
    back = psfkit.read_star_list(tmp_path / "s.lst")
    assert np.sum((np.asarray(back["flags"]) & F.SATURATED) != 0) == sat_rows


def test_read_a_list_written_by_siril(tmp_path):
    """A list in Siril's own layout (no psfkit line): the image height comes from the caller."""
    fmt = ("%d\t%d\t%10.6f\t%10.6f\t%10.2f\t%10.2f\t%10.2f\t%10.2f\t%10.2f\t%10.2f\t%10.2f"
           "\t%3.2f\t%10.3e\t%10.2f\t%d\t%s\t%f\t%f")
    text = ("# 2 stars found using the following parameters:\n"
            "# sigma=1.00 roundness=0.50 radius=5 relax=0 profile=0 minbeta=1.5 max_stars=0 layer=0 minA=0.00 "
            "maxA=0.00 maxR=1.00\n"
            "# star#\tlayer\tB\tA\tbeta\tX\tY\tFWHMx [px]\tFWHMy [px]\tFWHMx [\"]\tFWHMy [\"]\tangle\tRMSE\tmag\tSat"
            "\tProfile\tRA\tDec\n"
            + fmt % (1, 0, 0.01, 0.5, -1, 100.5, 20.5, 4.0, 3.0, 0, 0, 10.0, 1e-3, -9.1, 1, "Gaussian", 0, 0) + "\n"
            + fmt % (2, 0, 0.01, 0.1, -1, 10.25, 80.75, 3.5, 3.5, 0, 0, 0.0, 1e-3, -7.0, 0, "Gaussian", 0, 0) + "\n")
    (tmp_path / "siril.lst").write_text(text)
    back = psfkit.read_star_list(tmp_path / "siril.lst", image_shape=(200, 300))
    assert list(back["x_fit"]) == pytest.approx([100.0, 9.75])
    assert list(back["y_fit"]) == pytest.approx([200 - 20.5 - 0.5, 200 - 80.75 - 0.5])
    assert list(back["flags"]) == [F.SATURATED, 0]
    assert list(back["roundness"]) == pytest.approx([0.75, 1.0])
    assert "fwhm_x_arcsec" not in back.colnames  # Siril writes 0 when the scale is unknown
    avg = psfkit.average(back)
    assert avg["n_stars"] == 2 and avg["fwhm_x"]["median"] == pytest.approx(3.5)  # saturated star left out
    without_height = psfkit.read_star_list(tmp_path / "siril.lst")
    assert "y_fit" not in without_height.colnames and "y_siril" in without_height.colnames


def test_lst_of_colour_planes_has_siril_layers(tmp_path, table):
    """A per-channel list (channel R, G, B) written as .lst: Siril's layer column 0, 1, 2."""
    t = table.copy()
    t["channel"] = np.array(["R", "G", "B", "luminance"] * len(t))[: len(t)]
    path = psfkit.write_star_list(t, tmp_path / "rgb.lst")
    rows = [line.split("\t") for line in path.read_text().splitlines() if line and not line.startswith("#")]
    want = {"R": 0, "G": 1, "B": 2, "luminance": 0}
    order = np.argsort(-np.asarray(t["flux_fit"]), kind="stable")
    assert [int(r[1]) for r in rows] == [want[c] for c in np.asarray(t["channel"])[order]]


def test_reg_with_rejected_candidates_reads_back_their_reasons(tmp_path):
    """A .reg written with the rejected candidates (red ellipses) reads back with accepted and
    reject_reason, so the averages count the stars only."""
    img, truth = simulate_field((200, 200), 25, seed=3, min_separation=15, edge=8, hot_pixels=12)
    full = psfkit.find_stars(img, gain=1.5, read_noise=6.0, keep_rejected=True)
    n_acc = int(np.sum(full["accepted"]))
    assert n_acc < len(full)  # the hot pixels are rejected candidates
    back = psfkit.read_star_list(psfkit.write_star_list(full, tmp_path / "all.reg"))
    assert len(back) == len(full)
    assert np.array_equal(back["accepted"], np.asarray(full["accepted"]))
    assert list(back["reject_reason"][~back["accepted"]]) == list(full["reject_reason"][~full["accepted"]])
    avg = psfkit.average(back)
    assert avg["n_stars"] == n_acc
    stars = full[full["accepted"]]
    assert avg["fwhm_x"]["median"] == pytest.approx(np.median(stars["fwhm_x"]), abs=1e-4)
    # a list of stars only has no accepted column
    assert "accepted" not in psfkit.read_star_list(psfkit.write_star_list(stars, tmp_path / "s.reg")).colnames


def test_lst_header_is_the_same_from_the_cli_and_the_web_page(tmp_path):
    """The web page sends back rows without find's settings: the header still says find's limits and box."""
    import inspect

    from astropy.table import Table

    from psfkit.detect.find import RejectionCriteria, find_stars
    from psfkit.io.catalog import LST_DEFAULTS, siril_parameters

    assert LST_DEFAULTS["threshold"] == inspect.signature(find_stars).parameters["threshold"].default
    assert LST_DEFAULTS["min_roundness"] == RejectionCriteria().min_roundness
    img, _ = simulate_field((256, 256), 30, seed=3, fwhm=3.4, flux_range=(3e3, 1e5), edge=10)
    stars = find_stars(img, gain=1.5, read_noise=6.0)
    cli = siril_parameters(stars)
    assert "roundness=0.30" in cli and f"radius={stars.meta['box'] // 2}" in cli
    # what the web page's export builds: the rows, the model and the threshold only
    page = Table({c: stars[c] for c in stars.colnames})
    page.meta.update(model="gaussian", settings={"threshold": 5.0, "model": "gaussian"})
    assert siril_parameters(page) == cli


def test_moffat_lst_header_minbeta_is_below_every_row(tmp_path):
    img, _ = simulate_field((256, 256), 30, seed=4, model="moffat", beta=1.4, fwhm=3.4, flux_range=(5e3, 2e5),
                            edge=10)
    stars = psfkit.find_stars(img, gain=1.5, read_noise=6.0, model="moffat")
    lines = psfkit.write_star_list(stars, tmp_path / "m.lst").read_text().splitlines()
    minbeta = float(lines[1].split("minbeta=")[1].split()[0])
    betas = [float(line.split("\t")[4]) for line in lines if not line.startswith("#")]
    assert min(betas) < 1.5 and minbeta <= min(betas)


@pytest.mark.parametrize("suffix", [".lst", ".reg"])
def test_average_of_a_list_without_snr_has_no_snr_weighted_mean(tmp_path, table, suffix, capsys):
    from psfkit.cli import main

    path = psfkit.write_star_list(table, tmp_path / f"s{suffix}")
    avg = psfkit.average(psfkit.read_star_list(path))
    assert np.isnan(avg["fwhm_x"]["snr_weighted_mean"]) and np.isfinite(avg["fwhm_x"]["mean"])
    try:
        main(["average", str(path)])
    except SystemExit as exc:
        assert not exc.code
    out = capsys.readouterr().out
    assert "no snr column" in out
    row = next(line for line in out.splitlines() if line.startswith("fwhm_x "))
    assert row.split()[-1] == "nan"
