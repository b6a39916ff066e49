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
    from psfkit.datasets import sample_image_path

    path = sample_image_path()
    outdir.mkdir(parents=True, exist_ok=True)
    typer.echo(f"Sample image: {path}")
    # `psfkit find` itself, once, with its own defaults: one run writes the CSV, Siril's .lst and the pictures
    # (the command line loads only the invoked command's module: load find's too)
    from psfkit.cli import load_commands

    load_commands(["find"])
    app(["find", str(path), "--angle", "yes", "-o", str(outdir / "stars.csv"), "-o", str(outdir / "stars.lst"),
         "--overlay", str(outdir / "overlay.png"), "--fwhm-map", str(outdir / "fwhm_map.png")],
        standalone_mode=False)
