"""Focus runs: simulated frames on a hyperbolic V-curve; bad input gives one-line errors (exit 2)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from astropy.io import fits

from psfkit.analysis.focus import fit_v_curve, focus_run
from psfkit.cli import main
from psfkit.datasets.simulate import add_noise, render_stars, star_params

BEST, A, B = 1430.0, 2.5, 150.0  # steps, px, steps
POSITIONS = np.arange(1000.0, 1900.0, 100.0)  # nine frames


def write_frame(path, position, *, seed, key="FOCUSPOS", fwhm=None, n_stars=40, shape=(200, 200)):
    rng = np.random.default_rng(seed)
    fw = A * math.sqrt(1 + ((position - BEST) / B) ** 2) if fwhm is None else fwhm
    ny, nx = shape
    g = np.arange(5) * (nx / 5) + nx / 10
    gx, gy = np.meshgrid(g, g)
    x = np.resize(gx.ravel(), n_stars) + rng.uniform(-2, 2, n_stars)
    y = np.resize(gy.ravel(), n_stars) + rng.uniform(-2, 2, n_stars)
    x, y = x[: min(n_stars, 25)], y[: min(n_stars, 25)]
    p = star_params("gaussian", x, y, rng.uniform(2e4, 1e5, len(x)), fw, fw, 0.0)
    data = add_noise(render_stars(shape, p) + 200.0, gain=1.5, read_noise=6.0, rng=rng)
    header = fits.Header({"GAIN": 1.5, "RDNOISE": 6.0, "FOCTEMP": 4.5 - position / 1000})
    if key:
        header[key] = position
    fits.writeto(path, data.astype(np.float32), header)
    return path


@pytest.fixture(scope="module")
def focus_frames(tmp_path_factory):
    d = tmp_path_factory.mktemp("focus")
    return [write_frame(d / f"focus_{int(p)}.fits", p, seed=int(p)) for p in POSITIONS]


def test_v_curve_alone():
    rng = np.random.default_rng(2)
    p = np.repeat(POSITIONS, 2)
    v = A * np.sqrt(1 + ((p - BEST) / B) ** 2)
    err = 0.02 * v
    pulls = []
    for _ in range(200):
        c = fit_v_curve(p, v + rng.normal(0, err), err)
        pulls.append((c.params - [A, BEST, B]) / c.errors)
    assert np.allclose(np.std(pulls, axis=0), 1, atol=0.15)


def test_simulated_focus_run(focus_frames):
    result = focus_run(focus_frames)
    d = result.to_dict()
    err = d["best_position_err"]
    assert 0 < err < 40
    assert abs(d["best_position"] - BEST) <= max(15.0, 3 * err), (d["best_position"], err)
    assert d["fwhm_min"] == pytest.approx(A, rel=0.1)
    assert d["hfr_min"] == pytest.approx(A / 2, rel=0.1)
    assert d["temperature"] == pytest.approx(4.5 - np.median(POSITIONS) / 1000)
    assert d["n_frames"] == 9 and d["position_key"] == "FOCUSPOS"
    assert [r["position"] for r in d["frames"]] == list(POSITIONS)


def test_focus_cli_json_and_png(focus_frames, tmp_path, capsys):
    png = tmp_path / "v.png"
    main(["focus", *map(str, focus_frames), "--json", "-o", str(png)])
    d = json.loads(capsys.readouterr().out)
    assert abs(d["best_position"] - BEST) <= max(15.0, 3 * d["best_position_err"])
    assert png.stat().st_size > 10_000


def test_donut_frames_measured_by_hfr(tmp_path):
    """Frames far from focus whose stars are donuts: measured by HFR, FWHM NaN, and the run still fits."""
    from tests.test_hfr import annulus

    paths = []
    for i, pos in enumerate(POSITIONS):
        if abs(pos - BEST) < 350:
            paths.append(write_frame(tmp_path / f"f{i}.fits", pos, seed=i))
            continue
        # a donut: outer radius = the defocus blur, the obstruction at 40 %
        r2 = A * abs(pos - BEST) / B * 0.9
        rng = np.random.default_rng(i)
        img = np.zeros((200, 200))
        for cx, cy in ((50.2, 50.7), (150.4, 60.1), (60.3, 150.2), (140.8, 140.5)):
            img += annulus((200, 200), cx, cy, 0.4 * r2, r2, 1e5)
        data = add_noise(img + 200.0, gain=1.5, read_noise=6.0, rng=rng)
        path = tmp_path / f"f{i}.fits"
        fits.writeto(path, data.astype(np.float32), fits.Header({"GAIN": 1.5, "FOCPOS": pos}))
        paths.append(path)
    result = focus_run(paths)
    t = result.frames
    donut = np.abs(np.asarray(t["position"]) - BEST) >= 350
    assert set(t["method"][donut]) == {"hfr"} and set(t["method"][~donut]) == {"psf"}
    r2 = A * np.abs(np.asarray(t["position"])[donut] - BEST) / B * 0.9
    assert np.allclose(t["hfr"][donut], np.sqrt((0.16 + 1) / 2) * r2, rtol=0.05)
    assert np.all(np.asarray(t["n_stars"])[donut] == 4)
    assert abs(result.best_position - BEST) <= max(15.0, 3 * result.best_position_err)


def run(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code


def test_bad_focus_runs(focus_frames, tmp_path, capsys):
    assert run(["focus", *map(str, focus_frames[:4])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("psfkit: error:") and "at least 5" in err and "\n" not in err
    no_key = [write_frame(tmp_path / f"n{i}.fits", p, seed=i, key=None, n_stars=8) for i, p in enumerate(POSITIONS[:5])]
    assert run(["focus", *map(str, no_key)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no focuser position" in err and "--position-key" in err and "\n" not in err
    # --position-key names another keyword
    other = [write_frame(tmp_path / f"o{i}.fits", p, seed=i, key="FOCUSER") for i, p in enumerate(POSITIONS)]
    d = focus_run(other, position_key="FOCUSER").to_dict()
    assert d["position_key"] == "FOCUSER"


def test_inspect_cli_too_few_stars(tmp_path, capsys):
    path = write_frame(tmp_path / "few.fits", BEST, seed=1, n_stars=6)
    assert run(["inspect", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("psfkit: error: too few stars") and "\n" not in err
