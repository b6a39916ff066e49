"""Bit flags of a fit and of aperture photometry, and their decoders.

Each star carries an integer ``flags`` (the PSF fit) and, after aperture photometry, an integer
``phot_flags``; every bit names one condition.  Use :func:`decode_flags` and
:func:`decode_phot_flags` to turn them into words.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "NOT_CONVERGED", "AT_BOUND", "SATURATED", "TOO_FEW_PIXELS", "NEAR_EDGE",
    "SINGULAR_COVARIANCE", "FIT_FAILED", "MASKED_PIXELS", "CENTER_MOVED", "NEIGHBOURS_MASKED",
    "NO_SOURCE", "NO_SOURCE_SNR", "FLUX_NOT_POSITIVE", "FLAG_DESCRIPTIONS", "decode_flags",
    "APERTURE_OFF_IMAGE", "APERTURE_MASKED", "SKY_FEW_PIXELS", "APERTURE_FLUX_NOT_POSITIVE",
    "PHOT_FLAG_DESCRIPTIONS", "decode_phot_flags",
]

NOT_CONVERGED = 1
AT_BOUND = 2
SATURATED = 4
TOO_FEW_PIXELS = 8
NEAR_EDGE = 16
SINGULAR_COVARIANCE = 32
FIT_FAILED = 64
MASKED_PIXELS = 128
CENTER_MOVED = 256
NEIGHBOURS_MASKED = 512
NO_SOURCE = 1024

#: Below this SNR (flux / flux_err) a fit found no significant source (``no_source``): psfkit find's
#: default ``min_snr``, the 3 sigma of a detection.
NO_SOURCE_SNR = 3.0
FLUX_NOT_POSITIVE = 2048

FLAG_DESCRIPTIONS: dict[int, str] = {
    NOT_CONVERGED: "not_converged: the fit stopped at the iteration limit",
    AT_BOUND: "at_bound: a parameter ended on its bound (e.g. width at its minimum)",
    SATURATED: "saturated: saturated pixels were left out of the fit",
    TOO_FEW_PIXELS: "too_few_pixels: hardly more pixels than parameters",
    NEAR_EDGE: "near_edge: the fitting box is cut by the image edge",
    SINGULAR_COVARIANCE: "singular_covariance: some uncertainties are undefined",
    FIT_FAILED: "fit_failed: the fit produced non-finite values",
    MASKED_PIXELS: "masked_pixels: NaN or user-masked pixels were left out",
    CENTER_MOVED: "center_moved: the fitted centre left the fitting box",
    NEIGHBOURS_MASKED: "neighbours_masked: pixels of brighter neighbours were left out",
    NO_SOURCE: "no_source: SNR (flux / flux_err) below 3: no significant source here (empty sky or noise)",
    FLUX_NOT_POSITIVE: "flux_not_positive: the fitted flux is zero or negative; mag and mag_err are NaN",
}

# bits of the ``phot_flags`` column (aperture photometry)
APERTURE_OFF_IMAGE = 1
APERTURE_MASKED = 2
SKY_FEW_PIXELS = 4
APERTURE_FLUX_NOT_POSITIVE = 8

PHOT_FLAG_DESCRIPTIONS: dict[int, str] = {
    APERTURE_OFF_IMAGE: "aperture_off_image: part of the aperture lies outside the image",
    APERTURE_MASKED: "aperture_masked: NaN or masked pixels inside the aperture were left out",
    SKY_FEW_PIXELS: "sky_few_pixels: fewer than 20 usable sky pixels (sky NaN below 5)",
    APERTURE_FLUX_NOT_POSITIVE: "aperture_flux_not_positive: the sky-subtracted aperture flux is zero or "
                                "negative (a source fainter than the sky's noise); mag_aper and mag_aper_err are NaN",
}


def decode_flags(flags: int | np.integer) -> list[str]:
    """Short names of the bits set in ``flags`` (e.g. ``['saturated', 'near_edge']``).

    Examples
    --------
    >>> decode_flags(5)
    ['not_converged', 'saturated']
    >>> decode_flags(0)
    []
    >>> decode_flags(4 | 2048)
    ['saturated', 'flux_not_positive']
    """
    value = int(flags)
    return [text.split(":")[0] for bit, text in FLAG_DESCRIPTIONS.items() if value & bit]


def decode_phot_flags(flags: int | np.integer) -> list[str]:
    """Short names of the bits set in a ``phot_flags`` value.

    Examples
    --------
    >>> decode_phot_flags(1 | 8)
    ['aperture_off_image', 'aperture_flux_not_positive']
    """
    value = int(flags)
    return [text.split(":")[0] for bit, text in PHOT_FLAG_DESCRIPTIONS.items() if value & bit]
