"""The optics inspector against simulated fields with a known tilt and field curvature."""

from __future__ import annotations

import math

import numpy as np
import pytest

from psfkit.analysis.inspect import clipped_variance, fit_fwhm_surface, inspect_image, inspect_stars
from psfkit.datasets.simulate import add_noise, render_stars, star_params
from psfkit.detect.find import find_stars
from psfkit.errors import PsfkitError
from psfkit.psf.models import GaussianPSF

SHAPE = (400, 600)
TRUTH = {"fwhm_center": 3.2, "gradient_x": 1.2, "gradient_y": -0.8, "curvature": 0.9}  # px, px/1000 px, px


def truth_fwhm(x, y, shape=SHAPE, t=TRUTH):
    ny, nx = shape
    xc, yc = (nx - 1) / 2, (ny - 1) / 2
    rc2 = xc**2 + yc**2
    return (t["fwhm_center"] + t["gradient_x"] / 1000 * (x - xc) + t["gradient_y"] / 1000 * (y - yc)
            + t["curvature"] * ((x - xc) ** 2 + (y - yc) ** 2) / rc2)


def field_stars(rng, n_stars: int, shape=SHAPE, *, elongation: float = 1.0, angle=None, origin=(0, 0)):
    """Model rows of Gaussian stars whose FWHM follows the surface of a field of ``shape`` whose pixel
    (0, 0) lies at ``origin`` (x, y) of the frame; anywhere on the field, at least 6 px from its
    edges and 12 px apart (no blends); fluxes log-uniform 3e3-1e5 ADU."""
    ny, nx = shape
    x, y = np.zeros(0), np.zeros(0)
    while len(x) < n_stars:
        cx, cy = rng.uniform(6, nx - 7), rng.uniform(6, ny - 7)
        if np.all(np.hypot(x - cx, y - cy) >= 12):
            x, y = np.append(x, cx), np.append(y, cy)
    fw = truth_fwhm(x, y, shape)
    flux = np.exp(rng.uniform(np.log(3e3), np.log(1e5), n_stars))
    ang = np.zeros(n_stars) if angle is None else angle(x, y)
    q = math.sqrt(elongation)
    return star_params("gaussian", x + origin[0], y + origin[1], flux, fw * q, fw / q, ang)


def tilted_field(seed: int, *, n_stars: int = 220, shape=SHAPE, elongation: float = 1.0, angle=None):
    """Gaussian stars whose FWHM follows the surface (noise: Poisson + read noise, sky 200 ADU)."""
    rng = np.random.default_rng(seed)
    p = field_stars(rng, n_stars, shape, elongation=elongation, angle=angle)
    return add_noise(render_stars(shape, p) + 200.0, gain=1.5, read_noise=6.0, rng=rng)


def render_round(shape, params):
    """render_stars for axis-aligned Gaussians in one batch (the same pixel-integrated values, exact
    through the error function, ~40 times faster)."""
    model = GaussianPSF(angle=True)
    p = np.array(params, dtype=float)
    assert np.all(p[:, model.i_angle] == 0)
    r = int(math.ceil(3.0 * 2.3548 * p[:, 4:6].max())) + 2
    cx, cy = np.rint(p[:, 2]).astype(int), np.rint(p[:, 3]).astype(int)
    q = p.copy()
    q[:, 0] = 0.0
    q[:, 2] -= cx - r
    q[:, 3] -= cy - r
    free = np.ones(model.n_params, dtype=bool)
    free[model.i_angle] = False
    vals, _ = model.evaluate(q, (2 * r + 1, 2 * r + 1), free=free)
    img = np.zeros((shape[0] + 2 * r, shape[1] + 2 * r))
    for v, x, y in zip(vals.reshape(len(p), 2 * r + 1, 2 * r + 1), cx, cy):
        img[y:y + 2 * r + 1, x:x + 2 * r + 1] += v
    return img[r:-r, r:-r]


def tilted_mosaic(seed: int, *, n_stars: int = 160, tiles=(2, 2)):
    """One frame holding tiles[0] x tiles[1] independent fields of SHAPE side by side, each with the
    surface about its own centre: several draws for one find_stars call.  Returns the frame and
    each field's (rows, columns) slices."""
    rng = np.random.default_rng(seed)
    ny, nx = SHAPE
    slices = [(slice(j * ny, (j + 1) * ny), slice(i * nx, (i + 1) * nx))
              for j in range(tiles[0]) for i in range(tiles[1])]
    p = np.concatenate([field_stars(rng, n_stars, origin=(sx.start, sy.start)) for sy, sx in slices])
    shape = (tiles[0] * ny, tiles[1] * nx)
    return add_noise(render_round(shape, p) + 200.0, gain=1.5, read_noise=6.0, rng=rng), slices


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
    """Over 240 draws through find_stars and the inspector, every parameter's pulls (estimate -
    truth) / reported error have a standard deviation within 0.8-1.2 (a std measured on 240 draws is
    itself uncertain by +-0.05: 40 draws, +-0.11, gave 0.76 for one parameter or another by chance),
    no bias beyond 0.3 sigma (find's FWHM reads ~0.04 sigma low, a little more for wide stars:
    about -0.1 sigma on k and gx), 97 % of them within 3 sigma, and every estimate within 15 % of
    the truth."""
    pulls = {n: [] for n in TRUTH}
    rel = {n: [] for n in TRUTH}
    for seed in range(60):
        data, fields = tilted_mosaic(100 + seed)
        stars = find_stars(data, gain=1.5, read_noise=6.0)
        x, y = np.asarray(stars["x_fit"]), np.asarray(stars["y_fit"])
        for sy, sx in fields:
            t = stars[(x >= sx.start) & (x < sx.stop) & (y >= sy.start) & (y < sy.stop)]
            t["x_fit"] -= sx.start
            t["y_fit"] -= sy.start
            d = inspect_stars(t, data[sy, sx]).to_dict()
            for n in pulls:
                pulls[n].append((d[n] - TRUTH[n]) / d[n + "_err"])
                rel[n].append(d[n] / TRUTH[n] - 1)
    for n, v in pulls.items():
        v = np.asarray(v)
        assert len(v) == 240
        assert 0.8 <= np.std(v) <= 1.2, {m: round(float(np.std(w)), 3) for m, w in pulls.items()}
        assert abs(np.mean(v)) < 0.3, (n, np.mean(v))
        assert np.mean(np.abs(v) < 3) >= 0.97, (n, np.sort(np.abs(v))[-10:])
        assert np.max(np.abs(rel[n])) < 0.15, (n, np.max(np.abs(rel[n])))


def surface_pulls(rng, n_draws, *, n_stars=150, err_range=(0.02, 0.2), scatter=0.0, outliers=0):
    """Pulls of c, gx, gy, k of the surface fit alone on synthetic FWHMs (truth + errors + scatter)."""
    pulls = []
    for _ in range(n_draws):
        x, y = rng.uniform(0, 600, n_stars), rng.uniform(0, 400, n_stars)
        err = rng.uniform(*err_range, n_stars)
        f = truth_fwhm(x, y) + rng.normal(0, np.hypot(err, scatter))
        f[:outliers] += 3.0  # blends
        fit = fit_fwhm_surface(x, y, f, err, SHAPE)
        assert not fit.used[:outliers].any()
        pulls.append((fit.params * [1, 1000, 1000, 1] - [TRUTH[n] for n in TRUTH]) / (fit.errors * [1, 1000, 1000, 1]))
    return np.asarray(pulls)


def test_fit_alone_pulls_and_outliers():
    """The surface fit alone (cheap draws): honest errors, outliers rejected, scatter found."""
    rng = np.random.default_rng(5)
    assert np.allclose(np.std(surface_pulls(rng, 200, outliers=8), axis=0), 1.0, atol=0.15)
    # an extra scatter of 0.1 px beyond the errors is found and the errors grow with it
    x, y = rng.uniform(0, 600, 400), rng.uniform(0, 400, 400)
    err = np.full(400, 0.02)
    fit = fit_fwhm_surface(x, y, truth_fwhm(x, y) + rng.normal(0, np.hypot(err, 0.1)), err, SHAPE)
    assert fit.scatter == pytest.approx(0.1, rel=0.2)
    assert fit.reduced_chi2 == pytest.approx(clipped_variance(3.0))


@pytest.mark.parametrize("err_range, scatter", [((0.02, 0.2), 0.04), ((0.01, 0.05), 0.01), ((0.02, 0.2), 0.0)])
def test_fit_alone_pulls_with_a_scatter(err_range, scatter):
    """A scatter beyond the stars' errors about as large as the smallest of them: the scatter is
    estimated in every frame whose chi-square exceeds its expectation (a threshold of 2 sigma on
    the chi-square before any scatter is allowed left pull stds of 1.10-1.18 here)."""
    pulls = surface_pulls(np.random.default_rng(7), 1000, err_range=err_range, scatter=scatter)
    assert np.all((np.std(pulls, axis=0) > 0.88) & (np.std(pulls, axis=0) < 1.1)), np.std(pulls, axis=0)


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
