"""Crowded fields with the frame's own PSF: fit, subtract, look again, to the noise (DAOPHOT's way).

:mod:`psfkit.detect.deblend` refits crowded stars with the analytic model; an analytic model misses a
real star's profile, so a bright star's residual is its misfit and no faint star can be looked for
under it.  With the frame's own PSF (:func:`psfkit.psf.empirical.build_frame_psf`) a star subtracts
to the noise, and this pass does what DAOPHOT's FIND / ALLSTAR loop does (Stetson 1987):

1. **Fit every star with its neighbours subtracted.**  All the stars' light is drawn on one frame
   (the *light frame*); each star is fitted (flux, x, y, background: the PSF's shape is the
   frame's at the star's place) on its box with the light of every other star taken out (their
   photon noise kept in the weights), and the light frame follows the new fits.  A round fits
   every star at once; rounds repeat until no star's flux moves by a tenth of its error (at most
   :data:`ROUNDS`).  Then every *group* of overlapping stars is fitted again as one least-squares
   problem (see "Groups" below).
2. **Look for stars on the residual** (the frame less the background and the light frame): the
   peaks of the residual smoothed by the detection filter, where it exceeds ``threshold`` times
   its own noise.  That noise counts the sky, the photon noise of the subtracted light and the
   PSF's own error (:data:`PROFILE_ERROR` of the light: what a PSF built from a few hundred stars
   misses of each pixel), so a bright star's residual makes no peak.  Peaks within
   :data:`MIN_SEPARATION_FWHM` of a star (its centre is fitted, not a companion) or of a rejected
   candidate (a hot pixel, a galaxy: not subtracted) are left out.
3. **Fit the new stars**, with every other star's light taken out; those that fit (finite, at
   S/N >= ``min_snr``, their centre within a FWHM of the peak and not onto another star) join, and
   they and their neighbours are fitted again (step 1, groups included) with the new light.
4. **Repeat** 2-3 until the residual has no significant peak (at most :data:`MAX_PASSES` times).

Each star's own FWHM, roundness and angle (the analytic model's, as Siril's Dynamic PSF gives them)
come from one last fit of the analytic model with the other stars' light (the frame's PSF's)
subtracted; the position, total flux, background, their errors and the goodness of fit are the
frame's PSF's.  The analytic flux stays as ``flux_fit_analytic``.

Groups
------
The rounds fit each star alone with its neighbours' current models subtracted (a Gauss-Seidel
iteration of the normal equations, colour class by colour class: :func:`colour_classes`).  That
converges where stars overlap little, but bright pairs 1-1.5 FWHM apart converge slowly (each takes
part of the other's light in turn), and a one-star fit's error is its error *given* the
neighbour, too small where the two fluxes are correlated.  So, as DAOPHOT's ALLSTAR does, stars
whose PSFs overlap are fitted together: two stars are linked when they are closer than the
PSF's :func:`critical_separation` (where the normalised overlap integral of the PSF with itself
falls to :data:`GROUP_OVERLAP`, about 2 FWHM for a Moffat of beta 3), a *group* is a connected set
of linked stars (:func:`star_groups`), and each group of 2 to :data:`MAX_GROUP` stars is fitted as
one problem (:func:`psfkit.psf.group_fit.fit_groups`: flux, x, y per member and one shared
background, on the pixels within half a fitting box of any member, with every other star's light
subtracted and its photon noise in the weights), all groups of one size in one batch, starting
from the rounds' values.  Their errors come from the joint covariance (a close pair's flux
errors are larger, and anti-correlated).  Two members that converge onto one star are merged and
the survivor's neighbourhood fitted again as groups (a star alone as a group of one).  Larger
groups (a dense knot) keep the rounds' fits, as does a group whose joint fit fails (a flux at
zero, a singular covariance, a member moving by more than half a box);
``meta["crowded"]["groups"]`` counts the group fits, their stars, the largest, the groups too
large and the failures.  Without a gain the fits are unweighted and the groups are not fitted
(the rounds stand).

The residual frame (:func:`subtract_stars`) is the frame minus every fitted star: it is noise where
the PSF and the stars are right; what it shows is what the fit missed (see docs/crowded.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from astropy.table import Table, vstack
from scipy import ndimage
from scipy.spatial import cKDTree

from psfkit import flags as F
from psfkit.psf.empirical import FramePSF, add_stars, neighbour_light, own_light
from psfkit.utils import robust_sigma, thin_brighter_first

__all__ = ["crowded_pass", "subtract_stars", "write_residual", "residual_peaks", "PROFILE_ERROR",
           "MAX_PASSES", "ROUNDS", "MIN_SEPARATION_FWHM", "colour_classes", "critical_separation", "star_groups",
           "GROUP_OVERLAP", "MAX_GROUP"]

#: the PSF's own error, a fraction of each pixel's light, counted in the residual's noise (a PSF
#: stacked from a few hundred stars leaves about 1 % of a bright star's peak in its residual)
PROFILE_ERROR = 0.02
#: residual passes (look for stars, fit them) at most
MAX_PASSES = 6
#: neighbour-subtraction rounds per pass at most (they stop when no flux moves by a tenth of its error)
ROUNDS = 4
#: peaks of the residual closer than this (FWHM) to a fitted star are its own misfit, not a star
MIN_SEPARATION_FWHM = 0.6
#: a new star whose fit ends closer than this (FWHM) to another star is that star (not kept)
MERGE_FWHM = 0.5
#: rounds stop when no star's flux moves by more than this many flux errors
CONVERGED = 0.1

#: stars closer than this (FWHM) are fitted one after the other in a round, not at once
COUPLING_FWHM = 2.0
#: stars whose PSFs overlap by more than this (the normalised overlap integral, the correlation of
#: their fluxes on a sky-limited frame) are one group, fitted together (:func:`critical_separation`)
GROUP_OVERLAP = 0.05
#: groups of more stars than this are left to the iterated subtraction (the rounds)
MAX_GROUP = 12

#: ``fit(x, y, neighbour_light) -> Table``: the caller's fit of stars at (x, y) in one batch
FitFunction = Callable[[np.ndarray, np.ndarray, Any], Table]

_PSF_COLUMNS = ("x_fit", "y_fit", "x_err", "y_err", "flux_fit", "flux_err", "mag", "mag_err", "background",
                "background_err", "reduced_chi2", "rmse", "snr", "n_pixels_fit", "iterations")


def _neighbour_light(psf: FramePSF, shape: tuple[int, int], stars: tuple[np.ndarray, np.ndarray, np.ndarray],
                     owner: np.ndarray | None = None):
    """``neighbour_light`` for :func:`psfkit.fit_stars`: every star of ``stars`` (x, y, flux) drawn on
    each stamp but the fitted star's own (``owner``: the fitted stars' rows in ``stars``; None: new
    stars, not in it), as :func:`psfkit.psf.empirical.neighbour_light` draws it on stamps only (on the
    crowded field no slower than cutting the light frame and taking each star's own light out).
    """
    sx, sy, sf = stars

    def on_stamps(origin: np.ndarray, box: int) -> np.ndarray:
        own = np.full(len(origin), -1, dtype=np.intp) if owner is None else owner
        return neighbour_light(psf, shape, origin, box, sx, sy, sf, own)

    return on_stamps


def _fitted(table: Table, shape: tuple[int, int]) -> np.ndarray:
    """Fits that can stand for their star: finite, positive flux, not failed, centre on the frame."""
    x = np.asarray(table["x_fit"], dtype=float)
    y = np.asarray(table["y_fit"], dtype=float)
    f = np.asarray(table["flux_fit"], dtype=float)
    with np.errstate(invalid="ignore"):
        on = (x >= -0.5) & (x <= shape[1] - 0.5) & (y >= -0.5) & (y <= shape[0] - 0.5) & (f > 0)
    return on & np.isfinite(f) & ((np.asarray(table["flags"]) & (F.FIT_FAILED | F.CENTER_MOVED)) == 0)


def residual_peaks(residual: np.ndarray, variance: np.ndarray, *, smoothing: float, threshold: float,
                   separation: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Peaks of the smoothed residual above ``threshold`` times its own noise: (x, y, significance).

    ``variance`` is each pixel's variance; the smoothed residual's is the variance smoothed by the
    square of the filter (a Gaussian of sigma ``smoothing`` px).  Of two peaks closer than
    ``separation`` the stronger stays.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> res = rng.normal(0.0, 10.0, (64, 64))
    >>> yy, xx = np.mgrid[0:64, 0:64]
    >>> res += 400.0 * np.exp(-((xx - 30) ** 2 + (yy - 20) ** 2) / (2 * 1.3**2))
    >>> x, y, sig = residual_peaks(res, np.full(res.shape, 100.0), smoothing=1.3, threshold=5.0, separation=2.0)
    >>> [(int(a), int(b)) for a, b in zip(x, y)]
    [(30, 20)]
    """
    s = ndimage.gaussian_filter(residual, smoothing, mode="nearest", truncate=3.0)
    vs = ndimage.gaussian_filter(variance, smoothing / math.sqrt(2.0), mode="nearest", truncate=3.0)
    vs /= 4.0 * math.pi * smoothing**2
    with np.errstate(invalid="ignore", divide="ignore"):
        sig = s / np.sqrt(vs)
    peak = (s == ndimage.maximum_filter(s, size=3, mode="nearest")) & (np.nan_to_num(sig, nan=0.0) > threshold)
    ys, xs = np.nonzero(peak)
    value = sig[ys, xs]
    order = np.argsort(-value, kind="stable")
    xs, ys, value = xs[order], ys[order], value[order]
    keep = thin_brighter_first(xs.astype(float), ys.astype(float), separation)
    return xs[keep].astype(float), ys[keep].astype(float), value[keep]


def subtract_stars(data: np.ndarray, stars: Table, psf: FramePSF | None = None) -> np.ndarray:
    """The residual frame: ``data`` minus every accepted star of ``stars`` (the background stays).

    With ``psf`` the stars (``x_fit``, ``y_fit``, ``flux_fit``) are drawn with the frame's PSF; without,
    with the analytic model they were fitted with (``meta["model"]``, each star's own shape, on the
    fitting box ``meta["box"]``).

    Examples
    --------
    >>> import psfkit
    >>> from psfkit.datasets.simulate import simulate_field
    >>> data, truth = simulate_field((300, 300), 120, model="moffat", fwhm=3.0, beta=3.0, seed=1)
    >>> img = psfkit.Image(data=data, gain=1.5, read_noise=6.0)
    >>> stars = psfkit.find_stars(img, deblend=True, psf="frame")
    >>> res = subtract_stars(data, stars, stars.meta["frame_psf"])
    >>> bool(np.std(res) < 0.2 * np.std(data))
    True
    """
    acc = np.asarray(stars["accepted"], bool) if "accepted" in stars.colnames else np.ones(len(stars), bool)
    if psf is not None:
        light = add_stars(np.zeros(np.shape(data)), psf, np.asarray(stars["x_fit"], float)[acc],
                          np.asarray(stars["y_fit"], float)[acc], np.asarray(stars["flux_fit"], float)[acc])
    else:
        from psfkit.psf.models import get_model
        from psfkit.psf.render import render_stars_frame

        model = get_model(stars.meta.get("model", "gaussian"), angle=True,
                          sampling=stars.meta.get("sampling", "integrated"))
        box = int(stars.meta.get("box") or 15)
        light = render_stars_frame(stars[acc], model, np.shape(data), box=box)
    return np.asarray(data, dtype=float) - light


def write_residual(path: Any, residual: np.ndarray, image: Any = None, stars: Table | None = None, *,
                   overwrite: bool = True) -> None:
    """Write a residual frame as FITS (float32), never onto an input and never as a half file.

    The header says what it is (``IMAGETYP = 'residual'``, the PSF the stars were drawn with, how
    many) and carries the image's WCS when it has one.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from astropy.io import fits
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "res.fits"
    >>> write_residual(p, np.zeros((4, 4)))
    >>> fits.getheader(p)["IMAGETYP"]
    'residual'
    """
    from pathlib import Path

    from astropy.io import fits

    from psfkit.errors import PsfkitError
    from psfkit.io.outputs import atomic_output

    p = Path(path)
    if p.exists() and not overwrite:
        raise PsfkitError(f"{p}: exists")
    header = fits.Header()
    wcs = getattr(image, "wcs", None)
    if wcs is not None:
        try:
            header.update(wcs.to_header())
        except Exception:  # a WCS astropy cannot write back: the residual goes without it
            pass
    header["IMAGETYP"] = ("residual", "the frame minus every fitted star")
    if stars is not None:
        meta = stars.meta
        acc = np.asarray(stars["accepted"], bool) if "accepted" in stars.colnames else np.ones(len(stars), bool)
        header["NSTARS"] = (int(acc.sum()), "stars subtracted")
        if meta.get("frame_psf") is not None:
            psf = meta.get("photometry_psf")
        else:
            psf = f"{meta.get('model', 'gaussian')} model"
        header["STARPSF"] = (str(psf)[:60], "how the stars were drawn")
    if image is not None and getattr(image, "path", None):
        header["SRCIMAGE"] = (Path(str(image.path)).name[:60], "the frame")
    with atomic_output(p) as tmp:
        fits.PrimaryHDU(np.asarray(residual, dtype=np.float32), header=header).writeto(tmp)


def critical_separation(psf: FramePSF, overlap: float = GROUP_OVERLAP) -> float:
    """The separation (px) within which two stars' PSFs overlap by more than ``overlap``.

    The overlap is the normalised overlap integral ``sum(P(r) P(r - d)) / sum(P**2)`` of the PSF at
    the frame's centre with itself shifted by ``d``: on a sky-limited frame, the correlation of two
    stars' fluxes fitted together at a separation ``d``, and the factor by which a one-star fit with
    the other subtracted takes the other's error in flux.  The largest separation over all
    directions where it exceeds ``overlap`` (an elongated PSF reaches further along its long axis).
    DAOPHOT groups at a fixed "critical separation" in FWHM; this one follows the PSF's own wings
    (about 2 FWHM for a Moffat of beta 3 at the default 0.05).

    Examples
    --------
    >>> r2 = ((np.arange(41) - 20.0) ** 2)[:, None] + ((np.arange(41) - 20.0) ** 2)[None, :]
    >>> grid = np.exp(-r2 / (2 * 2.0**2)); grid *= 4.0 / grid.sum()    # sigma 1 px, oversampled 2x
    >>> psf = FramePSF(grid[None], 2, 0, (20.0, 20.0), (20.0, 20.0))
    >>> round(critical_separation(psf), 1)     # exp(-d**2 / 4) = 0.05: d = 3.5 px
    3.5
    """
    from scipy.signal import fftconvolve

    grid = psf.at(*psf.centre)[0]
    auto = fftconvolve(grid, grid[::-1, ::-1], mode="full")
    auto = auto / auto.max()
    c = grid.shape[0] - 1
    yy, xx = np.mgrid[0:auto.shape[0], 0:auto.shape[1]]
    dx, dy = (xx - c) / psf.oversampling, (yy - c) / psf.oversampling
    r = np.hypot(dx, dy)
    above = auto >= overlap
    if not above.any():
        return 0.0
    # from each node above the level, out to the level along the radius (the log's radial slope)
    with np.errstate(divide="ignore", invalid="ignore"):
        log = np.log(np.where(auto > 0, auto, np.nan))
        gy, gx = np.gradient(log, 1.0 / psf.oversampling)
        slope = (gx * dx + gy * dy) / r
        reach = r + np.where(slope < 0, (log - math.log(overlap)) / -slope, 0.0)
    reach = np.where(above & np.isfinite(reach), np.minimum(reach, r + 1.0 / psf.oversampling), r)
    return float(reach[above].max())


def star_groups(x: np.ndarray, y: np.ndarray, separation: float) -> np.ndarray:
    """Group labels: stars linked by chains of neighbours closer than ``separation`` share a label
    (the connected components of the neighbour graph; -1 for non-finite positions).

    Examples
    --------
    >>> star_groups(np.array([0.0, 3.0, 6.0, 50.0]), np.zeros(4), 4.0).tolist()
    [0, 0, 0, 1]
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    x, y = np.asarray(x, float), np.asarray(y, float)
    label = np.full(len(x), -1)
    ok = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    if len(ok) == 0:
        return label
    pairs = cKDTree(np.c_[x[ok], y[ok]]).query_pairs(separation, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(ok), len(ok)))
    _, label[ok] = connected_components(graph, directed=False)
    return label


#: flags of a star's own pixels (not of its fit), kept when its group's joint fit replaces its fit
_PIXEL_FLAGS = F.NEAR_EDGE | F.MASKED_PIXELS | F.SATURATED | F.NEIGHBOURS_MASKED


class _Members:
    """The stars of the pass: their frame-PSF fits (one table) and the light frame that draws them."""

    def __init__(self, psf: FramePSF, fits: Table, light: np.ndarray, fit: FitFunction, movable: np.ndarray,
                 data: np.ndarray | None = None):
        self.psf, self.fits, self.light, self.fit = psf, fits, light, fit
        self.movable = movable
        self.merged = np.zeros(len(movable), dtype=bool)
        self.data = data
        self.group_stats = {"groups": 0, "stars": 0, "largest": 0, "too_large": 0, "failed": 0}
        self._model = None

    def xyf(self, rows: np.ndarray | slice = slice(None)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        t = self.fits
        return (np.asarray(t["x_fit"], float)[rows], np.asarray(t["y_fit"], float)[rows],
                np.asarray(t["flux_fit"], float)[rows])

    def refit(self, rows: np.ndarray, coupling: float) -> np.ndarray:
        """One round: ``rows`` fitted with everything else's light subtracted, colour class by colour
        class (:func:`colour_classes`: no two stars of a class within ``coupling`` px), each class
        with the classes before it already updated (Gauss-Seidel); returns how far each flux moved,
        in flux errors (0 where the fit failed and the row kept its values).
        """
        moved = np.zeros(len(rows))
        if len(rows) == 0:
            return moved
        x, y, f = self.xyf(rows)
        for members in colour_classes(x, y, f, coupling):
            moved[members] = self._fit_rows(rows[members])
        return moved

    def _fit_rows(self, rows: np.ndarray) -> np.ndarray:
        x, y, f = self.xyf(rows)
        new = self.fit(x, y, _neighbour_light(self.psf, self.light.shape, self.xyf(), rows))
        ok = _fitted(new, self.light.shape)
        nf = np.asarray(new["flux_fit"], float)
        with np.errstate(invalid="ignore", divide="ignore"):
            moved = np.where(ok, np.abs(nf - f) / np.asarray(new["flux_err"], float), 0.0)
        take = rows[ok]
        add_stars(self.light, self.psf, x[ok], y[ok], f[ok], sign=-1.0)
        for name in new.colnames:
            if name in self.fits.colnames and name not in ("x_init", "y_init"):
                self.fits[name][take] = new[name][ok]
        add_stars(self.light, self.psf, *self.xyf(take))
        return np.nan_to_num(moved, nan=np.inf)

    def settle(self, rows: np.ndarray, reach: float, coupling: float, separation: float, box: int) -> int:
        """:meth:`converge`, then the groups' joint fits (:meth:`fit_groups`); where two stars of a
        group then converged onto one (:meth:`merge`), the survivor lost the light the other held:
        the stars near it are fitted again (rounds, then their groups; twice at most).  Returns the
        rounds.
        """
        n = self.converge(rows, reach, coupling)
        singles = False
        for _ in range(3):
            before = self.merged.copy()
            self.fit_groups(rows, separation, box, singles=singles)
            self.merge(MERGE_FWHM * coupling / COUPLING_FWHM)
            gone = np.flatnonzero(self.merged & ~before)
            if len(gone) == 0:
                break
            # the survivors and their groups again, each alone star as a group of one
            rows, singles = self.near(gone, separation), True
        return n

    def fit_groups(self, rows: np.ndarray, separation: float, box: int, *, singles: bool = False) -> None:
        """Every group of 2 to :data:`MAX_GROUP` movable stars that holds one of ``rows`` fitted as
        one least-squares problem (:func:`psfkit.psf.group_fit.fit_groups`) with everything else's
        light subtracted (``singles``: stars alone too, as groups of one); larger groups keep the
        rounds' fits.  A group whose joint fit fails (a flux at zero, a singular covariance, a
        member off by more than half a box) keeps them too.
        """
        meta = self.fits.meta
        if self.data is None or not meta.get("gain") or MAX_GROUP < 2:
            return  # unweighted fits have no variance to fit groups with: the rounds stand
        x, y, f = self.xyf()
        live = self.movable & np.isfinite(x) & np.isfinite(y) & np.isfinite(f)
        idx = np.flatnonzero(live)
        label = star_groups(x[idx], y[idx], separation)
        sizes = np.bincount(label, minlength=1)
        touched = np.zeros(len(sizes), bool)
        touched[label[np.isin(idx, rows)]] = True
        self.group_stats["too_large"] += int(np.sum(touched & (sizes > MAX_GROUP)))
        chosen = touched & (sizes >= (1 if singles else 2)) & (sizes <= MAX_GROUP)
        for k in np.unique(sizes[chosen]):
            labels = np.flatnonzero(chosen & (sizes == k))
            order = np.argsort(label, kind="stable")
            members = idx[order][np.isin(label[order], labels)].reshape(len(labels), k)
            self._fit_group_batch(members, box)

    def _fit_group_batch(self, members: np.ndarray, box: int) -> None:
        from psfkit.psf.engine import StampFit
        from psfkit.psf.group_fit import fit_groups
        from psfkit.psf.measure import measure
        from psfkit.psf.stamps import cut_stamps, saturation_mask

        meta = self.fits.meta
        g_n, k = members.shape
        half = box // 2
        x, y, f = (a[members] for a in self.xyf())
        cx, cy = np.rint(x).astype(int), np.rint(y).astype(int)
        ox, oy = cx.min(axis=1) - half, cy.min(axis=1) - half
        w = int((cx.max(axis=1) - ox).max()) + half + 1
        h = int((cy.max(axis=1) - oy).max()) + half + 1
        origin = np.c_[ox, oy].astype(float)
        stamps, inside, _, _ = cut_stamps(self.data, ox + w // 2, oy + h // 2, (h, w))
        light, _, _, _ = cut_stamps(self.light, ox + w // 2, oy + h // 2, (h, w))
        own = own_light(self.psf, np.repeat(origin, k, axis=0), (h, w), x.ravel(), y.ravel(), f.ravel())
        other = np.where(inside, light, 0.0) - own.reshape(g_n, k, h, w).sum(axis=1)
        # the group's pixels: within half a box of a member, on the frame, finite, not saturated
        yy, xx = np.mgrid[0:h, 0:w]
        near = np.zeros((g_n, h, w), bool)
        for j in range(k):
            near |= ((np.abs(xx[None] + ox[:, None, None] - cx[:, j, None, None]) <= half)
                     & (np.abs(yy[None] + oy[:, None, None] - cy[:, j, None, None]) <= half))
        mask = near & inside & np.isfinite(stamps) & ~saturation_mask(stamps, meta.get("saturation"))
        gain = float(meta["gain"])
        bkg = np.asarray(self.fits["background"], float)[members]
        fin = np.isfinite(bkg)
        b0 = np.where(fin, bkg, 0.0).sum(axis=1) / np.maximum(fin.sum(axis=1), 1)
        start = np.empty((g_n, 1 + 3 * k))
        start[:, 0] = b0
        start[:, 1::3], start[:, 2::3], start[:, 3::3] = f, x - ox[:, None], y - oy[:, None]
        fit = fit_groups(stamps - other, mask, origin, start, self.psf, gain=gain,
                         read_noise=float(meta.get("read_noise_adu") or 0.0),
                         variance=np.clip(other, 0.0, None) / gain)
        q = fit.params
        moved = np.hypot(q[:, 2::3] - start[:, 2::3], q[:, 3::3] - start[:, 3::3])
        good = fit.ok & np.all(moved <= half, axis=1)
        if k > 1:
            self.group_stats["groups"] += int(good.sum())
            self.group_stats["stars"] += int(good.sum()) * k
            self.group_stats["failed"] += int((~good).sum())
            if good.any():
                self.group_stats["largest"] = max(self.group_stats["largest"], int(k))
        if not good.any():
            return
        gi = np.flatnonzero(good)
        n = len(gi) * k
        params = np.zeros((n, 6))
        cov = np.zeros((n, 6, 6))
        for j in range(k):
            sel = [0, 1 + 3 * j, 2 + 3 * j, 3 + 3 * j]
            params[j::k, :4] = q[gi][:, sel]
            cov[j::k, :4, :4] = fit.covariance[gi][:, sel][:, :, sel]
        params[:, 4:] = np.repeat(origin[gi], k, axis=0)
        flags = np.where(np.repeat(fit.converged[gi], k), 0, F.NOT_CONVERGED).astype(np.int64)
        stamp_fit = StampFit(params=params, covariance=cov, chi2=np.repeat(fit.chi2[gi], k),
                             rss=np.repeat(fit.rss[gi], k), n_pixels=np.repeat(fit.n_pixels[gi], k),
                             n_free=fit.n_free, iterations=np.repeat(fit.iterations[gi], k), flags=flags,
                             free=np.array([True, True, True, True, False, False]), weighted=True)
        if self._model is None:
            self._model = self.psf.model()
        cols = measure(self._model, stamp_fit, np.repeat(origin[gi], k, axis=0),
                       zero_point=float(meta.get("zero_point") or 0.0), pixel_scale=meta.get("pixel_scale"))
        snr = np.nan_to_num(np.asarray(cols["snr"], float), nan=0.0)
        cols["flags"] = np.asarray(cols["flags"]) | np.where(snr < F.NO_SOURCE_SNR, F.NO_SOURCE, 0)
        take = members[gi].ravel()
        add_stars(self.light, self.psf, *self.xyf(take), sign=-1.0)
        old_flags = np.asarray(self.fits["flags"])[take]
        for name in (*_PSF_COLUMNS, "flags"):
            if name in cols and name in self.fits.colnames:
                self.fits[name][take] = cols[name]
        self.fits["flags"][take] = (old_flags & _PIXEL_FLAGS) | np.asarray(cols["flags"])
        add_stars(self.light, self.psf, *self.xyf(take))

    def merge(self, radius: float) -> None:
        """Two stars whose fits converged within ``radius`` are one: the fainter goes (its light out)."""
        x, y, f = self.xyf()
        live = np.flatnonzero(np.isfinite(x) & np.isfinite(y) & np.isfinite(f))
        if len(live) < 2:
            return
        pairs = cKDTree(np.c_[x[live], y[live]]).query_pairs(radius, output_type="ndarray")
        if len(pairs) == 0:
            return
        a, b = live[pairs[:, 0]], live[pairs[:, 1]]
        gone = np.unique(np.where(f[a] < f[b], a, b))
        add_stars(self.light, self.psf, x[gone], y[gone], f[gone], sign=-1.0)
        self.fits["flux_fit"][gone] = np.nan
        self.fits["flux_err"][gone] = np.nan
        self.movable[gone] = False
        self.merged[gone] = True

    def near(self, rows: np.ndarray, reach: float) -> np.ndarray:
        """The members within ``reach`` of ``rows`` (``rows`` included)."""
        x, y, _ = self.xyf()
        ok = np.isfinite(x) & np.isfinite(y)
        idx = np.flatnonzero(ok)
        hits = cKDTree(np.c_[x[idx], y[idx]]).query_ball_point(np.c_[x[rows], y[rows]], reach)
        found = [idx[np.asarray(h, dtype=int)] for h in hits]
        return np.unique(np.concatenate([np.asarray(rows, dtype=int), *found])).astype(int)

    def converge(self, rows: np.ndarray, reach: float, coupling: float) -> int:
        """Rounds of :meth:`refit` until no flux moves by CONVERGED errors; after the first round
        only the stars within ``reach`` of one that moved are fitted again.  Returns the rounds.
        """
        todo = rows[self.movable[rows]]
        n = 0
        for n in range(1, ROUNDS + 1):
            moved = self.refit(todo, coupling)
            self.merge(MERGE_FWHM * coupling / COUPLING_FWHM)
            changed = todo[(moved > CONVERGED) & self.movable[todo]]
            if len(changed) == 0 or n == ROUNDS:
                break
            near = self.near(changed, reach)
            todo = near[self.movable[near]]
        return n


def colour_classes(x: np.ndarray, y: np.ndarray, flux: np.ndarray, coupling: float) -> list[np.ndarray]:
    """Stars split into classes with no two members closer than ``coupling`` (greedy colouring,
    brightest first), in the order to fit them: the class of the brightest star first.

    Examples
    --------
    >>> [c.tolist() for c in colour_classes(np.array([0.0, 3.0, 50.0]), np.zeros(3), np.array([1.0, 2.0, 3.0]), 5.0)]
    [[1, 2], [0]]
    """
    n = len(x)
    colour = np.full(n, -1)
    order = np.argsort(-np.nan_to_num(flux, nan=-np.inf), kind="stable")
    ok = np.isfinite(x) & np.isfinite(y)
    pts = np.c_[np.where(ok, x, 0.0), np.where(ok, y, 0.0)]
    pairs = cKDTree(pts).query_pairs(coupling, output_type="ndarray") if n > 1 else np.zeros((0, 2), int)
    neighbours: list[list[int]] = [[] for _ in range(n)]
    for a, b in pairs:
        neighbours[a].append(b)
        neighbours[b].append(a)
    for i in order:
        used = {colour[j] for j in neighbours[i]}
        c = 0
        while c in used:
            c += 1
        colour[i] = c
    return [np.flatnonzero(colour == c) for c in range(int(colour.max()) + 1)] if n else []


def crowded_pass(
    data: np.ndarray,
    level: np.ndarray,
    stars: Table,
    psf: FramePSF,
    *,
    fwhm: float,
    smoothing: float,
    threshold: float,
    gain: float | None,
    fit_psf: FitFunction,
    fit_shape: FitFunction,
    avoid: tuple[np.ndarray, np.ndarray] | None = None,
    min_snr: float = 3.0,
    box: int,
) -> tuple[Table, Table, np.ndarray, dict]:
    """Fit every star with the frame's PSF and its neighbours subtracted, find the stars the
    residual still holds, and repeat until it holds none (see the module's text).

    Parameters
    ----------
    data, level : ndarray
        The frame and its background map.
    stars : Table
        The accepted stars of the first pass (``x_fit``, ``y_fit``, ``flux_fit``, ``flags``).
    psf : FramePSF
        The frame's PSF.
    fwhm, smoothing : float
        The frame's FWHM and the detection filter's sigma (px).
    threshold : float
        Detection threshold on the residual, in its own noise.
    gain : float or None
        e-/ADU: the subtracted light's photon noise (None: the residual's noise only).
    fit_psf, fit_shape : callable
        ``fit(x, y, neighbour_light) -> Table``: the caller's fit with the frame's PSF, and with the
        analytic model (for each star's own FWHM, roundness and angle).
    avoid : (x, y), optional
        Rejected candidates (not subtracted): no star is looked for within a FWHM of them.
    min_snr : float
        A new star must fit at this S/N at least.
    box : int
        The fitting box (px).

    Returns
    -------
    stars : Table
        ``stars`` measured again (same rows and order).
    found : Table
        The stars found on the residual, fitted (``peak_significance``, ``x_init``, ``y_init``: the peak).
    light : ndarray
        Every star's light (the light frame); ``data - level - light`` is the residual.
    info : dict
        Passes, rounds, stars found per pass and the residual's noise.

    Examples
    --------
    The pass runs inside ``find_stars(..., deblend=True, psf="frame")``:

    >>> import psfkit
    >>> from psfkit.datasets.simulate import simulate_field
    >>> data, truth = simulate_field((300, 300), 120, model="moffat", fwhm=3.0, beta=3.0, seed=1)
    >>> stars = psfkit.find_stars(data, gain=1.5, read_noise=6.0, deblend=True, psf="frame")
    >>> stars.meta["crowded"]["passes"] >= 1
    True
    """
    shape = data.shape
    n0 = len(stars)
    x0 = np.asarray(stars["x_fit"], float)
    y0 = np.asarray(stars["y_fit"], float)
    f0 = np.asarray(stars["flux_fit"], float)
    usable = np.isfinite(x0) & np.isfinite(y0) & np.isfinite(f0) & (f0 > 0)
    # saturated stars keep their fit on the wings (their light is drawn, they are not refitted)
    movable = usable & ((np.asarray(stars["flags"]) & F.SATURATED) == 0)
    light = add_stars(np.zeros(shape), psf, x0[usable], y0[usable], f0[usable])
    reach = float(box) + 2.0 * psf.half_size
    # the first fits give the table its columns
    first = fit_psf(x0[movable], y0[movable],
                    _neighbour_light(psf, shape, (x0, y0, np.where(usable, f0, np.nan)), np.flatnonzero(movable)))
    fits = _blank_like(first, n0)
    fits["x_fit"], fits["y_fit"], fits["flux_fit"] = x0, y0, np.where(usable, f0, np.nan)
    fits["flags"] = np.asarray(stars["flags"]).copy()
    members = _Members(psf, fits, light, fit_psf, movable.copy(), data=np.asarray(data, dtype=float))
    # the first round's fits are applied as refit() would
    rows = np.flatnonzero(movable)
    ok = _fitted(first, shape)
    add_stars(light, psf, x0[rows[ok]], y0[rows[ok]], f0[rows[ok]], sign=-1.0)
    for name in first.colnames:
        if name in fits.colnames:
            fits[name][rows[ok]] = first[name][ok]
    add_stars(light, psf, *members.xyf(rows[ok]))
    coupling = COUPLING_FWHM * fwhm
    separation = critical_separation(psf)
    rounds = [1 + members.settle(rows, reach, coupling, separation, box)]
    avoid_xy = np.zeros((0, 2)) if avoid is None else np.c_[avoid[0], avoid[1]]
    tried = np.zeros((0, 2))
    peaks_sig: list[np.ndarray] = []
    peaks_xy: list[np.ndarray] = []
    found_per_pass: list[int] = []
    profiles: list[float] = []
    sky_noise = float("nan")
    for _ in range(MAX_PASSES):
        residual = data - level - light
        quiet = light < 0.1 * max(robust_sigma(residual), 1e-30)
        sky_noise = robust_sigma(residual[quiet]) if quiet.sum() > 100 else robust_sigma(residual)
        var = np.full(shape, sky_noise**2)
        if gain:
            var = var + np.clip(light, 0.0, None) / gain
        profile = max(PROFILE_ERROR, _profile_error(residual, var, light, sky_noise))
        var = var + (profile * light) ** 2
        profiles.append(profile)
        px, py, sig = residual_peaks(residual, var, smoothing=smoothing, threshold=threshold,
                                     separation=max(2.0, 0.8 * fwhm))
        x, y, _ = members.xyf()
        alive = np.isfinite(members.fits["flux_fit"])
        taken = np.r_[np.c_[x[alive], y[alive]]]
        far = _far_from(px, py, taken, MIN_SEPARATION_FWHM * fwhm)
        far &= _far_from(px, py, avoid_xy, fwhm) & _far_from(px, py, tried, 0.5 * fwhm)
        px, py, sig = px[far], py[far], sig[far]
        if len(px) == 0:
            break
        tried = np.r_[tried, np.c_[px, py]]
        new = fit_psf(px, py, _neighbour_light(psf, shape, members.xyf()))
        nx_, ny_ = np.asarray(new["x_fit"], float), np.asarray(new["y_fit"], float)
        with np.errstate(invalid="ignore"):
            good = _fitted(new, shape) & (np.nan_to_num(np.asarray(new["snr"], float), nan=0.0) >= min_snr)
            good &= np.hypot(nx_ - px, ny_ - py) <= fwhm
        good &= _far_from(nx_, ny_, taken, MERGE_FWHM * fwhm)
        # two new stars that converged on one: the brighter
        idx = np.flatnonzero(good)
        order = idx[np.argsort(-np.asarray(new["flux_fit"], float)[idx], kind="stable")]
        good[order[~thin_brighter_first(nx_[order], ny_[order], MERGE_FWHM * fwhm)]] = False
        found_per_pass.append(int(good.sum()))
        if not good.any():
            break
        add = new[good]
        add["x_init"], add["y_init"] = px[good], py[good]
        peaks_sig.append(sig[good])
        peaks_xy.append(np.c_[px[good], py[good]])
        start = len(members.fits)
        members.fits = vstack([members.fits, add[members.fits.colnames]], metadata_conflicts="silent")
        members.movable = np.r_[members.movable, np.ones(len(add), bool)]
        members.merged = np.r_[members.merged, np.zeros(len(add), bool)]
        add_stars(light, psf, *members.xyf(np.arange(start, len(members.fits))))
        # the new stars and their neighbours again, each with the others' light
        near = members.near(np.arange(start, len(members.fits)), reach)
        rounds.append(members.settle(near, reach, coupling, separation, box))
    fits = members.fits
    # each star's own shape: the analytic model with every other star's light (the frame PSF's) out
    n_all = len(fits)
    x, y, f = members.xyf()
    every = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    shape_fit = fit_shape(x[every], y[every], _neighbour_light(psf, shape, (x, y, f), every))
    out = _blank_like(shape_fit, n_all)
    for name in shape_fit.colnames:
        out[name][every] = shape_fit[name]
    out["flux_fit_analytic"] = np.asarray(out["flux_fit"], float)
    for name in _PSF_COLUMNS:
        if name in out.colnames and name in fits.colnames:
            out[name] = fits[name]
    out["flags"] = np.asarray(out["flags"]) | np.asarray(fits["flags"])
    merged = members.merged
    refit = out[:n0]
    found = out[n0:][~merged[n0:]]
    if len(found):
        found["x_init"] = np.asarray(fits["x_init"], float)[n0:][~merged[n0:]]
        found["y_init"] = np.asarray(fits["y_init"], float)[n0:][~merged[n0:]]
        found["peak_significance"] = np.concatenate(peaks_sig)[~merged[n0:]]
    # the stars the frame's PSF could not fit keep the first pass's values
    lost = (~np.isfinite(np.asarray(fits["flux_err"], float)[:n0]) | ~movable) & ~merged[:n0]
    info = {"passes": len(found_per_pass), "found_per_pass": found_per_pass, "rounds": rounds,
            "profile_error": profiles[-1] if profiles else PROFILE_ERROR,
            "residual_noise": sky_noise, "n_refitted": int(n0 - lost.sum()), "n_found": len(found)}
    info["n_merged"] = int(merged.sum())
    info["groups"] = {**members.group_stats, "separation": separation, "max_size": MAX_GROUP}
    return refit, found, light, {**info, "unchanged": lost, "merged": merged[:n0]}


def _profile_error(residual: np.ndarray, var: np.ndarray, light: np.ndarray, sky: float) -> float:
    """The PSF's own error as a fraction of the light, from the residual where the light is bright
    (above 20 sky noise): the scatter beyond the noise there, robustly (0 when there is none).
    """
    bright = light > 20.0 * sky
    if bright.sum() < 50:
        return 0.0
    r, v, lt = residual[bright], var[bright], light[bright]
    z = r / np.sqrt(v)
    s = robust_sigma(z)
    if not s > 1.0:
        return 0.0
    return float(math.sqrt((s * s - 1.0) * np.median(v) / np.median(lt * lt)))


def _blank_like(table: Table, n: int) -> Table:
    """A table of ``n`` rows with ``table``'s columns: NaN for floats, 0 for the rest."""
    out = Table(meta=dict(table.meta))
    for name in table.colnames:
        col = np.asarray(table[name])
        fill = np.nan if col.dtype.kind == "f" else 0
        out[name] = np.full((n, *col.shape[1:]), fill, dtype=col.dtype)
        if getattr(table[name], "unit", None) is not None:
            out[name].unit = table[name].unit
    return out


def _far_from(x: np.ndarray, y: np.ndarray, points: np.ndarray, radius: float) -> np.ndarray:
    """Which of (x, y) lie farther than ``radius`` from every point."""
    if len(points) == 0 or len(x) == 0:
        return np.ones(len(x), dtype=bool)
    d, _ = cKDTree(points).query(np.c_[x, y])
    return d > radius
