"""``psfkit psf IMAGE -o psf.fits``: the frame's own PSF, written as FITS (no science here)."""

from __future__ import annotations

from pathlib import Path

import typer

from psfkit.cli._app import app, fail
from psfkit.cli._options import ImageOptions, check_output_paths, image_options


@app.command("psf")
@image_options()
def psf_command(
    image: Path = typer.Argument(..., help="Image file (FITS, XISF, TIFF, PNG, JPEG, camera RAW)."),
    output: Path = typer.Option(..., "-o", "--output", help="The PSF's FITS file (.fits)."),
    png: Path | None = typer.Option(None, "--png", help="Also draw the PSF across the field (.png)."),
    degree: str = typer.Option("auto", "--degree", help="Variation across the field: 0, 1, 2 or auto."),
    oversampling: int | None = typer.Option(None, "--oversampling", help="Grid nodes per pixel (default 2; 4 "
                                               "for stars under 2 px FWHM)."),
    opts: ImageOptions | None = None,  # --hdu --channel --focal-length --pixel-size --binning --scale
) -> None:
    """Build the frame's own PSF from its bright, isolated, unsaturated stars and write it.

    The primary HDU is the PSF at the frame's centre (unit sum, OVERSAMP in its header); the PSFVAR
    HDU holds its variation.  Give the file back with --model to fit, compare or find.
    """
    from psfkit.psf.empirical import build_frame_psf

    if output.suffix.lower() not in (".fits", ".fit", ".fts"):
        raise fail(f"{output}: the PSF is written as FITS: give a .fits name")
    if png is not None and png.suffix.lower() != ".png":
        raise fail(f"{png}: --png wants a .png name")
    if degree not in ("auto", "0", "1", "2"):
        raise fail(f"--degree must be 0, 1, 2 or auto, not {degree!r}")
    check_output_paths([output, png], [image])
    img = opts.load(image)
    psf = build_frame_psf(img, degree=degree if degree == "auto" else int(degree), oversampling=oversampling)
    psf.write(output, overwrite=True)
    shape = psf.shape_at(*psf.centre)
    typer.echo(f"{output}: the frame's PSF from {psf.n_stars} stars, oversampled x{psf.oversampling}, "
               f"variation of degree {psf.degree}, reach {psf.half_size:.0f} px; at the centre FWHM "
               f"{shape['fwhm']:.2f} px, roundness {shape['roundness']:.2f}")
    if png is not None:
        from psfkit.viz.psf_plot import plot_frame_psf

        plot_frame_psf(psf, png, shape=img.data.shape, residual=psf.info.get("residual"))
        typer.echo(f"{png}: the PSF across the field")
