"""Light curves over a sequence: the drift between frames, tracked stars, differential magnitudes.

The drift of a frame relative to the reference frame is estimated from the
stars themselves, not from a tracked star's position alone: the bright stars
of both frames vote over all pairwise offsets, and the winning offset is
refined by a KD-tree cross-match (median of the matched offsets).  Only a
translation is estimated (no rotation or scale change): what a tracking mount
and a fixed camera give over a night.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from astropy.table import Table
from scipy.spatial import cKDTree

from psfkit.errors import PsfkitError
from psfkit.io.outputs import atomic_output
from psfkit.psf.measure import magnitude

__all__ = ["FrameShift", "estimate_shift", "fit_tracked", "differential_photometry", "plot_light_curves"]


@dataclass(frozen=True)
class FrameShift:
    """Offset of a frame relative to the reference: (x, y) in the frame = (x, y) in the reference + (dx, dy).

    ``n_matched`` is the number of bright stars that agree on it (0 when no shift was found:
    ``dx`` and ``dy`` are then NaN).
    """

    dx: float
    dy: float
    n_matched: int


def estimate_shift(
    reference_xy: np.ndarray,
    frame_xy: np.ndarray,
    *,
    tolerance: float = 2.0,
    max_stars: int = 50,
    min_matches: int = 3,
) -> FrameShift:
    """The translation between two lists of star positions, brightest first.

    Parameters
    ----------
    reference_xy, frame_xy : ndarray, shape (N, 2) and (M, 2)
        0-based (x, y) of the stars of the reference frame and of the frame,
        brightest first (only the first ``max_stars`` are used).
    tolerance : float
        Two offsets agree when they are within this many pixels.
    max_stars : int
        How many of the brightest stars of each list take part.
    min_matches : int
        Fewest stars that must agree on the offset (at most the number of stars given).

    Returns
    -------
    FrameShift
        The offset to add to a reference position to find the star in the frame.

    Notes
    -----
    Every pair (reference star i, frame star j) proposes the offset
    ``frame_j - reference_i``; the offset with the most proposals within
    ``tolerance`` wins (a Hough-style vote; false pairs scatter, true pairs pile
    up).  The reference stars moved by that offset are then matched to their
    nearest frame star (KD-tree) and the median offset of the matches is returned.

    Examples
    --------
    >>> import numpy as np
    >>> reference = np.array([[10.0, 20.0], [50.0, 70.0], [80.0, 40.0], [30.0, 90.0]])
    >>> estimate_shift(reference, reference + [3.0, -2.0])
    FrameShift(dx=3.0, dy=-2.0, n_matched=4)
    """
    ref = np.asarray(reference_xy, dtype=float).reshape(-1, 2)[:max_stars]
    cur = np.asarray(frame_xy, dtype=float).reshape(-1, 2)[:max_stars]
    ref = ref[np.all(np.isfinite(ref), axis=1)]
    cur = cur[np.all(np.isfinite(cur), axis=1)]
    need = max(1, min(min_matches, len(ref), len(cur)))
    if len(ref) == 0 or len(cur) == 0:
        return FrameShift(float("nan"), float("nan"), 0)
    offsets = (cur[None, :, :] - ref[:, None, :]).reshape(-1, 2)
    votes = cKDTree(offsets).query_ball_point(offsets, r=tolerance, return_length=True)
    best = offsets[int(np.argmax(votes))]
    dist, j = cKDTree(cur).query(ref + best, distance_upper_bound=tolerance)
    ok = np.isfinite(dist)
    if ok.sum() < need:
        return FrameShift(float("nan"), float("nan"), 0)
    d = cur[j[ok]] - ref[ok]
    return FrameShift(float(np.median(d[:, 0])), float(np.median(d[:, 1])), int(ok.sum()))


def fit_tracked(
    image: Any,
    positions: Sequence[tuple[float, float]],
    shift: FrameShift,
    *,
    search_radius: float = 3.0,
    **fit_options: Any,
) -> list[dict]:
    """Fit the given stars in one frame at their reference positions moved by ``shift``.

    Parameters
    ----------
    image : Image
        The frame.
    positions : sequence of (x, y)
        0-based positions in the reference frame.
    shift : FrameShift
        The frame's offset from the reference (see :func:`estimate_shift`).
    search_radius : float
        How far the star's peak may be from the predicted position (px).
    **fit_options
        Passed to :func:`psfkit.fit_stars` (model, gain, read_noise, zero_point ...).

    Returns
    -------
    list of dict
        One record per star (in the order given): ``star`` (index), ``x_fit``,
        ``y_fit``, ``flux_fit``, ``flux_err``, ``mag``, ``mag_err``, ``fwhm``,
        ``flags``; NaN values (flags -1) for a star outside the frame or when
        the shift is unknown.
    """
    from psfkit.psf.fit import fit_stars

    pos = np.asarray(positions, dtype=float).reshape(-1, 2)
    ny, nx = image.data.shape
    px, py = pos[:, 0] + shift.dx, pos[:, 1] + shift.dy
    inside = np.isfinite(px) & np.isfinite(py) & (px >= 0) & (px <= nx - 1) & (py >= 0) & (py <= ny - 1)
    keys = ("x_fit", "y_fit", "flux_fit", "flux_err", "mag", "mag_err", "fwhm")
    records = [dict(star=i, **{k: float("nan") for k in keys}, flags=-1) for i in range(len(pos))]
    idx = np.flatnonzero(inside)
    if idx.size:
        table = fit_stars(image, px[idx], py[idx], search_radius=search_radius, **fit_options)
        for row, i in zip(table, idx):
            records[i].update({k: float(row[k]) for k in keys})
            records[i]["flags"] = int(row["flags"])
    return records


def differential_photometry(curve: Table, *, targets: Sequence[int], comparisons: Sequence[int]) -> Table:
    """Add differential magnitudes of the targets against the ensemble of the comparison stars.

    Parameters
    ----------
    curve : Table
        Long light-curve table: one row per (frame, star) with ``frame``,
        ``star``, ``flux_fit``, ``flux_err``, ``mag``, ``mag_err``.
    targets, comparisons : sequence of int
        Star indices of the targets and of the comparison stars.

    Returns
    -------
    Table
        A copy with ``dmag`` = mag(target) - mag(sum of the comparison fluxes)
        and ``dmag_err`` = sqrt(mag_err(target)^2 + mag_err(ensemble)^2), where
        the ensemble's flux error is the quadrature sum of the comparison stars'
        flux errors; NaN for comparison stars and for frames where a
        comparison star has no valid flux.

    Examples
    --------
    Star 0 against stars 1 and 2 (twice its flux each: 2.5 log10(4) = 1.505 mag fainter than their sum):

    >>> import numpy as np
    >>> from astropy.table import Table
    >>> curve = Table({"frame": [0, 0, 0], "star": [0, 1, 2], "flux_fit": [1000.0, 2000.0, 2000.0],
    ...                "flux_err": [10.0, 10.0, 10.0]})
    >>> curve["mag"] = -2.5 * np.log10(curve["flux_fit"])
    >>> curve["mag_err"] = 1.0857 * curve["flux_err"] / curve["flux_fit"]
    >>> out = differential_photometry(curve, targets=[0], comparisons=[1, 2])
    >>> round(float(out["dmag"][0]), 3), bool(np.isnan(out["dmag"][1]))
    (1.505, True)
    """
    out = curve.copy(copy_data=True)
    out["dmag"] = np.full(len(out), np.nan)
    out["dmag_err"] = np.full(len(out), np.nan)
    if not comparisons or len(out) == 0:
        return out
    comps = set(int(c) for c in comparisons)
    tgts = set(int(t) for t in targets)
    frames = np.asarray(out["frame"]).astype(str)
    star = np.asarray(out["star"], dtype=int)
    flux = np.asarray(out["flux_fit"], dtype=float)
    ferr = np.asarray(out["flux_err"], dtype=float)
    for name in np.unique(frames):
        rows = frames == name
        comp_rows = rows & np.isin(star, list(comps))
        if comp_rows.sum() != len(comps) or not np.all(np.isfinite(flux[comp_rows]) & (flux[comp_rows] > 0)):
            continue
        ens_mag, ens_err = magnitude(flux[comp_rows].sum(), np.sqrt(np.sum(ferr[comp_rows] ** 2)))
        for i in np.flatnonzero(rows & np.isin(star, list(tgts))):
            tgt_mag, tgt_err = magnitude(flux[i], ferr[i])  # both without zero point: it cancels
            out["dmag"][i] = tgt_mag - ens_mag
            out["dmag_err"][i] = np.hypot(tgt_err, ens_err)
    return out


def plot_light_curves(curve: Table, path: Any, *, time_column: str = "time") -> None:
    """Plot the tracked stars' magnitudes (and differential magnitudes) against time (PNG, Agg)."""
    from psfkit._optional import require

    matplotlib = require("matplotlib", purpose="plots")
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    if len(curve) == 0:
        raise PsfkitError("no light-curve points to plot")
    has_diff = "dmag" in curve.colnames and np.any(np.isfinite(curve["dmag"]))
    fig = Figure(figsize=(8, 6 if has_diff else 3.5), layout="constrained")
    axes = fig.subplots(2 if has_diff else 1, 1, sharex=True, squeeze=False)[:, 0]
    t = np.asarray(curve[time_column], dtype=float)
    for s in np.unique(np.asarray(curve["star"], dtype=int)):
        m = np.asarray(curve["star"]) == s
        role = str(curve["role"][m][0]) if "role" in curve.colnames else "star"
        axes[0].errorbar(t[m], curve["mag"][m], yerr=curve["mag_err"][m], fmt="o-", ms=3, label=f"{role} {s}")
        if has_diff and np.any(np.isfinite(curve["dmag"][m])):
            axes[1].errorbar(t[m], curve["dmag"][m], yerr=curve["dmag_err"][m], fmt="o-", ms=3, label=f"{role} {s}")
    axes[0].set_ylabel("mag (instrumental)")
    axes[0].invert_yaxis()
    axes[0].legend(fontsize="small")
    if has_diff:
        axes[1].set_ylabel("differential mag")
        axes[1].invert_yaxis()
    axes[-1].set_xlabel(curve.meta.get("time_label", time_column))
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=100)
