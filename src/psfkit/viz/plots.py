"""Pictures with matplotlib: an overlay of the stars on the frame, and a FWHM/roundness field map."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table

from psfkit.io.outputs import atomic_output
from psfkit.psf.models import FWHM_PER_SIGMA

__all__ = ["auto_stretch", "map_cells", "plot_overlay", "plot_fwhm_map", "save_figure"]


def save_figure(fig: Any, path: str | Path, *, dpi: int | None = None) -> Path:
    """Write a matplotlib figure atomically (never onto an input: :func:`psfkit.io.outputs.atomic_output`)
    and close it.

    Examples
    --------
    >>> import os, tempfile
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> save_figure(plt.figure(), os.path.join(tempfile.mkdtemp(), "f.png")).exists()
    True
    """
    import matplotlib.pyplot as plt

    out = Path(path)
    try:
        with atomic_output(out) as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)
    return out


def auto_stretch(data: np.ndarray, *, low: float = 0.5, high: float = 99.8) -> np.ndarray:
    """Percentile + asinh stretch to [0, 1] (NaN -> 0).

    Examples
    --------
    >>> import numpy as np
    >>> stretched = auto_stretch(np.arange(10.0).reshape(2, 5))
    >>> float(stretched.min()), float(stretched.max())
    (0.0, 1.0)
    """
    finite = np.isfinite(data)
    sample = data[finite][:: max(1, finite.sum() // 500000)]
    lo, hi = np.percentile(sample, [low, high]) if sample.size else (0.0, 1.0)
    x = np.clip((np.where(finite, data, lo) - lo) / max(hi - lo, 1e-30), 0, 1)
    return np.arcsinh(10 * x) / np.arcsinh(10)


def _figure(shape, scale=1.0):
    from psfkit._optional import require

    matplotlib = require("matplotlib", purpose="plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ny, nx = shape
    w = min(14.0, max(6.0, nx / 100 * scale))
    # exactly the frame's aspect: an axes filling the figure leaves no blank strip
    return plt, plt.figure(figsize=(w, w * ny / nx), dpi=100)


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


def _top_down(table: Table, top_down: bool | None) -> bool:
    """Whether row 0 is the top of the picture: as asked, else from ``table.meta["roworder"]``."""
    if top_down is None:
        return str(table.meta.get("roworder", "")).upper() == "TOP-DOWN"
    return bool(top_down)


def plot_overlay(data: np.ndarray, table: Table, path: str | Path, *, show_rejected: bool = True,
                 top_down: bool | None = None) -> Path:
    """Auto-stretched frame with an ellipse (FWHM axes and angle) on every star; rejected ones in red.

    A rejected candidate whose fit has no usable shape (failed, or a drawn minor axis under 4 px or
    under 0.15 of the major: a wild fit's 54 x 0.1 px sliver) is marked by a dashed circle of 3 frame
    FWHM (at least 9 px) at its position instead.

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

    Examples
    --------
    >>> import psfkit, tempfile, os
    >>> img = psfkit.load_image(psfkit.sample_image_path())
    >>> stars = psfkit.find_stars(img)
    >>> out = plot_overlay(img.data, stars, os.path.join(tempfile.mkdtemp(), "overlay.png"))
    >>> out.suffix
    '.png'
    """
    from psfkit._optional import require

    patches = require("matplotlib.patches", purpose="plots")
    Circle, Ellipse = patches.Circle, patches.Ellipse

    top_down = _top_down(table, top_down)
    plt, fig = _figure(data.shape)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.imshow(auto_stretch(data), origin="upper" if top_down else "lower", cmap="gray", interpolation="nearest")
    accepted = np.asarray(table["accepted"], bool) if "accepted" in table.colnames else np.ones(len(table), bool)
    factor = _ring_scale(table) if len(table) else np.zeros(0)
    frame_fwhm = float(table.meta.get("frame_fwhm") or 3.0)
    marker = max(9.0, 3.0 * frame_fwhm)
    failed = np.zeros(len(table), bool)
    if "reject_reason" in table.colnames:
        failed = np.isin(np.asarray(table["reject_reason"], dtype=str), ["fit_failed", "center_moved"])
    for k, (row, ok) in enumerate(zip(table, accepted)):
        if not ok and not show_rejected:
            continue
        fx, fy = float(row["fwhm_x"]), float(row["fwhm_y"])
        x, y = float(row["x_fit"]), float(row["y_fit"])
        shapeless = not (np.isfinite(fx) and np.isfinite(fy)) or fx <= 0 or fy <= 0
        drawn_minor = factor[k] * fy if not shapeless else 0.0
        if not ok and (shapeless or failed[k] or drawn_minor < 4.0 or drawn_minor < 0.15 * factor[k] * fx
                       or not (np.isfinite(x) and np.isfinite(y))):
            # no usable shape: a marker where the candidate was (its fitted centre may have wandered)
            if "x_init" in table.colnames and (failed[k] or not (np.isfinite(x) and np.isfinite(y))):
                x, y = float(row["x_init"]), float(row["y_init"])
            ax.add_patch(Circle((x, y), marker / 2, fill=False, color="#ff4040", lw=0.8, ls="--"))
            continue
        if shapeless:
            fx = fy = 3.0
        ax.add_patch(Ellipse((x, y), factor[k] * fx, factor[k] * fy,
                             angle=float(np.nan_to_num(row["angle"])), fill=False,
                             color="#33ff66" if ok else "#ff4040", lw=0.8))
    ax.set_xlim(-0.5, data.shape[1] - 0.5)
    if top_down:
        ax.set_ylim(data.shape[0] - 0.5, -0.5)
    else:
        ax.set_ylim(-0.5, data.shape[0] - 0.5)
    ax.axis("off")
    return save_figure(fig, path)


def map_cells(n_stars: int, cells: int = 6, *, per_cell: int = 3) -> int:
    """Cells per side of a field map: at most ``cells``, few enough that a cell holds about
    ``per_cell`` stars on average (a sparse frame gets a coarser map, never an empty one).
    """
    return int(max(1, min(cells, np.floor(np.sqrt(max(n_stars, 0) / per_cell)))))


def plot_fwhm_map(table: Table, shape: tuple[int, int], path: str | Path, *, cells: int = 6,
                  top_down: bool | None = None) -> Path:
    """FWHM and roundness across the frame (median per cell) with the stars' values scattered on top.

    Parameters
    ----------
    table : Table
        A star list (its accepted stars are used), in the pixels of ``shape``.
    shape : (ny, nx)
        The frame's shape.
    path : str or Path
        The PNG to write.
    cells : int
        Cells per side at most; fewer on a sparse frame (:func:`map_cells`: about 3 stars per
        cell on average), and a cell with fewer than 3 stars is left blank (said in the title).
    top_down : bool, optional
        Row 0 at the top, as :func:`plot_overlay` draws it; default from ``table.meta["roworder"]``.

    Returns
    -------
    Path

    Raises
    ------
    PsfkitError
        With fewer than 3 stars (no median to map).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import psfkit
    >>> image = psfkit.load_image(psfkit.sample_image_path())
    >>> stars = psfkit.find_stars(image)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = psfkit.plot_fwhm_map(stars, image.data.shape, Path(folder) / "fwhm.png")
    ...     print(path.name, path.stat().st_size > 0)
    fwhm.png True
    """
    from psfkit._optional import require

    matplotlib = require("matplotlib", purpose="plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from psfkit.errors import PsfkitError

    top_down = _top_down(table, top_down)
    if "accepted" in table.colnames:
        table = table[np.asarray(table["accepted"], bool)]
    if len(table) < 3:
        raise PsfkitError(f"a field map needs at least 3 stars, the list has {len(table)}")
    ny, nx = shape
    cells = map_cells(len(table), cells)
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
        finite = np.isfinite(v)
        filled = np.isfinite(grid)
        # one colour scale for the cells and the stars: the stars' 5-95 % range and every cell
        ref = np.concatenate([np.percentile(v[finite], [5, 95]) if finite.any() else [], grid[filled]])
        lo, hi = (float(ref.min()), float(ref.max())) if ref.size else (0.0, 1.0)
        # row i of the grid covers y in [i ny / cells, (i + 1) ny / cells): drawn the way up the overlay is
        extent = (0, nx, ny, 0) if top_down else (0, nx, 0, ny)
        im = ax.imshow(grid, origin="upper" if top_down else "lower", extent=extent, cmap=cmap, aspect="equal",
                       vmin=lo, vmax=hi)
        ax.scatter(x[finite], y[finite], c=v[finite], cmap=cmap, s=8, edgecolors="k", linewidths=0.2,
                   vmin=lo, vmax=hi)
        ax.set_xlim(0, nx)
        ax.set_ylim((ny, 0) if top_down else (0, ny))
        fig.colorbar(im, ax=ax, shrink=0.8, label=f"{name} (median per cell)")
        blank = int((~filled).sum())
        note = f"{cells}x{cells} cells" + (f", {blank} blank (< 3 stars)" if blank else "")
        ax.set_title(f"{name}: median {np.median(v[finite]) if finite.any() else float('nan'):.3f}\n"
                     f"{len(table)} stars, {note}", fontsize=10)
        ax.set_xlabel("x (px)")
        ax.set_ylabel("y (px)" + (", row 0 at the top" if top_down else ""))
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)
