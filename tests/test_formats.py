"""One registry of image names: load_image, seq's folder listing and the web page's menu agree."""

from __future__ import annotations

from pathlib import Path

import pytest

from psfkit.io.formats import IMAGE_SUFFIXES, RAW_SUFFIXES, is_image_name

TIFF_HEAD = b"II*\x00" + bytes(60)  # the container of CR2, NEF, DNG ... and of the older RAW formats
NAMES = ["a.fits", "b.fit.fz", "c.CRW", "d.nrw", "e.x3f", "f.cr3", "g.xisf", "h.tiff", "notes.txt", "stars.csv"]


def _folder(tmp_path: Path) -> Path:
    for n in NAMES:
        (tmp_path / n).write_bytes(TIFF_HEAD)
    return tmp_path


def test_load_image_reads_every_raw_name_as_raw(tmp_path):
    from psfkit.io._readers import detect_format

    for suffix in RAW_SUFFIXES:
        p = tmp_path / f"frame{suffix.upper()}"
        p.write_bytes(TIFF_HEAD)
        assert detect_format(p) == "raw", suffix
    for name in ("x.tif", "x.tiff"):
        (tmp_path / name).write_bytes(TIFF_HEAD)
        assert detect_format(tmp_path / name) == "tiff"


def test_seq_lists_raw_frames(tmp_path):
    from psfkit.analysis.sequence import list_frames

    found = {p.name for p in list_frames(_folder(tmp_path))}
    assert found == {n for n in NAMES if n not in ("notes.txt", "stars.csv")}
    assert {"c.CRW", "d.nrw", "e.x3f"} <= found  # seq skipped these before the registry


def test_web_menu_lists_raw_files(tmp_path):
    pytest.importorskip("fastapi")
    from psfkit.web._paths import list_images

    listed = set(list_images(_folder(tmp_path)))
    assert listed == {n for n in NAMES if is_image_name(n)}
    assert {"c.CRW", "d.nrw", "e.x3f", "f.cr3"} <= listed  # the menu listed no RAW file before


def test_registry_holds_each_reader_once():
    assert len(set(IMAGE_SUFFIXES)) == len(IMAGE_SUFFIXES)
    assert all(s == s.lower() and s.startswith(".") for s in IMAGE_SUFFIXES)
