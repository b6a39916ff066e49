"""Aperture photometry: exact pixel overlaps, sky annuli, curves of growth, aperture corrections.

One module a job: :mod:`~psfkit.aperture.overlap` (exact pixel overlap of circles and ellipses; its
compiled twin in ``_overlap_compiled``), :mod:`~psfkit.aperture.sums` (aperture sums),
:mod:`~psfkit.aperture.sky` (the annulus sky), :mod:`~psfkit.aperture.photometry` (flux, error,
magnitude at given positions), :mod:`~psfkit.aperture.growth` (curves of growth, optimal radius,
aperture corrections) and :mod:`~psfkit.aperture.stars` (PSF and aperture fluxes of a star table);
:mod:`~psfkit.aperture.hfr`, the half-flux radius (no PSF model: defocused stars too).
"""

from psfkit._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "circular_overlap": "overlap", "elliptical_overlap": "overlap",
    "aperture_sums": "sums",
    "sky_annulus": "sky",
    "aperture_photometry": "photometry",
    "curve_of_growth": "growth", "optimal_radius": "growth", "aperture_correction": "growth", "CurveOfGrowth": "growth",
    "star_photometry": "stars",
    "half_flux_radius": "hfr", "hfr_from_stamps": "hfr",
})
