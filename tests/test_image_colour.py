"""Colour images, Bayer mosaics and camera RAW files: the right plane, per-channel results, positions
on the full frame."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import write_dng, write_png16_rgb

import psfkit
from psfkit.datasets.simulate import simulate_field
from psfkit.detect.channels import find_stars_by_channel
from psfkit.io.colour import table_to_frame
from psfkit.io.image import load_image, load_planes


@pytest.fixture(scope="module")
def field():
    img, truth = simulate_field((160, 200), 14, seed=11, min_separation=16, edge=12)
    return img, truth


def test_raw_dng_black_level_subtracted_white_level_is_saturation(tmp_path, field):
    img, _ = field
    mosaic = (np.clip(img, 0, 3600) + 256).astype(np.uint16)
    mosaic[10, 10] = 4000
    write_dng(tmp_path / "frame.dng", mosaic)
    raw = load_image(tmp_path / "frame.dng", channel="mosaic")
    assert raw.meta["format"] == "RAW" and raw.meta["bayer_pattern"] == "RGGB"
    np.testing.assert_array_equal(raw.data, mosaic.astype(np.float32) - 256)
    assert raw.saturation == 4000 - 256 and "white level" in raw.meta["saturation_rule"]
    green = load_image(tmp_path / "frame.dng")
    assert green.meta["channel"] == "green" and green.shape == (80, 100)
    expected = (mosaic[0::2, 1::2].astype(np.float64) + mosaic[1::2, 0::2]) / 2 - 256
    np.testing.assert_allclose(green.data, expected, rtol=1e-6)


def test_raw_dng_other_patterns(tmp_path, field):
    img, _ = field
    mosaic = (np.clip(img, 0, 3600) + 100).astype(np.uint16)
    write_dng(tmp_path / "bggr.dng", mosaic, black=100, pattern=(2, 1, 1, 0))
    red = load_image(tmp_path / "bggr.dng", channel="R")
    assert red.meta["bayer_pattern"] == "BGGR"
    np.testing.assert_array_equal(red.data, mosaic[1::2, 1::2].astype(np.float32) - 100)
    assert red.pixel_map == {"scale": 2.0, "x_offset": 1.0, "y_offset": 1.0}


def test_bayer_stars_land_on_the_true_full_frame_positions(tmp_path, field):
    """A grey field seen through an RGGB mosaic: green-plane positions mapped back match the truth."""
    from astropy.io import fits

    img, truth = field
    gains = np.array([[0.6, 1.0], [1.0, 0.45]])  # R G / G B response to a white star
    mosaic = img * np.tile(gains, (img.shape[0] // 2, img.shape[1] // 2))
    hdu = fits.PrimaryHDU(mosaic.astype(np.float32))
    hdu.header["BAYERPAT"] = "RGGB"
    hdu.writeto(tmp_path / "osc.fits")
    plane = load_image(tmp_path / "osc.fits")
    stars = table_to_frame(psfkit.find_stars(plane), plane)
    assert len(stars) >= 10
    tx, ty = np.asarray(truth["x"], float), np.asarray(truth["y"], float)
    for row in stars:
        d = np.hypot(tx - row["x_fit"], ty - row["y_fit"])
        assert d.min() < 0.35  # full-frame pixels
    # FWHM in full-frame pixels (the plane's pixels are twice as wide)
    fwhm_truth = float(np.median(np.sqrt(np.asarray(truth["fwhm_x"]) * np.asarray(truth["fwhm_y"]))))
    assert float(np.median(stars["fwhm"])) == pytest.approx(fwhm_truth, rel=0.15)


def test_rgb_tiff_per_channel_results(tmp_path, field):
    import tifffile

    img, _ = field
    grey = np.clip(img, 0, 65535)
    rgb = np.stack([grey * 0.5, grey, grey * 0.25], axis=-1).astype(np.uint16)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    planes = load_planes(tmp_path / "rgb.tif")
    assert [p.meta["channel"] for p in planes] == ["R", "G", "B"]
    for i, p in enumerate(planes):
        np.testing.assert_array_equal(p.data, rgb[..., i])
    table = find_stars_by_channel(tmp_path / "rgb.tif")
    assert table.colnames[0] == "channel"
    counts = {c: int(np.sum(table["channel"] == c)) for c in "RGB"}
    assert all(n >= 8 for n in counts.values()), counts
    # the same stars in each channel: positions agree, fluxes scale with the channel's response
    g = table[table["channel"] == "G"]
    r = table[table["channel"] == "R"]
    for row in g[:5]:
        d = np.hypot(r["x_fit"] - row["x_fit"], r["y_fit"] - row["y_fit"])
        j = int(np.argmin(d))
        assert d[j] < 0.1
        assert r["flux_fit"][j] / row["flux_fit"] == pytest.approx(0.5, rel=0.05)
    assert set(table.meta["channels"]) == {"R", "G", "B"}


def test_rgb_png_16bit_and_xisf_rgb_roundtrip(tmp_path, field):
    from PIL import Image as PILImage
    from xisf import XISF

    img, _ = field
    grey = np.clip(img, 0, 65535).astype(np.uint16)
    PILImage.fromarray(grey).save(tmp_path / "g16.png")
    np.testing.assert_array_equal(load_image(tmp_path / "g16.png").data, grey)
    assert load_image(tmp_path / "g16.png").saturation == 65535
    rgb = np.stack([grey // 2, grey, grey // 4], axis=-1)
    XISF.write(str(tmp_path / "rgb.xisf"), rgb.astype(np.uint16))
    for i, name in enumerate("RGB"):
        np.testing.assert_array_equal(load_image(tmp_path / "rgb.xisf", channel=name).data, rgb[..., i])
    assert load_image(tmp_path / "rgb.xisf").meta["channel"] == "luminance"


def test_jpeg_exif_focal_length_and_exposure(tmp_path, field):
    from PIL import Image as PILImage

    img, _ = field
    grey = (np.clip(img, 0, 65535) / 257).astype(np.uint8)
    exif = PILImage.Exif()
    sub = exif.get_ifd(0x8769)
    sub[33434] = 30.0  # ExposureTime
    sub[37386] = 135.0  # FocalLength
    sub[36867] = "2024:03:01 22:10:05"  # DateTimeOriginal
    PILImage.fromarray(grey).save(tmp_path / "c.jpg", exif=exif, quality=95)
    loaded = load_image(tmp_path / "c.jpg")
    assert loaded.exptime == 30.0 and loaded.date_obs == "2024-03-01T22:10:05"
    assert loaded.header["FOCALLEN"] == 135.0
    assert load_image(tmp_path / "c.jpg", pixel_size=4.3).pixel_scale == pytest.approx(206.264806 * 4.3 / 135)


def test_channel_errors(tmp_path, field):
    import tifffile

    img, _ = field
    grey = np.clip(img, 0, 65535).astype(np.uint16)
    tifffile.imwrite(tmp_path / "g.tif", grey)
    assert load_image(tmp_path / "g.tif", channel="luminance").meta["channel"] is None
    with pytest.raises(psfkit.PsfkitError, match="no R channel"):
        load_image(tmp_path / "g.tif", channel="R")
    with pytest.raises(psfkit.PsfkitError, match="unknown channel"):
        load_image(tmp_path / "g.tif", channel="H-alpha")


def test_raw_exif_exposure_focal_length_and_date(tmp_path, field):
    import tifffile

    img, _ = field
    mosaic = (np.clip(img, 0, 3600) + 256).astype(np.uint16)
    write_dng(tmp_path / "exif.dng", mosaic)
    # the same DNG with EXIF tags in IFD0 (DNG allows them there)
    data = tifffile.imread(tmp_path / "exif.dng")
    extratags = [
        (50706, "B", 4, (1, 4, 0, 0), True), (50707, "B", 4, (1, 1, 0, 0), True),
        (50708, "s", 0, "psfkit test camera", True), (33421, "H", 2, (2, 2), True),
        (33422, "B", 4, (0, 1, 1, 2), True), (50710, "B", 3, (0, 1, 2), True), (50711, "H", 1, (1,), True),
        (50714, "H", 1, (256,), True), (50717, "H", 1, (4000,), True),
        (50721, "2i", 9, (1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1), True),
        (33434, "2I", 1, (30, 1), True), (37386, "2I", 1, (135, 1), True),
        (36867, "s", 0, "2024:03:01 22:10:05", True),
    ]
    tifffile.imwrite(tmp_path / "exif2.dng", data, photometric=32803, extratags=extratags, subfiletype=0)
    loaded = load_image(tmp_path / "exif2.dng", pixel_size=4.3)
    assert loaded.exptime == 30.0 and loaded.date_obs == "2024-03-01T22:10:05"
    # the plane's scale: twice the frame's 206.265 x 4.3 / 135
    assert loaded.pixel_scale == pytest.approx(2 * 206.264806 * 4.3 / 135)


def test_xisf_properties_fill_in_the_optics(tmp_path, field):
    from xisf import XISF

    img, _ = field
    grey = np.clip(img, 0, 65535).astype(np.uint16)
    props = {"Instrument:Telescope:FocalLength": {"id": "Instrument:Telescope:FocalLength", "type": "Float32",
                                                  "value": 0.5},
             "Instrument:Sensor:XPixelSize": {"id": "Instrument:Sensor:XPixelSize", "type": "Float32", "value": 3.76},
             "Instrument:ExposureTime": {"id": "Instrument:ExposureTime", "type": "Float32", "value": 120.0}}
    XISF.write(str(tmp_path / "p.xisf"), grey[:, :, None], image_metadata={"XISFProperties": props})
    loaded = load_image(tmp_path / "p.xisf")
    assert loaded.pixel_scale == pytest.approx(206.264806 * 3.76 / 500, rel=1e-5)
    assert loaded.exptime == 120.0


@pytest.mark.parametrize("planar", ["contig", "separate"])
def test_rgb_tiff_contiguous_and_planar(tmp_path, field, planar):
    import tifffile

    img, _ = field
    grey = np.clip(img, 0, 65535).astype(np.uint16)
    rgb = np.stack([grey // 2, grey, grey // 4], axis=-1)
    data = rgb if planar == "contig" else np.moveaxis(rgb, -1, 0)
    tifffile.imwrite(tmp_path / "rgb.tif", data, photometric="rgb", planarconfig=planar)
    for i, name in enumerate("RGB"):
        np.testing.assert_array_equal(load_image(tmp_path / "rgb.tif", channel=name).data, rgb[..., i])


def test_16bit_colour_png_keeps_all_16_bits(tmp_path, field):
    img, _ = field
    grey = np.clip(img, 0, 65535).astype(np.uint16)
    rgb = np.stack([grey // 2, grey, grey // 4], axis=-1)
    write_png16_rgb(tmp_path / "rgb16.png", rgb)
    for i, name in enumerate("RGB"):
        loaded = load_image(tmp_path / "rgb16.png", channel=name)
        np.testing.assert_array_equal(loaded.data, rgb[..., i])
    assert loaded.saturation == 65535
