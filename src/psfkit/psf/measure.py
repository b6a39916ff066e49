"""From fitted parameters and their covariance to the measured quantities.

One place for the star table's conventions: axes swapped so that
FWHMx >= FWHMy, angle in degrees folded into [-90, 90], roundness =
FWHMy / FWHMx, flux = the model's integral to infinity, magnitude =
zero_point - 2.5 log10(flux).  Every derived quantity carries a 1-sigma error
propagated from the covariance (g^T C g with g the analytic gradient).
"""

from __future__ import annotations

import numpy as np

from psfkit import flags as F
from psfkit.psf.engine import StampFit
from psfkit.psf.models import ImagePSF, PSFModel, _EllipticalModel

__all__ = ["measure", "magnitude", "fold_angle", "MAG_ERR_FACTOR"]

MAG_ERR_FACTOR = 2.5 / np.log(10.0)  # 1.0857


def fold_angle(angle_deg: np.ndarray) -> np.ndarray:
    """Fold an angle in degrees into [-90, 90)."""
    return (np.asarray(angle_deg, dtype=float) + 90.0) % 180.0 - 90.0


def magnitude(flux: np.ndarray, flux_err: np.ndarray, zero_point: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Mag = zero_point - 2.5 log10(flux), mag_err = 1.0857 flux_err / flux (NaN for flux <= 0).

    Examples
    --------
    >>> import numpy as np
    >>> mag, mag_err = magnitude(np.array([100.0, 1000.0]), np.array([10.0, 10.0]), zero_point=25.0)
    >>> mag.tolist(), np.round(mag_err, 4).tolist()
    ([20.0, 17.5], [0.1086, 0.0109])
    """
    flux = np.asarray(flux, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ok = flux > 0
        mag = np.where(ok, zero_point - 2.5 * np.log10(np.where(ok, flux, 1.0)), np.nan)
        mag_err = np.where(ok, MAG_ERR_FACTOR * np.asarray(flux_err) / np.where(ok, flux, 1.0), np.nan)
    return mag, mag_err


def _propagate(grad: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """sqrt(g^T C g) per star."""
    var = np.einsum("ni,nij,nj->n", grad, cov, grad)
    return np.sqrt(np.clip(var, 0.0, None))


def measure(
    model: PSFModel,
    fit: StampFit,
    origin: np.ndarray,
    *,
    zero_point: float = 0.0,
    pixel_scale: float | None = None,
) -> dict[str, np.ndarray]:
    """Columns of the star table from a batch fit.

    Parameters
    ----------
    model : PSFModel
    fit : StampFit
    origin : ndarray (N, 2)
        Image (x, y) of each stamp's pixel (0, 0).
    zero_point : float
        Magnitude zero point.
    pixel_scale : float, optional
        Arcsec per pixel; adds the ``*_arcsec`` columns.

    Returns
    -------
    dict of column name -> ndarray

    Examples
    --------
    >>> import numpy as np
    >>> from psfkit.datasets.simulate import simulate_stamps, star_params
    >>> from psfkit.psf.engine import fit_stamps
    >>> from psfkit.psf.models import GaussianPSF
    >>> stamps, truth = simulate_stamps(5, fwhm_x=3.0, seed=0)
    >>> p0 = star_params("gaussian", truth["x0"], truth["y0"], truth["flux"], truth["fwhm_x"], truth["fwhm_y"],
    ...                  truth["angle"], None, truth["background"])
    >>> columns = measure(GaussianPSF(), fit_stamps(GaussianPSF(), stamps, p0), np.zeros((5, 2)))
    >>> round(float(np.median(columns["fwhm"])), 1), "flux_err" in columns
    (3.0, True)
    """
    p = fit.params.copy()
    cov = fit.covariance.copy()
    n = p.shape[0]
    free = np.broadcast_to(fit.free, p.shape)
    cols: dict[str, np.ndarray] = {}
    err = np.sqrt(np.clip(np.diagonal(cov, axis1=1, axis2=2), 0.0, None))
    fixed_nan = np.where(free, 1.0, np.nan)

    if isinstance(model, _EllipticalModel):
        ia, ib, it = model.i_width_x, model.i_width_y, model.i_angle
        swap = p[:, ia] < p[:, ib]
        # swap the axes so that x is the major axis; the angle turns by 90 degrees
        perm = np.arange(model.n_params)
        for i in np.flatnonzero(swap):
            q = perm.copy()
            q[ia], q[ib] = ib, ia
            p[i] = p[i, q]
            cov[i] = cov[i][np.ix_(q, q)]
        p[swap, it] = p[swap, it] + np.pi / 2.0
        err = np.sqrt(np.clip(np.diagonal(cov, axis1=1, axis2=2), 0.0, None))

    cols["x_fit"] = p[:, model.i_x0] + origin[:, 0]
    cols["y_fit"] = p[:, model.i_y0] + origin[:, 1]
    cols["x_err"] = err[:, model.i_x0]
    cols["y_err"] = err[:, model.i_y0]
    cols["background"] = p[:, 0]
    cols["background_err"] = err[:, 0] * fixed_nan[:, 0]
    amplitude = model.peak(p)
    cols["amplitude"] = amplitude
    if isinstance(model, ImagePSF):
        cols["amplitude_err"] = err[:, 1] * model.psf.max()
    else:
        cols["amplitude_err"] = err[:, 1]

    fx, fy, gx, gy = model.fwhm_and_gradient(p)
    cols["fwhm_x"] = fx
    cols["fwhm_y"] = fy
    cols["fwhm_x_err"] = _propagate(gx, cov)
    cols["fwhm_y_err"] = _propagate(gy, cov)
    with np.errstate(divide="ignore", invalid="ignore"):
        fwhm = np.sqrt(fx * fy)
        g_fwhm = 0.5 * (gx * (fy / fwhm)[:, None] + gy * (fx / fwhm)[:, None])
        cols["fwhm"] = fwhm
        cols["fwhm_err"] = _propagate(g_fwhm, cov)
        rnd = fy / fx
        g_rnd = (gy - gx * rnd[:, None]) / fx[:, None]
        cols["roundness"] = rnd
        cols["roundness_err"] = _propagate(g_rnd, cov)
    if isinstance(model, _EllipticalModel):
        cols["angle"] = fold_angle(np.degrees(p[:, model.i_angle]))
        cols["angle_err"] = np.degrees(err[:, model.i_angle]) * fixed_nan[:, model.i_angle]
    else:
        cols["angle"] = np.zeros(n)
        cols["angle_err"] = np.full(n, np.nan)
    if model.param_names[-1] == "beta":
        cols["beta"] = p[:, -1]
        cols["beta_err"] = err[:, -1] * fixed_nan[:, -1]
    else:
        cols["beta"] = np.full(n, np.nan)
        cols["beta_err"] = np.full(n, np.nan)

    flux, g_flux = model.flux_and_gradient(p)
    flux_err = _propagate(g_flux, cov)
    cols["flux_fit"] = flux
    cols["flux_err"] = flux_err
    mag, mag_err = magnitude(flux, flux_err, zero_point)
    cols["mag"] = mag
    cols["mag_err"] = mag_err
    with np.errstate(divide="ignore", invalid="ignore"):
        cols["snr"] = np.where(flux_err > 0, flux / flux_err, np.nan)
    cols["rmse"] = fit.rmse
    cols["reduced_chi2"] = fit.reduced_chi2
    cols["n_pixels_fit"] = fit.n_pixels.astype(int)
    cols["iterations"] = fit.iterations.astype(int)
    if pixel_scale:
        for name in ("fwhm_x", "fwhm_y", "fwhm"):
            cols[f"{name}_arcsec"] = cols[name] * pixel_scale
            cols[f"{name}_arcsec_err"] = cols[f"{name}_err"] * pixel_scale
    cols["flags"] = fit.flags.astype(np.int64)
    cols["flags"][np.isfinite(flux) & ~(flux > 0)] |= F.FLUX_NOT_POSITIVE  # mag and mag_err are NaN
    return cols
