"""Colour images and Bayer mosaics turned into planes a PSF can be fitted on.

An RGB image is measured per channel or on its luminance (ITU-R BT.709,
0.2126 R + 0.7152 G + 0.0722 B).  A Bayer mosaic (a one-shot-colour camera or a DSLR raw frame)
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

from typing import Any

import numpy as np

__all__ = [
    "BAYER_PATTERNS",
    "bayer_pattern_from_header",
    "bayer_plane",
    "describe_plane",
    "split_channel_from_header",
    "frame_view",
    "luminance",
    "table_to_frame",
    "table_to_plane",
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


def split_channel_from_header(header: dict) -> dict | None:
    """The colour plane a file already is, from CLRCHNL, CHNLXSTP and CHNLYSTP; None otherwise.

    Some pipelines split a Bayer frame into its colour planes and write each as its own file,
    keeping the sensor's BAYERPAT but adding CLRCHNL (the plane's colour, e.g. 'R') and CHNLXSTP,
    CHNLYSTP (how many sensor pixels apart the plane's pixels are, 2 for a 2x2 cell).  Such a
    file is one colour channel: it must not be split into Bayer planes again, and each of its
    pixels spans ``x_step`` x ``y_step`` sensor pixels.

    Parameters
    ----------
    header : mapping
        FITS header or plain dict.

    Returns
    -------
    dict or None
        ``{"channel": "R", "x_step": 2, "y_step": 2, "keywords": "CLRCHNL='R', CHNLXSTP=2, CHNLYSTP=2"}``
        when CLRCHNL is set or a step is above 1.

    Examples
    --------
    >>> split_channel_from_header({"BAYERPAT": "RGGB", "CLRCHNL": "R", "CHNLXSTP": 2, "CHNLYSTP": 2})["x_step"]
    2
    >>> split_channel_from_header({"BAYERPAT": "RGGB"}) is None
    True
    """
    name = str(header.get("CLRCHNL", "") or "").strip()
    steps = []
    for key in ("CHNLXSTP", "CHNLYSTP"):
        try:
            value = int(float(header.get(key, 1) or 1))
        except (TypeError, ValueError):
            value = 1
        steps.append(max(value, 1))
    if not name and steps == [1, 1]:
        return None
    words = ([f"CLRCHNL={name!r}"] if name else []) + [f"{k}={v}" for k, v in zip(("CHNLXSTP", "CHNLYSTP"), steps)
                                                      if k in header]
    colour = {"RED": "R", "GREEN": "G", "BLUE": "B"}.get(name.upper(), name.upper() or None)
    return {"channel": colour, "x_step": steps[0], "y_step": steps[1], "keywords": ", ".join(words)}


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

    Examples
    --------
    The blue pixels of an RGGB mosaic sit at odd rows and columns:

    >>> import numpy as np
    >>> mosaic = np.arange(16.0).reshape(4, 4)
    >>> plane, pixel_map, n_averaged = bayer_plane(mosaic, "RGGB", "B")
    >>> plane
    array([[ 5.,  7.],
           [13., 15.]])
    >>> pixel_map, n_averaged
    ({'scale': 2.0, 'x_offset': 1.0, 'y_offset': 1.0}, 1)
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
    """ITU-R BT.709 luminance 0.2126 R + 0.7152 G + 0.0722 B of (3, ny, nx) planes.

    A pixel with any saturated channel is set to ``saturation``, so a fit leaves it out.

    Examples
    --------
    >>> import numpy as np
    >>> rgb = np.stack([np.full((2, 2), value) for value in (1.0, 2.0, 3.0)])
    >>> luminance(rgb)
    array([[1.8596, 1.8596],
           [1.8596, 1.8596]])
    """
    dtype = np.float64 if planes.dtype == np.float64 else np.float32
    out = planes[0] * dtype(0.2126)
    out += planes[1] * dtype(0.7152)
    out += planes[2] * dtype(0.0722)
    out = out.astype(dtype, copy=False)
    if saturation is not None:
        hit = np.any(planes[:3] >= saturation, axis=0)
        out[hit] = saturation
    return out


def describe_plane(pattern: str, which: str) -> str:
    """One sentence saying what a Bayer plane is, for metadata and ``psfkit info``.

    Parameters
    ----------
    pattern : str
        One of ``BAYER_PATTERNS``.
    which : str
        'green', 'luminance', 'R', 'G' or 'B'.

    Returns
    -------
    str
    """
    key = which.lower()
    if key == "green":
        return (f"{pattern} Bayer mosaic: green plane, the mean of the two green pixels of each 2x2 cell "
                "(half resolution)")
    if key == "luminance":
        return f"{pattern} Bayer mosaic: 2x2-binned luminance, the mean (R + 2G + B) / 4 of each cell (half resolution)"
    colour = {"r": "red", "g": "green", "b": "blue", "red": "red", "blue": "blue"}[key]
    n = len(_positions(pattern, {"red": "R", "green": "G", "blue": "B"}[colour]))
    what = "pixel" if n == 1 else f"mean of the {n} pixels"
    return f"{pattern} Bayer mosaic: {colour} sub-plane, the {colour} {what} of each 2x2 cell (half resolution)"


# columns of a star table that are lengths in pixels (scaled by the plane's pixel size when mapped)
_LENGTH_COLUMNS = ("x_err", "y_err", "fwhm_x", "fwhm_y", "fwhm", "fwhm_x_err", "fwhm_y_err", "fwhm_err",
                   "fwhm_analytic", "aperture_radius")
_POSITION_COLUMNS = (("x_fit", "y_fit"), ("x_init", "y_init"), ("x_peak", "y_peak"), ("xcentroid", "ycentroid"))


def _map_table(table: Any, image: Any, *, inverse: bool) -> Any:
    out = table.copy()
    pixel_map = getattr(image, "pixel_map", None)
    if not pixel_map:
        return out
    scale = float(pixel_map["scale"])
    convert = image.from_frame if inverse else image.to_frame
    for xc, yc in _POSITION_COLUMNS:
        if xc in out.colnames and yc in out.colnames:
            x, y = convert(np.asarray(out[xc], float), np.asarray(out[yc], float))
            out[xc] = x.astype(out[xc].dtype) if out[xc].dtype.kind == "f" else x
            out[yc] = y.astype(out[yc].dtype) if out[yc].dtype.kind == "f" else y
    for name in _LENGTH_COLUMNS:
        if name in out.colnames:
            out[name] = out[name] / scale if inverse else out[name] * scale
    return out


def table_to_plane(table: Any, image: Any) -> Any:
    """The inverse of :func:`table_to_frame`: a full-frame star list in the pixels of a Bayer plane.

    Parameters
    ----------
    table : astropy.table.Table
        Positions (and FWHM) on the full frame.
    image : Image
        The plane to measure on.

    Returns
    -------
    astropy.table.Table
        A copy in the plane's pixels (identity when ``image`` is the frame).

    Examples
    --------
    >>> import numpy as np
    >>> from astropy.table import Table
    >>> from psfkit.io.image import Image
    >>> plane, pixel_map, _ = bayer_plane(np.arange(16.0).reshape(4, 4), "RGGB", "B")
    >>> image = Image(data=plane, meta={"pixel_map": pixel_map, "frame_shape": (4, 4)})
    >>> on_plane = table_to_plane(Table({"x_fit": [1.0, 3.0], "y_fit": [1.0, 3.0]}), image)
    >>> on_plane["x_fit"].tolist()
    [0.0, 1.0]
    """
    return _map_table(table, image, inverse=True)


def table_to_frame(table: Any, image: Any) -> Any:
    """A star table measured on a plane, with positions and pixel lengths on the full frame.

    Parameters
    ----------
    table : astropy.table.Table
        A table of :func:`psfkit.find_stars` or :func:`psfkit.fit_stars` measured on ``image``.
    image : Image
        The image the table was measured on.

    Returns
    -------
    astropy.table.Table
        A copy: ``x_fit = scale x + x_offset`` (and the other position
        columns), pixel lengths (FWHM, position errors) times ``scale``;
        arcsecond columns, sky positions and fluxes unchanged.  Identity (a
        copy) when ``image`` is not a plane of a larger frame.
        ``meta["pixel_map"]`` and ``meta["image_shape"]`` describe the frame.

    Examples
    --------
    Positions on the blue plane of an RGGB mosaic, on the full frame:

    >>> import numpy as np
    >>> from astropy.table import Table
    >>> from psfkit.io.image import Image
    >>> plane, pixel_map, _ = bayer_plane(np.arange(16.0).reshape(4, 4), "RGGB", "B")
    >>> image = Image(data=plane, meta={"pixel_map": pixel_map, "frame_shape": (4, 4)})
    >>> on_frame = table_to_frame(Table({"x_fit": [0.0, 1.0], "y_fit": [0.0, 1.0]}), image)
    >>> on_frame["x_fit"].tolist(), on_frame["y_fit"].tolist()
    ([1.0, 3.0], [1.0, 3.0])
    """
    out = _map_table(table, image, inverse=False)
    pixel_map = getattr(image, "pixel_map", None)
    if not pixel_map:
        return out
    scale = float(pixel_map["scale"])
    out.meta["pixel_map"] = dict(pixel_map)
    out.meta["plane_shape"] = list(image.shape)
    out.meta["image_shape"] = list(image.meta.get("frame_shape", image.shape))
    out.meta["coordinates"] = ("0-based pixel centres of the full frame, x = column, y = row; "
                               f"measured on {image.meta.get('channel_rule', 'a plane')}")
    if "pixel_scale" in out.meta and image.pixel_scale:
        out.meta["pixel_scale"] = image.pixel_scale / scale
    return out


def frame_view(image: Any) -> np.ndarray:
    """Pixels to draw full-frame positions on: the image itself, or a Bayer plane blown up 2x2 to the frame's size.

    Parameters
    ----------
    image : Image

    Returns
    -------
    ndarray
        ``image.data`` (not a copy) when it is the frame; else a new array of the frame's shape.

    Examples
    --------
    >>> import numpy as np
    >>> from psfkit.io.image import Image
    >>> plane, pixel_map, _ = bayer_plane(np.arange(16.0).reshape(4, 4), "RGGB", "B")
    >>> frame_view(Image(data=plane, meta={"pixel_map": pixel_map, "frame_shape": (4, 4)}))
    array([[ 5.,  5.,  7.,  7.],
           [ 5.,  5.,  7.,  7.],
           [13., 13., 15., 15.],
           [13., 13., 15., 15.]])
    """
    pixel_map = getattr(image, "pixel_map", None)
    if not pixel_map:
        return image.data
    s = int(pixel_map["scale"])
    big = np.repeat(np.repeat(image.data, s, axis=0), s, axis=1)
    ny, nx = image.meta.get("frame_shape", big.shape)
    out = np.full((ny, nx), np.nan, dtype=big.dtype)
    out[: min(ny, big.shape[0]), : min(nx, big.shape[1])] = big[:ny, :nx]
    return out
