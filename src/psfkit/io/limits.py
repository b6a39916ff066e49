"""How many pixel values an image file may declare before psfkit decodes it.

A small file can declare a huge image (a gzip of zeros, a deflate TIFF, a compressed XISF
block): every reader compares the declared pixel count (width x height x planes, from the
header, before any decoding) with :func:`max_pixels` and refuses a larger image in one line.

The default follows the machine: a quarter of the physical memory divided by
:data:`WORK_BYTES_PER_PIXEL`, the memory that finding and fitting the stars of a frame takes per
pixel value (the decoded frame, its float copy, the background and noise maps, the smoothed
frame and the masks).  The environment variable ``PSFKIT_MAX_PIXELS`` or the commands'
``--max-pixels`` option change it (see docs/security.md).
"""

from __future__ import annotations

import os

from psfkit.errors import PsfkitError

__all__ = ["ENV_MAX_PIXELS", "WORK_BYTES_PER_PIXEL", "MIN_DEFAULT_PIXELS", "physical_memory", "default_max_pixels",
           "max_pixels", "check_pixel_count"]

#: environment variable that sets the limit (a number of pixel values, e.g. 4e8)
ENV_MAX_PIXELS = "PSFKIT_MAX_PIXELS"
#: memory the work on a frame takes per pixel value (bytes): measured 46 (4 for the frame, 42 for
#: find_stars with --deblend) on a 3000 x 3000 plate scan
WORK_BYTES_PER_PIXEL = 48
#: the default never goes below this (a 64-megapixel frame), even on a small machine
MIN_DEFAULT_PIXELS = 64 * 1024 * 1024


def physical_memory() -> int | None:
    """The machine's physical memory in bytes, or None when the system does not say.

    Examples
    --------
    >>> (physical_memory() or 1) > 0
    True
    """
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def default_max_pixels() -> int:
    """A quarter of the physical memory over :data:`WORK_BYTES_PER_PIXEL` (at least
    :data:`MIN_DEFAULT_PIXELS`; 256 million pixel values when the memory is unknown).

    Examples
    --------
    >>> default_max_pixels() >= MIN_DEFAULT_PIXELS
    True
    """
    memory = physical_memory()
    if not memory:
        return 256 * 1024 * 1024
    return max(MIN_DEFAULT_PIXELS, memory // 4 // WORK_BYTES_PER_PIXEL)


def _parse(value: object, where: str) -> int:
    try:
        number = float(str(value).strip().replace("_", ""))
    except ValueError:
        raise PsfkitError(f"{where} wants a number of pixels (e.g. 4e8), got {value!r}") from None
    if not number >= 1 or number != number or number == float("inf"):
        raise PsfkitError(f"{where} wants a positive, finite number of pixels, got {value!r}")
    return int(number)


def max_pixels(value: int | float | str | None = None) -> int:
    """The pixel limit: ``value`` when given, else ``PSFKIT_MAX_PIXELS``, else :func:`default_max_pixels`.

    Examples
    --------
    >>> max_pixels(1e6)
    1000000
    """
    if value is not None:
        return _parse(value, "--max-pixels")
    env = os.environ.get(ENV_MAX_PIXELS)
    if env not in (None, ""):
        return _parse(env, ENV_MAX_PIXELS)
    return default_max_pixels()


def check_pixel_count(path: object, dims: tuple[int, ...], limit: int | float | str | None = None,
                      *, what: str = "the header declares") -> None:
    """A one-line PsfkitError when the declared dimensions hold more pixel values than the limit.

    Parameters
    ----------
    path : path
        The file (named in the message).
    dims : tuple of int
        Declared dimensions (any order; planes included).
    limit : int, optional
        See :func:`max_pixels`.

    Examples
    --------
    >>> check_pixel_count("a.fits", (100, 100), 1e6)
    >>> try:
    ...     check_pixel_count("a.fits", (30000, 30000), 1e6)
    ... except ValueError as exc:
    ...     print(str(exc)[:60])
    a.fits: the header declares a 30000 x 30000 image (900 milli
    """
    count = 1
    for d in dims:
        d = int(d)
        if d < 0:
            raise PsfkitError(f"{path}: {what} a negative image size {tuple(int(v) for v in dims)}")
        count *= d
    cap = max_pixels(limit)
    if count > cap:
        shape = " x ".join(str(int(d)) for d in dims)
        raise PsfkitError(f"{path}: {what} a {shape} image ({_count(count)} pixel values), above the limit of "
                          f"{_count(cap)}; raise it with --max-pixels or {ENV_MAX_PIXELS} "
                          "if the machine has the memory")


def _count(n: int) -> str:
    return f"{n / 1e6:.0f} million" if n >= 10_000_000 else f"{n:,}"
