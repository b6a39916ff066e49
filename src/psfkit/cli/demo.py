"""``psfkit demo``: the main job on the bundled real sample image."""

from __future__ import annotations

from pathlib import Path

import typer

from ._app import app


@app.command("demo")
def demo_command(
    outdir: Path = typer.Option(Path("demo-output"), "--outdir", help="Where to write the results."),
) -> None:
    """Run psfkit on the bundled sample frame (ESO NTT/EMMI, R band) and write the results."""
    from ..datasets import sample_image_path
    from ..psffit import fit_star

    path = sample_image_path()
    outdir.mkdir(parents=True, exist_ok=True)
    typer.echo(f"Sample image: {path}")
    result = fit_star(path)
    typer.echo("The brightest star:")
    typer.echo(result.report())
    out = outdir / "brightest_star.ecsv"
    result.to_table().write(out, format="ascii.ecsv", overwrite=True)
    typer.echo(f"Wrote {out}")
