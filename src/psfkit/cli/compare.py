"""``psfkit compare``: fit one source with every PSF model and rank them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer

from ._app import app, fail


@app.command("compare")
def compare_command(
    image: Path = typer.Argument(..., help="Image file."),
    at: str = typer.Option(..., "--at", help="X,Y: 0-based pixel position near the source."),
    psf: Optional[Path] = typer.Option(None, "--psf", help="A PSF image (FITS), any normalisation."),
    box: Optional[int] = typer.Option(None, "--box", help="Common fitting box (odd, px)."),
    gain: Optional[float] = typer.Option(None, "--gain", help="e-/ADU (default: header)."),
    read_noise: Optional[float] = typer.Option(None, "--read-noise", help="e- (default: header)."),
    hdu: Optional[int] = typer.Option(None, "--hdu", help="FITS HDU to read."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list, one object per model."),
) -> None:
    """Fit the source with the Gaussian, Moffats and your PSF; print total flux, FWHM, chi2, BIC per model."""
    from ..compare import compare_models
    from ..image import load_image
    from .fit import _parse_xy

    x, y = _parse_xy(at)
    if box is not None and box < 5:
        raise fail(f"--box must be at least 5 px, got {box}")
    img = load_image(image, hdu=hdu)
    table = compare_models(img, x, y, psf=str(psf) if psf else None, box=box, gain=gain, read_noise=read_noise)
    if as_json:
        clean = lambda v: None if isinstance(v, float) and not math.isfinite(v) else v
        out = [{k: clean(row[k].item() if hasattr(row[k], "item") else row[k])
                for k in ("model", "flux_fit", "flux_err", "fwhm", "reduced_chi2", "bic", "preferred")}
               for row in table]
        typer.echo(json.dumps(out))
        return
    m = table.meta
    typer.echo(f"{image}: source at ({m['x']:.2f}, {m['y']:.2f}), box {m['box']} px, {m['weights']} weights")
    typer.echo(f"{'model':12s} {'flux (total)':>14s} {'+-':>10s} {'FWHM px':>8s} {'beta':>6s} {'chi2/dof':>9s} {'AIC':>10s} {'BIC':>10s} {'RMSE':>9s}")
    for row in table:
        beta = f"{row['beta']:6.2f}" if math.isfinite(row["beta"]) else f"{'':6s}"
        mark = "  <- preferred (lowest BIC)" if row["preferred"] else ""
        typer.echo(f"{row['model']:12s} {row['flux_fit']:14.6g} {row['flux_err']:10.3g} {row['fwhm']:8.3f} {beta} "
                   f"{row['reduced_chi2']:9.3f} {row['aic']:10.1f} {row['bic']:10.1f} {row['rmse']:9.4g}{mark}")
    notes = {n for n in table["note"] if n}
    for n in notes:
        typer.echo(f"PSF image: {n}")
    typer.echo(m["note"])
