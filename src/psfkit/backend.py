"""Which engine runs: the compiled (numba) kernels or their pure-numpy references.

The environment variable ``PSFKIT_BACKEND`` chooses: ``auto`` (the default: compiled where numba
is installed, except for small jobs, below), ``numba`` or ``numpy``.  Every compiled kernel keeps a
numpy twin that tests compare against, so ``PSFKIT_BACKEND=numpy`` gives the same answers, only
slower on large frames.

Small jobs.  Importing numba and loading its cached kernels costs a process about 0.6 s, more than
the numpy twins take to measure a small frame.  Inside :func:`job` (``psfkit find`` and
:func:`psfkit.find_stars` declare their frame's pixels, then the number of stars to fit), ``auto``
runs the numpy twins while the job is at most :data:`SMALL_PIXELS` pixels and :data:`SMALL_STARS`
stars and numba is not loaded yet; once numba is loaded in the process (a large job ran), every
job runs compiled.  Outside :func:`job` (a direct call of a kernel, :func:`psfkit.fit_stars`),
``auto`` is compiled.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from psfkit.errors import PsfkitError

__all__ = ["HAVE_NUMBA", "SMALL_PIXELS", "SMALL_STARS", "backend", "compiled_available", "job", "numba_cache_dir",
           "warm_up"]

#: "auto" runs the numpy twins for frames up to this many pixels (while numba is not loaded) ...
SMALL_PIXELS = 2_000_000
#: ... and fits up to this many stars
SMALL_STARS = 300

#: the thread loading numba and the compiled kernels ahead of a large job (:func:`warm_up`), once per process
_WARM_UP: threading.Thread | None = None

#: the size of the job running in this context (pixels, stars), or None (no job declared)
_JOB: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar("psfkit_job", default=None)

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
    """True when the compiled kernels are used: numba is installed, ``PSFKIT_BACKEND`` is not numpy,
    and (with ``auto``) the job running is not a small one (:func:`job`).

    Examples
    --------
    >>> isinstance(compiled_available(), bool)
    True
    """
    if not HAVE_NUMBA:
        return False
    name = backend()
    if name != "auto":
        return name == "numba"
    size = _JOB.get()
    if size is None or "numba" in sys.modules:
        return True
    return not (size[0] <= SMALL_PIXELS and size[1] <= SMALL_STARS)


@contextlib.contextmanager
def job(*, pixels: int = 0, stars: int = 0) -> Iterator[None]:
    """Declare the size of the work done inside the block: with ``PSFKIT_BACKEND=auto``, a small job
    (at most :data:`SMALL_PIXELS` pixels and :data:`SMALL_STARS` stars, numba not loaded yet) runs
    the numpy twins and never imports numba (see the module's docstring).  Blocks nest: the
    innermost size holds.

    Parameters
    ----------
    pixels : int
        Pixels of the frame measured.
    stars : int
        Stars fitted.

    Examples
    --------
    >>> with job(pixels=512 * 512, stars=50):
    ...     small = "numba" not in sys.modules and backend() == "auto"
    ...     compiled_available() == (HAVE_NUMBA and not small and backend() != "numpy")
    True
    """
    token = _JOB.set((int(pixels), int(stars)))
    try:
        yield
    finally:
        _JOB.reset(token)


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
    user = os.getuid() if hasattr(os, "getuid") else "user"
    choices = [base / "psfkit" / "numba", Path(tempfile.gettempdir()) / f"psfkit-numba-{user}"]
    chosen = next((folder for folder in choices if _writable(folder)), None)
    if chosen is None:
        return None
    os.environ["NUMBA_CACHE_DIR"] = str(chosen)
    config = sys.modules.get("numba.core.config")
    if config is not None:  # numba already imported (by the caller): its config read the environment then
        config.CACHE_DIR = str(chosen)
    return str(chosen)


def warm_up(*, pixels: int, load: Callable[[], None]) -> bool:
    """Run ``load`` (import numba and load compiled kernels) in a background thread, ahead of a job
    of this many pixels that will run compiled (not a small job, see :func:`job`).

    numba's start-up (~0.6 s of a process, mostly holding Python's lock) then overlaps the work
    that releases it: reading the frame, converting its pixels, sorting the background cells.  The
    job's first compiled call waits for the thread (numba's own locks) and finds everything loaded.
    Nothing is started when numba is missing or already loaded, ``PSFKIT_BACKEND`` is numpy, or
    the job is small.

    Parameters
    ----------
    pixels : int
        The job's pixels (an estimate will do: a wrong guess only starts or skips the warm-up).
    load : callable
        What the thread runs; its errors are ignored (the job loads the kernels again and reports them).

    Returns
    -------
    bool
        Whether a warm-up thread runs (or ran) in this process.

    Examples
    --------
    >>> warm_up(pixels=100, load=lambda: None)  # a small job: numba is not loaded for it
    False
    """
    global _WARM_UP
    if pixels <= SMALL_PIXELS or not HAVE_NUMBA or backend() == "numpy":
        return False
    if _WARM_UP is not None:
        return True
    if "numba" in sys.modules:
        return False

    def run() -> None:
        try:
            load()
        except Exception:  # pragma: no cover - the job loads them again and reports the problem
            pass

    _WARM_UP = threading.Thread(target=run, name="psfkit-numba-warm-up", daemon=True)
    _WARM_UP.start()
    return True
