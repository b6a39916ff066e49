"""Compare PSF models on one source: which profile fits, and what total flux each gives.

Every model is fitted by the one engine (:func:`psfkit.fit_stars`) on the same
box, the same pixels and the same per-pixel weights, so chi-square, AIC and BIC
are comparable (BIC = chi2 + k ln n, AIC = chi2 + 2k, k free parameters, n pixels).
The preferred model has the lowest BIC, except that the Gaussian wins ties
(delta BIC <= 2: no positive evidence for wings beyond a Gaussian's).

Weights.  With a known gain they are model-based Poisson weights, common to all
models: the free-beta Moffat (the most flexible profile) is fitted first with
Poisson + read-noise weights, and its expected counts give the variance
``model / gain + read_noise^2`` of every pixel, fixed for every model's fit.
Without a gain every fit is unweighted (each pixel gets the background variance
measured on the box border; errors from the sandwich covariance), again the same
for every model.

Models: the Gaussian, the Moffat with free beta, PixInsight's fixed-beta Moffats
(1.5, 2.5, 4, 6, 8, 10), a Lorentzian (Moffat beta = 1: its total flux diverges,
so its ``flux_fit`` is the light within the fitting box's inscribed circle and is
flagged ``flux_is_total = False``), the user's PSF image, and the frame's own PSF
(``frame_psf``: :func:`psfkit.psf.empirical.build_frame_psf`, built from the frame's other stars,
the compared source held out of it, so that its chi-square is a prediction, not a fit of the star
to itself; 4 free parameters: background, flux, x, y; its chi-square on the common weights, the
PSF's own uncertainty only in its flux error).  A frame with too few usable stars has no
such row, and ``meta["frame_psf_note"]`` says why.

An aperture flux is measured too (radius 2.5 FWHM of the best analytic fit, sky in an
annulus at 4-6 FWHM), with its correction to total from the best analytic
model's enclosed fraction; for an extended source it is the flux to trust.

Extended sources.  A source is extended when it is wider than the frame's own stars: its
FWHM (of the best analytic fit: a PSF's FWHM is the PSF's, not the source's) above
``EXTENDED_FWHM_RATIO`` (1.5) times the median FWHM of
the frame's other stars (measured with :func:`psfkit.find_stars`, or given).  How well a
point-source model fits is no test: a bright star's photon noise is small, so every
analytic profile misses its real shape by many sigma (reduced chi-square 30 and more on
ordinary bright stars of real frames) while the star is as point-like as its neighbours.
Without at least three other stars in the frame (and no ``frame_fwhm``) the test cannot be
made, and the source is taken as a point source (the note says so).

The answer.  :meth:`ModelComparison.answers` lists every model's flux and the aperture flux,
with one of them preferred: the preferred model for a point source, the aperture flux for an
extended one.  ``psfkit compare --json`` prints exactly that list.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.table import Table

from psfkit.errors import PsfkitError
from psfkit.io.image import Image, as_image
from psfkit.io.outputs import atomic_output
from psfkit.psf.engine import NoiseModel
from psfkit.psf.fit import StarFit, fit_stars, resolve_model
from psfkit.psf.models import LorentzianPSF
from psfkit.psf.stamps import auto_box, clip_box, cut_stamps, estimate_fwhm, refine_peak
from psfkit.utils import json_value

__all__ = ["compare_models", "ModelComparison", "plot_model_residuals", "PIXINSIGHT_BETAS", "EXTENDED_FWHM_RATIO",
           "TIE_BIC"]

#: fixed-beta Moffats PixInsight's DynamicPSF offers
PIXINSIGHT_BETAS = (1.5, 2.5, 4.0, 6.0, 8.0, 10.0)
#: a source this much wider than the frame's stars is extended
EXTENDED_FWHM_RATIO = 1.5
#: BIC differences up to this are "not worth more than a bare mention" (Kass & Raftery 1995)
TIE_BIC = 2.0


def _poisson_error(img: Image, fit: StarFit, gain: float, read_noise_e: float, box: int) -> np.ndarray:
    """Per-pixel 1-sigma error from a fitted model's expected counts on its box (data elsewhere)."""
    data, model_vals, _ = fit.model_image()
    d = fit.to_dict()
    _, inside, origin, _ = cut_stamps(img.data, np.array([d["x_fit"]]), np.array([d["y_fit"]]), box)
    filled = np.where(np.isfinite(img.data), img.data, np.nanmedian(img.data)).astype(float)
    expected = np.clip(filled, 0.0, None)
    ox, oy = int(origin[0, 0]), int(origin[0, 1])
    rows = np.arange(oy, oy + box)
    cols = np.arange(ox, ox + box)
    ok = inside[0] & np.isfinite(model_vals)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    expected[rr[ok], cc[ok]] = np.clip(model_vals[ok], 0.0, None)
    var = NoiseModel(gain=gain, read_noise=read_noise_e / gain).variance(expected)
    return np.sqrt(np.maximum(var, 1e-12))


@dataclass
class ModelComparison:
    """What :func:`compare_models` found for one source.

    Attributes
    ----------
    table : astropy.table.Table
        One row per model (see :func:`compare_models`); ``meta`` holds the position, box, weights,
        ``frame_fwhm``, ``extended``, ``preferred``, the ``aperture`` flux and a ``note``.
    fits : dict
        ``{model: StarFit}``, for residual pictures (:func:`plot_model_residuals`).

    Examples
    --------
    A simulated Gaussian star, compared with the Gaussian and the free-beta Moffat only:

    >>> from psfkit.datasets.simulate import simulate_field
    >>> data, truth = simulate_field((64, 64), 1, fwhm=3.0, seed=3, edge=20)
    >>> result = compare_models(data, truth["x"][0], truth["y"][0], gain=1.5, read_noise=6.0, betas=(),
    ...                         lorentzian=False)
    >>> result.table["model"].tolist(), sorted(result.fits)
    (['gaussian', 'moffat'], ['gaussian', 'moffat'])
    >>> sum(answer["preferred"] for answer in result.answers())
    1
    """

    table: Table
    fits: dict[str, StarFit] = field(default_factory=dict, repr=False)

    @property
    def extended(self) -> bool:
        """The source is wider than the frame's stars (see the module's notes)."""
        return bool(self.table.meta["extended"])

    @property
    def preferred(self) -> str:
        """The answer to trust: the preferred model's name, or ``"aperture"`` for an extended source."""
        return "aperture" if self.extended else str(self.table.meta["preferred"])

    @property
    def note(self) -> str:
        """One sentence on what the comparison means for this source."""
        return str(self.table.meta["note"])

    def answers(self) -> list[dict[str, Any]]:
        """Every model's flux and, last, the aperture flux, with exactly one ``preferred``.

        Each entry has ``model``, ``flux_fit``, ``flux_err``, ``fwhm``, ``reduced_chi2``, ``bic`` and
        ``preferred`` (JSON-ready: NaN becomes None).  The aperture entry's flux is the aperture flux
        corrected to total by the preferred model's enclosed fraction (the bare aperture flux for an
        extended source, which no point-source correction describes); it is the preferred entry when
        the source is extended, and then no model is.

        Returns
        -------
        list of dict
        """
        keys = ("model", "flux_fit", "flux_err", "fwhm", "reduced_chi2", "bic", "preferred")
        out = [{k: json_value(row[k]) for k in keys} for row in self.table]
        ap = self.table.meta["aperture"]
        total = ap.get("flux_total", ap.get("flux", float("nan")))
        total_err = ap.get("flux_total_err", ap.get("flux_err", float("nan")))
        if self.extended:
            for row in out:
                row["preferred"] = False
        out.append({"model": "aperture", "flux_fit": json_value(total), "flux_err": json_value(total_err),
                    "fwhm": None, "reduced_chi2": None, "bic": None, "preferred": self.extended})
        return out


def compare_models(
    image: Image | np.ndarray | str,
    x: float,
    y: float,
    *,
    psf: np.ndarray | str | None = None,
    box: int | None = None,
    search_radius: float = 10.0,
    gain: float | None = None,
    read_noise: float | None = None,
    betas: tuple[float, ...] = PIXINSIGHT_BETAS,
    lorentzian: bool = True,
    frame_fwhm: float | None = None,
    zero_point: float = 0.0,
    frame_psf: bool | Any = True,
) -> ModelComparison:
    """Fit one source with every model, rank them by BIC, and say whether the source is extended.

    Parameters
    ----------
    image : Image, array or path
    x, y : float
        0-based position near the source (the real peak is searched within ``search_radius``).
    psf : array or path, optional
        A PSF image (any normalisation) fitted as one more model.
    box : int, optional
        Common fitting box (default about 5 FWHM).
    search_radius : float
        How far from (x, y) the peak may be (px).
    gain, read_noise : float, optional
        e-/ADU and e-; default from the header.  With a gain the weights are model-based Poisson weights.
    betas : tuple of float
        Fixed-beta Moffats to include (PixInsight's set by default).
    lorentzian : bool
        Include the Lorentzian (its flux is the light within the box's inscribed circle, not a total).
    frame_fwhm : float, optional
        The frame's stellar FWHM, for the extended-source test; default: the median FWHM of the
        stars :func:`psfkit.find_stars` finds on the frame (farther than 2 FWHM from the source),
        when there are at least 3.
    zero_point : float
        Magnitude zero point.
    frame_psf : bool, FramePSF or path
        True (default): a row ``frame_psf`` fitted with the frame's own PSF, built from the frame's
        stars without this source (too few stars: no row, ``meta["frame_psf_note"]`` says why).
        A :class:`~psfkit.psf.empirical.FramePSF` or a file of ``psfkit psf`` is used as it is;
        False: no row.

    Returns
    -------
    ModelComparison
        ``.table``: one row per model: ``model``, ``n_params``, ``flux_fit``, ``flux_err``,
        ``flux_is_total``, ``fwhm``, ``beta``, ``reduced_chi2``, ``chi2``, ``aic``, ``bic``, ``delta_bic``,
        ``rmse``, ``x_fit``, ``y_fit``, ``flags``, ``preferred``; its ``meta`` holds the position, box,
        weights, the aperture flux, ``frame_fwhm``, ``extended`` and a note.  ``.fits``: each model's
        :class:`~psfkit.psf.fit.StarFit`.  ``.answers()``: the fluxes with the one to trust.

    Examples
    --------
    >>> import numpy as np
    >>> from psfkit.datasets.simulate import add_noise, render_stars, star_params
    >>> truth = star_params("gaussian", 40.3, 39.6, 3e4, 4.0, 3.4, 25.0)
    >>> img = add_noise(150.0 + render_stars((80, 80), truth), gain=1.5, read_noise=5.0,
    ...                 rng=np.random.default_rng(1))
    >>> result = compare_models(img, 40, 40, gain=1.5, read_noise=5.0, frame_fwhm=3.7)
    >>> result.extended, result.preferred in ("gaussian", "moffat", "moffat8", "moffat10")
    (False, True)
    """
    img = as_image(image)
    ny, nx = img.shape
    if not (np.isfinite(x) and np.isfinite(y) and -0.5 <= x <= nx - 0.5 and -0.5 <= y <= ny - 0.5):
        raise PsfkitError(f"position ({x:g}, {y:g}) is outside the image (x 0..{nx - 1}, y 0..{ny - 1})")
    if not (np.isfinite(search_radius) and search_radius >= 0):
        raise PsfkitError(f"the search radius must be a number >= 0, got {search_radius}")
    px, py = refine_peak(img.data, x, y, search_radius=search_radius) if search_radius > 0 else (float(x), float(y))
    fwhm0 = estimate_fwhm(img.data, px, py)
    box = clip_box(box if box else auto_box(fwhm0), img.shape, minimum=5)  # clipped to the image, MAX_BOX
    g = gain if gain is not None else img.gain
    rn = (read_noise if read_noise is not None else img.read_noise) or 0.0
    common: dict[str, Any] = dict(box=box, search_radius=None, angle=True, zero_point=zero_point)

    models: list[tuple[str, Any]] = [("gaussian", resolve_model("gaussian")), ("moffat", resolve_model("moffat"))]
    models += [(f"moffat{b:g}", resolve_model("moffat", beta=b)) for b in betas]
    if lorentzian:
        models.append(("lorentzian", LorentzianPSF(flux_radius=box / 2.0)))
    if psf is not None:
        models.append(("psf_image", resolve_model(psf)))
    others = None  # the frame's stars (for the frame's PSF and the extended-source test), found once
    frame_psf_note = ""
    if frame_psf is not False and frame_psf is not None:
        frame_model, others, frame_psf_note = _frame_psf_model(img, frame_psf, px, py, gain, read_noise)
        if frame_model is not None:
            # chi-square and BIC on the common weights like every other row: the PSF's own uncertainty
            # (its nodes' variance, profile and flux errors) left out of the fit's variance; the row's
            # flux error holds it (a second fit with it)
            from dataclasses import replace as _replace

            bare = _replace(frame_model.frame_psf, variance=None, profile_error=0.0, flux_error=0.0).model()
            models.append(("frame_psf", bare))

    error = None
    weights = "unweighted, background variance from the box border (the same for every model)"
    if g:
        pilot = fit_stars(img, [px], [py], model=models[1][1], gain=g, read_noise=rn, **common)
        pilot_fit = StarFit(table=pilot, model=models[1][1], image=img)
        if np.isfinite(pilot["amplitude"][0]):
            error = _poisson_error(img, pilot_fit, float(g), float(rn), box)
            weights = (f"Poisson from the free-beta Moffat's expected counts (gain {float(g):g} e-/ADU, "
                       f"read noise {float(rn):g} e-), the same for every model")

    rows = []
    fits: dict[str, StarFit] = {}
    for name, mdl in models:
        t = fit_stars(img, [px], [py], model=mdl, error=error, **common)
        fits[name] = StarFit(table=t, model=mdl, image=img)
        r = t[0]
        flux_err = float(r["flux_err"])
        if name == "frame_psf":
            flux_err = float(fit_stars(img, [px], [py], model=frame_model, error=error, **common)["flux_err"][0])
        k = int(np.count_nonzero(mdl.default_free()))
        n = int(r["n_pixels_fit"])
        chi2 = float(r["reduced_chi2"]) * max(n - k, 1)
        rows.append(dict(model=name, n_params=k, flux_fit=float(r["flux_fit"]), flux_err=flux_err,
                         flux_is_total=bool(getattr(mdl, "flux_is_total", True)),
                         fwhm=float(r["fwhm"]), beta=float(r["beta"]), reduced_chi2=float(r["reduced_chi2"]),
                         chi2=chi2, aic=chi2 + 2 * k, bic=chi2 + k * math.log(max(n, 1)), rmse=float(r["rmse"]),
                         x_fit=float(r["x_fit"]), y_fit=float(r["y_fit"]), flags=int(r["flags"]),
                         note=t.meta.get("psf_normalisation_note", "") if name == "psf_image" else ""))
    table = Table(rows=rows)
    bic = np.where(np.isfinite(table["bic"]), table["bic"], np.inf)
    best = int(np.argmin(bic))
    table["delta_bic"] = table["bic"] - table["bic"][best]
    # a tie goes to the Gaussian: within TIE_BIC of the best there is no positive evidence for wings
    # (a beta = 8-10 Moffat is a Gaussian within the noise), and the Gaussian is the simplest profile
    gauss = np.flatnonzero(table["model"] == "gaussian")
    if gauss.size and table["delta_bic"][gauss[0]] <= TIE_BIC:
        best = int(gauss[0])
    table["preferred"] = np.arange(len(table)) == best
    best_row = table[best]
    # the source's own size and the aperture's correction: the best analytic fit (a PSF's FWHM is the PSF's)
    analytic = ~np.isin(np.asarray(table["model"]), ("psf_image", "frame_psf"))
    if analytic[best]:
        best_analytic = best_row
    else:  # the same rule among the analytic models: the lowest BIC, the Gaussian within TIE_BIC of it
        k = int(np.flatnonzero(analytic)[np.argmin(bic[analytic])])
        if gauss.size and table["bic"][gauss[0]] - table["bic"][k] <= TIE_BIC:
            k = int(gauss[0])
        best_analytic = table[k]
    src_fwhm = float(best_analytic["fwhm"])

    # the frame's stars, for the extended-source test
    if frame_fwhm is None:
        try:
            from psfkit.detect.find import find_stars

            if others is None:
                others = find_stars(img)
            elif "accepted" in others.colnames:
                others = others[np.asarray(others["accepted"], bool)]
            if len(others):
                far = np.hypot(np.asarray(others["x_fit"]) - px, np.asarray(others["y_fit"]) - py) > 2 * src_fwhm
                if far.sum() >= 3:
                    frame_fwhm = float(np.median(np.asarray(others["fwhm"])[far]))
        except PsfkitError:
            frame_fwhm = None
    # wider than the frame's stars; not "no model fits to the noise" (photon noise makes that true of
    # every bright star)
    extended = bool(frame_fwhm is not None and src_fwhm > EXTENDED_FWHM_RATIO * frame_fwhm)

    aperture = _aperture_flux(img, fits[str(best_analytic["model"])], src_fwhm, g, extended=extended)
    if extended:
        note = (f"the source looks extended (its FWHM {src_fwhm:.2f} px is {src_fwhm / frame_fwhm:.1f}x the "
                f"frame's stars' {frame_fwhm:.2f} px): a PSF flux underestimates it; "
                f"trust the aperture flux ({aperture['flux']:.6g} +- {aperture['flux_err']:.3g} within "
                f"r = {aperture['radius']:.1f} px, no point-source correction; a larger aperture may hold more: "
                "see psfkit phot --growth)")
    else:
        note = (f"point source: the preferred model's flux_fit ({best_row['model']}) is the total flux"
                if best_row["flux_is_total"] else
                "point source, best fitted by the Lorentzian, whose flux is only the light within the box: "
                "quote the aperture flux or the best Moffat")
        if frame_fwhm is None:
            note += " (the frame has too few other stars to test whether the source is extended)"
    table.meta.update(
        x=px, y=py, box=box, frame_fwhm=frame_fwhm, extended=extended, weights=weights,
        preferred=str(best_row["model"]), aperture=aperture, note=note,
        lorentzian_flux=f"light within a circle-equivalent ellipse of radius {box / 2.0:g} px (half the box)",
        frame_psf_note=frame_psf_note, aperture_model=str(best_analytic["model"]),
    )
    return ModelComparison(table=table, fits=fits)


def _frame_psf_model(img: Image, frame_psf: Any, x: float, y: float, gain: float | None,
                     read_noise: float | None) -> tuple[Any, Any, str]:
    """The frame's PSF as a fitting model (built without the source at (x, y) when ``frame_psf`` is True),
    the frame's stars when they were found (else None), and a note: what the PSF is, or why there is none.
    """
    from psfkit.psf.empirical import FramePSF, build_frame_psf

    if frame_psf is not True:
        psf = frame_psf if isinstance(frame_psf, FramePSF) else FramePSF.read(frame_psf)
        return psf.model(), None, f"the frame's PSF given ({psf.n_stars} stars, variation of degree {psf.degree})"
    from dataclasses import replace

    from psfkit.detect.find import find_stars

    noise = {k: v for k, v in (("gain", gain), ("read_noise", read_noise)) if v is not None}
    source = replace(img, **noise) if noise else img
    stars = find_stars(source, keep_rejected=True)
    held = stars.copy(copy_data=True)
    if len(held):
        # the source itself is no PSF star (it stays a neighbour): its fit is then a prediction
        near = np.hypot(np.asarray(held["x_fit"], float) - x, np.asarray(held["y_fit"], float) - y) <= 3.0
        held["accepted"] = np.asarray(held["accepted"], bool) & ~near
    try:
        psf = build_frame_psf(source, held)
    except PsfkitError as exc:
        return None, stars, f"no frame_psf row: {exc}"
    return psf.model(), stars, (f"frame_psf: the frame's PSF from {psf.n_stars} other stars "
                                f"(variation of degree {psf.degree}), this source held out")


def _aperture_flux(
    img: Image, best: StarFit, fwhm: float, gain: float | None, *, extended: bool = False
) -> dict[str, Any]:
    """Aperture flux at 2.5 FWHM (sky 4-6 FWHM), and its total from the fitted model's enclosed fraction.

    No correction for an extended source: a point-source model's enclosed fraction does not describe it.
    """
    from psfkit.aperture.growth import model_enclosed_fraction
    from psfkit.aperture.photometry import aperture_photometry

    x, y = best.x_fit, best.y_fit
    if not (np.isfinite(x) and np.isfinite(y) and np.isfinite(fwhm) and fwhm > 0):
        return {"flux": float("nan"), "flux_err": float("nan"), "radius": float("nan")}
    ny, nx = img.shape
    x = float(np.clip(x, 0, nx - 1))
    y = float(np.clip(y, 0, ny - 1))
    radius = 2.5 * fwhm
    try:
        phot = aperture_photometry(img, [x], [y], fwhm=fwhm, radius=radius, annulus=(4.0 * fwhm, 6.0 * fwhm), gain=gain)
    except PsfkitError:
        return {"flux": float("nan"), "flux_err": float("nan"), "radius": radius}
    flux, err = float(phot["flux_aper"][0]), float(phot["flux_aper_err"][0])
    out = {"flux": flux, "flux_err": err, "radius": radius, "sky": float(phot["sky"][0]),
           "phot_flags": int(phot["phot_flags"][0])}
    fr = None if extended else model_enclosed_fraction(best.model, best.table, radius,
                                                        annulus=(4.0 * fwhm, 6.0 * fwhm))
    if fr is not None and np.isfinite(fr[0]) and fr[0] > 0:
        frac = float(fr[0])
        out.update(enclosed_fraction=frac, flux_total=flux / frac, flux_total_err=err / frac,
                   corrected_to=("the total flux" if getattr(best.model, "flux_is_total", True)
                                 else "the Lorentzian's flux definition (light within its flux radius)"))
    return out


def plot_model_residuals(fits: dict[str, StarFit], path: str, *, models: list[str] | None = None,
                         inputs: Any = ()) -> str:
    """A picture of data, model and residual (one row per model) from :func:`compare_models` fits.

    Parameters
    ----------
    fits : dict
        ``{model: StarFit}``, the ``fits`` of a :func:`compare_models` result.
    path : str
        PNG file to write.
    models : list of str, optional
        Which models (default: all).
    inputs : sequence of path, optional
        Files the picture must not replace (it never replaces a file this process read either).

    Returns
    -------
    str
        The path written.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import psfkit
    >>> from psfkit.datasets.simulate import simulate_field
    >>> data, truth = simulate_field((64, 64), 1, fwhm=3.0, seed=3, edge=20)
    >>> result = psfkit.compare_models(data, truth["x"][0], truth["y"][0], lorentzian=False, betas=())
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = psfkit.plot_model_residuals(result.fits, str(Path(folder) / "residuals.png"))
    ...     print(Path(path).name, Path(path).stat().st_size > 0)
    residuals.png True
    """
    from psfkit._optional import require

    matplotlib = require("matplotlib", purpose="plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m for m in (models or list(fits)) if m in fits]
    if not names:
        raise PsfkitError("no model to draw")
    fig, axes = plt.subplots(len(names), 3, figsize=(7.5, 2.4 * len(names)), squeeze=False)
    for row, name in zip(axes, names):
        data, model, resid = fits[name].model_image()
        lo, hi = np.nanpercentile(data, [1, 99.5])
        lim = float(np.nanmax(np.abs(resid))) or 1.0
        row[0].imshow(data, origin="lower", vmin=lo, vmax=hi, cmap="gray")
        row[1].imshow(model, origin="lower", vmin=lo, vmax=hi, cmap="gray")
        im = row[2].imshow(resid, origin="lower", vmin=-lim, vmax=lim, cmap="RdBu_r")
        fig.colorbar(im, ax=row[2], fraction=0.046)
        row[0].set_ylabel(name)
        for ax, title in zip(row, ("data", "model", "residual")):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=9)
    fig.tight_layout()
    try:
        with atomic_output(path, inputs=inputs) as tmp:
            fig.savefig(tmp, dpi=90)
    finally:
        plt.close(fig)
    return str(path)
