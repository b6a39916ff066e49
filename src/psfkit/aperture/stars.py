"""Both fluxes for every star of a star table: the PSF flux and the corrected aperture flux."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from astropy.table import Table

from psfkit.aperture.growth import _model_correction, aperture_correction
from psfkit.aperture.photometry import (
    DEFAULT_ANNULUS_FWHM,
    DEFAULT_RADIUS_FWHM,
    _bad_fit_bits,
    aperture_photometry,
)
from psfkit.errors import PsfkitError
from psfkit.io.image import Image, as_image
from psfkit.utils import robust_sigma

__all__ = ["star_photometry"]


def star_photometry(
    image: Image | np.ndarray | str,
    stars: Table,
    *,
    radius: float | None = None,
    radius_fwhm: float = DEFAULT_RADIUS_FWHM,
    annulus: tuple[float, float] | None = None,
    annulus_fwhm: tuple[float, float] = DEFAULT_ANNULUS_FWHM,
    elliptical: bool = False,
    gain: float | None = None,
    sky_estimator: str = "mean",
    correction: dict[str, Any] | float | None = "auto",
    mask: np.ndarray | None = None,
    zero_point: float | None = None,
    model: Any = None,
) -> Table:
    """Both fluxes for every star of a star table: the PSF flux and the corrected aperture flux.

    The apertures sit on the fitted centres (``x_fit``, ``y_fit``) with radii in units of
    the frame's median FWHM (one radius for all stars, so one aperture correction holds
    for all).  The aperture correction comes from the frame's bright isolated stars
    (:func:`aperture_correction`) unless given.

    Parameters
    ----------
    image : Image, 2-D array or path
    stars : Table
        From :func:`psfkit.fit_stars` or :func:`psfkit.find_stars` (or :func:`psfkit.read_star_list`).
    radius, radius_fwhm, annulus, annulus_fwhm, gain, sky_estimator, mask
        As in :func:`aperture_photometry`.
    elliptical : bool
        Elliptical apertures of each star's fitted shape (same area as the circle).
    correction : "auto", dict, float or None
        "auto": measured on the frame; a dict from :func:`aperture_correction`; a number
        (error 0); None: no correction (``flux_aper_total`` is then NaN).
    zero_point : float, optional
        Default: the star table's ``meta["zero_point"]`` or 0.
    model : str or PSFModel, optional
        The model the stars were fitted with, for the light beyond the largest aperture
        (default ``stars.meta["model"]``; give the instance for an image PSF).  The corrected
        aperture flux then estimates the same quantity as ``flux_fit``: the total flux, or
        for the Lorentzian its light within ``flux_radius``.

    Returns
    -------
    astropy.table.Table
        The star table with the columns of :func:`aperture_photometry` added, plus
        ``flux_aper_total``, ``flux_aper_total_err`` (the corrected aperture flux) and
        ``flux_ratio`` = ``flux_fit / flux_aper_total`` with ``flux_ratio_err``; ``meta["flux_ratio_bright"]``
        holds its median over the bright (aperture SNR >= 50) unflagged stars: near 1 when the PSF model
        holds the stars' light, below 1 when the stars' wings are heavier than the model's.

    Examples
    --------
    Both fluxes of every star of the sample image; their ratio is near 1:

    >>> import numpy as np
    >>> import psfkit
    >>> image = psfkit.load_image(psfkit.sample_image_path())
    >>> table = psfkit.star_photometry(image, psfkit.find_stars(image))
    >>> 0.8 < float(np.nanmedian(table["flux_ratio"])) < 1.2
    True
    """
    img = as_image(image)
    for col in ("x_fit", "y_fit", "fwhm"):
        if col not in stars.colnames:
            raise PsfkitError(f"the star table has no {col!r} column")
    out = stars.copy()
    if len(out) == 0:
        raise PsfkitError("the star table is empty")
    zp = zero_point if zero_point is not None else float(stars.meta.get("zero_point", 0.0) or 0.0)
    fwhm = float(np.nanmedian(np.asarray(stars["fwhm"], dtype=float)))
    if not np.isfinite(fwhm) or fwhm <= 0:
        raise PsfkitError("the star table holds no usable FWHM")
    rad = float(radius) if radius is not None else radius_fwhm * fwhm
    ann = annulus if annulus is not None else (annulus_fwhm[0] * fwhm, annulus_fwhm[1] * fwhm)
    ellipse = None
    if elliptical:
        ellipse = (np.asarray(stars["fwhm_x"], float), np.asarray(stars["fwhm_y"], float),
                   np.nan_to_num(np.asarray(stars["angle"], float)))
    xs = np.asarray(stars["x_fit"], dtype=float)
    ys = np.asarray(stars["y_fit"], dtype=float)
    good = np.isfinite(xs) & np.isfinite(ys)
    phot = aperture_photometry(img, xs[good], ys[good], fwhm=fwhm, radius=rad, annulus=ann,
                               ellipse=None if ellipse is None else tuple(e[good] for e in ellipse),
                               gain=gain, sky_estimator=sky_estimator, mask=mask, zero_point=zp)
    for name in phot.colnames:
        if name in ("x", "y"):
            continue
        col = np.full(len(out), np.nan) if phot[name].dtype.kind == "f" else np.zeros(len(out), dtype=phot[name].dtype)
        col[good] = phot[name]
        out[name] = col
    if isinstance(correction, str) and correction == "auto":
        try:
            corr = aperture_correction(img, stars, rad, r_max=ann[0], annulus=ann, gain=gain, mask=mask, model=model)
            corr["method"] = "curve of growth of the frame's bright isolated stars"
        except PsfkitError as exc:
            corr = _model_correction(stars, rad, str(exc), annulus=ann, model=model)
    elif correction is None:
        corr = {"correction": np.nan, "correction_err": np.nan, "note": "no aperture correction asked"}
    elif isinstance(correction, dict):
        corr = correction
    else:
        corr = {"correction": float(correction), "correction_err": 0.0}
    c, ce = float(corr["correction"]), float(corr["correction_err"])
    fa, fe = np.asarray(out["flux_aper"], float), np.asarray(out["flux_aper_err"], float)
    total = fa * c
    # the correction's error is common to every star: kept separate in meta, and added here
    total_err = np.sqrt((fe * c) ** 2 + (fa * ce) ** 2)
    out["flux_aper_total"] = total
    out["flux_aper_total_err"] = total_err
    if "flux_fit" in out.colnames:
        ff = np.asarray(out["flux_fit"], float)
        fferr = np.asarray(out["flux_err"], float) if "flux_err" in out.colnames else np.zeros(len(out))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = ff / total
            out["flux_ratio"] = ratio
            out["flux_ratio_err"] = np.abs(ratio) * np.hypot(fferr / ff, total_err / total)
        # the diagnostic in one number: the median ratio of the bright, clean stars
        bright = np.isfinite(ratio) & (np.asarray(out["snr_aper"], float) >= 50) & (np.asarray(out["phot_flags"]) == 0)
        if "flags" in out.colnames:
            bright &= (np.asarray(out["flags"]) & _bad_fit_bits()[1]) == 0
        if bright.any():
            r = ratio[bright]
            med = float(np.median(r))
            spread = robust_sigma(r)
            out.meta["flux_ratio_bright"] = {"median": med, "err": 1.2533 * spread / math.sqrt(r.size),
                                             "n_stars": int(r.size),
                                             "rule": "snr_aper >= 50, no phot_flags, no fit flag but at_bound"}
    out.meta.update({f"phot_{k}": v for k, v in phot.meta.items()})
    if annulus is None:
        out.meta["phot_annulus_rule"] = f"{ann[0]:.2f}-{ann[1]:.2f} px ({annulus_fwhm[0]:g}-{annulus_fwhm[1]:g} FWHM)"
    if radius is None:
        out.meta["phot_radius_rule"] = f"{rad:.2f} px ({radius_fwhm:g} FWHM of the frame's median {fwhm:.2f} px)"
    out.meta["aperture_correction"] = {k: (v.item() if hasattr(v, "item") else v) for k, v in corr.items()}
    return out
