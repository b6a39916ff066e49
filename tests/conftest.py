"""Shared fixtures: the real frames in ../shared/data and the bundled sample."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
