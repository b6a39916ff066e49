"""Overlays and FWHM maps: the frame's own aspect (no blank strip), the map the same way up as the
overlay (TOP-DOWN frames), a sparse frame's map filled with fewer cells, a failed fit marked by a
circle instead of a sliver."""

from __future__ import annotations

import warnings

import matplotlib.image as mpimg
import numpy as np
import pytest
from astropy.table import Table

import psfkit
from psfkit.datasets.simulate import simulate_field
from psfkit.viz.plots import map_cells, plot_fwhm_map, plot_overlay


@pytest.fixture(scope="module")
def top_half():
    """Stars only in rows 0-150 of a 300x400 frame (the top of the picture when TOP-DOWN)."""
    img, truth = simulate_field((300, 400), 40, seed=2, fwhm=3.4, flux_range=(3e3, 1e5), edge=8)
    img[160:, :] = np.random.default_rng(1).normal(200, 11, (140, 400))
    return img.astype(np.float32)


def _red(rgb):
    return (rgb[..., 0] > 0.8) & (rgb[..., 1] < 0.4) & (rgb[..., 2] < 0.4)


def _green(rgb):
    return (rgb[..., 1] > 0.8) & (rgb[..., 0] < 0.4)


def test_overlay_has_the_frames_aspect_and_no_blank_strip(top_half, tmp_path):
    stars = psfkit.find_stars(top_half, gain=1.5)
    png = mpimg.imread(plot_overlay(top_half, stars, tmp_path / "o.png", top_down=False))
    assert png.shape[1] / png.shape[0] == pytest.approx(400 / 300, rel=0.01)
    top_rows = png[:3, :, :3]
    assert (top_rows.min(axis=-1) > 0.95).mean() < 0.05  # sky, not a white strip


def test_fwhm_map_is_the_same_way_up_as_the_overlay(top_half, tmp_path):
    stars = psfkit.find_stars(top_half, gain=1.5)
    for top_down in (True, False):
        stars.meta["roworder"] = "TOP-DOWN" if top_down else "BOTTOM-UP"
        over = mpimg.imread(plot_overlay(top_half, stars, tmp_path / "o.png"))[..., :3]
        rings = np.nonzero(_green(over).any(axis=1))[0] / over.shape[0]
        themap = mpimg.imread(plot_fwhm_map(stars, top_half.shape, tmp_path / "m.png"))[..., :3]
        # the left panel's axes (no colour bar): coloured (cell) pixels, white where no star is
        panel = themap[:, : int(0.38 * themap.shape[1])]
        coloured = (panel.max(axis=-1) - panel.min(axis=-1)) > 0.15
        rows = np.nonzero(coloured.sum(axis=1) > 0.2 * panel.shape[1])[0] / themap.shape[0]
        stars_on_top = np.median(rings) < 0.5
        assert stars_on_top == top_down
        assert (np.median(rows) < 0.5) == stars_on_top


def test_sparse_frame_map_has_fewer_cells_and_no_nan_warnings(tmp_path):
    img, _ = simulate_field((400, 400), 5, seed=3, fwhm=3.4, flux_range=(5e3, 5e4), edge=20, min_separation=40)
    stars = psfkit.find_stars(img.astype(np.float32), gain=1.5)
    assert len(stars) == 5 and map_cells(5) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        png = mpimg.imread(plot_fwhm_map(stars, img.shape, tmp_path / "m.png"))[..., :3]
    panel = png[:, : int(0.38 * png.shape[1])]
    assert ((panel.max(axis=-1) - panel.min(axis=-1)) > 0.15).mean() > 0.2  # the cell is drawn
    with pytest.raises(psfkit.PsfkitError, match="at least 3 stars"):
        plot_fwhm_map(stars[:2], img.shape, tmp_path / "m2.png")


def test_failed_fit_is_a_circle_not_a_sliver(tmp_path):
    data = np.random.default_rng(0).normal(0, 1, (200, 200))
    table = Table({"x_fit": [100.0], "y_fit": [100.0], "x_init": [100.0], "y_init": [100.0],
                   "fwhm_x": [900.0], "fwhm_y": [0.1], "angle": [20.0], "amplitude": [5.0],
                   "accepted": [False], "reject_reason": ["fit_failed"]})
    table.meta.update(frame_fwhm=4.0, noise=1.0)
    red = _red(mpimg.imread(plot_overlay(data, table, tmp_path / "f.png"))[..., :3])
    ys, xs = np.nonzero(red)
    scale = red.shape[1] / 200  # picture pixels per frame pixel
    width, height = (xs.max() - xs.min()) / scale, (ys.max() - ys.min()) / scale
    assert width == pytest.approx(12.0, abs=2.0) and height == pytest.approx(12.0, abs=2.0)
