"""Pictures of a frame's stars: overlays and FWHM maps (matplotlib)."""

from psfkit._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "plot_overlay": "plots", "plot_fwhm_map": "plots", "auto_stretch": "plots",
})
