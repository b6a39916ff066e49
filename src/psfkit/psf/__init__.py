"""The PSF and its fit: models -> stamps and first guesses -> the batched engine -> measurement.

- :mod:`psfkit.psf.models`: Gaussian, Moffat, Lorentzian and image PSFs (value, Jacobian, flux, FWHM).
- :mod:`psfkit.psf.stamps`: cutting boxes around stars, first guesses, saturation masks.
- :mod:`psfkit.psf.engine`: :func:`fit_stamps`, the batched Levenberg-Marquardt (numpy reference);
  :mod:`psfkit.psf._compiled` is its compiled twin.
- :mod:`psfkit.psf.fit`: :func:`fit_star` and :func:`fit_stars` (the star table).
- :mod:`psfkit.psf.measure`: FWHM, roundness, angle, flux, magnitudes from fitted parameters.
- :mod:`psfkit.psf.render`, :mod:`psfkit.psf.report`: a fit drawn as an image and written as text.
"""

from psfkit._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "PSFModel": "models", "GaussianPSF": "models", "MoffatPSF": "models", "LorentzianPSF": "models",
    "ImagePSF": "models", "FWHM_PER_SIGMA": "models", "get_model": "models",
    "cut_stamps": "stamps", "estimate_fwhm": "stamps",
    "NoiseModel": "engine", "StampFit": "engine", "fit_stamps": "engine",
    "StarFit": "fit", "fit_star": "fit", "fit_stars": "fit",
    "magnitude": "measure",  # not measure(): psfkit.psf.measure is its module once imported
})
