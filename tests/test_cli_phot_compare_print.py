"""What ``psfkit phot`` and ``psfkit compare`` print: the fit's flags by name (a saturated star says so),
and the fitted centre of the source (not the smoothed peak that seeded the fit)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from astropy.io import fits

from psfkit.cli import main
from psfkit.datasets.simulate import add_noise, render_stars, star_params


def run_cli(capsys, *args):
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        assert not exc.code, capsys.readouterr().err
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def frame(tmp_path_factory):
    rng = np.random.default_rng(5)
    x = np.array([60.0, 140.0, 100.0])
    y = np.array([50.0, 60.0, 100.0])
    p = star_params("gaussian", x, y, [4e6, 5e4, 3e4], 3.4, 3.4, 0.0)
    data = add_noise(render_stars((150, 200), p) + 300.0, gain=1.5, read_noise=6.0, rng=rng)
    data = np.minimum(data, 60000.0)  # the first star saturated over a few pixels
    path = tmp_path_factory.mktemp("print") / "f.fits"
    fits.writeto(path, data.astype(np.float32), fits.Header({"GAIN": 1.5, "RDNOISE": 6.0, "SATURATE": 60000.0}))
    return path


def test_phot_prints_the_fit_flags_by_name(frame, capsys):
    out = run_cli(capsys, "phot", frame, "--at", "60,50", "--at", "140,60")
    rows = [line for line in out.splitlines() if re.match(r"^ +\d+ ", line)]
    assert len(rows) == 2
    assert "saturated" in rows[0] and rows[1].rstrip().endswith("-")
    data = json.loads(run_cli(capsys, "phot", frame, "--at", "60,50", "--json"))
    assert data[0]["flags"] & 4  # the JSON carries the fit's flags too


def test_compare_prints_the_fitted_centre(frame, capsys):
    out = run_cli(capsys, "compare", frame, "--at", "143,57")
    m = re.search(r"centred at \(([\d.]+), ([\d.]+)\)", out.splitlines()[0])
    assert m, out
    assert float(m.group(1)) == pytest.approx(140.0, abs=0.1) and float(m.group(2)) == pytest.approx(60.0, abs=0.1)
