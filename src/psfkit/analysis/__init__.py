"""What the star tables say: model comparison, frame quality, light curves, a night of frames.

- :mod:`psfkit.analysis.compare`: one source fitted with every model, side by side.
- :mod:`psfkit.analysis.quality`: per-frame summaries and the frames to reject.
- :mod:`psfkit.analysis.lightcurve`: stars followed through a night, differential photometry.
- :mod:`psfkit.analysis.sequence`: many frames, locally or on a Dask cluster.
- :mod:`psfkit.analysis.inspect`: the optics inspector (tilt, field curvature, elongation pattern).
- :mod:`psfkit.analysis.focus`: a focus run's V-curve and best focus.
"""

from psfkit._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "compare_models": "compare", "ModelComparison": "compare", "plot_model_residuals": "compare",
    "QualityLimits": "quality", "frame_summary": "quality", "rank_frames": "quality",
    "differential_photometry": "lightcurve", "estimate_shift": "lightcurve",
    "inspect_image": "inspect", "inspect_stars": "inspect", "fit_fwhm_surface": "inspect",
    "focus_run": "focus", "fit_v_curve": "focus",
    "SequenceResult": "sequence", "list_frames": "sequence", "run_sequence": "sequence",
})
