"""A picture of the frame's own PSF: the PSF across a 3 x 3 grid of the field and its stars' stacked residual."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_frame_psf"]


def plot_frame_psf(psf: Any, path: str | Path, *, shape: tuple[int, int], residual: np.ndarray | None = None) -> Path:
    """Draw the PSF at nine places of the frame (log stretch, with its FWHM and roundness there) and,
    when given, the stacked residual of the stars it was built from.

    Parameters
    ----------
    psf : FramePSF
        The frame's PSF (:func:`psfkit.psf.empirical.build_frame_psf`).
    path : str or Path
        The PNG to write.
    shape : tuple of int
        The frame's (ny, nx).
    residual : ndarray, optional
        The stars' stacked residual (data minus model over flux), on the PSF's grid.

    Returns
    -------
    Path

    Examples
    --------
    >>> import tempfile, os
    >>> from psfkit.psf.empirical import FramePSF
    >>> r2 = ((np.arange(41) - 20.0) ** 2)[:, None] + ((np.arange(41) - 20.0) ** 2)[None, :]
    >>> g = np.exp(-r2 / (2 * 2.5**2)); g *= 4.0 / g.sum()
    >>> out = plot_frame_psf(FramePSF(g[None], 2, 0, (50.0, 50.0), (50.0, 50.0)),
    ...                      os.path.join(tempfile.mkdtemp(), "p.png"), shape=(101, 101))
    >>> out.exists()
    True
    """
    from psfkit._optional import require

    matplotlib = require("matplotlib", purpose="plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ny, nx = shape
    cols = 4 if residual is not None else 3
    fig, axes = plt.subplots(3, cols, figsize=(3.0 * cols, 9.0), squeeze=False)
    half = psf.half_size
    peak = float(psf.at(*psf.centre)[0].max())
    for i, fy in enumerate((0.9, 0.5, 0.1)):  # top row: the top of the frame
        for j, fx in enumerate((0.1, 0.5, 0.9)):
            x, y = fx * (nx - 1), fy * (ny - 1)
            grid = psf.at(x, y)[0]
            ax = axes[i, j]
            ax.imshow(np.log10(np.clip(grid / peak, 1e-5, None)), origin="lower", cmap="magma", vmin=-5, vmax=0,
                      extent=(-half, half, -half, half))
            s = psf.shape_at(x, y)
            ax.set_title(f"({x:.0f}, {y:.0f})  FWHM {s['fwhm']:.2f}  r {s['roundness']:.2f}", fontsize=8)
            ax.tick_params(labelsize=6)
    if residual is not None:
        lim = float(np.nanmax(np.abs(residual))) or 1.0
        for i in range(3):
            axes[i, 3].axis("off")
        ax = axes[1, 3]
        ax.axis("on")
        ax.imshow(residual, origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim, extent=(-half, half, -half, half))
        ax.set_title("stacked residual / PSF peak", fontsize=8)
        ax.tick_params(labelsize=6)
    fig.suptitle(f"the frame's PSF: {psf.n_stars} stars, oversampled x{psf.oversampling}, variation of degree "
                 f"{psf.degree} (log10 of the PSF over its peak)", fontsize=9)
    fig.tight_layout()
    from psfkit.viz.plots import save_figure

    return save_figure(fig, path, dpi=100)
