"""Every real frame in ../shared/data loads with the right shape, values and metadata.

The expected values come from the files' headers and the data README (read by eye), the pixels
from each format's own library (astropy, tifffile, pillow).
"""

from __future__ import annotations

import numpy as np
import pytest

import psfkit
from psfkit.io.image import load_image

pytestmark = pytest.mark.shared_data

# name: (shape, scale arcsec/px or None, scale rule starts with, gain, read noise, saturation, exptime, date,
#        roworder, wcs)
EXPECTED = {
    "siril_qhy268m_rasa11_crop.fit.fz": ((568, 931), 206.264806 * 3.75999999046326 / 626.855, "206.265 x XPIXSZ",
                                         None, None, 65534.0, 6.0, "2024-09-13T01:05:23.124000", "TOP-DOWN", True),
    "nites_j17490840_seq/J17490840-001.fit": ((1027, 1056), 206.264806 * 13 / 4064, "206.265 x XPIXSZ", 1.22, 14.0,
                                              65535.0, 20.0, "2014-07-27T21:05:43", "BOTTOM-UP", False),
    "nites_j17490840_seq/J17490840-002.fit": ((1027, 1056), 206.264806 * 13 / 4064, "206.265 x XPIXSZ", 1.22, 14.0,
                                              65535.0, 20.0, "2014-07-27T21:06:12", "BOTTOM-UP", False),
    "nites_j17490840_seq/J17490840-003.fit": ((1027, 1056), 206.264806 * 13 / 4064, "206.265 x XPIXSZ", 1.22, 14.0,
                                              65535.0, 20.0, "2014-07-27T21:06:39", "BOTTOM-UP", False),
    "eso_ntt_emmi_r_sep_image.fits": ((256, 256), None, "unknown", None, None, 98528.234375, 1200.0, "1992-10-26",
                                      "BOTTOM-UP", False),
    "iraf_devpix_m51.fits": ((512, 512), None, "unknown", None, None, 32767.0, None, "1987-04-05", "BOTTOM-UP", False),
    "saao1m_ste3_raw_a8280271.fits": ((520, 536), None, "unknown", 1.9, 5.0, 65535.0, 150.04, "2013-07-13",
                                      "BOTTOM-UP", False),
    "stellarphot_feder_cutout_fwhm.fits": ((100, 100), 206.264806 * 9 / 3200, "206.265 x XPIXSZ", None, None, None,
                                           90.0, "2018-08-23T05:55:39", "BOTTOM-UP", True),
    "tetra3_blackfly_2019-07-29T204726_Alt40_Azi-135.fits": ((768, 1024), 206.264806 * 6.9 / 35, "206.265 x XPIXSZ",
                                                             None, None, 65535.0, None, "2019-07-29T20:47:26",
                                                             "TOP-DOWN", False),
    "tetra3_blackfly_2019-07-29T204726_Alt40_Azi-135.tiff": ((768, 1024), None, "unknown", None, None, 65535.0, None,
                                                             None, "TOP-DOWN", False),
    "plate_m44_1910-04-01.fits": ((3000, 3000), None, "unknown", None, None, 255.0, None, "1910-04-01", "TOP-DOWN",
                                  False),
    "plate_m44_1910-04-01.jpg": ((3000, 3000), None, "unknown", None, None, 255.0, None, None, "TOP-DOWN", False),
    "dss_poss1_m67_M6707HH.fits": ((1059, 1059), 67.2 * 25.28445 / 1000, "plate: PLTSCALE", None, None, 13374.0,
                                   3000.0, "1951-11-29", "BOTTOM-UP", False),
    "spitzer_glimpse_irac2_crowded.fits": ((513, 1025), 1.2, "WCS", None, None, None, 1.2, None, "BOTTOM-UP", True),
    # Bayer mosaics: the default plane is green, half size; the scale is the plane's (2 x the frame's)
    "panoptes_canon_bayer/PAN001_20160909T081226_unsolved.fits": ((350, 350), None, "unknown", None, None, 13583.0,
                                                                  120.4, "2016-09-09T08:12:26", "BOTTOM-UP", False),
    "panoptes_canon_bayer/PAN001_20160909T081434_solved.fits": ((350, 350), 2 * 10.32, "WCS", None, None, 13583.0,
                                                                120.4, "2016-09-09T08:14:34", "BOTTOM-UP", True),
}


def test_every_shared_file_is_listed(shared_data):
    """A new file in ../shared/data must get its expectations here."""
    files = {str(p.relative_to(shared_data)) for p in shared_data.rglob("*")
             if p.is_file() and p.suffix.lower() in (".fits", ".fit", ".fz", ".tiff", ".jpg")}
    assert files == set(EXPECTED)


def _reference_pixels(path):
    """The pixels as the format's own library reads them (float64)."""
    name = path.name.lower()
    if name.endswith((".tif", ".tiff")):
        import tifffile

        return tifffile.imread(path).astype(np.float64)
    if name.endswith((".jpg", ".png")):
        from PIL import Image as PILImage

        with PILImage.open(path) as im:
            return np.asarray(im).astype(np.float64)
    from astropy.io import fits

    with fits.open(path) as hdul:
        hdu = next(h for h in hdul if h.is_image and h.data is not None)
        return np.asarray(hdu.data, dtype=np.float64)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shared_file_loads_with_its_metadata(shared_data, name):
    shape, scale, rule, gain, rdnoise, saturation, exptime, date, roworder, has_wcs = EXPECTED[name]
    img = load_image(shared_data / name)
    assert img.shape == shape
    assert img.data.dtype == np.float32
    if scale is None:
        assert img.pixel_scale is None
    else:
        assert img.pixel_scale == pytest.approx(scale, rel=2e-3)
    assert img.scale_rule.startswith(rule) or rule in img.scale_rule
    assert img.gain == (pytest.approx(gain) if gain is not None else None)
    assert img.read_noise == (pytest.approx(rdnoise) if rdnoise is not None else None)
    assert img.saturation == (pytest.approx(saturation) if saturation is not None else None)
    assert img.exptime == (pytest.approx(exptime) if exptime is not None else None)
    assert img.date_obs == date
    assert img.roworder == roworder
    assert (img.wcs is not None) == has_wcs
    for key in ("format", "layout", "gain_rule", "saturation_rule", "frame_shape"):
        assert key in img.meta


@pytest.mark.parametrize("name", sorted(n for n in EXPECTED if "panoptes" not in n))
def test_shared_grey_pixels_equal_the_format_library(shared_data, name):
    img = load_image(shared_data / name)
    ref = _reference_pixels(shared_data / name)
    np.testing.assert_array_equal(np.isnan(img.data), np.isnan(ref))
    np.testing.assert_array_equal(img.data[~np.isnan(ref)], ref[~np.isnan(ref)].astype(np.float32))


def test_spitzer_nans_are_kept_and_gain_is_not_applied_to_mjy_per_sr(shared_data):
    img = load_image(shared_data / "spitzer_glimpse_irac2_crowded.fits")
    assert np.isnan(img.data).any() and np.isfinite(img.data).any()
    assert img.gain is None and "MJy/sr" in img.meta["gain_rule"]


def test_siril_cmos_gain_setting_is_not_electrons(shared_data):
    img = load_image(shared_data / "siril_qhy268m_rasa11_crop.fit.fz")
    assert img.gain is None and "gain setting" in img.meta["gain_rule"]
    assert img.meta["compressed"] == "tile" and img.meta["hdu"] == 1
    # Siril clips at 65534: the plateau of 31 pixels is the saturation level (README)
    assert int(np.count_nonzero(img.data >= img.saturation)) == 31


def test_nites_string_gain_and_read_noise(shared_data):
    img = load_image(shared_data / "nites_j17490840_seq" / "J17490840-001.fit")
    assert img.header["GAIN"] == "1.22" and img.gain == 1.22 and img.read_noise == 14.0


def test_dss_plate_scale_and_exposure_in_minutes(shared_data):
    img = load_image(shared_data / "dss_poss1_m67_M6707HH.fits")
    assert img.pixel_scale == pytest.approx(1.699, abs=1e-3)
    assert img.exptime == 3000.0  # EXPOSURE = 50.0 / Exposure time minutes


def test_tetra3_binned_pixel_size_is_not_binned_twice(shared_data):
    """XPIXSZ=6.9 um is 2 x 3.45 um (its comment says binned): 40.7"/px, the README's 11.4 deg field."""
    img = load_image(shared_data / "tetra3_blackfly_2019-07-29T204726_Alt40_Azi-135.fits")
    assert img.pixel_scale * 1024 / 3600 == pytest.approx(11.4, rel=0.03)
    assert "XBINNING" not in img.scale_rule


def test_user_scale_options_win_and_are_named(shared_data):
    path = shared_data / "tetra3_blackfly_2019-07-29T204726_Alt40_Azi-135.tiff"
    img = load_image(path, focal_length=35, pixel_size=3.45, binning=2)
    assert img.pixel_scale == pytest.approx(206.264806 * 6.9 / 35)
    assert "--binning 2" in img.scale_rule and "--pixel-size 3.45" in img.scale_rule
    assert load_image(path, pixel_scale=40.0).pixel_scale == 40.0
    fits_img = load_image(shared_data / "nites_j17490840_seq" / "J17490840-001.fit", focal_length=2032)
    assert fits_img.pixel_scale == pytest.approx(206.264806 * 13 / 2032)
    assert "XPIXSZ=13" in fits_img.scale_rule and "--focal-length 2032" in fits_img.scale_rule
    with pytest.raises(psfkit.PsfkitError):
        load_image(path, focal_length=-1)


def test_bayer_green_plane_of_the_panoptes_frame(shared_data):
    from astropy.io import fits

    path = shared_data / "panoptes_canon_bayer" / "PAN001_20160909T081226_unsolved.fits"
    raw = fits.getdata(path).astype(np.float64)
    img = load_image(path)
    assert img.meta["bayer_pattern"] == "RGGB" and img.meta["channel"] == "green"
    assert img.pixel_map == {"scale": 2.0, "x_offset": 0.5, "y_offset": 0.5}
    green = (raw[0::2, 1::2] + raw[1::2, 0::2]) / 2
    unsat = (raw[0::2, 1::2] < 13583) & (raw[1::2, 0::2] < 13583)
    np.testing.assert_allclose(img.data[unsat], green[unsat], rtol=1e-6)
    assert np.all(img.data[~unsat] == 13583.0)
    lum = load_image(path, channel="luminance")
    cells = (raw[0::2, 0::2] + raw[0::2, 1::2] + raw[1::2, 0::2] + raw[1::2, 1::2]) / 4
    ok = lum.data < 13583
    np.testing.assert_allclose(lum.data[ok], cells[ok], rtol=1e-6)
    red = load_image(path, channel="R")
    np.testing.assert_array_equal(red.data, raw[0::2, 0::2].astype(np.float32))
    assert red.pixel_map == {"scale": 2.0, "x_offset": 0.0, "y_offset": 0.0}
    mosaic = load_image(path, channel="mosaic")
    assert mosaic.shape == (700, 700) and mosaic.pixel_map is None


def test_bayer_plane_wcs_matches_the_frame_wcs(shared_data):
    path = shared_data / "panoptes_canon_bayer" / "PAN001_20160909T081434_solved.fits"
    frame = load_image(path, channel="mosaic")
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 349, 50), rng.uniform(0, 349, 50)
    for channel in ("green", "R", "B"):
        plane = load_image(path, channel=channel)
        fx, fy = plane.to_frame(x, y)
        for method in ("all_pix2world", "wcs_pix2world"):
            a = np.array(getattr(plane.wcs, method)(x, y, 0))
            b = np.array(getattr(frame.wcs, method)(fx, fy, 0))
            np.testing.assert_allclose(a, b, atol=1e-9)


def test_bayer_stars_are_found_and_mapped_to_the_full_frame(shared_data):
    from psfkit.detect.channels import find_stars_by_channel
    from psfkit.io.colour import table_to_frame

    path = shared_data / "panoptes_canon_bayer" / "PAN001_20160909T081226_unsolved.fits"
    img = load_image(path)
    stars = table_to_frame(psfkit.find_stars(img), img)
    assert len(stars) > 150
    assert stars.meta["image_shape"] == [700, 700]
    # on the full frame, the brightest unsaturated stars' peaks are where the fitted centres say
    mosaic = load_image(path, channel="mosaic").data
    unsat = stars[(np.asarray(stars["flags"]) & 4) == 0][:20]
    for row in unsat:
        x, y = int(round(row["x_fit"])), int(round(row["y_fit"]))
        box = mosaic[y - 3:y + 4, x - 3:x + 4]
        assert box.max() > np.median(mosaic) + 200
    # FWHM on the full frame's pixels: the README's 2.4-2.8 px (undersampled)
    assert 1.8 < float(np.nanmedian(stars["fwhm"])) < 4.0
    per = find_stars_by_channel(path)
    assert set(per["channel"]) == {"R", "G", "B"}
    g = per[per["channel"] == "G"]
    assert abs(len(g) - len(stars)) < 0.2 * len(stars)
    assert np.all((per["x_fit"] >= -0.5) & (per["x_fit"] <= 699.5))
