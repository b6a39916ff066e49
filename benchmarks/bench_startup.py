"""Start-up and whole-process times: what a user waits for at the shell.

Each row is a whole process, from ``exec`` to exit, timed from outside (``subprocess``), best of
several runs, all rows taking turns in the same run so that they see the same machine:

- ``python -c pass``: the interpreter alone (the floor of every row);
- ``psfkit --help`` and ``python -c "import psfkit"``;
- ``psfkit find FILE -o stars.csv`` on a small frame (a simulated 512x512 frame and the bundled
  256x256 sample) and on the 24 MP benchmark frame of bench_frame.py (6000x4000 float32, about
  5,000 stars): read, background, candidates, every star PSF-fitted, rejection, list written;
- beside each ``find``, sep's whole process on the same file: ``python`` reading it with
  astropy, ``sep.Background`` and ``sep.extract`` (5 sigma), which fits nothing and writes nothing.

The numba cache is warmed by one untimed ``psfkit find`` first (the rows are second runs, as a
user's every run after the first).  Wall times are printed with the CPU time (user + system) of
the same best run: on a busy machine the CPU time is the steadier figure.

With ``--before REF`` (a git commit, branch or tag of this repository) the ``psfkit find`` rows are
run a second time with that commit's source (``git archive`` into a temporary folder, its own
numba cache, warmed like the others), taking turns with the rows of the working tree: a change's
before and after measured in the same run, on the same machine load.

Prints a markdown table and writes benchmarks/results/bench_startup.md.
Usage: .venv/bin/python benchmarks/bench_startup.py [--repeat N] [--before REF] [--only-find]
"""

from __future__ import annotations

import datetime as dt
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SEP_SCRIPT = """
import sys
import numpy as np
import sep
from astropy.io import fits
data = np.asarray(fits.getdata(sys.argv[1]), dtype=np.float64)
bkg = sep.Background(data)
sep.set_extract_pixstack(10_000_000)
sep.set_sub_object_limit(10000)
objects = sep.extract(data - bkg, 5.0, err=bkg.globalrms)
"""
TARGETS = {"psfkit --help": 0.3, "find 512x512": 0.9}  # seconds above `python -c pass`
TARGET_24MP_RATIO = 0.6  # psfkit find / sep, whole processes


def _env(src: Path | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(src or ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


def source_of(ref: str, tmp: Path) -> Path:
    """The ``src`` folder of commit ``ref``, extracted into ``tmp``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "src"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
    return tmp / "src"


def run_once(cmd: list[str], src: Path | None = None) -> tuple[float, float]:
    """(wall, cpu) seconds of one whole process (psfkit from ``src``, default this checkout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env(src))
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def frames(tmp: Path) -> dict[str, Path]:
    """The small frames and the 24 MP frame of bench_frame.py, as FITS files."""
    from astropy.io import fits

    from psfkit.datasets import sample_image_path
    from psfkit.datasets.simulate import simulate_field

    sys.path.insert(0, str(HERE))
    from bench_frame import FWHM, N_STARS, SHAPE

    out = {"sample 256x256": Path(sample_image_path())}
    img, _ = simulate_field((512, 512), 60, seed=3, fwhm=FWHM, roundness=0.9, flux_range=(500, 5e5),
                            background=300.0, gradient=0.3, gain=1.5, read_noise=6.0, edge=10)
    out["512x512"] = tmp / "small.fits"
    fits.writeto(out["512x512"], img.astype(np.float32), fits.Header({"GAIN": 1.5, "RDNOISE": 6.0}))
    t = time.perf_counter()
    img, _ = simulate_field(SHAPE, N_STARS, seed=1, fwhm=FWHM, roundness=0.9, flux_range=(500, 5e5),
                            background=300.0, gradient=0.3, gain=1.5, read_noise=6.0, edge=10)
    out["24 MP"] = tmp / "frame24.fits"
    fits.writeto(out["24 MP"], img.astype(np.float32), fits.Header({"GAIN": 1.5, "RDNOISE": 6.0}))
    print(f"simulated the frames in {time.perf_counter() - t:.1f} s", flush=True)
    return out


def main() -> None:
    repeat = int(sys.argv[sys.argv.index("--repeat") + 1]) if "--repeat" in sys.argv else 5
    before_ref = sys.argv[sys.argv.index("--before") + 1] if "--before" in sys.argv else None
    only_find = "--only-find" in sys.argv
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        files = frames(tmp)
        before_src = source_of(before_ref, tmp) if before_ref else None
        rows: dict[str, tuple[list[str], Path | None]] = {"python -c pass": ([py, "-c", "pass"], None)}
        if not only_find:
            rows.update({
                "psfkit --help": ([py, "-m", "psfkit", "--help"], None),
                "import psfkit": ([py, "-c", "import psfkit"], None),
                "import sep, numpy, astropy.io.fits": ([py, "-c", "import sep, numpy, astropy.io.fits"], None),
            })
        for name, path in files.items():
            find = [py, "-m", "psfkit", "find", str(path), "-o", str(tmp / "stars.csv")]
            rows[f"psfkit find ({name})"] = (find, None)
            if before_src is not None:
                rows[f"psfkit find ({name}) before"] = (find, before_src)
            rows[f"sep whole process ({name})"] = ([py, "-c", SEP_SCRIPT, str(path)], None)
        for name, (cmd, src) in rows.items():  # warm-up: numba's cache, the page cache, .pyc files
            if name.startswith("psfkit find"):
                run_once(cmd, src)
        best = {name: (np.inf, np.inf) for name in rows}
        for i in range(repeat):
            for name, (cmd, src) in rows.items():
                if "24 MP" in name and i >= max(3, repeat // 2):
                    continue  # the large frame: fewer runs
                wall, cpu = run_once(cmd, src)
                if wall < best[name][0]:
                    best[name] = (wall, cpu)
            print(f"round {i + 1}/{repeat} done", flush=True)

    floor = best["python -c pass"][0]
    lines = [
        "## Start-up and whole-process times",
        "",
        f"Whole processes timed from outside, best of {repeat} (3 for the 24 MP frame), the rows taking turns; "
        "numba's compiled cache warm (a user's every run after the first). `psfkit find` reads the file, "
        "finds, fits and measures every star and writes the list (`-o stars.csv`); sep's process reads the "
        "same file with astropy, runs `sep.Background` and `sep.extract` (5 sigma) and writes nothing. "
        "The 24 MP frame is bench_frame.py's (6000x4000 float32, 5,000 simulated stars). "
        f"CPU: user + system time of the best run. {dt.date.today()}, {os.cpu_count()} cores"
        + (f"; rows marked 'before' run commit `{before_ref}`." if before_ref else "."),
        "",
        "| process | wall (s) | CPU (s) | wall above `python -c pass` (s) | sep's whole process (s) | psfkit / sep |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in rows:
        if name.startswith("sep whole process"):
            continue
        wall, cpu = best[name]
        sep_name = None
        if name.startswith("psfkit find"):
            sep_name = f"sep whole process ({name[len('psfkit find ('):name.index(')')]})"
        elif name == "import psfkit":
            sep_name = "import sep, numpy, astropy.io.fits"
        sep_wall = best[sep_name][0] if sep_name else None
        ratio = f"{wall / sep_wall:.2f}" if sep_wall else ""
        lines.append(f"| `{name}` | {wall:.3f} | {cpu:.3f} | {wall - floor:.3f} | "
                     f"{'' if sep_wall is None else f'{sep_wall:.3f}'} | {ratio} |")

    def verdict(suffix: str = "") -> str:
        small_over = best[f"psfkit find (512x512){suffix}"][0] - floor
        big = best[f"psfkit find (24 MP){suffix}"][0] / best["sep whole process (24 MP)"][0]
        return (f"`psfkit find` on 512x512: {small_over:.2f} s above the interpreter "
                f"(target <= {TARGETS['find 512x512']}); on the 24 MP frame: {big:.2f} x sep's whole process "
                f"(target <= {TARGET_24MP_RATIO})")

    lines.append("")
    if not only_find:
        help_over = best["psfkit --help"][0] - floor
        target = TARGETS["psfkit --help"]
        lines.append(f"`psfkit --help`: {help_over:.2f} s above the interpreter (target <= {target}).")
    lines.append(verdict() + ".")
    if before_src is not None:
        lines.append(f"Before (`{before_ref}`): " + verdict(" before") + ".")
    text = "\n".join(lines)
    print(text)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "bench_startup.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
