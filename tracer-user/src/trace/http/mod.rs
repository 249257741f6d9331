//! Turning an [`HttpExchange`] into a [`Span`], following the OpenTelemetry HTTP semantic
//! conventions (stable): span kind, name, `http.*`, `url.*`, `server.*`, `client.*`,
//! `network.*` and `user_agent.*` attributes, and span status. gRPC calls get the RPC
//! conventions on top (the `grpc` module).
//!
//! Decisions worth knowing:
//! - The span name is `{method} {http.route}` for both kinds (the route comes from the
//!   [`route_of`] heuristic, so names stay bounded); `{method}` alone when the target has no
//!   path (CONNECT, `OPTIONS *`). A method outside RFC 9110 + PATCH (case-sensitive) is
//!   reported as `http.request.method=_OTHER` with `http.request.method_original`, and named
//!   `HTTP {route}`.
//! - The request target's authority (absolute-form `GET http://h/p` through a proxy, or a
//!   CONNECT's authority-form) wins over the `Host` header, which wins over the connection's
//!   address (remote for CLIENT, local for SERVER) for `server.address`/`server.port`. When
//!   the host comes from a target or `Host` without a port, the port is the scheme's default
//!   (80/443), as RFC 9110 defines; the connection's port is used only with its address.
//! - `url.query` and `url.full` carry the query as the request sent it: redacting its values
//!   is policy, done by the span pipeline's redaction stage (`crate::pipeline::redact`).
//!   Credentials in the target (`user:password@`) are never copied: the conventions forbid it.
//! - An exchange without a response gets status Error, message "no response" and
//!   `error.type=no_response`. Otherwise SERVER spans are Error for 5xx, CLIENT spans for 4xx
//!   and 5xx, with `error.type` the status code.
//! - Trace context ([`SpanContext`]) is resolved by the caller ([`super::parent`]: incoming
//!   `traceparent`/B3 headers, in-process thread links, or a new root); every span records how
//!   in `tracer.parent.source` (`w3c`, `b3`, `thread`, `none`).
mod target;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::Arc;

use self::target::{Target, default_port, parse_target, split_host_port};
use super::address::ip_text;
use super::route::route_of;
use super::{Clock, SpanContext, grpc};
use crate::conn::ConnMeta;
use crate::protocol::{Direction, HeaderList, HttpExchange, RequestHead};
use crate::span::{AttrValue, Attributes, Resource, Span, SpanKind, StatusCode, truncate_value};

/// `http.request.method_original` is cut to this many bytes.
const MAX_METHOD_LEN: usize = 64;

/// A captured header's values are cut to this many bytes in all...
const MAX_HEADER_VALUE_LEN: usize = 1024;
/// ... and to this many values (field lines).
const MAX_HEADER_VALUES: usize = 16;
/// Span attribute: captured header values left out or cut short by those bounds.
pub const HEADER_VALUES_CUT: &str = "tracer.http.header_values_cut";

/// How exchanges become spans (agent configuration).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanOptions {
    /// `url.scheme` (and the scheme of `url.full`, and the default port) when the request
    /// target does not name one. "http" until TLS capture exists.
    pub scheme: &'static str,
    /// Request headers copied into `http.request.header.<name>` attributes.
    pub request_headers: Vec<CapturedHeader>,
    /// Response headers copied into `http.response.header.<name>` attributes.
    pub response_headers: Vec<CapturedHeader>,
}

impl Default for SpanOptions {
    fn default() -> Self {
        Self {
            scheme: "http",
            request_headers: Vec::new(),
            response_headers: Vec::new(),
        }
    }
}

/// A header to capture (`--capture-request-header`, `--capture-response-header`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapturedHeader {
    /// Lower case.
    pub name: String,
    /// `http.request.header.<name>` / `http.response.header.<name>`.
    pub key: &'static str,
}

impl SpanOptions {
    /// Captures these headers (lower-case names, sensitive ones already filtered out). The
    /// attribute keys live as long as the agent (made once, at start-up).
    pub fn with_headers(self, request: &[String], response: &[String]) -> Self {
        let captured = |prefix: &str, names: &[String]| -> Vec<CapturedHeader> {
            names
                .iter()
                .map(|n| CapturedHeader {
                    name: n.to_ascii_lowercase(),
                    key: Box::leak(format!("{prefix}{}", n.to_ascii_lowercase()).into_boxed_str()),
                })
                .collect()
        };
        Self {
            request_headers: captured("http.request.header.", request),
            response_headers: captured("http.response.header.", response),
            ..self
        }
    }
}

/// A span's status as the conventions decide it: from the HTTP response, then (gRPC) from
/// the call's own status.
pub(super) struct SpanStatus {
    pub(super) code: StatusCode,
    pub(super) message: Option<String>,
}

/// Builds the span for one exchange, in the trace context `ctx` (resolved by the caller: see
/// [`super::parent`]). Attributes come in a fixed order: method, URL and server, peer, the
/// rest of the request, response, RPC, then the agent's own.
pub fn span_from_exchange(
    ex: &HttpExchange,
    conn: &ConnMeta,
    resource: Arc<Resource>,
    clock: &Clock,
    opts: &SpanOptions,
    ctx: SpanContext,
) -> Span {
    let kind = match ex.request_direction {
        Direction::Ingress => SpanKind::Server,
        Direction::Egress => SpanKind::Client,
    };
    let req = &ex.request;
    let target = parse_target(&req.method, &req.target);
    let mut attrs: Attributes = Vec::with_capacity(20);

    let method_name = push_method(&mut attrs, &req.method);
    let route = push_url_and_server(&mut attrs, &target, req, conn, kind, opts);
    push_peer(&mut attrs, conn, kind);
    push_request_details(&mut attrs, ex);
    push_headers(&mut attrs, &opts.request_headers, &req.headers);
    let mut status = response_status(&mut attrs, ex, kind);
    if let Some(resp) = &ex.response {
        push_headers(&mut attrs, &opts.response_headers, &resp.headers);
    }
    let rpc_name = if grpc::is_grpc(ex) {
        grpc::push_call(&mut attrs, &mut status, ex, target.path, kind)
    } else {
        None
    };
    push_agent_attributes(&mut attrs, ex, &ctx);

    let name = match (rpc_name, &route) {
        (Some(rpc), _) => rpc,
        // Sized at once (`format!` starts small and grows).
        (None, Some(r)) => [method_name, " ", r].concat(),
        (None, None) => method_name.to_owned(),
    };
    let start_unix_ns = clock.to_unix_ns(ex.start_ns);
    let end_unix_ns = clock.to_unix_ns(ex.end_ns).max(start_unix_ns);
    let events = grpc::message_events(&ex.messages, clock, start_unix_ns, end_unix_ns);

    Span {
        trace_id: ctx.trace_id,
        span_id: ctx.span_id,
        parent_span_id: ctx.parent_span_id,
        trace_state: ctx.trace_state,
        flags: ctx.flags,
        name,
        kind,
        start_unix_ns,
        end_unix_ns,
        attributes: attrs,
        status: status.code,
        status_message: status.message,
        resource,
        events,
        dropped_events: ex.messages_dropped,
    }
}

/// `http.request.method` (and `http.request.method_original` for a method the conventions do
/// not know); returns the method's part of the span name.
fn push_method<'a>(attrs: &mut Attributes, method: &'a str) -> &'a str {
    if let Some(known) = known_method(method) {
        attrs.push(("http.request.method", AttrValue::fixed(known)));
        return method;
    }
    // An empty method is an HTTP/2 `:method` that is not known (see `parse_target`): left out.
    if !method.is_empty() {
        attrs.push(("http.request.method", AttrValue::fixed("_OTHER")));
        attrs.push((
            "http.request.method_original",
            truncate_value(method, MAX_METHOD_LEN).into(),
        ));
    }
    "HTTP"
}

/// The methods of RFC 9110 and PATCH (RFC 5789), case-sensitive, as the conventions define
/// "known" methods.
const KNOWN_METHODS: [&str; 9] = [
    "CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE",
];

/// `m` as one of [`KNOWN_METHODS`], if it is one.
fn known_method(m: &str) -> Option<&'static str> {
    KNOWN_METHODS.iter().copied().find(|k| *k == m)
}

/// `url.scheme`, `url.path`, `url.query`, `url.full` (CLIENT spans), `http.route`,
/// `server.address` and `server.port`. Returns the route, for the span name.
fn push_url_and_server<'a>(
    attrs: &mut Attributes,
    target: &Target<'a>,
    req: &'a RequestHead,
    conn: &ConnMeta,
    kind: SpanKind,
    opts: &SpanOptions,
) -> Option<Cow<'a, str>> {
    let scheme: Cow<'static, str> = match target.scheme {
        Some(s) => Cow::Owned(s.to_ascii_lowercase()),
        // Plaintext from the TLS probes: the request was made over TLS.
        None if conn.tls => Cow::Borrowed("https"),
        None => Cow::Borrowed(opts.scheme),
    };
    attrs.push(("url.scheme", AttrValue::Str(scheme.clone())));
    let query = target.query.filter(|q| !q.is_empty());
    if let Some(path) = target.path {
        attrs.push(("url.path", path.into()));
    }
    if let Some(q) = query {
        attrs.push(("url.query", q.into()));
    }
    let (host, port) = server_address(target, &req.headers, conn, kind, &scheme);
    if kind == SpanKind::Client
        && let Some(path) = target.path
    {
        let full = url_full(&scheme, target.userinfo, &host, port, path, query);
        attrs.push(("url.full", full.into()));
    }
    let route = target.path.map(route_of);
    if let Some(r) = &route {
        attrs.push(("http.route", r.as_ref().into()));
    }
    attrs.push(("server.address", host.into_owned().into()));
    attrs.push(("server.port", i64::from(port).into()));
    route
}

/// The server the request was for: the target's authority, else `Host`, else the
/// connection's server end.
fn server_address<'a>(
    target: &Target<'a>,
    headers: &'a HeaderList,
    conn: &ConnMeta,
    kind: SpanKind,
    scheme: &str,
) -> (Cow<'a, str>, u16) {
    let named = target
        .authority
        .or_else(|| header(headers, "host"))
        .map(split_host_port)
        .filter(|(h, _)| !h.is_empty());
    if let Some((host, port)) = named {
        return (
            Cow::Borrowed(host),
            port.unwrap_or_else(|| default_port(scheme)),
        );
    }
    let conn_server = match kind {
        SpanKind::Client => conn.remote,
        SpanKind::Server => conn.local,
    };
    (Cow::Owned(ip_text(conn_server.ip())), conn_server.port())
}

/// What `url.full` carries in place of a request target's `user:password@` (always: the
/// conventions forbid exporting credentials).
pub const REDACTED_USERINFO: &str = "REDACTED:REDACTED@";

/// `scheme://[REDACTED:REDACTED@]host[:port]/path[?query]`, the port only when it is not
/// the scheme's default, an IPv6 host in brackets.
fn url_full(
    scheme: &str,
    userinfo: bool,
    host: &str,
    port: u16,
    path: &str,
    query: Option<&str>,
) -> String {
    // Sized at once: "://", brackets, ":65535", "/" and "?" fit in 16.
    let mut full = String::with_capacity(
        16 + scheme.len()
            + if userinfo { REDACTED_USERINFO.len() } else { 0 }
            + host.len()
            + path.len()
            + query.map_or(0, str::len),
    );
    full.push_str(scheme);
    full.push_str("://");
    if userinfo {
        full.push_str(REDACTED_USERINFO);
    }
    if host.contains(':') {
        full.push('[');
        full.push_str(host);
        full.push(']');
    } else {
        full.push_str(host);
    }
    if port != default_port(scheme) {
        // Infallible: writing to a String.
        let _ = write!(full, ":{port}");
    }
    if !path.starts_with('/') {
        full.push('/');
    }
    full.push_str(path);
    if let Some(q) = query {
        full.push('?');
        full.push_str(q);
    }
    full
}

/// `client.*` (SERVER spans) and `network.peer.*`: the connection's other end.
fn push_peer(attrs: &mut Attributes, conn: &ConnMeta, kind: SpanKind) {
    let peer = ip_text(conn.remote.ip());
    if kind == SpanKind::Server {
        attrs.push(("client.address", peer.clone().into()));
        attrs.push(("client.port", i64::from(conn.remote.port()).into()));
    }
    attrs.push(("network.peer.address", peer.into()));
    attrs.push(("network.peer.port", i64::from(conn.remote.port()).into()));
}

/// `network.protocol.version`, `user_agent.original` and `http.request.body.size`.
fn push_request_details(attrs: &mut Attributes, ex: &HttpExchange) {
    let req = &ex.request;
    if !req.version.is_empty() {
        attrs.push(("network.protocol.version", AttrValue::fixed(req.version)));
    }
    if let Some(ua) = header(&req.headers, "user-agent") {
        attrs.push(("user_agent.original", ua.into()));
    }
    // Sizes of an incomplete exchange are lower bounds at best (bytes went unseen): a body
    // size attribute must be exact, so it is left out rather than wrong.
    if !ex.incomplete && (ex.request_body_size > 0 || has_body_framing(&req.headers)) {
        attrs.push((
            "http.request.body.size",
            saturating_i64(ex.request_body_size).into(),
        ));
    }
}

/// `http.response.status_code`, `http.response.body.size` and `error.type`, and the status
/// they give the span.
fn response_status(attrs: &mut Attributes, ex: &HttpExchange, kind: SpanKind) -> SpanStatus {
    let Some(resp) = &ex.response else {
        attrs.push(("error.type", AttrValue::fixed("no_response")));
        return SpanStatus {
            code: StatusCode::Error,
            message: Some("no response".to_owned()),
        };
    };
    let unset = SpanStatus {
        code: StatusCode::Unset,
        message: None,
    };
    // A response whose status is not known (HTTP/2: its head was in bytes the agent did not
    // see): no status code and no error rather than a wrong one.
    if resp.status == 0 {
        return unset;
    }
    attrs.push(("http.response.status_code", i64::from(resp.status).into()));
    if !ex.incomplete && (ex.response_body_size > 0 || has_body_framing(&resp.headers)) {
        attrs.push((
            "http.response.body.size",
            saturating_i64(ex.response_body_size).into(),
        ));
    }
    let error = match kind {
        SpanKind::Server => resp.status >= 500,
        SpanKind::Client => resp.status >= 400,
    };
    if !error {
        return unset;
    }
    attrs.push(("error.type", resp.status.to_string().into()));
    SpanStatus {
        code: StatusCode::Error,
        message: None,
    }
}

/// The agent's own attributes: `tracer.incomplete`, `tracer.parent.source` and
/// `tracer.traceparent.injected`.
fn push_agent_attributes(attrs: &mut Attributes, ex: &HttpExchange, ctx: &SpanContext) {
    if ex.incomplete {
        attrs.push(("tracer.incomplete", true.into()));
    }
    attrs.push((
        "tracer.parent.source",
        AttrValue::fixed(ctx.source.as_str()),
    ));
    if ex.injected.is_some() {
        // The request left with a `traceparent` the agent added, naming this span.
        attrs.push(("tracer.traceparent.injected", true.into()));
    }
}

/// The first value of header `name` (case-insensitive).
pub(super) fn header<'a>(headers: &'a HeaderList, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The captured headers present in `headers`: one string-array attribute each, an element per
/// field line (the semantic conventions' form; a line's own commas are kept), at most
/// [`MAX_HEADER_VALUES`] elements and [`MAX_HEADER_VALUE_LEN`] bytes in all per header. Values
/// left out or cut short are counted in [`HEADER_VALUES_CUT`].
fn push_headers(attrs: &mut Attributes, captured: &[CapturedHeader], headers: &HeaderList) {
    let mut cut = 0i64;
    for c in captured {
        let mut values: Vec<String> = Vec::new();
        let mut budget = MAX_HEADER_VALUE_LEN;
        for (_, v) in headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(&c.name))
        {
            if values.len() == MAX_HEADER_VALUES || budget == 0 {
                cut += 1;
                continue;
            }
            let kept = truncate_value(v, budget);
            if kept.len() < v.len() {
                cut += 1;
            }
            budget -= kept.len();
            values.push(kept.to_owned());
        }
        if !values.is_empty() {
            attrs.push((c.key, values.into()));
        }
    }
    if cut > 0 {
        let total = attrs.iter_mut().find(|(k, _)| *k == HEADER_VALUES_CUT);
        match total {
            Some((_, AttrValue::Int(n))) => *n += cut,
            _ => attrs.push((HEADER_VALUES_CUT, cut.into())),
        }
    }
}

/// The message declared a body (even an empty one).
fn has_body_framing(headers: &HeaderList) -> bool {
    header(headers, "content-length").is_some() || header(headers, "transfer-encoding").is_some()
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
