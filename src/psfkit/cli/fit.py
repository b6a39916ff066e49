"""``psfkit fit``: one star, the Dynamic PSF way; ``psfkit demo``: the main job on the sample."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import typer

from psfkit.cli._app import app, fail
from psfkit.cli._options import ImageOptions, image_options
from psfkit.errors import PsfkitError


def _parse_xy(text: str, option: str = "--at", what: str = "0-based pixels") -> tuple[float, float]:
    """X,Y from an option's text, or a one-line PsfkitError."""
    try:
        xs, ys = text.split(",")
        x, y = float(xs), float(ys)
    except ValueError:
        raise PsfkitError(f"{option} wants X,Y ({what}), got {text!r}") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise PsfkitError(f"{option} wants finite numbers, got {text!r}")
    return x, y


@app.command("fit")
@image_options()
def fit_command(
    image: Path = typer.Argument(..., help="Image file (FITS, XISF, TIFF, PNG, JPEG, camera RAW)."),
    at: str | None = typer.Option(
        None, "--at", help="X,Y: 0-based pixel position near the star; default: the brightest source."),
    box: int | None = typer.Option(None, "--box", help="Fitting box in pixels (odd); default about 5 FWHM."),
    model: str = typer.Option("gaussian", "--model", help="gaussian, moffat, frame (the frame's own PSF, built from "
                              "its stars as `psfkit psf` does), or a PSF image file (FITS)."),
    beta: float | None = typer.Option(None, "--beta", help="Fix the Moffat beta."),
    angle: str = typer.Option("auto", "--angle", help="auto (Siril: angle fitted when the widths differ), yes or no."),
    search_radius: float = typer.Option(10.0, "--search-radius", help="How far from X,Y the real peak may be (px)."),
    gain: float | None = typer.Option(None, "--gain", help="e-/ADU (default: GAIN/EGAIN from the header)."),
    read_noise: float | None = typer.Option(None, "--read-noise", help="Read noise in e- (default: RDNOISE)."),
    zero_point: float = typer.Option(0.0, "--zero-point", help="Magnitude zero point."),
    opts: ImageOptions | None = None,  # --hdu --channel --focal-length --pixel-size --binning --scale
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with the star table's column names."),
) -> None:
    """Fit the PSF of one star and print the result (copyable), or JSON."""
    from psfkit.io.colour import table_to_frame
    from psfkit.psf.fit import fit_star
    from psfkit.utils import json_value

    angle_mode = {"auto": "auto", "yes": True, "true": True, "no": False, "false": False}.get(angle.lower())
    if angle_mode is None:
        raise fail(f"--angle must be auto, yes or no, not {angle!r}")
    if box is not None and box < 3:
        raise fail(f"--box must be at least 3 px, got {box}")
    if beta is not None and str(model).lower() not in ("moffat", "lorentzian"):
        raise fail(f"--beta fixes the Moffat's beta; add --model moffat (the model is {model})")
    img = opts.load(image)
    if model.strip().lower() == "frame":  # the frame's own PSF, as `psfkit psf` builds it, then as --model psf.fits
        from psfkit.psf.empirical import build_frame_psf

        noise = {k: v for k, v in (("gain", gain), ("read_noise", read_noise)) if v is not None}
        frame_psf = build_frame_psf(dataclasses.replace(img, **noise) if noise else img)
        model = frame_psf.model()
        if not as_json:
            typer.echo(f"{image}: fitted with the frame's PSF ({frame_psf.n_stars} stars, variation of degree "
                       f"{frame_psf.degree})")
    x = y = None
    if at is not None:
        x, y = (float(v) for v in img.from_frame(*_parse_xy(at)))  # full-frame X,Y -> the measured plane
    result = fit_star(
        img, x, y, box=box, model=model, beta=beta, angle=angle_mode, search_radius=search_radius,
        gain=gain, read_noise=read_noise, zero_point=zero_point,
    )
    if img.pixel_map:  # a Bayer plane: positions and pixel lengths back on the full frame
        result = dataclasses.replace(result, table=table_to_frame(result.table, img))
    if as_json:
        d = json_value(result.to_dict())
        d["flag_names"] = result.flag_names
        d["model"] = "frame" if hasattr(model, "frame_psf") else result.table.meta["model"]
        if result.table.meta.get("psf_normalisation"):
            d["psf_normalisation"] = result.table.meta["psf_normalisation"]
        typer.echo(json.dumps(d))
    else:
        typer.echo(f"{image}")
        typer.echo(result.report())
