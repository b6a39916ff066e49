"""The sample image that ships with psfkit."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["sample_image_path"]


def sample_image_path() -> Path:
    """Path of the bundled real frame (ESO NTT/EMMI R band, 256x256; see psfkit/datasets/data/README.md).

    Examples
    --------
    >>> path = sample_image_path()
    >>> path.name, path.is_file()
    ('eso_ntt_emmi_r_sep_image.fits', True)
    """
    return Path(str(resources.files("psfkit.datasets") / "data" / "eso_ntt_emmi_r_sep_image.fits"))
