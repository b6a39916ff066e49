"""Frame quality over a night: a per-frame summary, a ranking, a rejection list with reasons, plots.

Definitions (docs/sequences.md states them for users):

- ``fwhm_median``: median FWHM (geometric mean sqrt(FWHMx FWHMy), the star table's ``fwhm``) of the
  frame's good stars (flags == 0); ``fwhm_weighted``: their mean weighted by SNR.
- ``roundness``: median FWHMy / FWHMx; ``background``, ``noise``: the sky level and the
  pixel noise of the frame, in data units.
- ``hfr_median``: median half-flux radius of the good stars (px); ``eccentricity``: median
  sqrt(1 - (b/a)^2) of the stars' windowed-moment axes (PixInsight's eccentricity; from the
  roundness when the optics inspector could not run).
- The optics inspector's numbers (:mod:`psfkit.analysis.inspect`, docs/optics.md):
  ``fwhm_center``, ``tilt_percent``, ``tilt_direction_deg``, ``curvature_percent`` (NaN when the
  frame has too few stars for the FWHM surface), so that a night's tilt or focus drift shows.
- ``quality`` (relative to the night, 1 = a typical frame, higher is better):
  (median fwhm_weighted / fwhm_weighted)^2 x min(1, n_stars / median n_stars)
  x min(1, roundness / median roundness).  The square: the signal-to-noise of a faint,
  sky-limited star goes as 1 / FWHM, so its weight in a stack goes as 1 / FWHM^2.
- Rejection (:class:`QualityLimits`, defaults in brackets): ``no_stars``; ``fwhm`` when
  fwhm_weighted > fwhm_ratio [1.3] x the night's median; ``roundness`` when roundness <
  the night's median - roundness_drop [0.15]; ``star_count`` when n_stars < star_ratio [0.5]
  x the night's median; ``background`` when |background - median| > background_sigma [5]
  x max(1.4826 MAD of the night's backgrounds, median pixel noise).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np
from astropy.table import Table

from psfkit.io.outputs import atomic_output
from psfkit.utils import robust_sigma

__all__ = ["QualityLimits", "frame_summary", "rank_frames", "plot_frame_quality"]


@dataclass(frozen=True)
class QualityLimits:
    """When a frame is rejected, relative to the night's typical (median) values.

    Attributes
    ----------
    fwhm_ratio : float
        Reject when the frame's SNR-weighted FWHM exceeds this times the night's median.
    roundness_drop : float
        Reject when the frame's median roundness is below the night's median minus this.
    star_ratio : float
        Reject when fewer stars than this fraction of the night's median count are found.
    background_sigma : float
        Reject when the background is further than this many robust standard deviations
        (floor: the median pixel noise) from the night's median background.

    Examples
    --------
    >>> QualityLimits().fwhm_ratio > 1
    True
    >>> QualityLimits(fwhm_ratio=1.3).fwhm_ratio
    1.3
    """

    fwhm_ratio: float = 1.3
    roundness_drop: float = 0.15
    star_ratio: float = 0.5
    background_sigma: float = 5.0


def _robust_background(data: np.ndarray) -> tuple[float, float]:
    """Sigma-clipped median and standard deviation of a frame's pixels (subsampled for speed)."""
    from astropy.stats import sigma_clipped_stats

    step = max(1, int(np.sqrt(data.size / 250_000)))
    sample = data[::step, ::step]
    _, median, std = sigma_clipped_stats(sample[np.isfinite(sample)], sigma=3.0, maxiters=5)
    return float(median), float(std)


def frame_summary(stars: Table, image: Any) -> dict:
    """The summary of one frame from its star list.

    Parameters
    ----------
    stars : Table
        The frame's star list (:func:`psfkit.find_stars`).
    image : Image
        The frame (pixel scale, exposure, date; the background when the star list's
        metadata does not give it).

    Returns
    -------
    dict
        ``n_stars``, ``fwhm_median``, ``fwhm_weighted``, ``fwhm_median_arcsec``,
        ``fwhm_weighted_arcsec`` (NaN without a pixel scale), ``roundness``,
        ``background``, ``noise``, ``exptime``, ``date_obs``; plain Python types.

    Examples
    --------
    >>> import psfkit
    >>> image = psfkit.load_image(psfkit.sample_image_path())
    >>> summary = psfkit.frame_summary(psfkit.find_stars(image), image)
    >>> summary["exptime"], summary["date_obs"], 2.0 < summary["fwhm_median"] < 4.0
    (1200.0, '1992-10-26', True)
    """
    n = len(stars)
    good = np.ones(n, dtype=bool)
    if n and "flags" in stars.colnames:
        good = np.asarray(stars["flags"]) == 0
    if n:
        good &= np.isfinite(np.asarray(stars["fwhm"], dtype=float))
        if not good.any():
            good = np.isfinite(np.asarray(stars["fwhm"], dtype=float))
    fwhm = np.asarray(stars["fwhm"], dtype=float)[good] if n else np.array([])
    if fwhm.size:
        snr = np.asarray(stars["snr"], dtype=float)[good] if "snr" in stars.colnames else np.ones(fwhm.size)
        w = np.where(np.isfinite(snr) & (snr > 0), snr, 0.0)
        fwhm_median = float(np.median(fwhm))
        fwhm_weighted = float(np.sum(w * fwhm) / np.sum(w)) if w.sum() > 0 else fwhm_median
        roundness = float(np.median(np.asarray(stars["roundness"], dtype=float)[good]))
    else:
        fwhm_median = fwhm_weighted = roundness = float("nan")
    background = stars.meta.get("background")
    noise = stars.meta.get("noise")
    if not isinstance(background, numbers.Real) or not isinstance(noise, numbers.Real):
        background, noise = _robust_background(image.data)
    scale = image.pixel_scale if image.pixel_scale else float("nan")
    optics = _optics_numbers(stars, image, good)
    return {
        "n_stars": int(n),
        "fwhm_median": fwhm_median,
        "fwhm_weighted": fwhm_weighted,
        "fwhm_median_arcsec": fwhm_median * scale,
        "fwhm_weighted_arcsec": fwhm_weighted * scale,
        "roundness": roundness,
        **optics,
        "background": float(background),
        "noise": float(noise),
        "exptime": float(image.exptime) if image.exptime is not None else float("nan"),
        "date_obs": image.date_obs or "",
    }


def _optics_numbers(stars: Table, image: Any, good: np.ndarray) -> dict:
    """hfr_median, eccentricity and the optics inspector's numbers of one frame (NaN where not measurable)."""
    from psfkit.analysis.inspect import inspect_stars
    from psfkit.errors import PsfkitError

    nan = float("nan")
    out = {"hfr_median": nan, "eccentricity": nan, "fwhm_center": nan, "tilt_percent": nan,
           "tilt_direction_deg": nan, "curvature_percent": nan}
    if not len(stars):
        return out
    if "hfr" in stars.colnames and good.any():
        hfr = np.asarray(stars["hfr"], dtype=float)[good]
        out["hfr_median"] = float(np.nanmedian(hfr)) if np.isfinite(hfr).any() else nan
    if "roundness" in stars.colnames and good.any():
        q = np.clip(np.asarray(stars["roundness"], dtype=float)[good], 0.0, 1.0)
        out["eccentricity"] = float(np.nanmedian(np.sqrt(1.0 - q * q))) if np.isfinite(q).any() else nan
    try:
        report = inspect_stars(stars, image)
    except PsfkitError:
        return out
    el = np.asarray(report.stars["elongation"], dtype=float)
    if np.isfinite(el).any():
        out["eccentricity"] = float(np.nanmedian(np.sqrt(1.0 - 1.0 / np.clip(el, 1.0, None) ** 2)))
    for key in ("fwhm_center", "tilt_percent", "tilt_direction_deg", "curvature_percent"):
        out[key] = float(report.numbers[key])
    return out


def rank_frames(summary: Table, *, limits: QualityLimits | None = None) -> Table:
    """Quality score, rank and rejection reasons of every frame, relative to the night.

    Parameters
    ----------
    summary : Table
        One row per frame with the columns of :func:`frame_summary`.
    limits : QualityLimits, optional
        The rejection limits (defaults: :class:`QualityLimits`).

    Returns
    -------
    Table
        A copy with ``quality`` (float), ``rank`` (1 = best), ``rejected`` (bool) and
        ``reject_reason`` (comma-separated: fwhm, roundness, star_count, background,
        no_stars; '' when kept).

    Examples
    --------
    Three frames, the third with twice the FWHM:

    >>> from astropy.table import Table
    >>> import psfkit
    >>> image = psfkit.load_image(psfkit.sample_image_path())
    >>> summary = psfkit.frame_summary(psfkit.find_stars(image), image)
    >>> night = Table(rows=[dict(summary, frame=f"frame{i}") for i in range(3)])
    >>> night["fwhm_weighted"][2] *= 2
    >>> ranked = psfkit.rank_frames(night)
    >>> ranked["rejected"].tolist(), str(ranked["reject_reason"][2])
    ([False, False, True], 'fwhm')
    """
    limits = limits or QualityLimits()
    out = summary.copy(copy_data=True)
    n = len(out)
    nstars = np.asarray(out["n_stars"], dtype=float) if n else np.array([])
    fwhm = np.asarray(out["fwhm_weighted"], dtype=float) if n else np.array([])
    rnd = np.asarray(out["roundness"], dtype=float) if n else np.array([])
    bg = np.asarray(out["background"], dtype=float) if n else np.array([])
    noise = np.asarray(out["noise"], dtype=float) if n else np.array([])
    has = (nstars > 0) & np.isfinite(fwhm)
    reasons: list[list[str]] = [[] for _ in range(n)]
    quality = np.zeros(n)
    if has.any():
        med_fwhm = float(np.median(fwhm[has]))
        med_n = float(np.median(nstars[has]))
        med_r = float(np.median(rnd[has]))
        with np.errstate(divide="ignore", invalid="ignore"):
            quality = np.where(
                has,
                (med_fwhm / fwhm) ** 2 * np.minimum(1.0, nstars / med_n) * np.minimum(1.0, rnd / med_r),
                0.0,
            )
        for i in range(n):
            if not has[i]:
                continue
            if fwhm[i] > limits.fwhm_ratio * med_fwhm:
                reasons[i].append("fwhm")
            if rnd[i] < med_r - limits.roundness_drop:
                reasons[i].append("roundness")
            if nstars[i] < limits.star_ratio * med_n:
                reasons[i].append("star_count")
    if n:
        med_bg = float(np.median(bg))
        bg_scale = max(robust_sigma(bg), float(np.nanmedian(noise)))
        for i in range(n):
            if not has[i]:
                reasons[i].insert(0, "no_stars")
            if np.isfinite(bg_scale) and abs(bg[i] - med_bg) > limits.background_sigma * bg_scale:
                reasons[i].append("background")
    quality = np.nan_to_num(quality, nan=0.0)
    order = np.argsort(-quality, kind="stable")
    rank = np.empty(n, dtype=int)
    rank[order] = np.arange(1, n + 1)
    out["quality"] = quality
    out["rank"] = rank
    out["rejected"] = np.array([bool(r) for r in reasons], dtype=bool)
    out["reject_reason"] = np.array([",".join(r) for r in reasons], dtype=str) if n else np.array([], dtype=str)
    out.meta["quality_limits"] = {
        "fwhm_ratio": limits.fwhm_ratio, "roundness_drop": limits.roundness_drop,
        "star_ratio": limits.star_ratio, "background_sigma": limits.background_sigma,
    }
    return out


def plot_frame_quality(summary: Table, path: Any, *, time_column: str = "time") -> None:
    """FWHM, roundness, background and star count against time (PNG, Agg); rejected frames in red."""
    from psfkit._optional import require

    matplotlib = require("matplotlib", purpose="plots")
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 9), layout="constrained")
    axes = fig.subplots(4, 1, sharex=True)
    t = np.asarray(summary[time_column], dtype=float)
    rej = np.asarray(summary["rejected"], dtype=bool) if "rejected" in summary.colnames else np.zeros(len(t), bool)
    panels = [("fwhm_weighted", "FWHM (px, SNR-weighted)"), ("roundness", "roundness"),
              ("background", "background"), ("n_stars", "stars found")]
    for ax, (col, label) in zip(axes, panels):
        v = np.asarray(summary[col], dtype=float)
        ax.plot(t, v, "-", color="0.7", lw=1)
        ax.plot(t[~rej], v[~rej], "o", ms=4, color="tab:blue", label="kept")
        if rej.any():
            ax.plot(t[rej], v[rej], "x", ms=7, color="tab:red", label="rejected")
        ax.set_ylabel(label)
    axes[0].legend(fontsize="small")
    axes[-1].set_xlabel(summary.meta.get("time_label", time_column))
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=100)
