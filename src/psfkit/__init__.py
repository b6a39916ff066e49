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
  :func:`plot_fwhm_map`.
- :func:`fit_star`, :func:`fit_stars`: fit one star or many at given positions.
- :class:`GaussianPSF`, :class:`MoffatPSF`, :class:`LorentzianPSF`, :class:`ImagePSF`: the PSF models.
- :func:`fit_stamps`: the batched Levenberg-Marquardt engine itself.
- :func:`compare_models`, :func:`star_photometry` and the aperture functions.
- :func:`run_sequence`: a night of frames; :func:`frame_summary`, :func:`rank_frames`.
- :func:`decode_flags`: names of the bits in a ``flags`` column.

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

__getattr__, __dir__, __all__ = attach(__name__, {
    # io
    "Image": "io.image", "load_image": "io.image", "load_planes": "io.image", "describe_image": "io.image",
    "table_to_frame": "io.colour", "table_to_plane": "io.colour",
    "average": "io.catalog", "read_star_list": "io.catalog", "write_star_list": "io.catalog",
    # detect
    "estimate_background": "detect.background", "find_stars": "detect.find",
    "find_stars_by_channel": "detect.channels",
    # psf
    "PSFModel": "psf.models", "GaussianPSF": "psf.models", "MoffatPSF": "psf.models",
    "LorentzianPSF": "psf.models", "ImagePSF": "psf.models",
    "NoiseModel": "psf.engine", "StampFit": "psf.engine", "fit_stamps": "psf.engine",
    "StarFit": "psf.fit", "fit_star": "psf.fit", "fit_stars": "psf.fit",
    "magnitude": "psf.measure",
    # aperture
    "aperture_sums": "aperture.sums", "aperture_photometry": "aperture.photometry",
    "aperture_correction": "aperture.growth", "curve_of_growth": "aperture.growth",
    "optimal_radius": "aperture.growth", "CurveOfGrowth": "aperture.growth", "star_photometry": "aperture.stars",
    # analysis
    "compare_models": "analysis.compare", "ModelComparison": "analysis.compare",
    "plot_model_residuals": "analysis.compare",
    "QualityLimits": "analysis.quality", "frame_summary": "analysis.quality", "rank_frames": "analysis.quality",
    "differential_photometry": "analysis.lightcurve", "estimate_shift": "analysis.lightcurve",
    "SequenceResult": "analysis.sequence", "list_frames": "analysis.sequence", "run_sequence": "analysis.sequence",
    # viz, datasets, shared
    "plot_overlay": "viz.plots", "plot_fwhm_map": "viz.plots",
    "sample_image_path": "datasets",
    "decode_flags": "flags", "PsfkitError": "errors",
})
__all__ += ["__version__"]
