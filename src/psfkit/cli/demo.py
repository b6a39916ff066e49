"""``psfkit demo``: the main job on the bundled real sample image."""

from __future__ import annotations

from pathlib import Path

import typer

from psfkit.cli._app import app


@app.command("demo")
def demo_command(
    outdir: Path = typer.Option(Path("demo-output"), "--outdir", help="Where to write the results."),
) -> None:
    """Find and fit every star of the bundled sample frame (ESO NTT/EMMI, R band); write the list and overlay."""
    from psfkit.cli.find import find_command
    from psfkit.datasets import sample_image_path

    path = sample_image_path()
    outdir.mkdir(parents=True, exist_ok=True)
    typer.echo(f"Sample image: {path}")
    find_command(
        image=path, output=outdir / "stars.csv", overlay=outdir / "overlay.png", fwhm_map=outdir / "fwhm_map.png",
        threshold=5.0, model="gaussian", angle=True, keep_rejected=False, deblend=False, hdu=None, channel=None,
        focal_length=None, pixel_size=None, binning=None, scale=None, gain=None, read_noise=None, min_roundness=0.3,
    )
    from psfkit.io.catalog import write_star_list
    from psfkit.detect.find import find_stars

    write_star_list(find_stars(path, angle=True), outdir / "stars.lst")
    typer.echo(f"wrote {outdir / 'stars.lst'} (Siril layout)")
