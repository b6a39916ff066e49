"""The Dynamic PSF window in the browser: a FastAPI app over the library.

:func:`create_app` builds the app for one root folder.  The JSON API calls the
same functions as the command line (:func:`psfkit.find_stars`,
:func:`psfkit.fit_star`, :func:`psfkit.average`, :func:`psfkit.write_star_list`);
the web layer only moves data: it holds no science.

Endpoints (all paths relative to the root folder; every parameter validated,
bad input gives a 4xx with ``{"detail": "<one line>"}``):

- ``GET /api/config``: root name, initial image, export folder.
- ``GET /api/files``: image files under the root.
- ``GET /api/image?path=``: size, orientation, header facts, stretch statistics.
- ``GET /api/tile?path=&level=&tx=&ty=&mode=&black=&white=&mid=&soft=&layer=``: a 256 px PNG
  tile of the display pyramid (binning 2**level), stretched; ``layer=residual``: of the frame minus
  every fitted star, kept by the last detection with ``deblend`` (400 before one).
- ``POST /api/detect``: every star of the frame (``find_stars``); with ``deblend`` the crowded pass
  with the frame's own PSF (``psf="frame"``), and the residual frame is kept for the tiles
  (``"residual": true`` in the answer).
- ``POST /api/fit``: one star in a box or near a point (``fit_star`` with the angle),
  its report text and radial profile.
- ``POST /api/average``: averages of the listed stars (``average``).
- ``POST /api/export``: write the listed stars (``write_star_list``) as a new file in the export
  folder; an existing name is never overwritten (409 with ``suggested_name``, a free name).

Every request first passes :class:`~psfkit.web._guard.RequestGuard` (Host
allow-list, same-origin writes, body limit, security headers); detections and
fits run in bounded queues (:class:`~psfkit.web._queue.WorkQueue`: 503 with
``Retry-After`` when full) so that tiles keep flowing while they run.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from psfkit.errors import PsfkitError
from psfkit.utils import json_value
from psfkit.web._guard import DEFAULT_MAX_BODY, RequestGuard
from psfkit.web._paths import (
    DEFAULT_EXPORT_FOLDER,
    EXPORT_FORMATS,
    ExportExists,
    export_target,
    list_images,
    resolve_in_root,
    write_new,
)
from psfkit.web._queue import WorkQueue
from psfkit.web._store import ImageStore
from psfkit.web._tables import missing_for_format, rows_to_table, table_to_rows

__all__ = ["create_app"]

STATIC = Path(__file__).parent / "static"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DetectRequest(_Strict):
    path: str = Field(min_length=1, max_length=1024)
    threshold: float = Field(5.0, gt=0, le=1000)
    # psfkit find's default: the frame's own PSF where the frame has enough stars, else the analytic
    # model its bright stars prefer (find_stars(model="auto"))
    model: Literal["auto", "gaussian", "moffat"] = "auto"
    angle: bool | Literal["auto"] = "auto"  # find_stars' default: Siril's two-stage rule
    fwhm: float | None = Field(None, gt=0, le=100)
    min_roundness: float | None = Field(None, ge=0, le=1)
    deblend: bool = False


class FitRequest(_Strict):
    path: str = Field(min_length=1, max_length=1024)
    x: float
    y: float
    box: int | None = Field(None, ge=5, le=401)
    model: Literal["auto", "gaussian", "moffat"] = "gaussian"  # one star: "auto" is the Gaussian (Dynamic PSF)
    search_radius: float | None = Field(None, ge=0, le=200)


class RowsRequest(_Strict):
    path: str = Field(min_length=1, max_length=1024)
    columns: list[str] = Field(max_length=200)
    rows: list[list[float | int | bool | str | None]] = Field(max_length=500_000)
    model: Literal["auto", "gaussian", "moffat"] | None = None
    threshold: float | None = Field(None, gt=0, le=1000)


class InspectRequest(_Strict):
    path: str = Field(min_length=1, max_length=1024)
    threshold: float = Field(5.0, gt=0, le=1000)


class ExportRequest(RowsRequest):
    format: Literal["lst", "csv", "ecsv", "reg", "fits"]
    name: str | None = Field(None, max_length=160)


def _json_bytes(value: dict[str, Any]) -> bytes:
    """Compact JSON of a star-table payload: ``rows`` are JSON-ready (``table_to_rows``), the rest is cleaned."""
    rest = json_value({k: v for k, v in value.items() if k != "rows"})
    rest["rows"] = value.get("rows", [])
    return json.dumps(rest, separators=(",", ":"), allow_nan=False).encode()


def _one_line(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "invalid request"
    e = errors[0]
    loc = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query"))
    msg = str(e.get("msg", "invalid value"))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{loc}: {msg}{more}" if loc else msg + more


def create_app(root: str | Path, *, export_dir: str | Path | None = None, image: str | None = None,
               max_images: int = 3, allowed_hosts: tuple[str, ...] | list[str] = (),
               max_body: int = DEFAULT_MAX_BODY, detect_queue: int = 4) -> FastAPI:
    """The web app serving the images under ``root``.

    Parameters
    ----------
    root : path
        Folder whose images (and only those) the page may open.
    export_dir : path, optional
        Folder the export buttons write into (default: ``root/psfkit-exports``, made at the first
        export).  Exports only create new files: an existing one is never replaced.
    image : str, optional
        Image (relative to ``root``) the page opens first.
    max_images : int
        Frames kept in memory.
    allowed_hosts : sequence of str
        Host names the ``Host`` header may carry besides the loopback ones (localhost,
        127.0.0.1, [::1]); everything else is answered 400 (DNS rebinding).
    max_body : int
        Largest request body in bytes (413 beyond, before any parsing).
    detect_queue : int
        Detections that may wait while one runs; more are answered 503 with ``Retry-After``.

    Returns
    -------
    fastapi.FastAPI

    Examples
    --------
    >>> import tempfile
    >>> app = create_app(tempfile.mkdtemp(), allowed_hosts=["mybox.local"])
    >>> app.title
    'psfkit view'
    """
    root_path = Path(root).expanduser().resolve()
    if not root_path.is_dir():
        raise PsfkitError(f"{root}: the root folder does not exist")
    if export_dir is not None:
        export_path = Path(export_dir).expanduser().resolve()
        if not export_path.is_dir():
            raise PsfkitError(f"{export_dir}: the export folder does not exist")
    else:
        export_path = root_path / DEFAULT_EXPORT_FOLDER  # made at the first export
    if max_body < 1024:
        raise PsfkitError(f"the request body limit must be at least 1024 bytes, got {max_body}")
    if not 0 <= detect_queue <= 1000:
        raise PsfkitError(f"the detection queue must hold 0..1000 waiting detections, got {detect_queue}")
    if image is not None:
        try:
            resolve_in_root(root_path, image)
        except HTTPException as exc:
            raise PsfkitError(str(exc.detail)) from None

    store = ImageStore(max_images=max_images)
    # one whole-frame detection at a time (memory, cores), a few waiting; fits two at a time
    detections = WorkQueue("detection", workers=1, waiting=detect_queue)
    fits = WorkQueue("fit", workers=2, waiting=16)

    app = FastAPI(title="psfkit view", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(RequestGuard, allowed_hosts=tuple(allowed_hosts), max_body=max_body)
    app.state.root = root_path
    app.state.export_dir = export_path
    app.state.store = store
    app.state.detections = detections
    app.state.fits = fits

    @app.exception_handler(PsfkitError)
    async def _psfkit_error(request: Request, exc: PsfkitError) -> JSONResponse:
        return JSONResponse({"detail": str(exc).splitlines()[0] if str(exc) else "bad input"}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _one_line(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        body: dict[str, Any] = {"detail": str(exc.detail)}
        if isinstance(exc, ExportExists):
            body["suggested_name"] = exc.suggested_name
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:  # a bug: no traceback to the page
        return JSONResponse({"detail": f"internal error ({exc.__class__.__name__}); see the server log"},
                            status_code=500)

    def loaded(rel: str):
        return store.get(rel, resolve_in_root(root_path, rel))

    # ---------------------------------------------------------------- page
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # ---------------------------------------------------------------- API
    @app.get("/api/config")
    def config() -> dict:
        from psfkit import __version__

        return {"root": root_path.name or str(root_path), "export_dir": str(export_path), "image": image,
                "version": __version__}

    @app.get("/api/files")
    def files() -> dict:
        return {"files": list_images(root_path, skip=export_path)}

    @app.get("/api/image")
    def image_info(path: str = Query(..., min_length=1, max_length=1024)) -> JSONResponse:
        return JSONResponse(json_value(loaded(path).info()))

    @app.get("/api/tile")
    def tile(
        path: str = Query(..., min_length=1, max_length=1024),
        level: int = Query(..., ge=0, le=16),
        tx: int = Query(..., ge=0, le=100_000),
        ty: int = Query(..., ge=0, le=100_000),
        mode: Literal["mtf", "asinh", "linear"] = Query("mtf"),
        black: float = Query(..., allow_inf_nan=False),
        white: float = Query(..., allow_inf_nan=False),
        mid: float = Query(0.25, gt=0, lt=1, allow_inf_nan=False),
        soft: float = Query(10.0, gt=0, le=1e6, allow_inf_nan=False),
        layer: Literal["frame", "residual"] = Query("frame"),
    ) -> Response:
        item = loaded(path)
        if level >= item.n_levels:
            raise HTTPException(400, f"level: {level} is beyond this image's {item.n_levels} levels")
        if not white > black:
            raise HTTPException(400, "white must be above black")
        png = item.tile_png(level, tx, ty, layer=layer, mode=mode, black=black, white=white, mid=mid, soft=soft)
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.post("/api/detect")
    async def detect(req: DetectRequest) -> Response:
        resolve_in_root(root_path, req.path)  # a bad path is a 4xx before it takes a place in the queue
        body, timing = await detections.run(_detect, req)
        return Response(body, media_type="application/json", headers={"Server-Timing": timing})

    def _detect(req: DetectRequest) -> tuple[bytes, str]:
        """The detection itself, in the queue's worker thread."""
        from psfkit.detect.find import find_stars

        t0 = time.perf_counter()
        item = loaded(req.path)
        criteria = {} if req.min_roundness is None else {"min_roundness": req.min_roundness or None}
        t1 = time.perf_counter()
        table = find_stars(item.image, threshold=req.threshold, model=req.model, angle=req.angle,
                           fwhm=req.fwhm, keep_rejected=False, deblend=req.deblend,
                           psf="frame" if req.deblend else None, **criteria)
        # the shapes' model (the frame's PSF measures with the Gaussian pass's shapes)
        shape_model = table.meta.get("model") or ("gaussian" if req.model == "auto" else req.model)
        residual = None
        if req.deblend and item.image.data.ndim == 2:
            from psfkit.detect.crowded import subtract_stars

            residual = subtract_stars(item.image.data, table, table.meta.get("frame_psf"))
        item.set_residual(residual)
        t2 = time.perf_counter()
        meta = table.meta
        out = table_to_rows(table)
        out["residual"] = residual is not None
        out.update(summary=meta.get("summary"), frame_fwhm=meta.get("frame_fwhm"),
                   reject_reasons=meta.get("reject_reasons"), psf_model=meta.get("psf_model"),
                   psf_choice=meta.get("psf_choice"),
                   settings={"threshold": req.threshold, "model": shape_model, "angle": req.angle, "fwhm": req.fwhm,
                             "min_roundness": req.min_roundness, "deblend": req.deblend})
        body = _json_bytes(out)
        t3 = time.perf_counter()
        timing = f"load;dur={1e3 * (t1 - t0):.1f}, find;dur={1e3 * (t2 - t1):.1f}, encode;dur={1e3 * (t3 - t2):.1f}"
        return body, timing

    @app.post("/api/fit")
    async def fit(req: FitRequest) -> JSONResponse:
        resolve_in_root(root_path, req.path)
        return JSONResponse(json_value(await fits.run(_fit, req)))

    def _fit(req: FitRequest) -> dict[str, Any]:
        """One star's fit, in the fit queue's worker thread."""
        from psfkit.psf.fit import fit_star
        from psfkit.web._profile import radial_profile

        item = loaded(req.path)
        ny, nx = item.shape
        if not (-0.5 <= req.x <= nx - 0.5 and -0.5 <= req.y <= ny - 0.5):
            raise HTTPException(400, f"position ({req.x:g}, {req.y:g}) is outside the image "
                                     f"(x 0..{nx - 1}, y 0..{ny - 1})")
        radius = req.search_radius
        if radius is None:
            radius = min(req.box / 2.0, 50.0) if req.box else 10.0
        model = "gaussian" if req.model == "auto" else req.model
        star = fit_star(item.image, req.x, req.y, box=req.box, model=model, angle=True, search_radius=radius)
        out = table_to_rows(star.table)
        out["report"] = star.report()
        out["profile"] = radial_profile(star)
        return out

    def _table(req: RowsRequest):
        item = loaded(req.path)
        model = "gaussian" if req.model in (None, "auto") else req.model
        table = rows_to_table(req.columns, req.rows)
        table.meta.update(image=item.rel, image_shape=list(item.shape),
                          roworder="TOP-DOWN" if item.top_down else "BOTTOM-UP",
                          pixel_scale=item.image.pixel_scale,
                          model=model, settings={"threshold": req.threshold, "model": model})
        return item, table

    @app.post("/api/average")
    def average_(req: RowsRequest) -> JSONResponse:
        from psfkit.io.catalog import average

        _, table = _table(req)
        avg = average(table)
        return JSONResponse(json_value({"average": avg, "text": _average_text(avg)}))

    @app.post("/api/export")
    def export(req: ExportRequest) -> JSONResponse:
        from psfkit.io.catalog import write_star_list

        missing = missing_for_format(req.columns, req.format)
        if missing:
            raise HTTPException(400, f"columns: a .{req.format} export needs {', '.join(missing)} "
                                     f"(missing from the list sent)")
        item, table = _table(req)
        suffix = EXPORT_FORMATS[req.format]
        name = req.name or (item.path.name.split(".")[0] + "_stars" + suffix)
        if export_dir is None and not export_path.is_dir():
            try:
                export_path.mkdir(exist_ok=True)
            except OSError as exc:
                raise PsfkitError(f"cannot make the export folder {export_path} ({exc.strerror}); "
                                  "choose one with --export-dir") from None
        target = export_target(export_path, name, suffix)  # an existing name (the viewed image too): 409
        write_new(target, lambda tmp: write_star_list(table, tmp), suffix=suffix)
        return JSONResponse({"written": target.name, "folder": str(export_path), "n_stars": len(table),
                             "format": req.format})

    @app.post("/api/inspect")
    async def inspect(req: InspectRequest) -> JSONResponse:
        """The optics inspector on the open image (in the detection queue): numbers, text, report PNG."""
        resolve_in_root(root_path, req.path)
        return JSONResponse(json_value(await detections.run(_inspect, req)))

    def _inspect(req: InspectRequest) -> dict[str, Any]:
        import base64

        from psfkit.analysis.inspect import inspect_image
        from psfkit.viz.inspect import plot_inspection

        item = loaded(req.path)
        report = inspect_image(item.image, threshold=req.threshold)
        png = plot_inspection(report, item.image.data, None, top_down=item.top_down)
        out = report.to_dict()
        out["text"] = _inspect_text(out)
        out["report_png"] = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        return out

    @app.get("/api/{rest:path}", include_in_schema=False)
    def unknown(rest: str) -> None:
        raise HTTPException(404, f"no such endpoint: GET /api/{rest}")

    return app


def _inspect_text(d: dict[str, Any]) -> str:
    """The inspector's numbers as the panel shows them (the CLI's wording)."""
    def pm(key: str, digits: int = 2) -> str:
        v, e = d.get(key), d.get(key + "_err")
        if v is None:
            return "n/a"
        return f"{v:.{digits}f}" + (f" ± {e:.{digits}f}" if e is not None else "")

    lines = [
        f"stars in the fit   {d['n_used']} of {d['n_stars']}",
        f"FWHM centre        {pm('fwhm_center')} px",
        f"gradient x         {pm('gradient_x', 3)} px/1000 px",
        f"gradient y         {pm('gradient_y', 3)} px/1000 px",
        f"curvature          {pm('curvature')} px at the corners",
        f"tilt               {pm('tilt_percent', 1)} % towards {pm('tilt_direction_deg', 0)} deg",
        f"curvature          {pm('curvature_percent', 1)} %",
    ]
    for name, z in list(d["corners"].items()) + [("centre", d["center"])]:
        f = "n/a" if z.get("fwhm") is None else f"{z['fwhm']:.2f}"
        e = "n/a" if z.get("elongation") is None else f"{z['elongation']:.2f}"
        lines.append(f"{name:<18} FWHM {f} px, elongation {e}")
    lines.append(f"elongation         {d['elongation_pattern']}: {d['elongation_pattern_meaning']}")
    return "\n".join(lines)


def _average_text(avg: dict[str, Any]) -> str:
    lines = [f"Average of {avg['n_stars']} stars", f"({avg.get('n_used_shape', 0)} unsaturated used for the shape)"]
    lines.append(f"{'':13s} {'mean':>9s} {'median':>9s} {'rob. std':>9s}")
    for name, v in avg.items():
        if isinstance(v, dict):
            vals = [v.get("mean"), v.get("median"), v.get("std_robust")]
            lines.append(f"{name[:13]:13s} " + " ".join(
                f"{x:9.4g}" if isinstance(x, float) and math.isfinite(x) else f"{'nan':>9s}" for x in vals))
    return "\n".join(lines)
