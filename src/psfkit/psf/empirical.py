"""The frame's own PSF: an oversampled effective PSF built from the frame's stars, varying across the field.

Real stars are neither Gaussians nor Moffats.  DAOPHOT, PSFEx and photutils' EPSFBuilder answer with
a PSF built from the frame's own bright, isolated stars; this module does the same:

1. **Stars.**  Accepted stars of :func:`psfkit.find_stars` with no flag (not saturated, not near an
   edge, no neighbour masked), bright enough (S/N >= 20), isolated (no other source within the
   PSF's reach), and of the frame's typical size and roundness (binaries, galaxies and cosmic rays
   stay out).
2. **Stacking** (Anderson & King 2000, PASP 112, 1360).  Each star's pixels, background subtracted
   and divided by its flux, are samples of the *effective* PSF (the PSF convolved with the pixel)
   at the offsets from the star's centre.  The PSF is a grid oversampled ``oversampling`` times;
   each iteration adds to it the weighted mean of the samples' residuals from the current grid,
   node by node, so the nearest-node binning blurs only the correction and the grid converges
   to the unblurred PSF.  The grid is then renormalised to unit flux and recentred on its
   centroid, and the stars' centres, fluxes and backgrounds are fitted again with it.
3. **Variation across the field.**  Each node of the grid is a polynomial in the star's position
   (degree 0, 1 or 2 in x and y, as PSFEx does), solved node by node by weighted least squares.
   ``degree="auto"`` keeps the degree whose PSF predicts held-back stars best (4-fold cross
   validation on the stars' chi-square).

Because the grid is the effective PSF, a fit evaluates it at the pixel centres directly: no pixel
integration.  It is normalised to unit sum (``oversampling**2`` over the grid, so that it sums to 1
over image pixels), which makes each star's fitted ``flux`` its total flux, with no aperture
correction (the PSF reaches 5 FWHM: a Moffat beta = 3 star keeps 99.9 % of its light inside).

The FWHM of a non-analytic PSF is read on its half-maximum contour: ``fwhm`` is the diameter of the
circle with the contour's area, ``fwhm_x`` and ``fwhm_y`` the widths of the ellipse with the same
second moments.  The pixel is taken out by the ratio of the same reading on an elliptical Moffat
fitted to the grid's core and of that Moffat's own FWHM (a deconvolution of the grid itself
amplifies its noise: see docs/psf.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from psfkit import flags as F
from psfkit.errors import PsfkitError
from psfkit.psf.models import ImagePSF, PSFModel, PSFNormalisation

__all__ = ["FramePSF", "FramePSFModel", "build_frame_psf", "measure_with_frame_psf", "render_stars", "add_stars",
           "MIN_STARS",
           "cubic_interpolate", "node_median_mad", "spline_coefficients"]

#: fewer usable stars than this and no frame PSF is built (the analytic model is used instead)
MIN_STARS = 8
#: stars needed per polynomial term before a degree is tried
STARS_PER_TERM = 6
#: the PSF reaches at least this many FWHM from its centre, and at most MAX_REACH_FWHM: between
#: the two, out to where the bright stars' mean profile falls below REACH_LEVEL of its peak (or
#: into its noise), so that a broad halo is part of the PSF and of every star's total flux
MIN_REACH_FWHM = 4.0
MAX_REACH_FWHM = 8.0
REACH_LEVEL = 2e-5
#: the PSF varies across the field within this many FWHM of its centre; farther out (the wings, a
#: halo) it is the same everywhere: too few photons per node to follow a variation there
VARIATION_FWHM = 3.0
#: the stack weighs no pixel more than one with this signal-to-noise ratio
MAX_PIXEL_SNR = 100.0
#: pixels in each star's sky ring (beyond the PSF's widest reach), before its neighbours are masked
SKY_RING_PIXELS = 2500
_TERMS = ((0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2))


def _n_terms(degree: int) -> int:
    return (degree + 1) * (degree + 2) // 2


def _bspline_weights(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cubic B-spline weights of the 4 nodes at -1, 0, 1, 2 for a fraction t, and their derivatives."""
    t2 = t * t
    t3 = t2 * t
    s = 1.0 - t
    w = np.stack([s * s * s, 3 * t3 - 6 * t2 + 4, -3 * t3 + 3 * t2 + 3 * t + 1, t3], axis=-1) / 6.0
    dw = np.stack([-3 * s * s, 9 * t2 - 12 * t, -9 * t2 + 6 * t + 3, 3 * t2], axis=-1) / 6.0
    return w, dw


def spline_coefficients(grids: np.ndarray) -> np.ndarray:
    """Cubic B-spline coefficients of grids (..., S, S): what :func:`cubic_interpolate` evaluates.

    Examples
    --------
    >>> g = np.zeros((1, 9, 9)); g[0, 4, 4] = 1.0
    >>> c = spline_coefficients(g)
    >>> round(float(cubic_interpolate(c, np.array([[4.0]]), np.array([[4.0]]))[0, 0]), 6)
    1.0
    """
    from scipy import ndimage

    g = np.asarray(grids, dtype=float)
    axes = (g.ndim - 2, g.ndim - 1)
    out = g
    for ax in axes:
        out = ndimage.spline_filter1d(out, order=3, axis=ax, mode="mirror")
    return out


def cubic_interpolate(coefficients: np.ndarray, u: np.ndarray, v: np.ndarray, *, derivatives: bool = False,
                      backend: str = "auto"):
    """Values of per-row cubic B-splines at fractional node positions (zero past the grid's edge).

    Parameters
    ----------
    coefficients : ndarray, shape (N, S, S) or (1, S, S)
        One grid of spline coefficients per row (:func:`spline_coefficients` of the values), or
        one for every row.
    u, v : ndarray, shape (N, P)
        Positions in node units along x (columns) and y (rows).
    derivatives : bool
        Also return the derivatives along u and v.
    backend : {"auto", "numpy"}
        ``"numpy"`` forces the numpy reference; ``"auto"`` uses the compiled kernel where it is
        available (:mod:`psfkit.backend`).

    Returns
    -------
    value : ndarray (N, P)
        (and ``d/du``, ``d/dv`` when ``derivatives``).

    Examples
    --------
    >>> g = np.zeros((1, 7, 7)); g[0, 3, 3] = 1.0
    >>> round(float(cubic_interpolate(g, np.array([[3.0]]), np.array([[3.0]]))[0, 0]), 4)
    0.4444
    """
    if backend != "numpy" and u.size:
        from psfkit.psf import _empirical_kernels

        if _empirical_kernels.available():
            return _empirical_kernels.interpolate(coefficients, u, v, derivatives)
    n, sy, sx = u.shape[0], coefficients.shape[1], coefficients.shape[2]
    iu = np.floor(u).astype(np.intp)
    iv = np.floor(v).astype(np.intp)
    wu, dwu = _bspline_weights(u - iu)
    wv, dwv = _bspline_weights(v - iv)
    offs = np.arange(-1, 3)
    cu = iu[..., None] + offs  # (N, P, 4)
    cv = iv[..., None] + offs
    okx = (cu >= 0) & (cu < sx)
    oky = (cv >= 0) & (cv < sy)
    wu = np.where(okx, wu, 0.0)
    wv = np.where(oky, wv, 0.0)
    rows = np.arange(n)[:, None, None, None] if coefficients.shape[0] > 1 else np.zeros((n, 1, 1, 1), np.intp)
    g = coefficients[rows, np.clip(cv, 0, sy - 1)[..., :, None], np.clip(cu, 0, sx - 1)[..., None, :]]
    gx = np.einsum("npij,npj->npi", g, wu)
    val = np.einsum("npi,npi->np", gx, wv)
    inside = (u >= 0) & (u <= sx - 1) & (v >= 0) & (v <= sy - 1)
    val = np.where(inside, val, 0.0)
    if not derivatives:
        return val
    dwu = np.where(okx, dwu, 0.0)
    dwv = np.where(oky, dwv, 0.0)
    du = np.where(inside, np.einsum("npij,npj,npi->np", g, dwu, wv), 0.0)
    dv = np.where(inside, np.einsum("npi,npi->np", gx, dwv), 0.0)
    return val, du, dv


def _gl_box(k: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre offsets and weights over a unit pixel (k x k, flattened)."""
    t, w = np.polynomial.legendre.leggauss(k)
    ox, oy = np.meshgrid(0.5 * t, 0.5 * t)
    return np.column_stack([ox.ravel(), oy.ravel()]), np.outer(0.5 * w, 0.5 * w).ravel()


def _moffat_core(p: np.ndarray, dx: np.ndarray, dy: np.ndarray, box: tuple | None) -> np.ndarray:
    """An elliptical Moffat (amp, x0, y0, log ax, log ay, theta, log(beta - 1)) at offsets (image px),
    integrated over the unit pixel when ``box`` (Gauss-Legendre offsets and weights) is given.
    """
    amp, x0, y0 = p[0], p[1], p[2]
    ax, ay, th, beta = math.exp(p[3]), math.exp(p[4]), p[5], 1.0 + math.exp(p[6])
    if box is not None:
        offs, w = box
        dx = dx[:, None] + offs[None, :, 0]
        dy = dy[:, None] + offs[None, :, 1]
    c, s = math.cos(th), math.sin(th)
    xr = (dx - x0) * c + (dy - y0) * s
    yr = -(dx - x0) * s + (dy - y0) * c
    val = amp * (1.0 + (xr / ax) ** 2 + (yr / ay) ** 2) ** (-beta)
    return val @ w if box is not None else val


def _half_max_region(est: np.ndarray, peak: float, x: np.ndarray, y: np.ndarray,
                     cell: float) -> tuple[float, float, float, float, float]:
    """Area (px^2), second moments (cxx, cyy, cxy) of the region inside the half-maximum contour
    of fine samples ``est`` at (x, y) px, each sample counted by the fraction of it inside
    (from the local gradient), and the region's angle.
    """
    from scipy import ndimage

    half = 0.5 * peak
    gy, gx = np.gradient(est)
    slope = np.hypot(gx, gy)
    with np.errstate(over="ignore"):  # a denormal slope: the sample is wholly in or out, as the clip says
        inside = np.clip(0.5 + (est - half) / np.where(slope > 0, slope, np.inf), 0.0, 1.0)
    inside[est >= half] = np.maximum(inside[est >= half], 0.5)
    lab, _ = ndimage.label(est >= 0.25 * peak)
    centre = np.unravel_index(np.argmin(x * x + y * y + np.where(est >= 0.25 * peak, 0.0, 1e9)), est.shape)
    inside = np.where(lab == lab[centre], inside, 0.0)
    wsum = float(inside.sum())
    if wsum <= 0:
        return float("nan"), float("nan"), float("nan"), float("nan"), float("nan")
    mx, my = float((inside * x).sum() / wsum), float((inside * y).sum() / wsum)
    cxx = float((inside * (x - mx) ** 2).sum() / wsum)
    cyy = float((inside * (y - my) ** 2).sum() / wsum)
    cxy = float((inside * (x - mx) * (y - my)).sum() / wsum)
    return wsum * cell, cxx, cyy, cxy, 0.5 * math.degrees(math.atan2(2 * cxy, cxx - cyy))


def _axes(cxx: float, cyy: float, cxy: float) -> tuple[float, float]:
    """FWHM along the axes of the uniform ellipse with these second moments (moment = a^2 / 4)."""
    tr, det = cxx + cyy, cxx * cyy - cxy * cxy
    disc = math.sqrt(max(tr * tr / 4 - det, 0.0))
    return 4.0 * math.sqrt(max(tr / 2 + disc, 0.0)), 4.0 * math.sqrt(max(tr / 2 - disc, 1e-12))


def _contour_shape(grid: np.ndarray, oversampling: int) -> tuple[float, float, float, float]:
    """(fwhm, fwhm_x, fwhm_y, angle_deg) of an effective PSF grid from its half-maximum contour, pixel removed.

    The grid is the PSF convolved with the pixel.  An elliptical Moffat (free beta), integrated over
    the pixel, is fitted to the grid's core; the contour is read on that Moffat plus the grid's
    departure from it smoothed (Gaussian, sigma 0.5 px), resampled 4 times finer per node, each
    sample counted by the fraction of it inside the contour, at half the peak of the same surface.
    The pixel's widening is then taken out by the ratio of the Moffat's own FWHM (exact) to the
    same reading on its pixel-integrated twin.  The ratio is a smooth function of the fitted shape,
    so the grid's noise does not enter it (a deconvolution of the grid itself amplifies its
    node-to-node noise: grids stacked from faint stars read 18 % narrow), and no single noisy node
    sets the half-maximum level.
    """
    from scipy.optimize import least_squares

    o = int(oversampling)
    fine = 4
    g = np.asarray(grid, dtype=float)
    s = g.shape[0]
    c = (s - 1) / 2.0
    nodes = (np.arange(s) - c) / o  # node offsets (px)
    xx, yy = np.meshgrid(nodes, nodes)
    # a first guess from the grid lightly smoothed (1 2 1): its maximum and half-maximum area
    from scipy import ndimage

    kern = np.array([0.25, 0.5, 0.25])
    sm = ndimage.correlate1d(ndimage.correlate1d(g, kern, axis=0, mode="constant"), kern, axis=1, mode="constant")
    peak0 = float(sm.max())
    if not np.isfinite(peak0) or peak0 <= 0:
        return (float("nan"),) * 4
    jy, jx = np.unravel_index(np.argmax(sm), sm.shape)
    hw0 = max(math.sqrt(np.count_nonzero(sm >= 0.5 * peak0) / o**2 / math.pi), 0.5)  # HWHM guess (px)
    r = np.hypot(xx - xx[jy, jx], yy - yy[jy, jx])
    core = r <= 2.0 * hw0 + 1.0
    box = _gl_box(6)
    dx, dy, val = xx[core], yy[core], g[core]
    # the start: the half-maximum region's moments (axes and angle) for a Moffat of beta 3
    top = (sm >= 0.5 * peak0) & (r <= 2.0 * hw0 + 1.0)
    mxx = float(((xx[top] - xx[jy, jx]) ** 2).mean())
    myy = float(((yy[top] - yy[jy, jx]) ** 2).mean())
    mxy = float(((xx[top] - xx[jy, jx]) * (yy[top] - yy[jy, jx])).mean())
    th0 = 0.5 * math.atan2(2.0 * mxy, mxx - myy)
    fa0, fb0 = _axes(mxx, myy, mxy)
    k3 = 2.0 * math.sqrt(2.0 ** (1.0 / 3.0) - 1.0)
    p0 = np.array([peak0 * 1.05, xx[jy, jx], yy[jy, jx], math.log(max(fa0, 0.3) / k3), math.log(max(fb0, 0.3) / k3),
                   th0, math.log(2.0)])
    lo = [0.0, p0[1] - 1.0, p0[2] - 1.0, math.log(0.05), math.log(0.05), th0 - math.pi / 2, math.log(0.2)]
    hi = [np.inf, p0[1] + 1.0, p0[2] + 1.0, math.log(100.0), math.log(100.0), th0 + math.pi / 2, math.log(500.0)]
    p0 = np.clip(p0, np.array(lo) + 1e-9, np.array(hi) - 1e-9)
    scale = np.array([peak0, 0.05, 0.05, 0.05, 0.05, 0.1, 0.3])
    fit = least_squares(lambda p: _moffat_core(p, dx, dy, box) - val, p0, bounds=(lo, hi), x_scale=scale,
                        xtol=1e-10, ftol=1e-12, gtol=1e-12, max_nfev=400)
    p = fit.x
    beta = 1.0 + math.exp(p[6])
    k = math.sqrt(2.0 ** (1.0 / beta) - 1.0)
    fa, fb = 2.0 * math.exp(p[3]) * k, 2.0 * math.exp(p[4]) * k  # the Moffat's own FWHM along its axes
    # fine samples of the grid (its spline) and of the fitted Moffat integrated over the pixel
    half_w = min(2.0 * hw0 + 1.0, c / o)
    t = np.arange(-half_w, half_w + 1e-9, 1.0 / (fine * o))
    ux, uy = np.meshgrid(t + p[1], t + p[2])
    # the grid's departure from the Moffat, smoothed (Gaussian, sigma 0.5 px): the node-to-node noise
    # of a grid stacked from few stars moves the contour, a smooth departure (a halo's core) stays
    on_nodes = np.zeros_like(g)
    on_nodes[core] = g[core] - _moffat_core(p, dx, dy, box)
    weight = ndimage.gaussian_filter(core.astype(float), 0.5 * o, mode="constant")
    smooth = ndimage.gaussian_filter(on_nodes, 0.5 * o, mode="constant") / np.maximum(weight, 1e-12)
    model = _moffat_core(p, ux.ravel(), uy.ravel(), box).reshape(ux.shape)
    est = model + cubic_interpolate(spline_coefficients(np.where(core, smooth, 0.0)[None]), (ux * o + c).reshape(1, -1),
                                    (uy * o + c).reshape(1, -1))[0].reshape(ux.shape)
    # the grid's peak: the model's, plus the grid's mean departure from it near the centre
    near = np.hypot(ux - p[1], uy - p[2]) <= 0.4 * hw0
    peak_model = float(_moffat_core(p, np.array([p[1]]), np.array([p[2]]), box)[0])
    peak = peak_model + float(np.mean((est - model)[near])) if near.any() else peak_model
    cell = (1.0 / (fine * o)) ** 2
    a_g, cxx, cyy, cxy, angle = _half_max_region(est, peak, ux - p[1], uy - p[2], cell)
    a_m, mxx, myy, mxy, _ = _half_max_region(model, peak_model, ux - p[1], uy - p[2], cell)
    if not (np.isfinite(a_g) and np.isfinite(a_m) and a_m > 0):
        return (float("nan"),) * 4
    fwhm = 2.0 * math.sqrt(a_g / math.pi) * math.sqrt(fa * fb) / (2.0 * math.sqrt(a_m / math.pi))
    gx, gy = _axes(cxx, cyy, cxy)
    mx, my = _axes(mxx, myy, mxy)
    if not (mx > 0 and my > 0 and np.isfinite(gx) and np.isfinite(gy)):  # a contour one sample across: no axes
        return (float("nan"),) * 4
    fx = gx * max(fa, fb) / mx
    fy = gy * min(fa, fb) / my
    return fwhm, fx, fy, angle


@dataclass(frozen=True)
class FramePSF:
    """An effective PSF oversampled on a grid, its every node a polynomial in the position on the frame.

    ``psf(x, y) = sum_k coefficients[k] * T_k((x - centre_x) / scale_x, (y - centre_y) / scale_y)``
    with the terms ``T = 1, x, y, x^2, x y, y^2`` up to ``degree``.  Node ``(S - 1) / 2`` is the
    star's centre; node spacing is ``1 / oversampling`` image pixels; term 0 sums to
    ``oversampling**2`` (unit flux over image pixels) and the others to 0.

    Attributes
    ----------
    coefficients : ndarray, shape (n_terms, S, S)
    oversampling : int
    degree : int
    centre, scale : tuple of float
        (x, y) of the frame centre and the half-sizes that map the frame onto [-1, 1].
    n_stars : int
        Stars it was built from.
    info : dict
        How it was built (selection counts, the degree choice, the stars' chi-square).
    variance : ndarray, shape (S, S), optional
        The variance of each node's value (unit flux): the PSF's own uncertainty, from the number of
        stars stacked and their scatter.  A fit adds ``flux**2`` times it to each pixel's variance.
    profile_error : float
        The stars' own departures from the PSF, as a fraction of its value (DAOPHOT's profile error):
        a fit adds ``(profile_error * flux * psf)**2`` to each pixel's variance.
    flux_error : float
        The scatter of the stars' PSF fluxes about their wide-aperture fluxes beyond the noise, as a
        fraction of the flux: the light a PSF that is not each star's own misplaces.  A fit adds
        ``(flux_error * flux)**2`` to the flux's variance.
    """

    coefficients: np.ndarray
    oversampling: int
    degree: int
    centre: tuple[float, float]
    scale: tuple[float, float]
    n_stars: int = 0
    info: dict = field(default_factory=dict)
    variance: np.ndarray | None = None
    profile_error: float = 0.0
    flux_error: float = 0.0

    def __repr__(self) -> str:  # short: tables carry it in their metadata (find_stars(psf=...))
        return (f"FramePSF(size={self.size}, oversampling={self.oversampling}, degree={self.degree}, "
                f"n_stars={self.n_stars})")

    @property
    def size(self) -> int:
        """Nodes along each side of the grid."""
        return int(self.coefficients.shape[-1])

    @property
    def half_size(self) -> float:
        """Reach of the grid from its centre, in image pixels."""
        return (self.size - 1) / 2.0 / self.oversampling

    def terms(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The polynomial terms (N, n_terms) at frame positions."""
        xn = (np.atleast_1d(np.asarray(x, dtype=float)) - self.centre[0]) / self.scale[0]
        yn = (np.atleast_1d(np.asarray(y, dtype=float)) - self.centre[1]) / self.scale[1]
        return np.stack([xn**i * yn**j for i, j in _TERMS[: _n_terms(self.degree)]], axis=-1)

    def at(self, x: Any, y: Any) -> np.ndarray:
        """The PSF grids (N, S, S) at frame positions (unit flux)."""
        return np.einsum("nk,kij->nij", self.terms(x, y), self.coefficients)

    def spline_terms(self) -> np.ndarray:
        """The B-spline coefficients (n_terms, S, S) of each polynomial term (the spline is linear:
        the PSF's at a position is ``terms(x, y) @ spline_terms()``).
        """
        cached = self.__dict__.get("_spline")
        if cached is None:
            cached = spline_coefficients(self.coefficients)
            object.__setattr__(self, "_spline", cached)
        return cached

    def spline_at(self, x: Any, y: Any) -> np.ndarray:
        """The PSF's B-spline coefficients (N, S, S) at frame positions, for :func:`cubic_interpolate`
        ((1, S, S) for a PSF that does not vary).
        """
        cached = self.spline_terms()
        if self.degree == 0:
            return cached[:1]  # one grid serves every row
        return np.einsum("nk,kij->nij", self.terms(x, y), cached)

    def shape_at(self, x: float, y: float) -> dict[str, float]:
        """FWHM (the contour's circle), FWHM along the axes and the angle of the PSF at a position."""
        fwhm, fx, fy, angle = _contour_shape(self.at(x, y)[0], self.oversampling)
        return {"fwhm": fwhm, "fwhm_x": fx, "fwhm_y": fy, "roundness": fy / fx if fx > 0 else float("nan"),
                "angle": angle}

    def model(self) -> FramePSFModel:
        """The fitting model (background, flux, x0, y0) of this PSF."""
        return FramePSFModel(self)

    # ---- files ----
    def write(self, path: Any, *, overwrite: bool = False) -> None:
        """Write the PSF as FITS: the primary HDU is the PSF at the frame's centre (unit sum, OVERSAMP);
        HDU ``PSFVAR`` holds the polynomial coefficients (see docs/psf.md for the keywords).
        """
        from astropy.io import fits

        centre = self.at(*self.centre)[0] / self.oversampling**2
        primary = fits.PrimaryHDU(centre.astype(np.float64))
        h = primary.header
        h["OVERSAMP"] = (self.oversampling, "samples per image pixel")
        h["PSFNORM"] = ("unit sum", "sums to 1: fitted flux = total flux")
        h["PSFKIND"] = ("effective", "PSF x pixel: evaluate, not integrate")
        h["PSFXCEN"] = (self.centre[0], "frame x (0-based) of this PSF")
        h["PSFYCEN"] = (self.centre[1], "frame y (0-based) of this PSF")
        h["NSTARS"] = (self.n_stars, "stars the PSF was built from")
        shape = self.shape_at(*self.centre)
        h["FWHM"] = (round(shape["fwhm"], 4), "[px] at the centre, pixel removed")
        var = fits.ImageHDU(self.coefficients.astype(np.float64), name="PSFVAR")
        v = var.header
        v["POLYDEG"] = (self.degree, "degree of each node's polynomial")
        v["POLYTERM"] = (",".join(f"x{i}y{j}" for i, j in _TERMS[: _n_terms(self.degree)]), "terms, in order")
        v["POLXCEN"] = (self.centre[0], "xn = (x - POLXCEN) / POLXSCL")
        v["POLYCEN"] = (self.centre[1], "yn = (y - POLYCEN) / POLYSCL")
        v["POLXSCL"] = (self.scale[0], "x scale of the normalised position")
        v["POLYSCL"] = (self.scale[1], "y scale of the normalised position")
        v["OVERSAMP"] = (self.oversampling, "nodes per image pixel")
        v["PSFNORM"] = ("sum=OVERSAMP**2", "term 0 sum; others sum to 0")
        from pathlib import Path

        from psfkit.errors import PsfkitError
        from psfkit.io.outputs import atomic_output

        if Path(path).exists() and not overwrite:
            raise PsfkitError(f"{path}: exists")
        hdus = [primary, var]
        if self.variance is not None:
            nv = fits.ImageHDU(np.asarray(self.variance, dtype=np.float64), name="PSFNVAR")
            nv.header["OVERSAMP"] = (self.oversampling, "nodes per image pixel")
            nv.header["COMMENT"] = "variance of each node of PSFVAR's term 0 (unit flux): the PSF's own uncertainty"
            nv.header["PSFPERR"] = (float(self.profile_error), "profile error, fraction of the PSF value")
            nv.header["PSFFERR"] = (float(self.flux_error), "flux error from the PSF, fraction of the flux")
            hdus.append(nv)
        with atomic_output(path) as tmp:  # never onto an input, never a half file
            fits.HDUList(hdus).writeto(tmp)

    @classmethod
    def read(cls, path: Any) -> FramePSF:
        """Read a PSF written by :meth:`write` (a file with a ``PSFVAR`` HDU)."""
        from astropy.io import fits

        from psfkit.io.outputs import remember_input

        remember_input(path)
        with fits.open(path) as hdul:
            if "PSFVAR" not in hdul:
                raise PsfkitError(f"{path}: no PSFVAR extension (not a frame PSF written by psfkit psf)")
            v = hdul["PSFVAR"]
            coef = np.asarray(v.data, dtype=float)
            hd = v.header
            nstars = int(hdul[0].header.get("NSTARS", 0))
            degree = int(hd["POLYDEG"])
            if coef.ndim != 3 or coef.shape[0] != _n_terms(degree) or coef.shape[1] != coef.shape[2]:
                raise PsfkitError(f"{path}: PSFVAR has shape {coef.shape}, not ({_n_terms(degree)}, S, S)")
            variance, perr, ferr = None, 0.0, 0.0
            if "PSFNVAR" in hdul:
                variance = np.asarray(hdul["PSFNVAR"].data, dtype=float)
                perr = float(hdul["PSFNVAR"].header.get("PSFPERR", 0.0))
                ferr = float(hdul["PSFNVAR"].header.get("PSFFERR", 0.0))
                if variance.shape != coef.shape[1:]:
                    raise PsfkitError(f"{path}: PSFNVAR has shape {variance.shape}, not {coef.shape[1:]}")
            return cls(coef, int(hd["OVERSAMP"]), degree, (float(hd["POLXCEN"]), float(hd["POLYCEN"])),
                       (float(hd["POLXSCL"]), float(hd["POLYSCL"])), nstars, {"file": str(path)}, variance, perr,
                       ferr)


class FramePSFModel(ImagePSF):
    """The frame's PSF as a fitting model: ``background``, ``flux``, ``x0``, ``y0`` per star.

    Two further parameters, ``x_origin`` and ``y_origin`` (the stamp's first pixel on the frame),
    are fixed: they say where on the frame the star lies, so that each star is fitted with the PSF
    of its own place.  ``flux`` is the total flux (the PSF has unit sum).
    """

    name = "frame"
    param_names = ("background", "flux", "x0", "y0", "x_origin", "y_origin")

    def __init__(self, psf: FramePSF) -> None:  # noqa: D107 - not ImagePSF's array constructor
        PSFModel.__init__(self, sampling="point")
        self.frame_psf = psf
        o = psf.oversampling
        self.oversampling = o
        centre = psf.at(*psf.centre)[0]
        self.psf = centre
        self.normalisation = PSFNormalisation("unit sum", 1.0, float(centre.max()))
        s = psf.size
        self._cy = self._cx = (s - 1) / 2.0
        self.half_size = psf.half_size
        self._peak = float(centre.max())

    @property
    def _shape(self) -> dict[str, float]:
        """The PSF's shape at the frame's centre, read once on first use (a contour fit: tens of ms,
        which the builder's refits never need).
        """
        shape = self.__dict__.get("_shape_cache")
        if shape is None:
            shape = self.frame_psf.shape_at(*self.frame_psf.centre)
            self.__dict__["_shape_cache"] = shape
        return shape

    @property
    def _fwhm(self) -> float:
        return self._shape["fwhm"]

    def __repr__(self) -> str:
        p = self.frame_psf
        return f"FramePSFModel(size={p.size}, oversampling={p.oversampling}, degree={p.degree}, stars={p.n_stars})"

    def default_free(self) -> np.ndarray:
        """background, flux, x0, y0 free; the stamp origin fixed."""
        return np.array([True, True, True, True, False, False])

    def bounds(self, n):
        """Flux >= 0; everything else free."""
        lo = np.tile([-np.inf, 0.0, -np.inf, -np.inf, -np.inf, -np.inf], (n, 1))
        hi = np.full((n, 6), np.inf)
        return lo, hi

    def _point(self, params, xs, ys, free, jacobian):
        o = self.oversampling
        grids = self.frame_psf.spline_at(params[:, 2] + params[:, 4], params[:, 3] + params[:, 5])
        u = (xs[None, :] - params[:, 2:3]) * o + self._cx
        v = (ys[None, :] - params[:, 3:4]) * o + self._cy
        B, F = params[:, 0:1], params[:, 1:2]
        if not jacobian:
            prof = cubic_interpolate(grids, u, v)
            return B + F * prof, None
        prof, du, dv = cubic_interpolate(grids, u, v, derivatives=True)
        cols = []
        if free[0]:
            cols.append(np.ones_like(prof))
        if free[1]:
            cols.append(prof)
        if free[2]:
            cols.append(-F * du * o)
        if free[3]:
            cols.append(-F * dv * o)
        for k in (4, 5):
            if free[k]:
                cols.append(np.zeros_like(prof))
        return B + F * prof, np.stack(cols, axis=-1)

    def peak(self, params):
        """Peak pixel value above the background (the PSF at its own place).

        The grid's maximum node: of the one grid for a constant PSF; for a varying one, of the
        nodes within 3 of the constant term's maximum (a centred PSF peaks there everywhere on the
        field), so that no whole grid is made per star.
        """
        p = self.frame_psf
        if p.degree == 0:
            return params[:, 1] * float(p.coefficients[0].max())
        jy, jx = np.unravel_index(np.argmax(p.coefficients[0]), p.coefficients[0].shape)
        local = p.coefficients[:, max(jy - 3, 0) : jy + 4, max(jx - 3, 0) : jx + 4].reshape(p.coefficients.shape[0], -1)
        grids = p.terms(params[:, 2] + params[:, 4], params[:, 3] + params[:, 5]) @ local
        return params[:, 1] * grids.max(axis=1)

    def fwhm_and_gradient(self, params):
        """The PSF's FWHM along its axes at each star's place (no per-star freedom: zero gradients).

        A varying PSF is read as :func:`psfkit.psf.frame_shape.psf_shape_at` reads it (one contour at
        the frame's centre, linear maps onto the places': within 0.05 % of each place's own contour).
        """
        n = params.shape[0]
        fx = np.full(n, self._shape["fwhm_x"])
        fy = np.full(n, self._shape["fwhm_y"])
        if self.frame_psf.degree > 0 and n:
            from psfkit.psf.frame_shape import psf_shape_at

            shape = psf_shape_at(self.frame_psf, params[:, 2] + params[:, 4], params[:, 3] + params[:, 5])
            fx, fy = shape[:, 1], shape[:, 2]
        z = np.zeros_like(params)
        return fx, fy, z, z.copy()


# ---------------------------------------------------------------------------------------------
# building


def _reach_rings(samples: _Samples, hi: int) -> np.ndarray:
    """Each sample's whole-pixel ring about its star's centre (N, B, B), ``hi + 1`` beyond ``hi``."""
    n, b, _ = samples.stamps.shape
    yy, xx = np.mgrid[0:b, 0:b]
    r = np.hypot(xx[None] + samples.origin[:, 0, None, None] - samples.x[:, None, None],
                 yy[None] + samples.origin[:, 1, None, None] - samples.y[:, None, None])
    return np.minimum(np.floor(r).astype(np.intp), hi + 1)


def _choose_reach(samples: _Samples, fwhm: float, hi: int, ring: np.ndarray | None = None) -> int:
    """The PSF's reach (px): where the stars' flux-weighted mean radial profile falls below
    REACH_LEVEL of its peak or into its own noise (3 sigma), from MIN_REACH_FWHM out to ``hi``
    (``ring``: the samples' rings, :func:`_reach_rings`, when already known).
    """
    lo = min(int(math.ceil(MIN_REACH_FWHM * fwhm)), hi)
    ring = (_reach_rings(samples, hi) if ring is None else ring).ravel()
    ok = np.isfinite(samples.stamps) & np.isfinite(samples.var)
    # per ring: sum over stars of the light, of the flux that lights it and of the variance
    with np.errstate(invalid="ignore"):
        signal = np.where(ok, samples.stamps - samples.background[:, None, None], 0.0)
    light = np.bincount(ring, weights=signal.ravel(), minlength=hi + 2)
    flux = np.bincount(ring, weights=(ok * samples.flux[:, None, None]).ravel(), minlength=hi + 2)
    v = np.bincount(ring, weights=np.where(ok, samples.var, 0.0).ravel(), minlength=hi + 2)
    profile = light / np.where(flux > 0, flux, np.inf)  # per pixel, per unit flux
    noise = np.sqrt(v) / np.where(flux > 0, flux, np.inf)
    peak = profile[0]
    if not np.isfinite(peak) or peak <= 0:
        return lo
    for rad in range(lo, hi + 1):
        level = profile[rad : rad + 2]
        if np.all(level < np.maximum(REACH_LEVEL * peak, 3.0 * noise[rad : rad + 2])):
            return rad
    return hi


def _select(table: Any, shape: tuple[int, int], reach: float, fwhm: float) -> tuple[np.ndarray, dict]:
    """Indices of the table's rows fit to build a PSF from, and the counts of what was left out.

    A star with another source (accepted or not) within 3 FWHM brighter than 1 % of it, or any
    within 2 FWHM (its mask would cover the star's core), is left out; farther neighbours are
    masked in its stamp (:func:`_mask_neighbours`).
    """
    from scipy.spatial import cKDTree

    n = len(table)
    x = np.asarray(table["x_fit"], dtype=float)
    y = np.asarray(table["y_fit"], dtype=float)
    flux = np.asarray(table["flux_fit"], dtype=float)
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(flux) & (flux > 0)
    counts: dict[str, int] = {}
    accepted = np.asarray(table["accepted"], dtype=bool) if "accepted" in table.colnames else np.ones(n, bool)
    flags = np.asarray(table["flags"]) if "flags" in table.colnames else np.zeros(n, int)
    snr = np.asarray(table["snr"], dtype=float) if "snr" in table.colnames else np.full(n, np.inf)
    ny, nx = shape
    inside = (x >= reach) & (x <= nx - 1 - reach) & (y >= reach) & (y <= ny - 1 - reach)
    keep = ok & accepted
    counts["rejected by find"] = int(np.count_nonzero(ok & ~accepted))
    for name, bad in (("flagged (saturated, edge, neighbours)", flags != 0), ("S/N below 20", ~(snr >= 20)),
                      ("too close to the edge", ~inside)):
        counts[name] = int(np.count_nonzero(keep & bad))
        keep &= ~bad
    # isolated: no other source (accepted or not) within 3 FWHM brighter than 1 % of the star
    fin = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    crowded = np.zeros(n, dtype=bool)
    if len(fin) > 1:
        pairs = cKDTree(np.column_stack([x[fin], y[fin]])).query_pairs(3.0 * fwhm, output_type="ndarray")
        i = np.concatenate([fin[pairs[:, 0]], fin[pairs[:, 1]]])  # both ways round
        j = np.concatenate([fin[pairs[:, 1]], fin[pairs[:, 0]]])
        d2 = (x[j] - x[i]) ** 2 + (y[j] - y[i]) ** 2
        with np.errstate(invalid="ignore"):
            faint = np.isfinite(flux[j]) & (flux[j] < 0.01 * flux[i])
        crowded[i[~faint | (d2 < (2.0 * fwhm) ** 2)]] = True
    counts["a neighbour within 3 FWHM"] = int(np.count_nonzero(keep & crowded))
    keep &= ~crowded
    # the frame's typical shape: binaries, galaxies and cosmic rays are outliers in FWHM or roundness
    for col in ("fwhm", "roundness"):
        if col in table.colnames and np.count_nonzero(keep) >= 5:
            v = np.asarray(table[col], dtype=float)
            med = np.nanmedian(v[keep])
            mad = 1.4826 * np.nanmedian(np.abs(v[keep] - med))
            bad = ~(np.abs(v - med) <= max(4.0 * mad, 0.05 * abs(med)))
            counts[f"{col} unlike the frame's stars"] = int(np.count_nonzero(keep & bad))
            keep &= ~bad
    return np.flatnonzero(keep), counts


@dataclass
class _Samples:
    """Each star's pixels as samples of the normalised PSF."""

    stamps: np.ndarray  # (N, B, B) data
    var: np.ndarray  # (N, B, B) pixel variance (data units^2), inf where unusable
    origin: np.ndarray  # (N, 2) first pixel (x, y)
    x: np.ndarray  # (N,) centres on the frame
    y: np.ndarray
    flux: np.ndarray
    background: np.ndarray
    gain: float | None = None  # e-/ADU: variances from the model (Poisson + read noise) ...
    read_noise: float = 0.0  # ADU
    noise: float = 1.0  # ... else this constant noise (ADU)

    def variance(self, expected: np.ndarray) -> np.ndarray:
        """Pixel variances from the expected values (the model, never the data: data-based weights
        bias a weighted mean low), inf where a pixel is unusable.
        """
        if self.gain:
            v = np.maximum(expected, 0.0) / self.gain + self.read_noise**2
        else:
            v = np.full_like(expected, self.noise**2)
        return np.where(np.isfinite(self.var), np.maximum(v, 1e-30), np.inf)

    def subset(self, idx: np.ndarray) -> _Samples:
        """The samples of some stars."""
        return _Samples(self.stamps[idx], self.var[idx], self.origin[idx], self.x[idx], self.y[idx],
                        self.flux[idx], self.background[idx], self.gain, self.read_noise, self.noise)


def _stamp_variance(stamps: np.ndarray, gain: float | None, read_noise: float, noise: float) -> np.ndarray:
    """Pixel variances of stamps from their data (Poisson and read noise, or the constant noise), inf where
    a pixel is unusable (NaN).
    """
    if gain:
        var = np.maximum(stamps, 0.0) / gain + read_noise**2
    else:
        var = np.full_like(stamps, noise**2)
    return np.where(np.isfinite(stamps), np.maximum(var, 1e-12 * noise**2 + 1e-30), np.inf)


def _cut_boxes(data: np.ndarray, x: np.ndarray, y: np.ndarray, half: int) -> tuple[np.ndarray, np.ndarray]:
    """Square boxes (N, 2 half + 1, 2 half + 1) about the stars' nearest pixels, NaN off the frame, and
    their first pixels (N, 2) (x, y).
    """
    from psfkit.psf.stamps import cut_stamps

    stamps, inside, origin, _ = cut_stamps(data, x, y, 2 * half + 1)
    return np.where(inside, stamps, np.nan), origin.astype(float)


def _ring_offsets(half: int, r_in: float, r_out: float) -> np.ndarray:
    """Flat indices of a box's pixels (2 half + 1 a side) between r_in and r_out of its centre pixel."""
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    r2 = (xx * xx + yy * yy).ravel()
    return np.flatnonzero((r2 >= r_in * r_in) & (r2 <= r_out * r_out))


def _source_pairs(x: np.ndarray, y: np.ndarray, src_x: np.ndarray, src_y: np.ndarray,
                  radius: float) -> tuple[np.ndarray, np.ndarray]:
    """(i, j): every source j (finite position) within ``radius`` of point i."""
    from scipy.spatial import cKDTree

    ok = np.flatnonzero(np.isfinite(src_x) & np.isfinite(src_y))
    if not len(ok) or not len(x):
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    tree = cKDTree(np.column_stack([src_x[ok], src_y[ok]]))
    lists = tree.query_ball_point(np.column_stack([x, y]), r=radius)
    i = np.repeat(np.arange(len(x)), [len(v) for v in lists])
    j = ok[np.concatenate([np.asarray(v, dtype=np.intp) for v in lists])] if len(i) else np.zeros(0, np.intp)
    return i, j


def _discs(n: int, b: int, origin: np.ndarray, i: np.ndarray, cx: np.ndarray, cy: np.ndarray,
           r: np.ndarray) -> np.ndarray:
    """(n, b, b) True on the pixels of box ``i[k]`` (first pixel ``origin``) within ``r[k]`` of
    (``cx[k]``, ``cy[k]``), for every k: each disc drawn on its own small window, not the whole box.
    """
    out = np.zeros(n * b * b, dtype=bool)
    if not len(i):
        return out.reshape(n, b, b)
    h = int(math.ceil(float(np.max(r)))) + 1
    ww = np.arange(-h, h + 1)
    lx = np.rint(cx - origin[i, 0]).astype(np.intp)[:, None, None] + ww[None, None, :]  # (K, 1, W)
    ly = np.rint(cy - origin[i, 1]).astype(np.intp)[:, None, None] + ww[None, :, None]  # (K, W, 1)
    near = ((lx + origin[i, 0, None, None] - cx[:, None, None]) ** 2
            + (ly + origin[i, 1, None, None] - cy[:, None, None]) ** 2) <= (r * r)[:, None, None]
    near &= (lx >= 0) & (lx < b) & (ly >= 0) & (ly < b)
    k, yy, xx = np.nonzero(near)
    out[(i[k] * b + ly[k, yy, 0]) * b + lx[k, 0, xx]] = True
    return out.reshape(n, b, b)


def _ring_unmasked(ring: np.ndarray, origin: np.ndarray, half: int, owner: np.ndarray, all_x: np.ndarray,
                   all_y: np.ndarray, all_flux: np.ndarray, fwhm: float) -> np.ndarray:
    """(N, P) True where a ring pixel is clear of every other source: 2.5 FWHM around one fainter than
    the ring's star, 4 FWHM around a brighter one (or one with no flux), as in the stamps.
    """
    n = len(owner)
    size = 2 * half + 1
    free = np.ones((n, len(ring)), dtype=bool)
    cx, cy = origin[:, 0] + half, origin[:, 1] + half
    r_far = math.sqrt(float(np.max((ring % size - half) ** 2 + (ring // size - half) ** 2))) if len(ring) else 0.0
    i, j = _source_pairs(cx, cy, all_x, all_y, r_far + 4.0 * fwhm + 1.5)
    keep = j != owner[i]
    i, j = i[keep], j[keep]
    if not len(i):
        return free
    own_flux = all_flux[owner]
    faint = np.isfinite(all_flux[j]) & (all_flux[j] < own_flux[i])
    r = np.where(faint, 2.5 * fwhm, 4.0 * fwhm)
    return ~_discs(n, size, origin, i, all_x[j], all_y[j], r).reshape(n, -1)[:, ring]


def _ring_sky(values: np.ndarray, free: np.ndarray, rounds: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Each row's sky (the median of its 3-sigma-clipped pixels) and noise (their interquartile sigma);
    NaN for a row with fewer than 20 usable pixels.
    """
    n = values.shape[0]
    srt = np.sort(np.where(free & np.isfinite(values), values, np.nan), axis=1)  # NaN last
    rows = np.arange(n)
    lo = np.zeros(n, dtype=np.intp)
    hi = np.isfinite(srt).sum(axis=1)
    last = max(srt.shape[1] - 1, 0)

    def at(k):
        return srt[rows, np.clip(k, 0, last)]

    med = sig = np.full(n, np.nan)
    for _ in range(rounds):
        m = hi - lo
        med = at(lo + m // 2)
        sig = (at(lo + (3 * m) // 4) - at(lo + m // 4)) / 1.349
        with np.errstate(invalid="ignore"):
            new_lo = np.count_nonzero(srt < (med - 3.0 * sig)[:, None], axis=1)
            new_hi = np.count_nonzero(srt <= (med + 3.0 * sig)[:, None], axis=1)
        ok = (new_hi - new_lo) >= 20
        new_lo, new_hi = np.where(ok, new_lo, lo), np.where(ok, new_hi, hi)
        if np.array_equal(new_lo, lo) and np.array_equal(new_hi, hi):
            break
        lo, hi = new_lo, new_hi
    m = hi - lo
    med = np.where(m >= 20, at(lo + m // 2), np.nan)
    sig = np.where(m >= 20, sig, np.nan)
    if np.isfinite(med).any():  # a star whose ring is all masked or off the frame: the others' median
        med = np.where(np.isfinite(med), med, np.nanmedian(med))
    return med, sig


def _light_in_boxes(psf: FramePSF, origin: np.ndarray, size: int, owner: np.ndarray, src_x: np.ndarray,
                    src_y: np.ndarray, src_flux: np.ndarray, radius: float | None = None) -> np.ndarray:
    """(N, size, size): the light of the sources (drawn with ``psf``) on each box, leaving out source
    ``owner[i]`` on box i; sources with no finite flux are not drawn.  With ``radius``, only the
    pixels within it of the box's centre are wanted (sources that reach no such pixel are skipped).

    Each source is drawn once per box it reaches, on the square of the PSF's reach about its
    nearest pixel, and added to the box by a bincount (no frame-sized image).
    """
    n = len(origin)
    out = np.zeros(n * size * size)
    half = int(math.ceil(psf.half_size))
    b = 2 * half + 1
    drawable = np.isfinite(src_flux) & (src_flux > 0)
    sx = np.where(drawable, src_x, np.nan)
    cx, cy = origin[:, 0] + (size - 1) / 2.0, origin[:, 1] + (size - 1) / 2.0
    reach = (size - 1) / 2.0 * math.sqrt(2.0) if radius is None else radius
    i, j = _source_pairs(cx, cy, sx, src_y, reach + half * math.sqrt(2.0) + 1.0)
    keep = j != owner[i]
    i, j = i[keep], j[keep]
    if not len(i):
        return out.reshape(n, size, size)
    o, s = psf.oversampling, psf.size
    c = (s - 1) / 2.0
    yy, xx = np.mgrid[0:b, 0:b]
    # each source's footprint drawn once, then scattered onto every box it reaches
    uj, inv = np.unique(j, return_inverse=True)
    fx0 = np.rint(src_x[uj]).astype(int) - half
    fy0 = np.rint(src_y[uj]).astype(int) - half
    u = ((xx[None] + fx0[:, None, None] - src_x[uj, None, None]) * o + c).reshape(len(uj), -1)
    v = ((yy[None] + fy0[:, None, None] - src_y[uj, None, None]) * o + c).reshape(len(uj), -1)
    vals = cubic_interpolate(psf.spline_at(src_x[uj], src_y[uj]), u, v) * src_flux[uj, None]
    lx = (xx.ravel()[None] + (fx0[inv] - origin[i, 0].astype(int))[:, None])
    ly = (yy.ravel()[None] + (fy0[inv] - origin[i, 1].astype(int))[:, None])
    inside = (lx >= 0) & (lx < size) & (ly >= 0) & (ly < size)
    flat = (i[:, None] * size + ly) * size + lx
    out += np.bincount(flat[inside], weights=vals[inv][inside], minlength=n * size * size)
    return out.reshape(n, size, size)


def _mask_neighbours(var: np.ndarray, origin: np.ndarray, x: np.ndarray, y: np.ndarray, flux: np.ndarray,
                     all_x: np.ndarray, all_y: np.ndarray, all_flux: np.ndarray, fwhm: float) -> np.ndarray:
    """Pixel variances with every other source's pixels masked (inf): 2.5 FWHM around a fainter
    one, 4 FWHM around a brighter one (or one with no flux), never nearer than 1.5 FWHM to the
    star's centre (0.75 FWHM around the neighbour at least).
    """
    n, b, _ = var.shape
    out = var.copy()
    i, j = _source_pairs(x, y, all_x, all_y, b / 2.0 * math.sqrt(2.0) + 4.0 * fwhm)
    dx, dy = all_x[j] - x[i], all_y[j] - y[i]
    other = dx * dx + dy * dy >= 0.25  # not the star itself
    i, j, dx, dy = i[other], j[other], dx[other], dy[other]
    if not len(i):
        return out
    with np.errstate(invalid="ignore"):
        fainter = np.isfinite(all_flux[j]) & (all_flux[j] < flux[i])
    r = np.where(fainter, 2.5 * fwhm, 4.0 * fwhm)
    # never over the star's own core: a mask there biases its centre and flux, and with them the
    # stacked PSF's width (a faint neighbour at 1.4 FWHM of a bright star made a Moffat field's PSF
    # 1.5 % too wide)
    r = np.minimum(r, np.maximum(np.hypot(dx, dy) - 1.5 * fwhm, 0.75 * fwhm))
    out[_discs(n, b, origin, i, all_x[j], all_y[j], r)] = np.inf
    return out


def _accumulate(psf_terms: np.ndarray, samples: _Samples, grids: np.ndarray, o: int, s: int,
                ridge: float, clip: float | None = 5.0,
                core_radius: float | None = None, freeze_outer: bool = False, keep: np.ndarray | None = None,
                backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """One stacking step: the grid correction per node and term, and the samples it kept (N, B, B).

    Samples off the current model by more than ``clip`` sigma (cosmic rays, a neighbour's light) are
    left out; the first step, from an empty grid, clips nothing; ``keep`` (the samples a previous
    step kept) replaces the clipping.  ``backend="numpy"`` forces the numpy reference of the sample
    pass; ``"auto"`` uses its compiled twin where available.
    """
    ata, atb, kept = _normal_equations(psf_terms, samples, grids, o, s, clip, keep=keep, backend=backend)
    return _solve_nodes(ata, atb, s, ridge, core_radius, freeze_outer), kept


def _normal_equations(psf_terms: np.ndarray, samples: _Samples, grids: np.ndarray, o: int, s: int,
                      clip: float | None, *, keep: np.ndarray | None = None, groups: np.ndarray | None = None,
                      backend: str = "auto") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The stacking step's sample pass: each sample's residual from the model ``grids`` over the flux,
    weighted, clipped and summed per node.

    Returns each node's normal equations (ata (S*S, k, k), atb (S*S, k)), with ``groups`` (a group
    number per star) one set per group (ata (G, S*S, k, k), atb (G, S*S, k)), and the samples kept
    (N, B, B).  The compiled twin
    (:func:`psfkit.psf._empirical_kernels.stack_normal_equations`) runs where available;
    ``backend="numpy"`` forces this numpy reference.
    """
    from psfkit.psf import _empirical_kernels

    if backend != "numpy" and _empirical_kernels.available() and samples.stamps.size:
        return _empirical_kernels.stack_normal_equations(
            grids, samples.stamps, np.isfinite(samples.var), samples.origin, samples.x, samples.y, samples.flux,
            samples.background, samples.gain, samples.read_noise, samples.noise, o, s, MAX_PIXEL_SNR, psf_terms,
            clip, keep, groups)
    n, b, _ = samples.stamps.shape
    c = (s - 1) / 2.0
    yy, xx = np.mgrid[0:b, 0:b]
    px = xx[None].astype(float) + samples.origin[:, 0, None, None]
    py = yy[None].astype(float) + samples.origin[:, 1, None, None]
    u = (px - samples.x[:, None, None]) * o + c
    v = (py - samples.y[:, None, None]) * o + c
    model = cubic_interpolate(grids, u.reshape(n, -1), v.reshape(n, -1), backend=backend).reshape(n, b, b)
    norm = (samples.stamps - samples.background[:, None, None]) / samples.flux[:, None, None]
    resid = norm - model
    expected = samples.background[:, None, None] + samples.flux[:, None, None] * model
    var = samples.variance(expected)
    # no sample counts as better than S/N MAX_PIXEL_SNR: a bright star's core would otherwise dominate
    # its nodes, and its fitted centre, pulled by the noise of its brightest pixel, leaves a spike there
    var = np.maximum(var, (np.abs(expected - samples.background[:, None, None]) / MAX_PIXEL_SNR) ** 2)
    w = samples.flux[:, None, None] ** 2 / var
    z = resid * np.sqrt(w)
    good = np.isfinite(z) & (u > -0.5) & (u < s - 0.5) & (v > -0.5) & (v < s - 0.5)
    iu = np.clip(np.rint(u), 0, s - 1).astype(np.intp)
    iv = np.clip(np.rint(v), 0, s - 1).astype(np.intp)
    nodes = iv * s + iu
    if keep is not None:
        good &= keep
    elif clip is not None:
        # outliers against the residuals' own robust scatter at their node (the model may still be
        # off by more than the noise, e.g. a constant PSF on a varying field: those are not outliers)
        sel = np.flatnonzero(good)
        zs, ns = z.ravel()[sel], nodes.ravel()[sel]
        med, mad = node_median_mad(zs, ns, s * s, backend=backend)
        scale = np.maximum(1.4826 * mad, 1.0)
        good.ravel()[sel] = np.abs(zs - med[ns]) < clip * scale[ns]
    n_groups = 1 if groups is None else int(np.max(groups)) + 1
    group = np.zeros(n, np.intp) if groups is None else np.asarray(groups, dtype=np.intp)
    node = (group[:, None, None] * (s * s) + nodes)[good]
    wg = w[good]
    rg = resid[good]  # the grid holds the PSF's value per image pixel at each offset
    t = np.broadcast_to(psf_terms[:, None, None, :], (n, b, b, psf_terms.shape[1]))[good]
    k = psf_terms.shape[1]
    m = n_groups * s * s
    ata = np.empty((m, k, k))
    atb = np.empty((m, k))
    for i in range(k):
        atb[:, i] = np.bincount(node, weights=wg * t[:, i] * rg, minlength=m)
        for j in range(i, k):
            ata[:, i, j] = ata[:, j, i] = np.bincount(node, weights=wg * t[:, i] * t[:, j], minlength=m)
    if groups is not None:
        return ata.reshape(n_groups, s * s, k, k), atb.reshape(n_groups, s * s, k), good
    return ata, atb, good


def _solve_nodes(ata: np.ndarray, atb: np.ndarray, s: int, ridge: float, core_radius: float | None,
                 freeze_outer: bool) -> np.ndarray:
    """The grid correction (k, S, S) from each node's normal equations."""
    k = ata.shape[-1]
    # a small ridge keeps nodes with few samples (and higher terms with little leverage) near zero
    scale = np.maximum(ata[:, 0, 0], 1e-300)
    ata = ata + ridge * scale[:, None, None] * np.eye(k)[None]
    empty = ata[:, 0, 0] <= ridge * scale * 1.0000001
    sol = np.zeros((s * s, k))
    okn = ~empty & (scale > 1e-300)
    if k > 1 and core_radius is not None:
        # the variation is solved in the core only: the wings' nodes have too little signal per
        # term, and a halo is taken as the same across the field
        yy, xx = np.divmod(np.arange(s * s), s)
        inner = (xx - (s - 1) / 2.0) ** 2 + (yy - (s - 1) / 2.0) ** 2 <= core_radius**2
        outer = okn & ~inner
        sol[outer, 0] = atb[outer, 0] / ata[outer, 0, 0]
        if freeze_outer:  # the wings stay those of the constant PSF (their samples were cropped)
            sol[outer, 0] = 0.0
        okn &= inner
    sol[okn] = np.linalg.solve(ata[okn], atb[okn][..., None])[..., 0]
    return sol.T.reshape(k, s, s)


def node_median_mad(z: np.ndarray, nodes: np.ndarray, n_nodes: int, *,
                    backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Per node, the median of the samples ``z`` at it and their median absolute deviation from it.

    The median of ``m`` samples is the sorted sample ``m // 2`` (the upper one of an even count);
    nodes with no sample get 0.  ``backend="numpy"`` forces the numpy reference (two sorts of all
    the samples); ``"auto"`` uses the compiled kernel where available (one sort of small groups).

    Examples
    --------
    >>> med, mad = node_median_mad(np.array([1.0, 5.0, 2.0, 7.0]), np.array([0, 0, 0, 2]), 3, backend="numpy")
    >>> med.tolist(), mad.tolist()
    ([2.0, 0.0, 7.0], [1.0, 0.0, 0.0])
    """
    z = np.asarray(z, dtype=float)
    nodes = np.asarray(nodes, dtype=np.intp)
    if backend != "numpy" and z.size:
        from psfkit.psf import _empirical_kernels

        if _empirical_kernels.available():
            return _empirical_kernels.node_median_mad(z, nodes, n_nodes)
    med = np.zeros(n_nodes)
    mad = np.zeros(n_nodes)
    if not z.size:
        return med, mad
    order = np.lexsort((z, nodes))
    zs, ns = z[order], nodes[order]
    start = np.searchsorted(ns, np.arange(n_nodes))
    count = np.bincount(ns, minlength=n_nodes)
    has = count > 0
    med[has] = zs[(start + count // 2)[has]]
    dev = np.abs(zs - med[ns])
    dev = dev[np.lexsort((dev, ns))]
    mad[has] = dev[(start + count // 2)[has]]
    return med, mad


def _smooth_correction(corr: np.ndarray) -> np.ndarray:
    """A light (1 2 1) smoothing of each term's correction: the stacking's noise is per node."""
    from scipy import ndimage

    kern = np.array([0.25, 0.5, 0.25])
    out = ndimage.correlate1d(corr, kern, axis=-1, mode="constant")
    return ndimage.correlate1d(out, kern, axis=-2, mode="constant")


def _remove_pixel_frequency(coef: np.ndarray, o: int) -> np.ndarray:
    """Grids with their content at the grid's highest frequency (one cycle per 2 nodes) taken out,
    along x and along y, where that frequency is a whole number of cycles per pixel (even ``o``).

    An effective PSF is the PSF convolved with the pixel box, whose transfer is zero at every whole
    number of cycles per pixel: the true grid holds nothing there.  The stack does: the nodes of
    alternate rows (or columns) are set by different stars (those whose centres fall near a pixel's
    centre or near its edge), and their fluxes' and centres' errors leave a checkerboard ("dotted"
    ePSFs) that moved the centres of bright stars by several of their errors.  The band is taken out
    by demodulating with (-1)^j, smoothing the envelope (Gaussian, 2 nodes) and subtracting it
    remodulated: the true PSF changes by less than 1e-4 of its peak.
    """
    if o % 2:
        return coef
    from scipy import ndimage

    out = coef
    for ax in (-1, -2):
        n = out.shape[ax]
        shape = [1] * out.ndim
        shape[ax] = n
        alt = ((-1.0) ** np.arange(n)).reshape(shape)
        envelope = ndimage.gaussian_filter1d(out * alt, 2.0, axis=ax, mode="constant")
        out = out - envelope * alt
    return out


def _normalise_and_centre(coef: np.ndarray, o: int, fwhm: float) -> np.ndarray:
    """Term 0 to unit flux (sum o^2), the others to zero sum, and the whole grid recentred on its centroid
    (the checkerboard at the pixel's frequency taken out first, :func:`_remove_pixel_frequency`).
    """
    from scipy import ndimage

    coef = _remove_pixel_frequency(coef, o)
    s = coef.shape[-1]
    c = (s - 1) / 2.0
    yy, xx = np.mgrid[0:s, 0:s]
    near = (xx - c) ** 2 + (yy - c) ** 2 <= (1.5 * fwhm * o) ** 2
    core = np.where(near, np.maximum(coef[0], 0.0), 0.0)
    tot = core.sum()
    if tot > 0:
        dx = float((core * (xx - c)).sum() / tot)
        dy = float((core * (yy - c)).sum() / tot)
        if abs(dx) > 1e-3 or abs(dy) > 1e-3:
            coef = np.stack([ndimage.shift(t, (-dy, -dx), order=3, mode="constant") for t in coef])
    coef = coef.copy()
    # the outer ring: the PSF must fall to zero at the edge of its reach
    edge = (xx - c) ** 2 + (yy - c) ** 2 > c**2
    coef[:, edge] = 0.0
    coef[0] *= (o * o) / coef[0].sum()
    if coef.shape[0] > 1:
        coef[1:] -= coef[1:].sum(axis=(1, 2), keepdims=True) * (coef[0] / coef[0].sum())[None]
        # every term centred too (zero first moments in the core), so that the PSF is centred at every
        # place of the field: a term with a first moment would move the stars' centres with their
        # position.  Adding m / o^2 x dP0/dx to a term takes its moment m away (sum x dP0/dx = -o^2).
        gy, gx = np.gradient(coef[0])
        for k in range(1, coef.shape[0]):
            mx = float((np.where(near, coef[k], 0.0) * (xx - c)).sum())
            my = float((np.where(near, coef[k], 0.0) * (yy - c)).sum())
            ax = float((np.where(near, gx, 0.0) * (xx - c)).sum())
            ay = float((np.where(near, gy, 0.0) * (yy - c)).sum())
            if ax < 0 and ay < 0:
                coef[k] = coef[k] - mx / ax * gx - my / ay * gy
    return coef


def _fit_positions(frame_psf: FramePSF, data: np.ndarray, x: np.ndarray, y: np.ndarray, flux: np.ndarray,
                   background: np.ndarray, gain: float | None, read_noise: float, box: int, *,
                   free_background: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centres and fluxes of stars at known places fitted with the PSF in one batch of the frame-fit
    engine (:func:`psfkit.psf.frame_fit.fit_frame_stamps`, compiled; the PSF's own uncertainty left out).

    No peak refinement (the places are fitted centres already).  Returns (x, y, flux, ok); a star
    whose fit failed or moved by a pixel or more keeps its inputs and ``ok`` False.
    """
    from psfkit.psf.engine import NoiseModel
    from psfkit.psf.frame_fit import fit_frame_stamps
    from psfkit.psf.stamps import cut_stamps

    stamps, inside, origin, _ = cut_stamps(data, x, y, box)
    stamps = np.where(inside, stamps, np.nan)
    n = len(x)
    p0 = np.column_stack([background, flux, x - origin[:, 0], y - origin[:, 1], origin[:, 0].astype(float),
                          origin[:, 1].astype(float)])
    # the PSF's own frame-fit engine (compiled); a fixed background is a background bounded to its value
    lo = np.tile([-np.inf, 0.0, -1.0, -1.0, -np.inf, -np.inf], (n, 1))
    hi = np.tile([np.inf, np.inf, float(box), float(box), np.inf, np.inf], (n, 1))
    if not free_background:
        lo[:, 0] = hi[:, 0] = background
    if gain:
        fit = fit_frame_stamps(frame_psf, stamps, p0, weight_mask=inside, noise=NoiseModel(gain=gain,
                               read_noise=read_noise), bounds=(lo, hi), max_iter=15, rtol=1e-4,
                               psf_uncertainty=False)
    else:
        fit = fit_frame_stamps(frame_psf, stamps, p0, weight_mask=inside, variance=np.ones_like(stamps),
                               bounds=(lo, hi), max_iter=15, rtol=1e-4, psf_uncertainty=False)
    p = fit.params
    ok = ((fit.flags & (F.NOT_CONVERGED | F.FIT_FAILED)) == 0) & np.isfinite(p).all(axis=1) & (p[:, 1] > 0)
    ok &= (np.abs(p[:, 2] - p0[:, 2]) < 1.0) & (np.abs(p[:, 3] - p0[:, 3]) < 1.0)
    return (np.where(ok, p[:, 2] + origin[:, 0], x), np.where(ok, p[:, 3] + origin[:, 1], y),
            np.where(ok, p[:, 1], flux), ok)


def _refit(frame_psf: FramePSF, samples: _Samples, data: np.ndarray, gain: float | None, read_noise: float,
           box: int) -> _Samples:
    """The stars' centres and fluxes fitted again with the PSF, the sky fixed at the stamp's."""
    x, y, flux, _ = _fit_positions(frame_psf, data, samples.x, samples.y, samples.flux, samples.background, gain,
                                   read_noise, box)
    return _Samples(samples.stamps, samples.var, samples.origin, x, y, flux, samples.background, samples.gain,
                    samples.read_noise, samples.noise)


def _stack(samples: _Samples, degree: int, o: int, s: int, fwhm: float, frame: tuple, iterations: int,
           data: np.ndarray, gain: float | None, read_noise: float, box: int,
           start: np.ndarray | None = None, refit: bool = True) -> tuple[FramePSF, _Samples]:
    centre, scale = frame
    k = _n_terms(degree)
    full = samples
    crop = degree > 0 and start is not None
    if crop:
        # only the core varies (VARIATION_FWHM): its pixels are all the stacking of the variation
        # needs, the wings stay those of the constant PSF it starts from (6 x fewer samples)
        b = samples.stamps.shape[1]
        h = min(int(math.ceil(VARIATION_FWHM * fwhm + 2.0)), (b - 1) // 2)
        a = (b - 1) // 2 - h
        sl = (slice(None), slice(a, a + 2 * h + 1), slice(a, a + 2 * h + 1))
        samples = _Samples(samples.stamps[sl], samples.var[sl], samples.origin + a, samples.x, samples.y,
                           samples.flux, samples.background, samples.gain, samples.read_noise, samples.noise)
    psf = FramePSF(np.zeros((k, s, s)), o, degree, centre, scale, len(samples.x))
    if start is not None:
        coef = np.zeros((k, s, s))
        coef[: min(k, start.shape[0])] = start[:k]
        psf = FramePSF(coef, o, degree, centre, scale, len(samples.x))
    for it in range(iterations):
        terms = psf.terms(samples.x, samples.y)
        keep = None
        for step in range(3):  # stacking steps between refits
            grids = psf.spline_at(samples.x, samples.y)
            first = it == 0 and step == 0 and start is None
            # the outliers clipped at an iteration's first step stay out for its other steps (they are
            # cosmic rays and neighbours' light, which a step's small change of the grid does not move)
            corr, kept = _accumulate(terms, samples, grids, o, s, ridge=1e-3, clip=None if first else 5.0,
                                     core_radius=VARIATION_FWHM * fwhm * o, freeze_outer=crop, keep=keep)
            keep = None if first else kept
            if it > 0:
                corr = _smooth_correction(corr) if it < iterations - 1 else corr
            psf = FramePSF(_normalise_and_centre(psf.coefficients + corr, o, fwhm), o, degree, centre, scale,
                           len(samples.x))
        # a stack that starts from a PSF starts from its stars' centres and fluxes too: refitted
        # after its first and last rounds only (each refit is a batched fit of every star)
        if refit and (start is None or it in (0, iterations - 1)):
            samples = _refit(psf, samples, data, gain, read_noise, box)
    if crop:  # the full stamps back, with the refitted centres and fluxes
        samples = _Samples(full.stamps, full.var, full.origin, samples.x, samples.y, samples.flux, full.background,
                           full.gain, full.read_noise, full.noise)
    return psf, samples


def own_light(psf: FramePSF, origin: np.ndarray, box: int | tuple[int, int], x: np.ndarray, y: np.ndarray,
              flux: np.ndarray) -> np.ndarray:
    """Each star's own light on its stamp (N, h, w) of first pixel ``origin`` (``box``: h = w, or
    (h, w)), where :func:`add_stars` draws it on the frame (the square of the PSF's reach around its
    nearest pixel); a star with a non-finite flux has none.

    Examples
    --------
    >>> r2 = ((np.arange(41) - 20.0) ** 2)[:, None] + ((np.arange(41) - 20.0) ** 2)[None, :]
    >>> grid = np.exp(-r2 / (2 * 2.5**2)); grid *= 4.0 / grid.sum()
    >>> psf = FramePSF(grid[None], 2, 0, (20.0, 20.0), (20.0, 20.0))
    >>> light = own_light(psf, np.array([[10.0, 10.0]]), 21, np.array([20.3]), np.array([19.6]), np.array([100.0]))
    >>> bool(np.allclose(light[0], render_stars(psf, (41, 41), [20.3], [19.6], [100.0])[10:31, 10:31]))
    True
    """
    n = len(x)
    o, s = psf.oversampling, psf.size
    c = (s - 1) / 2.0
    half = int(math.ceil(psf.half_size))
    h, w = (box, box) if np.isscalar(box) else box
    yy, xx = np.mgrid[0:h, 0:w]
    px = xx[None] + origin[:, 0, None, None]
    py = yy[None] + origin[:, 1, None, None]
    u = ((px - x[:, None, None]) * o + c).reshape(n, -1)
    v = ((py - y[:, None, None]) * o + c).reshape(n, -1)
    vals = cubic_interpolate(psf.spline_at(x, y), u, v).reshape(n, h, w) * flux[:, None, None]
    rx, ry = np.rint(x)[:, None, None], np.rint(y)[:, None, None]
    drawn = (np.abs(px - rx) <= half) & (np.abs(py - ry) <= half) & np.isfinite(flux)[:, None, None]
    return np.where(drawn, vals, 0.0)


def neighbour_light(psf: FramePSF, shape: tuple[int, int], origin: np.ndarray, size: int, x: np.ndarray,
                    y: np.ndarray, flux: np.ndarray, owner: np.ndarray | None = None) -> np.ndarray:
    """The light of every other star on each stamp (K, size, size): stamp ``i`` has its first pixel
    at ``origin[i]`` and belongs to the star ``owner[i]`` (an index into ``x``, ``y``, ``flux``; -1:
    to none, every star drawn on it; None: stamp ``i`` is star ``i``'s); stars with a non-finite or
    non-positive value are not drawn.

    Each star is drawn as :func:`add_stars` draws it on the frame, but on the stamps it reaches only
    (pairs from a k-d tree of the squares' centres), never on a whole frame: on a 24 MP frame of
    5,000 stars drawing the frame, cutting it and taking each star's own light out again was half
    of :func:`measure_with_frame_psf`'s time.  Without the compiled kernels, that numpy path.
    """
    from psfkit.psf import _empirical_kernels, _frame_kernels

    origin = np.asarray(origin, dtype=float)
    n = len(origin)
    owner = np.arange(n) if owner is None else np.asarray(owner, dtype=np.intp)
    drawn = np.isfinite(x) & np.isfinite(y) & np.isfinite(flux) & (flux > 0)
    if not (_frame_kernels.available() and _empirical_kernels.available()):
        from psfkit.psf.stamps import cut_stamps

        light = render_stars(psf, shape, x[drawn], y[drawn], flux[drawn])
        centre = origin + (size - 1) / 2.0
        stamps, inside, _, _ = cut_stamps(light, centre[:, 0], centre[:, 1], size)
        mine = owner >= 0
        own = np.zeros_like(stamps)
        if mine.any():
            k = owner[mine]
            own[mine] = own_light(psf, origin[mine], size, x[k], y[k], np.where(drawn[k], flux[k], np.nan))
        return np.where(inside, stamps - own, 0.0)
    from scipy.spatial import cKDTree

    half = int(math.ceil(psf.half_size))
    out = np.zeros((n, size, size))
    idx = np.flatnonzero(drawn)
    if idx.size == 0 or n == 0:
        return out
    # a star's square [rint(x) - half, rint(x) + half] meets a stamp [origin, origin + size - 1] where
    # their centres lie at most half + (size - 1) / 2 apart on each axis
    squares = np.column_stack([np.rint(x[idx]), np.rint(y[idx])])
    pairs = cKDTree(origin + (size - 1) / 2.0).sparse_distance_matrix(
        cKDTree(squares), half + (size - 1) / 2.0 + 0.25, p=np.inf, output_type="ndarray")
    stamp, star = pairs["i"].astype(np.intp), idx[pairs["j"]]
    keep = owner[stamp] != star  # not a star's own light
    stamp, star = stamp[keep], star[keep]
    order = np.lexsort((star, stamp))  # per stamp, stars in the frame's drawing order
    stamp, star = stamp[order], star[order]
    start = np.searchsorted(stamp, np.arange(n + 1))
    if psf.degree == 0:
        coef, grid = psf.spline_at(x[:1], y[:1]), np.zeros(len(star), np.intp)
    else:  # one grid per star drawn
        used, grid = np.unique(star, return_inverse=True)
        coef = psf.spline_at(x[used], y[used])
    _frame_kernels.add_neighbours(out, np.rint(origin).astype(np.int64), coef, grid, x, y, flux, start, star, half,
                                  psf.oversampling)
    ny, nx = shape
    col = origin[:, 0, None] + np.arange(size)[None, :]
    row = origin[:, 1, None] + np.arange(size)[None, :]
    inside = ((row >= 0) & (row < ny))[:, :, None] & ((col >= 0) & (col < nx))[:, None, :]
    return np.where(inside, out, 0.0)  # as a stamp cut from a drawn frame: nothing off the frame


def _resize(coefficients: np.ndarray, size: int) -> np.ndarray:
    """Grids cut or zero-padded about their centre to ``size`` nodes a side."""
    k, s, _ = coefficients.shape
    out = np.zeros((k, size, size))
    if size >= s:
        a = (size - s) // 2
        out[:, a : a + s, a : a + s] = coefficients
    else:
        a = (s - size) // 2
        out[:] = coefficients[:, a : a + size, a : a + size]
    return out


def render_stars(psf: FramePSF, shape: tuple[int, int], x: Any, y: Any, flux: Any) -> np.ndarray:
    """Image of stars drawn with the frame's PSF (each at its own place on the frame), no background.

    Examples
    --------
    >>> r2 = ((np.arange(41) - 20.0) ** 2)[:, None] + ((np.arange(41) - 20.0) ** 2)[None, :]
    >>> grid = np.exp(-r2 / (2 * 2.5**2)); grid *= 4.0 / grid.sum()  # sigma 1.25 px, oversampled x2
    >>> psf = FramePSF(grid[None], 2, 0, (20.0, 20.0), (20.0, 20.0))
    >>> round(float(render_stars(psf, (41, 41), [20.3], [19.6], [100.0]).sum()), 3)
    100.0
    """
    return add_stars(np.zeros(shape), psf, x, y, flux)


def add_stars(frame: np.ndarray, psf: FramePSF, x: Any, y: Any, flux: Any, *, sign: float = 1.0,
              backend: str = "auto") -> np.ndarray:
    """Add (``sign=-1``: take away) stars drawn with the frame's PSF to ``frame``, in place; returns it.

    Each star is drawn on the square of the PSF's reach around its nearest pixel, with the PSF
    of its own place; rows with a non-finite value are skipped.  ``backend="numpy"`` forces the
    numpy reference; ``"auto"`` draws with the compiled twin where available (a float64 frame).

    Examples
    --------
    >>> r2 = ((np.arange(41) - 20.0) ** 2)[:, None] + ((np.arange(41) - 20.0) ** 2)[None, :]
    >>> grid = np.exp(-r2 / (2 * 2.5**2)); grid *= 4.0 / grid.sum()
    >>> psf = FramePSF(grid[None], 2, 0, (20.0, 20.0), (20.0, 20.0))
    >>> frame = add_stars(np.zeros((41, 41)), psf, [20.3], [19.6], [100.0])
    >>> round(float(frame.sum()), 3)
    100.0
    """
    x, y, flux = (np.atleast_1d(np.asarray(v, dtype=float)) for v in (x, y, flux))
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(flux)
    x, y, flux = x[ok], y[ok], flux[ok]
    ny, nx = frame.shape
    o, s = psf.oversampling, psf.size
    half = int(math.ceil(psf.half_size))
    c = (s - 1) / 2.0
    b = 2 * half + 1
    yy, xx = np.mgrid[0:b, 0:b]
    step = max(1, 2_000_000 // (b * b * 16))
    from psfkit.psf import _empirical_kernels

    if (backend != "numpy" and _empirical_kernels.available() and frame.dtype == np.float64
            and frame.flags.c_contiguous and len(x)):
        step = len(x) if psf.degree == 0 else max(1, 2_000_000 // (s * s))  # per-star grids in bounded memory
        for i0 in range(0, len(x), step):
            sl = slice(i0, i0 + step)
            _empirical_kernels.add_stars(frame, psf.spline_at(x[sl], y[sl]), x[sl], y[sl], sign * flux[sl], half, o)
        return frame
    for i0 in range(0, len(x), step):
        sl = slice(i0, i0 + step)
        m = len(x[sl])
        cx = np.rint(x[sl]).astype(int) - half
        cy = np.rint(y[sl]).astype(int) - half
        px = xx[None] + cx[:, None, None]
        py = yy[None] + cy[:, None, None]
        u = ((px - x[sl, None, None]) * o + c).reshape(m, -1)
        v = ((py - y[sl, None, None]) * o + c).reshape(m, -1)
        vals = cubic_interpolate(psf.spline_at(x[sl], y[sl]), u, v, backend=backend) * (sign * flux[sl, None])
        inside = ((px >= 0) & (px < nx) & (py >= 0) & (py < ny)).reshape(m, -1)
        np.add.at(frame, (py.reshape(m, -1)[inside], px.reshape(m, -1)[inside]), vals[inside])
    return frame


def _held_out_chi2(psfs: list[FramePSF], samples: _Samples, folds: np.ndarray) -> np.ndarray:
    """Chi-square of each star under the PSF of its fold (``psfs[folds[i]]``, built without it): flux
    and background fitted linearly at its known centre.  All the stars in one evaluation.
    """
    o, s = psfs[0].oversampling, psfs[0].size
    sub = samples
    n, b, _ = sub.stamps.shape
    grids = np.empty((n, s, s))
    for f, psf in enumerate(psfs):
        rows = np.flatnonzero(folds == f)
        grids[rows] = psf.spline_at(sub.x[rows], sub.y[rows])
    c = (s - 1) / 2.0
    yy, xx = np.mgrid[0:b, 0:b]
    u = (xx[None] + sub.origin[:, 0, None, None] - sub.x[:, None, None]) * o + c
    v = (yy[None] + sub.origin[:, 1, None, None] - sub.y[:, None, None]) * o + c
    prof = cubic_interpolate(grids, u.reshape(n, -1), v.reshape(n, -1))
    d = sub.stamps.reshape(n, -1)
    expected = sub.background[:, None] + sub.flux[:, None] * prof  # weights from the model, not the data
    w = 1.0 / sub.variance(expected.reshape(sub.stamps.shape)).reshape(n, -1)
    good = np.isfinite(d) & np.isfinite(w)
    w = np.where(good, w, 0.0)
    d = np.where(good, d, 0.0)
    # weighted linear least squares of d = B + F prof, star by star (closed form)
    sw, sp, sd = w.sum(1), (w * prof).sum(1), (w * d).sum(1)
    spp, spd = (w * prof * prof).sum(1), (w * prof * d).sum(1)
    det = sw * spp - sp * sp
    f = (sw * spd - sp * sd) / np.where(det > 0, det, np.inf)
    bk = (sd - f * sp) / np.where(sw > 0, sw, np.inf)
    r = d - bk[:, None] - f[:, None] * prof
    return (w * r * r).sum(axis=1)


def _cross_validate(psf0: FramePSF, samples: _Samples, degrees: list[int], folds: np.ndarray,
                    fwhm: float) -> dict[int, np.ndarray]:
    """Each star's chi-square under the PSF of each degree built without its fold (cross-validation).

    The PSF of a degree and a fold is one stacking step from the constant PSF ``psf0`` on the other
    folds' stars (their centres and fluxes those of ``psf0``: no refit).  One pass over the samples
    gives each fold's normal equations of the highest degree (a lower degree's are their leading
    block); the training set's are the whole set's minus the fold's: no stacking is repeated per
    fold or degree.
    """
    o, s = psf0.oversampling, psf0.size
    n = len(samples.x)
    k_max = _n_terms(max(degrees))
    full = FramePSF(np.zeros((k_max, s, s)), o, max(degrees), psf0.centre, psf0.scale)
    ata_f, atb_f, _ = _normal_equations(full.terms(samples.x, samples.y), samples,
                                        psf0.spline_at(samples.x, samples.y), o, s, clip=5.0, groups=folds)
    ata_all, atb_all = ata_f.sum(axis=0), atb_f.sum(axis=0)
    per_fold = list(zip(ata_f, atb_f))
    cv: dict[int, np.ndarray] = {}
    for d in degrees:
        k = _n_terms(d)
        psfs = []
        for f in range(4):
            ata = ata_all[:, :k, :k] - per_fold[f][0][:, :k, :k]
            atb = atb_all[:, :k] - per_fold[f][1][:, :k]
            # the variation is solved in the core only, the wings stay those of the constant PSF
            corr = _solve_nodes(ata, atb, s, 1e-3, VARIATION_FWHM * fwhm * o, freeze_outer=k > 1)
            coef = np.zeros((k, s, s))
            coef[0] = psf0.coefficients[0]
            psfs.append(FramePSF(_normalise_and_centre(coef + corr, o, fwhm), o, d, psf0.centre, psf0.scale, n))
        cv[d] = _held_out_chi2(psfs, samples, folds)
    return cv


def build_frame_psf(
    image: Any,
    stars: Any = None,
    *,
    oversampling: int | None = None,
    degree: int | str = "auto",
    max_stars: int = 300,
    iterations: int = 4,
    seed: int = 0,
) -> FramePSF:
    """Build the frame's own PSF from its bright, isolated, unsaturated stars.

    Parameters
    ----------
    image : Image, ndarray or path
        The frame.
    stars : astropy.table.Table, optional
        Its stars as :func:`psfkit.find_stars` gives them (``keep_rejected`` tables are fine:
        the rejected candidates count as neighbours); found with the default settings if omitted.
    oversampling : int, optional
        Grid nodes per image pixel: default 2, or 4 for undersampled stars (FWHM < 2 px).
    degree : int or "auto"
        Degree of the variation across the field (0: one PSF for the whole frame, 1: linear,
        2: quadratic); ``"auto"`` keeps the one that predicts held-back stars best.
    max_stars : int
        The brightest usable stars taken at most.
    iterations : int
        Stacking and refitting rounds in all: a quarter of them (at least one) for the first PSF, on
        the first sky, and half (at least two) for the PSF after the sky is measured again.
    seed : int
        Seed of the cross-validation folds.

    Returns
    -------
    FramePSF

    Raises
    ------
    PsfkitError
        When fewer than :data:`MIN_STARS` stars are usable; the message says what was left out.

    Examples
    --------
    >>> import psfkit
    >>> from psfkit.datasets.simulate import simulate_field
    >>> data, truth = simulate_field((300, 300), 120, model="moffat", fwhm=3.0, beta=3.0, seed=1)
    >>> psf = build_frame_psf(psfkit.Image(data=data, gain=1.5, read_noise=6.0), degree=0)
    >>> round(psf.shape_at(150, 150)["fwhm"], 1)
    3.0
    """
    from psfkit.io.image import as_image

    img = as_image(image)
    data = np.asarray(img.data)  # stamps are cut as float64: no float copy of the whole frame
    if stars is None:
        from psfkit.detect.find import find_stars

        stars = find_stars(img, keep_rejected=True)
    if len(stars) == 0:
        raise PsfkitError("no stars in the frame to build a PSF from")
    meta = getattr(stars, "meta", {}) or {}
    acc0 = np.asarray(stars["accepted"], bool) if "accepted" in stars.colnames else np.ones(len(stars), bool)
    fwhm = float(np.nanmedian(np.asarray(stars["fwhm"], dtype=float)[acc0])) if acc0.any() else np.nan
    if not np.isfinite(fwhm):
        fwhm = float(meta.get("frame_fwhm") or np.nan)
    if not np.isfinite(fwhm):
        raise PsfkitError("the frame's FWHM is unknown: no star was fitted")
    if fwhm <= 0:
        raise PsfkitError("the frame's FWHM is unknown: no star was fitted")
    o = int(oversampling) if oversampling else (4 if fwhm < 2.0 else 2 if fwhm < 5.0 else 1)
    if o < 1 or o > 8:
        raise PsfkitError(f"oversampling must be 1 to 8, got {oversampling}")
    gain = img.gain
    rn_adu = float(img.read_noise or 0.0) / gain if gain else 0.0
    # stars first chosen for the widest reach (edges: the smallest), then the reach measured on them
    hi = int(min(max(math.ceil(MAX_REACH_FWHM * fwhm), 6), 60))
    lo = min(int(math.ceil(MIN_REACH_FWHM * fwhm)), hi)
    idx, counts = _select(stars, data.shape, lo + 1, fwhm)
    if len(idx) > max_stars:
        order = np.argsort(-np.asarray(stars["flux_fit"], dtype=float)[idx])
        idx = np.sort(idx[order[:max_stars]])
    if len(idx) < MIN_STARS:
        left = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
        raise PsfkitError(f"only {len(idx)} stars are fit to build the frame's PSF (at least {MIN_STARS} needed; "
                          f"left out: {left or 'none'})")
    all_x = np.asarray(stars["x_fit"], dtype=float)
    all_y = np.asarray(stars["y_fit"], dtype=float)
    flux_all = np.asarray(stars["flux_fit"], dtype=float)
    # The sky under each star: the sigma-clipped median of a ring beyond the PSF's widest reach
    # (DAOPHOT's sky annulus), the other sources' cores masked.  One cut of boxes holds the rings
    # and the stamps; nothing is measured over the whole frame.
    ring_in = hi + 1.0
    ring_out = math.sqrt(ring_in**2 + SKY_RING_PIXELS / math.pi)
    big = int(math.ceil(ring_out))
    boxes, origin_big = _cut_boxes(data, all_x[idx], all_y[idx], big)
    ring = _ring_offsets(big, ring_in, ring_out)
    ring_free = _ring_unmasked(ring, origin_big, big, idx, all_x, all_y, flux_all, fwhm)
    sky_level, sky_noise = _ring_sky(boxes.reshape(len(idx), -1)[:, ring], ring_free)
    if not np.isfinite(sky_level).all():  # no ring measurable (a frame smaller than the rings): find's own
        table_sky = (np.asarray(stars["background"], dtype=float)[idx] if "background" in stars.colnames
                     else np.full(len(idx), np.nan))
        fallback = np.where(np.isfinite(table_sky), table_sky, float(np.nanmedian(boxes)))
        sky_level = np.where(np.isfinite(sky_level), sky_level, fallback)
    noise = float(np.nanmedian(sky_noise)) if np.isfinite(sky_noise).any() else 1.0
    noise = noise if np.isfinite(noise) and noise > 0 else 1.0

    def samples_for(frame_boxes: np.ndarray, background: np.ndarray) -> _Samples:
        """The stars' samples out to the widest reach (``hi``), their neighbours masked."""
        x, y = all_x[idx], all_y[idx]
        a = big - hi
        stamps = frame_boxes[:, a : a + 2 * hi + 1, a : a + 2 * hi + 1]
        var = _stamp_variance(stamps, gain, rn_adu, noise)
        origin = origin_big + a
        var = _mask_neighbours(var, origin, x, y, flux_all[idx], all_x, all_y, flux_all, fwhm)
        return _Samples(stamps, var, origin, x, y, flux_all[idx], background, gain, rn_adu, noise)

    def crop(smp: _Samples, half: int) -> _Samples:
        a = hi - half
        sl = (slice(None), slice(a, a + 2 * half + 1), slice(a, a + 2 * half + 1))
        return _Samples(smp.stamps[sl], smp.var[sl], smp.origin + a, smp.x, smp.y, smp.flux, smp.background,
                        smp.gain, smp.read_noise, smp.noise)

    widest = samples_for(boxes, sky_level)
    rings = _reach_rings(widest, hi)  # the same stars and boxes in both sky passes
    reach = _choose_reach(widest, fwhm, hi, rings)
    samples = crop(widest, reach)  # pixels off the frame are left out (NaN)
    s = 2 * reach * o + 1
    ny, nx = data.shape
    frame = ((nx - 1) / 2.0, (ny - 1) / 2.0), (max((nx - 1) / 2.0, 1.0), max((ny - 1) / 2.0, 1.0))
    box = max(int(2 * math.ceil(2.0 * fwhm) + 1), 7)
    # a first PSF to draw the neighbours with: half the rounds (the second stacking starts from it)
    psf0, samples = _stack(samples, 0, o, s, fwhm, frame, max(iterations // 4, 1), data, gain, rn_adu, box)
    # The sky again, and the stamps, on the boxes with every other source's light drawn with the
    # first PSF taken out: a neighbour's wings and halo beyond its mask raise the ring's median and
    # the stamp's pixels (DAOPHOT's way).  The PSF stars are drawn with their fitted centres and
    # fluxes, the others at find's places with find's fluxes scaled by the PSF stars' median ratio
    # (the analytic model's share of the total flux).
    use = np.isfinite(all_x) & np.isfinite(all_y) & np.isfinite(flux_all) & (flux_all > 0) & acc0
    ratio = samples.flux / flux_all[idx]
    ratio = float(np.median(ratio[np.isfinite(ratio) & (ratio > 0)])) if np.any(ratio > 0) else 1.0
    draw_x, draw_y, draw_f = all_x.copy(), all_y.copy(), np.where(use, flux_all * ratio, np.nan)
    draw_x[idx], draw_y[idx], draw_f[idx] = samples.x, samples.y, samples.flux
    light = _light_in_boxes(psf0, origin_big, 2 * big + 1, idx, draw_x, draw_y, draw_f, radius=ring_out)
    clean = boxes - light
    sky_level = np.where(np.isfinite(sky_level), _ring_sky(clean.reshape(len(idx), -1)[:, ring], ring_free)[0],
                         sky_level)
    flux_all = np.where(np.isfinite(draw_f), draw_f, flux_all)
    widest = samples_for(clean, sky_level)
    reach2 = _choose_reach(widest, fwhm, hi, rings)
    s2 = 2 * reach2 * o + 1
    start = _resize(psf0.coefficients, s2)
    fresh = crop(widest, reach2)
    samples = _Samples(fresh.stamps, fresh.var, fresh.origin, samples.x, samples.y, samples.flux, fresh.background,
                       gain, rn_adu, noise)  # the centres and fluxes of the first stacking
    reach, s = reach2, s2
    psf0, samples = _stack(samples, 0, o, s, fwhm, frame, max(iterations // 2, 2), data, gain, rn_adu, box,
                           start=start)
    # the degree of the variation: cross-validated on held-back stars
    n = len(idx)
    allowed = [d for d in (0, 1, 2) if n >= STARS_PER_TERM * _n_terms(d)]
    if degree == "auto":
        choices = allowed
    else:
        if int(degree) not in (0, 1, 2):
            raise PsfkitError(f"degree must be 0, 1, 2 or 'auto', got {degree!r}")
        choices = [int(degree)]
    cv: dict[int, np.ndarray] = {}
    if len(choices) > 1:
        folds = np.random.default_rng(seed).permutation(n) % 4
        cv = _cross_validate(psf0, samples, choices, folds, fwhm)
        # a higher degree must earn its terms on the held-back stars, compared star by star (the same
        # stars under both degrees): the median star's chi-square gains at least 1 per extra term,
        # and more stars gain than lose by 3 sigma (a sign test).  The summed chi-square is no
        # judge: one star with a neighbour's light gains thousands under any freer PSF (a constant
        # Moffat field chose degree 1 by its sum), and the bright stars' gains are heavy-tailed
        chosen = min(choices)
        for d in sorted(choices):
            if d <= chosen:
                continue
            gain_d = cv[chosen] - cv[d]
            sign_z = (np.count_nonzero(gain_d > 0) - 0.5 * n) / (0.5 * math.sqrt(n))
            if float(np.median(gain_d)) > _n_terms(d) - _n_terms(chosen) and sign_z > 3.0:
                chosen = d
    else:
        chosen = choices[0]
    if chosen == 0:
        psf, samples = psf0, samples
    else:
        psf, samples = _stack(samples, chosen, o, s, fwhm, frame, iterations, data, gain, rn_adu, box,
                              start=psf0.coefficients)
    # the stars' stacked residual (data minus model, over flux, per node), over the PSF's peak
    resid, _ = _accumulate(psf.terms(samples.x, samples.y)[:, :1], samples, psf.spline_at(samples.x, samples.y),
                           o, s, ridge=1e-3)
    info = {"selection": counts, "stars": n, "degree_chi2": {str(k): float(v.sum()) for k, v in cv.items()},
            "reach": reach, "fwhm_first_pass": fwhm,
            "residual": resid[0] / max(float(psf.coefficients[0].max()), 1e-300)}
    node_var, perr, ferr = _psf_uncertainty(psf, samples)
    info["profile_error"], info["flux_error"] = perr, ferr
    return FramePSF(psf.coefficients, o, chosen, psf.centre, psf.scale, n, info, node_var, perr, ferr)


def _psf_uncertainty(psf: FramePSF, samples: _Samples, clip: float = 5.0) -> tuple[np.ndarray, float, float]:
    """The PSF's own uncertainty: the variance of each node (S, S), the profile error and the flux error
    (fractions).

    **Node variance.**

    A node is the weighted mean of the samples that fall on it (weights ``w`` as in the stacking), so
    its variance is ``sum(w**2 r**2) / sum(w)**2`` with ``r`` each sample's residual from the PSF: it
    falls as more stars are stacked and holds their scatter, whether from photon noise or from the
    stars' real differences that the PSF does not follow.  Samples off by more than ``clip`` sigma
    (left out of the stack) are left out here too; a light (1 2 1) smoothing steadies the estimate.

    **Profile error.**  What each star departs from the PSF beyond its photon noise and the nodes'
    variance (a PSF variation the polynomial does not follow, a halo that differs), as a fraction
    ``a`` of the PSF's value: the squared residuals of the stars' cores (where the PSF is above 5 %
    of its peak) are fitted as ``v + F**2 node_var + a**2 (F psf)**2`` by weighted least squares
    (weights ``1 / E[r**2]**2``, three rounds), ``a >= 0``.

    **Flux error.**  A PSF that is not a star's own (a variation the polynomial does not follow)
    misplaces some of its light coherently over the pixels: no pixel's variance holds that.  Each
    star's PSF flux is compared with its flux in the whole stamp (the light over the PSF's share of
    the same pixels, neighbours masked), which does not depend on the PSF's shape; the scatter of
    their ratio beyond the stamp's noise, over the stars where that noise is below 2 %, is the
    flux error (0 with fewer than 10 such stars).
    """
    o, s = psf.oversampling, psf.size
    n, b, _ = samples.stamps.shape
    c = (s - 1) / 2.0
    yy, xx = np.mgrid[0:b, 0:b]
    u = (xx[None] + samples.origin[:, 0, None, None] - samples.x[:, None, None]) * o + c
    v = (yy[None] + samples.origin[:, 1, None, None] - samples.y[:, None, None]) * o + c
    model = cubic_interpolate(psf.spline_at(samples.x, samples.y), u.reshape(n, -1), v.reshape(n, -1))
    model = model.reshape(n, b, b)
    with np.errstate(invalid="ignore", over="ignore"):  # unusable pixels (inf variance) are left out below
        resid = (samples.stamps - samples.background[:, None, None]) / samples.flux[:, None, None] - model
        expected = samples.background[:, None, None] + samples.flux[:, None, None] * model
        var = samples.variance(expected)
        var = np.maximum(var, (np.abs(expected - samples.background[:, None, None]) / MAX_PIXEL_SNR) ** 2)
        w = samples.flux[:, None, None] ** 2 / var
        z = resid * np.sqrt(w)
    good = np.isfinite(z) & np.isfinite(var) & (w > 0) & (u > -0.5) & (u < s - 0.5) & (v > -0.5) & (v < s - 0.5)
    scale = max(1.4826 * float(np.median(np.abs(z[good]))) if good.any() else 1.0, 1.0)
    good &= np.abs(np.where(good, z, 0.0)) < clip * scale
    nodes = (np.clip(np.rint(v), 0, s - 1).astype(np.intp) * s + np.clip(np.rint(u), 0, s - 1).astype(np.intp))[good]
    sw = np.bincount(nodes, weights=w[good], minlength=s * s)
    sw2r2 = np.bincount(nodes, weights=(w[good] * resid[good]) ** 2, minlength=s * s)
    node_var = np.where(sw > 0, sw2r2 / np.where(sw > 0, sw, 1.0) ** 2, 0.0).reshape(s, s)
    node_var = np.maximum(_smooth_correction(node_var[None])[0], 0.0)
    # the profile error, from the cores of the stars in data units
    flux = samples.flux[:, None, None]
    core = good & (model > 0.05 * float(np.nanmax(model)))
    at_node = np.clip(np.rint(v), 0, s - 1).astype(np.intp) * s + np.clip(np.rint(u), 0, s - 1).astype(np.intp)
    noise_var = samples.variance(expected)[core]  # photon and read noise, no cap
    signal2 = (flux * model)[core] ** 2
    excess = (flux * resid)[core] ** 2 - noise_var - (flux**2 * node_var.ravel()[at_node])[core]
    a2 = 0.0
    if signal2.size:
        for _ in range(3):
            om = 1.0 / (noise_var + a2 * signal2) ** 2
            a2 = float((om * signal2 * excess).sum() / max((om * signal2 * signal2).sum(), 1e-300))
            a2 = a2 if np.isfinite(a2) and a2 > 0 else 0.0
    # the flux error: PSF fluxes against the stamps' whole light
    usable = np.isfinite(samples.stamps) & np.isfinite(samples.var) & np.isfinite(model)
    usable &= np.hypot(u - c, v - c) <= min(c, (b - 1) / 2.0 * o)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(usable, model, 0.0).sum(axis=(1, 2))
        light = np.where(usable, samples.stamps - samples.background[:, None, None], 0.0).sum(axis=(1, 2))
        noise = np.where(usable, samples.variance(expected), 0.0).sum(axis=(1, 2))
        whole = light / share
        rel = samples.flux / whole - 1.0
        rel_var = noise / share**2 / samples.flux**2
    ok = np.isfinite(rel) & np.isfinite(rel_var) & (share > 0.9) & (rel_var < 0.02**2)
    f2 = 0.0
    if np.count_nonzero(ok) >= 10:
        r2, e2 = rel[ok] ** 2, rel_var[ok]
        keep = r2 < 25.0 * np.median(r2 + e2)  # a neighbour's light in a stamp is not the PSF's error
        r2, e2 = r2[keep], e2[keep]
        for _ in range(3):
            om = 1.0 / (e2 + f2) ** 2
            f2 = float((om * (r2 - e2)).sum() / om.sum())
            f2 = f2 if np.isfinite(f2) and f2 > 0 else 0.0
    return node_var, math.sqrt(a2), math.sqrt(f2)


def measure_with_frame_psf(image: Any, stars: Any, psf: FramePSF | str | Any = "frame", *,
                           gain: float | None = None, read_noise: float | None = None, shapes: bool = True) -> Any:
    """The stars of :func:`psfkit.find_stars` measured again with the frame's own PSF.

    Detection and rejection stay those of ``find_stars``; the position, total flux, magnitude,
    background, their errors and the goodness of fit come from the frame's PSF.  The analytic
    model's flux is kept as ``flux_fit_analytic``.  Each star's own shape (``fwhm``, ``fwhm_x``,
    ``fwhm_y``, ``roundness``, ``angle`` and their errors) comes from one more fit of the frame's
    PSF stretched by a per-star linear map (:mod:`psfkit.psf.frame_shape`), from the flux fit's
    solution and with every other star's light taken out; the analytic model's are kept as
    ``fwhm_analytic``, ``roundness_analytic`` and ``angle_analytic``.  (With a plain PSF image,
    not a :class:`FramePSF`, the shape columns stay ``find_stars``'.)

    The stars are fitted twice (:func:`psfkit.psf.frame_fit.fit_frame_stamps`, from find's
    positions): the second time with every other star's light, drawn with the PSF from the first
    fit, taken out of each stamp (its photon noise kept in the weights).  The errors hold the
    PSF's own uncertainty (docs/psf.md).  The stamps are cut once for both passes, the neighbours'
    light is drawn on the stamps it reaches only, and the second pass starts from the first's
    solution where that fit converged cleanly (elsewhere from the stamp at find's position): the
    same optimum in half the iterations.

    Parameters
    ----------
    image : Image, ndarray or path
        The frame.
    stars : astropy.table.Table
        Its stars from :func:`psfkit.find_stars` (``keep_rejected`` tables keep their rejected rows
        as they are).
    psf : FramePSF, path or "frame"
        The PSF: built from ``stars`` when ``"frame"``, or read from a file by ``psfkit psf``.
    gain, read_noise : float, optional
        As for :func:`psfkit.fit_stars`.
    shapes : bool
        Fit each star's own shape (the default).  False keeps ``find_stars``' shape columns (the
        analytic model's) and saves the shape fit's time.

    Returns
    -------
    astropy.table.Table
        A new table; ``meta["photometry_psf"]`` says which PSF measured it, ``meta["shape_model"]``
        what the shape columns are.

    Examples
    --------
    >>> import psfkit
    >>> from psfkit.datasets.simulate import simulate_field
    >>> data, truth = simulate_field((300, 300), 120, model="moffat", fwhm=3.0, beta=3.0, seed=1)
    >>> img = psfkit.Image(data=data, gain=1.5, read_noise=6.0)
    >>> table = measure_with_frame_psf(img, psfkit.find_stars(img, keep_rejected=True))
    >>> "flux_fit_analytic" in table.colnames
    True
    """
    from psfkit.io.image import as_image
    from psfkit.psf.fit import _fit_setup, _setup, resolve_model

    img = as_image(image)
    if isinstance(psf, str) and psf == "frame":
        psf = build_frame_psf(img, stars)
    model = _FluxFitModel(psf) if isinstance(psf, FramePSF) else resolve_model(psf)
    out = stars.copy()
    acc = np.asarray(out["accepted"], bool) if "accepted" in out.colnames else np.ones(len(out), bool)
    rows = np.flatnonzero(acc & np.isfinite(np.asarray(out["x_fit"], float)))
    out["flux_fit_analytic"] = np.asarray(out["flux_fit"], dtype=float)
    if len(rows):
        box = int(out.meta.get("settings", {}).get("box") or 0) or None
        x0, y0 = np.asarray(out["x_fit"], float)[rows], np.asarray(out["y_fit"], float)[rows]
        # find's positions are fitted already: the fit starts there (no peak search); the stamps are cut
        # once for both passes
        setup = _setup(img, x0, y0, model=model, gain=gain, read_noise=read_noise, box=box, search_radius=None)
        fit, first = _fit_setup(setup)
        if isinstance(psf, FramePSF):
            # again with every other star's light taken out of each stamp (its photon noise kept in the
            # weights): a neighbour's wing in the box would otherwise raise the background and lower the flux
            fx, fy, ff = (np.asarray(fit[c], float) for c in ("x_fit", "y_fit", "flux_fit"))
            # a faint star beside a bright one (find masked the bright one) may have run onto its wing:
            # where the first fit moved over a pixel or stopped at a bound, find's values are drawn
            strayed = ~(np.hypot(fx - x0, fy - y0) <= 1.0) | ((np.asarray(fit["flags"]) & F.AT_BOUND) != 0)
            fx, fy = np.where(strayed, x0, fx), np.where(strayed, y0, fy)
            ff = np.where(strayed, np.asarray(out["flux_fit_analytic"], float)[rows], ff)

            def others_light(origin: np.ndarray, size: int) -> np.ndarray:
                return neighbour_light(psf, img.data.shape, origin, size, fx, fy, ff)

            # the second pass starts from the first's solution where that fit converged cleanly (half the
            # iterations); elsewhere from its stamp at find's position, as the first did
            failed = F.NOT_CONVERGED | F.AT_BOUND | F.SINGULAR_COVARIANCE | F.FIT_FAILED | F.CENTER_MOVED
            clean = ~strayed & ((first.flags & failed) == 0) & (first.params[:, 1] > 0)
            start = np.where(clean[:, None], first.params, np.nan)
            fit, _ = _fit_setup(setup, neighbour_light=others_light, start=start)
        for col in ("x_fit", "y_fit", "x_err", "y_err", "flux_fit", "flux_err", "mag", "mag_err", "background",
                    "background_err", "reduced_chi2", "rmse", "snr", "n_pixels_fit", "iterations"):
            if col in out.colnames and col in fit.colnames:
                vals = np.asarray(out[col]).copy()
                vals[rows] = np.asarray(fit[col])
                out[col] = vals
        if "flags" in out.colnames:
            flags = np.asarray(out["flags"]).copy()
            flags[rows] |= np.asarray(fit["flags"])
            out["flags"] = flags
        if shapes and isinstance(psf, FramePSF):
            _measure_own_shapes(out, rows, fit, img, psf, gain, read_noise)
    desc = (f"the frame's PSF ({psf.n_stars} stars, variation of degree {psf.degree})" if isinstance(psf, FramePSF)
            else repr(model))
    out.meta["photometry_psf"] = desc
    return out


class _FluxFitModel(FramePSFModel):
    """:func:`measure_with_frame_psf`'s fitting model: the frame's PSF whose fits' shape columns are
    never read (the table keeps find's or takes the per-star shape fit's), so none is computed: a
    varying PSF's FWHM reading is a contour fit and 25 maps, a constant one's one contour fit).
    """

    def fwhm_and_gradient(self, params):
        n = params.shape[0]
        z = np.zeros_like(params)
        return np.full(n, np.nan), np.full(n, np.nan), z, z.copy()


def _measure_own_shapes(out: Any, rows: np.ndarray, fit: Any, img: Any, psf: FramePSF, gain: float | None,
                        read_noise: float | None) -> None:
    """Each star's own shape columns in ``out[rows]`` (:mod:`psfkit.psf.frame_shape`) from the
    4-parameter ``fit``: the frame's PSF stretched by a per-star linear map, every other star's light
    (drawn from ``fit``) taken out of each stamp.  The analytic model's are kept as ``*_analytic``.
    """
    from psfkit.psf.fit import _weights_and_noise
    from psfkit.psf.frame_shape import SHAPE_COLUMNS, measure_shapes

    fx, fy, ff = (np.asarray(fit[c], float) for c in ("x_fit", "y_fit", "flux_fit"))
    bg = np.asarray(fit["background"], float)
    box = int(fit.meta["box"])

    def others_light(origin: np.ndarray, size: int) -> np.ndarray:
        return neighbour_light(psf, img.data.shape, origin, size, fx, fy, ff)

    noise = _weights_and_noise(img, gain, read_noise, None, box)
    # without a gain, each star's pixel noise from its 4-parameter fit's residuals
    rmse = None if noise is not None else np.asarray(fit["rmse"], float)
    cols = measure_shapes(psf, img.data, fx, fy, ff, bg, box=box, gain=noise.gain if noise else 0.0,
                          read_noise=noise.read_noise if noise else 0.0, neighbour_light=others_light,
                          saturation=fit.meta.get("saturation"), noise=rmse)
    for name in ("fwhm", "roundness", "angle"):
        if name in out.colnames and f"{name}_analytic" not in out.colnames:
            out[f"{name}_analytic"] = np.asarray(out[name], dtype=float)
    scale = img.pixel_scale
    for name in SHAPE_COLUMNS:
        for col in (name, f"{name}_err"):
            pairs = [(col, cols[col])]
            arcsec = col.replace(name, f"{name}_arcsec", 1)
            if name.startswith("fwhm") and scale and arcsec in out.colnames:
                pairs.append((arcsec, cols[col] * scale))
            for target, values in pairs:
                if target in out.colnames:  # in place: the column keeps its unit
                    column = out[target]
                    column[rows] = values
                else:
                    vals = np.full(len(out), np.nan)
                    vals[rows] = values
                    out[target] = vals
    out.meta["shape_model"] = ("each star's own: the frame's PSF stretched by a per-star linear map, read on "
                               "its half-maximum contour (docs/psf.md)")
