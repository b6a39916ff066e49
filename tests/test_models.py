"""The PSF models against numerical truth: flux integrals, FWHM, Jacobians, pixel integration.

Every formula of ``psfkit.psf.models`` is checked against an independent numerical
computation made here (grid sums, finite differences, the exact erf integral),
never against a stored number.
"""

from __future__ import annotations

import numpy as np
import pytest

from psfkit.psf.models import (
    FWHM_PER_SIGMA,
    GaussianPSF,
    ImagePSF,
    MoffatPSF,
    subsampling_for_fwhm,
)


def _grid_sum(model, params, half, *, strip=61):
    """Sum of the model's pixel values (background 0) over a (2 half + 1)^2 grid centred on the star.

    Evaluated in strips of rows (shifting y0) to keep memory small.
    """
    p = np.array(params, dtype=float)[None].copy()
    p[0, 0] = 0.0
    size = 2 * half + 1
    x0, y0 = p[0, 2], p[0, 3]
    total = 0.0
    for row0 in range(0, size, strip):
        rows = min(strip, size - row0)
        q = p.copy()
        q[0, 2] = x0 + half
        q[0, 3] = y0 + half - row0
        vals, _ = model.evaluate(q, (rows, size))
        total += float(vals.sum())
    return total


# ---------------------------------------------------------------- flux formulas
@pytest.mark.parametrize("angle_deg", [0.0, 35.0])
def test_gaussian_flux_equals_grid_sum(angle_deg):
    m = GaussianPSF()
    sx, sy = 1.7, 0.9
    p = np.array([0.0, 250.0, 0.3, -0.2, sx, sy, np.radians(angle_deg)])
    flux = m.flux_and_gradient(p[None])[0][0]
    assert flux == pytest.approx(2 * np.pi * 250.0 * sx * sy, rel=1e-12)
    total = _grid_sum(m, p, half=25)  # > 14 sigma: the tail is < 1e-40
    assert total == pytest.approx(flux, rel=2e-7)


@pytest.mark.parametrize("beta", [1.5, 2.5, 4.0, 6.0])
def test_moffat_flux_equals_grid_sum_plus_bracketed_tail(beta):
    """Grid sum of the pixel-integrated Moffat vs pi A ax ay / (beta - 1).

    The Moffat's wings are heavy (beta = 1.5 leaves ~0.3 % outside 300 px), so
    the flux outside the grid is bracketed exactly: the flux inside the ellipse
    q = x'^2/ax^2 + y'^2/ay^2 < Q^2 is F (1 - (1 + Q^2)^(1 - beta)), and the
    square grid holds the ellipse with Q = L / max(ax, ay) and lies inside the
    one with Q = L sqrt(2) / min(ax, ay).
    """
    m = MoffatPSF()
    ax, ay = 1.2, 0.9
    p = np.array([0.0, 80.0, 0.25, 0.4, ax, ay, np.radians(-20.0), beta])
    flux = m.flux_and_gradient(p[None])[0][0]
    half = 300 if beta < 2 else 60
    total = _grid_sum(m, p, half=half)
    L = half + 0.5
    inside_lo = 1.0 - (1.0 + (L / max(ax, ay)) ** 2) ** (1.0 - beta)
    inside_hi = 1.0 - (1.0 + (L * np.sqrt(2.0) / min(ax, ay)) ** 2) ** (1.0 - beta)
    assert inside_lo * (1 - 1e-6) <= total / flux <= inside_hi * (1 + 1e-6)
    if beta < 2:
        assert inside_hi < 0.999  # the bracket is tight enough to catch a wrong formula
        assert inside_hi - inside_lo < 2.5e-3


def test_moffat_flux_formula_fails_for_a_wrong_beta_term():
    """Sanity of the bracket above: a 10 % error in the flux would be caught."""
    m = MoffatPSF()
    p = np.array([0.0, 80.0, 0.0, 0.0, 1.2, 0.9, 0.0, 3.0])
    total = _grid_sum(m, p, half=40)
    flux = m.flux_and_gradient(p[None])[0][0]
    assert abs(total / flux - 1.0) < 1e-5
    assert abs(total / (np.pi * 80.0 * 1.2 * 0.9 / 3.0) - 1.0) > 0.3  # beta instead of beta - 1


@pytest.mark.parametrize("oversampling", [1, 2])
def test_image_psf_flux_is_total_flux(oversampling):
    """An ImagePSF from any normalisation: the model's pixel sum is its flux parameter."""
    o = oversampling
    g = GaussianPSF()
    s = 2.0
    n = 31 * o
    # the PRF sampled at the oversampled grid, centred on the array centre
    c = (n - 1) / 2.0
    prm = np.array([[0.0, 1.0, c, c, s * o, s * o * 0.8, 0.3]])
    arr = g.evaluate(prm, (n, n))[0].reshape(n, n)
    for scaled in (arr / arr.max(), arr / arr.sum(), 37.0 * arr):
        m = ImagePSF(scaled, oversampling=o)
        # integer shift: the samples themselves
        p = np.array([0.0, 5000.0, 20.0, 20.0])
        vals = m.evaluate(p[None], (41, 41))[0]
        assert vals.sum() == pytest.approx(5000.0, rel=2e-4)
        # sub-pixel shift: the spline keeps the sum
        p2 = np.array([0.0, 5000.0, 20.37, 19.81])
        vals2 = m.evaluate(p2[None], (41, 41))[0]
        assert vals2.sum() == pytest.approx(5000.0, rel=2e-3)
        assert m.flux_and_gradient(p2[None])[0][0] == 5000.0


def test_image_psf_normalisation_detected():
    g = GaussianPSF()
    arr = g.evaluate(np.array([[0.0, 1.0, 12.0, 12.0, 2.0, 2.0, 0.0]]), (25, 25))[0].reshape(25, 25)
    assert ImagePSF(arr / arr.max()).normalisation.kind == "unit peak"
    assert ImagePSF(arr / arr.sum()).normalisation.kind == "unit sum"
    assert ImagePSF(3.0 * arr / arr.sum()).normalisation.kind == "other"
    a = ImagePSF(arr / arr.max())
    b = ImagePSF(arr / arr.sum())
    p = np.array([[10.0, 1234.0, 12.3, 11.6]])
    np.testing.assert_allclose(a.evaluate(p, (25, 25))[0], b.evaluate(p, (25, 25))[0], rtol=1e-12)


# ---------------------------------------------------------------- FWHM
@pytest.mark.parametrize("beta", [None, 1.5, 3.0, 6.0])
def test_fwhm_is_the_full_width_at_half_maximum(beta):
    """The point-sampled profile at +-FWHM/2 along each axis is half the amplitude."""
    if beta is None:
        m = GaussianPSF(sampling="point")
        p = np.array([[0.0, 1.0, 0.0, 0.0, 1.3, 0.7, 0.6]])
    else:
        m = MoffatPSF(sampling="point")
        p = np.array([[0.0, 1.0, 0.0, 0.0, 1.3, 0.7, 0.6, beta]])
    fx, fy = (v[0] for v in m.fwhm_and_gradient(p)[:2])
    t = 0.6
    for f, (ux, uy) in ((fx, (np.cos(t), np.sin(t))), (fy, (-np.sin(t), np.cos(t)))):
        xs = np.array([0.5 * f * ux, -0.5 * f * ux])
        ys = np.array([0.5 * f * uy, -0.5 * f * uy])
        val, _ = m._point(p, xs, ys, np.ones(p.shape[1], bool), False)
        np.testing.assert_allclose(val[0], 0.5, rtol=1e-12)
    if beta is None:
        assert fx == pytest.approx(FWHM_PER_SIGMA * 1.3)


# ---------------------------------------------------------------- Jacobians
def _fd_jacobian(model, params, shape, free, k, h=1e-6):
    cols = []
    for i in np.flatnonzero(free):
        step = h * max(1.0, abs(params[0, i]))
        up, dn = params.copy(), params.copy()
        up[0, i] += step
        dn[0, i] -= step
        vu = model.evaluate(up, shape, free=free, k=k)[0]
        vd = model.evaluate(dn, shape, free=free, k=k)[0]
        cols.append((vu - vd) / (2 * step))
    return np.stack(cols, axis=-1)


JAC_CASES = [
    ("gaussian exact erf (axis-aligned)", GaussianPSF(), [12.0, 300.0, 7.3, 6.8, 1.4, 0.8, 0.0], "no-angle"),
    ("gaussian rotated, integrated", GaussianPSF(), [12.0, 300.0, 7.3, 6.8, 1.4, 0.8, 0.5], None),
    ("gaussian rotated, point", GaussianPSF(sampling="point"), [12.0, 300.0, 7.3, 6.8, 1.4, 0.8, -1.1], None),
    ("moffat rotated, integrated", MoffatPSF(), [5.0, 200.0, 6.6, 7.4, 2.1, 1.5, 0.7, 2.7], None),
    ("moffat low beta, point", MoffatPSF(sampling="point"), [5.0, 200.0, 6.6, 7.4, 2.1, 1.5, -0.3, 1.6], None),
]


@pytest.mark.parametrize("name,model,params,mode", JAC_CASES, ids=[c[0] for c in JAC_CASES])
def test_jacobian_matches_finite_differences(name, model, params, mode):
    p = np.array([params], dtype=float)
    free = np.ones(model.n_params, dtype=bool)
    if mode == "no-angle":
        free[model.i_angle] = False
    shape = (15, 14)
    k = int(model.subsampling(p)[0])
    _, jac = model.evaluate(p, shape, free=free, jacobian=True, k=k)
    fd = _fd_jacobian(model, p, shape, free, k)
    scale = np.abs(fd).max(axis=1, keepdims=True)  # per column
    np.testing.assert_allclose(jac / scale, fd / scale, atol=2e-6)


def test_image_psf_jacobian_matches_finite_differences():
    g = GaussianPSF()
    arr = g.evaluate(np.array([[0.0, 1.0, 12.0, 12.0, 2.2, 1.6, 0.4]]), (25, 25))[0].reshape(25, 25)
    m = ImagePSF(arr)
    p = np.array([[3.0, 900.0, 9.37, 8.72]])
    free = np.ones(4, dtype=bool)
    _, jac = m.evaluate(p, (19, 19), free=free, jacobian=True)
    fd = _fd_jacobian(m, p, (19, 19), free, 1, h=1e-7)
    scale = np.abs(fd).max(axis=1, keepdims=True)
    np.testing.assert_allclose(jac / scale, fd / scale, atol=1e-5)


@pytest.mark.parametrize("model,params", [
    (GaussianPSF(), [1.0, 300.0, 0.0, 0.0, 1.4, 0.8, 0.5]),
    (MoffatPSF(), [1.0, 200.0, 0.0, 0.0, 2.1, 1.5, 0.7, 2.7]),
])
def test_flux_and_fwhm_gradients_match_finite_differences(model, params):
    p = np.array([params], dtype=float)
    funcs = {
        "flux": lambda q: model.flux_and_gradient(q)[0][0],
        "fwhm_x": lambda q: model.fwhm_and_gradient(q)[0][0],
        "fwhm_y": lambda q: model.fwhm_and_gradient(q)[1][0],
    }
    grads = {
        "flux": model.flux_and_gradient(p)[1][0],
        "fwhm_x": model.fwhm_and_gradient(p)[2][0],
        "fwhm_y": model.fwhm_and_gradient(p)[3][0],
    }
    for key, f in funcs.items():
        fd = np.zeros(p.shape[1])
        for i in range(p.shape[1]):
            h = 1e-6 * max(1.0, abs(p[0, i]))
            up, dn = p.copy(), p.copy()
            up[0, i] += h
            dn[0, i] -= h
            fd[i] = (f(up) - f(dn)) / (2 * h)
        np.testing.assert_allclose(grads[key], fd, rtol=1e-6, atol=1e-8 * np.abs(fd).max(), err_msg=key)


# ---------------------------------------------------------------- pixel integration
@pytest.mark.parametrize("fwhm_minor", [0.9, 1.1, 1.3, 1.6, 2.0, 2.6, 3.2, 4.5, 6.0, 8.5, 12.0])
def test_gauss_legendre_matches_exact_erf_integral(fwhm_minor):
    """The Gauss-Legendre pixel integral of the rotated-model code path (angle 0, angle free)
    agrees with the exact erf integral of the axis-aligned Gaussian to ~1e-5 of the peak,
    with the default number of nodes ``subsampling_for_fwhm``."""
    m = GaussianPSF()
    s = fwhm_minor / FWHM_PER_SIGMA
    free_rot = np.ones(7, dtype=bool)
    free_axis = free_rot.copy()
    free_axis[6] = False
    k = int(subsampling_for_fwhm(fwhm_minor))
    worst = 0.0
    for off in np.linspace(0.0, 0.5, 6):
        for ratio in (1.0, 2.0):
            p = np.array([[0.0, 1.0, 15.0 + off, 15.0 + 0.7 * off, ratio * s, s, 0.0]])
            exact, _ = m.evaluate(p, (31, 31), free=free_axis)
            gl, _ = m.evaluate(p, (31, 31), free=free_rot)
            gl_k, _ = m.evaluate(p, (31, 31), free=free_rot, k=k)
            np.testing.assert_array_equal(gl, gl_k)  # the default is subsampling_for_fwhm
            worst = max(worst, float(np.abs(gl - exact).max() / exact.max()))
    assert worst <= 1.2e-5


@pytest.mark.parametrize("beta", [1.5, 2.5, 5.0])
@pytest.mark.parametrize("fwhm_minor", [1.0, 1.5, 2.2, 3.5, 6.0, 9.0])
def test_moffat_pixel_integration_accuracy(beta, fwhm_minor):
    """The Moffat's default Gauss-Legendre order is within ~1e-5 of the peak of a 16-node rule."""
    m = MoffatPSF()
    a = float(MoffatPSF.widths_from_fwhm(fwhm_minor, np.array(beta)))
    worst = 0.0
    for off in (0.0, 0.2, 0.5):
        p = np.array([[0.0, 1.0, 15.0 + off, 15.0 + 0.7 * off, 2 * a, a, 0.4, beta]])
        ref, _ = m.evaluate(p, (31, 31), k=16)
        val, _ = m.evaluate(p, (31, 31))
        worst = max(worst, float(np.abs(val - ref).max() / ref.max()))
    assert worst <= 1.5e-5


def test_integrated_differs_from_point_sampling_when_undersampled():
    """The pixel integral is not the point sample: at FWHM 1.2 px the peak pixel differs by > 10 %."""
    s = 1.2 / FWHM_PER_SIGMA
    p = np.array([[0.0, 1.0, 5.0, 5.0, s, s, 0.0]])
    integ = GaussianPSF().evaluate(p, (11, 11))[0]
    point = GaussianPSF(sampling="point").evaluate(p, (11, 11))[0]
    assert point.max() / integ.max() > 1.1
    # both hold the same total flux
    assert integ.sum() == pytest.approx(2 * np.pi * s * s, rel=1e-6)
