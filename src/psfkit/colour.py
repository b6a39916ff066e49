"""Colour images and Bayer mosaics turned into planes a PSF can be fitted on.

An RGB image is measured per channel or on its luminance (the plain mean of
the channels).  A Bayer mosaic (a one-shot-colour camera or a DSLR raw frame)
is never measured as a grey image: neighbouring pixels see different colours,
so a star looks like a checkerboard.  Each 2x2 Bayer cell becomes one pixel
of a half-resolution plane:

- ``green``: the mean of the cell's two green pixels (the default: the most
  pixels of one band, a PSF not blurred by the colour mix);
- ``luminance``: the mean of the four pixels (R + 2G + B) / 4;
- ``R``, ``G``, ``B``: one colour's sub-plane.

A plane pixel (x, y) maps back to the full frame as
``x_full = 2 x + x_offset`` (same for y): the offset is the mean position of
the contributing pixels inside the cell (0.5 for green and luminance).  Taking
the mean of n pixels divides the photon noise: the effective gain is n times the
camera's and the read noise (in electrons) sqrt(n) times; a cell with any
saturated pixel is set to the saturation level so the fit leaves it out.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "BAYER_PATTERNS",
    "bayer_pattern_from_header",
    "bayer_plane",
    "luminance",
]

BAYER_PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")


def bayer_pattern_from_header(header: dict) -> str | None:
    """The 2x2 Bayer pattern (e.g. 'RGGB') named by BAYERPAT (or FILTER), shifted by XBAYROFF/YBAYROFF.

    Returns None when the header names no Bayer pattern.
    """
    pattern = None
    for key in ("BAYERPAT", "CFA-PAT", "COLORTYP", "FILTER"):
        value = str(header.get(key, "")).strip().upper()
        if value in BAYER_PATTERNS:
            pattern = value
            break
    if pattern is None:
        return None
    try:
        xoff = int(float(header.get("XBAYROFF", 0) or 0)) % 2
        yoff = int(float(header.get("YBAYROFF", 0) or 0)) % 2
    except (TypeError, ValueError):
        xoff = yoff = 0
    cell = [[pattern[0], pattern[1]], [pattern[2], pattern[3]]]
    if yoff:
        cell = [cell[1], cell[0]]
    if xoff:
        cell = [[row[1], row[0]] for row in cell]
    return "".join(cell[0] + cell[1])


def _positions(pattern: str, colour: str) -> list[tuple[int, int]]:
    """(dy, dx) of the pixels of one colour inside the 2x2 cell."""
    return [(i // 2, i % 2) for i, c in enumerate(pattern) if c == colour]


def bayer_plane(
    mosaic: np.ndarray,
    pattern: str,
    which: str,
    *,
    saturation: float | None = None,
) -> tuple[np.ndarray, dict, int]:
    """A half-resolution plane of a Bayer mosaic.

    Parameters
    ----------
    mosaic : ndarray
        2-D raw mosaic (odd last row/column are dropped).
    pattern : str
        One of ``BAYER_PATTERNS``, for the pixel at (0, 0).
    which : str
        'green', 'luminance', 'R', 'G' or 'B'.
    saturation : float, optional
        Level at or above which a mosaic pixel is saturated; a plane pixel with a
        saturated contributor is set to this level.

    Returns
    -------
    plane : ndarray
        float32 (float64 for float64 input) array of shape (ny // 2, nx // 2).
    pixel_map : dict
        {"scale": 2, "x_offset": ox, "y_offset": oy}: full-frame x = 2 x + ox.
    n_averaged : int
        How many mosaic pixels each plane pixel averages.
    """
    ny, nx = mosaic.shape
    cells = mosaic[: ny - ny % 2, : nx - nx % 2]
    dtype = np.float64 if mosaic.dtype == np.float64 else np.float32
    key = which.lower()
    if key == "luminance":
        positions = [(0, 0), (0, 1), (1, 0), (1, 1)]
    else:
        colour = {"green": "G", "g": "G", "r": "R", "red": "R", "b": "B", "blue": "B"}.get(key)
        if colour is None:
            raise ValueError(f"unknown Bayer plane {which!r}")
        positions = _positions(pattern, colour)
    subs = [cells[dy::2, dx::2] for dy, dx in positions]
    plane = subs[0].astype(dtype, copy=True)
    for sub in subs[1:]:
        plane += sub
    if len(subs) > 1:
        plane /= len(subs)
    if saturation is not None:
        hit = np.zeros(plane.shape, dtype=bool)
        for sub in subs:
            hit |= sub >= saturation
        plane[hit] = saturation
    oy = float(np.mean([p[0] for p in positions]))
    ox = float(np.mean([p[1] for p in positions]))
    return plane, {"scale": 2.0, "x_offset": ox, "y_offset": oy}, len(subs)


def luminance(planes: np.ndarray, *, saturation: float | None = None) -> np.ndarray:
    """Equal-weight mean of colour planes (axis 0); a pixel with any saturated channel is set to ``saturation``."""
    dtype = np.float64 if planes.dtype == np.float64 else np.float32
    out = planes[0].astype(dtype, copy=True)
    for plane in planes[1:]:
        out += plane
    out /= planes.shape[0]
    if saturation is not None:
        hit = np.any(planes >= saturation, axis=0)
        out[hit] = saturation
    return out
