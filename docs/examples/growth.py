# curve of growth of the Feder star: background-subtracted sum inside radius r (pixel centres inside),
# sky = median of the annulus 25-35 px, error from the CCD equation with the measured sky noise
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[2] / "shared" / "data" / "stellarphot_feder_cutout_fwhm.fits"  # ../shared/data beside the checkout

import numpy as np
import psfkit
img = psfkit.load_image(str(DATA)).data.astype(float)
star = psfkit.fit_star(img, 49, 49)
yy, xx = np.mgrid[:img.shape[0], :img.shape[1]]
r = np.hypot(xx - star.x_fit, yy - star.y_fit)
ann = img[(r >= 25) & (r < 35)]
sky, sky_sigma = np.median(ann), 1.4826 * np.median(np.abs(ann - np.median(ann)))
print(f"PSF fit (Gaussian): flux {star.flux_fit:.0f} +- {star.flux_err:.0f}, FWHM {star.fwhm:.2f} px")
for radius in (3, 5, 7, 10, 14, 20):
    inside = r <= radius
    n = inside.sum()
    flux = (img[inside] - sky).sum()
    err = np.sqrt(n * sky_sigma**2 * (1 + n / ann.size))   # sky-limited (no gain in this header)
    print(f"r = {radius:2d} px ({radius / star.fwhm:.1f} FWHM): {n:4d} px, flux {flux:7.0f} +- {err:4.0f}, SNR {flux / err:5.1f}")
