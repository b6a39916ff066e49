"""Reading frames and writing star lists: the first and last rooms of the data flow.

- :mod:`psfkit.io.image`: :class:`Image`, :func:`load_image` (FITS, XISF, TIFF, PNG, JPEG, camera RAW),
  the header rules (scale, gain, saturation, row order), :func:`describe_image`.
- :mod:`psfkit.io.colour`: Bayer planes, luminance, plane <-> full-frame coordinates.
- :mod:`psfkit.io.catalog`: star lists (CSV, ECSV, FITS, Siril .lst, DS9 .reg) and their averages.
- :mod:`psfkit.io._readers`: the file-format readers behind :func:`load_image`.
- :mod:`psfkit.io.limits`: the pixel limit every reader checks before decoding (``PSFKIT_MAX_PIXELS``).
- :mod:`psfkit.io.outputs`: every file written atomically, never onto an input.
"""

from psfkit._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "Image": "image", "load_image": "image", "load_planes": "image", "describe_image": "image",
    "as_image": "image", "image_scale_from_header": "image",
    "bayer_plane": "colour", "luminance": "colour", "table_to_frame": "colour", "table_to_plane": "colour",
    "frame_view": "colour",
    "average": "catalog", "read_star_list": "catalog", "write_star_list": "catalog",
    "STAR_LIST_FORMATS": "catalog",
})
