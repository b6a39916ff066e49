"""Every star in the frame: background, candidates, one batched fit, rejection with reasons.

The data flow: background/noise -> candidates -> stamps -> batched
fit (:func:`psfkit.fit_stars`, the one engine) -> acceptance tests.  Every
candidate that is not accepted says why (``reject_reason``), and the summary in
``table.meta["summary"]`` counts candidates per reason (see docs/rejection.md).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
from astropy.table import Table, vstack

from psfkit import flags as F
from psfkit.backend import job
from psfkit.detect._kernels import gaussian_smooth, warm_up_kernels
from psfkit.detect.background import Background, estimate_background, noise_at, noise_cells
from psfkit.detect.scaling import restore_units, scaled_image, working_scale
from psfkit.errors import PsfkitError
from psfkit.io.image import Image, as_image
from psfkit.psf.columns import empty_star_table
from psfkit.psf.fit import fit_stars
from psfkit.psf.models import FWHM_PER_SIGMA
from psfkit.psf.stamps import fitting_box
from psfkit.utils import check_positive, pairs_within, subpixel_peak, thin_brighter_first, weighted_median

__all__ = ["Background", "estimate_background", "find_candidates", "find_stars", "frame_fwhm", "RejectionCriteria"]


def _local_maxima(smooth: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pixels (ys, xs) greater than each of their 8 neighbours inside the frame.

    A plateau is a peak: a tie with a neighbour that comes later in raster order (the row below,
    the pixel to the right) still counts, so a flat top (a saturated core wider than the smoothing
    kernel) gives exactly one candidate, its first pixel, instead of none.
    """
    ny, nx = smooth.shape
    values = smooth[ys, xs]
    ok = np.ones(len(ys), dtype=bool)
    for dy in (-1, 0, 1):
        yy = ys + dy
        inside_y = (yy >= 0) & (yy < ny)
        yy = np.clip(yy, 0, ny - 1)
        for dx in (-1, 0, 1):
            if dy == 0 and dx == 0:
                continue
            xx = xs + dx
            inside = inside_y & (xx >= 0) & (xx < nx)
            other = smooth[yy, np.clip(xx, 0, nx - 1)]
            later = dy > 0 or (dy == 0 and dx > 0)
            ok &= ~inside | ((values >= other) if later else (values > other))
    return ys[ok], xs[ok]


def _sharp_pixels(arr: np.ndarray, noise: float, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Single-pixel outliers (hot pixels, cosmic-ray hits): above ``threshold`` noise, more than
    ``threshold`` noise above each of their 8 neighbours and over 3x the brightest of them.

    Returns their rows, columns and the median of their 8 neighbours.  Even a star of
    FWHM 1.4 px (pixel-integrated) has a brightest neighbour above a third of its peak.
    """
    ny, nx = arr.shape
    ys, xs = np.nonzero(arr > threshold * noise)
    if len(ys) == 0:
        return ys, xs, np.zeros(0, dtype=arr.dtype)
    neigh = np.empty((8, len(ys)), dtype=arr.dtype)
    k = 0
    for dy in (-1, 0, 1):
        yy = np.clip(ys + dy, 0, ny - 1)
        for dx in (-1, 0, 1):
            if dy == 0 and dx == 0:
                continue
            neigh[k] = arr[yy, np.clip(xs + dx, 0, nx - 1)]
            k += 1
    v = arr[ys, xs]
    top = neigh.max(axis=0)
    sharp = (v - top > threshold * noise) & (top < v / 3.0)
    return ys[sharp], xs[sharp], np.median(neigh[:, sharp], axis=0)


def find_candidates(
    data: np.ndarray,
    background: Background,
    *,
    threshold: float = 5.0,
    smoothing: float = 1.0,
    min_separation: float = 3.0,
    exclude_border: int = 0,
) -> Table:
    """Local maxima of the smoothed, background-subtracted frame above ``threshold`` sigma.

    A candidate is a pixel greater than its 8 neighbours in the smoothed frame
    (Mighell's peak test, Siril's detector) whose smoothed value exceeds
    ``threshold`` times the noise of the smoothed frame.  Of two candidates
    closer than ``min_separation`` px, the fainter is dropped.

    Returns
    -------
    Table with ``x``, ``y`` (0-based), ``peak`` (smoothed, above background), ``significance``
    and ``sharp`` (a single-pixel outlier: hot pixel or cosmic-ray hit, found before smoothing),
    brightest first.

    Examples
    --------
    >>> from psfkit.datasets.simulate import simulate_field
    >>> from psfkit.detect.background import estimate_background
    >>> data, truth = simulate_field((128, 128), 10, fwhm=3.0, seed=1, edge=12, min_separation=15)
    >>> candidates = find_candidates(data, estimate_background(data))
    >>> len(candidates) >= len(truth), candidates.colnames[:3]
    (True, ['x', 'y', 'peak'])
    """
    arr = np.subtract(data, background.level, dtype=np.float32)
    finite = np.isfinite(arr)
    all_finite = bool(finite.all())
    if all_finite:
        finite = None
    else:
        arr[~finite] = 0.0
    # single-pixel outliers are taken out of the smoothed frame (a hot pixel's smoothed wing
    # would hide a star beside it) and become candidates of their own, fitted and rejected
    # with a reason (too_narrow); multi-pixel cosmic-ray tracks go through the smoothing
    sharp_y, sharp_x, sharp_fill = _sharp_pixels(arr, background.noise, threshold)
    sharp_values = arr[sharp_y, sharp_x]
    arr[sharp_y, sharp_x] = sharp_fill
    smooth = gaussian_smooth(arr, smoothing, truncate=3.0, out=arr)
    # noise of the smoothed frame per mesh cell (a galaxy or nebula raises it where it is,
    # not over the whole frame); the frame's figure is the median of the cells
    # (evaluated at the pixels above the lowest cell's level only: no frame-sized map)
    cells, cy, cx = noise_cells(smooth, mesh=background.mesh)
    sig_s = float(np.median(cells))
    if not sig_s > 0:
        sig_s = background.noise / (2 * math.sqrt(math.pi) * smoothing)
        cells = np.full(cells.shape, sig_s, dtype=np.float32)
    floor = 0.2 * float(np.min(cells))

    def local(yy, xx):
        return noise_at(cells, cy, cx, yy, xx)

    # Mighell's peak test (greater than its 8 neighbours), made only where the smoothed
    # frame is above the threshold: a few pixels per star instead of a full-frame filter
    ys, xs = np.nonzero(smooth > threshold * max(floor, float(np.min(cells))))
    above = smooth[ys, xs] > threshold * local(ys, xs)
    ys, xs = ys[above], xs[above]
    if finite is not None:
        keep = finite[ys, xs]
        ys, xs = ys[keep], xs[keep]
    if exclude_border:
        b = exclude_border
        ny, nx = smooth.shape
        keep = (ys >= b) & (ys < ny - b) & (xs >= b) & (xs < nx - b)
        ys, xs = ys[keep], xs[keep]
    ys, xs = _local_maxima(smooth, ys, xs)
    values = smooth[ys, xs]
    order = np.argsort(-values, kind="stable")
    ys, xs, values = ys[order], xs[order], values[order]
    if min_separation and len(xs) > 1:
        keep = thin_brighter_first(xs, ys, min_separation)
        xs, ys, values = xs[keep], ys[keep], values[keep]
    x, y = subpixel_peak(smooth, ys, xs, edge="nearest")
    peak = values.astype(float)
    noise_here = local(ys, xs)
    sharp = _cosmic_like(data, background, xs, ys)
    if len(sharp_y):
        # a sharp pixel that is also a smoothed candidate (an undersampled star's core) is one
        new = np.ones(len(sharp_y), dtype=bool)
        if len(x):
            new[pairs_within(sharp_x, sharp_y, 1.0, other=(x, y))[0]] = False
        # on the smoothed scale: the kernel's central weight times the pixel's excess
        w0 = 1.0 / (2.0 * math.pi * smoothing**2)
        x = np.concatenate([x, sharp_x[new].astype(float)])
        y = np.concatenate([y, sharp_y[new].astype(float)])
        peak = np.concatenate([peak, w0 * (sharp_values[new] - sharp_fill[new]).astype(float)])
        sharp = np.concatenate([sharp, np.ones(int(new.sum()), dtype=bool)])
        noise_here = np.concatenate([noise_here, local(sharp_y[new], sharp_x[new])])
        order = np.argsort(-peak, kind="stable")
        x, y, peak, sharp, noise_here = x[order], y[order], peak[order], sharp[order], noise_here[order]
    return Table(
        {"x": x, "y": y, "peak": peak, "significance": peak / noise_here, "sharp": sharp, "noise": noise_here},
        meta={"noise_smoothed": sig_s, "n_sharp": int(sharp.sum())},
    )


def _cosmic_like(data: np.ndarray, background: Background, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Candidates sharper than any PSF: a cosmic-ray hit or a hot pixel of a few pixels.

    The brightest pixel within 1 px of the candidate, ``p`` above the background, is compared
    with the median of its 3 x 3 neighbourhood, ``m`` (L.A.Cosmic's idea: a 3 x 3 median erases
    a track up to 4 pixels and keeps a star's core).  Even an undersampled star of FWHM 1 px
    (pixel-integrated) keeps m > 0.15 p; a hit has m near 0.  The test is made where ``p`` is at
    least 10 noise, so that the noise cannot make a faint star's core look sharp: a sharp
    candidate has m < 0.1 p.
    """
    ny, nx = data.shape
    n = len(xs)
    if n == 0:
        return np.zeros(0, dtype=bool)
    off = np.arange(-1, 2)
    # the brightest pixel of the 3 x 3 around each candidate
    yy, xx = np.broadcast_arrays(np.clip(ys[:, None, None] + off[None, :, None], 0, ny - 1),
                                 np.clip(xs[:, None, None] + off[None, None, :], 0, nx - 1))
    vals = (np.asarray(data[yy, xx], dtype=float) - background.level[yy, xx]).reshape(n, 9)
    vals = np.nan_to_num(vals, nan=-np.inf)
    k = np.argmax(vals, axis=1)
    py, px = yy.reshape(n, 9)[np.arange(n), k], xx.reshape(n, 9)[np.arange(n), k]
    p = vals[np.arange(n), k]
    yy = np.clip(py[:, None, None] + off[None, :, None], 0, ny - 1)
    xx = np.clip(px[:, None, None] + off[None, None, :], 0, nx - 1)
    around = np.asarray(data[yy, xx], dtype=float) - background.level[yy, xx]
    m = np.median(np.nan_to_num(around, nan=0.0).reshape(n, 9), axis=1)
    return (p >= 10.0 * background.noise) & (m < 0.1 * p)


@dataclass(frozen=True)
class RejectionCriteria:
    """Acceptance tests for fitted candidates; set any to None to turn it off.

    Attributes
    ----------
    min_fwhm_ratio : float
        FWHM (geometric mean) below this multiple of the frame's stellar FWHM is a hot pixel
        or cosmic-ray hit: no star of the frame is that much sharper than its PSF. Default 0.5.
    min_fwhm : float
        An absolute floor (px) under ``min_fwhm_ratio``: below 0.8 px (pixel-integrated model)
        even an undersampled star tracker's stars are not found, hot pixels and noise spikes
        are. Default 0.8 px.
    max_fwhm_ratio : float
        FWHM above this multiple of the frame's stellar FWHM is an extended source (galaxy,
        nebula knot, blend). Default 2.5.
    extended_spread : float
        FWHM above the frame's by more than this many times the relative scatter of its stars'
        FWHM (at least 20 %), and by more than twice its own error, is extended too: a knot of
        a spiral arm is a little wider than the stars of a CCD frame (whose FWHM scatter by a
        few %), while a photographic plate's stars scatter by 20 % and more. Default 5.
    min_roundness : float
        Roundness below this is rejected (Siril: 0.5). Default 0.3.
    min_snr : float
        Flux / flux_err below this. Default 3.
    max_center_shift : float
        Fitted centre farther than this (px) from the candidate peak. Default: 1.5 FWHM (None -> off).
    edge : int
        Candidates closer than this to the frame edge. Default 2 px.
    max_rmse_ratio : float
        Siril's test RMSE / A; above this the fit is poor. Default 0.5.

    Examples
    --------
    >>> criteria = RejectionCriteria()
    >>> criteria.min_roundness, criteria.max_fwhm_ratio
    (0.3, 2.5)

    Each criterion is also a keyword of :func:`find_stars` (``min_roundness=0.5`` is Siril's default).
    """

    min_fwhm_ratio: float | None = 0.5
    min_fwhm: float | None = 0.8
    max_fwhm_ratio: float | None = 2.5
    extended_spread: float | None = 5.0
    min_roundness: float | None = 0.3
    min_snr: float | None = 3.0
    max_center_shift: float | None = 1.5
    edge: int | None = 2
    max_rmse_ratio: float | None = 0.5


REASONS = {
    "fit_failed": "the fit failed or did not converge",
    "too_narrow": "FWHM below min_fwhm_ratio x the frame's FWHM: a hot pixel or cosmic-ray hit",
    "extended": "FWHM far above the frame's stellar FWHM: a galaxy, nebula knot or blend",
    "not_round": "roundness below min_roundness",
    "low_snr": "SNR (flux / flux_err) below min_snr",
    "center_moved": "the fitted centre moved off the candidate peak",
    "edge": "too close to the frame edge",
    "poor_fit": "RMSE / amplitude above max_rmse_ratio (a poor fit)",
    "duplicate": "the fit converged on a star already in the list",
    "misfit": "a bump beside a brighter star that its model's misfit explains (deblend pass)",
    "beyond_max_stars": "a star, but fainter than the N brightest asked for (max_stars)",
}


def _neighbour_masker(xs: np.ndarray, ys: np.ndarray, peaks: np.ndarray, radius: float):
    """Per-stamp masks: pixels within ``radius`` of a brighter (higher peak) other candidate."""

    def masker(origin: np.ndarray, box: int, idx: np.ndarray) -> np.ndarray:
        out = np.zeros((len(idx), box, box), dtype=bool)
        reach = box / math.sqrt(2) + radius
        yy, xx = np.mgrid[0:box, 0:box]
        rows, js = pairs_within(xs[idx], ys[idx], reach, other=(xs, ys))
        for k, j in zip(rows.tolist(), js.tolist()):
            i = int(idx[k])
            if j == i or peaks[j] < 0.2 * peaks[i]:
                continue
            # mask the neighbour's core and wings, not this star's own pixels
            d_own = math.hypot(xs[j] - xs[i], ys[j] - ys[i])
            r = min(radius * (1.0 + math.log10(max(peaks[j] / max(peaks[i], 1e-30), 1.0)) * 0.5), 0.7 * d_own)
            if r <= 0.5:
                continue
            out[k] |= (xx + origin[k, 0] - xs[j]) ** 2 + (yy + origin[k, 1] - ys[j]) ** 2 <= r * r
        return out

    return masker


def find_stars(
    image: Image | np.ndarray | str,
    *,
    threshold: float = 5.0,
    fwhm: float | None = None,
    box: int | None = None,
    model: str = "gaussian",
    beta: float | None = None,
    angle: bool | str = "auto",
    keep_rejected: bool = False,
    min_separation: float | None = None,
    gain: float | None = None,
    read_noise: float | None = None,
    mask: np.ndarray | None = None,
    progress: bool = False,
    max_candidates: int | None = 200000,
    mask_neighbours: bool = True,
    saturation: float | None | str = "auto",
    deblend: bool = False,
    psf: Any = None,
    max_stars: int | None = None,
    **criteria: Any,
) -> Table:
    """Find, fit and measure every star of a frame.

    Parameters
    ----------
    image : Image, 2-D array or path
    threshold : float
        Detection threshold in units of the smoothed frame's noise.
    fwhm : float, optional
        A first guess of the stars' FWHM (px): it sets the detection filter and the first fitting
        box of the probe that measures the frame's FWHM (the median over bright unsaturated
        candidates, ``meta["frame_fwhm"]``), and is the frame's FWHM only when too few stars
        measure it.  Default: the probe starts from 3 px.
    box : int, optional
        Fitting box; default about 4 FWHM (at least 9 px).
    model : {"gaussian", "moffat", "auto", "frame"}
        The profile every star is fitted with.  ``"gaussian"`` (the default here: Siril's Dynamic PSF
        shapes, and fast; :func:`psfkit.run_sequence`, the inspector and focus runs rely on it) or
        ``"moffat"``.  ``"auto"`` (``psfkit find``'s default) chooses: the frame's own PSF
        (:func:`psfkit.psf.empirical.build_frame_psf`, built from this frame's stars; positions and
        total fluxes from it, :func:`psfkit.psf.empirical.measure_with_frame_psf`) where the frame has
        at least :data:`~psfkit.psf.empirical.MIN_STARS` usable stars, else the analytic model its
        bright stars prefer by BIC (:func:`psfkit.psf.choice.prefer_analytic_model`).
        ``meta["psf_model"]`` says which (``"frame"``, ``"gaussian"`` or ``"moffat"``) and
        ``meta["psf_choice"]`` why.  ``"frame"`` is the frame's PSF with no fallback (a
        :class:`~psfkit.errors.PsfkitError` when too few stars).  With the frame's PSF the
        detection and rejection are the Gaussian pass's, each star's shape is read on the PSF
        fitted to it (the Gaussian pass's kept as ``fwhm_analytic`` ...); a multi-plane (colour)
        frame measured plane by plane gets each plane's own PSF (the PSF differs with colour).
        See docs/psf.md, "How find chooses".
    beta : float or "free", optional
        Moffat beta.  Default: the frame's beta, the median over a probe of bright
        unsaturated candidates fitted with beta free, then fixed for every star
        (``meta["frame_beta"]``; faint stars do not constrain beta, and a free beta makes
        their flux as uncertain as beta itself).  A number fixes it; "free" fits it per star.
    angle : {"auto", True, False}
        "auto" (default, Siril's two-stage rule): every star is fitted without the angle, then
        again with it where the first fit says the star is elliptic (see docs/fitting.md); the
        roundness of elongated stars is then unbiased whatever their angle.  True fits the angle
        for every star, False for none (Siril 1.0's automatic detection: faster, but the
        roundness of stars elongated at 45 degrees reads about 0.03 too high).
    keep_rejected : bool
        Also return the rejected candidates (after the stars), with ``accepted`` and ``reject_reason``.
    min_separation : float, optional
        Candidates closer than this keep only the brighter; default 0.8 FWHM (at least 2 px).
    gain, read_noise : float, optional
        e-/ADU and e-; default from the header.
    mask : ndarray of bool, optional
        Pixels to ignore.
    progress : bool
        Show a progress bar (rich) while fitting.
    max_candidates : int, optional
        Keep only the brightest candidates beyond this number.
    mask_neighbours : bool
        Leave the pixels of brighter neighbours out of each star's fit (crowded fields).
    saturation : float, None or "auto"
        Pixels at or above this level are left out of the fits (stars flagged
        ``saturated``); "auto" takes the image's level (header or data type).
    deblend : bool
        The crowded-field pass (:mod:`psfkit.detect.deblend`, off by default: it costs about as much
        again as the first pass on a crowded frame): stars with a neighbour in their box are
        fitted again with the neighbours' models subtracted, and companions hidden in a
        brighter star's light (within 0.8-3 FWHM, no peak of their own in the smoothed frame)
        are found on the residual frame and fitted; they have ``detection_pass`` 2.
    psf : "frame", FramePSF or path, optional
        With ``deblend``: the crowded-field pass with the frame's own PSF
        (:mod:`psfkit.detect.crowded`, DAOPHOT's way): every star fitted with it and its neighbours
        subtracted, stars looked for on the residual until it holds none.  ``"frame"`` builds the
        PSF from the first pass's stars (:func:`psfkit.psf.empirical.build_frame_psf`; with too few
        stars the analytic pass runs instead, ``meta["crowded"]["fallback"]`` says why); a
        :class:`~psfkit.psf.empirical.FramePSF` or a file of ``psfkit psf`` is used as it is.  The
        PSF used is ``meta["frame_psf"]`` (:func:`psfkit.detect.crowded.subtract_stars` draws the
        residual frame with it).  Without ``deblend`` it is ignored.
    max_stars : int, optional
        List only the N brightest accepted stars (by fitted flux); the others are counted in
        ``meta["summary"]["beyond_max_stars"]`` (and listed after them with ``keep_rejected``,
        reason ``beyond_max_stars``).
    **criteria
        Fields of :class:`RejectionCriteria` (``min_fwhm_ratio``, ``min_fwhm``, ``max_fwhm_ratio``,
        ``min_roundness``, ``min_snr``, ``max_center_shift``, ``edge``,
        ``max_rmse_ratio``); None turns a test off.

    Returns
    -------
    astropy.table.Table
        Accepted stars, brightest first (then the rejected ones when asked),
        with the columns of :func:`psfkit.fit_stars`; ``meta["summary"]`` counts
        candidates per rejection reason: ``n_stars + beyond_max_stars + sum(rejected.values())
        == n_candidates + companion_candidates`` (see docs/rejection.md).

    Examples
    --------
    >>> from psfkit.datasets.simulate import simulate_field
    >>> frame, truth = simulate_field((256, 256), 20, seed=1, flux_range=(5e3, 5e4), edge=10)
    >>> stars = find_stars(frame, gain=1.5, read_noise=6.0, max_stars=10)
    >>> len(stars)
    10

    Ten simulated stars of FWHM 3 px, all found, with their FWHM:

    >>> import numpy as np
    >>> import psfkit
    >>> from psfkit.datasets.simulate import simulate_field
    >>> data, truth = simulate_field((128, 128), 10, fwhm=3.0, gain=1.5, read_noise=6.0, seed=1, edge=12,
    ...                              min_separation=15)
    >>> stars = psfkit.find_stars(data, gain=1.5, read_noise=6.0)
    >>> len(stars), round(float(np.median(stars["fwhm"])), 1)
    (10, 3.0)

    On a real frame (the bundled sample image):

    >>> stars = psfkit.find_stars(psfkit.sample_image_path())
    >>> len(stars) > 50
    True
    """
    img = as_image(image)
    names = {f.name for f in fields(RejectionCriteria)}
    unknown = set(criteria) - names
    if unknown:
        raise PsfkitError(f"unknown option(s) {sorted(unknown)}; rejection criteria are {sorted(names)}")
    crit = replace(RejectionCriteria(), **criteria)
    for f in fields(RejectionCriteria):
        value = getattr(crit, f.name)
        if value is not None and not (np.isfinite(value) and value >= 0):
            raise PsfkitError(f"{f.name} must be a number >= 0 (or None to turn it off), got {value}")
    if crit.min_roundness is not None and crit.min_roundness > 1:
        raise PsfkitError(f"min_roundness is a roundness in [0, 1] (fwhm_y / fwhm_x), got {crit.min_roundness}")
    if not (threshold > 0):
        raise PsfkitError(f"threshold must be positive, got {threshold}")
    if fwhm is not None and not (np.isfinite(fwhm) and 0 < fwhm <= 100):
        raise PsfkitError(f"the FWHM guess must be a number of pixels in (0, 100], got {fwhm}")
    if max_stars is not None and not (int(max_stars) == max_stars and max_stars >= 1):
        raise PsfkitError(f"max_stars must be a whole number >= 1, got {max_stars}")
    if angle not in ("auto", True, False):
        raise PsfkitError(f"angle must be 'auto', True or False, not {angle!r}")
    check_positive(gain, "the gain (e-/ADU)", allow_none=True)
    if read_noise is not None and not (np.isfinite(read_noise) and read_noise >= 0):
        raise PsfkitError(f"the read noise must be a number of e- >= 0, got {read_noise}")
    model_name = str(model).lower() if isinstance(model, str) else model
    if model_name in ("auto", "frame"):
        return _find_with_frame_psf(
            img, model_name, keep_rejected=keep_rejected, deblend=deblend, psf=psf, gain=gain, read_noise=read_noise,
            options=dict(threshold=threshold, fwhm=fwhm, box=box, beta=beta, angle=angle,
                         min_separation=min_separation, mask=mask, progress=progress, max_candidates=max_candidates,
                         mask_neighbours=mask_neighbours, saturation=saturation, max_stars=max_stars, **criteria))
    scale = working_scale(img.data)
    if scale != 1.0:  # values that over- or underflow float32: measured scaled by a power of two (detect.scaling)
        sat = saturation / scale if isinstance(saturation, (int, float)) and not isinstance(saturation, bool) \
            else saturation
        return restore_units(find_stars(
            scaled_image(img, scale), threshold=threshold, fwhm=fwhm, box=box, model=model, beta=beta, angle=angle,
            keep_rejected=keep_rejected, min_separation=min_separation, gain=None if gain is None else gain * scale,
            read_noise=read_noise, mask=mask, progress=progress, max_candidates=max_candidates,
            mask_neighbours=mask_neighbours, saturation=sat, deblend=deblend, psf=psf, **criteria), scale)
    data = img.data
    # numba's start-up (~0.6 s) is not paid for a small frame with few stars (psfkit.backend.job)
    warm_up_kernels(pixels=data.size)  # a large frame: numba loads in a thread while the background is measured
    with contextlib.ExitStack() as engine:
        engine.enter_context(job(pixels=data.size))
        if mask is not None and np.shape(mask) != data.shape:
            raise PsfkitError(f"the mask has shape {np.shape(mask)}, the image {data.shape}")
        bkg = estimate_background(data, mask=mask)
        ceiling = img.saturation if isinstance(saturation, str) else saturation

        def candidates(sigma: float) -> tuple[Table, int]:
            """The candidates at this smoothing (the brightest max_candidates), and how many were found."""
            found = find_candidates(data, bkg, threshold=threshold, smoothing=sigma,
                                    min_separation=min_separation if min_separation else 2.0)
            return (found[:max_candidates] if max_candidates is not None else found), len(found)

        smoothing = 1.0 if fwhm is None else max(0.7, fwhm / FWHM_PER_SIGMA)
        cands, n_cand_all = candidates(smoothing)
        settings = dict(threshold=threshold, model=model, beta=beta, angle=angle, box=box, fwhm=fwhm,
                        min_separation=min_separation, mask_neighbours=mask_neighbours, deblend=deblend,
                        max_stars=max_stars, **({"psf": _psf_name(psf)} if deblend and psf is not None else {}),
                        **{f.name: getattr(crit, f.name) for f in fields(RejectionCriteria)})
        if len(cands) == 0:
            # the columns a frame with stars would have (one schema: psfkit.psf.columns)
            table = empty_star_table(arcsec=img.pixel_scale is not None, radec=img.wcs is not None, find=True,
                                     rejection=keep_rejected)
            table.meta.update(settings=settings, summary={"n_peaks": 0, "n_candidates": 0, "n_stars": 0, "rejected": {},
                                                          "candidates_fitted": 0, "companion_candidates": 0,
                                                          "companions_found": 0, "beyond_max_stars": 0},
                              background=bkg.median, noise=bkg.noise, reject_reasons=REASONS,
                              pixel_scale=img.pixel_scale, image=img.path, image_shape=list(img.shape),
                              roworder=img.meta.get("roworder", "BOTTOM-UP"))
            return table
        # the frame's FWHM from the brightest candidates (unsaturated, isolated)
        flat, *_ = _flat_tops(data, bkg, np.asarray(cands["x"], float), np.asarray(cands["y"], float), box=31,
                              ceiling=ceiling)
        fwhm_est, fwhm_spread = _probe_fwhm(img, cands, guess=fwhm, exclude=flat, gain=gain, read_noise=read_noise,
                                            mask=mask, saturation=saturation)
        if fwhm is None and fwhm_est > 4.0:
            # wide stars: detect again with the filter matched to them (sigma FWHM / 2.355); the
            # 1 px filter also picks the grain of the sky and the structure of bloated disks, which
            # would all be fitted (the 1910 M44 plate: 2,594 candidates -> ~700)
            smoothing = fwhm_est / FWHM_PER_SIGMA
            cands, n_cand_all = candidates(smoothing)
        elif fwhm is not None and abs(max(0.7, fwhm_est / FWHM_PER_SIGMA) / smoothing - 1.0) > 0.25:
            # the guess was off: detect again with the filter matched to the measured FWHM
            smoothing = max(0.7, fwhm_est / FWHM_PER_SIGMA)
            cands, n_cand_all = candidates(smoothing)
        if min_separation is None:
            sep = max(2.0, 0.8 * fwhm_est)
            if sep > 2.0:
                cands = _thin(cands, sep)
        if box is None:
            box = fitting_box(fwhm_est, per_fwhm=4.0, minimum=9, maximum=101)
        xs = np.asarray(cands["x"], dtype=float)
        ys = np.asarray(cands["y"], dtype=float)
        peaks = np.asarray(cands["peak"], dtype=float)
        # flat tops (saturated cores, bloated photographic disks): their plateau is left out of
        # the fit (the wings are fitted) and they are flagged saturated
        flat, flat_cut, flat_r, xs, ys = _flat_tops(data, bkg, xs, ys, box=max(box, 61), ceiling=ceiling,
                                                    fwhm=fwhm_est)
        if flat.any():
            # a plateau wider than the smoothing kernel has several maxima (its noise, a spike's
            # root): one star, the candidate with the widest plateau
            keep = _plateau_thin(xs, ys, flat, flat_r, 0.5 * fwhm_est)
            cands = cands[keep]
            xs, ys, peaks, flat, flat_cut, flat_r = (a[keep] for a in (xs, ys, peaks, flat, flat_cut, flat_r))
        masker = _neighbour_masker(xs, ys, peaks, 1.2 * fwhm_est) if mask_neighbours else None
        if flat.any():
            masker = _plateau_masker(data, xs, ys, flat, flat_cut, flat_r, masker)
        frame_beta = None
        if str(model).lower() == "moffat" and beta is None:
            # faint stars do not constrain beta, and a free beta makes their total flux (and SNR)
            # as uncertain as beta itself: the frame's beta from its bright stars, fixed for all
            frame_beta = _probe_beta(img, cands, box=box, exclude=flat, gain=gain, read_noise=read_noise, mask=mask,
                                     saturation=saturation)
        fit_beta = frame_beta if frame_beta is not None else (None if beta == "free" else beta)
        fit_kwargs = dict(box=box, model=model, beta=fit_beta, angle=angle, search_radius=None, gain=gain,
                          read_noise=read_noise, mask=mask, saturation=saturation)
        engine.enter_context(job(pixels=data.size, stars=len(xs)))
        table = _fit_in_chunks(img, xs, ys, masker, fit_kwargs, progress)
        if flat.any():
            # flat tops are fitted again in a box that holds their wings around the plateau
            sel = np.flatnonzero(flat)
            big = int(math.ceil(2.0 * float(np.max(flat_r[sel])) + 4.0 * fwhm_est))
            big = min(max(big, box), 151)
            big += 1 - big % 2
            if big > box:
                sub = (lambda origin, b, idx: masker(origin, b, sel[idx])) if masker is not None else None
                refit = _fit_in_chunks(img, xs[sel], ys[sel], sub, {**fit_kwargs, "box": big}, False)
                table[sel] = refit[table.colnames]
            table["flags"][flat] = np.asarray(table["flags"])[flat] | F.SATURATED
        table["peak_significance"] = np.asarray(cands["significance"], dtype=float)
        table["detection_pass"] = np.ones(len(table), dtype=np.int64)
        reasons = _reject(table, crit, img.shape, fwhm_est, fwhm_spread)
        if deblend and (reasons == "").any():
            # a blend of two stars is as wide as a knot: those rejected only by the scatter test of
            # the extent go through the crowded-field pass too (split, they pass; a knot does not)
            fw = np.asarray(table["fwhm"], dtype=float)
            soft = (reasons == "extended") & (fw <= (crit.max_fwhm_ratio or np.inf) * fwhm_est)
            table, reasons = _deblend(img, bkg, table, reasons, fwhm_est=fwhm_est, smoothing=smoothing,
                                                    threshold=threshold, noise=float(cands.meta["noise_smoothed"]),
                                                    fit_kwargs=fit_kwargs, crit=crit, mask_neighbours=mask_neighbours,
                                                    fwhm_spread=fwhm_spread, soft=soft, psf=psf)
        # duplicates: two candidates converging on one star
        order = np.argsort(-np.nan_to_num(table["flux_fit"], nan=-np.inf), kind="stable")
        accepted = reasons == ""
        if accepted.sum() > 1:
            acc_idx = order[accepted[order]]
            keep = thin_brighter_first(table["x_fit"][acc_idx], table["y_fit"][acc_idx], 0.5 * fwhm_est)
            reasons[acc_idx[~keep]] = "duplicate"
        table["accepted"] = reasons == ""
        table["reject_reason"] = reasons.astype(str)
        counts: dict[str, int] = {}
        for r in reasons:
            if r:
                counts[r] = counts.get(r, 0) + 1
        stars = table[table["accepted"]]
        stars = stars[np.argsort(-np.nan_to_num(stars["flux_fit"], nan=-np.inf), kind="stable")]
        n_beyond = 0
        if max_stars is not None and len(stars) > max_stars:
            n_beyond = len(stars) - int(max_stars)
            beyond = stars[int(max_stars):]
            beyond["accepted"] = np.zeros(len(beyond), dtype=bool)
            beyond["reject_reason"] = np.full(len(beyond), "beyond_max_stars")
            stars = stars[: int(max_stars)]
            table = vstack([stars, beyond, table[~table["accepted"]]], metadata_conflicts="silent")
        if keep_rejected:
            rej = table[~table["accepted"]]
            out = vstack([stars, rej], metadata_conflicts="silent") if len(rej) else stars
        else:
            out = stars
            out.remove_columns(["accepted", "reject_reason"])
        out["id"] = np.arange(1, len(out) + 1)
        _add_hfr(out, data, bkg, fwhm_est, img.pixel_scale)
        out.meta = dict(table.meta)
        n_companion_candidates = int(np.sum(np.asarray(table["detection_pass"]) == 2))
        out.meta.update(
            settings=settings,
            # every fitted candidate is a star or has one reason: n_stars + beyond_max_stars + sum(rejected) ==
            # n_candidates + companion_candidates; n_peaks also counts the peaks merged into a brighter
            # one closer than min_separation and those beyond max_candidates (never fitted)
            summary={"n_peaks": int(n_cand_all), "n_candidates": int(len(table)) - n_companion_candidates,
                     "n_stars": int(len(stars)), "rejected": counts,
                     "candidates_fitted": int(len(table)), "companion_candidates": n_companion_candidates,
                     "companions_found": int(np.sum(np.asarray(stars["detection_pass"]) == 2)),
                     "beyond_max_stars": n_beyond},
            frame_fwhm=fwhm_est,
            frame_beta=frame_beta,
            detection_smoothing=smoothing,
            image_shape=list(img.shape),
            roworder=img.meta.get("roworder", "BOTTOM-UP"),
            background=bkg.median,
            noise=bkg.noise,
            reject_reasons=REASONS,
        )
        return out


#: ``model="auto"`` measures with the frame's own PSF only where the stars' median FWHM (px of the
#: measured plane) is at least this; below it the analytic model the bright stars prefer.
MIN_FRAME_PSF_FWHM = 1.5


def _find_with_frame_psf(img: Image, mode: str, *, keep_rejected: bool, deblend: bool, psf: Any,
                         gain: float | None, read_noise: float | None, options: dict) -> Table:
    """``find_stars(model="auto" | "frame")``: the Gaussian pass, then the frame's PSF measures its stars;
    with too few stars, "auto" falls back to the analytic model the bright stars prefer by BIC.
    ``meta["psf_model"]`` and ``meta["psf_choice"]`` say which and why.
    """
    from psfkit.psf.empirical import build_frame_psf, measure_with_frame_psf

    common = dict(gain=gain, read_noise=read_noise, **options)
    if deblend:
        # the crowded pass measures with the frame's PSF (and falls back to the analytic pass by itself)
        table = find_stars(img, model="gaussian", keep_rejected=keep_rejected, deblend=True,
                           psf="frame" if psf is None else psf, **common)
        fallback = (table.meta.get("crowded") or {}).get("fallback")
        if fallback is not None and mode == "frame":
            raise PsfkitError(fallback.split(": the analytic")[0])
        _say(table, mode, "gaussian" if fallback else "frame",
             fallback or f"{table.meta.get('photometry_psf', 'the frame PSF')} (crowded pass)")
        return table
    table = find_stars(img, model="gaussian", keep_rejected=True, **common)
    try:
        acc = np.asarray(table["accepted"], bool)
        stellar = float(np.nanmedian(np.asarray(table["fwhm"], float)[acc])) if acc.any() else np.nan
        if mode == "auto" and stellar < MIN_FRAME_PSF_FWHM:
            # an undersampled star (a Bayer plane at half resolution, a wide-field camera) is mostly its
            # pixel: the stacked PSF's pixel removal is then ill-posed (the PANOPTES green planes read
            # 0.4-0.9 x their Gaussian FWHM), while the analytic model's pixel integral is exact
            raise PsfkitError(f"the stars are undersampled (median FWHM {stellar:.2f} px, the frame's PSF "
                              f"needs >= {MIN_FRAME_PSF_FWHM} px)")
        # a small frame stays on the numpy twins (no numba start-up paid: psfkit.backend.job)
        with job(pixels=img.data.size, stars=len(table)):
            frame_psf = build_frame_psf(img, table)
    except PsfkitError as exc:
        if mode == "frame":
            raise
        from psfkit.psf.choice import prefer_analytic_model

        with job(pixels=img.data.size, stars=len(table)):
            choice = prefer_analytic_model(img, table, gain=gain, read_noise=read_noise)
        if choice.model != "gaussian":
            table = find_stars(img, model=choice.model, keep_rejected=True, **common)
        reason = str(exc).rstrip(".")
        _say(table, mode, choice.model, f"{choice.reason}; no frame PSF: {reason}")
        table.meta["psf_choice_bic"] = {"n_stars": choice.n_stars, "delta_bic": choice.delta_bic,
                                        "median_delta_bic": choice.median_delta_bic}
    else:
        first = table
        with job(pixels=img.data.size, stars=len(table)):
            table = measure_with_frame_psf(img, table, frame_psf, gain=gain, read_noise=read_noise)
        table.meta["frame_psf"] = frame_psf
        why = table.meta["photometry_psf"]
        # a fit that ran off its star (more than 1 px from the Gaussian pass's accepted centre: onto a hot
        # pixel or a neighbour that pass masked and the frame PSF's fit does not) keeps that pass's values
        moved = np.asarray(table["accepted"], bool) & ~(np.hypot(
            np.asarray(table["x_fit"], float) - np.asarray(first["x_fit"], float),
            np.asarray(table["y_fit"], float) - np.asarray(first["y_fit"], float)) <= 1.0)
        if moved.any():
            for col in first.colnames:
                if col in table.colnames:
                    table[col][moved] = first[col][moved]
            why += (f"; {int(moved.sum())} star{'s' if moved.sum() != 1 else ''} kept the Gaussian pass's "
                    "values (the PSF fit ran more than 1 px off)")
        table.meta["psf_kept_gaussian"] = int(moved.sum())
        # a star whose shape fit with the PSF gave no number keeps the Gaussian pass's shape (a NaN FWHM
        # would drop it from region files and averages)
        acc = np.asarray(table["accepted"], bool)
        no_shape = acc & ~moved & ~np.isfinite(np.asarray(table["fwhm"], float)) \
            & np.isfinite(np.asarray(first["fwhm"], float))
        if no_shape.any():
            for col in first.colnames:
                if col in table.colnames and col.startswith(("fwhm", "roundness", "angle")):
                    table[col][no_shape] = first[col][no_shape]
            why += (f"; {int(no_shape.sum())} star{'s' if no_shape.sum() != 1 else ''} kept the Gaussian pass's "
                    "shape (the PSF's shape fit gave none)")
        table.meta["psf_shape_kept_gaussian"] = int(no_shape.sum())
        _say(table, mode, "frame", why)
        # the brightest first, by the frame PSF's total fluxes (the rejected candidates after them)
        acc = np.asarray(table["accepted"], bool)
        flux = np.nan_to_num(np.asarray(table["flux_fit"], dtype=float), nan=-np.inf)
        order = np.concatenate([np.flatnonzero(acc)[np.argsort(-flux[acc], kind="stable")], np.flatnonzero(~acc)])
        table = table[order]
        table["id"] = np.arange(1, len(table) + 1)
    if not keep_rejected:
        table = table[np.asarray(table["accepted"], bool)]
        table.remove_columns(["accepted", "reject_reason"])
    return table


def _say(table: Table, mode: str, chosen: str, why: str) -> None:
    """Which PSF measured the stars and why, in the table's metadata (and its settings' model)."""
    table.meta["settings"] = {**table.meta.get("settings", {}), "model": mode}
    table.meta["psf_model"] = chosen
    table.meta["psf_choice"] = why


def _psf_name(psf: Any) -> str:
    """How the settings name the crowded pass's PSF: "frame", the file, or the object's summary."""
    return psf if isinstance(psf, str) else str(getattr(psf, "n_stars", None) and f"FramePSF ({psf.n_stars} stars)"
                                                 or psf)


def _add_hfr(table: Table, data: np.ndarray, bkg: Background, fwhm_est: float, pixel_scale: float | None) -> None:
    """The ``hfr`` column (and ``hfr_arcsec``): each star's half-flux radius inside 2 of its FWHM
    (at least 3 px, at most 2.5 times the stars' median FWHM), on the pixels less the background
    map.  One box for all stars, sized for the largest radius.
    """
    from psfkit.aperture.hfr import hfr_from_stamps
    from psfkit.psf.stamps import cut_stamps

    n = len(table)
    x = np.where(np.isfinite(table["x_fit"]), table["x_fit"], table["x_init"]).astype(float)
    y = np.where(np.isfinite(table["y_fit"]), table["y_fit"], table["y_init"]).astype(float)
    ny, nx = data.shape
    x, y = np.clip(x, 0, nx - 1), np.clip(y, 0, ny - 1)
    fw = np.asarray(table["fwhm"], dtype=float)
    typical = float(np.nanmedian(fw)) if np.isfinite(fw).any() else fwhm_est
    r_max = max(3.0, 2.5 * typical)
    radius = np.clip(2.0 * np.where(np.isfinite(fw), fw, fwhm_est), 3.0, r_max)
    hfr = np.full(n, np.nan)
    if n:
        box = 2 * int(math.ceil(float(radius.max()))) + 3
        stamps, inside, origin, _ = cut_stamps(data, x, y, box)
        sky = bkg.level[np.rint(y).astype(int), np.rint(x).astype(int)]
        hfr, _ = hfr_from_stamps(stamps, inside & np.isfinite(stamps), x - origin[:, 0], y - origin[:, 1], sky, radius)
    table["hfr"] = hfr
    table["hfr"].unit = "pix"
    if pixel_scale:
        table["hfr_arcsec"] = hfr * pixel_scale
        table["hfr_arcsec"].unit = "arcsec"


def _deblend(img, bkg, table, reasons, *, fwhm_est, smoothing, threshold, noise, fit_kwargs, crit, mask_neighbours,
             fwhm_spread=None, soft=None, psf=None):
    """The crowded-field pass of :mod:`psfkit.detect.deblend` (or, with ``psf``, of
    :mod:`psfkit.detect.crowded`) on the accepted stars (and those in ``soft``): their rows
    refitted with neighbours subtracted, companions appended with their own rejection tests.
    Returns (table, reasons).
    """
    from psfkit.detect.deblend import deblend_stars

    acc = np.flatnonzero((reasons == "") | (soft if soft is not None else False))
    fallback = None
    if psf is not None:
        frame_psf, fallback = _crowded_psf(img, table, reasons, psf)
        if frame_psf is not None:
            # blends the first pass fitted as one star are as wide as two stars (up to twice the
            # frame's FWHM): they go in too, and come out as two stars or rejected again
            fw = np.asarray(table["fwhm"], dtype=float)
            blend = (reasons == "extended") & (fw <= BLEND_FWHM_RATIO * fwhm_est)
            acc = np.flatnonzero((reasons == "") | blend | (soft if soft is not None else False))
            return _deblend_frame_psf(img, bkg, table, reasons, acc, frame_psf, fwhm_est=fwhm_est,
                                      smoothing=smoothing, threshold=threshold, fit_kwargs=fit_kwargs, crit=crit,
                                      fwhm_spread=fwhm_spread)
    s2 = (fwhm_est / FWHM_PER_SIGMA) ** 2

    def fit(x, y, neighbours, light):
        masker = None
        if neighbours is not None:
            st, rows, extra = (*neighbours, None)[:3]
            every = None
            if mask_neighbours:
                peaks = np.nan_to_num(np.asarray(st["amplitude"], dtype=float)) * s2 / (s2 + smoothing**2)
                every = _neighbour_masker(np.asarray(st["x_fit"], dtype=float),
                                          np.asarray(st["y_fit"], dtype=float), peaks, 1.2 * fwhm_est)

            def masker(origin, box, idx):
                out = every(origin, box, rows[idx]) if every is not None else np.zeros((len(idx), box, box), bool)
                return out | extra(origin, box) if extra is not None else out
        # one call (no progress chunks): neighbour_light follows the order of these stars
        return _fit_in_chunks(img, x, y, masker, {**fit_kwargs, "neighbour_light": light}, False)

    stars, comp, explains = deblend_stars(img.data, bkg.level, table[acc], fwhm=fwhm_est, smoothing=smoothing,
                                          threshold=threshold, noise=noise, fit=fit)
    if fallback is not None:
        table.meta["crowded"] = {"fallback": fallback}
    table[acc] = stars
    reasons[acc] = _reject(table[acc], crit, img.shape, fwhm_est, fwhm_spread)  # the refitted values: tests again
    if len(comp) == 0:
        return table, reasons
    comp["detection_pass"] = np.full(len(comp), 2, dtype=np.int64)
    comp_reasons = _reject(comp, crit, img.shape, fwhm_est, fwhm_spread)
    comp_reasons[(comp_reasons == "") & ~explains] = "misfit"
    table = vstack([table, comp[table.colnames]], metadata_conflicts="silent")
    return table, np.concatenate([reasons, comp_reasons])


#: with the frame's PSF, candidates rejected as extended up to this many frame FWHM are fitted in the
#: crowded pass (two stars fitted as one)
BLEND_FWHM_RATIO = 2.0


def _crowded_psf(img, table, reasons, psf):
    """The frame's PSF for the crowded pass and, when there is none, why (the analytic pass runs)."""
    from psfkit.psf.empirical import FramePSF, build_frame_psf

    if isinstance(psf, FramePSF):
        return psf, None
    if isinstance(psf, str) and psf == "frame":
        first = table.copy(copy_data=False)
        first["accepted"] = reasons == ""
        try:
            return build_frame_psf(img, first), None
        except PsfkitError as exc:
            return None, f"no frame PSF ({exc}): the analytic model's crowded pass instead"
    return FramePSF.read(psf), None


def _deblend_frame_psf(img, bkg, table, reasons, acc, psf, *, fwhm_est, smoothing, threshold, fit_kwargs, crit,
                       fwhm_spread):
    """The crowded pass of :mod:`psfkit.detect.crowded` on the rows ``acc``: they are measured
    again with the frame's PSF, the stars it finds on the residual appended (``detection_pass``
    2); rejection tests on both.  Returns (table, reasons).
    """
    from psfkit.detect.crowded import crowded_pass

    model = psf.model()
    psf_kwargs = {**fit_kwargs, "model": model, "beta": None, "angle": False}

    def fit_psf(x, y, light):
        return _fit_in_chunks(img, x, y, None, {**psf_kwargs, "neighbour_light": light}, False)

    def fit_shape(x, y, light):
        return _fit_in_chunks(img, x, y, None, {**fit_kwargs, "neighbour_light": light}, False)

    # what is not subtracted and is no star: no star is looked for beside it (the others, a failed
    # fit, a star too near the edge, are looked for again on the residual)
    rej = np.isin(reasons, ("too_narrow", "extended"))
    rej[acc] = False
    rejected_xy = (np.asarray(table["x_init"], float)[rej], np.asarray(table["y_init"], float)[rej])
    ok = np.isfinite(rejected_xy[0]) & np.isfinite(rejected_xy[1])
    refit, found, _, info = crowded_pass(
        img.data, bkg.level, table[acc], psf, fwhm=fwhm_est, smoothing=smoothing, threshold=threshold,
        gain=_gain_of(img, fit_kwargs), fit_psf=fit_psf, fit_shape=fit_shape,
        avoid=(rejected_xy[0][ok], rejected_xy[1][ok]), min_snr=crit.min_snr or 0.0, box=int(fit_kwargs["box"]))
    unchanged = info.pop("unchanged")
    merged = info.pop("merged")
    table["flux_fit_analytic"] = np.asarray(table["flux_fit"], dtype=float)
    rows = acc[~unchanged]
    keep_cols = ("id", "x_init", "y_init", "peak_significance", "detection_pass")
    for name in refit.colnames:
        if name in table.colnames and name not in keep_cols:
            table[name][rows] = refit[name][~unchanged]
    reasons[acc] = _reject(table[acc], crit, img.shape, fwhm_est, fwhm_spread)
    reasons[acc[merged]] = "duplicate"  # its fit converged onto a brighter star's
    meta = {"frame_psf": psf, "crowded": info,
            "photometry_psf": f"the frame's PSF ({psf.n_stars} stars, variation of degree {psf.degree})"}
    if len(found) == 0:
        table.meta.update(meta)
        return table, reasons
    found["detection_pass"] = np.full(len(found), 2, dtype=np.int64)
    found_reasons = _reject(found, crit, img.shape, fwhm_est, fwhm_spread)
    for name in table.colnames:
        if name not in found.colnames:
            found[name] = np.zeros(len(found), dtype=table[name].dtype)
    table = vstack([table, found[table.colnames]], metadata_conflicts="silent")
    table.meta.update(meta)
    return table, np.concatenate([reasons, found_reasons])


def _gain_of(img, fit_kwargs):
    """The gain the fits weigh with (the option, else the image's), or None."""
    gain = fit_kwargs.get("gain")
    return gain if gain is not None else getattr(img, "gain", None)


def _probe_indices(significance: np.ndarray, n: int = 60) -> np.ndarray:
    """Which candidates measure the frame's FWHM: significant ones (>= 20 sigma), without the
    brightest tenth (saturated or bloated disks: on a photographic plate or a frame without
    SATURATE the brightest stars are the widest), evenly spread in brightness.
    """
    order = np.arange(len(significance))  # candidates come brightest first
    pool = order[np.asarray(significance) >= 20.0]
    if len(pool) < 10:
        return order[: min(len(order), 40)]
    pool = pool[len(pool) // 10:]
    if len(pool) > n:
        pool = pool[np.linspace(0, len(pool) - 1, n).round().astype(int)]
    return pool


def _probe_positions(cands: Table, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """x, y of the probe (:func:`_probe_indices`) among the candidates that are neither sharp
    (hot pixels, cosmic-ray hits) nor in ``exclude`` (flat tops: saturated stars, bloated disks).
    """
    keep = np.ones(len(cands), dtype=bool)
    if "sharp" in cands.colnames:
        keep &= ~np.asarray(cands["sharp"], dtype=bool)
    if exclude is not None:
        keep &= ~np.asarray(exclude, dtype=bool)
    pool = np.flatnonzero(keep) if keep.any() else np.arange(len(cands))
    idx = pool[_probe_indices(np.asarray(cands["significance"], dtype=float)[pool])]
    return np.asarray(cands["x"], dtype=float)[idx], np.asarray(cands["y"], dtype=float)[idx]


def frame_fwhm(fwhm: np.ndarray, snr: np.ndarray) -> float:
    """The frame's stellar FWHM from the fitted FWHM of a set of point sources: the mode of
    their distribution, each weighted by its SNR (capped at 100).

    The mode, not the median: the stars of a frame share one FWHM, while what else is in the
    probe (a galaxy's knots, blends, tracks of cosmic rays that escaped the sharpness test)
    spreads over many.  The weighted histogram is taken in log FWHM (bins of 0.05 dex,
    smoothed by a 3-bin window); of its peaks at least 0.3 times the highest and holding at
    least a fifth of the weight, the narrowest is the stars' (on M51 the HII knots outnumber
    the field stars, but are all wider; a few grains or specks do not make a peak).  The
    estimate is the SNR-weighted median of the values within 0.1 dex of that peak.  NaN when
    empty.

    Examples
    --------
    >>> import numpy as np
    >>> f = np.r_[np.full(12, 3.0) + np.linspace(-0.1, 0.1, 12), [9.0, 12.0, 15.0, 20.0, 30.0, 40.0]]
    >>> round(frame_fwhm(f, np.full(f.size, 50.0)), 1)
    3.0
    """
    f = np.asarray(fwhm, dtype=float)
    w = np.clip(np.nan_to_num(np.asarray(snr, dtype=float), nan=0.0), 0.0, 100.0)
    ok = np.isfinite(f) & (f > 0) & (w > 0)
    if not ok.any():
        return float("nan")
    f, w = f[ok], w[ok]
    lf = np.log10(f)
    edges = np.arange(lf.min() - 0.075, lf.max() + 0.1, 0.05)
    hist, _ = np.histogram(lf, bins=edges, weights=w)
    hist = np.convolve(hist, np.ones(3), mode="same")
    # the narrowest strong mode: point sources are the sharpest population left (hits and hot
    # pixels are out), everything else (knots, blends, galaxies) is only wider
    padded = np.r_[-np.inf, hist, -np.inf]
    strong = (hist >= 0.3 * hist.max()) & (hist >= 0.2 * w.sum())
    peaks = np.flatnonzero((hist >= padded[:-2]) & (hist >= padded[2:]) & strong)
    centre = 0.5 * (edges[:-1] + edges[1:])[int(peaks[0]) if len(peaks) else int(np.argmax(hist))]
    near = np.abs(lf - centre) <= 0.1
    return weighted_median(f[near], w[near])


def _fwhm_spread(fwhm: np.ndarray, est: float) -> float:
    """Relative scatter of the stars' FWHM about the frame's (1.4826 MAD of ln(fwhm / est) over
    the values within 0.15 dex of it): a few % on a CCD frame, 20 % on a photographic plate,
    whose brighter stars are wider.
    """
    f = np.asarray(fwhm, dtype=float)
    f = f[np.isfinite(f) & (f > 0)]
    if not (np.isfinite(est) and est > 0) or f.size < 3:
        return 0.1
    r = np.log(f / est)
    r = r[np.abs(r) <= 0.15 * math.log(10)]
    if r.size < 3:
        return 0.1
    return float(1.4826 * np.median(np.abs(r)))


def _probe_fwhm(img: Image, cands: Table, *, guess: float | None = None, exclude: np.ndarray | None = None,
                **fit_kwargs: Any) -> tuple[float, float]:
    """The frame's stellar FWHM (px) and the stars' relative FWHM scatter: :func:`frame_fwhm` over
    a probe of candidates (not sharp, no flat top) fitted without the angle, in a box of 15 px (or
    4 x the guess), again in a box of 4 FWHM when that is larger; fits that are saturated, failed
    or elongated (roundness < 0.5: a cosmic-ray track) are left out; the guess (default 3 px) when
    none measures it.
    """
    px, py = _probe_positions(cands, exclude)
    first = 3.0 if guess is None else float(guess)
    est, box, spread = first, max(15, fitting_box(first, per_fwhm=4.0, minimum=1, maximum=101)), 0.1
    for _ in range(2):
        t0 = fit_stars(img, px, py, box=box, angle=False, search_radius=None, **fit_kwargs)
        ok = (t0["flags"] & (F.SATURATED | F.FIT_FAILED | F.NOT_CONVERGED)) == 0
        ok &= np.isfinite(t0["fwhm"]) & (t0["fwhm"] > 0.5) & (np.asarray(t0["roundness"]) >= 0.5)
        est = frame_fwhm(np.asarray(t0["fwhm"])[ok], np.asarray(t0["snr"])[ok]) if ok.sum() >= 1 else first
        est = first if not np.isfinite(est) else est
        spread = _fwhm_spread(np.asarray(t0["fwhm"])[ok], est)
        wanted = fitting_box(est, per_fwhm=4.0, minimum=1, maximum=101)
        if wanted <= box:
            break
        box = wanted
    return min(max(est, 1.0), 30.0), spread


def _flat_tops(data: np.ndarray, background: Background, x: np.ndarray, y: np.ndarray, *,
               box: int, ceiling: float | None = None, fwhm: float | None = None) -> tuple[np.ndarray, ...]:
    """Candidates whose top is a plateau: a saturated star (above the level the header or data
    type gives, or below it: a photographic plate's bloated disk, a camera whose saturation is
    not written), their top level and the plateau's radius (px).

    A point source's profile is rounded at its peak: the pixels within 3 % of a Gaussian's
    peak cover 3 % of the area above its half maximum (less for a Moffat).  A saturated core is
    flat: the pixels within 3 % (or 3 noise, whichever is more) of the top cover a large part of
    that area.  A flat top has a peak at least 20 noise above the background and at least 5
    such pixels (connected to the peak), covering at least 15 % of the half-maximum area and
    2.5 times what a Gaussian's top would cover at that tolerance (ln(t / (t - tol)) / ln 2 of
    it: at 20 noise, 3 noise is 15 % of the peak, and a Gaussian's top covers 23 %).

    With the frame's saturation level known (``ceiling``: the header's, or the data type's
    largest value), a top within 5 % of it (above the background) over at least 5 connected
    pixels is a flat top too, its plateau the pixels above that 95 % level: the response's
    shoulder is not linear, and a photographic plate's bloated disk is rounded there (the 1910
    M44 plate's brightest stars rise smoothly to 250 of 255).

    With the frame's FWHM known, a plateau below that shoulder whose edge is soft (from the
    plateau to half its level over more than 14 FWHM) is a galaxy's flat core, not a star: it is
    no flat top (and so not exempt from the ``extended`` test).

    A crater (a saturated core read low, its centre pixel 5 % and 5 noise below both pixels of an
    opposite pair of its neighbours) is a flat top too, its core the pixels at or above 90 % of the
    centre's.

    Returns (flat, cut, radius, x, y): the plateau's pixels are those at or above
    ``cut`` (data units), within about ``radius`` px of the peak; (x, y) is the plateau's
    centroid for a flat top (the candidate's position otherwise), where its fit starts.
    """
    from psfkit.psf.stamps import cut_stamps

    n = len(x)
    flat = np.zeros(n, dtype=bool)
    top = np.full(n, np.nan)
    radius = np.zeros(n)
    cx, cy = np.array(x, dtype=float), np.array(y, dtype=float)
    if n == 0:
        return flat, top, radius, cx, cy
    ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
    ny, nx = data.shape
    lvl = background.level[np.clip(iy, 0, ny - 1), np.clip(ix, 0, nx - 1)].astype(float)
    # only bright candidates can have a measurable flat top: look at those
    raw = np.asarray(data[np.clip(iy, 0, ny - 1), np.clip(ix, 0, nx - 1)], dtype=float) - lvl
    look = np.flatnonzero(np.nan_to_num(raw, nan=0.0) >= 30.0 * background.noise)
    for start in range(0, len(look), 512):
        idx = look[start:start + 512]
        st, _, origin, _ = cut_stamps(data, x[idx], y[idx], box)
        st = st - lvl[idx, None, None]
        c = box // 2
        core = np.nan_to_num(st[:, c - 1:c + 2, c - 1:c + 2], nan=-np.inf).reshape(len(idx), -1)
        t = core.max(axis=1)
        tol = np.maximum(0.03 * t, 3.0 * background.noise)
        with np.errstate(invalid="ignore"):
            n_top = np.sum(st >= (t - tol)[:, None, None], axis=(1, 2))
            n_half = np.sum(st >= 0.5 * t[:, None, None], axis=(1, 2))
        # what a Gaussian's top would cover at this tolerance, and the plateau's share needed
        with np.errstate(divide="ignore", invalid="ignore"):
            need = np.maximum(0.15, 2.5 * np.log(t / np.maximum(t - tol, 1e-30)) / math.log(2.0))
        shoulder = np.zeros(len(idx), dtype=bool)
        if ceiling is not None and np.isfinite(ceiling):
            # the shoulder of the detector's (or the plate's) response: a top within 5 % of the
            # ceiling is not linear, whatever its shape (a plate's bloated disk is rounded there)
            shoulder = t >= 0.95 * (ceiling - lvl[idx])
            tol = np.where(shoulder, t - 0.95 * (ceiling - lvl[idx]), tol)
            need = np.where(shoulder, 0.0, need)
            with np.errstate(invalid="ignore"):
                n_top = np.where(shoulder, np.sum(st >= (t - tol)[:, None, None], axis=(1, 2)), n_top)
        ok = (t >= 20.0 * background.noise) & (n_top >= 5) & (n_top >= need * np.maximum(n_half, 1))
        # counted again on the pixels connected to the peak (not a neighbour's light in the box)
        connected = _connected if np.count_nonzero(ok) <= 32 else _connected_by_labels
        for k in np.flatnonzero(ok):
            img_k = np.nan_to_num(st[k], nan=-np.inf)
            iy0, ix0 = np.unravel_index(int(np.argmax(np.where(np.abs(np.arange(box) - c)[:, None] <= 1,
                                                                 np.where(np.abs(np.arange(box) - c)[None, :] <= 1,
                                                                          img_k, -np.inf), -np.inf))), img_k.shape)
            plateau = connected(img_k >= t[k] - tol[k], iy0, ix0)
            n_top[k] = np.count_nonzero(plateau)
            if img_k[plateau].max() > t[k] + tol[k]:
                # the candidate is on the flank of something brighter (a galaxy's core, whose
                # background the mesh has partly taken): not the top of a plateau
                n_top[k] = 0
            py_, px_ = np.nonzero(plateau)
            cx[idx[k]] = origin[k, 0] + px_.mean()
            cy[idx[k]] = origin[k, 1] + py_.mean()
            n_half[k] = np.count_nonzero(connected(img_k >= 0.5 * t[k], iy0, ix0))
        ok &= (n_top >= 5) & (n_top >= need * np.maximum(n_half, 1))
        if fwhm is not None:
            # a saturated star falls from its plateau's edge to half the plateau's level within
            # about the PSF's FWHM (2 sqrt(r_half^2 - r_plateau^2) = FWHM for a Gaussian; 2-3 FWHM
            # on the DSS plate, 11 for its brightest star's photographic halo); a galaxy's flat
            # core falls slowly (M51's nucleus: 18 FWHM)
            edge = 2.0 * np.sqrt(np.maximum(n_half - n_top, 0) / np.pi)
            ok &= shoulder | (edge <= 14.0 * fwhm)
        # a crater: a saturated core that reads low (Spitzer IRAC, some CMOS cameras), its centre
        # pixel below both pixels of an opposite pair of its neighbours (by 5 % and 5 noise),
        # which no star's profile does (a peak one pixel off has one higher neighbour, not two); its
        # core (the pixels at or above 90 % of the centre's) is masked like a plateau (on the IRAC
        # GLIMPSE frame the seven brightest stars were rejected as extended)
        cen = st[:, c, c]
        above = np.maximum(1.05 * cen, cen + 5.0 * background.noise)
        crater = np.zeros(len(idx), dtype=bool)
        with np.errstate(invalid="ignore"):
            for ya, xa, yb, xb in ((c - 1, c, c + 1, c), (c, c - 1, c, c + 1), (c - 1, c - 1, c + 1, c + 1),
                                   (c - 1, c + 1, c + 1, c - 1)):
                crater |= (st[:, ya, xa] > above) & (st[:, yb, xb] > above)
            # and wings: the 5 x 5 box's outer ring at 10 % of the top or more (a saturated
            # star's; a pair of cosmic-ray hits or a hot-pixel pair has none)
            ring = st[:, c - 2:c + 3, c - 2:c + 3].copy()
            ring[:, 1:4, 1:4] = np.nan
            wings = np.nanmean(ring.reshape(len(idx), -1), axis=1)
            crater &= ~ok & (cen > 0) & (t >= 20.0 * background.noise) & (wings >= 0.1 * t)
            tol = np.where(crater, t - 0.9 * cen, tol)
            n_top = np.where(crater, np.sum(st[:, c - 2:c + 3, c - 2:c + 3] >= 0.9 * cen[:, None, None], axis=(1, 2)),
                             n_top)
        ok |= crater
        flat[idx] = ok
        top[idx] = t - tol + lvl[idx]
        radius[idx] = np.sqrt(n_top / np.pi)
    cx, cy = np.where(flat, cx, x), np.where(flat, cy, y)
    return flat, top, radius, cx, cy


def _connected(mask: np.ndarray, y0: int, x0: int) -> np.ndarray:
    """The pixels of ``mask`` connected to (y0, x0) through their 4 neighbours (scipy.ndimage.label's
    component of that pixel, by growing it: plateaus are small, and find imports no scipy.ndimage).
    """
    region = np.zeros(mask.shape, dtype=bool)
    if not mask[y0, x0]:
        return region
    region[y0, x0] = True
    # grow inside the bounding box of what has been reached, one pixel further each round
    y_lo, y_hi, x_lo, x_hi = y0, y0 + 1, x0, x0 + 1
    ny, nx = mask.shape
    while True:
        y_lo, y_hi, x_lo, x_hi = max(y_lo - 1, 0), min(y_hi + 1, ny), max(x_lo - 1, 0), min(x_hi + 1, nx)
        sub = region[y_lo:y_hi, x_lo:x_hi]
        grown = sub.copy()
        grown[1:] |= sub[:-1]
        grown[:-1] |= sub[1:]
        grown[:, 1:] |= sub[:, :-1]
        grown[:, :-1] |= sub[:, 1:]
        grown &= mask[y_lo:y_hi, x_lo:x_hi]
        if np.array_equal(grown, sub):
            return region
        region[y_lo:y_hi, x_lo:x_hi] = grown


def _connected_by_labels(mask: np.ndarray, y0: int, x0: int) -> np.ndarray:
    """:func:`_connected` by scipy.ndimage.label (the same pixels; faster where many candidates are
    looked at, worth its import then).
    """
    from scipy import ndimage

    labels, _ = ndimage.label(mask)
    return (labels == labels[y0, x0]) & mask


def _probe_beta(img: Image, cands: Table, *, box: int, exclude: np.ndarray | None = None,
                **fit_kwargs: Any) -> float | None:
    """The frame's Moffat beta: the inverse-variance weighted median over the FWHM probe's
    candidates of S/N >= 10 fitted with beta free (not saturated, converged, beta off its bounds);
    None (beta free) with fewer than 3.  Weighted, because the faint candidates' beta scatters over 1-20
    (on a beta 1.4 field the plain median of 27 stars gave 1.53, the weighted one 1.36-1.43).
    """
    px, py = _probe_positions(cands, exclude)
    t0 = fit_stars(img, px, py, box=box, model="moffat", angle=False, search_radius=None, **fit_kwargs)
    bad = F.SATURATED | F.FIT_FAILED | F.NOT_CONVERGED | F.AT_BOUND
    ok = ((t0["flags"] & bad) == 0) & np.isfinite(t0["beta"])
    # a beta error from a fit below S/N 10 is not a measure of anything (an S/N 1.4 speck of the
    # sample frame came back as beta 1.24 +- 0.24 and outweighed every star)
    ok &= np.nan_to_num(np.asarray(t0["snr"], dtype=float)) >= 10.0
    if ok.sum() < 3:
        return None
    err = np.asarray(t0["beta_err"], dtype=float)[ok]
    value = weighted_median(np.asarray(t0["beta"], dtype=float)[ok], 1.0 / err**2)
    if not np.isfinite(value):
        value = float(np.median(t0["beta"][ok]))
    return float(np.clip(value, 1.1, 15.0))


def _plateau_thin(xs: np.ndarray, ys: np.ndarray, flat: np.ndarray, radius: np.ndarray, margin: float) -> np.ndarray:
    """Which candidates to keep: of the candidates on a flat top's plateau (within its radius +
    ``margin``), only the flat-topped candidate with the widest plateau.
    """
    keep = np.ones(len(xs), dtype=bool)
    for i in np.flatnonzero(flat)[np.argsort(-radius[flat], kind="stable")]:
        if not keep[i]:
            continue
        for j in pairs_within(xs[i:i + 1], ys[i:i + 1], radius[i] + margin, other=(xs, ys))[1]:
            if j != i:
                keep[j] = False
    return keep


def _plateau_masker(data, xs, ys, flat, cut, radius, inner=None):
    """Per-stamp masks (as :func:`_neighbour_masker`'s) that also leave out the flat top of each
    flat-topped candidate: its pixels at or above ``cut`` (see :func:`_flat_tops`) within its
    plateau's radius + 2 px of the candidate.
    """

    def masker(origin: np.ndarray, box: int, idx: np.ndarray) -> np.ndarray:
        out = inner(origin, box, idx) if inner is not None else np.zeros((len(idx), box, box), dtype=bool)
        ny, nx = data.shape
        yy, xx = np.mgrid[0:box, 0:box]
        for k, i in enumerate(idx):
            if not flat[i]:
                continue
            ox, oy = int(origin[k, 0]), int(origin[k, 1])
            y0, x0 = max(oy, 0), max(ox, 0)
            y1, x1 = min(oy + box, ny), min(ox + box, nx)
            if y0 >= y1 or x0 >= x1:
                continue
            patch = np.full((box, box), -np.inf)
            patch[y0 - oy:y1 - oy, x0 - ox:x1 - ox] = data[y0:y1, x0:x1]
            r = radius[i] + 2.0
            near = (xx + ox - xs[i]) ** 2 + (yy + oy - ys[i]) ** 2 <= r * r
            with np.errstate(invalid="ignore"):
                out[k] |= near & (patch >= cut[i])
        return out

    return masker


def _thin(cands: Table, sep: float) -> Table:
    # single-pixel outliers neither suppress a star nor are suppressed (both are fitted)
    smooth_idx = np.nonzero(~np.asarray(cands["sharp"], dtype=bool))[0] if "sharp" in cands.colnames \
        else np.arange(len(cands))
    keep = np.ones(len(cands), dtype=bool)
    keep[smooth_idx] = thin_brighter_first(cands["x"][smooth_idx], cands["y"][smooth_idx], sep)
    return cands[keep]


def _fit_in_chunks(img, xs, ys, masker, fit_kwargs, progress):
    """Fit all candidates (in chunks with a progress bar when asked)."""
    n = len(xs)
    chunk = 4096

    def call(idx):
        sm = (lambda origin, box, _i=idx: masker(origin, box, _i)) if masker else None
        return fit_stars(img, xs[idx], ys[idx], stamp_mask=sm, **fit_kwargs)

    if n <= chunk or not progress:
        return call(np.arange(n))
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    parts = []
    with Progress(TextColumn("fitting stars"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task("fit", total=n)
        for i in range(0, n, chunk):
            idx = np.arange(i, min(i + chunk, n))
            parts.append(call(idx))
            bar.advance(task, len(idx))
    table = vstack(parts, metadata_conflicts="silent")
    table.meta = parts[0].meta
    return table


def _reject(table: Table, crit: RejectionCriteria, shape: tuple[int, int], fwhm_est: float,
            fwhm_spread: float | None = None) -> np.ndarray:
    """The first failed test per candidate ('' when accepted); ``fwhm_spread``: the relative
    scatter of the frame's stellar FWHM (see ``extended_spread``; None: that test is off).
    """
    n = len(table)
    reasons = np.array([""] * n, dtype=object)

    def mark(cond, reason):
        cond = np.asarray(cond, dtype=bool) & (reasons == "")
        reasons[cond] = reason

    fl = np.asarray(table["flags"])
    fwhm = np.asarray(table["fwhm"], dtype=float)
    mark((fl & (F.FIT_FAILED | F.CENTER_MOVED)) != 0, "fit_failed")
    mark(~np.isfinite(fwhm) | ~np.isfinite(np.asarray(table["flux_fit"], dtype=float)), "fit_failed")
    if crit.edge is not None:
        ny, nx = shape
        x, y = np.asarray(table["x_fit"]), np.asarray(table["y_fit"])
        e = crit.edge
        mark((x < e - 0.5) | (y < e - 0.5) | (x > nx - 0.5 - e) | (y > ny - 0.5 - e), "edge")
    # a saturated star (or a photographic disk's flat top) is fitted on its wings: its FWHM, shape
    # and misfit are those of the wings (spikes, halo), wider and rougher than the PSF's core, and
    # its flux error is large (the core is masked); it is listed with its flag whatever these
    # tests say (its fit starts on the plateau's centroid, so the centre test still applies)
    sat = (fl & F.SATURATED) != 0
    narrow = -np.inf
    if crit.min_fwhm_ratio is not None:
        narrow = crit.min_fwhm_ratio * fwhm_est
    if crit.min_fwhm is not None:
        narrow = max(narrow, crit.min_fwhm)
    mark((fwhm < narrow) & ~sat, "too_narrow")
    if crit.max_fwhm_ratio is not None:
        mark((fwhm > crit.max_fwhm_ratio * fwhm_est) & ~sat, "extended")
    if crit.extended_spread is not None and fwhm_spread is not None:
        err = np.nan_to_num(np.asarray(table["fwhm_err"], dtype=float), nan=np.inf)
        wide = fwhm_est * (1.0 + max(0.2, crit.extended_spread * fwhm_spread))
        mark((fwhm - wide > 2.0 * err) & ~sat, "extended")
    # (after the extent: a galaxy's fit wanders off its first peak, and "extended" says why)
    if crit.max_center_shift is not None:
        shift = np.hypot(np.asarray(table["x_fit"]) - np.asarray(table["x_init"]),
                         np.asarray(table["y_fit"]) - np.asarray(table["y_init"]))
        mark(shift > crit.max_center_shift * max(fwhm_est, 1.0), "center_moved")
    if crit.min_roundness is not None:
        mark((np.asarray(table["roundness"]) < crit.min_roundness) & ~sat, "not_round")
    if crit.min_snr is not None:
        # (a saturated star's light is not in doubt; only its flux is, the core being masked)
        mark((np.nan_to_num(np.asarray(table["snr"], dtype=float), nan=0.0) < crit.min_snr) & ~sat, "low_snr")
    if crit.max_rmse_ratio is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.asarray(table["rmse"]) / np.asarray(table["amplitude"])
        mark((np.nan_to_num(ratio, nan=np.inf) > crit.max_rmse_ratio) & ~sat, "poor_fit")
    return reasons
