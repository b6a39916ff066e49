"""Model comparison on one source: the true model is preferred, and its flux is the total flux."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits

import psfkit
from psfkit.compare import compare_models
from psfkit.simulate import add_noise, render_stars, star_params

GAIN, RN = 1.5, 5.0


def _frame(model, beta, flux, seed):
    rng = np.random.default_rng(seed)
    x0, y0 = 40.3 + rng.uniform(-0.5, 0.5), 39.6 + rng.uniform(-0.5, 0.5)
    p = star_params(model, x0, y0, flux, 4.0, 3.4, 25.0, beta)
    img = 150.0 + render_stars((80, 80), p, model=model)
    return add_noise(img, gain=GAIN, read_noise=RN, rng=rng)


@pytest.mark.parametrize("model,beta,expect", [("gaussian", None, "gaussian"), ("moffat", 2.5, "moffat2.5")])
def test_true_model_preferred(model, beta, expect):
    wins = 0
    n = 12
    fluxes = []
    for seed in range(n):
        img = _frame(model, beta, 3e4, seed)  # SNR ~ 100
        t = compare_models(img, 40, 40, gain=GAIN, read_noise=RN, frame_fwhm=3.7, betas=(1.5, 2.5, 4.0, 6.0))
        best = t["model"][np.argmax(t["preferred"])]
        # a free-beta Moffat that lands on the true beta counts for the Moffat truth
        wins += best == expect or (expect.startswith("moffat") and best == "moffat")
        row = t[t["model"] == expect][0]
        fluxes.append((row["flux_fit"] - 3e4) / row["flux_err"])
    assert wins / n >= 0.9
    assert abs(np.mean(fluxes)) < 1.0 and np.std(fluxes) < 1.5


def test_extended_source_flagged():
    img = _frame("gaussian", None, 3e4, 1)
    t = compare_models(img, 40, 40, gain=GAIN, read_noise=RN, frame_fwhm=2.0)
    assert t.meta["extended"]
    assert "aperture" in t.meta["note"]


def test_compare_cli_json_and_psf_image(tmp_path):
    img = _frame("gaussian", None, 3e4, 2)
    fits.writeto(tmp_path / "img.fits", img.astype(np.float32))
    yy, xx = np.mgrid[0:31, 0:31]
    psf = np.exp(-((xx - 15) ** 2 + (yy - 15) ** 2) / (2 * 1.6**2))  # unit peak
    fits.writeto(tmp_path / "psf.fits", psf)
    out = subprocess.run([sys.executable, "-m", "psfkit", "compare", str(tmp_path / "img.fits"), "--at", "41,38",
                          "--psf", str(tmp_path / "psf.fits"), "--json", "--gain", str(GAIN)],
                         capture_output=True, text=True, check=True)
    rows = json.loads(out.stdout)
    assert {r["model"] for r in rows} >= {"gaussian", "moffat", "psf_image"}
    assert sum(r["preferred"] for r in rows) == 1
    assert set(rows[0]) == {"model", "flux_fit", "flux_err", "fwhm", "reduced_chi2", "bic", "preferred"}
    bad = subprocess.run([sys.executable, "-m", "psfkit", "compare", str(tmp_path / "img.fits"), "--at", "500,5"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
