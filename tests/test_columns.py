"""One star-table schema: a frame without stars returns the columns, dtypes and units of one with stars."""

from __future__ import annotations

import numpy as np
import pytest

import psfkit
from psfkit.psf.columns import COLUMN_ORDER, STAR_COLUMNS


def _same_schema(empty, full):
    assert empty.colnames == full.colnames
    for name in full.colnames:
        assert empty[name].dtype.kind == full[name].dtype.kind, name
        assert empty[name].unit == full[name].unit, name


@pytest.mark.parametrize("keep_rejected", [False, True])
def test_empty_frame_has_the_columns_of_a_full_one(sample_path, keep_rejected):
    img = psfkit.load_image(sample_path)
    full = psfkit.find_stars(img, keep_rejected=keep_rejected)
    empty = psfkit.find_stars(img.with_data(np.full(img.shape, 100.0)), keep_rejected=keep_rejected)
    assert len(full) > 10 and len(empty) == 0
    _same_schema(empty, full)


def test_empty_frame_with_scale_and_wcs(shared_data):
    img = psfkit.load_image(shared_data / "siril_qhy268m_rasa11_crop.fit.fz")  # image scale and a TAN-SIP WCS
    full = psfkit.find_stars(img)
    assert {"fwhm_arcsec", "ra", "dec"} <= set(full.colnames)
    _same_schema(psfkit.find_stars(img.with_data(np.full(img.shape, 100.0))), full)


def test_fit_stars_columns_follow_the_schema(sample_path):
    t = psfkit.fit_stars(sample_path, [232.0], [97.0])
    assert t.colnames == [c for c in COLUMN_ORDER if c in t.colnames]
    for name in t.colnames:
        dtype, unit = STAR_COLUMNS[name]
        assert t[name].dtype == np.dtype(dtype) and (t[name].unit is None) == (unit is None), name
