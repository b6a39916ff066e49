"""The optics inspector's cost on the 24 MP benchmark frame (bench_frame.py's 6000x4000 frame, ~5,000 stars).

Target: ``inspect`` adds at most 20 % to ``find_stars``'s time.  Times, best of N in one run:
find_stars alone (its hfr column included; the column's own cost is timed apart), then the
inspector on find's star list (windowed moments of every star, the surface fit, zones, pattern),
the whole ``inspect_image`` (find + inspector), and the report PNG.  Writes
benchmarks/results/bench_inspect.md.

Usage: .venv/bin/python benchmarks/bench_inspect.py [--small] [--repeat N]
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from pathlib import Path

import numpy as np

import psfkit
from psfkit.analysis.inspect import inspect_image, inspect_stars
from psfkit.datasets.simulate import simulate_field
from psfkit.detect.background import estimate_background

HERE = Path(__file__).resolve().parent
SHAPE = (4000, 6000)
N_STARS = 5000
FWHM = 3.5


def best_of(fn, repeat):
    best, out = np.inf, None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    small = "--small" in sys.argv
    repeat = int(sys.argv[sys.argv.index("--repeat") + 1]) if "--repeat" in sys.argv else 3
    shape = (1000, 1500) if small else SHAPE
    n = N_STARS // 16 if small else N_STARS
    img, truth = simulate_field(shape, n, seed=1, fwhm=FWHM, roundness=0.9, flux_range=(500, 5e5),
                                background=300.0, gradient=0.3, gain=1.5, read_noise=6.0, edge=10)
    img = img.astype(np.float32)
    opts = dict(gain=1.5, read_noise=6.0)
    psfkit.find_stars(img[:400, :400], **opts)  # warm-up (compiled kernels)
    t_find, stars = best_of(lambda: psfkit.find_stars(img, **opts), repeat)
    t_insp, report = best_of(lambda: inspect_stars(stars, img), repeat)
    t_all, _ = best_of(lambda: inspect_image(img, **opts), repeat)
    from psfkit.detect import find as find_module
    from psfkit.viz.inspect import plot_inspection

    bkg = estimate_background(img)
    t_hfr, _ = best_of(lambda: find_module._add_hfr(stars.copy(), img, bkg, FWHM, None), repeat)
    t_png, _ = best_of(lambda: plot_inspection(report, img, None), 2)  # the first pays matplotlib's import
    d = report.to_dict()
    rows = [
        ("find_stars (hfr column included)", t_find, 1.0),
        ("  of which the hfr column", t_hfr, t_hfr / t_find),
        ("inspector on find's list (moments, surface fit, zones, pattern)", t_insp, t_insp / t_find),
        ("inspect_image (find + inspector)", t_all, t_all / t_find),
        ("report PNG (mosaic, map, vectors)", t_png, t_png / t_find),
    ]
    lines = [f"# bench_inspect: {shape[1]}x{shape[0]}, {len(stars)} stars, {os.cpu_count()} cores, "
             f"{dt.date.today()}, best of {repeat}", "",
             "| step | s | / find_stars |", "|---|---|---|"]
    lines += [f"| {name} | {t:.3f} | {r:.3f} |" for name, t, r in rows]
    lines += ["", f"inspect_image / find_stars = {t_all / t_find:.3f} (target <= 1.2); the flat simulated field gives "
              f"tilt {d['tilt_percent']:.2f} +- {d['tilt_percent_err']:.2f} %, curvature "
              f"{d['curvature_percent']:.2f} +- {d['curvature_percent_err']:.2f} %, pattern {d['elongation_pattern']}."]
    text = "\n".join(lines)
    print(text)
    out = HERE / "results" / ("bench_inspect_small.md" if small else "bench_inspect.md")
    out.parent.mkdir(exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
