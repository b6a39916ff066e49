"""Frames in extreme units: detection that does not depend on the scale of the data.

Detection works in float32 (the background mesh, the smoothed frame) and squares pixel
values (variances): a frame whose values are near 1e35 overflows, one near 1e-300 underflows
to zero, and a float64 frame near 1e303 cannot be cast at all.  Such a frame is measured in
scaled units: divided by a power of two (exact in binary floating point: no value changes
but its exponent) that brings its robust level near 1000, then every result in data units
(fluxes, amplitudes, background, their errors, the RMSE, the noise) is multiplied back and
the magnitudes shifted by ``-2.5 log10(scale)``.  Frames with a level between 2**-20 and 2**20
(about 1e-6 to 1e6: every camera frame, calibrated frames in e-/s or in [0, 1]) are never
scaled, so their results are bit-for-bit what they were.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from astropy.table import Table

__all__ = ["working_scale", "scaled_image", "restore_units", "DATA_UNIT_COLUMNS"]

#: columns of a star table in the data's units (multiplied back by the scale)
DATA_UNIT_COLUMNS = ("background", "background_err", "amplitude", "amplitude_err", "flux_fit", "flux_err", "rmse")
_SAFE = (2.0**-20, 2.0**20)
_TARGET_EXPONENT = 10  # scaled level about 2**10


def working_scale(data: np.ndarray) -> float:
    """The power of two to divide ``data`` by before detection (1.0 for ordinary frames).

    The level is the larger of the median's size and the robust spread (1.4826 MAD) of the
    finite pixels (the largest finite size when both are 0), from a sample of 65536 pixels.

    Examples
    --------
    >>> working_scale(np.full((4, 4), 200.0) + np.arange(16).reshape(4, 4))
    1.0
    >>> working_scale(np.arange(16.0).reshape(4, 4) * 1e-300) < 1e-290
    True
    """
    flat = np.asarray(data).reshape(-1)
    sample = flat[:: max(1, flat.size // 65536)]
    sample = sample[np.isfinite(sample)].astype(np.float64)
    if not sample.size:
        return 1.0
    with np.errstate(over="ignore", invalid="ignore"):
        med = float(np.median(sample))
        mad = float(np.median(np.abs(sample - med)))
        level = max(abs(med), 1.4826 * mad)
        if not level > 0 or not math.isfinite(level):
            level = float(np.max(np.abs(sample)))
    if not level > 0 or not math.isfinite(level) or _SAFE[0] <= level <= _SAFE[1]:
        return 1.0
    return math.ldexp(1.0, round(math.log2(level)) - _TARGET_EXPONENT)


def scaled_image(image: Any, scale: float) -> Any:
    """The image divided by ``scale``, with gain and saturation in the new units (read noise is in e-)."""
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        data = np.asarray(image.data) / scale
    changes: dict[str, Any] = {}
    if image.gain is not None:
        changes["gain"] = image.gain * scale
    if image.saturation is not None:
        changes["saturation"] = image.saturation / scale
    return image.with_data(data, **changes)


def restore_units(table: Table, scale: float) -> Table:
    """A star table measured on a scaled image, back in the data's units (a new table).

    Examples
    --------
    >>> t = Table({"flux_fit": [2.0], "flux_err": [0.5], "mag": [-0.75257], "snr": [4.0]})
    >>> out = restore_units(t, 1024.0)
    >>> float(out["flux_fit"][0]), float(out["snr"][0]), round(float(out["mag"][0]), 3)
    (2048.0, 4.0, -8.278)
    """
    out = table.copy()
    for name in DATA_UNIT_COLUMNS:
        if name in out.colnames:
            out[name] = np.asarray(out[name], dtype=np.float64) * scale
    if "mag" in out.colnames:
        out["mag"] = np.asarray(out["mag"], dtype=np.float64) - 2.5 * math.log10(scale)
    meta = out.meta
    for key in ("background", "noise", "saturation", "read_noise_adu"):
        if isinstance(meta.get(key), (int, float)) and not isinstance(meta.get(key), bool):
            meta[key] = float(meta[key]) * scale
    if isinstance(meta.get("gain"), (int, float)) and not isinstance(meta.get("gain"), bool):
        meta["gain"] = float(meta["gain"]) / scale
    meta["data_scale"] = {"scale": scale, "note": "measured in units of the data divided by this power of two "
                          "(values too large or too small for float32); results are in the data's units"}
    return out
