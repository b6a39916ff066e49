"""pytest's root configuration: doctests of modules whose optional extra is not installed are not collected.

``--doctest-modules`` imports every module of ``src/psfkit``; a module that needs an extra
(``psfkit[plot]``, ``psfkit[web]``, ``psfkit[dask]``) is skipped when the extra is missing, so that
``pytest`` runs on a core install too.
"""

from importlib.util import find_spec

# module path (relative to this file) -> the package it cannot be imported without
_NEEDS = {
    "src/psfkit/web": "fastapi",
    "src/psfkit/viz": "matplotlib",
}

collect_ignore = [path for path, package in _NEEDS.items() if find_spec(package) is None]
