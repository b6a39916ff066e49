"""Background and noise of a frame: a sigma-clipped mesh, interpolated to every pixel.

The frame is cut into square cells (64 px by default); each cell's level is a
3-sigma-clipped estimate over a regular subsample of its pixels (SExtractor's
mode 2.5 median - 1.5 mean when the cell is not crowded, else the median), the
map of cells is median-filtered (3 x 3, around a robust quadratic surface so
that vignetting is not flattened) and interpolated by a cubic spline between
cell centres.  Gradients and vignetting larger than a cell are followed; stars
and cosmic rays are clipped.  The noise is the clipped robust sigma of the frame
minus the map.  NaN and masked pixels are ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from psfkit.detect._kernels import spline_rows
from psfkit.errors import PsfkitError
from psfkit.utils import robust_sigma

__all__ = ["Background", "estimate_background", "noise_map", "noise_cells", "noise_at"]


@dataclass(frozen=True)
class Background:
    """Background map and noise of a frame.

    Attributes
    ----------
    level : ndarray
        Background per pixel (same shape as the image), from a sigma-clipped mesh.
    noise : float
        Robust standard deviation of a background pixel (data units).
    mesh : int
        Mesh cell size in pixels.
    median : float
        Median of the cells' background levels (a one-number summary of ``level``).

    Examples
    --------
    >>> from psfkit.datasets.simulate import simulate_field
    >>> data, truth = simulate_field((128, 128), 10, background=200.0, seed=1)
    >>> background = estimate_background(data)
    >>> background.level.shape, abs(background.median - 200.0) < 2.0
    ((128, 128), True)
    """

    level: np.ndarray
    noise: float
    mesh: int
    median: float = float("nan")


def _quantile_sorted(s: np.ndarray, lo: np.ndarray, hi: np.ndarray, q: float) -> np.ndarray:
    """The q-quantile of each row's sorted range s[..., lo:hi] (linear interpolation)."""
    pos = lo + q * np.maximum(hi - lo - 1, 0)
    i0 = np.floor(pos).astype(np.intp)
    i1 = np.minimum(i0 + 1, np.maximum(hi - 1, 0))
    frac = pos - i0
    v0 = np.take_along_axis(s, i0[..., None], -1)[..., 0]
    v1 = np.take_along_axis(s, i1[..., None], -1)[..., 0]
    return v0 + frac * (v1 - v0)


def _searchsorted_rows(s: np.ndarray, values: np.ndarray, lo: np.ndarray, hi: np.ndarray, *, right: bool) -> np.ndarray:
    """Per-row np.searchsorted in the sorted ranges s[..., lo:hi] (a vectorised bisection)."""
    a, b = lo.copy(), hi.copy()
    for _ in range(int(np.ceil(np.log2(s.shape[-1] + 1))) + 1):
        active = a < b
        if not active.any():
            break
        mid = (a + b) // 2
        v = np.take_along_axis(s, np.minimum(mid, s.shape[-1] - 1)[..., None], -1)[..., 0]
        go_right = (v <= values) if right else (v < values)
        a = np.where(active & go_right, mid + 1, a)
        b = np.where(active & ~go_right, mid, b)
    return a


def _clipped_stats(cells: np.ndarray, n_iter: int = 5, nsigma: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Sigma-clipped background estimate and robust sigma along the last axis, NaN ignored.

    Each row is sorted once; a clipping pass keeps a contiguous range of the sorted row,
    so medians and quartiles are index look-ups and means come from one cumulative sum.
    sigma = interquartile range / 1.349; the estimate is SExtractor's mode
    (2.5 median - 1.5 mean) unless the mean and median differ by more than 0.3 sigma
    (a crowded cell), then the median.
    """
    s = np.sort(cells, axis=-1)  # NaN sorts last
    lo = np.zeros(s.shape[:-1], dtype=np.intp)
    hi = np.sum(np.isfinite(s), axis=-1).astype(np.intp)
    for _ in range(n_iter):
        med = _quantile_sorted(s, lo, hi, 0.5)
        sig = (_quantile_sorted(s, lo, hi, 0.75) - _quantile_sorted(s, lo, hi, 0.25)) / 1.349
        new_lo = _searchsorted_rows(s, med - nsigma * sig, lo, hi, right=False)
        new_hi = _searchsorted_rows(s, med + nsigma * sig, lo, hi, right=True)
        if np.array_equal(new_lo, lo) and np.array_equal(new_hi, hi):
            break
        lo, hi = new_lo, new_hi
    med = _quantile_sorted(s, lo, hi, 0.5)
    sig = (_quantile_sorted(s, lo, hi, 0.75) - _quantile_sorted(s, lo, hi, 0.25)) / 1.349
    csum = np.concatenate([np.zeros(s.shape[:-1] + (1,), dtype=np.float32),
                           np.cumsum(np.nan_to_num(s, nan=0.0), axis=-1, dtype=np.float32)], -1)
    n = np.maximum(hi - lo, 1)
    mean = (np.take_along_axis(csum, hi[..., None], -1) - np.take_along_axis(csum, lo[..., None], -1))[..., 0] / n
    mode = np.where(np.abs(mean - med) < 0.3 * sig, 2.5 * med - 1.5 * mean, med)
    empty = hi - lo < 3
    mode = np.where(empty, np.nan, mode)
    sig = np.where(empty, np.nan, sig)
    return mode, sig


def _spline_coefficients(values: np.ndarray) -> np.ndarray:
    """Piecewise-cubic coefficients, shape (4, g - 1, ...) highest power first, of the
    not-a-knot cubic spline through ``values`` (g >= 4 samples along the first axis) at the
    unit-spaced knots 0 .. g - 1: the spline of ``scipy.interpolate.CubicSpline(...,
    bc_type="not-a-knot")``, its ``c`` array (same equations, solved here in numpy so that
    the detection path does not import scipy.interpolate, about 0.2 s of start-up).
    """
    y = np.asarray(values, dtype=np.float64)
    g = y.shape[0]
    slope = np.diff(y, axis=0)
    # the knots' first derivatives s: s[i-1] + 4 s[i] + s[i+1] = 3 (slope[i-1] + slope[i]) inside;
    # not-a-knot ends (third derivative continuous at the second and the last-but-one knot).
    # The system is tridiagonal: solved by the Thomas algorithm in O(g) memory (a dense (g, g)
    # matrix took 1.25 GB for a 200000 x 1 strip's 12,500 cells)
    lower = np.ones(g)  # a[i, i-1]
    diag = np.full(g, 4.0)
    upper = np.ones(g)  # a[i, i+1]
    diag[0], upper[0] = 1.0, 2.0
    lower[-1], diag[-1] = 2.0, 1.0
    b = np.empty_like(y)
    b[1:-1] = 3.0 * (slope[:-1] + slope[1:])
    b[0] = (5.0 * slope[0] + slope[1]) / 2.0
    b[-1] = (slope[-2] + 5.0 * slope[-1]) / 2.0
    cp = np.empty(g)
    dp = np.empty_like(b)
    cp[0] = upper[0] / diag[0]
    dp[0] = b[0] / diag[0]
    for i in range(1, g):
        m = diag[i] - lower[i] * cp[i - 1]
        cp[i] = upper[i] / m
        dp[i] = (b[i] - lower[i] * dp[i - 1]) / m
    s = np.empty_like(b)
    s[-1] = dp[-1]
    for i in range(g - 2, -1, -1):
        s[i] = dp[i] - cp[i] * s[i + 1]
    t = s[:-1] + s[1:] - 2.0 * slope
    return np.stack([t, slope - s[:-1] - t, s[:-1], y[:-1]])


def _median3(values: np.ndarray) -> np.ndarray:
    """3 x 3 median filter with the edge repeated (``scipy.ndimage.median_filter(values, size=3,
    mode="nearest")``; the cell map is small, so numpy's median over the nine shifts is enough).
    """
    padded = np.pad(np.asarray(values, dtype=np.float64), 1, mode="edge")
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, (3, 3)), axis=(-2, -1))


def _interpolation_weights(n: int, g: int, cell: int) -> np.ndarray:
    """(n, g) weights interpolating g cell centres (cells of ``cell`` px from pixel 0) onto n pixels.

    A cubic spline through the centres (SExtractor's choice: bilinear interpolation
    cuts the chord under a curved sky, biasing vignetted frames by about
    f'' cell^2 / 8), linear for fewer than 4 cells; beyond the outermost centres
    (at most about half a cell) it continues linearly along its end slope.
    """
    pos = (np.arange(n) + 0.5) / cell - 0.5
    if g == 1:
        return np.ones((n, 1), dtype=np.float32)
    if g < 4:
        w = np.zeros((n, g), dtype=np.float32)
        lo = np.clip(np.floor(pos).astype(int), 0, g - 2)
        frac = (pos - lo).astype(np.float32)
        w[np.arange(n), lo] += 1 - frac
        w[np.arange(n), lo + 1] += frac
        return w
    return _interpolate_axis0(np.eye(g), n, cell).astype(np.float32)  # the spline through each unit vector


def _interpolate_axis0(values: np.ndarray, n: int, cell: int) -> np.ndarray:
    """``_interpolation_weights(n, g, cell) @ values`` without the (n, g) matrix: the same spline
    evaluated directly (O(n x columns) memory; a 200000 x 1 strip has 12500 cells per column).
    """
    g = values.shape[0]
    if g < 4:
        return _interpolation_weights(n, g, cell).astype(np.float64) @ values
    coef = _spline_coefficients(values)  # (4, g - 1, columns)
    pos = (np.arange(n) + 0.5) / cell - 0.5
    inside = np.clip(pos, 0.0, g - 1.0)
    idx = np.clip(np.floor(inside).astype(np.intp), 0, g - 2)
    t = (inside - idx)[:, None]
    ci = coef[:, idx]  # (4, n, columns)
    value = ((ci[0] * t + ci[1]) * t + ci[2]) * t + ci[3]
    slope = (3.0 * ci[0] * t + 2.0 * ci[1]) * t + ci[2]
    return value + (pos - inside)[:, None] * slope  # linear beyond the end centres, along the end slope


def _level_map(mode: np.ndarray, ny: int, nx: int, cy: int, cx: int) -> np.ndarray:
    """The cell map interpolated to every pixel (float32): rows by the weight matrix of
    :func:`_interpolation_weights`, then along each row the same cubic spline evaluated
    piecewise (a dense (ny, gx) x (gx, nx) product costs gx multiply-adds per pixel; this
    costs four).
    """
    gy, gx = mode.shape
    rows = _interpolate_axis0(mode.astype(np.float64), ny, cy)  # (ny, gx): memory follows the pixels, not gy x ny
    if gx < 4:
        return (rows @ _interpolation_weights(nx, gx, cx).T.astype(np.float64)).astype(np.float32)
    coef = _spline_coefficients(rows.T)  # (4, gx - 1, ny)
    pos = (np.arange(nx) + 0.5) / cx - 0.5
    inside = np.clip(pos, 0.0, gx - 1.0)
    idx = np.clip(np.floor(inside).astype(np.intp), 0, gx - 2)
    t = inside - idx
    dt = pos - inside  # beyond the end centres: linear along the end slope
    basis = np.stack([t**3 + 3 * t**2 * dt, t**2 + 2 * t * dt, t + dt, np.ones_like(t)])
    return spline_rows(np.transpose(coef, (2, 1, 0)), idx, basis)


def _filter_cells(mode: np.ndarray) -> np.ndarray:
    """3 x 3 median filter of the cell map (cells spoilt by a bright star or galaxy take
    their neighbours' level), applied to the residual from a robust quadratic surface
    so that a smooth curvature (vignetting) is not flattened the way a plain median
    filter flattens the top of a dome.
    """
    gy, gx = mode.shape
    if gy < 3 or gx < 3:
        return _median3(mode)
    yy, xx = np.mgrid[0:gy, 0:gx].astype(float)
    yy, xx = yy / max(gy - 1, 1) - 0.5, xx / max(gx - 1, 1) - 0.5
    design = np.stack([np.ones_like(xx), xx, yy, xx * xx, xx * yy, yy * yy], axis=-1).reshape(-1, 6)
    values = mode.reshape(-1).astype(float)
    use = np.ones(values.size, dtype=bool)
    surface = np.full(values.size, np.median(values))
    for _ in range(3):
        if use.sum() < 12:
            break
        coef, *_ = np.linalg.lstsq(design[use], values[use], rcond=None)
        surface = design @ coef
        resid = values - surface
        mad = robust_sigma(resid[use])
        use = np.abs(resid) <= 3.0 * max(mad, 1e-12)
    surface = surface.reshape(gy, gx)
    return surface + _median3(mode - surface)


def estimate_background(data: np.ndarray, *, mesh: int | None = None, mask: np.ndarray | None = None) -> Background:
    """Mesh background with sigma clipping, smoothed and interpolated to every pixel.

    Parameters
    ----------
    data : ndarray
        The frame (NaN ignored).
    mesh : int, optional
        Cell size; default 64 px (smaller for small frames).
    mask : ndarray of bool, optional
        Pixels to ignore.

    Returns
    -------
    Background

    Examples
    --------
    A flat sky of 200 ADU, gain 1.5 e-/ADU and read noise 6 e- (4 ADU): the noise is
    sqrt(200 / 1.5 + 4^2) = 12.2 ADU.

    >>> from psfkit.datasets.simulate import simulate_field
    >>> data, truth = simulate_field((128, 128), 10, background=200.0, gain=1.5, read_noise=6.0, seed=1)
    >>> background = estimate_background(data)
    >>> abs(background.median - 200.0) < 2.0, 11.5 < background.noise < 13.0
    (True, True)
    """
    arr = np.asarray(data, dtype=np.float32)
    ny, nx = arr.shape
    if mesh is None:
        mesh = int(min(64, max(16, min(ny, nx) // 8)))
    if mask is not None:
        arr = np.where(mask, np.nan, arr)
    cells, cy, cx = _cell_samples(arr, mesh)
    gy, gx = cells.shape[:2]
    mode, sig = _clipped_stats(cells)
    good = np.isfinite(mode)
    if not good.any():
        raise PsfkitError("the background cannot be measured: no finite pixels")
    fill = np.nanmedian(mode)
    mode = np.where(good, mode, fill)
    mode = _filter_cells(mode)
    # spline interpolation between cell centres (no full-size coordinate grids: the only
    # full-size array made here is the map itself)
    level = _level_map(mode, ny, nx, cy, cx)
    # the noise from the frame minus the map, on a regular subsample (the cells' own
    # sigmas include the gradient across each cell)
    k = max(1, int(math.sqrt(ny * nx / 250_000)))
    resid = (arr[::k, ::k] - level[::k, ::k]).ravel()
    resid = resid[np.isfinite(resid)]
    noise = float("nan")
    if resid.size:
        med = float(np.median(resid))
        noise = robust_sigma(resid)
        clipped = resid[np.abs(resid - med) <= 3.0 * noise] if noise > 0 else resid
        if clipped.size > 10:
            q25, q75 = np.percentile(clipped, [25, 75])
            noise = float(q75 - q25) / 1.349
    if not np.isfinite(noise) or noise <= 0:
        noise = float(np.nanmedian(sig))
    if not np.isfinite(noise) or noise <= 0:
        noise = 1.0
    return Background(level=level, noise=noise, mesh=mesh, median=float(np.median(mode)))


def noise_map(data: np.ndarray, *, mesh: int) -> np.ndarray:
    """Local noise per pixel (float32): the clipped robust sigma of each mesh cell of ``data``
    (background-subtracted), the cell map median-filtered (3 x 3) and interpolated between
    cell centres.

    A galaxy, a nebula or a bright star's halo covers some cells and raises their sigma (their
    light is structure, not noise), so the sigma of the whole frame is inflated where they are
    large; the cells of empty sky keep the sky's own noise.  The detection threshold follows
    this map (SExtractor's RMS map from its background mesh): stars in the empty sky are found
    at the sky's noise, and a galaxy's knots are measured against its own structure.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> frame = rng.normal(0.0, 1.0, (256, 256))
    >>> frame[:, 128:] *= 3.0
    >>> m = noise_map(frame, mesh=32)
    >>> bool(0.8 < np.median(m[:, :96]) < 1.2), bool(2.5 < np.median(m[:, 160:]) < 3.5)
    (True, True)
    """
    ny, nx = np.shape(data)
    sig, cy, cx = noise_cells(data, mesh=mesh)
    out = _level_map(sig, ny, nx, cy, cx)
    return np.maximum(out, 0.2 * float(np.min(sig)), out=out)


def _cell_samples(arr: np.ndarray, mesh: int) -> tuple[np.ndarray, int, int]:
    """The frame cut into cells of about ``mesh`` px: (gy, gx, n) samples of each cell and the
    cells' size (rows, columns) in pixels.  Large cells are subsampled on a regular grid (~1000
    pixels per cell are enough for a median), taken as a strided view of the frame so that only
    the subsample is copied (a reshape of the cropped frame would copy all of it).
    """
    ny, nx = arr.shape
    gy, gx = max(1, ny // mesh), max(1, nx // mesh)
    cy, cx = ny // gy, nx // gx
    step = max(1, int(math.sqrt(cy * cx / 1024)))
    s0, s1 = arr.strides
    view = np.lib.stride_tricks.as_strided(
        arr, shape=(gy, gx, -(-cy // step), -(-cx // step)),
        strides=(cy * s0, cx * s1, step * s0, step * s1), writeable=False)
    return view.reshape(gy, gx, -1), cy, cx


def noise_cells(data: np.ndarray, *, mesh: int) -> tuple[np.ndarray, int, int]:
    """The cell map of :func:`noise_map` (clipped sigma per cell, 3 x 3 median-filtered) and the
    cells' size (rows, columns) in pixels; :func:`noise_at` evaluates it anywhere without making
    a frame-sized map.
    """
    cells, cy, cx = _cell_samples(np.asarray(data, dtype=np.float32), mesh)
    gy, gx = cells.shape[:2]
    _, sig = _clipped_stats(cells)
    good = np.isfinite(sig) & (sig > 0)
    if not good.any():
        return np.ones((gy, gx), dtype=np.float32), cy, cx
    sig = np.where(good, sig, np.median(sig[good]))
    return _median3(sig).astype(np.float32), cy, cx


def noise_at(cells: np.ndarray, cy: int, cx: int, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The cell map of :func:`noise_cells` at pixels (y, x): bilinear between cell centres
    (constant beyond the outermost), never below a fifth of the lowest cell.
    """
    gy, gx = cells.shape
    fy = np.clip((np.asarray(y, dtype=float) + 0.5) / cy - 0.5, 0.0, gy - 1.0)
    fx = np.clip((np.asarray(x, dtype=float) + 0.5) / cx - 0.5, 0.0, gx - 1.0)
    y0 = np.minimum(np.floor(fy).astype(np.intp), max(gy - 2, 0))
    x0 = np.minimum(np.floor(fx).astype(np.intp), max(gx - 2, 0))
    y1, x1 = np.minimum(y0 + 1, gy - 1), np.minimum(x0 + 1, gx - 1)
    ty, tx = fy - y0, fx - x0
    v = ((1 - ty) * (1 - tx) * cells[y0, x0] + (1 - ty) * tx * cells[y0, x1]
         + ty * (1 - tx) * cells[y1, x0] + ty * tx * cells[y1, x1])
    return np.maximum(v, 0.2 * float(np.min(cells)))
