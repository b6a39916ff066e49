"""Where a request may read and write: inside the root folder, and inside the export folder.

Every path from a request goes through :func:`resolve_in_root` before anything
touches the file: absolute paths, ``..`` components and symlinks that lead out
are refused (403) without opening anything.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from fastapi import HTTPException

__all__ = ["resolve_in_root", "export_target", "list_images", "IMAGE_SUFFIXES", "EXPORT_FORMATS"]

IMAGE_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz", ".fits.fz", ".fit.fz", ".fz",
                  ".tif", ".tiff", ".png", ".jpg", ".jpeg", ".xisf")
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


def export_target(export_dir: Path, name: str, suffix: str) -> Path:
    """Where an export called ``name`` goes: a plain file name inside ``export_dir``."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise _refuse(400, f"name {name!r}: a plain file name is needed (letters, digits, . _ - + space; no folders)")
    if not name.lower().endswith(suffix):
        raise _refuse(400, f"name {name!r}: must end with {suffix} for this format")
    folder = export_dir.resolve()
    target = folder / name
    if target.is_symlink() or (target.exists() and not target.is_file()):
        raise _refuse(403, f"name {name!r}: exists and is not a plain file; not overwriting")
    if target.resolve().parent != folder:
        raise _refuse(403, f"name {name!r}: would leave the export folder")
    return target


def list_images(root: Path, *, max_files: int = 5000, max_depth: int = 4) -> list[str]:
    """Image files under ``root`` (relative, '/'-separated), sorted; links out of the root are skipped."""
    root_real = root.resolve()
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root_real, followlinks=False):
        here = Path(dirpath)
        depth = len(here.relative_to(root_real).parts)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and depth < max_depth)
        for fn in sorted(filenames):
            if fn.startswith(".") or not fn.lower().endswith(IMAGE_SUFFIXES):
                continue
            p = here / fn
            real = p.resolve()
            if real != root_real and root_real not in real.parents:
                continue
            out.append(p.relative_to(root_real).as_posix())
            if len(out) >= max_files:
                return out
    return out
