"""Aperture photometry: exact pixel overlaps, sky annuli, curves of growth, aperture corrections."""

from psfkit._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    name: "photometry" for name in (
        "aperture_correction", "aperture_photometry", "aperture_sums", "curve_of_growth", "optimal_radius",
        "star_photometry", "circular_overlap", "elliptical_overlap", "sky_annulus")
})
