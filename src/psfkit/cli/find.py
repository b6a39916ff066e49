"""``psfkit find`` (every star of a frame) and ``psfkit average`` (averages of a saved list)."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from psfkit.cli._app import app, fail
from psfkit.cli._options import ImageOptions, check_output_paths, image_options, is_per_channel

ANGLE_CHOICES = {"auto": "auto", "yes": True, "true": True, "no": False, "false": False}


def summary_lines(summary: dict, reasons: dict) -> list[str]:
    """The find summary as printed: every fitted candidate once (a star, beyond --max-stars, or one
    rejection reason), so that the counts add up.
    """
    head = f"{summary['n_stars']} stars from {summary['n_candidates']} candidates"
    if summary.get("companion_candidates"):
        head += (f" + {summary['companion_candidates']} companion candidates on the residual "
                 f"({summary.get('companions_found', 0)} of the stars)")
    merged = summary.get("n_peaks", summary["n_candidates"]) - summary["n_candidates"]
    if merged > 0:
        head += f"; {merged} more peaks not fitted (closer than the minimum separation to a brighter one)"
    lines = [head]
    if summary.get("beyond_max_stars"):
        lines.append(f"  dropped  {summary['beyond_max_stars']:5d}  beyond --max-stars (fainter stars)")
    for reason, count in sorted(summary["rejected"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  rejected {count:5d}  {reason}: {reasons[reason]}")
    return lines


@app.command("find")
@image_options(per_channel=True)
def find_command(
    image: Path = typer.Argument(..., help="Image file."),
    output: list[Path] | None = typer.Option(None, "-o", "--output", metavar="<path>",
                                                help="Star list: .csv .ecsv .fits .lst .reg (repeat for several)."),
    overlay: Path | None = typer.Option(None, "--overlay", help="PNG with an ellipse on every star."),
    fwhm_map: Path | None = typer.Option(None, "--fwhm-map", help="PNG map of FWHM and roundness across the frame."),
    threshold: float = typer.Option(5.0, "--threshold", help="Detection threshold in sigma of the smoothed frame."),
    model: str = typer.Option("auto", "--model", help="auto (default: the frame's own PSF where the frame has enough "
                              "stars, else the Gaussian or Moffat its bright stars prefer by BIC; the choice is "
                              "printed), gaussian, moffat, frame (its own PSF, no fallback) or a PSF file from "
                              "`psfkit psf`."),
    fwhm: float | None = typer.Option(None, "--fwhm", help="First guess of the stars' FWHM in px (detection filter "
                                         "and first fitting box); the frame's FWHM is still measured."),
    angle: str = typer.Option("auto", "--angle", help="auto (Siril: angle fitted where the first fit says the star is "
                              "elliptic), yes (every star) or no (none: faster, roundness biased)."),
    min_snr: float | None = typer.Option(3.0, "--min-snr", help="Reject stars whose SNR (flux / flux_err) is below "
                                            "this; 0 turns the test off."),
    max_stars: int | None = typer.Option(None, "--max-stars", help="List only the N brightest stars (by flux)."),
    keep_rejected: bool = typer.Option(False, "--keep-rejected",
                                       help="Also list the rejected candidates, with reasons."),
    deblend: bool = typer.Option(False, "--deblend", help="Crowded fields (slower): every star fitted with the frame's "
                                 "PSF and its neighbours subtracted, stars looked for on the residual until none is "
                                 "left (with --model gaussian|moffat: the analytic model's pass)."),
    residual: Path | None = typer.Option(None, "--residual", help="FITS of the frame minus every fitted star."),
    opts: ImageOptions | None = None,  # --hdu --channel --focal-length --pixel-size --binning --scale
    gain: float | None = typer.Option(None, "--gain", help="e-/ADU (default: header)."),
    read_noise: float | None = typer.Option(None, "--read-noise", help="e- (default: header)."),
    min_roundness: float | None = typer.Option(
        0.3, "--min-roundness",
        help="Reject stars whose roundness (FWHMy / FWHMx) is below this; 0 turns the test off."),
) -> None:
    """Find, fit and measure every star of a frame; print a summary and write the list."""
    from psfkit.detect import warm_up_kernels

    try:  # a large file: numba loads in a thread while the modules are imported and the frame is read
        warm_up_kernels(pixels=image.stat().st_size // 4)
    except OSError:
        pass
    from psfkit.detect.channels import find_stars_by_channel
    from psfkit.detect.find import find_stars
    from psfkit.flags import SATURATED
    from psfkit.io.catalog import STAR_LIST_FORMATS, write_star_list
    from psfkit.io.colour import frame_view, table_to_frame
    from psfkit.viz.plots import map_cells, plot_fwhm_map, plot_overlay

    outputs = list(output or [])
    photometry_psf = None
    crowded_psf = None
    model = model.strip().lower() if model.strip().lower() in ("auto", "frame", "gaussian", "moffat") else model
    if model not in ("auto", "frame", "gaussian", "moffat"):  # a PSF file measures what the Gaussian found
        if not Path(model).is_file():
            raise fail(f"--model must be auto, gaussian, moffat, frame or a PSF file, not {model!r}")
        if is_per_channel(opts.channel):
            raise fail("a PSF file measures one plane: choose --channel")
        photometry_psf, model = model, "gaussian"
        if deblend:  # the crowded pass measures with it (and finds the stars it leaves in the residual)
            crowded_psf, photometry_psf = photometry_psf, None
    if threshold <= 0:
        raise fail(f"--threshold must be positive, got {threshold}")
    angle_mode = ANGLE_CHOICES.get(angle.strip().lower())
    if angle_mode is None:
        raise fail(f"--angle must be auto, yes or no, not {angle!r}")
    if fwhm is not None and not (0 < fwhm <= 100):
        raise fail(f"--fwhm is a first guess in px in (0, 100], got {fwhm}")
    if min_snr is not None and not (min_snr >= 0):
        raise fail(f"--min-snr must be >= 0, got {min_snr}")
    if max_stars is not None and max_stars < 1:
        raise fail(f"--max-stars must be at least 1, got {max_stars}")
    if residual is not None and is_per_channel(opts.channel):
        raise fail("--residual is the frame of one plane: choose --channel")
    for p, kinds in [(o, STAR_LIST_FORMATS) for o in outputs] + [(overlay, (".png",)), (fwhm_map, (".png",)),
                                                                  (residual, (".fits", ".fit", ".fts"))]:
        if p is not None:
            if p.suffix.lower() not in kinds:
                raise fail(f"{p}: the suffix must be one of {', '.join(kinds)}")
            if not p.parent.exists():
                raise fail(f"{p.parent}: no such folder")
    psf_file = photometry_psf or crowded_psf
    check_output_paths([*outputs, overlay, fwhm_map, residual], [image, psf_file])
    channel = opts.channel
    find_options = dict(threshold=threshold, fwhm=fwhm, model=model, angle=angle_mode, keep_rejected=True,
                        deblend=deblend, psf=crowded_psf, gain=gain, read_noise=read_noise, progress=True,
                        max_stars=max_stars,
                        min_roundness=min_roundness if min_roundness else None, min_snr=min_snr if min_snr else None)
    if is_per_channel(channel):  # one table, a 'channel' column, every plane measured
        table = find_stars_by_channel(image, channels=channel, hdu=opts.hdu, max_pixels=opts.max_pixels,
                                      **opts.optics(), **find_options)
        img = opts.load(image, channel=None)
        summaries = {name: c["summary"] for name, c in table.meta["channels"].items()}
        for name, c in table.meta["channels"].items():
            if c.get("psf_choice"):
                typer.echo(f"{image} [{name}]: PSF: {_psf_line(c)}")
    else:
        img = opts.load(image)
        found = find_stars(img, **find_options)
        if photometry_psf is not None:
            from psfkit.errors import PsfkitError
            from psfkit.psf.empirical import FramePSF, measure_with_frame_psf

            try:  # a file of `psfkit psf`: the frame's PSF, each star's own shape fitted with it too
                given = FramePSF.read(photometry_psf)
            except (PsfkitError, OSError):  # a plain PSF image (or no FITS: the fit says so): positions, fluxes
                given = photometry_psf
            found = measure_with_frame_psf(img, found, given, gain=gain, read_noise=read_noise)
            typer.echo(f"{image}: positions and fluxes from {found.meta['photometry_psf']}")
        elif found.meta.get("psf_choice") and not (deblend and found.meta.get("crowded")):
            typer.echo(f"{image}: PSF: {_psf_line(found.meta)}")
        if residual is not None:
            from psfkit.detect.crowded import subtract_stars, write_residual

            write_residual(residual, subtract_stars(img.data, found, found.meta.get("frame_psf")), img, found)
        if deblend and found.meta.get("crowded"):
            _echo_crowded(image, found.meta)
        table = table_to_frame(found, img)  # Bayer planes: back on the full frame
        summaries = {img.meta.get("channel"): table.meta["summary"]}
    if is_per_channel(channel):
        typer.echo(f"{image}: measured on each plane ({', '.join(map(str, summaries))}; a 'channel' column)"
                   + ("; positions and FWHM in full-frame pixels" if img.pixel_map else ""))
    elif img.pixel_map or img.meta.get("channel") is not None:
        typer.echo(f"{image}: measured on {img.meta.get('channel_rule', img.meta.get('channel'))}"
                   + ("; positions and FWHM in full-frame pixels" if img.pixel_map else ""))
    stars = table[table["accepted"]]
    for name, summary in summaries.items():
        label = f" [{name}]" if len(summaries) > 1 else ""
        for line in summary_lines(summary, table.meta["reject_reasons"]):
            typer.echo(f"{image}{label}: {line}" if not line.startswith(" ") else line)
    if len(stars):
        import numpy as np

        med = float(np.nanmedian(stars["fwhm"]))
        text = f"median FWHM {med:.3f} px"
        scale = img.pixel_scale / img.pixel_map["scale"] if img.pixel_scale and img.pixel_map else img.pixel_scale
        if scale:
            text += f" = {med * scale:.3f}\" ({scale:.4f}\"/px)"
        text += f", median roundness {float(np.nanmedian(stars['roundness'])):.3f}"
        n_sat = int(((np.asarray(stars["flags"]) & SATURATED) != 0).sum())
        if n_sat:
            text += f", {n_sat} saturated (kept, flagged)"
        typer.echo(text)
    for output in outputs:
        out = table if keep_rejected else stars
        if not keep_rejected:
            out = out.copy()
            out.remove_columns(["accepted", "reject_reason"])
        write_star_list(out, output, inputs=[image])
        typer.echo(f"wrote {output}")
        if keep_rejected and output.suffix.lower() == ".lst" and len(stars) < len(table):
            typer.echo(f"note: {output.name} lists the {len(stars)} accepted stars only (Siril's .lst has no place "
                       "for rejected candidates); write .csv, .ecsv, .fits or .reg to keep them")
    if overlay is not None:
        plot_overlay(frame_view(img), table if keep_rejected else stars, overlay)
        typer.echo(f"wrote {overlay}")
    if residual is not None:
        typer.echo(f"wrote {residual} (the frame minus every fitted star)")
    if fwhm_map is not None:
        if len(stars) < 3:
            typer.echo(f"not writing {fwhm_map}: a field map needs at least 3 stars, found {len(stars)}")
        else:
            plot_fwhm_map(stars, tuple(img.meta.get("frame_shape", img.shape)), fwhm_map)
            cells = map_cells(len(stars))
            typer.echo(f"wrote {fwhm_map}" + (f" ({cells}x{cells} cells: {len(stars)} stars are too few for 6x6)"
                                              if cells < 6 else ""))


def _psf_line(meta: dict) -> str:
    """Which PSF measured the stars and why (find_stars' ``psf_choice``), in a line."""
    if meta.get("psf_model") == "frame":
        return f"positions and total fluxes from {meta['psf_choice']}"
    return meta["psf_choice"]


def _echo_crowded(image: Path, meta: dict) -> None:
    """What the crowded pass did, in a line."""
    info = meta["crowded"]
    if "fallback" in info:
        typer.echo(f"{image}: {info['fallback']}")
        return
    typer.echo(f"{image}: crowded pass with {meta.get('photometry_psf')}: "
               f"{info['n_found']} stars found on the residual "
               f"in {info['passes']} pass(es); residual noise {info['residual_noise']:.4g}, the PSF's error "
               f"{100 * info['profile_error']:.1f} % of the light")
    if info["profile_error"] > 0.05:
        typer.echo("note: the PSF misses the bright stars by more than 5 % of their light (too few isolated stars "
                   "to build it?): faint stars beside bright ones may be false; look at the residual (--residual)")


@app.command("average")
def average_command(
    star_list: Path = typer.Argument(..., help="A star list written by psfkit find (.csv .ecsv .fits .lst .reg)."),
) -> None:
    """Print the averages of a saved star list."""
    from psfkit.io.catalog import average, read_star_list

    table = read_star_list(star_list)
    if "fwhm_x" not in table.colnames:
        raise fail(f"{star_list}: not a psfkit star list (no fwhm_x column)")
    avg = average(table)
    typer.echo(f"{star_list}: {avg['n_stars']} stars ({avg.get('n_used_shape', 0)} unsaturated used for shape)")
    if "snr" not in table.colnames:
        typer.echo(f"note: {avg['snr_weighted']} (SNR-weighted column left empty)")
    typer.echo(f"{'column':16s} {'mean':>12s} {'median':>12s} {'robust std':>12s} {'SNR-weighted':>12s}")
    for name, v in avg.items():
        if isinstance(v, dict):
            vals = [v["mean"], v["median"], v["std_robust"], v["snr_weighted_mean"]]
            typer.echo(f"{name:16s} " + " ".join(f"{x:12.5g}" if math.isfinite(x) else f"{'nan':>12s}" for x in vals))
