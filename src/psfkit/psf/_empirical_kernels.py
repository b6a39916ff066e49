"""Compiled (numba) kernels of the frame's PSF beside their numpy references: the cubic B-spline
evaluation, the per-node median and MAD, and the stacking step's sample pass (residuals, weights,
outlier cut and the normal equations per node).

:func:`psfkit.psf.empirical.cubic_interpolate` calls :func:`interpolate` here when the compiled
path is available (``PSFKIT_BACKEND``); the numpy code in that module is the reference that
``tests/test_empirical.py`` compares against.  Kept apart from the numpy twin for speed (about
20x on stamps of the frame's stars): the numpy version gathers a (N, P, 4, 4) array.
"""

from __future__ import annotations

import math

import numpy as np

from psfkit.backend import HAVE_NUMBA, compiled_available, numba_cache_dir

__all__ = ["available", "interpolate", "node_median_mad", "stack_normal_equations", "add_stars"]


def available() -> bool:
    """True when the compiled kernel is used."""
    return HAVE_NUMBA and compiled_available()


if HAVE_NUMBA:
    numba_cache_dir()  # a user cache folder when the package folder is read-only (README)
    from numba import njit, prange

    @njit(cache=True, inline="always")
    def _weights(t, w, dw):  # pragma: no cover - compiled
        s = 1.0 - t
        t2 = t * t
        t3 = t2 * t
        w[0] = s * s * s / 6.0
        w[1] = (3.0 * t3 - 6.0 * t2 + 4.0) / 6.0
        w[2] = (-3.0 * t3 + 3.0 * t2 + 3.0 * t + 1.0) / 6.0
        w[3] = t3 / 6.0
        dw[0] = -0.5 * s * s
        dw[1] = 1.5 * t2 - 2.0 * t
        dw[2] = -1.5 * t2 + t + 0.5
        dw[3] = 0.5 * t2

    @njit(cache=True, inline="always")
    def _spline_value(coef, g, iu, iv, wu, wv, s):  # pragma: no cover - compiled
        """The spline grid ``coef[g]`` (s x s nodes) at a point of first nodes ``iu``, ``iv`` - 1 and
        weights ``wu``, ``wv`` (:func:`_weights`); nodes off the grid count 0.
        """
        val = 0.0
        for a in range(4):
            yy = iv + a - 1
            if yy < 0 or yy >= s:
                continue
            row = 0.0
            for bb in range(4):
                xx = iu + bb - 1
                if xx < 0 or xx >= s:
                    continue
                row += wu[bb] * coef[g, yy, xx]
            val += wv[a] * row
        return val

    @njit(parallel=True, cache=True)
    def _interpolate(coef, u, v, out, du, dv, want):  # pragma: no cover - compiled
        n, p = u.shape
        stride = 0 if coef.shape[0] == 1 else 1
        sy, sx = coef.shape[1], coef.shape[2]
        for i in prange(n):
            g = i * stride
            wu = np.empty(4)
            dwu = np.empty(4)
            wv = np.empty(4)
            dwv = np.empty(4)
            for j in range(p):
                uu = u[i, j]
                vv = v[i, j]
                if not (uu >= 0.0 and uu <= sx - 1 and vv >= 0.0 and vv <= sy - 1):
                    out[i, j] = 0.0
                    if want:
                        du[i, j] = 0.0
                        dv[i, j] = 0.0
                    continue
                iu = int(math.floor(uu))
                iv = int(math.floor(vv))
                _weights(uu - iu, wu, dwu)
                _weights(vv - iv, wv, dwv)
                acc = 0.0
                accu = 0.0
                accv = 0.0
                for a in range(4):
                    y = iv + a - 1
                    if y < 0 or y >= sy:
                        continue
                    row = 0.0
                    rowd = 0.0
                    for b in range(4):
                        x = iu + b - 1
                        if x < 0 or x >= sx:
                            continue
                        c = coef[g, y, x]
                        row += wu[b] * c
                        rowd += dwu[b] * c
                    acc += wv[a] * row
                    accu += wv[a] * rowd
                    accv += dwv[a] * row
                out[i, j] = acc
                if want:
                    du[i, j] = accu
                    dv[i, j] = accv


    @njit(cache=True)
    def _node_median_mad(z, order, start, count, med, mad):  # pragma: no cover - compiled
        for k in range(count.shape[0]):
            m = count[k]
            if m == 0:
                continue
            seg = np.empty(m)
            for i in range(m):
                seg[i] = z[order[start[k] + i]]
            seg.sort()
            c = seg[m // 2]
            for i in range(m):
                seg[i] = abs(seg[i] - c)
            seg.sort()
            med[k] = c
            mad[k] = seg[m // 2]


    @njit(parallel=True, cache=True)
    def _stack_samples(coef, stamps, usable, origin, x, y, flux, bg, gain, rn2, noise2, o, s, max_snr,
                       w_out, r_out, z_out, node_out):  # pragma: no cover - compiled
        n, b, _ = stamps.shape
        c = (s - 1) / 2.0
        stride = 0 if coef.shape[0] == 1 else 1
        for i in prange(n):
            g = i * stride
            dw = np.empty(4)
            # u depends on the column only, v on the row only: their spline weights once per star
            us = np.empty(b)
            vs = np.empty(b)
            iu = np.empty(b, np.int64)
            iv = np.empty(b, np.int64)
            wu = np.empty((b, 4))
            wv = np.empty((b, 4))
            for p in range(b):
                us[p] = (p + origin[i, 0] - x[i]) * o + c
                vs[p] = (p + origin[i, 1] - y[i]) * o + c
                iu[p] = int(math.floor(us[p])) if math.isfinite(us[p]) else 0
                iv[p] = int(math.floor(vs[p])) if math.isfinite(vs[p]) else 0
                _weights(us[p] - iu[p], wu[p], dw)
                _weights(vs[p] - iv[p], wv[p], dw)
            f = flux[i]
            bk = bg[i]
            for py in range(b):
                vv = vs[py]
                for px in range(b):
                    uu = us[px]
                    mdl = 0.0
                    if uu >= 0.0 and uu <= s - 1 and vv >= 0.0 and vv <= s - 1:
                        mdl = _spline_value(coef, g, iu[px], iv[py], wu[px], wv[py], s)
                    r = (stamps[i, py, px] - bk) / f - mdl
                    expected = bk + f * mdl
                    if usable[i, py, px]:
                        if gain > 0.0:
                            var = max(expected, 0.0) / gain + rn2
                        else:
                            var = noise2
                        var = max(var, 1e-30)
                        cap = abs(expected - bk) / max_snr
                        var = max(var, cap * cap)
                        ww = f * f / var
                    else:
                        ww = 0.0
                    zz = r * math.sqrt(ww)
                    w_out[i, py, px] = ww
                    r_out[i, py, px] = r
                    z_out[i, py, px] = zz
                    if math.isfinite(zz) and uu > -0.5 and uu < s - 0.5 and vv > -0.5 and vv < s - 0.5:
                        ju = min(max(int(np.rint(uu)), 0), s - 1)
                        jv = min(max(int(np.rint(vv)), 0), s - 1)
                        node_out[i, py, px] = jv * s + ju
                    else:
                        node_out[i, py, px] = -1

    @njit(cache=True, inline="always")
    def _kth(a, n, k):  # pragma: no cover - compiled
        """The k-th smallest of a[:n] (Wirth's selection; a is reordered)."""
        lo = 0
        hi = n - 1
        while lo < hi:
            x = a[k]
            i = lo
            j = hi
            while True:
                while a[i] < x:
                    i += 1
                while x < a[j]:
                    j -= 1
                if i <= j:
                    t = a[i]
                    a[i] = a[j]
                    a[j] = t
                    i += 1
                    j -= 1
                if i > j:
                    break
            if j < k:
                lo = i
            if k < i:
                hi = j
        return a[k]

    @njit(cache=True, inline="always")
    def _add_sample(q, j, w, r, terms, group, per_star, ata, atb):  # pragma: no cover - compiled
        i = q // per_star
        gi = group[i]
        wq = w[q]
        rq = r[q]
        for a in range(terms.shape[1]):
            ta = wq * terms[i, a]
            atb[gi, j, a] += ta * rq
            for bb in range(a, terms.shape[1]):
                ata[gi, j, a, bb] += ta * terms[i, bb]

    @njit(parallel=True, cache=True)
    def _clip_and_accumulate(z, r, w, node, terms, group, per_star, n_nodes, clip, keep_in, use_keep, keep_out,
                             ata, atb):  # pragma: no cover - compiled
        m_all = z.shape[0]
        k = terms.shape[1]
        if use_keep or not clip > 0.0:
            # no clipping: every sample (or every one kept before) straight onto its node
            for q in range(m_all):
                j = node[q]
                keep_out[q] = j >= 0 and (keep_in[q] or not use_keep)
                if keep_out[q]:
                    _add_sample(q, j, w, r, terms, group, per_star, ata, atb)
        else:
            count = np.zeros(n_nodes, np.int64)
            for q in range(m_all):
                keep_out[q] = False
                if node[q] >= 0:
                    count[node[q]] += 1
            start = np.zeros(n_nodes + 1, np.int64)
            for j in range(n_nodes):
                start[j + 1] = start[j] + count[j]
            fill = start[:-1].copy()
            order = np.empty(start[n_nodes], np.int64)
            zs = np.empty(start[n_nodes])
            for q in range(m_all):
                j = node[q]
                if j >= 0:
                    order[fill[j]] = q
                    zs[fill[j]] = z[q]
                    fill[j] += 1
            for j in prange(n_nodes):  # nodes are independent: each writes its own rows
                m = count[j]
                if m == 0:
                    continue
                lo = start[j]
                buf = np.empty(m)
                for t in range(m):
                    buf[t] = zs[lo + t]
                med = _kth(buf, m, m // 2)
                for t in range(m):
                    buf[t] = abs(zs[lo + t] - med)
                scale = max(1.4826 * _kth(buf, m, m // 2), 1.0)
                for t in range(m):
                    q = order[lo + t]
                    if abs(zs[lo + t] - med) < clip * scale:
                        keep_out[q] = True
                        _add_sample(q, j, w, r, terms, group, per_star, ata, atb)
        for gi in range(ata.shape[0]):
            for j in range(n_nodes):
                for a in range(k):
                    for bb in range(a + 1, k):
                        ata[gi, j, bb, a] = ata[gi, j, a, bb]


if HAVE_NUMBA:

    @njit(cache=True)
    def _add_stars(frame, coef, x, y, flux, half, o, s):  # pragma: no cover - compiled
        ny, nx = frame.shape
        c = (s - 1) / 2.0
        b = 2 * half + 1
        stride = 0 if coef.shape[0] == 1 else 1
        dw = np.empty(4)
        us = np.empty(b)
        vs = np.empty(b)
        iu = np.empty(b, np.int64)
        iv = np.empty(b, np.int64)
        wu = np.empty((b, 4))
        wv = np.empty((b, 4))
        for i in range(x.shape[0]):
            g = i * stride
            cx = int(np.rint(x[i])) - half
            cy = int(np.rint(y[i])) - half
            for p in range(b):
                us[p] = (p + cx - x[i]) * o + c
                vs[p] = (p + cy - y[i]) * o + c
                iu[p] = int(math.floor(us[p]))
                iv[p] = int(math.floor(vs[p]))
                _weights(us[p] - iu[p], wu[p], dw)
                _weights(vs[p] - iv[p], wv[p], dw)
            for py in range(b):
                fy = cy + py
                vv = vs[py]
                if fy < 0 or fy >= ny or not (vv >= 0.0 and vv <= s - 1):
                    continue
                for px in range(b):
                    fx = cx + px
                    uu = us[px]
                    if fx < 0 or fx >= nx or not (uu >= 0.0 and uu <= s - 1):
                        continue
                    frame[fy, fx] += _spline_value(coef, g, iu[px], iv[py], wu[px], wv[py], s) * flux[i]


def add_stars(frame, coefficients, x, y, flux, half, oversampling):
    """The compiled twin of the drawing in :func:`psfkit.psf.empirical.add_stars`: each star's PSF
    (``coefficients``: one spline grid per star, or one for all) times its flux added to ``frame``
    (float64, C-contiguous) in place, on the square of ``half`` pixels about its nearest pixel.
    """
    _add_stars(frame, np.ascontiguousarray(coefficients, dtype=np.float64), np.ascontiguousarray(x, dtype=np.float64),
               np.ascontiguousarray(y, dtype=np.float64), np.ascontiguousarray(flux, dtype=np.float64), int(half),
               float(oversampling), int(coefficients.shape[-1]))
    return frame


def stack_normal_equations(coef, stamps, usable, origin, x, y, flux, background, gain, read_noise, noise, o, s,
                           max_snr, terms, clip, keep=None, groups=None):
    """The compiled twin of :func:`psfkit.psf.empirical._normal_equations`'s numpy path (same arguments and
    results: each node's normal equations, per group of stars when ``groups``, and the samples kept).
    """
    stamps = np.ascontiguousarray(stamps, dtype=np.float64)
    n, b, _ = stamps.shape
    w = np.empty(stamps.shape)
    r = np.empty(stamps.shape)
    z = np.empty(stamps.shape)
    node = np.empty(stamps.shape, np.int64)
    _stack_samples(np.ascontiguousarray(coef, dtype=np.float64), stamps, np.ascontiguousarray(usable),
                   np.ascontiguousarray(origin, dtype=np.float64), np.ascontiguousarray(x, dtype=np.float64),
                   np.ascontiguousarray(y, dtype=np.float64), np.ascontiguousarray(flux, dtype=np.float64),
                   np.ascontiguousarray(background, dtype=np.float64), float(gain or 0.0), float(read_noise) ** 2,
                   float(noise) ** 2, float(o), int(s), float(max_snr), w, r, z, node)
    k = terms.shape[1]
    group = np.zeros(n, np.int64) if groups is None else np.ascontiguousarray(groups, dtype=np.int64)
    n_groups = 1 if groups is None else int(group.max()) + 1 if n else 1
    ata = np.zeros((n_groups, s * s, k, k))
    atb = np.zeros((n_groups, s * s, k))
    keep_out = np.empty(n * b * b, np.bool_)
    keep_in = np.ascontiguousarray(keep, dtype=np.bool_).ravel() if keep is not None else keep_out
    _clip_and_accumulate(z.ravel(), r.ravel(), w.ravel(), node.ravel(), np.ascontiguousarray(terms, dtype=np.float64),
                         group, b * b, s * s, float(clip) if clip is not None else 0.0, keep_in, keep is not None,
                         keep_out, ata, atb)
    if groups is None:
        return ata[0], atb[0], keep_out.reshape(n, b, b)
    return ata, atb, keep_out.reshape(n, b, b)


def node_median_mad(z: np.ndarray, nodes: np.ndarray, n_nodes: int):
    """The compiled twin of :func:`psfkit.psf.empirical.node_median_mad` (same arguments)."""
    order = np.argsort(nodes, kind="stable")
    count = np.bincount(nodes, minlength=n_nodes)
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    med = np.zeros(n_nodes)
    mad = np.zeros(n_nodes)
    _node_median_mad(np.ascontiguousarray(z, dtype=np.float64), order, start, count, med, mad)
    return med, mad


def interpolate(coefficients: np.ndarray, u: np.ndarray, v: np.ndarray, derivatives: bool):
    """The compiled twin of :func:`psfkit.psf.empirical.cubic_interpolate` (same arguments)."""
    coef = np.ascontiguousarray(coefficients, dtype=np.float64)
    u = np.ascontiguousarray(u, dtype=np.float64)
    v = np.ascontiguousarray(v, dtype=np.float64)
    out = np.empty(u.shape)
    du = np.empty(u.shape) if derivatives else np.empty((1, 1))
    dv = np.empty(u.shape) if derivatives else np.empty((1, 1))
    _interpolate(coef, u, v, out, du, dv, derivatives)
    return (out, du, dv) if derivatives else out
