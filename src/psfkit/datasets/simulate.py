"""Simulated stars and fields with a truth table.

Photon noise is drawn from the *pixel-integrated* profile (what a detector records):
each star is rendered with the model's Gauss-Legendre pixel integration at
high order, then Poisson noise (in electrons) and Gaussian read noise are
added.  Used by the tests and benchmarks, and useful to anyone who wants to
check psfkit (or another tool) against known truth.
"""

from __future__ import annotations

import math

import numpy as np
from astropy.table import Table

from psfkit.psf.engine import NoiseModel
from psfkit.psf.models import FWHM_PER_SIGMA, GaussianPSF, MoffatPSF, get_model

__all__ = [
    "random_positions",
    "render_stars",
    "add_noise",
    "simulate_field",
    "simulate_stamps",
    "star_params",
    "render_galaxy",
]


def star_params(
    model: str, x0, y0, flux, fwhm_x, fwhm_y, angle_deg, beta=None, background=0.0
) -> np.ndarray:
    """Model parameter rows (N, n_params) from physical quantities (flux = the model's flux, the total
    for the Gaussian and the Moffat): :meth:`psfkit.psf.models.PSFModel.params_from_shape` of the named model.

    Examples
    --------
    >>> star_params("gaussian", 10.0, 12.0, 1000.0, 3.0, 3.0, 0.0).shape
    (1, 7)
    """
    return get_model(model).params_from_shape(x0, y0, fwhm_x, fwhm_y, angle_deg, flux=flux, beta=beta,
                                              background=background)


def _model(name: str):
    return GaussianPSF(angle=True) if name == "gaussian" else MoffatPSF(angle=True)


def render_stars(shape: tuple[int, int], params: np.ndarray, *, model: str = "gaussian",
                 radius: int | None = None) -> np.ndarray:
    """Noise-free image of the stars (background column ignored), pixel-integrated.

    Each star is rendered in a box of half-size ``radius`` (default: enough to
    hold all but ~1e-6 of the Gaussian's flux, or 99.5% of a Moffat's) with
    8x8 Gauss-Legendre nodes per pixel.

    Examples
    --------
    >>> p = star_params("gaussian", [7.0], [7.0], [1000.0], [3.0], [3.0], [0.0])
    >>> image = render_stars((15, 15), p)
    >>> image.shape, round(float(image.sum()), 3)
    ((15, 15), 1000.0)
    """
    ny, nx = shape
    img = np.zeros(shape)
    mdl = _model(model)
    p = np.array(params, dtype=float)
    for row in p:
        fwhm = max(mdl.fwhm_and_gradient(row[None])[0][0], mdl.fwhm_and_gradient(row[None])[1][0])
        if radius is not None:
            r = radius
        elif model == "gaussian":
            r = int(math.ceil(3.0 * fwhm)) + 2
        else:
            beta = row[7]
            # radius holding 99.5 % of the flux: (1 + (r/a)^2)^(1-beta) = 0.005
            a = max(row[4], row[5])
            r = int(math.ceil(a * math.sqrt(0.005 ** (1.0 / (1.0 - beta)) - 1.0))) + 2
            r = min(r, 6 * int(math.ceil(fwhm)) + 10)
        cx, cy = int(round(row[2])), int(round(row[3]))
        x0, x1 = max(cx - r, 0), min(cx + r + 1, nx)
        y0, y1 = max(cy - r, 0), min(cy + r + 1, ny)
        if x0 >= x1 or y0 >= y1:
            continue
        q = row.copy()
        q[0] = 0.0
        q[2] -= x0
        q[3] -= y0
        vals, _ = mdl.evaluate(q[None], (y1 - y0, x1 - x0), k=8)
        img[y0:y1, x0:x1] += vals.reshape(y1 - y0, x1 - x0)
    return img


def add_noise(expected: np.ndarray, *, gain: float, read_noise: float = 0.0,
              rng: np.random.Generator | None = None) -> np.ndarray:
    """Poisson noise in electrons plus Gaussian read noise (e-), returned in data units (ADU).

    Examples
    --------
    100 ADU at 2 e-/ADU with 4 e- read noise: sqrt(100 / 2 + (4 / 2)^2) = 7.35 ADU of noise:

    >>> import numpy as np
    >>> noisy = add_noise(np.full((100, 100), 100.0), gain=2.0, read_noise=4.0, rng=np.random.default_rng(0))
    >>> round(float(noisy.mean())), round(float(noisy.std()), 1)
    (100, 7.4)
    """
    rng = np.random.default_rng() if rng is None else rng
    electrons = rng.poisson(np.clip(expected, 0, None) * gain).astype(float)
    if read_noise:
        electrons += rng.normal(0.0, read_noise, expected.shape)
    return electrons / gain


def simulate_stamps(
    n: int,
    *,
    size: int = 15,
    model: str = "gaussian",
    flux=10000.0,
    fwhm_x=3.0,
    fwhm_y=None,
    angle_deg=0.0,
    beta=3.0,
    background: float = 100.0,
    gain: float = 1.0,
    read_noise: float = 5.0,
    jitter: float = 0.5,
    seed: int | None = 0,
) -> tuple[np.ndarray, Table]:
    """N noisy stamps of shape (size, size), one star each near the centre, and the truth.

    Returns
    -------
    stamps : ndarray (N, size, size)
    truth : Table with x0, y0 (stamp-local), flux, fwhm_x, fwhm_y, angle, beta, background

    Examples
    --------
    >>> stamps, truth = simulate_stamps(20, size=15, fwhm_x=3.0, seed=0)
    >>> stamps.shape, truth.colnames[:3]
    ((20, 15, 15), ['x0', 'y0', 'flux'])
    """
    rng = np.random.default_rng(seed)
    c = (size - 1) / 2.0
    x0 = c + rng.uniform(-jitter, jitter, n)
    y0 = c + rng.uniform(-jitter, jitter, n)
    fwhm_y = fwhm_x if fwhm_y is None else fwhm_y
    flux, fwhm_x, fwhm_y, angle_deg, beta = (np.broadcast_to(np.asarray(v, float), (n,))
                                             for v in (flux, fwhm_x, fwhm_y, angle_deg, beta))
    p = star_params(model, x0, y0, flux, fwhm_x, fwhm_y, angle_deg, beta, background)
    mdl = _model(model)
    if n:
        vals = np.concatenate([mdl.evaluate(p[i : i + 256], (size, size), k=8)[0] for i in range(0, n, 256)])
    else:
        vals = np.zeros((0, size * size))
    expected = vals.reshape(n, size, size)
    stamps = add_noise(expected, gain=gain, read_noise=read_noise, rng=rng)
    truth = Table(
        {"x0": x0, "y0": y0, "flux": flux, "fwhm_x": fwhm_x, "fwhm_y": fwhm_y, "angle": angle_deg,
         "beta": beta if model == "moffat" else np.full(n, np.nan), "background": np.full(n, background)}
    )
    truth.meta.update(model=model, gain=gain, read_noise=read_noise)
    return stamps, truth


def random_positions(rng: np.random.Generator, n: int, shape: tuple[int, int], *, edge: float = 0.0,
                     min_separation: float = 0.0) -> tuple[list[float], list[float]]:
    """Up to ``n`` uniform random positions (x, y) at least ``edge`` from the frame's border and
    ``min_separation`` apart (50 tries a position at most).

    Examples
    --------
    >>> xs, ys = random_positions(np.random.default_rng(0), 10, (100, 100), edge=5, min_separation=3)
    >>> len(xs), min(xs) >= 5
    (10, True)
    """
    ny, nx = shape
    xs: list[float] = []
    ys: list[float] = []
    tries = 0
    while len(xs) < n and tries < n * 50:
        tries += 1
        x, y = rng.uniform(edge, nx - 1 - edge), rng.uniform(edge, ny - 1 - edge)
        if min_separation > 0 and xs:
            d2 = (np.asarray(xs) - x) ** 2 + (np.asarray(ys) - y) ** 2
            if d2.min() < min_separation**2:
                continue
        xs.append(x)
        ys.append(y)
    return xs, ys


def simulate_field(
    shape: tuple[int, int] = (1024, 1024),
    n_stars: int = 300,
    *,
    model: str = "gaussian",
    fwhm: float = 3.5,
    roundness: float = 0.9,
    angle_deg: float | str | np.ndarray = 30.0,
    beta: float = 3.0,
    flux_range: tuple[float, float] = (300.0, 3e5),
    background: float = 200.0,
    gradient: float = 0.0,
    gain: float = 1.5,
    read_noise: float = 6.0,
    hot_pixels: int = 0,
    cosmic_rays: int = 0,
    saturation: float | None = None,
    min_separation: float = 0.0,
    edge: int = 0,
    seed: int | None = 0,
) -> tuple[np.ndarray, Table]:
    """A noisy frame with stars (log-uniform fluxes), optional gradient, hot pixels,
    cosmic rays and saturation, and its truth table.

    ``angle_deg`` is one angle for every star (degrees, counter-clockwise from +x), one per
    star, or ``"random"`` (uniform in [-90, 90), drawn after the positions and fluxes).

    The truth table has ``x``, ``y`` (0-based), ``flux``, ``fwhm_x``, ``fwhm_y``,
    ``angle``, ``peak`` (expected peak pixel above background), ``snr``
    (optimal-PSF SNR), ``saturated``.  Hot pixels and cosmic rays are listed in
    ``truth.meta['artefacts']``.

    Examples
    --------
    >>> data, truth = simulate_field((128, 128), 10, fwhm=3.0, seed=1)
    >>> data.shape, len(truth), truth.colnames[:3]
    ((128, 128), 10, ['x', 'y', 'flux'])
    """
    rng = np.random.default_rng(seed)
    ny, nx = shape
    xs, ys = random_positions(rng, n_stars, shape, edge=edge, min_separation=min_separation)
    n = len(xs)
    flux = np.exp(rng.uniform(np.log(flux_range[0]), np.log(flux_range[1]), n))
    fx = np.full(n, fwhm / math.sqrt(roundness))
    fy = np.full(n, fwhm * math.sqrt(roundness))
    if isinstance(angle_deg, str):
        if angle_deg != "random":
            raise ValueError(f"angle_deg must be degrees or 'random', not {angle_deg!r}")
        ang = rng.uniform(-90.0, 90.0, n)
    else:
        ang = np.broadcast_to(np.asarray(angle_deg, dtype=float), (n,)).copy()
    p = star_params(model, xs, ys, flux, fx, fy, ang, beta, 0.0)
    stars = render_stars(shape, p, model=model)
    yy, xx = np.mgrid[0:ny, 0:nx]
    sky = background * (1.0 + gradient * (xx / nx + 0.5 * yy / ny))
    expected = sky + stars
    img = add_noise(expected, gain=gain, read_noise=read_noise, rng=rng)
    bg_var = float(NoiseModel(gain=gain, read_noise=read_noise / gain).variance(np.asarray(background)))
    artefacts = []
    for _ in range(hot_pixels):
        x, y = rng.integers(0, nx), rng.integers(0, ny)
        img[y, x] += rng.uniform(20, 200) * math.sqrt(bg_var)
        artefacts.append(("hot_pixel", int(x), int(y)))
    for _ in range(cosmic_rays):
        x, y = rng.integers(2, nx - 3), rng.integers(2, ny - 3)
        length = rng.integers(1, 4)
        dx, dy = rng.choice([-1, 0, 1]), rng.choice([0, 1])
        for k in range(length):
            img[y + k * dy, x + k * dx] += rng.uniform(50, 500) * math.sqrt(background / gain)
        artefacts.append(("cosmic_ray", int(x), int(y)))
    sat = np.zeros(n, dtype=bool)
    if saturation is not None:
        over = img >= saturation
        img = np.minimum(img, saturation)
        for i in range(n):
            cx, cy = int(round(xs[i])), int(round(ys[i]))
            sat[i] = bool(over[max(cy - 1, 0) : cy + 2, max(cx - 1, 0) : cx + 2].any())
    mdl = _model(model)
    peak_pix = mdl.peak(p)  # continuous peak; close to the pixel peak for FWHM >~ 2
    # optimal SNR of a PSF fit (background-limited + photon noise), Gaussian approximation
    area = 4 * np.pi * (fx * fy) / (FWHM_PER_SIGMA**2)
    snr = flux / np.sqrt(flux / gain + area * bg_var)
    truth = Table({"x": np.asarray(xs), "y": np.asarray(ys), "flux": flux, "fwhm_x": fx, "fwhm_y": fy,
                   "angle": ang, "peak": peak_pix, "snr": snr, "saturated": sat})
    truth.meta.update(model=model, gain=gain, read_noise=read_noise, background=background,
                      gradient=gradient, beta=beta if model == "moffat" else None, artefacts=artefacts,
                      saturation=saturation)
    return img, truth


def render_galaxy(
    shape: tuple[int, int],
    x0: float,
    y0: float,
    *,
    disk_peak: float,
    disk_scale: float,
    bulge_peak: float,
    bulge_fwhm: float,
    axis_ratio: float = 0.8,
    angle_deg: float = 0.0,
    n_knots: int = 0,
    knot_peak: tuple[float, float] = (0.2, 1.0),
    knot_fwhm: tuple[float, float] = (5.0, 10.0),
    seed: int | None = 0,
) -> tuple[np.ndarray, Table]:
    """Noise-free light of a disk galaxy (per pixel, data units) and the table of its knots.

    An exponential disk (central surface brightness ``disk_peak``, scale length ``disk_scale``
    px, flattened to ``axis_ratio`` along ``angle_deg``), a Gaussian bulge of ``bulge_fwhm``
    and ``n_knots`` Gaussian knots (HII regions) of FWHM drawn from ``knot_fwhm`` px and peaks
    from ``knot_peak`` times the disk's light where they sit, placed on the disk between 1 and 3
    scale lengths from the centre.  Add it to a frame's expected light before the noise.

    Returns
    -------
    light : ndarray of ``shape``
    knots : Table with ``x``, ``y`` (0-based), ``fwhm``, ``peak``

    Examples
    --------
    >>> light, knots = render_galaxy((128, 128), 64, 64, disk_peak=100.0, disk_scale=10.0,
    ...                              bulge_peak=200.0, bulge_fwhm=4.0, n_knots=3)
    >>> round(float(light[64, 64])), len(knots)
    (300, 3)
    """
    rng = np.random.default_rng(seed)
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype(float)
    t = math.radians(angle_deg)
    u = (xx - x0) * math.cos(t) + (yy - y0) * math.sin(t)
    v = (-(xx - x0) * math.sin(t) + (yy - y0) * math.cos(t)) / axis_ratio
    r = np.hypot(u, v)
    light = disk_peak * np.exp(-r / disk_scale)
    light += bulge_peak * np.exp(-0.5 * (r / (bulge_fwhm / FWHM_PER_SIGMA)) ** 2)
    kx, ky, kf, kp = [], [], [], []
    for _ in range(n_knots):
        rad = rng.uniform(1.0, 3.0) * disk_scale
        phi = rng.uniform(0.0, 2 * math.pi)
        uu, vv = rad * math.cos(phi), rad * math.sin(phi) * axis_ratio
        x = x0 + uu * math.cos(t) - vv * math.sin(t)
        y = y0 + uu * math.sin(t) + vv * math.cos(t)
        f = rng.uniform(*knot_fwhm)
        peak = rng.uniform(*knot_peak) * disk_peak * math.exp(-rad / disk_scale)
        light += peak * np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / (f / FWHM_PER_SIGMA) ** 2)
        kx.append(x)
        ky.append(y)
        kf.append(f)
        kp.append(peak)
    return light, Table({"x": np.asarray(kx, float), "y": np.asarray(ky, float), "fwhm": np.asarray(kf, float),
                         "peak": np.asarray(kp, float)})
