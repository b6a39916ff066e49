"""psfkit: find stars, fit their PSF in one batch, and measure them with honest uncertainties.

The public API:

- :func:`load_image`, :class:`Image`: read a frame with its metadata (:func:`load_planes` for
  every plane of a colour image, :func:`describe_image` for what its header says).
- :func:`find_stars`: every star of a frame (:func:`find_stars_by_channel` per colour plane),
  :func:`average`, :func:`write_star_list`, :func:`plot_overlay`, :func:`plot_fwhm_map`.
- :func:`fit_star`, :func:`fit_stars`: fit one star or many at given positions.
- :class:`GaussianPSF`, :class:`MoffatPSF`, :class:`ImagePSF`: the PSF models.
- :func:`fit_stamps`: the batched Levenberg-Marquardt engine itself.
- :func:`decode_flags`: names of the bits in a ``flags`` column.
"""

from .catalog import average, read_star_list, write_star_list
from .compare import compare_models, plot_model_residuals
from .datasets import sample_image_path
from .detect import estimate_background, find_stars
from .errors import PsfkitError
from .fitting import NoiseModel, StampFit, fit_stamps
from .flags import decode_flags
from .image import Image, describe_image, load_image, load_planes
from .colour import find_stars_by_channel, table_to_frame, table_to_plane
from .plots import plot_fwhm_map, plot_overlay
from .measure import magnitude
from .models import GaussianPSF, ImagePSF, MoffatPSF, PSFModel
from .psffit import StarFit, fit_star, fit_stars
from .sequence import SequenceResult, list_frames, run_sequence
from .quality import QualityLimits, frame_summary, rank_frames
from .lightcurve import differential_photometry, estimate_shift
from .models import LorentzianPSF
from .photometry import (
    aperture_correction, aperture_photometry, aperture_sums, curve_of_growth, optimal_radius, star_photometry,
)

__version__ = "0.1.0"

__all__ = [
    "GaussianPSF", "Image", "ImagePSF", "MoffatPSF", "NoiseModel", "PSFModel", "PsfkitError", "StampFit",
    "StarFit", "average", "compare_models", "read_star_list", "write_star_list", "decode_flags", "estimate_background", "find_stars", "fit_stamps", "fit_star", "fit_stars", "load_image", "magnitude",
    "sample_image_path", "__version__",
]
__all__ += ["QualityLimits", "SequenceResult", "differential_photometry", "estimate_shift", "frame_summary",
            "list_frames", "rank_frames", "run_sequence"]
__all__ += ["LorentzianPSF", "aperture_correction", "aperture_photometry", "aperture_sums", "curve_of_growth",
            "optimal_radius", "plot_model_residuals", "star_photometry"]
__all__ += ["describe_image", "find_stars_by_channel", "load_planes", "plot_fwhm_map", "plot_overlay",
            "table_to_frame", "table_to_plane"]
