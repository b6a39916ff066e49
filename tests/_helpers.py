"""Helpers shared by the test modules (imported by conftest.py; test modules import from here,
never from one another).

:func:`run_cli` runs the ``psfkit`` command in this process (``psfkit.cli.main``), so that a
test pays for numba, astropy and scipy once per session instead of once per call; a handful of
tests in test_startup.py still start real processes (``python -m psfkit``) as smoke tests.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from dataclasses import dataclass

__all__ = ["CliResult", "run_cli", "true_half_max_fwhm", "write_dng", "write_png16_rgb"]


@dataclass(frozen=True)
class CliResult:
    """What a run of the command gave: its exit code and what it printed (like subprocess's)."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: object, check: bool = False) -> CliResult:
    """``psfkit ARGS...`` in this process: exit code, stdout and stderr.

    An exception the command does not turn into ``psfkit: error: ...`` propagates (the test
    fails with its traceback), where a real process would have printed a traceback.
    ``check=True`` asserts exit code 0 (showing what the command printed otherwise).
    """
    from psfkit.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            if exc.code is None:
                code = 0
            elif isinstance(exc.code, int):
                code = exc.code
            else:  # sys.exit("message"): printed to stderr, exit code 1
                print(exc.code, file=err)
                code = 1
    result = CliResult(code, out.getvalue(), err.getvalue())
    if check:
        assert result.returncode == 0, f"psfkit {' '.join(map(str, args))} exited {code}:\n{result.stderr}"
    return result


def write_dng(path, mosaic, *, black=256, white=4000, pattern=(0, 1, 1, 2)):
    """A minimal DNG (a TIFF with the CFA tags) that LibRaw reads like a camera's raw file."""
    import tifffile

    extratags = [
        (50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
        (50707, "B", 4, (1, 1, 0, 0), True),  # DNGBackwardVersion
        (50708, "s", 0, "psfkit test camera", True),  # UniqueCameraModel
        (33421, "H", 2, (2, 2), True),  # CFARepeatPatternDim
        (33422, "B", 4, pattern, True),  # CFAPattern (0 = R, 1 = G, 2 = B)
        (50710, "B", 3, (0, 1, 2), True),  # CFAPlaneColor
        (50711, "H", 1, (1,), True),  # CFALayout
        (50714, "H", 1, (black,), True),  # BlackLevel
        (50717, "H", 1, (white,), True),  # WhiteLevel
        (50721, "2i", 9, (1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1), True),  # ColorMatrix1
    ]
    tifffile.imwrite(path, mosaic, photometric=32803, extratags=extratags, subfiletype=0)


def write_png16_rgb(path, rgb):
    """A 16-bit RGB PNG written byte by byte (Pillow cannot write one)."""
    import struct
    import zlib

    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def true_half_max_fwhm(x, y, shape, meta, step=0.01):
    """The half-maximum FWHM (circle of the contour's area) of the varying field's PSF, pixel not included.

    Its core and halo (psfkit.datasets.varying_psf) summed on a fine grid, independently of the builder.
    """
    import numpy as np

    from psfkit.datasets.varying_psf import psf_shape_at

    f, q, a = (float(v) for v in psf_shape_at(x, y, shape, fwhm=meta["core_fwhm"], growth=meta["growth"],
                                               elongation=meta["elongation"]))
    t = np.arange(-2.0 * f, 2.0 * f + step / 2, step)
    xx, yy = np.meshgrid(t, t)
    c, s = math.cos(math.radians(a)), math.sin(math.radians(a))
    xr, yr = xx * c + yy * s, -xx * s + yy * c
    total = np.zeros_like(xx)
    beta = 3.0
    k = 2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0)
    for flux, fx, fy in ((1.0 - meta["halo_fraction"], f / math.sqrt(q), f * math.sqrt(q)),
                         (meta["halo_fraction"], f * meta["halo_width"], f * meta["halo_width"])):
        ax, ay = fx / k, fy / k
        total += flux * (beta - 1) / (math.pi * ax * ay) * (1.0 + (xr / ax) ** 2 + (yr / ay) ** 2) ** -beta
    area = np.count_nonzero(total >= 0.5 * total.max()) * step * step
    return 2.0 * math.sqrt(area / math.pi)
