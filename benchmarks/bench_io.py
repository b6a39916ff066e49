"""Load time: psfkit.load_image against a plain read by the format's own library.

Frames: the 9 MP plate scan in ../shared/data (3000x3000 uint8 FITS), a simulated 24 MP
frame (6000x4000, Poisson sky and stars) written as uint16 FITS (BZERO = 32768, what capture
programs write), as float32 FITS, as Rice tile-compressed FITS and as a 16-bit TIFF.

The plain read is what a user writes to get float pixels into numpy:
``np.asarray(fits.getdata(path), dtype=np.float32)`` (astropy applies BZERO/BSCALE) and
``tifffile.imread(path).astype(np.float32)``.  The "native" column is astropy's read without
the float conversion (``fits.getdata(path, memmap=False)``), the floor of any FITS reader.
psfkit's load does more: header interpretation (scale, gain, saturation, WCS), the all-NaN /
constant check and the saturation-plateau search.  Best of 11 runs each (up to 51 for small
files), alternating, files in the page cache (a warm-up read first).

Prints a markdown table and writes benchmarks/results/bench_io.md.
Usage: .venv/bin/python benchmarks/bench_io.py
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits

from psfkit.io.image import load_image

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("PSFKIT_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
REPEAT = 11
TARGET = 1.2


def simulated_frame(ny: int = 4000, nx: int = 6000, n_stars: int = 3000, seed: int = 7) -> np.ndarray:
    """A 24 MP uint16 frame: Poisson sky of 1000 ADU and Gaussian stars (FWHM 2.5-4 px)."""
    rng = np.random.default_rng(seed)
    sky = np.full((ny, nx), 1000.0)
    half = 8
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    for _ in range(n_stars):
        x0, y0 = rng.uniform(half, nx - half - 1), rng.uniform(half, ny - half - 1)
        ix, iy = int(x0), int(y0)
        s = rng.uniform(2.5, 4.0) / 2.35482
        amp = 10 ** rng.uniform(1.5, 4.6)
        sky[iy - half:iy + half + 1, ix - half:ix + half + 1] += amp * np.exp(
            -((xx - (x0 - ix)) ** 2 + (yy - (y0 - iy)) ** 2) / (2 * s * s))
    return np.clip(rng.poisson(sky), 0, 65535).astype(np.uint16)


def best_of(functions: dict, repeat: int = REPEAT) -> dict:
    """Minimum time of each function, runs interleaved so that load changes hit all alike."""
    times = {name: [] for name in functions}
    slowest = 0.0
    for fn in functions.values():
        t = time.perf_counter()
        fn()  # warm-up: page cache, imports
        slowest = max(slowest, time.perf_counter() - t)
    # small files: more runs (about 2 s per function), so a busy neighbour does not decide the minimum
    repeat = int(min(51, max(repeat, 2.0 / max(slowest, 1e-3))))
    for _ in range(repeat):
        for name, fn in functions.items():
            t = time.perf_counter()
            out = fn()
            times[name].append(time.perf_counter() - t)
            del out
    return {name: min(v) for name, v in times.items()}


def astropy_float(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(fits.getdata(path), dtype=np.float32)


def astropy_native(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.array(fits.getdata(path, memmap=False))


def main() -> None:
    import tifffile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        frame = simulated_frame()
        cases = []
        plate = SHARED / "plate_m44_1910-04-01.fits"
        if plate.exists():
            cases.append(("9 MP plate scan (3000x3000 uint8 FITS, real)", plate, "fits"))
        else:
            print(f"skipping the plate: {plate} does not exist")
        fits.PrimaryHDU(frame).writeto(tmp / "sim24_u16.fits")
        cases.append(("24 MP simulated (6000x4000 uint16 FITS, BZERO=32768)", tmp / "sim24_u16.fits", "fits"))
        fits.PrimaryHDU(frame.astype(np.float32)).writeto(tmp / "sim24_f32.fits")
        cases.append(("24 MP simulated (float32 FITS, big-endian)", tmp / "sim24_f32.fits", "fits"))
        fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(frame, compression_type="RICE_1")]).writeto(
            tmp / "sim24_u16.fits.fz")
        cases.append(("24 MP simulated (Rice tile-compressed .fz)", tmp / "sim24_u16.fits.fz", "fits"))
        tifffile.imwrite(tmp / "sim24_u16.tif", frame)
        cases.append(("24 MP simulated (16-bit TIFF)", tmp / "sim24_u16.tif", "tiff"))

        for label, path, kind in cases:
            if kind == "fits":
                functions = {"psfkit": lambda p=path: load_image(p).data,
                             "plain": lambda p=path: astropy_float(p),
                             "native": lambda p=path: astropy_native(p)}
            else:
                functions = {"psfkit": lambda p=path: load_image(p).data,
                             "plain": lambda p=path: tifffile.imread(p).astype(np.float32),
                             "native": lambda p=path: tifffile.imread(p)}
            # same pixels, or the comparison means nothing
            np.testing.assert_array_equal(functions["psfkit"](), functions["plain"]())
            t = best_of(functions)
            ratio = t["psfkit"] / t["plain"]
            rows.append((label, path.stat().st_size / 2**20, t["psfkit"], t["plain"], t["native"], ratio))
            print(f"{label}: psfkit {t['psfkit'] * 1e3:.1f} ms, plain {t['plain'] * 1e3:.1f} ms, "
                  f"native {t['native'] * 1e3:.1f} ms, ratio {ratio:.2f}", flush=True)

    lines = [
        "## Speed: loading an image (`psfkit.load_image`)",
        "",
        f"Best of {REPEAT} (up to 51 for fast reads) interleaved runs, files in the page cache, "
        f"{dt.date.today():%Y-%m-%d}, {os.cpu_count()} cores "
        "(shared machine). Plain read = the format library's read converted to float32 "
        "(`np.asarray(fits.getdata(p), dtype=np.float32)`, `tifffile.imread(p).astype(np.float32)`); "
        "native = the library's read without the conversion. psfkit also interprets the header (scale, gain, "
        "saturation, WCS), checks for all-NaN/constant images and searches the saturation plateau. "
        "Pixels are checked equal to the plain read.",
        "",
        "| frame | file MiB | psfkit ms | plain read ms | native read ms | psfkit / plain |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, size, tp, tplain, tnat, ratio in rows:
        lines.append(f"| {label} | {size:.1f} | {tp * 1e3:.1f} | {tplain * 1e3:.1f} | {tnat * 1e3:.1f} | {ratio:.2f} |")
    target_rows = [r for r in rows if r[0].startswith("9 MP") or "BZERO" in r[0]]
    worst = max(r[-1] for r in target_rows)
    others = max(r[-1] for r in rows)
    lines += ["", f"Target: psfkit / plain <= {TARGET} for the 9 MP plate and the 24 MP frame (uint16 FITS); "
              f"worst of the two this run: {worst:.2f} ({'met' if worst <= TARGET else 'NOT met'}); "
              f"worst of all rows: {others:.2f}. The TIFF row pays the saturation-plateau search (a max pass over "
              "the rows) that tifffile's plain read does not do, and astropy's own uint16 conversion is slower than "
              "psfkit's single pass. Timings on this shared machine vary by up to 50 % between runs."]
    text = "\n".join(lines) + "\n"
    print(text)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "bench_io.md").write_text(text)


if __name__ == "__main__":
    main()
