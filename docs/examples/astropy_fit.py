"""The question's code (astropy LevMarLSQFitter on an image PSF), on the Feder frame, with both PSF files.

Usage: python docs/examples/astropy_fit.py FRAME [PSFDIR]   (PSFDIR: where make_psf.py wrote them;
default: the copies in docs/examples)
"""
import sys
from pathlib import Path

if len(sys.argv) < 2:
    sys.exit(__doc__)
DATA = Path(sys.argv[1])
HERE = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).resolve().parent

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
