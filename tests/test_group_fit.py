"""Overlapping stars fitted as groups (psfkit.psf.group_fit, the groups of psfkit.detect.crowded):
close pairs drawn with a known PSF and noise, their fluxes and positions recovered within honest
errors, where the iterated neighbour subtraction alone is slower to converge and its errors too small."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

import psfkit
from psfkit.datasets.simulate import add_noise, star_params
from psfkit.detect import crowded
from psfkit.detect.crowded import critical_separation, star_groups
from psfkit.psf.empirical import FramePSF, add_stars
from psfkit.psf.group_fit import fit_groups
from psfkit.psf.models import MoffatPSF

GAIN, READ_NOISE, FWHM, SKY = 1.5, 6.0, 3.2, 200.0


def moffat_psf(o: int = 2, reach: int = 12) -> FramePSF:
    """The pixel-integrated Moffat (beta 3, FWHM 3.2 px) as a frame PSF (no variation, no own error)."""
    s = 2 * reach * o + 1
    offs = (np.arange(s) - (s - 1) / 2) / o
    xx, yy = np.meshgrid(offs, offs)
    p = star_params("moffat", [0.0], [0.0], [1.0], [FWHM], [FWHM], [0.0], 3.0)
    rows = np.repeat(p, xx.size, axis=0)
    rows[:, 2], rows[:, 3] = -xx.ravel(), -yy.ravel()
    grid = MoffatPSF(angle=True).evaluate(rows, (1, 1), k=8)[0].reshape(s, s)
    return FramePSF(grid[None] * o * o / grid.sum(), o, 0, (200.0, 200.0), (200.0, 200.0), 200)


def pull_std(p: np.ndarray) -> float:
    return float(np.std(p))


def test_fit_groups_recovers_close_pairs_with_honest_errors():
    """300 pairs 0.8-1.5 FWHM apart, each on its own window, fitted from a poor start: fluxes and
    positions within their errors (pull std 0.8-1.2), and the flux errors larger than a one-star
    fit's with the other star known (the pair's fluxes are anti-correlated)."""
    psf = moffat_psf()
    rng = np.random.default_rng(4)
    n, size = 300, 27
    sep = rng.uniform(0.8, 1.5, n) * FWHM
    ang = rng.uniform(0, np.pi, n)
    c = 13.0 + rng.uniform(-0.5, 0.5, (n, 2))
    xa, ya = c[:, 0] + 0.5 * sep * np.cos(ang), c[:, 1] + 0.5 * sep * np.sin(ang)
    xb, yb = c[:, 0] - 0.5 * sep * np.cos(ang), c[:, 1] - 0.5 * sep * np.sin(ang)
    fa = np.exp(rng.uniform(np.log(3e3), np.log(1e5), n))
    fb = fa * rng.uniform(0.3, 1.0, n)
    data = np.empty((n, size, size))
    for i in range(n):
        frame = add_stars(np.full((size, size), SKY), psf, [xa[i], xb[i]], [ya[i], yb[i]], [fa[i], fb[i]])
        data[i] = add_noise(frame, gain=GAIN, read_noise=READ_NOISE, rng=rng)
    truth = np.c_[np.full(n, SKY), fa, xa, ya, fb, xb, yb]
    start = truth.copy()
    start[:, 0] += 10.0
    start[:, [1, 4]] *= rng.uniform(0.7, 1.3, (n, 2))
    start[:, [2, 3, 5, 6]] += rng.uniform(-0.5, 0.5, (n, 4))
    fit = fit_groups(data, np.ones(data.shape, bool), np.zeros((n, 2)), start, psf, gain=GAIN,
                     read_noise=READ_NOISE / GAIN)
    assert fit.ok.all() and fit.converged.all()
    err = np.sqrt(np.diagonal(fit.covariance, axis1=1, axis2=2))
    pulls = (fit.params - truth) / err
    for k, name in enumerate(("background", "flux a", "x a", "y a", "flux b", "x b", "y b")):
        assert 0.8 < pull_std(pulls[:, k]) < 1.2, (name, pull_std(pulls[:, k]))
        assert abs(np.mean(pulls[:, k])) < 0.2, (name, np.mean(pulls[:, k]))
    # the fluxes of a close pair are anti-correlated, and their errors larger than each star's error
    # with the other one's light known (the inverse of its own diagonal element of J^T W J)
    rho = fit.covariance[:, 1, 4] / (err[:, 1] * err[:, 4])
    assert np.all(rho < 0)
    closest = sep < 1.0 * FWHM
    assert np.median(rho[closest]) < np.median(rho[~closest]) < 0
    info = np.linalg.inv(fit.covariance)
    conditional = 1.0 / np.sqrt(info[:, 1, 1])
    assert np.all(err[:, 1] > conditional)
    assert np.median(err[closest, 1] / conditional[closest]) > 1.15


def test_critical_separation_follows_the_psf():
    """Two Moffat stars overlap by 5 % at about 2 FWHM; a wider PSF groups farther."""
    psf = moffat_psf()
    sep = critical_separation(psf)
    assert 1.7 * FWHM < sep < 2.4 * FWHM
    wide = FramePSF(psf.coefficients, 1, 0, psf.centre, psf.scale)  # the same grid read as 1 node/px: twice wider
    assert critical_separation(wide) == pytest.approx(2 * sep, rel=0.05)


def test_star_groups_link_chains_of_neighbours():
    rng = np.random.default_rng(2)
    x, y = rng.uniform(0, 200, (2, 400))
    label = star_groups(x, y, 6.0)
    d, j = cKDTree(np.c_[x, y]).query(np.c_[x, y], k=2)
    close = d[:, 1] < 6.0
    assert np.all(label[close] == label[j[close, 1]])  # a star and its neighbour: one group
    # stars of different groups are farther apart than the separation
    pairs = cKDTree(np.c_[x, y]).query_pairs(6.0, output_type="ndarray")
    assert np.all(label[pairs[:, 0]] == label[pairs[:, 1]])
    assert len(np.unique(label)) > 200
    assert star_groups(np.array([np.nan, 1.0]), np.array([0.0, 0.0]), 6.0).tolist() == [-1, 0]


def pair_field(seed: int):
    """A 480 x 480 frame of 144 pairs 0.8-1.5 FWHM apart (fluxes 5e3-5e4 ADU, the fainter 0.3-1 of the
    brighter), drawn with the known PSF; the pairs 36 px apart."""
    psf = moffat_psf()
    rng = np.random.default_rng(seed)
    size = 480
    cells = np.arange(24, size - 24, 36.0)
    cx, cy = (a.ravel() for a in np.meshgrid(cells, cells))
    n = len(cx)
    sep = rng.uniform(0.8, 1.5, n) * FWHM
    ang = rng.uniform(0, np.pi, n)
    fa = np.exp(rng.uniform(np.log(5e3), np.log(5e4), n))
    x = np.r_[cx + 0.5 * sep * np.cos(ang), cx - 0.5 * sep * np.cos(ang)] + rng.uniform(-0.5, 0.5, 2 * n)
    y = np.r_[cy + 0.5 * sep * np.sin(ang), cy - 0.5 * sep * np.sin(ang)] + rng.uniform(-0.5, 0.5, 2 * n)
    f = np.r_[fa, fa * rng.uniform(0.3, 1.0, n)]
    data = add_noise(add_stars(np.full((size, size), SKY), psf, x, y, f), gain=GAIN, read_noise=READ_NOISE, rng=rng)
    return psfkit.Image(data=data, gain=GAIN, read_noise=READ_NOISE), psf, x, y, f


def pair_pulls(stars, x, y, f):
    """Flux, x and y pulls and flux ratios of the pairs whose two stars were both found (within 1 px)."""
    n = len(x) // 2
    d, i = cKDTree(np.c_[stars["x_fit"], stars["y_fit"]]).query(np.c_[x, y])
    both = (d[:n] < 1.0) & (d[n:] < 1.0) & (i[:n] != i[n:])
    sel = np.r_[both, both]
    j = i[sel]
    pulls = {col: (np.asarray(stars[col], float)[j] - truth[sel]) / np.asarray(stars[col.split("_")[0] + "_err"])[j]
             for col, truth in (("flux_fit", f), ("x_fit", x), ("y_fit", y))}
    return pulls, np.asarray(stars["flux_fit"], float)[j] / f[sel], both.mean()


@pytest.mark.slow
def test_crowded_pass_fits_close_pairs_as_groups(monkeypatch):
    """find --deblend on close pairs: with the group fits the pairs' fluxes and positions are within
    their errors (pull std 0.8-1.2); the iterated subtraction alone (MAX_GROUP = 1), in as many rounds,
    leaves them scattered several times more and its errors too small."""
    img, psf, x, y, f = pair_field(seed=0)
    grouped = psfkit.find_stars(img, deblend=True, psf=psf)
    groups = grouped.meta["crowded"]["groups"]
    # pairs (a third star found on the residual beside a pair, merged later, can make a group of 3)
    assert groups["groups"] >= 100 and groups["largest"] <= 3 and groups["failed"] <= 2
    pulls, ratio, found = pair_pulls(grouped, x, y, f)
    assert found > 0.75  # both stars of most pairs (at 0.8 FWHM a pair is one peak for any method)
    for name, p in pulls.items():
        assert 0.8 < np.std(p) < 1.2, (name, np.std(p))
        # ~140 pairs whose two members' errors are correlated: the median's own scatter is ~0.1
        assert abs(np.median(p)) < 0.35, (name, np.median(p))
    assert abs(np.median(ratio) - 1) < 0.005
    monkeypatch.setattr(crowded, "MAX_GROUP", 1)
    iterated = psfkit.find_stars(img, deblend=True, psf=psf)
    assert iterated.meta["crowded"]["groups"]["groups"] == 0
    it_pulls, it_ratio, _ = pair_pulls(iterated, x, y, f)
    assert np.std(it_ratio) > 2.0 * np.std(ratio)
    assert np.std(it_pulls["flux_fit"]) > 2.0
    assert 1.4826 * np.median(np.abs(it_pulls["flux_fit"] - np.median(it_pulls["flux_fit"]))) > 1.25


def test_groups_larger_than_max_group_keep_the_iterated_fits(monkeypatch):
    """A chain of three close stars with MAX_GROUP = 2: left to the rounds (counted), nothing lost."""
    psf = moffat_psf()
    rng = np.random.default_rng(5)
    size = 160
    x = np.array([60.0, 64.2, 68.1, 110.3, 30.2, 120.7, 40.6, 90.4, 130.2, 25.5])
    y = np.array([80.0, 81.5, 79.4, 40.7, 30.9, 120.2, 125.1, 130.6, 80.8, 90.3])
    f = np.array([3e4, 2e4, 2.5e4, 4e4, 3e4, 2e4, 3e4, 2e4, 3.5e4, 2.5e4])
    data = add_noise(add_stars(np.full((size, size), SKY), psf, x, y, f), gain=GAIN, read_noise=READ_NOISE, rng=rng)
    monkeypatch.setattr(crowded, "MAX_GROUP", 2)
    stars = psfkit.find_stars(psfkit.Image(data=data, gain=GAIN, read_noise=READ_NOISE), deblend=True, psf=psf)
    groups = stars.meta["crowded"]["groups"]
    assert groups["too_large"] >= 1 and groups["groups"] == 0
    d, _ = cKDTree(np.c_[stars["x_fit"], stars["y_fit"]]).query(np.c_[x, y])
    assert np.all(d[3:] < 0.3)
