"""Speed of the frame's-PSF fit: 10,000 simulated 15x15 stamps, flux, x, y and background per star.

The PSF is an effective (pixel-convolved) Moffat (FWHM 3.2 px, beta 3) oversampled 2x on a cubic
B-spline grid, as :func:`psfkit.build_frame_psf` makes it: once constant over the frame, once
varying (a degree-2 polynomial of the position, stars spread over a 4000 x 4000 frame).  psfkit
fits every stamp in one call of :func:`psfkit.psf.frame_fit.fit_frame_stamps` (compiled: the whole
weighted Levenberg-Marquardt of each star, Poisson reweighting and covariance, stars in parallel).
Compared with: its numpy reference, the generic engine that fitted the frame's PSF before
(``fit_stamps``: numpy Levenberg-Marquardt over the B-spline kernel), photutils PSFPhotometry with
an ImagePSF of the same oversampled grid (per stamp, a subset, scaled), and a floor (one
``gaussian_filter`` pass over the stamps).  Writes benchmarks/results/bench_framepsf.md.
Usage: .venv/bin/python benchmarks/bench_framepsf.py [--small]
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage

from psfkit.datasets.simulate import simulate_stamps, star_params
from psfkit.psf import _frame_kernels
from psfkit.psf.empirical import FramePSF
from psfkit.psf.engine import NoiseModel, fit_stamps
from psfkit.psf.frame_fit import fit_frame_stamps
from psfkit.psf.models import MoffatPSF
from psfkit.psf.stamps import initial_params

HERE = Path(__file__).resolve().parent
GAIN, RN = 1.0, 5.0
FWHM, BETA, OVERSAMPLING, REACH = 3.2, 3.0, 2, 12
ROUNDS = 10


def effective_grid(fwhm: float, roundness: float = 1.0) -> np.ndarray:
    """The pixel-integrated Moffat every 1/OVERSAMPLING px out to REACH px, unit sum over image pixels."""
    s = 2 * REACH * OVERSAMPLING + 1
    offs = (np.arange(s) - (s - 1) / 2) / OVERSAMPLING
    xx, yy = np.meshgrid(offs, offs)
    p = star_params("moffat", [0.0], [0.0], [1.0], [fwhm / np.sqrt(roundness)], [fwhm * np.sqrt(roundness)], [25.0],
                    BETA)
    rows = np.repeat(p, xx.size, axis=0)
    rows[:, 2], rows[:, 3] = -xx.ravel(), -yy.ravel()
    grid = MoffatPSF(angle=True).evaluate(rows, (1, 1), k=8)[0].reshape(s, s)
    return grid * OVERSAMPLING * OVERSAMPLING / grid.sum()


def psfs() -> tuple[FramePSF, FramePSF]:
    base = effective_grid(FWHM)
    constant = FramePSF(base[None], OVERSAMPLING, 0, (2000.0, 2000.0), (2000.0, 2000.0), 200)
    coef = np.zeros((6, *base.shape))
    coef[0] = base
    coef[1] = 0.5 * (effective_grid(1.1 * FWHM) - base)
    coef[2] = 0.5 * (effective_grid(FWHM, 0.85) - base)
    coef[3] = 0.1 * (effective_grid(1.1 * FWHM) - base)
    return constant, FramePSF(coef, OVERSAMPLING, 2, (2000.0, 2000.0), (2000.0, 2000.0), 200)


def starts(stamps: np.ndarray, model, origin: np.ndarray) -> np.ndarray:
    n = len(stamps)
    p0 = initial_params(model, stamps, np.ones(stamps.shape, bool), np.full((n, 2), 7.0))
    p0[:, 4:6] = origin
    return p0


def best_rate(call, n: int, rounds: int) -> tuple[float, object]:
    best, out = np.inf, None
    for _ in range(rounds):
        t = time.perf_counter()
        out = call()
        best = min(best, time.perf_counter() - t)
    return n / best, out


def photutils_rate(stamps: np.ndarray, grid: np.ndarray, n_sub: int) -> float:
    from astropy.table import Table
    from photutils.psf import ImagePSF, PSFPhotometry

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ImagePSF(grid / (OVERSAMPLING * OVERSAMPLING), oversampling=OVERSAMPLING)  # unit sum over image pixels
        phot = PSFPhotometry(model, (15, 15), aperture_radius=4)
        t = time.perf_counter()
        for i in range(n_sub):
            phot(stamps[i] - 100.0, init_params=Table({"x": [7.0], "y": [7.0]}))
        return n_sub / (time.perf_counter() - t)


def main() -> None:
    small = "--small" in sys.argv
    n = 1000 if small else 10_000
    stamps, truth = simulate_stamps(n, size=15, model="moffat", fwhm_x=FWHM, beta=BETA, flux=20000.0,
                                    background=100.0, gain=GAIN, read_noise=RN, seed=1)
    origin = np.random.default_rng(2).uniform(0, 3985, (n, 2)).round()
    constant, varying = psfs()
    noise = NoiseModel(GAIN, RN / GAIN)
    m_const, m_vary = constant.model(), varying.model()  # once per frame, as find does: not timed
    p_const = starts(stamps, m_const, origin)
    p_vary = starts(stamps, m_vary, origin)
    fit_frame_stamps(m_const, stamps[:64], p_const[:64], noise=noise)  # warm-up (numba's cache)
    fit_frame_stamps(m_vary, stamps[:64], p_vary[:64], noise=noise)
    backend = (f"compiled numba kernel, {__import__('numba').get_num_threads()} threads" if _frame_kernels.available()
               else "numpy reference (PSFKIT_BACKEND=numpy)")
    rounds = 3 if small else ROUNDS
    r_const, fit = best_rate(lambda: fit_frame_stamps(m_const, stamps, p_const, noise=noise), n, rounds)
    r_vary, fit_v = best_rate(lambda: fit_frame_stamps(m_vary, stamps, p_vary, noise=noise), n, rounds)
    ratio = float(np.median(fit.params[:, 1] / truth["flux"]))
    rows = [("psfkit frame PSF fit, constant PSF (compiled, 4 parameters, Poisson reweighting)", r_const, n,
             float(fit.iterations.mean())),
            ("psfkit frame PSF fit, PSF varying across the frame (degree 2)", r_vary, n,
             float(fit_v.iterations.mean()))]
    n_np = 300 if small else 1000
    r_np, fit_np = best_rate(lambda: fit_frame_stamps(m_const, stamps[:n_np], p_const[:n_np], noise=noise,
                                                      backend="numpy"), n_np, 2)
    rows.append((f"psfkit numpy reference of the same fit ({n_np} stars, scaled)", r_np, n_np,
                 float(fit_np.iterations.mean())))
    n_gen = 200 if small else 500
    model = m_const
    lo, hi = model.bounds(n_gen)
    lo[:, 2:4], hi[:, 2:4] = -1.0, 15.0
    r_gen, fit_g = best_rate(lambda: fit_stamps(model, stamps[:n_gen], p_const[:n_gen], noise=noise,
                                                bounds=(lo, hi)), n_gen, 2)
    rows.append((f"psfkit generic engine with the frame's PSF (the path before; {n_gen} stars, scaled)", r_gen,
                 n_gen, float(fit_g.iterations.mean())))
    n_ph = 50 if small else 150
    r_ph = photutils_rate(stamps, constant.coefficients[0], n_ph)
    rows.append((f"photutils PSFPhotometry, ImagePSF of the same grid, per stamp ({n_ph} stars, scaled)", r_ph,
                 n_ph, float("nan")))
    t = time.perf_counter()
    ndimage.gaussian_filter(stamps, (0, 1.0, 1.0))
    r_floor = n / (time.perf_counter() - t)
    rows.append(("floor: one gaussian_filter pass over the same stamps", r_floor, n, float("nan")))
    lines = [
        "## Speed: the frame's PSF fitted to 10,000 stamps",
        "",
        f"{n} simulated 15x15 stamps (Moffat FWHM {FWHM} px, beta {BETA}, flux 20,000, background 100, gain {GAIN}, "
        f"read noise {RN} e-), {dt.date.today()}, {os.cpu_count()} cores. Backend: **{backend}**. The PSF: the "
        f"pixel-integrated Moffat oversampled {OVERSAMPLING}x on a cubic B-spline grid "
        "(as `build_frame_psf` makes it), "
        "constant, or varying as a degree-2 polynomial across a 4000 x 4000 frame. Fitted: background, flux, x, y "
        "per star, Poisson weights reweighted to their fixed point, covariance; started from `initial_params` "
        "(not timed; nor is the fitting model, made once per frame). "
        f"psfkit rows: best of {rounds} calls. Median fitted flux / truth {ratio:.4f}.",
        "",
        "| method | stars/s | mean LM iterations | psfkit (constant PSF) / method |",
        "|---|---:|---:|---:|",
    ]
    for name, rate, _, iters in rows:
        it = "" if not np.isfinite(iters) else f"{iters:.1f}"
        lines.append(f"| {name} | {rate:,.0f} | {it} | {r_const / rate:.3g} |")
    lines += ["", f"Target: >= 100,000 stars/s on 2 cores (constant: {r_const:,.0f}/s, varying: {r_vary:,.0f}/s); "
              f"{r_const / r_ph:,.0f}x photutils PSFPhotometry, {r_const / r_gen:.0f}x the generic engine."]
    text = "\n".join(lines)
    print(text)
    if not small:
        (HERE / "results").mkdir(exist_ok=True)
        (HERE / "results" / "bench_framepsf.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
