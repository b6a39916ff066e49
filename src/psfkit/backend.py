"""Which engine runs: the compiled (numba) kernels or their pure-numpy references.

The environment variable ``PSFKIT_BACKEND`` chooses: ``auto`` (the default: compiled where numba
is installed), ``numba`` or ``numpy``.  Every compiled kernel keeps a numpy twin that tests compare
against, so ``PSFKIT_BACKEND=numpy`` gives the same answers, only slower.
"""

from __future__ import annotations

import importlib.util
import os

from psfkit.errors import PsfkitError

__all__ = ["HAVE_NUMBA", "backend", "compiled_available"]

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
