"""The optics inspector: tilt, field curvature and the elongation pattern of a frame, as fitted numbers.

The stars' FWHM across the frame is fitted with

    FWHM(x, y) = c + gx (x - xc) + gy (y - yc) + k (r / r_corner)^2

where (xc, yc) is the frame's centre, r the distance to it and r_corner the centre's distance to a
corner pixel: ``c`` is the FWHM at the centre, (gx, gy) the tilt's gradient, ``k`` the FWHM the
field's curvature adds at the corners' distance.  The decisions (docs/optics.md explains them to
users):

- **Weights and errors.**  Each star weighs 1 / (fwhm_err^2 + s^2), where s is the scatter of the
  stars about the surface beyond their measurement errors (seeing, blends, the PSF's own
  variation), estimated as Paule and Mandel do: s^2 >= 0 and the parameters solved together so
  that the chi-square of the stars kept equals its expectation, 0 when the errors alone already
  explain the scatter.  The expectation is dof times the variance a Gaussian keeps when clipped at
  the outlier threshold (0.973 at 3 sigma): without that factor clipping the tails would bias s
  low, and the errors with it.  Without s the brightest stars, whose errors are smallest, would
  carry the fit alone while their FWHM scatters for other reasons.  The errors are the
  covariance's, (A^T W A)^-1, with no further scaling.  Checked by the pulls over many draws
  (tests/test_inspect.py): with honest star errors and no scatter their standard deviation is
  0.9-1.0 (s comes out > 0 by chance in half the frames); with a scatter as large as the smallest
  star errors, 1.0-1.08 (a threshold of 2 sigma on the chi-square before s is allowed, as an
  earlier version had, left 1.10-1.25 there).
- **Outliers.**  Iterative clipping of the normalised residuals beyond 3 of their robust
  (1.4826 MAD) standard deviation, at most 10 rounds, until the set of stars is stable.
- **Stars used.**  Accepted stars with no flag but ``neighbours_masked`` (no saturation, no masked
  pixels, not near the edge, a converged fit), a finite FWHM with a positive error, and SNR >= 10.
- **tilt_percent** = 100 (max - min) / mean of the fitted surface's plane part (c + gradient)
  plus k at the four corners: Siril's tilt definition, (max - min) / mean of the corners' FWHM,
  evaluated on the fitted surface instead of four quadrant medians.  It equals
  200 (|gx| xc + |gy| yc) / (c + k).
- **tilt_direction_deg**: the direction in which the FWHM grows fastest, atan2(gy, gx) in degrees
  counter-clockwise from +x (towards +y): the side of the sensor that sits furthest from focus.
- **curvature_percent** = 100 k / c: how much wider the stars at the corners' distance are than
  at the centre because of the field's curvature alone.
- **Elongation** of each star from Gaussian-windowed second moments of its pixels (window of the
  star's fitted FWHM, the window undone as in psfkit.psf.fit), so that the angle is measured
  without a fit of the angle.  ``elongation`` = major / minor axis (>= 1).
- **Elongation pattern** (stars with an elongation, weights e - 1): ``alignment`` = |mean of
  exp(2i theta)| (1: all major axes parallel) and ``radiality`` = mean of cos 2(theta - phi) over
  the stars beyond 0.25 r_corner, phi the direction of the star from the centre (+1: major axes
  along the radius, -1: across it).  The word: ``round`` when the median elongation is below 1.05;
  else ``uniform`` (tracking, guiding, wind: the same direction everywhere) when alignment >= 0.5
  and exceeds |radiality|; else ``radial`` (radiality >= 0.3: coma, tilt, spacing to a corrector)
  or ``tangential`` (radiality <= -0.3: astigmatism, field curvature off-axis); else ``mixed``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.table import Table

from psfkit.errors import PsfkitError
from psfkit.flags import NEIGHBOURS_MASKED
from psfkit.utils import json_value, robust_sigma

__all__ = ["SurfaceFit", "OpticsReport", "clipped_variance", "fit_fwhm_surface", "inspect_image", "inspect_stars",
           "star_shapes", "ZONES", "MIN_STARS"]

#: The fewest usable stars for the surface fit (4 parameters, and a scatter to estimate).
MIN_STARS = 12
#: The 3 x 3 zones of the frame, (column, row) of the zone in the grid, row 0 at y = 0 (bottom as displayed).
ZONES = {
    "bottom_left": (0, 0), "bottom": (1, 0), "bottom_right": (2, 0),
    "left": (0, 1), "centre": (1, 1), "right": (2, 1),
    "top_left": (0, 2), "top": (1, 2), "top_right": (2, 2),
}
CORNERS = ("bottom_left", "bottom_right", "top_left", "top_right")
PARAMS = ("fwhm_center", "gradient_x", "gradient_y", "curvature")


@dataclass
class SurfaceFit:
    """The fitted FWHM surface FWHM(x, y) = c + gx (x - xc) + gy (y - yc) + k (r / r_corner)^2.

    Attributes
    ----------
    params : ndarray (4,)
        c (px), gx, gy (px per px), k (px).
    covariance : ndarray (4, 4)
        Their covariance, (A^T W A)^-1 with the weights W = 1 / (fwhm_err^2 + scatter^2).
    used : ndarray of bool
        The stars kept by the outlier rejection.
    scatter : float
        The stars' scatter about the surface beyond their errors (px, added in quadrature).
    reduced_chi2 : float
        Chi-square per degree of freedom with the scatter included (0.973 when a scatter was
        needed: the variance a Gaussian keeps when clipped at 3 sigma).
    xc, yc, r_corner : float
        The frame's centre and its distance to a corner pixel.
    """

    params: np.ndarray
    covariance: np.ndarray
    used: np.ndarray
    scatter: float
    reduced_chi2: float
    xc: float
    yc: float
    r_corner: float

    @property
    def errors(self) -> np.ndarray:
        """1-sigma errors of the parameters (square roots of the covariance diagonal)."""
        return np.sqrt(np.clip(np.diag(self.covariance), 0.0, None))

    def design(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The design matrix rows [1, x - xc, y - yc, (r / r_corner)^2]."""
        dx = np.asarray(x, dtype=float) - self.xc
        dy = np.asarray(y, dtype=float) - self.yc
        return np.stack([np.ones_like(dx), dx, dy, (dx * dx + dy * dy) / self.r_corner**2], axis=-1)

    def predict(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The fitted FWHM at (x, y)."""
        return self.design(x, y) @ self.params

    def predict_err(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The 1-sigma error of the fitted FWHM at (x, y)."""
        a = self.design(x, y)
        return np.sqrt(np.einsum("...i,ij,...j->...", a, self.covariance, a))


def _frame_geometry(shape: tuple[int, int]) -> tuple[float, float, float]:
    ny, nx = shape
    xc, yc = (nx - 1) / 2.0, (ny - 1) / 2.0
    return xc, yc, math.hypot(xc, yc)


def clipped_variance(clip: float) -> float:
    """The variance of a standard normal variable kept only within +-``clip``: E[z^2 | |z| < clip].

    Clipping a Gaussian sample's tails at 3 sigma drops 0.27 % of its points but 2.7 % of its
    variance: the chi-square a clipped fit should reach is dof times this, not dof.

    Examples
    --------
    >>> round(clipped_variance(3.0), 4), clipped_variance(float("inf"))
    (0.9733, 1.0)
    """
    if not math.isfinite(clip):
        return 1.0
    return 1.0 - 2.0 * clip * math.exp(-0.5 * clip * clip) / math.sqrt(2.0 * math.pi) / math.erf(clip / math.sqrt(2.0))


def _weighted_lstsq(a: np.ndarray, f: np.ndarray, e2: np.ndarray, s2: float) -> tuple[np.ndarray, float]:
    """Parameters and chi-square of the least-squares fit with weights 1 / (e2 + s2)."""
    sw = 1.0 / np.sqrt(e2 + s2)
    p, *_ = np.linalg.lstsq(a * sw[:, None], f * sw, rcond=None)
    return p, float(np.sum(((f - a @ p) * sw) ** 2))


def _paule_mandel(a: np.ndarray, f: np.ndarray, e2: np.ndarray, target: float) -> tuple[float, np.ndarray]:
    """The extra scatter s^2 >= 0 and the parameters fitted with it, such that the chi-square is
    ``target`` (Paule and Mandel's estimate: the chi-square falls as s^2 grows); s^2 = 0 when the
    errors alone already give a chi-square at or below ``target``.
    """
    p, chi2 = _weighted_lstsq(a, f, e2, 0.0)
    if chi2 <= target:
        return 0.0, p
    lo, hi = 0.0, float(np.mean((f - a @ p) ** 2)) + 1e-12
    while _weighted_lstsq(a, f, e2, hi)[1] > target:
        lo, hi = hi, 4.0 * hi
    while hi - lo > 1e-6 * hi:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _weighted_lstsq(a, f, e2, mid)[1] > target else (lo, mid)
    s2 = 0.5 * (lo + hi)
    return s2, _weighted_lstsq(a, f, e2, s2)[0]


def fit_fwhm_surface(
    x: np.ndarray,
    y: np.ndarray,
    fwhm: np.ndarray,
    fwhm_err: np.ndarray,
    shape: tuple[int, int],
    *,
    clip: float = 3.0,
    max_iter: int = 10,
) -> SurfaceFit:
    """Fit FWHM(x, y) = c + gx (x - xc) + gy (y - yc) + k (r / r_corner)^2 to the stars.

    Weighted least squares (weights 1 / (fwhm_err^2 + s^2), s the stars' extra scatter, solved
    with the parameters so that the chi-square meets its expectation: see the module's notes),
    with iterative clipping of outliers beyond ``clip`` robust sigma.

    Parameters
    ----------
    x, y, fwhm, fwhm_err : array-like
        The stars' positions (0-based px), FWHM and its 1-sigma error (px).
    shape : (ny, nx)
        The frame's shape: its centre and corners.
    clip : float
        Outlier threshold in robust standard deviations of the normalised residuals.
    max_iter : int
        Rounds of rejection at most.

    Returns
    -------
    SurfaceFit

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.uniform(0, 1000, 300), rng.uniform(0, 800, 300)
    >>> truth = 3.0 + 0.001 * (x - 499.5) + 0.5 * ((x - 499.5)**2 + (y - 399.5)**2) / (499.5**2 + 399.5**2)
    >>> fit = fit_fwhm_surface(x, y, truth + rng.normal(0, 0.05, 300), np.full(300, 0.05), (800, 1000))
    >>> [round(float(v), 1) for v in fit.params * [1, 1000, 1000, 1]]  # c, gx, gy per 1000 px, k
    [3.0, 1.0, -0.0, 0.5]
    """
    x, y, f, e = (np.asarray(v, dtype=float).ravel() for v in (x, y, fwhm, fwhm_err))
    if not (x.size == y.size == f.size == e.size):
        raise PsfkitError("x, y, fwhm and fwhm_err must have the same length")
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(f) & np.isfinite(e) & (e > 0) & (f > 0)
    if ok.sum() < MIN_STARS:
        raise PsfkitError(f"too few stars for the FWHM surface: {int(ok.sum())} usable, at least {MIN_STARS} needed")
    xc, yc, rc = _frame_geometry(shape)
    surf = SurfaceFit(np.zeros(4), np.zeros((4, 4)), ok.copy(), 0.0, float("nan"), xc, yc, rc)
    a_all = surf.design(x, y)
    e2_all = e * e
    kept_variance = clipped_variance(clip)

    def scatter_and_params(used: np.ndarray) -> tuple[float, np.ndarray]:
        dof = int(used.sum()) - 4
        if dof < 1:
            raise PsfkitError(f"too few stars for the FWHM surface after outlier rejection: {int(used.sum())}")
        return _paule_mandel(a_all[used], f[used], e2_all[used], kept_variance * dof)

    used = ok.copy()
    for _ in range(max_iter):
        s2, p = scatter_and_params(used)
        z = (f - a_all @ p) / np.sqrt(e2_all + s2)
        zu = z[used]
        scale = float(robust_sigma(zu))
        new = ok & (np.abs(z - np.median(zu)) <= clip * max(scale, 1.0))
        if np.array_equal(new, used):
            break
        used = new
    else:  # no stable set within max_iter rounds: the last set's scatter
        s2, _ = scatter_and_params(used)
    a, fu = a_all[used], f[used]
    w = 1.0 / (e2_all[used] + s2)
    normal = a.T @ (a * w[:, None])
    try:
        cov = np.linalg.inv(normal)
    except np.linalg.LinAlgError:
        raise PsfkitError("the stars do not spread over the frame enough to fit the FWHM surface") from None
    p = cov @ (a.T @ (w * fu))
    dof = max(int(used.sum()) - 4, 1)
    chi2 = float(np.sum(w * (fu - a @ p) ** 2)) / dof
    return SurfaceFit(p, cov, used, math.sqrt(s2), chi2, xc, yc, rc)


def star_shapes(
    data: np.ndarray, x: np.ndarray, y: np.ndarray, fwhm: np.ndarray, background: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Elongation (major / minor axis, >= 1) and major-axis angle (deg, CCW from +x, in [-90, 90))
    of stars from their Gaussian-windowed second moments (window: each star's FWHM).

    The window's pull towards round is undone as for a Gaussian star (v = l s^2 / (s^2 - l)).
    """
    from psfkit.psf.stamps import cut_stamps

    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    if n == 0:
        return np.zeros(0), np.zeros(0)
    fw = np.asarray(fwhm, float)
    fw = np.where(np.isfinite(fw) & (fw > 0), fw, np.nanmedian(fw) if np.isfinite(fw).any() else 3.0)
    fw = np.clip(fw, 1.0, 2.0 * np.median(fw))
    box = 2 * int(math.ceil(1.3 * fw.max())) + 1  # the window falls to 1 % at 1.3 FWHM
    stamps, inside, origin, _ = cut_stamps(data, x, y, box)
    usable = inside & np.isfinite(stamps)
    yy, xx = np.mgrid[0:box, 0:box]
    dx = (xx[None] - (x - origin[:, 0])[:, None, None]).astype(np.float32)
    dy = (yy[None] - (y - origin[:, 1])[:, None, None]).astype(np.float32)
    s2 = (fw / 2.3548) ** 2
    win = np.exp(-0.5 * (dx**2 + dy**2) / s2[:, None, None].astype(np.float32))
    val = np.where(usable, stamps - np.asarray(background, float)[:, None, None], 0.0).astype(np.float32) * win
    with np.errstate(invalid="ignore", divide="ignore"):
        tot = val.sum(axis=(1, 2))
        tot = np.where(tot > 0, tot, np.nan)
        mxx = (val * dx * dx).sum(axis=(1, 2)) / tot
        myy = (val * dy * dy).sum(axis=(1, 2)) / tot
        mxy = (val * dx * dy).sum(axis=(1, 2)) / tot
        theta = 0.5 * np.degrees(np.arctan2(2 * mxy, mxx - myy))
        tr, det = mxx + myy, mxx * myy - mxy**2
        disc = np.sqrt(np.clip(tr * tr / 4 - det, 0, None))
        l1, l2 = tr / 2 + disc, tr / 2 - disc
        l1 = l1 * s2 / np.maximum(s2 - l1, 0.05 * s2)
        l2 = l2 * s2 / np.maximum(s2 - l2, 0.05 * s2)
        elong = np.sqrt(np.clip(l1 / l2, 1.0, 100.0))
    theta = (theta + 90.0) % 180.0 - 90.0
    return elong, theta


def _pattern(x, y, elong, theta, xc, yc, rc) -> dict:
    ok = np.isfinite(elong) & np.isfinite(theta)
    if ok.sum() < 5:
        return {"pattern": "unknown", "alignment": float("nan"), "radiality": float("nan"),
                "elongation_median": float("nan"), "mean_angle_deg": float("nan")}
    e, th = elong[ok], np.radians(theta[ok])
    w = np.clip(e - 1.0, 0.0, None)
    if w.sum() <= 0:
        w = np.ones_like(e)
    zsum = np.sum(w * np.exp(2j * th))
    alignment = float(abs(zsum) / w.sum())
    mean_angle = float(np.degrees(0.5 * np.angle(zsum)))
    dx, dy = x[ok] - xc, y[ok] - yc
    far = np.hypot(dx, dy) > 0.25 * rc
    if far.sum() >= 5 and w[far].sum() > 0:
        phi = np.arctan2(dy[far], dx[far])
        radiality = float(np.sum(w[far] * np.cos(2 * (th[far] - phi))) / w[far].sum())
    else:
        radiality = float("nan")
    med = float(np.median(e))
    if med < 1.05:
        word = "round"
    elif alignment >= 0.5 and alignment > abs(np.nan_to_num(radiality)):
        word = "uniform"
    elif radiality >= 0.3:
        word = "radial"
    elif radiality <= -0.3:
        word = "tangential"
    else:
        word = "mixed"
    return {"pattern": word, "alignment": alignment, "radiality": radiality, "elongation_median": med,
            "mean_angle_deg": mean_angle}


_PATTERN_MEANING = {
    "round": "stars round everywhere",
    "uniform": "the same elongation everywhere: tracking, guiding or wind (not the optics)",
    "radial": "elongated along the radius: coma (collimation, corrector spacing) or tilt",
    "tangential": "elongated across the radius: astigmatism or off-axis field curvature",
    "mixed": "no single pattern",
    "unknown": "too few stars to tell",
}


@dataclass
class OpticsReport:
    """What :func:`inspect_image` finds: the fitted surface, the zones, the elongation pattern.

    ``to_dict()`` gives the JSON of ``psfkit inspect --json``; ``stars`` holds the stars used
    (with ``elongation``, ``shape_angle`` and ``used_in_fit``); ``zones`` the 3 x 3 zones' medians
    and each zone's representative star (for the aberration mosaic).
    """

    surface: SurfaceFit
    numbers: dict
    zones: dict
    pattern: dict
    stars: Table = field(repr=False)
    shape: tuple[int, int] = (0, 0)
    image_path: str | None = None

    def to_dict(self) -> dict:
        """The numbers as plain, JSON-ready values."""
        out: dict[str, Any] = {"image": self.image_path, "shape": list(self.shape)}
        out.update(self.numbers)
        out["corners"] = {k: self.zones[k] for k in CORNERS}
        out["center"] = self.zones["centre"]
        out["zones"] = self.zones
        out["elongation_pattern"] = self.pattern["pattern"]
        out["elongation_pattern_meaning"] = _PATTERN_MEANING[self.pattern["pattern"]]
        out["elongation"] = {k: v for k, v in self.pattern.items() if k != "pattern"}
        return json_value(out)


def _derived(surf: SurfaceFit) -> dict:
    """tilt_percent, tilt_direction_deg, curvature_percent with errors (delta method)."""
    xc, yc = surf.xc, surf.yc

    def values(p):
        c, gx, gy, k = p
        tilt = 200.0 * (abs(gx) * xc + abs(gy) * yc) / (c + k)
        return np.array([tilt, math.degrees(math.atan2(gy, gx)), 100.0 * k / c])

    p = surf.params
    v = values(p)
    jac = np.zeros((3, 4))
    for i in range(4):
        h = 1e-6 * max(abs(p[i]), 1e-6 if i in (1, 2) else 1e-3)
        dp = np.zeros(4)
        dp[i] = h
        d = (values(p + dp) - values(p - dp)) / (2 * h)
        jac[:, i] = d
    err = np.sqrt(np.clip(np.diag(jac @ surf.covariance @ jac.T), 0, None))
    return {"tilt_percent": v[0], "tilt_percent_err": err[0], "tilt_direction_deg": v[1],
            "tilt_direction_deg_err": err[1], "curvature_percent": v[2], "curvature_percent_err": err[2]}


def _zones(stars: Table, surf: SurfaceFit, shape: tuple[int, int]) -> dict:
    ny, nx = shape
    x, y = np.asarray(stars["x_fit"], float), np.asarray(stars["y_fit"], float)
    col = np.clip((x / nx * 3).astype(int), 0, 2)
    row = np.clip((y / ny * 3).astype(int), 0, 2)
    fw = np.asarray(stars["fwhm"], float)
    el = np.asarray(stars["elongation"], float)
    hfr = np.asarray(stars["hfr"], float) if "hfr" in stars.colnames else np.full(len(stars), np.nan)
    snr = np.asarray(stars["snr"], float)
    out = {}
    for name, (ci, ri) in ZONES.items():
        sel = (col == ci) & (row == ri) & np.isfinite(fw)
        # the zone's reference point: the frame's corner for corner zones, else the zone's middle
        px = {0: 0.0, 1: (nx - 1) / 2, 2: nx - 1.0}[ci] if name in CORNERS else (ci + 0.5) * nx / 3 - 0.5
        py = {0: 0.0, 1: (ny - 1) / 2, 2: ny - 1.0}[ri] if name in CORNERS else (ri + 0.5) * ny / 3 - 0.5
        if name == "centre":
            px, py = surf.xc, surf.yc
        z: dict[str, Any] = {"n_stars": int(sel.sum()), "x": px, "y": py,
                             "fwhm_fit": float(surf.predict(px, py)), "fwhm_fit_err": float(surf.predict_err(px, py))}
        if sel.sum():
            f = fw[sel]
            z["fwhm"] = float(np.median(f))
            z["fwhm_err"] = float(1.2533 * np.std(f) / math.sqrt(len(f))) if len(f) > 1 else float("nan")
            z["elongation"] = float(np.nanmedian(el[sel])) if np.isfinite(el[sel]).any() else float("nan")
            z["hfr"] = float(np.nanmedian(hfr[sel])) if np.isfinite(hfr[sel]).any() else float("nan")
            # the mosaic's star: bright (SNR near the zone's 90th percentile, unsaturated) and near the point
            idx = np.flatnonzero(sel)
            good = idx[snr[idx] >= min(np.nanpercentile(snr[idx], 75), 50.0)] if len(idx) > 3 else idx
            d = np.hypot(x[good] - px, y[good] - py)
            j = int(good[np.argmin(d)])
            z["star"] = {"x": float(x[j]), "y": float(y[j]), "fwhm": float(fw[j]), "elongation": float(el[j])}
        else:
            z.update(fwhm=float("nan"), fwhm_err=float("nan"), elongation=float("nan"), hfr=float("nan"), star=None)
        out[name] = z
    return out


def inspect_stars(stars: Table, image: Any, *, clip: float = 3.0, min_snr: float = 10.0) -> OpticsReport:
    """The optics report from a frame's star list (:func:`psfkit.find_stars`) and its pixels.

    Parameters
    ----------
    stars : Table
        The star list (``x_fit``, ``y_fit``, ``fwhm``, ``fwhm_err``, ``snr``, ``flags``).
    image : Image or 2-D array
        The frame (the stars' pixels for their elongation; the shape for the centre).
    clip : float
        Outlier threshold of the surface fit (robust sigma).
    min_snr : float
        Stars below this SNR are left out.

    Returns
    -------
    OpticsReport

    Examples
    --------
    >>> import psfkit
    >>> from psfkit.analysis.inspect import inspect_stars
    >>> image = psfkit.load_image(psfkit.sample_image_path())
    >>> report = inspect_stars(psfkit.find_stars(image), image)
    >>> "tilt_percent" in report.to_dict() and len(report.to_dict()["corners"])
    4
    """
    from psfkit.io.image import as_image

    img = as_image(image)
    data = img.data
    shape = tuple(int(v) for v in data.shape)
    n = len(stars)
    keep = np.ones(n, dtype=bool)
    if "flags" in stars.colnames:  # a brighter neighbour's pixels left out of the fit is no fault
        keep &= (np.asarray(stars["flags"], dtype=np.int64) & ~np.int64(NEIGHBOURS_MASKED)) == 0
    if "snr" in stars.colnames:
        keep &= np.nan_to_num(np.asarray(stars["snr"], dtype=float), nan=-1.0) >= min_snr
    if "accepted" in stars.colnames:
        keep &= np.asarray(stars["accepted"], dtype=bool)
    t = stars[keep]
    if len(t) < MIN_STARS:
        raise PsfkitError(f"too few stars to inspect the optics: {len(t)} clean stars with SNR >= {min_snr:g}, "
                          f"at least {MIN_STARS} needed")
    x, y = np.asarray(t["x_fit"], float), np.asarray(t["y_fit"], float)
    bkg = np.asarray(t["background"], float) if "background" in t.colnames else np.zeros(len(t))
    elong, theta = star_shapes(data, x, y, np.asarray(t["fwhm"], float), bkg)
    surf = fit_fwhm_surface(x, y, t["fwhm"], t["fwhm_err"], shape, clip=clip)
    t = t.copy(copy_data=False)
    t["elongation"] = elong
    t["shape_angle"] = theta
    t["used_in_fit"] = surf.used
    err = surf.errors
    numbers: dict[str, Any] = {}
    per_k = np.array([1.0, 1000.0, 1000.0, 1.0])
    for name, v, e in zip(PARAMS, surf.params * per_k, err * per_k):
        numbers[name] = float(v)
        numbers[name + "_err"] = float(e)
    numbers.update(_derived(surf))
    numbers.update(n_stars=int(len(t)), n_used=int(surf.used.sum()), scatter=surf.scatter,
                   reduced_chi2=surf.reduced_chi2, r_corner=surf.r_corner, center_x=surf.xc, center_y=surf.yc)
    if img.pixel_scale:
        numbers["fwhm_center_arcsec"] = numbers["fwhm_center"] * img.pixel_scale
    if "hfr" in t.colnames:
        numbers["hfr_median"] = float(np.nanmedian(np.asarray(t["hfr"], float)))
    zones = _zones(t, surf, shape)
    pattern = _pattern(x, y, elong, theta, surf.xc, surf.yc, surf.r_corner)
    return OpticsReport(surface=surf, numbers=numbers, zones=zones, pattern=pattern, stars=t, shape=shape,
                        image_path=img.path)


def inspect_image(image: Any, *, stars: Table | None = None, clip: float = 3.0, min_snr: float = 10.0,
                  **find_options: Any) -> OpticsReport:
    """Tilt, field curvature and elongation pattern of a frame (finds its stars first).

    Parameters
    ----------
    image : Image, 2-D array or path
    stars : Table, optional
        The frame's star list, when already found.
    clip, min_snr : float
        See :func:`inspect_stars`.
    **find_options
        Passed to :func:`psfkit.find_stars` (``threshold``, ``gain`` ...).

    Returns
    -------
    OpticsReport
        ``to_dict()`` has ``fwhm_center``, ``gradient_x``, ``gradient_y`` (FWHM px per 1000 px),
        ``curvature`` (px at the corners' distance), each with ``_err``; ``tilt_percent``,
        ``tilt_direction_deg``, ``curvature_percent``; ``corners`` and ``center`` (FWHM,
        elongation); ``elongation_pattern``.

    Examples
    --------
    >>> import psfkit
    >>> report = psfkit.inspect_image(psfkit.sample_image_path())
    >>> report.to_dict()["elongation_pattern"] in ("round", "uniform", "radial", "tangential", "mixed")
    True
    """
    from psfkit.detect.find import find_stars
    from psfkit.io.image import as_image

    img = as_image(image)
    if stars is None:
        stars = find_stars(img, **find_options)
    return inspect_stars(stars, img, clip=clip, min_snr=min_snr)
