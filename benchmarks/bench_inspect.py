"""The optics inspector's cost on the 24 MP benchmark frame (bench_frame.py's 6000x4000 frame, ~5,000 stars).

Target: ``inspect`` adds at most 20 % to ``find_stars``'s time (a few % expected: the inspector
measures no star again, it reads find's list and takes windowed moments of each star's pixels).
Times in one run, best of N, with ``find_stars`` and ``inspect_image`` (find + inspector)
alternating so that a busy machine slows both alike: find_stars alone (its hfr column included,
that column's own cost timed apart), the inspector on find's list (windowed moments of every
star, the surface fit, zones, pattern), the whole ``inspect_image``, the report PNG, and one
``scipy.ndimage.gaussian_filter`` pass over the frame as a floor.  Writes
benchmarks/results/bench_inspect.md (not with ``--small``).

Usage: .venv/bin/python benchmarks/bench_inspect.py [--small] [--repeat N]
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

import psfkit
from psfkit.analysis.inspect import inspect_image, inspect_stars
from psfkit.datasets.simulate import simulate_field
from psfkit.detect.background import estimate_background

HERE = Path(__file__).resolve().parent
SHAPE = (4000, 6000)
N_STARS = 5000
FWHM = 3.5


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def best_of(fn, repeat):
    best, out = np.inf, None
    for _ in range(repeat):
        t, out = timed(fn)
        best = min(best, t)
    return best, out


def hfr_column_time(stars, img, repeat):
    """The hfr column's own cost: find's step on find's list (NaN where find's private step moved)."""
    from psfkit.detect import find as find_module

    add_hfr = getattr(find_module, "_add_hfr", None)
    if add_hfr is None:
        return float("nan")
    bkg = estimate_background(img)
    try:
        return best_of(lambda: add_hfr(stars.copy(), img, bkg, FWHM, None), repeat)[0]
    except TypeError:  # its signature changed
        return float("nan")


def main() -> None:
    small = "--small" in sys.argv
    repeat = int(sys.argv[sys.argv.index("--repeat") + 1]) if "--repeat" in sys.argv else 3
    shape = (1000, 1500) if small else SHAPE
    n = N_STARS // 16 if small else N_STARS
    img, _ = simulate_field(shape, n, seed=1, fwhm=FWHM, roundness=0.9, flux_range=(500, 5e5),
                            background=300.0, gradient=0.3, gain=1.5, read_noise=6.0, edge=10)
    img = img.astype(np.float32)
    opts = dict(gain=1.5, read_noise=6.0)
    psfkit.find_stars(img[:400, :400], **opts)  # warm-up (compiled kernels)
    inspect_image(img[:1000, :1000], **opts)

    t_find = t_all = np.inf
    stars = None
    for _ in range(repeat):  # alternating, best of each
        t, stars = timed(lambda: psfkit.find_stars(img, **opts))
        t_find = min(t_find, t)
        t, _ = timed(lambda: inspect_image(img, **opts))
        t_all = min(t_all, t)
    t_insp, report = best_of(lambda: inspect_stars(stars, img), repeat)
    t_smooth, _ = best_of(lambda: ndimage.gaussian_filter(img, 1.0), repeat)
    t_hfr = hfr_column_time(stars, img, repeat)
    from psfkit.viz.inspect import plot_inspection

    t_png, _ = best_of(lambda: plot_inspection(report, img, None), 2)  # the first pays matplotlib's import
    d = report.to_dict()

    def fmt(v, f="%.3f"):
        return "" if not np.isfinite(v) else f % v

    rows = [
        ("scipy gaussian_filter (floor, 1 pass)", t_smooth),
        ("psfkit find_stars (hfr column included)", t_find),
        ("  of which the hfr column", t_hfr),
        ("inspector on find's list (moments, surface fit, zones, pattern)", t_insp),
        ("psfkit inspect_image (find + inspector)", t_all),
        ("report PNG (mosaic, FWHM map, vectors, numbers)", t_png),
    ]
    lines = [
        "## Optics inspector: its cost over find",
        "",
        f"bench_frame's simulated {shape[1]}x{shape[0]} float32 frame, {len(stars)} stars found, "
        f"{d['n_used']} in the surface fit. Times: best of {repeat}, find_stars and inspect_image alternating "
        f"in one run. {dt.date.today()}, {os.cpu_count()} cores.",
        "",
        "| step | time (s) | x find_stars | x floor |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {name} | {fmt(t)} | {fmt(t / t_find, '%.3f')} | {fmt(t / t_smooth, '%.2f')} |" for name, t in rows]
    lines += [
        "",
        f"inspect adds {100 * t_insp / t_find:.1f} % to find_stars's time (the inspector on find's list; "
        f"target <= 20 %); end to end, inspect_image / find_stars = {t_all / t_find:.3f} (the same cost plus the "
        f"two runs' timing noise); inspect_image / smoothing pass: {t_all / t_smooth:.1f}. "
        f"The flat simulated field gives tilt {d['tilt_percent']:.2f} +- {d['tilt_percent_err']:.2f} %, "
        f"curvature {d['curvature_percent']:.2f} +- {d['curvature_percent_err']:.2f} %, "
        f"elongation pattern {d['elongation_pattern']}.",
    ]
    text = "\n".join(lines)
    print(text)
    if not small:
        (HERE / "results").mkdir(exist_ok=True)
        (HERE / "results" / "bench_inspect.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
