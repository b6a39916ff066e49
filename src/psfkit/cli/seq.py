"""``psfkit seq``: a night of frames, locally or on a Dask cluster (no science here: calls run_sequence)."""

from __future__ import annotations

from pathlib import Path

import typer

from psfkit.cli._app import app, fail
from psfkit.cli._options import ImageOptions, image_options, is_per_channel
from psfkit.cli.fit import _parse_xy as parse_xy


def _parse_xy(text: str, option: str) -> tuple[float, float]:
    return parse_xy(text, option, "0-based pixels in the first frame")


@app.command("seq")
@image_options()
def seq_command(
    inputs: list[str] = typer.Argument(
        ..., help="Frames: files, glob patterns or a folder (time order from DATE-OBS, else by name)."),
    outdir: Path = typer.Option(..., "-o", "--outdir",
                                help="Output folder (complete frames already there are skipped)."),
    track: list[str] | None = typer.Option(None, "--track",
                                           help="X,Y of a star to follow (0-based, first frame); repeatable."),
    compare: list[str] | None = typer.Option(None, "--compare",
                                             help="X,Y of a comparison star for differential magnitudes; repeatable."),
    workers: int | None = typer.Option(
        None, "--workers", help="Worker processes of the local Dask cluster (default: the cores; 0: no Dask)."),
    scheduler: str | None = typer.Option(None, "--scheduler", help="Run on an existing Dask cluster: tcp://HOST:PORT."),
    threshold: float = typer.Option(5.0, "--threshold", help="Detection threshold in noise sigmas."),
    fwhm: float | None = typer.Option(None, "--fwhm", help="Expected FWHM in px (default: estimated per frame)."),
    model: str = typer.Option("gaussian", "--model", help="gaussian or moffat."),
    deblend: bool = typer.Option(False, "--deblend",
                                 help="Crowded fields: the deblend pass of psfkit find on every frame (slower)."),
    zero_point: float = typer.Option(0.0, "--zero-point", help="Magnitude zero point of the tracked stars."),
    fwhm_ratio: float = typer.Option(1.3, "--max-fwhm-ratio",
                                     help="Reject frames with FWHM above this times the night's median."),
    roundness_drop: float = typer.Option(0.15, "--max-roundness-drop",
                                         help="Reject frames whose roundness is this far below the night's median."),
    star_ratio: float = typer.Option(0.5, "--min-star-ratio",
                                     help="Reject frames with fewer stars than this fraction of the night's median."),
    background_sigma: float = typer.Option(
        5.0, "--max-background-sigma",
        help="Reject frames whose background is this many robust sigmas from the night's median."),
    no_plots: bool = typer.Option(False, "--no-plots", help="Do not write the PNG plots."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    opts: ImageOptions | None = None,  # --hdu --channel --focal-length --pixel-size --binning --scale
) -> None:
    """Measure every frame of a sequence: star lists, a summary, frame rejection, light curves."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
    from rich.text import Text

    from psfkit.analysis.quality import QualityLimits
    from psfkit.analysis.sequence import list_frames, max_workers, run_sequence

    if workers is not None and not 0 <= workers <= max_workers():
        raise fail(f"--workers must be 0 to {max_workers()} (4 per core; each worker holds a frame), got {workers}")
    if scheduler is not None and workers is not None:
        raise fail("--workers starts a local cluster; with --scheduler the cluster's own workers are used")
    targets = [_parse_xy(t, "--track") for t in (track or [])]
    comps = [_parse_xy(c, "--compare") for c in (compare or [])]
    limits = QualityLimits(fwhm_ratio=fwhm_ratio, roundness_drop=roundness_drop, star_ratio=star_ratio,
                           background_sigma=background_sigma)

    class RateColumn(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:.2f} frames/s" if speed else "-- frames/s")

    if is_per_channel(opts.channel):
        raise fail(f"--channel {opts.channel}: a sequence measures one plane per frame; choose one (R, G, B, "
                   "luminance ...)")
    load_options = dict(hdu=opts.hdu, channel=opts.channel, max_pixels=opts.max_pixels, **opts.optics())
    list_frames(inputs)  # bad inputs fail here, before the progress bar appears
    console = Console(stderr=True)
    columns = [TextColumn("frames"), BarColumn(), MofNCompleteColumn(), RateColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, disable=quiet, transient=False) as bar:
        task = bar.add_task("frames", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        result = run_sequence(
            inputs, outdir, scheduler=scheduler, workers=workers, threshold=threshold, fwhm=fwhm, model=model,
            track=targets, compare=comps, zero_point=zero_point, limits=limits, plots=not no_plots,
            progress=progress, load_options=load_options, find_options={"deblend": True} if deblend else None,
        )
    s = result.summary
    typer.echo(f"{len(s)} frames measured ({len(result.computed)} now, {len(result.skipped)} already done), "
               f"{int(s['rejected'].sum()) if len(s) else 0} rejected, {len(result.failed)} failed -> {result.outdir}")
    for why in result.failed.values():
        typer.echo(f"failed: {why}", err=True)
    for name, why in result.not_written.items():
        typer.echo(f"psfkit: error: cannot write {result.outdir / name}: {why}", err=True)
    if result.not_written:
        raise typer.Exit(code=2)
    for row in s[s["rejected"]] if len(s) else []:
        typer.echo(f"rejected: {row['frame']} ({row['reject_reason']})")
    if result.failed:
        raise typer.Exit(code=1)
