"""Optional extras: without matplotlib, the web server or Dask the core still works, and what needs them
says in one line which extra to install (the package is hidden in-process with sys.modules[name] = None)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import psfkit
from psfkit.datasets.simulate import simulate_field


def _hide(monkeypatch, *names):
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


def _frame():
    data, truth = simulate_field((64, 64), 3, fwhm=3.0, seed=0, edge=12, min_separation=15)
    return data, truth


def _one_line(message: str, extra: str) -> None:
    assert "\n" not in message
    assert f"pip install 'psfkit[{extra}]'" in message


def test_core_without_matplotlib_web_dask(monkeypatch):
    _hide(monkeypatch, "matplotlib", "matplotlib.pyplot", "fastapi", "uvicorn", "dask", "distributed")
    data, truth = _frame()
    stars = psfkit.find_stars(data, gain=1.5, read_noise=6.0)
    assert len(stars) == len(truth)


@pytest.mark.parametrize("plot", ["overlay", "fwhm_map", "model_residuals"])
def test_plots_without_matplotlib(monkeypatch, tmp_path, plot):
    data, truth = _frame()
    stars = psfkit.find_stars(data, gain=1.5, read_noise=6.0)
    _hide(monkeypatch, "matplotlib", "matplotlib.pyplot", "matplotlib.figure")
    with pytest.raises(psfkit.PsfkitError) as info:
        if plot == "overlay":
            psfkit.plot_overlay(data, stars, tmp_path / "o.png")
        elif plot == "fwhm_map":
            psfkit.plot_fwhm_map(stars, data.shape, tmp_path / "f.png")
        else:
            result = psfkit.compare_models(data, truth["x"][0], truth["y"][0], betas=(), lorentzian=False)
            psfkit.plot_model_residuals(result.fits, str(tmp_path / "r.png"))
    _one_line(str(info.value), "plot")
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "f.png").exists()


def test_view_without_the_web_extra(monkeypatch, capsys):
    from psfkit.cli import main

    _hide(monkeypatch, "fastapi", "uvicorn", "psfkit.web", "psfkit.web.app")
    with pytest.raises(SystemExit) as info:
        main(["view", "--no-browser"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("psfkit: error:")
    _one_line(err, "web")


def test_parallel_sequence_without_dask(monkeypatch, tmp_path):
    from astropy.io import fits

    data, _ = _frame()
    for i in range(2):
        fits.writeto(tmp_path / f"f{i}.fits", data.astype(np.float32))
    _hide(monkeypatch, "dask", "distributed")
    with pytest.raises(psfkit.PsfkitError) as info:
        psfkit.run_sequence(tmp_path, tmp_path / "out", workers=2)
    _one_line(str(info.value), "dask")
    # without Dask, workers=0 measures the frames in this process
    result = psfkit.run_sequence(tmp_path, tmp_path / "out", workers=0)
    assert len(result.computed) == 2 and not result.failed


def test_sequence_plots_without_matplotlib(monkeypatch, tmp_path):
    from astropy.io import fits

    data, _ = _frame()
    fits.writeto(tmp_path / "f0.fits", data.astype(np.float32))
    _hide(monkeypatch, "matplotlib", "matplotlib.pyplot", "matplotlib.figure")
    with pytest.raises(psfkit.PsfkitError) as info:  # said before any frame is measured
        psfkit.run_sequence(tmp_path, tmp_path / "out", workers=0)
    _one_line(str(info.value), "plot")
    assert not (tmp_path / "out").exists()
    result = psfkit.run_sequence(tmp_path, tmp_path / "out", workers=0, plots=False)
    assert len(result.computed) == 1 and not (tmp_path / "out" / "quality.png").exists()
