"""Aperture photometry at given positions: exact-overlap sums, local sky, CCD-equation errors.

Coordinates are 0-based pixel centres (x = column, y = row), as in photutils and SEP.  The
pieces live beside this module: :mod:`~psfkit.aperture.overlap` (the exact pixel overlap),
:mod:`~psfkit.aperture.sums` (aperture sums), :mod:`~psfkit.aperture.sky` (the annulus sky),
:mod:`~psfkit.aperture.growth` (curves of growth and aperture corrections) and
:mod:`~psfkit.aperture.stars` (both fluxes for a whole star table).

Errors
------
The error of a sky-subtracted sum ``F`` over an aperture of area ``n`` pixels is the CCD
equation ``sigma_F^2 = F / gain + n sigma_sky^2 (1 + n / n_sky)`` (Howell, *Handbook of CCD
Astronomy*; Merline & Howell 1995), with ``sigma_sky`` the clipped scatter of the annulus
(it holds the sky's photon noise and the read noise) and ``n_sky`` the number of sky pixels.
Without a gain the first term is left out (say so: bright stars' errors are then too small),
and ``meta["gain"]`` is None.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from astropy.table import Table

from psfkit import flags as _F
from psfkit.aperture.sky import sky_annulus
from psfkit.aperture.sums import aperture_sums
from psfkit.errors import PsfkitError
from psfkit.io.image import Image, as_image
from psfkit.psf.measure import magnitude
from psfkit.utils import check_positive

__all__ = ["aperture_photometry", "PHOT_FLAGS", "DEFAULT_RADIUS_FWHM", "DEFAULT_ANNULUS_FWHM"]

#: default aperture radius, in units of the star's FWHM
DEFAULT_RADIUS_FWHM = 1.5
#: default sky annulus (inner, outer radius), in units of the FWHM
DEFAULT_ANNULUS_FWHM = (4.0, 6.0)

def _bad_fit_bits() -> tuple[int, int]:
    """Fit flags that disqualify a star (aperture correction; PSF/aperture ratio summary).

    A parameter at its bound (e.g. a Moffat's beta on a boxy PSF) does not spoil a curve of
    growth, so it does not disqualify a star; saturation, a cut box, masked pixels, a brighter
    neighbour or a failed fit do.
    """
    from psfkit import flags as F

    aperture = F.SATURATED | F.NEAR_EDGE | F.FIT_FAILED | F.MASKED_PIXELS | F.CENTER_MOVED | F.NEIGHBOURS_MASKED
    return aperture, aperture | F.NOT_CONVERGED | F.SINGULAR_COVARIANCE


#: bits of the ``phot_flags`` column (defined in :mod:`psfkit.flags`; ``decode_phot_flags`` names them)
PHOT_FLAGS = dict(_F.PHOT_FLAG_DESCRIPTIONS)


def _resolve_gain(img: Image, gain: float | None) -> float | None:
    g = check_positive(gain if gain is not None else img.gain, "the gain (e-/ADU)", allow_none=True)
    return g if g else None


def _ccd_error(flux: np.ndarray, area: np.ndarray, sky_sigma: np.ndarray, n_sky: np.ndarray, gain: float | None):
    """sigma_F^2 = F/gain + n sigma_sky^2 (1 + n/n_sky)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        var = area * sky_sigma**2 * (1.0 + area / n_sky)
        if gain:
            var = var + np.clip(flux, 0.0, None) / gain
    return np.sqrt(var)


def _positions_and_fwhm(img: Image, x, y, fwhm):
    xs = np.atleast_1d(np.asarray(x, dtype=float))
    ys = np.atleast_1d(np.asarray(y, dtype=float))
    if xs.shape != ys.shape:
        raise PsfkitError("x and y must have the same length")
    ny, nx = img.shape
    bad = ~np.isfinite(xs) | ~np.isfinite(ys) | (xs < -0.5) | (xs > nx - 0.5) | (ys < -0.5) | (ys > ny - 0.5)
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        raise PsfkitError(f"position ({xs[i]:g}, {ys[i]:g}) is outside the image (x 0..{nx - 1}, y 0..{ny - 1})")
    if fwhm is None:
        from psfkit.psf.stamps import estimate_fwhm

        fwhm = float(np.median([estimate_fwhm(img.data, a, b) for a, b in zip(xs[:50], ys[:50])])) if xs.size else 3.0
    f = np.broadcast_to(np.asarray(fwhm, dtype=float), xs.shape).copy()
    if xs.size and (not np.all(np.isfinite(f)) or np.any(f <= 0)):
        raise PsfkitError("the FWHM must be a positive number of pixels")
    return xs, ys, f


def aperture_photometry(
    image: Image | np.ndarray | str,
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    *,
    fwhm: float | np.ndarray | None = None,
    radius: float | np.ndarray | None = None,
    radius_fwhm: float = DEFAULT_RADIUS_FWHM,
    annulus: tuple[float, float] | None = None,
    annulus_fwhm: tuple[float, float] = DEFAULT_ANNULUS_FWHM,
    ellipse: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    gain: float | None = None,
    sky_estimator: str = "mean",
    mask: np.ndarray | None = None,
    zero_point: float = 0.0,
) -> Table:
    """Sky-subtracted aperture flux with its CCD-equation error, SNR and magnitude at each position.

    Parameters
    ----------
    image : Image, 2-D array or path
    x, y : array-like
        0-based centres (taken as given: centre them first, e.g. with :func:`psfkit.fit_stars`).
    fwhm : float or array, optional
        Star FWHM (px) that sets the default radii; measured from the image when omitted.
    radius : float or array, optional
        Aperture radius in px (overrides ``radius_fwhm``).
    radius_fwhm : float
        Aperture radius in FWHM units (default 1.5).
    annulus : (float, float), optional
        Sky annulus radii in px (overrides ``annulus_fwhm``).
    annulus_fwhm : (float, float)
        Sky annulus in FWHM units (default 4 to 6, clear of the star's wings).
    ellipse : (fwhm_x, fwhm_y, angle_deg) arrays, optional
        Elliptical apertures of the fitted shape: semi-axes ``k fwhm_x`` and ``k fwhm_y``
        with ``k = radius / sqrt(fwhm_x fwhm_y)``, so the area equals the circle's.
    gain : float, optional
        e-/ADU (default: header); without it the source's photon noise is left out of the error.
    sky_estimator : {"mean", "median", "mode"}
        Sigma-clipped sky estimator.
    mask : ndarray of bool, optional
        Pixels to leave out.
    zero_point : float
        Magnitude zero point: ``mag = zero_point - 2.5 log10(flux)``.

    Returns
    -------
    astropy.table.Table
        ``x``, ``y``, ``aperture_radius``, ``aperture_area``, ``aperture_sum``, ``sky``, ``sky_sigma``,
        ``n_sky``, ``flux_aper``, ``flux_aper_err``, ``snr_aper``, ``mag_aper``, ``mag_aper_err``,
        ``phot_flags``; the settings in ``meta``.

    Examples
    --------
    A star of flux 200,000 on a sky of 300: an aperture of 1.5 FWHM holds about 99.5 % of it:

    >>> import numpy as np
    >>> from psfkit.datasets.simulate import add_noise, render_stars, star_params
    >>> truth = star_params("gaussian", 40.2, 39.7, 2e5, 4.0, 4.0, 0.0)
    >>> data = add_noise(300.0 + render_stars((80, 80), truth), gain=2.0, read_noise=6.0, rng=np.random.default_rng(1))
    >>> table = aperture_photometry(data, [40.2], [39.7], fwhm=4.0, gain=2.0)
    >>> round(float(table["flux_aper"][0] / 2e5), 2), bool(table["flux_aper_err"][0] > 0)
    (0.99, True)
    """
    img = as_image(image)
    xs, ys, f = _positions_and_fwhm(img, x, y, fwhm)
    g = _resolve_gain(img, gain)
    if radius is None:
        if not (radius_fwhm > 0):
            raise PsfkitError(f"the aperture radius must be positive, got {radius_fwhm} FWHM")
        rad = radius_fwhm * f
    else:
        rad = np.broadcast_to(np.asarray(radius, dtype=float), xs.shape).copy()
    if annulus is None:
        r_in, r_out = annulus_fwhm[0] * f, annulus_fwhm[1] * f
    else:
        r_in = np.full(xs.shape, float(annulus[0]))
        r_out = np.full(xs.shape, float(annulus[1]))
    if xs.size and np.any(r_in < rad):
        raise PsfkitError("the sky annulus must start outside the aperture (inner radius >= aperture radius)")
    if ellipse is not None:
        fx, fy, ang = (np.broadcast_to(np.asarray(v, dtype=float), xs.shape) for v in ellipse)
        k = rad / np.sqrt(fx * fy)
        sums, area, full = aperture_sums(img.data, xs, ys, a=k * fx, b=k * fy, theta=np.radians(ang), mask=mask)
    else:
        sums, area, full = aperture_sums(img.data, xs, ys, rad, mask=mask)
    sky, sky_sigma, n_sky = sky_annulus(img.data, xs, ys, r_in, r_out, estimator=sky_estimator, mask=mask)
    flux = sums - sky * area
    err = _ccd_error(flux, area, sky_sigma, n_sky, g)
    mag, mag_err = magnitude(flux, err, zero_point)
    flags = np.zeros(xs.size, dtype=np.int64)
    ny, nx = img.shape
    ext = rad if ellipse is None else rad * np.sqrt(np.maximum(fx, fy) / np.minimum(fx, fy))
    off = (xs - ext < -0.5) | (xs + ext > nx - 0.5) | (ys - ext < -0.5) | (ys + ext > ny - 0.5)
    flags[off] |= _F.APERTURE_OFF_IMAGE
    flags[(area < full * (1 - 1e-9)) & ~off] |= _F.APERTURE_MASKED
    flags[n_sky < 20] |= _F.SKY_FEW_PIXELS
    flags[np.isfinite(flux) & ~(flux > 0)] |= _F.APERTURE_FLUX_NOT_POSITIVE  # its magnitude is NaN
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(err > 0, flux / err, np.nan)
    t = Table(
        {
            "x": xs, "y": ys, "aperture_radius": rad, "aperture_area": area, "aperture_sum": sums,
            "sky": sky, "sky_sigma": sky_sigma, "n_sky": n_sky, "flux_aper": flux, "flux_aper_err": err,
            "snr_aper": snr, "mag_aper": mag, "mag_aper_err": mag_err, "phot_flags": flags,
        }
    )
    t.meta.update(
        aperture="elliptical (fitted shape)" if ellipse is not None else "circular",
        radius_rule=f"{radius_fwhm:g} FWHM" if radius is None else "given in px",
        annulus_rule=f"{annulus_fwhm[0]:g}-{annulus_fwhm[1]:g} FWHM" if annulus is None else "given in px",
        sky_estimator=f"3-sigma clipped {sky_estimator}", gain=g, zero_point=zero_point,
        error_formula="sigma_F^2 = F/gain + n sigma_sky^2 (1 + n/n_sky)"
        + ("" if g else " without the F/gain term (no gain known)"),
        overlap="exact",
    )
    return t

