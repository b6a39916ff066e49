"""Whole-frame detection against truth and on the real frames."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import run_cli
from scipy.spatial import cKDTree

import psfkit
from psfkit import flags as F
from psfkit.datasets.simulate import simulate_field


def _match(table, truth, radius=1.5):
    tree = cKDTree(np.stack([table["x_fit"], table["y_fit"]], axis=1))
    d, i = tree.query(np.stack([truth["x"], truth["y"]], axis=1))
    return d, i


@pytest.fixture(scope="module")
def isolated_field():
    img, truth = simulate_field((768, 768), 250, seed=11, hot_pixels=25, cosmic_rays=15, gradient=0.6,
                                min_separation=14.0, edge=6, fwhm=3.2, roundness=0.85, angle_deg=25)
    return img, truth


def test_isolated_field_completeness_and_purity(isolated_field):
    img, truth = isolated_field
    table = psfkit.find_stars(img, gain=1.5, read_noise=6.0)
    d, i = _match(table, truth)
    bright = truth["snr"] >= 10
    completeness = np.mean(d[bright] < 1.5)
    assert completeness >= 0.99, completeness
    # false detections: list entries with no true star within 1.5 px
    tt = cKDTree(np.stack([truth["x"], truth["y"]], axis=1))
    d2, _ = tt.query(np.stack([table["x_fit"], table["y_fit"]], axis=1))
    assert np.sum(d2 > 1.5) <= 0.01 * len(table)
    # hot pixels and cosmic rays were candidates, rejected as too narrow, with their reason counted
    assert table.meta["summary"]["rejected"].get("too_narrow", 0) >= 10
    # brightest first
    assert np.all(np.diff(np.asarray(table["flux_fit"])) <= 0)


def test_isolated_field_accuracy_matches_single_star_fit(isolated_field):
    img, truth = isolated_field
    table = psfkit.find_stars(img, gain=1.5, read_noise=6.0, angle=True)
    d, i = _match(table, truth)
    sel = (d < 1.5) & (truth["snr"] >= 30)
    rows = table[i[sel]]
    tr = truth[sel]
    pull_x = (rows["x_fit"] - tr["x"]) / rows["x_err"]
    assert 0.8 < np.std(pull_x) < 1.25
    fwhm_true = np.sqrt(tr["fwhm_x"] * tr["fwhm_y"])
    pull_f = (rows["fwhm"] - fwhm_true) / rows["fwhm_err"]
    assert abs(np.mean(pull_f)) < 0.3 and 0.75 < np.std(pull_f) < 1.3
    # the same stars fitted one by one at the true positions agree with the batch
    single = psfkit.fit_stars(img, tr["x"][:20], tr["y"][:20], gain=1.5, read_noise=6.0, box=int(table.meta["box"]),
                              angle=True)
    assert np.allclose(single["x_fit"], rows["x_fit"][:20], atol=3 * np.asarray(rows["x_err"][:20]))


def test_crowded_field_neighbours_do_not_inflate_fwhm():
    img, truth = simulate_field((400, 400), 350, seed=5, fwhm=3.0, roundness=1.0, flux_range=(2e3, 2e5),
                                min_separation=6.0, edge=6)
    masked = psfkit.find_stars(img, gain=1.5, read_noise=6.0)
    unmasked = psfkit.find_stars(img, gain=1.5, read_noise=6.0, mask_neighbours=False)
    found = {}
    for name, t in (("masked", masked), ("unmasked", unmasked)):
        d, i = _match(t, truth)
        found[name] = np.mean(d < 1.5)
    # neighbours' light no longer spoils fits: more true stars survive the shape tests
    assert found["masked"] >= 0.99 and found["masked"] > found["unmasked"]
    assert abs(np.median(masked["fwhm"]) - 3.0) < 0.1
    assert np.percentile(np.abs(np.asarray(masked["fwhm"]) - 3.0), 95) < 0.3
    assert np.any((np.asarray(masked["flags"]) & F.NEIGHBOURS_MASKED) != 0)


def test_saturated_stars_kept_and_flagged():
    img, truth = simulate_field((300, 300), 40, seed=2, flux_range=(1e4, 3e6), saturation=30000.0,
                                min_separation=20, edge=10)
    table = psfkit.find_stars(img, gain=1.5, read_noise=6.0, saturation=30000.0)
    d, i = _match(table, truth)
    sat = np.asarray(truth["saturated"])
    assert sat.sum() >= 3
    assert np.all(d[sat] < 1.0)
    assert np.all((np.asarray(table["flags"])[i[sat]] & F.SATURATED) != 0)
    # the wings still fit: the FWHM of saturated stars is the stellar FWHM
    fwhm_true = np.sqrt(truth["fwhm_x"] * truth["fwhm_y"])[sat]
    assert np.all(np.abs(np.asarray(table["fwhm"])[i[sat]] - fwhm_true) < 0.15 * fwhm_true)


def test_keep_rejected_gives_reasons():
    img, truth = simulate_field((256, 256), 30, seed=4, hot_pixels=20, min_separation=15, edge=8)
    table = psfkit.find_stars(img, gain=1.5, read_noise=6.0, keep_rejected=True)
    rej = table[~table["accepted"]]
    assert len(rej) > 0
    assert all(r in table.meta["reject_reasons"] for r in rej["reject_reason"])
    counts = table.meta["summary"]["rejected"]
    assert sum(counts.values()) == len(rej)
    # turning the FWHM test off keeps the hot pixels
    loose = psfkit.find_stars(img, gain=1.5, read_noise=6.0, min_fwhm_ratio=None, min_fwhm=None, min_snr=None,
                              max_rmse_ratio=None)
    assert len(loose) > table.meta["summary"]["n_stars"]


def test_bad_criterion_is_a_clean_error():
    with pytest.raises(psfkit.PsfkitError):
        psfkit.find_stars(np.random.default_rng(0).normal(size=(64, 64)), min_fwhmm=1.0)


REAL = [
    "siril_qhy268m_rasa11_crop.fit.fz", "nites_j17490840_seq/J17490840-001.fit", "eso_ntt_emmi_r_sep_image.fits",
    "iraf_devpix_m51.fits", "saao1m_ste3_raw_a8280271.fits", "panoptes_canon_bayer/PAN001_20160909T081434_solved.fits",
    "stellarphot_feder_cutout_fwhm.fits", "tetra3_blackfly_2019-07-29T204726_Alt40_Azi-135.fits",
    "plate_m44_1910-04-01.fits", "dss_poss1_m67_M6707HH.fits", "spitzer_glimpse_irac2_crowded.fits",
]


@pytest.mark.parametrize("name", REAL)
def test_every_real_frame_runs(shared_data, name):
    table = psfkit.find_stars(shared_data / name)
    assert len(table) >= 1
    assert np.all(np.isfinite(table["x_fit"])) and np.all(np.isfinite(table["fwhm"]))
    assert np.all(table["fwhm"] > 0.8)
    assert table.meta["summary"]["n_stars"] == len(table)


def test_siril_frame_at_least_52_stars_and_saturated_flagged(shared_data):
    table = psfkit.find_stars(shared_data / "siril_qhy268m_rasa11_crop.fit.fz")
    assert len(table) >= 52
    img = psfkit.load_image(shared_data / "siril_qhy268m_rasa11_crop.fit.fz")
    from scipy import ndimage

    lab, n = ndimage.label(img.data >= img.saturation)
    centres = ndimage.center_of_mass(img.data >= img.saturation, lab, range(1, n + 1))
    big = [c for c, size in zip(centres, ndimage.sum(np.ones_like(lab), lab, range(1, n + 1))) if size >= 3]
    assert len(big) >= 2
    tree = cKDTree(np.stack([table["x_fit"], table["y_fit"]], axis=1))
    for cy, cx in big:
        d, j = tree.query([cx, cy])
        assert d < 2.0
        assert table["flags"][j] & F.SATURATED
    assert table.meta["pixel_scale"] == pytest.approx(1.237, abs=0.01)
    assert "fwhm_arcsec" in table.colnames


def test_pure_noise_gives_an_empty_list_not_an_error(tmp_path):
    noise = np.random.default_rng(0).normal(100.0, 5.0, size=(80, 80))
    table = psfkit.find_stars(noise, keep_rejected=True)
    assert len(table) == 0 and {"x_fit", "fwhm", "accepted", "reject_reason"} <= set(table.colnames)
    assert table.meta["summary"]["n_stars"] == 0
    from astropy.io import fits

    fits.writeto(tmp_path / "noise.fits", noise.astype(np.float32))
    out = run_cli("find", str(tmp_path / "noise.fits"), "-o", str(tmp_path / "s.csv"))
    assert out.returncode == 0, out.stderr
    assert "0 stars" in out.stdout
    assert len(psfkit.read_star_list(tmp_path / "s.csv")) == 0


def test_bloated_bright_stars_do_not_set_the_box():
    """On a photographic plate (no SATURATE) the brightest stars are the widest: the frame's
    FWHM, and so the fitting box, come from the typical star, not from the bloated disks."""
    from psfkit.datasets.simulate import add_noise, render_stars, star_params

    img, truth = simulate_field((800, 800), 150, seed=8, fwhm=3.0, roundness=1.0, flux_range=(3e3, 3e4),
                                min_separation=20, edge=20)
    rng = np.random.default_rng(9)
    xy = rng.uniform(40, 760, (30, 2))  # more bloated disks than half of any top-40 probe
    big = star_params("gaussian", xy[:, 0], xy[:, 1], 3e6, 14.0, 14.0, 0.0)
    frame = img + add_noise(render_stars(img.shape, big), gain=1.5, rng=rng)
    table = psfkit.find_stars(frame, gain=1.5, read_noise=6.0)
    assert table.meta["box"] <= 15  # about 4 FWHM of the typical star, not 4 x 14 px
    near_big = cKDTree(xy).query(np.stack([truth["x"], truth["y"]], axis=1))[0] < 40
    d, _ = _match(table, truth)
    assert np.mean(d[(truth["snr"] >= 10) & ~near_big] < 1.5) >= 0.95
    assert abs(np.median(table["fwhm"]) - 3.0) < 0.15


def test_moffat_field_beta_from_the_bright_stars_fixed_for_all():
    """model='moffat': beta measured on the bright stars (truth 3) and fixed for every star, so faint
    stars keep a usable flux error (a free beta made them all 'low_snr')."""
    img, truth = simulate_field((500, 500), 120, seed=4, model="moffat", beta=3.0, fwhm=3.2, roundness=0.95,
                                flux_range=(800, 2e5), min_separation=15, edge=12)
    table = psfkit.find_stars(img, gain=1.5, read_noise=6.0, model="moffat")
    assert abs(table.meta["frame_beta"] - 3.0) < 0.4
    assert np.allclose(table["beta"], table.meta["frame_beta"])
    d, i = _match(table, truth)
    assert np.mean(d[truth["snr"] >= 10] < 1.5) >= 0.97
    sel = d < 1.5
    pull = (np.asarray(table["flux_fit"])[i[sel]] - truth["flux"][sel]) / np.asarray(table["flux_err"])[i[sel]]
    assert abs(np.median(pull)) < 0.5
    free = psfkit.find_stars(img, gain=1.5, read_noise=6.0, model="moffat", beta="free")
    assert free.meta["frame_beta"] is None and np.std(free["beta"]) > 0.1
