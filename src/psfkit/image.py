"""Images and what their headers know.

:func:`load_image` reads a file into an :class:`Image`: the pixels as a 2-D
float array plus the metadata every other module uses (image scale, gain, read
noise, saturation level, exposure, date, WCS).  Every reader returns the same
object, so detection, fitting and photometry never look at a file format.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import PsfkitError

__all__ = ["Image", "load_image", "image_scale_from_header", "as_image"]

ARCSEC_PER_RADIAN_OVER_1000 = 206.264806  # arcsec/px = this * pixel size [um] / focal length [mm]


@dataclass(frozen=True)
class Image:
    """Pixels plus metadata.

    Attributes
    ----------
    data : ndarray
        2-D float array (rows = y, columns = x), in data units.  NaN marks
        pixels without data.
    path : str or None
        The file it came from.
    pixel_scale : float or None
        Arcseconds per pixel, when known.
    scale_rule : str
        How ``pixel_scale`` was found (which keywords, or "user", or "unknown").
    gain : float or None
        Electrons per data unit.
    read_noise : float or None
        Read noise in electrons.
    saturation : float or None
        Data value at or above which a pixel is saturated.
    exptime : float or None
        Exposure time in seconds.
    date_obs : str or None
        Start of exposure (ISO string, as in the header).
    wcs : astropy.wcs.WCS or None
        Celestial WCS when the header has one.
    header : dict
        The raw header cards (keyword -> value) of the HDU the pixels came from.
    meta : dict
        Anything else a reader found worth keeping (format, HDU, channel, Bayer ...).
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

    def with_data(self, data: np.ndarray, **changes: Any) -> "Image":
        """A copy of this image with other pixels (and optionally other metadata)."""
        return replace(self, data=data, **changes)

    def variance(self, model_or_data: np.ndarray) -> np.ndarray | None:
        """Per-pixel variance from gain and read noise, or None when the gain is unknown.

        variance = signal / gain + (read_noise / gain)^2, in data units squared,
        where ``signal`` is the expected counts above zero (clipped at zero).
        """
        if not self.gain or self.gain <= 0:
            return None
        rn = (self.read_noise or 0.0) / self.gain
        return np.clip(model_or_data, 0.0, None) / self.gain + rn * rn


def _header_float(header: Any, *keys: str) -> tuple[float | None, str | None]:
    """First finite float among header keywords (string values like '1.22' are parsed)."""
    for key in keys:
        if key in header:
            value = header[key]
            try:
                number = float(str(value).strip().strip("'"))
            except (TypeError, ValueError):
                continue
            if math.isfinite(number):
                return number, key
    return None, None


def image_scale_from_header(header: Any, wcs: Any = None) -> tuple[float | None, str]:
    """Image scale in arcsec/px and the rule used to find it.

    Rules, in order:

    1. FOCALLEN (or FOCAL) with XPIXSZ/YPIXSZ (or PIXSIZE1/PIXSIZE2):
       206.265 x pixel size [um] / focal length [mm].  XPIXSZ is taken as the
       size *after* binning (the convention of MaxIm DL, N.I.N.A., Siril and
       the FITS keyword dictionary); when the header says so explicitly in the
       comment ("unbinned") it is multiplied by XBINNING.
    2. A celestial WCS (CD, CDELT or PC matrix): the square root of the pixel area.
    3. PIXSCALE / PIXSCAL1 / SECPIX / PLTSCALE-derived keywords.
    """
    focal, fkey = _header_float(header, "FOCALLEN", "FOCAL")
    xpix, xkey = _header_float(header, "XPIXSZ", "PIXSIZE1", "XPIXELSZ")
    ypix, _ = _header_float(header, "YPIXSZ", "PIXSIZE2", "YPIXELSZ")
    if focal and focal > 0 and xpix and xpix > 0:
        pix = math.sqrt(xpix * (ypix if ypix and ypix > 0 else xpix))
        binning, _ = _header_float(header, "XBINNING")
        comment = ""
        try:
            comment = str(header.comments[xkey]).lower()
        except Exception:  # plain dicts have no comments
            comment = ""
        rule_bin = ""
        if binning and binning > 1 and "unbinned" in comment:
            pix *= binning
            rule_bin = f" x XBINNING={binning:g} (pixel size is unbinned)"
        scale = ARCSEC_PER_RADIAN_OVER_1000 * pix / focal
        return scale, f"206.265 x {xkey}={xpix:g} um{rule_bin} / {fkey}={focal:g} mm"
    if wcs is not None:
        try:
            from astropy.wcs.utils import proj_plane_pixel_scales

            if wcs.has_celestial:
                scales = proj_plane_pixel_scales(wcs.celestial) * 3600.0
                if np.all(np.isfinite(scales)) and np.all(scales > 0):
                    return float(np.sqrt(scales[0] * scales[1])), "WCS pixel scale"
        except Exception:
            pass
    value, key = _header_float(header, "PIXSCALE", "PIXSCAL1", "SECPIX", "SCALE")
    if value and value > 0:
        return value, f"header {key}"
    return None, "unknown"


def _celestial_wcs(header: Any) -> Any:
    from astropy.wcs import WCS, FITSFixedWarning

    if not any(k in header for k in ("CTYPE1", "CD1_1", "PC1_1")):
        return None
    ctype = str(header.get("CTYPE1", "")).strip()
    if not ctype:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            wcs = WCS(header, naxis=2)
        except Exception:
            return None
    return wcs if wcs.has_celestial else None


def _electrons_per_adu(header: Any) -> float | None:
    """Gain in e-/ADU: EGAIN or CVF first (always e-/ADU); GAIN unless it is a CMOS gain *setting*.

    Capture programs for CMOS cameras (N.I.N.A., SharpCap, Siril's QHY files) write the
    camera's gain setting as GAIN (e.g. ``GAIN = 56 / Sensor gain`` with an OFFSET keyword
    beside it).  GAIN is taken as e-/ADU unless its comment calls it a sensor gain or
    setting without naming electrons, or it is a whole number above 10 with an OFFSET
    keyword present; then the gain is unknown and fits are unweighted.
    """
    value, _ = _header_float(header, "EGAIN", "CVF")
    if value is not None:
        return value
    value, _ = _header_float(header, "GAIN")
    if value is None:
        return None
    try:
        comment = str(header.comments["GAIN"]).lower()
    except Exception:
        comment = ""
    names_electrons = "e-" in comment or "electron" in comment or "e/adu" in comment
    setting = ("sensor" in comment or "setting" in comment) and not names_electrons
    cmos_setting = float(value).is_integer() and value > 10 and "OFFSET" in header and not names_electrons
    if setting or cmos_setting:
        return None
    return value


def _metadata_from_header(header: Any, data: np.ndarray, raw_dtype: Any) -> dict:
    wcs = _celestial_wcs(header)
    scale, rule = image_scale_from_header(header, wcs)
    gain = _electrons_per_adu(header)
    rdnoise, _ = _header_float(header, "RDNOISE", "READNOIS", "RON")
    saturation, _ = _header_float(header, "SATURATE", "DATAMAX")
    if saturation is None and raw_dtype is not None and np.issubdtype(raw_dtype, np.integer):
        saturation = float(np.iinfo(raw_dtype).max)
        # cameras and software often clip below the type's maximum (Siril writes 65534): a plateau of
        # several pixels sharing the frame's maximum is the real saturation level
        finite = data[np.isfinite(data)]
        top = float(finite.max()) if finite.size else saturation
        if top < saturation and np.count_nonzero(finite == top) >= 3:
            saturation = top
    exptime, _ = _header_float(header, "EXPTIME", "EXPOSURE")
    date = header.get("DATE-OBS")
    return dict(
        pixel_scale=scale,
        scale_rule=rule,
        gain=gain if gain and gain > 0 else None,
        read_noise=rdnoise if rdnoise is not None and rdnoise >= 0 else None,
        saturation=saturation,
        exptime=exptime,
        date_obs=str(date) if date is not None else None,
        wcs=wcs,
    )


def _fits_raw_dtype(hdu: Any) -> Any:
    """The dtype the detector wrote: uint16 for BITPIX=16 with BZERO=32768, etc."""
    header = hdu.header
    bitpix = header.get("ZBITPIX", header.get("BITPIX"))
    bzero = header.get("BZERO", 0)
    bscale = header.get("BSCALE", 1)
    if bitpix == 8:
        return np.dtype(np.uint8)
    if bitpix == 16:
        return np.dtype(np.uint16) if (bzero == 32768 and bscale == 1) else np.dtype(np.int16)
    if bitpix == 32:
        return np.dtype(np.uint32) if (bzero == 2147483648 and bscale == 1) else np.dtype(np.int32)
    return None


def _load_fits(path: Path, hdu_index: int | None) -> Image:
    from astropy.io import fits

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hdul = fits.open(path, memmap=False)
            hdul.verify("silentfix")
    except Exception as exc:  # astropy raises many kinds for a broken file
        raise PsfkitError(f"{path}: not a readable FITS file ({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'})") from None
    with hdul:
        chosen = None
        if hdu_index is not None:
            if not 0 <= hdu_index < len(hdul):
                raise PsfkitError(f"{path}: HDU {hdu_index} does not exist (the file has {len(hdul)})")
            chosen = hdul[hdu_index]
        else:
            for candidate in hdul:
                if getattr(candidate, "is_image", False) and candidate.header.get("NAXIS", 0) >= 2:
                    chosen = candidate
                    break
        if chosen is None or not getattr(chosen, "is_image", False):
            raise PsfkitError(f"{path}: no HDU holds an image")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                raw = chosen.data
        except Exception as exc:
            raise PsfkitError(f"{path}: the image data cannot be read ({exc.__class__.__name__})") from None
        if raw is None:
            raise PsfkitError(f"{path}: the HDU holds no data")
        raw_dtype = _fits_raw_dtype(chosen)
        data = np.asarray(raw)
        if data.ndim == 3 and data.shape[0] == 1:
            data = data[0]
        if data.ndim != 2:
            raise PsfkitError(f"{path}: the image is {data.ndim}-D with shape {data.shape}; a 2-D image is needed")
        data = data.astype(np.float64 if data.dtype == np.float64 else np.float32, copy=True)
        blank = chosen.header.get("BLANK")
        header = chosen.header
        meta = _metadata_from_header(header, data, raw_dtype)
        cards = {k: header[k] for k in header if k not in ("COMMENT", "HISTORY", "")}
        if str(header.get("ROWORDER", "")).strip().upper() == "TOP-DOWN":
            meta_roworder = "TOP-DOWN"
        else:
            meta_roworder = "BOTTOM-UP"
    _check_pixels(path, data)
    return Image(
        data=data,
        path=str(path),
        header=cards,
        meta={"format": "FITS", "hdu": hdu_index, "roworder": meta_roworder, "blank": blank},
        **meta,
    )


def _check_pixels(path: Any, data: np.ndarray) -> None:
    if data.size == 0:
        raise PsfkitError(f"{path}: the image has no pixels")
    finite = np.isfinite(data)
    if not finite.any():
        raise PsfkitError(f"{path}: every pixel is NaN or infinite")
    values = data[finite]
    if values.min() == values.max():
        raise PsfkitError(f"{path}: the image is constant ({values.min():g}); there is nothing to measure")


FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz", ".fits.fz", ".fit.fz", ".fz")


def load_image(path: str | os.PathLike, *, hdu: int | None = None, channel: str | int | None = None) -> Image:
    """Read an image file into an :class:`Image`.

    Parameters
    ----------
    path : str or path-like
        The file: FITS (``.fits``, ``.fit``, ``.fts``, gzip, tile-compressed), TIFF (8/16/32-bit
        integer and float), PNG, JPEG, XISF.
    hdu : int, optional
        The FITS HDU to read; by default the first HDU holding a 2-D image.
    channel : {"R", "G", "B", "luminance"}, optional
        For colour TIFF/PNG/JPEG/XISF images: one channel, or the BT.709 luminance (default).
        TIFF, PNG and JPEG rows are stored top-down: row 0 is the top row as viewers show it.

    Returns
    -------
    Image

    Raises
    ------
    PsfkitError
        For a missing, unreadable or unsuitable file, with a one-line message.
    """
    p = Path(path)
    if not p.exists():
        raise PsfkitError(f"{p}: no such file")
    if p.is_dir():
        raise PsfkitError(f"{p}: is a directory, not an image file")
    suffix = p.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return _load_tiff(p, channel)
    if suffix in (".png", ".jpg", ".jpeg"):
        return _load_pil(p, channel)
    if suffix == ".xisf":
        return _load_xisf(p, channel)
    return _load_fits(p, hdu)


def _to_plane(path: Path, arr: np.ndarray, channel: str | int | None, fmt: str) -> tuple[np.ndarray, dict]:
    """A 2-D plane from a grey or colour array (H, W, C) or (C, H, W): one channel or the luminance."""
    a = np.asarray(arr)
    if a.ndim == 2:
        return a, {"format": fmt}
    if a.ndim == 3:
        if a.shape[-1] in (1, 3, 4) and a.shape[0] not in (1, 3, 4):
            a = np.moveaxis(a, -1, 0)
        if a.shape[0] == 1:
            return a[0], {"format": fmt}
        if a.shape[0] in (3, 4):
            rgb = a[:3].astype(np.float64)
            names = {"r": 0, "red": 0, "g": 1, "green": 1, "b": 2, "blue": 2, 0: 0, 1: 1, 2: 2}
            if channel is None or str(channel).lower() in ("l", "lum", "luminance"):
                # ITU-R BT.709 luminance
                return 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2], {"format": fmt, "channel": "luminance"}
            key = channel if isinstance(channel, int) else str(channel).lower()
            if key not in names:
                raise PsfkitError(f"{path}: unknown channel {channel!r}; use R, G, B or luminance")
            return a[names[key]], {"format": fmt, "channel": "RGB"[names[key]]}
    raise PsfkitError(f"{path}: the image has shape {a.shape}; a 2-D grey or 3-channel colour image is needed")


def _finish_plain(path: Path, arr: np.ndarray, meta: dict, **extra: Any) -> Image:
    raw_dtype = arr.dtype
    if not (np.issubdtype(raw_dtype, np.integer) or np.issubdtype(raw_dtype, np.floating)):
        raise PsfkitError(f"{path}: unsupported pixel type {raw_dtype}")
    data = np.asarray(arr, dtype=np.float32 if raw_dtype.itemsize <= 4 else np.float64)
    _check_pixels(path, data)
    saturation = float(np.iinfo(raw_dtype).max) if np.issubdtype(raw_dtype, np.integer) else None
    if saturation is not None:
        top = float(np.nanmax(data))
        if top < saturation and np.count_nonzero(data == top) >= 3:
            saturation = top
    meta.setdefault("roworder", "TOP-DOWN")
    return Image(data=data, path=str(path), saturation=saturation, meta=meta, **extra)


def _load_tiff(path: Path, channel: str | int | None) -> Image:
    try:
        import tifffile

        arr = tifffile.imread(path)
    except ImportError:
        raise PsfkitError(f"{path}: reading TIFF needs the 'tifffile' package (pip install 'psfkit[formats]')") from None
    except Exception as exc:
        raise PsfkitError(f"{path}: not a readable TIFF file ({exc.__class__.__name__})") from None
    plane, meta = _to_plane(path, arr, channel, "TIFF")
    return _finish_plain(path, plane, meta)


def _load_pil(path: Path, channel: str | int | None) -> Image:
    try:
        from PIL import Image as PILImage

        with PILImage.open(path) as im:
            im.load()
            arr = np.asarray(im)
    except ImportError:
        raise PsfkitError(f"{path}: reading PNG/JPEG needs the 'pillow' package (pip install 'psfkit[formats]')") from None
    except Exception as exc:
        raise PsfkitError(f"{path}: not a readable PNG/JPEG file ({exc.__class__.__name__})") from None
    plane, meta = _to_plane(path, arr, channel, path.suffix.lstrip(".").upper())
    return _finish_plain(path, plane, meta)


def _load_xisf(path: Path, channel: str | int | None) -> Image:
    try:
        from xisf import XISF

        xf = XISF(str(path))
        arr = xf.read_image(0)
        kw = xf.get_images_metadata()[0].get("FITSKeywords", {})
    except ImportError:
        raise PsfkitError(f"{path}: reading XISF needs the 'xisf' package (pip install 'psfkit[formats]')") from None
    except Exception as exc:
        raise PsfkitError(f"{path}: not a readable XISF file ({exc.__class__.__name__})") from None
    header = {k: (v[0]["value"] if isinstance(v, list) and v else v) for k, v in kw.items()}
    plane, meta = _to_plane(path, arr, channel, "XISF")
    scale, rule = image_scale_from_header(header)
    gain = _electrons_per_adu(header)
    rdn, _ = _header_float(header, "RDNOISE")
    return _finish_plain(path, plane, meta, pixel_scale=scale, scale_rule=rule, gain=gain, read_noise=rdn,
                         header=header)


def as_image(image: Any) -> Image:
    """Accept an :class:`Image`, a path or a 2-D array-like and return an :class:`Image`."""
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
