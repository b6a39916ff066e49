"""Render a fitted model back onto pixels (for residuals and pictures)."""

from __future__ import annotations

from typing import Any

import numpy as np

from psfkit.psf.engine import model_values
from psfkit.psf.stamps import cut_stamps

__all__ = ["model_params", "render_fit", "render_stars_frame"]


def model_params(model: Any, table: Any, origin: np.ndarray) -> np.ndarray:
    """Model parameter rows (N, n_params) of a star table's fits, in the pixels of boxes whose
    first pixel is at ``origin`` (N, 2: x, y); the inverse of :func:`psfkit.psf.measure.measure`.
    """
    col = lambda name: np.asarray(table[name], dtype=float)  # noqa: E731
    x0, y0 = col("x_fit") - origin[:, 0], col("y_fit") - origin[:, 1]
    if model.name == "image":
        return model.params_from_shape(x0, y0, flux=col("flux_fit"), background=col("background"))
    return model.params_from_shape(
        x0, y0, col("fwhm_x"), col("fwhm_y"), col("angle"), amplitude=col("amplitude"),
        beta=col("beta") if model.param_names[-1] == "beta" else None, background=col("background"))


def render_fit(fit: Any, *, shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(data, model, residual) on the fitting box of a :class:`~psfkit.psf.fit.StarFit`."""
    box = int(fit.table.meta["box"]) if shape is None else shape[0]
    d = fit.to_dict()
    data, inside, origin, _ = cut_stamps(fit.image.data, np.array([d["x_fit"]]), np.array([d["y_fit"]]), box)
    values, _ = fit.model.evaluate(model_params(fit.model, fit.table, origin), (box, box))
    values = values.reshape(box, box)
    values = np.where(inside[0], values, np.nan)
    return data[0], values, data[0] - values


def render_stars_frame(table: Any, model: Any, shape: tuple[int, int], *, box: int, out: np.ndarray | None = None,
                       sign: float = 1.0) -> np.ndarray:
    """The light of a star table's fitted models on a frame (backgrounds left out), each star on
    a ``box`` x ``box`` patch around its centre; rows with a non-finite fit are skipped.

    With ``out`` the light times ``sign`` is added to it in place (``sign=-1``: a residual frame
    without a second frame in memory) and ``out`` is returned.
    """
    frame = np.zeros(shape) if out is None else out
    keep = np.ones(len(table), dtype=bool)
    for name in ("x_fit", "y_fit", "amplitude", "fwhm_x", "fwhm_y"):
        if name in table.colnames:
            keep &= np.isfinite(np.asarray(table[name], dtype=float))
    table = table[keep]
    if len(table) == 0:
        return frame
    half = box // 2
    origin = np.stack([np.round(np.asarray(table["x_fit"], dtype=float)) - half,
                       np.round(np.asarray(table["y_fit"], dtype=float)) - half], axis=1).astype(int)
    p = model_params(model, table, origin)
    p[:, 0] = 0.0
    values = model_values(model, p, (box, box)).reshape(len(table), box, box)
    ny, nx = shape
    for (ox, oy), v in zip(origin, values):
        x0, y0 = max(ox, 0), max(oy, 0)
        x1, y1 = min(ox + box, nx), min(oy + box, ny)
        if x0 < x1 and y0 < y1:
            frame[y0:y1, x0:x1] += sign * v[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
    return frame
