"""Optional dependencies: a missing one is a one-line :class:`PsfkitError` naming the extra that installs it.

The core (read, detect, fit, measure, star lists, the command line) needs numpy, scipy, astropy,
numba, typer and rich.  Pictures need ``psfkit[plot]`` (matplotlib), ``psfkit view`` needs
``psfkit[web]``, sequences on a Dask cluster need ``psfkit[dask]``; ``psfkit[all]`` installs them all.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from psfkit.errors import PsfkitError

__all__ = ["EXTRAS", "require"]

#: top-level import name -> the extra of psfkit that installs it
EXTRAS = {
    "matplotlib": "plot",
    "fastapi": "web",
    "uvicorn": "web",
    "PIL": "web",
    "dask": "dask",
    "distributed": "dask",
}


def require(name: str, *, purpose: str) -> ModuleType:
    """Import module ``name``, or raise a one-line error saying which extra to install.

    Parameters
    ----------
    name : str
        Module to import (``"matplotlib"``, ``"distributed"`` ...).
    purpose : str
        What needs it, for the message (``"plots"``).

    Returns
    -------
    module

    Raises
    ------
    PsfkitError
        When the module is not installed: ``plots need matplotlib: pip install 'psfkit[plot]'``.

    Examples
    --------
    >>> require("numpy", purpose="arrays").__name__
    'numpy'
    >>> import sys
    >>> saved = sys.modules.get("matplotlib")
    >>> sys.modules["matplotlib"] = None  # as if it were not installed
    >>> try:
    ...     require("matplotlib", purpose="plots")
    ... except PsfkitError as error:
    ...     print(error)
    ... finally:
    ...     if saved is None:
    ...         del sys.modules["matplotlib"]
    ...     else:
    ...         sys.modules["matplotlib"] = saved
    plots need matplotlib: pip install 'psfkit[plot]'
    """
    try:
        return importlib.import_module(name)
    except ImportError:
        top = name.split(".")[0]
        extra = EXTRAS.get(top, "all")
        raise PsfkitError(f"{purpose} need {top}: pip install 'psfkit[{extra}]'") from None
