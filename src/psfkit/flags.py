"""Bit flags of a fit, and their decoder.

Each star carries an integer ``flags``; every bit names one condition.  Use
:func:`decode_flags` to turn it into words.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "NOT_CONVERGED", "AT_BOUND", "SATURATED", "TOO_FEW_PIXELS", "NEAR_EDGE",
    "SINGULAR_COVARIANCE", "FIT_FAILED", "MASKED_PIXELS", "CENTER_MOVED", "NEIGHBOURS_MASKED",
    "NO_SOURCE", "NO_SOURCE_SNR", "FLAG_DESCRIPTIONS", "decode_flags",
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
}


def decode_flags(flags: int | np.integer) -> list[str]:
    """Short names of the bits set in ``flags`` (e.g. ``['saturated', 'near_edge']``).

    Examples
    --------
    >>> decode_flags(5)
    ['not_converged', 'saturated']
    >>> decode_flags(0)
    []
    """
    value = int(flags)
    return [text.split(":")[0] for bit, text in FLAG_DESCRIPTIONS.items() if value & bit]
