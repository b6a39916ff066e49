"""The page in a real Chromium (Debian's /usr/bin/chromium, driven by Playwright; no browser download).

Outside CI a missing chromium skips with a reason; in CI (env CI set) it fails.
Screenshots go to test-artifacts/ (gitignored).
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

import psfkit
from psfkit.datasets.simulate import add_noise, render_stars, star_params
from psfkit.web import create_app, serve_in_thread

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
FRAME = "siril_qhy268m_rasa11_crop.fit.fz"
OTHER = "eso_ntt_emmi_r_sep_image.fits"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _need(condition: bool, reason: str) -> None:
    if not condition:
        if _in_ci():
            pytest.fail(f"{reason} (CI must run the browser tests: make browser installs it)")
        pytest.skip(reason)


def _require_chromium(path: str = CHROMIUM) -> None:
    """Skip (on a user's machine) or fail (in CI) when the browser or Playwright is missing."""
    _need(Path(path).exists(), f"{path} is missing: install Debian's chromium (make browser) to run the browser tests")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:  # pragma: no cover - playwright is a dev dependency
        _need(False, "the playwright package is not installed")


@pytest.mark.parametrize("ci,outcome", [("true", pytest.fail.Exception), ("1", pytest.fail.Exception),
                                        ("", pytest.skip.Exception), ("false", pytest.skip.Exception)])
def test_missing_chromium_fails_in_ci_and_skips_elsewhere(monkeypatch, ci, outcome):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="chromium"):
        _require_chromium("/nonexistent/chromium")


@pytest.fixture(scope="module")
def browser():
    _require_chromium()
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


# every Content-Security-Policy violation of the page (an inline style or script the policy blocked)
CSP_WATCH = """window.__csp = [];
document.addEventListener('securitypolicyviolation',
                          (e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"""


# (wait_for_function gets functions, not bare expressions: Playwright evaluates a bare expression with eval(),
# which the page's Content-Security-Policy rightly refuses)
def _open(browser, url: str, image: str):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
    page.add_init_script(CSP_WATCH)
    page.goto(f"{url}/#image={image}")
    page.wait_for_selector("body[data-ready='1']", timeout=60_000)
    page.wait_for_function("() => psfkitStats.settled()", timeout=60_000)
    return page, errors


ROWS = "#stars tbody tr[data-id]"


def _rows(page) -> int:
    """The table's number of rows (only the rows in sight are in the DOM: it is a virtual table)."""
    return int(page.get_attribute("#stars", "data-rows"))


def _detect(page):
    page.click("#detect")
    page.wait_for_function("() => psfkitStats.detect && (psfkitStats.detect.drawn || psfkitStats.detect.error)",
                           timeout=180_000)
    assert page.evaluate("psfkitStats.detect.error") is None
    return page.locator("#overlay ellipse.star").count(), _rows(page)


def _all_row_ids(page) -> list[int]:
    """Scroll the whole table and collect the data-id of every row, in order."""
    return [int(i) for i in page.evaluate("""async () => {
        const wrap = document.querySelector('#table-wrap'), seen = new Map();
        for (let top = 0; ; top += wrap.clientHeight / 2) {
            wrap.scrollTop = top;
            await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
            renderRows();
            const rows = Array.from(document.querySelectorAll('#stars tbody tr[data-id]'));
            const k0 = tableWindow[0];  // the index of the first row in the DOM
            rows.forEach((r, k) => seen.set(k0 + k, r.dataset.id));
            if (wrap.scrollTop + wrap.clientHeight >= wrap.scrollHeight - 1) break;
        }
        wrap.scrollTop = 0;
        return Array.from(seen.keys()).sort((a, b) => a - b).map(k => seen.get(k));
    }""")]


def _column(page, name: str) -> list[float]:
    """A column's values in table order, as the visible rows show them (they must agree with the model)."""
    idx = page.evaluate(f"S.columns.indexOf({name!r})")
    texts = page.eval_on_selector_all(ROWS, f"rows => rows.map(r => r.children[{idx}].textContent)")
    model = page.evaluate(f"S.stars.map(s => fmt({name!r}, s[{name!r}]))")
    assert texts == model[:len(texts)], "the rows in sight show the first stars of the sorted list"
    return [float("nan") if t == "—" else float(t) for t in model]


def _centre(page, selector: str) -> tuple[float, float]:
    box = page.locator(selector).bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def test_dynamic_psf_workflow_on_a_real_frame(browser, shared_data, tmp_path):
    exports = tmp_path / "exports"
    exports.mkdir()
    with serve_in_thread(create_app(shared_data, export_dir=exports)) as server:
        page, errors = _open(browser, server.url, FRAME)
        page.screenshot(path=ARTIFACTS / "web_01_open.png")

        # detect: one ellipse per table row
        n_ell, n_rows = _detect(page)
        assert n_rows > 30 and n_ell == n_rows
        assert page.locator("#star-count").text_content() == f"{n_rows} stars"
        ids = _all_row_ids(page)  # every row is reachable by scrolling, once, in the list's order
        assert ids == page.evaluate("S.stars.map(s => s.id)") and len(set(ids)) == n_rows
        drawn = page.eval_on_selector_all("#overlay ellipse.star", "es => es.map(e => e.dataset.id)")
        assert set(ids) == {int(e) for e in drawn}
        page.screenshot(path=ARTIFACTS / "web_02_detected.png")

        # sort by FWHM, both ways; missing values last
        page.click("#stars th[data-col='fwhm']")
        fw = _column(page, "fwhm")
        assert fw == sorted(fw) and len(fw) == n_rows
        page.click("#stars th[data-col='fwhm']")
        fw_down = _column(page, "fwhm")
        assert fw_down == sorted(fw_down, reverse=True)
        page.click("#stars th[data-col='fwhm']")

        # select a row: its ellipse is highlighted and centred in the viewer
        row = page.locator(ROWS).nth(2)
        sid = row.get_attribute("data-id")
        row.click()
        ell = f"#overlay ellipse.star[data-id='{sid}']"
        assert "sel" in page.get_attribute(ell, "class").split()
        assert "sel" in row.get_attribute("class").split()
        assert page.get_attribute("#marks-layer .selmark", "data-id") == sid  # the crosshair marks that star
        star = page.evaluate(f"S.stars.find(s => s.id === {sid})")
        assert f"{star['x_fit']:.3f}" in page.locator("#report").text_content()
        vb = page.locator("#viewer").bounding_box()
        cx, cy = _centre(page, ell)
        assert abs(cx - (vb["x"] + vb["width"] / 2)) < 2 and abs(cy - (vb["y"] + vb["height"] / 2)) < 2
        page.wait_for_function("() => psfkitStats.settled()")
        page.screenshot(path=ARTIFACTS / "web_03_selected.png")

        # clicking a star on the image selects its row
        other = page.locator(ROWS).nth(5).get_attribute("data-id")
        page.evaluate(f"centreOn(S.stars.find(s => s.id === {other}).x_fit, "
                      f"S.stars.find(s => s.id === {other}).y_fit, 1)")
        page.mouse.click(*_centre(page, f"#overlay ellipse.star[data-id='{other}']"))
        assert "sel" in page.get_attribute(f"#stars tbody tr[data-id='{other}']", "class").split()
        assert "sel" not in (page.get_attribute(f"#stars tbody tr[data-id='{sid}']", "class") or "").split()

        # delete it with the Delete key
        page.keyboard.press("Delete")
        assert _rows(page) == n_rows - 1
        assert page.locator("#overlay ellipse.star").count() == n_rows - 1
        assert page.locator(f"#stars tbody tr[data-id='{other}']").count() == 0
        assert page.locator(f"#overlay ellipse.star[data-id='{other}']").count() == 0
        # and a second one with the button
        page.locator(ROWS).nth(0).click()
        page.click("#remove")
        n_now = n_rows - 2
        assert _rows(page) == n_now == page.locator("#overlay ellipse.star").count()

        # box-fit a bright unsaturated star: Shift+drag a box around it
        target = page.evaluate("""() => {
            // the brightest unsaturated star with no other listed star within 25 px (a box fit
            // looks for the brightest peak inside the box: a brighter neighbour would win)
            const isolated = (s) => S.stars.every(o => o === s
                                                  || Math.hypot(o.x_fit - s.x_fit, o.y_fit - s.y_fit) > 25);
            const ok = S.stars.filter(s => !(s.flag_names || '').includes('saturated') && s.amplitude > 0
                                      && isolated(s));
            ok.sort((a, b) => b.amplitude - a.amplitude); return {id: ok[0].id, x: ok[0].x_fit, y: ok[0].y_fit};
        }""")
        page.evaluate(f"showRow({target['id']})")  # scroll the table to its row, then click the row
        page.click(f"#stars tbody tr[data-id='{target['id']}']")
        tx, ty = _centre(page, f"#overlay ellipse.star[data-id='{target['id']}']")
        zoom = page.evaluate("S.view.zoom")
        half = 9 * zoom
        page.keyboard.down("Shift")
        page.mouse.move(tx - half, ty - half)
        page.mouse.down()
        page.mouse.move(tx, ty, steps=3)
        page.mouse.move(tx + half, ty + half, steps=3)
        page.mouse.up()
        page.keyboard.up("Shift")
        # a star of the list: its row is refitted (the box fit's report), not listed twice
        page.wait_for_function(f"() => S.stars.find(s => s.id === {target['id']})._report !== undefined",
                               timeout=60_000)
        fitted = page.evaluate(f"S.stars.find(s => s.id === {target['id']})")
        assert abs(fitted["x_fit"] - target["x"]) < 0.5 and abs(fitted["y_fit"] - target["y"]) < 0.5
        report = page.locator("#report").text_content()
        assert "FWHMX" in report and "Angle" in report and f"{fitted['x_fit']:.4f}" in report
        assert int(page.get_attribute("#profile", "data-points")) > 50
        assert page.locator("#overlay ellipse.star").count() == n_now == _rows(page)
        fitted_id = target["id"]
        assert "sel" in page.get_attribute(f"#stars tbody tr[data-id='{fitted_id}']", "class").split()  # scrolled to it
        page.wait_for_function("() => psfkitStats.settled()")
        page.screenshot(path=ARTIFACTS / "web_04_boxfit.png")

        # double-click a second isolated star: fitted with the angle, added and selected
        second = page.evaluate(f"""() => {{
            const isolated = (s) => S.stars.every(o => o === s
                                                  || Math.hypot(o.x_fit - s.x_fit, o.y_fit - s.y_fit) > 25);
            const ok = S.stars.filter(s => !s._manual && s.id !== {target['id']}
                                      && !(s.flag_names || '').includes('saturated')
                                      && s.amplitude > 0 && isolated(s));
            ok.sort((a, b) => b.amplitude - a.amplitude); return {{id: ok[0].id, x: ok[0].x_fit, y: ok[0].y_fit}};
        }}""")
        page.evaluate(f"showRow({second['id']})")
        page.click(f"#stars tbody tr[data-id='{second['id']}']")
        page.mouse.dblclick(*_centre(page, f"#overlay ellipse.star[data-id='{second['id']}']"))
        page.wait_for_function(f"() => S.stars.find(s => s.id === {second['id']})._report !== undefined",
                               timeout=60_000)
        fitted = page.evaluate(f"S.stars.find(s => s.id === {second['id']})")
        assert abs(fitted["x_fit"] - second["x"]) < 0.5 and abs(fitted["y_fit"] - second["y"]) < 0.5
        assert isinstance(fitted["angle"], float) and "Angle" in page.locator("#report").text_content()
        assert _rows(page) == n_now == page.locator("#overlay ellipse.star").count()

        # zoom with the wheel and pan by dragging: the view changes and its tiles arrive
        vb = page.locator("#viewer").bounding_box()
        cx, cy = vb["x"] + vb["width"] / 2, vb["y"] + vb["height"] / 2
        page.keyboard.press("f")
        page.wait_for_function("() => psfkitStats.settled()")
        z0 = page.evaluate("S.view.zoom")
        page.mouse.move(cx, cy)
        page.mouse.wheel(0, -400)
        page.wait_for_function(f"() => S.view.zoom > {z0} * 1.5")
        x0 = page.evaluate("S.view.x0")
        page.mouse.down()
        page.mouse.move(cx - 150, cy, steps=5)
        page.mouse.up()
        assert page.evaluate("S.view.x0") > x0
        page.wait_for_function("() => psfkitStats.settled()")
        assert page.evaluate("S.stars.length") == n_now  # a pan is not a fit or a selection change
        # another stretch: new tiles, same stars
        loaded = page.evaluate("psfkitStats.tilesLoaded")
        page.select_option("#stretch-mode", "asinh")
        page.wait_for_function(f"() => psfkitStats.tilesLoaded > {loaded} && psfkitStats.settled()")
        assert page.evaluate("S.stretch.mode") == "asinh"
        page.locator("#viewer").focus()
        page.keyboard.press("f")  # back to the whole image
        page.wait_for_function(f"() => Math.abs(S.view.zoom - {z0}) < 1e-9 && psfkitStats.settled()")

        # average of the listed stars
        page.click("#average")
        page.wait_for_function("() => document.querySelector('#average-text').textContent.startsWith('Average of')")
        assert page.locator("#average-text").text_content().startswith(f"Average of {n_now} stars")

        # export a Siril .lst and read it back
        page.click("#table-head .export button[data-format='lst']")
        page.wait_for_function("() => psfkitStats.lastExport")
        assert page.evaluate("psfkitStats.lastExport.error") is None
        name = page.evaluate("psfkitStats.lastExport.written")
        back = psfkit.read_star_list(exports / name, image_shape=(568, 931))
        listed = page.evaluate("S.stars.map(s => [s.x_fit, s.y_fit])")
        assert len(back) == len(listed) == n_now
        np.testing.assert_allclose(np.sort(back["x_fit"]), np.sort([p[0] for p in listed]), atol=1e-3)
        np.testing.assert_allclose(np.sort(back["y_fit"]), np.sort([p[1] for p in listed]), atol=1e-3)
        assert list(exports.iterdir()) == [exports / name]
        page.screenshot(path=ARTIFACTS / "web_05_exported.png")

        # the same export again: the file is not overwritten; the page offers a free name and writes it on request
        first = (exports / name).read_bytes()
        page.click("#table-head .export button[data-format='lst']")
        page.wait_for_function("() => psfkitStats.lastExport")
        assert "not overwritten" in page.evaluate("psfkitStats.lastExport.error")
        suggested = page.evaluate("psfkitStats.lastExport.suggested")
        assert suggested == name.removesuffix(".lst") + "-1.lst"
        rename = page.locator("#export-rename")
        assert rename.is_visible() and suggested in rename.text_content()
        assert "not overwritten" in page.locator("#message").text_content()
        page.screenshot(path=ARTIFACTS / "web_05b_name_taken.png")
        assert (exports / name).read_bytes() == first and sorted(exports.iterdir()) == [exports / name]
        page.click("#export-rename")
        page.wait_for_function("() => psfkitStats.lastExport && psfkitStats.lastExport.written")
        assert page.evaluate("psfkitStats.lastExport.written") == suggested
        assert not page.locator("#export-rename").is_visible()
        assert len(psfkit.read_star_list(exports / suggested, image_shape=(568, 931))) == n_now
        assert (exports / name).read_bytes() == first

        # open another image from the root folder: the list starts empty, detection works there too
        page.select_option("#file-select", OTHER)
        page.wait_for_selector(f"body[data-image='{OTHER}']")
        page.wait_for_function("() => psfkitStats.settled()", timeout=60_000)
        assert _rows(page) == 0 == page.locator("#overlay ellipse.star").count()
        assert page.locator("#image-facts").text_content().startswith("256 × 256")
        n_ell, n_rows = _detect(page)
        assert n_rows > 5 and n_ell == n_rows
        page.screenshot(path=ARTIFACTS / "web_06_other_image.png")
        assert errors == [] and page.evaluate("window.__csp") == []
        page.close()


def _elongated_frame(path: Path, *, top_down: bool) -> tuple[float, float]:
    """A bottom-up (or TOP-DOWN) frame with one elongated star at 30 deg low on the left, one round star."""
    ny, nx = 200, 300
    x0, y0 = 80.0, 50.0 if not top_down else 150.0  # row 50 (bottom-up) and row 150 (top-down) both show low
    p = star_params("gaussian", [x0, 220.0], [y0, 100.0], [4e5, 1e5], [9.0, 4.0], [3.6, 4.0], [30.0, 0.0])
    expected = render_stars((ny, nx), p, model="gaussian") + 100.0
    data = add_noise(expected, gain=2.0, read_noise=3.0, rng=np.random.default_rng(5)).astype(np.float32)
    hdr = fits.Header()
    if top_down:
        hdr["ROWORDER"] = "TOP-DOWN"
    fits.writeto(path, data, hdr)
    return x0, y0


@pytest.mark.parametrize("top_down", [False, True])
def test_image_y_axis_and_angle_on_screen(browser, tmp_path, top_down):
    """The drawn ellipse sits on the star's pixels and turns the same way on screen; a bottom-up frame shows
    row 0 at the bottom (y up, so the angle turns counter-clockwise on screen), a TOP-DOWN one at the top."""
    from PIL import Image as PILImage

    name = "td.fits" if top_down else "bu.fits"
    x0, y0 = _elongated_frame(tmp_path / name, top_down=top_down)
    with serve_in_thread(create_app(tmp_path)) as server:
        page, errors = _open(browser, server.url, name)
        page.check("#angle")
        _detect(page)
        sid = page.evaluate(f"S.stars.reduce((b, s) => Math.hypot(s.x_fit - {x0}, s.y_fit - {y0}) < "
                            f"Math.hypot(b.x_fit - {x0}, b.y_fit - {y0}) ? s : b).id")
        star = page.evaluate(f"S.stars.find(s => s.id === {sid})")
        assert abs(star["x_fit"] - x0) < 0.3 and abs(star["y_fit"] - y0) < 0.3
        assert star["angle"] == pytest.approx(30.0, abs=3.0)
        sel = f"#overlay ellipse.star[data-id='{sid}']"
        ex, ey = _centre(page, sel)
        vb = page.locator("#viewer").bounding_box()
        # the star is in the lower-left part of the display in both cases (row 50 of a bottom-up frame,
        # row 150 of a top-down one)
        assert ex < vb["x"] + vb["width"] / 2 and ey > vb["y"] + vb["height"] / 2
        # the ellipse's on-screen rotation (SVG: clockwise positive, y down)
        ctm = page.evaluate(f"(() => {{ const m = document.querySelector(\"{sel}\").getCTM(); return [m.a, m.b]; }})()")
        ell_angle = math.degrees(math.atan2(ctm[1], ctm[0]))
        rx, ry = float(page.get_attribute(sel, "rx")), float(page.get_attribute(sel, "ry"))
        assert rx > ry
        # the star's pixels as drawn: centroid and orientation from the screenshot (overlay hidden)
        page.evaluate("document.querySelector('#overlay').style.visibility = 'hidden'")
        page.wait_for_function("() => psfkitStats.settled()")
        shot = np.asarray(PILImage.open(io.BytesIO(page.screenshot())).convert("L"), dtype=float)
        page.evaluate("document.querySelector('#overlay').style.visibility = ''")
        page.screenshot(path=ARTIFACTS / f"web_orientation_{'topdown' if top_down else 'bottomup'}.png")
        r = 30
        win = shot[int(ey) - r:int(ey) + r + 1, int(ex) - r:int(ex) + r + 1]
        w = np.clip(win - np.median(shot), 0, None)
        yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
        tot = w.sum()
        mx, my = (w * xx).sum() / tot, (w * yy).sum() / tot
        assert abs(mx) < 2.0 and abs(my) < 2.0, "the ellipse is centred on the star's pixels"
        mxx = (w * (xx - mx) ** 2).sum() / tot
        myy = (w * (yy - my) ** 2).sum() / tot
        mxy = (w * (xx - mx) * (yy - my)).sum() / tot
        pix_angle = math.degrees(0.5 * math.atan2(2 * mxy, mxx - myy))
        assert abs(((pix_angle - ell_angle) + 90) % 180 - 90) < 6, (pix_angle, ell_angle)
        expected = 30.0 if top_down else -30.0  # y up on screen turns a CCW image angle into a CCW screen angle
        assert abs(((ell_angle - expected) + 90) % 180 - 90) < 4, ell_angle
        assert errors == []
        page.close()


def test_deblend_box_finds_the_companions(browser, pairs_fits):
    """The deblend box: the companions hidden beside brighter stars are drawn, and the summary counts them."""
    tmp_path = pairs_fits.parent
    with serve_in_thread(create_app(tmp_path)) as server:
        page, errors = _open(browser, server.url, "pairs.fits")
        n_plain, _ = _detect(page)
        page.check("#deblend")
        n_deep, rows = _detect(page)
        assert n_deep == rows == 5 and n_plain == 3
        assert "2 companions from the residual" in page.locator("#summary").text_content()
        passes = page.evaluate("S.stars.map(s => s.detection_pass)")
        assert sorted(passes) == [1, 1, 1, 2, 2]
        page.screenshot(path=str(ARTIFACTS / "deblend.png"))
        assert errors == []
        page.close()


class _Recorder:
    """ASGI wrapper that records (method, path, status, origin) of every answered request."""

    def __init__(self, app):
        self.app, self.seen = app, []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        origin = dict(scope["headers"]).get(b"origin", b"").decode()

        async def spy(message):
            if message["type"] == "http.response.start":
                self.seen.append((scope["method"], scope["path"], message["status"], origin))
            await send(message)

        await self.app(scope, receive, spy)


def test_other_sites_cannot_use_the_server(browser, tmp_path):
    """Real-browser attacks: a page of another origin posting an export (even as a 'simple' no-cors request,
    which the browser sends without asking), and a page whose name is re-pointed at 127.0.0.1 (DNS
    rebinding, simulated with Chromium's resolver rules): nothing is written or listed; the page cannot be framed."""
    root, exports = tmp_path / "root", tmp_path / "exports"
    for d in (root, exports):
        d.mkdir()
    _elongated_frame(root / "img.fits", top_down=False)
    body = ('{"path": "img.fits", "columns": ["x_fit", "y_fit"], "rows": [[10, 20]], "format": "csv", '
            '"name": "evil.csv"}')
    target = _Recorder(create_app(root, export_dir=exports))

    async def another_site(scope, receive, send):  # a plain page of another origin (another port), no policy
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/html")]})
            await send({"type": "http.response.body", "body": b"<!doctype html><title>another site</title><p>hello"})

    with serve_in_thread(target) as server, serve_in_thread(another_site) as elsewhere:
        page = browser.new_page()
        page.goto(elsewhere.url + "/")
        outcome = page.evaluate("""async ([url, body]) => {
            const out = {};
            try { const r = await fetch(url + '/api/export',
                                        {method: 'POST', headers: {'Content-Type': 'application/json'}, body});
                  out.cors = r.status; } catch (e) { out.cors = 'blocked'; }
            try { await fetch(url + '/api/export',
                              {method: 'POST', mode: 'no-cors', headers: {'Content-Type': 'text/plain'}, body});
                  out.simple = 'sent'; } catch (e) { out.simple = 'blocked'; }
            try { const r = await fetch(url + '/api/files'); out.files = await r.text(); }
            catch (e) { out.files = 'blocked'; }
            return out;
        }""", [server.url, body])
        page.close()
    assert outcome["cors"] == "blocked" and outcome["files"] == "blocked", outcome
    assert list(exports.iterdir()) == [], "no export written by another site"
    posts = [(m, st, o) for m, path, st, o in target.seen if path == "/api/export"]
    # the simple request arrived and was refused by its Origin
    assert ("POST", 403, elsewhere.url) in posts, target.seen
    assert all(st == 403 for _, st, _ in posts)

    # DNS rebinding: a second Chromium resolves rebound.test to 127.0.0.1 and sends Host: rebound.test
    b = browser.browser_type.launch(executable_path=CHROMIUM,
                                    args=ARGS + ["--host-resolver-rules=MAP rebound.test 127.0.0.1"])
    try:
        with serve_in_thread(create_app(root, export_dir=exports)) as server:
            port = server.url.rsplit(":", 1)[1]
            page = b.new_page()
            r = page.goto(f"http://rebound.test:{port}/api/files")
            assert r.status == 400 and "img.fits" not in page.content() and "is not served" in page.content()
            assert page.goto(f"http://rebound.test:{port}/").status == 400
            status = page.evaluate("""async () => (await fetch('/api/export', {
                method: 'POST', headers: {'Content-Type': 'application/json'},
                body: JSON.stringify({path: 'img.fits', columns: ['x_fit', 'y_fit'], rows: [[1, 2]], format: 'csv'}),
            })).status""")
            assert status == 400 and list(exports.iterdir()) == []
            # the real page may not be framed by another page
            r = page.goto(f"http://127.0.0.1:{port}/")
            assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
            assert r.headers["x-frame-options"] == "DENY"
    finally:
        b.close()


def test_sorting_starts_at_the_top_and_a_box_fit_of_a_listed_star_replaces_its_row(browser, shared_data, tmp_path):
    with serve_in_thread(create_app(shared_data, export_dir=tmp_path)) as server:
        page, errors = _open(browser, server.url, FRAME)
        _, n_rows = _detect(page)
        # scroll down, then sort: the new order is shown from its first row
        page.evaluate("document.querySelector('#table-wrap').scrollTop = 2000")
        page.wait_for_function("() => document.querySelector('#table-wrap').scrollTop > 0")
        page.click("#stars thead th[data-col='fwhm']")
        assert page.evaluate("document.querySelector('#table-wrap').scrollTop") == 0
        first = page.eval_on_selector(ROWS, "r => Number(r.dataset.id)")
        assert first == page.evaluate("S.stars[0].id")
        # a box fit around a star of the list: the same row, refitted, no duplicate
        star = page.evaluate("({id: S.stars[5].id, x: S.stars[5].x_fit, y: S.stars[5].y_fit})")
        page.evaluate(f"fitAt({star['x'] + 1.0}, {star['y'] - 1.0}, 15)")
        page.wait_for_function(f"() => S.stars.find(s => s.id === {star['id']})._report !== undefined", timeout=60_000)
        assert _rows(page) == n_rows
        near = f"S.stars.filter(s => Math.hypot(s.x_fit - {star['x']}, s.y_fit - {star['y']}) < 1).length"
        assert page.evaluate(near) == 1
        assert not errors
def test_inspector_panel(browser, tmp_path):
    """The Inspector panel: a frame with a known tilt and curvature shows the fitted numbers and the report."""
    from tests.test_inspect import TRUTH, tilted_field

    fits.writeto(tmp_path / "tilted.fits", tilted_field(7).astype(np.float32),
                 fits.Header({"GAIN": 1.5, "RDNOISE": 6.0}))
    with serve_in_thread(create_app(tmp_path)) as server:
        page, errors = _open(browser, server.url, "tilted.fits")
        assert page.locator("#inspect-img").is_hidden()
        page.click("#inspect")
        page.wait_for_function("() => psfkitStats.inspect !== null && psfkitStats.inspect !== undefined",
                               timeout=180_000)
        stats = page.evaluate("psfkitStats.inspect")
        assert stats["error"] is None
        assert stats["curvature"] == pytest.approx(TRUTH["curvature"], rel=0.15)
        text = page.locator("#inspect-text").text_content()
        assert "gradient x" in text and "top_right" in text and "elongation" in text
        img = page.locator("#inspect-img")
        assert img.is_visible()
        page.wait_for_function("() => document.querySelector('#inspect-img').naturalWidth > 500")
        width = img.bounding_box()["width"]
        img.click()  # enlarge over the page
        assert img.bounding_box()["width"] > 2 * width
        page.screenshot(path=str(ARTIFACTS / "inspector.png"))
        assert errors == []
        page.close()


def test_residual_toggle_shows_the_frame_minus_every_star(browser, tmp_path):
    """Detect with deblend (the frame's own PSF): the Residual button appears, and toggling it swaps the
    tiles for the frame minus every fitted star (the stars' light gone from the screen), and back."""
    from PIL import Image as PILImage

    from psfkit.datasets.simulate import simulate_field

    data, truth = simulate_field((256, 256), 120, model="moffat", fwhm=3.2, beta=3.0, flux_range=(2e3, 1e5),
                                 min_separation=6, edge=10, seed=6)
    fits.writeto(tmp_path / "crowd.fits", data.astype(np.float32), fits.Header({"GAIN": 1.5, "RDNOISE": 6.0}))
    with serve_in_thread(create_app(tmp_path)) as server:
        page, errors = _open(browser, server.url, "crowd.fits")
        assert page.locator("#residual-toggle").is_hidden()

        def screen():
            page.evaluate("document.querySelector('#overlay').style.visibility = 'hidden'")
            page.wait_for_function("() => psfkitStats.settled()")
            vb = page.locator("#viewer").bounding_box()
            shot = np.asarray(PILImage.open(io.BytesIO(page.screenshot(clip=vb))).convert("L"), dtype=float)
            page.evaluate("document.querySelector('#overlay').style.visibility = ''")
            return shot

        page.check("#deblend")
        _detect(page)
        assert page.locator("#residual-toggle").is_visible()
        frame = screen()
        page.click("#residual-toggle")
        page.wait_for_selector("body[data-layer='residual']")
        residual = screen()
        page.screenshot(path=str(ARTIFACTS / "residual.png"))
        # the stars' light is gone: the brightest screen pixels of the frame are sky on the residual
        bright = frame > np.percentile(frame, 99.5)
        assert np.median(residual[bright]) < np.median(frame[bright]) - 50
        assert abs(np.median(residual) - np.median(frame)) < 10  # the same sky, the same stretch
        page.focus("#viewer")
        page.keyboard.press("r")  # and back (R)
        page.wait_for_selector("body[data-layer='frame']")
        again = screen()
        assert np.median(np.abs(again - frame)) < 2
        # a detection without deblend leaves no residual to show
        page.uncheck("#deblend")
        _detect(page)
        assert page.locator("#residual-toggle").is_hidden()
        assert errors == []
        page.close()
