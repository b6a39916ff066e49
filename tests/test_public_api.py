"""The public names of psfkit and of each subpackage resolve to what they name, whatever was imported first."""

from __future__ import annotations

import importlib
import types

import pytest

PACKAGES = ["psfkit", "psfkit.io", "psfkit.detect", "psfkit.psf", "psfkit.aperture", "psfkit.analysis",
            "psfkit.viz", "psfkit.datasets"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_resolves_to_an_object_not_a_module(package):
    mod = importlib.import_module(package)
    for name in mod.__all__:
        first = getattr(mod, name)
        # importing every submodule sets attributes on the package: a name that is also a submodule's
        # name would now give the module instead of the function
        for sub in ("io", "detect", "psf", "aperture", "analysis", "viz", "datasets"):
            importlib.import_module(f"psfkit.{sub}")
        again = getattr(mod, name)
        assert not isinstance(again, types.ModuleType), f"{package}.{name} is a module"
        assert again is first, f"{package}.{name} changed after imports"
