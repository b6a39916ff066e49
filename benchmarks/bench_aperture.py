"""Speed of exact-overlap aperture sums: psfkit against sep and photutils on the same 5,000 apertures.

A 2000x2000 noise frame, 5,000 random positions, circles of radius 3 and 8 px and
ellipses (a = 6, b = 4, 30 deg); every method computes the exact pixel overlap
(sep with subpix=0, photutils with method="exact").  Best of 5 runs each; the
sums are compared too (largest relative difference).  A floor: one plain numpy
gather of the same number of pixels (what any aperture sum must at least read).

Prints a markdown table and writes benchmarks/results/bench_aperture.md.
Usage: .venv/bin/python benchmarks/bench_aperture.py
"""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

import numba
import numpy as np
import sep
from photutils.aperture import CircularAperture, EllipticalAperture, aperture_photometry

from psfkit.aperture.sums import aperture_sums

HERE = Path(__file__).resolve().parent
N = 5000


def one_thread(fn):
    """Run fn with numba's loop on one thread (sep is single-threaded): the per-core comparison."""
    def run():
        n = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            return fn()
        finally:
            numba.set_num_threads(n)
    return run


def best_interleaved(fns, repeat=9):
    """Best time of each function, the functions run in turn (a load change hits all of them alike)."""
    times = [[] for _ in fns]
    outs = [None] * len(fns)
    for _ in range(repeat):
        for k, fn in enumerate(fns):
            t = time.perf_counter()
            outs[k] = fn()
            times[k].append(time.perf_counter() - t)
    return [min(t) for t in times], outs


def best(fn, repeat=5):
    times = []
    out = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> None:
    load0 = os.getloadavg()[0]
    rng = np.random.default_rng(42)
    data = rng.normal(1000.0, 30.0, (2000, 2000))
    x = rng.uniform(30, 1970, N)
    y = rng.uniform(30, 1970, N)
    aperture_sums(data, x[:10], y[:10], 3.0)  # compile the numba kernels outside the timing
    aperture_sums(data, x[:10], y[:10], a=6.0, b=4.0, theta=0.5)
    rows = []
    cases = [("circle r = 3 px", dict(r=3.0)), ("circle r = 8 px", dict(r=8.0)),
             ("ellipse a = 6, b = 4, 30 deg", dict(a=6.0, b=4.0, theta=np.radians(30.0)))]
    for label, kw in cases:
        run_nb = lambda: aperture_sums(data, x, y, backend="numba", **kw)  # noqa: E731
        if "r" in kw:
            run_sep = lambda: sep.sum_circle(data, x, y, kw["r"], subpix=0)  # noqa: E731
            aper = CircularAperture(np.c_[x, y], kw["r"])
            half = int(np.ceil(kw["r"]))
        else:
            run_sep = lambda: sep.sum_ellipse(data, x, y, kw["a"], kw["b"], kw["theta"], r=1.0, subpix=0)  # noqa: E731
            aper = EllipticalAperture(np.c_[x, y], kw["a"], kw["b"], theta=kw["theta"])
            half = int(np.ceil(kw["a"]))
        (t_nb, t_1, t_sep), ((s_nb, _, _), _, (s_sep, _, _)) = best_interleaved([run_nb, one_thread(run_nb), run_sep])
        t_np, (s_np, _, _) = best(lambda: aperture_sums(data, x, y, backend="numpy", **kw), repeat=3)
        t_pu, tab = best(lambda: aperture_photometry(data, aper, method="exact"), repeat=2)
        s_pu = np.asarray(tab["aperture_sum"])
        size = 2 * half + 1
        rows_i = (np.rint(y).astype(int) - half)[:, None] + np.arange(size)
        cols_i = (np.rint(x).astype(int) - half)[:, None] + np.arange(size)
        t_floor, _ = best(lambda: data[rows_i[:, :, None], cols_i[:, None, :]].sum(axis=(1, 2)))
        d_pu = float(np.max(np.abs(s_nb / s_pu - 1)))
        d_sep = float(np.max(np.abs(s_nb / s_sep - 1)))
        d_np = float(np.max(np.abs(s_nb / s_np - 1)))
        rows.append((label, t_nb, t_1, t_np, t_sep, t_pu, t_floor, d_pu, d_sep, d_np))

    lines = [
        "## Speed: exact aperture sums, 5,000 apertures",
        "",
        f"2000x2000 float64 frame, {N} random positions, exact pixel overlap everywhere (sep subpix=0, photutils "
        f"method='exact'); best of 9 runs, psfkit and sep in turn (numpy path: of 3, photutils: of 2), "
        f"{dt.date.today()}, {os.cpu_count()} cores, "
        f"load average {load0:.1f} before and {os.getloadavg()[0]:.1f} after (other work on the machine makes "
        "every figure noisy: compare ratios within one run). "
        "psfkit = `psfkit.aperture.sums.aperture_sums` (numba loop, prange over apertures; the vectorised numpy "
        "path is the reference it is tested against). Rates in apertures per second; ratio = psfkit time / "
        "peer time (below 1: psfkit is faster).",
        "",
        "| apertures | psfkit (numba) /s | psfkit 1 thread /s | psfkit numpy path /s | sep /s | photutils /s "
        "| floor: plain gather /s | psfkit / sep time | psfkit 1 thread / sep time | psfkit / photutils time "
        "| max rel. diff vs photutils | vs sep | numba vs numpy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, t_nb, t_1, t_np, t_sep, t_pu, t_floor, d_pu, d_sep, d_np in rows:
        lines.append(
            f"| {label} | {N / t_nb:,.0f} | {N / t_1:,.0f} | {N / t_np:,.0f} | {N / t_sep:,.0f} | {N / t_pu:,.0f} "
            f"| {N / t_floor:,.0f} | {t_nb / t_sep:.2f} | {t_1 / t_sep:.2f} | {t_nb / t_pu:.3f} | {d_pu:.1e} "
            f"| {d_sep:.1e} | {d_np:.1e} |"
        )
    lines += [
        "",
        "Target: at least as fast as sep (psfkit / sep time <= 1), also on one thread (sep uses one). Both loops "
        "go row by row: the pixels wholly inside an aperture add with weight 1, and only the boundary pixels get "
        "the exact overlap (circles: a table of per-row and per-column terms; ellipses: the pixel clipped to the "
        "ellipse, one arctangent per boundary pixel). sep's exact circle differs from photutils and psfkit by "
        "about 1e-8 relative; psfkit matches photutils' exact overlap to rounding.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out = HERE / "results" / "bench_aperture.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
