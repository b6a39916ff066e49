"""The radial profile of a fitted star, for the page's plot (data in, no fitting here)."""

from __future__ import annotations

from typing import Any

import numpy as np

from psfkit.psf.stamps import cut_stamps

__all__ = ["radial_profile"]


def radial_profile(fit: Any, *, max_points: int = 3000, bin_width: float = 0.5) -> dict[str, Any]:
    """Pixels of the fitting box and the fitted model against distance from the fitted centre.

    Returns ``radius`` and ``value`` (every usable pixel, thinned to ``max_points``),
    ``model`` (the fitted model at those pixels, from :meth:`StarFit.model_image`)
    and ``curve_radius`` / ``curve_model``: the model's mean in rings of ``bin_width`` px.
    """
    data, model, _ = fit.model_image()
    box = data.shape[0]
    d = fit.to_dict()
    _, _, origin, _ = cut_stamps(fit.image.data, np.array([d["x_fit"]]), np.array([d["y_fit"]]), box)
    yy, xx = np.mgrid[0:box, 0:box]
    r = np.hypot(xx + origin[0, 0] - d["x_fit"], yy + origin[0, 1] - d["y_fit"])
    ok = np.isfinite(data) & np.isfinite(model)
    r, v, m = r[ok], data[ok], model[ok]
    order = np.argsort(r, kind="stable")
    r, v, m = r[order], v[order], m[order]
    edges = np.arange(0.0, r.max() + bin_width, bin_width) if r.size else np.zeros(1)
    idx = np.digitize(r, edges) - 1
    counts = np.bincount(idx, minlength=len(edges))
    sums = np.bincount(idx, weights=m, minlength=len(edges))
    rsum = np.bincount(idx, weights=r, minlength=len(edges))
    has = counts > 0
    step = max(1, r.size // max_points)
    return {
        "radius": r[::step], "value": v[::step], "model": m[::step],
        "curve_radius": rsum[has] / counts[has], "curve_model": sums[has] / counts[has],
        "background": d["background"], "x_fit": d["x_fit"], "y_fit": d["y_fit"],
        "fwhm": d["fwhm"], "box": box,
    }
