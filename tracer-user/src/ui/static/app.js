// The node-local view: plain JS, no build step, no library; everything from this agent's API.
// Text from traffic (routes, attributes) is only ever set as textContent, never as HTML.
"use strict";

const state = {
  window: "1m",
  routes: [],
  sort: { key: "p99_ms", asc: false },
  paused: false,
  pending: [],
  live: [],
  selectedSpan: null,
};
const LIVE_ROWS = 150;

// ---- helpers ---------------------------------------------------------------------------
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}
function svg(tag, attrs, ...children) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const c of children.flat()) if (c) e.append(c);
  return e;
}
async function api(path) {
  const r = await fetch(path, { cache: "no-store" });
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}
function fmtMs(ms) {
  if (ms === null || ms === undefined || isNaN(ms)) return "–";
  if (ms >= 1000) return (ms / 1000).toFixed(2) + " s";
  if (ms >= 100) return ms.toFixed(0) + " ms";
  if (ms >= 10) return ms.toFixed(1) + " ms";
  if (ms >= 1) return ms.toFixed(2) + " ms";
  return (ms * 1000).toFixed(0) + " µs";
}
function fmtRate(r) { return r >= 10 ? r.toFixed(1) : r.toFixed(2); }
function fmtTime(unixMs) {
  const d = new Date(unixMs);
  return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}
function ago(unixMs) {
  const s = Math.max(0, (Date.now() - unixMs) / 1000);
  if (s < 60) return s.toFixed(0) + " s ago";
  return (s / 60).toFixed(0) + " min ago";
}
function kindTag(kind) { return el("span", { class: "kind " + kind, text: kind }); }
function statusText(r) { return r.status_code === null || r.status_code === undefined ? "–" : String(r.status_code); }
function requestCell(r) {
  // The span name is "METHOD route": show the method dimmed.
  const name = r.name || "";
  const sp = name.indexOf(" ");
  if (r.method && sp > 0 && name.slice(0, sp) === r.method) {
    return [el("span", { class: "method", text: r.method }), name.slice(sp + 1)];
  }
  return [name];
}
function traceLink(id) { return "#trace=" + id; }

// ---- header ----------------------------------------------------------------------------
async function loadStats() {
  const s = await api("/api/stats");
  const box = document.getElementById("stats");
  box.replaceChildren(
    el("span", {}, el("b", { text: s.traces }), " traces · ", el("b", { text: s.spans }), " spans stored"),
    el("span", {}, el("b", { text: s.traces_evicted }), " evicted"),
    el("span", {}, el("b", { text: s.spans_seen }), " seen"),
    el("span", { title: "spans of new traces past the view's rate (--ui-max-new-traces), neither failed nor slow: counted in routes and the service map, not stored" },
       el("b", { text: s.spans_not_kept }), " not kept"),
    el("span", {}, el("b", { text: s.live_clients }), " live clients"),
  );
}

// ---- routes table ----------------------------------------------------------------------
async function loadRoutes() {
  state.routes = await api("/api/routes?window=" + state.window);
  renderRoutes();
}
function sparkline(values) {
  const w = 90, h = 22, max = Math.max(1, ...values);
  const step = values.length > 1 ? w / (values.length - 1) : w;
  const pts = values.map((v, i) => `${(i * step).toFixed(1)},${(h - 2 - (v / max) * (h - 4)).toFixed(1)}`);
  return svg("svg", { class: "spark", width: w, height: h, viewBox: `0 0 ${w} ${h}` },
    svg("polygon", { points: `0,${h} ${pts.join(" ")} ${w},${h}` }),
    svg("polyline", { points: pts.join(" ") }));
}
function renderRoutes() {
  const { key, asc } = state.sort;
  const rows = [...state.routes].sort((a, b) => {
    const x = a[key], y = b[key];
    const c = typeof x === "string" ? x.localeCompare(y) : x - y;
    return asc ? c : -c;
  });
  for (const th of document.querySelectorAll("#routes th[data-sort]")) {
    th.classList.toggle("sorted", th.dataset.sort === key);
    th.classList.toggle("asc", th.dataset.sort === key && asc);
  }
  const body = document.getElementById("routes-body");
  if (!rows.length) {
    body.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: 10, text: "no requests in this window yet" })));
    return;
  }
  const p99s = rows.map((r) => r.p99_ms).sort((a, b) => a - b);
  const slow = p99s[Math.floor(p99s.length * 0.75)] || Infinity;
  body.replaceChildren(...rows.map((r) => el("tr", {
    class: "route clickable" + (r.errors > 0 ? " error" : ""),
    "data-service": r.service, "data-kind": r.kind, "data-route": r.route,
    "data-count": r.count, "data-errors": r.errors,
    title: "slowest traces of " + r.route,
    onclick: () => { location.hash = "route=" + encodeURIComponent(JSON.stringify([r.service, r.kind, r.route])); },
  },
    el("td", { class: "svc", text: r.service }),
    el("td", {}, kindTag(r.kind)),
    el("td", { class: "mono", text: r.route }),
    el("td", { class: "num", text: fmtRate(r.rate) }),
    el("td", { class: "num count", text: r.count }),
    el("td", { class: "num" + (r.errors > 0 ? " bad" : ""), text: r.error_pct.toFixed(1) + " %" }),
    el("td", { class: "num", text: fmtMs(r.p50_ms) }),
    el("td", { class: "num", text: fmtMs(r.p95_ms) }),
    el("td", { class: "num" + (r.p99_ms >= slow && rows.length > 2 ? " lat-high" : ""), text: fmtMs(r.p99_ms) }),
    el("td", {}, sparkline(r.spark)),
  )));
}
for (const th of document.querySelectorAll("#routes th[data-sort]")) {
  th.addEventListener("click", () => {
    const k = th.dataset.sort;
    state.sort = state.sort.key === k ? { key: k, asc: !state.sort.asc } : { key: k, asc: ["service", "kind", "route"].includes(k) };
    renderRoutes();
  });
}
for (const b of document.querySelectorAll(".windows button")) {
  b.addEventListener("click", () => {
    state.window = b.dataset.window;
    for (const o of document.querySelectorAll(".windows button")) o.classList.toggle("on", o === b);
    refresh();
  });
}

// ---- live requests ---------------------------------------------------------------------
function liveRow(r, fresh) {
  return el("tr", {
    class: "request clickable" + (r.error ? " error" : "") + (fresh ? " new" : ""),
    "data-trace-id": r.trace_id, "data-error": r.error ? "true" : "false",
    onclick: () => { location.hash = "trace=" + r.trace_id; },
  },
    el("td", { class: "mono", text: fmtTime(r.start_unix_ms) }),
    el("td", {}, el("span", { class: "svc", text: r.service }), " ", kindTag(r.kind)),
    el("td", { class: "mono" }, ...requestCell(r)),
    el("td", { class: "num status", text: statusText(r) }),
    el("td", { class: "num", text: fmtMs(r.duration_ms) }),
  );
}
function renderLive() {
  const body = document.getElementById("live-body");
  if (!state.live.length) {
    body.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: 5, text: "waiting for requests…" })));
    return;
  }
  body.replaceChildren(...state.live.map((r) => liveRow(r, r._fresh)));
  for (const r of state.live) r._fresh = false;
}
function addLive(spans) {
  for (const s of spans) s._fresh = true;
  state.live = spans.concat(state.live).slice(0, LIVE_ROWS);
  renderLive();
}
async function startLive() {
  const first = await api("/api/spans?limit=" + LIVE_ROWS);
  state.live = first;
  renderLive();
  // `#live=off`: the list as loaded, no stream (headless browsers whose virtual time waits
  // for every open request, such as the tests' Chromium, need it).
  if (!window.EventSource || new URLSearchParams(location.hash.slice(1)).get("live") === "off") {
    document.getElementById("live-state").textContent = "stream off";
    document.getElementById("pause").hidden = true;
    return;
  }
  const es = new EventSource("/api/stream");
  // Events are batched and drawn at most ~4 times a second, however busy the node.
  let batch = [];
  es.addEventListener("span", (e) => { batch.unshift(JSON.parse(e.data)); });
  setInterval(() => {
    if (!batch.length) return;
    const spans = batch.slice(0, LIVE_ROWS);
    batch = [];
    if (state.paused) {
      state.pending = spans.concat(state.pending).slice(0, LIVE_ROWS);
      updatePause();
    } else addLive(spans);
  }, 250);
}
function updatePause() {
  const pill = document.getElementById("live-state");
  pill.className = "pill " + (state.paused ? "paused" : "live");
  pill.textContent = state.paused ? `paused · ${state.pending.length} new` : "live";
  document.getElementById("pause").textContent = state.paused ? "Resume" : "Pause";
}
document.getElementById("pause").addEventListener("click", () => {
  state.paused = !state.paused;
  if (!state.paused && state.pending.length) { addLive(state.pending); state.pending = []; }
  updatePause();
});

// ---- service map -----------------------------------------------------------------------
async function loadMap() {
  const m = await api("/api/service-map?window=" + state.window);
  document.getElementById("map-source").textContent = m.source === "metrics"
    ? "from the service-graph metrics" : "from the client → server span pairs seen on this node";
  renderMap(m.edges);
}
function renderMap(edges) {
  const box = document.getElementById("map");
  if (!edges.length) { box.replaceChildren(el("div", { class: "empty", text: "no client → server calls seen yet" })); return; }
  // Layers: a service's column is its longest call depth from a caller nobody calls.
  const names = [...new Set(edges.flatMap((e) => [e.client, e.server]))].sort();
  const layer = Object.fromEntries(names.map((n) => [n, 0]));
  for (let i = 0; i < names.length; i++) {
    for (const e of edges) if (e.client !== e.server && layer[e.server] < layer[e.client] + 1) layer[e.server] = Math.min(layer[e.client] + 1, names.length);
  }
  const cols = {};
  for (const n of names) (cols[layer[n]] = cols[layer[n]] || []).push(n);
  const nw = 150, nh = 40, gapX = 190, gapY = 30, pad = 16;
  const ncols = Math.max(...Object.keys(cols).map(Number)) + 1;
  const rowsMax = Math.max(...Object.values(cols).map((c) => c.length));
  const W = pad * 2 + ncols * nw + (ncols - 1) * gapX, H = pad * 2 + rowsMax * nh + (rowsMax - 1) * gapY;
  const pos = {};
  for (const [c, list] of Object.entries(cols)) {
    const top = pad + (H - pad * 2 - (list.length * nh + (list.length - 1) * gapY)) / 2;
    list.forEach((n, i) => { pos[n] = { x: pad + Number(c) * (nw + gapX), y: top + i * (nh + gapY) }; });
  }
  const out = svg("svg", { viewBox: `0 0 ${W} ${H}`, height: H, style: `max-width:${W}px` },
    svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
      svg("path", { d: "M0,0 L10,5 L0,10 z", fill: "#58698a" }))));
  for (const e of edges) {
    const a = pos[e.client], b = pos[e.server];
    const x1 = a.x + nw, y1 = a.y + nh / 2, x2 = b.x, y2 = b.y + nh / 2;
    const mx = (x1 + x2) / 2;
    const bad = e.failed > 0;
    out.append(svg("g", { class: "edge" + (bad ? " bad" : ""), "data-client": e.client, "data-server": e.server },
      svg("path", { d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2 - 2},${y2}`, "marker-end": "url(#arrow)" }),
      svg("text", { x: mx, y: (y1 + y2) / 2 - 9, "text-anchor": "middle", text: `${fmtRate(e.rate)} req/s · ${e.error_pct.toFixed(1)} % err` })));
  }
  for (const n of names) {
    const p = pos[n];
    out.append(svg("g", { class: "node", transform: `translate(${p.x},${p.y})` },
      svg("rect", { width: nw, height: nh, rx: 6 }),
      svg("text", { x: nw / 2, y: nh / 2 + 4, "text-anchor": "middle", text: n.length > 20 ? n.slice(0, 19) + "…" : n })));
  }
  box.replaceChildren(out);
}

// ---- a route's slowest traces ----------------------------------------------------------
async function showRoute(service, kind, route) {
  const card = document.getElementById("route-card");
  card.hidden = false;
  document.getElementById("route-title").replaceChildren("Slowest traces of ", el("span", { class: "svc", text: service }), " ", kindTag(kind), " ", el("span", { class: "mono", text: route }));
  const q = new URLSearchParams({ service, kind, route, order: "slowest", limit: "25" });
  const list = await api("/api/traces?" + q);
  const body = document.getElementById("route-traces");
  if (!list.length) { body.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: 6, text: "no stored traces of this route" }))); return; }
  body.replaceChildren(...list.map((r) => el("tr", {
    class: "clickable" + (r.error ? " error" : ""), "data-trace-id": r.trace_id,
    onclick: () => { location.hash = "trace=" + r.trace_id; },
  },
    el("td", { class: "num", text: fmtMs(r.duration_ms) }),
    el("td", { class: "svc", text: r.service }),
    el("td", { class: "mono" }, ...requestCell(r)),
    el("td", { class: "num status", text: statusText(r) }),
    el("td", { text: ago(r.start_unix_ms) }),
    el("td", { class: "mono" }, el("a", { href: traceLink(r.trace_id), text: r.trace_id })),
  )));
}

// ---- trace view ------------------------------------------------------------------------
const SOURCES = {
  w3c: "W3C traceparent header of the incoming request",
  b3: "B3 headers of the incoming request",
  thread: "the thread that was serving a request when it sent this one",
  address: "the sender's CLIENT span on this node, matched by the connection's addresses",
  none: "no parent found: a root",
};
async function showTrace(id) {
  const card = document.getElementById("trace-card");
  card.hidden = false;
  document.getElementById("trace-title").replaceChildren("Trace ", el("span", { class: "mono", text: id }));
  let t;
  try { t = await api("/api/traces/" + encodeURIComponent(id)); } catch (e) {
    document.getElementById("trace-meta").replaceChildren(el("span", { class: "errtext", text: e.message }));
    document.getElementById("waterfall").replaceChildren();
    document.getElementById("span-detail").hidden = true;
    return;
  }
  const total = Math.max(t.duration_ms, 1e-6);
  const crit = t.spans.filter((s) => s.critical).length;
  const errors = t.spans.filter((s) => s.error).length;
  document.getElementById("trace-meta").replaceChildren(...[
    el("span", {}, "started ", el("b", { text: new Date(t.start_unix_ms).toLocaleString() })),
    el("span", {}, "duration ", el("b", { text: fmtMs(t.duration_ms) })),
    el("span", {}, el("b", { text: t.spans.length }), " spans on this node"),
    el("span", {}, el("b", { text: crit }), " on the critical path"),
    errors ? el("span", { class: "errtext", text: errors + " with errors" }) : null,
  ].filter(Boolean));
  const pct = (ms) => (100 * ms / total).toFixed(3) + "%";
  const ticks = [0, 0.25, 0.5, 0.75, 1].map((f) => el("span", { class: "tick", style: `left:${f * 100}%`, text: f ? fmtMs(f * total) : "0" }));
  const rows = [el("div", { class: "wf-axis" }, el("div", { class: "wf-label", text: "service · span" }), el("div", { class: "ticks" }, ticks), el("div", { class: "wf-dur", text: "duration" }))];
  const byId = Object.fromEntries(t.spans.map((s) => [s.span_id, s]));
  t.spans.forEach((s, i) => {
    // Gap: from the parent's start to this span's start (time the parent spent before calling).
    const parent = s.parent_in_trace ? byId[s.parent_span_id] : null;
    const track = el("div", { class: "wf-track" });
    if (parent && s.start_ms > parent.start_ms) {
      track.append(el("div", { class: "wf-gap", style: `left:${pct(parent.start_ms)};width:${pct(s.start_ms - parent.start_ms)}`, title: "gap " + fmtMs(s.start_ms - parent.start_ms) }));
    }
    track.append(el("div", { class: "wf-bar", style: `left:${pct(s.start_ms)};width:${pct(s.duration_ms)}` }));
    for (const [a, b] of s.critical_sections) {
      track.append(el("div", { class: "wf-crit", style: `left:${pct(a)};width:${pct(b - a)}` }));
    }
    const indent = "\u00a0\u00a0".repeat(s.depth) + (s.depth ? "└ " : "");
    rows.push(el("div", {
      class: "wf-row span-row" + (s.critical ? " critical" : "") + (s.error ? " error" : ""),
      "data-span-id": s.span_id, "data-parent-id": s.parent_span_id || "", "data-depth": s.depth,
      "data-critical": s.critical ? "true" : "false", "data-error": s.error ? "true" : "false",
      "data-service": s.service, "data-name": s.name, "data-kind": s.kind,
      title: `${s.service} ${s.kind} ${s.name}: ${fmtMs(s.duration_ms)} (parent via ${s.parent_source || "?"})`,
      onclick: () => showSpan(s, i),
    },
      el("div", { class: "wf-label" }, el("span", { class: "tree", text: indent }),
        s.critical ? el("span", { class: "cp", text: "●", title: "on the critical path" }) : null,
        el("span", { class: "svc", text: s.service }), kindTag(s.kind), el("span", { class: "mono", text: s.name })),
      track,
      el("div", { class: "wf-dur", text: fmtMs(s.duration_ms) }),
    ));
  });
  document.getElementById("waterfall").replaceChildren(...rows);
  state.trace = t;
  const keep = t.spans.findIndex((s) => s.span_id === state.selectedSpan);
  showSpan(t.spans[keep >= 0 ? keep : 0], keep >= 0 ? keep : 0);
}
function showSpan(s, i) {
  state.selectedSpan = s.span_id;
  document.querySelectorAll(".wf-row.span-row").forEach((r, j) => r.classList.toggle("selected", j === i));
  const d = document.getElementById("span-detail");
  d.hidden = false;
  const kv = (k, v, cls) => el("tr", {}, el("td", { text: k }), el("td", { class: cls || "", text: String(v) }));
  d.replaceChildren(
    el("h3", {}, el("span", { class: "svc", text: s.service }), " ", kindTag(s.kind), " ", el("span", { class: "mono", text: s.name })),
    el("p", {}, "parent found by ", el("span", { class: "source", "data-parent-source": s.parent_source, text: s.parent_source || "?" }),
      " — ", SOURCES[s.parent_source] || ""),
    el("div", { class: "detail-cols" },
      el("table", {},
        kv("span id", s.span_id), kv("parent span id", s.parent_span_id || "(none)"),
        kv("start", "+" + fmtMs(s.start_ms)), kv("duration", fmtMs(s.duration_ms)),
        s.error ? kv("status", "ERROR" + (s.status_message ? ": " + s.status_message : ""), "bad") : null,
        kv("critical path", s.critical ? s.critical_sections.map(([a, b]) => `+${fmtMs(a)} … +${fmtMs(b)}`).join(", ") : "no"),
        ...s.attributes.map(([k, v]) => kv(k, v))),
      el("table", {},
        el("tr", {}, el("td", { colspan: 2, class: "group", text: "process (resource)" })),
        ...s.resource.map(([k, v]) => kv(k, v)))),
  );
}

// ---- navigation ------------------------------------------------------------------------
function route() {
  const h = new URLSearchParams(location.hash.slice(1));
  const trace = h.get("trace"), r = h.get("route");
  document.getElementById("trace-card").hidden = !trace;
  document.getElementById("route-card").hidden = !r;
  if (trace) showTrace(trace).catch(console.error);
  if (r) {
    try { const [s, k, n] = JSON.parse(r); showRoute(s, k, n).catch(console.error); } catch (e) { console.error(e); }
  }
  if (trace || r) window.scrollTo(0, 0);
}
window.addEventListener("hashchange", route);

async function refresh() {
  await Promise.all([loadRoutes(), loadMap(), loadStats()].map((p) => p.catch(console.error)));
}
route();
refresh();
startLive().catch(console.error);
setInterval(refresh, 2000);
