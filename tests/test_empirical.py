"""The frame's own PSF (psfkit.psf.empirical): kernels, the FWHM contour, building, fitting, files, CLI."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from _helpers import true_half_max_fwhm

import psfkit
from psfkit.datasets.simulate import simulate_field, star_params
from psfkit.errors import PsfkitError
from psfkit.psf import empirical as E
from psfkit.psf.fit import fit_stars, resolve_model
from psfkit.psf.models import GaussianPSF, MoffatPSF


def _effective_grid(model, params, o=2, reach=12):
    """The pixel-integrated PSF sampled at offsets of 1/o pixel (the truth of an effective PSF grid)."""
    s = 2 * reach * o + 1
    offs = (np.arange(s) - (s - 1) / 2) / o
    xx, yy = np.meshgrid(offs, offs)
    rows = np.repeat(params, xx.size, axis=0)
    rows[:, 0] = 0.0
    rows[:, 2] = -xx.ravel()
    rows[:, 3] = -yy.ravel()
    vals, _ = model.evaluate(rows, (1, 1), k=8)
    return vals.reshape(s, s)


def test_compiled_interpolation_matches_numpy():
    rng = np.random.default_rng(3)
    coef = rng.normal(size=(7, 25, 25))
    u, v = rng.uniform(-2, 26, (7, 200)), rng.uniform(-2, 26, (7, 200))
    for grids in (coef, coef[:1]):
        ref = E.cubic_interpolate(grids, u, v, derivatives=True, backend="numpy")
        got = E.cubic_interpolate(grids, u, v, derivatives=True)
        for a, b in zip(ref, got):
            np.testing.assert_allclose(b, a, atol=1e-12)


def test_spline_reproduces_its_nodes_and_a_smooth_function():
    x = np.arange(31.0)
    grid = np.exp(-0.5 * ((x[None, :] - 15.3) ** 2 + (x[:, None] - 14.8) ** 2) / 9.0)[None]
    coef = E.spline_coefficients(grid)
    u, v = np.meshgrid(np.arange(5.0, 26.0), np.arange(5.0, 26.0))
    np.testing.assert_allclose(E.cubic_interpolate(coef, u.reshape(1, -1), v.reshape(1, -1))[0],
                               grid[0, 5:26, 5:26].ravel(), atol=1e-10)
    # between the nodes, against the function itself
    uf, vf = u.ravel() + 0.37, v.ravel() + 0.61
    truth = np.exp(-0.5 * ((uf - 15.3) ** 2 + (vf - 14.8) ** 2) / 9.0)
    assert np.max(np.abs(E.cubic_interpolate(coef, uf[None], vf[None])[0] - truth)) < 2e-3


@pytest.mark.parametrize("fwhm", [2.0, 3.0, 5.0])
def test_contour_fwhm_of_a_gaussian_effective_psf(fwhm):
    p = star_params("gaussian", [0.0], [0.0], [1.0], [fwhm * 1.2], [fwhm / 1.2], [30.0])
    o = 4 if fwhm / 1.2 < 2.0 else 2  # as build_frame_psf oversamples undersampled stars
    f, fx, fy, angle = E._contour_shape(_effective_grid(GaussianPSF(angle=True), p, o=o), o)
    assert f == pytest.approx(fwhm, rel=0.006)
    assert fx == pytest.approx(fwhm * 1.2, rel=0.006)
    assert fy == pytest.approx(fwhm / 1.2, rel=0.006)
    assert angle == pytest.approx(30.0, abs=1.0)


def test_contour_fwhm_of_a_moffat_effective_psf():
    p = star_params("moffat", [0.0], [0.0], [1.0], [3.0], [3.0], [0.0], 3.0)
    f, fx, fy, _ = E._contour_shape(_effective_grid(MoffatPSF(angle=True), p, reach=15), 2)
    assert f == pytest.approx(3.0, rel=0.005)
    assert fx == pytest.approx(3.0, rel=0.005) and fy == pytest.approx(3.0, rel=0.005)


@functools.lru_cache(maxsize=2)
def _constant_field_stars(model):
    """A 600 x 600 field of 300 stars (FWHM 3, roundness 0.85, angle 30), its truth and find_stars' table."""
    data, truth = simulate_field((600, 600), 300, model=model, fwhm=3.0, roundness=0.85, angle_deg=30.0,
                                 beta=3.0, seed=1, min_separation=8)
    img = psfkit.Image(data=data, gain=1.5, read_noise=6.0)
    return img, truth, psfkit.find_stars(img, keep_rejected=True)


@pytest.fixture(scope="module", params=["gaussian", "moffat"])
def constant_field(request):
    img, truth, stars = _constant_field_stars(request.param)
    psf = E.build_frame_psf(img, stars)
    return request.param, img, truth, psf


@pytest.mark.slow
def test_frame_psf_of_a_constant_field(constant_field):
    model, img, truth, psf = constant_field
    assert psf.degree == 0  # the cross-validation keeps no variation the field does not have
    assert psf.n_stars >= 100
    shape = psf.shape_at(300, 300)
    assert shape["roundness"] == pytest.approx(0.85, abs=0.015)
    assert shape["angle"] == pytest.approx(30.0, abs=3.0)
    assert psf.coefficients[0].sum() == pytest.approx(psf.oversampling**2)
    assert shape["fwhm"] == pytest.approx(3.0, rel=0.01)


@pytest.mark.slow
@pytest.mark.parametrize("subset", ["snr 20-60", "snr 60-150", "all but the brightest"])
def test_frame_psf_shape_does_not_depend_on_the_stars_it_is_built_from(subset):
    # faint stars' grids are noisy at the peak: the half-maximum contour must not follow that noise
    # (a deconvolution of the grid read FWHM 2.46 from the S/N 20-60 stars, 2.56 from 60-150)
    img, truth, stars = _constant_field_stars("moffat")
    acc = stars[np.asarray(stars["accepted"], bool)]
    snr = np.asarray(acc["snr"], float)
    lo, hi = {"snr 20-60": (20, 60), "snr 60-150": (60, 150), "all but the brightest": (20, np.inf)}[subset]
    use = acc[(snr >= lo) & (snr < hi)]
    if subset == "all but the brightest":
        use = use[np.argsort(-np.asarray(use["snr"], float))[1:]]
    psf = E.build_frame_psf(img, use, degree=0)
    assert psf.n_stars >= 25
    shape = psf.shape_at(300, 300)
    # 25-43 faint stars: the grid's own noise moves the contour by about 0.7 % (1 sigma)
    assert shape["fwhm"] == pytest.approx(3.0, rel=0.01 if subset == "all but the brightest" else 0.015)
    assert shape["roundness"] == pytest.approx(0.85, abs=0.03)
    assert shape["angle"] == pytest.approx(30.0, abs=8.0)


@pytest.mark.slow
def test_frame_psf_follows_a_varying_psf_with_a_halo():
    from psfkit.datasets.varying_psf import simulate_varying_field

    data, truth = simulate_varying_field(seed=0)
    img = psfkit.Image(data=data, gain=1.5, read_noise=6.0)
    psf = E.build_frame_psf(img, psfkit.find_stars(img, keep_rejected=True))
    assert psf.degree == 2  # the field's FWHM grows with r^2: the cross-validation keeps the quadratic
    errors = []
    for x in (100.0, 400.0, 700.0):
        for y in (100.0, 400.0, 700.0):
            want = true_half_max_fwhm(x, y, data.shape, truth.meta)
            errors.append(psf.shape_at(x, y)["fwhm"] / want - 1.0)
    assert np.max(np.abs(errors)) < 0.015, np.round(errors, 4)


@pytest.mark.slow
def test_every_star_fitted_with_the_frame_psf_gives_its_total_flux(constant_field):
    model, img, truth, psf = constant_field
    table = fit_stars(img, truth["x"], truth["y"], model=psf.model(), gain=1.5, read_noise=6.0)
    good = np.asarray(truth["snr"]) > 20
    ratio = np.asarray(table["flux_fit"])[good] / np.asarray(truth["flux"])[good]
    # the simulated Moffat stars are drawn out to 99.5 % of their light (psfkit.datasets.simulate)
    expected = 1.0 if model == "gaussian" else 0.997
    assert np.median(ratio) == pytest.approx(expected, abs=0.005)
    assert np.median(np.asarray(table["reduced_chi2"])[good]) < 1.3
    # the Gaussian fit of find_stars, for contrast, misses the Moffat's wings
    if model == "moffat":
        assert np.median(ratio) > 1.1 * 0.85


@pytest.mark.slow
def test_the_psf_file_gives_the_same_fluxes(constant_field, tmp_path):
    _, img, truth, psf = constant_field
    path = tmp_path / "psf.fits"
    psf.write(path)
    from astropy.io import fits

    with fits.open(path) as hdul:
        assert hdul[0].header["OVERSAMP"] == psf.oversampling
        assert hdul[0].data.sum() == pytest.approx(1.0, abs=1e-9)  # unit sum
        assert hdul["PSFVAR"].header["POLYDEG"] == psf.degree
    again = resolve_model(str(path))
    assert isinstance(again, E.FramePSFModel)
    x, y = truth["x"][:40], truth["y"][:40]
    a = fit_stars(img, x, y, model=psf.model(), gain=1.5, read_noise=6.0)
    b = fit_stars(img, x, y, model=str(path), gain=1.5, read_noise=6.0)
    np.testing.assert_allclose(np.asarray(b["flux_fit"]), np.asarray(a["flux_fit"]), rtol=1e-9)


def test_too_few_stars_is_one_line_error():
    data, _ = simulate_field((200, 200), 4, seed=2, flux_range=(5e3, 1e4), min_separation=40, edge=30)
    with pytest.raises(PsfkitError, match="stars"):
        E.build_frame_psf(psfkit.Image(data=data, gain=1.5, read_noise=6.0))


def test_psf_command(tmp_path, capsys):
    from astropy.io import fits

    from psfkit.cli import main

    data, _ = simulate_field((400, 400), 150, model="moffat", fwhm=3.0, beta=3.0, seed=4, min_separation=8)
    image = tmp_path / "field.fits"
    fits.writeto(image, data.astype(np.float32))
    out, png = tmp_path / "psf.fits", tmp_path / "psf.png"
    main(["psf", str(image), "-o", str(out), "--png", str(png), "--degree", "0"])
    assert out.exists() and png.stat().st_size > 10_000
    said = capsys.readouterr().out
    fwhm = float(said.split("FWHM ")[1].split(" px")[0])
    assert fwhm == pytest.approx(3.0, rel=0.03)
    # the input is never an output
    with pytest.raises(SystemExit) as exc:
        main(["psf", str(image), "-o", str(image)])
    assert exc.value.code == 2
    assert fits.getdata(image).shape == (400, 400)


def test_psf_command_on_a_frame_with_too_few_stars(tmp_path, capsys):
    from psfkit.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["psf", str(psfkit.sample_image_path()), "-o", str(tmp_path / "p.fits")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "at least" in err[0]


def test_find_with_the_frame_psf_gives_total_fluxes(tmp_path, capsys):
    from astropy.io import fits
    from astropy.table import Table
    from scipy.spatial import cKDTree

    from psfkit.cli import main

    data, truth = simulate_field((400, 400), 150, model="moffat", fwhm=3.0, beta=3.0, seed=4, min_separation=8)
    image = tmp_path / "field.fits"
    fits.writeto(image, data.astype(np.float32))
    out = tmp_path / "stars.csv"
    main(["find", str(image), "--model", "frame", "-o", str(out)])
    assert "the frame's PSF" in capsys.readouterr().out
    stars = Table.read(out)
    d, i = cKDTree(np.column_stack([truth["x"], truth["y"]])).query(np.column_stack([stars["x_fit"], stars["y_fit"]]))
    good = (d < 1) & (np.asarray(truth["snr"])[i] > 20)
    assert good.sum() > 80
    ratio = np.asarray(stars["flux_fit"])[good] / np.asarray(truth["flux"])[i][good]
    analytic = np.asarray(stars["flux_fit_analytic"])[good] / np.asarray(truth["flux"])[i][good]
    assert np.median(ratio) == pytest.approx(0.997, abs=0.005)  # drawn out to 99.5-99.7 % of the light
    assert np.median(analytic) < 0.9  # the Gaussian misses the Moffat's wings
    with pytest.raises(SystemExit) as exc:
        main(["find", str(image), "--model", "nonsense.fits"])
    assert exc.value.code == 2


def _pulls(img, truth, psf):
    """Pulls (fitted - truth) / error of flux, x and y, the flux ratios and S/N of the stars that
    measure_with_frame_psf gives without a flag, matched to the truth."""
    from scipy.spatial import cKDTree

    table = E.measure_with_frame_psf(img, psfkit.find_stars(img, keep_rejected=True), psf)
    table = table[np.asarray(table["accepted"], bool) & (np.asarray(table["flags"]) == 0)]
    d, i = cKDTree(np.column_stack([truth["x"], truth["y"]])).query(np.column_stack([table["x_fit"],
                                                                                     table["y_fit"]]))
    ok = d < 1
    table, match = table[ok], truth[i[ok]]
    pulls = {name: (np.asarray(table[f"{name}_fit"], float) - np.asarray(match[name], float))
             / np.asarray(table[f"{name}_err"], float) for name in ("flux", "x", "y")}
    ratio = np.asarray(table["flux_fit"], float) / np.asarray(match["flux"], float)
    return pulls, ratio, np.asarray(match["snr"], float)


@pytest.mark.slow
def test_errors_with_the_frame_psf_are_honest(constant_field):
    """Pull std 0.9-1.1 for flux, x and y (the PSF's own uncertainty included), total fluxes."""
    model, img, truth, psf = constant_field
    pulls, ratio, snr = _pulls(img, truth, psf)
    assert len(ratio) > 200 and np.count_nonzero(snr > 300) > 50  # bright stars, where the PSF's error counts
    for name, pull in pulls.items():
        assert 0.9 <= np.std(pull) <= 1.1, (name, np.std(pull))
        assert abs(np.mean(pull)) < 0.2, (name, np.mean(pull))
    assert np.median(ratio[snr > 20]) == pytest.approx(1.0, abs=0.005)


@pytest.fixture(scope="module")
def halo_field():
    from psfkit.datasets.varying_psf import simulate_varying_field

    data, truth = simulate_varying_field((800, 800), 400, seed=1)
    img = psfkit.Image(data=data, gain=1.5, read_noise=6.0)
    return img, truth, E.build_frame_psf(img, psfkit.find_stars(img, keep_rejected=True))


@pytest.mark.slow
def test_errors_with_a_varying_psf_with_a_halo_are_honest(halo_field):
    img, truth, psf = halo_field
    assert psf.degree >= 1
    pulls, ratio, snr = _pulls(img, truth, psf)
    assert len(ratio) > 300
    for name, pull in pulls.items():
        assert 0.9 <= np.std(pull) <= 1.1, (name, np.std(pull))
    assert np.median(ratio[snr > 20]) == pytest.approx(1.0, abs=0.01)


def test_compiled_node_median_matches_numpy():
    rng = np.random.default_rng(5)
    z = rng.standard_t(3, 20_000)
    nodes = rng.integers(0, 900, 20_000)
    nodes[nodes == 7] = 8  # a node with no sample
    ref = E.node_median_mad(z, nodes, 900, backend="numpy")
    got = E.node_median_mad(z, nodes, 900)
    for a, b in zip(ref, got):
        np.testing.assert_array_equal(b, a)
    # against numpy's own median where a node has an odd count
    k = np.bincount(nodes, minlength=900)
    odd = np.flatnonzero(k % 2 == 1)[:5]
    for j in odd:
        assert ref[0][j] == np.median(z[nodes == j])
        assert ref[1][j] == np.median(np.abs(z[nodes == j] - ref[0][j]))


@pytest.mark.parametrize("gain", [1.5, None])
def test_compiled_stacking_pass_matches_numpy(gain):
    """The stacking step's sample pass (residuals, weights, clipping, normal equations per node and per
    group of stars) compiled and in numpy: the same samples kept, the same sums."""
    from psfkit.psf import _empirical_kernels

    if not _empirical_kernels.available():
        pytest.skip("no compiled backend")
    rng = np.random.default_rng(3)
    n, half, o = 40, 7, 2
    b, s = 2 * half + 1, 2 * half * o + 1
    x = rng.uniform(100, 900, n)
    y = rng.uniform(100, 700, n)
    origin = np.column_stack([np.rint(x) - half, np.rint(y) - half])
    yy, xx = np.mgrid[0:b, 0:b]
    dx = xx[None] + origin[:, 0, None, None] - x[:, None, None]
    dy = yy[None] + origin[:, 1, None, None] - y[:, None, None]
    flux = rng.uniform(2e3, 2e5, n)
    sigma = 1.3 * (1 + 0.1 * (x[:, None, None] - 500) / 400)  # a PSF that varies across the field
    stamps = 100.0 + flux[:, None, None] * np.exp(-(dx**2 + dy**2) / (2 * sigma**2)) / (2 * np.pi * sigma**2)
    stamps = stamps + rng.normal(0.0, np.sqrt(stamps / 1.5 + 16.0))
    stamps[3, 2, 2] += 5e4  # a cosmic ray for the clipping
    stamps[5, 0, :] = np.nan  # off the frame
    var = np.where(np.isfinite(stamps), 1.0, np.inf)
    var[7, 10:, 10:] = np.inf  # a masked neighbour
    samples = E._Samples(stamps, var, origin, x, y, flux, np.full(n, 100.0), gain, 4.0, 12.0)
    r2 = ((np.arange(s) - (s - 1) / 2) / o) ** 2
    grid = np.exp(-(r2[:, None] + r2[None, :]) / (2 * 1.3**2))
    grid *= o * o / grid.sum()
    psf = E.FramePSF(grid[None], o, 0, (500.0, 400.0), (500.0, 400.0))
    grids = psf.spline_at(x, y)
    terms = E.FramePSF(np.zeros((6, s, s)), o, 2, (500.0, 400.0), (500.0, 400.0)).terms(x, y)
    groups = np.arange(n) % 4
    keep = rng.random((n, b, b)) > 0.1
    for kw in ({"clip": None}, {"clip": 5.0}, {"clip": 5.0, "keep": keep}, {"clip": 5.0, "groups": groups}):
        t = terms[:, :1] if "groups" not in kw else terms
        ref = E._normal_equations(t, samples, grids, o, s, backend="numpy", **kw)
        got = E._normal_equations(t, samples, grids, o, s, **kw)
        np.testing.assert_array_equal(got[2], ref[2])
        assert ref[2].sum() > 0.8 * n * b * b
        for a, c in zip(got[:2], ref[:2]):
            np.testing.assert_allclose(a, c, rtol=1e-10, atol=1e-12 * np.abs(c).max())
    # the cosmic ray is clipped, and nothing else of that star's core
    ata, atb, kept = E._normal_equations(terms[:, :1], samples, grids, o, s, clip=5.0)
    assert not kept[3, 2, 2] and kept[3, half, half]


def test_peak_of_a_varying_psf_is_its_grids_maximum():
    """FramePSFModel.peak reads the nodes near the centre only: the same as each star's whole grid."""
    s, o = 41, 2
    r2 = ((np.arange(s) - 20.0) / o) ** 2
    g0 = np.exp(-(r2[:, None] + r2[None, :]) / (2 * 1.3**2))
    g1 = 0.3 * g0 * (r2[:, None] + r2[None, :] - 2 * 1.3**2) / 1.3**2  # the width changes across the field
    coef = np.stack([g0, g1, 0.2 * g1])
    coef *= o * o / g0.sum()
    psf = E.FramePSF(coef, o, 1, (500.0, 400.0), (500.0, 400.0))
    rng = np.random.default_rng(1)
    n = 30
    p = np.column_stack([np.zeros(n), rng.uniform(1e3, 1e5, n), rng.uniform(5, 10, n), rng.uniform(5, 10, n),
                         rng.uniform(0, 990, n), rng.uniform(0, 790, n)])
    want = p[:, 1] * psf.at(p[:, 2] + p[:, 4], p[:, 3] + p[:, 5]).max(axis=(1, 2))
    np.testing.assert_allclose(psf.model().peak(p), want, rtol=1e-12)
    peaks = want / p[:, 1]
    assert np.ptp(peaks) > 0.02 * peaks.mean()  # the peak does vary across the field


@pytest.mark.parametrize("degree", [0, 1])
def test_compiled_drawing_of_stars_matches_numpy(degree):
    """add_stars compiled and in numpy: the same image, stars cut by the frame's edges included."""
    from psfkit.psf import _empirical_kernels

    if not _empirical_kernels.available():
        pytest.skip("no compiled backend")
    s, o = 41, 2
    r2 = ((np.arange(s) - 20.0) / o) ** 2
    g0 = np.exp(-(r2[:, None] + r2[None, :]) / (2 * 1.3**2))
    coef = np.stack([g0, 0.2 * g0 * (r2[:, None] + r2[None, :] - 2 * 1.3**2) / 1.3**2, 0.1 * g0])[: 1 + 2 * degree]
    coef *= o * o / g0.sum()
    psf = E.FramePSF(coef, o, degree, (60.0, 40.0), (60.0, 40.0))
    rng = np.random.default_rng(2)
    x, y = rng.uniform(-5, 125, 60), rng.uniform(-5, 85, 60)
    flux = rng.uniform(1e2, 1e5, 60)
    flux[3] = np.nan  # skipped
    start = rng.normal(0.0, 1.0, (80, 120))
    ref = E.add_stars(start.copy(), psf, x, y, flux, sign=-1.0, backend="numpy")
    got = E.add_stars(start.copy(), psf, x, y, flux, sign=-1.0)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-9)
    assert np.abs(ref - start).sum() > 1e5


@pytest.mark.slow
def test_the_fitting_models_fwhm_across_a_varying_field_is_each_places_own_contour(halo_field):
    """FramePSFModel's FWHM (what fit tables report for a varying frame PSF: sqrt(fwhm_x fwhm_y)) at 9
    places of the varying field with a halo against the contour read on the PSF of each place itself,
    for a few stars (each place's map fitted on its own) and among many (maps on a grid over their
    extent, a spline between).  A global cubic surface read it 3.2 % narrow at the centre."""
    _, _, psf = halo_field
    assert psf.degree > 0
    g = np.array([100.0, 400.0, 700.0])
    x, y = (a.ravel() for a in np.meshgrid(g, g))
    rng = np.random.default_rng(3)
    many_x = np.concatenate([x, rng.uniform(0, 800, 40)])
    many_y = np.concatenate([y, rng.uniform(0, 800, 40)])
    model = psf.model()
    want = np.array([[psf.shape_at(a, b)[k] for k in ("fwhm_x", "fwhm_y")] for a, b in zip(x, y)])
    want = np.sqrt(want[:, 0] * want[:, 1])
    assert np.ptp(want) / np.median(want) > 0.1  # the PSF does change across the field
    # the linear map misses a little of the halo's change at the corners (0.6 %; the grid's spline 1.2 %)
    for (px, py), tol in (((x, y), 0.0075), ((many_x, many_y), 0.015)):
        params = np.zeros((len(px), 6))
        params[:, 1], params[:, 2], params[:, 3] = 1.0, px, py
        fx, fy = (v[:9] for v in model.fwhm_and_gradient(params)[:2])
        np.testing.assert_allclose(np.sqrt(fx * fy), want, rtol=tol)
