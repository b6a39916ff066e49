"""docs/examples/make_psf.py writes where it is told (a temporary folder by default), never over the
PSF files the docs use."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
from astropy.io import fits

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_make_psf_writes_to_its_output_folder(shared_data, tmp_path):
    tracked = {p.name: _digest(p) for p in EXAMPLES.glob("*.fits")}
    out = subprocess.run([sys.executable, str(EXAMPLES / "make_psf.py"),
                          str(shared_data / "stellarphot_feder_cutout_fwhm.fits"), str(tmp_path / "psf")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert {p.name: _digest(p) for p in EXAMPLES.glob("*.fits")} == tracked
    peak = fits.getdata(tmp_path / "psf" / "psf_unit_peak.fits")
    assert peak.max() == 1.0 and abs(fits.getdata(tmp_path / "psf" / "psf_unit_sum.fits").sum() - 1.0) < 1e-9
    assert np.isclose(peak.sum(), float(out.stdout.split("sum = ")[1].split(";")[0]), atol=0.01)
