"""``psfkit compare`` (one source, every PSF model) and ``psfkit phot`` (aperture photometry)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer

from psfkit.cli._app import app, fail
from psfkit.cli._options import ImageOptions, check_output_paths, image_options


@app.command("compare")
@image_options()
def compare_command(
    image: Path = typer.Argument(..., help="Image file."),
    at: str = typer.Option(..., "--at", help="X,Y: 0-based pixel position near the source."),
    psf: Path | None = typer.Option(None, "--psf", help="A PSF image (FITS), any normalisation."),
    frame_psf: bool = typer.Option(True, "--frame-psf/--no-frame-psf",
                                   help="A row fitted with the frame's own PSF, built from its other stars (default)."),
    box: int | None = typer.Option(None, "--box", help="Common fitting box (odd, px)."),
    gain: float | None = typer.Option(None, "--gain", help="e-/ADU (default: header)."),
    read_noise: float | None = typer.Option(None, "--read-noise", help="e- (default: header)."),
    opts: ImageOptions | None = None,  # --hdu --channel --focal-length --pixel-size --binning --scale
    residuals: Path | None = typer.Option(None, "--residuals", help="PNG of data, model and residual per model."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list, one object per model."),
) -> None:
    """Fit the source with every analytic model, the frame's PSF and yours; total flux, FWHM, chi2, BIC per model."""
    from psfkit.analysis.compare import TIE_BIC, compare_models, plot_model_residuals
    from psfkit.cli.fit import _parse_xy

    x, y = _parse_xy(at)
    if box is not None and box < 5:
        raise fail(f"--box must be at least 5 px, got {box}")
    if residuals is not None:
        if residuals.suffix.lower() != ".png":
            raise fail(f"{residuals}: the residual picture is a PNG; the suffix must be .png")
        if not residuals.parent.exists():
            raise fail(f"{residuals.parent}: no such folder")
    check_output_paths([residuals], [image, psf])
    img = opts.load(image)
    if img.pixel_map:  # a Bayer plane: --at is on the full frame; the fits are on the plane
        x, y = (float(v) for v in img.from_frame(x, y))
        typer.echo(f"measured on the {img.meta.get('channel_rule')}; positions and sizes below are in its pixels",
                   err=as_json)
    result = compare_models(img, x, y, psf=str(psf) if psf else None, box=box, gain=gain, read_noise=read_noise,
                            frame_psf=frame_psf)
    if residuals is not None:
        plot_model_residuals(result.fits, str(residuals), inputs=[image, psf])
    table = result.table
    m = table.meta
    ap = m["aperture"]
    if as_json:
        if result.extended:
            typer.echo(result.note, err=True)
        if m.get("frame_psf_note"):
            typer.echo(m["frame_psf_note"], err=True)
        typer.echo(json.dumps(result.answers()))
        return
    best = table[table["preferred"]][0]
    # the fitted centre, not the smoothed peak that seeded the fits (on a saturated or lopsided star
    # the smoothed, median-cleaned maximum can sit pixels off the star)
    typer.echo(f"{image}: source within 10 px of ({x:g}, {y:g}), centred at ({best['x_fit']:.2f}, "
               f"{best['y_fit']:.2f}) by the {best['model']} fit; every model fitted on the same "
               f"{m['box']}x{m['box']} px box")
    typer.echo(f"weights: {m['weights']}")
    typer.echo(f"{'model':12s} {'flux (total)':>14s} {'+-':>10s} {'FWHM px':>8s} {'beta':>6s} {'chi2/dof':>9s} "
               f"{'AIC':>10s} {'BIC':>10s} {'RMSE':>9s}")
    for row in table:
        beta = f"{row['beta']:6.2f}" if math.isfinite(row["beta"]) else f"{'':6s}"
        mark = ""
        if row["preferred"]:
            mark = ("  <- preferred (lowest BIC)" if row["delta_bic"] <= 0 else
                    f"  <- preferred (BIC within {TIE_BIC:g} of the lowest: no evidence for wings beyond a Gaussian)")
            if m["extended"]:
                mark = "  <- best point-source fit (but the source looks extended: see below)"
        star = "" if row["flux_is_total"] else " *"
        typer.echo(f"{row['model']:12s} {row['flux_fit']:14.6g} {row['flux_err']:10.3g} {row['fwhm']:8.3f} {beta} "
                   f"{row['reduced_chi2']:9.3f} {row['aic']:10.1f} {row['bic']:10.1f} {row['rmse']:9.4g}{mark}{star}")
    if not all(table["flux_is_total"]):
        typer.echo(f"* Lorentzian: its total flux diverges; the flux shown is the {m['lorentzian_flux']}")
    for n in {n for n in table["note"] if n}:
        typer.echo(f"PSF image: {n}")
    if m.get("frame_psf_note"):
        typer.echo(m["frame_psf_note"])
    typer.echo(f"centroid ({best['model']}): x = {best['x_fit']:.3f}, y = {best['y_fit']:.3f} (0-based pixel centres)")
    if math.isfinite(ap.get("flux", float("nan"))):
        line = (f"aperture (r = {ap['radius']:.1f} px = 2.5 FWHM, sky 4-6 FWHM): "
                f"{ap['flux']:.6g} +- {ap['flux_err']:.3g}")
        if "flux_total" in ap:
            to = "total" if ap.get("corrected_to", "the total flux") == "the total flux" else "the Lorentzian's flux"
            of = m.get("aperture_model", m["preferred"])
            line += (f"; / enclosed fraction {ap['enclosed_fraction']:.4f} of the {of} -> {to} "
                     f"{ap['flux_total']:.6g} +- {ap['flux_total_err']:.3g}")
        typer.echo(line)
    if m["frame_fwhm"] is not None:
        typer.echo(f"frame's stars: FWHM {m['frame_fwhm']:.2f} px")
    typer.echo(m["note"])
    if residuals is not None:
        typer.echo(f"wrote {residuals}")


def _flag_names(row) -> str:
    """The PSF fit's flags and the aperture's, by name ('-' for none): a saturated star says so."""
    from psfkit import flags as F
    from psfkit.aperture.photometry import PHOT_FLAGS

    names = F.decode_flags(row["flags"]) if "flags" in row.colnames else []
    phot = int(row["phot_flags"])
    names += [text.split(":")[0] for bit, text in PHOT_FLAGS.items() if phot & bit]
    return ",".join(names) or "-"


@app.command("phot")
@image_options()
def phot_command(
    image: Path = typer.Argument(..., help="Image file."),
    at: list[str] | None = typer.Option(None, "--at", help="X,Y (0-based); repeat for several sources."),
    stars: Path | None = typer.Option(None, "--stars", help="A saved star list (.csv .ecsv .fits .lst) to measure."),
    radius: float | None = typer.Option(None, "--radius", help="Aperture radius in px (default 1.5 FWHM)."),
    radius_fwhm: float = typer.Option(1.5, "--radius-fwhm", help="Aperture radius in FWHM units."),
    annulus: str | None = typer.Option(None, "--annulus", help="IN,OUT sky annulus in px (default 4,6 FWHM)."),
    elliptical: bool = typer.Option(False, "--elliptical", help="Elliptical apertures of each star's fitted shape."),
    model: str = typer.Option("gaussian", "--model",
                              help="PSF model for the PSF flux: gaussian, moffat, lorentzian, or a PSF image (FITS)."),
    gain: float | None = typer.Option(None, "--gain", help="e-/ADU (default: header)."),
    read_noise: float | None = typer.Option(None, "--read-noise", help="e- (default: header)."),
    zero_point: float = typer.Option(0.0, "--zero-point", help="Magnitude zero point."),
    growth: bool = typer.Option(False, "--growth", help="Also print each star's curve of growth and best-SNR radius."),
    opts: ImageOptions | None = None,  # --hdu --channel --focal-length --pixel-size --binning --scale
    output: Path | None = typer.Option(None, "-o", "--output", help="Write the table: .csv .ecsv .fits"),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list, one object per star."),
) -> None:
    """Aperture photometry (exact overlap, local sky, CCD errors) and PSF flux, for positions, a list, or every star."""
    import numpy as np

    from psfkit.aperture.growth import curve_of_growth, optimal_radius
    from psfkit.aperture.stars import star_photometry
    from psfkit.cli.fit import _parse_xy
    from psfkit.errors import PsfkitError
    from psfkit.io.catalog import read_star_list, write_star_list
    from psfkit.io.colour import table_to_frame, table_to_plane
    from psfkit.psf.fit import fit_stars, resolve_model
    from psfkit.utils import json_value

    if at and stars:
        raise fail("give --at positions or --stars, not both")
    ann = None
    if annulus:
        ann = _parse_xy(annulus, "--annulus", "inner and outer radius in px")
    if output is not None:
        from psfkit.io.catalog import STAR_LIST_FORMATS

        if output.suffix.lower() not in STAR_LIST_FORMATS:
            raise fail(f"{output}: the suffix must be one of {', '.join(STAR_LIST_FORMATS)}")
        check_output_paths([output], [image, stars, model if model and "." in model else None])
    img = opts.load(image)
    mdl = resolve_model(model)  # one instance for the fits and for the aperture correction's wings
    if at:
        xy = np.array([img.from_frame(*_parse_xy(a)) for a in at], dtype=float)  # full frame -> measured plane
        table = fit_stars(img, xy[:, 0], xy[:, 1], model=mdl, gain=gain, read_noise=read_noise,
                          zero_point=zero_point, search_radius=5.0)
        source = f"{len(table)} position(s), PSF-fitted first"
    elif stars:
        table = read_star_list(stars)
        for col in ("x_fit", "y_fit", "fwhm"):
            if col not in table.colnames:
                raise PsfkitError(f"{stars}: the star list has no {col!r} column")
        table = table_to_plane(table, img)  # identity unless a Bayer plane
        source = f"{len(table)} stars from {stars}"
    else:
        from psfkit.detect.find import find_stars

        table = find_stars(img, model=model, gain=gain, read_noise=read_noise)
        source = f"{len(table)} stars found"
    if len(table) == 0:
        raise PsfkitError("no star to measure")
    out = star_photometry(img, table, radius=radius, radius_fwhm=radius_fwhm, annulus=ann, elliptical=elliptical,
                          gain=gain, zero_point=zero_point,
                          model=mdl if not stars or model != "gaussian" else None)  # a list: its meta["model"]
    plane_out, out = out, table_to_frame(out, img)  # positions on the full frame (identity unless a Bayer plane)
    cols = [c for c in ("id", "x_fit", "y_fit", "fwhm", "flux_fit", "flux_err", "aperture_radius", "sky", "flux_aper",
                        "flux_aper_err", "snr_aper", "mag_aper", "mag_aper_err", "flux_aper_total",
                        "flux_aper_total_err", "flux_ratio", "flux_ratio_err", "flags", "phot_flags")
            if c in out.colnames]
    if output is not None:
        write_star_list(out, output, inputs=[image, stars])
    if as_json:
        typer.echo(json.dumps([{c: json_value(row[c]) for c in cols} for row in out]))
        return
    corr = out.meta["aperture_correction"]
    typer.echo(f"{image}: {source}; aperture r = {float(out['aperture_radius'][0]):.2f} px "
               f"({out.meta['phot_aperture']}), sky {out.meta['phot_sky_estimator']} "
               f"in {out.meta['phot_annulus_rule']}")
    typer.echo(f"errors: {out.meta['phot_error_formula']}")
    if math.isfinite(corr.get("correction", float("nan"))):
        to = "total" if getattr(mdl, "flux_is_total", True) else "the Lorentzian's flux (within 2.5 FWHM)"
        n_used = corr.get("n_stars", "?")
        err = (f" +- {corr['correction_err']:.4f}" if corr.get("correction_err") or n_used != 1 else
               ", no error estimate")
        typer.echo(f"aperture correction to {to}: x{corr['correction']:.4f}{err} "
                   f"({corr.get('method', '')}; {n_used} star{'' if n_used == 1 else 's'})")
    else:
        typer.echo(f"no aperture correction: {corr.get('note', '')}")
    typer.echo(f"{'id':>4s} {'x':>8s} {'y':>8s} {'PSF flux':>11s} {'+-':>8s} {'aper flux':>11s} {'+-':>8s} "
               f"{'SNR':>6s} {'mag':>7s} {'total(aper)':>11s} {'+-':>8s} {'PSF/aper':>8s}  flags (fit, aperture)")
    for i, row in enumerate(out):
        ident = int(row["id"]) if "id" in out.colnames else i + 1
        fit_f = row["flux_fit"] if "flux_fit" in out.colnames else float("nan")
        fit_e = row["flux_err"] if "flux_err" in out.colnames else float("nan")
        ratio = row["flux_ratio"] if "flux_ratio" in out.colnames else float("nan")
        typer.echo(f"{ident:4d} {row['x_fit']:8.2f} {row['y_fit']:8.2f} {fit_f:11.6g} {fit_e:8.3g} "
                   f"{row['flux_aper']:11.6g} {row['flux_aper_err']:8.3g} "
                   f"{row['snr_aper']:6.1f} {row['mag_aper']:7.3f} "
                   f"{row['flux_aper_total']:11.6g} {row['flux_aper_total_err']:8.3g} {ratio:8.3f}  {_flag_names(row)}")
    rb = out.meta.get("flux_ratio_bright")
    if rb:
        name = out.meta.get("model", model)
        typer.echo(f"PSF flux / corrected aperture flux, median of {rb['n_stars']} bright unflagged stars: "
                   f"{rb['median']:.3f} +- {rb['err']:.3f}")
        if abs(rb["median"] - 1.0) > max(3.0 * rb["err"], 0.03):
            if rb["median"] < 1.0:
                hint = " (try --model moffat)" if name == "gaussian" else ""
                typer.echo(f"  below 1: the stars hold more light in their wings than the {name} model; its PSF flux "
                           f"underestimates the total{hint}; the corrected aperture flux does not")
            else:
                typer.echo(f"  above 1: the {name} model's wings hold more light than the stars' (try another "
                           "--model); the corrected aperture flux is the safer total")
    if growth:
        fw = float(np.nanmedian(np.asarray(plane_out["fwhm"], float)))
        radii = fw * np.array([0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0])
        g = curve_of_growth(img, np.asarray(plane_out["x_fit"], float), np.asarray(plane_out["y_fit"], float), radii,
                            fwhm=fw, annulus=ann, gain=gain)
        best = optimal_radius(g)
        typer.echo(f"curve of growth (sky-subtracted flux in circles; sky as above; median FWHM {fw:.2f} px):")
        typer.echo(f"{'r/FWHM':>11s} " + " ".join(f"{r / fw:9.3g}" for r in radii))
        typer.echo(f"{'r px':>11s} " + " ".join(f"{r:9.2f}" for r in radii))
        for i in range(len(out)):
            ident = int(out["id"][i]) if "id" in out.colnames else i + 1
            typer.echo(f"{ident:4d} {'flux':>6s} " + " ".join(f"{v:9.4g}" for v in g.flux[i]))
            typer.echo(f"{'':4s} {'+-':>6s} " + " ".join(f"{v:9.3g}" for v in g.flux_err[i]))
            typer.echo(f"{'':4s} {'SNR':>6s} " + " ".join(f"{v:9.1f}" for v in g.snr[i])
                       + f"   best SNR at r = {best[i]:.2f} px = {best[i] / fw:.2f} FWHM")
    if output is not None:
        typer.echo(f"wrote {output}")
