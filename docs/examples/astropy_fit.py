# the question's code (astropy LevMarLSQFitter on an image PSF), on the Feder frame, with both PSF files
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = Path("data") / "stellarphot_feder_cutout_fwhm.fits"  # the Feder cut-out of stellarphot's test data

import warnings

import numpy as np
from astropy.io import fits
from astropy.modeling import fitting
from photutils.psf import ImagePSF

img = fits.getdata(str(DATA)).astype(float)
y, x = np.mgrid[: img.shape[0], : img.shape[1]]
for name in ("psf_unit_peak.fits", "psf_unit_sum.fits"):
    psf = fits.getdata(HERE / name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = fitting.LevMarLSQFitter()(ImagePSF(psf), x, y, img)
    print(f"{name}: flux = {m.flux.value:.6g}, x_0 = {m.x_0.value:.2f}, y_0 = {m.y_0.value:.2f}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = fitting.LevMarLSQFitter()(ImagePSF(psf, x_0=49, y_0=49), x, y, img - np.median(img))
    print(f"{name}, started at the star, background subtracted: flux = {m.flux.value:.6g}, "
          f"x_0 = {m.x_0.value:.2f}, y_0 = {m.y_0.value:.2f}")
