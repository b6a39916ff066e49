# a PSF image from the frame itself: the Feder star fitted, rendered on a 41x41 grid, saved twice
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = Path("data") / "stellarphot_feder_cutout_fwhm.fits"  # the Feder cut-out of stellarphot's test data

import numpy as np
from astropy.io import fits
import psfkit
star = psfkit.fit_star(str(DATA), 49, 49, model="moffat")
model = psfkit.MoffatPSF(beta=star.beta)
wx = model.widths_from_fwhm(np.array([star.fwhm_x, star.fwhm_y]), np.array([star.beta] * 2))
p = np.array([[0.0, 1.0, 20.0, 20.0, wx[0], wx[1], np.radians(star.angle), star.beta]])
psf = model.evaluate(p, (41, 41))[0].reshape(41, 41)
fits.writeto(HERE / "psf_unit_peak.fits", psf / psf.max(), overwrite=True)
fits.writeto(HERE / "psf_unit_sum.fits", psf / psf.sum(), overwrite=True)
print(f"unit-peak array: sum = {(psf / psf.max()).sum():.2f}; unit-sum array: peak = {(psf / psf.sum()).max():.5f}")
