"""Small files that declare huge images are refused from their headers, in bounded memory
(issue 15, point 3); the work's memory follows the pixel count, not the shape."""

from __future__ import annotations

import gzip
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from psfkit.errors import PsfkitError
from psfkit.io.image import load_image
from psfkit.io.limits import ENV_MAX_PIXELS, default_max_pixels, max_pixels

SRC = Path(__file__).resolve().parents[1] / "src"
LIMIT = 100_000_000  # pixel values: every crafted file below declares more


# ---------------------------------------------------------------- crafted files


def _fits_header(nx: int, ny: int, bitpix: int = -64) -> bytes:
    header = fits.Header()
    header["SIMPLE"] = True
    header["BITPIX"] = bitpix
    header["NAXIS"] = 2
    header["NAXIS1"] = nx
    header["NAXIS2"] = ny
    return header.tostring().encode("ascii")


def fits_gz(path: Path) -> Path:
    """30000 x 30000 float64 declared; a gzip of the header and some zeros (a few kB)."""
    path.write_bytes(gzip.compress(_fits_header(30000, 30000) + b"\0" * 2880 * 100))
    return path


def fits_sparse(path: Path) -> Path:
    """30000 x 30000 float64 declared and present: a sparse 7.2 GB file that takes no disk."""
    with open(path, "wb") as fh:
        fh.write(_fits_header(30000, 30000))
        fh.truncate(2880 + 30000 * 30000 * 8)
    return path


def _png(width: int, height: int, depth: int, colour: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 200000))
            + chunk(b"IEND", b""))


def png_grey(path: Path) -> Path:
    path.write_bytes(_png(12000, 12000, 8, 0))  # below Pillow's own bomb limit, above LIMIT
    return path


def png_rgb16(path: Path) -> Path:
    path.write_bytes(_png(30000, 30000, 16, 2))  # decoded by imagecodecs, past Pillow's limit
    return path


def tiff_deflate(path: Path) -> Path:
    """A deflate TIFF of 16 x 16 whose ImageWidth and ImageLength say 30000."""
    import tifffile

    tifffile.imwrite(path, np.zeros((16, 16), np.uint16), compression="zlib")
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        spots = [(tags[name].valueoffset, tags[name].dtype) for name in ("ImageWidth", "ImageLength")]
        order = tif.byteorder
    raw = bytearray(path.read_bytes())
    for offset, dtype in spots:
        fmt = order + ("H" if int(dtype) == 3 else "I")
        struct.pack_into(fmt, raw, offset, 30000)
    path.write_bytes(bytes(raw))
    return path


def jpeg_large(path: Path) -> Path:
    """A small JPEG whose frame header says 11000 x 11000."""
    from PIL import Image as PILImage

    PILImage.fromarray(np.zeros((16, 16), np.uint8)).save(path, quality=90)
    raw = bytearray(path.read_bytes())
    sof = raw.index(b"\xff\xc0")
    struct.pack_into(">HH", raw, sof + 5, 11000, 11000)
    path.write_bytes(bytes(raw))
    return path


def _xisf(path: Path, image_attrs: str, properties: str, blocks: list[bytes]) -> Path:
    """A minimal XISF file: the header padded to 4096 bytes, then the blocks (``{POSn}``/``{SIZEn}`` filled in)."""
    start = 4096
    pos = []
    for block in blocks:
        pos.append(start)
        start += len(block)
    values = {f"POS{i}": p for i, p in enumerate(pos)} | {f"SIZE{i}": len(b) for i, b in enumerate(blocks)}
    xml = ('<?xml version="1.0" encoding="UTF-8"?><xisf version="1.0" xmlns="http://www.pixinsight.com/xisf">'
           f'<Image {image_attrs.format(**values)}>{properties.format(**values)}</Image><Metadata/></xisf>').encode()
    head = b"XISF0100" + struct.pack("<I", len(xml)) + b"\0" * 4 + xml
    path.write_bytes(head.ljust(start - sum(len(b) for b in blocks), b"\0") + b"".join(blocks))
    return path


def xisf_geometry(path: Path) -> Path:
    block = zlib.compress(b"\0" * 4000)
    return _xisf(path, 'geometry="30000:30000:1" sampleFormat="Float32" colorSpace="Gray" '
                 'location="attachment:{POS0}:{SIZE0}" compression="zlib:3600000000"', "", [block])


def xisf_image_bomb(path: Path) -> Path:
    """64 x 64 float32 declared (16384 bytes); the zlib block inflates to 100 MB."""
    block = zlib.compress(b"\0" * 100_000_000, 9)
    return _xisf(path, 'geometry="64:64:1" sampleFormat="Float32" colorSpace="Gray" '
                 'location="attachment:{POS0}:{SIZE0}" compression="zlib:16384"', "", [block])


def xisf_property_bomb(path: Path) -> Path:
    """A String property declaring 10 bytes whose zlib block inflates to 200 MB (the library ignores the size)."""
    image = np.zeros(64 * 64, np.float32).tobytes()
    bomb = zlib.compress(b"a" * 200_000_000, 9)
    return _xisf(path,
                 'geometry="64:64:1" sampleFormat="Float32" colorSpace="Gray" location="attachment:{POS0}:{SIZE0}"',
                 '<Property id="Bomb" type="String" location="attachment:{POS1}:{SIZE1}" compression="zlib:10"/>',
                 [image, bomb])


CRAFTED = {"bomb.fits.gz": fits_gz, "sparse.fits": fits_sparse, "grey.png": png_grey, "rgb16.png": png_rgb16,
           "deflate.tif": tiff_deflate, "large.jpg": jpeg_large, "geometry.xisf": xisf_geometry,
           "image-bomb.xisf": xisf_image_bomb, "property-bomb.xisf": xisf_property_bomb}


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_crafted_file_is_refused_in_one_line(tmp_path, monkeypatch, name):
    path = CRAFTED[name](tmp_path / name)
    assert path.stat().st_blocks * 512 < 3_000_000  # small on disk
    monkeypatch.setenv(ENV_MAX_PIXELS, str(LIMIT))
    with pytest.raises(PsfkitError) as info:
        load_image(path)
    text = str(info.value)
    assert "\n" not in text and path.name in text
    assert any(word in text for word in ("limit", "inflates beyond", "declares")), text


def test_crafted_files_in_bounded_memory(tmp_path):
    """All the crafted files, one after the other, in a fresh process: peak memory well below one of them.

    The peak is the process's own (VmHWM, reset by exec), not ru_maxrss, which a child inherits
    from the forking pytest worker (1.5 GB of it in a full run)."""
    paths = [str(make(tmp_path / name)) for name, make in CRAFTED.items()]
    code = (
        "import json, resource, sys\n"
        "from psfkit.io.image import load_image\n"
        "from psfkit.errors import PsfkitError\n"
        "out = []\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n"
        "        load_image(p)\n"
        "        out.append('read')\n"
        "    except PsfkitError as exc:\n"
        "        out.append(str(exc))\n"
        "peak = next(line for line in open('/proc/self/status') if line.startswith('VmHWM'))\n"
        "print(json.dumps({'peak_mb': int(peak.split()[1]) / 1024, 'out': out}))\n"
    )
    env = {"PYTHONPATH": str(SRC), ENV_MAX_PIXELS: str(LIMIT), "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert "read" not in report["out"], report
    assert report["peak_mb"] < 600, report  # one 30000 x 30000 float64 image alone is 7200 MB


def test_default_limit_refuses_the_gzip_bomb(tmp_path, monkeypatch):
    """Without the variable: the default (a quarter of the memory / 48 bytes per pixel value)."""
    import psfkit.io.limits as limits

    monkeypatch.delenv(ENV_MAX_PIXELS, raising=False)
    monkeypatch.setattr(limits, "physical_memory", lambda: 16 * 1024**3)
    assert default_max_pixels() == 16 * 1024**3 // 4 // limits.WORK_BYTES_PER_PIXEL
    with pytest.raises(PsfkitError, match="--max-pixels or PSFKIT_MAX_PIXELS"):
        load_image(fits_gz(tmp_path / "bomb.fits.gz"))
    monkeypatch.setattr(limits, "physical_memory", lambda: 1024**3)  # a small machine: the floor
    assert default_max_pixels() == limits.MIN_DEFAULT_PIXELS


def test_option_and_variable_change_the_limit(tmp_path, monkeypatch, capsys, sample_path):
    from psfkit.cli import main

    monkeypatch.setenv(ENV_MAX_PIXELS, "1000")
    assert max_pixels() == 1000
    with pytest.raises(PsfkitError, match="256 x 256 image"):
        load_image(sample_path)
    assert load_image(sample_path, max_pixels=256 * 256).shape == (256, 256)
    for argv, code in ((["info", str(sample_path)], 2), (["info", str(sample_path), "--max-pixels", "1e6"], 0)):
        try:
            main(argv)
            got = 0
        except SystemExit as exc:
            got = exc.code
        assert got == code
    err = capsys.readouterr().err
    assert err.count("psfkit: error:") == 1 and "raise it with --max-pixels" in err
    monkeypatch.setenv(ENV_MAX_PIXELS, "lots")
    with pytest.raises(PsfkitError, match="PSFKIT_MAX_PIXELS wants a number"):
        load_image(sample_path)


@pytest.mark.parametrize("shape", [(200000, 1), (1, 200000)])
def test_a_strip_is_measured_in_memory_that_follows_its_pixels(tmp_path, shape):
    """The background's interpolation used a (rows x cells) matrix: 200000 x 12500 for this strip."""
    path = tmp_path / "strip.fits"
    rng = np.random.default_rng(2)
    fits.writeto(path, (100 + rng.normal(0, 5, shape)).astype(np.float32))
    code = ("import json, resource, sys, psfkit\n"
            "t = psfkit.find_stars(sys.argv[1])\n"
            "peak = next(line for line in open('/proc/self/status') if line.startswith('VmHWM'))\n"
            "print(json.dumps({'n': len(t), 'peak_mb': int(peak.split()[1]) / 1024}))\n")
    res = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                         env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}, timeout=600)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["peak_mb"] < 600, report  # the matrix alone was 10 GB


def test_background_rows_match_the_weight_matrix():
    """The direct spline evaluation equals the weight-matrix product it replaces."""
    from psfkit.detect.background import _interpolate_axis0, _interpolation_weights

    rng = np.random.default_rng(3)
    for g, n, cell in ((3, 40, 16), (7, 100, 16), (12, 190, 16)):
        values = rng.normal(size=(g, 5))
        want = _interpolation_weights(n, g, cell).astype(np.float64) @ values
        np.testing.assert_allclose(_interpolate_axis0(values, n, cell), want, rtol=1e-5, atol=1e-5)
