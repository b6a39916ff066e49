"""Crowded stars: neighbours subtracted, and companions hidden in a brighter star's light.

The first pass of :func:`psfkit.find_stars` fits each candidate with its brighter neighbours'
cores masked.  Two things escape it: the wings of a neighbour still fall on the star's pixels,
and a faint star within ~2 FWHM of a brighter one is no local maximum of the smoothed frame, so
it is not a candidate at all and the brighter star's fit takes its light.  This pass (DAOPHOT's
idea: subtract, look again):

1. fits again every star that has a neighbour within its box, with the neighbours' fitted
   models subtracted from its pixels (their photon noise kept in the weights);
2. looks for peaks of the residual frame (the frame minus every star's model) around each
   star, keeping the strongest per star;
3. fits those companions, then the stars beside them again without the companions' light;
4. keeps a companion only when it explains its star's residual: the star's chi-square drops by
   more than threshold^2 (in units of its new reduced chi-square) with the companion taken out,
   and the star then fits to the noise (reduced chi-square below 2). A bright star whose profile
   the model misses leaves a residual no companion explains; use the Moffat model there.

A peak of the residual counts only when it stands above the detection level plus a fifth of the
stars' light at its place, *and* above the residual at the point mirrored through the star's
centre by the detection level: a model that misses the star's true profile (a Gaussian fitted to
a star with Moffat wings, a slightly wrong width or elongation) leaves a residual symmetric about
the centre and small against the star's light there; a companion is neither.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from astropy.table import Table
from scipy import ndimage
from scipy.spatial import cKDTree

from psfkit import flags as F
from psfkit.psf.engine import model_values
from psfkit.psf.models import get_model
from psfkit.psf.render import model_params, render_stars_frame
from psfkit.psf.stamps import cut_stamps
from psfkit.utils import thin_brighter_first

__all__ = ["deblend_stars", "INNER_FWHM", "OUTER_FWHM", "MISFIT_FRACTION", "MAX_REDUCED_CHI2", "MERGED_REDUCED_CHI2",
           "UNWEIGHTED_CHI2_FACTOR"]

#: companions are looked for from this many FWHM (the frame's) from a star's centre (closer ones are
#: not resolved) ...
INNER_FWHM = 0.8
#: ... out to this many (farther, the first pass sees them as peaks of their own)
OUTER_FWHM = 3.0

#: a residual peak must also exceed this fraction of the stars' (smoothed) light at its place: where
#: two stars' misfits overlap (an axis-aligned fit of a rotated ellipse leaves +-2.5 % of the peak
#: in a four-leaf pattern) the sum is no longer symmetric about either star, but it stays below
#: ~15 % of their light there, while a companion of 5 % of a star's flux 1.2 FWHM away is ~5 times it
MISFIT_FRACTION = 0.2

#: a companion is claimed only where the star's model (the companion taken out) fits to the noise
MAX_REDUCED_CHI2 = 2.0

#: a star fitted this far from the noise (reduced chi-square) may be two stars fitted as one: its
#: strongest residual bump is tried as a companion without the symmetry tests. (A misfit of this
#: size is a bright star's, and no companion brings the star down to MAX_REDUCED_CHI2; a moderate
#: misfit, which a false companion could, takes the symmetry tests)
MERGED_REDUCED_CHI2 = 20.0

#: without a gain (unweighted fits) a companion must divide its star's reduced chi-square by this
UNWEIGHTED_CHI2_FACTOR = 3.0

#: rounds of (star without its companion, companion without its star)
ROUNDS = 8

#: ``fit(x, y, masker, neighbour_light) -> Table``: how the caller fits stars
FitFunction = Callable[[np.ndarray, np.ndarray, Any, Any], Table]


def _frame_model(table: Table) -> Any:
    """The model the table's stars were fitted with, able to draw any row (its beta, its angle)."""
    return get_model(table.meta.get("model", "gaussian"), angle=True, sampling=table.meta.get("sampling", "integrated"))


def _stamps_at(frame: np.ndarray, origin: np.ndarray, box: int) -> np.ndarray:
    """``box`` x ``box`` stamps of ``frame`` whose first pixel is at ``origin`` (0 off the frame)."""
    centre = origin + box // 2
    stamps, inside, _, _ = cut_stamps(frame, centre[:, 0].astype(float), centre[:, 1].astype(float), box)
    return np.where(inside, stamps, 0.0)


def _neighbour_light(light: np.ndarray, model: Any, own: Table | None):
    """``neighbour_light`` for :func:`psfkit.fit_stars`: the light frame's stamps, less each fitted
    star's own model (``own``, in the order of the stars fitted; None for stars not in ``light``).
    """

    def on_stamps(origin: np.ndarray, box: int) -> np.ndarray:
        out = _stamps_at(light, origin, box)
        if own is not None:
            p = model_params(model, own, origin)
            p[:, 0] = 0.0
            mine = model_values(model, p, (box, box)).reshape(len(own), box, box)
            # only where render_stars_frame drew it: a box of the table's size on the rounded centre
            drawn = int(own.meta["box"])
            x0 = np.round(np.asarray(own["x_fit"], dtype=float)) - drawn // 2 - origin[:, 0]
            y0 = np.round(np.asarray(own["y_fit"], dtype=float)) - drawn // 2 - origin[:, 1]
            xx = np.arange(box)[None, None, :]
            yy = np.arange(box)[None, :, None]
            inside = ((xx >= x0[:, None, None]) & (xx < x0[:, None, None] + drawn)
                      & (yy >= y0[:, None, None]) & (yy < y0[:, None, None] + drawn))
            out -= np.where(inside, mine, 0.0)
        return out

    return on_stamps


def _light(tables: list[Table], model: Any, shape: tuple[int, int], box: int) -> np.ndarray:
    """The light of every star of the tables on one frame (float32)."""
    frame = np.zeros(shape, dtype=np.float32)
    for t in tables:
        if len(t):
            render_stars_frame(t, model, shape, box=box, out=frame)
    return frame


def _fitted(table: Table, shape: tuple[int, int]) -> np.ndarray:
    """Rows whose fit can stand in for the star (finite, not failed, centre in place and on the frame)."""
    x = np.asarray(table["x_fit"], dtype=float)
    y = np.asarray(table["y_fit"], dtype=float)
    with np.errstate(invalid="ignore"):
        on = (x >= -0.5) & (x <= shape[1] - 0.5) & (y >= -0.5) & (y <= shape[0] - 0.5)
    return on & np.isfinite(np.asarray(table["flux_fit"], dtype=float)) & (
        (np.asarray(table["flags"]) & (F.FIT_FAILED | F.CENTER_MOVED)) == 0)


def _residual_peaks(data: np.ndarray, light: np.ndarray, level: np.ndarray, stars: Table, *, fwhm: float,
                    smoothing: float, limit: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Peaks of the smoothed residual around each star: (x, y, smoothed peak, index of the star).

    ``limit`` is the detection level on the smoothed scale; a peak must exceed it, and exceed
    the point mirrored through the star's centre by it.
    """
    r = int(math.ceil(OUTER_FWHM * fwhm)) + 2
    w = 2 * r + 1
    xs = np.asarray(stars["x_fit"], dtype=float)
    ys = np.asarray(stars["y_fit"], dtype=float)
    patches, inside, origin, _ = cut_stamps(data, xs, ys, w)
    model = np.nan_to_num(np.where(inside, cut_stamps(light, xs, ys, w)[0], 0.0), nan=0.0)
    patches = patches - cut_stamps(level, xs, ys, w)[0] - model
    patches = np.nan_to_num(np.where(inside, patches, 0.0), nan=0.0)
    smooth = ndimage.gaussian_filter(patches, (0, smoothing, smoothing), mode="nearest", truncate=3.0)
    model = ndimage.gaussian_filter(model, (0, smoothing, smoothing), mode="nearest", truncate=3.0)
    # a residual bump must not look like a misfit's; but a star fitted far from the noise (two stars
    # fitted as one, centre between them, leave a symmetric residual too) offers its strongest bump,
    # and the fit of the pair decides (deblend_stars, step 4: the pair must fit to the noise)
    poor = np.nan_to_num(np.asarray(stars["reduced_chi2"], dtype=float), nan=0.0) > MERGED_REDUCED_CHI2
    peak = (smooth == ndimage.maximum_filter(smooth, size=(1, 3, 3), mode="nearest")) & inside
    peak &= (smooth > limit + MISFIT_FRACTION * model) | (poor[:, None, None] & (smooth > limit))
    k, py, px = np.nonzero(peak)
    cx = xs[k] - origin[k, 0]
    cy = ys[k] - origin[k, 1]
    d = np.hypot(px - cx, py - cy)
    mx = np.rint(2 * cx - px).astype(int)
    my = np.rint(2 * cy - py).astype(int)
    seen = (mx >= 0) & (mx < w) & (my >= 0) & (my < w)
    mx, my = np.clip(mx, 0, w - 1), np.clip(my, 0, w - 1)
    seen &= inside[k, my, mx]  # a mirrored point off the image tells nothing: the test fails
    value = smooth[k, py, px]
    symmetric_ok = seen & (value - smooth[k, my, mx] > limit)
    keep = (d >= INNER_FWHM * fwhm) & (d <= OUTER_FWHM * fwhm) & (symmetric_ok | poor[k])
    k, px, py, value = k[keep], px[keep], py[keep], value[keep]
    # the strongest per star (a fit that took a companion's light leaves more than one bump)
    order = np.lexsort((-value, k))
    first = order[np.r_[True, k[order][1:] != k[order][:-1]]] if len(order) else order
    k, px, py, value = k[first], px[first], py[first], value[first]
    return px + origin[k, 0].astype(float), py + origin[k, 1].astype(float), value, k


def _dedupe(x: np.ndarray, y: np.ndarray, peak: np.ndarray, sep: float) -> np.ndarray:
    """Indices of the peaks kept when two lie within ``sep`` (a peak seen from two stars' patches)."""
    order = np.argsort(-peak, kind="stable")
    return order[thin_brighter_first(x[order], y[order], sep)]


def _refit_rows(table: Table, rows: np.ndarray, new: Table, light: np.ndarray, model: Any, box: int) -> None:
    """New fits of ``table[rows]`` where they worked, the light frame following (old models out, new in)."""
    ok = _fitted(new, light.shape)
    render_stars_frame(table[rows[ok]], model, light.shape, box=box, out=light, sign=-1.0)
    _replace_rows(table, rows, new, ok)
    render_stars_frame(table[rows[ok]], model, light.shape, box=box, out=light)


def _disc_mask(x: np.ndarray, y: np.ndarray, radius: np.ndarray):
    """``stamp_mask`` for star i of a fit: the pixels within ``radius[i]`` of (x[i], y[i])."""

    def mask(origin: np.ndarray, box: int) -> np.ndarray:
        yy, xx = np.mgrid[0:box, 0:box]
        dx = xx[None] + origin[:, 0, None, None] - x[:, None, None]
        dy = yy[None] + origin[:, 1, None, None] - y[:, None, None]
        return dx * dx + dy * dy <= (radius * radius)[:, None, None]

    return mask


def _replace_rows(table: Table, rows: np.ndarray, new: Table, ok: np.ndarray) -> None:
    """New fits of some rows, where they worked (where the candidates were found stays)."""
    for name in new.colnames:
        if name in table.colnames and name not in ("id", "x_init", "y_init", "peak_significance", "detection_pass"):
            table[name][rows[ok]] = new[name][ok]


def deblend_stars(
    data: np.ndarray,
    level: np.ndarray,
    stars: Table,
    *,
    fwhm: float,
    smoothing: float,
    threshold: float,
    noise: float,
    fit: FitFunction,
) -> tuple[Table, Table, np.ndarray]:
    """Refit crowded stars with their neighbours subtracted, and find and fit hidden companions.

    Parameters
    ----------
    data, level : ndarray
        The frame and its background map.
    stars : Table
        The accepted stars of the first pass (``meta["box"]``, ``meta["model"]``).
    fwhm, smoothing : float
        The frame's FWHM and the detection smoothing (Gaussian sigma, px).
    threshold, noise : float
        The detection threshold and the smoothed frame's noise: a residual peak must exceed
        ``threshold * noise``, and the mirrored point by as much.
    fit : callable
        ``fit(x, y, neighbours, neighbour_light) -> Table``: the caller's fit of stars at (x, y),
        in one call of :func:`psfkit.fit_stars` (``neighbour_light`` is its option).
        ``neighbours`` is ``(stars, rows)`` or ``(stars, rows, mask)`` when the fitted stars are
        ``stars[rows]`` (the caller masks their brighter neighbours' cores, as in its first pass,
        and the pixels ``mask(origin, box)`` marks), None for new stars.

    Returns
    -------
    stars : Table
        ``stars`` with the refitted rows replaced.
    companions : Table
        The companions found, fitted, with ``chi2_drop`` (how much each lowers its star's
        chi-square, in units of the star's new reduced chi-square).
    explains : ndarray of bool
        Companions that fit and explain their star's residual (the caller applies its rejection
        tests to these; the others are misfits of the star's model).

    Examples
    --------
    The pass runs inside ``find_stars(..., deblend=True)``; its stars say which pass found them:

    >>> import psfkit
    >>> from psfkit.datasets.simulate import simulate_field
    >>> data, truth = simulate_field((96, 96), 6, fwhm=3.0, seed=0, edge=12, min_separation=15)
    >>> stars = psfkit.find_stars(data, gain=1.5, read_noise=6.0, deblend=True)
    >>> "detection_pass" in stars.colnames, len(stars)
    (True, 6)
    """
    stars = stars.copy(copy_data=True)
    empty = (stars[:0], np.zeros(0, dtype=bool))
    if len(stars) == 0:
        return (stars, *empty)
    model = _frame_model(stars)
    box = int(stars.meta["box"])
    shape = data.shape
    xs = np.asarray(stars["x_fit"], dtype=float)
    ys = np.asarray(stars["y_fit"], dtype=float)
    # 1. the stars with a neighbour within their box, again with the neighbours' light taken out
    light = _light([stars], model, shape, box)
    tree = cKDTree(np.stack([xs, ys], axis=1))
    crowded = np.array([len(n) > 1 for n in tree.query_ball_point(np.stack([xs, ys], axis=1), box / math.sqrt(2))],
                       dtype=bool) if len(stars) > 1 else np.zeros(1, dtype=bool)
    # saturated stars are left as they are (their cores are masked, not modelled), and so are fits
    # whose centre ended off the frame
    skip = ((np.asarray(stars["flags"]) & F.SATURATED) != 0) | ~_fitted(stars, shape)
    rows = np.flatnonzero(crowded & ~skip)
    # two rounds: a pair that the first pass found as two candidates took each other's light, and
    # the first round subtracts that biased light (a companion 1.5 FWHM off: the star's flux 3 % low)
    for _ in range(2 if len(rows) else 0):
        new = fit(xs[rows], ys[rows], (stars, rows), _neighbour_light(light, model, stars[rows]))
        _refit_rows(stars, rows, new, light, model, box)
    # 2. peaks of the residual around the stars (not the saturated ones: their masked cores leave a
    # residual of their own)
    use = np.flatnonzero(~skip)
    px, py, peak, k = _residual_peaks(data, light, level, stars[use], fwhm=fwhm, smoothing=smoothing,
                                      limit=threshold * noise)
    keep = _dedupe(px, py, peak, max(2.0, 0.8 * fwhm))
    if len(keep) == 0:
        return (stars, *empty)
    px, py, peak, k = px[keep], py[keep], peak[keep], use[k[keep]]
    # 3. each star again with its companion's core masked (its fit took the companion's light), the
    # companions with the stars' light taken out, then in turn each without the other's light: each
    # fit moves the other's, so a few rounds
    alone = stars[k]  # the stars' fits before: what the companions must improve on
    sx, sy = np.asarray(alone["x_fit"], dtype=float), np.asarray(alone["y_fit"], dtype=float)
    radius = np.clip(0.75 * np.hypot(px - sx, py - sy), 1.0, 1.2 * fwhm)
    new = fit(xs[k], ys[k], (stars, k, _disc_mask(px, py, radius)), _neighbour_light(light, model, stars[k]))
    _refit_rows(stars, k, new, light, model, box)
    companions = fit(px, py, None, _neighbour_light(light, model, None))
    companions["peak_significance"] = peak / noise
    real = _fitted(companions, shape)
    if not real.all():  # stars whose companion did not fit: back as they were (the light frame too)
        _refit_rows(stars, k[~real], alone[~real], light, model, box)
    if not real.any():
        return stars, companions, real
    rows, alone = k[real], alone[real]  # one companion per star
    comp = companions[real]
    cx, cy = np.asarray(comp["x_fit"], dtype=float), np.asarray(comp["y_fit"], dtype=float)
    render_stars_frame(comp, model, shape, box=box, out=light)
    for round_ in range(ROUNDS):
        new = fit(xs[rows], ys[rows], (stars, rows), _neighbour_light(light, model, stars[rows]))
        _refit_rows(stars, rows, new, light, model, box)
        if round_ == ROUNDS - 1:
            break
        again = fit(cx, cy, None, _neighbour_light(light, model, comp))
        _refit_rows(comp, np.arange(len(comp)), again, light, model, box)
    _replace_rows(companions, np.flatnonzero(real), comp, np.ones(len(comp), dtype=bool))
    # 4. a companion must explain the star's residual: with it the star's chi-square drops by more
    # than threshold^2 in units of the new fit's reduced chi-square (what a star of SNR `threshold`
    # would do), and the star's model, companion included, must fit to the noise: where it does not
    # (bright stars whose profile the model misses) the residual is the misfit's, whatever its shape
    scale = np.asarray(stars["reduced_chi2"], dtype=float)[rows]
    with np.errstate(invalid="ignore", divide="ignore"):
        drop = (_chi2(alone) - _chi2(stars[rows])) / scale
    if stars.meta.get("weighted", True):
        to_noise = scale < MAX_REDUCED_CHI2
    else:
        # without a gain the fits weigh every pixel by the background's noise, and a bright star's
        # own photon noise keeps its reduced chi-square above 2 however well it fits: the
        # companion must divide it by UNWEIGHTED_CHI2_FACTOR instead
        to_noise = scale * UNWEIGHTED_CHI2_FACTOR < np.asarray(alone["reduced_chi2"], dtype=float)
    ok = _fitted(stars[rows], shape) & (np.nan_to_num(drop, nan=-np.inf) > threshold**2) & to_noise
    bad = rows[~ok]  # the star keeps its fit without the companion
    if len(bad):
        _refit_rows(stars, bad, alone[~ok], light, model, box)
    idx = np.flatnonzero(real)
    real[idx[~ok]] = False
    companions["chi2_drop"] = np.full(len(companions), np.nan)
    companions["chi2_drop"][idx] = drop
    companions["star_reduced_chi2"] = np.full(len(companions), np.nan)
    companions["star_reduced_chi2"][idx] = scale
    return stars, companions, real


def _chi2(table: Table) -> np.ndarray:
    """Chi-square of each fit (reduced chi-square x degrees of freedom)."""
    n = np.asarray(table["n_pixels_fit"], dtype=float)
    return np.asarray(table["reduced_chi2"], dtype=float) * np.maximum(n - 7.0, 1.0)
