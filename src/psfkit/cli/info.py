"""``psfkit info IMAGE``: what psfkit reads from a file (no science here: calls describe_image)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from psfkit.cli._app import app
from psfkit.cli._options import ImageOptions, image_options


@app.command("info")
@image_options()
def info_command(
    image: Path = typer.Argument(..., help="Image file (FITS, XISF, TIFF, PNG, JPEG, camera RAW)."),
    opts: ImageOptions | None = None,  # --hdu --channel --focal-length --pixel-size --binning --scale
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Print shape, type, image scale and rule, gain, read noise, saturation, exposure, date, row order, WCS, Bayer."""
    from psfkit.io.image import describe_image

    img = opts.load(image)
    info = describe_image(img)
    if as_json:
        typer.echo(json.dumps(info))
        return
    width = max(len(k) for k in info)
    for key, value in info.items():
        if value is None and key in ("hdu", "compressed", "bayer pattern", "pixel map", "WCS centre (deg)"):
            continue
        if isinstance(value, float):
            text = f"{value:.6g}"
        elif isinstance(value, bool):
            text = "yes" if value else "no"
        elif value is None:
            text = "unknown"
        else:
            text = str(value)
        typer.echo(f"{key:<{width}s}  {text}")
