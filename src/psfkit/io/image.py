"""Images and what their headers know.

:func:`load_image` reads a file into an :class:`Image`: the pixels as a 2-D
float array plus the metadata every other module uses (image scale, gain, read
noise, saturation level, exposure, date, WCS, row order, colour layout).  Every
format goes through one path: :mod:`psfkit.io._readers` turns the file into float
pixels and a header, this module decides what the header means, and
:mod:`psfkit.io.colour` turns colour images and Bayer mosaics into the plane that
is measured.  Detection, fitting and photometry never look at a file format.

The rules (which keyword wins, how binning is treated, what a Bayer plane's
pixel means) are written down in ``docs/formats.md``; each loaded image says in
its metadata which rule gave its scale, gain and saturation level.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from psfkit.errors import PsfkitError
from psfkit.io.outputs import remember_input
from psfkit.utils import check_positive

__all__ = [
    "Image",
    "load_image",
    "load_planes",
    "image_scale_from_header",
    "as_image",
    "describe_image",
    "plane_to_frame",
    "frame_to_plane",
]


ARCSEC_PER_RADIAN_OVER_1000 = 206.264806  # arcsec/px = this * pixel size [um] / focal length [mm]


@dataclass(frozen=True)
class Image:
    """Pixels plus metadata.

    Attributes
    ----------
    data : ndarray
        2-D float array (rows = y, columns = x), in data units.  NaN marks
        pixels without data.  For a colour image or a Bayer mosaic this is the
        plane that is measured (``meta["channel"]`` says which).
    path : str or None
        The file it came from.
    pixel_scale : float or None
        Arcseconds per pixel of ``data``, when known.
    scale_rule : str
        How ``pixel_scale`` was found (which keywords, or the user's options, or "unknown").
    gain : float or None
        Electrons per data unit of ``data``.
    read_noise : float or None
        Read noise in electrons (of one pixel of ``data``).
    saturation : float or None
        Data value at or above which a pixel of ``data`` is saturated.
    exptime : float or None
        Exposure time in seconds.
    date_obs : str or None
        Start of exposure, ISO 8601 (old ``DD/MM/YY`` dates are converted).
    wcs : astropy.wcs.WCS or None
        Celestial WCS of ``data`` when the header has one (for a Bayer plane,
        the frame's WCS rewritten for the plane's pixels).
    header : dict
        The raw header cards (keyword -> value) of the HDU the pixels came from.
    meta : dict
        Everything else: ``format``, ``layout`` (grey, rgb, stack, bayer),
        ``channel``, ``roworder``, ``hdu``, ``bayer_pattern``, ``pixel_map``,
        ``frame_shape``, ``gain_rule``, ``saturation_rule`` ...

    Examples
    --------
    >>> import psfkit
    >>> image = psfkit.load_image(psfkit.sample_image_path())
    >>> image.data.shape, image.data.dtype.name
    ((256, 256), 'float32')
    >>> image.saturation > 0
    True
    """

    data: np.ndarray
    path: str | None = None
    pixel_scale: float | None = None
    scale_rule: str = "unknown"
    gain: float | None = None
    read_noise: float | None = None
    saturation: float | None = None
    exptime: float | None = None
    date_obs: str | None = None
    wcs: Any = None
    header: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """(ny, nx) of the pixel array."""
        return tuple(self.data.shape)  # type: ignore[return-value]

    @property
    def roworder(self) -> str:
        """'TOP-DOWN' (row 0 is the top row as the capture program shows it) or 'BOTTOM-UP' (FITS default)."""
        return str(self.meta.get("roworder", "BOTTOM-UP"))

    @property
    def pixel_map(self) -> dict | None:
        """How a pixel of ``data`` maps to the full frame (Bayer planes), or None when they are the same."""
        return self.meta.get("pixel_map")

    def to_frame(self, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """Full-frame pixel coordinates of positions (x, y) in ``data`` (identity unless a Bayer plane)."""
        return plane_to_frame(x, y, self.pixel_map)

    def from_frame(self, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """Positions in ``data`` of full-frame pixel coordinates (x, y) (identity unless a Bayer plane)."""
        return frame_to_plane(x, y, self.pixel_map)

    def with_data(self, data: np.ndarray, **changes: Any) -> Image:
        """A copy of this image with other pixels (and optionally other metadata)."""
        return replace(self, data=data, **changes)


def plane_to_frame(x: Any, y: Any, pixel_map: dict | None) -> tuple[np.ndarray, np.ndarray]:
    """Full-frame coordinates of positions on a plane: ``x_full = scale * x + x_offset`` (same for y).

    Parameters
    ----------
    x, y : array-like
        0-based positions on the plane.
    pixel_map : dict or None
        ``{"scale", "x_offset", "y_offset"}`` (``Image.pixel_map``); None means the identity.

    Returns
    -------
    x_full, y_full : ndarray
    """
    return _pixel_map_affine(x, y, pixel_map, inverse=False)


def frame_to_plane(x: Any, y: Any, pixel_map: dict | None) -> tuple[np.ndarray, np.ndarray]:
    """Positions on a plane of full-frame coordinates (the inverse of :func:`plane_to_frame`).

    Parameters
    ----------
    x, y : array-like
        0-based full-frame positions.
    pixel_map : dict or None
        As for :func:`plane_to_frame`.

    Returns
    -------
    x_plane, y_plane : ndarray
    """
    return _pixel_map_affine(x, y, pixel_map, inverse=True)


def _pixel_map_affine(x: Any, y: Any, pixel_map: dict | None, *, inverse: bool) -> tuple[np.ndarray, np.ndarray]:
    """``x_full = scale * x + x_offset`` (same for y), or its inverse; the identity without a map."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if not pixel_map:
        return x, y
    s, ox, oy = float(pixel_map["scale"]), float(pixel_map["x_offset"]), float(pixel_map["y_offset"])
    if inverse:
        return (x - ox) / s, (y - oy) / s
    return s * x + ox, s * y + oy


# ----------------------------------------------------------------------------- header interpretation


def _number(value: Any) -> float | None:
    """A finite float from a header value ('1.22', 1.22, "'56'"), else None."""
    if isinstance(value, bool):
        return None
    try:
        number = float(str(value).strip().strip("'").strip())
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _header_float(header: Any, *keys: str) -> tuple[float | None, str | None]:
    """First finite float among header keywords (string values like '1.22' are parsed)."""
    for key in keys:
        if key in header:
            number = _number(header[key])
            if number is not None:
                return number, key
    return None, None


def _comment(header: Any, key: str | None) -> str:
    if key is None:
        return ""
    try:
        return str(header.comments[key]).lower()
    except Exception:  # plain dicts (XISF, EXIF) have no comments
        return ""


def image_scale_from_header(
    header: Any,
    wcs: Any = None,
    *,
    focal_length: float | None = None,
    pixel_size: float | None = None,
    binning: float | None = None,
    pixel_scale: float | None = None,
) -> tuple[float | None, str]:
    """Image scale in arcsec/px and the rule used to find it.

    Rules, in order (the first that applies wins):

    0. ``pixel_scale`` given by the user.
    1. A focal length (the user's ``focal_length``, else FOCALLEN or FOCAL) and a
       pixel size (the user's ``pixel_size``, else XPIXSZ/YPIXSZ or
       PIXSIZE1/PIXSIZE2): 206.265 x pixel size [um] / focal length [mm].  A
       header pixel size is taken as the size *after* binning (the convention
       of MaxIm DL, N.I.N.A., Siril and the FITS keyword dictionary: "Pixel
       width in microns (after binning)"), unless its comment says
       "unbinned", then it is multiplied by XBINNING.  ``binning`` (the
       user's) says the pixel size is the unbinned one: it is multiplied by it.
    2. A photographic plate: PLTSCALE [arcsec/mm] x XPIXELSZ [um] / 1000 (DSS).
    3. A celestial WCS (CD, CDELT or PC matrix): the square root of the pixel area.
    4. PIXSCALE / PIXSCAL1 / SECPIX / SCALE [arcsec/px].

    Parameters
    ----------
    header : mapping
        FITS header (astropy) or a plain dict of keywords.
    wcs : astropy.wcs.WCS, optional
        The image's celestial WCS.
    focal_length, pixel_size, binning, pixel_scale : float, optional
        The user's values (mm, um, factor, arcsec/px); they win over the header's.

    Returns
    -------
    scale : float or None
    rule : str

    Examples
    --------
    >>> scale, rule = image_scale_from_header({"FOCALLEN": 1000.0, "XPIXSZ": 3.76})
    >>> round(scale, 4)
    0.7756
    >>> rule
    '206.265 x XPIXSZ=3.76 um / FOCALLEN=1000 mm'
    """
    for name, value in (("focal_length", focal_length), ("pixel_size", pixel_size), ("binning", binning),
                        ("pixel_scale", pixel_scale)):
        check_positive(value, name, allow_none=True)
    if pixel_scale is not None:
        return float(pixel_scale), f"user: --scale {pixel_scale:g} arcsec/px"
    if focal_length is not None:
        focal, fsource = float(focal_length), f"--focal-length {focal_length:g} mm (user)"
    else:
        focal, fkey = _header_float(header, "FOCALLEN", "FOCAL")
        fsource = f"{fkey}={focal:g} mm" if focal is not None else ""
    binning_note = ""
    if pixel_size is not None:
        pix, psource = float(pixel_size), f"--pixel-size {pixel_size:g} um (user)"
    else:
        xpix, xkey = _header_float(header, "XPIXSZ", "PIXSIZE1")
        ypix, _ = _header_float(header, "YPIXSZ", "PIXSIZE2")
        pix = None
        psource = ""
        if xpix is not None and xpix > 0:
            pix = math.sqrt(xpix * (ypix if ypix and ypix > 0 else xpix))
            psource = f"{xkey}={xpix:g} um"
            header_bin, _ = _header_float(header, "XBINNING")
            comment = _comment(header, xkey)
            if binning is None and header_bin and header_bin > 1 and "unbinned" in comment:
                pix *= header_bin
                binning_note = f" x XBINNING={header_bin:g} (its comment says the pixel size is unbinned)"
    if binning is not None and pix is not None:
        pix *= binning
        binning_note = f" x --binning {binning:g} (user: the pixel size is the unbinned one)"
    if focal is not None and focal > 0 and pix is not None and pix > 0:
        scale = ARCSEC_PER_RADIAN_OVER_1000 * pix / focal
        return scale, f"206.265 x {psource}{binning_note} / {fsource}"
    plate, _ = _header_float(header, "PLTSCALE")
    xpixel, _ = _header_float(header, "XPIXELSZ")
    if plate and plate > 0 and xpixel and xpixel > 0:
        ypixel, _ = _header_float(header, "YPIXELSZ")
        size = math.sqrt(xpixel * (ypixel if ypixel and ypixel > 0 else xpixel))
        return plate * size / 1000.0, f"plate: PLTSCALE={plate:g} arcsec/mm x XPIXELSZ={xpixel:g} um / 1000"
    if wcs is not None:
        try:
            from astropy.wcs.utils import proj_plane_pixel_scales

            if wcs.has_celestial:
                scales = proj_plane_pixel_scales(wcs.celestial) * 3600.0
                if np.all(np.isfinite(scales)) and np.all(scales > 0):
                    return float(np.sqrt(scales[0] * scales[1])), "WCS pixel scale (sqrt of the pixel area)"
        except Exception:
            pass
    value, key = _header_float(header, "PIXSCALE", "PIXSCAL1", "SECPIX", "SCALE")
    if value and value > 0:
        return value, f"header {key}={value:g} arcsec/px"
    missing = []
    if focal is None:
        missing.append("focal length")
    if pix is None:
        missing.append("pixel size")
    absent = " and no ".join(missing or ["usable scale"])
    return None, f"unknown (no {absent}; give --scale or --focal-length/--pixel-size)"


# header keywords of a celestial WCS (and its SIP distortion), copied from an XISF header into FITS cards
_WCS_KEYS = r"^(CTYPE|CRPIX|CRVAL|CDELT|CUNIT|CD\d_|PC\d_|A_|B_|AP_|BP_|LONPOLE|LATPOLE|EQUINOX|RADESYS)"


def _celestial_wcs(header: Any) -> Any:
    """A 2-D celestial WCS from the header, or None (never a warning or an exception)."""
    if not hasattr(header, "comments"):  # plain dict (XISF): make a FITS header of the WCS cards
        from astropy.io import fits

        cards = fits.Header()
        for key, value in header.items():
            if re.match(_WCS_KEYS, str(key)):
                number = _number(value)
                is_text = str(key).startswith(("CTYPE", "CUNIT", "RADESYS"))
                try:
                    cards[key] = number if number is not None and not is_text else value
                except Exception:
                    continue
        header = cards
    ctype = str(header.get("CTYPE1", "")).strip()
    if not ctype:
        return None
    from astropy.wcs import WCS

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            wcs = WCS(header, naxis=2)
        except Exception:
            return None
        try:
            if not wcs.has_celestial:
                return None
            wcs.wcs.set()
        except Exception:
            return None
    return wcs


def _plane_wcs(wcs: Any, pixel_map: dict) -> Any:
    """The WCS of a plane whose pixel (x, y) is the frame's (s x + ox, s y + oy), SIP included."""
    if wcs is None:
        return None
    s = float(pixel_map["scale"])
    offsets = np.array([pixel_map["x_offset"], pixel_map["y_offset"]], dtype=float)
    try:
        out = wcs.deepcopy()
        crpix = (np.array(wcs.wcs.crpix, dtype=float) - 1.0 - offsets) / s + 1.0
        out.wcs.crpix = crpix
        if wcs.wcs.has_cd():
            out.wcs.cd = np.array(wcs.wcs.cd) * s
        else:
            out.wcs.cdelt = np.array(wcs.wcs.cdelt) * s
        if wcs.sip is not None:
            from astropy.wcs import Sip

            def scaled(coeffs: Any) -> Any:
                if coeffs is None:
                    return None
                c = np.array(coeffs, dtype=float)
                p, q = np.indices(c.shape)
                return c * s ** (p + q - 1.0)

            sip = wcs.sip
            out.sip = Sip(scaled(sip.a), scaled(sip.b), scaled(sip.ap), scaled(sip.bp), crpix)
        out.cpdis1 = out.cpdis2 = out.det2im1 = out.det2im2 = None
        out.wcs.set()
        return out
    except Exception:
        return None


def _electrons_per_adu(header: Any) -> tuple[float | None, str]:
    """Gain in e-/ADU and the rule: EGAIN or CVF first (always e-/ADU); GAIN unless it is a CMOS gain *setting*.

    Capture programs for CMOS cameras (N.I.N.A., SharpCap, Siril's QHY files) write the
    camera's gain setting as GAIN (e.g. ``GAIN = 56 / Sensor gain`` with an OFFSET keyword
    beside it).  GAIN is taken as e-/ADU unless its comment calls it a sensor gain or
    setting without naming electrons, or it is a whole number above 10 with an OFFSET
    keyword present; then the gain is unknown and fits are unweighted.  Data in physical
    units (BUNIT such as MJy/sr or Jy) are not counts: a gain in e-/DN does not apply.
    """
    bunit = str(header.get("BUNIT", "")).strip().lower() if hasattr(header, "get") else ""
    if bunit and not any(word in bunit for word in ("adu", "dn", "count", "electron", "e-", "photon")):
        found = [k for k in ("EGAIN", "CVF", "GAIN") if k in header]
        if found:
            return None, f"not used: {found[0]} is per count, the data are in {header.get('BUNIT')}"
    value, key = _header_float(header, "EGAIN", "CVF")
    if value is not None and value > 0:
        return value, f"header {key}={value:g} e-/ADU"
    value, _ = _header_float(header, "GAIN")
    if value is None:
        return None, "unknown (no GAIN, EGAIN or CVF)"
    comment = _comment(header, "GAIN")
    names_electrons = "e-" in comment or "electron" in comment or "e/adu" in comment or "e/dn" in comment
    setting = ("sensor" in comment or "setting" in comment) and not names_electrons
    cmos_setting = float(value).is_integer() and value > 10 and "OFFSET" in header and not names_electrons
    if setting or cmos_setting:
        return None, f"unknown (GAIN={value:g} is the camera's gain setting, not e-/ADU)"
    if value <= 0:
        return None, f"unknown (GAIN={value:g} is not positive)"
    return value, f"header GAIN={value:g} e-/ADU"


_OLD_DATE = re.compile(r"^\s*(\d{1,2})/(\d{1,2})/(\d{2})\s*$")


def _iso_date(value: Any) -> str | None:
    """DATE-OBS as ISO 8601; the old FITS form DD/MM/YY means 19YY-MM-DD."""
    if value is None:
        return None
    text = str(value).strip()
    if not text:
        return None
    m = _OLD_DATE.match(text)
    if m:
        day, month, year = (int(g) for g in m.groups())
        return f"19{year:02d}-{month:02d}-{day:02d}"
    return text


def _exposure(header: Any) -> float | None:
    value, key = _header_float(header, "EXPTIME", "EXPOSURE")
    if value is None:
        return None
    comment = _comment(header, key)
    if re.search(r"\bminutes?\b|\bmin\b", comment):  # DSS: EXPOSURE = 50.0 / Exposure time minutes
        value *= 60.0
    return value if value >= 0 else None


def _row_maxima(data: np.ndarray, hint: np.ndarray | None = None) -> tuple[float, float, np.ndarray | None]:
    """(max, rough min, per-row maxima) of the finite pixels.

    One vectorised max pass along rows (NaN propagates, so a finite result proves there is
    none); the row maxima let the plateau search read only the rows that reach the top band.
    """
    rows = data.reshape(-1, data.shape[-1])
    with np.errstate(invalid="ignore"):
        row_max = hint if hint is not None and hint.shape == (rows.shape[0],) else rows.max(axis=1)
        top = float(row_max.max())
    if math.isfinite(top):
        flat = rows.reshape(-1)
        low = float(flat[:: max(1, flat.size // 65536)].min())  # a sample: the band only needs a rough span
        return top, low, row_max
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return math.nan, math.nan, None
    return float(finite.max()), float(finite.min()), None


def _plateau(data: np.ndarray, top: float, low: float, row_max: np.ndarray | None) -> float | None:
    """The saturation plateau of integer-valued data: the highest value shared by many pixels.

    Cameras and software often clip below the type's maximum (Siril writes 65534; a Canon raw
    clips at its white level, 13583 in the PANOPTES frames, with the odd hot pixel above it).
    The top pixel value, when at least 3 pixels hold it, is the plateau; else a value in the
    top tenth of the data's range held by at least 3 pixels, with fewer pixels above it than
    on it and 5 times the median count of the band's values.  Returns None when there is none.
    """
    span = top - low
    threshold = top - 0.1 * span if span > 0 else top
    rows = data.reshape(-1, data.shape[-1])
    if row_max is not None:
        rows = rows[np.flatnonzero(row_max >= threshold)]
    band = rows[rows >= threshold]
    band = band[np.isfinite(band)]
    if int(np.count_nonzero(band == top)) >= 3:
        return top
    if band.size < 3:
        return None
    values, counts = np.unique(band, return_counts=True)
    best = int(np.argmax(counts))
    level, count = float(values[best]), int(counts[best])
    above = int(counts[best + 1:].sum())
    if count >= 3 and above < count and count >= 5 * max(1.0, float(np.median(counts))):
        return level
    return None


# ----------------------------------------------------------------------------- loading

_CHANNEL_NAMES = {"r": "R", "red": "R", "g": "G", "green": "G", "b": "B", "blue": "B",
                  "l": "luminance", "lum": "luminance", "luminance": "luminance", "y": "luminance",
                  "mosaic": "mosaic", "raw": "mosaic"}


def _normalise_channel(path: Path, channel: Any, layout: str, n_planes: int) -> Any:
    """The channel asked for, as 'R'/'G'/'B'/'luminance'/'green'/'mosaic' or a plane index."""
    if channel is None:
        return {"rgb": "luminance", "bayer": "green", "stack": 0}.get(layout)
    if isinstance(channel, (int, np.integer)) or (isinstance(channel, str) and channel.strip().lstrip("-").isdigit()):
        index = int(channel)
        if layout == "grey":
            if index == 0:
                return None
            raise PsfkitError(f"{path}: the image has one plane; channel {index} does not exist")
        if layout == "bayer":
            raise PsfkitError(f"{path}: a Bayer mosaic has no numbered planes; use green, luminance, R, G, B or mosaic")
        if not 0 <= index < n_planes:
            raise PsfkitError(f"{path}: channel {index} does not exist "
                              f"(the image has {n_planes} planes, 0 to {n_planes - 1})")
        return index
    key = str(channel).strip().lower()
    name = _CHANNEL_NAMES.get(key)
    if layout == "bayer" and key in ("green", "g"):
        name = "green" if key == "green" else "G"
    if name is None:
        raise PsfkitError(f"{path}: unknown channel {channel!r}; use R, G, B, luminance, a plane number"
                          + (", green or mosaic" if layout == "bayer" else ""))
    if layout == "grey":
        if name in ("luminance", "mosaic"):
            return None
        raise PsfkitError(f"{path}: a grey image has no {name} channel")
    if layout == "stack":
        raise PsfkitError(f"{path}: a stack of {n_planes} planes has no colour channels; "
                          f"choose a plane number 0 to {n_planes - 1}")
    if layout == "rgb" and name == "mosaic":
        raise PsfkitError(f"{path}: an RGB image is not a Bayer mosaic")
    return name


def _check_pixels(path: Any, data: np.ndarray) -> None:
    """A PsfkitError for an empty, all-NaN or constant image.

    Cheap for real images: a sample of pixels holding two different finite values settles
    both questions; only when the sample does not is every pixel looked at.
    """
    if data.size == 0:
        raise PsfkitError(f"{path}: the image has no pixels (shape {data.shape})")
    flat = data.reshape(-1)
    sample = flat[:: max(1, flat.size // 4096)]
    sample = sample[np.isfinite(sample)]
    if sample.size and sample.min() != sample.max():
        return
    finite = np.isfinite(data)
    if not finite.any():
        raise PsfkitError(f"{path}: every pixel is NaN or infinite")
    values = data[finite]
    low, high = float(values.min()), float(values.max())
    if low == high:
        raise PsfkitError(f"{path}: the image is constant ({low:g}); there is nothing to measure")


def _finish(path: Path, frame: Any, channel: Any, user: dict) -> Image:
    """Interpret a reader's Frame: header metadata, the plane to measure, checks."""
    from psfkit.io import colour

    header = frame.header
    data = frame.data
    layout = frame.layout
    n_planes = data.shape[0] if data.ndim == 3 else 1
    bayer = frame.bayer_pattern
    split = colour.split_channel_from_header(header) if layout == "grey" else None
    if layout == "grey" and bayer is None and split is None:
        bayer = colour.bayer_pattern_from_header(header)
    if layout == "grey" and bayer is not None:
        layout = "bayer"
    if split is not None:
        # already one colour plane of a Bayer sensor (CLRCHNL/CHNLXSTP/CHNLYSTP): a BAYERPAT it
        # still carries describes the sensor, not these pixels; split it again and a red image
        # would give a "green plane" at half the size of its stars
        split["sensor_pattern"] = colour.bayer_pattern_from_header(header)
        if channel is not None:
            key = str(channel).strip().lower()
            name = _CHANNEL_NAMES.get(key)
            if name not in (split["channel"], "mosaic", "luminance") and key != "0":
                raise PsfkitError(f"{path}: the file is already one colour plane ({split['keywords']}); "
                                  f"it has no {channel} channel")
            channel = None
    if layout == "bayer" and data.ndim != 2:
        raise PsfkitError(f"{path}: a Bayer mosaic must be 2-D, got shape {data.shape}")
    if layout == "bayer" and min(data.shape) < 2:
        raise PsfkitError(f"{path}: a Bayer mosaic needs at least 2x2 pixels, got shape {data.shape}")
    which = _normalise_channel(path, channel, layout, n_planes)

    wcs = _celestial_wcs(header)
    scale, scale_rule = image_scale_from_header(header, wcs, **user)
    gain, gain_rule = _electrons_per_adu(header)
    read_noise, rkey = _header_float(header, "RDNOISE", "READNOIS", "RON", "READNOISE")
    if read_noise is not None and read_noise < 0:
        read_noise = None
    binned_plane = split is not None and split["x_step"] * split["y_step"] > 1
    if binned_plane and scale is not None and scale_rule.startswith("206.265"):
        # the pixel size is the sensor's; a pixel of the plane spans x_step x y_step of them
        step = math.sqrt(split["x_step"] * split["y_step"])
        scale *= step
        scale_rule += (f"; x {step:g} for a plane of every {split['x_step']}x{split['y_step']} sensor pixels "
                       f"({split['keywords']})")
    exptime = _exposure(header)
    date_obs = _iso_date(header.get("DATE-OBS", header.get("DATE_OBS")))

    # saturation of the stored pixels (before any plane is made)
    saturation, skey = _header_float(header, "SATURATE", "DATAMAX")
    if saturation is not None:
        saturation_rule = f"header {skey}={saturation:g}"
    elif frame.saturation is not None:
        saturation = frame.saturation
        saturation_rule = f"RAW white level {frame.meta.get('white_level', 0):g} minus black level"
    elif frame.type_max is not None:
        saturation = frame.type_max
        saturation_rule = f"the data type's maximum ({saturation:g})"
        if frame.type_max > 255:  # 8-bit data share values too often for a plateau to mean anything
            top, low, row_max = _row_maxima(data, frame.row_max)
            if math.isfinite(top) and top < frame.type_max:
                level = _plateau(data, top, low, row_max)
                if level is not None:
                    saturation = level
                    saturation_rule = (f"plateau of the brightest pixels at {level:g} "
                                       f"(below the type's maximum {frame.type_max:g})")
    else:
        saturation_rule = "unknown (float data without SATURATE or DATAMAX)"

    if frame.format == "FITS":
        roworder = str(header.get("ROWORDER", "")).strip().upper()
    else:
        roworder = frame.meta.get("roworder", "TOP-DOWN")
    if roworder not in ("TOP-DOWN", "BOTTOM-UP"):
        roworder = "BOTTOM-UP"
    meta: dict = {
        "format": frame.format,
        "layout": layout,
        "n_planes": n_planes,
        "frame_shape": list(data.shape[-2:]),
        "roworder": roworder,
        "gain_rule": gain_rule,
        "read_noise_rule": f"header {rkey}={read_noise:g} e-" if read_noise is not None else "unknown (no RDNOISE)",
        "saturation_rule": saturation_rule,
        "bayer_pattern": bayer if layout == "bayer" else None,
        "channel": None,
        "pixel_map": None,
    }
    meta.update({k: v for k, v in frame.meta.items() if k not in meta})
    if split is not None:
        meta["channel"] = split["channel"]
        meta["split_channel"] = {k: split[k] for k in ("channel", "x_step", "y_step")}
        ignored = f"; its BAYERPAT ({split['sensor_pattern']}) describes the sensor and is not applied again" \
            if split["sensor_pattern"] else ""
        meta["channel_rule"] = (f"already one colour plane of a Bayer sensor ({split['keywords']}): measured as it is, "
                                f"each pixel {split['x_step']}x{split['y_step']} sensor pixels{ignored}")

    plane = data
    if layout == "rgb" or layout == "stack":
        if isinstance(which, int):
            plane = data[which]
            meta["channel"] = "RGB"[which] if layout == "rgb" else which
        elif which == "luminance":
            plane = colour.luminance(data, saturation=saturation)
            meta["channel"] = "luminance"
            meta["channel_rule"] = "ITU-R BT.709 luminance 0.2126 R + 0.7152 G + 0.0722 B"
        else:
            index = "RGB".index(which)
            plane = data[index]
            meta["channel"] = which
        if layout == "stack":
            meta["channel_rule"] = f"plane {which} of a stack of {n_planes}"
    elif layout == "bayer":
        if which == "mosaic":
            meta["channel"] = "mosaic"
            meta["channel_rule"] = "the raw Bayer mosaic measured as a grey image (asked for)"
        else:
            plane, pixel_map, n = colour.bayer_plane(data, bayer, which, saturation=saturation)
            meta["channel"] = which
            meta["pixel_map"] = pixel_map
            meta["channel_rule"] = colour.describe_plane(bayer, which)
            if scale is not None:
                scale *= pixel_map["scale"]
                scale_rule += f"; x {pixel_map['scale']:g} for the Bayer plane of 2x2 cells"
            if gain is not None and n > 1:
                gain *= n
                gain_rule += f"; x {n} (each plane pixel is the mean of {n} mosaic pixels)"
            if read_noise is not None and n > 1:
                read_noise *= math.sqrt(n)
                meta["read_noise_rule"] += f"; x sqrt({n}) (mean of {n} pixels, in plane gain units)"
            meta["gain_rule"] = gain_rule
            wcs = _plane_wcs(wcs, pixel_map)
    _check_pixels(path, plane)

    if isinstance(header, dict):
        cards = dict(header)
    else:
        cards = {k: header[k] for k in header if k not in ("COMMENT", "HISTORY", "")}
    return Image(
        data=plane,
        path=str(path),
        pixel_scale=scale,
        scale_rule=scale_rule,
        gain=gain,
        read_noise=read_noise,
        saturation=saturation,
        exptime=exptime,
        date_obs=date_obs,
        wcs=wcs,
        header=cards,
        meta=meta,
    )


def _read(path: str | os.PathLike, hdu: int | str | None, max_pixels: int | None = None) -> tuple[Path, Any]:
    from psfkit.io._readers import read_frame

    p = Path(path)
    if not p.exists():
        raise PsfkitError(f"{p}: no such file")
    if p.is_dir():
        raise PsfkitError(f"{p}: is a directory, not an image file")
    if not p.is_file():  # a named pipe, a socket, a device: reading could block forever
        raise PsfkitError(f"{p}: not a regular file (a pipe, socket or device); give an image file")
    remember_input(p)
    if isinstance(hdu, str) and hdu.strip().lstrip("-").isdigit():
        hdu = int(hdu)
    try:
        return p, read_frame(p, hdu=hdu, max_pixels=max_pixels)
    except MemoryError:
        raise PsfkitError(f"{p}: the image does not fit in memory") from None


def load_image(
    path: str | os.PathLike,
    *,
    hdu: int | str | None = None,
    channel: str | int | None = None,
    focal_length: float | None = None,
    pixel_size: float | None = None,
    binning: float | None = None,
    pixel_scale: float | None = None,
    max_pixels: int | float | str | None = None,
) -> Image:
    """Read an image file into an :class:`Image`.

    Parameters
    ----------
    path : str or path-like
        FITS (``.fits``, ``.fit``, ``.fts``, gzip, tile-compressed ``.fz``,
        multi-extension), XISF, TIFF (8/16/32-bit integer and float), PNG and
        JPEG (8/16-bit), camera RAW (CR2, NEF, ARW, DNG ... through rawpy).  The
        format is recognised from the file's first bytes.
    hdu : int or str, optional
        The FITS HDU to read (index or EXTNAME); by default the first HDU holding an image.
    channel : str or int, optional
        Which plane to measure.  RGB images: ``"luminance"`` (default, BT.709),
        ``"R"``, ``"G"``, ``"B"`` or 0-2.  Bayer mosaics (BAYERPAT, or FILTER
        naming a pattern, or a RAW file): ``"green"`` (default: the mean of the
        two green pixels of each 2x2 cell), ``"luminance"`` (the 2x2-binned
        mean of all four), ``"R"``, ``"G"``, ``"B"`` or ``"mosaic"`` (the raw
        mosaic as a grey image).  Stacks (3-D data that is not RGB): a plane
        number (default 0).  A plane of a Bayer mosaic has half the frame's
        size: ``Image.to_frame`` maps its positions back to the full frame.
    focal_length, pixel_size, binning, pixel_scale : float, optional
        The user's optics (mm, um, binning factor, arcsec/px); they win over
        the header's (see :func:`image_scale_from_header`).
    max_pixels : int, optional
        The most pixel values (width x height x planes) the file may declare; checked from
        the header before decoding.  Default: ``PSFKIT_MAX_PIXELS``, else a quarter of the
        machine's memory (:func:`psfkit.io.limits.max_pixels`; docs/security.md).

    Returns
    -------
    Image

    Raises
    ------
    PsfkitError
        For a missing, unreadable or unsuitable file (a pipe or device, an image larger than
        ``max_pixels``), with a one-line message naming it.

    Examples
    --------
    >>> import psfkit
    >>> image = psfkit.load_image(psfkit.sample_image_path())
    >>> image.data.shape
    (256, 256)
    """
    p, frame = _read(path, hdu, max_pixels)
    user = dict(focal_length=focal_length, pixel_size=pixel_size, binning=binning, pixel_scale=pixel_scale)
    return _finish(p, frame, channel, user)


def load_planes(
    path: str | os.PathLike,
    *,
    channels: Sequence[str | int] | str | None = None,
    hdu: int | str | None = None,
    focal_length: float | None = None,
    pixel_size: float | None = None,
    binning: float | None = None,
    pixel_scale: float | None = None,
    max_pixels: int | float | str | None = None,
) -> list[Image]:
    """Every plane of a file as its own :class:`Image` (the file is read once).

    Parameters
    ----------
    path : str or path-like
        Any file :func:`load_image` reads.
    channels : sequence or str, optional
        The planes to return; ``None`` or ``"all"``: R, G, B for colour images
        and Bayer mosaics, every plane of a stack, the one plane of a grey image.
        A comma-separated string (``"R,G"``) is accepted.
    hdu, focal_length, pixel_size, binning, pixel_scale, max_pixels
        As for :func:`load_image`.

    Returns
    -------
    list of Image
        ``meta["channel"]`` names each plane.

    Examples
    --------
    A grey image has one plane:

    >>> import psfkit
    >>> planes = psfkit.load_planes(psfkit.sample_image_path())
    >>> len(planes), planes[0].data.shape
    (1, (256, 256))
    """
    p, frame = _read(path, hdu, max_pixels)
    user = dict(focal_length=focal_length, pixel_size=pixel_size, binning=binning, pixel_scale=pixel_scale)
    if isinstance(channels, str):
        channels = None if channels.strip().lower() == "all" else [c for c in channels.split(",") if c.strip()]
    if channels is None:
        from psfkit.io import colour

        layout = frame.layout
        if layout == "grey" and (frame.bayer_pattern or (colour.bayer_pattern_from_header(frame.header)
                                                         and colour.split_channel_from_header(frame.header) is None)):
            layout = "bayer"
        if layout in ("rgb", "bayer"):
            channels = ["R", "G", "B"]
        elif layout == "stack":
            channels = list(range(frame.data.shape[0]))
        else:
            channels = [None]
    return [_finish(p, frame, c, user) for c in channels]


def describe_image(image: Image) -> dict:
    """What psfkit knows about a loaded image, as labelled plain values (``psfkit info`` prints it).

    Parameters
    ----------
    image : Image, path or 2-D array

    Returns
    -------
    dict
        Label -> plain value (str, number, bool, list or None), in display order.

    Examples
    --------
    >>> import psfkit
    >>> describe_image(psfkit.sample_image_path())["layout"]
    'grey'
    """
    image = as_image(image)
    meta = image.meta
    wcs = image.wcs
    centre = None
    if wcs is not None:
        try:
            ny, nx = image.shape
            ra, dec = wcs.all_pix2world([(nx - 1) / 2], [(ny - 1) / 2], 0)
            centre = [round(float(ra[0]), 6), round(float(dec[0]), 6)]
        except Exception:
            centre = None
    return {
        "file": image.path,
        "format": meta.get("format"),
        "hdu": meta.get("hdu"),
        "compressed": meta.get("compressed"),
        "stored type": meta.get("stored_type"),
        "layout": meta.get("layout"),
        "planes": meta.get("n_planes"),
        "frame shape (ny, nx)": list(meta.get("frame_shape", image.shape)),
        "bayer pattern": meta.get("bayer_pattern"),
        "measured plane": (meta.get("channel_rule")
                           or ("the image itself" if meta.get("channel") is None else str(meta.get("channel")))),
        "shape (ny, nx)": list(image.shape),
        "dtype": image.data.dtype.name,
        "pixel map": meta.get("pixel_map"),
        "image scale (arcsec/px)": image.pixel_scale,
        "scale rule": image.scale_rule,
        "gain (e-/ADU)": image.gain,
        "gain rule": meta.get("gain_rule"),
        "read noise (e-)": image.read_noise,
        "saturation": image.saturation,
        "saturation rule": meta.get("saturation_rule"),
        "exposure (s)": image.exptime,
        "date": image.date_obs,
        "row order": image.roworder,
        "WCS": wcs is not None,
        "WCS centre (deg)": centre,
    }


def as_image(image: Any) -> Image:
    """Accept an :class:`Image`, a path or a 2-D array-like and return an :class:`Image`.

    Examples
    --------
    >>> import numpy as np
    >>> as_image(np.zeros((4, 5))).data.shape
    (4, 5)
    """
    if isinstance(image, Image):
        return image
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    data = np.asarray(image)
    if data.ndim != 2:
        raise PsfkitError(f"the image must be 2-D, got shape {data.shape}")
    if data.size == 0:
        raise PsfkitError("the image has no pixels")
    if not np.issubdtype(data.dtype, np.floating):
        saturation = float(np.iinfo(data.dtype).max) if np.issubdtype(data.dtype, np.integer) else None
        return Image(data=data.astype(np.float64), saturation=saturation, meta={"format": "array"})
    return Image(data=data, meta={"format": "array"})
