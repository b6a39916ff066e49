"""Measuring find's stars with the frame's own PSF: the cost of ``measure_with_frame_psf`` against find.

bench_frame's simulated 24 MP frame (6000 x 4000, 5,000 Gaussian stars, as bench_framepsf_build):
``find_stars`` (the analytic model, today's default) is timed, then, on its table and the PSF built
from it (not timed), :func:`psfkit.psf.empirical.measure_with_frame_psf` with ``shapes=False`` (the
two 4-parameter passes: find's positions, then every other star's light taken out of each stamp)
and with the per-star shape fit.  Best of ``ROUNDS`` runs, wall and CPU time.  ``--profile`` prints
where the flux fit's time goes; ``--small`` runs a 1500 x 1000 frame.
Writes benchmarks/results/bench_framepsf_measure.md (full size only).
Usage: .venv/bin/python benchmarks/bench_framepsf_measure.py [--small] [--profile]
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from pathlib import Path

import numpy as np

import psfkit
from psfkit.datasets.simulate import simulate_field
from psfkit.psf.empirical import build_frame_psf, measure_with_frame_psf

HERE = Path(__file__).resolve().parent
SHAPE = (4000, 6000)
N_STARS = 5000
FWHM = 3.5
ROUNDNESS = 0.9
ROUNDS = 3


def timed(fn, rounds=ROUNDS):
    """(best wall time, best CPU time, result) over ``rounds`` calls."""
    wall, cpu, out = np.inf, np.inf, None
    for _ in range(rounds):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = min(wall, time.perf_counter() - t), min(cpu, time.process_time() - c)
    return wall, cpu, out


def main() -> None:
    small = "--small" in sys.argv
    shape = (1000, 1500) if small else SHAPE
    n = N_STARS // 16 if small else N_STARS
    img, truth = simulate_field(shape, n, seed=1, fwhm=FWHM, roundness=ROUNDNESS, flux_range=(500, 5e5),
                                background=300.0, gradient=0.3, gain=1.5, read_noise=6.0, edge=10)
    image = psfkit.Image(data=img.astype(np.float32), gain=1.5, read_noise=6.0)
    t_find, c_find, stars = timed(lambda: psfkit.find_stars(image, keep_rejected=True))
    psf = build_frame_psf(image, stars)
    measure_with_frame_psf(image, stars[:100], psf)  # warm the kernels
    t_flux, c_flux, table = timed(lambda: measure_with_frame_psf(image, stars, psf, shapes=False))
    t_all, c_all, _ = timed(lambda: measure_with_frame_psf(image, stars, psf))
    if "--profile" in sys.argv:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        measure_with_frame_psf(image, stars, psf, shapes=False)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(20)
    acc = np.asarray(table["accepted"], bool)
    lines = [
        "## Measuring find's stars with the frame's PSF",
        "",
        f"bench_frame's simulated {shape[1]}x{shape[0]} frame, {len(truth)} Gaussian stars of FWHM {FWHM} px; "
        f"find_stars: {len(stars)} rows ({int(acc.sum())} accepted); the frame's PSF built from them "
        f"({psf.n_stars} stars, degree {psf.degree}; not timed). Best of {ROUNDS}. {dt.date.today()}, "
        f"{os.cpu_count()} cores.",
        "",
        "| step | wall (s) | CPU (s) | x find |",
        "|---|---:|---:|---:|",
        f"| find_stars (analytic model) | {t_find:.2f} | {c_find:.2f} | 1.00 |",
        f"| measure_with_frame_psf on find's table, flux fit only (two passes) | {t_flux:.2f} | {c_flux:.2f} | "
        f"{t_flux / t_find:.2f} |",
        f"| measure_with_frame_psf on find's table, with each star's shape | {t_all:.2f} | {c_all:.2f} | "
        f"{t_all / t_find:.2f} |",
    ]
    text = "\n".join(lines)
    print(text)
    if not small:
        (HERE / "results").mkdir(exist_ok=True)
        (HERE / "results" / "bench_framepsf_measure.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
