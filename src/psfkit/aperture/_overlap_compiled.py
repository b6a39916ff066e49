"""Compiled (numba) exact-overlap sums: the twins of :mod:`psfkit.aperture.overlap`, kept apart for speed.

The loops go row by row: in each row the pixels wholly inside the aperture follow from the
chord ends at the row's two edges and add with weight 1, and only the boundary pixels get the
exact overlap (circles: the table of row and column terms of
:func:`psfkit.aperture.overlap.circular_overlap`; ellipses: the pixel clipped to the unit disk,
whose outside stretches telescope into one circular sector each, one arctangent per pixel).

The numpy functions of :mod:`psfkit.aperture.overlap` are the reference; ``tests/test_photometry.py``
compares the two.  The loops repeat the geometry of those functions on purpose, one pixel at a
time without temporary arrays: that is what makes them fast.
"""

from __future__ import annotations

import math

import numpy as np

from psfkit.backend import numba_cache_dir

__all__ = ["HAVE_NUMBA", "sum_circles", "sum_ellipses"]

numba_cache_dir()  # a user cache folder when the package folder is read-only (README)

try:  # numba is a dependency, but the numpy path works without it
    from numba import njit, prange

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    HAVE_NUMBA = False


if HAVE_NUMBA:

    @njit(cache=True, inline="always")
    def _p_nb(x, r):
        if x >= r:
            return 0.25 * math.pi * r * r
        return 0.5 * (x * math.sqrt(r * r - x * x) + r * r * math.asin(x / r))

    @njit(cache=True, inline="always")
    def _sector_nb(ax, ay, bx, by):
        return 0.5 * math.atan2(ax * by - ay * bx, ax * bx + ay * by)

    # the scalar twin of psfkit.aperture.overlap._disk_triangle (vectorised numpy): compiled kernels
    # kept apart from their numpy twins for speed (the twins are the reference the tests compare with)
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
    def sum_circles(data, x, y, r, sums, area):
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

    # sum_ellipses' row loop and accumulation repeat sum_circles' on purpose: compiled kernels kept apart
    # for speed, each one loop with its own geometry inlined (a shared loop would call the geometry per pixel)
    @njit(parallel=True, cache=True)
    def sum_ellipses(data, x, y, a, b, theta, sums, area):
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

