"""psfkit: find stars, fit their PSF in one batch, and measure them with honest uncertainties.

The data flow, one subpackage a room: :mod:`psfkit.io` (read a frame) -> :mod:`psfkit.detect`
(background, candidates, rejection) -> :mod:`psfkit.psf` (models, stamps, the batched fit,
measurement) -> :mod:`psfkit.aperture` and :mod:`psfkit.analysis` (photometry, comparison, quality,
sequences) -> :mod:`psfkit.io.catalog` and :mod:`psfkit.viz` (star lists, pictures);
:mod:`psfkit.cli` and :mod:`psfkit.web` are thin faces over them.

The public API, importable from here (each name loads its module on first use, so that
``import psfkit`` is instant):

- :func:`load_image`, :class:`Image`: read a frame with its metadata (:func:`load_planes` for
  every plane of a colour image, :func:`describe_image` for what its header says).
- :func:`find_stars`: every star of a frame (:func:`find_stars_by_channel` per colour plane),
  :func:`average`, :func:`write_star_list`, :func:`read_star_list`, :func:`plot_overlay`,
  :func:`plot_fwhm_map`; :func:`subtract_stars`: the residual frame (the frame minus every star).
- :func:`fit_star`, :func:`fit_stars`: fit one star or many at given positions.
- :class:`GaussianPSF`, :class:`MoffatPSF`, :class:`LorentzianPSF`, :class:`ImagePSF`: the PSF models.
- :func:`fit_stamps`: the batched Levenberg-Marquardt engine itself.
- :func:`compare_models`, :func:`star_photometry` and the aperture functions;
  :func:`half_flux_radius` (no PSF fit: defocused stars too).
- :func:`run_sequence`: a night of frames; :func:`frame_summary`, :func:`rank_frames`.
- :func:`inspect_image` (:func:`inspect_stars`, :func:`fit_fwhm_surface`): tilt, field curvature
  and the elongation pattern as fitted numbers; :func:`focus_run` (:func:`fit_v_curve`): best
  focus from a focus run's V-curve.
- :func:`decode_flags`, :func:`decode_phot_flags`: names of the bits in a ``flags`` or ``phot_flags`` column.

Examples
--------
>>> import psfkit
>>> image = psfkit.load_image(psfkit.sample_image_path())
>>> stars = psfkit.find_stars(image)
>>> len(stars) > 10
True
"""

from psfkit._lazy import attach

__version__ = "0.2.0"

#: the public names, by the module (relative to psfkit) that defines them
_PUBLIC = {
    "io.image": ("Image", "load_image", "load_planes", "describe_image"),
    "io.colour": ("table_to_frame", "table_to_plane"),
    "io.catalog": ("average", "read_star_list", "write_star_list"),
    "detect.background": ("estimate_background",),
    "detect.find": ("find_stars",),
    "detect.channels": ("find_stars_by_channel",),
    "detect.crowded": ("subtract_stars",),
    "psf.models": ("PSFModel", "GaussianPSF", "MoffatPSF", "LorentzianPSF", "ImagePSF"),
    "psf.engine": ("NoiseModel", "StampFit", "fit_stamps"),
    "psf.fit": ("StarFit", "fit_star", "fit_stars"),
    "psf.measure": ("magnitude",),
    "aperture.sums": ("aperture_sums",),
    "aperture.photometry": ("aperture_photometry",),
    "aperture.growth": ("aperture_correction", "curve_of_growth", "optimal_radius", "CurveOfGrowth"),
    "aperture.stars": ("star_photometry",),
    "aperture.hfr": ("half_flux_radius",),
    "analysis.compare": ("compare_models", "ModelComparison", "plot_model_residuals"),
    "analysis.quality": ("QualityLimits", "frame_summary", "rank_frames"),
    "analysis.lightcurve": ("differential_photometry", "estimate_shift"),
    "analysis.sequence": ("SequenceResult", "list_frames", "run_sequence"),
    "analysis.inspect": ("inspect_image", "inspect_stars", "fit_fwhm_surface"),
    "analysis.focus": ("focus_run", "fit_v_curve"),
    "viz.plots": ("plot_overlay", "plot_fwhm_map"),
    "datasets": ("sample_image_path",),
    "flags": ("decode_flags", "decode_phot_flags"),
    "errors": ("PsfkitError",),
}
__getattr__, __dir__, __all__ = attach(__name__, {name: mod for mod, names in _PUBLIC.items() for name in names})
__all__ += ["__version__"]
