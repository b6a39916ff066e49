"""A PSF image from the frame itself: the star at (49, 49) fitted with a Moffat, rendered on a 41x41
grid, saved twice (unit peak and unit sum) in OUTDIR.

Usage: python docs/examples/make_psf.py FRAME [OUTDIR]

FRAME is the Feder cutout (stellarphot's test frame ``stellarphot_feder_cutout_fwhm.fits``); OUTDIR
defaults to a new temporary folder (the copies in docs/examples are the ones docs/flux.md uses and
are never rewritten by this script).
"""
import sys
import tempfile
from pathlib import Path

import numpy as np
from astropy.io import fits

import psfkit

if len(sys.argv) < 2:
    sys.exit(__doc__)
frame = Path(sys.argv[1])
out = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tempfile.mkdtemp(prefix="psfkit-psf-"))
out.mkdir(parents=True, exist_ok=True)
star = psfkit.fit_star(str(frame), 49, 49, model="moffat")
model = psfkit.MoffatPSF(beta=star.beta)
wx = model.widths_from_fwhm(np.array([star.fwhm_x, star.fwhm_y]), np.array([star.beta] * 2))
p = np.array([[0.0, 1.0, 20.0, 20.0, wx[0], wx[1], np.radians(star.angle), star.beta]])
psf = model.evaluate(p, (41, 41))[0].reshape(41, 41)
fits.writeto(out / "psf_unit_peak.fits", psf / psf.max(), overwrite=True)
fits.writeto(out / "psf_unit_sum.fits", psf / psf.sum(), overwrite=True)
print(f"unit-peak array: sum = {(psf / psf.max()).sum():.2f}; unit-sum array: peak = {(psf / psf.sum()).max():.5f}")
print(f"wrote {out / 'psf_unit_peak.fits'} and {out / 'psf_unit_sum.fits'}")
