"""Shared fixtures: the real frames in ../shared/data, the bundled sample, the command line in-process.

Helpers that are not fixtures live in tests/_helpers.py (test modules import them from there,
never from one another)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from _helpers import CliResult, run_cli

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PSFKIT_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of real frames (../shared/data beside the checkout); skips with a reason when absent.

    In CI the folder is always there (CI=true makes its absence a failure, not a skip).
    """
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{SHARED_DATA} is missing in CI")
        pytest.skip(f"real frames not available: {SHARED_DATA} does not exist (a user's fresh clone)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def sample_path() -> Path:
    import psfkit

    return psfkit.sample_image_path()


@pytest.fixture
def pairs_fits(tmp_path) -> Path:
    """tmp_path/pairs.fits: two bright stars, each with a companion 1.3-1.6 FWHM away that the first
    pass of find_stars does not see (flux ratios 0.15), and an isolated star; GAIN and RDNOISE set."""
    import numpy as np
    from astropy.io import fits

    from psfkit.datasets.simulate import add_noise, render_stars, star_params

    rng = np.random.default_rng(9)
    x = np.array([40.0, 45.6, 100.0, 104.8, 160.0])
    y = np.array([40.0, 41.0, 60.0, 57.3, 45.0])
    p = star_params("gaussian", x, y, [1e5, 1.5e4, 8e4, 1.2e4, 5e4], 3.5, 3.5, 0.0)
    data = add_noise(render_stars((100, 200), p) + 100.0, gain=1.5, read_noise=6.0, rng=rng)
    path = tmp_path / "pairs.fits"
    fits.writeto(path, data.astype(np.float32), fits.Header({"GAIN": 1.5, "RDNOISE": 6.0}))
    return path


@pytest.fixture
def cli():
    """``cli("find", path, "-o", out)``: the psfkit command in this process (:func:`_helpers.run_cli`),
    returning exit code, stdout and stderr."""
    def run(*args: object, check: bool = False) -> CliResult:
        return run_cli(*args, check=check)

    return run
