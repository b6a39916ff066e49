"""Readable text blocks for a star fit (Siril's PSF output, with uncertainties)."""

from __future__ import annotations

import math
from typing import Any

from psfkit.flags import decode_flags

__all__ = ["star_report"]


def _pm(value: float, err: float, fmt: str = ".4f") -> str:
    if err is None or not math.isfinite(err):
        return f"{value:{fmt}}"
    return f"{value:{fmt}} +- {err:{fmt}}"


def star_report(fit: Any, *, normalised: bool = False) -> str:
    """Text block for one :class:`~psfkit.psf.fit.StarFit`.

    ``normalised=True`` also shows B and A in [0, 1] for integer data
    (value / saturation level, Siril's view); the stored values stay in data units.
    """
    d = fit.to_dict()
    meta = fit.table.meta
    lines = [f"PSF fit ({meta.get('model_repr', meta.get('model'))}, box {meta.get('box')} px):"]
    lines.append(f"B = {_pm(d['background'], d['background_err'], '.6g')}")
    lines.append(f"A = {_pm(d['amplitude'], d['amplitude_err'], '.6g')}")
    sat = meta.get("saturation")
    if normalised and sat:
        lines.append(f"B, A in [0, 1] (/ {sat:g}) = {d['background'] / sat:.6f}, {d['amplitude'] / sat:.6f}")
    lines.append(f"x0 = {_pm(d['x_fit'], d['x_err'])} px")
    lines.append(f"y0 = {_pm(d['y_fit'], d['y_err'])} px")
    scale = meta.get("pixel_scale")
    for axis in ("x", "y"):
        text = f"FWHM{axis.upper()} = {_pm(d[f'fwhm_{axis}'], d[f'fwhm_{axis}_err'], '.3f')} px"
        if scale:
            text += f" = {_pm(d[f'fwhm_{axis}_arcsec'], d[f'fwhm_{axis}_arcsec_err'], '.3f')}\""
        lines.append(text)
    if meta.get("model") == "moffat":
        lines.append(f"beta = {_pm(d['beta'], d['beta_err'], '.3f')}")
    lines.append(f"r = {_pm(d['roundness'], d['roundness_err'], '.3f')}")
    lines.append(f"Angle = {_pm(d['angle'], d['angle_err'], '.2f')} deg")
    lines.append(f"RMSE = {d['rmse']:.4g}   reduced chi2 = {d['reduced_chi2']:.3f}   pixels = {d['n_pixels_fit']}")
    lines.append(f"Flux = {_pm(d['flux_fit'], d['flux_err'], '.6g')} (total, to infinity)   SNR = {d['snr']:.1f}")
    lines.append(f"Magnitude = {_pm(d['mag'], d['mag_err'], '.4f')} (zero point {meta.get('zero_point', 0):g})")
    if scale:
        lines.append(f"Image scale = {scale:.4f} \"/px ({meta.get('scale_rule')})")
    names = decode_flags(d["flags"])
    lines.append("Flags = " + (", ".join(names) if names else "none"))
    if meta.get("psf_normalisation_note"):
        lines.append("Note: " + meta["psf_normalisation_note"])
    return "\n".join(lines)
