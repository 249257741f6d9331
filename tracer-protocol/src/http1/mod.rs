//! HTTP/1.0 and HTTP/1.1: an incremental parser per direction of one connection, and the pairing
//! of requests with responses into [`HttpExchange`]s.
//!
//! # Model
//!
//! Each direction is a small state machine (`Start` → `Head` → `Body` → `Start`, plus `Resync`
//! after a loss of sync). Heads are parsed with `httparse`, directly from the chunk when the
//! whole head is in it (no copy, no allocation besides the owned strings of the result) and from
//! a reused per-direction buffer when a head spans chunks. Bodies are skipped and only counted:
//! `Content-Length`, chunked (extensions and trailers; sizes with `httparse::parse_chunk_size`),
//! or delimited by the connection's close.
//!
//! The direction that carries requests is learnt from the first request (or, failing that, the
//! first response); messages of the wrong kind in a direction afterwards are treated as garbage.
//!
//! Requests wait in a FIFO (bounded by [`Limits::max_pending_requests`]; requests beyond it are
//! remembered only as a count, so FIFO pairing stays right). A response head takes the oldest
//! waiting request. 1xx interim responses are skipped. `101 Switching Protocols` and a 2xx answer
//! to `CONNECT` emit their exchange and stop all parsing on the connection (see
//! [`Http1Conn::upgrades`]).
//!
//! # Losses ("never a wrong span")
//!
//! Uncaptured tails of a chunk inside a body of known remaining length are skipped (the exchange
//! stays complete). Gaps reported with [`Http1Conn::on_gap`] inside such a body are skipped too but
//! mark the exchange incomplete. Anywhere else (in a head, in chunked framing, between messages)
//! the direction loses sync: a head in progress is dropped (`dropped_messages`), a body in
//! progress is marked incomplete, and the direction waits for a chunk that *starts* with a message
//! start of the kind it carries (`METHOD ` or `HTTP/1.x `).
//!
//! A loss of sync can hide message boundaries, so pairing becomes uncertain:
//! * On a connection where pipelining was ever observed (a request seen while an earlier one was
//!   still unanswered), any loss of sync abandons the connection: waiting requests are counted as
//!   dropped and nothing more is parsed (FIFO order cannot be re-established safely).
//! * Otherwise the client is assumed to wait for each response before its next request, and
//!   (until a clean pairing) the parser only pairs what timing proves possible: a response cannot
//!   answer a request that started after it (`start` of a request: read exit for a received one,
//!   write entry for a sent one; of a response: write entry for a sent one, read exit for a
//!   received one). A new request ends a response whose framing was lost (it is emitted,
//!   `incomplete`). Older requests still waiting when a new one arrives are dropped as "response
//!   lost" only if the response side lost sync and was active after them; otherwise the
//!   connection is taken to pipeline. A request after which requests were lost is not paired with
//!   a response that follows a response-side loss (both are dropped).
//!
//! Residual risk, by design of the above: a client that first pipelines right after a
//! response-side loss (so pipelining was never observed) can be mis-paired.
//!
//! Every response checks that timing rule, also in sync, as a guard against mis-ordered input.
//!
//! # Close
//!
//! [`Http1Conn::on_close`] ends a response delimited by close (complete), emits a response cut
//! by the close as `incomplete`, and counts requests still waiting as `unanswered_requests`.
//! Requests the traced process *sent* (client side) that got no response are also emitted with
//! `response: None` and `end_ns` = the close time, so users see failed calls — but only when no
//! loss happened on the connection since the last clean pairing (a lost response must not look
//! like a failed call). Server-side unanswered requests are only counted.

use std::collections::VecDeque;

use crate::{
    Chunk, Direction, HeaderList, HttpExchange, ParseStats, RequestHead, ResponseHead, SpanCtx,
};

/// Bounds on what one connection's parser holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest head (start line and headers) accepted; larger ones are dropped and counted.
    pub max_head_bytes: usize,
    /// Requests waiting for a response; more are counted as dropped (pairing stays right).
    pub max_pending_requests: usize,
    /// Kept header values are truncated to this many bytes.
    pub max_header_value: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head_bytes: 16 * 1024,
            max_pending_requests: 64,
            max_header_value: 512,
        }
    }
}

/// Headers kept per message.
const MAX_KEPT_HEADERS: usize = 16;
/// Request targets are truncated to this many bytes.
const MAX_TARGET: usize = 2048;
/// Longest method token accepted as a message start.
const MAX_METHOD: usize = 24;
/// Longest header name kept (only `x-b3-*` names are variable).
const MAX_KEPT_NAME: usize = 64;
/// Longest chunk-size line (with extensions).
const MAX_CHUNK_LINE: usize = 4096;
/// Headers parsed on the stack before falling back to a heap array.
const STACK_HEADERS: usize = 64;
/// A head buffer grown beyond this is freed once the head is done (others are reused).
const KEEP_BUF_CAPACITY: usize = 4096;

/// The syscall that carried a message's first byte, or the current chunk.
#[derive(Clone, Copy, Debug, Default)]
struct Meta {
    ts_enter: u64,
    ts_exit: u64,
    tid: u32,
    /// See [`Chunk::other_unseen`].
    other_unseen: u64,
    /// As a message's first meta: the position of the message's first byte, and the kernel's
    /// injected ids when the message starts exactly where the chunk that carried them did.
    position: u64,
    ctx: Option<SpanCtx>,
}

impl Meta {
    /// This chunk's meta as the first of a message starting `offset` bytes into it.
    fn starting_at(self, offset: usize) -> Self {
        Self {
            position: self.position + offset as u64,
            ctx: if offset == 0 { self.ctx } else { None },
            ..self
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Request,
    Response,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunked {
    /// Expecting a chunk-size line (buffered in `DirState::buf` when it spans chunks).
    Size,
    /// Inside chunk data.
    Data(u64),
    /// After chunk data: expecting CR LF (or a bare LF).
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines until an empty line.
    Trailer {
        line: usize,
        total: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Body {
    Length(u64),
    Chunked(Chunked),
    UntilClose,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    /// At a message boundary, in sync.
    Start,
    /// A head spans chunks; its bytes so far are in `buf`.
    Head,
    Body(Body),
    /// Lost sync: waiting for a chunk that begins with a message start.
    Resync,
}

/// Where the body bytes of the current message are accounted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    Request(u64),
    Response,
    Discard,
}

#[derive(Debug)]
struct DirState {
    st: St,
    buf: Vec<u8>,
    owner: Owner,
    /// ts_exit of the last chunk seen in this direction.
    last_exit: u64,
    /// The chunk that held the first byte of the head being buffered.
    first: Meta,
}

impl DirState {
    fn new() -> Self {
        Self {
            st: St::Start,
            buf: Vec::new(),
            owner: Owner::Discard,
            last_exit: 0,
            first: Meta::default(),
        }
    }

    fn release_buf(&mut self) {
        if self.buf.capacity() > KEEP_BUF_CAPACITY {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Head,
    Connect,
    Other,
}

#[derive(Debug)]
struct PendingReq {
    seq: u64,
    dir: Direction,
    head: RequestHead,
    method: Method,
    /// Request start (also the ordering time, see the module docs).
    start_ns: u64,
    tid: u32,
    body_size: u64,
    incomplete: bool,
    /// Requests may have been lost (request-side loss of sync) after this one.
    loss_after: bool,
    head_position: u64,
    injected: Option<SpanCtx>,
}

#[derive(Debug)]
enum Slot {
    Req(PendingReq),
    /// Requests over the pending limit: their responses are skipped in order.
    Dropped(u64),
}

/// A paired exchange whose response body is being received (or whose framing was lost).
#[derive(Debug)]
struct InFlight {
    req: PendingReq,
    resp: ResponseHead,
    body_size: u64,
    end_ns: u64,
    incomplete: bool,
    /// The response's end cannot be found from its framing any more.
    framing_lost: bool,
}

/// How a head says its body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
    /// Unusable (conflicting lengths, unknown transfer coding on a request).
    Invalid,
}

struct ParsedReq {
    head: RequestHead,
    method: Method,
    framing: Framing,
}

struct ParsedResp {
    head: ResponseHead,
    te_chunked: bool,
    te_other: bool,
    length: Result<Option<u64>, ()>,
}

/// One connection's HTTP/1.x parser and request/response pairing.
#[derive(Debug)]
pub struct Http1Conn {
    limits: Limits,
    config: httparse::ParserConfig,
    dirs: [DirState; 2],
    queue: VecDeque<Slot>,
    inflight: Option<InFlight>,
    req_dir: Option<Direction>,
    stats: ParseStats,
    upgrades: u64,
    next_seq: u64,
    /// Nothing more is parsed (tunnel, upgrade, or abandoned after a loss).
    stopped: bool,
    /// Pipelining was observed on this connection.
    pipelined: bool,
    /// A loss (or an unmatched response) happened since the last clean pairing.
    suspect: bool,
    /// The response side lost sync since the last pairing.
    resp_desynced: bool,
    /// Exchanges completed by [`Http1Conn::on_gap`] (which has no output), handed out by the
    /// next `on_chunk` or `on_close`.
    ready: Vec<HttpExchange>,
    /// Sequence numbers of the requests received (`Ingress`) whose head the last `on_chunk`
    /// parsed: see [`Http1Conn::started`].
    started: Vec<Started>,
}

/// A request head parsed in [`Http1Conn::on_chunk`] (see [`RequestStart`]).
#[derive(Clone, Copy, Debug)]
struct Started {
    seq: u64,
    tid: u32,
    start_ns: u64,
    head_position: u64,
    direction: Direction,
    injected: Option<SpanCtx>,
}

/// A request the traced process received or sent, reported as soon as its head is parsed
/// (its exchange completes later, with the same [`HttpExchange::seq`], or never).
#[derive(Clone, Copy, Debug)]
pub struct RequestStart<'a> {
    pub seq: u64,
    /// Thread that read (SERVER) or wrote (CLIENT) the request's first bytes.
    pub tid: u32,
    /// `Ingress`: received (SERVER side); `Egress`: sent (CLIENT side).
    pub direction: Direction,
    /// As [`HttpExchange::injected`] will be.
    pub injected: Option<SpanCtx>,
    /// As [`HttpExchange::start_ns`] will be.
    pub start_ns: u64,
    /// As [`HttpExchange::head_position`] will be.
    pub head_position: u64,
    /// `None` when the request was not kept (over the pending limit, or the connection was
    /// given up while parsing it): it will never complete.
    pub head: Option<&'a RequestHead>,
}

enum Plaus {
    Yes(Kind),
    Maybe,
    No,
}

/// Whether `b` looks like the beginning of a request (`METHOD target`) or response
/// (`HTTP/1.x `). `Maybe` when `b` is a prefix of something that could be.
fn plausible_start(b: &[u8]) -> Plaus {
    const RESP: &[u8] = b"HTTP/1.";
    let n = b.len().min(RESP.len());
    if b[..n] == RESP[..n] {
        return match (b.get(7), b.get(8)) {
            (Some(b'0' | b'1'), Some(b' ')) => Plaus::Yes(Kind::Response),
            (None, _) | (Some(b'0' | b'1'), None) => Plaus::Maybe,
            _ => Plaus::No,
        };
    }
    for (i, &c) in b.iter().enumerate() {
        if c.is_ascii_uppercase() || c == b'-' || c == b'_' {
            if i >= MAX_METHOD {
                return Plaus::No;
            }
            continue;
        }
        if c == b' ' && i > 0 {
            return match b.get(i + 1) {
                Some(t) if (0x21..=0x7e).contains(t) => Plaus::Yes(Kind::Request),
                Some(_) => Plaus::No,
                None => Plaus::Maybe,
            };
        }
        return Plaus::No;
    }
    Plaus::Maybe
}

/// Index just past the empty line ending a head (`\n\n` or `\n\r\n`), scanning from `from`.
fn find_head_end(b: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < b.len() {
        if b[i] == b'\n' {
            match (b.get(i + 1), b.get(i + 2)) {
                (Some(b'\n'), _) => return Some(i + 2),
                (Some(b'\r'), Some(b'\n')) => return Some(i + 3),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

fn lossy(b: &[u8], max: usize) -> String {
    String::from_utf8_lossy(&b[..b.len().min(max)]).into_owned()
}

fn kept_name(name: &str) -> bool {
    const KEPT: [&str; 8] = [
        "host",
        "user-agent",
        "content-length",
        "content-type",
        "traceparent",
        "tracestate",
        "b3",
        "x-b3-",
    ];
    KEPT[..7].iter().any(|k| name.eq_ignore_ascii_case(k))
        || (name.len() > 5
            && name.len() <= MAX_KEPT_NAME
            && name.as_bytes()[..5].eq_ignore_ascii_case(KEPT[7].as_bytes()))
}

fn kept_headers(headers: &[httparse::Header<'_>], max_value: usize) -> HeaderList {
    let mut out = HeaderList::new();
    for h in headers {
        if out.len() >= MAX_KEPT_HEADERS {
            break;
        }
        if kept_name(h.name) {
            out.push((h.name.to_ascii_lowercase(), lossy(h.value, max_value)));
        }
    }
    out
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|c| !matches!(c, b' ' | b'\t'))
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|c| !matches!(c, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    v.get(start..end).unwrap_or(&[])
}

fn parse_decimal(v: &[u8]) -> Option<u64> {
    let v = trim_ows(v);
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    let mut n: u64 = 0;
    for &c in v {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    Some(n)
}

/// `Content-Length` (`Err` when invalid or conflicting) and transfer codings (`chunked` last,
/// other) of a head.
fn body_headers(headers: &[httparse::Header<'_>]) -> (Result<Option<u64>, ()>, bool, bool) {
    let mut length: Result<Option<u64>, ()> = Ok(None);
    let mut te_seen = false;
    let mut last_chunked = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            length = match (length, parse_decimal(h.value)) {
                (Ok(None), Some(n)) => Ok(Some(n)),
                (Ok(Some(a)), Some(b)) if a == b => Ok(Some(a)),
                _ => Err(()),
            };
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            for coding in h.value.split(|&c| c == b',') {
                let coding = trim_ows(coding);
                if coding.is_empty() {
                    continue;
                }
                te_seen = true;
                last_chunked = coding.eq_ignore_ascii_case(b"chunked");
            }
        }
    }
    (length, te_seen && last_chunked, te_seen && !last_chunked)
}

fn version_str(v: Option<u8>) -> &'static str {
    if v == Some(0) { "1.0" } else { "1.1" }
}

fn build_request(req: &httparse::Request<'_, '_>, max_value: usize) -> ParsedReq {
    let method = req.method.unwrap_or("");
    let kind = if method == "HEAD" {
        Method::Head
    } else if method == "CONNECT" {
        Method::Connect
    } else {
        Method::Other
    };
    let (length, te_chunked, te_other) = body_headers(req.headers);
    let framing = if te_chunked {
        Framing::Chunked
    } else if te_other {
        Framing::Invalid
    } else {
        match length {
            Ok(Some(0)) | Ok(None) => Framing::None,
            Ok(Some(n)) => Framing::Length(n),
            Err(()) => Framing::Invalid,
        }
    };
    ParsedReq {
        head: RequestHead {
            method: lossy(method.as_bytes(), MAX_METHOD),
            target: lossy(req.path.unwrap_or("").as_bytes(), MAX_TARGET),
            version: version_str(req.version),
            headers: kept_headers(req.headers, max_value),
        },
        method: kind,
        framing,
    }
}

fn build_response(resp: &httparse::Response<'_, '_>, max_value: usize) -> ParsedResp {
    let (length, te_chunked, te_other) = body_headers(resp.headers);
    ParsedResp {
        head: ResponseHead {
            status: resp.code.unwrap_or(0),
            version: version_str(resp.version),
            headers: kept_headers(resp.headers, max_value),
        },
        te_chunked,
        te_other,
        length,
    }
}

/// Parses a complete request head (`Err` if it is not one).
fn parse_request(
    config: &httparse::ParserConfig,
    bytes: &[u8],
    max_value: usize,
) -> Result<ParsedReq, ()> {
    let mut headers = [httparse::EMPTY_HEADER; STACK_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match config.parse_request(&mut req, bytes) {
        Ok(httparse::Status::Complete(_)) => return Ok(build_request(&req, max_value)),
        Err(httparse::Error::TooManyHeaders) => {}
        _ => return Err(()),
    }
    // Rare: more headers than the stack array. A header line takes at least 3 bytes.
    let mut headers = vec![httparse::EMPTY_HEADER; bytes.len() / 3 + 1];
    let mut req = httparse::Request::new(&mut headers);
    match config.parse_request(&mut req, bytes) {
        Ok(httparse::Status::Complete(_)) => Ok(build_request(&req, max_value)),
        _ => Err(()),
    }
}

/// Parses a complete response head (`Err` if it is not one).
fn parse_response(
    config: &httparse::ParserConfig,
    bytes: &[u8],
    max_value: usize,
) -> Result<ParsedResp, ()> {
    let mut headers = [httparse::EMPTY_HEADER; STACK_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match config.parse_response(&mut resp, bytes) {
        Ok(httparse::Status::Complete(_)) => return Ok(build_response(&resp, max_value)),
        Err(httparse::Error::TooManyHeaders) => {}
        _ => return Err(()),
    }
    let mut headers = vec![httparse::EMPTY_HEADER; bytes.len() / 3 + 1];
    let mut resp = httparse::Response::new(&mut headers);
    match config.parse_response(&mut resp, bytes) {
        Ok(httparse::Status::Complete(_)) => Ok(build_response(&resp, max_value)),
        _ => Err(()),
    }
}

fn strings_bytes(list: &HeaderList) -> usize {
    list.capacity() * std::mem::size_of::<(String, String)>()
        + list
            .iter()
            .map(|(n, v)| n.capacity() + v.capacity())
            .sum::<usize>()
}

fn req_bytes(r: &PendingReq) -> usize {
    r.head.method.capacity() + r.head.target.capacity() + strings_bytes(&r.head.headers)
}

impl Http1Conn {
    pub fn new(limits: Limits) -> Self {
        let mut config = httparse::ParserConfig::default();
        config
            .allow_spaces_after_header_name_in_responses(true)
            .allow_obsolete_multiline_headers_in_responses(true)
            .allow_multiple_spaces_in_response_status_delimiters(true)
            .ignore_invalid_headers_in_responses(true)
            .ignore_invalid_headers_in_requests(true);
        Self {
            limits,
            config,
            dirs: [DirState::new(), DirState::new()],
            queue: VecDeque::new(),
            inflight: None,
            req_dir: None,
            stats: ParseStats::default(),
            upgrades: 0,
            next_seq: 0,
            stopped: false,
            pipelined: false,
            suspect: false,
            resp_desynced: false,
            ready: Vec::new(),
            started: Vec::new(),
        }
    }

    /// Feed one chunk of one direction. Completed exchanges are pushed to `out`.
    pub fn on_chunk(&mut self, dir: Direction, chunk: &Chunk<'_>, out: &mut Vec<HttpExchange>) {
        out.append(&mut self.ready);
        self.started.clear();
        if self.stopped {
            return;
        }
        let d = dir.index();
        let meta = Meta {
            ts_enter: chunk.ts_enter,
            ts_exit: chunk.ts_exit,
            tid: chunk.tid,
            other_unseen: chunk.other_unseen,
            position: chunk.position,
            ctx: chunk.ctx,
        };
        let data = chunk.data;
        let mut p = 0usize;
        while p < data.len() && !self.stopped {
            match self.dirs[d].st {
                St::Resync => {
                    // Only at a chunk boundary, and only for the kind this direction carries.
                    if p == 0
                        && let Plaus::Yes(kind) = plausible_start(data)
                        && self.kind_allowed(dir, kind)
                    {
                        self.dirs[d].st = St::Start;
                        continue;
                    }
                    break;
                }
                St::Start => {
                    while p < data.len() && matches!(data[p], b'\r' | b'\n') {
                        p += 1;
                    }
                    if p >= data.len() {
                        break;
                    }
                    let rest = &data[p..];
                    match plausible_start(rest) {
                        Plaus::No => {
                            self.invalid(dir, out);
                            break;
                        }
                        Plaus::Yes(kind) if !self.kind_allowed(dir, kind) => {
                            self.invalid(dir, out);
                            break;
                        }
                        _ => {}
                    }
                    if let Some(end) = find_head_end(rest, 0) {
                        if end > self.limits.max_head_bytes {
                            self.drop_head(dir, out);
                            break;
                        }
                        if !self.on_head(dir, &rest[..end], meta.starting_at(p), meta, out) {
                            break;
                        }
                        p += end;
                    } else if rest.len() >= self.limits.max_head_bytes {
                        self.drop_head(dir, out);
                        break;
                    } else {
                        let st = &mut self.dirs[d];
                        st.buf.clear();
                        st.buf.extend_from_slice(rest);
                        st.st = St::Head;
                        // The message's first byte is in this chunk.
                        st.first = meta.starting_at(p);
                        p = data.len();
                    }
                }
                St::Head => {
                    let old = self.dirs[d].buf.len();
                    let room = self.limits.max_head_bytes.saturating_sub(old);
                    let take = room.min(data.len() - p);
                    self.dirs[d].buf.extend_from_slice(&data[p..p + take]);
                    match plausible_start(&self.dirs[d].buf) {
                        Plaus::No => {
                            self.dirs[d].release_buf();
                            self.invalid(dir, out);
                            break;
                        }
                        Plaus::Yes(kind) if !self.kind_allowed(dir, kind) => {
                            self.dirs[d].release_buf();
                            self.invalid(dir, out);
                            break;
                        }
                        _ => {}
                    }
                    match find_head_end(&self.dirs[d].buf, old.saturating_sub(2)) {
                        Some(end) if end > old => {
                            let buf = std::mem::take(&mut self.dirs[d].buf);
                            let first = self.dirs[d].first;
                            let ok = self.on_head(dir, &buf[..end], first, meta, out);
                            self.dirs[d].buf = buf;
                            self.dirs[d].release_buf();
                            if !ok {
                                break;
                            }
                            p += end - old;
                        }
                        Some(_) => {
                            self.dirs[d].release_buf();
                            self.invalid(dir, out);
                            break;
                        }
                        None => {
                            if self.dirs[d].buf.len() >= self.limits.max_head_bytes {
                                self.drop_head(dir, out);
                                break;
                            }
                            p += take;
                        }
                    }
                }
                St::Body(Body::Length(rem)) => {
                    let avail = (data.len() - p) as u64;
                    let take = rem.min(avail);
                    self.add_body(d, take);
                    p += take as usize;
                    if take == rem {
                        self.finish_message(dir, meta.ts_exit, false, out);
                    } else {
                        self.dirs[d].st = St::Body(Body::Length(rem - take));
                    }
                }
                St::Body(Body::UntilClose) => {
                    self.add_body(d, (data.len() - p) as u64);
                    p = data.len();
                }
                St::Body(Body::Chunked(ck)) => {
                    p = self.chunked(dir, ck, data, p, meta, out);
                }
            }
        }
        if !self.stopped {
            let uncaptured = u64::from(chunk.total_len).saturating_sub(data.len() as u64);
            if uncaptured > 0 {
                self.skip(dir, uncaptured, Some(meta), out);
            }
        }
        if self.stopped {
            return;
        }
        self.dirs[d].last_exit = meta.ts_exit;
        // The last response chunk seen so far (close-delimited bodies, lost framing).
        if let Some(f) = self.inflight.as_mut()
            && f.req.dir != dir
        {
            f.end_ns = meta.ts_exit;
        }
    }

    /// `len` bytes of `dir` were lost (never delivered). Inside a body of known remaining length
    /// they are skipped (the exchange is marked incomplete); anywhere else the direction loses
    /// sync. An exchange completed by the gap is handed out by the next `on_chunk`/`on_close`.
    pub fn on_gap(&mut self, dir: Direction, len: u64) {
        self.started.clear();
        if self.stopped || len == 0 {
            return;
        }
        let mut ready = std::mem::take(&mut self.ready);
        self.skip(dir, len, None, &mut ready);
        self.ready = ready;
    }

    /// Connection closed (or EOF) at monotonic time `ts`.
    ///
    /// Ends a response delimited by the close (complete); a response cut by the close is emitted
    /// `incomplete`. Requests still waiting are counted in `unanswered_requests`; those the traced
    /// process sent (client side) are also emitted with `response: None` and `end_ns = ts`,
    /// unless a loss since the last clean pairing makes "no response" uncertain. The parser is
    /// then reset (statistics are kept).
    pub fn on_close(&mut self, ts: u64, out: &mut Vec<HttpExchange>) {
        out.append(&mut self.ready);
        if !self.stopped {
            if let Some(mut f) = self.inflight.take() {
                let rd = f.req.dir.opposite().index();
                let by_close = self.dirs[rd].st == St::Body(Body::UntilClose)
                    && self.dirs[rd].owner == Owner::Response;
                if !by_close || f.framing_lost {
                    f.incomplete = true;
                }
                Self::emit(f, out);
            }
            for st in &self.dirs {
                if st.st == St::Head {
                    self.stats.dropped_messages += 1;
                }
            }
            let emit_unanswered = !self.suspect && !self.resp_desynced;
            for slot in self.queue.drain(..) {
                if let Slot::Req(r) = slot {
                    self.stats.unanswered_requests += 1;
                    if r.dir == Direction::Egress && emit_unanswered {
                        out.push(HttpExchange {
                            request_direction: r.dir,
                            request: r.head,
                            response: None,
                            start_ns: r.start_ns,
                            end_ns: ts.max(r.start_ns),
                            request_body_size: r.body_size,
                            response_body_size: 0,
                            tid: r.tid,
                            seq: r.seq,
                            incomplete: r.incomplete,
                            head_position: r.head_position,
                            injected: r.injected,
                            messages: Vec::new(),
                            messages_dropped: 0,
                        });
                    }
                }
            }
        }
        let (limits, stats, upgrades) = (self.limits, self.stats, self.upgrades);
        *self = Self::new(limits);
        self.stats = stats;
        self.upgrades = upgrades;
    }

    /// The connection is given up without its end having been seen (expiry: its close may
    /// have been lost with other events). Like [`Http1Conn::on_close`], but requests still
    /// waiting are only counted: "no response" cannot be told from "response lost".
    pub fn on_expire(&mut self, ts: u64, out: &mut Vec<HttpExchange>) {
        self.suspect = true;
        self.on_close(ts, out);
    }

    pub fn stats(&self) -> ParseStats {
        self.stats
    }

    /// Connections whose HTTP parsing ended in a tunnel (`CONNECT` answered 2xx) or an upgrade
    /// (`101 Switching Protocols`). Not part of [`ParseStats`] to keep that type stable.
    pub fn upgrades(&self) -> u64 {
        self.upgrades
    }

    /// The requests (received or sent) whose head the last [`Self::on_chunk`] parsed, in
    /// order. Empty after `on_gap` and `on_close`.
    pub fn started(&self) -> impl Iterator<Item = RequestStart<'_>> {
        self.started.iter().map(
            |&Started {
                 seq,
                 tid,
                 start_ns,
                 head_position,
                 direction,
                 injected,
             }| RequestStart {
                seq,
                tid,
                start_ns,
                head_position,
                direction,
                injected,
                head: self.queue.iter().find_map(|s| match s {
                    Slot::Req(r) if r.seq == seq => Some(&r.head),
                    _ => None,
                }),
            },
        )
    }

    /// Approximate heap bytes held (for bounded-memory assertions).
    pub fn memory_bytes(&self) -> usize {
        let mut n = self.dirs.iter().map(|d| d.buf.capacity()).sum::<usize>();
        n += self.started.capacity() * std::mem::size_of::<Started>();
        n += self.queue.capacity() * std::mem::size_of::<Slot>();
        n += self
            .queue
            .iter()
            .map(|s| match s {
                Slot::Req(r) => req_bytes(r),
                Slot::Dropped(_) => 0,
            })
            .sum::<usize>();
        if let Some(f) = &self.inflight {
            n += req_bytes(&f.req) + strings_bytes(&f.resp.headers);
        }
        n += self.ready.capacity() * std::mem::size_of::<HttpExchange>();
        n += self
            .ready
            .iter()
            .map(|x| {
                x.request.method.capacity()
                    + x.request.target.capacity()
                    + strings_bytes(&x.request.headers)
                    + x.response.as_ref().map_or(0, |r| strings_bytes(&r.headers))
            })
            .sum::<usize>();
        n
    }

    /// True when idle (no partial message, no pending request): the table may expire it cheaply.
    pub fn is_idle(&self) -> bool {
        self.stopped
            || (self.queue.is_empty()
                && self.inflight.is_none()
                && self.ready.is_empty()
                && self
                    .dirs
                    .iter()
                    .all(|d| matches!(d.st, St::Start | St::Resync) && d.buf.is_empty()))
    }

    // ---- internals ----

    /// May a message of `kind` travel in `dir`, given the role learnt so far?
    fn kind_allowed(&self, dir: Direction, kind: Kind) -> bool {
        match self.req_dir {
            None => true,
            Some(r) => (r == dir) == (kind == Kind::Request),
        }
    }

    /// Bytes that are not HTTP where a message start was expected.
    fn invalid(&mut self, dir: Direction, out: &mut Vec<HttpExchange>) {
        self.stats.invalid_messages += 1;
        self.lose(dir, out);
    }

    /// A head hit by a loss, or too large: dropped and counted, buffer freed.
    fn drop_head(&mut self, dir: Direction, out: &mut Vec<HttpExchange>) {
        self.stats.dropped_messages += 1;
        self.dirs[dir.index()].buf = Vec::new();
        self.lose(dir, out);
    }

    /// `dir` lost sync: the message in progress is incomplete, the direction waits for a chunk
    /// that starts a message, and pairing becomes cautious (or the connection is abandoned when
    /// it pipelines).
    fn lose(&mut self, dir: Direction, out: &mut Vec<HttpExchange>) {
        let d = dir.index();
        self.dirs[d].release_buf();
        self.dirs[d].st = St::Resync;
        self.mark_incomplete(d);
        match self.dirs[d].owner {
            Owner::Response => {
                if let Some(f) = self.inflight.as_mut() {
                    f.framing_lost = true;
                }
            }
            Owner::Request(_) | Owner::Discard => {}
        }
        self.dirs[d].owner = Owner::Discard;
        self.pairing_loss(dir, out);
    }

    fn pairing_loss(&mut self, dir: Direction, out: &mut Vec<HttpExchange>) {
        if self.pipelined {
            self.abandon(out);
            return;
        }
        self.suspect = true;
        if self.req_dir == Some(dir) {
            if let Some(Slot::Req(r)) = self.queue.back_mut() {
                r.loss_after = true;
            }
        } else {
            self.resp_desynced = true;
        }
    }

    /// Pairing can no longer be trusted: emit what is already paired, drop the rest, stop.
    fn abandon(&mut self, out: &mut Vec<HttpExchange>) {
        if let Some(mut f) = self.inflight.take() {
            f.incomplete = true;
            Self::emit(f, out);
        }
        self.stop();
    }

    /// Stop parsing this connection (tunnel, upgrade, abandon); requests still waiting are
    /// counted as dropped.
    fn stop(&mut self) {
        for slot in self.queue.drain(..) {
            if let Slot::Req(_) = slot {
                self.stats.dropped_messages += 1;
            }
        }
        self.queue = VecDeque::new();
        for d in &mut self.dirs {
            d.buf = Vec::new();
            d.st = St::Resync;
            d.owner = Owner::Discard;
        }
        self.stopped = true;
    }

    fn req_mut(&mut self, seq: u64) -> Option<&mut PendingReq> {
        let in_queue = self.queue.iter_mut().rev().find_map(|s| match s {
            Slot::Req(r) if r.seq == seq => Some(r),
            _ => None,
        });
        match in_queue {
            Some(r) => Some(r),
            None => self
                .inflight
                .as_mut()
                .map(|f| &mut f.req)
                .filter(|r| r.seq == seq),
        }
    }

    fn mark_incomplete(&mut self, d: usize) {
        match self.dirs[d].owner {
            Owner::Request(seq) => {
                if let Some(r) = self.req_mut(seq) {
                    r.incomplete = true;
                }
            }
            Owner::Response => {
                if let Some(f) = self.inflight.as_mut() {
                    f.incomplete = true;
                }
            }
            Owner::Discard => {}
        }
    }

    fn add_body(&mut self, d: usize, n: u64) {
        match self.dirs[d].owner {
            Owner::Request(seq) => {
                if let Some(r) = self.req_mut(seq) {
                    r.body_size = r.body_size.saturating_add(n);
                }
            }
            Owner::Response => {
                if let Some(f) = self.inflight.as_mut() {
                    f.body_size = f.body_size.saturating_add(n);
                }
            }
            Owner::Discard => {}
        }
    }

    /// The current message of `dir` ended (its last byte moved at `end_ns`).
    fn finish_message(
        &mut self,
        dir: Direction,
        end_ns: u64,
        incomplete: bool,
        out: &mut Vec<HttpExchange>,
    ) {
        let d = dir.index();
        if incomplete {
            self.mark_incomplete(d);
        }
        if self.dirs[d].owner == Owner::Response
            && let Some(mut f) = self.inflight.take()
        {
            f.end_ns = end_ns;
            Self::emit(f, out);
        }
        self.dirs[d].st = St::Start;
        self.dirs[d].owner = Owner::Discard;
    }

    fn emit(f: InFlight, out: &mut Vec<HttpExchange>) {
        out.push(HttpExchange {
            request_direction: f.req.dir,
            request: f.req.head,
            response: Some(f.resp),
            start_ns: f.req.start_ns,
            end_ns: f.end_ns.max(f.req.start_ns),
            request_body_size: f.req.body_size,
            response_body_size: f.body_size,
            tid: f.req.tid,
            seq: f.req.seq,
            incomplete: f.incomplete || f.req.incomplete,
            head_position: f.req.head_position,
            injected: f.req.injected,
            messages: Vec::new(),
            messages_dropped: 0,
        });
    }

    /// `n` bytes of `dir` that the parser cannot see: an uncaptured tail of the chunk `meta`, or
    /// a gap (`meta == None`).
    fn skip(&mut self, dir: Direction, n: u64, meta: Option<Meta>, out: &mut Vec<HttpExchange>) {
        let d = dir.index();
        let gap = meta.is_none();
        let end_ns = meta.map_or(self.dirs[d].last_exit, |m| m.ts_exit);
        match self.dirs[d].st {
            St::Body(Body::Length(rem)) => {
                let take = rem.min(n);
                self.add_body(d, take);
                if gap {
                    self.mark_incomplete(d);
                }
                if take == rem {
                    self.finish_message(dir, end_ns, gap, out);
                    if n > take {
                        self.lose(dir, out);
                    }
                } else {
                    self.dirs[d].st = St::Body(Body::Length(rem - take));
                }
            }
            St::Body(Body::Chunked(Chunked::Data(rem))) => {
                let take = rem.min(n);
                self.add_body(d, take);
                if gap {
                    self.mark_incomplete(d);
                }
                if take == rem {
                    // The CR LF closing the chunk data has a fixed size: skipping it unseen keeps
                    // sync (servers often write size line, data and CR LF in one call).
                    self.skip_data_crlf(dir, n - take, out);
                } else {
                    self.dirs[d].st = St::Body(Body::Chunked(Chunked::Data(rem - take)));
                }
            }
            St::Body(Body::Chunked(Chunked::DataCr)) => self.skip_data_crlf(dir, n, out),
            St::Body(Body::Chunked(Chunked::DataLf)) => self.skip_data_crlf(dir, n + 1, out),
            St::Body(Body::UntilClose) => {
                self.add_body(d, n);
                if gap {
                    self.mark_incomplete(d);
                }
            }
            St::Head => self.drop_head(dir, out),
            St::Start | St::Body(Body::Chunked(_)) => self.lose(dir, out),
            St::Resync => self.pairing_loss(dir, out),
        }
    }

    /// `n` unseen bytes right after chunk data: up to 2 of them are the CR LF ending the data;
    /// more would be the next chunk-size line, which cannot be skipped blind.
    fn skip_data_crlf(&mut self, dir: Direction, n: u64, out: &mut Vec<HttpExchange>) {
        let d = dir.index();
        self.dirs[d].st = St::Body(Body::Chunked(match n {
            0 => Chunked::DataCr,
            1 => Chunked::DataLf,
            2 => Chunked::Size,
            _ => return self.lose(dir, out),
        }));
    }

    /// Chunked body bytes from `data[p..]`; returns the new position.
    fn chunked(
        &mut self,
        dir: Direction,
        ck: Chunked,
        data: &[u8],
        p: usize,
        meta: Meta,
        out: &mut Vec<HttpExchange>,
    ) -> usize {
        let d = dir.index();
        match ck {
            Chunked::Size => {
                let old = self.dirs[d].buf.len();
                let (line, take): (&[u8], usize) = if old == 0 {
                    (&data[p..], data.len() - p)
                } else {
                    let take = MAX_CHUNK_LINE.saturating_sub(old).min(data.len() - p);
                    self.dirs[d].buf.extend_from_slice(&data[p..p + take]);
                    (&self.dirs[d].buf, take)
                };
                if !line.first().is_some_and(u8::is_ascii_hexdigit) {
                    self.lose(dir, out);
                    return data.len();
                }
                match httparse::parse_chunk_size(line) {
                    Ok(httparse::Status::Complete((n, size))) if n > old => {
                        self.dirs[d].buf.clear();
                        self.dirs[d].st = St::Body(Body::Chunked(if size == 0 {
                            Chunked::Trailer { line: 0, total: 0 }
                        } else {
                            Chunked::Data(size)
                        }));
                        p + (n - old)
                    }
                    Ok(httparse::Status::Partial) if line.len() < MAX_CHUNK_LINE => {
                        if old == 0 {
                            self.dirs[d].buf.extend_from_slice(&data[p..]);
                        }
                        p + take
                    }
                    _ => {
                        self.lose(dir, out);
                        data.len()
                    }
                }
            }
            Chunked::Data(rem) => {
                let take = rem.min((data.len() - p) as u64);
                self.add_body(d, take);
                self.dirs[d].st = St::Body(Body::Chunked(if take == rem {
                    Chunked::DataCr
                } else {
                    Chunked::Data(rem - take)
                }));
                p + take as usize
            }
            Chunked::DataCr | Chunked::DataLf => match (ck, data[p]) {
                (Chunked::DataCr, b'\r') => {
                    self.dirs[d].st = St::Body(Body::Chunked(Chunked::DataLf));
                    p + 1
                }
                (_, b'\n') => {
                    self.dirs[d].st = St::Body(Body::Chunked(Chunked::Size));
                    p + 1
                }
                _ => {
                    self.lose(dir, out);
                    data.len()
                }
            },
            Chunked::Trailer {
                mut line,
                mut total,
            } => {
                for (i, &c) in data[p..].iter().enumerate() {
                    total += 1;
                    if total > self.limits.max_head_bytes {
                        self.lose(dir, out);
                        return data.len();
                    }
                    match c {
                        b'\n' if line == 0 => {
                            self.finish_message(dir, meta.ts_exit, false, out);
                            return p + i + 1;
                        }
                        b'\n' => line = 0,
                        b'\r' => {}
                        _ => line += 1,
                    }
                }
                self.dirs[d].st = St::Body(Body::Chunked(Chunked::Trailer { line, total }));
                data.len()
            }
        }
    }

    /// A complete head (`bytes`, starting at a message start). `first` is the chunk with its
    /// first byte, `cur` the chunk with its last. Returns false when the caller must stop
    /// reading this chunk (garbage, or parsing stopped).
    fn on_head(
        &mut self,
        dir: Direction,
        bytes: &[u8],
        first: Meta,
        cur: Meta,
        out: &mut Vec<HttpExchange>,
    ) -> bool {
        let kind = if bytes.starts_with(b"HTTP/") {
            Kind::Response
        } else {
            Kind::Request
        };
        if !self.kind_allowed(dir, kind) {
            self.invalid(dir, out);
            return false;
        }
        let max_value = self.limits.max_header_value;
        match kind {
            Kind::Request => match parse_request(&self.config, bytes, max_value) {
                Ok(r) => {
                    self.on_request(dir, r, first, out);
                    !self.stopped
                }
                Err(()) => {
                    self.invalid(dir, out);
                    false
                }
            },
            Kind::Response => match parse_response(&self.config, bytes, max_value) {
                Ok(r) if r.head.status >= 100 => {
                    self.on_response(dir, r, first, cur, out);
                    !self.stopped
                }
                _ => {
                    self.invalid(dir, out);
                    false
                }
            },
        }
    }

    fn on_request(
        &mut self,
        dir: Direction,
        r: ParsedReq,
        first: Meta,
        out: &mut Vec<HttpExchange>,
    ) {
        self.req_dir = Some(dir);
        let d = dir.index();
        let start_ns = match dir {
            Direction::Ingress => first.ts_exit,
            Direction::Egress => first.ts_enter,
        };
        // A response whose framing was lost ends, at the latest, when the next request starts.
        if self.inflight.as_ref().is_some_and(|f| f.framing_lost)
            && let Some(f) = self.inflight.take()
        {
            Self::emit(f, out);
        }
        let older_waiting = self.queue.iter().any(|s| matches!(s, Slot::Req(_)));
        if older_waiting || self.inflight.is_some() {
            // Either the client pipelines, or the response side lost the older requests'
            // responses. The latter only if the response side lost sync and was active after
            // the newest older request (a non-pipelining client waits for the response).
            let resp_exit = self.dirs[dir.opposite().index()].last_exit;
            let newest_older = self
                .queue
                .iter()
                .rev()
                .find_map(|s| match s {
                    Slot::Req(r) => Some(r.start_ns),
                    Slot::Dropped(_) => None,
                })
                .unwrap_or(0);
            if !self.pipelined
                && self.resp_desynced
                && self.inflight.is_none()
                && resp_exit >= newest_older
                && resp_exit <= start_ns
            {
                for slot in self.queue.drain(..) {
                    if let Slot::Req(_) = slot {
                        self.stats.dropped_messages += 1;
                    }
                }
            } else {
                self.pipelined = true;
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.started.push(Started {
            seq,
            tid: first.tid,
            start_ns,
            head_position: first.position,
            direction: dir,
            injected: first.ctx.filter(|_| dir == Direction::Egress),
        });
        let pending = PendingReq {
            seq,
            dir,
            head: r.head,
            method: r.method,
            start_ns,
            tid: first.tid,
            body_size: 0,
            incomplete: false,
            loss_after: false,
            head_position: first.position,
            injected: first.ctx.filter(|_| dir == Direction::Egress),
        };
        let cap = self.limits.max_pending_requests.max(1);
        let owner = if self.queue.len() < cap {
            self.queue.push_back(Slot::Req(pending));
            Owner::Request(seq)
        } else {
            self.stats.dropped_messages += 1;
            match self.queue.back_mut() {
                Some(Slot::Dropped(n)) => *n = n.saturating_add(1),
                _ => self.queue.push_back(Slot::Dropped(1)),
            }
            Owner::Discard
        };
        self.dirs[d].owner = owner;
        self.dirs[d].st = match r.framing {
            Framing::None | Framing::UntilClose => St::Start,
            Framing::Length(n) => St::Body(Body::Length(n)),
            Framing::Chunked => St::Body(Body::Chunked(Chunked::Size)),
            Framing::Invalid => {
                self.lose(dir, out);
                return;
            }
        };
        if self.dirs[d].st == St::Start {
            self.dirs[d].owner = Owner::Discard;
        }
    }

    fn on_response(
        &mut self,
        dir: Direction,
        r: ParsedResp,
        first: Meta,
        cur: Meta,
        out: &mut Vec<HttpExchange>,
    ) {
        if self.req_dir.is_none() {
            self.req_dir = Some(dir.opposite());
        }
        let d = dir.index();
        // A held response (framing lost) ended before this one.
        if let Some(mut f) = self.inflight.take() {
            f.incomplete = true;
            Self::emit(f, out);
        }
        let status = r.head.status;
        if (100..200).contains(&status) && status != 101 {
            // Interim (100 Continue, 103 Early Hints): not paired; the final response follows.
            self.dirs[d].st = St::Start;
            self.dirs[d].owner = Owner::Discard;
            return;
        }
        let resp_start = match dir {
            Direction::Egress => first.ts_enter,
            Direction::Ingress => first.ts_exit,
        };
        let req = self.pair(resp_start, first.other_unseen > 0);
        let method = req.as_ref().map_or(Method::Other, |q| q.method);
        if status == 101 || (method == Method::Connect && (200..300).contains(&status)) {
            if let Some(req) = req {
                let incomplete = req.incomplete;
                Self::emit(
                    InFlight {
                        req,
                        resp: r.head,
                        body_size: 0,
                        end_ns: cur.ts_exit,
                        incomplete,
                        framing_lost: false,
                    },
                    out,
                );
            }
            self.upgrades += 1;
            self.stop();
            return;
        }
        let framing = if method == Method::Head || status == 204 || status == 304 {
            Framing::None
        } else if r.te_chunked {
            Framing::Chunked
        } else if r.te_other {
            Framing::UntilClose
        } else {
            match r.length {
                Ok(Some(0)) => Framing::None,
                Ok(Some(n)) => Framing::Length(n),
                Ok(None) => Framing::UntilClose,
                Err(()) => Framing::Invalid,
            }
        };
        self.dirs[d].owner = match req {
            Some(req) => {
                self.inflight = Some(InFlight {
                    req,
                    resp: r.head,
                    body_size: 0,
                    end_ns: cur.ts_exit,
                    incomplete: false,
                    framing_lost: false,
                });
                Owner::Response
            }
            None => Owner::Discard,
        };
        match framing {
            Framing::None => self.finish_message(dir, cur.ts_exit, false, out),
            Framing::Length(n) => self.dirs[d].st = St::Body(Body::Length(n)),
            Framing::Chunked => self.dirs[d].st = St::Body(Body::Chunked(Chunked::Size)),
            Framing::UntilClose => self.dirs[d].st = St::Body(Body::UntilClose),
            Framing::Invalid => self.lose(dir, out),
        }
    }

    /// The request a final response starting at `resp_start` answers, if it can be told.
    /// `requests_unseen`: the kernel had moved request bytes the parser was not given.
    fn pair(&mut self, resp_start: u64, requests_unseen: bool) -> Option<PendingReq> {
        match self.queue.front_mut() {
            None => {
                self.stats.unmatched_responses += 1;
                self.suspect = true;
                None
            }
            Some(Slot::Dropped(n)) => {
                // The answer to a request over the pending limit (already counted).
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.queue.pop_front();
                }
                None
            }
            Some(Slot::Req(r)) => {
                if r.start_ns > resp_start {
                    // Started before the oldest waiting request: answers a request not seen.
                    self.stats.unmatched_responses += 1;
                    self.suspect = true;
                    return None;
                }
                // After a response-side loss this response may answer a later request: one
                // already known lost, or one whose bytes were never delivered (its loss only
                // shows when a later request arrives).
                let ambiguous = (r.loss_after || requests_unseen) && self.resp_desynced;
                let Some(Slot::Req(r)) = self.queue.pop_front() else {
                    return None;
                };
                if ambiguous {
                    // Requests were lost after this one and responses may have been lost too:
                    // this response may answer either.
                    self.stats.dropped_messages += 1;
                    self.stats.unmatched_responses += 1;
                    return None;
                }
                self.resp_desynced = false;
                if self.queue.is_empty() {
                    self.suspect = false;
                }
                Some(r)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IN: Direction = Direction::Ingress;
    const EG: Direction = Direction::Egress;

    /// A connection under test with a clock: each chunk takes `[t, t + 5]`, then t += 10.
    struct T {
        c: Http1Conn,
        out: Vec<HttpExchange>,
        t: u64,
        /// `Chunk::other_unseen` of the next chunks.
        unseen: u64,
        /// Bytes fed per direction (the next chunk's position).
        pos: [u64; 2],
        /// `Chunk::ctx` of the next chunk.
        ctx: Option<SpanCtx>,
    }

    impl T {
        fn new() -> Self {
            Self::with(Limits::default())
        }
        fn with(limits: Limits) -> Self {
            Self {
                c: Http1Conn::new(limits),
                out: Vec::new(),
                t: 100,
                unseen: 0,
                pos: [0; 2],
                ctx: None,
            }
        }
        /// Feeds `data` as one chunk; returns its (ts_enter, ts_exit).
        fn feed(&mut self, dir: Direction, data: &[u8]) -> (u64, u64) {
            self.feed_total(dir, data, data.len() as u32)
        }
        fn feed_total(&mut self, dir: Direction, data: &[u8], total: u32) -> (u64, u64) {
            let (a, b) = (self.t, self.t + 5);
            self.t += 10;
            let tid = if dir == IN { 11 } else { 22 };
            let chunk = Chunk {
                data,
                total_len: total,
                ts_enter: a,
                ts_exit: b,
                tid,
                other_unseen: self.unseen,
                position: self.pos[dir.index()],
                ctx: self.ctx.take(),
            };
            self.pos[dir.index()] += u64::from(total);
            self.c.on_chunk(dir, &chunk, &mut self.out);
            (a, b)
        }
        fn bytewise(&mut self, dir: Direction, data: &[u8]) -> (u64, u64) {
            let mut last = (0, 0);
            for b in data {
                last = self.feed(dir, std::slice::from_ref(b));
            }
            last
        }
        fn close(&mut self) {
            self.t += 10;
            self.c.on_close(self.t, &mut self.out);
        }
        fn take(&mut self) -> Vec<HttpExchange> {
            std::mem::take(&mut self.out)
        }
    }

    fn status(x: &HttpExchange) -> u16 {
        x.response.as_ref().map_or(0, |r| r.status)
    }

    const GET: &[u8] = b"GET /a HTTP/1.1\r\nHost: example\r\nUser-Agent: t/1\r\n\r\n";
    const OK5: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

    #[test]
    fn server_exchange_fields_and_timing() {
        let mut t = T::new();
        let (_, req_exit) = t.feed(IN, GET);
        assert!(t.take().is_empty());
        t.feed(
            EG,
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhe",
        );
        let (_, end) = t.feed(EG, b"llo");
        let x = t.take();
        assert_eq!(x.len(), 1);
        let x = &x[0];
        assert_eq!(x.request_direction, IN);
        assert_eq!(x.request.method, "GET");
        assert_eq!(x.request.target, "/a");
        assert_eq!(x.request.version, "1.1");
        assert_eq!(
            x.request.headers,
            vec![
                ("host".into(), "example".into()),
                ("user-agent".into(), "t/1".into())
            ]
        );
        let r = x.response.as_ref().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.headers.len(), 2);
        assert_eq!((x.start_ns, x.end_ns), (req_exit, end));
        assert_eq!((x.request_body_size, x.response_body_size), (0, 5));
        assert_eq!(x.tid, 11);
        assert!(!x.incomplete);
        assert!(t.c.is_idle());
        assert_eq!(t.c.stats(), ParseStats::default());
    }

    #[test]
    fn client_exchange_starts_at_write_entry() {
        let mut t = T::new();
        let (req_enter, _) = t.feed(EG, GET);
        let (_, end) = t.feed(IN, OK5);
        let x = t.take();
        assert_eq!(x.len(), 1);
        assert_eq!(x[0].request_direction, EG);
        assert_eq!((x[0].start_ns, x[0].end_ns, x[0].tid), (req_enter, end, 22));
    }

    #[test]
    fn request_starts_are_reported_with_the_exchange_seq() {
        let mut t = T::new();
        // Two pipelined requests in one chunk: both reported, in order, with their heads.
        let req = b"GET /a HTTP/1.1\r\nHost: x\r\ntraceparent: tp\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
        let (_, exit) = t.feed(IN, req);
        let starts: Vec<_> =
            t.c.started()
                .map(|s| (s.seq, s.tid, s.start_ns, s.head.map(|h| h.target.clone())))
                .collect();
        assert_eq!(
            starts,
            vec![
                (0, 11, exit, Some("/a".to_owned())),
                (1, 11, exit, Some("/b".to_owned()))
            ]
        );
        let head = t.c.started().next().and_then(|s| s.head).cloned().unwrap();
        assert!(head.headers.contains(&("traceparent".into(), "tp".into())));
        // The next chunk clears them; responses report nothing.
        t.feed(EG, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(t.c.started().count(), 0);
        t.feed(EG, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let x = t.take();
        assert_eq!(x.iter().map(|x| x.seq).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(x[0].start_ns, exit);
        // Requests the process sends (client side) are reported too, with their direction.
        let mut t = T::new();
        t.feed(EG, b"GET /c HTTP/1.1\r\n\r\n");
        let dirs: Vec<_> = t.c.started().map(|s| s.direction).collect();
        assert_eq!(dirs, vec![EG]);
        // A request over the pending limit is reported without a head (it never completes).
        let mut t = T::with(Limits {
            max_pending_requests: 1,
            ..Limits::default()
        });
        t.feed(IN, b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n");
        let heads: Vec<_> = t.c.started().map(|s| s.head.is_some()).collect();
        assert_eq!(heads, vec![true, false]);
        t.c.on_gap(IN, 5);
        assert_eq!(t.c.started().count(), 0);
    }

    #[test]
    fn keep_alive_sequence() {
        let mut t = T::new();
        for i in 0..5 {
            t.feed(
                IN,
                format!("GET /{i} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes(),
            );
            t.feed(EG, OK5);
        }
        let x = t.take();
        assert_eq!(x.len(), 5);
        for (i, x) in x.iter().enumerate() {
            assert_eq!(x.request.target, format!("/{i}"));
            assert_eq!(x.response_body_size, 5);
        }
        assert!(t.c.is_idle());
    }

    #[test]
    fn pipelined_requests_in_one_chunk() {
        let mut t = T::new();
        t.feed(
            IN,
            b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nPOST /2 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\n\r\n",
        );
        assert!(!t.c.is_idle());
        t.feed(
            EG,
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nAHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nBBHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        );
        let x = t.take();
        let got: Vec<_> = x
            .iter()
            .map(|x| {
                (
                    x.request.target.as_str(),
                    status(x),
                    x.request_body_size,
                    x.response_body_size,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![("/1", 200, 0, 1), ("/2", 201, 3, 2), ("/3", 404, 0, 0)]
        );
        assert!(t.c.is_idle());
    }

    #[test]
    fn response_split_byte_by_byte() {
        let mut t = T::new();
        let (_, req_exit) = t.bytewise(EG, GET);
        let resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;a=b\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n";
        let (_, end) = t.bytewise(IN, resp);
        let x = t.take();
        assert_eq!(x.len(), 1);
        assert_eq!(
            (status(&x[0]), x[0].response_body_size, x[0].end_ns),
            (200, 5, end)
        );
        assert!(
            x[0].start_ns < req_exit,
            "client start is the first write's entry"
        );
        assert!(!x[0].incomplete);
        assert!(t.c.is_idle());
    }

    #[test]
    fn chunked_response_with_extensions_and_trailers() {
        let mut t = T::new();
        t.feed(IN, GET);
        t.feed(
            EG,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
              A;name=value;other=\"q;x\"\r\n0123456789\r\n10 ; ext\r\n0123456789abcdef\r\n",
        );
        assert!(t.take().is_empty());
        t.feed(EG, b"0;last\r\nExpires: never\r\nX-Sum: 1\r\n\r\n");
        t.feed(IN, GET);
        t.feed(EG, OK5);
        let x = t.take();
        assert_eq!(x.len(), 2);
        assert_eq!((x[0].response_body_size, x[0].incomplete), (26, false));
        assert_eq!((x[1].response_body_size, x[1].incomplete), (5, false));
    }

    #[test]
    fn expect_100_continue() {
        let mut t = T::new();
        t.feed(
            IN,
            b"PUT /up HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n",
        );
        t.feed(EG, b"HTTP/1.1 100 Continue\r\n\r\n");
        assert!(t.take().is_empty());
        t.feed(IN, b"01234");
        t.feed(IN, b"56789");
        t.feed(
            EG,
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
        );
        let x = t.take();
        assert_eq!(x.len(), 1);
        assert_eq!((status(&x[0]), x[0].request_body_size), (204, 10));
        assert_eq!(t.c.stats().unmatched_responses, 0);
    }

    #[test]
    fn head_and_no_body_statuses() {
        let mut t = T::new();
        t.feed(IN, b"HEAD /h HTTP/1.1\r\n\r\nGET /n HTTP/1.1\r\n\r\nGET /m HTTP/1.1\r\n\r\nGET /x HTTP/1.1\r\n\r\n");
        t.feed(EG, b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n");
        t.feed(EG, b"HTTP/1.1 204 No Content\r\nContent-Length: 99\r\n\r\n");
        t.feed(
            EG,
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n",
        );
        t.feed(EG, OK5);
        let x = t.take();
        let got: Vec<_> = x
            .iter()
            .map(|x| (status(x), x.response_body_size))
            .collect();
        assert_eq!(got, vec![(200, 0), (204, 0), (304, 0), (200, 5)]);
        assert!(x.iter().all(|x| !x.incomplete));
    }

    #[test]
    fn http10_close_delimited_response() {
        let mut t = T::new();
        t.feed(IN, b"GET /old HTTP/1.0\r\n\r\n");
        t.feed(
            EG,
            b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nabc",
        );
        t.feed(EG, b"defg");
        let (_, last) = t.feed(EG, b"hij");
        assert!(t.take().is_empty());
        assert!(!t.c.is_idle());
        t.close();
        let x = t.take();
        assert_eq!(x.len(), 1);
        assert_eq!(x[0].request.version, "1.0");
        assert_eq!(x[0].response.as_ref().unwrap().version, "1.0");
        assert_eq!(
            (x[0].response_body_size, x[0].end_ns, x[0].incomplete),
            (10, last, false)
        );
        assert_eq!(t.c.stats(), ParseStats::default());
    }

    #[test]
    fn connection_close_with_length() {
        let mut t = T::new();
        t.feed(IN, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        t.feed(
            EG,
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
        );
        assert_eq!(t.take().len(), 1);
        t.close();
        assert!(t.take().is_empty());
        assert_eq!(t.c.stats(), ParseStats::default());
    }

    #[test]
    fn invalid_chunk_size_is_incomplete_not_wrong() {
        let mut t = T::new();
        t.feed(IN, GET);
        t.feed(
            EG,
            b"HTTP/1.1 502 Bad Gateway\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n",
        );
        t.feed(EG, b"more junk");
        assert!(t.take().is_empty());
        let (req2, _) = t.feed(IN, b"GET /next HTTP/1.1\r\n\r\n");
        let x = t.take();
        assert_eq!(x.len(), 1, "ended by the next request");
        assert_eq!((status(&x[0]), x[0].incomplete), (502, true));
        assert!(x[0].end_ns < req2);
        t.feed(EG, OK5);
        let x = t.take();
        assert_eq!(
            (x.len(), x[0].request.target.as_str(), x[0].incomplete),
            (1, "/next", false)
        );
        // Overlong and empty chunk sizes.
        for body in [&b"fffffffffffffffff\r\n"[..], b"\r\n", b"-1\r\n", b"5\n"] {
            let mut t = T::new();
            t.feed(IN, GET);
            t.feed(EG, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
            t.feed(EG, body);
            t.close();
            let x = t.take();
            assert_eq!((x.len(), x[0].incomplete), (1, true), "{body:?}");
        }
    }

    #[test]
    fn megabyte_header_line_is_dropped_and_memory_freed() {
        let mut t = T::new();
        t.feed(IN, b"GET /big HTTP/1.1\r\nX-Big: ");
        let line = vec![b'a'; 4096];
        let mut peak = 0;
        for _ in 0..256 {
            t.feed(IN, &line);
            peak = peak.max(t.c.memory_bytes());
        }
        t.feed(IN, b"\r\n\r\n");
        assert!(peak <= 20 * 1024, "peak {peak}");
        assert!(t.c.memory_bytes() < 1024, "{}", t.c.memory_bytes());
        assert_eq!(t.c.stats().dropped_messages, 1);
        // Its response has no request; the next exchange pairs normally.
        t.feed(EG, b"HTTP/1.1 431 Too Large\r\nContent-Length: 0\r\n\r\n");
        t.feed(IN, GET);
        t.feed(EG, OK5);
        let x = t.take();
        assert_eq!(x.len(), 1);
        assert_eq!((x[0].request.target.as_str(), status(&x[0])), ("/a", 200));
        assert_eq!(t.c.stats().unmatched_responses, 1);
        // One big chunk holding an overlong head.
        let mut t = T::new();
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(1 << 20, b'b');
        big.extend_from_slice(b"\r\n\r\n");
        t.feed(IN, &big);
        assert_eq!(t.c.stats().dropped_messages, 1);
        assert_eq!(t.c.memory_bytes(), 0);
    }

    fn xorshift(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    #[test]
    fn random_garbage_produces_nothing() {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..200 {
            let mut t = T::new();
            for _ in 0..50 {
                let n = (xorshift(&mut s) % 300) as usize;
                let data: Vec<u8> = (0..n).map(|_| xorshift(&mut s) as u8).collect();
                let dir = if xorshift(&mut s) & 1 == 0 { IN } else { EG };
                let total = n as u32
                    + if round % 3 == 0 {
                        (xorshift(&mut s) % 100) as u32
                    } else {
                        0
                    };
                t.feed_total(dir, &data, total);
                if xorshift(&mut s).is_multiple_of(10) {
                    t.c.on_gap(dir, xorshift(&mut s) % 5000);
                }
            }
            t.close();
            assert!(t.take().is_empty());
            assert!(t.c.memory_bytes() <= 20 * 1024);
        }
    }

    #[test]
    fn uncaptured_tail_in_content_length_body() {
        let mut t = T::new();
        t.feed(IN, GET);
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n";
        let mut data = head.to_vec();
        data.extend_from_slice(&[b'x'; 1000]);
        t.feed_total(EG, &data, (head.len() + 60000) as u32);
        let (_, end) = t.feed_total(EG, &[b'y'; 4096], 40000);
        let x = t.take();
        assert_eq!(x.len(), 1);
        assert_eq!(
            (x[0].response_body_size, x[0].end_ns, x[0].incomplete),
            (100000, end, false)
        );
        // A POST upload captured partially, then the next request in a new call.
        t.feed_total(
            IN,
            b"POST /up HTTP/1.1\r\nContent-Length: 5000\r\n\r\nabc",
            5045,
        );
        t.feed(EG, OK5);
        t.feed(IN, GET);
        t.feed(EG, OK5);
        let x = t.take();
        assert_eq!(x.len(), 2);
        assert_eq!((x[0].request_body_size, x[0].incomplete), (5000, false));
        assert!(t.c.is_idle());
    }

    #[test]
    fn uncaptured_tail_in_chunked_body_ends_at_next_request() {
        let mut t = T::new();
        t.feed(IN, GET);
        // Chunk data of 0x2000 bytes with only 100 captured: the tail covers the rest of the
        // chunk and the framing after it.
        let mut data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2000\r\n".to_vec();
        data.extend_from_slice(&[b'z'; 100]);
        let (_, e1) = t.feed_total(EG, &data, 20000);
        let (_, e2) = t.feed_total(EG, b"ff\r\n", 3000);
        assert!(t.take().is_empty());
        t.feed(IN, b"GET /second HTTP/1.1\r\n\r\n");
        let x = t.take();
        assert_eq!(x.len(), 1);
        assert_eq!(
            (status(&x[0]), x[0].incomplete, x[0].end_ns),
            (200, true, e2)
        );
        assert!(x[0].response_body_size >= 0x2000 && e2 > e1);
        t.feed(EG, OK5);
        let x = t.take();
        assert_eq!(
            (x.len(), x[0].request.target.as_str(), x[0].incomplete),
            (1, "/second", false)
        );
    }

    #[test]
    fn chunk_per_call_with_uncaptured_data_and_crlf_stays_in_sync() {
        // As python's and many servers' chunked writers do: one call per chunk holding the size
        // line, the data and the closing CR LF, of which only a prefix is captured.
        let mut t = T::new();
        t.feed(IN, GET);
        t.feed(EG, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        for _ in 0..4 {
            let mut call = b"2000\r\n".to_vec();
            call.extend_from_slice(&[b'y'; 100]);
            // 6 bytes of size line + 0x2000 of data + 2 of CR LF; 106 captured.
            t.feed_total(EG, &call, 6 + 0x2000 + 2);
        }
        assert!(t.take().is_empty());
        let (_, end) = t.feed_total(EG, b"0\r\n\r\n", 5);
        let x = t.take();
        assert_eq!(x.len(), 1);
        assert_eq!(
            (status(&x[0]), x[0].incomplete, x[0].end_ns),
            (200, false, end)
        );
        assert_eq!(x[0].response_body_size, 4 * 0x2000);

        // A tail reaching past the CR LF into the next size line cannot be followed.
        let mut t = T::new();
        t.feed(IN, GET);
        t.feed(EG, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        t.feed_total(EG, b"10\r\n", 5 + 16 + 2 + 3);
        t.feed(IN, b"GET /next HTTP/1.1\r\n\r\n");
        let x = t.take();
        assert_eq!((x.len(), x[0].incomplete), (1, true));
    }

    #[test]
    fn response_after_losses_on_both_sides_is_not_paired_with_an_older_request() {
        // Client: request A seen; A's response lost; request B lost (its loss is not visible
        // yet); B's response seen. It must not become A's response.
        let mut t = T::new();
        t.feed(EG, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
        t.c.on_gap(IN, 40);
        t.unseen = 27; // the kernel had moved request B's bytes
        t.feed(IN, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
        assert!(t.take().is_empty(), "no wrong pairing");
        assert!(t.c.stats().unmatched_responses >= 1);
        // Without unseen requests the same response does answer A.
        let mut t = T::new();
        t.feed(EG, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
        t.c.on_gap(IN, 40);
        t.feed(IN, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let x = t.take();
        assert_eq!(x.len(), 1);
        assert_eq!((x[0].request.target.as_str(), status(&x[0])), ("/a", 200));
    }

    #[test]
    fn gap_inside_a_head() {
        let mut t = T::new();
        t.feed(IN, b"GET /lost HTTP/1.1\r\nHo");
        t.c.on_gap(IN, 50);
        t.feed(IN, b"st: x\r\n\r\n");
        assert_eq!(t.c.stats().dropped_messages, 1);
        t.feed(EG, OK5);
        assert!(t.take().is_empty());
        assert_eq!(t.c.stats().unmatched_responses, 1);
        t.feed(IN, b"GET /ok HTTP/1.1\r\n\r\n");
        t.feed(EG, OK5);
        let x = t.take();
        assert_eq!((x.len(), x[0].request.target.as_str()), (1, "/ok"));
        // A response head hit by a gap: its request stays unanswered until the next request.
        let mut t = T::new();
        t.feed(IN, b"GET /1 HTTP/1.1\r\n\r\n");
        t.feed(EG, b"HTTP/1.1 500 Oops\r\nCont");
        t.c.on_gap(EG, 30);
        t.feed(EG, b"ent-Length: 5\r\n\r\nhello");
        t.feed(IN, b"GET /2 HTTP/1.1\r\n\r\n");
        t.feed(EG, OK5);
        let x = t.take();
        assert_eq!(
            (x.len(), x[0].request.target.as_str(), status(&x[0])),
            (1, "/2", 200)
        );
        assert_eq!(t.c.stats().dropped_messages, 2);
    }

    #[test]
    fn gap_inside_known_length_body() {
        let mut t = T::new();
        t.feed(IN, GET);
        t.feed(EG, b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n01234");
        t.c.on_gap(EG, 10);
        let (_, end) = t.feed(EG, b"01234");
        let x = t.take();
        assert_eq!(x.len(), 1);
        assert_eq!(
            (x[0].response_body_size, x[0].incomplete, x[0].end_ns),
            (20, true, end)
        );
        // A gap that ends the body exactly: handed out with the next call.
        t.feed(IN, GET);
        let (_, e) = t.feed(EG, b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n01234");
        t.c.on_gap(EG, 15);
        assert!(!t.c.is_idle());
        t.feed(IN, GET);
        let x = t.take();
        assert_eq!((x.len(), x[0].incomplete, x[0].end_ns), (1, true, e));
        // A gap running past the body: the exchange is kept, the direction resyncs.
        t.feed(EG, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab");
        t.c.on_gap(EG, 100);
        t.feed(IN, b"GET /after HTTP/1.1\r\n\r\n");
        t.feed(EG, OK5);
        let x = t.take();
        let got: Vec<_> = x
            .iter()
            .map(|x| (x.request.target.as_str(), x.incomplete))
            .collect();
        assert_eq!(got, vec![("/a", true), ("/after", false)]);
    }

    #[test]
    fn uploads_with_bodies() {
        let mut t = T::new();
        t.feed(
            EG,
            b"POST /p HTTP/1.1\r\nContent-Length: 11\r\nContent-Type: text/plain\r\n\r\nhello",
        );
        t.feed(EG, b" world");
        t.feed(
            EG,
            b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n5\r\npedia\r\n",
        );
        t.feed(EG, b"0\r\n\r\n");
        t.feed(IN, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        let x = t.take();
        let got: Vec<_> = x
            .iter()
            .map(|x| (x.request.target.as_str(), x.request_body_size, status(x)))
            .collect();
        assert_eq!(got, vec![("/p", 11, 201), ("/c", 9, 200)]);
        assert_eq!(
            x[0].request.headers,
            vec![
                ("content-length".into(), "11".into()),
                ("content-type".into(), "text/plain".into())
            ]
        );
    }

    #[test]
    fn connect_tunnel_and_upgrade_stop_parsing() {
        let mut t = T::new();
        t.feed(
            EG,
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        );
        t.feed(IN, b"HTTP/1.1 200 Connection Established\r\n\r\n");
        t.feed(EG, b"\x16\x03\x01\x02\x00GET / HTTP/1.1\r\n\r\n");
        t.feed(IN, OK5);
        let x = t.take();
        assert_eq!(
            (x.len(), x[0].request.method.as_str(), status(&x[0])),
            (1, "CONNECT", 200)
        );
        assert_eq!(t.c.upgrades(), 1);
        assert!(t.c.is_idle());
        let mut t = T::new();
        t.feed(
            IN,
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        );
        t.feed(
            EG,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello",
        );
        t.feed(IN, b"GET / HTTP/1.1\r\n\r\n");
        t.feed(EG, OK5);
        let x = t.take();
        assert_eq!((x.len(), status(&x[0])), (1, 101));
        assert_eq!(t.c.upgrades(), 1);
        t.close();
        assert_eq!(t.c.stats(), ParseStats::default());
        // A refused CONNECT is an ordinary exchange.
        let mut t = T::new();
        t.feed(EG, b"CONNECT x:443 HTTP/1.1\r\n\r\n");
        t.feed(IN, b"HTTP/1.1 407 Proxy Auth\r\nContent-Length: 0\r\n\r\n");
        t.feed(EG, GET);
        t.feed(IN, OK5);
        assert_eq!(t.take().len(), 2);
        assert_eq!(t.c.upgrades(), 0);
    }

    #[test]
    fn unmatched_response_and_role_inference() {
        let mut t = T::new();
        t.feed(IN, OK5);
        assert!(t.take().is_empty());
        assert_eq!(t.c.stats().unmatched_responses, 1);
        // Ingress carries responses, so a request there is garbage.
        t.feed(IN, GET);
        assert_eq!(t.c.stats().invalid_messages, 1);
        t.feed(EG, GET);
        t.feed(IN, OK5);
        let x = t.take();
        assert_eq!((x.len(), x[0].request_direction), (1, EG));
    }

    #[test]
    fn response_started_before_request_is_not_paired() {
        let mut t = T::new();
        t.t = 1000;
        t.feed(IN, GET);
        // Delivered late: a response whose write started before the request was read.
        let chunk = Chunk {
            data: OK5,
            total_len: OK5.len() as u32,
            ts_enter: 500,
            ts_exit: 600,
            tid: 1,
            other_unseen: 0,
            position: 0,
            ctx: None,
        };
        t.c.on_chunk(EG, &chunk, &mut t.out);
        assert!(t.take().is_empty());
        assert_eq!(t.c.stats().unmatched_responses, 1);
        t.feed(EG, OK5);
        assert_eq!(t.take().len(), 1);
    }

    #[test]
    fn header_bounds() {
        let mut t = T::with(Limits {
            max_header_value: 8,
            ..Limits::default()
        });
        let mut req = b"GET /h HTTP/1.1\r\nHost: a-very-long-host-name\r\nCookie: secret\r\nTRACEPARENT: 00-abc\r\nX-B3-TraceId: 123\r\nx-b3-: no\r\n".to_vec();
        for i in 0..30 {
            req.extend_from_slice(format!("b3: {i}\r\n").as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        t.feed(IN, &req);
        t.feed(EG, OK5);
        let x = t.take();
        let h = &x[0].request.headers;
        assert_eq!(h.len(), 16);
        assert_eq!(h[0], ("host".into(), "a-very-l".into()));
        assert_eq!(h[1], ("traceparent".into(), "00-abc".into()));
        assert_eq!(h[2], ("x-b3-traceid".into(), "123".into()));
        assert_eq!(h[3], ("b3".into(), "0".into()));
        // Many headers (beyond the stack array) still parse.
        let mut t = T::new();
        let mut req = b"GET /many HTTP/1.1\r\n".to_vec();
        for i in 0..200 {
            req.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        req.extend_from_slice(b"Host: last\r\n\r\n");
        t.feed(IN, &req);
        t.feed(EG, OK5);
        let x = t.take();
        assert_eq!(x[0].request.headers, vec![("host".into(), "last".into())]);
        // Non-UTF-8 bytes in a kept value and a long target.
        let mut t = T::new();
        let mut req = b"GET /".to_vec();
        req.extend_from_slice(&[b'p'; 5000]);
        req.extend_from_slice(b" HTTP/1.1\r\nUser-Agent: \xff\xfe\r\n\r\n");
        t.feed(IN, &req);
        t.feed(EG, OK5);
        let x = t.take();
        assert_eq!(x[0].request.target.len(), MAX_TARGET);
        assert_eq!(x[0].request.headers[0].1, "\u{fffd}\u{fffd}");
    }

    #[test]
    fn pending_cap_keeps_pairing_right() {
        let mut t = T::with(Limits {
            max_pending_requests: 2,
            ..Limits::default()
        });
        for i in 0..5 {
            t.feed(IN, format!("GET /{i} HTTP/1.1\r\n\r\n").as_bytes());
        }
        assert_eq!(t.c.stats().dropped_messages, 3);
        for i in 0..5 {
            t.feed(
                EG,
                format!("HTTP/1.1 20{i} OK\r\nContent-Length: 0\r\n\r\n").as_bytes(),
            );
        }
        t.feed(IN, b"GET /5 HTTP/1.1\r\n\r\n");
        t.feed(EG, b"HTTP/1.1 205 OK\r\nContent-Length: 0\r\n\r\n");
        let x = t.take();
        let got: Vec<_> = x
            .iter()
            .map(|x| (x.request.target.clone(), status(x)))
            .collect();
        assert_eq!(
            got,
            vec![("/0".into(), 200), ("/1".into(), 201), ("/5".into(), 205)]
        );
        assert!(t.c.is_idle());
    }

    #[test]
    fn close_with_unanswered_requests() {
        // Client side: emitted with no response.
        let mut t = T::new();
        let (start, _) = t.feed(EG, GET);
        t.close();
        let x = t.take();
        assert_eq!(x.len(), 1);
        assert_eq!((x[0].response.is_none(), x[0].start_ns), (true, start));
        assert!(x[0].end_ns > start);
        assert_eq!(t.c.stats().unanswered_requests, 1);
        // Server side: counted only.
        let mut t = T::new();
        t.feed(IN, GET);
        t.close();
        assert!(t.take().is_empty());
        assert_eq!(t.c.stats().unanswered_requests, 1);
        // Response cut by the close: incomplete.
        let mut t = T::new();
        t.feed(EG, GET);
        t.feed(IN, b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nabc");
        t.close();
        let x = t.take();
        assert_eq!(
            (x.len(), x[0].incomplete, x[0].response_body_size),
            (1, true, 3)
        );
        // After a response-side loss, "no response" is uncertain: nothing emitted.
        let mut t = T::new();
        t.feed(EG, GET);
        t.c.on_gap(IN, 100);
        t.close();
        assert!(t.take().is_empty());
        assert_eq!(t.c.stats().unanswered_requests, 1);
    }

    #[test]
    fn pipelined_connection_is_abandoned_on_loss() {
        let mut t = T::new();
        t.feed(IN, b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n");
        t.feed(EG, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        // The response to /2 is lost; whatever follows cannot be paired safely.
        t.c.on_gap(EG, 38);
        t.feed(IN, b"GET /3 HTTP/1.1\r\n\r\n");
        t.feed(EG, b"HTTP/1.1 203 OK\r\nContent-Length: 0\r\n\r\n");
        let x = t.take();
        assert_eq!(x.len(), 1);
        assert_eq!((x[0].request.target.as_str(), status(&x[0])), ("/1", 200));
        assert!(t.c.is_idle());
    }

    #[test]
    fn lost_response_head_non_pipelined_recovers() {
        let mut t = T::new();
        t.feed(EG, b"GET /1 HTTP/1.1\r\n\r\n");
        t.c.on_gap(IN, 40);
        t.feed(IN, b"tail of the first response");
        t.feed(EG, b"GET /2 HTTP/1.1\r\n\r\n");
        t.feed(IN, b"HTTP/1.1 202 OK\r\nContent-Length: 0\r\n\r\n");
        let x = t.take();
        assert_eq!(x.len(), 1);
        assert_eq!((x[0].request.target.as_str(), status(&x[0])), ("/2", 202));
        assert_eq!(t.c.stats().dropped_messages, 1);
    }

    #[test]
    fn losses_on_both_sides_do_not_mispair() {
        // /1 pending; requests lost after it, and responses lost: the next response is ambiguous.
        let mut t = T::new();
        t.feed(EG, b"GET /1 HTTP/1.1\r\n\r\n");
        t.c.on_gap(EG, 20);
        t.c.on_gap(IN, 80);
        t.feed(IN, b"HTTP/1.1 209 X\r\nContent-Length: 0\r\n\r\n");
        t.close();
        assert!(t.take().is_empty());
    }

    #[test]
    fn resync_only_at_chunk_boundary() {
        let mut t = T::new();
        t.feed(IN, b"\x00\x01garbage GET /no HTTP/1.1\r\n\r\n");
        t.feed(IN, b"xxGET /no2 HTTP/1.1\r\n\r\n");
        t.feed(IN, b"GET /yes HTTP/1.1\r\n\r\n");
        t.feed(EG, OK5);
        let x = t.take();
        assert_eq!((x.len(), x[0].request.target.as_str()), (1, "/yes"));
        assert_eq!(t.c.stats().invalid_messages, 1);
    }

    #[test]
    fn several_messages_and_leading_crlf() {
        let mut t = T::new();
        t.feed(IN, b"GET /1 HTTP/1.1\r\n\r\n\r\nGET /2 HTTP/1.1\r\n\r\n");
        t.feed(EG, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(t.take().len(), 2);
    }

    // ---- recorded streams (tests/data/http1, see capture.py there) ----

    /// Records of a `.stream` file: (client-to-server?, bytes).
    fn load(name: &str) -> Vec<(bool, Vec<u8>)> {
        let path = format!(
            "{}/tests/data/http1/{name}.stream",
            env!("CARGO_MANIFEST_DIR")
        );
        let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut out = Vec::new();
        let mut p = 0;
        while p < raw.len() {
            let nl = p + raw[p..].iter().position(|&c| c == b'\n').unwrap();
            let line = std::str::from_utf8(&raw[p..nl]).unwrap();
            let (tag, n) = line.split_at(1);
            let n: usize = n.trim().parse().unwrap();
            out.push((tag == ">", raw[nl + 1..nl + 1 + n].to_vec()));
            p = nl + 1 + n + 1;
        }
        out
    }

    /// Comparable shape of an exchange.
    type Shape = (String, String, u16, u64, u64, bool);

    fn shape(x: &HttpExchange) -> Shape {
        (
            x.request.method.clone(),
            x.request.target.clone(),
            status(x),
            x.request_body_size,
            x.response_body_size,
            x.incomplete,
        )
    }

    /// Feeds records as chunks (`split`: record index → cut points), seen as server or client,
    /// with a capture limit.
    fn replay(
        recs: &[(bool, Vec<u8>)],
        server: bool,
        cut: Option<(usize, &[usize])>,
        capture: usize,
    ) -> Vec<HttpExchange> {
        let mut c = Http1Conn::new(Limits::default());
        let mut out = Vec::new();
        let mut ts = 1000u64;
        for (i, (c2s, bytes)) in recs.iter().enumerate() {
            let dir = if *c2s == server { IN } else { EG };
            let mut points = vec![0];
            if let Some((ci, cuts)) = cut
                && ci == i
            {
                points.extend(cuts.iter().copied().filter(|&k| k > 0 && k < bytes.len()));
            }
            points.push(bytes.len());
            for w in points.windows(2) {
                let piece = &bytes[w[0]..w[1]];
                let captured = &piece[..piece.len().min(capture)];
                let chunk = Chunk {
                    data: captured,
                    total_len: piece.len() as u32,
                    ts_enter: ts,
                    ts_exit: ts + 500,
                    tid: 7,
                    other_unseen: 0,
                    position: w[0] as u64,
                    ctx: None,
                };
                c.on_chunk(dir, &chunk, &mut out);
                ts += 1000;
            }
        }
        c.on_close(ts, &mut out);
        assert!(c.memory_bytes() < 64 * 1024);
        out
    }

    fn vector(name: &str, expected: &[(&str, &str, u16, u64, u64)]) {
        let recs = load(name);
        for server in [true, false] {
            let reference = replay(&recs, server, None, usize::MAX);
            let got: Vec<Shape> = reference.iter().map(shape).collect();
            let want: Vec<Shape> = expected
                .iter()
                .map(|&(m, t, s, q, r)| (m.into(), t.into(), s, q, r, false))
                .collect();
            assert_eq!(got, want, "{name} server={server}");
            for x in &reference {
                assert!(x.start_ns <= x.end_ns);
                assert_eq!(x.request_direction, if server { IN } else { EG });
            }
            // Every record cut at every point (bodies at a stride), and everything byte-wise.
            for (i, (_, bytes)) in recs.iter().enumerate() {
                let step = if bytes.len() > 600 { 7 } else { 1 };
                for k in (1..bytes.len()).step_by(step) {
                    let got: Vec<Shape> = replay(&recs, server, Some((i, &[k])), usize::MAX)
                        .iter()
                        .map(shape)
                        .collect();
                    assert_eq!(got, want, "{name} record {i} cut at {k}");
                }
                let all: Vec<usize> = (1..bytes.len()).collect();
                let got: Vec<Shape> = replay(&recs, server, Some((i, &all)), usize::MAX)
                    .iter()
                    .map(shape)
                    .collect();
                assert_eq!(got, want, "{name} record {i} byte-wise");
            }
            // A capture limit: statuses and pairing survive; Content-Length bodies stay exact.
            let limited = replay(&recs, server, None, 1024);
            assert_eq!(limited.len(), want.len(), "{name} capture limit");
            for (x, w) in limited.iter().zip(&want) {
                assert_eq!((&x.request.target, status(x)), (&w.1, w.2));
                if !x.incomplete {
                    assert_eq!((x.request_body_size, x.response_body_size), (w.3, w.4));
                }
            }
        }
    }

    #[test]
    fn recorded_keepalive_stream() {
        vector(
            "keepalive",
            &[
                ("GET", "/a?x=1", 200, 0, 1000),
                ("HEAD", "/head", 200, 0, 0),
                ("GET", "/chunked", 200, 0, 412),
                ("GET", "/nocontent", 204, 0, 0),
                ("POST", "/post", 201, 3000, 14),
                ("POST", "/chunkedpost", 201, 3000, 14),
                ("POST", "/expect", 201, 3000, 14),
            ],
        );
        let recs = load("keepalive");
        let x = replay(&recs, true, None, usize::MAX);
        assert!(
            x[0].request
                .headers
                .iter()
                .any(|(n, v)| n == "traceparent" && v.starts_with("00-0af7"))
        );
    }

    #[test]
    fn recorded_http10_close_stream() {
        vector("http10_close", &[("GET", "/stream", 200, 0, 1260)]);
    }

    #[test]
    fn recorded_file_server_streams() {
        vector("files", &[("GET", "/index.txt", 200, 0, 5100)]);
        let recs = load("files_404");
        let x = replay(&recs, true, None, usize::MAX);
        assert_eq!((x.len(), status(&x[0]), x[0].incomplete), (1, 404, false));
        let len = x[0]
            .response
            .as_ref()
            .unwrap()
            .headers
            .iter()
            .find(|(n, _)| n == "content-length");
        assert_eq!(
            len.map(|(_, v)| v.parse::<u64>().unwrap()),
            Some(x[0].response_body_size)
        );
    }
}
