"""Crowded-field benchmark: find --deblend with the frame's own PSF against photutils' IterativePSFPhotometry.

The field: 5,000 Moffat stars (beta 3, FWHM 3.2 px, roundness 0.9) on 1024 x 1024 px, positions
uniform (92.5 % of the stars have no brighter star within 1 FWHM), fluxes log-uniform 300-3e5,
sky 200 ADU, gain 1.5, read noise 6 e- (psfkit.datasets.simulate, seed 2).  Rows, in the same run:

- psfkit find_stars (the first pass alone, Gaussian model),
- psfkit find_stars(deblend=True) with the analytic model (the pass of psfkit.detect.deblend),
- psfkit find_stars(deblend=True, psf="frame"): ``psfkit find --deblend`` (psfkit.detect.crowded),
  overlapping stars fitted as groups (simultaneous fits), and the same with the group fits off
  (``crowded.MAX_GROUP = 1``: iterated neighbour subtraction alone),
- photutils IterativePSFPhotometry (DAOStarFinder on the residual, SourceGrouper groups fitted
  simultaneously, 3 iterations) with a circular Moffat of the true FWHM and beta (it is given the
  PSF's profile; psfkit builds its own from the frame). The stars have roundness 0.9: the circular
  model's misfit of bright stars leaves residual peaks that its later iterations fit as stars.

Completeness: truths at S/N >= 10 with a star within 1.5 px; false: listed stars with no truth
within 1.5 px; flux: the median ratio to the truth of stars at S/N >= 50; close-pair flux scatter: the
robust scatter of that ratio for the S/N >= 50 stars with another star within 1.5 FWHM.  Writes
benchmarks/results/bench_crowded.md.

Usage: .venv/bin/python benchmarks/bench_crowded.py [--small] [--gaussian] [--photutils-cap SECONDS]

``--small`` runs a 512 x 512 quarter of the density's field (1,250 stars); ``--gaussian`` adds the
20,000-star 2048 x 2048 Gaussian field (FWHM 3.5) for the --deblend rows (no photutils);
``--photutils-cap`` stops photutils after that many seconds (default 1800) and says so in its row.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

import psfkit
from psfkit.datasets.simulate import simulate_field
from psfkit.detect import crowded

HERE = Path(__file__).resolve().parent
FWHM, BETA, GAIN, READ_NOISE = 3.2, 3.0, 1.5, 6.0


def score(x, y, flux, truth, radius=1.5):
    """(completeness at S/N >= 10, false fraction, median flux ratio at S/N >= 50, the robust scatter of
    the flux ratio of S/N >= 50 stars with another star within 1.5 FWHM, found within 0.5 px).
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) == 0:
        return 0.0, float("nan"), float("nan"), float("nan")
    tx, ty = np.asarray(truth["x"], float), np.asarray(truth["y"], float)
    d, i = cKDTree(np.c_[x, y]).query(np.c_[tx, ty])
    bright = np.asarray(truth["snr"]) >= 10
    d2, _ = cKDTree(np.c_[tx, ty]).query(np.c_[x, y])
    good = (d < 0.5) & (np.asarray(truth["snr"]) >= 50)
    ratio = np.asarray(flux, float)[i] / np.asarray(truth["flux"])
    median = np.median(ratio[good]) if good.any() else np.nan
    near, _ = cKDTree(np.c_[tx, ty]).query(np.c_[tx, ty], k=2)
    pair = good & (near[:, 1] < 1.5 * FWHM) & np.isfinite(ratio)
    scatter = 1.4826 * np.median(np.abs(ratio[pair] - np.median(ratio[pair]))) if pair.sum() > 5 else np.nan
    return float(np.mean(d[bright] < radius)), float(np.mean(d2 >= radius)), float(median), float(scatter)


def photutils_iterative(img: np.ndarray, truth) -> tuple:
    """Photutils IterativePSFPhotometry with the true (circular) Moffat; its time and score."""
    try:
        from astropy.stats import sigma_clipped_stats
        from photutils.detection import DAOStarFinder
        from photutils.psf import IterativePSFPhotometry, MoffatPSF, SourceGrouper
    except ImportError as exc:  # pragma: no cover - photutils is a benchmark dependency
        return (f"photutils not available ({exc})", np.nan, None, None, None, None)
    alpha = FWHM / (2.0 * np.sqrt(2.0 ** (1.0 / BETA) - 1.0))
    model = MoffatPSF(alpha=alpha, beta=BETA)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        _, med, std = sigma_clipped_stats(img, sigma=3.0)
        data = img - med
        finder = DAOStarFinder(fwhm=FWHM, threshold=5.0 * std)
        phot = IterativePSFPhotometry(model, (7, 7), finder=finder, grouper=SourceGrouper(min_separation=2.0 * FWHM),
                                      aperture_radius=4.0, maxiters=3, mode="new")
        res = phot(data, error=np.sqrt(np.clip(img, 1, None) / GAIN + (READ_NOISE / GAIN) ** 2))
        elapsed = time.perf_counter() - t
    ok = np.isfinite(np.asarray(res["x_fit"], float))
    c, f, r, p = score(res["x_fit"][ok], res["y_fit"][ok], res["flux_fit"][ok], truth)
    return (f"photutils {__import__('photutils').__version__} IterativePSFPhotometry (circular Moffat of the true "
            "FWHM and beta, 3 iterations; "
            f"{int(ok.sum())} stars)", elapsed, c, f, r, p)


def photutils_capped(img: np.ndarray, truth, cap: float) -> tuple:
    """:func:`photutils_iterative` in a child process stopped after ``cap`` seconds (the row then says so)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures import TimeoutError as FutureTimeout

    pool = ProcessPoolExecutor(1, mp_context=mp.get_context("fork"))
    future = pool.submit(photutils_iterative, img, truth)
    try:
        return future.result(timeout=cap)
    except FutureTimeout:
        for proc in list(getattr(pool, "_processes", {}).values()):  # the child this pool started
            proc.terminate()
        return (f"photutils IterativePSFPhotometry: stopped after {cap:.0f} s (not finished)", np.nan, None, None,
                None, None)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def psfkit_rows(img: np.ndarray, truth, label: str, *, frame_psf: bool = True) -> list[tuple]:
    image = psfkit.Image(data=img, gain=GAIN, read_noise=READ_NOISE)
    psfkit.find_stars(image.data[:200, :200], gain=GAIN, read_noise=READ_NOISE)  # warm up (compilation)
    rows = []
    t, s = timed(lambda: psfkit.find_stars(image))
    rows.append((f"psfkit find_stars, first pass only ({label})", t,
                 *score(s["x_fit"], s["y_fit"], s["flux_fit"], truth)))
    t, s = timed(lambda: psfkit.find_stars(image, deblend=True))
    rows.append((f"psfkit find_stars(deblend=True), analytic model ({label})", t,
                 *score(s["x_fit"], s["y_fit"], s["flux_fit"], truth)))
    if frame_psf:
        t, s = timed(lambda: psfkit.find_stars(image, deblend=True, psf="frame"))
        info = s.meta.get("crowded", {})
        groups = info.get("groups", {})
        rows.append((f"psfkit find --deblend: the frame's PSF ({label}; {info.get('n_found', 0)} found on the residual "
                     f"in {info.get('passes', 0)} passes; {groups.get('groups', 0)} group fits of "
                     f"{groups.get('stars', 0)} stars, at most {groups.get('largest', 0)} per group)", t,
                     *score(s["x_fit"], s["y_fit"], s["flux_fit"], truth)))
        # the same without the simultaneous group fits: iterated neighbour subtraction alone
        keep = crowded.MAX_GROUP
        crowded.MAX_GROUP = 1
        try:
            t, s = timed(lambda: psfkit.find_stars(image, deblend=True, psf="frame"))
        finally:
            crowded.MAX_GROUP = keep
        rows.append((f"psfkit find --deblend without group fits: iterated subtraction alone ({label})", t,
                     *score(s["x_fit"], s["y_fit"], s["flux_fit"], truth)))
    return rows


def main() -> None:
    small = "--small" in sys.argv
    size = 512 if small else 1024
    n = 5000 * size * size // 1024**2
    img, truth = simulate_field((size, size), n, model="moffat", fwhm=FWHM, beta=BETA, gain=GAIN,
                                read_noise=READ_NOISE, seed=2)
    label = f"Moffat, {n} stars, {size}x{size}"
    rows = psfkit_rows(img, truth, label)
    cap = float(sys.argv[sys.argv.index("--photutils-cap") + 1]) if "--photutils-cap" in sys.argv else 1800.0
    rows.append(photutils_capped(img, truth, cap))
    if "--gaussian" in sys.argv:
        gimg, gtruth = simulate_field((2048, 2048), 20000, fwhm=3.5, gain=GAIN, read_noise=READ_NOISE, seed=3)
        rows += psfkit_rows(gimg, gtruth, "Gaussian, 20000 stars, 2048x2048")
    lines = [
        "## Crowded field (find --deblend with the frame's PSF)\n",
        f"{label} (seed 2); completeness: truths at S/N >= 10 with a star within 1.5 px; false: listed stars "
        "with no truth within 1.5 px; flux: median ratio to the truth at S/N >= 50; close-pair flux scatter: robust "
        "scatter of that ratio for S/N >= 50 stars with another star within 1.5 FWHM. "
        f"Run {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC.\n",
        "| method | time (s) | completeness | false | flux ratio | close-pair flux scatter |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, t, c, f, r, p in rows:
        fmt = lambda v, n: "—" if v is None or not np.isfinite(v) else f"{v:.{n}f}"  # noqa: E731
        lines.append(f"| {name} | {fmt(t, 2)} | {fmt(c, 4)} | {fmt(f, 4)} | {fmt(r, 4)} | {fmt(p, 4)} |")
    text = "\n".join(lines) + "\n"
    print(text)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "bench_crowded.md").write_text(text)


if __name__ == "__main__":
    main()
