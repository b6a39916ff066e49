"""Finding stars: background and noise -> candidates -> batched fit -> rejection with a reason.

- :mod:`psfkit.detect.background`: the background map and the noise.
- :mod:`psfkit.detect.find`: :func:`find_stars`, the whole-frame driver, and its rejection criteria.
- :mod:`psfkit.detect.deblend`: the crowded-field pass with the analytic model (neighbours subtracted,
  companions found).
- :mod:`psfkit.detect.crowded`: the crowded-field pass with the frame's own PSF (fit, subtract, look
  again on the residual until nothing is left) and the residual frame.
- :mod:`psfkit.detect.channels`: every plane of a colour image.
- :mod:`psfkit.detect._kernels`: compiled smoothing and spline kernels beside their numpy twins.
- :mod:`psfkit.detect.scaling`: frames in extreme units measured in scaled units (power of two), results restored.
"""

from psfkit._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "Background": "background", "estimate_background": "background",
    "find_stars": "find", "find_candidates": "find", "RejectionCriteria": "find",
    "deblend_stars": "deblend", "find_stars_by_channel": "channels", "warm_up_kernels": "_kernels",
    "crowded_pass": "crowded", "subtract_stars": "crowded", "write_residual": "crowded",
})
