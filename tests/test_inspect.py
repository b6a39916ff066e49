"""The optics inspector against simulated fields with a known tilt and field curvature."""

from __future__ import annotations

import math

import numpy as np
import pytest

from psfkit.analysis.inspect import fit_fwhm_surface, inspect_image
from psfkit.datasets.simulate import add_noise, render_stars, star_params
from psfkit.errors import PsfkitError

SHAPE = (400, 600)
TRUTH = {"fwhm_center": 3.2, "gradient_x": 1.2, "gradient_y": -0.8, "curvature": 0.9}  # px, px/1000 px, px


def truth_fwhm(x, y, shape=SHAPE, t=TRUTH):
    ny, nx = shape
    xc, yc = (nx - 1) / 2, (ny - 1) / 2
    rc2 = xc**2 + yc**2
    return (t["fwhm_center"] + t["gradient_x"] / 1000 * (x - xc) + t["gradient_y"] / 1000 * (y - yc)
            + t["curvature"] * ((x - xc) ** 2 + (y - yc) ** 2) / rc2)


def tilted_field(seed: int, *, n_stars: int = 220, shape=SHAPE, elongation: float = 1.0, angle=None):
    """Gaussian stars whose FWHM follows the surface (noise: Poisson + read noise, sky 200 ADU)."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    # stars anywhere on the frame, at least 12 px apart (no blends)
    x, y = np.zeros(0), np.zeros(0)
    while len(x) < n_stars:
        cx, cy = rng.uniform(6, nx - 7), rng.uniform(6, ny - 7)
        if np.all(np.hypot(x - cx, y - cy) >= 12):
            x, y = np.append(x, cx), np.append(y, cy)
    fw = truth_fwhm(x, y, shape)
    flux = np.exp(rng.uniform(np.log(3e3), np.log(1e5), n_stars))
    ang = np.zeros(n_stars) if angle is None else angle(x, y)
    q = math.sqrt(elongation)
    p = star_params("gaussian", x, y, flux, fw * q, fw / q, ang)
    data = add_noise(render_stars(shape, p) + 200.0, gain=1.5, read_noise=6.0, rng=rng)
    return data


def test_recovers_tilt_and_curvature():
    report = inspect_image(tilted_field(1), gain=1.5, read_noise=6.0)
    d = report.to_dict()
    for name, truth in TRUTH.items():
        err = d[name + "_err"]
        assert abs(d[name] - truth) < 3 * err, (name, d[name], err, truth)
        assert abs(d[name] - truth) < 0.15 * abs(truth), (name, d[name], truth)
        assert 0 < err < 0.1 * abs(truth)
    xc, yc = (SHAPE[1] - 1) / 2, (SHAPE[0] - 1) / 2
    c, gxv, gyv, k = (TRUTH[n] for n in ("fwhm_center", "gradient_x", "gradient_y", "curvature"))
    tilt = 200 * (abs(gxv) * xc + abs(gyv) * yc) / 1000 / (c + k)
    assert d["tilt_percent"] == pytest.approx(tilt, abs=3 * d["tilt_percent_err"])
    assert d["tilt_direction_deg"] == pytest.approx(math.degrees(math.atan2(gyv, gxv)), abs=5)
    assert d["curvature_percent"] == pytest.approx(100 * k / c, rel=0.15)
    # the corners: the fitted surface and the stars' medians agree with the truth there
    for name in ("bottom_left", "top_right"):
        z = d["corners"][name]
        assert z["fwhm_fit"] == pytest.approx(truth_fwhm(z["x"], z["y"]), abs=3 * z["fwhm_fit_err"] + 0.02)
        assert z["fwhm"] == pytest.approx(truth_fwhm(z["x"], z["y"]), rel=0.15)
    assert d["elongation_pattern"] == "round"


@pytest.mark.slow
def test_pulls_are_honest():
    """Over repeated draws the errors describe the spread: the pulls of gx, gy and k together have a
    standard deviation within 0.8-1.2, and each parameter's within 0.65-1.35 (a std measured on 40
    draws is itself uncertain by +-0.11: that band is 0.8-1.2 widened by 1.5 of its sigma)."""
    pulls = {n: [] for n in ("gradient_x", "gradient_y", "curvature")}
    for seed in range(100, 140):
        d = inspect_image(tilted_field(seed, n_stars=160), gain=1.5, read_noise=6.0).to_dict()
        for n in pulls:
            pulls[n].append((d[n] - TRUTH[n]) / d[n + "_err"])
    every = np.concatenate([np.asarray(v) for v in pulls.values()])
    assert 0.8 <= np.std(every) <= 1.2, {n: np.std(v) for n, v in pulls.items()}
    for n, v in pulls.items():
        v = np.asarray(v)
        assert 0.65 <= np.std(v) <= 1.35, (n, np.std(v), v)
        assert abs(np.mean(v)) < 3 / math.sqrt(len(v)) + 0.1, (n, np.mean(v))
        inside = np.mean(np.abs(v) < 3)
        assert inside >= 0.95, (n, inside)


def test_fit_alone_pulls_and_outliers():
    """The surface fit alone (cheap draws): honest errors, outliers rejected, scatter found."""
    rng = np.random.default_rng(5)
    pulls = []
    for _ in range(200):
        x, y = rng.uniform(0, 600, 150), rng.uniform(0, 400, 150)
        err = rng.uniform(0.02, 0.2, 150)
        f = truth_fwhm(x, y) + rng.normal(0, err)
        f[:8] += 3.0  # blends
        fit = fit_fwhm_surface(x, y, f, err, SHAPE)
        assert not fit.used[:8].any()
        pulls.append((fit.params * [1, 1000, 1000, 1] - [TRUTH[n] for n in TRUTH]) / (fit.errors * [1, 1000, 1000, 1]))
    assert np.allclose(np.std(pulls, axis=0), 1.0, atol=0.15)
    # an extra scatter of 0.1 px beyond the errors is found and the errors grow with it
    x, y = rng.uniform(0, 600, 400), rng.uniform(0, 400, 400)
    err = np.full(400, 0.02)
    fit = fit_fwhm_surface(x, y, truth_fwhm(x, y) + rng.normal(0, np.hypot(err, 0.1)), err, SHAPE)
    assert fit.scatter == pytest.approx(0.1, rel=0.2)


def test_elongation_patterns():
    uniform = inspect_image(tilted_field(3, elongation=1.25, angle=lambda x, y: np.full_like(x, 30.0)),
                            gain=1.5, read_noise=6.0).to_dict()
    assert uniform["elongation_pattern"] == "uniform"
    assert uniform["elongation"]["mean_angle_deg"] == pytest.approx(30, abs=5)
    cx, cy = (SHAPE[1] - 1) / 2, (SHAPE[0] - 1) / 2
    radial = inspect_image(tilted_field(4, elongation=1.25, angle=lambda x, y: np.degrees(np.arctan2(y - cy, x - cx))),
                           gain=1.5, read_noise=6.0).to_dict()
    assert radial["elongation_pattern"] == "radial"
    tangential = inspect_image(
        tilted_field(5, elongation=1.25, angle=lambda x, y: np.degrees(np.arctan2(y - cy, x - cx)) + 90),
        gain=1.5, read_noise=6.0).to_dict()
    assert tangential["elongation_pattern"] == "tangential"


def test_too_few_stars():
    with pytest.raises(PsfkitError, match="too few stars"):
        inspect_image(tilted_field(2, n_stars=6), gain=1.5, read_noise=6.0)


def test_inspect_cli_json_and_report(tmp_path, capsys):
    import json

    from astropy.io import fits

    from psfkit.cli import main

    path = tmp_path / "tilted.fits"
    fits.writeto(path, tilted_field(11).astype(np.float32), fits.Header({"GAIN": 1.5, "RDNOISE": 6.0}))
    png = tmp_path / "report.png"
    main(["inspect", str(path), "--json", "-o", str(png)])
    d = json.loads(capsys.readouterr().out)
    assert abs(d["curvature"] - TRUTH["curvature"]) < 3 * d["curvature_err"]
    assert d["report_png"] == str(png) and png.stat().st_size > 50_000
    main(["inspect", str(path)])
    text = capsys.readouterr().out
    assert "tilt" in text and "top_right" in text and "elongation: round" in text
    with pytest.raises(SystemExit) as exc:
        main(["inspect", str(path), "-o", str(tmp_path / "report.jpg")])
    assert exc.value.code == 2 and "suffix .png" in capsys.readouterr().err
