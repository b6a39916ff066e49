"""Reading TIFF, PNG, JPEG and XISF, against the formats' own writers and the FITS copy."""

from __future__ import annotations

import numpy as np
import pytest

import psfkit
from psfkit.datasets.simulate import simulate_field


@pytest.fixture(scope="module")
def frame():
    img, _ = simulate_field((120, 160), 15, seed=3, min_separation=12, edge=8)
    return np.clip(img, 0, 65535).astype(np.uint16)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.float32])
def test_tiff_roundtrip(tmp_path, frame, dtype):
    import tifffile

    arr = (frame // 257).astype(dtype) if dtype == np.uint8 else frame.astype(dtype)
    tifffile.imwrite(tmp_path / "f.tif", arr)
    img = psfkit.load_image(tmp_path / "f.tif")
    np.testing.assert_array_equal(img.data, arr.astype(img.data.dtype))
    assert img.meta["format"] == "TIFF"


@pytest.mark.parametrize("bits", [8, 16])
def test_png_roundtrip(tmp_path, frame, bits):
    from PIL import Image as PILImage

    arr = (frame // 257).astype(np.uint8) if bits == 8 else frame
    PILImage.fromarray(arr).save(tmp_path / "f.png")
    img = psfkit.load_image(tmp_path / "f.png")
    np.testing.assert_array_equal(img.data, arr)


def test_colour_png_channels_and_luminance(tmp_path, frame):
    from PIL import Image as PILImage

    g = (frame // 257).astype(np.uint8)
    rgb = np.stack([g // 2, g, g // 4], axis=-1)
    PILImage.fromarray(rgb).save(tmp_path / "c.png")
    lum = psfkit.load_image(tmp_path / "c.png")
    assert lum.meta["channel"] == "luminance"
    np.testing.assert_allclose(lum.data, 0.2126 * rgb[..., 0] + 0.7152 * rgb[..., 1] + 0.0722 * rgb[..., 2], rtol=1e-6)
    green = psfkit.load_image(tmp_path / "c.png", channel="G")
    np.testing.assert_array_equal(green.data, rgb[..., 1])
    with pytest.raises(psfkit.PsfkitError):
        psfkit.load_image(tmp_path / "c.png", channel="H-alpha")


def test_xisf_roundtrip(tmp_path, frame):
    from xisf import XISF

    XISF.write(str(tmp_path / "f.xisf"), frame[:, :, None].astype(np.float32),
               image_metadata={"FITSKeywords": {"FOCALLEN": [{"value": "500", "comment": ""}],
                                                "XPIXSZ": [{"value": "3.76", "comment": ""}]}})
    img = psfkit.load_image(tmp_path / "f.xisf")
    np.testing.assert_array_equal(img.data, frame.astype(np.float32))
    assert img.pixel_scale == pytest.approx(206.265 * 3.76 / 500, rel=1e-4)


def test_tetra3_tiff_and_fits_give_the_same_star_list(shared_data):
    base = "tetra3_blackfly_2019-07-29T204726_Alt40_Azi-135"
    tiff = psfkit.load_image(shared_data / f"{base}.tiff")
    fits_ = psfkit.load_image(shared_data / f"{base}.fits")
    np.testing.assert_array_equal(tiff.data, fits_.data)
    a, b = psfkit.find_stars(tiff), psfkit.find_stars(fits_)
    assert len(a) == len(b) > 10
    np.testing.assert_array_equal(a["x_fit"], b["x_fit"])
    np.testing.assert_array_equal(a["y_fit"], b["y_fit"])


def test_jpeg_plate_loads(shared_data):
    img = psfkit.load_image(shared_data / "plate_m44_1910-04-01.jpg")
    assert img.shape == (3000, 3000) and img.saturation == 255.0


@pytest.mark.parametrize("name,content", [("bad.tif", b"II*\x00garbage"), ("bad.png", b"\x89PNG\r\n\x1a\nxx"),
                                          ("bad.jpg", b"\xff\xd8\xffnot"), ("bad.xisf", b"XISF0100junk"),
                                          ("text.fits", b"hello, I am text\n" * 10)])
def test_broken_files_are_clean_errors(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(psfkit.PsfkitError) as err:
        psfkit.load_image(tmp_path / name)
    assert name in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("compression", ["zlib", "lzw", "packbits"])
def test_compressed_tiff_roundtrip(tmp_path, frame, compression):
    """Processing tools save compressed TIFFs (PixInsight, Photoshop: LZW or ZIP)."""
    import tifffile

    tifffile.imwrite(tmp_path / "c.tif", frame, compression=compression)
    np.testing.assert_array_equal(psfkit.load_image(tmp_path / "c.tif").data, frame)
