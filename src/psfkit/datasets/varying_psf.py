"""A simulated field whose PSF is no analytic model: a Moffat core, a faint broad halo, a shape that
changes across the field (as real optics give), with its truth.

The PSF at frame position (x, y), with r the distance to the frame's centre over the corner's:

- core: Moffat beta = 3, FWHM ``fwhm * (1 + growth * r^2)``, roundness ``1 - elongation * r^2``,
  its long axis radial (the field's own astigmatism);
- halo: Moffat beta = 3, ``halo_width`` times the core's FWHM, holding ``halo_fraction`` of the flux.

Every star is pixel-integrated (8 x 8 Gauss-Legendre nodes per pixel for the core, 2 x 2 for the halo)
out to where the halo holds less than 1e-4 of the flux; Poisson and read noise are drawn from the
integrated image.
"""

from __future__ import annotations

import math

import numpy as np
from astropy.table import Table

from psfkit.datasets.simulate import add_noise, random_positions
from psfkit.psf.models import MoffatPSF

__all__ = ["psf_shape_at", "render_varying_psf", "simulate_varying_field"]


def psf_shape_at(x, y, shape, *, fwhm=3.2, growth=0.25, elongation=0.15):
    """Core FWHM (geometric mean, px), roundness and angle (degrees) of the field's PSF at (x, y).

    Examples
    --------
    >>> f, q, a = psf_shape_at(50.0, 50.0, (101, 101))
    >>> round(float(f), 2), round(float(q), 2)
    (3.2, 1.0)
    """
    ny, nx = shape
    xc, yc = (nx - 1) / 2.0, (ny - 1) / 2.0
    rc = math.hypot(xc, yc)
    dx, dy = np.asarray(x, dtype=float) - xc, np.asarray(y, dtype=float) - yc
    r2 = (dx * dx + dy * dy) / (rc * rc)
    return fwhm * (1.0 + growth * r2), 1.0 - elongation * r2, np.degrees(np.arctan2(dy, dx))


def _moffat_rows(x, y, flux, fwhm, roundness, angle, beta):
    fx, fy = fwhm / np.sqrt(roundness), fwhm * np.sqrt(roundness)
    b = np.full_like(fx, beta)
    ax, ay = MoffatPSF.widths_from_fwhm(fx, b), MoffatPSF.widths_from_fwhm(fy, b)
    amp = flux * (b - 1) / (np.pi * ax * ay)
    return np.column_stack([np.zeros_like(fx), amp, x, y, ax, ay, np.radians(angle), b])


def render_varying_psf(shape, x, y, flux, *, fwhm=3.2, growth=0.25, elongation=0.15, halo_fraction=0.1,
                       halo_width=3.0, beta=3.0):
    """Noise-free image (pixel-integrated) of stars with the field's PSF.

    Examples
    --------
    >>> img = render_varying_psf((61, 61), [30.0], [30.0], [1000.0])
    >>> round(float(img.sum()) / 1000.0, 2)
    1.0
    """
    ny, nx = shape
    x, y, flux = (np.atleast_1d(np.asarray(v, dtype=float)) for v in (x, y, flux))
    f, q, a = psf_shape_at(x, y, shape, fwhm=fwhm, growth=growth, elongation=elongation)
    core = _moffat_rows(x, y, flux * (1 - halo_fraction), f, q, a, beta)
    halo = _moffat_rows(x, y, flux * halo_fraction, f * halo_width, np.ones_like(f), a, beta)
    model = MoffatPSF(angle=True)
    img = np.zeros(shape)
    for rows, k in ((core, 8), (halo, 2)):  # the broad halo varies little within a pixel
        for row in rows:
            a_max = max(row[4], row[5])
            r = int(math.ceil(a_max * math.sqrt(1e-4 ** (1.0 / (1.0 - row[7])) - 1.0))) + 2
            cx, cy = int(round(row[2])), int(round(row[3]))
            x0, x1, y0, y1 = max(cx - r, 0), min(cx + r + 1, nx), max(cy - r, 0), min(cy + r + 1, ny)
            if x0 >= x1 or y0 >= y1:
                continue
            p = row.copy()
            p[2] -= x0
            p[3] -= y0
            vals, _ = model.evaluate(p[None], (y1 - y0, x1 - x0), k=k)
            img[y0:y1, x0:x1] += vals.reshape(y1 - y0, x1 - x0)
    return img


def simulate_varying_field(
    shape: tuple[int, int] = (800, 800),
    n_stars: int = 400,
    *,
    fwhm: float = 3.2,
    growth: float = 0.25,
    elongation: float = 0.15,
    halo_fraction: float = 0.1,
    halo_width: float = 3.0,
    flux_range: tuple[float, float] = (2e3, 3e5),
    background: float = 200.0,
    gain: float = 1.5,
    read_noise: float = 6.0,
    min_separation: float = 12.0,
    edge: int = 10,
    seed: int | None = 0,
) -> tuple[np.ndarray, Table]:
    """A noisy frame of stars whose PSF has a halo and changes across the field, and its truth.

    The truth table has ``x``, ``y``, ``flux`` (total, to infinity), ``fwhm`` (the core's
    geometric-mean FWHM at the star's place), ``roundness``, ``angle`` and ``snr``.

    Examples
    --------
    >>> data, truth = simulate_varying_field((200, 200), 20, seed=1)
    >>> data.shape, len(truth)
    ((200, 200), 20)
    """
    rng = np.random.default_rng(seed)
    xs, ys = random_positions(rng, n_stars, shape, edge=edge, min_separation=min_separation)
    x, y = np.asarray(xs), np.asarray(ys)
    flux = np.exp(rng.uniform(np.log(flux_range[0]), np.log(flux_range[1]), len(x)))
    stars = render_varying_psf(shape, x, y, flux, fwhm=fwhm, growth=growth, elongation=elongation,
                               halo_fraction=halo_fraction, halo_width=halo_width)
    img = add_noise(background + stars, gain=gain, read_noise=read_noise, rng=rng)
    f, q, a = psf_shape_at(x, y, shape, fwhm=fwhm, growth=growth, elongation=elongation)
    bg_var = background / gain + (read_noise / gain) ** 2
    area = math.pi * (f / 1.1774) ** 2 / 2.0  # the core's effective area (Gaussian approximation)
    snr = flux / np.sqrt(flux / gain + 2.0 * area * bg_var)
    truth = Table({"x": x, "y": y, "flux": flux, "fwhm": f, "roundness": q, "angle": a, "snr": snr})
    truth.meta.update(gain=gain, read_noise=read_noise, background=background, halo_fraction=halo_fraction,
                      halo_width=halo_width, growth=growth, elongation=elongation, core_fwhm=fwhm)
    return img, truth
