"""Writing outputs safely: never onto an input, never a half file.

Every file psfkit writes (star lists, PNG pictures, a sequence's tables) goes through
:func:`atomic_output`: the path is checked against the inputs, the content is written to a
temporary file in the same folder, and only a complete file is renamed over the target
(``os.replace``), so a failure (a full disk, an exception while drawing) leaves no half file.

An output that resolves to the same file as an input (the same path, a symbolic link to it, or
a hard link: :func:`os.path.samefile`) is refused with a one-line
:class:`~psfkit.errors.PsfkitError` before anything is written.  The inputs are those the
caller names, plus every file this process has read through :func:`psfkit.load_image` or
:func:`psfkit.read_star_list` (they are remembered by :func:`remember_input`), so a new
command cannot forget the check.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path

from psfkit.errors import PsfkitError

__all__ = ["remember_input", "same_file", "check_outputs", "atomic_output"]

_MAX_REMEMBERED = 4096
_lock = threading.Lock()
# (st_dev, st_ino, size, mtime_ns) -> the path as read; size and mtime guard against a reused inode
_read: OrderedDict[tuple[int, int, int, int], str] = OrderedDict()


def _identity(path: str | os.PathLike) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def remember_input(path: str | os.PathLike) -> None:
    """Note that this process read ``path``: :func:`atomic_output` will refuse to write onto it.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "frame.fits"
    >>> _ = p.write_bytes(b"x")
    >>> remember_input(p)
    >>> try:
    ...     check_outputs([p])
    ... except ValueError as exc:
    ...     print("refused")
    refused
    """
    ident = _identity(path)
    if ident is None:
        return
    with _lock:
        _read[ident] = os.fspath(path)
        _read.move_to_end(ident)
        while len(_read) > _MAX_REMEMBERED:
            _read.popitem(last=False)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name the same file (same path after resolving links, or the same inode).

    Examples
    --------
    >>> same_file("/tmp", "/tmp/../tmp")
    True
    """
    try:
        if Path(a).resolve() == Path(b).resolve():
            return True
    except (OSError, RuntimeError, ValueError):
        pass
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def check_outputs(outputs: Iterable[str | os.PathLike | None],
                  inputs: Iterable[str | os.PathLike | None] = ()) -> None:
    """Refuse outputs that would replace an input, or that name the same file twice.

    Parameters
    ----------
    outputs : iterable of path or None
        The files about to be written (None entries are ignored).
    inputs : iterable of path or None
        The files read; every file remembered by :func:`remember_input` counts too.

    Raises
    ------
    PsfkitError
        ``<output>: is the input <input>; choose another output name``.

    Examples
    --------
    >>> check_outputs(["stars.csv"], ["frame.fits"])
    >>> try:
    ...     check_outputs(["frame.fits"], ["./frame.fits"])
    ... except ValueError as exc:
    ...     print(exc)
    frame.fits: is the input ./frame.fits; choose another output name (psfkit never replaces an input)
    """
    outs = [o for o in outputs if o is not None]
    ins = [i for i in inputs if i is not None]
    for out in outs:
        for src in ins:
            if same_file(out, src):
                raise PsfkitError(f"{out}: is the input {src}; choose another output name "
                                  "(psfkit never replaces an input)")
        ident = _identity(out)
        if ident is not None:
            with _lock:
                src = _read.get(ident)
            if src is not None:
                raise PsfkitError(f"{out}: is the input {src}; choose another output name "
                                  "(psfkit never replaces an input)")
    for i, a in enumerate(outs):
        for b in outs[i + 1:]:
            if same_file(a, b):
                raise PsfkitError(f"{b}: named twice as an output; give each output its own name")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *,
                  inputs: Iterable[str | os.PathLike | None] = ()) -> Iterator[Path]:
    """A temporary path to write; renamed onto ``path`` only when the block succeeds.

    The output is checked first (:func:`check_outputs`): never an input.  The temporary file
    lives in the target's folder and keeps its suffix (so writers that choose the format from
    the suffix still do), and is removed whatever happens.

    Parameters
    ----------
    path : path
        The file to write.
    inputs : iterable of path
        Files this output must not replace (besides those remembered by :func:`remember_input`).

    Yields
    ------
    Path
        Where to write the content.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "notes.txt"
    >>> with atomic_output(target) as tmp:
    ...     _ = tmp.write_text("complete")
    >>> target.read_text()
    'complete'
    """
    target = Path(path)
    check_outputs([target], inputs)
    if not target.parent.is_dir():
        raise PsfkitError(f"{target.parent}: no such folder")
    if target.is_dir():
        raise PsfkitError(f"{target}: is a folder; give a file name")
    suffix = "".join(target.suffixes[-1:])
    tmp = target.with_name(f".{target.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{suffix}")
    try:
        yield tmp
        if not tmp.exists():
            raise PsfkitError(f"{target}: nothing was written")
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(OSError):
            if tmp.exists():
                tmp.unlink()
