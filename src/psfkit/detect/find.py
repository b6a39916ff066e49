"""Every star in the frame: background, candidates, one batched fit, rejection with reasons.

The data flow: background/noise -> candidates -> stamps -> batched
fit (:func:`psfkit.fit_stars`, the one engine) -> acceptance tests.  Every
candidate that is not accepted says why (``reject_reason``), and the summary in
``table.meta["summary"]`` counts candidates per reason (see docs/rejection.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
from astropy.table import Table, vstack

from psfkit import flags as F
from psfkit.errors import PsfkitError
from psfkit.detect._kernels import gaussian_smooth
from psfkit.detect.background import Background, estimate_background
from psfkit.detect.scaling import restore_units, scaled_image, working_scale
from psfkit.io.image import Image, as_image
from psfkit.psf.columns import empty_star_table
from psfkit.psf.fit import fit_stars
from psfkit.psf.models import FWHM_PER_SIGMA
from psfkit.psf.stamps import fitting_box
from psfkit.utils import check_positive, robust_sigma, subpixel_peak, thin_brighter_first

__all__ = ["Background", "estimate_background", "find_candidates", "find_stars", "RejectionCriteria"]


def _local_maxima(smooth: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pixels (ys, xs) strictly greater than each of their 8 neighbours inside the frame."""
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
            ok &= ~inside | (values > smooth[yy, np.clip(xx, 0, nx - 1)])
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
    # noise of the smoothed frame, measured on a regular subsample
    sample = smooth[:: max(1, smooth.shape[0] // 256), :: max(1, smooth.shape[1] // 256)]
    sig_s = robust_sigma(sample)
    if sig_s <= 0:
        sig_s = background.noise / (2 * math.sqrt(math.pi) * smoothing)
    level = threshold * sig_s
    # Mighell's peak test (greater than its 8 neighbours), made only where the smoothed
    # frame is above the threshold: a few pixels per star instead of a full-frame filter
    ys, xs = np.nonzero(smooth > level)
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
    sharp = np.zeros(len(x), dtype=bool)
    if len(sharp_y):
        # a sharp pixel that is also a smoothed candidate (an undersampled star's core) is one
        if len(x):
            from scipy.spatial import cKDTree

            d, _ = cKDTree(np.stack([x, y], axis=1)).query(np.stack([sharp_x, sharp_y], axis=1))
            new = d > 1.0
        else:
            new = np.ones(len(sharp_y), dtype=bool)
        # on the smoothed scale: the kernel's central weight times the pixel's excess
        w0 = 1.0 / (2.0 * math.pi * smoothing**2)
        x = np.concatenate([x, sharp_x[new].astype(float)])
        y = np.concatenate([y, sharp_y[new].astype(float)])
        peak = np.concatenate([peak, w0 * (sharp_values[new] - sharp_fill[new]).astype(float)])
        sharp = np.concatenate([sharp, np.ones(int(new.sum()), dtype=bool)])
        order = np.argsort(-peak, kind="stable")
        x, y, peak, sharp = x[order], y[order], peak[order], sharp[order]
    return Table(
        {"x": x, "y": y, "peak": peak, "significance": peak / sig_s, "sharp": sharp},
        meta={"noise_smoothed": sig_s, "n_sharp": int(sharp.sum())},
    )


@dataclass(frozen=True)
class RejectionCriteria:
    """Acceptance tests for fitted candidates; set any to None to turn it off.

    Attributes
    ----------
    min_fwhm : float
        FWHM (geometric mean, px) below this is a hot pixel or cosmic ray. Default 0.8 px.
    max_fwhm_ratio : float
        FWHM above this multiple of the frame's median stellar FWHM is an extended
        source (galaxy, nebula knot, blend). Default 2.5.
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

    min_fwhm: float | None = 0.8
    max_fwhm_ratio: float | None = 2.5
    min_roundness: float | None = 0.3
    min_snr: float | None = 3.0
    max_center_shift: float | None = 1.5
    edge: int | None = 2
    max_rmse_ratio: float | None = 0.5


REASONS = {
    "fit_failed": "the fit failed or did not converge",
    "too_narrow": "FWHM below min_fwhm: a hot pixel or cosmic-ray hit",
    "too_wide": "FWHM far above the frame's stellar FWHM: an extended source",
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
    from scipy.spatial import cKDTree

    pts = np.stack([xs, ys], axis=1)
    tree = cKDTree(pts)

    def masker(origin: np.ndarray, box: int, idx: np.ndarray) -> np.ndarray:
        out = np.zeros((len(idx), box, box), dtype=bool)
        reach = box / math.sqrt(2) + radius
        yy, xx = np.mgrid[0:box, 0:box]
        for k, (i, others) in enumerate(zip(idx, tree.query_ball_point(pts[idx], reach))):
            for j in others:
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
    model : {"gaussian", "moffat"}
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
    max_stars : int, optional
        List only the N brightest accepted stars (by fitted flux); the others are counted in
        ``meta["summary"]["beyond_max_stars"]`` (and listed after them with ``keep_rejected``,
        reason ``beyond_max_stars``).
    **criteria
        Fields of :class:`RejectionCriteria` (``min_fwhm``, ``max_fwhm_ratio``,
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
    scale = working_scale(img.data)
    if scale != 1.0:  # values that over- or underflow float32: measured scaled by a power of two (detect.scaling)
        sat = saturation / scale if isinstance(saturation, (int, float)) and not isinstance(saturation, bool) \
            else saturation
        return restore_units(find_stars(
            scaled_image(img, scale), threshold=threshold, fwhm=fwhm, box=box, model=model, beta=beta, angle=angle,
            keep_rejected=keep_rejected, min_separation=min_separation, gain=None if gain is None else gain * scale,
            read_noise=read_noise, mask=mask, progress=progress, max_candidates=max_candidates,
            mask_neighbours=mask_neighbours, saturation=sat, deblend=deblend, **criteria), scale)
    data = img.data
    if mask is not None and np.shape(mask) != data.shape:
        raise PsfkitError(f"the mask has shape {np.shape(mask)}, the image {data.shape}")
    bkg = estimate_background(data, mask=mask)

    def candidates(sigma: float) -> tuple[Table, int]:
        """The candidates at this smoothing (the brightest max_candidates), and how many were found."""
        found = find_candidates(data, bkg, threshold=threshold, smoothing=sigma,
                                min_separation=min_separation if min_separation else 2.0)
        return (found[:max_candidates] if max_candidates is not None else found), len(found)

    smoothing = 1.0 if fwhm is None else max(0.7, fwhm / FWHM_PER_SIGMA)
    cands, n_cand_all = candidates(smoothing)
    settings = dict(threshold=threshold, model=model, beta=beta, angle=angle, box=box, fwhm=fwhm,
                    min_separation=min_separation, mask_neighbours=mask_neighbours, deblend=deblend,
                    max_stars=max_stars,
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
    fwhm_est = _probe_fwhm(img, cands, guess=fwhm, gain=gain, read_noise=read_noise, mask=mask,
                           saturation=saturation)
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
    masker = _neighbour_masker(xs, ys, peaks, 1.2 * fwhm_est) if mask_neighbours else None
    frame_beta = None
    if str(model).lower() == "moffat" and beta is None:
        # faint stars do not constrain beta, and a free beta makes their total flux (and SNR)
        # as uncertain as beta itself: the frame's beta from its bright stars, fixed for all
        frame_beta = _probe_beta(img, cands, box=box, gain=gain, read_noise=read_noise, mask=mask,
                                 saturation=saturation)
    fit_beta = frame_beta if frame_beta is not None else (None if beta == "free" else beta)
    fit_kwargs = dict(box=box, model=model, beta=fit_beta, angle=angle, search_radius=None, gain=gain,
                      read_noise=read_noise, mask=mask, saturation=saturation)
    table = _fit_in_chunks(img, xs, ys, masker, fit_kwargs, progress)
    table["peak_significance"] = np.asarray(cands["significance"], dtype=float)
    table["detection_pass"] = np.ones(len(table), dtype=np.int64)
    reasons = _reject(table, crit, img.shape, fwhm_est)
    if deblend and (reasons == "").any():
        table, reasons = _deblend(img, bkg, table, reasons, fwhm_est=fwhm_est, smoothing=smoothing,
                                                threshold=threshold, noise=float(cands.meta["noise_smoothed"]),
                                                fit_kwargs=fit_kwargs, crit=crit, mask_neighbours=mask_neighbours)
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


def _deblend(img, bkg, table, reasons, *, fwhm_est, smoothing, threshold, noise, fit_kwargs, crit, mask_neighbours):
    """The crowded-field pass of :mod:`psfkit.detect.deblend` on the accepted stars: their rows refitted
    with neighbours subtracted, companions appended with their own rejection tests.
    Returns (table, reasons).
    """
    from psfkit.detect.deblend import deblend_stars

    acc = np.flatnonzero(reasons == "")
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
    table[acc] = stars
    reasons[acc] = _reject(table[acc], crit, img.shape, fwhm_est)  # the refitted values pass the tests again
    if len(comp) == 0:
        return table, reasons
    comp["detection_pass"] = np.full(len(comp), 2, dtype=np.int64)
    comp_reasons = _reject(comp, crit, img.shape, fwhm_est)
    comp_reasons[(comp_reasons == "") & ~explains] = "misfit"
    table = vstack([table, comp[table.colnames]], metadata_conflicts="silent")
    return table, np.concatenate([reasons, comp_reasons])


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


def _probe_positions(cands: Table) -> tuple[np.ndarray, np.ndarray]:
    """x, y of the probe (:func:`_probe_indices`), single-pixel outliers left out."""
    idx = _probe_indices(np.asarray(cands["significance"], dtype=float))
    if "sharp" in cands.colnames:
        smooth = ~np.asarray(cands["sharp"], dtype=bool)[idx]
        idx = idx[smooth] if smooth.any() else idx
    return np.asarray(cands["x"], dtype=float)[idx], np.asarray(cands["y"], dtype=float)[idx]


def _probe_fwhm(img: Image, cands: Table, *, guess: float | None = None, **fit_kwargs: Any) -> float:
    """The frame's stellar FWHM (px): the median over a probe of candidates fitted without the
    angle, in a box of 15 px (or 4 x the guess), again in a box of 4 FWHM when that is larger;
    the guess (default 3 px) when fewer than 3 candidates measure it.
    """
    px, py = _probe_positions(cands)
    first = 3.0 if guess is None else float(guess)
    est, box = first, max(15, fitting_box(first, per_fwhm=4.0, minimum=1, maximum=101))
    for _ in range(2):
        t0 = fit_stars(img, px, py, box=box, angle=False, search_radius=None, **fit_kwargs)
        ok = (t0["flags"] & (F.SATURATED | F.FIT_FAILED | F.NOT_CONVERGED)) == 0
        ok &= np.isfinite(t0["fwhm"]) & (t0["fwhm"] > 0.8)
        est = float(np.median(t0["fwhm"][ok])) if ok.sum() >= 3 else first
        wanted = fitting_box(est, per_fwhm=4.0, minimum=1, maximum=101)
        if wanted <= box:
            break
        box = wanted
    return min(max(est, 1.0), 30.0)


def _probe_beta(img: Image, cands: Table, *, box: int, **fit_kwargs: Any) -> float | None:
    """The frame's Moffat beta: the median over the FWHM probe's candidates fitted with beta
    free (not saturated, converged, beta off its bounds); None (beta free) with fewer than 3.
    """
    px, py = _probe_positions(cands)
    t0 = fit_stars(img, px, py, box=box, model="moffat", angle=False, search_radius=None, **fit_kwargs)
    bad = F.SATURATED | F.FIT_FAILED | F.NOT_CONVERGED | F.AT_BOUND
    ok = ((t0["flags"] & bad) == 0) & np.isfinite(t0["beta"])
    if ok.sum() < 3:
        return None
    return float(np.clip(np.median(t0["beta"][ok]), 1.1, 15.0))


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


def _reject(table: Table, crit: RejectionCriteria, shape: tuple[int, int], fwhm_est: float) -> np.ndarray:
    """The first failed test per candidate ('' when accepted)."""
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
    if crit.min_fwhm is not None:
        mark(fwhm < crit.min_fwhm, "too_narrow")
    if crit.max_center_shift is not None:
        shift = np.hypot(np.asarray(table["x_fit"]) - np.asarray(table["x_init"]),
                         np.asarray(table["y_fit"]) - np.asarray(table["y_init"]))
        mark(shift > crit.max_center_shift * max(fwhm_est, 1.0), "center_moved")
    if crit.max_fwhm_ratio is not None:
        sat = (fl & F.SATURATED) != 0
        mark((fwhm > crit.max_fwhm_ratio * fwhm_est) & ~sat, "too_wide")
    if crit.min_roundness is not None:
        mark(np.asarray(table["roundness"]) < crit.min_roundness, "not_round")
    if crit.min_snr is not None:
        mark(np.nan_to_num(np.asarray(table["snr"], dtype=float), nan=0.0) < crit.min_snr, "low_snr")
    if crit.max_rmse_ratio is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.asarray(table["rmse"]) / np.asarray(table["amplitude"])
        sat = (fl & F.SATURATED) != 0
        mark((np.nan_to_num(ratio, nan=np.inf) > crit.max_rmse_ratio) & ~sat, "poor_fit")
    return reasons
