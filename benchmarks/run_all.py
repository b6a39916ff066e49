"""Run every benchmark (benchmarks/bench_*.py) and assemble BENCHMARKS.md.

Usage: ``make bench`` (or ``.venv/bin/python benchmarks/run_all.py [name ...]``).
Each benchmark prints its table and writes ``benchmarks/results/<name>.md``;
this script runs them one after the other (so they do not compete for the two
cores) and writes BENCHMARKS.md from the result files, with date and machine.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ORDER = ["bench_startup", "bench_speed", "bench_framepsf", "bench_accuracy", "bench_frame", "bench_framepsf_build",
         "bench_crowded", "bench_aperture", "bench_io", "bench_sequence", "bench_web"]


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(s for s in Path("/proc/meminfo").read_text().splitlines() if s.startswith("MemTotal")).split()[1])
        mem = f", {kb / 1024**2:.0f} GiB RAM"
    except Exception:
        pass
    return (f"{os.cpu_count()} cores, {cpu}{mem}, Python {platform.python_version()}, "
            f"{platform.system()} {platform.machine()}")


def main(argv: list[str]) -> int:
    names = argv or [n for n in ORDER if (HERE / f"{n}.py").exists()]
    names += [p.stem for p in sorted(HERE.glob("bench_*.py")) if not argv and p.stem not in names]
    failed = []
    for name in names:
        script = HERE / f"{name}.py"
        print(f"=== {name}", flush=True)
        rc = subprocess.call([sys.executable, str(script)], cwd=ROOT)
        if rc != 0:
            failed.append(name)
    write_summary()
    if failed:
        print("benchmarks that failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


def write_summary() -> None:
    parts = [
        "# Benchmarks\n",
        f"Latest run: {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M UTC} on {machine()}.\n",
        "Run them all with `make bench` (or one: `.venv/bin/python benchmarks/bench_speed.py`). "
        "Every ratio is measured in the same run against the peers and floors named in each table.\n",
    ]
    for name in ORDER + sorted(p.stem for p in (HERE / "results").glob("*.md") if p.stem not in ORDER):
        path = HERE / "results" / f"{name}.md"
        if path.exists():
            parts.append(path.read_text().strip() + "\n")
    (ROOT / "BENCHMARKS.md").write_text("\n".join(parts))
    print(f"wrote {ROOT / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
