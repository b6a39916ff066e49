"""Throughput of the sequence runner: frames per second, plain loop vs Dask with 1 and 2 workers.

50 simulated 4096x4096 uint16 frames (1000 Gaussian stars, FWHM ~3.4 px, sky 300 ADU,
photon noise from the pixel-integrated profile, a drift of ~1 px per frame) are generated
once into a temporary folder (``$TMPDIR/psfkit-bench-sequence-v1``, reused by later runs)
and measured by :func:`psfkit.run_sequence` (find_stars, summary, star list written per frame):

- plain loop: ``workers=0``, in this process, no Dask;
- Dask, 1 worker and 2 workers: a ``LocalCluster`` of worker processes with one thread each,
  started before the clock starts (startup time reported apart).

Every process runs numba and BLAS on one thread (``NUMBA_NUM_THREADS=1``, ``OMP_NUM_THREADS=1``,
set here before numpy/numba are imported, and in the workers' environment), so the comparison is
fair: one core per worker.  Each mode first measures one small frame (numba compilation, imports).

Floors and peer, same frames, same run: reading the frames only (``load_image``, the I/O floor),
and SEP (``sep.Background`` + ``sep.extract`` at 5 sigma, no PSF fitting) in a plain loop.

Targets: scaling efficiency fps(2 workers) / (2 x fps(1 worker)) >= 0.85; Dask overhead
t(1 worker) / t(plain loop) - 1 <= 10 %.

Usage: ``.venv/bin/python benchmarks/bench_sequence.py [--frames N]`` (about 6 minutes on
2 cores with 50 frames, plus about 2 minutes to generate them the first time);
writes ``benchmarks/results/bench_sequence.md``.
"""

from __future__ import annotations

import os

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
SHAPE = (4096, 4096)
N_STARS = 1000
DATA_DIR = Path(tempfile.gettempdir()) / "psfkit-bench-sequence-v1"


def _make_frame(args) -> str:
    i, folder = args
    from astropy.io import fits

    from psfkit.datasets.simulate import add_noise, render_stars, star_params

    rng = np.random.default_rng(1000 + i)
    base = np.random.default_rng(42)
    x = base.uniform(30, SHAPE[1] - 60, N_STARS)
    y = base.uniform(30, SHAPE[0] - 60, N_STARS)
    flux = np.exp(base.uniform(np.log(2e3), np.log(2e5), N_STARS))
    fwhm = 3.4 + 0.3 * np.sin(i / 5.0)
    p = star_params("gaussian", x + 0.9 * i / 2, y + 0.4 * i / 2, flux, fwhm * 1.05, fwhm / 1.05, 25.0)
    data = add_noise(render_stars(SHAPE, p) + 300.0, gain=1.5, read_noise=6.0, rng=rng)
    hdr = fits.Header()
    hdr["DATE-OBS"] = f"2026-11-21T23:{i // 60:02d}:{i % 60:02d}"
    hdr["EXPTIME"] = 60.0
    hdr["GAIN"] = 1.5
    hdr["RDNOISE"] = 6.0
    path = Path(folder) / f"frame_{i:03d}.fits"
    tmp = path.with_suffix(".tmp")
    fits.writeto(tmp, np.clip(np.round(data), 0, 65535).astype(np.uint16), hdr, overwrite=True)
    os.replace(tmp, path)
    return str(path)


def frames(n: int) -> list[Path]:
    DATA_DIR.mkdir(exist_ok=True)
    missing = [i for i in range(n) if not (DATA_DIR / f"frame_{i:03d}.fits").exists()]
    if missing:
        t0 = time.perf_counter()
        with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            list(pool.map(_make_frame, [(i, str(DATA_DIR)) for i in missing]))
        print(f"generated {len(missing)} frames of {SHAPE[1]}x{SHAPE[0]} in {time.perf_counter() - t0:.0f} s "
              f"into {DATA_DIR}", flush=True)
    return [DATA_DIR / f"frame_{i:03d}.fits" for i in range(n)]


def warm_frame(folder: Path) -> Path:
    """A small frame cut from the first one: compiles numba and imports in each process."""
    from astropy.io import fits

    path = folder / "warm.fits"
    with fits.open(DATA_DIR / "frame_000.fits") as hdul:
        fits.writeto(path, hdul[0].data[:512, :512], hdul[0].header, overwrite=True)
    return path


def _cpu_seconds() -> float:
    """CPU time (user + system) used so far by the calling process."""
    t = os.times()
    return t.user + t.system


def timed_run(paths, outdir: Path, **kwargs) -> float:
    from psfkit import run_sequence

    shutil.rmtree(outdir, ignore_errors=True)
    t0 = time.perf_counter()
    r = run_sequence(paths, outdir, plots=False, **kwargs)
    dt = time.perf_counter() - t0
    assert len(r.computed) == len(paths) and not r.failed, (len(r.computed), r.failed)
    return dt


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=50)
    n = ap.parse_args(argv).frames
    warnings.simplefilter("ignore")
    import sep
    from distributed import Client, LocalCluster

    import psfkit
    from psfkit.analysis.sequence import QUIET_SCHEDULER, WORKER_ENV

    paths = frames(n)
    work = Path(tempfile.mkdtemp(prefix="psfkit-bench-seq-"))
    warm = warm_frame(work)
    rows = []
    try:
        # floor: reading the frames
        t0 = time.perf_counter()
        for p in paths:
            psfkit.load_image(p)
        t_read = time.perf_counter() - t0
        # peer: SEP background + extraction, plain loop
        t0 = time.perf_counter()
        n_sep = 0
        for p in paths:
            data = np.ascontiguousarray(psfkit.load_image(p).data, dtype=np.float64)
            bkg = sep.Background(data)
            n_sep += len(sep.extract(data - bkg.back(), 5.0, err=bkg.globalrms))
        t_sep = time.perf_counter() - t0
        # plain loop
        timed_run([warm], work / "warm0", workers=0)
        c0 = time.process_time()
        t_plain = timed_run(paths, work / "plain", workers=0)
        cpu = {"plain": time.process_time() - c0}
        load = {"plain": os.getloadavg()[0]}
        stars = psfkit.read_star_list(work / "plain" / "stars" / "frame_000.ecsv") \
            if hasattr(psfkit, "read_star_list") else None
        n_found = len(stars) if stars is not None else None
        times = {}
        startup = {}
        for n_workers in (1, 2):
            t0 = time.perf_counter()
            cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None,
                                   scheduler_kwargs=QUIET_SCHEDULER, silence_logs=logging.ERROR,
                                   env=dict(WORKER_ENV))
            client = Client(cluster)
            startup[n_workers] = time.perf_counter() - t0
            try:
                client.run(lambda: __import__("psfkit"))
                for k in range(n_workers):  # every worker compiles once
                    timed_run([warm], work / f"warm{n_workers}{k}", client=client)
                c0 = sum(client.run(_cpu_seconds).values())
                times[n_workers] = timed_run(paths, work / f"dask{n_workers}", client=client)
                cpu[n_workers] = sum(client.run(_cpu_seconds).values()) - c0
                load[n_workers] = os.getloadavg()[0]
            finally:
                client.close()
                cluster.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def fps(t: float) -> float:
        return n / t

    eff = fps(times[2]) / (2 * fps(times[1]))
    overhead = times[1] / t_plain - 1
    rows = [
        ("read frames only (load_image, I/O floor)", t_read),
        ("SEP background + extract, plain loop (peer, no PSF fit)", t_sep),
        ("psfkit plain loop (workers=0, no Dask)", t_plain),
        ("psfkit on Dask, 1 worker", times[1]),
        ("psfkit on Dask, 2 workers", times[2]),
    ]
    lines = [
        "## Sequence runner: frames per second",
        "",
        f"{n} simulated {SHAPE[1]}x{SHAPE[0]} uint16 frames, {N_STARS} stars each (FWHM ~3.4 px), "
        f"one thread per process (NUMBA_NUM_THREADS=1, OMP_NUM_THREADS=1); "
        f"psfkit found {n_found if n_found is not None else '?'} stars in the first frame, "
        f"SEP {n_sep / n:.0f} per frame.",
        "",
        "| mode | seconds | frames/s | vs psfkit plain loop | CPU s per frame | cores busy | load avg (1 min) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    keys = [None, None, "plain", 1, 2]
    for (name, t), key in zip(rows, keys):
        extra = f"{cpu[key] / n:.2f} | {cpu[key] / t:.2f} | {load[key]:.1f}" if key is not None else "| |"
        lines.append(f"| {name} | {t:.1f} | {fps(t):.2f} | {t_plain / t:.2f}x | {extra} |")
    lines += [
        "",
        f"- scaling efficiency, 2 workers vs 1: **{eff:.2f}** (target >= 0.85)",
        f"- Dask overhead, 1 worker vs plain loop: **{100 * overhead:+.1f} %** (target <= 10 %)",
        f"- cluster startup (not in the times above): {startup[1]:.1f} s (1 worker), {startup[2]:.1f} s (2 workers)",
        f"- reading is {100 * t_read / t_plain:.0f} % of the plain loop's time per frame",
        "- 'cores busy' = CPU seconds of the measuring processes / wall seconds: below 1 per worker means "
        "the workers waited (for I/O, or for a core taken by another program: see the load average; "
        "this machine has 2 cores, shared with other jobs when this ran)",
        f"- CPU-time efficiency, 2 workers vs 1 (CPU s per frame, 1 worker / 2 workers): "
        f"**{cpu[1] / cpu[2]:.2f}** (1.00 = a worker does no more work per frame when two run)",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    out = HERE / "results" / "bench_sequence.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
