"""FITS in every form astropy writes: integer and float types, BZERO/BSCALE/BLANK, big-endian, gzip,
tile compression, multi-extension files and --hdu, 3-D colour cubes and stacks."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

import psfkit
from psfkit.datasets.simulate import simulate_field
from psfkit.io.image import load_image


@pytest.fixture(scope="module")
def frame():
    img, _ = simulate_field((96, 128), 12, seed=5, min_separation=12, edge=8)
    return np.clip(img, 0, 60000).astype(np.uint16)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.float32, np.float64])
def test_fits_types_roundtrip(tmp_path, frame, dtype):
    arr = (frame // 256).astype(dtype) if dtype == np.uint8 else frame.astype(dtype)
    if dtype == np.int16:
        arr = (frame.astype(np.int32) - 20000).astype(np.int16)
    fits.PrimaryHDU(arr).writeto(tmp_path / "f.fits")
    img = load_image(tmp_path / "f.fits")
    np.testing.assert_array_equal(img.data, arr.astype(np.float64))
    expected_max = {np.uint8: 255, np.int16: 32767, np.uint16: 65535, np.int32: 2**31 - 1, np.uint32: 2**32 - 1}
    if dtype in expected_max:
        assert img.saturation == expected_max[dtype]
    else:
        assert img.saturation is None


def test_fits_bscale_bzero_and_blank(tmp_path, frame):
    stored = (frame // 4).astype(np.int16)
    stored[5, 7] = -32768
    hdu = fits.PrimaryHDU(stored)
    hdu.header["BSCALE"] = 0.5
    hdu.header["BZERO"] = 100.0
    hdu.header["BLANK"] = -32768
    hdu.writeto(tmp_path / "s.fits")
    img = load_image(tmp_path / "s.fits")
    expected = stored.astype(np.float64) * 0.5 + 100.0
    assert np.isnan(img.data[5, 7])
    mask = np.ones(stored.shape, bool)
    mask[5, 7] = False
    np.testing.assert_allclose(img.data[mask], expected[mask])
    assert img.meta["blank"] == -32768
    assert img.saturation == pytest.approx(32767 * 0.5 + 100.0)


def test_fits_big_endian_float_and_gzip(tmp_path, frame):
    arr = frame.astype(">f4")
    fits.PrimaryHDU(arr).writeto(tmp_path / "f.fits.gz")
    img = load_image(tmp_path / "f.fits.gz")
    assert img.data.dtype == np.float32 and img.data.dtype.isnative
    np.testing.assert_array_equal(img.data, arr.astype(np.float32))
    assert img.meta["compressed"] == "gzip"


def test_fits_tile_compressed_in_an_extension(tmp_path, frame):
    hdul = fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(frame, compression_type="RICE_1")])
    hdul[1].header["FOCALLEN"] = 500.0
    hdul[1].header["XPIXSZ"] = 3.76
    hdul.writeto(tmp_path / "f.fits.fz")
    img = load_image(tmp_path / "f.fits.fz")
    np.testing.assert_array_equal(img.data, frame)
    assert img.meta["hdu"] == 1 and img.saturation == 65535
    assert img.pixel_scale == pytest.approx(206.264806 * 3.76 / 500)


def test_multi_extension_file_and_hdu_choice(tmp_path, frame):
    err = np.sqrt(frame.astype(np.float32))
    mask = (frame > 1000).astype(np.uint8)
    hdul = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(frame, name="SCI"), fits.ImageHDU(err, name="ERR"),
                         fits.ImageHDU(mask, name="DQ"),
                         fits.BinTableHDU.from_columns([fits.Column("a", "E", array=[1.0])])])
    hdul["SCI"].header["GAIN"] = (2.0, "e-/ADU")
    hdul.writeto(tmp_path / "mef.fits")
    first = load_image(tmp_path / "mef.fits")
    assert first.meta["hdu"] == 1 and first.gain == 2.0
    np.testing.assert_array_equal(first.data, frame)
    by_name = load_image(tmp_path / "mef.fits", hdu="ERR")
    np.testing.assert_array_equal(by_name.data, err)
    assert load_image(tmp_path / "mef.fits", hdu="2").meta["hdu"] == 2
    with pytest.raises(psfkit.PsfkitError, match="holds no data"):
        load_image(tmp_path / "mef.fits", hdu=0)
    with pytest.raises(psfkit.PsfkitError, match="not an image"):
        load_image(tmp_path / "mef.fits", hdu=4)
    with pytest.raises(psfkit.PsfkitError, match="does not exist"):
        load_image(tmp_path / "mef.fits", hdu=9)
    with pytest.raises(psfkit.PsfkitError, match="does not exist"):
        load_image(tmp_path / "mef.fits", hdu="NOPE")


def test_fits_colour_cube_luminance_and_channels(tmp_path, frame):
    rgb = np.stack([frame // 2, frame, frame // 4]).astype(np.uint16)
    fits.PrimaryHDU(rgb).writeto(tmp_path / "rgb.fits")
    lum = load_image(tmp_path / "rgb.fits")
    assert lum.meta["layout"] == "rgb" and lum.meta["channel"] == "luminance"
    expected = 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]
    np.testing.assert_allclose(lum.data, expected, rtol=1e-6)
    for i, name in enumerate("RGB"):
        np.testing.assert_array_equal(load_image(tmp_path / "rgb.fits", channel=name).data, rgb[i])
        np.testing.assert_array_equal(load_image(tmp_path / "rgb.fits", channel=i).data, rgb[i])


def test_fits_stack_planes(tmp_path, frame):
    stack = np.stack([frame + i for i in range(5)]).astype(np.float32)
    fits.PrimaryHDU(stack).writeto(tmp_path / "stack.fits")
    first = load_image(tmp_path / "stack.fits")
    assert first.meta["layout"] == "stack" and first.meta["channel"] == 0 and first.meta["n_planes"] == 5
    np.testing.assert_array_equal(first.data, stack[0])
    np.testing.assert_array_equal(load_image(tmp_path / "stack.fits", channel=3).data, stack[3])
    with pytest.raises(psfkit.PsfkitError, match="0 to 4"):
        load_image(tmp_path / "stack.fits", channel=5)
    with pytest.raises(psfkit.PsfkitError, match="no colour channels"):
        load_image(tmp_path / "stack.fits", channel="R")
    planes = psfkit.io.image.load_planes(tmp_path / "stack.fits")
    assert [p.meta["channel"] for p in planes] == [0, 1, 2, 3, 4]


def test_fits_bayer_keyword_and_offsets(tmp_path, frame):
    hdu = fits.PrimaryHDU(frame)
    hdu.header["BAYERPAT"] = "RGGB"
    hdu.header["XBAYROFF"] = 1
    hdu.writeto(tmp_path / "osc.fits")
    img = load_image(tmp_path / "osc.fits", channel="R")
    # an x offset of 1 turns RGGB into GRBG: red sits at (0, 1)
    assert img.meta["bayer_pattern"] == "GRBG"
    np.testing.assert_array_equal(img.data, frame[0::2, 1::2])
    assert img.pixel_map == {"scale": 2.0, "x_offset": 1.0, "y_offset": 0.0}


def test_roworder_and_iso_dates(tmp_path, frame):
    hdu = fits.PrimaryHDU(frame)
    hdu.header["ROWORDER"] = "TOP-DOWN"
    hdu.header["DATE-OBS"] = "05/04/87"
    hdu.header["CVF"] = ("0.8", "e-/ADU")
    hdu.header["SATURATE"] = 50000
    hdu.writeto(tmp_path / "r.fits")
    img = load_image(tmp_path / "r.fits")
    assert img.roworder == "TOP-DOWN" and img.date_obs == "1987-04-05"
    assert img.gain == 0.8 and "CVF" in img.meta["gain_rule"]
    assert img.saturation == 50000 and "SATURATE" in img.meta["saturation_rule"]


def test_unbinned_pixel_size_comment_multiplies_binning(tmp_path, frame):
    hdu = fits.PrimaryHDU(frame)
    hdu.header["FOCALLEN"] = 1000.0
    hdu.header["XPIXSZ"] = (3.76, "unbinned pixel size [um]")
    hdu.header["XBINNING"] = 2
    hdu.writeto(tmp_path / "b.fits")
    img = load_image(tmp_path / "b.fits")
    assert img.pixel_scale == pytest.approx(206.264806 * 7.52 / 1000)
    assert "XBINNING=2" in img.scale_rule


def test_data_without_the_file_is_never_modified(tmp_path, frame):
    fits.PrimaryHDU(frame).writeto(tmp_path / "f.fits")
    before = (tmp_path / "f.fits").read_bytes()
    img = load_image(tmp_path / "f.fits")
    img.data[0, 0] = -1  # the loaded pixels are a private copy, not a view of the file
    assert (tmp_path / "f.fits").read_bytes() == before
    assert load_image(tmp_path / "f.fits").data[0, 0] == frame[0, 0]
