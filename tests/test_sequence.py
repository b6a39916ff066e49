"""The sequence runner on a real local Dask cluster (2 worker processes) against truth.

A simulated 20-frame night (256x256, drift, changing seeing, one frame of bad seeing, one with a
bright sky, a variable target) and the 3 real NITES frames; results compared with a plain
in-process run, a worker killed mid-run, an interrupted run re-run, an unreadable frame.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from _helpers import run_cli
from astropy.io import fits
from astropy.table import Table

from psfkit.analysis.lightcurve import estimate_shift
from psfkit.analysis.sequence import QUIET_SCHEDULER, WORKER_ENV, list_frames, run_sequence
from psfkit.datasets.simulate import add_noise, render_stars, star_params
from psfkit.errors import PsfkitError

N_FRAMES = 20
SHAPE = (256, 256)
GAIN, READ_NOISE = 1.5, 5.0
BAD_SEEING, BRIGHT_SKY = 13, 7  # frames (time order) that must be rejected


def _truth_night() -> dict:
    rng = np.random.default_rng(7)
    # star 0: the variable target; stars 1-3: comparison stars; all four isolated (no neighbour
    # within 32 px), the others at least 14 px apart
    x, y = [70.0, 180.0, 120.0, 60.0], [80.0, 190.0, 140.0, 200.0]
    while len(x) < 24:
        px, py = rng.uniform(40, 200), rng.uniform(45, 215)
        d = np.hypot(np.array(x) - px, np.array(y) - py)
        if d[:4].min() > 32 and d.min() > 14:
            x.append(px)
            y.append(py)
    x, y = np.array(x), np.array(y)
    flux = np.exp(rng.uniform(np.log(4e3), np.log(1.5e5), len(x)))
    flux[:4] = [6e4, 8e4, 5e4, 7e4]
    i = np.arange(N_FRAMES)
    return {
        "x": x, "y": y, "flux": flux,
        "dx": 1.3 * i + 0.4 * np.sin(i), "dy": -0.7 * i + 0.3 * np.cos(1.7 * i),
        "fwhm": np.where(i == BAD_SEEING, 6.5, 3.2 + 0.6 * np.sin(i / 3.0)),
        "background": np.where(i == BRIGHT_SKY, 2000.0, 200.0 + 5.0 * i),
        "target_scale": 1.0 + 0.1 * np.sin(2 * np.pi * i / 8.0),
        "seconds": 60.0 * i,
    }


def _name_of(i: int) -> str:
    return f"night_{(i * 7) % N_FRAMES:02d}.fits"  # name order differs from time order


@pytest.fixture(scope="module")
def night(tmp_path_factory) -> tuple[Path, dict]:
    """20 simulated frames with DATE-OBS, their truth."""
    folder = tmp_path_factory.mktemp("night")
    t = _truth_night()
    rng = np.random.default_rng(11)
    for i in range(N_FRAMES):
        flux = t["flux"].copy()
        flux[0] *= t["target_scale"][i]
        p = star_params("gaussian", t["x"] + t["dx"][i], t["y"] + t["dy"][i], flux, t["fwhm"][i], t["fwhm"][i], 0.0)
        expected = render_stars(SHAPE, p) + t["background"][i]
        data = add_noise(expected, gain=GAIN, read_noise=READ_NOISE, rng=rng).astype(np.float32)
        hdr = fits.Header()
        sec = int(t["seconds"][i])
        hdr["DATE-OBS"] = f"2026-11-21T22:{sec // 60:02d}:{sec % 60:02d}"
        hdr["EXPTIME"] = 30.0
        hdr["GAIN"] = GAIN
        hdr["RDNOISE"] = READ_NOISE
        fits.writeto(folder / _name_of(i), data, hdr)
    return folder, t


@pytest.fixture(scope="module")
def client():
    """A real local Dask cluster: 2 worker processes, one thread each, quiet, closed at the end."""
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                       scheduler_kwargs=QUIET_SCHEDULER, silence_logs=logging.ERROR,
                                       env=dict(WORKER_ENV))
    c = distributed.Client(cluster)
    quiet = logging.getLogger("distributed")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    yield c
    c.close()
    cluster.close()
    quiet.setLevel(level)


def _track(t: dict) -> tuple[list, list]:
    # reference = first frame in time order: positions there
    pos = [(t["x"][k] + t["dx"][0], t["y"][k] + t["dy"][0]) for k in range(4)]
    return pos[:1], pos[1:]


@pytest.fixture(scope="module")
def night_cluster_run(night, client, tmp_path_factory):
    folder, t = night
    target, comps = _track(t)
    out = tmp_path_factory.mktemp("night_cluster")
    return run_sequence(folder, out, client=client, track=target, compare=comps)


@pytest.fixture(scope="module")
def night_serial_run(night, tmp_path_factory):
    folder, t = night
    target, comps = _track(t)
    out = tmp_path_factory.mktemp("night_serial")
    return run_sequence(folder, out, workers=0, track=target, compare=comps)


def _assert_same(a, b) -> None:
    """Same frames, same numbers (a process-pool run vs the plain loop).

    To float32 precision: find_stars estimates the background in float32, whose sums may round
    differently from one process to another (1e-7 relative).
    """
    assert list(a.summary["frame"]) == list(b.summary["frame"])
    for col in a.summary.colnames:
        if col == "path" or a.summary[col].dtype.kind in "USOb":
            assert list(a.summary[col]) == list(b.summary[col]), col
        else:
            np.testing.assert_allclose(a.summary[col], b.summary[col], rtol=1e-5, atol=1e-9, err_msg=col)
    if a.lightcurve is not None:
        for col in ("x_fit", "y_fit", "flux_fit", "flux_err", "dmag", "dmag_err"):
            np.testing.assert_allclose(a.lightcurve[col], b.lightcurve[col], rtol=1e-5, atol=1e-6, err_msg=col)
    for name in a.summary["frame"]:
        sa = Table.read(a.outdir / "stars" / f"{name}.ecsv")
        sb = Table.read(b.outdir / "stars" / f"{name}.ecsv")
        assert len(sa) == len(sb)
        np.testing.assert_allclose(sa["x_fit"], sb["x_fit"], rtol=1e-6)
        np.testing.assert_allclose(sa["fwhm"], sb["fwhm"], rtol=1e-5)


# ---------------------------------------------------------------- pieces


def test_list_frames_time_order_from_date_obs(night, tmp_path):
    folder, t = night
    frames = list_frames(folder)
    assert [p.name for p in frames] == [_name_of(i) for i in range(N_FRAMES)]
    assert [p.name for p in list_frames([str(folder / "night_0*.fits")])] == \
        [_name_of(i) for i in range(N_FRAMES) if _name_of(i).startswith("night_0")]
    # without DATE-OBS: by name
    for name in ("b.fits", "a.fits", "c.fit"):
        fits.writeto(tmp_path / name, np.zeros((8, 8), np.float32))
    (tmp_path / "notes.txt").write_text("not a frame")
    assert [p.name for p in list_frames(tmp_path)] == ["a.fits", "b.fits", "c.fit"]
    with pytest.raises(PsfkitError, match="no such file"):
        list_frames([str(tmp_path / "nothing*.fits")])


def test_estimate_shift_recovers_offset_among_spurious_stars():
    rng = np.random.default_rng(3)
    ref = rng.uniform(0, 1000, (40, 2))
    shift = np.array([17.3, -42.6])
    cur = ref[5:] + shift + rng.normal(0, 0.05, (35, 2))  # 5 stars lost
    cur = np.vstack([cur[:10], rng.uniform(0, 1000, (8, 2)), cur[10:]])  # 8 spurious ones in between
    s = estimate_shift(ref, cur)
    assert abs(s.dx - shift[0]) < 0.05 and abs(s.dy - shift[1]) < 0.05
    assert s.n_matched >= 25
    unrelated = estimate_shift(ref[:10], rng.uniform(0, 1e5, (10, 2)), tolerance=1.0)
    assert unrelated.n_matched == 0 and math.isnan(unrelated.dx)


# ---------------------------------------------------------------- the simulated night on the cluster


@pytest.mark.slow
def test_night_summary_matches_truth(night, night_cluster_run):
    _, t = night
    r = night_cluster_run
    s = r.summary
    assert list(s["frame"]) == [_name_of(i)[:-5] for i in range(N_FRAMES)]
    assert sorted(r.computed) == sorted(s["frame"]) and r.skipped == [] and r.failed == {}
    np.testing.assert_allclose(s["time"], t["seconds"] / 60.0, atol=1e-3)
    np.testing.assert_allclose(s["fwhm_weighted"], t["fwhm"], rtol=0.04)
    np.testing.assert_allclose(s["fwhm_median"], t["fwhm"], rtol=0.06)
    assert np.all(s["roundness"] > 0.85)
    np.testing.assert_allclose(s["hfr_median"], t["fwhm"] / 2, rtol=0.06)  # HFR = FWHM / 2 for a Gaussian
    assert np.all(s["eccentricity"] < 0.6)  # round stars: b/a > 0.8
    # the inspector's numbers per frame: a flat, untilted field (the surface's own noise only)
    assert np.all(np.isfinite(s["tilt_percent"]) | (s["n_stars"] < 12))
    np.testing.assert_allclose(s["fwhm_center"], t["fwhm"], rtol=0.1)
    np.testing.assert_allclose(s["background"], t["background"], rtol=0.03)
    noise = np.sqrt(t["background"] / GAIN + (READ_NOISE / GAIN) ** 2)
    np.testing.assert_allclose(s["noise"], noise, rtol=0.1)
    np.testing.assert_allclose(s["shift_x"], t["dx"] - t["dx"][0], atol=0.1)
    np.testing.assert_allclose(s["shift_y"], t["dy"] - t["dy"][0], atol=0.1)
    assert np.all(s["n_stars"] >= 15)
    # rejection: exactly the bad-seeing frame and the bright-sky frame, with the right reasons
    rejected = {str(f): str(why) for f, why in zip(s["frame"], s["reject_reason"]) if why}
    assert set(rejected) == {_name_of(BAD_SEEING)[:-5], _name_of(BRIGHT_SKY)[:-5]}
    assert "fwhm" in rejected[_name_of(BAD_SEEING)[:-5]].split(",")
    assert "background" in rejected[_name_of(BRIGHT_SKY)[:-5]].split(",")
    # the bad-seeing frame ranks last; ranking is by quality
    assert s["rank"][BAD_SEEING] == N_FRAMES
    assert np.all(np.diff(np.asarray(s["quality"])[np.argsort(s["rank"])]) <= 0)
    # files, read back
    assert sorted(p.name for p in (r.outdir / "stars").iterdir()) == sorted(f"{f}.ecsv" for f in s["frame"])
    back = Table.read(r.outdir / "summary.ecsv")
    assert list(back["frame"]) == list(s["frame"])
    np.testing.assert_allclose(back["fwhm_weighted"], s["fwhm_weighted"])
    lines = (r.outdir / "rejected.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in lines) == sorted(rejected)
    for png in ("quality.png", "lightcurve.png"):
        assert (r.outdir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_night_light_curve_matches_truth(night, night_cluster_run):
    _, t = night
    curve = night_cluster_run.lightcurve
    assert len(curve) == 4 * N_FRAMES
    target = curve[curve["star"] == 0]
    assert list(target["frame"]) == [_name_of(i)[:-5] for i in range(N_FRAMES)]
    # positions follow the drift
    np.testing.assert_allclose(target["x_fit"], t["x"][0] + t["dx"], atol=0.15)
    np.testing.assert_allclose(target["y_fit"], t["y"][0] + t["dy"], atol=0.15)
    np.testing.assert_allclose(target["fwhm"], t["fwhm"], rtol=0.05)
    # differential magnitudes against the truth, within their errors
    true_dmag = -2.5 * np.log10(t["flux"][0] * t["target_scale"] / t["flux"][1:4].sum())
    pull = (np.asarray(target["dmag"]) - true_dmag) / np.asarray(target["dmag_err"])
    assert np.all(np.isfinite(pull))
    assert np.all(np.abs(pull) < 4.5), pull
    assert 0.4 < np.std(pull) < 1.8, np.std(pull)
    # the variation itself is seen: amplitude 0.1 in flux ~ 0.1 mag peak to peak / 2
    assert np.ptp(target["dmag"]) > 0.15
    assert np.all(np.isnan(curve[curve["role"] == "compare"]["dmag"]))
    back = Table.read(night_cluster_run.outdir / "lightcurve.ecsv")
    np.testing.assert_allclose(back["dmag"][back["star"] == 0], target["dmag"])


@pytest.mark.slow
def test_cluster_equals_plain_loop(night_cluster_run, night_serial_run):
    _assert_same(night_cluster_run, night_serial_run)


@pytest.mark.slow
def test_interrupted_run_redoes_only_missing_frames(night, client, night_serial_run, tmp_path):
    folder, t = night
    target, comps = _track(t)

    class Interrupted(Exception):
        pass

    def stop_after_six(done, total):
        if done >= 6:
            raise Interrupted

    with pytest.raises(Interrupted):
        run_sequence(folder, tmp_path, workers=0, track=target, compare=comps, progress=stop_after_six)
    first = sorted(p.name for p in (tmp_path / "stars").iterdir())
    assert len(first) == 6 and not any(n.startswith(".") for n in first)
    mtimes = {n: (tmp_path / "stars" / n).stat().st_mtime_ns for n in first}
    r = run_sequence(folder, tmp_path, client=client, track=target, compare=comps)
    assert sorted(f"{n}.ecsv" for n in r.skipped) == first
    assert len(r.computed) == N_FRAMES - 6 and not set(r.computed) & set(r.skipped)
    assert {n: (tmp_path / "stars" / n).stat().st_mtime_ns for n in first} == mtimes
    _assert_same(r, night_serial_run)
    # other settings: nothing is skipped
    r2 = run_sequence([folder / _name_of(0), folder / _name_of(1)], tmp_path / "other", workers=0, threshold=8.0)
    assert r2.skipped == [] and len(r2.computed) == 2


@pytest.mark.slow
def test_unreadable_frame_is_reported_and_skipped(night, client, tmp_path):
    folder, _ = night
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        shutil.copy(folder / _name_of(i), src / _name_of(i))
    (src / "broken.fits").write_bytes(b"SIMPLE  =  this is not a FITS file" * 10)
    out = tmp_path / "out"
    r = run_sequence(src, out, client=client)
    assert list(r.failed) == ["broken"]
    assert "broken.fits" in r.failed["broken"]
    assert sorted(r.computed) == sorted(_name_of(i)[:-5] for i in range(3))
    assert len(r.summary) == 3
    assert (out / "failed.txt").read_text().startswith("broken\t")
    assert not (out / "stars" / "broken.ecsv").exists()
    again = run_sequence(src, out, workers=0)
    assert list(again.failed) == ["broken"] and len(again.skipped) == 3 and again.computed == []


@pytest.mark.slow
def test_worker_killed_mid_run_leaves_each_frame_once(night, client, night_serial_run, tmp_path):
    folder, t = night
    target, comps = _track(t)
    pids = client.run(os.getpid)
    killed = {}

    def kill_one_worker(done, total):
        if done >= 2 and not killed:
            busy = {w: tasks for w, tasks in client.processing().items() if tasks}
            address = next(iter(busy), next(iter(pids)))
            killed["address"], killed["busy"] = address, bool(busy)
            os.kill(pids[address], signal.SIGKILL)

    r = run_sequence(folder, tmp_path, client=client, track=target, compare=comps, progress=kill_one_worker)
    assert killed and killed["busy"]
    assert r.failed == {}
    assert len(r.computed) == N_FRAMES and len(set(r.computed)) == N_FRAMES
    files = sorted(p.name for p in (tmp_path / "stars").iterdir())
    assert files == sorted(f"{f}.ecsv" for f in r.summary["frame"])  # no temporary leftovers
    assert len(Table.read(tmp_path / "summary.ecsv")) == N_FRAMES
    _assert_same(r, night_serial_run)
    client.wait_for_workers(2, timeout=60)


# ---------------------------------------------------------------- the real NITES frames


@pytest.mark.slow
def test_nites_sequence_on_cluster(shared_data, client, tmp_path):
    seq = shared_data / "nites_j17490840_seq"
    plain = run_sequence(seq, tmp_path / "plain", workers=0)
    ref = Table.read(tmp_path / "plain" / "stars" / "J17490840-001.ecsv")
    bright = [(float(ref["x_fit"][k]), float(ref["y_fit"][k])) for k in range(4)]
    r = run_sequence(str(seq / "*.fit"), tmp_path / "dask", client=client, track=bright[:1], compare=bright[1:])
    s = r.summary
    assert list(s["frame"]) == ["J17490840-001", "J17490840-002", "J17490840-003"]
    assert list(s["date_obs"]) == ["2014-07-27T21:05:43", "2014-07-27T21:06:12", "2014-07-27T21:06:39"]
    np.testing.assert_allclose(s["time"], [0.0, 29 / 60, 56 / 60], atol=1e-4)
    assert np.all((s["n_stars"] > 40) & (s["n_stars"] < 200))
    assert np.all((s["fwhm_weighted"] > 6) & (s["fwhm_weighted"] < 12))
    scale = 206.265 * 13.0 / 4064.0
    np.testing.assert_allclose(s["fwhm_weighted_arcsec"], s["fwhm_weighted"] * scale, rtol=1e-5)
    assert not np.any(s["rejected"])
    for col in ("n_stars", "fwhm_weighted", "roundness", "background", "noise"):
        np.testing.assert_allclose(s[col], plain.summary[col], rtol=1e-5, err_msg=col)
    # the shift from matched stars agrees with where the tracked stars were found
    curve = r.lightcurve
    for k, name in enumerate(s["frame"]):
        rows = curve[curve["frame"] == name]
        np.testing.assert_allclose(rows["x_fit"] - rows["x_ref"], s["shift_x"][k], atol=0.5)
        np.testing.assert_allclose(rows["y_fit"] - rows["y_ref"], s["shift_y"][k], atol=0.5)
    target = curve[curve["star"] == 0]
    assert np.all(np.isfinite(target["dmag"])) and np.all(target["dmag_err"] > 0)
    # 3 frames one minute apart: the differential magnitude of a field star is steady within its errors
    assert np.ptp(target["dmag"]) < 5 * np.max(target["dmag_err"]) + 0.01


# ---------------------------------------------------------------- the command


def test_cli_seq(night, tmp_path):
    folder, t = night
    target, comps = _track(t)
    frames = [str(folder / _name_of(i)) for i in range(4)]
    cmd = ["seq", *frames, "-o", str(tmp_path / "o"), "--workers", "0", "-q",
           "--track", f"{target[0][0]},{target[0][1]}", "--compare", f"{comps[0][0]},{comps[0][1]}"]
    run = run_cli(*cmd)
    assert run.returncode == 0, run.stderr
    assert "4 frames measured" in run.stdout
    back = Table.read(tmp_path / "o" / "lightcurve.ecsv")
    assert len(back) == 8 and np.all(np.isfinite(back["dmag"][back["star"] == 0]))
    # --deblend changes the frames' settings: every frame is measured again, with find_stars(deblend=True)
    first = Table.read(tmp_path / "o" / "stars" / "night_00.ecsv").meta["psfkit_sequence"]["fingerprint"]
    run = run_cli(*cmd, "--deblend")
    assert run.returncode == 0, run.stderr
    assert "4 frames measured (4 now" in run.stdout
    again = Table.read(tmp_path / "o" / "stars" / "night_00.ecsv")
    assert again.meta["psfkit_sequence"]["fingerprint"] != first and "detection_pass" in again.colnames
    bad = run_cli("seq", str(tmp_path / "none*.fits"), "-o", str(tmp_path))
    assert bad.returncode == 2
    missing = tmp_path / "none*.fits"
    assert bad.stderr.strip().splitlines() == [f"psfkit: error: {missing}: no such file, folder or matching file"]
    bad = run_cli("seq", frames[0], "-o", str(tmp_path), "--track", "3;4")
    assert bad.returncode == 2 and bad.stderr.strip().startswith("psfkit: error: --track wants X,Y")


def test_tiff_frames_and_load_options(night, tmp_path):
    """A folder of TIFF frames is a sequence (name order: no DATE-OBS), and the image options
    reach the workers' reader: a user scale gives the FWHM in arcsec."""
    import tifffile
    from astropy.io import fits

    folder, t = night
    tiffs = tmp_path / "tiffs"
    tiffs.mkdir()
    for i in range(3):
        data = fits.getdata(folder / _name_of(i)).astype(np.float32)
        tifffile.imwrite(tiffs / f"frame_{i}.tif", data[::-1])  # TIFF rows run top-down
    assert [p.name for p in list_frames(tiffs)] == ["frame_0.tif", "frame_1.tif", "frame_2.tif"]
    plain = run_sequence(tiffs, tmp_path / "a", workers=0, plots=False)
    scaled = run_sequence(tiffs, tmp_path / "b", workers=0, plots=False, load_options={"pixel_scale": 1.5})
    s0, s1 = plain.summary, scaled.summary
    assert list(s1["frame"]) == ["frame_0", "frame_1", "frame_2"]
    assert np.all(np.isnan(s0["fwhm_median_arcsec"]))
    np.testing.assert_allclose(s1["fwhm_median_arcsec"], 1.5 * s1["fwhm_median"], rtol=1e-9)
    np.testing.assert_allclose(s1["fwhm_median"], t["fwhm"][:3], rtol=0.08)


@pytest.mark.parametrize("args,needle", [
    (["--scheduler", "foo"], "tcp://HOST:8786"),
    (["--threshold", "-1", "--workers", "0"], "threshold"),
    (["--model", "foo", "--workers", "0"], "gaussian or moffat"),
    (["--fwhm", "-3", "--workers", "0"], "FWHM"),
    (["--max-fwhm-ratio", "-1", "--workers", "0"], "fwhm_ratio"),
])
def test_cli_seq_bad_options_are_one_line_before_any_work(night, tmp_path, args, needle):
    folder, _ = night
    out = tmp_path / "o"
    run = run_cli("seq", str(folder / _name_of(0)), "-o", str(out), "-q", *args)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("psfkit: error:") and needle in lines[0], run.stderr
    assert not (out / "stars").exists() or not any((out / "stars").iterdir())
