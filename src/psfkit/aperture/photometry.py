"""Aperture photometry: exact pixel overlap, local sky, CCD-equation errors, aperture corrections.

Coordinates are 0-based pixel centres (x = column, y = row): pixel ``(i, j)``
covers ``[j - 0.5, j + 0.5] x [i - 0.5, i + 0.5]``, as in photutils and SEP.

Exact overlap
-------------
*Circle.*  The area of a disk of radius ``r`` (centred at the origin) inside
the quarter-plane ``{x <= X, y <= Y}`` is ``S(X, Y) = C(-X, -Y)`` where
``C(U, V)`` is the part of the disk with ``x >= U, y >= V``.  For ``U, V >= 0``
and ``U^2 + V^2 < r^2``, ``C = P(xm) - P(U) - V (xm - U)`` with
``xm = sqrt(r^2 - V^2)`` and ``P(x) = (x sqrt(r^2 - x^2) + r^2 asin(x / r)) / 2``
(the primitive of ``sqrt(r^2 - x^2)``); other signs follow by reflection.  A
pixel's overlap is the mixed difference of ``S`` at its four corners, so ``S``
is evaluated once per pixel corner, and every term but one is a function of the
row or of the column alone: a few array operations per batch of apertures.

*Ellipse.*  The map ``u = x'/a, v = y'/b`` (``x', y'`` along the ellipse's axes)
turns the ellipse into the unit disk and each pixel into a parallelogram of area
``1/(ab)``.  The area of a disk inside a polygon is the sum over the polygon's
edges of the signed area of the disk inside the triangle (origin, edge): the
edge's chord inside the disk contributes a triangle, its parts outside a circular
sector.  Each pixel edge is computed once and shared by its two pixels.

Both are exact to rounding (tested against photutils' ``method="exact"``).

The compiled loops (numba; the numpy functions are their reference) go row by row: in each
row the pixels wholly inside the aperture follow from the chord ends at the row's two edges
and add with weight 1, and only the boundary pixels get the exact overlap (circles: the
table of row and column terms above; ellipses: the pixel clipped to the unit disk, whose
outside stretches telescope into one circular sector each, one arctangent per pixel).

Sky and errors
--------------
The local sky is a sigma-clipped estimate over the pixels whose centres lie in
the annulus (3 sigma, MAD-based, iterated): the clipped mean by default (the CCD
equation's ``1 + n/n_sky`` term assumes a mean), or the clipped median, or
SExtractor's mode ``2.5 median - 1.5 mean``.  The error of a sky-subtracted sum
``F`` over an aperture of area ``n`` pixels is the CCD equation (GUIDE.md section 4)
``sigma_F^2 = F / gain + n sigma_sky^2 (1 + n / n_sky)``, with ``sigma_sky`` the
clipped scatter of the annulus (it holds the sky's photon noise and the read
noise).  Without a gain the first term is left out (say so: bright stars'
errors are then too small), and ``meta["gain"]`` is None.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np
from astropy.table import Table

from psfkit.errors import PsfkitError
from psfkit.io.image import Image, as_image
from psfkit.psf.measure import magnitude

__all__ = [
    "circular_overlap",
    "elliptical_overlap",
    "aperture_sums",
    "sky_annulus",
    "aperture_photometry",
    "curve_of_growth",
    "optimal_radius",
    "aperture_correction",
    "star_photometry",
    "PHOT_FLAGS",
    "DEFAULT_RADIUS_FWHM",
    "DEFAULT_ANNULUS_FWHM",
]

#: default aperture radius, in units of the star's FWHM
DEFAULT_RADIUS_FWHM = 1.5
#: default sky annulus (inner, outer radius), in units of the FWHM
DEFAULT_ANNULUS_FWHM = (4.0, 6.0)

def _bad_fit_bits() -> tuple[int, int]:
    """Fit flags that disqualify a star (aperture correction; PSF/aperture ratio summary).

    A parameter at its bound (e.g. a Moffat's beta on a boxy PSF) does not spoil a curve of
    growth, so it does not disqualify a star; saturation, a cut box, masked pixels, a brighter
    neighbour or a failed fit do.
    """
    from psfkit import flags as F

    aperture = F.SATURATED | F.NEAR_EDGE | F.FIT_FAILED | F.MASKED_PIXELS | F.CENTER_MOVED | F.NEIGHBOURS_MASKED
    return aperture, aperture | F.NOT_CONVERGED | F.SINGULAR_COVARIANCE


#: bits of the ``phot_flags`` column
PHOT_FLAGS = {
    1: "aperture_off_image: part of the aperture lies outside the image",
    2: "aperture_masked: NaN or masked pixels inside the aperture were left out",
    4: "sky_few_pixels: fewer than 20 usable sky pixels (sky NaN below 5)",
}


# ---------------------------------------------------------------------------
# exact overlap
# ---------------------------------------------------------------------------
def _primitive(x: np.ndarray, r: np.ndarray) -> np.ndarray:
    """P(x) = integral_0^x sqrt(r^2 - t^2) dt for 0 <= x <= r."""
    x = np.minimum(x, r)
    return 0.5 * (x * np.sqrt(np.maximum(r * r - x * x, 0.0)) + r * r * np.arcsin(np.minimum(x / r, 1.0)))


def _quarter_plane_area(u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Area of the disk (radius r, centre 0) with x >= u and y >= v.

    ``u`` has shape (N, 1, W) (varies along columns), ``v`` (N, H, 1), ``r`` (N, 1, 1);
    every term but the final ``where`` is one-dimensional.
    """
    au, av = np.abs(u), np.abs(v)
    half_disk = 0.5 * np.pi * r * r
    pu = _primitive(au, r)
    hu = half_disk - 2.0 * pu  # area with x >= |u|
    hv = half_disk - 2.0 * _primitive(av, r)  # area with y >= |v|
    xm = np.sqrt(np.maximum(r * r - av * av, 0.0))
    q = np.where(au * au + av * av < r * r, (_primitive(xm, r) - av * xm) - pu + av * au, 0.0)
    disk = np.pi * r * r
    pos_u, pos_v = u >= 0, v >= 0
    return np.where(
        pos_u,
        np.where(pos_v, q, hu - q),
        np.where(pos_v, hv - q, disk - hu - hv + q),
    )


def _stamp_grid(x: np.ndarray, y: np.ndarray, half: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer origin (column, row) of each (2 half + 1)-square stamp around (x, y)."""
    return np.rint(x).astype(np.int64) - half, np.rint(y).astype(np.int64) - half


def circular_overlap(x: np.ndarray, y: np.ndarray, r: np.ndarray, half: int) -> np.ndarray:
    """Exact area of each pixel of a (2 half + 1)^2 stamp inside a circle.

    Parameters
    ----------
    x, y : ndarray (N,)
        Circle centres in image coordinates.
    r : ndarray (N,) or float
        Radii (px).
    half : int
        Stamp half-size; the stamp's pixel (0, 0) is image pixel
        ``(rint(y) - half, rint(x) - half)``.

    Returns
    -------
    ndarray (N, 2 half + 1, 2 half + 1)
        Overlap area of each pixel, in [0, 1].
    """
    x = np.atleast_1d(np.asarray(x, dtype=float))
    y = np.atleast_1d(np.asarray(y, dtype=float))
    r = np.broadcast_to(np.asarray(r, dtype=float), x.shape)[:, None, None]
    ox, oy = _stamp_grid(x, y, half)
    edges = np.arange(2 * half + 2) - 0.5
    # corner coordinates relative to the centre; S(X, Y) = C(-X, -Y)
    cx = -(ox[:, None] + edges[None, :] - x[:, None])[:, None, :]
    cy = -(oy[:, None] + edges[None, :] - y[:, None])[:, :, None]
    s = _quarter_plane_area(cx, cy, r)
    w = s[:, 1:, 1:] - s[:, :-1, 1:] - s[:, 1:, :-1] + s[:, :-1, :-1]
    return np.clip(w, 0.0, 1.0)


def _disk_triangle(px, py, qx, qy):
    """Signed area of the unit disk inside the triangle (origin, P, Q)."""
    dx, dy = qx - px, qy - py
    a = dx * dx + dy * dy
    b = px * dx + py * dy
    c = px * px + py * py - 1.0
    disc = b * b - a * c
    hit = (disc > 0) & (a > 0)
    root = np.sqrt(np.where(hit, disc, 0.0))
    safe_a = np.where(a > 0, a, 1.0)
    t1 = np.where(hit, np.clip((-b - root) / safe_a, 0.0, 1.0), 1.0)
    t2 = np.where(hit, np.clip((-b + root) / safe_a, 0.0, 1.0), 1.0)
    m1x, m1y = px + t1 * dx, py + t1 * dy
    m2x, m2y = px + t2 * dx, py + t2 * dy

    def sector(ax, ay, bx, by):
        return 0.5 * np.arctan2(ax * by - ay * bx, ax * bx + ay * by)

    return sector(px, py, m1x, m1y) + 0.5 * (m1x * m2y - m1y * m2x) + sector(m2x, m2y, qx, qy)


def elliptical_overlap(
    x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray, theta: np.ndarray, half: int
) -> np.ndarray:
    """Exact area of each pixel of a (2 half + 1)^2 stamp inside an ellipse.

    Parameters
    ----------
    x, y : ndarray (N,)
        Centres.
    a, b : ndarray (N,) or float
        Semi-major and semi-minor axes (px).
    theta : ndarray (N,) or float
        Angle of the major axis, radians, counter-clockwise from +x.
    half : int
        Stamp half-size (as in :func:`circular_overlap`).

    Returns
    -------
    ndarray (N, 2 half + 1, 2 half + 1)
    """
    x = np.atleast_1d(np.asarray(x, dtype=float))
    y = np.atleast_1d(np.asarray(y, dtype=float))
    shape = x.shape
    a = np.broadcast_to(np.asarray(a, dtype=float), shape)[:, None, None]
    b = np.broadcast_to(np.asarray(b, dtype=float), shape)[:, None, None]
    th = np.broadcast_to(np.asarray(theta, dtype=float), shape)[:, None, None]
    ox, oy = _stamp_grid(x, y, half)
    edges = np.arange(2 * half + 2) - 0.5
    dx = (ox[:, None] + edges[None, :] - x[:, None])[:, None, :]
    dy = (oy[:, None] + edges[None, :] - y[:, None])[:, :, None]
    c, s = np.cos(th), np.sin(th)
    u = (dx * c + dy * s) / a  # corners in the unit-disk frame, (N, H+1, W+1)
    v = (-dx * s + dy * c) / b
    # horizontal edges (row i, from column j to j+1) and vertical edges (column j, row i to i+1)
    fh = _disk_triangle(u[:, :, :-1], v[:, :, :-1], u[:, :, 1:], v[:, :, 1:])
    fv = _disk_triangle(u[:, :-1, :], v[:, :-1, :], u[:, 1:, :], v[:, 1:, :])
    # counter-clockwise: bottom (left->right), right (up), top (right->left), left (down)
    area = fh[:, :-1, :] + fv[:, :, 1:] - fh[:, 1:, :] - fv[:, :, :-1]
    return np.clip(area * (a * b), 0.0, 1.0)


# ---- compiled kernels (numba; the numpy functions above are the reference) ----
try:  # numba is a dependency, but the numpy path works without it
    from numba import njit, prange

    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    _HAVE_NUMBA = False


def _use_compiled(backend: str) -> bool:
    if backend not in ("auto", "numpy", "numba"):
        raise PsfkitError(f"backend must be 'auto', 'numpy' or 'numba', not {backend!r}")
    if backend == "numpy":
        return False
    from psfkit.backend import compiled_available

    if backend == "numba" and not _HAVE_NUMBA:  # pragma: no cover
        raise PsfkitError("backend 'numba' asked but numba is not installed")
    return _HAVE_NUMBA and (backend == "numba" or compiled_available())


if _HAVE_NUMBA:

    @njit(cache=True, inline="always")
    def _p_nb(x, r):
        if x >= r:
            return 0.25 * math.pi * r * r
        return 0.5 * (x * math.sqrt(r * r - x * x) + r * r * math.asin(x / r))

    @njit(cache=True, inline="always")
    def _sector_nb(ax, ay, bx, by):
        return 0.5 * math.atan2(ax * by - ay * bx, ax * bx + ay * by)

    @njit(cache=True, inline="always")
    def _disk_triangle_nb(px, py, qx, qy):
        dx, dy = qx - px, qy - py
        a = dx * dx + dy * dy
        b = px * dx + py * dy
        c = px * px + py * py - 1.0
        disc = b * b - a * c
        if disc <= 0 or a <= 0:
            return _sector_nb(px, py, qx, qy)
        root = math.sqrt(disc)
        t1 = min(max((-b - root) / a, 0.0), 1.0)
        t2 = min(max((-b + root) / a, 0.0), 1.0)
        m1x, m1y = px + t1 * dx, py + t1 * dy
        m2x, m2y = px + t2 * dx, py + t2 * dy
        return _sector_nb(px, py, m1x, m1y) + 0.5 * (m1x * m2y - m1y * m2x) + _sector_nb(m2x, m2y, qx, qy)

    @njit(cache=True, inline="always")
    def _quad_disk_nb(u0, v0, u1, v1, u2, v2, u3, v3):
        """Area of the unit disk inside the convex quadrilateral (counter-clockwise corners).

        The quadrilateral must not contain the origin.  Its boundary clipped to the disk gives
        chords (twice the area: the cross products of their ends), and every stretch outside
        the disk, from where the boundary leaves the disk to where it comes back, gives the
        circular sector between those two points: one arctangent per stretch (the angles of the
        corners in between telescope; without the origin inside, no stretch sweeps pi or more).
        """
        us = (u0, u1, u2, u3)
        vs = (v0, v1, v2, v3)
        twice = 0.0
        pending, first = False, False
        ex, ey, fx, fy = 0.0, 0.0, 0.0, 0.0
        for k in range(4):
            px, py = us[k], vs[k]
            qx, qy = us[(k + 1) % 4], vs[(k + 1) % 4]
            dx, dy = qx - px, qy - py
            a = dx * dx + dy * dy
            b = px * dx + py * dy
            disc = b * b - a * (px * px + py * py - 1.0)
            if disc <= 0.0 or a <= 0.0:
                continue
            root = math.sqrt(disc)
            t1 = (-b - root) / a
            t2 = (-b + root) / a
            if t1 >= 1.0 or t2 <= 0.0:
                continue
            m1x, m1y = px, py
            if t1 > 0.0:  # the boundary enters the disk
                m1x, m1y = px + t1 * dx, py + t1 * dy
                if pending:
                    twice += math.atan2(ex * m1y - ey * m1x, ex * m1x + ey * m1y)
                    pending = False
                else:
                    first, fx, fy = True, m1x, m1y
            m2x, m2y = qx, qy
            if t2 < 1.0:  # ... and leaves it
                m2x, m2y = px + t2 * dx, py + t2 * dy
                pending, ex, ey = True, m2x, m2y
            twice += m1x * m2y - m1y * m2x
        if pending and first:
            twice += math.atan2(ex * fy - ey * fx, ex * fx + ey * fy)
        return 0.5 * twice

    @njit(cache=True, inline="always")
    def _c_table_nb(ju, iv, u_neg, v_neg, au, av, pu, hu, hv, xm, pxm, r2, disk):
        """C(u, v) from per-column (u) and per-row (v) tables: no transcendental per pixel."""
        q = 0.0
        a_u, a_v = au[ju], av[iv]
        if a_u * a_u + a_v * a_v < r2:
            q = (pxm[iv] - a_v * xm[iv]) - pu[ju] + a_v * a_u
        if not u_neg[ju]:
            return q if not v_neg[iv] else hu[ju] - q
        return hv[iv] - q if not v_neg[iv] else disk - hu[ju] - hv[iv] + q

    @njit(parallel=True, cache=True)
    def _sum_circles_nb(data, x, y, r, sums, area):
        ny, nx = data.shape
        nmax = int(2.0 * r.max() + 4.0) if r.size else 1
        chunk = 64
        for c in prange((x.size + chunk - 1) // chunk):
            # per-chunk scratch tables (no allocation per aperture)
            au = np.empty(nmax)
            pu = np.empty(nmax)
            hu = np.empty(nmax)
            u_neg = np.empty(nmax, dtype=np.bool_)
            av = np.empty(nmax)
            hv = np.empty(nmax)
            xm = np.empty(nmax)
            pxm = np.empty(nmax)
            v_neg = np.empty(nmax, dtype=np.bool_)
            for i in range(c * chunk, min((c + 1) * chunk, x.size)):
                ri = r[i]
                r2 = ri * ri
                disk = math.pi * r2
                j0 = max(int(math.floor(x[i] - ri + 0.5)), 0)
                j1 = min(int(math.ceil(x[i] + ri - 0.5)), nx - 1)
                i0 = max(int(math.floor(y[i] - ri + 0.5)), 0)
                i1 = min(int(math.ceil(y[i] + ri - 0.5)), ny - 1)
                acc = 0.0
                acc_area = 0.0
                if j1 < j0 or i1 < i0:
                    sums[i] = 0.0
                    area[i] = 0.0
                    continue
                ncx, ncy = j1 - j0 + 2, i1 - i0 + 2
                # corner tables; u = -(corner x - x0), v = -(corner y - y0)  (S(X, Y) = C(-X, -Y))
                for k in range(ncx):
                    u = -((j0 + k - 0.5) - x[i])
                    u_neg[k] = u < 0
                    au[k] = abs(u)
                    pu[k] = _p_nb(au[k], ri)
                    hu[k] = 0.5 * disk - 2.0 * pu[k]
                for k in range(ncy):
                    v = -((i0 + k - 0.5) - y[i])
                    v_neg[k] = v < 0
                    av[k] = abs(v)
                    hv[k] = 0.5 * disk - 2.0 * _p_nb(av[k], ri)
                    xm[k] = math.sqrt(max(r2 - av[k] * av[k], 0.0))
                    pxm[k] = _p_nb(xm[k], ri)
                for row in range(i0, i1 + 1):
                    ay = abs(row - y[i])
                    iv = row - i0
                    # pixels of this row wholly inside: the far corners within r; touched: the near edge within r
                    far = ay + 0.5
                    near = max(ay - 0.5, 0.0)
                    f0, f1 = j1 + 1, j1
                    if far * far < r2:
                        hw = math.sqrt(r2 - far * far)
                        f0 = max(int(math.ceil(x[i] - hw + 0.5)), j0)
                        f1 = min(int(math.floor(x[i] + hw - 0.5)), j1)
                        if f1 < f0:
                            f0, f1 = j1 + 1, j1
                    for col in range(f0, f1 + 1):
                        v = data[row, col]
                        if not math.isnan(v):
                            acc += v
                            acc_area += 1.0
                    hw = math.sqrt(max(r2 - near * near, 0.0))
                    c0 = max(int(math.floor(x[i] - hw + 0.5)), j0)
                    c1 = min(int(math.ceil(x[i] + hw - 0.5)), j1)
                    for run in range(2):
                        ca, cb = (c0, min(f0 - 1, c1)) if run == 0 else (max(f1 + 1, c0), c1)
                        if run == 1 and f0 > f1:
                            break
                        for col in range(ca, cb + 1):
                            ju = col - j0
                            # pixel [x0, x1] x [y0, y1]: S(x1,y1) - S(x0,y1) - S(x1,y0) + S(x0,y0)
                            w = (_c_table_nb(ju + 1, iv + 1, u_neg, v_neg, au, av, pu, hu, hv, xm, pxm, r2, disk)
                                 - _c_table_nb(ju, iv + 1, u_neg, v_neg, au, av, pu, hu, hv, xm, pxm, r2, disk)
                                 - _c_table_nb(ju + 1, iv, u_neg, v_neg, au, av, pu, hu, hv, xm, pxm, r2, disk)
                                 + _c_table_nb(ju, iv, u_neg, v_neg, au, av, pu, hu, hv, xm, pxm, r2, disk))
                            if w <= 0.0:
                                continue
                            w = min(w, 1.0)
                            v = data[row, col]
                            if not math.isnan(v):
                                acc += w * v
                                acc_area += w
                sums[i] = acc
                area[i] = acc_area

    @njit(parallel=True, cache=True)
    def _sum_ellipses_nb(data, x, y, a, b, theta, sums, area):
        """Exact ellipse sums, row by row.

        The ellipse is ``A dx^2 + B dx dy + C dy^2 <= 1``; its chord at height ``dy`` is centred on
        ``-B dy / 2A`` with half-width ``sqrt(A - dy^2 / (ab)^2) / A``.  In a pixel row (the band
        ``ylo <= dy <= yhi``) the pixels touched lie between the band's leftmost and rightmost
        ellipse points, and the pixels wholly inside (the ellipse is convex: all four corners inside)
        between the larger left and the smaller right chord end of the two band edges: those add
        their value with weight 1, and only the few boundary pixels get the exact overlap (the
        pixel clipped to the ellipse in the unit-disk frame, one arctangent per boundary pixel).
        """
        ny, nx = data.shape
        for i in prange(x.size):
            ai, bi = a[i], b[i]
            c, s = math.cos(theta[i]), math.sin(theta[i])
            ia2, ib2 = 1.0 / (ai * ai), 1.0 / (bi * bi)
            qa = c * c * ia2 + s * s * ib2
            qb = 2.0 * c * s * (ia2 - ib2)
            qc = s * s * ia2 + c * c * ib2
            ab = ai * bi
            inv_ab2 = 1.0 / (ab * ab)
            ymax = ab * math.sqrt(qa)
            xmax = ab * math.sqrt(qc)
            slope = -qb / (2.0 * qa)
            dy_left = qb * xmax / (2.0 * qc)  # height of the leftmost point; the rightmost is at -dy_left
            x0, y0 = x[i], y[i]
            # disk-frame images of unit steps along x and y
            ux, vx = c / ai, -s / bi
            uy, vy = s / ai, c / bi
            i0 = max(int(math.floor(y0 - ymax + 0.5)), 0)
            i1 = min(int(math.ceil(y0 + ymax - 0.5)), ny - 1)
            acc = 0.0
            acc_area = 0.0
            for row in range(i0, i1 + 1):
                ylo = row - 0.5 - y0
                yhi = ylo + 1.0
                lo = max(ylo, -ymax)
                hi = min(yhi, ymax)
                if hi <= lo:
                    continue
                hw_lo = math.sqrt(max(qa - lo * lo * inv_ab2, 0.0)) / qa
                hw_hi = math.sqrt(max(qa - hi * hi * inv_ab2, 0.0)) / qa
                l_lo, r_lo = slope * lo - hw_lo, slope * lo + hw_lo
                l_hi, r_hi = slope * hi - hw_hi, slope * hi + hw_hi
                xl = -xmax if lo <= dy_left <= hi else min(l_lo, l_hi)
                xr = xmax if lo <= -dy_left <= hi else max(r_lo, r_hi)
                c0 = max(int(math.floor(x0 + xl + 0.5)), 0)
                c1 = min(int(math.ceil(x0 + xr - 0.5)), nx - 1)
                if c1 < c0:
                    continue
                f0, f1 = c1 + 1, c1  # wholly inside: none unless both band edges cut the ellipse
                if ylo >= -ymax and yhi <= ymax:
                    f0 = max(int(math.ceil(x0 + max(l_lo, l_hi) + 0.5)), c0)
                    f1 = min(int(math.floor(x0 + min(r_lo, r_hi) - 0.5)), c1)
                    if f1 < f0:
                        f0, f1 = c1 + 1, c1
                for col in range(f0, f1 + 1):
                    v = data[row, col]
                    if not math.isnan(v):
                        acc += v
                        acc_area += 1.0
                # boundary runs: [c0, f0 - 1] and [f1 + 1, c1] (one run c0..c1 when nothing is inside)
                ub, vb = ylo * uy, ylo * vy  # the band's bottom and top in the disk frame
                ut, vt = yhi * uy, yhi * vy
                centre_row = ylo <= 1e-9 and yhi >= -1e-9
                for run in range(2):
                    ca, cb = (c0, f0 - 1) if run == 0 else (f1 + 1, c1)
                    if run == 1 and f0 > f1:
                        break
                    xa = ca - 0.5 - x0
                    pu, pv = xa * ux, xa * vx
                    for col in range(ca, cb + 1):
                        xb = col + 0.5 - x0
                        qu, qv = xb * ux, xb * vx
                        if centre_row and xa <= 1e-9 and xb >= -1e-9:  # the pixel holds the centre
                            w = (_disk_triangle_nb(pu + ub, pv + vb, qu + ub, qv + vb)
                                 + _disk_triangle_nb(qu + ub, qv + vb, qu + ut, qv + vt)
                                 + _disk_triangle_nb(qu + ut, qv + vt, pu + ut, pv + vt)
                                 + _disk_triangle_nb(pu + ut, pv + vt, pu + ub, pv + vb))
                        else:
                            w = _quad_disk_nb(pu + ub, pv + vb, qu + ub, qv + vb, qu + ut, qv + vt, pu + ut, pv + vt)
                        w *= ab
                        pu, pv, xa = qu, qv, xb
                        if w <= 0.0:
                            continue
                        w = min(w, 1.0)
                        v = data[row, col]
                        if not math.isnan(v):
                            acc += w * v
                            acc_area += w
            sums[i] = acc
            area[i] = acc_area


def _gather(data: np.ndarray, ox: np.ndarray, oy: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Stamps (N, size, size) of the image (NaN outside) and a bool 'on the image' mask."""
    ny, nx = data.shape
    cols = ox[:, None] + np.arange(size)[None, :]
    rows = oy[:, None] + np.arange(size)[None, :]
    inside = ((rows >= 0) & (rows < ny))[:, :, None] & ((cols >= 0) & (cols < nx))[:, None, :]
    vals = data[np.clip(rows, 0, ny - 1)[:, :, None], np.clip(cols, 0, nx - 1)[:, None, :]]
    return np.where(inside, vals, np.nan), inside


def aperture_sums(
    data: np.ndarray,
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    r: float | np.ndarray | None = None,
    *,
    a: float | np.ndarray | None = None,
    b: float | np.ndarray | None = None,
    theta: float | np.ndarray = 0.0,
    mask: np.ndarray | None = None,
    chunk: int = 4096,
    backend: str = "auto",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sums of the pixels inside circular (``r``) or elliptical (``a, b, theta``) apertures, exact overlap.

    Parameters
    ----------
    data : ndarray (ny, nx)
    x, y : array-like (N,)
        0-based centres.
    r : float or ndarray, optional
        Circle radii (px).
    a, b, theta : float or ndarray, optional
        Ellipse semi-axes (px) and angle (radians, counter-clockwise from +x), instead of ``r``.
    mask : ndarray of bool, optional
        True for pixels to leave out (as NaN pixels are).
    chunk : int
        Apertures per vectorised batch of the numpy path (bounds the memory).
    backend : {"auto", "numpy", "numba"}
        "auto": the compiled loop when numba is there (and ``PSFKIT_BACKEND`` is not
        ``numpy``), else the vectorised numpy path; both give the same sums to rounding.

    Returns
    -------
    sums : ndarray (N,)
        Sum of pixel value x overlap area; NaN/masked/off-image pixels count 0.
    area : ndarray (N,)
        Overlap area of the usable pixels (px^2).
    full_area : ndarray (N,)
        Geometric area of the aperture (pi r^2 or pi a b); ``area < full_area`` means pixels were lost.
    """
    arr = np.asarray(data, dtype=float)
    xs = np.atleast_1d(np.asarray(x, dtype=float))
    ys = np.atleast_1d(np.asarray(y, dtype=float))
    if xs.shape != ys.shape:
        raise PsfkitError("x and y must have the same length")
    n = xs.size
    elliptical = r is None
    if elliptical:
        if a is None or b is None:
            raise PsfkitError("give a radius r, or the semi-axes a and b of an ellipse")
        aa = np.broadcast_to(np.asarray(a, dtype=float), xs.shape)
        bb = np.broadcast_to(np.asarray(b, dtype=float), xs.shape)
        tt = np.broadcast_to(np.asarray(theta, dtype=float), xs.shape)
        extent = np.maximum(aa, bb)
        full = np.pi * aa * bb
    else:
        rr = np.broadcast_to(np.asarray(r, dtype=float), xs.shape)
        extent = rr
        full = np.pi * rr * rr
    if n and (not np.all(np.isfinite(extent)) or np.any(extent <= 0)):
        raise PsfkitError("aperture radii must be positive numbers")
    if mask is not None:
        if np.shape(mask) != arr.shape:
            raise PsfkitError(f"the mask has shape {np.shape(mask)}, the image {arr.shape}")
        arr = np.where(np.asarray(mask, dtype=bool), np.nan, arr)
    sums = np.zeros(n)
    area = np.zeros(n)
    if n and _use_compiled(backend):
        if elliptical:
            _sum_ellipses_nb(np.ascontiguousarray(arr), xs, ys, np.ascontiguousarray(aa), np.ascontiguousarray(bb),
                             np.ascontiguousarray(tt), sums, area)
        else:
            _sum_circles_nb(np.ascontiguousarray(arr), xs, ys, np.ascontiguousarray(rr), sums, area)
        return sums, area, full
    # group apertures by stamp size so small ones do not pay for big ones
    halves = np.ceil(extent + 1.0).astype(np.int64) if n else np.zeros(0, dtype=np.int64)
    for half in np.unique(halves):
        sel_all = np.flatnonzero(halves == half)
        for start in range(0, sel_all.size, chunk):
            sel = sel_all[start:start + chunk]
            if elliptical:
                w = elliptical_overlap(xs[sel], ys[sel], aa[sel], bb[sel], tt[sel], int(half))
            else:
                w = circular_overlap(xs[sel], ys[sel], rr[sel], int(half))
            ox, oy = _stamp_grid(xs[sel], ys[sel], int(half))
            vals, _ = _gather(arr, ox, oy, 2 * int(half) + 1)
            good = np.isfinite(vals)
            sums[sel] = np.einsum("nij,nij->n", w, np.where(good, vals, 0.0))
            area[sel] = np.einsum("nij,nij->n", w, good.astype(float))
    return sums, area, full


# ---------------------------------------------------------------------------
# sky
# ---------------------------------------------------------------------------
def _clipped_stats(vals: np.ndarray, *, nsigma: float = 3.0, iterations: int = 5) -> tuple[np.ndarray, ...]:
    """Per-row sigma clipping (NaN = missing): clipped mean, median, std and count."""
    v = vals.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(iterations):
            med = np.nanmedian(v, axis=1)
            mad = 1.4826 * np.nanmedian(np.abs(v - med[:, None]), axis=1)
            std = np.nanstd(v, axis=1)
            sig = np.where(mad > 0, mad, std)
            out = np.abs(v - med[:, None]) > nsigma * sig[:, None]
            if not np.any(out):
                break
            v = np.where(out, np.nan, v)
        n = np.count_nonzero(np.isfinite(v), axis=1)
        mean = np.nanmean(v, axis=1)
        med = np.nanmedian(v, axis=1)
        std = np.nanstd(v, axis=1, ddof=1)
    return mean, med, std, n


def sky_annulus(
    data: np.ndarray,
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    r_in: float | np.ndarray,
    r_out: float | np.ndarray,
    *,
    estimator: str = "mean",
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local sky per pixel from the annulus r_in <= d < r_out (pixel centres), sigma-clipped.

    Parameters
    ----------
    data : ndarray
    x, y : array-like (N,)
    r_in, r_out : float or ndarray
        Annulus radii (px).
    estimator : {"mean", "median", "mode"}
        Clipped mean (default), clipped median, or 2.5 median - 1.5 mean.
    mask : ndarray of bool, optional
        True for pixels to leave out.

    Returns
    -------
    sky, sky_sigma : ndarray (N,)
        Sky level per pixel and the clipped scatter of one pixel.
    n_sky : ndarray of int (N,)
        Sky pixels kept.
    """
    if estimator not in ("mean", "median", "mode"):
        raise PsfkitError(f"sky estimator must be 'mean', 'median' or 'mode', not {estimator!r}")
    arr = np.asarray(data, dtype=float)
    if mask is not None:
        arr = np.where(np.asarray(mask, dtype=bool), np.nan, arr)
    xs = np.atleast_1d(np.asarray(x, dtype=float))
    ys = np.atleast_1d(np.asarray(y, dtype=float))
    rin = np.broadcast_to(np.asarray(r_in, dtype=float), xs.shape)
    rout = np.broadcast_to(np.asarray(r_out, dtype=float), xs.shape)
    if xs.size and np.any(~(rout > rin)) | np.any(rin < 0):
        raise PsfkitError("the sky annulus needs 0 <= inner radius < outer radius")
    sky = np.full(xs.size, np.nan)
    sig = np.full(xs.size, np.nan)
    nsky = np.zeros(xs.size, dtype=np.int64)
    halves = np.ceil(rout).astype(np.int64) + 1 if xs.size else np.zeros(0, dtype=np.int64)
    for half in np.unique(halves):
        sel_all = np.flatnonzero(halves == half)
        size = 2 * int(half) + 1
        step = max(1, int(4_000_000 // (size * size)))
        for start in range(0, sel_all.size, step):
            sel = sel_all[start:start + step]
            ox, oy = _stamp_grid(xs[sel], ys[sel], int(half))
            vals, _ = _gather(arr, ox, oy, size)
            gx = ox[:, None] + np.arange(size)[None, :] - xs[sel][:, None]
            gy = oy[:, None] + np.arange(size)[None, :] - ys[sel][:, None]
            d2 = gx[:, None, :] ** 2 + gy[:, :, None] ** 2
            ring = (d2 >= rin[sel, None, None] ** 2) & (d2 < rout[sel, None, None] ** 2)
            v = np.where(ring, vals, np.nan).reshape(sel.size, -1)
            mean, med, std, n = _clipped_stats(v)
            sky[sel] = {"mean": mean, "median": med, "mode": 2.5 * med - 1.5 * mean}[estimator]
            sig[sel] = std
            nsky[sel] = n
    few = nsky < 5
    sky[few] = np.nan
    sig[few] = np.nan
    return sky, sig, nsky


# ---------------------------------------------------------------------------
# photometry
# ---------------------------------------------------------------------------
def _resolve_gain(img: Image, gain: float | None) -> float | None:
    g = gain if gain is not None else img.gain
    if g is not None and not (np.isfinite(g) and g > 0):
        raise PsfkitError(f"the gain must be a positive number (e-/ADU), got {g}")
    return float(g) if g else None


def _ccd_error(flux: np.ndarray, area: np.ndarray, sky_sigma: np.ndarray, n_sky: np.ndarray, gain: float | None):
    """sigma_F^2 = F/gain + n sigma_sky^2 (1 + n/n_sky)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        var = area * sky_sigma**2 * (1.0 + area / n_sky)
        if gain:
            var = var + np.clip(flux, 0.0, None) / gain
    return np.sqrt(var)


def _positions_and_fwhm(img: Image, x, y, fwhm):
    xs = np.atleast_1d(np.asarray(x, dtype=float))
    ys = np.atleast_1d(np.asarray(y, dtype=float))
    if xs.shape != ys.shape:
        raise PsfkitError("x and y must have the same length")
    ny, nx = img.shape
    bad = ~np.isfinite(xs) | ~np.isfinite(ys) | (xs < -0.5) | (xs > nx - 0.5) | (ys < -0.5) | (ys > ny - 0.5)
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        raise PsfkitError(f"position ({xs[i]:g}, {ys[i]:g}) is outside the image (x 0..{nx - 1}, y 0..{ny - 1})")
    if fwhm is None:
        from psfkit.psf.stamps import estimate_fwhm

        fwhm = float(np.median([estimate_fwhm(img.data, a, b) for a, b in zip(xs[:50], ys[:50])])) if xs.size else 3.0
    f = np.broadcast_to(np.asarray(fwhm, dtype=float), xs.shape).copy()
    if xs.size and (not np.all(np.isfinite(f)) or np.any(f <= 0)):
        raise PsfkitError("the FWHM must be a positive number of pixels")
    return xs, ys, f


def aperture_photometry(
    image: Image | np.ndarray | str,
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    *,
    fwhm: float | np.ndarray | None = None,
    radius: float | np.ndarray | None = None,
    radius_fwhm: float = DEFAULT_RADIUS_FWHM,
    annulus: tuple[float, float] | None = None,
    annulus_fwhm: tuple[float, float] = DEFAULT_ANNULUS_FWHM,
    ellipse: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    gain: float | None = None,
    sky_estimator: str = "mean",
    mask: np.ndarray | None = None,
    zero_point: float = 0.0,
) -> Table:
    """Sky-subtracted aperture flux with its CCD-equation error, SNR and magnitude at each position.

    Parameters
    ----------
    image : Image, 2-D array or path
    x, y : array-like
        0-based centres (taken as given: centre them first, e.g. with :func:`psfkit.fit_stars`).
    fwhm : float or array, optional
        Star FWHM (px) that sets the default radii; measured from the image when omitted.
    radius : float or array, optional
        Aperture radius in px (overrides ``radius_fwhm``).
    radius_fwhm : float
        Aperture radius in FWHM units (default 1.5).
    annulus : (float, float), optional
        Sky annulus radii in px (overrides ``annulus_fwhm``).
    annulus_fwhm : (float, float)
        Sky annulus in FWHM units (default 4 to 6, clear of the star's wings).
    ellipse : (fwhm_x, fwhm_y, angle_deg) arrays, optional
        Elliptical apertures of the fitted shape: semi-axes ``k fwhm_x`` and ``k fwhm_y``
        with ``k = radius / sqrt(fwhm_x fwhm_y)``, so the area equals the circle's.
    gain : float, optional
        e-/ADU (default: header); without it the source's photon noise is left out of the error.
    sky_estimator : {"mean", "median", "mode"}
        Sigma-clipped sky estimator.
    mask : ndarray of bool, optional
        Pixels to leave out.
    zero_point : float
        Magnitude zero point: ``mag = zero_point - 2.5 log10(flux)``.

    Returns
    -------
    astropy.table.Table
        ``x``, ``y``, ``aperture_radius``, ``aperture_area``, ``aperture_sum``, ``sky``, ``sky_sigma``,
        ``n_sky``, ``flux_aper``, ``flux_aper_err``, ``snr_aper``, ``mag_aper``, ``mag_aper_err``,
        ``phot_flags``; the settings in ``meta``.
    """
    img = as_image(image)
    xs, ys, f = _positions_and_fwhm(img, x, y, fwhm)
    g = _resolve_gain(img, gain)
    if radius is None:
        if not (radius_fwhm > 0):
            raise PsfkitError(f"the aperture radius must be positive, got {radius_fwhm} FWHM")
        rad = radius_fwhm * f
    else:
        rad = np.broadcast_to(np.asarray(radius, dtype=float), xs.shape).copy()
    if annulus is None:
        r_in, r_out = annulus_fwhm[0] * f, annulus_fwhm[1] * f
    else:
        r_in = np.full(xs.shape, float(annulus[0]))
        r_out = np.full(xs.shape, float(annulus[1]))
    if xs.size and np.any(r_in < rad):
        raise PsfkitError("the sky annulus must start outside the aperture (inner radius >= aperture radius)")
    if ellipse is not None:
        fx, fy, ang = (np.broadcast_to(np.asarray(v, dtype=float), xs.shape) for v in ellipse)
        k = rad / np.sqrt(fx * fy)
        sums, area, full = aperture_sums(img.data, xs, ys, a=k * fx, b=k * fy, theta=np.radians(ang), mask=mask)
    else:
        sums, area, full = aperture_sums(img.data, xs, ys, rad, mask=mask)
    sky, sky_sigma, n_sky = sky_annulus(img.data, xs, ys, r_in, r_out, estimator=sky_estimator, mask=mask)
    flux = sums - sky * area
    err = _ccd_error(flux, area, sky_sigma, n_sky, g)
    mag, mag_err = magnitude(flux, err, zero_point)
    flags = np.zeros(xs.size, dtype=np.int64)
    ny, nx = img.shape
    ext = rad if ellipse is None else rad * np.sqrt(np.maximum(fx, fy) / np.minimum(fx, fy))
    off = (xs - ext < -0.5) | (xs + ext > nx - 0.5) | (ys - ext < -0.5) | (ys + ext > ny - 0.5)
    flags[off] |= 1
    flags[(area < full * (1 - 1e-9)) & ~off] |= 2
    flags[n_sky < 20] |= 4
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(err > 0, flux / err, np.nan)
    t = Table(
        {
            "x": xs, "y": ys, "aperture_radius": rad, "aperture_area": area, "aperture_sum": sums,
            "sky": sky, "sky_sigma": sky_sigma, "n_sky": n_sky, "flux_aper": flux, "flux_aper_err": err,
            "snr_aper": snr, "mag_aper": mag, "mag_aper_err": mag_err, "phot_flags": flags,
        }
    )
    t.meta.update(
        aperture="elliptical (fitted shape)" if ellipse is not None else "circular",
        radius_rule=f"{radius_fwhm:g} FWHM" if radius is None else "given in px",
        annulus_rule=f"{annulus_fwhm[0]:g}-{annulus_fwhm[1]:g} FWHM" if annulus is None else "given in px",
        sky_estimator=f"3-sigma clipped {sky_estimator}", gain=g, zero_point=zero_point,
        error_formula="sigma_F^2 = F/gain + n sigma_sky^2 (1 + n/n_sky)"
        + ("" if g else " without the F/gain term (no gain known)"),
        overlap="exact",
    )
    return t


def curve_of_growth(
    image: Image | np.ndarray | str,
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    radii: Sequence[float] | np.ndarray,
    *,
    fwhm: float | np.ndarray | None = None,
    annulus: tuple[float, float] | None = None,
    annulus_fwhm: tuple[float, float] = DEFAULT_ANNULUS_FWHM,
    gain: float | None = None,
    sky_estimator: str = "mean",
    mask: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Sky-subtracted flux, error and SNR of each star in circular apertures of the given radii (px).

    The sky is measured once per star in the annulus and shared by every radius.

    Returns
    -------
    dict
        ``radii`` (R,), ``flux``, ``flux_err``, ``snr``, each (N, R); ``sky``, ``sky_sigma``, ``n_sky`` (N,).
    """
    img = as_image(image)
    xs, ys, f = _positions_and_fwhm(img, x, y, fwhm)
    g = _resolve_gain(img, gain)
    radii = np.atleast_1d(np.asarray(radii, dtype=float))
    if radii.size == 0 or np.any(radii <= 0):
        raise PsfkitError("the curve of growth needs positive radii")
    r_in, r_out = (annulus_fwhm[0] * f, annulus_fwhm[1] * f) if annulus is None else annulus
    sky, sky_sigma, n_sky = sky_annulus(img.data, xs, ys, r_in, r_out, estimator=sky_estimator, mask=mask)
    flux = np.empty((xs.size, radii.size))
    area = np.empty_like(flux)
    for k, r in enumerate(radii):
        s, a, _ = aperture_sums(img.data, xs, ys, r, mask=mask)
        flux[:, k] = s - sky * a
        area[:, k] = a
    err = _ccd_error(flux, area, sky_sigma[:, None], n_sky[:, None], g)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = flux / err
    return {"radii": radii, "flux": flux, "flux_err": err, "snr": snr, "area": area,
            "sky": sky, "sky_sigma": sky_sigma, "n_sky": n_sky}


def optimal_radius(growth: dict[str, np.ndarray]) -> np.ndarray:
    """Per star, the radius of the curve of growth with the highest SNR (NaN where none is finite)."""
    snr = np.where(np.isfinite(growth["snr"]), growth["snr"], -np.inf)
    best = np.argmax(snr, axis=1)
    out = growth["radii"][best].astype(float)
    out[~np.isfinite(snr.max(axis=1))] = np.nan
    return out


def _unit_profiles(model: Any, stars: Table, half: int) -> np.ndarray | None:
    """Each star's fitted PSF at unit flux, centred on a (2 half + 1)^2 grid: (N, pixels), or None.

    ``model`` is a model name (``meta["model"]`` of a star table) or a fitted model instance.
    "Unit flux" is the model's own ``flux``: the total flux for the Gaussian, the Moffat and an
    image PSF (unit sum), the light within its ``flux_radius`` for the Lorentzian (whose total
    diverges).  Analytic shapes come from the ``fwhm_x``, ``fwhm_y``, ``angle``, ``beta`` columns;
    an image PSF needs the instance (its name alone does not hold the array).
    """
    from psfkit.psf.models import GaussianPSF, ImagePSF, LorentzianPSF, MoffatPSF
    from psfkit.datasets.simulate import star_params

    name = model if isinstance(model, str) else getattr(model, "name", "")
    n = len(stars)
    size = 2 * half + 1
    c = np.full(n, float(half))
    if name == "image":
        if not isinstance(model, ImagePSF):
            return None
        p = np.tile([0.0, 1.0, float(half), float(half)], (n, 1))
        return model.evaluate(p, (size, size))[0]
    if name not in ("gaussian", "moffat", "lorentzian") or not all(
            col in stars.colnames for col in ("fwhm_x", "fwhm_y", "angle")):
        return None
    fx = np.asarray(stars["fwhm_x"], dtype=float)
    fy = np.asarray(stars["fwhm_y"], dtype=float)
    ang = np.nan_to_num(np.asarray(stars["angle"], dtype=float))
    if name == "gaussian":
        p = star_params("gaussian", c, c, 1.0, fx, fy, ang)
        mdl = GaussianPSF(angle=True)
    elif name == "moffat":
        p = star_params("moffat", c, c, 1.0, fx, fy, ang, np.asarray(stars["beta"], dtype=float))
        mdl = MoffatPSF(angle=True)
    else:  # Lorentzian: FWHM = 2 g; amplitude for unit flux by its own flux definition
        mdl = model if isinstance(model, LorentzianPSF) else LorentzianPSF(angle=True)
        p = np.stack([np.zeros(n), np.ones(n), c, c, fx / 2.0, fy / 2.0, np.radians(ang), np.ones(n)], axis=1)
        p[:, 1] = 1.0 / mdl.flux_and_gradient(p)[0]
    return mdl.evaluate(p, (size, size), k=4)[0]


def _model_enclosed_fraction(
    model: Any, stars: Table, r: float, annulus: tuple[float, float] | None = None
) -> np.ndarray | None:
    """What a sky-subtracted circular aperture of radius r measures of each fitted star, per unit model flux.

    From the star's fitted PSF model (see :func:`_unit_profiles`; None when the model is not
    known well enough): the fraction of its ``flux`` inside the circle, minus, when ``annulus``
    (px) is given, the aperture's area times the model's mean level in the annulus (the wings
    that a local sky takes away).  For the Lorentzian it can exceed 1 (its flux is not a total).
    """
    n = len(stars)
    outer = r if annulus is None else max(r, float(annulus[1]))
    half = int(math.ceil(outer)) + 2
    vals = _unit_profiles(model, stars, half)
    if vals is None:
        return None
    size = 2 * half + 1
    x0 = np.full(n, float(half))
    w = circular_overlap(x0, x0, np.full(n, r), half).reshape(n, -1)
    frac = np.einsum("np,np->n", w, vals)
    if annulus is not None:
        grid = np.arange(size) - half
        d2 = (grid[None, :] ** 2 + grid[:, None] ** 2).ravel()
        ring = (d2 >= annulus[0] ** 2) & (d2 < annulus[1] ** 2)
        frac = frac - w.sum(axis=1) * vals[:, ring].mean(axis=1)
    return frac


def aperture_correction(
    image: Image | np.ndarray | str,
    stars: Table,
    radius: float,
    *,
    r_max: float | None = None,
    annulus: tuple[float, float] | None = None,
    gain: float | None = None,
    min_snr: float = 50.0,
    max_stars: int = 30,
    mask: np.ndarray | None = None,
    model: Any = None,
) -> dict[str, Any]:
    """Aperture correction from radius ``radius`` to the total flux, from the frame's bright isolated stars.

    For each bright (aperture SNR >= ``min_snr``) star with no other star
    within ``r_max + radius`` px, the ratio F(r_max) / F(radius) is measured on
    its curve of growth (stars flagged saturated, near the edge, with masked pixels or
    masked neighbours, or a failed fit are left out; a parameter at its bound is no reason);
    the median ratio is the correction to ``r_max``.  The
    light beyond ``r_max`` (a Moffat's wings hold about 1 per cent beyond 4 FWHM)
    comes from the stars' fitted PSF model when the table holds one (``fwhm_x``,
    ``fwhm_y``, ``angle``, ``beta`` and ``meta["model"]``, or the fitted model
    instance ``model``): the correction is divided by the model's enclosed fraction
    at ``r_max``.  The result corrects to the model's ``flux``: the total flux for
    the Gaussian, the Moffat and an image PSF, the Lorentzian's light within its
    ``flux_radius`` for the Lorentzian.

    Parameters
    ----------
    image : Image, 2-D array or path
    stars : Table
        Star table with ``x_fit``, ``y_fit``, ``fwhm`` (a :func:`psfkit.fit_stars` or
        :func:`psfkit.find_stars` result).
    radius : float
        Aperture radius (px) to correct.
    r_max : float, optional
        Largest aperture (default: the annulus' inner radius, 4 FWHM).
    annulus : (float, float), optional
        Sky annulus in px (default 4-6 FWHM of the frame).
    gain : float, optional
    min_snr : float
        Brightness cut for the stars used.
    max_stars : int
        Use at most this many (the brightest).
    mask : ndarray of bool, optional
        Pixels to leave out.
    model : str or PSFModel, optional
        The PSF model the stars were fitted with (default: ``stars.meta["model"]``); an
        image PSF must be given as the instance (e.g. ``psfkit.resolve_model(path)``).

    Returns
    -------
    dict
        ``correction`` (multiply an aperture flux by it), ``correction_err`` (its 1-sigma error,
        robust scatter / sqrt(n)), ``n_stars``, ``r_max``, ``tail_fraction`` (light beyond r_max,
        from the model; 0 without one), ``radius``.
    """
    img = as_image(image)
    if len(stars) == 0:
        raise PsfkitError("no stars to measure an aperture correction on")
    fwhm = float(np.nanmedian(np.asarray(stars["fwhm"], dtype=float)))
    if not np.isfinite(fwhm) or fwhm <= 0:
        raise PsfkitError("the star table holds no usable FWHM for an aperture correction")
    r_max = float(r_max) if r_max is not None else DEFAULT_ANNULUS_FWHM[0] * fwhm
    if not radius < r_max:
        raise PsfkitError(f"the aperture ({radius:g} px) must be smaller than r_max ({r_max:g} px)")
    ann = annulus if annulus is not None else (r_max, r_max + 2.0 * fwhm)
    xs = np.asarray(stars["x_fit"], dtype=float)
    ys = np.asarray(stars["y_fit"], dtype=float)
    ok = np.isfinite(xs) & np.isfinite(ys)
    if "flags" in stars.colnames:
        ok &= (np.asarray(stars["flags"]) & _bad_fit_bits()[0]) == 0
    d = np.hypot(xs[:, None] - xs[None, :], ys[:, None] - ys[None, :])
    np.fill_diagonal(d, np.inf)
    ok &= d.min(axis=1) > r_max + radius if len(xs) > 1 else ok
    ny, nx = img.shape
    ok &= (xs - ann[1] >= 0) & (xs + ann[1] <= nx - 1) & (ys - ann[1] >= 0) & (ys + ann[1] <= ny - 1)
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        raise PsfkitError("no isolated, unflagged star far enough from the edge for an aperture correction")
    g = curve_of_growth(img, xs[idx], ys[idx], [radius, r_max], fwhm=fwhm, annulus=ann, gain=gain, mask=mask)
    snr = g["snr"][:, 0]
    good = np.isfinite(snr) & (snr >= min_snr) & (g["flux"][:, 0] > 0)
    if not good.any():
        raise PsfkitError(f"no isolated star reaches SNR {min_snr:g} for an aperture correction")
    order = np.argsort(-snr[good])[:max_stars]
    use = np.flatnonzero(good)[order]
    ratio = g["flux"][use, 1] / g["flux"][use, 0]
    corr = float(np.median(ratio))
    if ratio.size > 1:
        scatter = 1.4826 * float(np.median(np.abs(ratio - corr)))
        # error of the median, and never below the statistical error of the brightest ratio
        rel = g["flux_err"][use] / g["flux"][use]
        floor = float(np.median(ratio * np.hypot(rel[:, 0], rel[:, 1]))) / math.sqrt(ratio.size)
        corr_err = max(1.2533 * scatter / math.sqrt(ratio.size), floor)
    else:
        rel = g["flux_err"][use[0]] / g["flux"][use[0]]
        corr_err = corr * float(np.hypot(rel[0], rel[1]))
    tail = 0.0
    if model is None:
        model = str(stars.meta.get("model", "")) if hasattr(stars, "meta") else ""
    name = model if isinstance(model, str) else getattr(model, "name", "")
    # light beyond r_max, and the wings the annulus' sky takes from the r_max aperture
    frac = _model_enclosed_fraction(model, stars[idx[use]], r_max, annulus=ann) if name else None
    if frac is not None:
        tail = float(1.0 - np.median(frac))
    total = corr / (1.0 - tail)
    return {"correction": total, "correction_err": corr_err / (1.0 - tail), "n_stars": int(use.size),
            "radius": float(radius), "r_max": r_max, "tail_fraction": tail, "to_r_max": corr,
            "model": name or None}


def _model_correction(stars: Table, radius: float, why: str, annulus: tuple[float, float] | None = None,
                      model: Any = None) -> dict[str, Any]:
    """Aperture correction from the stars' fitted PSF model alone (when the frame has no usable bright star)."""
    if model is None:
        model = str(stars.meta.get("model", ""))
    name = model if isinstance(model, str) else getattr(model, "name", "")
    ok = np.ones(len(stars), dtype=bool)
    for col in ("fwhm_x", "fwhm_y") + (("beta",) if name == "moffat" else ()):
        if name != "image" and col in stars.colnames:
            ok &= np.isfinite(np.asarray(stars[col], float))
    frac = _model_enclosed_fraction(model, stars[ok], radius, annulus=annulus) if ok.any() and name else None
    if frac is None or not np.any(frac > 0):
        return {"correction": np.nan, "correction_err": np.nan,
                "note": why + "; no usable fitted PSF model to fall back on"}
    frac = frac[frac > 0]
    corr = 1.0 / float(np.median(frac))
    spread = float(np.std(1.0 / frac)) / math.sqrt(frac.size) if frac.size > 1 else 0.0
    return {"correction": corr, "correction_err": spread, "n_stars": int(frac.size), "radius": float(radius),
            "model": name, "method": f"the fitted {name} model's enclosed fraction; no curve of growth: {why}"}


def star_photometry(
    image: Image | np.ndarray | str,
    stars: Table,
    *,
    radius: float | None = None,
    radius_fwhm: float = DEFAULT_RADIUS_FWHM,
    annulus: tuple[float, float] | None = None,
    annulus_fwhm: tuple[float, float] = DEFAULT_ANNULUS_FWHM,
    elliptical: bool = False,
    gain: float | None = None,
    sky_estimator: str = "mean",
    correction: dict[str, Any] | float | None = "auto",
    mask: np.ndarray | None = None,
    zero_point: float | None = None,
    model: Any = None,
) -> Table:
    """Both fluxes for every star of a star table: the PSF flux and the corrected aperture flux.

    The apertures sit on the fitted centres (``x_fit``, ``y_fit``) with radii in units of
    the frame's median FWHM (one radius for all stars, so one aperture correction holds
    for all).  The aperture correction comes from the frame's bright isolated stars
    (:func:`aperture_correction`) unless given.

    Parameters
    ----------
    image : Image, 2-D array or path
    stars : Table
        From :func:`psfkit.fit_stars` or :func:`psfkit.find_stars` (or :func:`psfkit.read_star_list`).
    radius, radius_fwhm, annulus, annulus_fwhm, gain, sky_estimator, mask
        As in :func:`aperture_photometry`.
    elliptical : bool
        Elliptical apertures of each star's fitted shape (same area as the circle).
    correction : "auto", dict, float or None
        "auto": measured on the frame; a dict from :func:`aperture_correction`; a number
        (error 0); None: no correction (``flux_aper_total`` is then NaN).
    zero_point : float, optional
        Default: the star table's ``meta["zero_point"]`` or 0.
    model : str or PSFModel, optional
        The model the stars were fitted with, for the light beyond the largest aperture
        (default ``stars.meta["model"]``; give the instance for an image PSF).  The corrected
        aperture flux then estimates the same quantity as ``flux_fit``: the total flux, or
        for the Lorentzian its light within ``flux_radius``.

    Returns
    -------
    astropy.table.Table
        The star table with the columns of :func:`aperture_photometry` added, plus
        ``flux_aper_total``, ``flux_aper_total_err`` (the corrected aperture flux) and
        ``flux_ratio`` = ``flux_fit / flux_aper_total`` with ``flux_ratio_err``; ``meta["flux_ratio_bright"]``
        holds its median over the bright (aperture SNR >= 50) unflagged stars: near 1 when the PSF model
        holds the stars' light, below 1 when the stars' wings are heavier than the model's.
    """
    img = as_image(image)
    for col in ("x_fit", "y_fit", "fwhm"):
        if col not in stars.colnames:
            raise PsfkitError(f"the star table has no {col!r} column")
    out = stars.copy()
    if len(out) == 0:
        raise PsfkitError("the star table is empty")
    zp = zero_point if zero_point is not None else float(stars.meta.get("zero_point", 0.0) or 0.0)
    fwhm = float(np.nanmedian(np.asarray(stars["fwhm"], dtype=float)))
    if not np.isfinite(fwhm) or fwhm <= 0:
        raise PsfkitError("the star table holds no usable FWHM")
    rad = float(radius) if radius is not None else radius_fwhm * fwhm
    ann = annulus if annulus is not None else (annulus_fwhm[0] * fwhm, annulus_fwhm[1] * fwhm)
    ellipse = None
    if elliptical:
        ellipse = (np.asarray(stars["fwhm_x"], float), np.asarray(stars["fwhm_y"], float),
                   np.nan_to_num(np.asarray(stars["angle"], float)))
    xs = np.asarray(stars["x_fit"], dtype=float)
    ys = np.asarray(stars["y_fit"], dtype=float)
    good = np.isfinite(xs) & np.isfinite(ys)
    phot = aperture_photometry(img, xs[good], ys[good], fwhm=fwhm, radius=rad, annulus=ann,
                               ellipse=None if ellipse is None else tuple(e[good] for e in ellipse),
                               gain=gain, sky_estimator=sky_estimator, mask=mask, zero_point=zp)
    for name in phot.colnames:
        if name in ("x", "y"):
            continue
        col = np.full(len(out), np.nan) if phot[name].dtype.kind == "f" else np.zeros(len(out), dtype=phot[name].dtype)
        col[good] = phot[name]
        out[name] = col
    if isinstance(correction, str) and correction == "auto":
        try:
            corr = aperture_correction(img, stars, rad, r_max=ann[0], annulus=ann, gain=gain, mask=mask, model=model)
            corr["method"] = "curve of growth of the frame's bright isolated stars"
        except PsfkitError as exc:
            corr = _model_correction(stars, rad, str(exc), annulus=ann, model=model)
    elif correction is None:
        corr = {"correction": np.nan, "correction_err": np.nan, "note": "no aperture correction asked"}
    elif isinstance(correction, dict):
        corr = correction
    else:
        corr = {"correction": float(correction), "correction_err": 0.0}
    c, ce = float(corr["correction"]), float(corr["correction_err"])
    fa, fe = np.asarray(out["flux_aper"], float), np.asarray(out["flux_aper_err"], float)
    total = fa * c
    # the correction's error is common to every star: kept separate in meta, and added here
    total_err = np.sqrt((fe * c) ** 2 + (fa * ce) ** 2)
    out["flux_aper_total"] = total
    out["flux_aper_total_err"] = total_err
    if "flux_fit" in out.colnames:
        ff = np.asarray(out["flux_fit"], float)
        fferr = np.asarray(out["flux_err"], float) if "flux_err" in out.colnames else np.zeros(len(out))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = ff / total
            out["flux_ratio"] = ratio
            out["flux_ratio_err"] = np.abs(ratio) * np.hypot(fferr / ff, total_err / total)
        # the diagnostic in one number: the median ratio of the bright, clean stars
        bright = np.isfinite(ratio) & (np.asarray(out["snr_aper"], float) >= 50) & (np.asarray(out["phot_flags"]) == 0)
        if "flags" in out.colnames:
            bright &= (np.asarray(out["flags"]) & _bad_fit_bits()[1]) == 0
        if bright.any():
            r = ratio[bright]
            med = float(np.median(r))
            spread = 1.4826 * float(np.median(np.abs(r - med)))
            out.meta["flux_ratio_bright"] = {"median": med, "err": 1.2533 * spread / math.sqrt(r.size),
                                             "n_stars": int(r.size),
                                             "rule": "snr_aper >= 50, no phot_flags, no fit flag but at_bound"}
    out.meta.update({f"phot_{k}": v for k, v in phot.meta.items()})
    if annulus is None:
        out.meta["phot_annulus_rule"] = f"{ann[0]:.2f}-{ann[1]:.2f} px ({annulus_fwhm[0]:g}-{annulus_fwhm[1]:g} FWHM)"
    if radius is None:
        out.meta["phot_radius_rule"] = f"{rad:.2f} px ({radius_fwhm:g} FWHM of the frame's median {fwhm:.2f} px)"
    out.meta["aperture_correction"] = {k: (v.item() if hasattr(v, "item") else v) for k, v in corr.items()}
    return out
