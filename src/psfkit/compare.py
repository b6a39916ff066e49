"""Compare PSF models on one source: which profile fits, and what total flux each gives.

Every model is fitted by the one engine on the same box, the same pixels and
the same per-pixel weights, so chi-square, AIC and BIC are comparable.  The
weights come from a variance fixed before any model is fitted: the data smoothed
by a 3x3 mean (Poisson part, with the gain) plus the read noise, or the
background noise measured on the box border when the gain is unknown.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from astropy.table import Table
from scipy import ndimage

from .errors import PsfkitError
from .image import Image, as_image
from .psffit import fit_stars, resolve_model
from .stamps import auto_box, estimate_fwhm, refine_peak

__all__ = ["compare_models", "PIXINSIGHT_BETAS"]

#: fixed-beta Moffats PixInsight's DynamicPSF offers
PIXINSIGHT_BETAS = (1.5, 2.5, 4.0, 6.0, 8.0, 10.0)


def _common_error(img: Image, gain: float | None, read_noise: float | None) -> np.ndarray | None:
    g = gain if gain is not None else img.gain
    if not g:
        return None
    rn = (read_noise if read_noise is not None else img.read_noise) or 0.0
    filled = np.where(np.isfinite(img.data), img.data, np.nanmedian(img.data))
    smooth = ndimage.uniform_filter(filled.astype(float), 3)
    var = np.clip(smooth, 0, None) / g + (rn / g) ** 2
    return np.sqrt(np.maximum(var, 1e-12))


def compare_models(
    image: Image | np.ndarray | str,
    x: float,
    y: float,
    *,
    psf: np.ndarray | str | None = None,
    box: int | None = None,
    search_radius: float = 10.0,
    gain: float | None = None,
    read_noise: float | None = None,
    betas: tuple[float, ...] = PIXINSIGHT_BETAS,
    frame_fwhm: float | None = None,
    zero_point: float = 0.0,
) -> Table:
    """Fit one source with every model and rank them.

    Parameters
    ----------
    image : Image, array or path
    x, y : float
        0-based position near the source (the real peak is searched within ``search_radius``).
    psf : array or path, optional
        A PSF image (any normalisation) fitted as one more model.
    box : int, optional
        Common fitting box (default about 5 FWHM).
    gain, read_noise : float, optional
        e-/ADU and e-; default from the header.
    betas : tuple of float
        Fixed-beta Moffats to include (PixInsight's set by default).
    frame_fwhm : float, optional
        The frame's stellar FWHM, for the extended-source test; default: measured with
        :func:`psfkit.find_stars` on the frame when it has at least 5 other stars.

    Returns
    -------
    astropy.table.Table
        One row per model: ``model``, ``n_params``, ``flux_fit``, ``flux_err``, ``fwhm``,
        ``beta``, ``reduced_chi2``, ``chi2``, ``aic``, ``bic``, ``rmse``, ``preferred``;
        ``meta`` holds the position, box, whether the source looks extended and a note.
    """
    img = as_image(image)
    ny, nx = img.shape
    if not (-0.5 <= x <= nx - 0.5 and -0.5 <= y <= ny - 0.5):
        raise PsfkitError(f"position ({x:g}, {y:g}) is outside the image (x 0..{nx - 1}, y 0..{ny - 1})")
    px, py = refine_peak(img.data, x, y, search_radius=search_radius)
    fwhm0 = estimate_fwhm(img.data, px, py)
    box = int(box) if box else auto_box(fwhm0)
    box += 1 - box % 2
    error = _common_error(img, gain, read_noise)
    models: list[tuple[str, Any]] = [("gaussian", resolve_model("gaussian")), ("moffat", resolve_model("moffat"))]
    models += [(f"moffat{b:g}", resolve_model("moffat", beta=b)) for b in betas]
    if psf is not None:
        models.append(("psf_image", resolve_model(psf)))
    rows = []
    for name, mdl in models:
        t = fit_stars(img, [px], [py], box=box, model=mdl, search_radius=None, error=error,
                      angle=True, zero_point=zero_point)
        r = t[0]
        k = int(np.count_nonzero(mdl.default_free()))
        n = int(r["n_pixels_fit"])
        chi2 = float(r["reduced_chi2"]) * max(n - k, 1)
        rows.append(dict(model=name, n_params=k, flux_fit=float(r["flux_fit"]), flux_err=float(r["flux_err"]),
                         fwhm=float(r["fwhm"]), beta=float(r["beta"]), reduced_chi2=float(r["reduced_chi2"]),
                         chi2=chi2, aic=chi2 + 2 * k, bic=chi2 + k * math.log(max(n, 1)), rmse=float(r["rmse"]),
                         x_fit=float(r["x_fit"]), y_fit=float(r["y_fit"]), flags=int(r["flags"]),
                         note=t.meta.get("psf_normalisation_note", "")))
    table = Table(rows=rows)
    best = int(np.nanargmin(table["bic"]))
    table["preferred"] = np.arange(len(table)) == best
    # extended source?
    if frame_fwhm is None:
        try:
            from .detect import find_stars

            others = find_stars(img)
            far = np.hypot(others["x_fit"] - px, others["y_fit"] - py) > 2 * fwhm0
            if far.sum() >= 5:
                frame_fwhm = float(np.median(others["fwhm"][far]))
        except PsfkitError:
            frame_fwhm = None
    src_fwhm = float(table["fwhm"][best])
    wide = frame_fwhm is not None and src_fwhm > 1.5 * frame_fwhm
    bad_everywhere = bool(np.nanmin(table["reduced_chi2"]) > 5.0) if error is not None else False
    extended = bool(wide or bad_everywhere)
    table.meta.update(
        x=px, y=py, box=box, frame_fwhm=frame_fwhm, extended=extended, weights="common, fixed before fitting",
        note=("the source looks extended (wider than the frame's stars or fitted badly by every point-source "
              "model): a PSF flux underestimates it; trust an aperture flux") if extended else
             "point source: the preferred model's flux_fit is the total flux",
    )
    return table
