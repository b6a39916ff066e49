"""The optics inspector's picture: aberration mosaic, FWHM map with the fitted surface, elongation
vectors and the numbers (:func:`plot_inspection`); the focus run's V-curve (:func:`plot_v_curve`).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from psfkit.viz.plots import auto_stretch

__all__ = ["plot_inspection", "plot_v_curve"]

_MOSAIC = [["top_left", "top", "top_right"], ["left", "centre", "right"], ["bottom_left", "bottom", "bottom_right"]]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path | None) -> Path | bytes:
    plt = _pyplot()
    if path is None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        plt.close(fig)
        return buf.getvalue()
    out = Path(path)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def _fmt(v: Any, e: Any = None, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if e is None or (isinstance(e, float) and not math.isfinite(e)):
        return f"{v:.{digits}f}"
    return f"{v:.{digits}f} ± {e:.{digits}f}"


def plot_inspection(report: Any, data: np.ndarray, path: str | Path | None = None, *, stamp: int | None = None,
                    top_down: bool = False) -> Path | bytes:
    """Draw the optics report: the 3 x 3 aberration mosaic (enlarged stamps of a bright star from each
    corner, edge and the centre), the FWHM map (stars coloured by FWHM over the fitted surface),
    the elongation vectors and the numbers.

    Parameters
    ----------
    report : OpticsReport
        From :func:`psfkit.inspect_image`.
    data : 2-D array
        The frame's pixels.
    path : path, optional
        The PNG to write; None returns the PNG's bytes.
    stamp : int, optional
        Stamp size (px); default 6 x the centre FWHM (at least 15).
    top_down : bool
        Draw row 0 at the top (frames stored top-down).

    Returns
    -------
    Path or bytes
    """
    plt = _pyplot()
    d = report.to_dict()
    ny, nx = report.shape
    origin = "upper" if top_down else "lower"
    fig = plt.figure(figsize=(17, 7.5))
    grid = fig.add_gridspec(3, 7, width_ratios=[1, 1, 1, 0.2, 3.2, 0.6, 3.2], wspace=0.08, hspace=0.2,
                            left=0.02, right=0.99, top=0.9, bottom=0.12)
    half = (stamp or max(15, int(6 * (d.get("fwhm_center") or 3.0)))) // 2
    rows = _MOSAIC[::-1] if top_down else _MOSAIC
    for i, row in enumerate(rows):
        for j, name in enumerate(row):
            ax = fig.add_subplot(grid[i, j])
            ax.set_xticks([])
            ax.set_yticks([])
            z = report.zones[name]
            star = z.get("star")
            if star:
                cx, cy = int(round(star["x"])), int(round(star["y"]))
                cut = data[max(cy - half, 0): cy + half + 1, max(cx - half, 0): cx + half + 1]
                ax.imshow(auto_stretch(cut, low=5, high=99.9), origin=origin, cmap="gray", interpolation="nearest")
                ax.set_title(f"{name.replace('_', ' ')}: {_fmt(z['fwhm'])} px, e {_fmt(z['elongation'])}", fontsize=7)
            else:
                ax.set_title(f"{name.replace('_', ' ')}: no star", fontsize=7)
    # the FWHM map: the fitted surface, the stars on it
    stars = report.stars
    x, y = np.asarray(stars["x_fit"], float), np.asarray(stars["y_fit"], float)
    fw = np.asarray(stars["fwhm"], float)
    used = np.asarray(stars["used_in_fit"], bool)
    gx, gy = np.meshgrid(np.linspace(0, nx - 1, 60), np.linspace(0, ny - 1, 40))
    surf = report.surface.predict(gx, gy)
    lo, hi = np.nanpercentile(np.concatenate([surf.ravel(), fw[used]]), [2, 98])
    ax = fig.add_subplot(grid[:, 4])
    im = ax.imshow(surf, origin=origin, extent=(0, nx, 0, ny) if not top_down else (0, nx, ny, 0), cmap="viridis",
                   vmin=lo, vmax=hi, aspect="equal")
    cs = ax.contour(gx, gy, surf, levels=8, colors="white", linewidths=0.6)
    ax.clabel(cs, fontsize=6, fmt="%.2f")
    ax.scatter(x[used], y[used], c=fw[used], cmap="viridis", vmin=lo, vmax=hi, s=14, edgecolors="k", linewidths=0.3)
    ax.scatter(x[~used], y[~used], marker="x", c="red", s=12, linewidths=0.8, label="rejected")
    ax.set_xlim(0, nx)
    ax.set_ylim((ny, 0) if top_down else (0, ny))
    ax.set_title("FWHM (px): fitted surface and stars", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    # the elongation vectors
    ax = fig.add_subplot(grid[:, 6])
    el = np.asarray(stars["elongation"], float)
    th = np.radians(np.asarray(stars["shape_angle"], float))
    ok = np.isfinite(el) & np.isfinite(th)
    length = (el[ok] - 1.0) * 0.6 * min(nx, ny)
    u, v = length * np.cos(th[ok]), length * np.sin(th[ok])
    ax.quiver(x[ok], y[ok], u, v, angles="xy", scale_units="xy", scale=1, headwidth=0, headlength=0,
              headaxislength=0, pivot="middle", color="C3", width=0.004)
    ax.set_xlim(0, nx)
    ax.set_ylim((ny, 0) if top_down else (0, ny))
    ax.set_aspect("equal")
    ax.set_title(f"elongation (major axis; length ∝ e - 1): {d['elongation_pattern']}", fontsize=9)
    text = (
        f"FWHM centre {_fmt(d['fwhm_center'], d['fwhm_center_err'])} px    "
        f"gradient x {_fmt(d['gradient_x'], d['gradient_x_err'], 3)}, "
        f"y {_fmt(d['gradient_y'], d['gradient_y_err'], 3)} px/1000 px    "
        f"curvature {_fmt(d['curvature'], d['curvature_err'])} px\n"
        f"tilt {_fmt(d['tilt_percent'], d['tilt_percent_err'], 1)} % "
        f"towards {_fmt(d['tilt_direction_deg'], None, 0)}°    "
        f"curvature {_fmt(d['curvature_percent'], d['curvature_percent_err'], 1)} %    "
        f"stars {d['n_used']}/{d['n_stars']}, scatter {_fmt(d['scatter'], None, 3)} px    "
        f"elongation: {d['elongation_pattern']} ({d['elongation_pattern_meaning']})"
    )
    fig.text(0.01, 0.005, text, fontsize=9, family="monospace", va="bottom")
    name = Path(report.image_path).name if report.image_path else "frame"
    fig.suptitle(f"psfkit inspect: {name} ({nx} x {ny})", fontsize=11)
    return _save(fig, path)


def plot_v_curve(result: Any, path: str | Path | None = None) -> Path | bytes:
    """Draw a focus run: median HFR and FWHM per focuser position with errors, the fitted
    hyperbolas and the best position with its error.

    Parameters
    ----------
    result : FocusResult
        From :func:`psfkit.focus_run`.
    path : path, optional
        The PNG to write; None returns the PNG's bytes.
    """
    plt = _pyplot()
    t = result.frames
    fig, ax = plt.subplots(figsize=(9, 5.5))
    pos = np.asarray(t["position"], float)
    grid = np.linspace(pos.min(), pos.max(), 300)
    for col, colour, label in (("hfr", "C0", "HFR"), ("fwhm", "C1", "FWHM")):
        val = np.asarray(t[col], float)
        err = np.asarray(t[col + "_err"], float)
        ok = np.isfinite(val)
        if ok.any():
            ax.errorbar(pos[ok], val[ok], yerr=np.nan_to_num(err[ok]), fmt="o", color=colour, label=f"{label} (median)")
        curve = result.curves.get(col)
        if curve is not None:
            ax.plot(grid, curve.predict(grid), "-", color=colour, lw=1, label=f"{label} hyperbola")
    b = result.best_position
    if b is not None and math.isfinite(b):
        ax.axvline(b, color="k", lw=0.8)
        ax.axvspan(b - result.best_position_err, b + result.best_position_err, color="k", alpha=0.1)
        ax.set_title(f"best focus {b:.0f} ± {result.best_position_err:.0f} steps (from the {result.best_from} curve)")
    ax.set_xlabel(f"focuser position ({result.position_key})")
    ax.set_ylabel("px")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
