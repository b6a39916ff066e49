"""Bad input: a one-line PsfkitError naming the file and the problem, never a traceback or a warning.

The property test feeds truncated and byte-flipped copies of real files (and of files written by
each format's library) to the reader: it must return a sound image or raise PsfkitError.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import psfkit
from psfkit.io.image import Image, load_image


def _one_line_error(path, **kwargs) -> str:
    with pytest.raises(psfkit.PsfkitError) as err:
        load_image(path, **kwargs)
    text = str(err.value)
    assert "\n" not in text and Path(path).name in text, text
    return text


def test_missing_file_and_directory(tmp_path):
    assert "no such file" in _one_line_error(tmp_path / "nope.fits")
    assert "directory" in _one_line_error(tmp_path)


def test_empty_and_text_files(tmp_path):
    (tmp_path / "empty.fits").write_bytes(b"")
    assert "empty" in _one_line_error(tmp_path / "empty.fits")
    (tmp_path / "notes.fits").write_text("these are my observing notes\n" * 20)
    assert "not a FITS file" in _one_line_error(tmp_path / "notes.fits")
    (tmp_path / "notes.txt").write_text("hello")
    assert "unsupported file type" in _one_line_error(tmp_path / "notes.txt")
    (tmp_path / "x.gz").write_bytes(b"\x1f\x8b" + b"\0" * 20)
    _one_line_error(tmp_path / "x.gz")


def test_truncated_fits(tmp_path):
    fits.PrimaryHDU(np.arange(200 * 300, dtype=np.uint16).reshape(200, 300)).writeto(tmp_path / "full.fits")
    data = (tmp_path / "full.fits").read_bytes()
    (tmp_path / "cut.fits").write_bytes(data[: len(data) // 2])
    assert "truncated" in _one_line_error(tmp_path / "cut.fits")
    (tmp_path / "header_only.fits").write_bytes(data[:1000])
    _one_line_error(tmp_path / "header_only.fits")


def test_hdu_without_data_one_d_and_four_d(tmp_path):
    fits.PrimaryHDU().writeto(tmp_path / "nodata.fits")
    assert "no HDU holds an image" in _one_line_error(tmp_path / "nodata.fits")
    fits.PrimaryHDU(np.arange(100, dtype=np.float32)).writeto(tmp_path / "spectrum.fits")
    assert "1-D" in _one_line_error(tmp_path / "spectrum.fits")
    fits.PrimaryHDU(np.ones((2, 3, 4, 5), np.float32)).writeto(tmp_path / "4d.fits")
    assert "4-D" in _one_line_error(tmp_path / "4d.fits")


def test_nan_constant_and_zero_size_images(tmp_path):
    fits.PrimaryHDU(np.full((20, 30), np.nan, np.float32)).writeto(tmp_path / "nan.fits")
    assert "NaN" in _one_line_error(tmp_path / "nan.fits")
    fits.PrimaryHDU(np.full((20, 30), 7, np.uint16)).writeto(tmp_path / "flat.fits")
    assert "constant" in _one_line_error(tmp_path / "flat.fits")
    fits.PrimaryHDU(np.zeros((0, 30), np.float32)).writeto(tmp_path / "zero.fits")
    _one_line_error(tmp_path / "zero.fits")


def test_unsupported_bit_depths(tmp_path):
    import tifffile
    from PIL import Image as PILImage

    tifffile.imwrite(tmp_path / "c.tif", (np.arange(64).reshape(8, 8) + 1j).astype(np.complex64))
    assert "unsupported pixel type" in _one_line_error(tmp_path / "c.tif")
    tifffile.imwrite(tmp_path / "b.tif", np.arange(64).reshape(8, 8) > 20)
    assert "unsupported" in _one_line_error(tmp_path / "b.tif")
    PILImage.fromarray(np.arange(64).reshape(8, 8) > 20).convert("1").save(tmp_path / "bw.png")
    assert "unsupported" in _one_line_error(tmp_path / "bw.png")


def test_unsupported_raw_model(tmp_path):
    (tmp_path / "IMG_0001.CR2").write_bytes(b"II*\x00" + bytes(range(256)) * 8)
    assert "RAW" in _one_line_error(tmp_path / "IMG_0001.CR2")
    (tmp_path / "DSCF0001.RAF").write_bytes(b"FUJIFILMCCD-RAW " + b"\0" * 500)
    _one_line_error(tmp_path / "DSCF0001.RAF")


def test_bad_channel_and_hdu_options(tmp_path):
    fits.PrimaryHDU(np.arange(64, dtype=np.float32).reshape(8, 8)).writeto(tmp_path / "g.fits")
    _one_line_error(tmp_path / "g.fits", channel="R")
    _one_line_error(tmp_path / "g.fits", hdu=3)
    import tifffile

    tifffile.imwrite(tmp_path / "g.tif", np.arange(64, dtype=np.uint16).reshape(8, 8))
    assert "FITS files only" in _one_line_error(tmp_path / "g.tif", hdu=1)


# --------------------------------------------------------------------------- property test


def _sound(img: Image) -> None:
    assert isinstance(img, Image)
    assert img.data.ndim == 2 and min(img.data.shape) >= 1
    assert img.data.dtype.kind == "f" and img.data.dtype.isnative
    finite = np.isfinite(img.data)
    assert finite.any()
    assert img.data[finite].min() < img.data[finite].max()
    assert img.pixel_scale is None or img.pixel_scale > 0
    assert img.gain is None or img.gain > 0


@pytest.fixture(scope="module")
def seeds(tmp_path_factory, request):
    """Small real files of every format (read from ../shared/data where it exists)."""
    import tifffile
    from PIL import Image as PILImage
    from xisf import XISF

    from psfkit.datasets import sample_image_path

    out = tmp_path_factory.mktemp("seeds")
    sample = Path(sample_image_path())  # the bundled ESO frame (256 x 256 float32)
    shutil.copy(sample, out / "eso.fits")
    grey = fits.getdata(sample).astype(np.float32)
    crop16 = np.clip(grey[:96, :128] / 2, 0, 65535).astype(np.uint16)
    tifffile.imwrite(out / "crop.tif", crop16)
    PILImage.fromarray((crop16 // 257).astype(np.uint8)).save(out / "crop.png")
    PILImage.fromarray((crop16 // 257).astype(np.uint8)).save(out / "crop.jpg", quality=90)
    XISF.write(str(out / "crop.xisf"), crop16[:, :, None])
    hdul = fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(crop16, compression_type="RICE_1")])
    hdul.writeto(out / "crop.fits.fz")
    fits.PrimaryHDU(crop16).writeto(out / "crop.fits.gz")
    from _helpers import write_dng, write_png16_rgb

    write_dng(out / "crop.dng", crop16)  # a camera RAW file LibRaw reads
    write_png16_rgb(out / "rgb16.png", np.stack([crop16, crop16 // 2, crop16 // 3], axis=-1))
    shared = Path(request.config.rootpath).parent / "shared" / "data"
    for name in ("iraf_devpix_m51.fits", "siril_qhy268m_rasa11_crop.fit.fz",
                 "panoptes_canon_bayer/PAN001_20160909T081434_solved.fits"):
        if (shared / name).exists():
            shutil.copy(shared / name, out / Path(name).name)
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def _check_corrupted(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    try:
        img = load_image(path)
    except psfkit.PsfkitError as exc:
        text = str(exc)
        assert "\n" not in text and name in text
        return
    _sound(img)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(data=st.data())
def test_truncated_and_byte_flipped_files_give_clean_errors_or_sound_images(tmp_path, seeds, data):
    name = data.draw(st.sampled_from(sorted(seeds)), label="file")
    content = bytearray(seeds[name])
    kind = data.draw(st.sampled_from(["truncate", "flip", "both"]), label="damage")
    if kind in ("flip", "both"):
        n = data.draw(st.integers(1, 8), label="n_flips")
        # flips land in the first 8 kB (headers, tile tables) half the time, anywhere otherwise
        for _ in range(n):
            limit = min(len(content), 8192) if data.draw(st.booleans()) else len(content)
            pos = data.draw(st.integers(0, limit - 1))
            content[pos] ^= data.draw(st.integers(1, 255))
    if kind in ("truncate", "both"):
        content = content[: data.draw(st.integers(0, len(content) - 1), label="length")]
    _check_corrupted(tmp_path, name, bytes(content))
