"""Which analytic profile a frame's stars prefer, by BIC: the Gaussian or the Moffat.

When a frame has too few usable stars to build its own PSF (:func:`psfkit.psf.empirical.build_frame_psf`),
``find_stars(model="auto")`` falls back to the analytic model its bright stars prefer.  The rule:

1. The stars: accepted, no flag (not saturated, no neighbour masked, not at an edge), S/N >= 20,
   the 50 brightest.  Fainter stars fit any profile to their noise and say nothing about the wings.
2. Each is fitted by the one engine (:func:`psfkit.fit_stars`) with the Gaussian and with the
   Moffat of free beta, both with the angle free, on the same box.  With a gain the weights are each
   model's own expected counts (Poisson and read noise), otherwise the background variance.
3. Per star, ``BIC = chi2 + k ln n`` (k free parameters: 7 for the Gaussian, 8 for the Moffat; n the
   pixels fitted) and ``delta_i = BIC_gaussian - BIC_moffat``.  The stars are independent, so the
   frame's BIC difference is the sum.  The Moffat is chosen when the sum is above ``TIE_BIC`` (2:
   positive evidence, Kass & Raftery 1995) *and* the median star prefers it (``median(delta) > 0``), so
   that one odd source (a galaxy, a blend) cannot choose for the frame; otherwise the Gaussian, the
   simpler profile, which wins ties.  No star bright enough: the Gaussian, and the reason says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from psfkit import flags as F
from psfkit.psf.fit import fit_stars, resolve_model
from psfkit.psf.stamps import fitting_box

__all__ = ["ModelChoice", "prefer_analytic_model", "CHOICE_MIN_SNR", "CHOICE_MAX_STARS", "TIE_BIC"]

#: the stars that judge: at least this S/N
CHOICE_MIN_SNR = 20.0
#: and at most this many of the brightest
CHOICE_MAX_STARS = 50
#: a summed BIC difference up to this is no evidence (Kass & Raftery 1995: "not worth more than a bare mention")
TIE_BIC = 2.0


@dataclass(frozen=True)
class ModelChoice:
    """The analytic profile a frame's bright stars prefer, and why.

    Attributes
    ----------
    model : str
        ``"gaussian"`` or ``"moffat"``.
    n_stars : int
        Stars that judged.
    delta_bic : float
        Summed BIC of the Gaussian minus that of the Moffat (positive: the Moffat fits better).
    median_delta_bic : float
        The median star's.
    reason : str
        One sentence.
    """

    model: str
    n_stars: int
    delta_bic: float
    median_delta_bic: float
    reason: str


def prefer_analytic_model(image: Any, stars: Any, *, gain: float | None = None, read_noise: float | None = None,
                          box: int | None = None) -> ModelChoice:
    """The analytic model (Gaussian or Moffat) the frame's bright stars prefer by BIC (see the module's rule).

    Parameters
    ----------
    image : Image, ndarray or path
        The frame.
    stars : astropy.table.Table
        Its stars from :func:`psfkit.find_stars` (rejected rows, if kept, are ignored).
    gain, read_noise : float, optional
        As for :func:`psfkit.fit_stars`.
    box : int, optional
        Fitting box; default the one ``find_stars`` used: the ``box`` it was given, else about 4 of the
        frame's FWHM (``meta["frame_fwhm"]``), as its own fits.

    Returns
    -------
    ModelChoice

    Examples
    --------
    >>> import psfkit
    >>> from psfkit.datasets.simulate import simulate_field
    >>> data, _ = simulate_field((200, 200), 6, model="moffat", fwhm=3.0, beta=2.5, seed=3, flux_range=(5e4, 2e5),
    ...                          min_separation=40, edge=25)
    >>> img = psfkit.Image(data=data, gain=1.5, read_noise=6.0)
    >>> prefer_analytic_model(img, psfkit.find_stars(img)).model
    'moffat'
    """
    from psfkit.io.image import as_image

    img = as_image(image)
    acc = np.asarray(stars["accepted"], bool) if "accepted" in stars.colnames else np.ones(len(stars), bool)
    flags = np.asarray(stars["flags"]) if "flags" in stars.colnames else np.zeros(len(stars), int)
    snr = np.nan_to_num(np.asarray(stars["snr"], dtype=float), nan=0.0)
    x, y = np.asarray(stars["x_fit"], dtype=float), np.asarray(stars["y_fit"], dtype=float)
    bad = F.SATURATED | F.FIT_FAILED | F.NOT_CONVERGED
    use = acc & ((flags & bad) == 0) & (snr >= CHOICE_MIN_SNR) & np.isfinite(x) & np.isfinite(y)
    idx = np.flatnonzero(use)
    idx = idx[np.argsort(-snr[idx], kind="stable")][:CHOICE_MAX_STARS]
    if len(idx) == 0:
        return ModelChoice("gaussian", 0, 0.0, 0.0,
                           f"the Gaussian: no star of S/N >= {CHOICE_MIN_SNR:g} to tell the profiles apart")
    meta = getattr(stars, "meta", {}) or {}
    if box is None:
        box = meta.get("settings", {}).get("box")
    if box is None:  # find's own box: about 4 of the frame's FWHM (the same pixels as its fits)
        fwhm = meta.get("frame_fwhm") or float(np.nanmedian(np.asarray(stars["fwhm"], dtype=float)[idx]))
        box = fitting_box(fwhm if np.isfinite(fwhm) else 3.0, per_fwhm=4.0, minimum=9, maximum=101)
    bic = {}
    for name in ("gaussian", "moffat"):
        mdl = resolve_model(name, angle=True)
        k = int(np.count_nonzero(mdl.default_free()))
        t = fit_stars(img, x[idx], y[idx], model=mdl, angle=True, box=box, search_radius=None, gain=gain,
                      read_noise=read_noise)
        n = np.asarray(t["n_pixels_fit"], dtype=float)
        chi2 = np.asarray(t["reduced_chi2"], dtype=float) * np.maximum(n - k, 1.0)
        bic[name] = chi2 + k * np.log(np.maximum(n, 1.0))
    delta = bic["gaussian"] - bic["moffat"]
    delta = delta[np.isfinite(delta)]
    if len(delta) == 0:
        return ModelChoice("gaussian", 0, 0.0, 0.0, "the Gaussian: the bright stars' fits failed")
    total, median = float(delta.sum()), float(np.median(delta))
    moffat = total > TIE_BIC and median > 0
    said = (f"the {'Moffat' if moffat else 'Gaussian'}, preferred by {len(delta)} bright "
            f"star{'s' if len(delta) != 1 else ''} (BIC Gaussian - Moffat {_signed(total)} summed, "
            f"{_signed(median)} for the median star; the Moffat needs > {TIE_BIC:g} and > 0)")
    return ModelChoice("moffat" if moffat else "gaussian", len(delta), total, median, said)


def _signed(value: float) -> str:
    return f"{value:+.1f}" if math.isfinite(value) else "nan"
