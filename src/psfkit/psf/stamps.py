"""Stamps: cutting boxes around stars, finding the real peak, first guesses.

Pure array functions used by every caller of the engine.  Coordinates are
0-based pixel centres, x = column, y = row: pixel ``(i, j)`` covers
``[j - 0.5, j + 0.5] x [i - 0.5, i + 0.5]`` (photutils' and SEP's convention).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from psfkit.errors import PsfkitError
from psfkit.psf.models import FWHM_PER_SIGMA, ImagePSF, MoffatPSF, PSFModel
from psfkit.utils import robust_sigma, subpixel_peak

__all__ = [
    "MAX_BOX",
    "clip_box",
    "cut_stamps",
    "refine_peak",
    "brightest_source",
    "estimate_fwhm",
    "initial_params",
    "auto_box",
    "saturation_mask",
]


def fitting_box(fwhm: float, *, per_fwhm: float = 5.0, minimum: int = 11, maximum: int = 151) -> int:
    """The fitting-box rule: an odd size of ``per_fwhm`` FWHM (FWHM at least 1 px), within [minimum, maximum].

    One star (:func:`auto_box`): 5 FWHM, 11 to 151 px; a whole frame's stars
    (:func:`psfkit.find_stars`): 4 FWHM, 9 to 101 px, so that neighbours crowd the box less.

    Examples
    --------
    >>> fitting_box(3.0), fitting_box(3.0, per_fwhm=4.0, minimum=9, maximum=101), fitting_box(50.0)
    (15, 13, 151)
    """
    size = int(math.ceil(per_fwhm * max(float(fwhm), 1.0)))
    size = min(max(size, minimum), maximum)
    return size + 1 - size % 2


def auto_box(fwhm: float) -> int:
    """Odd box size covering about +-2.5 FWHM (at least 11 px, at most 151 px): :func:`fitting_box`'s default."""
    return fitting_box(fwhm)


#: the largest fitting box (px): a star wider than 80 px FWHM is not a point source to fit
MAX_BOX = 401


def clip_box(box: Any, shape: tuple[int, ...], *, minimum: int = 3) -> int:
    """A user's fitting box made odd and clipped to the image and to :data:`MAX_BOX`.

    Parameters
    ----------
    box : int
        The box asked for (px).
    shape : (ny, nx)
        The image's shape: a box never exceeds its larger side.
    minimum : int
        The smallest box the fit accepts.

    Returns
    -------
    int
        An odd box, ``minimum <= box <= min(MAX_BOX, larger side)`` (at least ``minimum``).

    Raises
    ------
    PsfkitError
        For a box below ``minimum``, beyond any image (over 2**31 - 1) or not a whole number (one line).

    Examples
    --------
    >>> clip_box(10001, (256, 256))
    255
    >>> clip_box(16, (256, 256))
    17
    """
    try:
        size = int(box)
        if not isinstance(box, (int, np.integer)) and size != float(box):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise PsfkitError(f"the box must be a whole number of pixels, got {box!r}") from None
    if size < minimum:
        raise PsfkitError(f"the box must be at least {minimum} px, got {size}")
    if size > 2**31 - 1:
        raise PsfkitError(f"a box of {size} px is beyond any image; boxes are clipped to the image and to {MAX_BOX} px")
    side = max(int(v) for v in shape[-2:])
    side -= 1 - side % 2  # the largest odd size inside the image
    size = min(size, MAX_BOX, max(side, minimum))
    return size + 1 - size % 2


def saturation_mask(data: np.ndarray, saturation: float | None) -> np.ndarray:
    """True where a pixel is at or above the saturation level (False everywhere if unknown)."""
    if saturation is None:
        return np.zeros(data.shape, dtype=bool)
    with np.errstate(invalid="ignore"):
        return np.asarray(data >= saturation)


def cut_stamps(
    data: np.ndarray, x: np.ndarray, y: np.ndarray, box: int | tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Boxes of shape (h, w) centred on the pixels nearest to (x, y).

    Parts of a box outside the image are filled with NaN, so a star near the
    edge still fits on the pixels it has.

    Returns
    -------
    stamps : ndarray (N, h, w)
    inside : ndarray of bool (N, h, w)
        True where the pixel lies on the image.
    origin : ndarray (N, 2)
        (x, y) image coordinates of each stamp's pixel (0, 0).
    cut : ndarray of bool (N,)
        True where the box is cut by the image edge.

    Examples
    --------
    A box near the corner is filled with NaN where it leaves the frame:

    >>> import numpy as np
    >>> data = np.ones((64, 64))
    >>> stamps, inside, origin, cut = cut_stamps(data, np.array([30.0, 2.0]), np.array([40.0, 2.0]), 9)
    >>> stamps.shape, cut.tolist(), int(inside[1].sum())
    ((2, 9, 9), [False, True], 49)
    >>> origin[0].tolist()
    [26.0, 36.0]
    """
    if np.isscalar(box):
        h = w = int(box)
    else:
        h, w = (int(b) for b in box)
    ny, nx = data.shape
    cx = np.rint(np.asarray(x, dtype=float)).astype(int)
    cy = np.rint(np.asarray(y, dtype=float)).astype(int)
    x_start = cx - w // 2
    y_start = cy - h // 2
    cols = x_start[:, None] + np.arange(w)[None, :]
    rows = y_start[:, None] + np.arange(h)[None, :]
    col_ok = (cols >= 0) & (cols < nx)
    row_ok = (rows >= 0) & (rows < ny)
    inside = row_ok[:, :, None] & col_ok[:, None, :]
    cut = ~(row_ok.all(axis=1) & col_ok.all(axis=1))
    stamps = np.empty((len(cx), h, w), dtype=float)
    whole = np.flatnonzero(~cut)
    if len(whole) and h <= ny and w <= nx:
        # boxes inside the frame: gathered from a strided view of all its boxes (no index arrays
        # of N x h x w elements)
        windows = np.lib.stride_tricks.sliding_window_view(data, (h, w))
        stamps[whole] = windows[y_start[whole], x_start[whole]]
    part = np.flatnonzero(cut)
    if len(part):
        r, c = np.clip(rows[part], 0, ny - 1), np.clip(cols[part], 0, nx - 1)
        stamps[part] = np.where(inside[part], data[r[:, :, None], c[:, None, :]], np.nan)
    origin = np.stack([x_start, y_start], axis=1).astype(float)
    return stamps, inside, origin, cut


def _clean_smooth(patch: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Median 3x3 (removes hot pixels and cosmic-ray hits) then Gaussian smoothing; NaN -> local median."""
    from scipy import ndimage  # here, not at the top: psfkit find does not need it (start-up)

    filled = np.where(np.isfinite(patch), patch, np.nanmedian(patch) if np.isfinite(patch).any() else 0.0)
    return ndimage.gaussian_filter(ndimage.median_filter(filled, size=3, mode="nearest"), sigma, mode="nearest")


def level_and_noise(smooth: np.ndarray) -> tuple[float, float]:
    """Median and robust sigma (1.4826 MAD, :func:`psfkit.utils.robust_sigma`) of a smoothed patch."""
    return float(np.median(smooth)), robust_sigma(smooth)


def dip_between(smooth: np.ndarray, a: tuple[int, int], b: tuple[int, int]) -> float:
    """The lowest value of ``smooth`` on the straight line from pixel ``a`` to pixel ``b`` (row, col):
    two peaks are distinct sources when both stand well above it.
    """
    n = int(2 * math.hypot(b[0] - a[0], b[1] - a[1])) + 2
    t = np.linspace(0.0, 1.0, n)
    rows = np.rint(a[0] + t * (b[0] - a[0])).astype(int)
    cols = np.rint(a[1] + t * (b[1] - a[1])).astype(int)
    return float(smooth[rows, cols].min())


def refine_peak(data: np.ndarray, x: float, y: float, *, search_radius: float = 10.0) -> tuple[float, float]:
    """Position of the real peak near (x, y), refined to sub-pixel by a 3x3 parabola.

    The image is cleaned (3x3 median: a hot pixel or cosmic-ray hit does not capture the
    search) and smoothed; within ``search_radius`` px the peak is the brightest one, unless
    a distinct source lies nearer to (x, y): a local maximum 5 sigma above the patch's
    level whose dip towards the brightest peak is deeper than 3 sigma (sigma: the robust
    scatter of the smoothed patch).  A user who points at a faint star beside a bright one
    gets the faint star; a guess a few pixels off a lone star still lands on it.
    """
    from scipy import ndimage

    ny, nx = data.shape
    r = int(math.ceil(search_radius)) + 3
    x0, x1 = max(int(round(x)) - r, 0), min(int(round(x)) + r + 1, nx)
    y0, y1 = max(int(round(y)) - r, 0), min(int(round(y)) + r + 1, ny)
    patch = np.asarray(data[y0:y1, x0:x1], dtype=float)
    smooth = _clean_smooth(patch)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    dist2 = (xx - x) ** 2 + (yy - y) ** 2
    inside = dist2 <= search_radius**2
    if not inside.any():
        return float(x), float(y)
    masked = np.where(inside, smooth, -np.inf)
    gy, gx = np.unravel_index(np.argmax(masked), masked.shape)
    pick = (gy, gx)
    peaks = inside & (smooth >= ndimage.maximum_filter(smooth, size=3, mode="nearest"))
    if peaks.sum() > 1:
        level, noise = level_and_noise(smooth)
        py, px = np.nonzero(peaks)
        for k in np.argsort(dist2[py, px], kind="stable"):
            my, mx = int(py[k]), int(px[k])
            if (my, mx) == (gy, gx) or dist2[my, mx] >= dist2[gy, gx]:
                break  # the brightest peak is the nearest distinct source left
            if noise <= 0 or smooth[my, mx] - level < 5.0 * noise:
                continue
            dip = dip_between(smooth, (my, mx), (gy, gx))
            if smooth[my, mx] - dip > 3.0 * noise:
                pick = (my, mx)
                break
    return _centroid3(smooth, pick[0], pick[1], x0, y0)


def _centroid3(smooth: np.ndarray, iy: int, ix: int, x0: int, y0: int) -> tuple[float, float]:
    """Sub-pixel peak of a patch whose first pixel is (x0, y0): :func:`psfkit.utils.subpixel_peak`."""
    x, y = subpixel_peak(smooth, iy, ix)
    return float(x0 + x[0]), float(y0 + y[0])


def brightest_source(data: np.ndarray) -> tuple[float, float]:
    """Position of the brightest source: the maximum of the cleaned, smoothed frame.

    Smoothing by a Gaussian of sigma 1.5 px after a 3x3 median means a hot
    pixel or a noise spike cannot win over a real star.
    """
    arr = np.asarray(data, dtype=float)
    step = max(1, int(math.ceil(max(arr.shape) / 2048)))
    smooth = _clean_smooth(arr[::step, ::step] if step > 1 else arr, sigma=1.5)
    iy, ix = np.unravel_index(np.argmax(smooth), smooth.shape)
    if step == 1:
        return _centroid3(smooth, iy, ix, 0, 0)
    return refine_peak(arr, ix * step, iy * step, search_radius=2 * step)


def estimate_fwhm(data: np.ndarray, x: float, y: float, *, radius: int = 25) -> float:
    """Rough FWHM (px) of the source at (x, y) from its area above half maximum.

    Examples
    --------
    >>> from psfkit.datasets.simulate import simulate_field
    >>> data, truth = simulate_field((64, 64), 1, fwhm=3.0, seed=2, edge=20, flux_range=(20000.0, 20000.0))
    >>> fwhm = estimate_fwhm(data - 200.0, truth["x"][0], truth["y"][0])
    >>> 2.0 < fwhm < 4.0
    True
    """
    from scipy import ndimage

    ny, nx = data.shape
    ix, iy = int(round(x)), int(round(y))
    x0, x1 = max(ix - radius, 0), min(ix + radius + 1, nx)
    y0, y1 = max(iy - radius, 0), min(iy + radius + 1, ny)
    patch = np.asarray(data[y0:y1, x0:x1], dtype=float)
    smooth = ndimage.median_filter(np.where(np.isfinite(patch), patch, np.nanmedian(patch)), size=3, mode="nearest")
    sky = float(np.nanmedian(np.concatenate([patch[0], patch[-1], patch[:, 0], patch[:, -1]])))
    peak = float(smooth[iy - y0, ix - x0]) - sky
    if not np.isfinite(peak) or peak <= 0:
        return 3.0
    above = (smooth - sky) >= 0.5 * peak
    labels, _ = ndimage.label(above)
    lab = labels[iy - y0, ix - x0]
    area = np.count_nonzero(labels == lab) if lab else 1
    return float(max(2.0 * math.sqrt(area / math.pi), 1.0))


def _row_nanmedian(a: np.ndarray) -> np.ndarray:
    """The median of each row's finite values (NaN for a row with none), as ``np.nanmedian(a, axis=1)``
    gives it, from one sort (nanmedian's masked-array path for short rows was a tenth of a second for
    5,000 stamps).

    Examples
    --------
    >>> _row_nanmedian(np.array([[1.0, np.nan, 3.0, 2.0], [np.nan, np.nan, np.nan, np.nan]])).tolist()
    [2.0, nan]
    """
    if a.shape[1] == 0:
        return np.full(len(a), np.nan)
    srt = np.sort(a, axis=1)  # NaN last
    k = np.count_nonzero(~np.isnan(a), axis=1)
    rows = np.arange(len(a))
    lo = srt[rows, np.maximum((k - 1) // 2, 0)]
    hi = srt[rows, np.minimum(k // 2, a.shape[1] - 1)]
    return np.where(k > 0, np.where(k % 2 == 1, lo, (lo + hi) / 2.0), np.nan)


def initial_params(
    model: PSFModel,
    stamps: np.ndarray,
    usable: np.ndarray,
    centre: np.ndarray,
) -> np.ndarray:
    """First guesses (N, n_params) from the stamps themselves.

    Background: median of the usable border pixels.  Amplitude: the highest
    usable pixel within 1 px of ``centre`` above the background.  Width: from
    the area above half maximum.  Angle 0; Moffat beta 2.5 unless fixed.

    Parameters
    ----------
    model : PSFModel
    stamps : ndarray (N, h, w)
    usable : ndarray of bool (N, h, w)
    centre : ndarray (N, 2)
        Stamp-local (x, y) of the refined peak.
    """
    n, h, w = stamps.shape
    vals = np.where(usable, stamps, np.nan)
    border = np.concatenate(
        [vals[:, 0, :], vals[:, -1, :], vals[:, 1:-1, 0], vals[:, 1:-1, -1]], axis=1
    )
    bkg = _row_nanmedian(border)
    empty = ~np.isfinite(bkg)
    if empty.any():  # no usable border pixel: the whole stamp's
        bkg[empty] = _row_nanmedian(vals[empty].reshape(int(empty.sum()), -1))
    bkg = np.where(np.isfinite(bkg), bkg, 0.0)
    cx = np.clip(np.rint(centre[:, 0]).astype(int), 0, w - 1)
    cy = np.clip(np.rint(centre[:, 1]).astype(int), 0, h - 1)
    # peak: max over the 3x3 around the centre
    peak = np.full(n, -np.inf)
    raw_peak = np.full(n, -np.inf)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            yy = np.clip(cy + dy, 0, h - 1)
            xx = np.clip(cx + dx, 0, w - 1)
            v = vals[np.arange(n), yy, xx]
            peak = np.fmax(peak, v)
            # a saturated core is not usable, but its value is a lower bound of the peak
            raw_peak = np.fmax(raw_peak, stamps[np.arange(n), yy, xx])
    peak = np.where(np.isfinite(peak), peak, raw_peak)
    amp = np.where(np.isfinite(peak), peak - bkg, 1.0)
    amp = np.maximum(amp, 1e-12 + 1e-6 * np.abs(bkg))
    image_psf = isinstance(model, ImagePSF)
    core_lost = ~np.isfinite(vals[np.arange(n), cy, cx])
    # an image PSF needs no width: the area only where a saturated core hides the amplitude
    sub = np.flatnonzero(core_lost) if image_psf else np.arange(n)
    st = stamps[sub] if image_psf else stamps  # (no copy of every stamp for the analytic models)
    # the area above half maximum counts the saturated core too (any pixel with data)
    with np.errstate(invalid="ignore"):
        above = np.isfinite(st) & (st - bkg[sub, None, None] >= 0.5 * amp[sub, None, None])
    yy, xx = np.mgrid[0:h, 0:w]
    near = (xx[None] - centre[sub, 0, None, None]) ** 2 + (yy[None] - centre[sub, 1, None, None]) ** 2 <= (
        0.5 * min(h, w)
    ) ** 2
    area = np.zeros(n, dtype=np.intp)
    area[sub] = np.count_nonzero(above & near, axis=(1, 2))
    fwhm = np.maximum(2.0 * np.sqrt(np.maximum(area, 1) / np.pi), 1.0)
    # a saturated core (no usable pixel at the centre): the peak's value is only the plateau's
    # level.  For a Gaussian, the plateau's radius r_p (level L) and the radius r_h where the
    # profile falls to L / 2 give sigma^2 = (r_h^2 - r_p^2) / (2 ln 2) and the hidden
    # amplitude L exp(r_p^2 / 2 sigma^2): a first guess on the wings' scale, not the plateau's
    # (started from the plateau the fit of a star saturated over tens of pixels can collapse
    # onto a needle)
    if core_lost.any():
        lost = np.flatnonzero(core_lost)
        at = np.searchsorted(sub, lost)  # their rows of near
        with np.errstate(invalid="ignore"):
            flat = (np.isfinite(stamps[lost]) & ~usable[lost]
                    & (stamps[lost] - bkg[lost, None, None] >= 0.97 * amp[lost, None, None]))
        n_flat = np.zeros(n, dtype=np.intp)
        n_flat[lost] = np.count_nonzero(flat & near[at], axis=(1, 2))
        r_p2, r_h2 = n_flat / np.pi, area / np.pi
        ok = core_lost & (n_flat >= 3) & (r_h2 > r_p2 + 0.5)
        sig2 = np.where(ok, (r_h2 - r_p2) / (2.0 * math.log(2.0)), 1.0)
        fwhm = np.where(ok, np.sqrt(sig2) * FWHM_PER_SIGMA, fwhm)
        amp = np.where(ok, amp * np.exp(np.minimum(r_p2 / (2.0 * sig2), math.log(1e4))), amp)
    p = np.zeros((n, model.n_params))
    p[:, 0] = bkg
    p[:, 2] = centre[:, 0]
    p[:, 3] = centre[:, 1]
    if image_psf:
        # flux: peak amplitude divided by the PSF's peak per unit flux
        p[:, 1] = amp / max(model.psf.max(), 1e-12)
        return p
    p[:, 1] = amp
    if isinstance(model, MoffatPSF):
        beta = model.fixed_beta if model.fixed_beta is not None else 2.5
        p[:, 7] = beta
        width = MoffatPSF.widths_from_fwhm(fwhm, np.full(n, beta))
    else:
        width = fwhm / FWHM_PER_SIGMA
    p[:, 4] = width
    p[:, 5] = width
    # pixel integration spreads the peak: a point model's amplitude is higher than the pixel value
    if model.sampling == "integrated":
        sig = np.maximum(fwhm / FWHM_PER_SIGMA, 0.3)
        p[:, 1] = amp * (1.0 + 1.0 / (12.0 * sig**2))
    return p
