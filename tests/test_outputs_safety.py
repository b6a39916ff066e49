"""Outputs never replace inputs (issue 15, point 1), and writers never leave a half file.

Each case: exit code 2, one line on stderr, the input byte-identical, nothing else written.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from psfkit.cli import main
from psfkit.errors import PsfkitError


def _digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _run(argv: list[str]) -> int:
    try:
        main([str(a) for a in argv])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture
def field(tmp_path) -> dict:
    """A simulated 128x128 field as FITS and as an 8-bit PNG (so a PNG output can name an input)."""
    from PIL import Image as PILImage

    from psfkit.datasets.simulate import simulate_field

    data, _ = simulate_field((128, 128), 12, fwhm=3.0, min_separation=12, edge=10, seed=4, flux_range=(5e3, 5e4))
    fits_path = tmp_path / "frame.fits"
    fits.writeto(fits_path, data.astype(np.float32))
    png = tmp_path / "frame.png"
    scaled = np.clip((data - data.min()) / (np.percentile(data, 99.9) - data.min()) * 255, 0, 255)
    PILImage.fromarray(scaled.astype(np.uint8)).save(png)
    return {"fits": fits_path, "png": png, "dir": tmp_path}


def _refused(capsys, argv: list[str], inputs: list[Path], folder: Path) -> str:
    before = {p: _digest(p) for p in inputs}
    listing = sorted(os.listdir(folder))
    code = _run(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("psfkit: error:"), err
    assert "never replaces an input" in lines[0] or "named twice" in lines[0]
    for p, digest in before.items():
        assert _digest(p) == digest, f"{p} was changed"
    assert sorted(os.listdir(folder)) == listing, "something was written"
    return lines[0]


def test_find_output_naming_the_input(field, capsys):
    img = field["fits"]
    _refused(capsys, ["find", img, "-o", img], [img], field["dir"])


def test_find_output_through_a_symlink_and_a_hard_link(field, capsys):
    img = field["fits"]
    link = field["dir"] / "link.fits"
    link.symlink_to(img.name)
    _refused(capsys, ["find", img, "-o", link], [img], field["dir"])
    hard = field["dir"] / "hard.fits"
    os.link(img, hard)
    _refused(capsys, ["find", img, "-o", hard], [img], field["dir"])
    # the image given through the link, the output the real file
    _refused(capsys, ["find", link, "-o", img], [img], field["dir"])


@pytest.mark.parametrize("option", ["--overlay", "--fwhm-map"])
def test_find_pictures_naming_the_input(field, capsys, option):
    png = field["png"]
    _refused(capsys, ["find", png, option, png], [png], field["dir"])


def test_find_two_outputs_on_one_file(field, capsys):
    out = field["dir"] / "pic.png"
    _refused(capsys, ["find", field["fits"], "--overlay", out, "--fwhm-map", out], [field["fits"]], field["dir"])


def test_phot_output_naming_the_input_or_the_star_list(field, capsys, tmp_path):
    img = field["fits"]
    _refused(capsys, ["phot", img, "-o", img], [img], field["dir"])
    stars = field["dir"] / "stars.ecsv"
    assert _run(["find", img, "-o", stars]) == 0
    capsys.readouterr()
    _refused(capsys, ["phot", img, "--stars", stars, "-o", stars], [img, stars], field["dir"])


def test_compare_residuals_naming_the_input(field, capsys):
    png = field["png"]
    _refused(capsys, ["compare", png, "--at", "64,64", "--residuals", png], [png], field["dir"])


def test_seq_output_naming_a_frame(field, capsys):
    frames = field["dir"] / "night"
    frames.mkdir()
    a = frames / "a.fits"
    a.write_bytes(field["fits"].read_bytes())
    out = field["dir"] / "out"
    out.mkdir()
    (out / "quality.png").symlink_to(a)  # the night's quality plot would land on a frame
    before = _digest(a)
    code = _run(["seq", frames, "-o", out, "--workers", "0", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "never replaces an input" in err and len(err.strip().splitlines()) == 1
    assert _digest(a) == before
    assert sorted(os.listdir(out)) == ["quality.png"]


def test_library_writers_refuse_a_file_this_process_read(field, tmp_path):
    """The check lives in the writers: a new caller cannot forget it."""
    import psfkit
    from psfkit.io.outputs import atomic_output

    copy = tmp_path / "copy.fits"
    copy.write_bytes(field["fits"].read_bytes())
    table = psfkit.find_stars(str(copy))  # reading remembers the file
    digest = _digest(copy)
    with pytest.raises(PsfkitError, match="never replaces an input"):
        psfkit.write_star_list(table, copy.with_suffix(".fits"))
    with pytest.raises(PsfkitError, match="never replaces an input"):
        psfkit.plot_overlay(psfkit.load_image(str(copy)).data, table, str(copy))
    with pytest.raises(PsfkitError, match="never replaces an input"):
        with atomic_output(tmp_path / "." / "copy.fits"):
            pass
    assert _digest(copy) == digest


def test_atomic_output_leaves_no_half_file(tmp_path):
    from psfkit.io.outputs import atomic_output

    target = tmp_path / "list.csv"
    target.write_text("old, complete\n")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("the disk filled up")
    assert target.read_text() == "old, complete\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["list.csv"]


def test_psf_outputs_naming_the_input(field, capsys):
    img, png = field["fits"], field["png"]
    _refused(capsys, ["psf", img, "-o", img], [img], field["dir"])
    _refused(capsys, ["psf", png, "-o", field["dir"] / "psf.fits", "--png", png], [png], field["dir"])
