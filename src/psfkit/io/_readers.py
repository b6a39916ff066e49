"""One reader per file format, each returning a :class:`Frame` (pixels + header + how they were stored).

The readers only read: they turn every supported file into float pixels
(``(ny, nx)``, or ``(planes, ny, nx)`` for colour and stacks) and a header
mapping.  What the header means (scale, gain, saturation ...) is decided once,
in :mod:`psfkit.io.image`.  Any failure of a format library on a broken file
becomes a one-line :class:`~psfkit.errors.PsfkitError` naming the file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from psfkit.errors import PsfkitError
from psfkit.io.formats import FITS_SUFFIXES, RAW_SUFFIXES
from psfkit.io.limits import check_pixel_count

__all__ = ["Frame", "read_frame", "detect_format", "RAW_SUFFIXES"]



@dataclass
class Frame:
    """What a reader found: float pixels, the header, and how the file stored them."""

    data: np.ndarray
    header: Any
    format: str
    layout: str = "grey"  # grey | rgb | stack | bayer
    type_max: float | None = None  # the stored integer type's maximum, in data units
    saturation: float | None = None  # a level the format itself knows (RAW white level)
    bayer_pattern: str | None = None
    meta: dict = field(default_factory=dict)
    row_max: np.ndarray | None = None  # per-row maxima of a 2-D integer image, when cheap to get from the stored ints


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    detail = text[0] if text and text[0] else "no detail"
    if len(detail) > 120:
        detail = detail[:117] + "..."
    return f"{exc.__class__.__name__}: {detail}"


def detect_format(path: Path) -> str:
    """'fits', 'xisf', 'tiff', 'png', 'jpeg' or 'raw', from the file's first bytes and its name."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise PsfkitError(f"{path}: cannot be read ({exc.strerror or exc.__class__.__name__})") from None
    if not head:
        raise PsfkitError(f"{path}: the file is empty")
    name = path.name.lower()
    suffix = path.suffix.lower()
    if head.startswith(b"SIMPLE  ="):
        return "fits"
    if head.startswith(b"\x1f\x8b"):
        if name.endswith(tuple(s for s in FITS_SUFFIXES if s.endswith(".gz"))):
            return "fits"
        raise PsfkitError(f"{path}: a gzip file that is not a gzipped FITS (.fits.gz, .fit.gz, .fts.gz)")
    if head.startswith(b"XISF0100"):
        return "xisf"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        # CR2, NEF, ARW, DNG ... are TIFF containers too: the name decides
        return "raw" if suffix in RAW_SUFFIXES else "tiff"
    if suffix in RAW_SUFFIXES:
        return "raw"  # CR3, RAF, ORF ... have their own containers; LibRaw decides
    known = {".fits": "FITS", ".fit": "FITS", ".fts": "FITS", ".fz": "FITS", ".gz": "gzipped FITS",
             ".xisf": "XISF", ".tif": "TIFF", ".tiff": "TIFF", ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
    if suffix in known:
        raise PsfkitError(f"{path}: not a {known[suffix]} file (its first bytes are not a {known[suffix]} signature)")
    raise PsfkitError(
        f"{path}: unsupported file type; psfkit reads FITS, XISF, TIFF, PNG, JPEG and camera RAW files"
    )


def _shape_to_layout(path: Path, data: np.ndarray, *, channels_last: bool) -> tuple[np.ndarray, str]:
    """Bring pixels to (ny, nx) or (planes, ny, nx) and name the layout."""
    while data.ndim > 2 and data.shape[0] == 1:
        data = data[0]
    if channels_last and data.ndim == 3:
        if data.shape[-1] == 1:
            data = data[..., 0]
        else:
            if data.shape[-1] in (2, 4):  # grey+alpha, RGBA: drop the alpha plane
                data = data[..., :-1]
            data = np.moveaxis(data, -1, 0)
            if data.shape[0] == 1:
                data = data[0]
    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim < 2:
        raise PsfkitError(f"{path}: the data are {data.ndim}-D with shape {data.shape}; an image needs 2 dimensions")
    if data.ndim > 3:
        raise PsfkitError(f"{path}: the data are {data.ndim}-D with shape {data.shape}; "
                          "psfkit reads 2-D images, colour cubes and stacks")
    if data.size == 0:
        raise PsfkitError(f"{path}: the image has no pixels (shape {data.shape})")
    if data.ndim == 2:
        return data, "grey"
    return data, ("rgb" if data.shape[0] == 3 else "stack")


def _integer_row_max(raw: np.ndarray) -> np.ndarray | None:
    """Row maxima of a native-endian 2-D integer array (twice as fast as on the float copy), else None."""
    if raw.ndim == 2 and raw.dtype.kind in "iu" and raw.dtype.isnative and raw.size:
        return raw.max(axis=1).astype(np.float64)
    return None


def _to_float(path: Path, raw: np.ndarray) -> tuple[np.ndarray, float | None]:
    """Native-endian float pixels (float32 up to 16-bit integers, float64 above) and the type's maximum."""
    kind = raw.dtype.kind
    if kind == "b" or kind not in "uif":
        raise PsfkitError(f"{path}: unsupported pixel type {raw.dtype} "
                          "(psfkit reads 8/16/32-bit integer and float images)")
    if kind == "f":
        if raw.dtype.itemsize < 4:
            return raw.astype(np.float32), None
        target = np.float64 if raw.dtype.itemsize > 4 else np.float32
        return raw.astype(target, copy=not raw.dtype.isnative or raw.dtype != target), None
    target = np.float32 if raw.dtype.itemsize <= 2 else np.float64
    return raw.astype(target), float(np.iinfo(raw.dtype).max)


# ---------------------------------------------------------------- FITS


def _fits_image_hdu(path: Path, hdul: Any, hdu: int | str | None) -> tuple[Any, int | str]:
    if hdu is not None:
        try:
            chosen = hdul[hdu]
        except (IndexError, KeyError, TypeError):
            raise PsfkitError(f"{path}: HDU {hdu!r} does not exist (the file has {len(hdul)} HDUs)") from None
        if not getattr(chosen, "is_image", False):
            raise PsfkitError(f"{path}: HDU {hdu!r} is a {chosen.__class__.__name__}, not an image")
        if not chosen.header.get("ZNAXIS", chosen.header.get("NAXIS", 0)):
            raise PsfkitError(f"{path}: HDU {hdu!r} holds no data (NAXIS = 0)")
        return chosen, hdu
    for index, candidate in enumerate(hdul):
        naxis = candidate.header.get("ZNAXIS", candidate.header.get("NAXIS", 0))
        if getattr(candidate, "is_image", False) and naxis >= 1:
            return candidate, index
    raise PsfkitError(f"{path}: no HDU holds an image")


def _read_fits(path: Path, hdu: int | str | None, max_pixels: int | None = None) -> Frame:

    compressed_file = path.name.lower().endswith(".gz")
    try:
        fh = open(path, "rb")  # opened here so that it is closed here, whatever astropy raises
    except OSError as exc:
        raise PsfkitError(f"{path}: cannot be read ({exc.strerror or exc.__class__.__name__})") from None
    with fh:
        return _read_fits_open(path, fh, hdu, compressed_file, max_pixels)


def _usable_header(header: Any) -> Any:
    """The header without cards whose value cannot be parsed (a corrupted card would raise later)."""
    bad = []
    for i, card in enumerate(header.cards):
        try:
            card.value  # noqa: B018 - parsing is what is tested
            card.comment  # noqa: B018
        except Exception:
            bad.append(i)
    if not bad:
        return header
    header = header.copy()
    for i in reversed(bad):
        try:
            del header[i]
        except Exception:
            pass
    return header


def _read_fits_open(path: Path, fh: Any, hdu: int | str | None, compressed_file: bool,
                    max_pixels: int | None = None) -> Frame:
    from astropy.io import fits

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hdul = fits.open(fh, memmap=not compressed_file, do_not_scale_image_data=True)
    except PsfkitError:
        raise
    except Exception as exc:  # astropy raises many kinds for a broken file
        raise PsfkitError(f"{path}: not a readable FITS file ({_short(exc)})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            chosen, index = _fits_image_hdu(path, hdul, hdu)
            header = _usable_header(chosen.header)
            is_tile = isinstance(chosen, fits.CompImageHDU)
            prefix = "ZNAXIS" if is_tile else "NAXIS"
            try:
                dims = tuple(int(header.get(f"{prefix}{axis}", 0)) for axis in range(1, int(header.get(prefix, 0)) + 1))
            except (TypeError, ValueError):
                raise PsfkitError(f"{path}: the header's {prefix}n keywords are not integers") from None
            check_pixel_count(path, dims[::-1], max_pixels)  # before .data: nothing decoded yet
            if not is_tile and not compressed_file:
                info = chosen.fileinfo() or {}
                bitpix = abs(int(header.get("BITPIX", 8)))
                n = 1
                for axis in range(1, int(header.get("NAXIS", 0)) + 1):
                    n *= int(header.get(f"NAXIS{axis}", 0))
                need = info.get("datLoc", 0) + n * bitpix // 8
                if need > path.stat().st_size:
                    raise PsfkitError(f"{path}: the file is truncated ({path.stat().st_size} bytes, "
                                      f"the header needs {need})")
            if is_tile:
                size = abs(int(header.get("ZBITPIX", 8))) // 8
                for axis in range(1, int(header.get("ZNAXIS", 0)) + 1):
                    size *= int(header.get(f"ZNAXIS{axis}", 0))
                if size > 2**31 and size > 1000 * path.stat().st_size:
                    raise PsfkitError(f"{path}: implausible image size in the compressed HDU ({size} bytes from a "
                                      f"{path.stat().st_size}-byte file); the header is corrupted")
            raw = chosen.data
            if raw is None:
                raise PsfkitError(f"{path}: HDU {index!r} holds no data")
            raw = np.asarray(raw)
            bscale = float(header.get("BSCALE", 1.0))
            bzero = float(header.get("BZERO", 0.0))
            blank = header.get("BLANK")
            if raw.dtype.kind == "f" and raw.dtype.itemsize < 4:
                raise PsfkitError(f"{path}: unsupported pixel type {raw.dtype}")
            if raw.dtype.kind in "iu" and (bscale != 1.0 or bzero != 0.0):
                # one pass: convert and scale together (BZERO = 32768 on every uint16 camera frame)
                if raw.dtype.kind == "b" or raw.dtype.itemsize > 8:
                    raise PsfkitError(f"{path}: unsupported pixel type {raw.dtype}")
                target = np.float32 if raw.dtype.itemsize <= 2 else np.float64
                data = np.empty(raw.shape, dtype=target)
                if bscale != 1.0:
                    np.multiply(raw, target(bscale), out=data)
                    data += target(bzero)
                else:
                    np.add(raw, target(bzero), out=data)
                type_max = float(np.iinfo(raw.dtype).max)
                scaled = True
            else:
                data, type_max = _to_float(path, raw)
                scaled = False
            bitpix = header.get("ZBITPIX", header.get("BITPIX"))
            stored_type = f"{raw.dtype.name} (BITPIX={bitpix})"
            if raw.dtype.kind in "iu" and bscale == 1.0 and bzero == 2.0 ** (8 * raw.dtype.itemsize - 1):
                stored_type = f"uint{8 * raw.dtype.itemsize} (BITPIX={bitpix}, BZERO={bzero:g})"
            elif raw.dtype.kind in "iu" and (bscale != 1.0 or bzero != 0.0):
                stored_type += f" scaled by BSCALE={bscale:g}, BZERO={bzero:g}"
            if raw.dtype.kind in "iu":
                if blank is not None:
                    holes = raw == int(blank)
                else:
                    holes = None
                if bscale != 1.0 and not scaled:
                    data *= data.dtype.type(bscale)
                if bzero != 0.0 and not scaled:
                    data += data.dtype.type(bzero)
                if holes is not None and holes.any():
                    data[holes] = np.nan
                if type_max is not None:
                    type_max = type_max * bscale + bzero
                    if bzero == 2.0 ** (8 * raw.dtype.itemsize - 1) and bscale == 1.0:
                        type_max = float(2 ** (8 * raw.dtype.itemsize) - 1)  # unsigned in signed clothing
            elif bscale != 1.0 or bzero != 0.0:
                data = data * data.dtype.type(bscale) + data.dtype.type(bzero)
            del raw
            cards = header.copy()
    except PsfkitError:
        hdul.close()
        raise
    except Exception as exc:
        hdul.close()
        raise PsfkitError(f"{path}: the image data cannot be read ({_short(exc)})") from None
    hdul.close()
    data, layout = _shape_to_layout(path, data, channels_last=False)
    return Frame(data=data, header=cards, format="FITS", layout=layout, type_max=type_max,
                 meta={"hdu": index, "stored_type": stored_type,
                       "compressed": "tile" if is_tile else ("gzip" if compressed_file else None),
                       "blank": blank})


# ---------------------------------------------------------------- XISF


# XISF property -> FITS keyword (and the factor to FITS units; None: a string)
_XISF_PROPERTIES = {
    "Instrument:Telescope:FocalLength": ("FOCALLEN", 1000.0),  # metres -> mm
    "Instrument:Sensor:XPixelSize": ("XPIXSZ", 1.0),
    "Instrument:Sensor:YPixelSize": ("YPIXSZ", 1.0),
    "Instrument:Camera:XBinning": ("XBINNING", 1.0),
    "Instrument:Camera:YBinning": ("YBINNING", 1.0),
    "Instrument:Camera:Gain": ("EGAIN", 1.0),  # e-/ADU in the XISF specification
    "Instrument:ExposureTime": ("EXPTIME", 1.0),
    "Observation:Time:Start": ("DATE-OBS", None),
}


def _zlib_size_at_most(data: bytes, limit: int) -> bool:
    """Whether a zlib stream inflates to at most ``limit`` bytes (inflated in bounded pieces, kept nowhere)."""
    import zlib

    inflater = zlib.decompressobj()
    total = 0
    chunk = data
    while True:
        out = inflater.decompress(chunk, 1 << 22)
        total += len(out)
        if total > limit:
            return False
        chunk = inflater.unconsumed_tail
        if not chunk:
            return total + len(inflater.flush()) <= limit


def _check_xisf_header(path: Path, max_pixels: int | None) -> None:
    """Declared sizes of an XISF file checked before the xisf library decodes anything.

    The library inflates every compressed property when it opens the file and trusts the
    declared uncompressed size only for some codecs; so here: the image geometry against the
    pixel limit, every compressed block's declared size against the limit in bytes, and the
    real inflated size of zlib blocks (and zstd frames' stated size) against the declared one.
    """
    import re
    import xml.etree.ElementTree as ET

    from psfkit.io.limits import max_pixels as resolve_limit

    limit = resolve_limit(max_pixels)
    try:
        with open(path, "rb") as fh:
            fh.seek(8)
            length = int.from_bytes(fh.read(4), "little")
            fh.seek(16)
            header = fh.read(length).rstrip(b"\0")
        root = ET.fromstring(header)
    except (OSError, ET.ParseError, ValueError) as exc:
        raise PsfkitError(f"{path}: not a readable XISF file ({_short(exc)})") from None
    size = path.stat().st_size
    for elem in root.iter():
        tag = elem.tag.rsplit("}", 1)[-1]
        if tag == "Image" and "geometry" in elem.attrib:
            try:
                dims = tuple(int(v) for v in elem.attrib["geometry"].split(":"))
            except ValueError:
                geometry = elem.attrib["geometry"]
                raise PsfkitError(f"{path}: the XISF image geometry {geometry!r} is not numbers") from None
            check_pixel_count(path, dims, limit, what="the XISF header declares")
        compression = elem.attrib.get("compression")
        if not compression:
            continue
        parts = compression.split(":")
        try:
            declared = int(parts[1])
        except (IndexError, ValueError):
            raise PsfkitError(f"{path}: a malformed XISF compression attribute {compression!r}") from None
        if declared < 0 or declared > 8 * limit:
            raise PsfkitError(f"{path}: a compressed XISF {tag.lower()} declares {declared} bytes, above the limit "
                              f"of {8 * limit} (8 bytes x the pixel limit; raise it with --max-pixels)")
        codec = parts[0].lower()
        if not codec.startswith(("zlib", "zstd")):
            continue
        location = re.match(r"attachment:(\d+):(\d+)$", elem.attrib.get("location", ""))
        if location is None:
            continue  # inline or embedded blocks are part of the header, bounded by the file
        pos, length = int(location.group(1)), int(location.group(2))
        if pos + length > size:
            raise PsfkitError(f"{path}: the file is truncated (a data block ends at byte {pos + length} of {size})")
        with open(path, "rb") as fh:
            fh.seek(pos)
            data = fh.read(length)
        if codec.startswith("zlib"):
            ok = _zlib_size_at_most(data, declared)
        else:
            try:
                import zstandard

                stated = zstandard.frame_content_size(data)
            except Exception:
                stated = -1
            ok = stated <= declared
        if not ok:
            raise PsfkitError(f"{path}: a compressed XISF {tag.lower()} inflates beyond its declared {declared} bytes; "
                              "the file is corrupted or hostile")


def _read_xisf(path: Path, max_pixels: int | None = None) -> Frame:
    try:
        from xisf import XISF
    except ImportError:  # pragma: no cover - the formats extra is installed in CI
        raise PsfkitError(f"{path}: reading XISF needs the 'xisf' package (pip install psfkit[formats])") from None
    _check_xisf_header(path, max_pixels)  # the library decodes properties when it opens the file
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # it prints to stdout
            warnings.simplefilter("ignore")
            reader = XISF(str(path))
            metas = reader.get_images_metadata()
            if not metas:
                raise PsfkitError(f"{path}: the XISF file holds no image")
            raw = reader.read_image(0)
            image_meta = metas[0]
    except PsfkitError:
        raise
    except Exception as exc:
        raise PsfkitError(f"{path}: not a readable XISF file ({_short(exc)})") from None
    header: dict = {}
    for key, values in (image_meta.get("FITSKeywords") or {}).items():
        if values:
            header[key] = values[0].get("value")
    # XISF properties (PixInsight's own names) fill in what the FITS keywords do not say
    for name, (key, factor) in _XISF_PROPERTIES.items():
        prop = (image_meta.get("XISFProperties") or {}).get(name)
        if key in header or not isinstance(prop, dict) or prop.get("value") is None:
            continue
        value = prop["value"]
        try:
            header[key] = float(value) * factor if factor is not None else str(value)
        except (TypeError, ValueError):
            continue
    raw = np.asarray(raw)
    if raw.dtype.kind == "f" and raw.dtype.itemsize < 4:
        raw = raw.astype(np.float32)
    stored_type = raw.dtype.name
    data, type_max = _to_float(path, raw)
    data, layout = _shape_to_layout(path, data, channels_last=True)
    colour_space = str(image_meta.get("colorSpace", "")).lower()
    if layout == "stack" and colour_space == "rgb":
        layout = "rgb"
    return Frame(data=data, header=header, format="XISF", layout=layout, type_max=type_max,
                 meta={"roworder": "TOP-DOWN", "stored_type": stored_type})


# ---------------------------------------------------------------- TIFF


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """Silence a library's log messages about a broken file (the error we raise says it in one line)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def _read_tiff(path: Path, max_pixels: int | None = None) -> Frame:
    try:
        import tifffile
    except ImportError:  # pragma: no cover
        raise PsfkitError(f"{path}: reading TIFF needs the 'tifffile' package (pip install psfkit[formats])") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with _quiet_logger("tifffile"), tifffile.TiffFile(path) as tif:
                if not tif.pages:
                    raise PsfkitError(f"{path}: the TIFF file holds no image")
                page = tif.pages[0]
                photometric = str(getattr(page, "photometric", "")).upper()
                axes = str(getattr(page, "axes", ""))
                check_pixel_count(path, tuple(page.shape), max_pixels)
                raw = page.asarray()
    except PsfkitError:
        raise
    except Exception as exc:
        raise PsfkitError(f"{path}: not a readable TIFF file ({_short(exc)})") from None
    raw = np.asarray(raw)
    stored_type = raw.dtype.name
    row_max = _integer_row_max(raw)
    data, type_max = _to_float(path, raw)
    # contiguous samples come last ("YXS"); planar ones (PlanarConfiguration 2) first ("SYX")
    data, layout = _shape_to_layout(path, data, channels_last=not axes.startswith("S"))
    if layout == "stack" and "RGB" in photometric:
        layout = "rgb"
    return Frame(data=data, header={}, format="TIFF", layout=layout, type_max=type_max,
                 meta={"roworder": "TOP-DOWN", "stored_type": stored_type},
                 row_max=row_max if data.shape == raw.shape else None)


# ---------------------------------------------------------------- PNG, JPEG

_EXIF_KEYS = {33434: "EXPTIME", 37386: "FOCALLEN", 36867: "DATE-OBS", 34855: "ISOSPEED"}


def _read_png_16bit_colour(path: Path, max_pixels: int | None = None) -> Frame | None:
    """A 16-bit colour PNG (IHDR bit depth 16, colour type 2, 4 or 6), which Pillow would cut to 8 bits.

    Decoded by imagecodecs (libpng); None when the file is not such a PNG.
    """
    with open(path, "rb") as fh:
        head = fh.read(26)
    if len(head) < 26 or head[12:16] != b"IHDR" or head[24] != 16 or head[25] not in (2, 4, 6):
        return None
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    check_pixel_count(path, (height, width, {2: 3, 4: 2, 6: 4}[head[25]]), max_pixels)
    try:
        import imagecodecs
    except ImportError:  # pragma: no cover - in the formats extra
        raise PsfkitError(f"{path}: a 16-bit colour PNG; Pillow reads only 8 bits of it, and the 'imagecodecs' "
                          "package that reads all 16 is missing (pip install psfkit[formats])") from None
    try:
        raw = np.asarray(imagecodecs.png_decode(path.read_bytes()))
    except Exception as exc:
        raise PsfkitError(f"{path}: not a readable PNG file ({_short(exc)})") from None
    data, type_max = _to_float(path, raw)
    data, layout = _shape_to_layout(path, data, channels_last=True)
    if layout == "stack":
        layout = "rgb"
    return Frame(data=data, header={}, format="PNG", layout=layout, type_max=type_max,
                 meta={"roworder": "TOP-DOWN", "stored_type": f"{raw.dtype.name} (16-bit colour PNG)"})


def _read_pillow(path: Path, kind: str, max_pixels: int | None = None) -> Frame:
    if kind == "PNG":
        frame = _read_png_16bit_colour(path, max_pixels)
        if frame is not None:
            return frame
    try:
        from PIL import Image as PILImage
    except ImportError:  # pragma: no cover
        raise PsfkitError(f"{path}: reading {kind} needs the 'pillow' package (pip install psfkit[formats])") from None
    header: dict = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with PILImage.open(path) as img:
                width, height = img.size
                check_pixel_count(path, (height, width, len(img.getbands())), max_pixels)  # before decoding
                img.load()
                mode = img.mode
                if mode == "P":
                    img = img.convert("RGBA" if "transparency" in img.info else "RGB")
                elif mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
                    raise PsfkitError(f"{path}: unsupported {kind} mode {mode!r} "
                                      "(psfkit reads grey and RGB, 8 or 16 bit)")
                raw = np.asarray(img)
                try:
                    exif = img.getexif().get_ifd(0x8769)
                    for tag, key in _EXIF_KEYS.items():
                        if tag in exif:
                            value = exif[tag]
                            if key == "DATE-OBS":
                                header[key] = str(value).replace(":", "-", 2).replace(" ", "T")
                            else:
                                header[key] = float(value)
                except Exception:
                    pass
    except PsfkitError:
        raise
    except Exception as exc:
        raise PsfkitError(f"{path}: not a readable {kind} file ({_short(exc)})") from None
    if mode.startswith("I;16"):
        raw = raw.astype(np.uint16)
    data, type_max = _to_float(path, raw)
    if mode.startswith("I;16"):
        type_max = 65535.0
    data, layout = _shape_to_layout(path, data, channels_last=True)
    if layout == "stack":
        layout = "rgb"
    return Frame(data=data, header=header, format=kind, layout=layout, type_max=type_max,
                 meta={"roworder": "TOP-DOWN", "mode": mode, "stored_type": f"{raw.dtype.name} (mode {mode})"})


# ---------------------------------------------------------------- camera RAW


@contextlib.contextmanager
def _c_stderr() -> Iterator[list]:
    """Capture what C code (LibRaw) writes to file descriptor 2; the lines are in the yielded list afterwards."""
    import sys
    import tempfile

    lines: list = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real stderr (some embedded interpreters)
        yield lines
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode("utf-8", "replace").splitlines())


_TIFF_EXIF = {"ExposureTime": "EXPTIME", "FocalLength": "FOCALLEN", "DateTimeOriginal": "DATE-OBS",
              "ISOSpeedRatings": "ISOSPEED", "Model": "INSTRUME"}


def _raw_exif(path: Path) -> dict:
    """Exposure, focal length, date, ISO and camera of a TIFF-based RAW file (CR2, NEF, ARW, DNG ...).

    LibRaw does not hand these to rawpy; the TIFF tags (IFD0 and the EXIF IFD) hold them.  Any
    failure means no metadata, never an error: the pixels are what matters.
    """
    out: dict = {}
    try:
        import tifffile

        with _quiet_logger("tifffile"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                tags = {tag.name: tag.value for tag in page.tags.values()}
                exif = tags.get("ExifTag") if isinstance(tags.get("ExifTag"), dict) else {}
        for name, key in _TIFF_EXIF.items():
            value = exif.get(name, tags.get(name))
            if value is None:
                continue
            if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
                value = value[0] / value[1] if value[1] else None  # RATIONAL
            elif isinstance(value, (tuple, list)):
                value = value[0] if value else None
            if value is None:
                continue
            if key == "DATE-OBS":
                value = str(value).strip().replace(":", "-", 2).replace(" ", "T")
            elif key == "INSTRUME":
                value = str(value).strip()
            else:
                value = float(value)
            out[key] = value
    except Exception:
        return {}
    return out


def _read_raw(path: Path, max_pixels: int | None = None) -> Frame:
    try:
        import rawpy
    except ImportError:  # pragma: no cover
        raise PsfkitError(f"{path}: reading camera RAW files needs the 'rawpy' package "
                          "(pip install psfkit[formats])") from None
    try:
        with _c_stderr() as messages, rawpy.imread(str(path)) as raw:
            check_pixel_count(path, (raw.sizes.raw_height, raw.sizes.raw_width), max_pixels)  # before unpacking
            mosaic = np.array(raw.raw_image_visible, copy=True)
            colours = np.array(raw.raw_colors_visible, copy=True)
            pattern_idx = np.array(raw.raw_pattern) if raw.raw_pattern is not None else None
            desc = raw.color_desc.decode("ascii", "replace")
            black = np.array(raw.black_level_per_channel, dtype=np.float64)
            white = float(raw.white_level)
    except Exception as exc:
        raise PsfkitError(f"{path}: not a readable camera RAW file or an unsupported model ({_short(exc)})") from None
    complaint = " ".join(line.replace(str(path) + ":", "").strip() for line in messages if line.strip())
    if complaint:  # LibRaw reads on past a truncated or corrupt file and only says so on stderr
        raise PsfkitError(f"{path}: a truncated or corrupted camera RAW file (LibRaw: {complaint[:120]})")
    if mosaic.ndim != 2 or pattern_idx is None or pattern_idx.shape != (2, 2):
        raise PsfkitError(f"{path}: unsupported RAW sensor layout "
                          "(psfkit reads 2x2 Bayer sensors, not X-Trans or linear DNG)")
    pattern = "".join(desc[i] for i in pattern_idx.ravel()).upper().replace("G", "G")
    if sorted(pattern) != ["B", "G", "G", "R"]:
        raise PsfkitError(f"{path}: unsupported colour filter array {pattern!r}")
    black_map = black[colours]
    data = mosaic.astype(np.float32) - black_map.astype(np.float32)
    saturation = white - float(black.max())
    header = {"BAYERPAT": pattern, **_raw_exif(path)}
    return Frame(data=data, header=header, format="RAW", layout="bayer", type_max=saturation,
                 saturation=saturation, bayer_pattern=pattern,
                 meta={"roworder": "TOP-DOWN", "black_level": black.tolist(), "white_level": white,
                       "stored_type": f"{mosaic.dtype.name} (camera RAW, {desc.strip()})"})


def read_frame(path: Path, *, hdu: int | str | None = None, max_pixels: int | None = None) -> Frame:
    """Read any supported file into a :class:`Frame`.

    ``max_pixels`` bounds the pixel values the file may declare (:func:`psfkit.io.limits.max_pixels`);
    each reader checks the declared size before decoding anything.
    """
    if not path.is_file():  # a named pipe or a device would block or never end
        raise PsfkitError(f"{path}: not a regular file (a pipe, socket or device); give an image file")
    kind = detect_format(path)
    if hdu is not None and kind != "fits":
        raise PsfkitError(f"{path}: hdu= applies to FITS files only")
    if kind == "fits":
        return _read_fits(path, hdu, max_pixels)
    if kind == "xisf":
        return _read_xisf(path, max_pixels)
    if kind == "tiff":
        return _read_tiff(path, max_pixels)
    if kind == "png":
        return _read_pillow(path, "PNG", max_pixels)
    if kind == "jpeg":
        return _read_pillow(path, "JPEG", max_pixels)
    return _read_raw(path, max_pixels)
