"""A night's faults (issue 15, point 6): a changed frame is measured again, Ctrl+C is one line and
exit 130, a full or read-only disk is one line per frame with no Dask log spam."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from psfkit.analysis.sequence import run_sequence
from psfkit.cli import main
from psfkit.datasets.simulate import simulate_field

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def night(tmp_path) -> Path:
    folder = tmp_path / "night"
    folder.mkdir()
    for i in range(3):
        data, _ = simulate_field((96, 96), 8, fwhm=3.0, min_separation=12, edge=10, seed=10 + i, flux_range=(5e3, 5e4))
        fits.writeto(folder / f"f{i}.fits", data.astype(np.float32))
    return folder


def test_a_changed_frame_is_measured_again(night, tmp_path):
    out = tmp_path / "out"
    first = run_sequence(night, out, workers=0, plots=False)
    assert sorted(first.computed) == ["f0", "f1", "f2"]
    again = run_sequence(night, out, workers=0, plots=False)
    assert again.computed == [] and sorted(again.skipped) == ["f0", "f1", "f2"]
    # f1 replaced by another frame of the same size; its modification time moves
    data, _ = simulate_field((96, 96), 3, fwhm=3.0, min_separation=12, edge=10, seed=99, flux_range=(5e3, 5e4))
    fits.writeto(night / "f1.fits", data.astype(np.float32), overwrite=True)
    st = os.stat(night / "f1.fits")
    os.utime(night / "f1.fits", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = run_sequence(night, out, workers=0, plots=False)
    assert third.computed == ["f1"] and sorted(third.skipped) == ["f0", "f2"]
    row = third.summary[list(third.summary["frame"]).index("f1")]
    assert row["n_stars"] != first.summary[list(first.summary["frame"]).index("f1")]["n_stars"]


def test_read_only_output_is_one_line_per_frame(night, tmp_path, monkeypatch, capsys):
    """Every write refused as on a read-only file system: one line per frame, one per night's file."""
    import psfkit.io.outputs as outputs

    def refuse(src, dst):
        raise OSError(errno.EROFS, "Read-only file system", str(dst))

    monkeypatch.setattr(outputs.os, "replace", refuse)
    try:
        main(["seq", str(night), "-o", str(tmp_path / "out"), "--workers", "0", "-q"])
        code = 0
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    frames = [line for line in err if line.startswith("failed: ")]
    assert sorted(frames) == [f"failed: f{i}.fits: cannot write f{i}.ecsv: read-only file system" for i in range(3)]
    rest = [line for line in err if not line.startswith("failed: ")]
    assert rest and all(line.startswith("psfkit: error: cannot write ") for line in rest), err
    assert not list((tmp_path / "out" / "stars").iterdir())  # no temporary file left behind


_CHILD = """
import resource, sys
if __name__ == "__main__":
    if sys.argv[1] == "full":
        resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))  # a full disk: writes beyond 3 kB fail
    from psfkit.cli import main
    main(["seq", sys.argv[2], "-o", sys.argv[3], "--workers", "1", "-q"] + sys.argv[4:])
"""


def _child(tmp_path: Path, *args: str, **kwargs) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    # no bytecode written: under the file-size limit a .pyc would be cut short
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path),
           "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=tmp_path, **kwargs)


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise


def test_full_disk_on_a_dask_cluster_is_one_line_per_frame(night, tmp_path):
    proc = _child(tmp_path, "full", str(night), str(tmp_path / "out"), start_new_session=True)
    out, err = _finish(proc, 300)
    lines = err.strip().splitlines()
    assert proc.returncode == 1, err
    assert sorted(lines) == [f"failed: f{i}.fits: cannot write f{i}.ecsv: file too large" for i in range(3)], err


def test_ctrl_c_on_a_dask_cluster_is_one_line_and_exit_130(night, tmp_path):
    many = tmp_path / "many"
    many.mkdir()
    for i in range(40):  # enough frames that the night is still running when Ctrl+C comes
        (many / f"g{i:02d}.fits").write_bytes((night / f"f{i % 3}.fits").read_bytes())
    proc = _child(tmp_path, "run", str(many), str(tmp_path / "out"), "--deblend", start_new_session=True)
    stars = tmp_path / "out" / "stars"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (stars.is_dir() and any(stars.glob("g*.ecsv"))):
        time.sleep(0.2)  # the cluster is up and measuring
    assert proc.poll() is None, proc.communicate()
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does: the whole process group
    out, err = _finish(proc, 120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["psfkit: interrupted"], err
