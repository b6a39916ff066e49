"""Model comparison on one source: the true model is preferred, and its flux is the total flux."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _helpers import run_cli
from astropy.io import fits

from psfkit.analysis.compare import compare_models
from psfkit.datasets.simulate import add_noise, render_stars, star_params

GAIN, RN = 1.5, 5.0


def _frame(model, beta, flux, seed):
    rng = np.random.default_rng(seed)
    x0, y0 = 40.3 + rng.uniform(-0.5, 0.5), 39.6 + rng.uniform(-0.5, 0.5)
    p = star_params(model, x0, y0, flux, 4.0, 3.4, 25.0, beta)
    img = 150.0 + render_stars((80, 80), p, model=model)
    return add_noise(img, gain=GAIN, read_noise=RN, rng=rng)


def test_extended_source_flagged():
    img = _frame("gaussian", None, 3e4, 1)
    t = compare_models(img, 40, 40, gain=GAIN, read_noise=RN, frame_fwhm=2.0).table
    assert t.meta["extended"]
    assert "aperture" in t.meta["note"]


def test_compare_cli_json_and_psf_image(tmp_path):
    img = _frame("gaussian", None, 3e4, 2)
    fits.writeto(tmp_path / "img.fits", img.astype(np.float32))
    yy, xx = np.mgrid[0:31, 0:31]
    psf = np.exp(-((xx - 15) ** 2 + (yy - 15) ** 2) / (2 * 1.6**2))  # unit peak
    fits.writeto(tmp_path / "psf.fits", psf)
    out = run_cli("compare", str(tmp_path / "img.fits"), "--at", "41,38", "--psf", str(tmp_path / "psf.fits"),
                  "--json", "--gain", str(GAIN), check=True)
    rows = json.loads(out.stdout)
    assert {r["model"] for r in rows} >= {"gaussian", "moffat", "psf_image"}
    assert sum(r["preferred"] for r in rows) == 1
    assert all(set(r) == {"model", "flux_fit", "flux_err", "fwhm", "reduced_chi2", "bic", "preferred"} for r in rows)
    # the aperture flux comes last; a point source: not the preferred one
    assert rows[-1]["model"] == "aperture" and not rows[-1]["preferred"] and rows[-1]["flux_fit"] > 0
    assert abs(rows[-1]["flux_fit"] - 3e4) < 3 * rows[-1]["flux_err"]
    bad = run_cli("compare", str(tmp_path / "img.fits"), "--at", "500,5")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def _psf_array():
    """A non-analytic PSF (slightly elliptical core + 3 per cent halo), peak 1."""
    yy, xx = np.mgrid[0:41, 0:41] - 20.0
    r2 = xx**2 + (yy * 1.15) ** 2
    return np.exp(-r2 / (2 * 1.6**2)) + 0.03 * np.exp(-r2 / (2 * 4.0**2))


def _truth_frame(truth, flux, seed):
    """One source of the true model on an 80x80 frame; Lorentzian and image PSF drawn from the model itself."""
    from psfkit.psf.models import ImagePSF, LorentzianPSF

    if truth == "gaussian":
        return _frame("gaussian", None, flux, seed)
    if truth == "moffat2.5":
        return _frame("moffat", 2.5, flux, seed)
    rng = np.random.default_rng(seed)
    x0, y0 = 40.2 + rng.uniform(-0.5, 0.5), 39.7 + rng.uniform(-0.5, 0.5)
    if truth == "lorentzian":
        mdl = LorentzianPSF(angle=True)
        p = np.array([[0.0, 1.0, x0, y0, 1.8, 1.5, 0.4, 1.0]])
        p[0, 1] = flux / mdl.flux_and_gradient(p)[0][0]
        vals = mdl.evaluate(p, (80, 80), k=6)[0]
    else:
        vals = ImagePSF(_psf_array()).evaluate(np.array([[0.0, flux, x0, y0]]), (80, 80))[0]
    return add_noise(150.0 + vals.reshape(80, 80), gain=GAIN, read_noise=RN, rng=rng)


# (true model, flux giving SNR ~50-60 for the true model's flux, what counts as preferring it)
TRUTHS = [("gaussian", 6000.0, {"gaussian"}), ("moffat2.5", 10000.0, {"moffat2.5", "moffat"}),
          ("lorentzian", 15000.0, {"lorentzian"}), ("psf_image", 6000.0, {"psf_image"})]


@pytest.mark.slow
@pytest.mark.parametrize("truth,flux,wins_if", TRUTHS)
def test_true_model_preferred_at_snr_50(truth, flux, wins_if):
    # the acceptance: at SNR ~50 (the threshold), with every model in the race (Gaussian, free-beta Moffat,
    # all of PixInsight's fixed betas, Lorentzian, and the PSF image when the truth is one), the true model
    # is preferred in >= 90% of 30 draws. For the Moffat truth the free-beta Moffat (which holds the truth)
    # counts as well; a neighbouring fixed beta does not. The true model's flux is unbiased with honest errors.
    wins, n, pulls, snr = 0, 30, [], []
    for seed in range(n):
        img = _truth_frame(truth, flux, 100 + seed)
        t = compare_models(img, 40, 40, gain=GAIN, read_noise=RN, frame_fwhm=3.7,
                           psf=_psf_array() if truth == "psf_image" else None).table
        assert "Poisson" in t.meta["weights"]
        wins += str(t["model"][np.argmax(t["preferred"])]) in wins_if
        row = t[t["model"] == truth][0]
        snr.append(row["flux_fit"] / row["flux_err"])
        if truth != "lorentzian":  # the Lorentzian's flux (within half the box) is checked below
            pulls.append((row["flux_fit"] - flux) / row["flux_err"])
    assert np.median(snr) >= 48
    assert wins / n >= 0.9, f"{truth}: preferred in {wins} of {n} draws"
    if pulls:
        assert abs(np.mean(pulls)) < 0.6 and 0.6 < np.std(pulls) < 1.4


@pytest.mark.slow
def test_neighbouring_betas_need_more_signal():
    # Moffat beta = 4 against its PixInsight neighbours 2.5 and 6: at SNR ~60 the data hold too little of
    # the wings (beta 4 won 32 of 40 draws, beta 6 seven), at SNR ~130 beta = 4 is preferred >= 90% (30 of 30)
    wins, n = 0, 12
    for seed in range(n):
        img = _frame("moffat", 4.0, 25000.0, 300 + seed)
        t = compare_models(img, 40, 40, gain=GAIN, read_noise=RN, frame_fwhm=3.7).table
        wins += str(t["model"][np.argmax(t["preferred"])]) in ("moffat4", "moffat")
    assert wins / n >= 0.9


def test_lorentzian_truth_and_its_flux_definition():
    from psfkit.psf.models import LorentzianPSF

    rng = np.random.default_rng(5)
    mdl = LorentzianPSF(angle=True)
    p = np.array([[0.0, 2000.0, 40.2, 39.7, 1.8, 1.5, 0.4, 1.0]])
    vals, _ = mdl.evaluate(p, (80, 80), k=6)
    img = add_noise(150.0 + vals.reshape(80, 80), gain=GAIN, read_noise=RN, rng=rng)
    t = compare_models(img, 40, 40, gain=GAIN, read_noise=RN, frame_fwhm=3.3).table
    assert t["model"][np.argmax(t["preferred"])] == "lorentzian"
    row = t[t["model"] == "lorentzian"][0]
    assert not row["flux_is_total"] and all(t["flux_is_total"][t["model"] != "lorentzian"])
    # its flux is the light within the box's inscribed circle-equivalent ellipse: check against the truth's
    box = t.meta["box"]
    truth = LorentzianPSF(flux_radius=box / 2.0).flux_and_gradient(p)[0][0]
    assert abs(row["flux_fit"] - truth) < 3 * row["flux_err"]
    assert "point source" in t.meta["note"] and "Lorentzian" in t.meta["note"]


def test_aperture_flux_and_residual_picture(tmp_path):
    from PIL import Image as PILImage

    from psfkit.analysis.compare import plot_model_residuals

    img = _frame("gaussian", None, 3e4, 7)
    result = compare_models(img, 40, 40, gain=GAIN, read_noise=RN, frame_fwhm=3.7)
    t, fits_ = result.table, result.fits
    ap = t.meta["aperture"]
    assert abs(ap["flux_total"] - 3e4) < 3 * ap["flux_total_err"]
    assert abs(ap["flux"] / ap["flux_total"] - ap["enclosed_fraction"]) < 1e-9
    path = plot_model_residuals(fits_, str(tmp_path / "res.png"), models=["gaussian", "moffat"])
    with PILImage.open(path) as im:
        w, h = im.size
    assert w > 300 and h > 200


def test_extended_source_among_stars_without_frame_fwhm(tmp_path):
    # six stars of FWHM 3 and a source three times wider: compare measures the frame's stars itself
    rng = np.random.default_rng(11)
    xs = np.array([20.0, 100.0, 180.0, 20.0, 100.0, 180.0])
    ys = np.array([20.0, 30.0, 20.0, 180.0, 170.0, 180.0])
    p = star_params("gaussian", xs, ys, 2e4, 3.0, 3.0, 0.0)
    wide = star_params("gaussian", 100.3, 100.6, 6e4, 9.5, 8.0, 20.0)
    img = add_noise(100.0 + render_stars((200, 200), np.vstack([p, wide])), gain=GAIN, read_noise=RN, rng=rng)
    t = compare_models(img, 100, 100, gain=GAIN, read_noise=RN).table
    assert t.meta["frame_fwhm"] == pytest.approx(3.0, rel=0.1)
    assert t.meta["extended"] and "aperture" in t.meta["note"]
    star = compare_models(img, 100, 30, gain=GAIN, read_noise=RN).table
    assert not star.meta["extended"]
    # the CLI says so, in words and in --json (the aperture entry becomes the preferred one)
    fits.writeto(tmp_path / "ext.fits", img.astype(np.float32))
    text = run_cli("compare", str(tmp_path / "ext.fits"), "--at", "100,100", "--gain", str(GAIN), check=True).stdout
    assert "looks extended" in text and "trust the aperture flux" in text
    js = run_cli("compare", str(tmp_path / "ext.fits"), "--at", "100,100", "--gain", str(GAIN), "--json", check=True)
    rows = json.loads(js.stdout)
    assert [r["model"] for r in rows if r["preferred"]] == ["aperture"]
    assert "trust the aperture flux" in js.stderr


def test_compare_cli_text_and_residuals(tmp_path):
    img = _frame("moffat", 2.5, 3e4, 3)
    fits.writeto(tmp_path / "img.fits", img.astype(np.float32))
    out = run_cli("compare", str(tmp_path / "img.fits"), "--at", "40,40", "--gain", str(GAIN),
                  "--residuals", str(tmp_path / "r.png"), check=True)
    assert "lorentzian" in out.stdout and "preferred" in out.stdout and "aperture (r =" in out.stdout
    assert (tmp_path / "r.png").stat().st_size > 1000


def test_compare_residuals_wants_a_png(tmp_path):
    img = _frame("gaussian", None, 3e4, 5)
    fits.writeto(tmp_path / "img.fits", img.astype(np.float32))
    out = run_cli("compare", str(tmp_path / "img.fits"), "--at", "40,40", "--residuals", str(tmp_path / "r.txt"))
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        f"psfkit: error: {tmp_path / 'r.txt'}: the residual picture is a PNG; the suffix must be .png"]
    assert not (tmp_path / "r.txt").exists()


def _cli_json(argv, capsys):
    """``psfkit <argv> --json`` run in-process: the parsed JSON of its standard output."""
    from psfkit.cli import main

    capsys.readouterr()
    try:
        main(argv + ["--json"])
    except SystemExit as exc:
        assert not exc.code, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


# bright, unsaturated point sources of real frames: every analytic model misses their shape by many
# sigma (reduced chi2 30-280: photon noise is small), yet they are as wide as the frame's other stars
REAL_BRIGHT_STARS = [("nites_j17490840_seq/J17490840-001.fit", 372.8, 545.2),
                     ("siril_qhy268m_rasa11_crop.fit.fz", 164.57, 204.85)]


@pytest.mark.parametrize("name,x,y", REAL_BRIGHT_STARS)
def test_real_bright_stars_are_point_sources(shared_data, capsys, name, x, y):
    path = shared_data / name
    result = compare_models(str(path), x, y)
    t = result.table
    analytic = ~np.isin(np.asarray(t["model"]), ("frame_psf", "psf_image"))
    assert np.nanmin(t["reduced_chi2"][analytic]) > 5  # the old rule called them extended for this
    assert t.meta["frame_fwhm"] is not None
    assert not result.extended and result.preferred != "aperture"
    assert float(t["fwhm"][t["preferred"]][0]) < 1.5 * t.meta["frame_fwhm"]
    # the command line gives the library's answer: no aperture preferred, the same preferred model
    rows = _cli_json(["compare", str(path), "--at", f"{x},{y}"], capsys)
    assert [r["model"] for r in rows if r["preferred"]] == [result.preferred]
    assert rows == result.answers()


def test_galaxy_like_source_is_extended(capsys, tmp_path):
    # an exponential disk (scale length 4 px, inclined) among eight stars of FWHM 3 px
    rng = np.random.default_rng(21)
    xs = np.array([25.0, 90.0, 160.0, 230.0, 30.0, 100.0, 170.0, 225.0])
    ys = np.array([30.0, 20.0, 35.0, 25.0, 220.0, 230.0, 215.0, 228.0])
    stars = render_stars((256, 256), star_params("gaussian", xs, ys, 3e4, 3.0, 3.0, 0.0))
    yy, xx = np.mgrid[0:256, 0:256]
    c, s = np.cos(0.5), np.sin(0.5)
    u = (xx - 128.3) * c + (yy - 127.6) * s
    v = (-(xx - 128.3) * s + (yy - 127.6) * c) / 0.7
    disk = 400.0 * np.exp(-np.hypot(u, v) / 4.0)
    img = add_noise(100.0 + stars + disk, gain=GAIN, read_noise=RN, rng=rng).astype(np.float32)
    result = compare_models(img, 128, 128, gain=GAIN, read_noise=RN)
    assert result.table.meta["frame_fwhm"] == pytest.approx(3.0, rel=0.1)
    assert result.extended and result.preferred == "aperture"
    assert "trust the aperture flux" in result.note
    # and a star of the same frame is not
    assert not compare_models(img, 90, 20, gain=GAIN, read_noise=RN).extended
    fits.writeto(tmp_path / "galaxy.fits", img)
    rows = _cli_json(["compare", str(tmp_path / "galaxy.fits"), "--at", "128,128", "--gain", str(GAIN),
                      "--read-noise", str(RN)], capsys)
    assert [r["model"] for r in rows if r["preferred"]] == ["aperture"]
    assert rows == result.answers()
