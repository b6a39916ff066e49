"""Pictures with matplotlib: an overlay of the stars on the frame, and a FWHM/roundness field map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.table import Table

from psfkit.psf.models import FWHM_PER_SIGMA

__all__ = ["auto_stretch", "plot_overlay", "plot_fwhm_map"]


def auto_stretch(data: np.ndarray, *, low: float = 0.5, high: float = 99.8) -> np.ndarray:
    """Percentile + asinh stretch to [0, 1] (NaN -> 0)."""
    finite = np.isfinite(data)
    sample = data[finite][:: max(1, finite.sum() // 500000)]
    lo, hi = np.percentile(sample, [low, high]) if sample.size else (0.0, 1.0)
    x = np.clip((np.where(finite, data, lo) - lo) / max(hi - lo, 1e-30), 0, 1)
    return np.arcsinh(10 * x) / np.arcsinh(10)


def _figure(shape, scale=1.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ny, nx = shape
    w = min(14.0, max(6.0, nx / 100 * scale))
    return plt, plt.figure(figsize=(w, w * ny / nx + 0.4), dpi=100)


def _ring_scale(table: Table) -> np.ndarray:
    """Per-star factor turning the FWHM axes into the drawn ellipse's axes.

    At least 3 FWHM across (9 px minimum); a bright star's ring clears its stretched
    disk: 1.3 x the radius where its Gaussian profile falls to twice the noise, plus 3 px;
    at most 60 px across, so that a wild rejected fit does not cross the frame.
    """
    fx = np.nan_to_num(np.asarray(table["fwhm_x"], dtype=float), nan=3.0)
    fx = np.where(fx > 0, fx, 3.0)
    diameter = np.maximum(3.0 * fx, 9.0)
    noise = table.meta.get("noise")
    if noise and "amplitude" in table.colnames:
        amp = np.nan_to_num(np.asarray(table["amplitude"], dtype=float), nan=0.0)
        ratio = np.maximum(amp / (2.0 * float(noise)), 1.0)
        r_visible = 1.3 * fx / FWHM_PER_SIGMA * np.sqrt(2.0 * np.log(ratio)) + 3.0  # 1.3: real wings
        diameter = np.maximum(diameter, 2.0 * r_visible)
    return np.minimum(diameter, 60.0) / fx


def plot_overlay(data: np.ndarray, table: Table, path: str | Path, *, show_rejected: bool = True,
                 top_down: bool | None = None) -> Path:
    """Auto-stretched frame with an ellipse (FWHM axes and angle) on every star; rejected ones in red.

    Parameters
    ----------
    data : ndarray
        The frame.
    table : Table
        A star list (``find_stars``); with ``accepted`` the rejected candidates are drawn in red.
    path : str or Path
        The PNG to write.
    show_rejected : bool
        Draw the rejected candidates.
    top_down : bool, optional
        Row 0 is the top of the picture (TIFF/PNG, FITS with ROWORDER=TOP-DOWN); default
        from ``table.meta["roworder"]``, else bottom-up (FITS).

    Returns
    -------
    Path
    """
    from matplotlib.patches import Ellipse

    if top_down is None:
        top_down = str(table.meta.get("roworder", "")).upper() == "TOP-DOWN"
    plt, fig = _figure(data.shape)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.imshow(auto_stretch(data), origin="upper" if top_down else "lower", cmap="gray", interpolation="nearest")
    accepted = np.asarray(table["accepted"], bool) if "accepted" in table.colnames else np.ones(len(table), bool)
    factor = _ring_scale(table) if len(table) else np.zeros(0)
    for k, (row, ok) in enumerate(zip(table, accepted)):
        if not ok and not show_rejected:
            continue
        fx, fy = float(row["fwhm_x"]), float(row["fwhm_y"])
        if not (np.isfinite(fx) and np.isfinite(fy)) or fx <= 0:
            fx = fy = 3.0
        ax.add_patch(Ellipse((float(row["x_fit"]), float(row["y_fit"])), factor[k] * fx, factor[k] * fy,
                             angle=float(np.nan_to_num(row["angle"])), fill=False,
                             color="#33ff66" if ok else "#ff4040", lw=0.8))
    ax.set_xlim(-0.5, data.shape[1] - 0.5)
    if top_down:
        ax.set_ylim(data.shape[0] - 0.5, -0.5)
    else:
        ax.set_ylim(-0.5, data.shape[0] - 0.5)
    ax.axis("off")
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_fwhm_map(table: Table, shape: tuple[int, int], path: str | Path, *, cells: int = 6) -> Path:
    """FWHM and roundness across the frame (median per cell) with the stars' values scattered on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "accepted" in table.colnames:
        table = table[np.asarray(table["accepted"], bool)]
    ny, nx = shape
    x, y = np.asarray(table["x_fit"]), np.asarray(table["y_fit"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5 * ny / nx + 1))
    for ax, name, cmap in zip(axes, ["fwhm", "roundness"], ["viridis", "magma"]):
        v = np.asarray(table[name], dtype=float)
        grid = np.full((cells, cells), np.nan)
        gx = np.clip((x / nx * cells).astype(int), 0, cells - 1)
        gy = np.clip((y / ny * cells).astype(int), 0, cells - 1)
        for i in range(cells):
            for j in range(cells):
                sel = (gy == i) & (gx == j) & np.isfinite(v)
                if sel.sum() >= 3:
                    grid[i, j] = np.median(v[sel])
        im = ax.imshow(grid, origin="lower", extent=(0, nx, 0, ny), cmap=cmap, aspect="equal")
        ax.scatter(x, y, c=v, cmap=cmap, s=8, edgecolors="k", linewidths=0.2, vmin=np.nanmin(grid), vmax=np.nanmax(grid))
        fig.colorbar(im, ax=ax, shrink=0.8, label=f"{name} (median per cell)")
        ax.set_title(f"{name}: median {np.nanmedian(v):.3f}")
        ax.set_xlabel("x (px)")
        ax.set_ylabel("y (px)")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
