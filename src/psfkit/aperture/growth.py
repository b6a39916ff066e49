"""Curves of growth, the best aperture radius, and aperture corrections to the total flux."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from astropy.table import Table

from psfkit.aperture.overlap import circular_overlap
from psfkit.aperture.photometry import (
    DEFAULT_ANNULUS_FWHM,
    _bad_fit_bits,
    _ccd_error,
    _positions_and_fwhm,
    _resolve_gain,
)
from psfkit.aperture.sky import sky_annulus
from psfkit.aperture.sums import aperture_sums
from psfkit.errors import PsfkitError
from psfkit.io.image import Image, as_image
from psfkit.utils import robust_sigma

__all__ = ["CurveOfGrowth", "curve_of_growth", "optimal_radius", "aperture_correction", "model_enclosed_fraction"]


@dataclass(frozen=True)
class CurveOfGrowth:
    """Sky-subtracted flux in circles of growing radius, for each star (:func:`curve_of_growth`).

    Attributes
    ----------
    radii : ndarray (R,)
        Aperture radii (px).
    flux, flux_err, snr, area : ndarray (N, R)
        Flux, its CCD-equation error, their ratio, and the usable area (px^2) in each circle.
    sky, sky_sigma : ndarray (N,)
        Each star's sky level per pixel (shared by every radius) and one pixel's clipped scatter.
    n_sky : ndarray of int (N,)
        Sky pixels kept.

    Examples
    --------
    :func:`curve_of_growth` returns one; a star's flux grows with the radius:

    >>> import numpy as np
    >>> from psfkit.datasets.simulate import render_stars, star_params
    >>> data = 100.0 + render_stars((64, 64), star_params("gaussian", 32.0, 32.0, 1e4, 3.0, 3.0, 0.0))
    >>> growth = curve_of_growth(data, [32.0], [32.0], [1.0, 2.0, 4.0], fwhm=3.0)
    >>> growth.flux.shape, bool(np.all(np.diff(growth.flux[0]) > 0))
    ((1, 3), True)
    """

    radii: np.ndarray
    flux: np.ndarray
    flux_err: np.ndarray
    snr: np.ndarray
    area: np.ndarray
    sky: np.ndarray
    sky_sigma: np.ndarray
    n_sky: np.ndarray


def curve_of_growth(
    image: Image | np.ndarray | str,
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    radii: Sequence[float] | np.ndarray,
    *,
    fwhm: float | np.ndarray | None = None,
    annulus: tuple[float, float] | None = None,
    annulus_fwhm: tuple[float, float] = DEFAULT_ANNULUS_FWHM,
    gain: float | None = None,
    sky_estimator: str = "mean",
    mask: np.ndarray | None = None,
) -> CurveOfGrowth:
    """Sky-subtracted flux, error and SNR of each star in circular apertures of the given radii (px).

    The sky is measured once per star in the annulus and shared by every radius.

    Returns
    -------
    CurveOfGrowth
        ``radii`` (R,); ``flux``, ``flux_err``, ``snr``, ``area``, each (N, R); ``sky``, ``sky_sigma``,
        ``n_sky`` (N,).

    Examples
    --------
    >>> import numpy as np
    >>> from psfkit.datasets.simulate import add_noise, render_stars, star_params
    >>> img = add_noise(300.0 + render_stars((80, 80), star_params("gaussian", 40.2, 39.7, 2e5, 4.0, 4.0, 0.0)),
    ...                 gain=2.0, read_noise=6.0, rng=np.random.default_rng(1))
    >>> g = curve_of_growth(img, [40.2], [39.7], [2.0, 4.0, 8.0], fwhm=4.0, gain=2.0)
    >>> bool(np.all(np.diff(g.flux[0]) > 0)), round(float(g.flux[0, -1] / 2e5), 2)
    (True, 1.0)
    """
    img = as_image(image)
    xs, ys, f = _positions_and_fwhm(img, x, y, fwhm)
    g = _resolve_gain(img, gain)
    radii = np.atleast_1d(np.asarray(radii, dtype=float))
    if radii.size == 0 or np.any(radii <= 0):
        raise PsfkitError("the curve of growth needs positive radii")
    r_in, r_out = (annulus_fwhm[0] * f, annulus_fwhm[1] * f) if annulus is None else annulus
    sky, sky_sigma, n_sky = sky_annulus(img.data, xs, ys, r_in, r_out, estimator=sky_estimator, mask=mask)
    flux = np.empty((xs.size, radii.size))
    area = np.empty_like(flux)
    for k, r in enumerate(radii):
        s, a, _ = aperture_sums(img.data, xs, ys, r, mask=mask)
        flux[:, k] = s - sky * a
        area[:, k] = a
    err = _ccd_error(flux, area, sky_sigma[:, None], n_sky[:, None], g)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = flux / err
    return CurveOfGrowth(radii=radii, flux=flux, flux_err=err, snr=snr, area=area, sky=sky, sky_sigma=sky_sigma,
                         n_sky=n_sky)


def optimal_radius(growth: CurveOfGrowth) -> np.ndarray:
    """Per star, the radius of the curve of growth with the highest SNR (NaN where none is finite).

    Examples
    --------
    >>> import numpy as np
    >>> g = CurveOfGrowth(radii=np.array([1.0, 2.0, 3.0]), flux=np.ones((1, 3)), flux_err=np.ones((1, 3)),
    ...                   snr=np.array([[5.0, 9.0, 7.0]]), area=np.ones((1, 3)), sky=np.zeros(1),
    ...                   sky_sigma=np.ones(1), n_sky=np.ones(1, dtype=int))
    >>> optimal_radius(g)
    array([2.])
    """
    snr = np.where(np.isfinite(growth.snr), growth.snr, -np.inf)
    best = np.argmax(snr, axis=1)
    out = growth.radii[best].astype(float)
    out[~np.isfinite(snr.max(axis=1))] = np.nan
    return out


def _unit_profiles(model: Any, stars: Table, half: int) -> np.ndarray | None:
    """Each star's fitted PSF at unit flux, centred on a (2 half + 1)^2 grid: (N, pixels), or None.

    ``model`` is a model name (``meta["model"]`` of a star table) or a fitted model instance.
    "Unit flux" is the model's own ``flux``: the total flux for the Gaussian, the Moffat and an
    image PSF (unit sum), the light within its ``flux_radius`` for the Lorentzian (whose total
    diverges).  Analytic shapes come from the ``fwhm_x``, ``fwhm_y``, ``angle``, ``beta`` columns;
    an image PSF needs the instance (its name alone does not hold the array).
    """
    from psfkit.psf.models import ImagePSF, LorentzianPSF, get_model

    name = model if isinstance(model, str) else getattr(model, "name", "")
    n = len(stars)
    size = 2 * half + 1
    c = np.full(n, float(half))
    if name == "image":
        if not isinstance(model, ImagePSF):
            return None
        return model.evaluate(model.params_from_shape(c, c, flux=1.0), (size, size))[0]
    if name not in ("gaussian", "moffat", "lorentzian") or not all(
            col in stars.colnames for col in ("fwhm_x", "fwhm_y", "angle")):
        return None
    # the Lorentzian: the fitted instance keeps its flux radius (its flux definition)
    mdl = model if isinstance(model, LorentzianPSF) else get_model(name, angle=True)
    beta = np.asarray(stars["beta"], dtype=float) if name == "moffat" else None
    p = mdl.params_from_shape(c, c, np.asarray(stars["fwhm_x"], dtype=float), np.asarray(stars["fwhm_y"], dtype=float),
                              np.nan_to_num(np.asarray(stars["angle"], dtype=float)), flux=1.0, beta=beta)
    return mdl.evaluate(p, (size, size), k=4)[0]


def model_enclosed_fraction(
    model: Any, stars: Table, r: float, annulus: tuple[float, float] | None = None
) -> np.ndarray | None:
    """What a sky-subtracted circular aperture of radius r measures of each fitted star, per unit model flux.

    From the star's fitted PSF model (see :func:`_unit_profiles`; None when the model is not
    known well enough): the fraction of its ``flux`` inside the circle, minus, when ``annulus``
    (px) is given, the aperture's area times the model's mean level in the annulus (the wings
    that a local sky takes away).  For the Lorentzian it can exceed 1 (its flux is not a total).
    """
    n = len(stars)
    outer = r if annulus is None else max(r, float(annulus[1]))
    half = int(math.ceil(outer)) + 2
    vals = _unit_profiles(model, stars, half)
    if vals is None:
        return None
    size = 2 * half + 1
    x0 = np.full(n, float(half))
    w = circular_overlap(x0, x0, np.full(n, r), half).reshape(n, -1)
    frac = np.einsum("np,np->n", w, vals)
    if annulus is not None:
        grid = np.arange(size) - half
        d2 = (grid[None, :] ** 2 + grid[:, None] ** 2).ravel()
        ring = (d2 >= annulus[0] ** 2) & (d2 < annulus[1] ** 2)
        frac = frac - w.sum(axis=1) * vals[:, ring].mean(axis=1)
    return frac


def aperture_correction(
    image: Image | np.ndarray | str,
    stars: Table,
    radius: float,
    *,
    r_max: float | None = None,
    annulus: tuple[float, float] | None = None,
    gain: float | None = None,
    min_snr: float = 50.0,
    max_stars: int = 30,
    mask: np.ndarray | None = None,
    model: Any = None,
) -> dict[str, Any]:
    """Aperture correction from radius ``radius`` to the total flux, from the frame's bright isolated stars.

    For each bright (aperture SNR >= ``min_snr``) star with no other star
    within ``r_max + radius`` px, the ratio F(r_max) / F(radius) is measured on
    its curve of growth (stars flagged saturated, near the edge, with masked pixels or
    masked neighbours, or a failed fit are left out; a parameter at its bound is no reason);
    the median ratio is the correction to ``r_max``.  The
    light beyond ``r_max`` (a Moffat's wings hold about 1 per cent beyond 4 FWHM)
    comes from the stars' fitted PSF model when the table holds one (``fwhm_x``,
    ``fwhm_y``, ``angle``, ``beta`` and ``meta["model"]``, or the fitted model
    instance ``model``): the correction is divided by the model's enclosed fraction
    at ``r_max``.  The result corrects to the model's ``flux``: the total flux for
    the Gaussian, the Moffat and an image PSF, the Lorentzian's light within its
    ``flux_radius`` for the Lorentzian.

    Parameters
    ----------
    image : Image, 2-D array or path
    stars : Table
        Star table with ``x_fit``, ``y_fit``, ``fwhm`` (a :func:`psfkit.fit_stars` or
        :func:`psfkit.find_stars` result).
    radius : float
        Aperture radius (px) to correct.
    r_max : float, optional
        Largest aperture (default: the annulus' inner radius, 4 FWHM).
    annulus : (float, float), optional
        Sky annulus in px (default 4-6 FWHM of the frame).
    gain : float, optional
    min_snr : float
        Brightness cut for the stars used.
    max_stars : int
        Use at most this many (the brightest).
    mask : ndarray of bool, optional
        Pixels to leave out.
    model : str or PSFModel, optional
        The PSF model the stars were fitted with (default: ``stars.meta["model"]``); an
        image PSF must be given as the instance (e.g. ``psfkit.resolve_model(path)``).

    Returns
    -------
    dict
        ``correction`` (multiply an aperture flux by it), ``correction_err`` (its 1-sigma error,
        robust scatter / sqrt(n)), ``n_stars``, ``r_max``, ``tail_fraction`` (light beyond r_max,
        from the model; 0 without one), ``radius``.

    Examples
    --------
    On the sample image: the light beyond 1.5 FWHM, from its bright isolated stars:

    >>> import numpy as np
    >>> import psfkit
    >>> image = psfkit.load_image(psfkit.sample_image_path())
    >>> stars = psfkit.find_stars(image)
    >>> correction = aperture_correction(image, stars, 1.5 * float(np.median(stars["fwhm"])))
    >>> 1.0 < correction["correction"] < 1.2, correction["n_stars"] >= 1
    (True, True)
    """
    img = as_image(image)
    if len(stars) == 0:
        raise PsfkitError("no stars to measure an aperture correction on")
    fwhm = float(np.nanmedian(np.asarray(stars["fwhm"], dtype=float)))
    if not np.isfinite(fwhm) or fwhm <= 0:
        raise PsfkitError("the star table holds no usable FWHM for an aperture correction")
    r_max = float(r_max) if r_max is not None else DEFAULT_ANNULUS_FWHM[0] * fwhm
    if not radius < r_max:
        raise PsfkitError(f"the aperture ({radius:g} px) must be smaller than r_max ({r_max:g} px)")
    ann = annulus if annulus is not None else (r_max, r_max + 2.0 * fwhm)
    xs = np.asarray(stars["x_fit"], dtype=float)
    ys = np.asarray(stars["y_fit"], dtype=float)
    ok = np.isfinite(xs) & np.isfinite(ys)
    if "flags" in stars.colnames:
        ok &= (np.asarray(stars["flags"]) & _bad_fit_bits()[0]) == 0
    d = np.hypot(xs[:, None] - xs[None, :], ys[:, None] - ys[None, :])
    np.fill_diagonal(d, np.inf)
    ok &= d.min(axis=1) > r_max + radius if len(xs) > 1 else ok
    ny, nx = img.shape
    ok &= (xs - ann[1] >= 0) & (xs + ann[1] <= nx - 1) & (ys - ann[1] >= 0) & (ys + ann[1] <= ny - 1)
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        raise PsfkitError("no isolated, unflagged star far enough from the edge for an aperture correction")
    g = curve_of_growth(img, xs[idx], ys[idx], [radius, r_max], fwhm=fwhm, annulus=ann, gain=gain, mask=mask)
    snr = g.snr[:, 0]
    good = np.isfinite(snr) & (snr >= min_snr) & (g.flux[:, 0] > 0)
    if not good.any():
        raise PsfkitError(f"no isolated star reaches SNR {min_snr:g} for an aperture correction")
    order = np.argsort(-snr[good])[:max_stars]
    use = np.flatnonzero(good)[order]
    ratio = g.flux[use, 1] / g.flux[use, 0]
    corr = float(np.median(ratio))
    if ratio.size > 1:
        scatter = robust_sigma(ratio)
        # error of the median, and never below the statistical error of the brightest ratio
        rel = g.flux_err[use] / g.flux[use]
        floor = float(np.median(ratio * np.hypot(rel[:, 0], rel[:, 1]))) / math.sqrt(ratio.size)
        corr_err = max(1.2533 * scatter / math.sqrt(ratio.size), floor)
    else:
        rel = g.flux_err[use[0]] / g.flux[use[0]]
        corr_err = corr * float(np.hypot(rel[0], rel[1]))
    tail = 0.0
    if model is None:
        model = str(stars.meta.get("model", "")) if hasattr(stars, "meta") else ""
    name = model if isinstance(model, str) else getattr(model, "name", "")
    # light beyond r_max, and the wings the annulus' sky takes from the r_max aperture
    frac = model_enclosed_fraction(model, stars[idx[use]], r_max, annulus=ann) if name else None
    if frac is not None:
        tail = float(1.0 - np.median(frac))
    total = corr / (1.0 - tail)
    return {"correction": total, "correction_err": corr_err / (1.0 - tail), "n_stars": int(use.size),
            "radius": float(radius), "r_max": r_max, "tail_fraction": tail, "to_r_max": corr,
            "model": name or None}


def _model_correction(stars: Table, radius: float, why: str, annulus: tuple[float, float] | None = None,
                      model: Any = None) -> dict[str, Any]:
    """Aperture correction from the stars' fitted PSF model alone (when the frame has no usable bright star)."""
    if model is None:
        model = str(stars.meta.get("model", ""))
    name = model if isinstance(model, str) else getattr(model, "name", "")
    ok = np.ones(len(stars), dtype=bool)
    for col in ("fwhm_x", "fwhm_y") + (("beta",) if name == "moffat" else ()):
        if name != "image" and col in stars.colnames:
            ok &= np.isfinite(np.asarray(stars[col], float))
    frac = model_enclosed_fraction(model, stars[ok], radius, annulus=annulus) if ok.any() and name else None
    if frac is None or not np.any(frac > 0):
        return {"correction": np.nan, "correction_err": np.nan,
                "note": why + "; no usable fitted PSF model to fall back on"}
    frac = frac[frac > 0]
    corr = 1.0 / float(np.median(frac))
    spread = float(np.std(1.0 / frac)) / math.sqrt(frac.size) if frac.size > 1 else 0.0
    return {"correction": corr, "correction_err": spread, "n_stars": int(frac.size), "radius": float(radius),
            "model": name, "method": f"the fitted {name} model's enclosed fraction; no curve of growth: {why}"}
