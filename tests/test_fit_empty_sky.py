"""``fit`` where there is no star says so (flag ``no_source``), and a real star does not carry it."""

from __future__ import annotations

import json

import numpy as np
from astropy.io import fits

import psfkit
from psfkit import flags as F
from psfkit.cli import main
from psfkit.datasets.simulate import add_noise, render_stars, star_params


def _frame(tmp_path):
    rng = np.random.default_rng(12)
    p = star_params("gaussian", [40.0], [40.0], [2e4], 3.2, 3.2, 0.0)
    data = add_noise(render_stars((120, 160), p) + 300.0, gain=1.5, read_noise=6.0, rng=rng)
    path = tmp_path / "sky.fits"
    fits.writeto(path, data.astype(np.float32), fits.Header({"GAIN": 1.5, "RDNOISE": 6.0}))
    return path


def test_fit_on_empty_sky_is_flagged(tmp_path, capsys):
    path = _frame(tmp_path)
    hits = 0
    for x, y in [(120.0, 80.0), (100.0, 30.0), (140.0, 100.0), (80.0, 90.0), (130.0, 20.0)]:
        fit = psfkit.fit_star(path, x, y, search_radius=3.0)
        if not fit.snr >= F.NO_SOURCE_SNR:  # NaN: no measurable flux either
            assert "no_source" in fit.flag_names
            hits += 1
        else:
            assert "no_source" not in fit.flag_names
    assert hits >= 3  # empty sky: mostly noise bumps below 3 sigma
    star = psfkit.fit_star(path, 40.0, 40.0)
    assert star.snr > 50 and (star.flags & F.NO_SOURCE) == 0
    try:
        main(["fit", str(path), "--at", "120,80", "--search-radius", "3", "--json"])
    except SystemExit as exc:
        assert not exc.code
    d = json.loads(capsys.readouterr().out)
    assert (d["snr"] is None or d["snr"] < 3) == ("no_source" in d["flag_names"])
