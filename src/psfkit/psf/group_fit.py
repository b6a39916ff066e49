"""Groups of overlapping stars fitted together with the frame's own PSF (DAOPHOT's ALLSTAR groups).

Where two stars' profiles overlap, the flux of one is the light the other leaves: fitted one at a
time (each with the other's current model subtracted) the pair converges slowly, and each fit's
error is the error *given the other star*, too small by the factor ``1 / sqrt(1 - rho**2)`` of the
two fluxes' correlation ``rho``.  :func:`fit_groups` solves such a group as one least-squares
problem: the flux, x and y of every member and one local background shared by the group, on the
pixels within half a fitting box of any member, weighted like the one-star fit of
:mod:`psfkit.psf.frame_fit` (``max(model, 0) / gain + read_noise**2``, plus a fixed per-pixel
variance for the light of stars outside the group, plus the PSF's own uncertainty times each
member's flux squared), the weights recomputed at each accepted step.  Each member is drawn with the
PSF of its own place (its starting position).  The errors are the joint covariance's, so a close
pair's fluxes carry their anti-correlation and their larger errors.

Groups are batched: all the groups of one size are fitted at once (numpy; the PSF's values and
gradients come from :func:`psfkit.psf.empirical.cubic_interpolate`, compiled where available), on
windows padded to the largest of the batch with masked pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from psfkit.psf.empirical import FramePSF, cubic_interpolate
from psfkit.psf.frame_fit import pixel_weights

__all__ = ["fit_groups", "GroupFit"]

#: groups (their members summed) per batch: bounds the memory of the members' PSF grids
_CHUNK_MEMBERS = 256


@dataclass
class GroupFit:
    """The joint fits of G groups of k stars each.

    Attributes
    ----------
    params : ndarray (G, 1 + 3k)
        Background, then flux, x, y of each member (x, y in window coordinates).
    covariance : ndarray (G, 1 + 3k, 1 + 3k)
        Inverse of ``J^T W J`` at the solution; each member's flux variance also holds
        ``(FramePSF.flux_error * flux)**2``.  NaN where the fit failed.
    chi2, rss : ndarray (G,)
        Weighted and unweighted sums of squared residuals over the group's pixels.
    n_pixels, iterations : ndarray (G,) of int
    converged, ok : ndarray (G,) of bool
        ``ok``: finite parameters, a positive-definite covariance, every flux above zero.
    """

    params: np.ndarray
    covariance: np.ndarray
    chi2: np.ndarray
    rss: np.ndarray
    n_pixels: np.ndarray
    iterations: np.ndarray
    converged: np.ndarray
    ok: np.ndarray

    @property
    def n_free(self) -> int:
        """Parameters per group (1 + 3k)."""
        return int(self.params.shape[1])


def fit_groups(
    data: np.ndarray,
    mask: np.ndarray,
    origin: np.ndarray,
    start: np.ndarray,
    psf: FramePSF,
    *,
    gain: float,
    read_noise: float,
    variance: np.ndarray | None = None,
    psf_uncertainty: bool = True,
    max_iter: int = 50,
    rtol: float = 1e-2,
) -> GroupFit:
    """Fit G groups of k stars each with the frame's PSF: background, and flux, x, y per member.

    Parameters
    ----------
    data : ndarray (G, h, w)
        Each group's window, the light of stars outside the group already taken out.
    mask : ndarray of bool (G, h, w)
        True for the pixels to fit.
    origin : ndarray (G, 2)
        (x, y) on the frame of each window's pixel (0, 0): each member's PSF is the frame's at its
        place.
    start : ndarray (G, 1 + 3k)
        The starting background, then flux, x, y of each member (window coordinates).
    psf : FramePSF
        The frame's PSF.
    gain, read_noise : float
        e-/ADU and the read noise in ADU: the weights ``max(model, 0) / gain + read_noise**2``.
    variance : ndarray (G, h, w), optional
        A fixed per-pixel variance added to the model's (the photon noise of subtracted light).
    psf_uncertainty : bool
        Count the PSF's own uncertainty in the weights and the errors, as
        :func:`psfkit.psf.frame_fit.fit_frame_stamps` does.
    max_iter : int
        Levenberg-Marquardt iterations at most.
    rtol : float
        Converged when the Gauss-Newton step is below ``rtol`` standard errors.

    Returns
    -------
    GroupFit

    Examples
    --------
    Two stars 3 px apart (about one FWHM), fitted together from a poor start:

    >>> from psfkit.psf.empirical import add_stars
    >>> r2 = ((np.arange(41) - 20.0) ** 2)[:, None] + ((np.arange(41) - 20.0) ** 2)[None, :]
    >>> grid = np.exp(-r2 / (2 * 2.6**2)); grid *= 4.0 / grid.sum()
    >>> psf = FramePSF(grid[None], 2, 0, (20.0, 20.0), (20.0, 20.0))
    >>> frame = add_stars(np.full((25, 25), 100.0), psf, [10.4, 13.3], [12.0, 12.6], [5000.0, 3000.0])
    >>> fit = fit_groups(frame[None], np.ones((1, 25, 25), bool), np.zeros((1, 2)),
    ...                  np.array([[90.0, 4000.0, 10.0, 12.0, 4000.0, 13.0, 12.0]]), psf, gain=1.0, read_noise=5.0)
    >>> np.round(fit.params[0], 1).tolist()
    [100.0, 5000.0, 10.4, 12.0, 3000.0, 13.3, 12.6]
    """
    data = np.asarray(data, dtype=float)
    g_n, h, w = data.shape
    start = np.asarray(start, dtype=float).reshape(g_n, -1)
    k = (start.shape[1] - 1) // 3
    per = max(1, _CHUNK_MEMBERS // max(k, 1))
    if g_n > per:
        parts = [fit_groups(data[i:i + per], mask[i:i + per], origin[i:i + per], start[i:i + per], psf, gain=gain,
                            read_noise=read_noise, variance=None if variance is None else variance[i:i + per],
                            psf_uncertainty=psf_uncertainty, max_iter=max_iter, rtol=rtol)
                 for i in range(0, g_n, per)]
        return GroupFit(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                          ("params", "covariance", "chi2", "rss", "n_pixels", "iterations", "converged", "ok")))
    return _fit_batch(data, np.asarray(mask, bool), np.asarray(origin, float), start, psf, k, gain=float(gain),
                      read_noise=float(read_noise), variance=variance, psf_uncertainty=psf_uncertainty,
                      max_iter=max_iter, rtol=rtol)


class _Problem:
    """One batch of groups: the model, its Jacobian and the weights."""

    def __init__(self, data, mask, origin, start, psf, k, gain, read_noise, variance, psf_uncertainty):
        g_n, h, w = data.shape
        self.k, self.o = k, psf.oversampling
        self.c = (psf.size - 1) / 2.0
        self.mask = mask.reshape(g_n, h * w)
        self.data = np.where(self.mask, np.nan_to_num(data.reshape(g_n, h * w)), 0.0)
        yy, xx = np.mgrid[0:h, 0:w]
        self.xx, self.yy = xx.ravel().astype(float), yy.ravel().astype(float)
        fx = start[:, 2::3] + origin[:, :1]
        fy = start[:, 3::3] + origin[:, 1:2]
        # each member with the PSF of its starting place
        self.grids = psf.spline_at(np.nan_to_num(fx.ravel()), np.nan_to_num(fy.ravel()))
        node_var = getattr(psf, "variance", None) if psf_uncertainty else None
        self.node_var = None if node_var is None else np.asarray(node_var, dtype=float)[None]
        self.perr2 = float(getattr(psf, "profile_error", 0.0) or 0.0) ** 2 if psf_uncertainty else 0.0
        self.gain, self.rn2 = gain, read_noise**2
        self.var_fixed = None if variance is None else np.nan_to_num(
            np.asarray(variance, dtype=float).reshape(g_n, h * w))

    def evaluate(self, q: np.ndarray, rows: np.ndarray, derivatives: bool = True):
        """Members' unit-flux profiles (n, k, M) and, with ``derivatives``, d/du and d/dv (node units)."""
        n, k = len(rows), self.k
        u = (self.xx[None, None, :] - q[:, 2::3, None]) * self.o + self.c
        v = (self.yy[None, None, :] - q[:, 3::3, None]) * self.o + self.c
        grids = self.grids if self.grids.shape[0] == 1 else self.grids.reshape(-1, k, *self.grids.shape[1:])[rows]
        grids = grids.reshape(-1, *grids.shape[-2:])
        out = cubic_interpolate(grids, u.reshape(n * k, -1), v.reshape(n * k, -1), derivatives=derivatives)
        if not derivatives:
            return out.reshape(n, k, -1)
        return tuple(a.reshape(n, k, -1) for a in out)

    def node_variance(self, q: np.ndarray) -> np.ndarray | None:
        """Each member's PSF node variance (unit flux) on the window (n, k, M), or None."""
        if self.node_var is None:
            return None
        n, k = q.shape[0], self.k
        u = (self.xx[None, None, :] - q[:, 2::3, None]) * self.o + self.c
        v = (self.yy[None, None, :] - q[:, 3::3, None]) * self.o + self.c
        nv = cubic_interpolate(self.node_var, u.reshape(n * k, -1), v.reshape(n * k, -1))
        return np.maximum(nv, 0.0).reshape(n, k, -1)

    def psf_variance(self, q: np.ndarray, prof: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Sum over members of flux**2 times the PSF's own variance at each pixel (n, M): its profile
        error times the profile, plus its nodes' variance where the members were last placed
        (:attr:`placed`: a smooth map, read again when a member moves by a quarter pixel).
        """
        own = self.perr2 * prof * prof
        if self.node_var is not None:
            moved = np.any(np.hypot(q[:, 2::3] - self.placed[rows, :, 0], q[:, 3::3] - self.placed[rows, :, 1]) > 0.25,
                           axis=1)
            if moved.any():
                at = rows[moved]
                self.nv[at] = self.node_variance(q[moved])
                self.placed[at] = np.stack([q[moved, 2::3], q[moved, 3::3]], axis=-1)
            own = own + self.nv[rows]
        return np.einsum("nk,nkm->nm", q[:, 1::3] ** 2, own)

    def place(self, q: np.ndarray) -> None:
        """Read the members' node variance at their starting places."""
        if self.node_var is not None:
            self.nv = self.node_variance(q)
            self.placed = np.stack([q[:, 2::3], q[:, 3::3]], axis=-1)

    def weights(self, q, prof, rows):
        model = q[:, :1] + np.einsum("nk,nkm->nm", q[:, 1::3], prof)
        var_fixed = None if self.var_fixed is None else self.var_fixed[rows]
        return pixel_weights(model, self.mask[rows], var_fixed, self.psf_variance(q, prof, rows), self.gain, self.rn2)

    def residual(self, q, prof, rows):
        model = q[:, :1] + np.einsum("nk,nkm->nm", q[:, 1::3], prof)
        return np.where(self.mask[rows], self.data[rows] - model, 0.0)

    def normal(self, q, prof, du, dv, wgt, rows):
        """chi2, J^T W J and J^T W r."""
        n, k, m = prof.shape
        jac = np.empty((n, m, 1 + 3 * k))
        jac[:, :, 0] = 1.0
        jac[:, :, 1::3] = prof.transpose(0, 2, 1)
        jac[:, :, 2::3] = (-self.o * q[:, 1::3, None] * du).transpose(0, 2, 1)
        jac[:, :, 3::3] = (-self.o * q[:, 1::3, None] * dv).transpose(0, 2, 1)
        r = self.residual(q, prof, rows)
        wr = wgt * r
        chi2 = np.einsum("nm,nm->n", wr, r)
        wj = jac * wgt[:, :, None]
        return chi2, np.einsum("nmi,nmj->nij", wj, jac), np.einsum("nmi,nm->ni", jac, wr)


def _solve(system: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Solutions of the (n, P, P) systems by Cholesky; ok where positive definite and finite."""
    x = np.zeros_like(rhs)
    ok = np.zeros(len(system), dtype=bool)
    for i in range(len(system)):  # a failed factorisation must not stop the batch
        try:
            chol = np.linalg.cholesky(system[i])
        except np.linalg.LinAlgError:
            continue
        y = np.linalg.solve(chol, rhs[i])
        x[i] = np.linalg.solve(chol.T, y)
        ok[i] = np.all(np.isfinite(x[i]))
    return x, ok


def _fit_batch(data, mask, origin, start, psf, k, *, gain, read_noise, variance, psf_uncertainty, max_iter, rtol):
    g_n, h, w = data.shape
    prob = _Problem(data, mask, origin, start, psf, k, gain, read_noise, variance, psf_uncertainty)
    npar = 1 + 3 * k
    lo = np.full(npar, -np.inf)
    hi = np.full(npar, np.inf)
    lo[1::3] = 0.0
    lo[2::3], hi[2::3] = -1.0, float(w)
    lo[3::3], hi[3::3] = -1.0, float(h)
    finite = np.all(np.isfinite(start), axis=1)
    q = np.clip(np.where(finite[:, None], start, 0.0), lo, hi)
    rows = np.arange(g_n)
    prob.place(q)
    prof, du, dv = prob.evaluate(q, rows)
    wgt = prob.weights(q, prof, rows)
    chi2, jtj, jtr = prob.normal(q, prof, du, dv, wgt, rows)
    lam = np.full(g_n, 1e-3)
    iters = np.zeros(g_n, dtype=np.int64)
    converged = np.zeros(g_n, dtype=bool)
    active = np.flatnonzero(finite & np.isfinite(chi2))
    for _ in range(max_iter):
        if active.size == 0:
            break
        a = jtj[active]
        diag = np.diagonal(a, axis1=1, axis2=2)
        floor = 1e-12 * diag.max(axis=1, keepdims=True) + 1e-300
        system = a + lam[active, None, None] * np.eye(npar) * np.where(diag > floor, diag, floor)[:, None, :]
        step, solved = _solve(system, jtr[active])
        iters[active] += 1
        qa = q[active]
        trial = np.clip(qa + step, lo, hi)
        tprof, tdu, tdv = prob.evaluate(trial, active)
        tr = prob.residual(trial, tprof, active)
        t_chi2 = np.einsum("nm,nm->n", wgt[active] * tr, tr)
        better = solved & np.isfinite(t_chi2) & (t_chi2 <= chi2[active])
        d = trial - qa
        small = np.einsum("ni,nij,nj->n", d, a, d) <= rtol**2
        tiny = (chi2[active] - t_chi2) <= 1e-9 * np.maximum(chi2[active], 1e-300)
        acc = active[better]
        if acc.size:
            q[acc] = trial[better]
            prof[acc], du[acc], dv[acc] = tprof[better], tdu[better], tdv[better]
            wgt[acc] = prob.weights(q[acc], prof[acc], acc)
            chi2[acc], jtj[acc], jtr[acc] = prob.normal(q[acc], prof[acc], du[acc], dv[acc], wgt[acc], acc)
        lam[acc] = np.maximum(lam[acc] / 5.0, 1e-12)
        lam[active[~better]] *= 10.0
        done = np.zeros(active.size, dtype=bool)
        done[better] = small[better] | tiny[better]
        done[~better] = lam[active[~better]] > 1e10
        converged[active[done]] = True
        active = active[~done]
    r = prob.residual(q, prof, rows)
    rss = np.einsum("nm,nm->n", r, r)
    cov = np.full((g_n, npar, npar), np.nan)
    inv_ok = np.zeros(g_n, dtype=bool)
    eye = np.eye(npar)
    for i in range(g_n):
        try:
            chol = np.linalg.cholesky(jtj[i])
        except np.linalg.LinAlgError:
            continue
        inv_l = np.linalg.solve(chol, eye)
        cov[i] = inv_l.T @ inv_l
        inv_ok[i] = np.all(np.isfinite(cov[i]))
    flux_error = float(getattr(psf, "flux_error", 0.0) or 0.0) if psf_uncertainty else 0.0
    if flux_error > 0:  # the light the PSF misplaces coherently over a star's pixels (FramePSF.flux_error)
        idx = np.arange(1, npar, 3)
        cov[:, idx, idx] += (flux_error * q[:, 1::3]) ** 2
    ok = inv_ok & finite & np.isfinite(chi2) & np.all(q[:, 1::3] > 0, axis=1)
    q = np.where(finite[:, None], q, start)
    n_pix = prob.mask.sum(axis=1)
    return GroupFit(q, cov, np.where(finite, chi2, np.nan), np.where(finite, rss, np.nan), n_pix, iters,
                    converged & finite, ok)
