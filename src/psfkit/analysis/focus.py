"""A focus run: the frames' median HFR and FWHM against the focuser position, the V-curve's
hyperbola, and the best focus with its error.

The decisions (docs/optics.md tells users):

- **Position** from the header: ``FOCUSPOS`` (N.I.N.A., SGP, KStars) or ``FOCPOS`` (MaxIm DL,
  ASCOM), or the keyword the user names; the focuser temperature from ``FOCTEMP``,
  ``FOCUSTEM``, ``FOCUSTMP`` or ``FOCTMP`` where the headers hold one.
- **Per frame**: the median HFR and median FWHM of the clean stars (flags == 0, SNR >= 10) of
  :func:`psfkit.find_stars`, with the median's error 1.2533 sigma / sqrt(n).  A frame with fewer
  than 5 such stars is too defocused for the PSF fit: its stars (the donuts) are found on the frame
  smoothed to their size and measured by :func:`psfkit.aperture.hfr.half_flux_radius` alone
  (``method`` "hfr", FWHM NaN).
- **The V-curve**: HFR(p) = a sqrt(1 + ((p - p0) / b)^2), N.I.N.A.'s hyperbola, fitted by
  weighted least squares (the per-frame errors); the covariance is scaled by the reduced
  chi-square where it exceeds 1 (the seeing changes between frames more than the median's error
  says).  ``best_position`` = p0 of the HFR curve (every frame has an HFR), ``hfr_min`` = a; the
  FWHM is fitted the same way where at least 5 frames have one, giving ``fwhm_min``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table

from psfkit.errors import PsfkitError
from psfkit.utils import json_value

__all__ = ["VCurve", "FocusResult", "fit_v_curve", "measure_focus_frame", "focus_run",
           "POSITION_KEYS", "TEMPERATURE_KEYS", "MIN_POSITIONS"]

POSITION_KEYS = ("FOCUSPOS", "FOCPOS")
TEMPERATURE_KEYS = ("FOCTEMP", "FOCUSTEM", "FOCUSTMP", "FOCTMP")
MIN_POSITIONS = 5
MIN_STARS = 5  # clean PSF-fitted stars for a frame's FWHM; fewer: HFR of the donuts alone


@dataclass
class VCurve:
    """The fitted hyperbola value(p) = a sqrt(1 + ((p - p0) / b)^2).

    Attributes
    ----------
    params : ndarray (3,)
        a (the minimum, px), p0 (the best position), b (steps: the half-width where the value
        is sqrt(2) a; the asymptotes' slope is a / b).
    covariance : ndarray (3, 3)
    reduced_chi2 : float
    """

    params: np.ndarray
    covariance: np.ndarray
    reduced_chi2: float

    @property
    def errors(self) -> np.ndarray:
        """1-sigma errors of the parameters (square roots of the covariance diagonal)."""
        return np.sqrt(np.clip(np.diag(self.covariance), 0.0, None))

    def predict(self, p: np.ndarray) -> np.ndarray:
        """The fitted hyperbola at focuser positions ``p``."""
        a, p0, b = self.params
        return a * np.sqrt(1.0 + ((np.asarray(p, dtype=float) - p0) / b) ** 2)


def fit_v_curve(position: Sequence[float], value: Sequence[float], error: Sequence[float] | None = None) -> VCurve:
    """Fit value(p) = a sqrt(1 + ((p - p0) / b)^2) to a focus run's V-curve.

    Parameters
    ----------
    position : array-like
        Focuser positions (steps).
    value : array-like
        HFR or FWHM per position (px).
    error : array-like, optional
        Their 1-sigma errors (default: equal weights, errors from the scatter).

    Returns
    -------
    VCurve

    Examples
    --------
    >>> import numpy as np
    >>> p = np.arange(1000, 1900, 100.0)
    >>> curve = fit_v_curve(p, 2.5 * np.sqrt(1 + ((p - 1430) / 150) ** 2))
    >>> [round(float(v)) for v in curve.params]
    [2, 1430, 150]
    """
    from scipy.optimize import curve_fit

    p = np.asarray(position, dtype=float)
    v = np.asarray(value, dtype=float)
    e = np.ones_like(v) if error is None else np.asarray(error, dtype=float)
    ok = np.isfinite(p) & np.isfinite(v) & (v > 0)
    if error is not None:
        ok &= np.isfinite(e) & (e > 0)
    p, v, e = p[ok], v[ok], e[ok]
    if len(np.unique(p)) < MIN_POSITIONS:
        raise PsfkitError(f"a focus run needs at least {MIN_POSITIONS} focuser positions with a measurement, "
                          f"got {len(np.unique(p))}")
    i = int(np.argmin(v))
    span = float(p.max() - p.min())
    far = np.abs(p - p[i])
    slopes = (v - v[i]) / np.where(far > 0, far, np.nan)
    m = float(np.nanmax(slopes)) if np.isfinite(slopes).any() and np.nanmax(slopes) > 0 else v[i] / span
    a0 = float(v[i])
    b0 = max(a0 / m, span / 50)

    def model(x, a, p0, b):
        return a * np.sqrt(1.0 + ((x - p0) / b) ** 2)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            popt, pcov = curve_fit(model, p, v, p0=[a0, float(p[i]), b0], sigma=e, absolute_sigma=error is not None,
                                   bounds=([1e-6, p.min() - span, span / 1000], [np.inf, p.max() + span, 100 * span]),
                                   maxfev=20000)
    except (RuntimeError, ValueError) as exc:
        raise PsfkitError(f"the V-curve's hyperbola did not converge ({exc})") from None
    dof = max(len(p) - 3, 1)
    chi2 = float(np.sum(((v - model(p, *popt)) / e) ** 2)) / dof
    if error is not None and chi2 > 1.0:
        pcov = pcov * chi2
    return VCurve(np.asarray(popt), np.asarray(pcov), chi2)


def _header_number(header: Any, keys: Iterable[str]) -> tuple[str | None, float | None]:
    for key in keys:
        if header is not None and key in header:
            try:
                value = float(header[key])
            except (TypeError, ValueError):
                continue
            if math.isfinite(value):
                return key, value
    return None, None


def _median_and_err(values: np.ndarray) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return float("nan"), float("nan")
    err = 1.2533 * float(np.std(v, ddof=1)) / math.sqrt(v.size) if v.size > 1 else float("nan")
    return float(np.median(v)), err


def _donut_hfr(img: Any) -> tuple[np.ndarray, int]:
    """HFR of a defocused frame's stars, no PSF fit: candidates on the frame smoothed to the donuts'
    size (grown until the smoothing matches the HFR found), each measured by half_flux_radius.
    """
    from psfkit.aperture.hfr import half_flux_radius
    from psfkit.detect.background import estimate_background
    from psfkit.detect.find import find_candidates

    data = img.data
    bkg = estimate_background(data)
    sigma = 2.0
    hfr = np.zeros(0)
    for _ in range(4):
        cands = find_candidates(data, bkg, threshold=5.0, smoothing=sigma, min_separation=max(3.0, 2.0 * sigma))
        if len(cands) == 0:
            return np.zeros(0), 0
        cands = cands[:200]
        t = half_flux_radius(img, np.asarray(cands["x"], float), np.asarray(cands["y"], float), background=bkg.level)
        hfr = np.asarray(t["hfr"], float)
        h = float(np.nanmedian(hfr)) if np.isfinite(hfr).any() else float("nan")
        if not math.isfinite(h) or h <= 1.5 * sigma:
            break
        sigma = h  # smooth at the donut's scale: one candidate per donut
    # candidates on one donut (its ring can hold several peaks) converge near its centroid: keep
    # one per donut; two separate donuts of HFR h are at least 2.6 h apart (outer radius ~1.3 h)
    x, y = np.asarray(t["x"], float), np.asarray(t["y"], float)
    keep = np.ones(len(x), dtype=bool)
    h = float(np.nanmedian(hfr)) if np.isfinite(hfr).any() else 1.0
    for j in range(len(x)):
        if keep[j]:
            close = np.hypot(x - x[j], y - y[j]) < max(2.0, 2.0 * h, np.nan_to_num(hfr[j], nan=2.0))
            close[: j + 1] = False
            keep &= ~close
    # every donut of a frame has the defocus's size (within the field's curvature, tens of %): a
    # noise peak or a fragment of a ring (HFR 0.5 or 16 times the others' here) is not one
    # nor is an object whose light inside its radius is not 5 sigma above the sky's noise
    flux, radius = np.asarray(t["flux"], float), np.asarray(t["radius"], float)
    keep &= np.isfinite(hfr) & (flux > 5.0 * float(np.median(bkg.noise)) * math.sqrt(math.pi) * radius)
    if keep.sum() >= 3:
        med = float(np.nanmedian(hfr[keep]))
        with np.errstate(invalid="ignore", divide="ignore"):
            keep &= np.abs(np.log(hfr / med)) < math.log(1.5)
    return hfr[keep], int(keep.sum())


def measure_focus_frame(path: str | Path, *, position_key: str | None = None, min_snr: float = 10.0,
                        **find_options: Any) -> dict:
    """One frame of a focus run: position, temperature, median HFR and FWHM with errors.

    Returns
    -------
    dict
        ``frame``, ``position``, ``position_key``, ``temperature``, ``n_stars``, ``hfr``,
        ``hfr_err``, ``fwhm``, ``fwhm_err``, ``method`` ("psf": PSF-fitted stars; "hfr": too
        defocused, the donuts' HFR alone).
    """
    from psfkit.detect.find import find_stars
    from psfkit.io.image import load_image

    img = load_image(path)
    header = img.header
    keys = (position_key,) if position_key else POSITION_KEYS
    key, position = _header_number(header, keys)
    if position is None:
        want = position_key or " or ".join(POSITION_KEYS)
        raise PsfkitError(f"{Path(path).name}: no focuser position in the header ({want}); name the keyword "
                          "with --position-key")
    _, temperature = _header_number(header, TEMPERATURE_KEYS)
    stars = find_stars(img, **find_options)
    good = np.ones(len(stars), dtype=bool)
    if len(stars):
        good = (np.asarray(stars["flags"]) == 0) & (np.nan_to_num(np.asarray(stars["snr"], float)) >= min_snr)
    row: dict[str, Any] = {"frame": Path(path).name, "position": position, "position_key": key,
                           "temperature": float("nan") if temperature is None else temperature}
    if good.sum() >= MIN_STARS:
        row["hfr"], row["hfr_err"] = _median_and_err(np.asarray(stars["hfr"], float)[good])
        row["fwhm"], row["fwhm_err"] = _median_and_err(np.asarray(stars["fwhm"], float)[good])
        row["n_stars"], row["method"] = int(good.sum()), "psf"
    else:
        hfr, n = _donut_hfr(img)
        row["hfr"], row["hfr_err"] = _median_and_err(hfr)
        row["fwhm"] = row["fwhm_err"] = float("nan")
        row["n_stars"], row["method"] = n, "hfr"
    return row


@dataclass
class FocusResult:
    """A focus run: the per-frame table, the fitted V-curves and the best focus."""

    frames: Table
    curves: dict
    best_position: float
    best_position_err: float
    best_from: str
    position_key: str
    numbers: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The numbers and the frames' rows as plain, JSON-ready values."""
        out = dict(self.numbers)
        out["frames"] = [{c: r[c] for c in self.frames.colnames} for r in self.frames]
        out["curves"] = {name: {"a": c.params[0], "p0": c.params[1], "b": c.params[2], "a_err": c.errors[0],
                                "p0_err": c.errors[1], "b_err": c.errors[2], "reduced_chi2": c.reduced_chi2}
                         for name, c in self.curves.items()}
        return json_value(out)


def focus_run(frames: Sequence[str | Path], *, position_key: str | None = None, min_snr: float = 10.0,
              **find_options: Any) -> FocusResult:
    """Best focus from the frames of a focus run (one frame per focuser position, or several).

    Parameters
    ----------
    frames : sequence of paths
        The run's frames, each with its focuser position in the header.
    position_key : str, optional
        The header keyword of the position (default FOCUSPOS, then FOCPOS).
    min_snr : float
        Stars below this SNR are left out of the frame's medians.
    **find_options
        Passed to :func:`psfkit.find_stars`.

    Returns
    -------
    FocusResult
        ``numbers`` (and ``to_dict()``): ``best_position``, ``best_position_err``, ``hfr_min``
        (+ ``_err``), ``fwhm_min`` (+ ``_err``), ``temperature`` (the run's median focuser
        temperature, when the headers hold one), ``n_frames``, ``n_positions``.

    Examples
    --------
    >>> import psfkit
    >>> psfkit.focus_run([psfkit.sample_image_path()])  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    psfkit.errors.PsfkitError: no focuser position
    """
    paths = [Path(f) for f in frames]
    if not paths:
        raise PsfkitError("no frames given")
    rows = [measure_focus_frame(p, position_key=position_key, min_snr=min_snr, **find_options) for p in paths]
    n_pos = len({r["position"] for r in rows})
    if n_pos < MIN_POSITIONS:
        raise PsfkitError(f"a focus run needs at least {MIN_POSITIONS} focuser positions, got {n_pos}")
    table = Table(rows=[[r[c] for c in ("frame", "position", "temperature", "n_stars", "hfr", "hfr_err", "fwhm",
                                        "fwhm_err", "method")] for r in rows],
                  names=("frame", "position", "temperature", "n_stars", "hfr", "hfr_err", "fwhm", "fwhm_err", "method"))
    table.sort("position")
    pos = np.asarray(table["position"], float)
    curves: dict[str, VCurve] = {}
    curves["hfr"] = fit_v_curve(pos, table["hfr"], _floor(table["hfr_err"], table["hfr"]))
    fw = np.asarray(table["fwhm"], float)
    if len(np.unique(pos[np.isfinite(fw)])) >= MIN_POSITIONS:
        try:
            curves["fwhm"] = fit_v_curve(pos, fw, _floor(table["fwhm_err"], fw))
        except PsfkitError:
            pass
    hfr_curve = curves["hfr"]
    numbers = {
        "best_position": float(hfr_curve.params[1]), "best_position_err": float(hfr_curve.errors[1]),
        "hfr_min": float(hfr_curve.params[0]), "hfr_min_err": float(hfr_curve.errors[0]),
        "fwhm_min": float(curves["fwhm"].params[0]) if "fwhm" in curves else float("nan"),
        "fwhm_min_err": float(curves["fwhm"].errors[0]) if "fwhm" in curves else float("nan"),
        "best_position_fwhm": float(curves["fwhm"].params[1]) if "fwhm" in curves else float("nan"),
        "best_position_fwhm_err": float(curves["fwhm"].errors[1]) if "fwhm" in curves else float("nan"),
        "temperature": float(np.nanmedian(table["temperature"])) if np.isfinite(table["temperature"]).any()
        else float("nan"),
        "n_frames": len(table), "n_positions": n_pos, "n_hfr_only": int(np.sum(table["method"] == "hfr")),
        "position_key": rows[0]["position_key"],
    }
    return FocusResult(frames=table, curves=curves, best_position=numbers["best_position"],
                       best_position_err=numbers["best_position_err"], best_from="hfr",
                       position_key=str(rows[0]["position_key"]), numbers=numbers)


def _floor(err: Any, value: Any) -> np.ndarray:
    """Per-frame errors with a floor of 0.5 % of the value (a frame of few stars may show no scatter)."""
    e = np.asarray(err, float)
    v = np.asarray(value, float)
    return np.where(np.isfinite(e) & (e > 0), np.maximum(e, 0.005 * v), np.maximum(0.05 * v, 1e-3))
