"""Where a request may read and write: inside the root folder, and new files inside the export folder.

Every path from a request goes through :func:`resolve_in_root` before anything
touches the file: absolute paths, ``..`` components and symlinks that lead out
are refused (403) without opening anything.  Exports only ever create new
files (:func:`write_new`): an existing file, whatever it is (the viewed image
included), is never replaced; the request is answered 409 with a free name.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path

from fastapi import HTTPException

from psfkit.io.formats import IMAGE_SUFFIXES, is_image_name

__all__ = ["resolve_in_root", "export_target", "free_name", "write_new", "list_images", "ExportExists",
           "IMAGE_SUFFIXES", "EXPORT_FORMATS", "DEFAULT_EXPORT_FOLDER"]

#: The export folder when none is given: a folder of its own inside the root, apart from the images.
DEFAULT_EXPORT_FOLDER = "psfkit-exports"

EXPORT_FORMATS = {"lst": ".lst", "csv": ".csv", "ecsv": ".ecsv", "reg": ".reg", "fits": ".fits"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ +-]{0,150}$")


def _refuse(status: int, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


def resolve_in_root(root: Path, rel: str) -> Path:
    """The file ``rel`` (relative to ``root``) as a real path inside ``root``.

    Raises HTTPException 400 (malformed), 403 (leaves the root) or 404 (no such file).
    """
    if not isinstance(rel, str) or not rel.strip():
        raise _refuse(400, "path: an image path relative to the root folder is needed")
    if len(rel) > 1024 or "\x00" in rel or any(ord(c) < 32 for c in rel):
        raise _refuse(400, "path: not a valid file name")
    norm = rel.replace("\\", "/")
    if norm.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", norm):
        raise _refuse(403, f"path {rel!r}: absolute paths are not served; give a path inside the root folder")
    if ".." in norm.split("/"):
        raise _refuse(403, f"path {rel!r}: leaves the root folder")
    root_real = root.resolve()
    real = (root_real / norm).resolve(strict=False)  # follows symlinks: one pointing out is caught below
    if real != root_real and root_real not in real.parents:
        raise _refuse(403, f"path {rel!r}: leaves the root folder (through a link)")
    if not real.is_file():
        raise _refuse(404, f"path {rel!r}: no such file in the root folder")
    return real


class ExportExists(HTTPException):
    """409: the export's name is taken; ``suggested_name`` is a free one in the same folder."""

    def __init__(self, name: str, folder: Path, suggested_name: str) -> None:
        super().__init__(409, f"{name} already exists in {folder}; not overwritten (free name: {suggested_name})")
        self.suggested_name = suggested_name


def free_name(folder: Path, name: str, suffix: str) -> str:
    """The first of ``name``, ``stem-1 suffix``, ``stem-2 suffix``... that no file in ``folder`` has.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / "stars.csv").write_text("")
    >>> free_name(d, "stars.csv", ".csv"), free_name(d, "other.csv", ".csv")
    ('stars-1.csv', 'other.csv')
    """
    stem = name[: -len(suffix)] if name.lower().endswith(suffix) else name
    candidate, k = name, 0
    while os.path.lexists(folder / candidate):
        k += 1
        candidate = f"{stem}-{k}{suffix}"
    return candidate


def write_new(target: Path, write: Callable[[Path], object], *, suffix: str) -> None:
    """Create ``target`` with ``write(path)``, never replacing an existing file (ExportExists, 409).

    The content is written to a hidden temporary file in the same folder, then
    linked to ``target`` (a hard link fails when the name exists, atomically);
    on a file system without hard links the name is reserved with an exclusive
    create first.  A failure leaves neither ``target`` nor the temporary file.
    """
    folder = target.parent
    tmp = folder / f".psfkit-export-{uuid.uuid4().hex}{suffix}"
    try:
        write(tmp)
        try:
            os.link(tmp, target)
        except FileExistsError:
            raise ExportExists(target.name, folder, free_name(folder, target.name, suffix)) from None
        except OSError:  # no hard links here: reserve the name, then move the file onto the reservation
            try:
                os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            except FileExistsError:
                raise ExportExists(target.name, folder, free_name(folder, target.name, suffix)) from None
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def export_target(export_dir: Path, name: str, suffix: str) -> Path:
    """Where an export called ``name`` goes: a plain file name inside ``export_dir``."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise _refuse(400, f"name {name!r}: a plain file name is needed (letters, digits, . _ - + space; no folders)")
    if not name.lower().endswith(suffix):
        raise _refuse(400, f"name {name!r}: must end with {suffix} for this format")
    folder = export_dir.resolve()
    target = folder / name
    if target.resolve().parent != folder:
        raise _refuse(403, f"name {name!r}: would leave the export folder")
    if os.path.lexists(target):  # any existing entry: a file, the viewed image, a link, a folder
        raise ExportExists(name, folder, free_name(folder, name, suffix))
    return target


def list_images(root: Path, *, max_files: int = 5000, max_depth: int = 4, skip: Path | None = None) -> list[str]:
    """Image files under ``root`` (relative, '/'-separated), sorted; links out of the root are skipped,
    and so is the folder ``skip`` (the export folder: its FITS star lists are not images).
    """
    root_real = root.resolve()
    skip_real = skip.resolve() if skip is not None else None
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root_real, followlinks=False):
        here = Path(dirpath)
        depth = len(here.relative_to(root_real).parts)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and depth < max_depth
                             and (here / d) != skip_real)
        for fn in sorted(filenames):
            if fn.startswith(".") or not is_image_name(fn):
                continue
            p = here / fn
            real = p.resolve()
            if real != root_real and root_real not in real.parents:
                continue
            out.append(p.relative_to(root_real).as_posix())
            if len(out) >= max_files:
                return out
    return out
