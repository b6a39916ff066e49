"""``psfkit inspect`` (tilt, field curvature, elongation pattern of one frame) and ``psfkit focus``
(best focus from a focus run): no science here, calls into psfkit.analysis.inspect and .focus.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from psfkit.cli._app import app, fail
from psfkit.cli._options import (
    binning_option,
    channel_option,
    focal_length_option,
    hdu_option,
    load_from_options,
    pixel_size_option,
    scale_option,
)


def _png_target(path: Path | None) -> None:
    if path is None:
        return
    if path.suffix.lower() != ".png":
        raise fail(f"{path}: the report is a PNG (suffix .png)")
    if not path.parent.exists():
        raise fail(f"{path.parent}: no such folder")


def _show(value, err=None, digits: int = 2, unit: str = "") -> str:
    if value is None:
        return "n/a"
    text = f"{value:.{digits}f}" if err is None else f"{value:.{digits}f} ± {err:.{digits}f}"
    return text + unit


@app.command("inspect")
def inspect_command(
    image: Path = typer.Argument(..., help="Image file."),
    as_json: bool = typer.Option(False, "--json", help="Print the numbers as JSON."),
    output: Path | None = typer.Option(None, "-o", "--output",
                                       help="PNG report: mosaic, FWHM map, elongation, numbers."),
    threshold: float = typer.Option(5.0, "--threshold", help="Detection threshold in sigma of the smoothed frame."),
    min_snr: float = typer.Option(10.0, "--min-snr", help="Stars below this SNR are left out of the fit."),
    hdu: str | None = hdu_option(),
    channel: str | None = channel_option(per_channel=False),
    focal_length: float | None = focal_length_option(),
    pixel_size: float | None = pixel_size_option(),
    binning: float | None = binning_option(),
    scale: float | None = scale_option(),
    gain: float | None = typer.Option(None, "--gain", help="e-/ADU (default: header)."),
    read_noise: float | None = typer.Option(None, "--read-noise", help="e- (default: header)."),
) -> None:
    """Tilt and field curvature as fitted numbers with errors, the corners' FWHM, the elongation pattern."""
    from psfkit.analysis.inspect import inspect_image

    _png_target(output)
    if threshold <= 0:
        raise fail(f"--threshold must be positive, got {threshold}")
    img = load_from_options(image, hdu=hdu, channel=channel, focal_length=focal_length, pixel_size=pixel_size,
                            binning=binning, scale=scale)
    report = inspect_image(img, min_snr=min_snr, threshold=threshold, gain=gain, read_noise=read_noise)
    d = report.to_dict()
    if output is not None:
        from psfkit.viz.inspect import plot_inspection

        plot_inspection(report, img.data, output, top_down=img.meta.get("roworder") == "TOP-DOWN")
        d["report_png"] = str(output)
    if as_json:
        typer.echo(json.dumps(d, indent=2))
        return
    typer.echo(f"{image.name}: {d['n_used']} of {d['n_stars']} stars in the fit (scatter {d['scatter']:.3f} px)")
    typer.echo(f"  FWHM at the centre  {_show(d['fwhm_center'], d['fwhm_center_err'], unit=' px')}")
    typer.echo(f"  gradient x, y       {_show(d['gradient_x'], d['gradient_x_err'], 3)}, "
               f"{_show(d['gradient_y'], d['gradient_y_err'], 3)} px per 1000 px")
    typer.echo(f"  curvature           {_show(d['curvature'], d['curvature_err'], unit=' px at the corners')}")
    typer.echo(f"  tilt                {_show(d['tilt_percent'], d['tilt_percent_err'], 1, ' %')} "
               f"towards {_show(d['tilt_direction_deg'], None, 0, ' deg')} (from +x)")
    typer.echo(f"  curvature           {_show(d['curvature_percent'], d['curvature_percent_err'], 1, ' %')}")
    for name, z in list(d["corners"].items()) + [("centre", d["center"])]:
        typer.echo(f"  {name:<13} FWHM {_show(z.get('fwhm'), z.get('fwhm_err'))} px "
                   f"(surface {_show(z['fwhm_fit'])}), elongation {_show(z.get('elongation'))}, {z['n_stars']} stars")
    typer.echo(f"  elongation: {d['elongation_pattern']} ({d['elongation_pattern_meaning']})")
    if output is not None:
        typer.echo(f"  report: {output}")


@app.command("focus")
def focus_command(
    frames: list[Path] = typer.Argument(..., help="The focus run's frames (one or more per focuser position)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    output: Path | None = typer.Option(None, "-o", "--output", help="PNG of the V-curve."),
    position_key: str | None = typer.Option(
        None, "--position-key", help="Header keyword of the focuser position (default FOCUSPOS, then FOCPOS)."),
    threshold: float = typer.Option(5.0, "--threshold", help="Detection threshold in sigma of the smoothed frame."),
) -> None:
    """Best focus from a focus run: median HFR and FWHM per position, the V-curve's hyperbola."""
    from psfkit.analysis.focus import focus_run

    _png_target(output)
    for f in frames:
        if not f.exists():
            raise fail(f"{f}: no such file")
    result = focus_run(frames, position_key=position_key, threshold=threshold)
    d = result.to_dict()
    if output is not None:
        from psfkit.viz.inspect import plot_v_curve

        plot_v_curve(result, output)
        d["vcurve_png"] = str(output)
    if as_json:
        typer.echo(json.dumps(d, indent=2))
        return
    typer.echo(f"{'frame':<28} {'position':>9} {'stars':>5} {'HFR (px)':>14} {'FWHM (px)':>14}  method")
    for r in d["frames"]:
        typer.echo(f"{r['frame'][:28]:<28} {r['position']:>9.0f} {r['n_stars']:>5} "
                   f"{_show(r['hfr'], r['hfr_err']):>14} {_show(r['fwhm'], r['fwhm_err']):>14}  {r['method']}")
    best = _show(d["best_position"], d["best_position_err"], 0)
    typer.echo(f"best focus  {best} steps ({d['position_key']}, HFR curve)")
    typer.echo(f"HFR min     {_show(d['hfr_min'], d['hfr_min_err'], unit=' px')}")
    typer.echo(f"FWHM min    {_show(d['fwhm_min'], d['fwhm_min_err'], unit=' px')}")
    if d.get("temperature") is not None:
        typer.echo(f"focuser temperature {d['temperature']:.1f} C (median of the run)")
