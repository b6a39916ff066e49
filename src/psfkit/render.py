"""Render a fitted model back onto pixels (for residuals and pictures)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .stamps import cut_stamps

__all__ = ["render_fit"]


def render_fit(fit: Any, *, shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(data, model, residual) on the fitting box of a :class:`~psfkit.psffit.StarFit`."""
    box = int(fit.table.meta["box"]) if shape is None else shape[0]
    d = fit.to_dict()
    data, inside, origin, _ = cut_stamps(fit.image.data, np.array([d["x_fit"]]), np.array([d["y_fit"]]), box)
    model = fit.model
    p = np.zeros((1, model.n_params))
    p[0, 0] = d["background"]
    p[0, model.i_x0] = d["x_fit"] - origin[0, 0]
    p[0, model.i_y0] = d["y_fit"] - origin[0, 1]
    if model.name == "image":
        p[0, 1] = d["flux_fit"]
    else:
        p[0, 1] = d["amplitude"]
        fx, fy = d["fwhm_x"], d["fwhm_y"]
        if model.param_names[-1] == "beta":  # Moffat, Lorentzian (beta fixed at 1)
            p[0, 7] = d["beta"]
        wx = model.widths_from_fwhm(np.array([fx]), np.array([p[0, -1]]))[0]
        wy = model.widths_from_fwhm(np.array([fy]), np.array([p[0, -1]]))[0]
        p[0, 4], p[0, 5] = wx, wy
        p[0, 6] = np.radians(d["angle"])
    values, _ = model.evaluate(p, (box, box))
    values = values.reshape(box, box)
    values = np.where(inside[0], values, np.nan)
    return data[0], values, data[0] - values
