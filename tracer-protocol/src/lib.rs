//! The tracer's application protocols: incremental parsers fed with one connection's
//! reassembled byte stream, per direction, that pair requests with responses into
//! [`HttpExchange`]s; and the parsers of the trace context those requests carry
//! ([`trace_context`]).
//!
//! The agent's connection layer guarantees the order of chunks within a direction and reports
//! gaps (bytes the kernel could not deliver) explicitly; a parser never sees a silent hole.
//!
//! Pure code over byte slices (no aya, no async runtime), so the fuzz targets (`fuzz/`) build
//! it as any user would. Built with `--cfg fuzzing`, modules also export the invariants the
//! fuzz targets check.

pub mod db;
pub mod headers;
pub mod http1;
pub mod http2;
pub mod mysql;
pub mod postgres;
pub mod redis;
pub mod sql;
pub mod trace_context;
// The kernel's and the agent's `traceparent` readings compared (unit tests, fuzz target).
#[cfg(any(test, fuzzing))]
pub mod traceparent_agreement;

pub use db::DbExchange;
pub use tracer_common::{Direction, SpanCtx};

/// One syscall's worth of bytes in one direction, in order.
#[derive(Clone, Copy, Debug)]
pub struct Chunk<'a> {
    /// The captured prefix of the call's bytes.
    pub data: &'a [u8],
    /// Bytes the call moved. `total_len - data.len()` bytes follow `data` on the wire but were
    /// not captured (bodies beyond the capture limit): a parser may skip them only where it
    /// knows their meaning (inside a body of known size); elsewhere they are a gap.
    pub total_len: u32,
    /// CLOCK_MONOTONIC ns at syscall entry and exit.
    pub ts_enter: u64,
    pub ts_exit: u64,
    /// Thread that made the call.
    pub tid: u32,
    /// Bytes already moved in the opposite direction (as of this call's exit) that the parser
    /// has not been given: still in flight, or lost. After a loss, a response is paired with a
    /// request only when no request bytes are unseen.
    pub other_unseen: u64,
    /// Byte position of `data[0]` in its direction of the connection.
    pub position: u64,
    /// Ids the kernel injected into a request starting at `data[0]` (see
    /// [`tracer_common::propagation`]).
    pub ctx: Option<SpanCtx>,
}

/// A kept header's name, lower case: one of the names the tracer always keeps is borrowed
/// from a static list (no allocation per header), any other (`x-b3-*`, a captured header) owned.
pub type HeaderName = std::borrow::Cow<'static, str>;

/// A kept header's value (a bounded copy): up to 24 bytes inline, which most values the
/// tracer keeps (`host`, `content-type`, `content-length`, a short `user-agent`) fit, so a
/// message's values cost no allocation each.
pub type HeaderValue = compact_str::CompactString;

/// The headers kept from a message.
pub type HeaderList = Vec<(HeaderName, HeaderValue)>;

/// The request half of an exchange.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestHead {
    pub method: HeaderValue,
    /// The request target as sent (origin-form `/path?query`, or absolute-form).
    pub target: HeaderValue,
    /// "1.0" or "1.1".
    pub version: &'static str,
    /// Headers the tracer uses (lower-cased names): host, user-agent, content-length,
    /// traceparent, tracestate, b3, x-b3-*. Bounded in count and size.
    pub headers: HeaderList,
}

/// The response half of an exchange.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub version: &'static str,
    pub headers: HeaderList,
}

/// A request and (when seen) its response on one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpExchange {
    /// The direction that carried the request, seen from the traced process: `Ingress` means
    /// the process received the request (a SERVER span), `Egress` that it sent it (CLIENT).
    pub request_direction: Direction,
    pub request: RequestHead,
    /// `None` when the connection closed, or the exchange was abandoned, before a response.
    pub response: Option<ResponseHead>,
    /// CLIENT: entry of the first request write. SERVER: exit of the first request read
    /// (when the bytes were there; a blocking read's entry can be long before).
    pub start_ns: u64,
    /// Exit of the last response call (read for CLIENT, write for SERVER).
    pub end_ns: u64,
    /// Request and response body sizes in bytes (as framed on the wire, chunk framing excluded
    /// where the parser could follow it).
    pub request_body_size: u64,
    pub response_body_size: u64,
    /// Thread that handled the request (SERVER: read it; CLIENT: wrote it).
    pub tid: u32,
    /// The request's number on its connection (0, 1, ... in parse order, both directions):
    /// with the connection id, it names the request from its head to its exchange (see
    /// [`http1::RequestStart`]).
    pub seq: u64,
    /// Some bytes of this exchange were not seen (a gap inside a body, or the response's end
    /// inferred from the next request or close rather than from its framing).
    pub incomplete: bool,
    /// Byte position of the request head's first byte in its direction: names the request
    /// for the span id derivation the kernel shares ([`tracer_common::propagation::server_ids`]).
    pub head_position: u64,
    /// Ids the kernel injected into this request (`traceparent` on the wire, not in `request`).
    pub injected: Option<SpanCtx>,
    /// gRPC over HTTP/2: the messages read from the stream's DATA payloads, at most
    /// [`http2::MAX_MESSAGES`] (empty otherwise), and how many more were read.
    pub messages: Vec<http2::RpcMessage>,
    pub messages_dropped: u32,
}

/// Per-connection parser statistics the agent reports with its own counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParseStats {
    /// Bytes that were not HTTP where a message start was expected (garbage, resync).
    pub invalid_messages: u64,
    /// Messages dropped because a gap hit their head, or a head exceeded the size limit.
    pub dropped_messages: u64,
    /// Responses that had no outstanding request.
    pub unmatched_responses: u64,
    /// Requests still waiting for a response when the connection closed or expired.
    pub unanswered_requests: u64,
}

/// One connection's parser, chosen from the protocol the kernel classified from its first
/// bytes (the HTTP/2 client preface, else HTTP/1.x). HTTP/1 stays inline (the common case,
/// no extra allocation per connection); the larger HTTP/2 state is boxed.
#[allow(clippy::large_enum_variant)]
pub enum ConnParser {
    Http1(http1::Http1Conn),
    Http2 {
        conn: Box<http2::Http2Conn>,
        scratch: Vec<http2::H2Exchange>,
    },
    /// A database client connection: its calls come out of [`Self::drain_db`].
    Db(Box<db::DbConn>),
}

impl ConnParser {
    pub fn new(protocol: tracer_common::Protocol) -> Self {
        match protocol {
            tracer_common::Protocol::Http2 => Self::Http2 {
                conn: Box::new(http2::Http2Conn::new(Default::default())),
                scratch: Vec::new(),
            },
            tracer_common::Protocol::Postgres => Self::Db(Box::new(db::DbConn::postgres())),
            tracer_common::Protocol::Redis => Self::Db(Box::new(db::DbConn::redis())),
            tracer_common::Protocol::Mysql => Self::Db(Box::new(db::DbConn::mysql())),
            _ => Self::Http1(http1::Http1Conn::new(Default::default())),
        }
    }

    /// The database calls the last calls finished (none for HTTP connections).
    pub fn drain_db(&mut self) -> impl Iterator<Item = DbExchange> + '_ {
        let done = match self {
            Self::Db(c) => Some(c.drain()),
            _ => None,
        };
        done.into_iter().flatten()
    }

    pub fn on_chunk(&mut self, dir: Direction, chunk: &Chunk<'_>, out: &mut Vec<HttpExchange>) {
        match self {
            Self::Http1(c) => c.on_chunk(dir, chunk, out),
            Self::Http2 { conn, scratch } => {
                conn.on_chunk(dir, chunk, scratch);
                out.extend(scratch.drain(..).map(h2_exchange));
            }
            Self::Db(c) => c.on_chunk(dir, chunk),
        }
    }

    pub fn on_gap(&mut self, dir: Direction, len: u64) {
        match self {
            Self::Http1(c) => c.on_gap(dir, len),
            Self::Http2 { conn, .. } => conn.on_gap(dir, len),
            Self::Db(c) => c.on_gap(dir, len),
        }
    }

    /// See [`db::DbConn::resume_over_tls`]; false for HTTP (its TLS plaintext starts over).
    pub fn resume_over_tls(&mut self) -> bool {
        match self {
            Self::Db(c) => c.resume_over_tls(),
            Self::Http1(_) | Self::Http2 { .. } => false,
        }
    }

    pub fn on_close(&mut self, ts: u64, out: &mut Vec<HttpExchange>) {
        match self {
            Self::Http1(c) => c.on_close(ts, out),
            Self::Http2 { conn, scratch } => {
                conn.on_close(ts, scratch);
                out.extend(scratch.drain(..).map(h2_exchange));
            }
            Self::Db(c) => c.on_close(),
        }
    }

    pub fn on_expire(&mut self, ts: u64, out: &mut Vec<HttpExchange>) {
        match self {
            Self::Http1(c) => c.on_expire(ts, out),
            Self::Http2 { conn, scratch } => {
                conn.on_expire(ts, scratch);
                out.extend(scratch.drain(..).map(h2_exchange));
            }
            Self::Db(c) => c.on_close(),
        }
    }

    /// Request heads the last `on_chunk` parsed (see [`http1::RequestStart`]).
    pub fn started(&self) -> impl Iterator<Item = http1::RequestStart<'_>> {
        let (a, b) = match self {
            Self::Http1(c) => (Some(c.started()), None),
            Self::Http2 { conn, .. } => (None, Some(conn.started())),
            Self::Db(_) => (None, None),
        };
        a.into_iter().flatten().chain(b.into_iter().flatten())
    }

    pub fn stats(&self) -> ParseStats {
        match self {
            Self::Http1(c) => c.stats(),
            Self::Http2 { conn, .. } => conn.stats(),
            Self::Db(c) => c.stats(),
        }
    }

    /// HTTP/2-specific counters (`None` for HTTP/1 connections).
    pub fn h2_stats(&self) -> Option<http2::H2Stats> {
        match self {
            Self::Http1(_) | Self::Db(_) => None,
            Self::Http2 { conn, .. } => Some(conn.h2_stats()),
        }
    }

    pub fn is_idle(&self) -> bool {
        match self {
            Self::Http1(c) => c.is_idle(),
            Self::Http2 { conn, .. } => conn.is_idle(),
            Self::Db(c) => c.is_idle(),
        }
    }

    pub fn memory_bytes(&self) -> usize {
        match self {
            Self::Http1(c) => c.memory_bytes(),
            Self::Http2 { conn, scratch } => {
                conn.memory_bytes() + scratch.capacity() * std::mem::size_of::<http2::H2Exchange>()
            }
            Self::Db(c) => c.memory_bytes(),
        }
    }
}

/// An HTTP/2 stream as an exchange: its trailers (gRPC status) join the response headers.
fn h2_exchange(x: http2::H2Exchange) -> HttpExchange {
    let mut http = x.http;
    if let Some(resp) = http.response.as_mut() {
        resp.headers.extend(x.trailers);
    }
    http
}
