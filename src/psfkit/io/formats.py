"""The one registry of image file names psfkit reads: what ``load_image``, ``psfkit seq``'s folder
listing and the web page's file menu all accept.

A name is an image when it ends with one of :data:`IMAGE_SUFFIXES` (case aside).  The reader
itself decides by the file's first bytes (:func:`psfkit.io._readers.detect_format`); the names
only say which files to offer and list.

Examples
--------
>>> from psfkit.io.formats import is_image_name
>>> [is_image_name(n) for n in ("m31.FITS", "night.fit.fz", "IMG_0001.CRW", "notes.txt")]
[True, True, True, False]
"""

from __future__ import annotations

__all__ = ["FITS_SUFFIXES", "RAW_SUFFIXES", "TIFF_SUFFIXES", "IMAGE_SUFFIXES", "is_image_name"]

#: FITS files, plain, gzipped or tile-compressed (.fz).
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz", ".fits.fz", ".fit.fz", ".fz")
#: camera RAW files (read with LibRaw through rawpy).
RAW_SUFFIXES = (
    ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".dng", ".orf", ".rw2", ".raf",
    ".pef", ".srw", ".3fr", ".iiq", ".erf", ".mef", ".mos", ".kdc", ".dcr", ".raw", ".rwl", ".x3f",
)
#: TIFF files.
TIFF_SUFFIXES = (".tif", ".tiff")
#: every image file psfkit reads: FITS, XISF, TIFF, PNG, JPEG and camera RAW.
IMAGE_SUFFIXES = FITS_SUFFIXES + (".xisf",) + TIFF_SUFFIXES + (".png", ".jpg", ".jpeg") + RAW_SUFFIXES


def is_image_name(name: str) -> bool:
    """Whether a file name ends with a suffix of an image psfkit reads (any case).

    Parameters
    ----------
    name : str
        A file name or path.

    Returns
    -------
    bool

    Examples
    --------
    >>> is_image_name("light_0001.x3f"), is_image_name("stars.csv")
    (True, False)
    """
    return str(name).lower().endswith(IMAGE_SUFFIXES)
