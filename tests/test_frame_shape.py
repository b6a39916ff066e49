"""Each star's own FWHM, roundness and angle with the frame's PSF (psfkit.psf.frame_shape)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial import cKDTree

import psfkit
from psfkit.datasets.simulate import add_noise, random_positions, render_stars, simulate_field, star_params
from psfkit.psf import _shape_kernels
from psfkit.psf import empirical as E
from psfkit.psf import frame_shape as S

GAIN, READ_NOISE = 1.5, 6.0


@pytest.fixture(scope="module")
def moffat_psf():
    """The frame's PSF of a field of round Moffat stars (FWHM 3, beta 3), and that field."""
    data, truth = simulate_field((600, 600), 300, model="moffat", fwhm=3.0, roundness=1.0, angle_deg=0.0, beta=3.0,
                                 seed=1, min_separation=8)
    img = psfkit.Image(data=data, gain=GAIN, read_noise=READ_NOISE)
    stars = psfkit.find_stars(img, keep_rejected=True)
    return E.build_frame_psf(img, stars, degree=0), img, truth, stars


def _matched(table, x, y):
    """The accepted rows of a table within 1 px of a true star, and the true stars' indices."""
    if "accepted" in table.colnames:
        table = table[np.asarray(table["accepted"], bool)]
    d, i = cKDTree(np.column_stack([x, y])).query(np.column_stack([table["x_fit"], table["y_fit"]]))
    return table[d < 1], i[d < 1]


@pytest.fixture(scope="module")
def other_shapes(moffat_psf):
    """A second frame of 400 Moffat stars (beta 3) of FWHM 2.4, 3.0 or 3.9 (0.8, 1 and 1.3 times the PSF's),
    roundness 0.6-1 at random angles, measured with the first frame's PSF; the matched table and truth."""
    psf = moffat_psf[0]
    rng = np.random.default_rng(5)
    shape = (800, 800)
    xs, ys = random_positions(rng, 400, shape, edge=12, min_separation=14)
    x, y = np.asarray(xs), np.asarray(ys)
    n = len(x)
    flux = np.exp(rng.uniform(np.log(3e3), np.log(3e5), n))
    fwhm = rng.choice([2.4, 3.0, 3.9], n)
    roundness = rng.uniform(0.6, 1.0, n)
    angle = rng.uniform(-90.0, 90.0, n)
    fx, fy = fwhm / np.sqrt(roundness), fwhm * np.sqrt(roundness)
    clean = render_stars(shape, star_params("moffat", x, y, flux, fx, fy, angle, np.full(n, 3.0)), model="moffat")
    img = psfkit.Image(data=add_noise(200.0 + clean, gain=GAIN, read_noise=READ_NOISE, rng=rng), gain=GAIN,
                       read_noise=READ_NOISE)
    table = E.measure_with_frame_psf(img, psfkit.find_stars(img, keep_rejected=True), psf)
    table, i = _matched(table, x, y)
    truth = {"fwhm": fwhm[i], "fwhm_x": fx[i], "fwhm_y": fy[i], "roundness": roundness[i], "angle": angle[i]}
    return table, truth


def _pull(table, truth, name):
    diff = np.asarray(table[name], float) - truth[name]
    if name == "angle":
        diff = (diff + 90.0) % 180.0 - 90.0
    return diff / np.asarray(table[f"{name}_err"], float)


@pytest.mark.slow
def test_stars_wider_narrower_and_elongated_than_the_psf(other_shapes):
    table, truth = other_shapes
    assert len(table) > 350
    assert table.meta["shape_model"].startswith("each star's own")
    for name in ("fwhm", "fwhm_x", "fwhm_y"):
        measured = np.asarray(table[name], float)
        for f in (2.4, 3.0, 3.9):  # the PSF's 0.8, 1 and 1.3 times
            group = truth["fwhm"] == f
            assert group.sum() > 80
            assert np.nanmedian(measured[group] / truth[name][group]) == pytest.approx(1.0, abs=0.01), (name, f)
    # the analytic (Gaussian) shape the table kept is 14-20 % wide on these Moffat stars
    assert np.nanmedian(np.asarray(table["fwhm_analytic"], float) / truth["fwhm"]) > 1.1
    for name in ("fwhm", "fwhm_x", "fwhm_y", "roundness", "angle"):
        pull = _pull(table, truth, name)
        ok = np.isfinite(pull)
        assert ok.mean() > 0.97, name
        assert 0.8 <= np.std(pull[ok]) <= 1.2, (name, np.std(pull[ok]))
        assert abs(np.mean(pull[ok])) < 0.2, (name, np.mean(pull[ok]))


@pytest.mark.slow
def test_stars_exactly_the_psf_give_the_psf_shape(moffat_psf):
    psf, img, truth, stars = moffat_psf
    table, i = _matched(E.measure_with_frame_psf(img, stars, psf), np.asarray(truth["x"]), np.asarray(truth["y"]))
    table = table[np.asarray(table["flags"]) == 0]
    assert len(table) > 200
    # fwhm (the contour's area) about the PSF's own; fwhm_x and fwhm_y of round stars are not compared:
    # noise makes a round star's larger axis larger (an eigenvalue's bias), whatever the fit
    own = psf.shape_at(*psf.centre)
    pull = (np.asarray(table["fwhm"], float) - own["fwhm"]) / np.asarray(table["fwhm_err"], float)
    assert 0.8 <= np.nanstd(pull) <= 1.2, np.nanstd(pull)
    assert abs(np.nanmean(pull)) < 0.2, np.nanmean(pull)
    # and about the truth, with its errors (the fit's and the PSF's reading)
    fwhm_pull = (np.asarray(table["fwhm"], float) - 3.0) / np.asarray(table["fwhm_err"], float)
    assert 0.8 <= np.nanstd(fwhm_pull) <= 1.2
    assert np.nanmedian(np.asarray(table["fwhm"], float)) == pytest.approx(3.0, rel=0.005)


@pytest.mark.slow
def test_the_map_of_stars_exactly_the_psf_is_the_identity(moffat_psf):
    from psfkit.psf.stamps import cut_stamps

    psf, img, truth, _ = moffat_psf
    xy = np.column_stack([truth["x"], truth["y"]])
    alone = (cKDTree(xy).query(xy, k=2)[0][:, 1] > 16.0) & (np.asarray(truth["snr"]) > 20)
    x, y, flux = (np.asarray(truth[k], float)[alone] for k in ("x", "y", "flux"))
    assert len(x) > 60
    stamps, inside, origin, _ = cut_stamps(img.data, x, y, 15)
    start = np.column_stack([np.full(len(x), 200.0), flux, x - origin[:, 0], y - origin[:, 1]])
    fit = S.fit_shapes(psf, stamps, start, origin.astype(float), weight_mask=inside, gain=GAIN,
                       read_noise=READ_NOISE / GAIN)
    assert fit.ok.mean() > 0.95
    err = np.sqrt(np.diagonal(fit.covariance, axis1=1, axis2=2))
    z = fit.params[fit.ok, 4:] / err[fit.ok, 4:]
    assert len(z) > 100
    assert np.all(0.8 <= np.std(z, axis=0)) and np.all(np.std(z, axis=0) <= 1.2), np.std(z, axis=0)  # 0.90-0.97
    assert np.all(np.abs(np.mean(z, axis=0)) < 0.25), np.mean(z, axis=0)


def test_shapes_off_keeps_find_columns(moffat_psf):
    psf, img, _, stars = moffat_psf
    table = E.measure_with_frame_psf(img, stars[:40], psf, shapes=False)
    assert np.array_equal(np.asarray(table["fwhm"]), np.asarray(stars["fwhm"][:40]), equal_nan=True)
    assert "fwhm_analytic" not in table.colnames and "shape_model" not in table.meta


def test_arcsec_columns_and_units_follow_the_own_shape(moffat_psf):
    psf, img, _, _ = moffat_psf
    scaled = psfkit.Image(data=img.data, gain=GAIN, read_noise=READ_NOISE, pixel_scale=2.0)
    table = E.measure_with_frame_psf(scaled, psfkit.find_stars(scaled, keep_rejected=True), psf)
    acc = np.asarray(table["accepted"], bool)
    for name in ("fwhm", "fwhm_x", "fwhm_y"):
        for suffix in ("", "_err"):
            own = np.asarray(table[f"{name}{suffix}"], float)[acc]
            assert np.allclose(np.asarray(table[f"{name}_arcsec{suffix}"], float)[acc], 2.0 * own, equal_nan=True)
    assert str(table["fwhm"].unit) == "pix" and str(table["angle"].unit) == "deg"
    assert np.isfinite(np.asarray(table["fwhm"], float)[acc]).mean() > 0.9


def test_the_map_gives_exact_columns():
    """A = R diag(s1, s2) R^T on an elliptical PSF contour: the axes, angle and area of the mapped ellipse."""
    fx, fy, ang = 3.4, 2.6, 20.0
    moments = np.array([[math.sqrt(fx * fy), *S._moments_of_axes(fx, fy, ang)]])
    # a round PSF stretched 1.2 along 50 degrees, 0.9 across it
    m_round = np.array([[3.0, 9 / 16, 9 / 16, 0.0]])
    t = math.radians(50.0)
    r = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    a = r @ np.diag([1.2, 0.9]) @ r.T
    abc = np.array([[a[0, 0] - 1, a[0, 1], a[1, 1] - 1]])
    fit = S.ShapeFit(np.column_stack([np.zeros((1, 4)), abc]), np.eye(7)[None] * 1e-8, np.ones(1), np.ones(1),
                     np.ones(1, bool))
    cols = S.shape_columns(fit, m_round)
    assert cols["fwhm_x"][0] == pytest.approx(3.6, rel=1e-9)
    assert cols["fwhm_y"][0] == pytest.approx(2.7, rel=1e-9)
    assert cols["angle"][0] == pytest.approx(50.0, abs=1e-9)
    assert cols["fwhm"][0] == pytest.approx(3.0 * math.sqrt(1.2 * 0.9), rel=1e-9)
    assert cols["roundness"][0] == pytest.approx(0.75, rel=1e-9)
    # the identity gives the PSF's own
    fit.params[:, 4:] = 0.0
    cols = S.shape_columns(fit, moments)
    assert (cols["fwhm_x"][0], cols["fwhm_y"][0], cols["angle"][0]) == pytest.approx((fx, fy, ang), rel=1e-9)
    # errors: a 1e-4 error on a uniform scale is a 1e-4 relative error on every FWHM, 0.2 % reading added
    fit.covariance[0, 4:, 4:] = np.array([[1, 0, 1], [0, 0, 0], [1, 0, 1]]) * 1e-8
    cols = S.shape_columns(fit, moments)
    assert cols["fwhm_err"][0] == pytest.approx(math.hypot(1e-4, S.FWHM_READING) * math.sqrt(fx * fy), rel=1e-4)
    # a uniform scale leaves the roundness: only the PSF's reading of its two axes is left
    assert cols["roundness_err"][0] == pytest.approx(math.sqrt(2) * S.FWHM_READING * fy / fx, rel=1e-6)


def _varying_psf(moffat_psf):
    """The field's PSF made to vary: a degree-2 polynomial whose linear terms widen it across the frame."""
    psf = moffat_psf[0]
    base = psf.coefficients[0]
    s = psf.size
    t = (np.arange(s) - (s - 1) / 2) / psf.oversampling
    xx, yy = np.meshgrid(t, t)
    widen = -(2 * base + xx * np.gradient(base, axis=1) * psf.oversampling
              + yy * np.gradient(base, axis=0) * psf.oversampling)  # d/ds of P(r / s) / s^2 at s = 1
    coef = np.zeros((6, s, s))
    coef[0], coef[1], coef[5] = base, 0.05 * widen, 0.03 * widen
    return E.FramePSF(coef, psf.oversampling, 2, psf.centre, psf.scale, psf.n_stars, {}, psf.variance,
                      psf.profile_error, psf.flux_error)


@pytest.mark.parametrize("varying", [False, True])
def test_compiled_normal_equations_match_numpy(moffat_psf, varying):
    if not _shape_kernels.available():
        pytest.skip("the compiled kernel is off (PSFKIT_BACKEND=numpy)")  # the numpy path is the one tested
    psf = _varying_psf(moffat_psf) if varying else moffat_psf[0]
    rng = np.random.default_rng(3)
    n, h, w = 40, 15, 13
    data = rng.normal(100.0, 10.0, (n, h * w)) + 5000.0 * np.exp(-rng.uniform(0, 3, (n, h * w)))
    mask = rng.uniform(size=(n, h * w)) > 0.05
    params = np.column_stack([np.full(n, 100.0), rng.uniform(1e3, 1e5, n), rng.uniform(5, 8, n),
                              rng.uniform(6, 9, n), rng.uniform(-0.3, 0.4, n), rng.uniform(-0.2, 0.2, n),
                              rng.uniform(-0.3, 0.4, n)])
    coef = psf.spline_terms()
    terms = psf.terms(rng.uniform(0, 600, n), rng.uniform(0, 600, n))
    kw = dict(oversampling=psf.oversampling, width=w, var_fixed=rng.uniform(0, 5, (n, h * w)),
              psf_var=psf.variance, profile_error=0.02, gain=GAIN, read_noise=4.0)
    old = rng.uniform(0.001, 0.01, (n, h * w))
    ref = S.normal_equations_numpy(coef, terms, data, mask, params, old, **kw)
    got = _shape_kernels.normal_equations(coef, terms, data, mask, params, old, **kw)
    for a, b in zip(ref, got):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12 * np.max(np.abs(a)))


def test_the_whole_fit_compiled_and_numpy_agree(moffat_psf):
    psf, img, truth, _ = moffat_psf
    from psfkit.psf.stamps import cut_stamps

    xy = np.column_stack([truth["x"], truth["y"]])
    alone = cKDTree(xy).query(xy, k=2)[0][:, 1] > 16.0  # no neighbour's light in the stamp
    bright = np.flatnonzero(alone)[np.argsort(-np.asarray(truth["flux"])[alone])][:30]
    x, y, flux = (np.asarray(truth[k], float)[bright] for k in ("x", "y", "flux"))
    stamps, inside, origin, _ = cut_stamps(img.data, x, y, 15)
    start = np.column_stack([np.full(30, 200.0), flux, x - origin[:, 0], y - origin[:, 1]])
    kw = dict(weight_mask=inside, gain=GAIN, read_noise=READ_NOISE / GAIN)
    ref = S.fit_shapes(psf, stamps, start, origin.astype(float), backend="numpy", **kw)
    got = S.fit_shapes(psf, stamps, start, origin.astype(float), **kw)
    assert ref.ok.sum() >= 25 and np.array_equal(ref.ok, got.ok)
    err = np.sqrt(np.diagonal(ref.covariance, axis1=1, axis2=2))
    assert np.all(np.abs(got.params - ref.params)[ref.ok] <= 1e-6 * err[ref.ok])
    assert np.allclose(got.covariance[ref.ok], ref.covariance[ref.ok], rtol=1e-6)


def test_the_fitted_model_keeps_the_flux(moffat_psf):
    """A star drawn with the stretched PSF model at any map sums to its flux (unit sum kept by 1 / det A)."""
    psf = moffat_psf[0]
    n, b = 3, 71
    params = np.array([[0.0, 1000.0, 35.0, 35.0, 0.2, 0.1, -0.15], [0.0, 1000.0, 35.3, 34.6, -0.3, 0.0, -0.3],
                       [0.0, 1000.0, 35.0, 35.0, 0.8, -0.2, 0.1]])
    # the model is the data that leaves no residual: with data 0 the chi-square is sum(model^2) w
    mask = np.ones((n, b * b), bool)
    out = S.normal_equations_numpy(psf.spline_terms(), psf.terms(np.zeros(n), np.zeros(n)), np.zeros((n, b * b)),
                                   mask, params, np.ones((n, b * b)), oversampling=psf.oversampling, width=b,
                                   read_noise=1.0)
    # unit weights, data 0: the residual is -model, and J^T r's background entry is -sum(model)
    assert -out[3][:, 0] == pytest.approx(np.full(n, 1000.0), rel=2e-3)


@pytest.mark.slow
def test_find_with_the_frame_psf_follows_a_varying_psf(tmp_path):
    """The halo-and-varying field: find --model frame gives each star's FWHM, following the PSF's change."""
    import sys
    from pathlib import Path

    from astropy.io import fits
    from astropy.table import Table

    from psfkit.cli import main
    from psfkit.datasets.varying_psf import simulate_varying_field

    sys.path.insert(0, str(Path(__file__).parent))
    from _helpers import true_half_max_fwhm

    data, truth = simulate_varying_field(seed=0)
    image = tmp_path / "field.fits"
    hdu = fits.PrimaryHDU(data.astype(np.float32))
    hdu.header["GAIN"] = GAIN
    hdu.writeto(image)
    out = tmp_path / "stars.ecsv"
    try:
        main(["find", str(image), "--model", "frame", "--gain", str(GAIN), "--read-noise", str(READ_NOISE),
              "-o", str(out)])
    except SystemExit as exc:
        assert exc.code in (0, None)
    table, i = _matched(Table.read(out), np.asarray(truth["x"]), np.asarray(truth["y"]))
    good = np.asarray(table["flags"]) == 0
    table, i = table[good], i[good]
    assert len(table) > 300
    want = np.array([true_half_max_fwhm(float(truth["x"][j]), float(truth["y"][j]), data.shape, truth.meta)
                     for j in i])
    ratio = np.asarray(table["fwhm"], float) / want
    r = np.hypot(np.asarray(truth["x"])[i] - 399.5, np.asarray(truth["y"])[i] - 399.5)
    for lo, hi in ((0, 150), (150, 300), (300, 450), (450, 600)):  # FWHM 3.25 at the centre to 3.8 out there
        ring = (r >= lo) & (r < hi)
        assert ring.sum() > 20
        assert np.nanmedian(ratio[ring]) == pytest.approx(1.0, abs=0.015), (lo, hi)


def test_the_kernel_keeps_the_maps_bounds():
    assert (_shape_kernels._MIN, _shape_kernels._MAX) == (S.MIN_STRETCH, S.MAX_STRETCH)


def test_the_psf_moments_across_a_varying_field_match_its_own_contours(moffat_psf):
    """The varying PSF's shape at each place (the centre's mapped by a fitted linear map) against the
    contour read on the PSF of that place itself."""
    psf = _varying_psf(moffat_psf)
    rng = np.random.default_rng(4)
    x, y = rng.uniform(0, 600, 40), rng.uniform(0, 600, 40)
    got = S._psf_moments_at(psf, x, y)
    for k in range(4):
        ref = S.psf_moments(psf.at(x[k], y[k])[0], psf.oversampling)
        assert got[k, 0] == pytest.approx(ref[0], rel=0.002)
        assert np.allclose(got[k, 1:], ref[1:], rtol=0, atol=0.004 * ref[1])
    far = S.psf_moments(psf.at(600.0, 600.0)[0], psf.oversampling)[0] / S.psf_moments(psf.at(0.0, 0.0)[0],
                                                                                      psf.oversampling)[0]
    assert abs(far - 1) > 0.02  # the field's PSF does change: the test can fail


def test_fit_stars_with_the_frame_psf_gives_each_star_its_own_shape(moffat_psf, tmp_path):
    """A single-star fit with a frame PSF file (as ``psfkit fit --model psf.fits``) reports the star's own
    FWHM (a star 1.3 times the PSF's width reads 1.3 times it), not the PSF's at its place."""
    psf = moffat_psf[0]
    path = tmp_path / "psf.fits"
    psf.write(path)
    rng = np.random.default_rng(8)
    shape = (120, 120)
    x, y = np.array([40.3, 80.6]), np.array([50.2, 70.7])
    fwhm = np.array([3.9, 3.0])
    clean = render_stars(shape, star_params("moffat", x, y, np.full(2, 1e5), fwhm, fwhm, np.zeros(2), np.full(2, 3.0)),
                         model="moffat")
    img = psfkit.Image(data=add_noise(200.0 + clean, gain=GAIN, read_noise=READ_NOISE, rng=rng), gain=GAIN,
                       read_noise=READ_NOISE)
    table = psfkit.fit_stars(img, x, y, model=str(path))
    assert np.allclose(np.asarray(table["fwhm"], float), fwhm, rtol=0.02)
    assert np.allclose(np.asarray(table["fwhm_analytic"], float), 3.0, rtol=0.03)  # the PSF's own at each place
    assert np.all(np.abs(np.asarray(table["fwhm"], float) - fwhm) < 3 * np.asarray(table["fwhm_err"], float) + 0.02)
