"""The web API (psfkit view) with FastAPI's TestClient: results equal the library's, paths stay in the
root folder, exports stay in the export folder, bad parameters are 4xx with a JSON message (never 500)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

import psfkit
from psfkit.datasets.simulate import simulate_field
from psfkit.web import _store, create_app

with warnings.catch_warnings():  # starlette's test client warns about httpx on import
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

SIM = "sim.fits"
LOCAL = "http://127.0.0.1:8765"  # the page's own origin: TestClient's default host "testserver" is not served


def _client(app, **kw) -> TestClient:
    return TestClient(app, base_url=LOCAL, **kw)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """root/ with a simulated frame and a sub-folder, an outside file, links out, and an export folder."""
    base = tmp_path_factory.mktemp("webapi")
    root, out, exp = base / "root", base / "outside", base / "exports"
    for d in (root, root / "sub", out, exp):
        d.mkdir()
    data, truth = simulate_field((300, 400), 25, fwhm=3.2, roundness=0.8, angle_deg=30.0, flux_range=(5e3, 2e5),
                                 background=100.0, min_separation=25, edge=15, seed=3)
    fits.writeto(root / SIM, data.astype(np.float32))
    fits.writeto(root / "sub" / "copy.fits", data.astype(np.float32))
    fits.writeto(out / "secret.fits", data.astype(np.float32))
    (out / "secret.txt").write_text("not yours")
    (root / "notes.txt").write_text("not an image")
    os.symlink(out / "secret.fits", root / "link_out.fits")
    os.symlink(out, root / "linkdir")
    os.symlink(root / SIM, root / "link_in.fits")  # a link that stays inside is fine
    return {"base": base, "root": root, "outside": out, "exports": exp, "truth": truth, "data": data}


@pytest.fixture(scope="module")
def client(tree):
    app = create_app(tree["root"], export_dir=tree["exports"], image=SIM)
    with _client(app) as c:  # raise_server_exceptions: a bug surfaces as an exception here
        yield c


@pytest.fixture(scope="module")
def detected(client):
    r = client.post("/api/detect", json={"path": SIM, "threshold": 5, "model": "gaussian"})
    assert r.status_code == 200, r.text
    return r.json()


def _rows_table(payload):
    cols = payload["columns"]
    return {c: np.array([np.nan if r[i] is None else r[i] for r in payload["rows"]], dtype=object)
            for i, c in enumerate(cols)}


# ------------------------------------------------------------------ results equal the library's

def test_files_lists_images_inside_root_only(client):
    files = client.get("/api/files").json()["files"]
    assert SIM in files and "sub/copy.fits" in files and "link_in.fits" in files
    assert "link_out.fits" not in files and not any(f.startswith("linkdir") for f in files)


def test_image_info(client, tree):
    info = client.get("/api/image", params={"path": SIM}).json()
    assert (info["width"], info["height"]) == (400, 300)
    assert info["top_down"] is False
    st = info["stats"]
    assert st["median"] == pytest.approx(float(np.median(tree["data"])), rel=0.02)
    a = info["auto_stretch"]
    assert a["black"] < st["median"] < a["white"] and 0 < a["mid"] < 0.5


def test_detect_matches_find_stars_and_truth(detected, tree):
    lib = psfkit.find_stars(psfkit.load_image(tree["root"] / SIM), threshold=5)
    t = _rows_table(detected)
    assert len(detected["rows"]) == len(lib)
    np.testing.assert_allclose(t["x_fit"].astype(float), lib["x_fit"], atol=1e-9)
    np.testing.assert_allclose(t["fwhm"].astype(float), lib["fwhm"], atol=1e-9)
    truth = tree["truth"]
    bright = truth[truth["snr"] > 30]
    d = np.hypot(t["x_fit"].astype(float)[:, None] - bright["x"][None],
                 t["y_fit"].astype(float)[:, None] - bright["y"][None])
    assert np.all(d.min(axis=0) < 0.5), "every bright simulated star is found within 0.5 px"
    assert "flag_names" in detected["columns"] and detected["summary"]["n_stars"] == len(detected["rows"])


def test_detect_with_settings_is_find_stars_with_them(client, tree):
    r = client.post("/api/detect", json={"path": SIM, "threshold": 8, "fwhm": 3.2, "min_roundness": 0.5})
    assert r.status_code == 200, r.text
    # the page's default model is find's: auto (the frame's own PSF, or the profile the stars prefer)
    lib = psfkit.find_stars(psfkit.load_image(tree["root"] / SIM), threshold=8, fwhm=3.2, min_roundness=0.5,
                            model="auto")
    assert r.json()["psf_model"] == lib.meta["psf_model"]
    t = _rows_table(r.json())
    np.testing.assert_allclose(t["x_fit"].astype(float), lib["x_fit"], atol=1e-9)
    assert r.json()["settings"]["fwhm"] == 3.2
    timing = r.headers["server-timing"]
    assert "find;dur=" in timing and "encode;dur=" in timing


def test_fit_box_reports_angle_and_profile(client, tree):
    truth = tree["truth"]
    k = int(np.argmax(truth["snr"]))
    x, y = float(truth["x"][k]) + 1.3, float(truth["y"][k]) - 0.8
    r = client.post("/api/fit", json={"path": SIM, "x": x, "y": y, "box": 17})
    assert r.status_code == 200, r.text
    out = r.json()
    row = dict(zip(out["columns"], out["rows"][0]))
    lib = psfkit.fit_star(psfkit.load_image(tree["root"] / SIM), x, y, box=17, angle=True, search_radius=8.5)
    assert row["x_fit"] == pytest.approx(lib.x_fit, abs=1e-9) and row["angle"] == pytest.approx(lib.angle, abs=1e-9)
    assert row["x_fit"] == pytest.approx(truth["x"][k], abs=0.1)
    assert row["angle"] == pytest.approx(30.0, abs=3.0)
    assert out["report"] == lib.report()
    prof = out["profile"]
    assert len(prof["radius"]) == len(prof["value"]) == len(prof["model"]) == 17 * 17
    assert np.all(np.diff(prof["radius"]) >= 0)
    cm = np.asarray(prof["curve_model"])
    assert cm[0] > prof["background"] + 0.5 * row["amplitude"] and cm[-1] < cm[0]
    # the model follows the pixels: residual scatter well below the star's amplitude
    res = np.asarray(prof["value"]) - np.asarray(prof["model"])
    assert np.std(res) < 0.05 * row["amplitude"]


def test_average_is_the_library_average(client, detected, tree):
    r = client.post("/api/average", json={"path": SIM, "columns": detected["columns"], "rows": detected["rows"]})
    assert r.status_code == 200, r.text
    avg = r.json()["average"]
    lib = psfkit.average(psfkit.find_stars(psfkit.load_image(tree["root"] / SIM), threshold=5))
    assert avg["n_stars"] == lib["n_stars"]
    assert avg["fwhm"]["median"] == pytest.approx(lib["fwhm"]["median"], rel=1e-12)
    assert f"Average of {lib['n_stars']} stars" in r.json()["text"]


@pytest.mark.parametrize("fmt", ["lst", "csv", "ecsv", "reg"])
def test_export_reads_back(client, detected, tree, fmt):
    name = f"stars_{fmt}.{fmt}"
    r = client.post("/api/export", json={"path": SIM, "columns": detected["columns"], "rows": detected["rows"],
                                         "format": fmt, "name": name, "model": "gaussian", "threshold": 5})
    assert r.status_code == 200, r.text
    back = psfkit.read_star_list(tree["exports"] / name, image_shape=(300, 400))
    t = _rows_table(detected)
    assert len(back) == len(detected["rows"])
    # same positions, whatever order the format keeps (.lst: brightest first)
    xs = np.sort(np.asarray(back["x_fit"], float))
    np.testing.assert_allclose(xs, np.sort(t["x_fit"].astype(float)), atol=1e-3)
    ys = np.sort(np.asarray(back["y_fit"], float))
    np.testing.assert_allclose(ys, np.sort(t["y_fit"].astype(float)), atol=1e-3)



def test_exported_lst_header_is_the_clis(client, detected, tree):
    """The page's .lst says the same detection settings as the CLI's (one header function)."""
    r = client.post("/api/export", json={"path": SIM, "columns": detected["columns"], "rows": detected["rows"],
                                         "format": "lst", "name": "header.lst", "model": "gaussian", "threshold": 5})
    assert r.status_code == 200, r.text
    page = (tree["exports"] / "header.lst").read_text().splitlines()[1]
    lib = psfkit.find_stars(psfkit.load_image(tree["root"] / SIM), threshold=5)
    cli = psfkit.write_star_list(lib, tree["base"] / "cli.lst").read_text().splitlines()[1]
    assert page == cli and "roundness=0.30" in page and " radius=0 " not in page


# ------------------------------------------------------------------ the display tiles

def test_tile_is_display_oriented_png(client, tree):
    from PIL import Image as PILImage

    info = client.get("/api/image", params={"path": SIM}).json()
    a = info["auto_stretch"]
    r = client.get("/api/tile", params={"path": SIM, "level": 0, "tx": 0, "ty": 0, "black": a["black"],
                                        "white": a["white"], "mid": a["mid"], "mode": "linear"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    tile = np.asarray(PILImage.open(io.BytesIO(r.content)))
    assert tile.shape == (256, 256)
    # bottom-up frame: display row d shows image row ny-1-d
    data = tree["data"]
    ny = data.shape[0]
    iy, ix = np.unravel_index(np.argmax(data[ny - 256:, :256]), (256, 256))
    row_img = ny - 256 + iy
    dy, dx = np.unravel_index(np.argmax(tile), tile.shape)
    assert (ny - 1 - row_img, ix) == (dy, dx) or tile[ny - 1 - row_img, ix] == 255
    # the coarsest level covers the whole frame in one tile
    top = info["levels"] - 1
    r = client.get("/api/tile", params={"path": SIM, "level": top, "tx": 0, "ty": 0,
                                        "black": a["black"], "white": a["white"]})
    small = np.asarray(PILImage.open(io.BytesIO(r.content)))
    assert small.shape == (-(-300 // 2 ** top), -(-400 // 2 ** top))


def test_top_down_frame_is_not_flipped(tmp_path):
    from PIL import Image as PILImage

    data = np.full((40, 50), 10.0, np.float32)
    data[5, 7] = 1000.0  # row 5
    hdr = fits.Header()
    hdr["ROWORDER"] = "TOP-DOWN"
    fits.writeto(tmp_path / "td.fits", data, hdr)
    fits.writeto(tmp_path / "bu.fits", data)
    with _client(create_app(tmp_path)) as c:
        for name, row in (("td.fits", 5), ("bu.fits", 40 - 1 - 5)):
            info = c.get("/api/image", params={"path": name}).json()
            assert info["top_down"] is (name == "td.fits")
            r = c.get("/api/tile", params={"path": name, "level": 0, "tx": 0, "ty": 0, "black": 0, "white": 1000,
                                           "mode": "linear"})
            tile = np.asarray(PILImage.open(io.BytesIO(r.content)))
            assert np.unravel_index(np.argmax(tile), tile.shape) == (row, 7)


# ------------------------------------------------------------------ paths stay in the root

@pytest.fixture()
def no_reads(monkeypatch):
    calls = []
    real = _store.load_image

    def spy(path, *a, **k):
        calls.append(str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(_store, "load_image", spy)
    return calls


def _bad_paths(tree):
    return ["../outside/secret.fits", "sub/../../outside/secret.fits", str(tree["outside"] / "secret.fits"),
            str(tree["root"] / SIM), "link_out.fits", "linkdir/secret.fits", "..\\outside\\secret.fits",
            "~/secret.fits", "sub/\x00.fits", "C:/secret.fits"]


def test_traversal_refused_everywhere(client, tree, no_reads):
    store = client.app.state.store
    store._items.clear()
    for p in _bad_paths(tree):
        for method, url, kw in (
            ("get", "/api/image", {"params": {"path": p}}),
            ("get", "/api/tile", {"params": {"path": p, "level": 0, "tx": 0, "ty": 0, "black": 0, "white": 1}}),
            ("post", "/api/detect", {"json": {"path": p}}),
            ("post", "/api/fit", {"json": {"path": p, "x": 10, "y": 10}}),
            ("post", "/api/average", {"json": {"path": p, "columns": ["x_fit", "y_fit"], "rows": [[1, 2]]}}),
            ("post", "/api/export",
             {"json": {"path": p, "columns": ["x_fit", "y_fit"], "rows": [[1, 2]], "format": "csv"}}),
        ):
            r = getattr(client, method)(url, **kw)
            assert 400 <= r.status_code < 500, (p, url, r.status_code)
            assert isinstance(r.json()["detail"], str) and r.json()["detail"]
    assert no_reads == [], "nothing outside the root is read"


@pytest.mark.parametrize("raw", ["..%2Foutside%2Fsecret.fits", "%2e%2e/outside/secret.fits",
                                 "%2E%2E%2Foutside%2Fsecret.fits", "%2Fetc%2Fpasswd",
                                 "sub%2F..%2F..%2Foutside%2Fsecret.txt", "%252e%252e%252foutside%252fsecret.fits"])
def test_encoded_traversal_refused(client, raw, no_reads):
    r = client.get(f"/api/image?path={raw}")
    assert 400 <= r.status_code < 500 and "detail" in r.json()
    assert no_reads == []


def test_static_files_stay_in_package(client):
    for url in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2f..%2f__init__.py"):
        r = client.get(url)
        assert r.status_code in (400, 404)
    assert "Detect stars" in client.get("/").text
    assert client.get("/static/app.js").status_code == 200


# ------------------------------------------------------------------ malformed parameters: 4xx + message, never 500

TILE_OK = {"path": SIM, "level": 0, "tx": 0, "ty": 0, "black": 0, "white": 1000}


@pytest.mark.parametrize("change", [
    {"level": -1}, {"level": "abc"}, {"level": 40}, {"level": 9}, {"tx": 99}, {"ty": -3}, {"black": "nan"},
    {"white": "inf"}, {"white": -5}, {"mode": "log"}, {"mid": 0}, {"mid": 1.5}, {"soft": -1}, {"path": ""},
    {"tx": None}, {"path": "sub"},
])
def test_bad_tile_parameters(client, change):
    params = {k: v for k, v in {**TILE_OK, **change}.items() if v is not None}
    r = client.get("/api/tile", params=params)
    assert 400 <= r.status_code < 500, r.text
    assert isinstance(r.json()["detail"], str)


@pytest.mark.parametrize("url,body", [
    ("/api/detect", {"path": SIM, "threshold": -1}),
    ("/api/detect", {"path": SIM, "threshold": "five"}),
    ("/api/detect", {"path": SIM, "model": "airy"}),
    ("/api/detect", {"path": SIM, "min_roundness": 2}),
    ("/api/detect", {"path": SIM, "fwhm": 0}),
    ("/api/detect", {"path": SIM, "fwhm": "wide"}),
    ("/api/detect", {"path": SIM, "fwhm": 1e9}),
    ("/api/detect", {"path": "notes.txt"}),
    ("/api/detect", {"path": "sub"}),
    ("/api/detect", {"path": SIM, "surprise": 1}),
    ("/api/detect", {}),
    ("/api/detect", [1, 2]),
    ("/api/fit", {"path": SIM, "x": 1e9, "y": 10}),
    ("/api/fit", {"path": SIM, "x": -20, "y": 10}),
    ("/api/fit", {"path": SIM, "x": 10, "y": 10, "box": 2}),
    ("/api/fit", {"path": SIM, "x": 10, "y": 10, "box": 5000}),
    ("/api/fit", {"path": SIM, "x": "ten", "y": 10}),
    ("/api/fit", {"path": SIM, "x": 10}),
    ("/api/average", {"path": SIM, "columns": ["x y", "y_fit"], "rows": [[1, 2]]}),
    ("/api/average", {"path": SIM, "columns": ["x_fit", "y_fit"], "rows": [[1, 2, 3]]}),
    ("/api/average", {"path": SIM, "columns": ["x_fit", "y_fit", "fwhm"], "rows": [[1, 2, 3], [1, 2, "wide"]]}),
    ("/api/average", {"path": SIM, "columns": ["x_fit", "x_fit"], "rows": [[1, 2]]}),
    ("/api/average", {"path": SIM, "columns": ["fwhm"], "rows": [[1]]}),
    ("/api/average", {"path": SIM, "columns": ["x_fit", "y_fit"], "rows": [[None, 2]]}),
    ("/api/average", {"path": SIM, "columns": ["x_fit", "y_fit"], "rows": [[{"a": 1}, 2]]}),
    ("/api/export", {"path": SIM, "columns": ["x_fit", "y_fit"], "rows": [[1, 2]], "format": "exe"}),
    ("/api/export", {"path": SIM, "columns": ["x_fit", "y_fit"], "rows": [[1, 2]], "format": "csv", "name": "a.lst"}),
])
def test_bad_bodies(client, url, body):
    r = client.post(url, json=body)
    assert 400 <= r.status_code < 500, r.text
    assert isinstance(r.json()["detail"], str) and "Traceback" not in r.text


@pytest.mark.parametrize("raw", [b'{"path": "sim.fits", "x": NaN, "y": 1}',
                                 b'{"path": "sim.fits", "x": Infinity, "y": 1}', b"{not json", b"",
                                 b'{"path": "sim.fits", "x": 1e999, "y": 1}'])
def test_non_finite_and_broken_json(client, raw):
    r = client.post("/api/fit", content=raw, headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500 and isinstance(r.json()["detail"], str)


def test_unknown_endpoint_and_method(client):
    assert client.get("/api/nothing").status_code == 404
    assert client.get("/api/detect").status_code in (404, 405)
    assert "detail" in client.get("/api/nothing").json()


# ------------------------------------------------------------------ exports stay in the export folder

@pytest.mark.parametrize("name", ["../escape.csv", "/tmp/escape.csv", "sub/escape.csv", "..", ".hidden.csv",
                                  "a\\..\\escape.csv", "escape.csv\x00.txt", "x" * 200 + ".csv", "link.csv"])
def test_export_names_cannot_leave_the_folder(client, tree, name):
    link = tree["exports"] / "link.csv"
    if not link.is_symlink():
        os.symlink(tree["outside"] / "target.csv", link)
    before = sorted(str(p) for p in tree["base"].rglob("*"))
    r = client.post("/api/export", json={"path": SIM, "columns": ["x_fit", "y_fit"], "rows": [[1.0, 2.0]],
                                         "format": "csv", "name": name})
    assert 400 <= r.status_code < 500 and isinstance(r.json()["detail"], str)
    assert sorted(str(p) for p in tree["base"].rglob("*")) == before
    assert not (tree["outside"] / "target.csv").exists()


# ------------------------------------------------------------------ many requests and large frames

def test_concurrent_requests_load_once(tree, monkeypatch):
    calls = []
    real = _store.load_image

    def spy(path, *a, **k):
        calls.append(str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(_store, "load_image", spy)
    app = create_app(tree["root"])
    results = []
    with _client(app) as c:
        a = c.get("/api/image", params={"path": "sub/copy.fits"}).json()["auto_stretch"]
        calls.clear()
        app.state.store._items.clear()

        def hit(i):
            if i % 3 == 0:
                r = c.get("/api/image", params={"path": "sub/copy.fits"})
            else:
                r = c.get("/api/tile", params={"path": "sub/copy.fits", "level": 0, "tx": i % 2, "ty": (i // 2) % 2,
                                               "black": a["black"], "white": a["white"]})
            results.append(r.status_code)

        threads = [threading.Thread(target=hit, args=(i,)) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == [200] * 24
    assert len(calls) == 1, "the frame is read once, whatever the number of requests"


def test_too_large_frame_is_refused(tree, monkeypatch):
    monkeypatch.setattr(_store, "MAX_PIXELS", 1000)
    with _client(create_app(tree["root"])) as c:
        r = c.get("/api/image", params={"path": "sub/copy.fits"})
    assert r.status_code == 400 and "pixels" in r.json()["detail"]


def test_create_app_checks_its_folders(tree):
    with pytest.raises(psfkit.PsfkitError):
        create_app(tree["root"] / "nope")
    with pytest.raises(psfkit.PsfkitError):
        create_app(tree["root"], export_dir=tree["root"] / "nope")
    with pytest.raises(psfkit.PsfkitError):
        create_app(tree["root"], image="../outside/secret.fits")


# ------------------------------------------------------------------ the command

def test_view_command_errors(tree):
    from typer.testing import CliRunner

    from psfkit.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["view", str(tree["root"] / "missing.fits"), "--no-browser"])
    assert r.exit_code == 2 and "no such file" in r.output
    r = runner.invoke(app, ["view", str(tree["outside"] / "secret.fits"), "--root", str(tree["root"]), "--no-browser"])
    assert r.exit_code == 2 and "not inside the root" in r.output
    r = runner.invoke(app, ["view", "--root", str(tree["root"] / "nope"), "--no-browser"])
    assert r.exit_code == 2 and "does not exist" in r.output


def test_view_command_serves_and_prints_its_address(tree):
    import httpx

    command = [sys.executable, "-m", "psfkit", "view", str(tree["root"] / SIM), "--port", "0", "--no-browser"]
    with subprocess.Popen(command,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as proc:
        try:
            line = proc.stdout.readline()
            assert line.startswith("psfkit view: http://127.0.0.1:"), line
            url = line.split()[2].split("#")[0]
            assert line.split()[2].endswith("#image=sim.fits")
            cfg = httpx.get(url + "api/config", timeout=10).json()
            assert cfg["image"] == SIM
            outside = httpx.get(url + "api/image", params={"path": "../outside/secret.fits"}, timeout=10)
            assert outside.status_code == 403
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def test_detect_with_deblend_is_find_stars_with_it(pairs_fits):
    """The deblend box of the page: its companions, as the library finds them, counted in the summary."""
    tmp_path = pairs_fits.parent
    with _client(create_app(tmp_path, export_dir=tmp_path, image="pairs.fits")) as c:
        r = c.post("/api/detect", json={"path": "pairs.fits", "deblend": True})
        assert r.status_code == 200, r.text
        plain = c.post("/api/detect", json={"path": "pairs.fits"}).json()
    lib = psfkit.find_stars(psfkit.load_image(tmp_path / "pairs.fits"), deblend=True)
    t = _rows_table(r.json())
    np.testing.assert_allclose(np.sort(t["x_fit"].astype(float)), np.sort(lib["x_fit"]), atol=1e-9)
    assert r.json()["summary"]["companions_found"] == int(np.sum(lib["detection_pass"] == 2)) >= 1
    assert r.json()["settings"]["deblend"] is True
    assert len(r.json()["rows"]) > len(plain["rows"])


# ------------------------------------------------------------------ who the server answers (issue 15)

def _export_body(name=None, fmt="csv", columns=("x_fit", "y_fit"), rows=((10.0, 20.0),)):
    body = {"path": SIM, "columns": list(columns), "rows": [list(r) for r in rows], "format": fmt}
    if name:
        body["name"] = name
    return body


def _rows_body(rows=((10.0, 20.0),)):
    return {"path": SIM, "columns": ["x_fit", "y_fit"], "rows": [list(r) for r in rows]}


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8765", "127.0.0.1.nip.io:8765",
                                  "localhost.evil.example", "192.168.1.20:8765", "0.0.0.0:8765", "[::ffff:7f00:1]x",
                                  ""])
def test_foreign_host_headers_are_refused(tree, host, no_reads):
    """DNS rebinding: a page of another site re-pointed at 127.0.0.1 still sends its own name; nothing is served."""
    app = create_app(tree["root"], export_dir=tree["exports"])
    before = sorted(tree["exports"].iterdir())
    with _client(app) as c:
        h = {"Host": host}
        for r in (c.get("/api/files", headers=h), c.get("/", headers=h), c.get("/api/config", headers=h),
                  c.get("/api/tile", params=TILE_OK, headers=h), c.get("/api/image", params={"path": SIM}, headers=h),
                  c.post("/api/detect", json={"path": SIM}, headers=h),
                  c.post("/api/export", json=_export_body("rebound.csv"), headers=h)):
            assert r.status_code == 400, (host, r.request.url, r.status_code)
            assert "is not served" in r.json()["detail"] and "files" not in r.json()
    assert sorted(tree["exports"].iterdir()) == before and no_reads == []


@pytest.mark.parametrize("host", ["localhost:8765", "LOCALHOST", "127.0.0.1", "127.0.0.1:8765", "[::1]:8765",
                                  "127.0.0.2:80"])
def test_loopback_host_headers_are_served(tree, host):
    with _client(create_app(tree["root"])) as c:
        r = c.get("/api/files", headers={"Host": host})
    assert r.status_code == 200 and SIM in r.json()["files"]


def test_named_hosts_are_served_only_when_allowed(tree):
    with _client(create_app(tree["root"], allowed_hosts=["mybox.lan", "10.0.0.5"])) as c:
        assert c.get("/api/files", headers={"Host": "mybox.lan:8765"}).status_code == 200
        assert c.get("/api/files", headers={"Host": "10.0.0.5:8765"}).status_code == 200
        assert c.get("/api/files", headers={"Host": "otherbox.lan:8765"}).status_code == 400


@pytest.mark.parametrize("headers", [{"Origin": "http://evil.example"}, {"Origin": "null"},
                                     {"Origin": "http://127.0.0.1:9999"}, {"Origin": "https://127.0.0.1:8765"},
                                     {"Referer": "http://evil.example/page.html"},
                                     {"Origin": LOCAL, "Sec-Fetch-Site": "cross-site"}])
def test_cross_origin_writes_are_refused(tree, headers, no_reads):
    app = create_app(tree["root"], export_dir=tree["exports"])
    before = sorted(tree["exports"].iterdir())
    with _client(app) as c:
        for url, body in (("/api/export", _export_body("csrf.csv")), ("/api/detect", {"path": SIM}),
                          ("/api/fit", {"path": SIM, "x": 10, "y": 10}), ("/api/average", _rows_body())):
            r = c.post(url, json=body, headers=headers)
            assert r.status_code == 403 and "refused" in r.json()["detail"], (url, headers, r.text)
    assert sorted(tree["exports"].iterdir()) == before and no_reads == []


def test_same_origin_writes_and_scripts_are_served(tree):
    """The page's own requests (Origin = the page) and programs without Origin/Referer (curl) are served."""
    with _client(create_app(tree["root"], export_dir=tree["exports"])) as c:
        for headers in ({"Origin": LOCAL}, {"Referer": LOCAL + "/#image=sim.fits"}, {},
                        {"Origin": "http://localhost:8765", "Host": "localhost:8765", "Sec-Fetch-Site": "same-origin"}):
            r = c.post("/api/average", json=_rows_body(), headers=headers)
            assert r.status_code == 200, (headers, r.text)


def test_cross_site_reads_of_the_api_are_refused(tree):
    """Another site embedding a tile or a listing (the browser says Sec-Fetch-Site: cross-site) gets nothing."""
    with _client(create_app(tree["root"])) as c:
        r = c.get("/api/tile", params=TILE_OK, headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"})
        assert r.status_code == 403 and r.headers["content-type"] == "application/json"
        assert c.get("/api/files", headers={"Sec-Fetch-Site": "same-origin"}).status_code == 200
        assert c.get("/", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}).status_code == 200


def test_security_headers_on_every_response(client):
    for r in (client.get("/"), client.get("/static/app.js"), client.get("/api/files"), client.get("/api/nothing"),
              client.get("/api/files", headers={"Host": "evil.example"}),
              client.post("/api/fit", json={"path": SIM, "x": "ten", "y": 1})):
        csp = r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, r.request.url
        assert "unsafe-inline" not in csp, r.request.url
        assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"


def test_page_has_nothing_inline_that_the_policy_blocks():
    """Every script of the page is a file of the page (no inline code, no handlers, no style="" attributes)."""
    import re

    static = Path(psfkit.__file__).parent / "web" / "static"
    html = (static / "index.html").read_text()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, flags=re.S | re.I)
    assert scripts and all('src="/static/' in attrs and not body.strip() for attrs, body in scripts)
    assert not re.search(r"\son[a-z]+\s*=", html, flags=re.I) and "style=" not in html and "<style" not in html
    js = (static / "app.js").read_text()
    assert "style=" not in js and "eval(" not in js and "new Function" not in js


# ------------------------------------------------------------------ request bodies are capped before parsing

def _asgi_post(app, path, chunks, *, content_length=None):
    """POST ``chunks`` (an iterable of bytes) to the ASGI app in-process; the status and the chunks it read."""
    import asyncio

    it = iter(chunks)
    read = [0]

    async def receive():
        try:
            chunk = next(it)
        except StopIteration:
            return {"type": "http.disconnect"}
        read[0] += 1
        return {"type": "http.request", "body": chunk, "more_body": True}

    sent = []

    async def send(message):
        sent.append(message)

    headers = [(b"host", b"127.0.0.1:8765"), (b"content-type", b"application/json")]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8765)}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body), read[0]


@pytest.mark.parametrize("declared", [False, True])
def test_a_150_mb_body_is_refused_without_being_held(tree, monkeypatch, declared):
    """150 MB sent to /api/export: 413 after at most the limit (32 MB) was read, the handler never ran, and the
    memory allocated meanwhile stays far below the body's size (measured with tracemalloc, not with a clock)."""
    import tracemalloc

    from psfkit.web import app as web_app

    ran = []
    monkeypatch.setattr(web_app, "rows_to_table", lambda *a, **k: ran.append(1))
    app = create_app(tree["root"], export_dir=tree["exports"])
    mb = b"[" * 2 ** 20  # the same 1 MB object 150 times: the test itself holds 1 MB
    tracemalloc.start()
    try:
        status, body, read = _asgi_post(app, "/api/export", (mb for _ in range(150)),
                                        content_length=150 * 2 ** 20 if declared else None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert status == 413 and "larger than 32 MB" in body["detail"] and "--max-body" in body["detail"]
    assert ran == []
    assert read == (0 if declared else 33), "a declared length is refused unread; a streamed body is cut at the limit"
    assert peak < 80 * 2 ** 20, f"{peak / 2 ** 20:.0f} MB allocated for a 150 MB body"


def test_body_limit_is_an_option(tree):
    app = create_app(tree["root"], export_dir=tree["exports"], max_body=4096)
    with _client(app) as c:
        r = c.post("/api/average", json=_rows_body([(10.0 + k, 20.0) for k in range(5)]))
        assert r.status_code == 200, r.text
        big = _rows_body([(10.0 + k, 20.0) for k in range(400)])
        r = c.post("/api/average", json=big)
        assert r.status_code == 413 and "larger than" in r.json()["detail"]


def test_real_server_refuses_foreign_hosts_and_large_bodies_unread(tree):
    """The same through uvicorn on 127.0.0.1: a rebound Host gets 400; a declared 150 MB body gets 413
    before it is sent."""
    import socket

    import httpx

    from psfkit.web import serve_in_thread

    with serve_in_thread(create_app(tree["root"], export_dir=tree["exports"])) as server:
        assert httpx.get(server.url + "/api/files", timeout=10).status_code == 200
        r = httpx.get(server.url + "/api/files", headers={"Host": "attacker.example"}, timeout=10)
        assert r.status_code == 400 and "files" not in r.json()
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(f"POST /api/export HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {150 * 2 ** 20}\r\n\r\n".encode())
            reply = s.recv(65536).decode("latin-1")
        assert reply.startswith("HTTP/1.1 413"), reply[:200]


# ------------------------------------------------------------------ exports never replace a file

def test_export_never_overwrites_and_offers_a_free_name(tree):
    with _client(create_app(tree["root"], export_dir=tree["exports"])) as c:
        r = c.post("/api/export", json=_export_body("keep.csv"))
        assert r.status_code == 200, r.text
        first = (tree["exports"] / "keep.csv").read_bytes()
        r = c.post("/api/export", json=_export_body("keep.csv", rows=[(1.0, 2.0), (3.0, 4.0)]))
        assert r.status_code == 409 and r.json()["suggested_name"] == "keep-1.csv"
        assert "not overwritten" in r.json()["detail"]
        assert (tree["exports"] / "keep.csv").read_bytes() == first
        r = c.post("/api/export", json=_export_body("keep-1.csv", rows=[(1.0, 2.0), (3.0, 4.0)]))
        assert r.status_code == 200 and r.json()["written"] == "keep-1.csv"
        assert len(psfkit.read_star_list(tree["exports"] / "keep-1.csv")) == 2
        r = c.post("/api/export", json=_export_body("keep.csv"))
        assert r.json()["suggested_name"] == "keep-2.csv"
    assert not [p for p in tree["exports"].iterdir() if p.name.startswith(".")], "no temporary file left"


def test_the_viewed_image_is_never_an_export_target(tmp_path):
    data, _ = simulate_field((64, 64), 3, fwhm=3.0, seed=1, edge=10)
    fits.writeto(tmp_path / "img.fits", data.astype(np.float32))
    image_bytes = (tmp_path / "img.fits").read_bytes()
    body = {"path": "img.fits", "columns": ["x_fit", "y_fit"], "rows": [[10.0, 20.0]], "format": "fits",
            "name": "img.fits"}
    with _client(create_app(tmp_path, export_dir=tmp_path)) as c:  # even with the image's own folder as export folder
        r = c.post("/api/export", json=body)
        assert r.status_code == 409 and r.json()["suggested_name"] == "img-1.fits"
    assert (tmp_path / "img.fits").read_bytes() == image_bytes
    # the default export folder is a folder of its own, made at the first export
    with _client(create_app(tmp_path)) as c:
        assert c.get("/api/config").json()["export_dir"] == str(tmp_path / "psfkit-exports")
        assert not (tmp_path / "psfkit-exports").exists()
        r = c.post("/api/export", json={**body, "format": "csv", "name": None})
        assert r.status_code == 200 and r.json()["written"] == "img_stars.csv"
        r = c.post("/api/export", json={**body, "name": "table.fits"})  # a FITS star list is not an image to open
        assert r.status_code == 200 and c.get("/api/files").json()["files"] == ["img.fits"]
    assert (tmp_path / "psfkit-exports" / "img_stars.csv").is_file()
    assert (tmp_path / "img.fits").read_bytes() == image_bytes


def test_write_new_refuses_an_existing_name_without_hard_links(tmp_path, monkeypatch):
    from psfkit.web._paths import ExportExists, write_new

    (tmp_path / "a.csv").write_text("old")

    def no_links(*a, **k):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    with pytest.raises(ExportExists) as info:
        write_new(tmp_path / "a.csv", lambda p: p.write_text("new"), suffix=".csv")
    assert info.value.status_code == 409 and info.value.suggested_name == "a-1.csv"
    assert (tmp_path / "a.csv").read_text() == "old"
    write_new(tmp_path / "b.csv", lambda p: p.write_text("new"), suffix=".csv")
    assert (tmp_path / "b.csv").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "b.csv"]


# ------------------------------------------------------------------ export values and columns

def test_accepted_as_text_is_parsed_not_truthy(client, tree):
    cols = ["x_fit", "y_fit", "flux_fit", "accepted", "reject_reason"]
    words = ["no", "False", "0", "n", "yes", "TRUE", "1", True, False]
    rows = [[10.0 + 5 * k, 20.0, 1000.0 + k, w, "" if w in ("yes", "TRUE", "1", True) else "faint"]
            for k, w in enumerate(words)]
    r = client.post("/api/export", json=_export_body("accepted.csv", columns=cols, rows=rows))
    assert r.status_code == 200, r.text
    back = psfkit.read_star_list(tree["exports"] / "accepted.csv")
    assert list(np.asarray(back["accepted"], bool)) == [False, False, False, False, True, True, True, True, False]
    r = client.post("/api/export", json=_export_body("accepted.lst", fmt="lst", columns=cols, rows=rows))
    assert r.status_code == 200
    assert len(psfkit.read_star_list(tree["exports"] / "accepted.lst", image_shape=(300, 400))) == 4, \
        "the .lst holds only the accepted stars"
    r = client.post("/api/export", json=_export_body("maybe.csv", columns=cols, rows=[[1.0, 2.0, 3.0, "maybe", ""]]))
    assert r.status_code == 400 and "accepted" in r.json()["detail"] and "yes/no" in r.json()["detail"]


@pytest.mark.parametrize("fmt,missing", [("lst", ["flux_fit"]), ("reg", ["fwhm_x", "fwhm_y", "angle"])])
def test_export_with_too_few_columns_is_a_400_naming_them(client, tree, fmt, missing):
    before = sorted(tree["exports"].iterdir())
    r = client.post("/api/export", json=_export_body(f"few.{fmt}", fmt=fmt))
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert all(m in detail for m in missing) and f".{fmt}" in detail
    assert sorted(tree["exports"].iterdir()) == before


# ------------------------------------------------------------------ heavy requests queue, tiles keep flowing

def test_detections_queue_then_refuse_while_tiles_keep_flowing(tree, monkeypatch):
    """12 detections at once with room for 1 running + 2 waiting: 9 are refused at once (503 + Retry-After)
    while the first is held running; tiles and image facts answer meanwhile; the 3 admitted ones finish."""
    import asyncio

    import httpx

    import psfkit.detect.find as find_module

    gate, started, calls = threading.Event(), threading.Event(), []
    real = find_module.find_stars

    def held(*a, **k):
        calls.append(1)
        started.set()
        assert gate.wait(120)
        return real(*a, **k)

    monkeypatch.setattr(find_module, "find_stars", held)
    app = create_app(tree["root"], detect_queue=2)

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=LOCAL, timeout=120) as c:
            a = (await c.get("/api/image", params={"path": SIM})).json()["auto_stretch"]
            # (the Gaussian: one find_stars call per detection; auto calls it again inside)
            tasks = [asyncio.create_task(c.post("/api/detect", json={"path": SIM, "model": "gaussian"}))
                     for _ in range(12)]
            for _ in range(1200):  # bounded: until the first runs and the refused ones are answered
                if started.is_set() and sum(t.done() for t in tasks) >= 9:
                    break
                await asyncio.sleep(0.05)
            answered = [t for t in tasks if t.done()]
            tiles = [await c.get("/api/tile", params={"path": SIM, "level": lv, "tx": tx, "ty": 0, "black": a["black"],
                                                      "white": a["white"]}) for lv, tx in ((0, 0), (0, 1), (1, 0))]
            facts = await c.get("/api/image", params={"path": SIM})
            still_running = app.state.detections.pending
            gate.set()
            admitted = await asyncio.gather(*[t for t in tasks if t not in answered])
            return [t.result() for t in answered], tiles, facts, still_running, admitted

    refused, tiles, facts, still_running, admitted = asyncio.run(scenario())
    assert [r.status_code for r in tiles] == [200, 200, 200] and facts.status_code == 200
    assert still_running == 3, "one detection held running and two waiting while the tiles were served"
    assert len(refused) == 9 and all(r.status_code == 503 for r in refused)
    assert all(int(r.headers["retry-after"]) >= 1 for r in refused) and "try again" in refused[0].json()["detail"]
    assert [r.status_code for r in admitted] == [200, 200, 200] and len(calls) == 3
    assert app.state.detections.pending == 0


# ------------------------------------------------------------------ the command's address checks

def _view(args, monkeypatch):
    """Run `psfkit view ARGS` in-process with the server's run loop replaced (it returns at once)."""
    import uvicorn
    from typer.testing import CliRunner

    from psfkit.cli import app

    served = {}

    def fake_run(self, *a, **k):
        served["app"], served["host"] = self.config.app, self.config.host
        self.should_exit = True

    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    return CliRunner().invoke(app, ["view", *args, "--no-browser"]), served


@pytest.mark.parametrize("host,words", [("999.1.1.1", "not a valid IP address"),
                                        ("1.2.3", "not a valid IP address"),
                                        ("::zz", "not a valid IP address"),
                                        ("no-such-host.invalid", "not a valid address")])
def test_view_refuses_an_invalid_host_in_one_line(tree, monkeypatch, host, words):
    r, served = _view(["--root", str(tree["root"]), "--host", host, "--port", "0"], monkeypatch)
    assert r.exit_code == 2 and words in r.output and "in use" not in r.output
    assert r.output.strip().count("\n") == 0 and r.output.startswith("psfkit: error: --host") and not served


def test_view_on_every_interface_warns_that_exports_can_be_written(tree, monkeypatch):
    r, served = _view(["--root", str(tree["root"]), "--host", "0.0.0.0", "--port", "0"], monkeypatch)
    assert r.exit_code == 0, r.output
    warning = next(line for line in r.output.splitlines() if "warning" in line)
    assert "whoever reaches" in warning and "run detections" in warning and "write exports" in warning
    assert served["host"] == "0.0.0.0"
    with _client(served["app"]) as c:  # loopback names still answer, a foreign name does not
        assert c.get("/api/files").status_code == 200
        assert c.get("/api/files", headers={"Host": "evil.example"}).status_code == 400
    r, served = _view(["--root", str(tree["root"]), "--port", "0"], monkeypatch)
    assert r.exit_code == 0 and "warning" not in r.output and served["host"] == "127.0.0.1"
def test_inspect_is_the_library_inspector(client, tree):
    """The Inspector panel's route: the library's numbers for the open image, a text block and the report PNG."""
    import base64

    from psfkit.analysis.inspect import inspect_image

    r = client.post("/api/inspect", json={"path": SIM, "threshold": 5})
    assert r.status_code == 200, r.text
    d = r.json()
    lib = inspect_image(psfkit.load_image(tree["root"] / SIM), threshold=5).to_dict()
    for key in ("fwhm_center", "gradient_x", "gradient_y", "curvature", "curvature_err", "tilt_percent",
                "curvature_percent", "n_used"):
        assert d[key] == pytest.approx(lib[key]), key
    assert d["elongation_pattern"] == lib["elongation_pattern"] == "uniform"  # roundness 0.8 at 30 deg everywhere
    assert "tilt" in d["text"] and "uniform" in d["text"]
    assert set(d["corners"]) == {"bottom_left", "bottom_right", "top_left", "top_right"}
    png = base64.b64decode(d["report_png"].split(",", 1)[1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    bad = client.post("/api/inspect", json={"path": SIM, "threshold": -1})
    assert bad.status_code == 422 and "threshold" in bad.json()["detail"]
    missing = client.post("/api/inspect", json={"path": "nope.fits"})
    assert 400 <= missing.status_code < 500
