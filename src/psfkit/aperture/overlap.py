"""Exact area of every pixel inside a circle or an ellipse (the geometry of aperture photometry).

Coordinates are 0-based pixel centres (x = column, y = row): pixel ``(i, j)``
covers ``[j - 0.5, j + 0.5] x [i - 0.5, i + 0.5]``, as in photutils and SEP.

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


The compiled twins of these functions (row by row, see :mod:`psfkit.aperture._overlap_compiled`)
sum the pixels inside apertures without building the stamps; :func:`psfkit.aperture.sums.aperture_sums`
chooses between the two.
"""

from __future__ import annotations

import numpy as np

__all__ = ["circular_overlap", "elliptical_overlap"]


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

    Examples
    --------
    The overlaps of a circle of radius 3 px add up to its area, 9 pi:

    >>> import numpy as np
    >>> weights = circular_overlap(np.array([10.0]), np.array([10.0]), np.array([3.0]), 4)
    >>> weights.shape, round(float(weights.sum()), 6), round(9 * np.pi, 6)
    ((1, 9, 9), 28.274334, 28.274334)
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

    Examples
    --------
    >>> import numpy as np
    >>> weights = elliptical_overlap(np.array([10.0]), np.array([10.0]), 4.0, 2.0, 0.5, 5)
    >>> weights.shape, round(float(weights.sum()), 6), round(8 * np.pi, 6)
    ((1, 11, 11), 25.132741, 25.132741)
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



def _gather(data: np.ndarray, ox: np.ndarray, oy: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Stamps (N, size, size) of the image (NaN outside) and a bool 'on the image' mask."""
    ny, nx = data.shape
    cols = ox[:, None] + np.arange(size)[None, :]
    rows = oy[:, None] + np.arange(size)[None, :]
    inside = ((rows >= 0) & (rows < ny))[:, :, None] & ((cols >= 0) & (cols < nx))[:, None, :]
    vals = data[np.clip(rows, 0, ny - 1)[:, :, None], np.clip(cols, 0, nx - 1)[:, None, :]]
    return np.where(inside, vals, np.nan), inside
