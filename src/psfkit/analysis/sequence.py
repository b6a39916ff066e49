"""A night of frames: every frame measured, locally or on a Dask cluster, nothing lost, nothing twice.

:func:`run_sequence` lists the frames (files, globs or folders; time order from DATE-OBS, else
by name), and for each frame, on a Dask worker that reads the file itself (paths travel, not
pixels), finds and fits the stars (:func:`psfkit.find_stars`), summarises the frame
(:func:`psfkit.analysis.quality.frame_summary`) and fits the tracked stars
(:func:`psfkit.analysis.lightcurve.fit_tracked`).  Each frame's star list is written atomically
(a temporary file in the same folder, then ``os.replace``) with its summary and tracked
photometry in the file's metadata, so a frame is complete exactly when its star list exists.
A re-run skips complete frames made with the same settings; a worker lost mid-run has its
frames redone elsewhere by Dask; an unreadable frame is reported and skipped.

Output folder::

    stars/<frame>.ecsv   one star list per frame (metadata: summary, tracked stars)
    summary.ecsv         one row per frame: summary, quality, rank, rejected, reject_reason
    rejected.txt         rejected frames with their reasons (tab-separated)
    failed.txt           frames that could not be measured, with the reason
    quality.png          FWHM, roundness, background and star count against time
    lightcurve.ecsv      with --track: one row per (frame, star); lightcurve.png
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import math
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table

from psfkit._optional import require
from psfkit.analysis.lightcurve import (
    FrameShift,
    differential_photometry,
    estimate_shift,
    fit_tracked,
    plot_light_curves,
)
from psfkit.analysis.quality import QualityLimits, frame_summary, plot_frame_quality, rank_frames
from psfkit.errors import PsfkitError
from psfkit.io.formats import FITS_SUFFIXES, IMAGE_SUFFIXES, is_image_name
from psfkit.io.outputs import atomic_output, check_outputs

__all__ = ["SequenceResult", "list_frames", "measure_frame", "run_sequence", "max_workers", "QUIET_SCHEDULER",
           "WORKER_ENV"]

#: Environment of the worker processes psfkit starts: one thread each for numba and BLAS,
#: so that N workers use N cores (Dask runs one task per worker thread).
WORKER_ENV = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "MKL_NUM_THREADS": "1"}

SUMMARY_COLUMNS = ["frame", "time", "date_obs", "exptime", "n_stars", "fwhm_median", "fwhm_weighted",
                   "fwhm_median_arcsec", "fwhm_weighted_arcsec", "roundness", "background", "noise",
                   "shift_x", "shift_y", "n_matched", "hfr_median", "eccentricity", "fwhm_center", "tilt_percent",
                   "tilt_direction_deg", "curvature_percent", "path"]
#: The scheduler's HTTP server (metrics) on a free port: without a dashboard it still binds 8787
#: by default and warns when another cluster holds that port.
QUIET_SCHEDULER = {"dashboard_address": ":0"}
N_BRIGHT = 50  # bright stars of the reference frame used to find each frame's shift


@dataclass
class SequenceResult:
    """What :func:`run_sequence` did.

    Attributes
    ----------
    outdir : Path
        The output folder.
    summary : Table
        One row per measured frame (time order) with quality, rank, rejected and reject_reason.
    lightcurve : Table or None
        With tracked stars: one row per (frame, star).
    computed : list of str
        Frames measured in this run.
    skipped : list of str
        Frames already complete (same settings) from an earlier run.
    failed : dict
        Frame -> reason, for frames that could not be measured.
    not_written : dict
        Output file -> reason, for the night's files that could not be written (a full or
        read-only disk).

    Examples
    --------
    :func:`run_sequence` returns one; its fields:

    >>> import dataclasses
    >>> [field.name for field in dataclasses.fields(SequenceResult)][:3]
    ['outdir', 'summary', 'lightcurve']
    """

    outdir: Path
    summary: Table
    lightcurve: Table | None
    computed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    not_written: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------- frames and time order


def _is_image_file(p: Path) -> bool:
    return p.is_file() and is_image_name(p.name)


def _frame_time(path: Path) -> tuple[str, float]:
    """DATE-OBS (as written) and its MJD, from the header only; ('', nan) when absent or unreadable
    (and for files other than FITS: those frames are ordered by name).
    """
    from astropy.io import fits
    from astropy.time import Time

    if not path.name.lower().endswith(FITS_SUFFIXES):
        return "", float("nan")
    try:
        with fits.open(path, memmap=True) as hdul:
            for hdu in hdul:
                date = hdu.header.get("DATE-OBS")
                if date:
                    date = str(date).strip()
                    try:
                        return date, float(Time(date, format="isot", scale="utc").mjd)
                    except ValueError:
                        return date, float("nan")
    except Exception:  # an unreadable frame is reported later, when a worker tries to read it
        pass
    return "", float("nan")


def list_frames(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """The frames of a sequence in time order.

    Parameters
    ----------
    inputs : path, glob pattern, folder, or a list of them
        A folder contributes its image files (FITS, XISF, TIFF, PNG, JPEG, camera RAW;
        not recursively).

    Returns
    -------
    list of Path
        Unique files, sorted by DATE-OBS when every frame has one, else by name.

    Raises
    ------
    PsfkitError
        When an input matches nothing, or no frame is found.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from astropy.io import fits
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     for name, date in (("b.fits", "2024-01-01T22:00:00"), ("a.fits", "2024-01-01T23:00:00")):
    ...         fits.writeto(Path(folder) / name, np.zeros((8, 8), np.float32), fits.Header({"DATE-OBS": date}))
    ...     print([path.name for path in list_frames(folder)])
    ['b.fits', 'a.fits']
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found.extend(sorted(q for q in p.iterdir() if _is_image_file(q)))
        elif p.exists():
            found.append(p)
        else:
            matches = sorted(glob.glob(os.fspath(item)))
            if not matches:
                raise PsfkitError(f"{item}: no such file, folder or matching file")
            found.extend(Path(m) for m in matches if Path(m).is_file())
    seen: set[Path] = set()
    frames = []
    for p in found:
        r = p.resolve()
        if r not in seen:
            seen.add(r)
            frames.append(r)
    if not frames:
        raise PsfkitError("no frames found in the inputs")
    times = [_frame_time(p)[1] for p in frames]
    if all(math.isfinite(t) for t in times):
        order = sorted(range(len(frames)), key=lambda i: (times[i], frames[i].name))
    else:
        order = sorted(range(len(frames)), key=lambda i: (frames[i].name, str(frames[i])))
    return [frames[i] for i in order]


def _frame_names(frames: Sequence[Path]) -> list[str]:
    """Output names: the file name without its suffixes, made unique with a hash of the path."""
    stems = []
    for p in frames:
        name = p.name
        for suf in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
            if name.lower().endswith(suf):
                name = name[: -len(suf)]
                break
        stems.append(name)
    counts = {s: stems.count(s) for s in stems}
    return [s if counts[s] == 1 else f"{s}-{hashlib.sha1(str(p).encode()).hexdigest()[:8]}"
            for s, p in zip(stems, frames)]


# ---------------------------------------------------------------- one frame (runs on a worker)


def _plain(obj: Any) -> Any:
    """Metadata as plain JSON types (numpy scalars and arrays, NaN kept as float)."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def _atomic_write_table(table: Table, path: Path, inputs: Sequence[Path] = ()) -> None:
    with atomic_output(path, inputs=inputs) as tmp:
        table.write(tmp, format="ascii.ecsv", overwrite=True)


def _atomic_write_text(text: str, path: Path, inputs: Sequence[Path] = ()) -> None:
    with atomic_output(path, inputs=inputs) as tmp:
        tmp.write_text(text)


def measure_frame(
    path: str | os.PathLike,
    star_path: str | os.PathLike,
    *,
    settings: dict,
    reference: Sequence[Sequence[float]] | None = None,
) -> dict:
    """Measure one frame and write its star list atomically (the task each worker runs).

    Parameters
    ----------
    path : path
        The frame (the worker reads it).
    star_path : path
        Where its star list goes (ECSV); written through a temporary file and ``os.replace``.
    settings : dict
        ``load`` (keyword arguments of :func:`psfkit.load_image`: hdu, channel, optics),
        ``find`` (keyword arguments of :func:`psfkit.find_stars`), ``track`` (list of
        (x, y) in the reference frame), ``fit`` (keyword arguments of :func:`psfkit.fit_stars`
        for tracked stars), ``fingerprint``.
    reference : list of (x, y), optional
        The reference frame's bright stars, brightest first; None for the reference frame itself.

    Returns
    -------
    dict
        ``status`` ("done" or "failed"), ``reason`` (when failed), ``meta`` (what the star
        list's metadata holds: ``summary``, ``tracked``, ``bright``).
    """
    import psfkit
    from psfkit.io.image import load_image

    star_path = Path(star_path)
    try:
        stat = _file_stat(path)  # before reading: a file changed while it is measured is measured again next time
        image = load_image(path, **settings.get("load", {}))
        stars = psfkit.find_stars(image, **settings.get("find", {}))
    except (PsfkitError, OSError, ValueError, MemoryError) as exc:
        return {"status": "failed", "reason": _reason(path, exc)}
    summary = frame_summary(stars, image)
    bright = np.column_stack([np.asarray(stars["x_fit"], float), np.asarray(stars["y_fit"], float)])[:N_BRIGHT] \
        if len(stars) else np.zeros((0, 2))
    tracked: list[dict] = []
    shift = FrameShift(0.0, 0.0, len(bright))
    if settings.get("track"):
        if reference is not None:
            shift = estimate_shift(np.asarray(reference, float), bright)
        try:
            tracked = fit_tracked(image, settings["track"], shift, **settings.get("fit", {}))
        except PsfkitError as exc:
            return {"status": "failed", "reason": f"{Path(path).name}: tracked stars: {exc}"}
    summary.update(shift_x=shift.dx, shift_y=shift.dy, n_matched=shift.n_matched)
    meta = _plain({"frame_path": str(path), "fingerprint": settings.get("fingerprint", ""), "frame_stat": stat,
                   "summary": summary, "tracked": tracked, "bright": bright.tolist(),
                   "find_summary": stars.meta.get("summary", {})})
    out = stars.copy(copy_data=False)
    out.meta.clear()
    out.meta["psfkit_sequence"] = meta
    try:
        _atomic_write_table(out, star_path, inputs=[Path(path)])
    except (OSError, PsfkitError) as exc:  # a full or read-only disk: this frame fails, in words
        return {"status": "failed", "reason": f"{Path(path).name}: cannot write {star_path.name}: {_os_words(exc)}"}
    return {"status": "done", "meta": meta}


def _file_stat(path: str | os.PathLike) -> list[int]:
    """[size in bytes, modification time in ns]: what tells a re-run that a frame's file changed."""
    st = os.stat(path)
    return [int(st.st_size), int(st.st_mtime_ns)]


def _os_words(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _reason(path: str | os.PathLike, exc: BaseException) -> str:
    """One line saying why a frame failed, naming the frame once."""
    name = Path(path).name
    if isinstance(exc, MemoryError):
        text = "the frame does not fit in memory"
    elif isinstance(exc, OSError):
        text = _os_words(exc)
    else:
        text = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if name in text else f"{name}: {text}"


def _read_meta(star_path: Path) -> dict | None:
    """The sequence metadata of a complete star list, from its header only (None if absent)."""
    from astropy.table.meta import get_header_from_yaml

    try:
        lines = []
        with open(star_path) as f:
            for line in f:
                if not line.startswith("#"):
                    break
                if line.startswith("# %ECSV"):
                    continue
                lines.append(line[2:].rstrip("\n") if line.startswith("# ") else line[1:].rstrip("\n"))
        header = get_header_from_yaml(lines)
        return dict(header.get("meta", {}).get("psfkit_sequence", {})) or None
    except Exception:
        return None


# ---------------------------------------------------------------- the run


class _Serial:
    """In-process stand-in for a Dask client: runs each task when it is asked for."""

    def run(self, fn: Callable, args: list[tuple], kwargs: list[dict]):
        for a, k in zip(args, kwargs):
            try:
                result = fn(*a, **k)
            except Exception as exc:  # as on Dask: an unexpected error fails the frame, not the night
                result = {"status": "failed", "reason": f"{Path(a[0]).name}: an unexpected error "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'})"}
            yield a, result


def _dask_map(client: Any, fn: Callable, args: list[tuple], kwargs: list[dict], keys: list[str]):
    """Submit the tasks, yield (args, result) as they finish (any order)."""
    as_completed = require("distributed", purpose="sequences on Dask").as_completed

    futures = {}
    for a, k, key in zip(args, kwargs, keys):
        fut = client.submit(fn, *a, key=key, pure=False, retries=1, **k)
        futures[fut] = a
    for fut in as_completed(list(futures)):
        a = futures.pop(fut)
        try:
            yield a, fut.result()
        except Exception as exc:  # KilledWorker after repeated losses, or an unexpected error
            kind = type(exc).__name__
            why = ("its worker process died repeatedly (out of memory?)" if kind == "KilledWorker" else
                   f"an unexpected error ({kind}: {str(exc).splitlines()[0] if str(exc) else 'no detail'})")
            yield a, {"status": "failed", "reason": f"{Path(a[0]).name}: {why}"}
        finally:
            fut.release()


def _make_client(client: Any, scheduler: str | None, workers: int | None):
    """(client, owned objects to close); client None means the plain in-process loop."""
    if client is not None:
        return client, []
    if scheduler is not None:
        Client = require("distributed", purpose="sequences on Dask").Client

        if "://" not in scheduler or not scheduler.rsplit(":", 1)[-1].isdigit():
            raise PsfkitError(f"--scheduler wants an address like tcp://HOST:8786, not {scheduler!r}")
        try:
            c = Client(scheduler, timeout="20s")
        except (OSError, ValueError, TypeError) as exc:
            raise PsfkitError(f"cannot reach the Dask scheduler at {scheduler}: {exc}".splitlines()[0]) from None
        return c, [c]
    if workers == 0:
        return None, []
    import signal
    import threading

    distributed = require("distributed", purpose="parallel sequences (workers=0 or --workers 0 run without Dask)")
    Client, LocalCluster = distributed.Client, distributed.LocalCluster

    n = workers or os.cpu_count() or 1
    # SIGINT ignored while the cluster starts: the worker processes inherit the ignored signal (a
    # Python started with SIGINT ignored keeps ignoring it), so Ctrl+C reaches only this process,
    # which stops the cluster: no worker tracebacks.  (A Ctrl+C during these seconds is lost.)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
    try:
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                               scheduler_kwargs=QUIET_SCHEDULER, silence_logs=logging.CRITICAL,
                               env=dict(WORKER_ENV))
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)
    c = Client(cluster)
    return c, [c, cluster]


def max_workers() -> int:
    """The most worker processes of a local cluster: 4 per core (each holds a frame, about 300 MB)."""
    return 4 * (os.cpu_count() or 1)


@contextlib.contextmanager
def _quiet_distributed() -> Iterator[None]:
    """Silence the distributed loggers of this process (worker, nanny, scheduler, client) for our run:
    a failing frame says why in one line of its own; closing the cluster says nothing.
    """
    loggers = [logging.getLogger(name) for name in ("distributed", "distributed.worker", "distributed.nanny",
                                                    "distributed.scheduler", "distributed.client",
                                                    "distributed.core", "distributed.comm")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _summary_table(records: dict[str, dict], names: list[str], frames: list[Path], limits: QualityLimits) -> Table:
    rows = []
    for name, path in zip(names, frames):
        rec = records.get(name)
        if rec is None:
            continue
        s = rec["summary"]
        rows.append({"frame": name, "path": str(path), **{k: s.get(k) for k in SUMMARY_COLUMNS if k in s}})
    mjd0 = None
    times = []
    from astropy.time import Time

    for r in rows:
        try:
            times.append(float(Time(r["date_obs"], format="isot", scale="utc").mjd) if r["date_obs"] else float("nan"))
        except ValueError:
            times.append(float("nan"))
    use_time = bool(rows) and all(math.isfinite(t) for t in times)
    if use_time:
        mjd0 = min(times)
    for i, r in enumerate(rows):
        r["time"] = (times[i] - mjd0) * 1440.0 if use_time else float(names.index(r["frame"]))
    table = Table(rows=[[r.get(c, float("nan")) for c in SUMMARY_COLUMNS] for r in rows], names=SUMMARY_COLUMNS) \
        if rows else Table(names=SUMMARY_COLUMNS, dtype=[str, float, str, float, int] + [float] * 9 + [int]
                           + [float] * (len(SUMMARY_COLUMNS) - 16) + [str])
    table.meta["time_label"] = "minutes since the first frame" if use_time else "frame number"
    if use_time:
        table.meta["mjd_start"] = mjd0
    return rank_frames(table, limits=limits)


def _light_curve(records: dict[str, dict], summary: Table, track: list, n_targets: int) -> Table:
    rows = []
    time_of = {str(f): float(t) for f, t in zip(summary["frame"], summary["time"])}
    for name in summary["frame"]:
        for rec in records[str(name)].get("tracked", []):
            i = int(rec["star"])
            role = "target" if i < n_targets else "compare"
            rows.append([str(name), time_of[str(name)], i, role, track[i][0], track[i][1], rec["x_fit"],
                         rec["y_fit"], rec["flux_fit"], rec["flux_err"], rec["mag"], rec["mag_err"], rec["fwhm"],
                         int(rec["flags"])])
    names = ["frame", "time", "star", "role", "x_ref", "y_ref", "x_fit", "y_fit", "flux_fit", "flux_err", "mag",
             "mag_err", "fwhm", "flags"]
    dtypes = [str, float, int, str] + [float] * 9 + [int]
    curve = Table(rows=rows, names=names, dtype=dtypes) if rows else Table(names=names, dtype=dtypes)
    curve.meta["time_label"] = summary.meta.get("time_label", "time")
    return differential_photometry(curve, targets=range(n_targets), comparisons=range(n_targets, len(track)))


def run_sequence(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    outdir: str | os.PathLike,
    *,
    client: Any = None,
    scheduler: str | None = None,
    workers: int | None = None,
    threshold: float = 5.0,
    fwhm: float | None = None,
    model: str = "gaussian",
    find_options: dict | None = None,
    load_options: dict | None = None,
    track: Sequence[tuple[float, float]] = (),
    compare: Sequence[tuple[float, float]] = (),
    zero_point: float = 0.0,
    limits: QualityLimits | None = None,
    plots: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> SequenceResult:
    """Measure every frame of a sequence, rank the frames, and follow the tracked stars.

    Parameters
    ----------
    inputs : path, glob, folder or a list of them
        The frames (see :func:`list_frames`).
    outdir : path
        Output folder (created).  Complete frames already there are skipped.
    client : distributed.Client, optional
        Run on this Dask client.  Without it and without ``scheduler``, a
        ``LocalCluster`` of ``workers`` processes (one thread each) is started and closed.
    scheduler : str, optional
        Address of a running Dask scheduler (``tcp://HOST:8786``).
    workers : int, optional
        Worker processes of the local cluster (default: the cores, at most
        :func:`max_workers`: 4 per core); 0 runs a plain in-process loop without Dask.
    threshold, fwhm, model : optional
        Passed to :func:`psfkit.find_stars`, with ``find_options``.
    load_options : dict, optional
        Passed to :func:`psfkit.load_image` by the worker reading each frame (``hdu``,
        ``channel``, ``focal_length``, ``pixel_size``, ``binning``, ``pixel_scale``).
    track : sequence of (x, y)
        Stars to follow (0-based pixels in the first frame, the reference).
    compare : sequence of (x, y)
        Comparison stars (same frame): their summed flux gives differential magnitudes.
    zero_point : float
        Magnitude zero point of the tracked stars.
    limits : QualityLimits, optional
        Frame rejection limits.
    plots : bool
        Write quality.png (and lightcurve.png).
    progress : callable, optional
        Called as ``progress(done, total)`` after each frame.

    Returns
    -------
    SequenceResult

    Examples
    --------
    Two simulated frames, measured in this process (``workers=0``, no Dask):

    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from astropy.io import fits
    >>> from psfkit.datasets.simulate import simulate_field
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     for i in range(2):
    ...         data, truth = simulate_field((96, 96), 6, fwhm=3.0, seed=i, edge=12, min_separation=15)
    ...         fits.writeto(Path(folder) / f"frame{i}.fits", data.astype(np.float32))
    ...     result = run_sequence(folder, Path(folder) / "out", workers=0)
    ...     print(len(result.summary), len(result.computed), result.failed)
    2 2 {}
    """
    limits = limits or QualityLimits()
    if not (threshold > 0):
        raise PsfkitError(f"the detection threshold must be positive, got {threshold}")
    if fwhm is not None and not (fwhm > 0):
        raise PsfkitError(f"the FWHM must be positive, got {fwhm}")
    if str(model).lower() not in ("gaussian", "moffat"):
        raise PsfkitError(f"the model must be gaussian or moffat, not {model!r}")
    for name in ("fwhm_ratio", "roundness_drop", "star_ratio", "background_sigma"):
        value = getattr(limits, name, None)
        if value is not None and not (value > 0):
            raise PsfkitError(f"the frame limit {name} must be positive, got {value}")
    if workers is not None and not 0 <= workers <= max_workers():
        raise PsfkitError(f"the number of workers must be 0 to {max_workers()} (4 per core; each holds a frame), "
                          f"got {workers}")
    if plots:  # before any frame is measured, not after
        require("matplotlib", purpose="the sequence's plots (plots=False or --no-plots: none)")
    frames = list_frames(inputs)
    names = _frame_names(frames)
    outdir = Path(outdir)
    star_dir = outdir / "stars"
    outputs = [star_dir / f"{n}.ecsv" for n in names] + [outdir / f for f in (
        "summary.ecsv", "rejected.txt", "failed.txt", "quality.png", "lightcurve.ecsv", "lightcurve.png")]
    check_outputs(outputs, frames)  # never a frame replaced by an output, before anything is written
    try:
        star_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PsfkitError(f"{star_dir}: cannot create the output folder ({_os_words(exc)})") from None
    all_track = [tuple(map(float, p)) for p in track] + [tuple(map(float, p)) for p in compare]
    if compare and not track:
        raise PsfkitError("comparison stars need at least one tracked star (--track)")
    find = {"threshold": threshold, "fwhm": fwhm, "model": model, **(find_options or {})}
    settings = {"find": find, "track": all_track, "fit": {"model": model, "zero_point": zero_point}}
    load = {k: v for k, v in (load_options or {}).items() if v is not None and k != "max_pixels"}
    if load:  # only when given, so that earlier runs' outputs keep their fingerprint
        settings["load"] = load
    settings["fingerprint"] = hashlib.sha1(
        json.dumps({**settings, "reference": str(frames[0])}, sort_keys=True, default=str).encode()).hexdigest()[:16]
    if (load_options or {}).get("max_pixels") is not None:  # a limit, not a setting: not in the fingerprint
        settings["load"] = {**load, "max_pixels": load_options["max_pixels"]}
    star_paths = {n: star_dir / f"{n}.ecsv" for n in names}

    records: dict[str, dict] = {}
    skipped: list[str] = []
    for n, f in zip(names, frames):
        meta = _read_meta(star_paths[n])
        if meta and meta.get("fingerprint") == settings["fingerprint"] and meta.get("frame_stat") == _file_stat(f):
            records[n] = meta  # same settings, same file (size and modification time)
            skipped.append(n)
    computed: list[str] = []
    failed: dict[str, str] = {}
    total = len(names)
    by_path = dict(zip(map(str, frames), names))

    not_written: dict[str, str] = {}

    def write_outputs() -> Table:
        summary = _summary_table(records, names, frames, limits)
        written("summary.ecsv", _atomic_write_table, summary, outdir / "summary.ecsv", frames)
        return summary

    def written(name: str, writer: Callable, *args: Any) -> None:
        """Write one of the night's files; a full or read-only disk is noted (not_written), not raised."""
        try:
            writer(*args)
            not_written.pop(name, None)
        except OSError as exc:
            not_written[name] = _os_words(exc)

    def take(path: str, result: dict) -> None:
        name = by_path[path]
        if result["status"] == "done":
            records[name] = result["meta"]
            computed.append(name)
        else:
            failed[name] = result["reason"]
        write_outputs()
        if progress is not None:
            progress(len(records) + len(failed), total)

    if progress is not None:
        progress(len(records), total)
    quiet = contextlib.ExitStack()
    if client is None and scheduler is None and workers != 0:
        quiet.enter_context(_quiet_distributed())
    try:
        runner, owned = _make_client(client, scheduler, workers)
    except BaseException:
        quiet.close()
        raise
    try:
        todo = [(str(f),) for f, n in zip(frames, names) if n not in records]
        reference = None
        if all_track:
            # the reference (first readable frame) goes first: its bright stars anchor every shift
            for f, n in zip(frames, names):
                if n not in records:
                    args = [(str(f), str(star_paths[n]))]
                    kw = [{"settings": settings, "reference": None}]
                    stream = _Serial().run(measure_frame, args, kw) if runner is None else \
                        _dask_map(runner, measure_frame, args, kw, [f"psfkit-frame-{uuid.uuid4().hex}"])
                    for (p, _), res in stream:
                        take(p, res)
                    todo = [t for t in todo if t[0] != str(f)]
                if n in records:
                    reference = records[n]["bright"]
                    break
        args = [(p, str(star_paths[by_path[p]])) for (p,) in todo]
        kw = [{"settings": settings, "reference": reference} for _ in args]
        if runner is None:
            stream = _Serial().run(measure_frame, args, kw)
        else:
            stream = _dask_map(runner, measure_frame, args, kw,
                               [f"psfkit-frame-{by_path[a[0]]}-{uuid.uuid4().hex[:8]}" for a in args])
        for (p, _), res in stream:
            take(p, res)
    finally:
        try:
            for obj in owned:
                with contextlib.suppress(Exception):
                    obj.close()
        finally:
            quiet.close()

    summary = write_outputs()
    rej = summary[summary["rejected"]]
    written("rejected.txt", _atomic_write_text, "".join(f"{r['frame']}\t{r['reject_reason']}\n" for r in rej),
            outdir / "rejected.txt", frames)
    written("failed.txt", _atomic_write_text, "".join(f"{n}\t{why}\n" for n, why in failed.items()),
            outdir / "failed.txt", frames)
    curve = None
    if all_track and len(summary):
        curve = _light_curve(records, summary, all_track, len(track))
        written("lightcurve.ecsv", _atomic_write_table, curve, outdir / "lightcurve.ecsv", frames)
        if plots and len(curve):
            written("lightcurve.png", plot_light_curves, curve, outdir / "lightcurve.png")
    if plots and len(summary):
        written("quality.png", plot_frame_quality, summary, outdir / "quality.png")
    return SequenceResult(outdir=outdir, summary=summary, lightcurve=curve, computed=computed,
                          skipped=skipped, failed=failed, not_written=not_written)
