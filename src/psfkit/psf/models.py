"""PSF models: value, analytic Jacobian, total flux and FWHM, in one place.

Every model works on a batch: ``params`` has shape ``(N, n_params)`` and the
model is evaluated on the pixel grid of a stamp of shape ``(h, w)`` whose pixel
centres are at integer local coordinates ``x = 0 .. w-1`` (columns) and
``y = 0 .. h-1`` (rows).  Values come back flattened, shape ``(N, h*w)``, and
the Jacobian (when asked) has shape ``(N, h*w, n_free)`` for the free
parameters only.

Sampling
--------
``sampling="integrated"`` (the default) returns the integral of the profile
over each pixel's area, which is what a detector records; the point-sampled
value (``sampling="point"``) biases FWHM and flux of undersampled stars.  For
the axis-aligned Gaussian the pixel integral is exact (a product of two erf
differences).  For the rotated Gaussian whose minor-axis FWHM is at least
``ANALYTIC_MIN_FWHM`` (2.2 px) it is analytic: the pixel box convolved with
the Gaussian is the Gaussian of covariance ``Sigma + I/12`` (the box's second
moment) times a correction for the box's 4th and 6th cumulants (``-1/120``,
``1/252``), ``1 + sum_axis (k4/4! He4 + k6/6! He6)`` (:meth:`GaussianPSF._box_correction`),
one exponential per pixel, within 1e-5 of the peak (``k = 0`` in
:func:`subsampling_for_fwhm`).  Narrower Gaussians and the Moffat use a
Gauss-Legendre product rule with ``k x k`` nodes per pixel, ``k`` chosen from
the star's width so that the relative error of the model stays below about
1e-5 of the peak.

Formulas
--------
Gaussian: ``f = B + A exp(-(x'^2/(2 sx^2) + y'^2/(2 sy^2)))``, FWHM = 2 sqrt(2 ln 2) s,
flux = 2 pi A sx sy.
Moffat: ``f = B + A (1 + x'^2/ax^2 + y'^2/ay^2)^-beta``, FWHM = 2 a sqrt(2^(1/beta) - 1),
flux = pi A ax ay / (beta - 1).
with ``x' = (x-x0) cos t + (y-y0) sin t`` and ``y' = -(x-x0) sin t + (y-y0) cos t``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "PSFModel",
    "GaussianPSF",
    "MoffatPSF",
    "ImagePSF",
    "LorentzianPSF",
    "FWHM_PER_SIGMA",
    "subsampling_for_fwhm",
    "gauss_legendre_offsets",
    "ANALYTIC_MIN_FWHM",
    "get_model",
]

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))  # 2.35482...
_SQRT2 = math.sqrt(2.0)
_SQRT2PI = math.sqrt(2.0 * math.pi)


#: minor-axis FWHM (px) from which the rotated Gaussian's pixel integral is the analytic
#: cumulant expansion (k = 0) rather than a Gauss-Legendre rule: its error is below 1e-5 of the peak
ANALYTIC_MIN_FWHM = 2.2


def _gauss_legendre_nodes_for_fwhm(fwhm_minor: np.ndarray | float) -> np.ndarray:
    """Gauss-Legendre nodes per pixel axis (the Moffat's rule, and the Gaussian's below 2.2 px).

    8 nodes below FWHM 1.0 px, 6 below 1.3, 5 below 1.8, 4 below 3, 3 below 8, 2 above: the
    pixel integral of a Gaussian or Moffat (beta >= 1.5) is then accurate to about 1e-5 of the peak.
    """
    f = np.asarray(fwhm_minor, dtype=float)
    k = np.full(f.shape, 2, dtype=int)
    k = np.where(f < 8.0, 3, k)
    k = np.where(f < 3.0, 4, k)
    k = np.where(f < 1.8, 5, k)
    k = np.where(f < 1.3, 6, k)
    k = np.where(f < 1.0, 8, k)
    return k


def subsampling_for_fwhm(fwhm_minor: np.ndarray | float) -> np.ndarray:
    """Pixel-integration order of the Gaussian for a star whose minor-axis FWHM is given.

    ``0`` means the analytic integral (moment-matched Gaussian with the box's 4th and 6th
    cumulant corrections, one exponential per pixel), used from ``ANALYTIC_MIN_FWHM`` = 2.2 px;
    below that, the number of Gauss-Legendre nodes per pixel axis: 4 below 2.2 px, 5 below 1.8,
    6 below 1.3, 8 below 1.0.  Either way the pixel integral is accurate to about 1e-5 of the
    peak (checked in the tests against the exact erf integral and a 16-node rule).  The Moffat
    always uses Gauss-Legendre nodes (4 below 3 px, 3 below 8, 2 above).
    """
    f = np.asarray(fwhm_minor, dtype=float)
    return np.where(f >= ANALYTIC_MIN_FWHM, 0, _gauss_legendre_nodes_for_fwhm(f)).astype(int)


@functools.lru_cache(maxsize=16)
def _leggauss(k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k-node Gauss-Legendre rule of numpy, computed once per k.

    It is an eigenproblem each call otherwise: a tenth of a small frame's Moffat fits.  Callers get
    fresh arrays, never these.
    """
    return np.polynomial.legendre.leggauss(k)


def gauss_legendre_offsets(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Offsets in [-0.5, 0.5] and weights summing to 1 of a k-node Gauss-Legendre rule."""
    nodes, weights = _leggauss(int(k))
    return nodes * 0.5, weights * 0.5


_ERFC = np.frompyfunc(math.erfc, 1, 1)


def _erfc(v: np.ndarray) -> np.ndarray:
    """The complementary error function, element by element (the C library's, as the compiled
    engine's; the arguments are pixel edges, a few per star: no scipy.special to import).
    """
    return _ERFC(np.asarray(v, dtype=float)).astype(float)


def _phi_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Phi(b) - Phi(a) for a < b, accurate in both tails (the compiled engine's ``_erf_axis``:
    one erfc per edge, of its small tail 2 Phi(-|u|)).
    """
    ta, tb = _erfc(np.abs(a) / _SQRT2), _erfc(np.abs(b) / _SQRT2)
    d_upper = 0.5 * (ta - tb)  # a > 0: both upper tails
    d_lower = 0.5 * (np.where(b <= 0, tb, 2.0 - tb) - ta)
    return np.where(a > 0, d_upper, d_lower)


def _jacobian(free: np.ndarray, columns: tuple) -> np.ndarray:
    """The Jacobian (N, pixels, n_free): the columns of the free parameters, each computed only when free.

    ``columns`` holds one function per parameter, in the model's order, returning its column.
    """
    return np.stack([column() for column, f in zip(columns, free) if f], axis=-1)


def _std_normal_pdf(u: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * u * u) / _SQRT2PI


class PSFModel:
    """Base class of the batched PSF models.

    Subclasses define ``param_names``, the bounds, :meth:`_point` (value and
    Jacobian of the point-sampled profile at arbitrary coordinates),
    :meth:`flux_and_gradient` and :meth:`fwhm_and_gradient`.

    Examples
    --------
    Every model evaluates a batch of parameter rows on stamps of one shape:

    >>> import numpy as np
    >>> model = GaussianPSF()
    >>> params = np.array([[0.0, 100.0, 7.0, 7.0, 1.5, 1.5, 0.0]])  # B, A, x0, y0, sigma_x, sigma_y, angle
    >>> values, jacobian = model.evaluate(params, (15, 15))
    >>> values.shape, jacobian is None
    ((1, 225), True)
    """

    name: str = "base"
    param_names: tuple[str, ...] = ()
    #: index of the parameters with a standard meaning
    i_background = 0
    i_x0 = 2
    i_y0 = 3

    def __init__(self, *, sampling: str = "integrated") -> None:
        if sampling not in ("integrated", "point"):
            raise ValueError(f"sampling must be 'integrated' or 'point', not {sampling!r}")
        self.sampling = sampling

    # ---- description -------------------------------------------------
    @property
    def n_params(self) -> int:
        """Number of parameters, ``len(param_names)``."""
        return len(self.param_names)

    def index(self, name: str) -> int:
        """Position of parameter ``name`` in ``param_names``."""
        return self.param_names.index(name)

    def default_free(self) -> np.ndarray:
        """Boolean mask of the parameters fitted by default."""
        return np.ones(self.n_params, dtype=bool)

    def bounds(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds, each of shape (n, n_params)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sampling={self.sampling!r})"

    # ---- evaluation --------------------------------------------------
    def subsampling(self, params: np.ndarray) -> np.ndarray:
        """Gauss-Legendre nodes per axis for each star (1 for point sampling)."""
        n = params.shape[0]
        if self.sampling == "point":
            return np.ones(n, dtype=int)
        fx, fy = self.fwhm_and_gradient(params)[:2]
        return _gauss_legendre_nodes_for_fwhm(np.minimum(fx, fy))

    def evaluate(
        self,
        params: np.ndarray,
        shape: tuple[int, int],
        *,
        free: np.ndarray | None = None,
        jacobian: bool = False,
        k: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Model values (and Jacobian) on a stamp grid.

        Parameters
        ----------
        params : ndarray, shape (N, n_params)
        shape : (h, w)
            Stamp shape; pixel centres at integer local coordinates.
        free : ndarray of bool, shape (n_params,), optional
            Columns of the Jacobian to return (default: all).
        jacobian : bool
            Also return the Jacobian.
        k : int, optional
            Gauss-Legendre nodes per pixel axis; default: the largest of
            :meth:`subsampling` over the batch (1 for point sampling).

        Returns
        -------
        values : ndarray, shape (N, h*w)
        jac : ndarray, shape (N, h*w, n_free) or None
        """
        params = np.asarray(params, dtype=float)
        if free is None:
            free = np.ones(self.n_params, dtype=bool)
        h, w = shape
        yy, xx = np.mgrid[0:h, 0:w]
        xs = xx.ravel().astype(float)
        ys = yy.ravel().astype(float)
        if k is None:
            k = int(self.subsampling(params).max()) if len(params) else 1
        if self.sampling == "point" or k <= 1:
            return self._point(params, xs, ys, free, jacobian)
        off, wts = gauss_legendre_offsets(k)
        ox, oy = np.meshgrid(off, off)
        ww = np.outer(wts, wts).ravel()
        xs_s = (xs[:, None] + ox.ravel()[None, :]).ravel()
        ys_s = (ys[:, None] + oy.ravel()[None, :]).ravel()
        val, jac = self._point(params, xs_s, ys_s, free, jacobian)
        npix, ns = xs.size, k * k
        val = val.reshape(len(params), npix, ns) @ ww
        if jac is not None:
            jac = np.einsum("nmsp,s->nmp", jac.reshape(len(params), npix, ns, -1), ww)
        return val, jac

    def _point(self, params, xs, ys, free, jacobian):  # pragma: no cover - abstract
        raise NotImplementedError

    # ---- derived quantities -----------------------------------------
    def flux_and_gradient(self, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Total flux (integral over the plane, above the background) and its gradient (N, n_params)."""
        raise NotImplementedError

    def fwhm_and_gradient(self, params: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """FWHM along the model's own x' and y' axes, and their gradients."""
        raise NotImplementedError

    def peak(self, params: np.ndarray) -> np.ndarray:
        """Peak value above the background of the continuous profile."""
        return params[:, 1]

    def params_from_shape(
        self, x0: Any, y0: Any, fwhm_x: Any = None, fwhm_y: Any = None, angle_deg: Any = 0.0, *,
        flux: Any = None, amplitude: Any = None, beta: Any = None, background: Any = 0.0,
    ) -> np.ndarray:
        """Parameter rows (N, n_params) from physical quantities: the one conversion every caller uses.

        Parameters
        ----------
        x0, y0 : float or array (N,)
            Centre in the stamp's pixels.
        fwhm_x, fwhm_y : float or array, optional
            FWHM (px) along the model's own axes (ignored by models without a shape parameter).
        angle_deg : float or array
            Angle of the x' axis, degrees counter-clockwise from +x.
        flux : float or array, optional
            The model's ``flux`` (see :meth:`flux_and_gradient`): the amplitude follows from it.
        amplitude : float or array, optional
            The amplitude itself, instead of ``flux``.
        beta : float or array, optional
            The Moffat's beta (default: the model's fixed beta).
        background : float or array

        Returns
        -------
        ndarray (N, n_params)

        Examples
        --------
        >>> p = GaussianPSF().params_from_shape(10.0, 12.0, 3.0, 3.0, flux=1000.0)
        >>> round(float(GaussianPSF().flux_and_gradient(p)[0][0]), 6)
        1000.0
        """
        raise NotImplementedError


class _EllipticalModel(PSFModel):
    """Shared geometry of the elliptical analytic models (Gaussian, Moffat)."""

    i_amplitude = 1
    i_width_x = 4
    i_width_y = 5
    i_angle = 6

    def __init__(self, *, angle: bool = True, sampling: str = "integrated") -> None:
        super().__init__(sampling=sampling)
        self.angle = bool(angle)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(angle={self.angle}, sampling={self.sampling!r})"

    def default_free(self) -> np.ndarray:
        """Parameters fitted by default: see :meth:`PSFModel.default_free`."""
        free = np.ones(self.n_params, dtype=bool)
        free[self.i_angle] = self.angle
        return free

    def params_from_shape(self, x0, y0, fwhm_x=None, fwhm_y=None, angle_deg=0.0, *, flux=None, amplitude=None,
                          beta=None, background=0.0):
        if (flux is None) == (amplitude is None):
            raise ValueError("give the flux or the amplitude (one of them)")
        level = flux if amplitude is None else amplitude
        x0, y0, level, fx, fy, ang, bkg = np.broadcast_arrays(*(np.atleast_1d(np.asarray(v, dtype=float)) for v in (
            x0, y0, level, fwhm_x, fwhm_y, angle_deg, background)))
        p = np.zeros((x0.size, self.n_params))
        p[:, 0], p[:, 2], p[:, 3], p[:, self.i_angle] = bkg, x0, y0, np.radians(ang)
        if self.n_params > 7:  # Moffat, Lorentzian
            b = getattr(self, "fixed_beta", None) if beta is None else beta
            p[:, 7] = np.broadcast_to(np.asarray(b, dtype=float), (x0.size,))
        p[:, self.i_width_x] = self.widths_from_fwhm(fx, p[:, -1])
        p[:, self.i_width_y] = self.widths_from_fwhm(fy, p[:, -1])
        p[:, 1] = level if flux is None else self._amplitude_for_flux(p, level)
        return p

    def _amplitude_for_flux(self, params: np.ndarray, flux: np.ndarray) -> np.ndarray:
        """The amplitude that gives these shape parameters the model's ``flux``."""
        unit = params.copy()
        unit[:, 1] = 1.0
        return flux / self.flux_and_gradient(unit)[0]

    @staticmethod
    def _rotated(params, xs, ys):
        c = np.cos(params[:, 6])[:, None]
        s = np.sin(params[:, 6])[:, None]
        dx = xs[None, :] - params[:, 2:3]
        dy = ys[None, :] - params[:, 3:4]
        xp = dx * c + dy * s
        yp = -dx * s + dy * c
        return c, s, xp, yp


class GaussianPSF(_EllipticalModel):
    """Elliptical, rotated 2-D Gaussian on a constant background.

    Parameters (in order): ``background`` B, ``amplitude`` A (peak above B),
    ``x0``, ``y0``, ``sigma_x``, ``sigma_y`` (px), ``angle`` (radians,
    counter-clockwise from +x).

    Parameters
    ----------
    angle : bool
        Fit the rotation angle (True) or keep it fixed (at 0 by default).
    sampling : {"integrated", "point"}
        Pixel-integrated (exact erf for the axis-aligned case) or point-sampled.

    Examples
    --------
    Flux 2 pi A sigma_x sigma_y, FWHM 2.3548 sigma:

    >>> import numpy as np
    >>> model = GaussianPSF()
    >>> params = np.array([[0.0, 100.0, 7.0, 7.0, 1.5, 1.5, 0.0]])
    >>> round(float(model.flux_and_gradient(params)[0][0]), 1)
    1413.7
    >>> round(float(model.fwhm_and_gradient(params)[0][0]), 3)
    3.532
    """

    name = "gaussian"
    param_names = ("background", "amplitude", "x0", "y0", "sigma_x", "sigma_y", "angle")

    def bounds(self, n):
        """Lower and upper bounds: see :meth:`PSFModel.bounds`."""
        lo = np.tile([-np.inf, 0.0, -np.inf, -np.inf, 0.05, 0.05, -np.inf], (n, 1))
        hi = np.tile([np.inf, np.inf, np.inf, np.inf, np.inf, np.inf, np.inf], (n, 1))
        return lo, hi

    def evaluate(self, params, shape, *, free=None, jacobian=False, k=None):
        """The model: see :meth:`PSFModel.evaluate`."""
        params = np.asarray(params, dtype=float)
        if free is None:
            free = np.ones(self.n_params, dtype=bool)
        axis_aligned = (not free[self.i_angle]) and np.all(params[:, self.i_angle] == 0.0)
        if self.sampling == "integrated" and axis_aligned:
            return self._integrated_axis_aligned(params, shape, free, jacobian)
        if self.sampling == "integrated":
            if k is None:
                k = int(self.subsampling(params).max()) if len(params) else 0
            if k == 0:
                return self._integrated_analytic(params, shape, free, jacobian)
        return super().evaluate(params, shape, free=free, jacobian=jacobian, k=k)

    def subsampling(self, params):
        """Pixel-integration order per star: 0 (analytic), Gauss-Legendre nodes, or 1 (point sampling)."""
        if self.sampling == "point":
            return np.ones(params.shape[0], dtype=int)
        fx, fy = self.fwhm_and_gradient(params)[:2]
        return subsampling_for_fwhm(np.minimum(fx, fy))

    #: cumulants of the unit pixel box (uniform on [-1/2, 1/2]) over 4! and 6!
    BOX_K4 = -1.0 / 120.0 / 24.0
    BOX_K6 = 1.0 / 252.0 / 720.0

    @classmethod
    def _box_correction(cls, u, p):
        """Cumulant correction along one image axis and its partial derivatives.

        With ``p`` the precision of the moment-matched Gaussian along that axis and
        ``u = -d ln G / d x``, the axis derivatives are ``d^4 G = He4 G``,
        ``He4 = u^4 - 6 p u^2 + 3 p^2`` and ``d^6 G = He6 G``,
        ``He6 = u^6 - 15 p u^4 + 45 p^2 u^2 - 15 p^3``.  Returns
        ``(k4 He4 + k6 He6, d/du, d/dp)``.
        """
        k4, k6 = cls.BOX_K4, cls.BOX_K6
        u2 = u * u
        p2 = p * p
        corr = (k4 * (u2 * u2 - 6.0 * p * u2 + 3.0 * p2)
                + k6 * (u2 * u2 * u2 - 15.0 * p * u2 * u2 + 45.0 * p2 * u2 - 15.0 * p2 * p))
        d_u = k4 * (4.0 * u2 * u - 12.0 * p * u) + k6 * (6.0 * u2 * u2 * u - 60.0 * p * u2 * u + 90.0 * p2 * u)
        d_p = k4 * (6.0 * p - 6.0 * u2) + k6 * (-15.0 * u2 * u2 + 90.0 * p * u2 - 45.0 * p2)
        return corr, d_u, d_p

    def _integrated_analytic(self, params, shape, free, jacobian):
        """Analytic pixel integral of the rotated Gaussian (cumulant expansion of the pixel box).

        The box convolution keeps the flux and adds I/12 to the covariance: the profile is
        ``A sx sy / sqrt(det S') exp(-d^T S'^-1 d / 2) (1 + c_x + c_y)``, ``S' = R diag(sx^2, sy^2) R^T + I/12``,
        with the box's higher cumulants in ``c_x``, ``c_y`` (:meth:`_box_correction`).
        """
        h, w = shape
        yy, xx = np.mgrid[0:h, 0:w]
        xs = xx.ravel().astype(float)[None, :]
        ys = yy.ravel().astype(float)[None, :]
        B, A, x0, y0, sx, sy, t = (params[:, i][:, None] for i in range(7))
        c, s = np.cos(t), np.sin(t)
        sx2, sy2 = sx * sx, sy * sy
        a = sx2 * c * c + sy2 * s * s + 1.0 / 12.0
        cc = sx2 * s * s + sy2 * c * c + 1.0 / 12.0
        b = (sx2 - sy2) * c * s
        det = a * cc - b * b
        pxx, pyy, pxy = cc / det, a / det, -b / det
        scale = sx * sy / np.sqrt(det)
        dx, dy = xs - x0, ys - y0
        u = pxx * dx + pxy * dy
        v = pxy * dx + pyy * dy
        e = np.exp(-0.5 * (dx * u + dy * v))
        cx, cx_u, cx_p = self._box_correction(u, pxx)
        cy, cy_u, cy_p = self._box_correction(v, pyy)
        corr = 1.0 + cx + cy
        prof = scale * e * corr
        val = B + A * prof
        if not jacobian:
            return val, None
        g = A * scale * e
        t_xx = -0.5 * dx * dx * corr + cx_u * dx + cx_p
        t_xy = -dx * dy * corr + cx_u * dy + cy_u * dx
        t_yy = -0.5 * dy * dy * corr + cy_u * dy + cy_p

        def shape_column(da, db, dcc, dlog_scale):
            d_det = da * cc + a * dcc - 2.0 * b * db
            d_pxx = (dcc - pxx * d_det) / det
            d_pyy = (da - pyy * d_det) / det
            d_pxy = (-db - pxy * d_det) / det
            return g * ((dlog_scale - 0.5 * d_det / det) * corr + t_xx * d_pxx + t_xy * d_pxy + t_yy * d_pyy)

        return val, _jacobian(free, (
            lambda: np.ones_like(e),
            lambda: prof,
            lambda: g * (u * corr - (cx_u * pxx + cy_u * pxy)),
            lambda: g * (v * corr - (cx_u * pxy + cy_u * pyy)),
            lambda: shape_column(2.0 * sx * c * c, 2.0 * sx * c * s, 2.0 * sx * s * s, 1.0 / sx),
            lambda: shape_column(2.0 * sy * s * s, -2.0 * sy * c * s, 2.0 * sy * c * c, 1.0 / sy),
            lambda: shape_column(2.0 * c * s * (sy2 - sx2), (sx2 - sy2) * (c * c - s * s),
                                 2.0 * c * s * (sx2 - sy2), 0.0),
        ))

    def _integrated_axis_aligned(self, params, shape, free, jacobian):
        """Exact pixel integral of the axis-aligned Gaussian (separable erf differences)."""
        h, w = shape
        n = params.shape[0]
        B, A, x0, y0, sx, sy = (params[:, i][:, None] for i in range(6))
        xs = np.arange(w, dtype=float)[None, :]
        ys = np.arange(h, dtype=float)[None, :]
        ux_hi, ux_lo = (xs + 0.5 - x0) / sx, (xs - 0.5 - x0) / sx
        uy_hi, uy_lo = (ys + 0.5 - y0) / sy, (ys - 0.5 - y0) / sy
        dphix = _phi_diff(ux_lo, ux_hi)
        dphiy = _phi_diff(uy_lo, uy_hi)
        ix = sx * _SQRT2PI * dphix  # (n, w)
        iy = sy * _SQRT2PI * dphiy  # (n, h)
        prod = iy[:, :, None] * ix[:, None, :]  # (n, h, w)
        val = B[:, :, None] + A[:, :, None] * prod
        val = val.reshape(n, h * w)
        if not jacobian:
            return val, None
        pxh, pxl = _std_normal_pdf(ux_hi), _std_normal_pdf(ux_lo)
        pyh, pyl = _std_normal_pdf(uy_hi), _std_normal_pdf(uy_lo)
        dix_dx0 = -_SQRT2PI * (pxh - pxl)
        diy_dy0 = -_SQRT2PI * (pyh - pyl)
        dix_dsx = _SQRT2PI * (dphix - (ux_hi * pxh - ux_lo * pxl))
        diy_dsy = _SQRT2PI * (dphiy - (uy_hi * pyh - uy_lo * pyl))
        Ab = A[:, :, None]
        cols = [
            np.ones((n, h, w)),
            prod,
            Ab * iy[:, :, None] * dix_dx0[:, None, :],
            Ab * diy_dy0[:, :, None] * ix[:, None, :],
            Ab * iy[:, :, None] * dix_dsx[:, None, :],
            Ab * diy_dsy[:, :, None] * ix[:, None, :],
            np.zeros((n, h, w)),
        ]
        jac = np.stack([c.reshape(n, h * w) for c, f in zip(cols, free) if f], axis=-1)
        return val, jac

    def _point(self, params, xs, ys, free, jacobian):
        c, s, xp, yp = self._rotated(params, xs, ys)
        B, A = params[:, 0:1], params[:, 1:2]
        isx2 = 1.0 / params[:, 4:5] ** 2
        isy2 = 1.0 / params[:, 5:6] ** 2
        e = np.exp(-0.5 * (xp * xp * isx2 + yp * yp * isy2))
        val = B + A * e
        if not jacobian:
            return val, None
        Ae = A * e
        return val, _jacobian(free, (
            lambda: np.ones_like(e),
            lambda: e,
            lambda: Ae * (xp * c * isx2 - yp * s * isy2),
            lambda: Ae * (xp * s * isx2 + yp * c * isy2),
            lambda: Ae * xp * xp * isx2 / params[:, 4:5],
            lambda: Ae * yp * yp * isy2 / params[:, 5:6],
            lambda: -Ae * xp * yp * (isx2 - isy2),
        ))

    def flux_and_gradient(self, params):
        """Total flux: see :meth:`PSFModel.flux_and_gradient`."""
        A, sx, sy = params[:, 1], params[:, 4], params[:, 5]
        flux = 2.0 * np.pi * A * sx * sy
        grad = np.zeros_like(params)
        grad[:, 1] = 2.0 * np.pi * sx * sy
        grad[:, 4] = 2.0 * np.pi * A * sy
        grad[:, 5] = 2.0 * np.pi * A * sx
        return flux, grad

    def fwhm_and_gradient(self, params):
        """FWHM along both axes: see :meth:`PSFModel.fwhm_and_gradient`."""
        fx = FWHM_PER_SIGMA * params[:, 4]
        fy = FWHM_PER_SIGMA * params[:, 5]
        gx = np.zeros_like(params)
        gy = np.zeros_like(params)
        gx[:, 4] = FWHM_PER_SIGMA
        gy[:, 5] = FWHM_PER_SIGMA
        return fx, fy, gx, gy

    @staticmethod
    def widths_from_fwhm(fwhm: np.ndarray, beta: np.ndarray | None = None) -> np.ndarray:
        """The width parameters (sigma or alpha) of a star of FWHM ``fwhm`` (and ``beta``)."""
        return np.asarray(fwhm, dtype=float) / FWHM_PER_SIGMA

    def _amplitude_for_flux(self, params, flux):
        return flux / (2 * np.pi * params[:, 4] * params[:, 5])


class MoffatPSF(_EllipticalModel):
    """Elliptical, rotated Moffat profile on a constant background.

    Parameters (in order): ``background`` B, ``amplitude`` A, ``x0``, ``y0``,
    ``alpha_x``, ``alpha_y`` (core widths, px), ``angle`` (radians), ``beta``.

    Parameters
    ----------
    beta : float, optional
        Fix beta at this value; by default beta is fitted (bounded to [1.01, 20]).
    angle : bool
        Fit the rotation angle.
    sampling : {"integrated", "point"}

    Examples
    --------
    >>> import numpy as np
    >>> model = MoffatPSF(beta=3.0)
    >>> model.param_names[-1], model.default_free().tolist()[-1]  # beta fixed
    ('beta', False)
    >>> params = np.array([[0.0, 100.0, 7.0, 7.0, 2.0, 2.0, 0.0, 3.0]])
    >>> round(float(model.fwhm_and_gradient(params)[0][0]), 3)  # 2 alpha sqrt(2^(1/beta) - 1)
    2.039
    """

    name = "moffat"
    param_names = ("background", "amplitude", "x0", "y0", "alpha_x", "alpha_y", "angle", "beta")
    i_beta = 7
    beta_bounds = (1.01, 20.0)

    def __init__(self, *, beta: float | None = None, angle: bool = True, sampling: str = "integrated") -> None:
        super().__init__(angle=angle, sampling=sampling)
        if beta is not None and not (self.beta_bounds[0] <= beta <= self.beta_bounds[1]):
            raise ValueError(f"beta must be in [{self.beta_bounds[0]}, {self.beta_bounds[1]}], got {beta}")
        self.fixed_beta = beta

    def __repr__(self) -> str:
        return f"MoffatPSF(beta={self.fixed_beta}, angle={self.angle}, sampling={self.sampling!r})"

    def default_free(self):
        """Parameters fitted by default: see :meth:`PSFModel.default_free`."""
        free = super().default_free()
        free[self.i_beta] = self.fixed_beta is None
        return free

    def bounds(self, n):
        """Lower and upper bounds: see :meth:`PSFModel.bounds`."""
        lo = np.tile([-np.inf, 0.0, -np.inf, -np.inf, 0.05, 0.05, -np.inf, self.beta_bounds[0]], (n, 1))
        hi = np.tile([np.inf, np.inf, np.inf, np.inf, np.inf, np.inf, np.inf, self.beta_bounds[1]], (n, 1))
        return lo, hi

    def _point(self, params, xs, ys, free, jacobian):
        c, s, xp, yp = self._rotated(params, xs, ys)
        B, A, beta = params[:, 0:1], params[:, 1:2], params[:, 7:8]
        iax2 = 1.0 / params[:, 4:5] ** 2
        iay2 = 1.0 / params[:, 5:6] ** 2
        u = 1.0 + xp * xp * iax2 + yp * yp * iay2
        logu = np.log(u)
        p = np.exp(-beta * logu)
        val = B + A * p
        if not jacobian:
            return val, None
        D = -beta * A * p / u  # d f / d q
        return val, _jacobian(free, (
            lambda: np.ones_like(p),
            lambda: p,
            lambda: -2.0 * D * (xp * c * iax2 - yp * s * iay2),
            lambda: -2.0 * D * (xp * s * iax2 + yp * c * iay2),
            lambda: -2.0 * D * xp * xp * iax2 / params[:, 4:5],
            lambda: -2.0 * D * yp * yp * iay2 / params[:, 5:6],
            lambda: 2.0 * D * xp * yp * (iax2 - iay2),
            lambda: -A * p * logu,
        ))

    def flux_and_gradient(self, params):
        """Total flux: see :meth:`PSFModel.flux_and_gradient`."""
        A, ax, ay, beta = params[:, 1], params[:, 4], params[:, 5], params[:, 7]
        bm1 = beta - 1.0
        flux = np.pi * A * ax * ay / bm1
        grad = np.zeros_like(params)
        grad[:, 1] = np.pi * ax * ay / bm1
        grad[:, 4] = np.pi * A * ay / bm1
        grad[:, 5] = np.pi * A * ax / bm1
        grad[:, 7] = -flux / bm1
        return flux, grad

    @staticmethod
    def _fwhm_factor(beta):
        root = np.sqrt(np.exp2(1.0 / beta) - 1.0)
        dfactor = 2.0 * (np.exp2(1.0 / beta) * math.log(2.0) * (-1.0 / beta**2)) / (2.0 * root)
        return 2.0 * root, dfactor

    def fwhm_and_gradient(self, params):
        """FWHM along both axes: see :meth:`PSFModel.fwhm_and_gradient`."""
        factor, dfactor = self._fwhm_factor(params[:, 7])
        fx = factor * params[:, 4]
        fy = factor * params[:, 5]
        gx = np.zeros_like(params)
        gy = np.zeros_like(params)
        gx[:, 4] = factor
        gx[:, 7] = dfactor * params[:, 4]
        gy[:, 5] = factor
        gy[:, 7] = dfactor * params[:, 5]
        return fx, fy, gx, gy

    @classmethod
    def widths_from_fwhm(cls, fwhm: np.ndarray, beta: np.ndarray) -> np.ndarray:
        """The width parameters (sigma or alpha) of a star of FWHM ``fwhm`` (and ``beta``)."""
        return np.asarray(fwhm, dtype=float) / cls._fwhm_factor(np.asarray(beta, dtype=float))[0]

    def _amplitude_for_flux(self, params, flux):
        if self.name != "moffat":  # the Lorentzian: its own flux definition
            return super()._amplitude_for_flux(params, flux)
        return flux * (params[:, 7] - 1) / (np.pi * params[:, 4] * params[:, 5])


@dataclass(frozen=True)
class PSFNormalisation:
    """What normalisation a user's PSF array arrived with."""

    kind: str  # "unit sum", "unit peak" or "other"
    original_sum: float
    original_peak: float

    def describe(self) -> str:
        if self.kind == "unit sum":
            return "the PSF array sums to 1 (unit sum): its flux parameter is the total flux"
        if self.kind == "unit peak":
            return (
                f"the PSF array was normalised to unit peak (sum {self.original_sum:.6g}); psfkit rescaled it "
                "to unit sum, so the flux reported is the total flux, not the peak amplitude"
            )
        return (
            f"the PSF array had sum {self.original_sum:.6g} and peak {self.original_peak:.6g}; psfkit rescaled "
            "it to unit sum, so the flux reported is the total flux"
        )


class ImagePSF(PSFModel):
    """A user's PSF given as a 2-D array, fitted for flux, position and background.

    The array is treated as the pixel response (PRF): its samples already
    include the pixel integration.  It is renormalised to unit sum (times
    ``oversampling**2`` when oversampled), so the ``flux`` parameter is the
    total flux whatever normalisation the array arrived with; the original
    normalisation is kept in :attr:`normalisation` and reported.  Sub-pixel
    shifts use a bicubic spline (:class:`scipy.interpolate.RectBivariateSpline`).

    Parameters (in order): ``background``, ``flux``, ``x0``, ``y0``.  The PSF's
    centre is the centre of the array, ``((nx - 1) / 2, (ny - 1) / 2)`` in its
    own (oversampled) pixels.

    Parameters
    ----------
    psf : array-like, 2-D
    oversampling : int
        Samples per image pixel along each axis.

    Examples
    --------
    A sampled Gaussian as the PSF, fitted to a simulated star of the same FWHM:

    >>> import numpy as np
    >>> import psfkit
    >>> from psfkit.datasets.simulate import simulate_field
    >>> values, _ = GaussianPSF().evaluate(np.array([[0.0, 1.0, 7.0, 7.0, 1.274, 1.274, 0.0]]), (15, 15))
    >>> model = ImagePSF(values.reshape(15, 15))
    >>> model.param_names
    ('background', 'flux', 'x0', 'y0')
    >>> data, truth = simulate_field((64, 64), 1, fwhm=3.0, seed=3, edge=20)
    >>> star = psfkit.fit_star(data, truth["x"][0], truth["y"][0], model=model, gain=1.5, read_noise=6.0)
    >>> bool(abs(star.flux_fit - truth["flux"][0]) < 3 * star.flux_err)
    True
    """

    name = "image"
    param_names = ("background", "flux", "x0", "y0")

    def __init__(self, psf: np.ndarray, *, oversampling: int = 1) -> None:
        super().__init__(sampling="point")
        from scipy.interpolate import RectBivariateSpline

        arr = np.asarray(psf, dtype=float)
        if arr.ndim != 2:
            raise ValueError(f"the PSF must be a 2-D array, got shape {arr.shape}")
        if arr.shape[0] < 4 or arr.shape[1] < 4:
            raise ValueError(f"the PSF array is too small ({arr.shape}); at least 4x4 samples are needed")
        if not np.all(np.isfinite(arr)):
            raise ValueError("the PSF array contains NaN or infinite values")
        total = float(arr.sum())
        peak = float(arr.max())
        if total <= 0 or peak <= 0:
            raise ValueError("the PSF array must have a positive sum and peak")
        o = int(oversampling)
        if o < 1:
            raise ValueError("oversampling must be a positive integer")
        target = float(o * o)
        if abs(total - target) <= 1e-6 * target or abs(total - 1.0) <= 1e-6:  # per sample or per pixel
            kind = "unit sum"
        elif abs(peak - 1.0) <= 1e-6:
            kind = "unit peak"
        else:
            kind = "other"
        self.normalisation = PSFNormalisation(kind, total, peak)
        self.oversampling = o
        self.psf = arr * (target / total)
        ny, nx = arr.shape
        self._cy, self._cx = (ny - 1) / 2.0, (nx - 1) / 2.0
        self._spline = RectBivariateSpline(np.arange(ny), np.arange(nx), self.psf, kx=3, ky=3, s=0)
        # half-size of the support in image pixels
        self.half_size = (min(nx, ny) - 1) / 2.0 / o
        self._peak = float(self.psf.max())
        self._fwhm = self._measure_fwhm()

    def __repr__(self) -> str:
        return f"ImagePSF(shape={self.psf.shape}, oversampling={self.oversampling}, {self.normalisation.kind})"

    def bounds(self, n):
        """Lower and upper bounds: see :meth:`PSFModel.bounds`."""
        lo = np.tile([-np.inf, 0.0, -np.inf, -np.inf], (n, 1))
        hi = np.tile([np.inf, np.inf, np.inf, np.inf], (n, 1))
        return lo, hi

    def subsampling(self, params):
        """Sub-pixel sampling: see :meth:`PSFModel.subsampling`."""
        return np.ones(params.shape[0], dtype=int)

    def _point(self, params, xs, ys, free, jacobian):
        o = self.oversampling
        u = (xs[None, :] - params[:, 2:3]) * o + self._cx
        v = (ys[None, :] - params[:, 3:4]) * o + self._cy
        ny, nx = self.psf.shape
        inside = (u >= 0) & (u <= nx - 1) & (v >= 0) & (v <= ny - 1)
        uc = np.clip(u, 0, nx - 1)
        vc = np.clip(v, 0, ny - 1)
        prof = np.where(inside, self._spline.ev(vc, uc), 0.0)
        B, F = params[:, 0:1], params[:, 1:2]
        val = B + F * prof
        if not jacobian:
            return val, None
        return val, _jacobian(free, (
            lambda: np.ones_like(prof),
            lambda: prof,
            lambda: np.where(inside, -F * o * self._spline.ev(vc, uc, dy=1), 0.0),
            lambda: np.where(inside, -F * o * self._spline.ev(vc, uc, dx=1), 0.0),
        ))

    def flux_and_gradient(self, params):
        """Total flux: see :meth:`PSFModel.flux_and_gradient`."""
        grad = np.zeros_like(params)
        grad[:, 1] = 1.0
        return params[:, 1].copy(), grad

    def _measure_fwhm(self) -> float:
        """FWHM of the PSF in image pixels, from the area above half maximum."""
        o = self.oversampling
        area = np.count_nonzero(self.psf >= 0.5 * self._peak) / (o * o)
        return float(2.0 * math.sqrt(area / math.pi))

    def fwhm_and_gradient(self, params):
        """FWHM along both axes: see :meth:`PSFModel.fwhm_and_gradient`."""
        n = params.shape[0]
        f = np.full(n, self._fwhm)
        z = np.zeros_like(params)
        return f, f.copy(), z, z.copy()

    def peak(self, params):
        """Peak value: see :meth:`PSFModel.peak`."""
        return params[:, 1] * self._peak

    def params_from_shape(self, x0, y0, fwhm_x=None, fwhm_y=None, angle_deg=0.0, *, flux=None, amplitude=None,
                          beta=None, background=0.0):
        """Parameter rows: see :meth:`PSFModel.params_from_shape` (the shape is the array's own)."""
        # the image PSF's only shape is its array; its amplitude is its flux (unit sum)
        level = flux if amplitude is None else amplitude
        x0, y0, level, bkg = np.broadcast_arrays(*(np.atleast_1d(np.asarray(v, dtype=float)) for v in (
            x0, y0, level, background)))
        return np.stack([bkg, level, x0, y0], axis=1)


def get_model(name: str | PSFModel, *, angle: bool = True, beta: float | None = None,
              sampling: str = "integrated") -> PSFModel:
    """A model from its name: ``"gaussian"`` or ``"moffat"`` (``beta`` fixes beta), or a model instance.

    Examples
    --------
    >>> get_model("moffat", beta=2.5).param_names[-1]
    'beta'
    >>> type(get_model("gaussian")).__name__
    'GaussianPSF'
    """
    if isinstance(name, PSFModel):
        return name
    key = str(name).lower()
    if key == "gaussian":
        return GaussianPSF(angle=angle, sampling=sampling)
    if key == "moffat":
        return MoffatPSF(beta=beta, angle=angle, sampling=sampling)
    if key == "lorentzian":
        return LorentzianPSF(angle=angle, sampling=sampling)
    raise ValueError(f"unknown model {name!r}; use 'gaussian', 'moffat', 'lorentzian' or a PSF image")


class LorentzianPSF(MoffatPSF):
    """Elliptical Lorentzian (Cauchy) profile: the Moffat with beta = 1, as PixInsight's DynamicPSF offers.

    ``f = B + A / (1 + x'^2/gx^2 + y'^2/gy^2)``, FWHM = 2 g.  Same parameters as
    :class:`MoffatPSF` (``alpha_x``, ``alpha_y`` are the half widths ``gx``, ``gy``;
    ``beta`` stays fixed at 1).

    **Its total flux diverges** (the integral grows as ``ln r``), so its ``flux`` is
    *not* a total flux: it is the light inside the ellipse of the profile's own shape
    whose area equals a circle of radius ``flux_radius`` px,
    ``pi A gx gy ln(1 + flux_radius^2 / (gx gy))``.  By default (``flux_radius=None``)
    that circle has radius 2.5 FWHM (the half-width of psfkit's default fitting box),
    ``pi A gx gy ln 26``.  :func:`psfkit.compare_models` sets ``flux_radius`` to half its
    fitting box, i.e. the Lorentzian's flux there is its light within the box's
    inscribed circle.  Compare it with other models' fluxes only with that in mind.

    Parameters
    ----------
    flux_radius : float, optional
        Radius (px) of the circle whose area bounds the flux; default 2.5 FWHM.
    angle : bool
    sampling : {"integrated", "point"}

    Examples
    --------
    FWHM = 2 g:

    >>> import numpy as np
    >>> model = LorentzianPSF()
    >>> params = np.array([[0.0, 100.0, 7.0, 7.0, 2.0, 2.0, 0.0, 1.0]])
    >>> float(model.fwhm_and_gradient(params)[0][0])
    4.0
    """

    name = "lorentzian"
    beta_bounds = (1.0, 1.0)
    flux_is_total = False

    def __init__(self, *, flux_radius: float | None = None, angle: bool = True, sampling: str = "integrated") -> None:
        _EllipticalModel.__init__(self, angle=angle, sampling=sampling)
        if flux_radius is not None and not (np.isfinite(flux_radius) and flux_radius > 0):
            raise ValueError(f"flux_radius must be a positive number of pixels, got {flux_radius}")
        self.fixed_beta = 1.0
        self.flux_radius = None if flux_radius is None else float(flux_radius)

    def __repr__(self) -> str:
        return f"LorentzianPSF(flux_radius={self.flux_radius}, angle={self.angle}, sampling={self.sampling!r})"

    def flux_and_gradient(self, params):
        """Total flux: see :meth:`PSFModel.flux_and_gradient`."""
        A, gx, gy = params[:, 1], params[:, 4], params[:, 5]
        grad = np.zeros_like(params)
        if self.flux_radius is None:  # R = 2.5 FWHM = 5 sqrt(gx gy): R^2 / (gx gy) = 25
            log_term = math.log(26.0)
            flux = np.pi * A * gx * gy * log_term
            grad[:, 1] = np.pi * gx * gy * log_term
            grad[:, 4] = np.pi * A * gy * log_term
            grad[:, 5] = np.pi * A * gx * log_term
            return flux, grad
        q = self.flux_radius**2 / (gx * gy)
        log_term = np.log1p(q)
        flux = np.pi * A * gx * gy * log_term
        d_dg = log_term - q / (1.0 + q)  # d/dgx of gx gy ln(1 + R^2/(gx gy)) = gy (ln(1+q) - q/(1+q))
        grad[:, 1] = np.pi * gx * gy * log_term
        grad[:, 4] = np.pi * A * gy * d_dg
        grad[:, 5] = np.pi * A * gx * d_dg
        return flux, grad
