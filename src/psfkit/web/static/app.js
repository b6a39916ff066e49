/* psfkit view: the Dynamic PSF window in the browser.
 *
 * Coordinates. The API speaks psfkit's convention: 0-based pixel centres, x = column,
 * y = row, angle counter-clockwise from +x.  The page shows a frame the way Siril and
 * DS9 do: a bottom-up frame (FITS default) with row 0 at the bottom (y up), a
 * TOP-DOWN frame with row 0 at the top.  "Display" coordinates run over pixel edges,
 * 0..width and 0..height from the top-left corner of the display:
 *     dx = x + 0.5,   dy = top_down ? y + 0.5 : height - 0.5 - y
 * and an ellipse at angle a (CCW from +x in the image) is rotated on screen
 * (SVG, y down) by  top_down ? +a : -a.  Server tiles are cut in display orientation.
 */
"use strict";

const $ = (s) => document.querySelector(s);
const S = {
  cfg: null, info: null, path: null,
  stretch: { mode: "mtf", black: 0, white: 1, mid: 0.25, soft: 10 },
  prevStretchKey: null,
  view: { zoom: 1, x0: 0, y0: 0 },
  columns: [], stars: [], selected: new Set(), sort: { col: null, dir: 1 },
  nextId: 1, lastSelected: null, settings: null, boxMode: false,
};
window.psfkitStats = {
  renders: 0, tilesPending: 0, tilesLoaded: 0, detect: null, lastRender: 0,
  /* the view is complete: every tile it needs is loaded and drawn (tests and benchmarks wait on this) */
  settled() { return !!S.info && this.tilesPending === 0 && !renderQueued && viewComplete; },
};

/* ------------------------------------------------------------------ API */
async function api(method, url, body, timing) {
  const opts = { method, headers: {} };
  if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
  const r = await fetch(url, opts);
  if (timing) { timing.headers = performance.now(); timing.server = parseServerTiming(r.headers.get("Server-Timing")); }
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (timing) timing.parsed = performance.now();
  if (!r.ok) {
    const err = new Error((data && data.detail) || `${r.status} ${r.statusText}`);
    err.status = r.status; err.data = data; err.retryAfter = r.headers.get("Retry-After");
    throw err;
  }
  return data;
}
/* "find;dur=812.3, encode;dur=20.1" -> {find: 812.3, encode: 20.1} (milliseconds) */
function parseServerTiming(h) {
  const out = {};
  for (const part of (h || "").split(",")) {
    const m = part.trim().match(/^([\w-]+).*?dur=([\d.]+)/);
    if (m) out[m[1]] = Number(m[2]);
  }
  return out;
}
function message(text, kind) {
  const m = $("#message");
  m.textContent = text; m.className = kind || ""; m.title = text;
}
function busy(text) {
  const b = $("#busy");
  if (text) { $("#busy-text").textContent = text; b.hidden = false; document.body.dataset.busy = "1"; }
  else { b.hidden = true; delete document.body.dataset.busy; }
}

/* ------------------------------------------------------------------ coordinates */
function toDisplay(x, y) {
  const i = S.info;
  return [x + 0.5, i.top_down ? y + 0.5 : i.height - 0.5 - y];
}
function fromDisplay(dx, dy) {
  const i = S.info;
  return [dx - 0.5, i.top_down ? dy - 0.5 : i.height - 0.5 - dy];
}
function screenToDisplay(sx, sy) { return [S.view.x0 + sx / S.view.zoom, S.view.y0 + sy / S.view.zoom]; }
function viewerSize() { const v = $("#viewer"); return [v.clientWidth, v.clientHeight]; }
function eventPos(ev) { const r = $("#viewer").getBoundingClientRect(); return [ev.clientX - r.left, ev.clientY - r.top]; }

/* ------------------------------------------------------------------ tiles */
const tileCache = new Map();
function stretchKey(s) {
  const st = s || S.stretch;
  return `mode=${st.mode}&black=${st.black}&white=${st.white}&mid=${st.mid}&soft=${st.soft}&layer=${S.layer || "frame"}`;
}
function tileUrl(level, tx, ty, key) {
  return `/api/tile?path=${encodeURIComponent(S.path)}&level=${level}&tx=${tx}&ty=${ty}&${key}`;
}
function getTile(level, tx, ty, key, load) {
  const url = tileUrl(level, tx, ty, key);
  let t = tileCache.get(url);
  if (t) { if (t.ok) { tileCache.delete(url); tileCache.set(url, t); } return t.ok ? t.img : null; }
  if (!load) return null;
  const img = new Image();
  t = { img, ok: false };
  tileCache.set(url, t);
  psfkitStats.tilesPending++;
  img.onload = () => { t.ok = true; psfkitStats.tilesPending--; psfkitStats.tilesLoaded++; scheduleRender(); };
  img.onerror = () => { psfkitStats.tilesPending--; tileCache.delete(url); };
  img.src = url;
  while (tileCache.size > 1500) tileCache.delete(tileCache.keys().next().value);
  return null;
}
function levelFor(zoom) {
  const L = Math.floor(Math.log2(1 / zoom) + 1e-9);
  return Math.max(0, Math.min(S.info.levels - 1, L));
}
function drawLevel(ctx, level, key, load, dpr) {
  const i = S.info, f = 2 ** level, T = i.tile, v = S.view;
  const lw = Math.ceil(i.width / f), lh = Math.ceil(i.height / f);
  const [w, h] = viewerSize();
  const tx0 = Math.max(0, Math.floor(v.x0 / (T * f))), ty0 = Math.max(0, Math.floor(v.y0 / (T * f)));
  const tx1 = Math.min(Math.ceil(lw / T) - 1, Math.floor((v.x0 + w / v.zoom) / (T * f)));
  const ty1 = Math.min(Math.ceil(lh / T) - 1, Math.floor((v.y0 + h / v.zoom) / (T * f)));
  let complete = true;
  for (let ty = ty0; ty <= ty1; ty++) {
    for (let tx = tx0; tx <= tx1; tx++) {
      const img = getTile(level, tx, ty, key, load);
      if (!img) { complete = false; continue; }
      const dx = tx * T * f, dy = ty * T * f;
      const sx = (dx - v.x0) * v.zoom * dpr, sy = (dy - v.y0) * v.zoom * dpr;
      const sw = img.naturalWidth * f * v.zoom * dpr, sh = img.naturalHeight * f * v.zoom * dpr;
      ctx.drawImage(img, sx, sy, sw + 0.5, sh + 0.5);
    }
  }
  return complete;
}
let renderQueued = false, viewComplete = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => { renderQueued = false; render(); });
}
function render() {
  if (!S.info) return;
  const c = $("#image-canvas"), dpr = window.devicePixelRatio || 1;
  const [w, h] = viewerSize();
  if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) { c.width = Math.round(w * dpr); c.height = Math.round(h * dpr); }
  const ctx = c.getContext("2d");
  ctx.fillStyle = "#050505"; ctx.fillRect(0, 0, c.width, c.height);
  ctx.imageSmoothingEnabled = S.view.zoom < 2;
  c.classList.toggle("pixelated", S.view.zoom >= 2);
  const key = stretchKey(), level = levelFor(S.view.zoom), top = S.info.levels - 1;
  // coarse level first (always complete quickly), then the level for this zoom
  let complete = drawLevel(ctx, top, key, true, dpr);
  if (!complete && S.prevStretchKey) drawLevel(ctx, top, S.prevStretchKey, false, dpr);
  if (level !== top) {
    complete = drawLevel(ctx, level, key, true, dpr);
    if (!complete && S.prevStretchKey) drawLevel(ctx, level, S.prevStretchKey, false, dpr);
  }
  viewComplete = complete;
  if (lastOverlayZoom !== S.view.zoom) { lastOverlayZoom = S.view.zoom; resizeEllipses(); drawMarks(); }
  updateOverlayTransform();
  psfkitStats.renders++; psfkitStats.lastRender = performance.now();
  $("#zoom").textContent = `zoom ${(S.view.zoom * 100).toFixed(S.view.zoom < 0.1 ? 1 : 0)} %`;
}

/* ------------------------------------------------------------------ view */
function fitView() {
  const [w, h] = viewerSize(), i = S.info;
  const z = Math.min(w / i.width, h / i.height) * 0.98;
  S.view.zoom = z;
  S.view.x0 = i.width / 2 - w / (2 * z);
  S.view.y0 = i.height / 2 - h / (2 * z);
  afterZoom();
}
function zoomAt(sx, sy, factor) {
  const v = S.view, [dx, dy] = screenToDisplay(sx, sy);
  v.zoom = Math.min(64, Math.max(0.01, v.zoom * factor));
  v.x0 = dx - sx / v.zoom; v.y0 = dy - sy / v.zoom;
  afterZoom();
}
function centreOn(x, y, minZoom) {
  const [w, h] = viewerSize(), [dx, dy] = toDisplay(x, y);
  if (minZoom && S.view.zoom < minZoom) S.view.zoom = minZoom;
  S.view.x0 = dx - w / (2 * S.view.zoom); S.view.y0 = dy - h / (2 * S.view.zoom);
  afterZoom();
}
let lastOverlayZoom = null;
function afterZoom() {
  scheduleRender();  // the rings are resized there, once per frame whatever the number of wheel events
}

/* ------------------------------------------------------------------ overlay */
const SVGNS = "http://www.w3.org/2000/svg";
const RING = 2.0; // ellipse semi-axes = RING x FWHM (the ring clears a bright star's stretched disk)
const MIN_RING_PX = 4; // ... and at least this many screen pixels (small: a zoomed-out 24 MP frame has thousands)
function col(star, name) { const v = star[name]; return (v === null || v === undefined) ? NaN : v; }
const RING_SATURATED = 3.0; // a saturated star's stretched disk is wider than its fitted core: its ring too
function isSaturated(s) { return typeof s.flag_names === "string" && s.flag_names.split(",").includes("saturated"); }
function ellipseRadii(s) {
  const minR = MIN_RING_PX / S.view.zoom, k = isSaturated(s) ? RING_SATURATED : RING;
  let fx = col(s, "fwhm_x"), fy = col(s, "fwhm_y");
  if (!isFinite(fx)) fx = 3; if (!isFinite(fy)) fy = fx;
  return [Math.max(k * fx, minR), Math.max(k * fy, minR * fy / fx)];
}
function ellipseHtml(s) {
  const [dx, dy] = toDisplay(s.x_fit, s.y_fit), [rx, ry] = ellipseRadii(s);
  const a = isFinite(col(s, "angle")) ? s.angle : 0, r = S.info.top_down ? a : -a;
  const cls = "star" + (s._manual ? " manual" : "") + (isSaturated(s) ? " saturated" : "") + (S.selected.has(s.id) ? " sel" : "");
  s._rx = rx; s._ry = ry;
  return `<ellipse class="${cls}" data-id="${s.id}" cx="${dx}" cy="${dy}" rx="${rx}" ry="${ry}" ` +
    `transform="rotate(${r} ${dx} ${dy})" vector-effect="non-scaling-stroke"/>`;
}
/* every star's ellipse (FWHM axes x RING, at its angle), built as one string: quick for thousands */
function drawStars() {
  const g = $("#stars-layer");
  const sel = S.stars.filter((s) => S.selected.has(s.id)), rest = S.stars.filter((s) => !S.selected.has(s.id));
  g.innerHTML = rest.concat(sel).map(ellipseHtml).join("");  // the selected ones on top
  ringsZoom = S.view.zoom;
  drawMarks();
  updateOverlayTransform();
}
/* the minimum ring size is in screen pixels: radii change with the zoom where that minimum applies */
let ringsZoom = null;
function resizeEllipses() {
  if (ringsZoom === S.view.zoom) return;
  ringsZoom = S.view.zoom;
  const minR = MIN_RING_PX / S.view.zoom;
  const byId = new Map(S.stars.map((s) => [s.id, s]));
  for (const e of $("#stars-layer").children) {
    const s = byId.get(Number(e.dataset.id)); if (!s) continue;
    const [rx, ry] = ellipseRadii(s);
    if (s._rx !== rx) { e.setAttribute("rx", rx); s._rx = rx; }  // only where the minimum size applies
    if (s._ry !== ry) { e.setAttribute("ry", ry); s._ry = ry; }
  }
}
function updateOverlayTransform() {
  const v = S.view;
  const t = `matrix(${v.zoom} 0 0 ${v.zoom} ${-v.x0 * v.zoom} ${-v.y0 * v.zoom})`;
  $("#stars-layer").setAttribute("transform", t);
  $("#marks-layer").setAttribute("transform", t);
}
function markSelection() {
  for (const e of $("#stars-layer").children) e.classList.toggle("sel", S.selected.has(Number(e.dataset.id)));
  // the selected stars go last, so they are drawn on top
  for (const e of Array.from($("#stars-layer").querySelectorAll("ellipse.sel"))) $("#stars-layer").appendChild(e);
  for (const tr of $("#stars tbody").children) tr.classList.toggle("sel", S.selected.has(Number(tr.dataset.id)));
  $("#remove").disabled = S.selected.size === 0;
  drawMarks();
}
/* a crosshair around the last selected star, a constant size on screen */
function drawMarks() {
  const g = $("#marks-layer");
  const s = S.lastSelected !== null && S.selected.has(S.lastSelected) ? S.stars.find((t) => t.id === S.lastSelected) : null;
  if (!s || !S.info) { g.replaceChildren(); return; }
  const [dx, dy] = toDisplay(s.x_fit, s.y_fit), z = S.view.zoom;
  const [rx, ry] = ellipseRadii(s);
  const r = Math.max(rx, ry) + 8 / z, L = 10 / z;
  const m = document.createElementNS(SVGNS, "g");
  m.setAttribute("class", "selmark"); m.dataset.id = s.id;
  const c = document.createElementNS(SVGNS, "circle");
  c.setAttribute("cx", dx); c.setAttribute("cy", dy); c.setAttribute("r", r);
  c.setAttribute("vector-effect", "non-scaling-stroke");
  m.appendChild(c);
  for (const [ux, uy] of [[1, 0], [-1, 0], [0, 1], [0, -1]]) {
    const l = document.createElementNS(SVGNS, "line");
    l.setAttribute("x1", dx + ux * r); l.setAttribute("y1", dy + uy * r);
    l.setAttribute("x2", dx + ux * (r + L)); l.setAttribute("y2", dy + uy * (r + L));
    l.setAttribute("vector-effect", "non-scaling-stroke");
    m.appendChild(l);
  }
  g.replaceChildren(m);
}

/* ------------------------------------------------------------------ table */
const TEXT_COLUMNS = new Set(["flag_names", "reject_reason"]);
function fmt(name, v) {
  if (v === null || v === undefined) return "—";
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (typeof v === "string") return v;
  if (Number.isInteger(v) && !/err|fit|fwhm|angle|mag/.test(name)) return String(v);
  if (name === "x_fit" || name === "y_fit" || name === "x_init" || name === "y_init") return v.toFixed(3);
  if (name === "ra" || name === "dec") return v.toFixed(6);
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(3);
  return String(Number(v.toPrecision(5)));
}
/* The table holds every star (S.stars, in display order) but only the rows in sight are in the
 * DOM, between two spacer rows: a table of 5,000 stars x 35 columns as DOM rows took seconds to
 * lay out.  Column widths are fixed from the header and a sample of values, so they do not move
 * while scrolling.  #stars[data-rows] is the number of rows of the table. */
const ROW_H = 19, OVERSCAN = 20;
let tableWindow = [0, 0];
function columnWidths() {
  const sample = S.stars.length <= 400 ? S.stars : S.stars.filter((_, k) => k % Math.ceil(S.stars.length / 400) === 0);
  return S.columns.map((c) => {
    let n = c.length + 2;  // room for the sort arrow
    for (const s of sample) n = Math.max(n, fmt(c, s[c]).length);
    return Math.min(n, 40);
  });
}
function renderTable() {
  const cols = S.columns;
  const head = "<tr>" + cols.map((c) => {
    const cls = S.sort.col === c ? "sorted" : "";
    const arrow = S.sort.col === c ? (S.sort.dir > 0 ? " ▲" : " ▼") : "";
    return `<th data-col="${c}" class="${cls}" title="sort by ${c}">${c}${arrow}</th>`;
  }).join("") + "</tr>";
  $("#stars thead").innerHTML = head;
  const widths = columnWidths();
  // sizes through the style object, not inline style attributes: the page's Content-Security-Policy refuses those
  $("#stars colgroup").replaceChildren(...widths.map((w) => {
    const c = document.createElement("col"); c.style.width = `calc(${w}ch + 16px)`; return c;
  }));
  $("#stars").style.width = `calc(${widths.reduce((a, b) => a + b, 0)}ch + ${16 * widths.length}px)`;
  $("#stars").dataset.rows = String(S.stars.length);
  tableWindow = [-1, -1];
  renderRows();
  $("#star-count").textContent = `${S.stars.length} star${S.stars.length === 1 ? "" : "s"}`;
  $("#table-empty").hidden = S.stars.length > 0;
  $("#remove").disabled = S.selected.size === 0;
}
function rowHtml(s) {
  const cls = (S.selected.has(s.id) ? "sel " : "") + (s._manual ? "manual" : "");
  return `<tr data-id="${s.id}" class="${cls}">` + S.columns.map((c) =>
    `<td${TEXT_COLUMNS.has(c) ? ' class="text"' : ""}>${fmt(c, s[c])}</td>`).join("") + "</tr>";
}
function renderRows() {
  const wrap = $("#table-wrap"), n = S.stars.length;
  const first = Math.max(0, Math.floor(wrap.scrollTop / ROW_H) - OVERSCAN);
  const last = Math.min(n, Math.ceil((wrap.scrollTop + wrap.clientHeight) / ROW_H) + OVERSCAN);
  if (first === tableWindow[0] && last === tableWindow[1]) return;
  tableWindow = [first, last];
  const span = Math.max(1, S.columns.length);
  const parts = [`<tr class="spacer"><td colspan="${span}"></td></tr>`];
  for (let k = first; k < last; k++) parts.push(rowHtml(S.stars[k]));
  parts.push(`<tr class="spacer"><td colspan="${span}"></td></tr>`);
  const tbody = $("#stars tbody");
  tbody.innerHTML = parts.join("");
  tbody.firstElementChild.style.height = `${first * ROW_H}px`;
  tbody.lastElementChild.style.height = `${(n - last) * ROW_H}px`;
}
let rowsQueued = false;
function scheduleRows() {
  if (rowsQueued) return;
  rowsQueued = true;
  requestAnimationFrame(() => { rowsQueued = false; renderRows(); });
}
/* scroll the table so that star `id` is in sight, and draw that part */
function showRow(id) {
  const k = S.stars.findIndex((s) => s.id === id);
  if (k < 0) return;
  const wrap = $("#table-wrap"), head = $("#stars thead").offsetHeight || ROW_H;
  const top = k * ROW_H, bottom = top + ROW_H;
  if (top < wrap.scrollTop) wrap.scrollTop = top;
  else if (bottom + head > wrap.scrollTop + wrap.clientHeight) wrap.scrollTop = bottom + head - wrap.clientHeight;
  renderRows();
}
function sortBy(c) {
  if (S.sort.col === c) S.sort.dir = -S.sort.dir; else { S.sort.col = c; S.sort.dir = 1; }
  const d = S.sort.dir;
  S.stars.sort((a, b) => {
    const va = a[c], vb = b[c];
    const na = va === null || va === undefined || (typeof va === "number" && !isFinite(va));
    const nb = vb === null || vb === undefined || (typeof vb === "number" && !isFinite(vb));
    if (na || nb) return na === nb ? 0 : na ? 1 : -1; // missing values last either way
    return (va < vb ? -1 : va > vb ? 1 : 0) * d;
  });
  // a new order starts at its top (the old scroll position showed rows that are elsewhere now),
  // unless a star is selected: then its row stays in sight
  $("#table-wrap").scrollTop = 0;
  renderTable();
  if (S.lastSelected !== null && S.selected.has(S.lastSelected)) showRow(S.lastSelected);
}
function setStars(columns, rows, manual) {
  const stars = rows.map((r) => { const o = {}; columns.forEach((c, k) => { o[c] = r[k]; }); return o; });
  return stars.map((s) => { s.id = S.nextId++; if (manual) s._manual = true; return s; });
}
/* the columns people read first, then every other column in the library's order */
const FIRST_COLUMNS = ["id", "x_fit", "y_fit", "fwhm", "fwhm_x", "fwhm_y", "fwhm_arcsec", "roundness", "angle",
  "amplitude", "background", "flux_fit", "flux_err", "mag", "mag_err", "snr", "rmse", "reduced_chi2", "beta", "flag_names"];
function orderColumns(cols) {
  const first = FIRST_COLUMNS.filter((c) => cols.includes(c));
  return first.concat(cols.filter((c) => !first.includes(c)));
}
function mergeColumns(cols) {
  for (const c of cols) if (!S.columns.includes(c)) S.columns.push(c);
  S.columns = orderColumns(S.columns);
}

/* ------------------------------------------------------------------ selection */
function select(ids, { centre = false, additive = false } = {}) {
  if (!additive) S.selected.clear();
  for (const id of ids) S.selected.add(id);
  const last = ids.length ? S.stars.find((s) => s.id === ids[ids.length - 1]) : null;
  if (last) S.lastSelected = last.id;
  markSelection();
  if (last) {
    showRow(last.id);
    if (centre) centreOn(last.x_fit, last.y_fit, 1);
    showStarText(last);
  }
}
function starAt(sx, sy) {
  const [dx, dy] = screenToDisplay(sx, sy), [x, y] = fromDisplay(dx, dy);
  let best = null, bestD = Infinity;
  for (const s of S.stars) {
    const d = Math.hypot(s.x_fit - x, s.y_fit - y);
    const reach = Math.max(1.5 * (isFinite(col(s, "fwhm_x")) ? s.fwhm_x : 3), 8 / S.view.zoom);
    if (d < reach && d < bestD) { best = s; bestD = d; }
  }
  return best;
}
function removeSelected() {
  if (!S.selected.size) { message("Nothing selected to remove"); return; }
  const n = S.selected.size;
  S.stars = S.stars.filter((s) => !S.selected.has(s.id));
  S.selected.clear();
  renderTable(); drawStars();
  message(`Removed ${n} star${n === 1 ? "" : "s"}`, "ok");
}

/* ------------------------------------------------------------------ fit panel */
function showStarText(s) {
  if (s._report) { $("#report").textContent = s._report; $("#report").classList.remove("muted"); drawProfile(s._profile); return; }
  const keys = ["x_fit", "y_fit", "fwhm_x", "fwhm_y", "fwhm", "fwhm_arcsec", "roundness", "angle", "background",
                "amplitude", "flux_fit", "flux_err", "mag", "snr", "rmse", "flag_names"];
  const lines = [`Star ${s.id} (from detection)`];
  for (const k of keys) if (k in s) lines.push(`${k.padEnd(12)} ${fmt(k, s[k])}`);
  lines.push("", "Drag a box around it (or double-click it) to fit it with the angle",
             "and see its radial profile.");
  $("#report").textContent = lines.join("\n"); $("#report").classList.remove("muted");
  drawProfile(null);
}
function drawProfile(p) {
  const c = $("#profile"), dpr = window.devicePixelRatio || 1;
  const W = 340, H = 190;
  c.width = W * dpr; c.height = H * dpr;
  const ctx = c.getContext("2d"); ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.fillStyle = "#0d0c0c"; ctx.fillRect(0, 0, W, H);
  ctx.font = "10px ui-monospace, monospace"; ctx.fillStyle = "#7d726f";
  c.hidden = !p || !p.radius || !p.radius.length;
  if (c.hidden) { c.dataset.points = "0"; return; }
  const L = 48, R = 12, T = 22, B = 26, pw = W - L - R, ph = H - T - B;
  const rmax = Math.max(...p.radius) || 1;
  const vals = p.value.concat(p.curve_model).filter((v) => v !== null);
  let vmin = Math.min(...vals), vmax = Math.max(...vals);
  if (vmax <= vmin) vmax = vmin + 1;
  const pad = 0.05 * (vmax - vmin); vmin -= pad; vmax += pad;
  const X = (r) => L + (r / rmax) * pw, Y = (v) => T + (1 - (v - vmin) / (vmax - vmin)) * ph;
  ctx.strokeStyle = "#2e2828"; ctx.lineWidth = 1;
  ctx.strokeRect(L, T, pw, ph);
  ctx.fillStyle = "#7d726f";
  ctx.textAlign = "right";
  for (let k = 0; k <= 4; k++) {
    const v = vmin + (k / 4) * (vmax - vmin);
    ctx.fillText(Number(v.toPrecision(3)).toString(), L - 4, Y(v) + 3);
  }
  ctx.textAlign = "center";
  for (let k = 0; k <= 4; k++) { const r = (k / 4) * rmax; ctx.fillText(r.toFixed(1), X(r), T + ph + 12); }
  ctx.fillText("distance from the fitted centre [px]", L + pw / 2, H - 2);
  ctx.textAlign = "left";
  if (p.background !== null) {
    ctx.setLineDash([3, 3]); ctx.strokeStyle = "#4a3f3d";
    ctx.beginPath(); ctx.moveTo(L, Y(p.background)); ctx.lineTo(L + pw, Y(p.background)); ctx.stroke(); ctx.setLineDash([]);
  }
  ctx.fillStyle = "rgba(185, 174, 171, 0.55)";
  let n = 0;
  for (let k = 0; k < p.radius.length; k++) {
    if (p.value[k] === null) continue;
    ctx.fillRect(X(p.radius[k]) - 1, Y(p.value[k]) - 1, 2, 2); n++;
  }
  ctx.strokeStyle = "#d0623f"; ctx.lineWidth = 1.8; ctx.beginPath();
  p.curve_radius.forEach((r, k) => { const x = X(r), y = Y(p.curve_model[k]); k ? ctx.lineTo(x, y) : ctx.moveTo(x, y); });
  ctx.stroke();
  ctx.fillStyle = "#b9aeab"; ctx.fillText("radial profile", L, 12);
  ctx.textAlign = "right";
  ctx.fillStyle = "#d0623f"; ctx.fillText("— fitted model", L + pw, 12);
  ctx.fillStyle = "#b9aeab"; ctx.fillText("· pixels   ", L + pw - 84, 12);
  ctx.textAlign = "left";
  c.dataset.points = String(n);
}

/* ------------------------------------------------------------------ actions */
function rowsPayload(extra) {
  const cols = S.columns.filter((c) => c !== "flag_names");
  return Object.assign({
    path: S.path, columns: cols,
    rows: S.stars.map((s) => cols.map((c) => { const v = s[c]; return v === undefined ? null : v; })),
    model: S.settings ? S.settings.model : null,
    threshold: S.settings ? S.settings.threshold : null,
  }, extra || {});
}
async function detect() {
  const btn = $("#detect");
  const body = { path: S.path, threshold: Number($("#threshold").value), model: $("#model").value, angle: $("#angle").checked ? true : "auto",
                 deblend: $("#deblend").checked };
  if ($("#fwhm").value !== "") body.fwhm = Number($("#fwhm").value);
  if ($("#min-roundness").value !== "") body.min_roundness = Number($("#min-roundness").value);
  const t0 = performance.now();
  psfkitStats.detect = { clicked: t0, received: null, drawn: null, error: null, n: null };
  btn.disabled = true;
  const timer = setInterval(() => busy(`Detecting stars… ${((performance.now() - t0) / 1000).toFixed(0)} s`), 500);
  busy("Detecting stars…");
  try {
    const r = await api("POST", "/api/detect", body, psfkitStats.detect);
    psfkitStats.detect.received = performance.now();
    psfkitStats.detect.summary = r.summary;
    S.settings = r.settings;
    setResidual(!!r.residual);
    S.columns = orderColumns(r.columns);
    S.nextId = 1;
    S.stars = setStars(r.columns, r.rows, false);
    S.selected.clear(); S.sort = { col: null, dir: 1 };
    renderTable(); drawStars();
    psfkitStats.detect.built = performance.now();
    const sm = r.summary || {}, rej = Object.entries(sm.rejected || {}).map(([k, v]) => `${k} ${v}`).join(", ");
    $("#summary").textContent = $("#summary").title = `${sm.n_candidates ?? "?"} candidates${rej ? "; rejected: " + rej : ""}` +
      (sm.companions_found ? `; ${sm.companions_found} companions from the residual` : "") +
      (r.frame_fwhm ? `; frame FWHM ≈ ${r.frame_fwhm.toFixed(2)} px` : "") +
      (r.psf_model ? `; PSF: ${r.psf_model === "frame" ? "the frame's own" : r.psf_model}` : "");
    if (r.psf_choice) $("#summary").title += `\nPSF: ${r.psf_choice}`;
    // drawn: after the next frame has been painted (rAF runs before paint, the timeout after it)
    requestAnimationFrame(() => setTimeout(() => {
      psfkitStats.detect.drawn = performance.now(); psfkitStats.detect.n = S.stars.length;
      message(`${S.stars.length} stars in ${((psfkitStats.detect.drawn - t0) / 1000).toFixed(2)} s`, "ok");
    }, 0));
  } catch (e) {
    psfkitStats.detect.error = e.message;
    message("Detect: " + e.message + (e.retryAfter ? ` (retry in ${e.retryAfter} s)` : ""), "error");
  }
  finally { clearInterval(timer); busy(null); btn.disabled = false; }
}
async function fitAt(x, y, box) {
  busy("Fitting…");
  try {
    const body = { path: S.path, x, y, model: $("#model").value };
    if (box) body.box = box;
    const r = await api("POST", "/api/fit", body);
    mergeColumns(r.columns);
    const [s] = setStars(r.columns, r.rows, true);
    s._report = r.report; s._profile = r.profile;
    // a fit of a star already in the list (a box drawn around it) replaces its row, keeping its id
    const reach = Math.max(1.0, 0.5 * (isFinite(col(s, "fwhm")) ? s.fwhm : 2));
    const k = S.stars.findIndex((o) => Math.hypot(o.x_fit - s.x_fit, o.y_fit - s.y_fit) < reach);
    const again = k >= 0;
    if (again) { s.id = S.stars[k].id; S.stars[k] = s; } else S.stars.push(s);
    renderTable(); drawStars();
    select([s.id]);
    message(`${again ? "Refitted" : "Fitted"} star ${s.id}: FWHM ${fmt("fwhm", s.fwhm)} px, r ${fmt("roundness", s.roundness)}`, "ok");
  } catch (e) { message("Fit: " + e.message, "error"); }
  finally { busy(null); }
}
async function doAverage() {
  if (!S.stars.length) { message("No stars to average", "error"); return; }
  try {
    const r = await api("POST", "/api/average", rowsPayload());
    $("#average-text").textContent = r.text; $("#average-text").classList.remove("muted");
    message(`Average of ${r.average.n_stars} stars`, "ok");
  } catch (e) { message("Average: " + e.message, "error"); }
}
/* Exports never overwrite: when the name is taken the server answers 409 with a free name, which the
 * page offers as a button ("Save as stars-1.lst"); nothing is written until the user accepts it. */
let pendingRename = null;
function offerRename(format, name) {
  pendingRename = name ? { format, name } : null;
  const b = $("#export-rename");
  b.hidden = !name;
  if (name) { b.textContent = `Save as ${name}`; b.title = `Write the list as ${name} instead`; }
}
async function doInspect() {
  const btn = $("#inspect");
  btn.disabled = true; busy("Inspecting the optics…");
  psfkitStats.inspect = null;
  try {
    const r = await api("POST", "/api/inspect", { path: S.path, threshold: Number($("#threshold").value) });
    $("#inspect-text").textContent = r.text; $("#inspect-text").classList.remove("muted");
    const img = $("#inspect-img"); img.src = r.report_png; img.hidden = false;
    psfkitStats.inspect = { tilt_percent: r.tilt_percent, curvature: r.curvature, pattern: r.elongation_pattern, error: null };
    message(`Inspector: tilt ${r.tilt_percent.toFixed(1)} %, curvature ${r.curvature_percent.toFixed(1)} %, ${r.elongation_pattern}`, "ok");
  } catch (e) { psfkitStats.inspect = { error: e.message }; message("Inspect: " + e.message, "error"); }
  finally { busy(null); btn.disabled = false; }
}
async function doExport(format, name) {
  psfkitStats.lastExport = null;
  offerRename(null, null);
  try {
    const r = await api("POST", "/api/export", rowsPayload(name ? { format, name } : { format }));
    message(`Wrote ${r.written} (${r.n_stars} stars) in ${r.folder}`, "ok");
    psfkitStats.lastExport = { written: r.written, error: null, suggested: null };
  } catch (e) {
    const suggested = (e.status === 409 && e.data && e.data.suggested_name) || null;
    psfkitStats.lastExport = { written: null, error: e.message, suggested };
    message("Export: " + e.message, "error");
    if (suggested) offerRename(format, suggested);
  }
}
function copyText(sel) {
  const text = $(sel).textContent;
  const done = () => message("Copied", "ok");
  if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(text).then(done, () => fallbackCopy(sel, done));
  else fallbackCopy(sel, done);
}
function fallbackCopy(sel, done) {
  const r = document.createRange(); r.selectNodeContents($(sel));
  const s = window.getSelection(); s.removeAllRanges(); s.addRange(r);
  try { document.execCommand("copy"); done(); } catch (e) { message("Select the text and copy it", "error"); }
}

/* ------------------------------------------------------------------ stretch controls */
function logMap(t, a, b) { return a * Math.pow(b / a, t); }
function logUnmap(v, a, b) { return Math.log(v / a) / Math.log(b / a); }
function stretchFromSliders() {
  const st = S.info.stats, sig = Math.max(st.sigma, 1e-12 * Math.max(1, Math.abs(st.median)));
  const bk = Number($("#stretch-black").value) / 1000, wt = Number($("#stretch-white").value) / 1000;
  const sg = Number($("#stretch-strength").value) / 1000;
  // black: from median - 10 sigma to median + 2 sigma; white: log between median + 3 sigma and max
  const black = st.median - 10 * sig + bk * 12 * sig;
  const wlo = Math.max(3 * sig, 1e-12), whi = Math.max(st.max - st.median, 10 * wlo);
  const white = st.median + logMap(wt, wlo, whi);
  S.prevStretchKey = stretchKey();
  S.stretch = { mode: $("#stretch-mode").value, black: round6(black), white: round6(Math.max(white, black + sig)),
                mid: round6(Math.min(0.999, Math.max(0.001, logMap(1 - sg, 0.0005, 0.9)))), soft: round6(logMap(sg, 0.5, 5000)) };
  scheduleRender();
}
function round6(v) { return Number(v.toPrecision(6)); }
function autoStretch() {
  const a = S.info.auto_stretch, st = S.info.stats, sig = Math.max(st.sigma, 1e-12 * Math.max(1, Math.abs(st.median)));
  S.prevStretchKey = S.info && S.stretch ? stretchKey() : null;
  S.stretch = { mode: $("#stretch-mode").value, black: round6(a.black), white: round6(a.white), mid: round6(a.mid), soft: round6(a.soft) };
  const clamp = (t) => Math.round(1000 * Math.min(1, Math.max(0, t)));
  $("#stretch-black").value = clamp((a.black - (st.median - 10 * sig)) / (12 * sig));
  const wlo = Math.max(3 * sig, 1e-12), whi = Math.max(st.max - st.median, 10 * wlo);
  $("#stretch-white").value = clamp(logUnmap(Math.max(a.white - st.median, wlo), wlo, whi));
  $("#stretch-strength").value = S.stretch.mode === "asinh" ? clamp(logUnmap(a.soft, 0.5, 5000)) : clamp(1 - logUnmap(a.mid, 0.0005, 0.9));
  scheduleRender();
}

/* ------------------------------------------------------------------ loading */
async function openImage(rel) {
  busy("Loading image…");
  try {
    const info = await api("GET", `/api/image?path=${encodeURIComponent(rel)}`);
    S.info = info; S.path = rel;
    S.stars = []; S.columns = []; S.selected.clear(); S.settings = null; S.nextId = 1; S.lastSelected = null;
    renderTable(); drawStars();
    $("#summary").textContent = "";
    $("#report").textContent = "Select a star, drag a box around one, or double-click one."; $("#report").classList.add("muted");
    $("#average-text").textContent = "Detect stars, then press Average."; $("#average-text").classList.add("muted");
    $("#inspect-text").textContent = "Press Inspect: the stars' FWHM across the frame fitted for tilt and field curvature.";
    $("#inspect-text").classList.add("muted"); $("#inspect-img").hidden = true; $("#inspect-img").classList.remove("enlarged");
    drawProfile(null);
    history.replaceState(null, "", "#image=" + encodeURIComponent(rel));
    $("#file-select").value = rel;
    const facts = [`${info.width} × ${info.height}`];
    if (info.pixel_scale) facts.push(`${info.pixel_scale.toFixed(3)}″/px`);
    if (info.exptime) facts.push(`${info.exptime} s`);
    facts.push(info.top_down ? "row 0 at top" : "row 0 at bottom (y up)");
    $("#image-facts").textContent = facts.join(" · ");
    document.title = `${info.name} · psfkit`;
    setResidual(false); S.layer = "frame"; document.body.dataset.layer = "frame";
    S.prevStretchKey = null;
    autoStretch();
    fitView();
    message(`Opened ${rel}`, "ok");
    document.body.dataset.image = rel;
  } catch (e) { message("Open: " + e.message, "error"); }
  finally { busy(null); }
}
async function init() {
  S.cfg = await api("GET", "/api/config");
  const { files } = await api("GET", "/api/files");
  const sel = $("#file-select");
  sel.innerHTML = files.map((f) => `<option value="${f.replace(/"/g, "&quot;")}">${f.replace(/</g, "&lt;")}</option>`).join("");
  const fromHash = decodeURIComponent((location.hash.match(/image=([^&]+)/) || [])[1] || "");
  const first = fromHash || S.cfg.image || files[0];
  if (first) await openImage(first); else message("No images in the root folder", "error");
  document.body.dataset.ready = "1";
}

/* ------------------------------------------------------------------ events */
function wire() {
  const viewer = $("#viewer");
  let drag = null;
  viewer.addEventListener("mousedown", (ev) => {
    if (ev.button !== 0 || !S.info) return;
    viewer.focus();
    const [sx, sy] = eventPos(ev);
    drag = { sx, sy, x0: S.view.x0, y0: S.view.y0, box: S.boxMode || ev.shiftKey, moved: false };
    if (!drag.box) viewer.classList.add("panning");
    ev.preventDefault();
  });
  window.addEventListener("mousemove", (ev) => {
    if (S.info && ev.target.closest && ev.target.closest("#viewer")) {
      const [sx, sy] = eventPos(ev), [dx, dy] = screenToDisplay(sx, sy), [x, y] = fromDisplay(dx, dy);
      $("#cursor").textContent = `x ${x.toFixed(1)}, y ${y.toFixed(1)}`;
    }
    if (!drag) return;
    const [sx, sy] = eventPos(ev);
    if (Math.hypot(sx - drag.sx, sy - drag.sy) > 3) drag.moved = true;
    if (drag.box) {
      const b = $("#selbox"); b.hidden = !drag.moved;
      b.style.left = Math.min(sx, drag.sx) + "px"; b.style.top = Math.min(sy, drag.sy) + "px";
      b.style.width = Math.abs(sx - drag.sx) + "px"; b.style.height = Math.abs(sy - drag.sy) + "px";
    } else {
      S.view.x0 = drag.x0 - (sx - drag.sx) / S.view.zoom; S.view.y0 = drag.y0 - (sy - drag.sy) / S.view.zoom;
      scheduleRender();
    }
  });
  window.addEventListener("mouseup", (ev) => {
    if (!drag) return;
    const d = drag; drag = null;
    viewer.classList.remove("panning"); $("#selbox").hidden = true;
    const [sx, sy] = eventPos(ev);
    if (d.box && d.moved) {
      const [ax, ay] = fromDisplay(...screenToDisplay(d.sx, d.sy)), [bx, by] = fromDisplay(...screenToDisplay(sx, sy));
      const size = Math.max(Math.abs(ax - bx), Math.abs(ay - by));
      if (size < 5) { message("Box too small: at least 5 px", "error"); return; }
      let box = Math.min(401, Math.round(size)); if (box % 2 === 0) box += 1;
      fitAt((ax + bx) / 2, (ay + by) / 2, box);
      return;
    }
    if (!d.moved) {
      const s = starAt(sx, sy);
      if (s) select([s.id], { additive: ev.ctrlKey || ev.metaKey });
      else if (!ev.ctrlKey && !ev.metaKey) { S.selected.clear(); markSelection(); }
    }
  });
  viewer.addEventListener("dblclick", (ev) => {
    if (!S.info) return;
    const [sx, sy] = eventPos(ev), [x, y] = fromDisplay(...screenToDisplay(sx, sy));
    fitAt(x, y, null);
  });
  viewer.addEventListener("wheel", (ev) => {
    if (!S.info) return;
    ev.preventDefault();
    const [sx, sy] = eventPos(ev);
    zoomAt(sx, sy, Math.pow(1.0018, -ev.deltaY));
  }, { passive: false });
  window.addEventListener("keydown", (ev) => {
    const tag = (ev.target.tagName || "").toLowerCase();
    if (tag === "input" || tag === "select" || tag === "textarea") return;
    if (ev.key === "Delete" || ev.key === "Backspace") { removeSelected(); ev.preventDefault(); }
    else if (ev.key === "f" || ev.key === "F" || ev.key === "0") fitView();
    else if (ev.key === "1") { const [w, h] = viewerSize(); zoomAt(w / 2, h / 2, 1 / S.view.zoom); }
    else if (ev.key === "+" || ev.key === "=") { const [w, h] = viewerSize(); zoomAt(w / 2, h / 2, 1.5); }
    else if (ev.key === "-") { const [w, h] = viewerSize(); zoomAt(w / 2, h / 2, 1 / 1.5); }
    else if (ev.key === "b" || ev.key === "B") toggleBox();
    else if (ev.key === "r" || ev.key === "R") toggleResidual();
    else if (ev.key === "Escape") { S.selected.clear(); markSelection(); }
  });
  window.addEventListener("resize", scheduleRender);
  $("#stars thead").addEventListener("click", (ev) => { const th = ev.target.closest("th"); if (th) sortBy(th.dataset.col); });
  $("#table-wrap").addEventListener("scroll", scheduleRows, { passive: true });
  window.addEventListener("resize", scheduleRows);
  $("#stars tbody").addEventListener("click", (ev) => {
    const tr = ev.target.closest("tr[data-id]"); if (!tr) return;
    const id = Number(tr.dataset.id);
    if (ev.shiftKey && S.lastSelected !== null) {
      const ids = S.stars.map((s) => s.id), a = ids.indexOf(S.lastSelected), b = ids.indexOf(id);
      select(ids.slice(Math.min(a, b), Math.max(a, b) + 1), { centre: true });
    } else select([id], { centre: true, additive: ev.ctrlKey || ev.metaKey });
  });
  $("#detect").addEventListener("click", detect);
  $("#average").addEventListener("click", doAverage);
  $("#inspect").addEventListener("click", doInspect);
  $("#copy-inspect").addEventListener("click", () => copyText("#inspect-text"));
  $("#inspect-img").addEventListener("click", () => $("#inspect-img").classList.toggle("enlarged"));
  $("#remove").addEventListener("click", removeSelected);
  $("#box-mode").addEventListener("click", toggleBox);
  $("#residual-toggle").addEventListener("click", toggleResidual);
  const zoomCentre = (f) => { const [w, h] = viewerSize(); zoomAt(w / 2, h / 2, f); };
  $("#zoom-in").addEventListener("click", () => zoomCentre(1.5));
  $("#zoom-out").addEventListener("click", () => zoomCentre(1 / 1.5));
  $("#zoom-fit").addEventListener("click", fitView);
  $("#zoom-1").addEventListener("click", () => zoomCentre(1 / S.view.zoom));
  for (const b of document.querySelectorAll("#tools button")) {
    b.addEventListener("mousedown", (ev) => ev.stopPropagation());  // a click on a tool is not a pan or a pick
    b.addEventListener("dblclick", (ev) => ev.stopPropagation());
  }
  for (const b of document.querySelectorAll("#table-head .export button")) b.addEventListener("click", () => doExport(b.dataset.format));
  $("#export-rename").addEventListener("click", () => { if (pendingRename) doExport(pendingRename.format, pendingRename.name); });
  $("#copy-report").addEventListener("click", () => copyText("#report"));
  $("#copy-average").addEventListener("click", () => copyText("#average-text"));
  $("#file-select").addEventListener("change", (ev) => openImage(ev.target.value));
  for (const id of ["#stretch-black", "#stretch-white", "#stretch-strength"]) $(id).addEventListener("input", stretchFromSliders);
  $("#stretch-mode").addEventListener("change", autoStretch);
  $("#stretch-auto").addEventListener("click", autoStretch);
}
/* the residual layer: the frame minus every fitted star, after a detection with deblend */
function setResidual(available) {
  const b = $("#residual-toggle");
  S.residualAvailable = available;
  b.hidden = !available;
  if (!available && S.layer === "residual") showLayer("frame");
  else if (available && S.layer === "residual") { tileCache.clear(); scheduleRender(); }  // a new residual
}
function showLayer(layer) {
  if (S.info && S.stretch) S.prevStretchKey = stretchKey();
  S.layer = layer;
  $("#residual-toggle").classList.toggle("on", layer === "residual");
  document.body.dataset.layer = layer;
  scheduleRender();
}
function toggleResidual() {
  if (!S.residualAvailable) return;
  showLayer(S.layer === "residual" ? "frame" : "residual");
}
function toggleBox() {
  S.boxMode = !S.boxMode;
  $("#box-mode").classList.toggle("on", S.boxMode);
  $("#viewer").classList.toggle("box-mode", S.boxMode);
}

wire();
init().catch((e) => message("Start: " + e.message, "error"));
