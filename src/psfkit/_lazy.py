"""Lazy attributes for the package and its subpackages (the idea of scikit-image's lazy_loader).

``import psfkit`` costs a few milliseconds: a public name such as ``psfkit.find_stars`` imports its
module (numpy, scipy, astropy, numba ...) only when it is first used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def attach(package: str, names: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``__getattr__``, ``__dir__`` and ``__all__`` for ``package`` whose public ``names`` live in submodules.

    Parameters
    ----------
    package : str
        The package's ``__name__``.
    names : dict
        Public name -> module that defines it, relative to ``package`` (``"find"``, or ``"..io.image"`` for a sibling).

    Returns
    -------
    tuple
        ``(__getattr__, __dir__, __all__)`` to assign in the package's ``__init__``.

    Examples
    --------
    >>> getattr_, dir_, all_ = attach("psfkit", {"PsfkitError": "errors"})
    >>> getattr_("PsfkitError").__name__
    'PsfkitError'
    """

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        relative = module if module.startswith(".") else "." + module
        return getattr(importlib.import_module(relative, package), name)

    def __dir__() -> list[str]:
        return sorted(names)

    return __getattr__, __dir__, sorted(names)
