//! Turning an [`HttpExchange`] into a [`Span`], following the OpenTelemetry HTTP semantic
//! conventions (stable): span kind, name, `http.*`, `url.*`, `server.*`, `client.*`,
//! `network.*` and `user_agent.*` attributes, and span status.
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
//! - `url.query` keeps parameter names and replaces each value with `REDACTED` unless
//!   [`SpanOptions::redact_query`] is false. A parameter without `=` is kept as it is.
//! - An exchange without a response gets status Error, message "no response" and
//!   `error.type=no_response`. Otherwise SERVER spans are Error for 5xx, CLIENT spans for 4xx
//!   and 5xx, with `error.type` the status code.
//! - Trace context ([`SpanContext`]) is resolved by the caller (`crate::trace::links`: incoming
//!   `traceparent`/B3 headers, in-process thread links, or a new root); every span records how
//!   in `tracer.parent.source` (`w3c`, `b3`, `thread`, `none`).
use std::borrow::Cow;
use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::Arc;

use super::Clock;
use super::context::{FLAG_SAMPLED, ParentSource, RemoteContext};
use crate::conn::ConnMeta;
use crate::protocol::{Direction, HeaderList, HttpExchange, http2::RpcMessage};
use crate::span::{
    Attributes, Resource, Span, SpanEvent, SpanId, SpanKind, StatusCode, TraceId, truncate_value,
};

/// Value that replaces each query parameter's value when redacting.
pub const REDACTED: &str = "REDACTED";
/// [`route_of`] keeps at most this many path segments, then appends `/...`.
pub const MAX_ROUTE_SEGMENTS: usize = 8;
/// `http.request.method_original` is cut to this many bytes.
const MAX_METHOD_LEN: usize = 64;

/// How exchanges become spans (agent configuration).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanOptions {
    /// Replace each query parameter's value with `REDACTED` in `url.query` and `url.full`.
    pub redact_query: bool,
    /// `url.scheme` (and the scheme of `url.full`, and the default port) when the request
    /// target does not name one. "http" until TLS capture exists.
    pub scheme: &'static str,
}

impl Default for SpanOptions {
    fn default() -> Self {
        Self {
            redact_query: true,
            scheme: "http",
        }
    }
}

/// Builds the span for one exchange, in the trace context `ctx` (resolved by the caller: see
/// [`crate::trace::links`]).
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
    let mut attrs: Attributes = Vec::with_capacity(20);

    // Method.
    let known = is_known_method(&req.method);
    let method_name = if known { req.method.as_str() } else { "HTTP" };
    if known {
        attrs.push(("http.request.method", req.method.as_str().into()));
    } else if req.method.is_empty() {
        // HTTP/2 `:method` not known (see `parse_target`): left out.
    } else {
        attrs.push(("http.request.method", "_OTHER".into()));
        attrs.push((
            "http.request.method_original",
            truncate_value(&req.method, MAX_METHOD_LEN).into(),
        ));
    }

    // Target.
    let target = parse_target(&req.method, &req.target);
    let scheme: Cow<'_, str> = match target.scheme {
        Some(s) => Cow::Owned(s.to_ascii_lowercase()),
        // Plaintext from the TLS probes: the request was made over TLS.
        None if conn.tls => Cow::Borrowed("https"),
        None => Cow::Borrowed(opts.scheme),
    };
    attrs.push(("url.scheme", scheme.as_ref().into()));
    let query = target.query.filter(|q| !q.is_empty()).map(|q| {
        if opts.redact_query {
            redact_query(q)
        } else {
            Cow::Borrowed(q)
        }
    });
    let route = target.path.map(route_of);
    if let Some(path) = target.path {
        attrs.push(("url.path", path.into()));
    }
    if let Some(q) = &query {
        attrs.push(("url.query", q.as_ref().into()));
    }

    // Server address: target authority, else Host, else the connection's server end.
    let conn_server = match kind {
        SpanKind::Client => conn.remote,
        SpanKind::Server => conn.local,
    };
    let named = target
        .authority
        .or_else(|| header(&req.headers, "host"))
        .map(split_host_port)
        .filter(|(h, _)| !h.is_empty());
    let (server_host, server_port): (Cow<'_, str>, u16) = match named {
        Some((h, p)) => (Cow::Borrowed(h), p.unwrap_or_else(|| default_port(&scheme))),
        None => (Cow::Owned(ip_string(conn_server.ip())), conn_server.port()),
    };

    if kind == SpanKind::Client
        && let Some(path) = target.path
    {
        let mut full = String::with_capacity(16 + server_host.len() + path.len());
        full.push_str(&scheme);
        full.push_str("://");
        if target.userinfo {
            full.push_str("REDACTED:REDACTED@");
        }
        if server_host.contains(':') {
            full.push('[');
            full.push_str(&server_host);
            full.push(']');
        } else {
            full.push_str(&server_host);
        }
        if server_port != default_port(&scheme) {
            full.push(':');
            full.push_str(&server_port.to_string());
        }
        if !path.starts_with('/') {
            full.push('/');
        }
        full.push_str(path);
        if let Some(q) = &query {
            full.push('?');
            full.push_str(q);
        }
        attrs.push(("url.full", full.into()));
    }
    if let Some(r) = &route {
        attrs.push(("http.route", r.as_ref().into()));
    }
    attrs.push(("server.address", server_host.into_owned().into()));
    attrs.push(("server.port", i64::from(server_port).into()));
    if kind == SpanKind::Server {
        attrs.push(("client.address", ip_string(conn.remote.ip()).into()));
        attrs.push(("client.port", i64::from(conn.remote.port()).into()));
    }
    attrs.push(("network.peer.address", ip_string(conn.remote.ip()).into()));
    attrs.push(("network.peer.port", i64::from(conn.remote.port()).into()));
    if !req.version.is_empty() {
        attrs.push(("network.protocol.version", req.version.into()));
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

    // Response and status.
    let (mut status, mut status_message) = match &ex.response {
        // A response whose status is not known (HTTP/2: its head was in bytes the agent did
        // not see): no status code and no error rather than a wrong one.
        Some(resp) if resp.status == 0 => (StatusCode::Unset, None),
        Some(resp) => {
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
            if error {
                attrs.push(("error.type", resp.status.to_string().into()));
                (StatusCode::Error, None)
            } else {
                (StatusCode::Unset, None)
            }
        }
        None => {
            attrs.push(("error.type", "no_response".into()));
            (StatusCode::Error, Some("no response".to_owned()))
        }
    };
    // gRPC (HTTP/2 with an application/grpc content type, or a `grpc-status`, which only gRPC
    // sends: the content type may be unknown on a connection joined mid-way): the RPC
    // conventions. The HTTP status is 200 even for failed calls; the call's status is
    // `grpc-status`.
    let mut rpc_name = None;
    let grpc_status_header = ex
        .response
        .as_ref()
        .and_then(|r| header(&r.headers, "grpc-status"));
    if header(&req.headers, "content-type").is_some_and(|ct| ct.starts_with("application/grpc"))
        || grpc_status_header.is_some()
    {
        attrs.push(("rpc.system", "grpc".into()));
        if let Some((service, method)) = target
            .path
            .and_then(|p| p.strip_prefix('/'))
            .and_then(|p| p.split_once('/'))
            .filter(|(s, m)| !s.is_empty() && !m.is_empty())
        {
            attrs.push(("rpc.service", service.into()));
            attrs.push(("rpc.method", method.into()));
            rpc_name = Some(format!("{service}/{method}"));
        }
        let response = ex.response.as_ref();
        let code = response
            .and_then(|r| header(&r.headers, "grpc-status"))
            .and_then(|v| v.trim().parse::<i64>().ok());
        if let Some(code) = code {
            attrs.push(("rpc.grpc.status_code", code.into()));
            // Server spans: only codes that mean the server failed; client spans: any non-OK.
            let error = match kind {
                SpanKind::Server => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
                SpanKind::Client => code != 0,
            };
            if error {
                attrs.push(("error.type", code.to_string().into()));
                status = StatusCode::Error;
                status_message = response
                    .and_then(|r| header(&r.headers, "grpc-message"))
                    .map(|m| truncate_value(m, 256).to_owned());
            } else if status_message.is_none() {
                status = StatusCode::Unset;
            }
        }
    }
    if ex.incomplete {
        attrs.push(("tracer.incomplete", true.into()));
    }
    attrs.push(("tracer.parent.source", ctx.source.as_str().into()));
    if ex.injected.is_some() {
        // The request left with a `traceparent` the agent added, naming this span.
        attrs.push(("tracer.traceparent.injected", true.into()));
    }

    let name = match (rpc_name, &route) {
        (Some(rpc), _) => rpc,
        (None, Some(r)) => format!("{method_name} {r}"),
        (None, None) => method_name.to_owned(),
    };

    let start_unix_ns = clock.to_unix_ns(ex.start_ns);
    let end_unix_ns = clock.to_unix_ns(ex.end_ns).max(start_unix_ns);
    let events = ex
        .messages
        .iter()
        .map(|m| {
            message_event(
                m,
                clock.to_unix_ns(m.at_ns).clamp(start_unix_ns, end_unix_ns),
            )
        })
        .collect();

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
        status,
        status_message,
        resource,
        events,
        dropped_events: ex.messages_dropped,
    }
}

/// A gRPC message as the RPC conventions' `rpc.message` event: SENT or RECEIVED by the traced
/// process, numbered per direction, its size from the length prefix (compressed or not, as
/// the prefix's flag says).
fn message_event(m: &RpcMessage, time_unix_ns: u64) -> SpanEvent {
    let kind = match m.direction {
        Direction::Egress => "SENT",
        Direction::Ingress => "RECEIVED",
    };
    let size_key = if m.compressed {
        "rpc.message.compressed_size"
    } else {
        "rpc.message.uncompressed_size"
    };
    SpanEvent {
        time_unix_ns,
        name: "rpc.message",
        attributes: vec![
            ("rpc.message.type", kind.into()),
            ("rpc.message.id", i64::from(m.id).into()),
            (size_key, i64::from(m.size).into()),
        ],
    }
}

/// A span's identity and place in its trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    /// W3C trace flags (bit 0: sampled).
    pub flags: u8,
    pub trace_state: Option<String>,
    /// How the parent (or the trace) was found: `tracer.parent.source`.
    pub source: ParentSource,
}

impl SpanContext {
    /// A new trace: random ids, no parent, sampled (the agent records every span it emits).
    pub fn root(ids: &mut IdGenerator) -> Self {
        Self {
            trace_id: ids.trace_id(),
            span_id: ids.span_id(),
            parent_span_id: None,
            flags: FLAG_SAMPLED,
            trace_state: None,
            source: ParentSource::None,
        }
    }

    /// The child of a remote span (its id becomes our parent).
    pub fn child_of_remote(remote: RemoteContext, span_id: SpanId) -> Self {
        Self {
            trace_id: remote.trace_id,
            span_id,
            parent_span_id: Some(remote.span_id),
            flags: remote.flags,
            trace_state: remote.trace_state,
            source: remote.source,
        }
    }
}

/// Trace and span ids from a SplitMix64 stream seeded from the OS (`getrandom(2)`). Fast and
/// well spread; not cryptographic (ids need uniqueness, not secrecy). Never yields all-zero
/// ids (invalid in W3C trace context).
#[derive(Clone, Debug)]
pub struct IdGenerator {
    state: u64,
}

impl IdGenerator {
    /// Seeded from the OS random source; falls back to time, pid and an address if that fails.
    pub fn from_os() -> Self {
        let mut seed = [0u8; 8];
        // SAFETY: getrandom writes at most `len` bytes into the buffer we own.
        let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
        let mut s = u64::from_ne_bytes(seed);
        if n != seed.len() as isize {
            let local = 0u8;
            s ^= (Clock::monotonic_now() << 17)
                ^ u64::from(std::process::id())
                ^ (&local as *const u8 as u64).rotate_left(32);
        }
        Self::from_seed(s)
    }

    pub fn from_seed(seed: u64) -> Self {
        Self { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn trace_id(&mut self) -> TraceId {
        loop {
            let (a, b) = (self.next_u64(), self.next_u64());
            if a | b != 0 {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&a.to_be_bytes());
                id[8..].copy_from_slice(&b.to_be_bytes());
                return id;
            }
        }
    }

    pub fn span_id(&mut self) -> SpanId {
        loop {
            let a = self.next_u64();
            if a != 0 {
                return a.to_be_bytes();
            }
        }
    }
}

thread_local! {
    static THREAD_IDS: RefCell<IdGenerator> = RefCell::new(IdGenerator::from_os());
}

/// Runs `f` with this thread's id generator.
pub fn with_thread_ids<R>(f: impl FnOnce(&mut IdGenerator) -> R) -> R {
    THREAD_IDS.with(|ids| f(&mut ids.borrow_mut()))
}

/// The route heuristic: replaces path segments that look like identifiers with placeholders
/// so span names and `http.route` stay low-cardinality.
///
/// Per segment (between `/`), first rule that matches:
/// - all ASCII digits → `{id}`
/// - a UUID (`8-4-4-4-12` hex digits) → `{uuid}`
/// - ≥ 8 hex digits with at least one decimal digit (hashes, hex ids, 32-hex UUIDs) → `{hash}`
/// - ≥ 16 chars of `[A-Za-z0-9_-]` with letters and digits that switch between lower case,
///   upper case and digits at least 3 times (ULIDs, nanoids, `cus_NffrFeUfNV2Hib`-style
///   tokens; not slugs like `get-user-profile-v2`) → `{id}`
///
/// Anything after `?` or `#` is ignored; at most [`MAX_ROUTE_SEGMENTS`] segments are kept and
/// `/...` marks the cut; an empty path is `/`; a path not starting with `/` gets one.
/// Borrows when nothing changes.
pub fn route_of(path: &str) -> Cow<'_, str> {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    if path.is_empty() {
        return Cow::Borrowed("/");
    }
    let (rest, mut changed) = match path.strip_prefix('/') {
        Some(rest) => (rest, false),
        None => (path, true),
    };
    let mut out = String::with_capacity(path.len() + 1);
    let mut segments = rest.split('/').enumerate().peekable();
    while let Some((i, seg)) = segments.next() {
        if i == MAX_ROUTE_SEGMENTS {
            // A trailing slash right after the last kept segment is not a cut.
            if !(seg.is_empty() && segments.peek().is_none()) {
                out.push_str("/...");
                changed = true;
                break;
            }
        }
        out.push('/');
        match placeholder(seg) {
            Some(p) => {
                out.push_str(p);
                changed = true;
            }
            None => out.push_str(seg),
        }
    }
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(path)
    }
}

fn placeholder(seg: &str) -> Option<&'static str> {
    let b = seg.as_bytes();
    if b.is_empty() {
        return None;
    }
    if b.iter().all(u8::is_ascii_digit) {
        return Some("{id}");
    }
    if is_uuid(b) {
        return Some("{uuid}");
    }
    if b.len() >= 8 && b.iter().all(u8::is_ascii_hexdigit) && b.iter().any(u8::is_ascii_digit) {
        return Some("{hash}");
    }
    if looks_like_token(b) {
        return Some("{id}");
    }
    None
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn looks_like_token(b: &[u8]) -> bool {
    if b.len() < 16
        || !b
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
    {
        return false;
    }
    if !b.iter().any(u8::is_ascii_digit) || !b.iter().any(u8::is_ascii_alphabetic) {
        return false;
    }
    let class = |c: u8| -> u8 {
        if c.is_ascii_digit() {
            0
        } else if c.is_ascii_lowercase() {
            1
        } else {
            2
        }
    };
    let mut switches = 0;
    let mut last = None;
    for &c in b.iter().filter(|c| c.is_ascii_alphanumeric()) {
        let k = class(c);
        if last.is_some_and(|l| l != k) {
            switches += 1;
        }
        last = Some(k);
    }
    switches >= 3
}

/// Keeps each parameter's name and replaces its value with `REDACTED`: `a=1&b=2` →
/// `a=REDACTED&b=REDACTED`. Parameters without `=` are kept.
pub fn redact_query(query: &str) -> Cow<'_, str> {
    if !query.contains('=') {
        return Cow::Borrowed(query);
    }
    let mut out = String::with_capacity(query.len() + 16);
    for (i, part) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match part.split_once('=') {
            Some((name, _)) => {
                out.push_str(name);
                out.push('=');
                out.push_str(REDACTED);
            }
            None => out.push_str(part),
        }
    }
    Cow::Owned(out)
}

/// The methods of RFC 9110 and PATCH (RFC 5789), case-sensitive, as the conventions define
/// "known" methods.
fn is_known_method(m: &str) -> bool {
    matches!(
        m,
        "CONNECT" | "DELETE" | "GET" | "HEAD" | "OPTIONS" | "PATCH" | "POST" | "PUT" | "TRACE"
    )
}

/// The parts of a request target.
#[derive(Debug, Default, PartialEq, Eq)]
struct Target<'a> {
    /// Absolute-form only.
    scheme: Option<&'a str>,
    /// Absolute-form (userinfo removed) or CONNECT's authority-form.
    authority: Option<&'a str>,
    /// Absolute-form carried `user:pass@`.
    userinfo: bool,
    /// `None` for authority-form and `*`.
    path: Option<&'a str>,
    query: Option<&'a str>,
}

fn parse_target<'a>(method: &str, target: &'a str) -> Target<'a> {
    // "*": no path. "": not known (an HTTP/2 `:path` that referenced an HPACK entry from
    // before the agent joined the connection): no path rather than a wrong one.
    if target == "*" || target.is_empty() {
        return Target::default();
    }
    if method == "CONNECT" && !target.starts_with('/') {
        return Target {
            authority: Some(target),
            ..Default::default()
        };
    }
    if !target.starts_with('/')
        && let Some((scheme, rest)) = target.split_once("://")
        && is_scheme(scheme)
    {
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path_query) = rest.split_at(end);
        let (userinfo, authority) = match authority.rsplit_once('@') {
            Some((_, host)) => (true, host),
            None => (false, authority),
        };
        let (path, query) = split_path_query(path_query);
        return Target {
            scheme: Some(scheme),
            authority: Some(authority),
            userinfo,
            path: Some(if path.is_empty() { "/" } else { path }),
            query,
        };
    }
    let (path, query) = split_path_query(target);
    Target {
        path: Some(path),
        query,
        ..Default::default()
    }
}

fn is_scheme(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|c| c.is_ascii_alphabetic())
        && bytes.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
}

/// Splits `path?query#fragment` (fragments are never sent, but are dropped if present).
fn split_path_query(s: &str) -> (&str, Option<&str>) {
    let s = s.split('#').next().unwrap_or_default();
    match s.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (s, None),
    }
}

/// `host[:port]` or `[v6][:port]` → host (without brackets) and port (when valid).
fn split_host_port(authority: &str) -> (&str, Option<u16>) {
    let authority = authority.trim();
    if let Some(rest) = authority.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((host, after)) => (host, after.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (rest, None),
        };
    }
    match authority.rsplit_once(':') {
        // A bare IPv6 address (invalid in Host, but seen) has several colons: all host.
        Some((host, port)) if !host.contains(':') && port.bytes().all(|c| c.is_ascii_digit()) => {
            (host, port.parse().ok())
        }
        _ => (authority, None),
    }
}

fn default_port(scheme: &str) -> u16 {
    if scheme.eq_ignore_ascii_case("https") {
        443
    } else {
        80
    }
}

fn ip_string(ip: IpAddr) -> String {
    ip.to_string()
}

fn header<'a>(headers: &'a HeaderList, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The message declared a body (even an empty one).
fn has_body_framing(headers: &HeaderList) -> bool {
    header(headers, "content-length").is_some() || header(headers, "transfer-encoding").is_some()
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{RequestHead, ResponseHead};
    use crate::trace::AttrValue;
    use tracer_common::Role;

    fn conn() -> ConnMeta {
        ConnMeta {
            conn_id: 1,
            pid: 42,
            local: "10.0.0.1:8080".parse().unwrap(),
            remote: "10.0.0.2:40000".parse().unwrap(),
            role: Role::Unknown,
            tls: false,
        }
    }

    fn resource() -> Arc<Resource> {
        Arc::new(Resource {
            pid: 42,
            attributes: vec![("service.name".into(), "svc".into())],
        })
    }

    fn exchange(dir: Direction, method: &str, target: &str, status: Option<u16>) -> HttpExchange {
        HttpExchange {
            request_direction: dir,
            request: RequestHead {
                method: method.into(),
                target: target.into(),
                version: "1.1",
                headers: vec![],
            },
            response: status.map(|status| ResponseHead {
                status,
                version: "1.1",
                headers: vec![],
            }),
            start_ns: 1_000,
            end_ns: 5_000,
            request_body_size: 0,
            response_body_size: 0,
            tid: 7,
            seq: 0,
            incomplete: false,
            head_position: 0,
            injected: None,
            messages: Vec::new(),
            messages_dropped: 0,
        }
    }

    fn with_host(mut ex: HttpExchange, host: &str) -> HttpExchange {
        ex.request.headers.push(("host".into(), host.into()));
        ex
    }

    fn build(ex: &HttpExchange) -> Span {
        build_opts(ex, &SpanOptions::default())
    }

    fn build_opts(ex: &HttpExchange, opts: &SpanOptions) -> Span {
        let mut ids = IdGenerator::from_seed(1);
        span_from_exchange(
            ex,
            &conn(),
            resource(),
            &Clock::with_offset(1_000_000),
            opts,
            SpanContext::root(&mut ids),
        )
    }

    fn s(span: &Span, key: &str) -> Option<String> {
        match span.attr(key) {
            Some(AttrValue::Str(v)) => Some(v.clone()),
            None => None,
            other => panic!("{key} is not a string: {other:?}"),
        }
    }

    fn i(span: &Span, key: &str) -> Option<i64> {
        match span.attr(key) {
            Some(AttrValue::Int(v)) => Some(*v),
            None => None,
            other => panic!("{key} is not an int: {other:?}"),
        }
    }

    const SERVER: Direction = Direction::Ingress;
    const CLIENT: Direction = Direction::Egress;

    // ---- route heuristic ----

    #[test]
    fn route_examples() {
        assert_eq!(
            route_of("/users/123/orders/9f8e7d6c"),
            "/users/{id}/orders/{hash}"
        );
        assert_eq!(route_of("/v1/items"), "/v1/items");
        assert_eq!(route_of("/api/v2/x"), "/api/v2/x");
        assert_eq!(route_of(""), "/");
        assert_eq!(route_of("/"), "/");
    }

    #[test]
    fn route_borrows_when_unchanged() {
        assert!(matches!(route_of("/v1/items"), Cow::Borrowed(_)));
        assert!(matches!(route_of("/a/b/"), Cow::Borrowed(_)));
        assert!(matches!(route_of("/users/1"), Cow::Owned(_)));
    }

    #[test]
    fn route_digits() {
        assert_eq!(route_of("/0"), "/{id}");
        assert_eq!(
            route_of("/orders/20240101/items/7"),
            "/orders/{id}/items/{id}"
        );
        assert_eq!(route_of("/a/12345678901234567890123"), "/a/{id}");
    }

    #[test]
    fn route_uuid() {
        assert_eq!(
            route_of("/u/123e4567-e89b-12d3-a456-426614174000"),
            "/u/{uuid}"
        );
        assert_eq!(
            route_of("/u/123E4567-E89B-12D3-A456-426614174000/x"),
            "/u/{uuid}/x"
        );
        // Wrong shape: not a UUID, but still an id-like token.
        assert_eq!(
            route_of("/u/123e4567e-89b-12d3-a456-42661417400"),
            "/u/{id}"
        );
    }

    #[test]
    fn route_hex() {
        assert_eq!(route_of("/blob/9f8e7d6c"), "/blob/{hash}");
        assert_eq!(route_of("/blob/DEADBEEF00"), "/blob/{hash}");
        assert_eq!(
            route_of("/c/da39a3ee5e6b4b0d3255bfef95601890afd80709"),
            "/c/{hash}"
        );
        assert_eq!(route_of("/u/123e4567e89b12d3a456426614174000"), "/u/{hash}");
        // Too short, or hex letters only (words like "deadbeef", "facade").
        assert_eq!(route_of("/x/9f8e7d6"), "/x/9f8e7d6");
        assert_eq!(route_of("/x/deadbeef"), "/x/deadbeef");
        assert_eq!(route_of("/x/facade"), "/x/facade");
    }

    #[test]
    fn route_tokens() {
        assert_eq!(route_of("/c/cus_NffrFeUfNV2Hib"), "/c/{id}");
        assert_eq!(route_of("/o/01ARZ3NDEKTSV4RRFFQ69G5FAV"), "/o/{id}");
        assert_eq!(route_of("/s/k3j5h2g7x9q1s4z6"), "/s/{id}");
        assert_eq!(route_of("/n/V1StGXR8_Z5jdHi6B-myT"), "/n/{id}");
        // Slugs and words stay.
        assert_eq!(
            route_of("/api/get-user-profile-v2"),
            "/api/get-user-profile-v2"
        );
        assert_eq!(
            route_of("/api/myservice2024report"),
            "/api/myservice2024report"
        );
        assert_eq!(
            route_of("/docs/getting-started-guide"),
            "/docs/getting-started-guide"
        );
        // Short mixed tokens stay.
        assert_eq!(route_of("/a/b2C3d4"), "/a/b2C3d4");
        // Other characters: not a token.
        assert_eq!(
            route_of("/f/report.2024.v3.final.pdf"),
            "/f/report.2024.v3.final.pdf"
        );
    }

    #[test]
    fn route_segment_cap() {
        assert_eq!(
            route_of("/1/2/3/4/5/6/7/8"),
            "/{id}/{id}/{id}/{id}/{id}/{id}/{id}/{id}"
        );
        assert_eq!(route_of("/a/b/c/d/e/f/g/h"), "/a/b/c/d/e/f/g/h");
        assert_eq!(route_of("/a/b/c/d/e/f/g/h/"), "/a/b/c/d/e/f/g/h/");
        assert_eq!(route_of("/a/b/c/d/e/f/g/h/i"), "/a/b/c/d/e/f/g/h/...");
        assert_eq!(route_of("/a/b/c/d/e/f/g/h/i/j/k/"), "/a/b/c/d/e/f/g/h/...");
    }

    #[test]
    fn route_odd_inputs() {
        assert_eq!(route_of("/users/1?x=2"), "/users/{id}");
        assert_eq!(route_of("/a#frag"), "/a");
        assert_eq!(route_of("?x"), "/");
        assert_eq!(route_of("relative/1"), "/relative/{id}");
        assert_eq!(route_of("//"), "//");
        assert_eq!(route_of("/a//1/"), "/a//{id}/");
        assert_eq!(route_of("/ü/ñ/12"), "/ü/ñ/{id}");
    }

    // ---- kind, name, method ----

    #[test]
    fn kind_from_direction() {
        assert_eq!(
            build(&exchange(SERVER, "GET", "/", Some(200))).kind,
            SpanKind::Server
        );
        assert_eq!(
            build(&exchange(CLIENT, "GET", "/", Some(200))).kind,
            SpanKind::Client
        );
    }

    #[test]
    fn name_is_method_and_route() {
        let sp = build(&exchange(SERVER, "GET", "/users/123?x=1", Some(200)));
        assert_eq!(sp.name, "GET /users/{id}");
        assert_eq!(s(&sp, "http.route").as_deref(), Some("/users/{id}"));
        let sp = build(&exchange(CLIENT, "POST", "/v1/items", Some(201)));
        assert_eq!(sp.name, "POST /v1/items");
        assert_eq!(s(&sp, "http.route").as_deref(), Some("/v1/items"));
        assert_eq!(s(&sp, "http.request.method").as_deref(), Some("POST"));
        assert_eq!(sp.attr("http.request.method_original"), None);
    }

    #[test]
    fn unknown_method() {
        for m in ["PURGE", "get", "PROPFIND"] {
            let sp = build(&exchange(SERVER, m, "/a/1", Some(200)));
            assert_eq!(sp.name, "HTTP /a/{id}");
            assert_eq!(s(&sp, "http.request.method").as_deref(), Some("_OTHER"));
            assert_eq!(s(&sp, "http.request.method_original").as_deref(), Some(m));
        }
        let long = "X".repeat(200);
        let sp = build(&exchange(SERVER, &long, "/", Some(200)));
        assert_eq!(
            s(&sp, "http.request.method_original").unwrap().len(),
            MAX_METHOD_LEN
        );
    }

    #[test]
    fn known_methods() {
        for m in [
            "CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE",
        ] {
            assert!(is_known_method(m), "{m}");
        }
    }

    // ---- url.* ----

    #[test]
    fn path_and_redacted_query() {
        let sp = build(&exchange(
            SERVER,
            "GET",
            "/search?q=secret&page=2&flag&&empty=",
            Some(200),
        ));
        assert_eq!(s(&sp, "url.path").as_deref(), Some("/search"));
        assert_eq!(
            s(&sp, "url.query").as_deref(),
            Some("q=REDACTED&page=REDACTED&flag&&empty=REDACTED")
        );
        assert_eq!(s(&sp, "url.scheme").as_deref(), Some("http"));
    }

    #[test]
    fn query_kept_when_not_redacting() {
        let opts = SpanOptions {
            redact_query: false,
            ..Default::default()
        };
        let sp = build_opts(
            &exchange(CLIENT, "GET", "/search?q=secret", Some(200)),
            &opts,
        );
        assert_eq!(s(&sp, "url.query").as_deref(), Some("q=secret"));
        assert_eq!(
            s(&sp, "url.full").as_deref(),
            Some("http://10.0.0.2:40000/search?q=secret")
        );
    }

    #[test]
    fn no_or_empty_query() {
        let sp = build(&exchange(SERVER, "GET", "/a", Some(200)));
        assert_eq!(sp.attr("url.query"), None);
        let sp = build(&exchange(SERVER, "GET", "/a?", Some(200)));
        assert_eq!(sp.attr("url.query"), None);
        assert_eq!(s(&sp, "url.path").as_deref(), Some("/a"));
        let sp = build(&exchange(SERVER, "GET", "/a?b#c", Some(200)));
        assert_eq!(s(&sp, "url.query").as_deref(), Some("b"));
    }

    #[test]
    fn scheme_from_options() {
        let opts = SpanOptions {
            scheme: "https",
            ..Default::default()
        };
        let sp = build_opts(
            &with_host(exchange(CLIENT, "GET", "/x", Some(200)), "api.example.com"),
            &opts,
        );
        assert_eq!(s(&sp, "url.scheme").as_deref(), Some("https"));
        assert_eq!(i(&sp, "server.port"), Some(443));
        assert_eq!(
            s(&sp, "url.full").as_deref(),
            Some("https://api.example.com/x")
        );
    }

    #[test]
    fn tls_plaintext_is_https() {
        let mut ids = IdGenerator::from_seed(1);
        let ex = with_host(exchange(CLIENT, "GET", "/x", Some(200)), "api.example.com");
        let sp = span_from_exchange(
            &ex,
            &ConnMeta {
                tls: true,
                ..conn()
            },
            resource(),
            &Clock::with_offset(1_000_000),
            &SpanOptions::default(),
            SpanContext::root(&mut ids),
        );
        assert_eq!(s(&sp, "url.scheme").as_deref(), Some("https"));
        assert_eq!(i(&sp, "server.port"), Some(443));
        assert_eq!(
            s(&sp, "url.full").as_deref(),
            Some("https://api.example.com/x")
        );
    }

    #[test]
    fn url_full_client_only() {
        let ex = with_host(
            exchange(CLIENT, "GET", "/p/1?a=b", Some(200)),
            "example.com:8080",
        );
        let sp = build(&ex);
        assert_eq!(
            s(&sp, "url.full").as_deref(),
            Some("http://example.com:8080/p/1?a=REDACTED")
        );
        let ex = with_host(exchange(CLIENT, "GET", "/", Some(200)), "example.com");
        assert_eq!(
            s(&build(&ex), "url.full").as_deref(),
            Some("http://example.com/")
        );
        let ex = with_host(exchange(CLIENT, "GET", "/", Some(200)), "example.com:80");
        assert_eq!(
            s(&build(&ex), "url.full").as_deref(),
            Some("http://example.com/")
        );
        let ex = with_host(exchange(CLIENT, "GET", "/", Some(200)), "[::1]:9000");
        assert_eq!(
            s(&build(&ex), "url.full").as_deref(),
            Some("http://[::1]:9000/")
        );
        let ex = with_host(exchange(SERVER, "GET", "/", Some(200)), "example.com");
        assert_eq!(build(&ex).attr("url.full"), None);
    }

    #[test]
    fn absolute_form_target() {
        let ex = with_host(
            exchange(
                CLIENT,
                "GET",
                "http://origin.example:8081/p/42?k=v#f",
                Some(200),
            ),
            "ignored.example",
        );
        let sp = build(&ex);
        assert_eq!(s(&sp, "url.path").as_deref(), Some("/p/42"));
        assert_eq!(s(&sp, "url.query").as_deref(), Some("k=REDACTED"));
        assert_eq!(s(&sp, "server.address").as_deref(), Some("origin.example"));
        assert_eq!(i(&sp, "server.port"), Some(8081));
        assert_eq!(
            s(&sp, "url.full").as_deref(),
            Some("http://origin.example:8081/p/42?k=REDACTED")
        );
        assert_eq!(sp.name, "GET /p/{id}");
        // The proxy is the peer.
        assert_eq!(s(&sp, "network.peer.address").as_deref(), Some("10.0.0.2"));
        assert_eq!(i(&sp, "network.peer.port"), Some(40000));

        let sp = build(&exchange(
            CLIENT,
            "GET",
            "HTTP://user:pw@origin.example",
            Some(200),
        ));
        assert_eq!(s(&sp, "url.path").as_deref(), Some("/"));
        assert_eq!(s(&sp, "url.scheme").as_deref(), Some("http"));
        assert_eq!(s(&sp, "server.address").as_deref(), Some("origin.example"));
        assert_eq!(i(&sp, "server.port"), Some(80));
        assert_eq!(
            s(&sp, "url.full").as_deref(),
            Some("http://REDACTED:REDACTED@origin.example/")
        );

        let sp = build(&exchange(SERVER, "GET", "http://h.example?x=1", Some(200)));
        assert_eq!(s(&sp, "url.path").as_deref(), Some("/"));
        assert_eq!(s(&sp, "url.query").as_deref(), Some("x=REDACTED"));
        assert_eq!(s(&sp, "server.address").as_deref(), Some("h.example"));
    }

    #[test]
    fn connect_and_asterisk() {
        let sp = build(&exchange(
            CLIENT,
            "CONNECT",
            "secure.example:443",
            Some(200),
        ));
        assert_eq!(sp.name, "CONNECT");
        assert_eq!(sp.attr("url.path"), None);
        assert_eq!(sp.attr("url.full"), None);
        assert_eq!(sp.attr("http.route"), None);
        assert_eq!(s(&sp, "server.address").as_deref(), Some("secure.example"));
        assert_eq!(i(&sp, "server.port"), Some(443));

        let sp = build(&exchange(SERVER, "OPTIONS", "*", Some(200)));
        assert_eq!(sp.name, "OPTIONS");
        assert_eq!(sp.attr("url.path"), None);
    }

    #[test]
    fn garbage_target_does_not_panic() {
        for t in [
            "",
            "://",
            "a://",
            "http://",
            "http://[::1",
            "?",
            "#",
            "é://x",
            "http://h:99999/x",
            "[",
            "\u{0}",
        ] {
            let sp = build(&exchange(CLIENT, "GET", t, Some(200)));
            assert!(sp.name.starts_with("GET"), "{t}");
            let sp = build(&with_host(exchange(SERVER, "GET", t, None), t));
            assert!(sp.name.starts_with("GET"), "{t}");
        }
        let sp = build(&exchange(CLIENT, "GET", "http://h:99999/x", Some(200)));
        assert_eq!(s(&sp, "server.address").as_deref(), Some("h"));
        assert_eq!(i(&sp, "server.port"), Some(80));
    }

    // ---- server / client / network ----

    #[test]
    fn client_server_address() {
        // Host with port.
        let sp = build(&with_host(
            exchange(CLIENT, "GET", "/", Some(200)),
            "api.example.com:8443",
        ));
        assert_eq!(s(&sp, "server.address").as_deref(), Some("api.example.com"));
        assert_eq!(i(&sp, "server.port"), Some(8443));
        // Host without port: the scheme's default.
        let sp = build(&with_host(
            exchange(CLIENT, "GET", "/", Some(200)),
            "api.example.com",
        ));
        assert_eq!(s(&sp, "server.address").as_deref(), Some("api.example.com"));
        assert_eq!(i(&sp, "server.port"), Some(80));
        // IPv6 Host.
        let sp = build(&with_host(
            exchange(CLIENT, "GET", "/", Some(200)),
            "[2001:db8::1]:81",
        ));
        assert_eq!(s(&sp, "server.address").as_deref(), Some("2001:db8::1"));
        assert_eq!(i(&sp, "server.port"), Some(81));
        // No Host: the remote end.
        let sp = build(&exchange(CLIENT, "GET", "/", Some(200)));
        assert_eq!(s(&sp, "server.address").as_deref(), Some("10.0.0.2"));
        assert_eq!(i(&sp, "server.port"), Some(40000));
        // Empty Host: as if absent.
        let sp = build(&with_host(exchange(CLIENT, "GET", "/", Some(200)), ""));
        assert_eq!(s(&sp, "server.address").as_deref(), Some("10.0.0.2"));
        // No client.* on CLIENT spans.
        assert_eq!(sp.attr("client.address"), None);
        assert_eq!(sp.attr("client.port"), None);
    }

    #[test]
    fn server_addresses() {
        let sp = build(&with_host(
            exchange(SERVER, "GET", "/", Some(200)),
            "shop.example:8080",
        ));
        assert_eq!(s(&sp, "server.address").as_deref(), Some("shop.example"));
        assert_eq!(i(&sp, "server.port"), Some(8080));
        let sp = build(&exchange(SERVER, "GET", "/", Some(200)));
        assert_eq!(s(&sp, "server.address").as_deref(), Some("10.0.0.1"));
        assert_eq!(i(&sp, "server.port"), Some(8080));
        assert_eq!(s(&sp, "client.address").as_deref(), Some("10.0.0.2"));
        assert_eq!(i(&sp, "client.port"), Some(40000));
        assert_eq!(s(&sp, "network.peer.address").as_deref(), Some("10.0.0.2"));
        assert_eq!(i(&sp, "network.peer.port"), Some(40000));
    }

    #[test]
    fn ipv6_connection() {
        let mut c = conn();
        c.remote = "[2001:db8::2]:5555".parse().unwrap();
        let ex = exchange(CLIENT, "GET", "/x", Some(200));
        let sp = span_from_exchange(
            &ex,
            &c,
            resource(),
            &Clock::with_offset(0),
            &SpanOptions::default(),
            SpanContext::root(&mut IdGenerator::from_seed(3)),
        );
        assert_eq!(s(&sp, "server.address").as_deref(), Some("2001:db8::2"));
        assert_eq!(
            s(&sp, "network.peer.address").as_deref(),
            Some("2001:db8::2")
        );
        assert_eq!(
            s(&sp, "url.full").as_deref(),
            Some("http://[2001:db8::2]:5555/x")
        );
    }

    #[test]
    fn protocol_version_and_user_agent() {
        let mut ex = exchange(SERVER, "GET", "/", Some(200));
        ex.request.version = "1.0";
        ex.request
            .headers
            .push(("user-agent".into(), "curl/8.5.0".into()));
        let sp = build(&ex);
        assert_eq!(s(&sp, "network.protocol.version").as_deref(), Some("1.0"));
        assert_eq!(s(&sp, "user_agent.original").as_deref(), Some("curl/8.5.0"));
        ex.request.version = "";
        ex.request.headers.clear();
        let sp = build(&ex);
        assert_eq!(sp.attr("network.protocol.version"), None);
        assert_eq!(sp.attr("user_agent.original"), None);
        assert_eq!(
            s(
                &build(&exchange(SERVER, "GET", "/", None)),
                "network.protocol.version"
            )
            .as_deref(),
            Some("1.1")
        );
    }

    #[test]
    fn body_sizes() {
        let mut ex = exchange(CLIENT, "POST", "/", Some(200));
        let sp = build(&ex);
        assert_eq!(sp.attr("http.request.body.size"), None);
        assert_eq!(sp.attr("http.response.body.size"), None);
        ex.request_body_size = 12;
        ex.response_body_size = 3456;
        let sp = build(&ex);
        assert_eq!(i(&sp, "http.request.body.size"), Some(12));
        assert_eq!(i(&sp, "http.response.body.size"), Some(3456));
        // A declared empty body.
        ex.request_body_size = 0;
        ex.request
            .headers
            .push(("content-length".into(), "0".into()));
        ex.response_body_size = 0;
        ex.response
            .as_mut()
            .unwrap()
            .headers
            .push(("transfer-encoding".into(), "chunked".into()));
        let sp = build(&ex);
        assert_eq!(i(&sp, "http.request.body.size"), Some(0));
        assert_eq!(i(&sp, "http.response.body.size"), Some(0));
        // No response: no response size even if counted.
        ex.response = None;
        ex.response_body_size = 10;
        assert_eq!(build(&ex).attr("http.response.body.size"), None);
        // Incomplete exchange: sizes are not known exactly, so none is reported.
        let mut ex = exchange(CLIENT, "POST", "/", Some(200));
        ex.request_body_size = 12;
        ex.response_body_size = 3456;
        ex.incomplete = true;
        let sp = build(&ex);
        assert_eq!(sp.attr("http.request.body.size"), None);
        assert_eq!(sp.attr("http.response.body.size"), None);
        ex.incomplete = false;
        ex.request_body_size = u64::MAX;
        assert_eq!(i(&build(&ex), "http.request.body.size"), Some(i64::MAX));
    }

    // ---- status ----

    #[test]
    fn status_code_and_status() {
        let cases = [
            (SERVER, 200, StatusCode::Unset),
            (SERVER, 404, StatusCode::Unset),
            (SERVER, 500, StatusCode::Error),
            (SERVER, 503, StatusCode::Error),
            (CLIENT, 200, StatusCode::Unset),
            (CLIENT, 302, StatusCode::Unset),
            (CLIENT, 404, StatusCode::Error),
            (CLIENT, 500, StatusCode::Error),
        ];
        for (dir, code, status) in cases {
            let sp = build(&exchange(dir, "GET", "/", Some(code)));
            assert_eq!(i(&sp, "http.response.status_code"), Some(i64::from(code)));
            assert_eq!(sp.status, status, "{dir:?} {code}");
            assert_eq!(sp.status_message, None);
            let expected = (status == StatusCode::Error).then(|| code.to_string());
            assert_eq!(s(&sp, "error.type"), expected, "{dir:?} {code}");
        }
    }

    #[test]
    fn no_response() {
        for dir in [SERVER, CLIENT] {
            let sp = build(&exchange(dir, "GET", "/", None));
            assert_eq!(sp.status, StatusCode::Error);
            assert_eq!(sp.status_message.as_deref(), Some("no response"));
            assert_eq!(sp.attr("http.response.status_code"), None);
            assert_eq!(s(&sp, "error.type").as_deref(), Some("no_response"));
        }
    }

    #[test]
    fn incomplete_flag() {
        let mut ex = exchange(SERVER, "GET", "/", Some(200));
        assert_eq!(build(&ex).attr("tracer.incomplete"), None);
        ex.incomplete = true;
        assert_eq!(
            build(&ex).attr("tracer.incomplete"),
            Some(&AttrValue::Bool(true))
        );
    }

    // ---- times, ids, context ----

    #[test]
    fn times() {
        let mut ex = exchange(SERVER, "GET", "/", Some(200));
        let sp = build(&ex);
        assert_eq!(sp.start_unix_ns, 1_001_000);
        assert_eq!(sp.end_unix_ns, 1_005_000);
        ex.end_ns = 10;
        let sp = build(&ex);
        assert_eq!(sp.end_unix_ns, sp.start_unix_ns);
    }

    #[test]
    fn ids_and_context() {
        let ex = exchange(SERVER, "GET", "/", Some(200));
        let mut ids = IdGenerator::from_seed(5);
        let root = SpanContext::root(&mut ids);
        let a = span_from_exchange(
            &ex,
            &conn(),
            resource(),
            &Clock::with_offset(0),
            &SpanOptions::default(),
            root.clone(),
        );
        assert_eq!((a.trace_id, a.span_id), (root.trace_id, root.span_id));
        assert_ne!(a.trace_id, [0; 16]);
        assert_ne!(a.span_id, [0; 8]);
        assert_eq!(a.parent_span_id, None);
        assert_eq!(a.trace_state, None);
        assert_eq!(a.flags, FLAG_SAMPLED);
        assert_eq!(s(&a, "tracer.parent.source").as_deref(), Some("none"));
        assert_eq!(a.resource.service_name(), "svc");
        assert_ne!(SpanContext::root(&mut ids).trace_id, root.trace_id);

        let remote = RemoteContext {
            trace_id: [7; 16],
            span_id: [8; 8],
            flags: 0,
            trace_state: Some("k=v".into()),
            source: ParentSource::W3c,
        };
        let b = span_from_exchange(
            &ex,
            &conn(),
            resource(),
            &Clock::with_offset(0),
            &SpanOptions::default(),
            SpanContext::child_of_remote(remote, [9; 8]),
        );
        assert_eq!(b.trace_id, [7; 16]);
        assert_eq!(b.span_id, [9; 8]);
        assert_eq!(b.parent_span_id, Some([8; 8]));
        assert_eq!(b.flags, 0);
        assert_eq!(b.trace_state.as_deref(), Some("k=v"));
        assert_eq!(s(&b, "tracer.parent.source").as_deref(), Some("w3c"));
    }

    #[test]
    fn id_generator() {
        let mut g = IdGenerator::from_os();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let t = g.trace_id();
            let sid = g.span_id();
            assert_ne!(t, [0; 16]);
            assert_ne!(sid, [0; 8]);
            assert!(seen.insert(sid));
        }
        // Two OS-seeded generators differ.
        assert_ne!(
            IdGenerator::from_os().trace_id(),
            IdGenerator::from_os().trace_id()
        );
        // A zero seed still gives non-zero ids.
        let mut z = IdGenerator::from_seed(0);
        assert_ne!(z.span_id(), [0; 8]);
    }

    #[test]
    fn split_host_port_cases() {
        assert_eq!(split_host_port("h"), ("h", None));
        assert_eq!(split_host_port("h:1"), ("h", Some(1)));
        assert_eq!(split_host_port("h:"), ("h", None));
        assert_eq!(split_host_port("h:x"), ("h:x", None));
        assert_eq!(split_host_port("[::1]"), ("::1", None));
        assert_eq!(split_host_port("[::1]:8"), ("::1", Some(8)));
        assert_eq!(split_host_port("::1"), ("::1", None));
        assert_eq!(split_host_port(" h:2 "), ("h", Some(2)));
    }
}

#[cfg(test)]
mod grpc_tests {
    use super::*;
    use crate::protocol::{RequestHead, ResponseHead};
    use crate::trace::AttrValue;
    use tracer_common::Role;

    fn grpc_exchange(dir: Direction, status: &str) -> HttpExchange {
        let msg = |direction, id, size, compressed, at_ns| RpcMessage {
            direction,
            id,
            compressed,
            size,
            at_ns,
        };
        HttpExchange {
            request_direction: dir,
            request: RequestHead {
                method: "POST".into(),
                target: "/demo.Greeter/SayHello".into(),
                version: "2",
                headers: vec![
                    ("host".into(), "greeter:50051".into()),
                    ("content-type".into(), "application/grpc+proto".into()),
                ],
            },
            response: Some(ResponseHead {
                status: 200,
                version: "2",
                headers: vec![
                    ("grpc-status".into(), status.into()),
                    ("grpc-message".into(), "nope".into()),
                ],
            }),
            start_ns: 1_000,
            end_ns: 5_000,
            request_body_size: 12,
            response_body_size: 20,
            tid: 7,
            seq: 0,
            incomplete: false,
            head_position: 0,
            injected: None,
            messages: vec![
                msg(Direction::Egress, 1, 7, false, 2_000),
                msg(Direction::Ingress, 1, 15, true, 4_000),
                // Reported at a time outside the span (clock skew between calls): clamped.
                msg(Direction::Ingress, 2, 0, false, 9_000),
            ],
            messages_dropped: 3,
        }
    }

    fn build(ex: &HttpExchange) -> Span {
        let mut ids = IdGenerator::from_seed(1);
        let conn = ConnMeta {
            conn_id: 1,
            pid: 42,
            local: "10.0.0.1:40000".parse().unwrap(),
            remote: "10.0.0.2:50051".parse().unwrap(),
            role: Role::Unknown,
            tls: false,
        };
        let resource = Arc::new(Resource {
            pid: 42,
            attributes: vec![],
        });
        span_from_exchange(
            ex,
            &conn,
            resource,
            &Clock::with_offset(1_000_000),
            &SpanOptions::default(),
            SpanContext::root(&mut ids),
        )
    }

    fn attr<'a>(e: &'a SpanEvent, key: &str) -> Option<&'a AttrValue> {
        e.attributes.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    #[test]
    fn grpc_span_name_attributes_and_message_events() {
        let sp = build(&grpc_exchange(Direction::Egress, "0"));
        assert_eq!(sp.name, "demo.Greeter/SayHello");
        assert_eq!(sp.kind, SpanKind::Client);
        assert_eq!(sp.attr("rpc.system"), Some(&AttrValue::from("grpc")));
        assert_eq!(
            sp.attr("rpc.service"),
            Some(&AttrValue::from("demo.Greeter"))
        );
        assert_eq!(sp.attr("rpc.method"), Some(&AttrValue::from("SayHello")));
        assert_eq!(sp.attr("rpc.grpc.status_code"), Some(&AttrValue::Int(0)));
        assert_eq!(sp.status, StatusCode::Unset);
        assert_eq!(sp.events.len(), 3);
        assert_eq!(sp.dropped_events, 3);
        let (sent, recv) = (&sp.events[0], &sp.events[1]);
        assert!(sp.events.iter().all(|e| e.name == "rpc.message"));
        assert_eq!(attr(sent, "rpc.message.type"), Some(&"SENT".into()));
        assert_eq!(attr(sent, "rpc.message.id"), Some(&AttrValue::Int(1)));
        assert_eq!(
            attr(sent, "rpc.message.uncompressed_size"),
            Some(&AttrValue::Int(7))
        );
        assert_eq!(attr(sent, "rpc.message.compressed_size"), None);
        assert_eq!(sent.time_unix_ns, 1_000_000 + 2_000);
        assert_eq!(attr(recv, "rpc.message.type"), Some(&"RECEIVED".into()));
        assert_eq!(
            attr(recv, "rpc.message.compressed_size"),
            Some(&AttrValue::Int(15))
        );
        assert_eq!(attr(recv, "rpc.message.uncompressed_size"), None);
        assert_eq!(sp.events[2].time_unix_ns, sp.end_unix_ns);
    }

    /// A connection joined mid-way: fields that referenced unknown HPACK entries are empty.
    #[test]
    fn unknown_http2_fields_are_left_out() {
        let mut ex = grpc_exchange(Direction::Egress, "0");
        ex.incomplete = true;
        ex.request.target.clear();
        ex.request.headers.clear();
        ex.response.as_mut().unwrap().headers.clear();
        let sp = build(&ex);
        assert_eq!(sp.name, "POST");
        for key in [
            "url.path",
            "url.full",
            "http.route",
            "rpc.system",
            "rpc.method",
        ] {
            assert_eq!(sp.attr(key), None, "{key}");
        }
        assert_eq!(sp.attr("tracer.incomplete"), Some(&AttrValue::Bool(true)));
        // Unknown method too: no method attribute rather than a wrong one.
        ex.request.method.clear();
        let sp = build(&ex);
        assert_eq!(sp.name, "HTTP");
        assert_eq!(sp.attr("http.request.method"), None);
        assert_eq!(sp.attr("http.request.method_original"), None);
        // A response of unknown status (its head was lost): no status code, no error.
        let mut ex = grpc_exchange(Direction::Egress, "0");
        ex.incomplete = true;
        ex.request.headers.clear();
        ex.response = Some(ResponseHead {
            status: 0,
            version: "2",
            headers: vec![],
        });
        let sp = build(&ex);
        assert_eq!(sp.attr("http.response.status_code"), None);
        assert_eq!(sp.attr("error.type"), None);
        assert_eq!(sp.status, StatusCode::Unset);
        // The content type unknown, but `grpc-status` known: gRPC all the same.
        let mut ex = grpc_exchange(Direction::Ingress, "5");
        ex.request.headers.clear();
        let sp = build(&ex);
        assert_eq!(sp.name, "demo.Greeter/SayHello");
        assert_eq!(sp.attr("rpc.grpc.status_code"), Some(&AttrValue::Int(5)));
    }

    #[test]
    fn grpc_status_rules_per_kind() {
        for (code, server_error) in [
            ("0", false),
            ("1", false),
            ("2", true),
            ("3", false),
            ("4", true),
            ("5", false),
            ("12", true),
            ("13", true),
            ("14", true),
            ("15", true),
            ("16", false),
        ] {
            let client = build(&grpc_exchange(Direction::Egress, code));
            let server = build(&grpc_exchange(Direction::Ingress, code));
            assert_eq!(server.kind, SpanKind::Server);
            let is_err = |s: &Span| s.status == StatusCode::Error;
            assert_eq!(is_err(&client), code != "0", "client {code}");
            assert_eq!(is_err(&server), server_error, "server {code}");
            if code != "0" {
                assert_eq!(client.attr("error.type"), Some(&AttrValue::from(code)));
                assert_eq!(client.status_message.as_deref(), Some("nope"));
            }
        }
    }
}
