"""Fit the PSF of stars at given positions: :func:`fit_stars` and :func:`fit_star`.

Both go through the one batched engine (:func:`psfkit.psf.engine.fit_stamps`).
The Gaussian (and Moffat) fit follows Siril by default: a first fit without
the angle (exact erf pixel integration), then a fit with the angle for the
stars whose widths differ (``angle="auto"``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.table import Table

from psfkit import flags as F
from psfkit.errors import PsfkitError
from psfkit.io.image import Image, as_image
from psfkit.psf.columns import COLUMN_ORDER, set_units
from psfkit.psf.engine import NoiseModel, StampFit, fit_stamps
from psfkit.psf.measure import measure
from psfkit.psf.models import FWHM_PER_SIGMA, ImagePSF, PSFModel, _EllipticalModel, get_model
from psfkit.psf.stamps import (
    auto_box,
    brightest_source,
    clip_box,
    cut_stamps,
    estimate_fwhm,
    initial_params,
    refine_peak,
    saturation_mask,
)

__all__ = ["fit_stars", "fit_star", "StarFit", "resolve_model", "COLUMN_ORDER"]

ANGLE_MODES = ("auto", True, False)


def resolve_model(
    model: str | PSFModel | np.ndarray | Any = "gaussian",
    *,
    beta: float | None = None,
    angle: bool = True,
    sampling: str = "integrated",
    oversampling: int = 1,
) -> PSFModel:
    """A model from a name ('gaussian', 'moffat'), a PSF array, a path to a PSF FITS file, or a model."""
    if isinstance(model, PSFModel):
        return model
    if isinstance(model, np.ndarray):
        try:
            return ImagePSF(model, oversampling=oversampling)
        except ValueError as exc:
            raise PsfkitError(f"PSF image: {exc}") from None
    name = str(model)
    if name.lower() in ("gaussian", "moffat", "lorentzian"):
        try:
            return get_model(name, angle=angle, beta=beta, sampling=sampling)
        except ValueError as exc:
            raise PsfkitError(str(exc)) from None
    # a file holding a PSF image
    from pathlib import Path

    from astropy.io import fits

    path = Path(name)
    if not path.exists():
        raise PsfkitError(f"unknown model {name!r}: not 'gaussian' or 'moffat', and no such PSF file")
    try:
        with fits.open(path) as hdul:
            frame_psf = "PSFVAR" in hdul
            arr = next((h.data for h in hdul if getattr(h, "is_image", False) and h.data is not None), None)
            over = next((h.header.get("OVERSAMP") for h in hdul if h.header.get("OVERSAMP")), None)
    except Exception as exc:
        raise PsfkitError(f"{path}: not a readable FITS PSF ({exc.__class__.__name__})") from None
    if frame_psf:  # the frame's own PSF written by `psfkit psf`, with its variation across the field
        from psfkit.psf.empirical import FramePSF

        return FramePSF.read(path).model()
    if arr is None:
        raise PsfkitError(f"{path}: holds no image data for a PSF")
    arr = np.asarray(arr, dtype=float)
    if arr.ndim != 2:
        raise PsfkitError(f"{path}: a PSF must be 2-D, this one has shape {arr.shape}")
    try:
        return ImagePSF(arr, oversampling=int(over) if over else oversampling)
    except ValueError as exc:
        raise PsfkitError(f"{path}: {exc}") from None


def _windowed_moments(stamps: np.ndarray, usable: np.ndarray, p: np.ndarray):
    """Angle and axis ratio from second moments weighted by the round stage-1 Gaussian."""
    n, h, w = stamps.shape
    yy, xx = np.mgrid[0:h, 0:w]
    dx = xx[None] - p[:, 2, None, None]
    dy = yy[None] - p[:, 3, None, None]
    s = np.sqrt(p[:, 4] * p[:, 5])[:, None, None]
    win = np.exp(-0.5 * (dx**2 + dy**2) / (s * s))
    val = np.where(usable, stamps - p[:, 0, None, None], 0.0) * win
    tot = val.sum(axis=(1, 2))
    tot = np.where(tot > 0, tot, np.nan)
    mxx = (val * dx * dx).sum(axis=(1, 2)) / tot
    myy = (val * dy * dy).sum(axis=(1, 2)) / tot
    mxy = (val * dx * dy).sum(axis=(1, 2)) / tot
    theta = 0.5 * np.arctan2(2 * mxy, mxx - myy)
    tr = mxx + myy
    det = mxx * myy - mxy**2
    disc = np.sqrt(np.clip(tr * tr / 4 - det, 0, None))
    l1, l2 = tr / 2 + disc, tr / 2 - disc
    # undo the window: for a Gaussian of variance v under a window of variance s^2 the windowed
    # variance is l = v s^2 / (v + s^2), so v = l s^2 / (s^2 - l) (the raw ratio is pulled towards 1)
    s2 = (s * s)[:, 0, 0]
    l1 = l1 * s2 / np.maximum(s2 - l1, 0.05 * s2)
    l2 = l2 * s2 / np.maximum(s2 - l2, 0.05 * s2)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.sqrt(np.clip(l2 / l1, 0.05, 1.0))
    return np.nan_to_num(theta), np.nan_to_num(ratio, nan=1.0)


def _weights_and_noise(img: Image, gain, read_noise, error, n_box):
    g = gain if gain is not None else img.gain
    rn = read_noise if read_noise is not None else img.read_noise
    noise = None
    if error is None and g:
        noise = NoiseModel(gain=float(g), read_noise=float(rn or 0.0) / float(g))
    return noise


def fit_stars(
    image: Image | np.ndarray | str,
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    *,
    box: int | None = None,
    model: str | PSFModel | np.ndarray = "gaussian",
    beta: float | None = None,
    angle: bool | str = "auto",
    sampling: str = "integrated",
    search_radius: float | None = 3.0,
    gain: float | None = None,
    read_noise: float | None = None,
    error: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    saturation: float | None | str = "auto",
    zero_point: float = 0.0,
    oversampling: int = 1,
    max_iter: int = 100,
    stamp_mask: Callable[[np.ndarray, int], np.ndarray] | None = None,
    neighbour_light: Callable[[np.ndarray, int], np.ndarray] | None = None,
) -> Table:
    """Fit the PSF of the stars near the given positions, all in one batch.

    Parameters
    ----------
    image : Image, 2-D array or path
    x, y : array-like
        0-based pixel positions (x = column, y = row) near each star.
    box : int, optional
        Fitting box size in pixels (odd); default from the first star's FWHM (about 5 FWHM).
    model : {"gaussian", "moffat"}, PSFModel, 2-D array or path to a PSF FITS
        The PSF model.  An array or file is an image PSF (any normalisation).  With the frame's own
        PSF (a file written by ``psfkit psf``) and a noise model, each star's ``fwhm``, ``fwhm_x``,
        ``fwhm_y``, ``roundness`` and ``angle`` are its own (the PSF stretched by a per-star linear
        map, :func:`psfkit.psf.frame_shape.measure_shapes`); the PSF's at the star's place stay as
        ``fwhm_analytic``, ``roundness_analytic`` and ``angle_analytic``.
    beta : float, optional
        Fix the Moffat beta.
    angle : {"auto", True, False}
        "auto" (Siril's way): fit without the angle, then with it where the
        widths differ.  True: always fit the angle.  False: never.
    sampling : {"integrated", "point"}
        Pixel-integrated (default) or point-sampled analytic models.
    search_radius : float or None
        Move each position to the real peak within this radius first
        (hot pixels ignored); None keeps the positions as given.
    gain, read_noise : float, optional
        e-/ADU and e- (default: from the image header).  With a gain the fit
        is weighted by the Poisson + read noise variance of the model.
    error : ndarray, optional
        1-sigma error per pixel (same shape as the image); overrides gain.
    mask : ndarray of bool, optional
        True for pixels to ignore.
    saturation : float, None or "auto"
        Pixels at or above this value are left out ("auto": from the image).
    zero_point : float
        Magnitude zero point.
    oversampling : int
        Oversampling of an image PSF given as an array.
    max_iter : int
        Iteration limit per Levenberg-Marquardt pass.
    stamp_mask : callable, optional
        ``stamp_mask(origin, box) -> (N, box, box) bool``: per-star pixels to
        leave out (True), given each stamp's origin; used by the star finder to
        mask brighter neighbours (flag ``neighbours_masked``).
    neighbour_light : callable, optional
        ``neighbour_light(origin, box) -> (N, box, box)``: the light of other stars on each
        stamp (data units), taken out of it before the fit; with a gain its photon noise is
        added to each pixel's variance.  (:func:`psfkit.find_stars` uses it to fit each star
        with its neighbours' fitted models subtracted.)

    Returns
    -------
    astropy.table.Table
        One row per star with the columns of :mod:`psfkit.psf.columns` (their
        meaning in ``docs/columns.md``), the settings in ``table.meta``.

    Examples
    --------
    >>> import numpy as np
    >>> import psfkit
    >>> from psfkit.datasets.simulate import simulate_field
    >>> data, truth = simulate_field((128, 128), 10, fwhm=3.0, seed=1, edge=12, min_separation=15)
    >>> stars = psfkit.fit_stars(data, truth["x"], truth["y"], gain=1.5, read_noise=6.0)
    >>> pull = (stars["flux_fit"] - truth["flux"]) / stars["flux_err"]
    >>> len(stars), bool(np.all(np.abs(pull) < 4))
    (10, True)
    """
    setup = _setup(image, x, y, box=box, model=model, beta=beta, angle=angle, sampling=sampling,
                   search_radius=search_radius, gain=gain, read_noise=read_noise, error=error, mask=mask,
                   saturation=saturation, zero_point=zero_point, oversampling=oversampling, max_iter=max_iter,
                   stamp_mask=stamp_mask)
    if setup is None:  # no star: the table of one fit at the centre, emptied (same columns, types and meta)
        img = as_image(image)
        ny, nx = img.data.shape
        return fit_stars(img, [(nx - 1) / 2.0], [(ny - 1) / 2.0], box=box, model=model, beta=beta, angle=angle,
                         sampling=sampling, search_radius=None, gain=gain, read_noise=read_noise, error=error,
                         mask=mask, saturation=saturation, zero_point=zero_point, oversampling=oversampling,
                         max_iter=max_iter)[:0]
    table = _fit_setup(setup, angle=angle, max_iter=max_iter, zero_point=zero_point,
                       neighbour_light=neighbour_light)[0]
    frame_psf = getattr(setup.mdl, "frame_psf", None)
    if frame_psf is not None and len(table) and (setup.noise is not None or setup.variance is not None):
        # the PSF's own shape at each star's place is no measurement of the star: each star's own, the
        # frame's PSF stretched by its linear map (psfkit.psf.frame_shape), as find gives it
        from psfkit.psf.empirical import _measure_own_shapes

        _measure_own_shapes(table, np.arange(len(table)), table, setup.img, frame_psf, gain, read_noise)
        set_units(table)
    return table


@dataclass
class _Setup:
    """The stamps of a :func:`fit_stars` call, cut and masked once (a caller may fit them again)."""

    img: Image
    mdl: PSFModel
    xs: np.ndarray
    ys: np.ndarray
    rx: np.ndarray
    ry: np.ndarray
    box: int
    stamps: np.ndarray
    inside: np.ndarray
    origin: np.ndarray
    usable: np.ndarray
    flags: np.ndarray
    variance: np.ndarray | None
    noise: NoiseModel | None
    sat_level: float | None
    error: np.ndarray | None


def _setup(image, x, y, *, box=None, model="gaussian", beta=None, angle="auto", sampling="integrated",
           search_radius=3.0, gain=None, read_noise=None, error=None, mask=None, saturation="auto", zero_point=0.0,
           oversampling=1, max_iter=100, stamp_mask=None) -> _Setup | None:
    """:func:`fit_stars`' checks, model, positions, box and stamps (None for no star)."""
    img = as_image(image)
    data = img.data
    xs = np.atleast_1d(np.asarray(x, dtype=float))
    ys = np.atleast_1d(np.asarray(y, dtype=float))
    if xs.shape != ys.shape:
        raise PsfkitError("x and y must have the same length")
    ny, nx = data.shape
    if xs.size == 0:
        return None
    outside = (xs < -0.5) | (xs > nx - 0.5) | (ys < -0.5) | (ys > ny - 0.5) | ~np.isfinite(xs) | ~np.isfinite(ys)
    if np.any(outside):
        i = int(np.flatnonzero(outside)[0])
        raise PsfkitError(f"position ({xs[i]:g}, {ys[i]:g}) is outside the image (x 0..{nx - 1}, y 0..{ny - 1})")
    if angle not in ANGLE_MODES:
        raise PsfkitError(f"angle must be 'auto', True or False, not {angle!r}")
    if gain is not None and not (np.isfinite(gain) and gain > 0):
        raise PsfkitError(f"the gain must be a positive number of e-/ADU, got {gain}")
    if read_noise is not None and not (np.isfinite(read_noise) and read_noise >= 0):
        raise PsfkitError(f"the read noise must be a number of e- >= 0, got {read_noise}")
    if not np.isfinite(zero_point):
        raise PsfkitError(f"the zero point must be a finite number, got {zero_point}")
    if error is not None and np.shape(error) != data.shape:
        raise PsfkitError(f"the error array has shape {np.shape(error)}, the image {data.shape}")
    if mask is not None and np.shape(mask) != data.shape:
        raise PsfkitError(f"the mask has shape {np.shape(mask)}, the image {data.shape}")
    mdl = resolve_model(model, beta=beta, angle=bool(angle), sampling=sampling, oversampling=oversampling)

    if search_radius:
        pos = np.array([refine_peak(data, a, b, search_radius=search_radius) for a, b in zip(xs, ys)]).reshape(-1, 2)
        rx, ry = pos[:, 0], pos[:, 1]
    else:
        rx, ry = xs.copy(), ys.copy()
    if box is None:
        if isinstance(mdl, ImagePSF):
            box = auto_box(mdl._fwhm)
        elif len(rx):
            box = auto_box(np.median([estimate_fwhm(data, a, b) for a, b in zip(rx[:50], ry[:50])]))
        else:  # no star: an empty table (its box is never used)
            box = auto_box(3.0)
    box = clip_box(box, data.shape, minimum=3)  # odd, clipped to the image and to MAX_BOX

    stamps, inside, origin, cut = cut_stamps(data, rx, ry, box)
    usable = inside & np.isfinite(stamps)
    n = len(rx)
    flags = np.zeros(n, dtype=np.int64)
    flags[cut] |= F.NEAR_EDGE
    if mask is not None:
        mstamps, _, _, _ = cut_stamps(np.asarray(mask, dtype=float), rx, ry, box)
        user = np.nan_to_num(mstamps) > 0
        flags[np.any(user & inside, axis=(1, 2))] |= F.MASKED_PIXELS
        usable &= ~user
    flags[np.any(inside & ~np.isfinite(stamps), axis=(1, 2))] |= F.MASKED_PIXELS
    if stamp_mask is not None:
        neighbours = np.asarray(stamp_mask(origin, box), dtype=bool) & inside
        flags[np.any(neighbours, axis=(1, 2))] |= F.NEIGHBOURS_MASKED
        usable &= ~neighbours
    sat_level = img.saturation if saturation == "auto" else saturation
    if sat_level is not None:
        sat = saturation_mask(stamps, sat_level) & inside
        flags[np.any(sat, axis=(1, 2))] |= F.SATURATED
        usable &= ~sat
    variance = None
    if error is not None:
        estamps, _, _, _ = cut_stamps(np.asarray(error, dtype=float), rx, ry, box)
        variance = np.where(usable, estamps**2, np.inf)
    noise = _weights_and_noise(img, gain, read_noise, error, box)
    return _Setup(img=img, mdl=mdl, xs=xs, ys=ys, rx=rx, ry=ry, box=box, stamps=stamps, inside=inside, origin=origin,
                  usable=usable, flags=flags, variance=variance, noise=noise, sat_level=sat_level, error=error)


def _fit_setup(setup: _Setup, *, angle="auto", max_iter=100, zero_point=0.0, neighbour_light=None,
               start: np.ndarray | None = None) -> tuple[Table, StampFit]:
    """Fit the stamps of a :class:`_Setup` (from ``start``, stamp coordinates, where given: rows of NaN
    start from the stamps as :func:`fit_stars` does); the table of :func:`fit_stars` and the fit.
    """
    img, mdl, xs, ys, rx, ry, box = setup.img, setup.mdl, setup.xs, setup.ys, setup.rx, setup.ry, setup.box
    stamps, inside, origin, usable = setup.stamps, setup.inside, setup.origin, setup.usable
    variance, noise, sat_level = setup.variance, setup.noise, setup.sat_level
    flags = setup.flags.copy()
    n = len(rx)
    frame_path = getattr(mdl, "frame_psf", None) is not None and (noise is not None or variance is not None)
    raw = stamps
    if neighbour_light is not None:
        light = np.where(inside, np.asarray(neighbour_light(origin, box), dtype=float), 0.0)
        stamps = stamps - light
        if noise is not None:  # their photon noise stays in the pixels: added to the model's variance
            variance = np.clip(light, 0.0, None) / noise.gain
    centre = np.stack([rx - origin[:, 0], ry - origin[:, 1]], axis=1)
    if start is None:
        guessed = np.ones(n, dtype=bool)
        p0 = initial_params(mdl, stamps, usable, centre)
    else:  # the caller's start where it has one (a fit of the same stamps before), the stamps' elsewhere
        guessed = ~np.all(np.isfinite(start), axis=1)
        p0 = np.array(start, dtype=float)
        if guessed.any():
            p0[guessed] = initial_params(mdl, stamps[guessed], usable[guessed], centre[guessed])
    if "x_origin" in mdl.param_names:  # a PSF that varies across the frame: where each stamp lies on it
        p0[:, mdl.index("x_origin")] = origin[:, 0]
        p0[:, mdl.index("y_origin")] = origin[:, 1]
    if np.any(saturation_mask(raw, sat_level) & inside) if sat_level is not None else False:
        satd = np.any(saturation_mask(raw, sat_level) & inside, axis=(1, 2)) & guessed
        p0[satd, 1] *= 2.0  # a saturated peak hides a higher amplitude

    # the centre may not wander far out of its box (a fit that would is a failure, flagged below as
    # center_moved): without this bound such fits ran to max_iter with x0 in the millions, and on a
    # photographic plate they were 45 % of the candidates and 90 % of the fitting time
    lo, hi = mdl.bounds(n)
    lo[:, [mdl.i_x0, mdl.i_y0]] = -1.0
    hi[:, [mdl.i_x0, mdl.i_y0]] = float(box)
    p0[:, mdl.i_x0] = np.clip(p0[:, mdl.i_x0], -0.5, box - 0.5)
    p0[:, mdl.i_y0] = np.clip(p0[:, mdl.i_y0], -0.5, box - 0.5)
    common = dict(weight_mask=usable, variance=variance, noise=noise, max_iter=max_iter, bounds=(lo, hi))
    stage = "single"
    if isinstance(mdl, _EllipticalModel) and angle in ("auto", True):
        free1 = mdl.default_free()
        free1[mdl.i_angle] = False
        p0[:, mdl.i_angle] = 0.0
        fit1 = fit_stamps(mdl, stamps, p0, free=free1, **common)
        fit = fit1
        p1 = fit1.params.copy()
        theta, ratio = _windowed_moments(stamps, usable, p1)
        wx, wy = p1[:, mdl.i_width_x], p1[:, mdl.i_width_y]
        differ = (np.abs(wx - wy) > 0.01) | (ratio < 0.98)
        # Siril's thresholds are absolute; at high signal-to-noise a far smaller elongation is
        # significant (and a 45-degree one leaves wx == wy in the angle-free fit): fit the angle too
        # when the moments' elongation exceeds 3 sigma of the widths, or the chi-square rejects stage 1
        e1 = fit1.errors
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.hypot(e1[:, mdl.i_width_x], e1[:, mdl.i_width_y]) / np.sqrt(wx * wy)
        dof1 = np.maximum(fit1.n_pixels - fit1.n_free, 1)
        differ |= (((1.0 - ratio) > 3.0 * np.nan_to_num(rel, nan=np.inf))
                   | (fit1.chi2 > dof1 + 3.0 * np.sqrt(2.0 * dof1)))
        if angle is True:
            differ[:] = True
        # only stars that stage 1 fitted: a fit that ran away (its centre at the box's bound, a width
        # beyond the box) measures no elongation, and its values as the start of stage 2 broke the
        # compiled engine's batch (an exception in one star left the stars after it unfitted)
        sane = (
            np.all(np.isfinite(p1), axis=1)
            & (p1[:, mdl.i_x0] >= -0.5) & (p1[:, mdl.i_x0] <= box - 0.5)
            & (p1[:, mdl.i_y0] >= -0.5) & (p1[:, mdl.i_y0] <= box - 0.5)
            & (wx > 0) & (wx < box) & (wy > 0) & (wy < box)
        )
        todo = np.flatnonzero(differ & sane)
        stage = "two-stage"
        if todo.size:
            p2 = p1[todo].copy()
            gm = np.sqrt(wx[todo] * wy[todo])
            r = np.clip(ratio[todo], 0.3, 1.0)
            p2[:, mdl.i_width_x] = gm / np.sqrt(r)
            p2[:, mdl.i_width_y] = gm * np.sqrt(r)
            p2[:, mdl.i_angle] = theta[todo]
            free2 = mdl.default_free()
            free2[mdl.i_angle] = True
            fit2 = fit_stamps(
                mdl, stamps[todo], p2, free=free2,
                weight_mask=usable[todo], variance=None if variance is None else variance[todo],
                noise=noise, max_iter=max_iter, bounds=(lo[todo], hi[todo]),
            )
            fit = _merge(fit1, fit2, todo, mdl.n_params)
    elif frame_path:
        # the frame's own PSF: its own batched engine (flux, x, y and background per star)
        from psfkit.psf.frame_fit import fit_frame_stamps

        fit = fit_frame_stamps(mdl, stamps, p0, **common)
    else:
        fit = fit_stamps(mdl, stamps, p0, **common)

    fit.flags |= flags
    moved = (
        (fit.params[:, mdl.i_x0] < -0.5) | (fit.params[:, mdl.i_x0] > box - 0.5)
        | (fit.params[:, mdl.i_y0] < -0.5) | (fit.params[:, mdl.i_y0] > box - 0.5)
    )
    fit.flags[moved] |= F.CENTER_MOVED
    cols = measure(mdl, fit, origin, zero_point=zero_point, pixel_scale=img.pixel_scale)
    # a fit on empty sky still returns numbers (a noise bump): say that no source is there
    snr = np.asarray(cols["snr"], dtype=float)
    cols["flags"] = np.asarray(cols["flags"]) | np.where(np.nan_to_num(snr, nan=0.0) < F.NO_SOURCE_SNR,
                                                          F.NO_SOURCE, 0)
    cols["x_init"] = xs
    cols["y_init"] = ys
    cols["id"] = np.arange(1, n + 1)
    radec_note = None
    if img.wcs is not None:
        try:
            ra, dec = img.wcs.celestial.all_pix2world(cols["x_fit"], cols["y_fit"], 0)  # SIP included
            cols["ra"], cols["dec"] = ra, dec
        except Exception as exc:  # a header's WCS that astropy cannot invert: the pixels still count
            radec_note = f"no ra/dec columns: the header's WCS could not convert pixel positions ({_short(exc)})"
    table = Table({k: cols[k] for k in COLUMN_ORDER if k in cols})
    if radec_note:
        table.meta["radec_note"] = radec_note
    set_units(table)
    table.meta.update(
        {
            "model": mdl.name,
            "model_repr": repr(mdl),
            "sampling": getattr(mdl, "sampling", "point"),
            "angle_mode": str(angle),
            "fit_stages": stage,
            "box": box,
            "weighted": bool(fit.weighted),
            "gain": noise.gain if noise else None,
            "read_noise_adu": noise.read_noise if noise else None,
            "saturation": sat_level,
            "zero_point": zero_point,
            "pixel_scale": img.pixel_scale,
            "scale_rule": img.scale_rule,
            "image": img.path,
            "coordinates": "0-based pixel centres, x = column, y = row",
        }
    )
    if isinstance(mdl, ImagePSF):
        table.meta["psf_normalisation"] = mdl.normalisation.kind
        table.meta["psf_normalisation_note"] = mdl.normalisation.describe()
    return table, fit


def _merge(fit1: StampFit, fit2: StampFit, idx: np.ndarray, n_params: int) -> StampFit:
    out = StampFit(
        params=fit1.params.copy(), covariance=fit1.covariance.copy(), chi2=fit1.chi2.copy(), rss=fit1.rss.copy(),
        n_pixels=fit1.n_pixels.copy(), n_free=fit1.n_free, iterations=fit1.iterations.copy(),
        flags=fit1.flags.copy(), free=fit2.free, weighted=fit1.weighted, extra=dict(fit1.extra),
    )
    out.params[idx] = fit2.params
    out.covariance[idx] = fit2.covariance
    out.chi2[idx] = fit2.chi2
    out.rss[idx] = fit2.rss
    out.iterations[idx] += fit2.iterations
    out.flags[idx] = fit2.flags
    # the angle is fitted for some stars only: per-star free masks and parameter counts
    free2d = np.tile(fit1.free, (len(out.params), 1))
    free2d[idx] = fit2.free
    out.free = free2d
    out.n_free = free2d.sum(axis=1)
    return out


@dataclass
class StarFit:
    """The fit of one star: every column as an attribute, plus the table row.

    Attributes are the column names of the star table (``x_fit``, ``fwhm_x``,
    ``flux_fit``, ``flux_err``, ``mag`` ...).  ``model`` is the PSF model used.

    Examples
    --------
    >>> import psfkit
    >>> from psfkit.datasets.simulate import simulate_field
    >>> data, truth = simulate_field((64, 64), 1, fwhm=3.0, seed=3, edge=20)
    >>> star = psfkit.fit_star(data, truth["x"][0], truth["y"][0], gain=1.5, read_noise=6.0)
    >>> round(star.fwhm, 1), star.flag_names, type(star.model).__name__
    (3.0, [], 'GaussianPSF')
    >>> len(star.to_table())
    1
    """

    table: Table
    model: PSFModel
    image: Image = field(repr=False)

    def __getattr__(self, name: str) -> Any:
        table = self.__dict__.get("table")
        if table is not None and name in table.colnames:
            value = table[name][0]
            return value.item() if hasattr(value, "item") else value
        raise AttributeError(name)

    @property
    def flag_names(self) -> list[str]:
        """Names of the bits set in the fit's ``flags`` (see :func:`psfkit.decode_flags`)."""
        return F.decode_flags(self.table["flags"][0])

    def to_table(self) -> Table:
        """The one-row star table (with units and metadata)."""
        return self.table.copy()

    def to_dict(self) -> dict[str, Any]:
        """Plain column -> value mapping (NaN kept as NaN)."""
        row = self.table[0]
        return {name: (row[name].item() if hasattr(row[name], "item") else row[name]) for name in self.table.colnames}

    def model_image(self, shape: tuple[int, int] | None = None) -> np.ndarray:
        """The fitted model (background included) on the fitting box, for residual plots."""
        from psfkit.psf.render import render_fit

        return render_fit(self, shape=shape)

    def report(self, *, normalised: bool = False) -> str:
        """A readable block, Siril's PSF output with uncertainties (copy and paste)."""
        from psfkit.psf.report import star_report

        return star_report(self, normalised=normalised)


#: the keywords :func:`fit_star` passes on to :func:`fit_stars`
FIT_STAR_OPTIONS = ("beta", "angle", "sampling", "gain", "read_noise", "error", "mask", "saturation", "zero_point",
                    "oversampling", "max_iter")


def _short(exc: BaseException) -> str:
    """An exception in one short line: its class and the first line of its message."""
    first = (str(exc).strip().splitlines() or [""])[0][:120]
    return f"{exc.__class__.__name__}: {first}" if first else exc.__class__.__name__


def fit_star(
    image: Image | np.ndarray | str,
    x: float | None = None,
    y: float | None = None,
    *,
    box: int | None = None,
    model: str | PSFModel | np.ndarray = "gaussian",
    search_radius: float = 10.0,
    **kwargs: Any,
) -> StarFit:
    """Fit one star, the Dynamic PSF way.

    Parameters
    ----------
    image : Image, 2-D array or path
    x, y : float, optional
        Rough 0-based position.  The real peak is searched within
        ``search_radius`` px (smoothed, hot pixels ignored), so a guess several
        pixels off still lands on the star.  Without a position the brightest
        source of the image is fitted.
    box : int, optional
        Fitting box (odd, px); default about 5 FWHM.
    model : {"gaussian", "moffat"}, PSFModel, array or path
    search_radius : float
        How far from (x, y) the peak may be.
    **kwargs
        Passed to :func:`fit_stars` (``beta``, ``angle``, ``gain``,
        ``read_noise``, ``error``, ``mask``, ``saturation``, ``zero_point``,
        ``sampling``, ``oversampling``, ``max_iter``); any other keyword is a
        :class:`~psfkit.errors.PsfkitError` naming it.

    Returns
    -------
    StarFit

    Examples
    --------
    A guess 1.5 px off still finds the star; its position and flux agree with the truth within their errors:

    >>> import psfkit
    >>> from psfkit.datasets.simulate import simulate_field
    >>> data, truth = simulate_field((64, 64), 1, fwhm=3.0, seed=3, edge=20)
    >>> star = psfkit.fit_star(data, truth["x"][0] + 1.5, truth["y"][0] - 1.0, gain=1.5, read_noise=6.0)
    >>> bool(abs(star.x_fit - truth["x"][0]) < 3 * star.x_err)
    True
    >>> bool(abs(star.flux_fit - truth["flux"][0]) < 3 * star.flux_err)
    True
    """
    unknown = sorted(set(kwargs) - set(FIT_STAR_OPTIONS))
    if unknown:
        import difflib

        closest = [difflib.get_close_matches(k, FIT_STAR_OPTIONS, 1) for k in unknown]
        hints = [f" (did you mean {close[0]!r}?)" if close else "" for close in closest]
        raise PsfkitError("fit_star got an unknown keyword: " + ", ".join(f"{k!r}{h}" for k, h in zip(unknown, hints))
                          + f"; it takes box, model, search_radius, {', '.join(FIT_STAR_OPTIONS)}")
    img = as_image(image)
    if search_radius is None or not np.isfinite(search_radius) or search_radius < 0:
        raise PsfkitError(f"the search radius must be a number >= 0, got {search_radius}")
    if (x is None) != (y is None):
        raise PsfkitError("give both x and y, or neither (to fit the brightest source)")
    if x is None:
        bx, by = brightest_source(img.data)
        x, y, search_radius = bx, by, 2.0
    ny, nx = img.shape
    if not (-0.5 <= x <= nx - 0.5 and -0.5 <= y <= ny - 0.5):
        raise PsfkitError(f"position ({x:g}, {y:g}) is outside the image (x 0..{nx - 1}, y 0..{ny - 1})")
    mdl = resolve_model(
        model, beta=kwargs.pop("beta", None), angle=kwargs.get("angle", "auto") is not False,
        sampling=kwargs.pop("sampling", "integrated"), oversampling=kwargs.pop("oversampling", 1),
    )
    px, py = refine_peak(img.data, x, y, search_radius=search_radius) if search_radius > 0 else (float(x), float(y))
    if kwargs.get("stamp_mask") is None:
        kwargs["stamp_mask"] = _other_sources_mask(img.data, px, py)
    table = fit_stars(img, [px], [py], box=box, model=mdl, search_radius=0, **kwargs)
    table["x_init"], table["y_init"] = [float(x)], [float(y)]
    return StarFit(table=table, model=mdl, image=img)


def _other_sources_mask(data: np.ndarray, x: float, y: float, *, radius: int = 40) -> Callable | None:
    """A ``stamp_mask`` hiding the other sources near the star at (x, y), or None when there are none.

    Another source is a local maximum of the cleaned, smoothed image 5 sigma above the level of
    the patch, at least 1.5 FWHM from the star, with a dip deeper than 3 sigma between the two.
    With both drawn as Gaussians of the star's FWHM and their smoothed peaks, a pixel is hidden
    where the other source's light exceeds twice the noise and a fifth of the star's own: a
    bright neighbour's wing no longer pulls the fit of a faint star onto itself, and the star's
    core is always kept.
    """
    from scipy import ndimage

    from psfkit.psf.stamps import _clean_smooth, dip_between, level_and_noise

    ny, nx = data.shape
    ix, iy = int(round(x)), int(round(y))
    x0, x1 = max(ix - radius, 0), min(ix + radius + 1, nx)
    y0, y1 = max(iy - radius, 0), min(iy + radius + 1, ny)
    smooth = _clean_smooth(np.asarray(data[y0:y1, x0:x1], dtype=float))
    level, noise = level_and_noise(smooth)
    if not noise > 0:
        return None
    ty, tx = min(max(iy - y0, 0), smooth.shape[0] - 1), min(max(ix - x0, 0), smooth.shape[1] - 1)
    # the star's FWHM from the curvature of its smoothed peak (a Gaussian of width s smoothed by
    # the 1 px kernel has A / (-d2) = s^2 + 1): the area above half maximum would merge with a
    # bright neighbour's
    fw = estimate_fwhm(data, x, y)
    if 0 < ty < smooth.shape[0] - 1 and 0 < tx < smooth.shape[1] - 1:
        d2 = (0.5 * (smooth[ty, tx - 1] + smooth[ty, tx + 1] + smooth[ty - 1, tx] + smooth[ty + 1, tx])
              - 2 * smooth[ty, tx])
        if d2 < 0:
            fw = min(fw, FWHM_PER_SIGMA * math.sqrt(max((smooth[ty, tx] - level) / -d2 - 1.0, 0.25)))
    peaks = (smooth >= ndimage.maximum_filter(smooth, size=3, mode="nearest")) & (smooth - level > 5.0 * noise)
    others = []
    for my, mx in zip(*np.nonzero(peaks)):
        if math.hypot(my - ty, mx - tx) < 1.5 * fw:
            continue
        dip = dip_between(smooth, (ty, tx), (my, mx))
        if min(smooth[my, mx], smooth[ty, tx]) - dip <= 3.0 * noise:
            continue
        others.append((x0 + float(mx), y0 + float(my), float(smooth[my, mx]) - level))
    if not others:
        return None
    amp_star = max(float(smooth[ty, tx]) - level, noise)
    two_s2 = 2.0 * (fw / FWHM_PER_SIGMA) ** 2

    def mask(origin: np.ndarray, box: int) -> np.ndarray:
        out = np.zeros((len(origin), box, box), dtype=bool)
        yy, xx = np.mgrid[0:box, 0:box]
        for k, (ox, oy) in enumerate(np.asarray(origin, dtype=float)):
            fx, fy = xx + ox, yy + oy
            star = amp_star * np.exp(-((fx - x) ** 2 + (fy - y) ** 2) / two_s2)
            for sx, sy, amp in others:
                light = amp * np.exp(-((fx - sx) ** 2 + (fy - sy) ** 2) / two_s2)
                out[k] |= (light > 2.0 * noise) & (light > 0.2 * star)
        return out

    return mask
