"""Which engine runs: the compiled (numba) kernels or their pure-numpy references.

The environment variable ``PSFKIT_BACKEND`` chooses: ``auto`` (the default: compiled where numba
is installed), ``numba`` or ``numpy``.  Every compiled kernel keeps a numpy twin that tests compare
against, so ``PSFKIT_BACKEND=numpy`` gives the same answers, only slower.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

from psfkit.errors import PsfkitError

__all__ = ["HAVE_NUMBA", "backend", "compiled_available", "numba_cache_dir"]

#: the folders whose ``__pycache__`` holds numba's cache of psfkit's compiled kernels by default
_KERNEL_DIRS = tuple(Path(__file__).resolve().parent / name for name in ("detect", "psf", "aperture"))

#: numba is installed (found without importing it: importing numba costs ~0.3 s).
HAVE_NUMBA: bool = importlib.util.find_spec("numba") is not None


def backend() -> str:
    """The backend asked for by ``PSFKIT_BACKEND``: ``"auto"``, ``"numba"`` or ``"numpy"``.

    Raises
    ------
    PsfkitError
        When ``PSFKIT_BACKEND`` is anything else (a typo would otherwise silently pick a backend).

    Examples
    --------
    >>> backend() in ("auto", "numba", "numpy")
    True
    """
    name = os.environ.get("PSFKIT_BACKEND", "auto").strip().lower() or "auto"
    if name not in ("auto", "numba", "numpy"):
        raise PsfkitError(f"PSFKIT_BACKEND must be auto, numba or numpy, not {name!r}")
    return name


def compiled_available() -> bool:
    """True when the compiled kernels are used: numba is installed and ``PSFKIT_BACKEND`` is not numpy.

    Examples
    --------
    >>> isinstance(compiled_available(), bool)
    True
    """
    return HAVE_NUMBA and backend() != "numpy"


def _writable(folder: Path) -> bool:
    """Whether files can be made in ``folder`` (made if missing), the way numba tests it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError:
        return False
    return True


def numba_cache_dir() -> str | None:
    """Choose where numba keeps psfkit's compiled kernels, before numba is imported.

    numba compiles each kernel once and keeps the machine code on disk (``cache=True``), so
    that later runs load it in milliseconds instead of compiling for seconds.  By default
    the cache is the ``__pycache__`` folder beside the kernels' source, inside the installed
    package.  When ``NUMBA_CACHE_DIR`` is set, that folder is used (numba's own rule).  When
    the package folder is not writable (a system-wide or read-only install), psfkit sets
    ``NUMBA_CACHE_DIR`` to a user folder, ``$XDG_CACHE_HOME/psfkit/numba`` (default
    ``~/.cache/psfkit/numba``), and if that cannot be written either, to a folder in the
    temporary directory (compiled again after the temporary directory is cleaned).

    Returns
    -------
    str or None
        The folder psfkit chose (also put in ``NUMBA_CACHE_DIR``), or None when numba's
        default or the user's ``NUMBA_CACHE_DIR`` applies.

    Examples
    --------
    >>> numba_cache_dir() is None or isinstance(numba_cache_dir(), str)
    True
    """
    if os.environ.get("NUMBA_CACHE_DIR"):
        return None
    if all(_writable(folder / "__pycache__") for folder in _KERNEL_DIRS):
        return None
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    choices = [base / "psfkit" / "numba", Path(tempfile.gettempdir()) / f"psfkit-numba-{os.getuid() if hasattr(os, 'getuid') else 'user'}"]
    chosen = next((folder for folder in choices if _writable(folder)), None)
    if chosen is None:
        return None
    os.environ["NUMBA_CACHE_DIR"] = str(chosen)
    config = sys.modules.get("numba.core.config")
    if config is not None:  # numba already imported (by the caller): its config read the environment then
        config.CACHE_DIR = str(chosen)
    return str(chosen)
