//! The view's read-only HTTP API and the page's files (JSON; see the README for each endpoint):
//!
//! ```text
//! GET /                       the page (index.html, app.js, style.css: in the binary)
//! GET /api/stats              the store's counters
//! GET /api/services           per service: requests, errors, rate (1 min)
//! GET /api/routes             per (service, kind, route): RED and quantiles; window=1m|5m
//! GET /api/spans              matching spans, newest first (order=slowest: longest first)
//! GET /api/traces             matching spans, at most one per trace (the longest)
//! GET /api/traces/{id}        every stored span of one trace, in tree order, critical path
//! GET /api/service-map        client → server edges with rate and error share
//! GET /api/stream             live span summaries (Server-Sent Events)
//! ```
//!
//! Filters (spans, traces): `service`, `route` (the span name), `kind` (server|client),
//! `min_duration_ms`, `status` (error|ok), `since`/`until` (Unix ms), `limit` (1..=1000,
//! default 100), `order` (recent|slowest). Anything else, or a bad value, is a 400 whose JSON
//! body says why.
use std::{
    convert::Infallible,
    sync::Arc,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{StatusCode, header},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::get,
};
use serde_json::{Value, json};
use tokio_stream::{StreamExt, wrappers::ReceiverStream};

use crate::span::{AttrValue, SpanKind, TraceId};

use super::{
    critical_path::{Node, critical_path},
    service_map::MetricServiceMap,
    store::{Order, RecentStore, SpanFilter, StoredSpan, hex, kind_name},
    window::Window,
};

/// Most rows a list answers.
pub const MAX_LIMIT: usize = 1000;
const DEFAULT_LIMIT: usize = 100;

/// What the handlers share.
pub struct UiState {
    pub store: Arc<RecentStore>,
    pub service_map: MetricServiceMap,
    /// Events a live client may have waiting before it is dropped.
    pub live_queue: usize,
}

pub fn router(state: Arc<UiState>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| static_file("text/html; charset=utf-8", INDEX_HTML)),
        )
        .route(
            "/app.js",
            get(|| static_file("text/javascript; charset=utf-8", APP_JS)),
        )
        .route(
            "/style.css",
            get(|| static_file("text/css; charset=utf-8", STYLE_CSS)),
        )
        .route("/api/stats", get(stats))
        .route("/api/services", get(services))
        .route("/api/routes", get(routes))
        .route("/api/spans", get(spans))
        .route("/api/traces", get(traces))
        .route("/api/traces/{id}", get(trace))
        .route("/api/service-map", get(service_map))
        .route("/api/stream", get(stream))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint".into()) })
        .with_state(state)
}

const INDEX_HTML: &str = include_str!("static/index.html");
const APP_JS: &str = include_str!("static/app.js");
const STYLE_CSS: &str = include_str!("static/style.css");

async fn static_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// A 4xx with its reason as `{"error": "..."}`.
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn new(status: StatusCode, reason: String) -> Self {
        Self(status, reason)
    }
    fn bad(reason: String) -> Self {
        Self(StatusCode::BAD_REQUEST, reason)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

type Params = Query<Vec<(String, String)>>;

fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Refuses parameters other than `allowed`.
fn only(params: &[(String, String)], allowed: &[&str]) -> Result<(), ApiError> {
    match params.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
        Some((k, _)) => Err(ApiError::bad(format!(
            "unknown parameter {k:?} (allowed: {})",
            allowed.join(", ")
        ))),
        None => Ok(()),
    }
}

fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn window(params: &[(String, String)]) -> Result<Window, ApiError> {
    match param(params, "window") {
        None | Some("1m") => Ok(Window::OneMinute),
        Some("5m") => Ok(Window::FiveMinutes),
        Some(w) => Err(ApiError::bad(format!("window: {w:?} is not 1m or 5m"))),
    }
}

fn number<T: std::str::FromStr>(
    params: &[(String, String)],
    key: &str,
) -> Result<Option<T>, ApiError> {
    param(params, key)
        .map(|v| {
            v.parse()
                .map_err(|_| ApiError::bad(format!("{key}: {v:?} is not a valid number")))
        })
        .transpose()
}

const FILTER_KEYS: &[&str] = &[
    "service",
    "route",
    "kind",
    "min_duration_ms",
    "status",
    "since",
    "until",
    "limit",
    "order",
];

/// The list parameters: filter, order, limit.
fn list_query(params: &[(String, String)]) -> Result<(SpanFilter, Order, usize), ApiError> {
    only(params, FILTER_KEYS)?;
    let min_ms: f64 = number(params, "min_duration_ms")?.unwrap_or(0.0);
    if !(min_ms.is_finite() && min_ms >= 0.0) {
        return Err(ApiError::bad(format!(
            "min_duration_ms: {min_ms} is not a duration"
        )));
    }
    let ms_to_ns = |ms: u64| ms.saturating_mul(1_000_000);
    let filter = SpanFilter {
        service: param(params, "service").map(str::to_owned),
        route: param(params, "route").map(str::to_owned),
        kind: match param(params, "kind") {
            None => None,
            Some("server") => Some(SpanKind::Server),
            Some("client") => Some(SpanKind::Client),
            Some(k) => {
                return Err(ApiError::bad(format!(
                    "kind: {k:?} is not server or client"
                )));
            }
        },
        min_duration_ns: (min_ms * 1e6) as u64,
        error: match param(params, "status") {
            None => None,
            Some("error") => Some(true),
            Some("ok") => Some(false),
            Some(s) => return Err(ApiError::bad(format!("status: {s:?} is not error or ok"))),
        },
        since_unix_ns: number::<u64>(params, "since")?.map(ms_to_ns),
        until_unix_ns: number::<u64>(params, "until")?.map(ms_to_ns),
    };
    if let (Some(s), Some(u)) = (filter.since_unix_ns, filter.until_unix_ns)
        && s > u
    {
        return Err(ApiError::bad("since is after until".into()));
    }
    let order = match param(params, "order") {
        None | Some("recent") => Order::Recent,
        Some("slowest") => Order::Slowest,
        Some(o) => {
            return Err(ApiError::bad(format!(
                "order: {o:?} is not recent or slowest"
            )));
        }
    };
    let limit = number::<usize>(params, "limit")?.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad(format!(
            "limit: {limit} is not within 1..={MAX_LIMIT}"
        )));
    }
    Ok((filter, order, limit))
}

async fn stats(
    State(state): State<Arc<UiState>>,
    Query(params): Params,
) -> Result<Response, ApiError> {
    only(&params, &[])?;
    Ok(Json(state.store.stats()).into_response())
}

/// One service's totals over a window (`/api/services`).
#[derive(Default, serde::Serialize)]
struct ServiceRow {
    service: String,
    routes: usize,
    server_requests: u64,
    server_errors: u64,
    client_requests: u64,
    client_errors: u64,
    /// Incoming requests per second.
    rate: f64,
}

async fn services(
    State(state): State<Arc<UiState>>,
    Query(params): Params,
) -> Result<Response, ApiError> {
    only(&params, &["window"])?;
    let window = window(&params)?;
    let mut by_service: std::collections::BTreeMap<String, ServiceRow> = Default::default();
    for r in state.store.routes(now_unix_ns(), window, None) {
        let row = by_service
            .entry(r.service.clone())
            .or_insert_with(|| ServiceRow {
                service: r.service.clone(),
                ..ServiceRow::default()
            });
        row.routes += 1;
        if r.kind == "server" {
            row.server_requests += r.count;
            row.server_errors += r.errors;
            row.rate += r.rate;
        } else {
            row.client_requests += r.count;
            row.client_errors += r.errors;
        }
    }
    Ok(Json(by_service.into_values().collect::<Vec<_>>()).into_response())
}

async fn routes(
    State(state): State<Arc<UiState>>,
    Query(params): Params,
) -> Result<Response, ApiError> {
    only(&params, &["window", "service"])?;
    let window = window(&params)?;
    let rows = state
        .store
        .routes(now_unix_ns(), window, param(&params, "service"));
    Ok(Json(rows).into_response())
}

async fn spans(
    State(state): State<Arc<UiState>>,
    Query(params): Params,
) -> Result<Response, ApiError> {
    let (filter, order, limit) = list_query(&params)?;
    Ok(Json(state.store.spans(&filter, order, limit, false)).into_response())
}

async fn traces(
    State(state): State<Arc<UiState>>,
    Query(params): Params,
) -> Result<Response, ApiError> {
    let (filter, order, limit) = list_query(&params)?;
    Ok(Json(state.store.spans(&filter, order, limit, true)).into_response())
}

fn parse_trace_id(id: &str) -> Option<TraceId> {
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&id[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

async fn trace(
    State(state): State<Arc<UiState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let trace_id = parse_trace_id(&id)
        .ok_or_else(|| ApiError::bad(format!("trace id {id:?} is not 32 hexadecimal digits")))?;
    let spans = state.store.trace(&trace_id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("trace {id} is not (or no longer) in this node's store"),
        )
    })?;
    Ok(Json(trace_json(&trace_id, spans)).into_response())
}

/// A trace as the waterfall draws it: spans in tree order (each after its parent, siblings by
/// start), times in ms from the trace's first start, the critical path's sections per span.
pub fn trace_json(trace_id: &TraceId, spans: Vec<StoredSpan>) -> Value {
    let index_of = |id| spans.iter().position(|s| s.span_id == id);
    let nodes: Vec<Node> = spans
        .iter()
        .map(|s| Node {
            parent: s.parent_span_id.and_then(index_of),
            start: s.start_unix_ns,
            end: s.end_unix_ns,
        })
        .collect();
    let mut sections: Vec<Vec<(u64, u64)>> = vec![Vec::new(); spans.len()];
    for s in critical_path(&nodes) {
        sections[s.span].push((s.start, s.end));
    }
    // The walk goes back in time; a reader reads forwards.
    sections.iter_mut().for_each(|s| s.sort_unstable());
    let t0 = spans.iter().map(|s| s.start_unix_ns).min().unwrap_or(0);
    let t1 = spans.iter().map(|s| s.end_unix_ns).max().unwrap_or(0);
    let rel_ms = |t: u64| t.saturating_sub(t0) as f64 / 1e6;

    // Tree order: depth-first from the roots, siblings by start.
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); spans.len()];
    let mut roots = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        match n.parent {
            Some(p) if p != i => children[p].push(i),
            _ => roots.push(i),
        }
    }
    let by_start = |v: &mut Vec<usize>| v.sort_by_key(|&i| (spans[i].start_unix_ns, spans[i].seq));
    by_start(&mut roots);
    children.iter_mut().for_each(by_start);
    let mut order = Vec::with_capacity(spans.len());
    let mut stack: Vec<(usize, usize)> = roots.iter().rev().map(|&r| (r, 0)).collect();
    let mut seen = vec![false; spans.len()];
    while let Some((i, depth)) = stack.pop() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        order.push((i, depth));
        stack.extend(children[i].iter().rev().map(|&c| (c, depth + 1)));
    }

    let rows: Vec<Value> = order
        .into_iter()
        .map(|(i, depth)| {
            let s = &spans[i];
            let attrs: Vec<Value> = s
                .attributes
                .iter()
                .map(|(k, v)| json!([k, attr_json(v)]))
                .collect();
            let resource: Vec<Value> = s
                .resource
                .attributes
                .iter()
                .map(|(k, v)| json!([k, attr_json(v)]))
                .collect();
            let parent_source = match s.attr("tracer.parent.source") {
                Some(AttrValue::Str(v)) => &**v,
                _ => "",
            };
            json!({
                "span_id": hex(&s.span_id),
                "parent_span_id": s.parent_span_id.map(|p| hex(&p)),
                "parent_in_trace": nodes[i].parent.is_some(),
                "depth": depth,
                "name": s.name,
                "kind": kind_name(s.kind),
                "service": s.service(),
                "pid": s.resource.pid,
                "start_ms": rel_ms(s.start_unix_ns),
                "duration_ms": s.duration_ns() as f64 / 1e6,
                "error": s.error,
                "status_message": s.status_message,
                "parent_source": parent_source,
                "critical": !sections[i].is_empty(),
                "critical_sections": sections[i].iter()
                    .map(|&(a, b)| json!([rel_ms(a), rel_ms(b)])).collect::<Vec<_>>(),
                "attributes": attrs,
                "resource": resource,
            })
        })
        .collect();
    json!({
        "trace_id": hex(trace_id),
        "start_unix_ms": t0 as f64 / 1e6,
        "duration_ms": t1.saturating_sub(t0) as f64 / 1e6,
        "spans": rows,
    })
}

fn attr_json(v: &AttrValue) -> Value {
    match v {
        AttrValue::Str(s) => json!(s),
        AttrValue::Int(i) => json!(i),
        AttrValue::Bool(b) => json!(b),
        AttrValue::StrArray(a) => json!(a),
    }
}

async fn service_map(
    State(state): State<Arc<UiState>>,
    Query(params): Params,
) -> Result<Response, ApiError> {
    only(&params, &["window"])?;
    let window = window(&params)?;
    let (source, edges) = match state.service_map.edges(Instant::now()) {
        Some(edges) => ("metrics", edges),
        None => ("spans", state.store.edges(now_unix_ns(), window)),
    };
    Ok(Json(json!({ "source": source, "edges": edges })).into_response())
}

async fn stream(
    State(state): State<Arc<UiState>>,
    Query(params): Params,
) -> Result<Response, ApiError> {
    only(&params, &[])?;
    let events = ReceiverStream::new(state.store.subscribe(state.live_queue))
        .map(|json| Ok::<_, Infallible>(Event::default().event("span").data(&*json)));
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}
