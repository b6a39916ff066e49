"""The Dynamic PSF window in a real browser: how quick it feels on large frames.

Drives ``psfkit view``'s page in Debian's Chromium (/usr/bin/chromium, through
Playwright; no browser download) on

- the 9 MP scan of a 1910 plate of M44 (``../shared/data/plate_m44_1910-04-01.fits``,
  3000 x 3000, about 430 stars of FWHM ~11 px), and
- a simulated 24 MP frame (6000 x 4000 float32, 5000 stars, FWHM 3.5 px).

For each frame it times, in the page (``performance.now()``):

- open: from loading the page to the first complete view (image read, stretch
  statistics, pyramid, tiles);
- detect: from clicking "Detect stars" to the ellipses drawn and painted, split
  into the server's ``find_stars`` (Server-Timing), the server's JSON encoding,
  transfer + parsing in the page, building the table and the ellipses, and the paint;
- zoom: wheel from the whole frame to 1:1 at the centre, then until every tile
  of the new view is drawn; and the key "F" back to the whole frame;
- pan: a 700 px mouse drag at 1:1 (new tiles needed), the longest gap between
  two animation frames while dragging and the time from releasing the mouse to the complete view.

The numba kernels are compiled before the clock starts (one detection on a small
crop in the same process), as a user's second detection would find them.

Usage: .venv/bin/python benchmarks/bench_web.py [--small]
(--small: a 2000 x 1500 simulated frame instead of 24 MP, for a quick check.)
Writes benchmarks/results/bench_web.md, and a screenshot of each frame after the
detection into test-artifacts/ (gitignored).
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

import psfkit
from psfkit.datasets.simulate import simulate_field
from psfkit.web import create_app, serve_in_thread

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = Path(os.environ.get("PSFKIT_SHARED_DATA", ROOT.parent / "shared" / "data"))
PLATE = "plate_m44_1910-04-01.fits"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1600, "height": 1000}
TARGET_DETECT_S = 2.0
PLATE_FWHM = 11.0  # the plate's FWHM (../shared/data/README.md), typed into the page's FWHM field


def _wait_settled(page, timeout_ms: int = 120_000) -> float:
    """Wait for a complete view; return the page clock (ms) when it was seen."""
    page.wait_for_function("() => psfkitStats.settled()", timeout=timeout_ms, polling="raf")
    return page.evaluate("performance.now()")


_GAP_START = """() => {
    window._gap = {max: 0, last: performance.now(), on: true};
    const tick = (t) => { const g = window._gap; if (!g.on) return; g.max = Math.max(g.max, t - g.last); g.last = t;
                          requestAnimationFrame(tick); };
    requestAnimationFrame(tick);
}"""
_GAP_STOP = "(() => { window._gap.on = false; return window._gap.max; })()"


def measure(browser, url: str, rel: str, *, detect_repeats: int = 2, fwhm: float | None = None) -> dict:
    page = browser.new_page(viewport=VIEWPORT)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    out: dict = {"image": rel}
    t0 = time.perf_counter()
    page.goto(f"{url}/#image={rel}")
    page.wait_for_selector("body[data-ready='1']", timeout=300_000)
    page.wait_for_function("() => psfkitStats.settled()", timeout=300_000)
    out["open_s"] = time.perf_counter() - t0
    info = page.evaluate("S.info")
    out["shape"] = (info["height"], info["width"])

    # detect: click -> ellipses drawn and painted (best of the repeats: the same work each time)
    if fwhm is not None:
        page.fill("#fwhm", str(fwhm))
    runs = []
    for _ in range(detect_repeats):
        page.click("#detect")
        page.wait_for_function("() => psfkitStats.detect && (psfkitStats.detect.drawn || psfkitStats.detect.error)",
                               timeout=600_000)
        d = page.evaluate("psfkitStats.detect")
        if d["error"]:
            raise RuntimeError(f"detection failed in the page: {d['error']}")
        n_ell = page.locator("#overlay ellipse.star").count()
        n_rows = int(page.get_attribute("#stars", "data-rows"))  # a virtual table: rows in sight only in the DOM
        assert n_ell == n_rows == d["n"], (n_ell, n_rows, d["n"])
        srv = d["server"]
        total = d["drawn"] - d["clicked"]
        server = srv.get("load", 0) + srv.get("find", 0) + srv.get("encode", 0)
        runs.append({
            "total": total / 1e3, "find": srv.get("find", float("nan")) / 1e3,
            "encode": srv.get("encode", float("nan")) / 1e3,
            "transfer": (d["parsed"] - d["clicked"] - server) / 1e3, "build": (d["built"] - d["parsed"]) / 1e3,
            "paint": (d["drawn"] - d["built"]) / 1e3, "n": d["n"],
            "fitted": (d.get("summary") or {}).get("candidates_fitted"),
        })
        page.wait_for_timeout(300)
    best = min(runs, key=lambda r: r["total"])
    out["detect"] = best
    out["detect_runs"] = [r["total"] for r in runs]
    shot = ROOT / "test-artifacts" / f"bench_web_{Path(rel).stem}{'_fwhm' if fwhm else ''}.png"
    shot.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(shot))

    # zoom: wheel at the centre of the viewer from the whole frame to 1:1
    vb = page.locator("#viewer").bounding_box()
    cx, cy = vb["x"] + vb["width"] / 2, vb["y"] + vb["height"] / 2
    page.mouse.move(cx, cy)
    z0 = page.evaluate("S.view.zoom")
    t_start = page.evaluate("performance.now()")
    page.evaluate(_GAP_START)
    steps = 0
    while page.evaluate("S.view.zoom") < 1.0 and steps < 60:
        page.mouse.wheel(0, -120)
        steps += 1
    t_last = page.evaluate("performance.now()")
    t_done = _wait_settled(page)
    out["zoom"] = {"from": z0, "to": page.evaluate("S.view.zoom"), "events": steps,
                   "gesture_s": (t_last - t_start) / 1e3, "settle_s": (t_done - t_last) / 1e3,
                   "max_frame_ms": page.evaluate(_GAP_STOP)}

    # pan at 1:1: drag 700 px left and up (tiles not seen yet)
    page.mouse.move(cx + 350, cy + 200)
    page.evaluate(_GAP_START)
    page.mouse.down()
    t_start = page.evaluate("performance.now()")
    page.mouse.move(cx - 350, cy - 200, steps=30)
    page.mouse.up()
    t_last = page.evaluate("performance.now()")
    t_done = _wait_settled(page)
    out["pan"] = {"gesture_s": (t_last - t_start) / 1e3, "settle_s": (t_done - t_last) / 1e3,
                  "max_frame_ms": page.evaluate(_GAP_STOP)}

    # back to the whole frame
    page.locator("#viewer").focus()
    t_start = page.evaluate("performance.now()")
    page.keyboard.press("f")
    t_done = _wait_settled(page)
    out["fit_view_s"] = (t_done - t_start) / 1e3
    out["tiles"] = page.evaluate("psfkitStats.tilesLoaded")
    out["errors"] = errors
    page.close()
    return out


def main() -> int:
    small = "--small" in sys.argv
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium", file=sys.stderr)
        return 1
    if not (SHARED / PLATE).exists():
        print(f"{SHARED / PLATE} is missing (../shared/data beside the checkout)", file=sys.stderr)
        return 1
    from playwright.sync_api import sync_playwright

    (HERE / "results").mkdir(exist_ok=True)
    # compile the numba kernels once (a user's first detection pays this once per process)
    img = psfkit.load_image(SHARED / PLATE)
    psfkit.find_stars(img.data[:400, :400])
    t = time.perf_counter()
    lib_plate = psfkit.find_stars(img)
    lib_plate_s = time.perf_counter() - t
    print(f"library: find_stars on the plate alone {lib_plate_s:.2f} s, {len(lib_plate)} stars "
          f"({lib_plate.meta['summary']['candidates_fitted']} candidates fitted, box from FWHM "
          f"{lib_plate.meta['frame_fwhm']:.1f} px)", flush=True)

    shape = (1500, 2000) if small else (4000, 6000)
    n_sim = 600 if small else 5000
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_web_") as tmp:
        t = time.perf_counter()
        data, truth = simulate_field(shape, n_sim, seed=1, fwhm=3.5, roundness=0.9, flux_range=(500, 5e5),
                                     background=300.0, gradient=0.3, gain=1.5, read_noise=6.0, edge=10)
        sim_name = f"sim_{shape[1]}x{shape[0]}.fits"
        fits.writeto(Path(tmp) / sim_name, data.astype(np.float32))
        del data
        print(f"simulated {shape[1]}x{shape[0]} frame, {len(truth)} stars, in {time.perf_counter() - t:.1f} s",
              flush=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                for root, rel, label, fwhm, repeats in (
                        (SHARED, PLATE, "9 MP plate (M44, 1910)", None, 1),
                        (SHARED, PLATE, f"9 MP plate, FWHM {PLATE_FWHM:g} px typed in", PLATE_FWHM, 2),
                        (Path(tmp), sim_name, f"{shape[0] * shape[1] / 1e6:.0f} MP simulated", None, 2)):
                    with serve_in_thread(create_app(root)) as server:
                        r = measure(browser, server.url, rel, fwhm=fwhm, detect_repeats=repeats)
                    r["label"] = label
                    results.append(r)
                    d = r["detect"]
                    print(f"{label}: open {r['open_s']:.2f} s; detect -> ellipses drawn {d['total']:.2f} s "
                          f"({d['n']} stars; find_stars {d['find']:.2f}, encode {d['encode']:.3f}, transfer+parse "
                          f"{d['transfer']:.3f}, table+ellipses {d['build']:.3f}, paint {d['paint']:.3f}); "
                          f"zoom to 1:1 settles {r['zoom']['settle_s']:.2f} s after the last wheel event; "
                          f"pan settles {r['pan']['settle_s']:.2f} s after release (longest frame "
                          f"{r['pan']['max_frame_ms']:.0f} ms); fit view {r['fit_view_s']:.2f} s", flush=True)
                    if r["errors"]:
                        print("page errors: " + "; ".join(r["errors"]), file=sys.stderr)
            finally:
                browser.close()
    text = report(results, lib_plate_s, len(lib_plate), small)
    print(text)
    (HERE / "results" / "bench_web.md").write_text(text + "\n")
    return 0


def report(results: list[dict], lib_plate_s: float, lib_plate_n: int, small: bool) -> str:
    lines = [
        "## The Dynamic PSF window in the browser (psfkit view)",
        "",
        "Debian's Chromium (headless, --disable-gpu) driven by Playwright, "
        f"page {VIEWPORT['width']}x{VIEWPORT['height']}, "
        "server in the same process (uvicorn thread). "
        "Detect: click on \"Detect stars\" to the ellipses drawn and painted "
        "(the table has a row per ellipse), best of 2 (1 for the plate with the automatic FWHM); "
        "its parts: the server's find_stars and JSON encoding "
        "(Server-Timing), transfer and parsing, building the table and the ellipses, paint. Zoom: mouse-wheel from the "
        "whole frame to 1:1, time from the last wheel event until every tile of the view is drawn. Pan: 700 px drag at "
        "1:1, longest gap between two animation frames during the drag (and the zoom) "
        "and time from release until the view is complete. "
        f"{dt.date.today().isoformat()}, {os.cpu_count()} cores{' (--small run)' if small else ''}.",
        "",
        "| frame | stars | open (s) | detect -> drawn (s) | find_stars (s) | encode (s) | transfer+parse (s) "
        "| table+ellipses (s) | paint (s) | zoom settle (s) | zoom longest frame (ms) | pan settle (s) "
        "| pan longest frame (ms) | fit view (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        d, z, p = r["detect"], r["zoom"], r["pan"]
        lines.append(
            f"| {r['label']} ({r['shape'][1]}x{r['shape'][0]}) | {d['n']} | {r['open_s']:.2f} | {d['total']:.2f} "
            f"| {d['find']:.2f} | {d['encode']:.3f} | {d['transfer']:.3f} | {d['build']:.3f} | {d['paint']:.3f} "
            f"| {z['settle_s']:.2f} | {z['max_frame_ms']:.0f} | {p['settle_s']:.2f} | {p['max_frame_ms']:.0f} "
            f"| {r['fit_view_s']:.2f} |")
    plate = results[0]["detect"]
    web = plate["total"] - plate["find"]
    verdict = "meets" if plate["total"] < TARGET_DETECT_S else "misses"
    given = results[1]["detect"]
    lines += [
        "",
        f"Plate: detect -> drawn {plate['total']:.2f} s {verdict} the {TARGET_DETECT_S:.0f} s target; the web side "
        f"(everything but find_stars) takes {web:.2f} s of it. find_stars alone on the plate, outside the server: "
        f"{lib_plate_s:.2f} s for {lib_plate_n} stars. find_stars fitted {plate['fitted']} candidates with the "
        f"automatic FWHM and {given['fitted']} with the FWHM typed in ({PLATE_FWHM:g} px: the candidates are "
        f"found on a frame smoothed to that scale), where it takes {given['find']:.2f} s and the whole click -> drawn "
        f"{given['total']:.2f} s.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
