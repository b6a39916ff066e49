"""Accuracy of the fit against the physical limit: RMS error / Cramer-Rao bound.

For one star (fixed truth) and each signal-to-noise ratio, many independent
noise draws (photon noise from the pixel-integrated profile plus read noise,
``psfkit.datasets.simulate.simulate_stamps``) are fitted by ``psfkit.fit_stars`` with
the gain and read noise known (weighted, the default when the gain is known)
and, for contrast, without them (unweighted, Siril's way).  Per parameter:

    ratio = RMS(fit - truth) / sqrt((I^-1)_ii),
    I_ij = sum_k dmu_k/dtheta_i dmu_k/dtheta_j / v_k,  v_k = mu_k / gain + rn^2,

with mu the pixel-integrated model at the truth and its analytic Jacobian (8x8
Gauss-Legendre nodes per pixel).  Derived quantities (flux, FWHM) use
g^T I^-1 g with the model's own gradients.  An efficient, unbiased fitter gives
ratios near 1.00 (the statistical uncertainty of each ratio over N draws is
about 1/sqrt(2N)); the target is <= 1.10 for SNR >= 20.  "pull std" is the mean
over the parameters of the standard deviation of (fit - truth) / reported
error (1.00 = honest errors).

Peer: photutils 3 ``PSFPhotometry`` with a ``CircularGaussianPRF`` (flux, x, y
and FWHM fitted, given the per-pixel error) on a round star, the same draws.

Per row also the largest |mean(fit - truth)| / sqrt(CRB) over the columns: the bias, which the
fitted model's pixel integration could leave (none is significant at 500 draws).

Usage: ``.venv/bin/python benchmarks/bench_accuracy.py`` (a few minutes);
writes ``benchmarks/results/bench_accuracy.md``.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np

from psfkit import fit_stars
from psfkit.datasets.simulate import simulate_stamps, star_params
from psfkit.psf.models import FWHM_PER_SIGMA, GaussianPSF, MoffatPSF

HERE = Path(__file__).resolve().parent
GAIN, READ_NOISE, BACKGROUND = 1.5, 6.0, 200.0  # e-/ADU, e-, ADU
SIZE = 19
N_DRAWS = 500
SNRS = (20, 50, 100, 1000, 10000)


def flux_for_snr(snr, fwhm_x, fwhm_y):
    bg_var = BACKGROUND / GAIN + (READ_NOISE / GAIN) ** 2
    area = 4 * np.pi * fwhm_x * fwhm_y / FWHM_PER_SIGMA**2
    a = snr**2 / GAIN
    return 0.5 * (a + np.sqrt(a * a + 4 * snr**2 * area * bg_var))


def fisher_bound(model, p_true, free):
    """Covariance bound I^-1 (free parameters) from the pixel-integrated model at the truth."""
    mu, jac = model.evaluate(p_true[None], (SIZE, SIZE), free=free, jacobian=True, k=8)
    v = mu[0] / GAIN + (READ_NOISE / GAIN) ** 2
    info = jac[0].T @ (jac[0] / v[:, None])
    cov = np.zeros((model.n_params, model.n_params))
    fidx = np.flatnonzero(free)
    cov[np.ix_(fidx, fidx)] = np.linalg.inv(info)
    return cov


def crb_table(model, p_true, cov):
    """Sqrt of the bound for each reported quantity (column name -> sigma)."""
    def prop(g):
        return float(np.sqrt(g @ cov @ g))

    out = {}
    e = np.eye(model.n_params)
    out["x_fit"] = prop(e[model.i_x0])
    out["y_fit"] = prop(e[model.i_y0])
    out["background"] = prop(e[0])
    out["flux_fit"] = prop(model.flux_and_gradient(p_true[None])[1][0])
    fx, fy, gx, gy = model.fwhm_and_gradient(p_true[None])
    out["fwhm_x"] = prop(gx[0])
    out["fwhm_y"] = prop(gy[0])
    out["angle"] = np.degrees(prop(e[model.i_angle]))
    if model.name == "moffat" and cov[7, 7] > 0:
        out["beta"] = prop(e[7])
    return out


def truth_values(model, p_true):
    fx, fy = (v[0] for v in model.fwhm_and_gradient(p_true[None])[:2])
    return {
        "x_fit": p_true[2], "y_fit": p_true[3], "background": p_true[0],
        "flux_fit": model.flux_and_gradient(p_true[None])[0][0], "fwhm_x": fx, "fwhm_y": fy,
        "angle": np.degrees(p_true[6]), "beta": p_true[7] if model.name == "moffat" else np.nan,
    }


ERR = {"x_fit": "x_err", "y_fit": "y_err", "background": "background_err", "flux_fit": "flux_err",
       "fwhm_x": "fwhm_x_err", "fwhm_y": "fwhm_y_err", "angle": "angle_err", "beta": "beta_err"}


def run_case(model_name, snr, *, fwhm=3.0, roundness=0.8, angle_deg=30.0, beta=3.0, fit_beta=None, seed=0):
    fx, fy = fwhm / np.sqrt(roundness), fwhm * np.sqrt(roundness)
    flux = flux_for_snr(snr, fx, fy)
    c = (SIZE - 1) / 2.0
    # one fixed truth, half a pixel off the pixel grid: simulate on SIZE + 1 and drop the last row/column
    stamps, truth = simulate_stamps(
        N_DRAWS, size=SIZE + 1, model=model_name, flux=flux, fwhm_x=fx, fwhm_y=fy, angle_deg=angle_deg, beta=beta,
        background=BACKGROUND, gain=GAIN, read_noise=READ_NOISE, jitter=0.0, seed=seed,
    )
    stamps = stamps[:, :SIZE, :SIZE]
    x0, y0 = float(truth["x0"][0]), float(truth["y0"][0])
    p_true = star_params(model_name, x0, y0, flux, fx, fy, angle_deg, beta, BACKGROUND)[0]
    model = GaussianPSF() if model_name == "gaussian" else MoffatPSF(beta=fit_beta)
    free = model.default_free()
    cov = fisher_bound(model, p_true, free)
    bound = crb_table(model, p_true, cov)
    true = truth_values(model, p_true)
    image = np.hstack(list(stamps))
    xs = np.arange(N_DRAWS) * SIZE + c
    ys = np.full(N_DRAWS, c)
    rows = {}
    for label, kw in (("weighted", dict(gain=GAIN, read_noise=READ_NOISE)), ("unweighted", dict(gain=None))):
        t0 = time.perf_counter()
        tab = fit_stars(image, xs, ys, box=SIZE, model=model, angle=True, search_radius=None, saturation=None, **kw)
        dt = time.perf_counter() - t0
        ok = np.asarray(tab["flags"]) & 0b1100001 == 0  # not converged / fit failed / singular
        ratios, pulls, biases = {}, [], {}
        for name, sig in bound.items():
            fit = np.asarray(tab[name], dtype=float)
            if name == "x_fit":
                fit = fit - np.arange(N_DRAWS) * SIZE
            d = fit - true[name]
            if name == "angle":
                d = (d + 90.0) % 180.0 - 90.0
            ratios[name] = float(np.sqrt(np.mean(d[ok] ** 2)) / sig)
            biases[name] = float(np.mean(d[ok]) / sig)
            pulls.append(float(np.std(d[ok] / np.asarray(tab[ERR[name]], dtype=float)[ok])))
        rows[label] = dict(ratios=ratios, bias=biases, pull=float(np.mean(pulls)), ok=int(ok.sum()), time=dt)
    return rows, bound


def photutils_peer(snr, *, fwhm=3.0, seed=0):
    """Photutils PSFPhotometry on a round Gaussian star: RMS / CRB for x, y, flux (fwhm fitted too)."""
    try:
        from astropy.table import QTable
        from photutils.psf import CircularGaussianPRF, PSFPhotometry
    except Exception as exc:  # pragma: no cover - peer missing
        return None, f"photutils unavailable ({exc.__class__.__name__})"
    n = 500
    flux = flux_for_snr(snr, fwhm, fwhm)
    stamps, truth = simulate_stamps(n, size=SIZE, model="gaussian", flux=flux, fwhm_x=fwhm, fwhm_y=fwhm,
                                    background=BACKGROUND, gain=GAIN, read_noise=READ_NOISE, jitter=0.0, seed=seed)
    x0, y0 = float(truth["x0"][0]), float(truth["y0"][0])
    c = (SIZE - 1) / 2.0
    psf_model = CircularGaussianPRF(fwhm=fwhm)
    psf_model.fwhm.fixed = False
    phot = PSFPhotometry(psf_model, (SIZE, SIZE), aperture_radius=2 * fwhm)
    res = []
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(n):
            data = stamps[i] - BACKGROUND  # photutils fits no background: give it the true one (its best case)
            err = np.sqrt(np.clip(stamps[i], 0, None) / GAIN + (READ_NOISE / GAIN) ** 2)
            init = QTable({"x": [c], "y": [c], "flux": [flux]})
            out = phot(data, error=err, init_params=init)
            res.append((out["x_fit"][0], out["y_fit"][0], out["flux_fit"][0]))
    dt = time.perf_counter() - t0
    res = np.array(res, dtype=float)
    # the same star for psfkit (background fitted, round Gaussian with both widths and the angle free)
    p_true = star_params("gaussian", x0, y0, flux, fwhm, fwhm, 0.0, None, BACKGROUND)[0]
    # bound for photutils' own parameter set (flux, x, y, fwhm; background known)
    from psfkit.psf.models import GaussianPSF as _G

    g = _G(angle=False)
    free = np.array([False, True, True, True, True, True, False])
    mu, jac = g.evaluate(p_true[None], (SIZE, SIZE), free=free, jacobian=True, k=8)
    # tie sigma_x = sigma_y (circular) by summing their columns
    jc = np.concatenate([jac[0][:, :3], (jac[0][:, 3] + jac[0][:, 4])[:, None]], axis=1)
    v = mu[0] / GAIN + (READ_NOISE / GAIN) ** 2
    cov = np.linalg.inv(jc.T @ (jc / v[:, None]))
    s = p_true[4]
    g_flux = np.array([2 * np.pi * s * s, 0, 0, 2 * np.pi * p_true[1] * 2 * s])
    sig = {"x_fit": np.sqrt(cov[1, 1]), "y_fit": np.sqrt(cov[2, 2]), "flux_fit": float(np.sqrt(g_flux @ cov @ g_flux))}
    ok = np.all(np.isfinite(res), axis=1)
    ratios = {
        "x_fit": float(np.sqrt(np.mean((res[ok, 0] - x0) ** 2)) / sig["x_fit"]),
        "y_fit": float(np.sqrt(np.mean((res[ok, 1] - y0) ** 2)) / sig["y_fit"]),
        "flux_fit": float(np.sqrt(np.mean((res[ok, 2] - flux) ** 2)) / sig["flux_fit"]),
    }
    # psfkit on the same draws, with the same information (round model, background free)
    image = np.hstack(list(stamps))
    t1 = time.perf_counter()
    tab = fit_stars(image, np.arange(n) * SIZE + c, np.full(n, c), box=SIZE, model=GaussianPSF(angle=False),
                    angle=False, gain=GAIN, read_noise=READ_NOISE, search_radius=None, saturation=None)
    dt_psfkit = time.perf_counter() - t1
    mine = {
        "x_fit": float(np.sqrt(np.mean((np.asarray(tab["x_fit"]) - np.arange(n) * SIZE - x0) ** 2)) / sig["x_fit"]),
        "y_fit": float(np.sqrt(np.mean((np.asarray(tab["y_fit"]) - y0) ** 2)) / sig["y_fit"]),
        "flux_fit": float(np.sqrt(np.mean((np.asarray(tab["flux_fit"]) - flux) ** 2)) / sig["flux_fit"]),
    }
    return dict(photutils=ratios, psfkit=mine, time_photutils=dt / n, time_psfkit=dt_psfkit / n, n=int(ok.sum())), ""


def main() -> None:
    from psfkit.psf import _compiled

    t_start = time.perf_counter()
    backend = (f"compiled numba engine ({_compiled.threads()} threads)" if _compiled.available()
               else "numpy reference engine (PSFKIT_BACKEND=numpy)")
    cols = ["x_fit", "y_fit", "flux_fit", "fwhm_x", "fwhm_y", "angle", "background"]
    lines = [
        "## Accuracy: RMS error / Cramer-Rao bound",
        "",
        f"One star per row, {N_DRAWS} noise draws (Poisson from the pixel-integrated profile + read noise),"
        f" gain {GAIN} e-/ADU, read noise {READ_NOISE} e-, background {BACKGROUND:g} ADU, stamp {SIZE}x{SIZE},"
        " FWHM 3 px (geometric), roundness 0.8, angle 30 deg; all parameters fitted (angle too)."
        " Ratio = RMS(fit - truth) / sqrt(CRB); 1.00 is the physical limit, the statistical uncertainty of each"
        f" ratio is about {1 / np.sqrt(2 * N_DRAWS):.3f}. Target: <= 1.10 for SNR >= 20."
        " 'pull std' = mean over the parameters of std((fit - truth) / reported error); 'max abs bias' = the"
        " largest |mean(fit - truth)| / sqrt(CRB) over the columns (angle only where its bound is < 10 deg).",
        "",
        f"Engine: {backend}. Pixel integration of the fitted Gaussian: analytic (moment-matched Gaussian with the"
        " pixel box's 4th and 6th cumulants, within 1e-5 of the peak) from a minor-axis FWHM of 2.2 px, so for"
        " these stars; the Moffat uses Gauss-Legendre nodes. The simulation and the bound use 8 x 8 nodes per pixel.",
        "",
    ]
    worst_weighted = 0.0
    worst_bias: dict[str, float] = {}
    for model_name, fit_beta, label in (("gaussian", None, "Gaussian"), ("moffat", 3.0, "Moffat, beta = 3 known"),
                                        ("moffat", None, "Moffat, beta = 3 fitted")):
        cset = cols + (["beta"] if model_name == "moffat" and fit_beta is None else [])
        lines += [f"### {label}", "",
                  "| SNR | fit | " + " | ".join(cset) + " | max abs bias | pull std | converged | ms/star |",
                  "|---:|---|" + "---:|" * (len(cset) + 4)]
        snrs = SNRS if not (model_name == "moffat" and fit_beta is None) else (100, 1000, 10000)
        notes = []
        for snr in snrs:
            rows, bound = run_case(model_name, snr, fit_beta=fit_beta, seed=int(snr) + (7 if fit_beta else 0))
            notes.append(f"SNR {snr:g}: {bound['angle']:.2g} deg")
            for fit_label in ("weighted", "unweighted"):
                r = rows[fit_label]
                targeted = [c for c in cset if c != "angle" or bound["angle"] < 10]
                bias = max(abs(r["bias"][c]) for c in targeted)
                if fit_label == "weighted":
                    worst_weighted = max(worst_weighted, max(r["ratios"][c] for c in targeted))
                    band = "20" if snr < 50 else ("10000" if snr >= 10000 else "50-1000")
                    worst_bias[band] = max(worst_bias.get(band, 0.0), bias)
                lines.append(
                    f"| {snr:g} | {fit_label} | " + " | ".join(f"{r['ratios'][c]:.3f}" for c in cset)
                    + f" | {bias:.3f} | {r['pull']:.3f} | {r['ok']}/{N_DRAWS} | {1e3 * r['time'] / N_DRAWS:.2f} |"
                )
        lines += ["", "sqrt(CRB) of the angle: " + ", ".join(notes) + ". Where it is ~10 deg or more the"
                  " angle's likelihood is far from quadratic (the angle is folded into [-90, 90)) and no fitter"
                  " reaches the bound: its ratio is shown, not targeted.", ""]
    lines += [f"Worst weighted ratio over all rows (angle only where sqrt(CRB) < 10 deg): **{worst_weighted:.3f}**."
              " Worst weighted |mean(fit - truth)| / sqrt(CRB) over the models: "
              + ", ".join(f"SNR {band}: **{b:.3f}**" for band, b in worst_bias.items())
              + f". The standard error of a mean over {N_DRAWS} draws is {1 / np.sqrt(N_DRAWS):.3f} in these units"
              " (about 0.13 is the 3-sigma level of one column; the largest of 7-8 columns exceeds it by chance"
              " more often). A bias of the fitted model's pixel integration would grow with the SNR and show at"
              " 10^4; at SNR 20 the maximum-likelihood estimates of width and flux carry their own O(1/SNR) bias.",
              ""]

    lines += ["### Peer: photutils PSFPhotometry (round Gaussian, per-pixel error given, true background given)", "",
              "Same draws for both; bound for a round Gaussian with flux, x, y, FWHM free and the background known"
              " (psfkit also fits the background, so its ratio may exceed 1 slightly).", "",
              "| SNR | x_fit psfkit | x_fit photutils | flux_fit psfkit | flux_fit photutils "
              "| ms/star psfkit | ms/star photutils | speed ratio |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for snr in (50, 1000):
        peer, why = photutils_peer(snr, seed=100 + snr)
        if peer is None:
            lines.append(f"| {snr} | {why} | | | | | | |")
            continue
        a, b = peer["psfkit"], peer["photutils"]
        lines.append(
            f"| {snr} | {a['x_fit']:.3f} | {b['x_fit']:.3f} | {a['flux_fit']:.3f} | {b['flux_fit']:.3f} |"
            f" {1e3 * peer['time_psfkit']:.2f} | {1e3 * peer['time_photutils']:.2f} |"
            f" {peer['time_photutils'] / peer['time_psfkit']:.0f}x |"
        )
    lines += ["", f"Run time {time.perf_counter() - t_start:.0f} s.", ""]
    text = "\n".join(lines)
    print(text)
    out = HERE / "results" / "bench_accuracy.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
