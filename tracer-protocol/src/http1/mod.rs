//! HTTP/1.0 and HTTP/1.1: an incremental parser per direction of one connection, and the pairing
//! of requests with responses into [`HttpExchange`]s.
//!
//! # Model
//!
//! Each direction is a small state machine (`Start` → `Head` → `Body` → `Start`, plus `Resync`
//! after a loss of sync). Heads are parsed with `httparse` (`head.rs`), directly from the chunk
//! when the whole head is in it (no copy, no allocation besides the owned strings of the result)
//! and from a reused per-direction buffer when a head spans chunks. Bodies are skipped and only
//! counted (`body.rs`): `Content-Length`, chunked (extensions and trailers; sizes with
//! `httparse::parse_chunk_size`), or delimited by the connection's close.
//!
//! The direction that carries requests is learnt from the first request (or, failing that, the
//! first response); messages of the wrong kind in a direction afterwards are treated as garbage.
//!
//! Requests wait in a FIFO until a response head takes the oldest; how losses of sync make
//! that pairing cautious, or abandon it, is in `pairing.rs`.
//!
//! # Close
//!
//! [`Http1Conn::on_close`] ends a response delimited by close (complete), emits a response cut
//! by the close as `incomplete`, and counts requests still waiting as `unanswered_requests`.
//! Requests the traced process *sent* (client side) that got no response are also emitted with
//! `response: None` and `end_ns` = the close time, so users see failed calls — but only when no
//! loss happened on the connection since the last clean pairing (a lost response must not look
//! like a failed call). Server-side unanswered requests are only counted.

mod body;
mod head;
mod pairing;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use body::Body;
use head::{Kind, MessageStart, ParsedHead, find_head_end, message_start, parse_head};
use pairing::{PairedResponse, PendingRequest, QueueEntry};

use crate::headers::DEFAULT_MAX_HEADER_VALUE;
use crate::headers::{list_heap_bytes, request_heap_bytes};
use crate::{Chunk, Direction, HttpExchange, ParseStats, RequestHead, SpanCtx};

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
            max_header_value: DEFAULT_MAX_HEADER_VALUE,
        }
    }
}

/// [`Limits`] as each connection keeps them: 12 bytes, not 24 (values past `u32::MAX` are
/// clamped, far beyond any sensible limit).
#[derive(Clone, Copy, Debug)]
struct ConnLimits {
    max_head_bytes: u32,
    max_pending_requests: u32,
    max_header_value: u32,
}

impl ConnLimits {
    fn of(l: Limits) -> Self {
        let clamp = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        Self {
            max_head_bytes: clamp(l.max_head_bytes),
            max_pending_requests: clamp(l.max_pending_requests),
            max_header_value: clamp(l.max_header_value),
        }
    }

    fn limits(self) -> Limits {
        Limits {
            max_head_bytes: self.max_head_bytes as usize,
            max_pending_requests: self.max_pending_requests as usize,
            max_header_value: self.max_header_value as usize,
        }
    }

    fn head(self) -> usize {
        self.max_head_bytes as usize
    }
}

/// A head buffer grown beyond this is freed once the head is done (others are reused).
const KEEP_BUF_CAPACITY: usize = 4096;

/// The syscall that carried a chunk: as a message's first, it dates and places the message.
#[derive(Clone, Copy, Debug, Default)]
struct ChunkInfo {
    ts_enter: u64,
    ts_exit: u64,
    tid: u32,
    /// See [`Chunk::other_unseen`].
    other_unseen: u64,
    /// As a message's first chunk: the position of the message's first byte, and the kernel's
    /// injected ids when the message starts exactly where the chunk that carried them did.
    position: u64,
    ctx: Option<SpanCtx>,
}

impl ChunkInfo {
    fn of(chunk: &Chunk<'_>) -> Self {
        Self {
            ts_enter: chunk.ts_enter,
            ts_exit: chunk.ts_exit,
            tid: chunk.tid,
            other_unseen: chunk.other_unseen,
            position: chunk.position,
            ctx: chunk.ctx,
        }
    }

    /// This chunk's info as the first of a message starting `offset` bytes into it.
    fn starting_at(self, offset: usize) -> Self {
        Self {
            position: self.position + offset as u64,
            ctx: if offset == 0 { self.ctx } else { None },
            ..self
        }
    }
}

/// Where a direction is in its sequence of messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
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
struct DirectionState {
    phase: Phase,
    owner: Owner,
    /// ts_exit of the last chunk seen in this direction.
    last_exit: u64,
    /// On the heap: only a message part split across chunks needs it, so an idle connection
    /// pays a pointer here, not ~100 bytes. Kept for reuse while the connection is busy.
    split: Option<Box<Split>>,
}

/// The bytes of a head (or a chunk-size line) split across chunks, buffered until its end.
#[derive(Debug, Default)]
struct Split {
    buf: Vec<u8>,
    /// The chunk that held the first byte of the head being buffered.
    first: ChunkInfo,
}

impl DirectionState {
    fn new() -> Self {
        Self {
            phase: Phase::Start,
            owner: Owner::Discard,
            last_exit: 0,
            split: None,
        }
    }

    /// The bytes buffered so far.
    fn buf(&self) -> &[u8] {
        self.split.as_ref().map_or(&[], |s| &s.buf)
    }

    fn split_mut(&mut self) -> &mut Split {
        self.split.get_or_insert_with(Box::default)
    }

    fn buf_mut(&mut self) -> &mut Vec<u8> {
        &mut self.split_mut().buf
    }

    /// Empties the buffer, keeping a small one for the next message.
    fn release_buf(&mut self) {
        if let Some(s) = &mut self.split {
            if s.buf.capacity() > KEEP_BUF_CAPACITY {
                s.buf = Vec::new();
            } else {
                s.buf.clear();
            }
        }
    }

    /// Frees the buffer, keeping the slot.
    fn free_buf(&mut self) {
        if let Some(s) = &mut self.split {
            s.buf = Vec::new();
        }
    }

    /// Frees the slot when nothing is buffered.
    fn shrink(&mut self) {
        if self.buf().is_empty() {
            self.split = None;
        }
    }

    fn heap_bytes(&self) -> usize {
        self.split
            .as_ref()
            .map_or(0, |s| size_of::<Split>() + s.buf.capacity())
    }
}

/// An optional value on the heap whose allocation is reused from one value to the next
/// (no allocation per exchange on a busy connection) until [`HeapSlot::shrink`] frees it.
#[derive(Debug)]
struct HeapSlot<T>(Option<Box<Option<T>>>);

impl<T> Default for HeapSlot<T> {
    fn default() -> Self {
        Self(None)
    }
}

impl<T> HeapSlot<T> {
    fn as_ref(&self) -> Option<&T> {
        self.0.as_deref()?.as_ref()
    }

    fn as_mut(&mut self) -> Option<&mut T> {
        self.0.as_deref_mut()?.as_mut()
    }

    fn is_some(&self) -> bool {
        self.as_ref().is_some()
    }

    fn is_none(&self) -> bool {
        self.as_ref().is_none()
    }

    /// The value, leaving the allocation for the next one.
    fn take(&mut self) -> Option<T> {
        self.0.as_deref_mut()?.take()
    }

    fn set(&mut self, value: T) {
        match &mut self.0 {
            Some(slot) => **slot = Some(value),
            None => self.0 = Some(Box::new(Some(value))),
        }
    }

    /// Frees the allocation when it holds no value.
    fn shrink(&mut self) {
        if self.is_none() {
            self.0 = None;
        }
    }

    fn heap_bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |_| size_of::<Option<T>>())
    }
}

/// One connection's HTTP/1.x parser and request/response pairing.
#[derive(Debug)]
pub struct Http1Conn {
    limits: ConnLimits,
    config: httparse::ParserConfig,
    dirs: [DirectionState; 2],
    queue: VecDeque<QueueEntry>,
    /// The response being read and its request: on the heap, so that an idle connection
    /// pays a pointer for it, not its ~250 bytes.
    paired: HeapSlot<PairedResponse>,
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

fn req_bytes(r: &PendingRequest) -> usize {
    request_heap_bytes(&r.head)
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
            limits: ConnLimits::of(limits),
            config,
            dirs: [DirectionState::new(), DirectionState::new()],
            queue: VecDeque::new(),
            paired: HeapSlot::default(),
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
        let info = ChunkInfo::of(chunk);
        let data = chunk.data;
        let mut p = 0usize;
        while p < data.len() && !self.stopped {
            match self.dirs[d].phase {
                Phase::Resync => {
                    // Only at a chunk boundary, and only for the kind this direction carries.
                    if p == 0
                        && let MessageStart::Found(kind) = message_start(data)
                        && self.kind_allowed(dir, kind)
                    {
                        self.dirs[d].phase = Phase::Start;
                        continue;
                    }
                    break;
                }
                Phase::Start => {
                    while p < data.len() && matches!(data[p], b'\r' | b'\n') {
                        p += 1;
                    }
                    if p >= data.len() {
                        break;
                    }
                    let rest = &data[p..];
                    if !self.may_start(dir, rest) {
                        self.invalid(dir, out);
                        break;
                    }
                    if let Some(end) = find_head_end(rest, 0) {
                        if end > self.limits.head() {
                            self.drop_head(dir, out);
                            break;
                        }
                        if !self.on_head(dir, &rest[..end], info.starting_at(p), info, out) {
                            break;
                        }
                        p += end;
                    } else if rest.len() >= self.limits.head() {
                        self.drop_head(dir, out);
                        break;
                    } else {
                        let state = &mut self.dirs[d];
                        state.phase = Phase::Head;
                        let split = state.split_mut();
                        split.buf.clear();
                        split.buf.extend_from_slice(rest);
                        // The message's first byte is in this chunk.
                        split.first = info.starting_at(p);
                        p = data.len();
                    }
                }
                Phase::Head => {
                    let old = self.dirs[d].buf().len();
                    let room = self.limits.head().saturating_sub(old);
                    let take = room.min(data.len() - p);
                    self.dirs[d].buf_mut().extend_from_slice(&data[p..p + take]);
                    if !self.may_start(dir, self.dirs[d].buf()) {
                        self.dirs[d].release_buf();
                        self.invalid(dir, out);
                        break;
                    }
                    match find_head_end(self.dirs[d].buf(), old.saturating_sub(2)) {
                        Some(end) if end > old => {
                            // Out of the way of on_head's `&mut self`, then back for reuse.
                            let split = self.dirs[d].split.take().unwrap_or_default();
                            let ok = self.on_head(dir, &split.buf[..end], split.first, info, out);
                            self.dirs[d].split = Some(split);
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
                            if self.dirs[d].buf().len() >= self.limits.head() {
                                self.drop_head(dir, out);
                                break;
                            }
                            p += take;
                        }
                    }
                }
                Phase::Body(body) => p = self.body(dir, body, data, p, info, out),
            }
        }
        if !self.stopped {
            let uncaptured = u64::from(chunk.total_len).saturating_sub(data.len() as u64);
            if uncaptured > 0 {
                self.skip(dir, uncaptured, Some(info), out);
            }
        }
        if self.stopped {
            return;
        }
        self.dirs[d].last_exit = info.ts_exit;
        // The last response chunk seen so far (close-delimited bodies, lost framing).
        if let Some(f) = self.paired.as_mut()
            && f.req.dir != dir
        {
            f.end_ns = info.ts_exit;
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
            if let Some(mut f) = self.paired.take() {
                let rd = f.req.dir.opposite().index();
                let by_close = self.dirs[rd].phase == Phase::Body(Body::UntilClose)
                    && self.dirs[rd].owner == Owner::Response;
                if !by_close || f.framing_lost {
                    f.incomplete = true;
                }
                Self::emit(f, out);
            }
            for state in &self.dirs {
                if state.phase == Phase::Head {
                    self.stats.dropped_messages += 1;
                }
            }
            let emit_unanswered = !self.suspect && !self.resp_desynced;
            for entry in self.queue.drain(..) {
                if let QueueEntry::Waiting(r) = entry {
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
        *self = Self::new(limits.limits());
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
                    QueueEntry::Waiting(r) if r.seq == seq => Some(&r.head),
                    _ => None,
                }),
            },
        )
    }

    /// Approximate heap bytes held (for bounded-memory assertions).
    pub fn memory_bytes(&self) -> usize {
        let mut n = self
            .dirs
            .iter()
            .map(DirectionState::heap_bytes)
            .sum::<usize>();
        n += self.started.capacity() * std::mem::size_of::<Started>();
        n += self.queue.capacity() * std::mem::size_of::<QueueEntry>();
        n += self
            .queue
            .iter()
            .map(|s| match s {
                QueueEntry::Waiting(r) => req_bytes(r),
                QueueEntry::OverLimit(_) => 0,
            })
            .sum::<usize>();
        n += self.paired.heap_bytes();
        if let Some(f) = self.paired.as_ref() {
            n += req_bytes(&f.req) + list_heap_bytes(&f.resp.headers);
        }
        n += self.ready.capacity() * std::mem::size_of::<HttpExchange>();
        n += self
            .ready
            .iter()
            .map(|x| {
                request_heap_bytes(&x.request)
                    + x.response
                        .as_ref()
                        .map_or(0, |r| list_heap_bytes(&r.headers))
            })
            .sum::<usize>();
        n
    }

    /// True when idle (no partial message, no pending request): the table may expire it cheaply.
    pub fn is_idle(&self) -> bool {
        self.stopped
            || (self.queue.is_empty()
                && self.paired.is_none()
                && self.ready.is_empty()
                && self
                    .dirs
                    .iter()
                    .all(|d| matches!(d.phase, Phase::Start | Phase::Resync) && d.buf().is_empty()))
    }

    /// Frees the buffers an idle connection keeps for reuse (the request queue, the head
    /// buffers, the output lists, the paired response's slot): between requests a keep-alive
    /// connection then holds no heap at all, and the next request allocates them again. Only empty buffers are
    /// freed, so calling it at any time changes nothing but the memory held.
    pub fn shrink_idle(&mut self) {
        self.paired.shrink();
        if self.queue.is_empty() {
            self.queue = VecDeque::new();
        }
        if self.started.is_empty() {
            self.started = Vec::new();
        }
        if self.ready.is_empty() {
            self.ready = Vec::new();
        }
        for d in &mut self.dirs {
            d.shrink();
        }
    }

    // ---- internals ----

    /// May a message of `kind` travel in `dir`, given the role learnt so far?
    fn kind_allowed(&self, dir: Direction, kind: Kind) -> bool {
        match self.req_dir {
            None => true,
            Some(r) => (r == dir) == (kind == Kind::Request),
        }
    }

    /// May the bytes at a message boundary of `dir`, `b`, begin a message it carries (or are
    /// there too few to tell)?
    fn may_start(&self, dir: Direction, b: &[u8]) -> bool {
        match message_start(b) {
            MessageStart::NotHttp => false,
            MessageStart::Found(kind) => self.kind_allowed(dir, kind),
            MessageStart::Undecided => true,
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
        self.dirs[dir.index()].free_buf();
        self.lose(dir, out);
    }

    /// A complete head (`bytes`, starting at a message start). `first` is the chunk with its
    /// first byte, `last` the chunk with its last. Returns false when the caller must stop
    /// reading this chunk (garbage, or parsing stopped).
    fn on_head(
        &mut self,
        dir: Direction,
        bytes: &[u8],
        first: ChunkInfo,
        last: ChunkInfo,
        out: &mut Vec<HttpExchange>,
    ) -> bool {
        let kind = Kind::of_head(bytes);
        if !self.kind_allowed(dir, kind) {
            self.invalid(dir, out);
            return false;
        }
        match parse_head(
            &self.config,
            kind,
            bytes,
            self.limits.max_header_value as usize,
        ) {
            Ok(ParsedHead::Request { head, method, body }) => {
                self.on_request(dir, head, method, body, first, out);
            }
            Ok(ParsedHead::Response { head, body }) => {
                self.on_response(dir, head, body, first, last, out);
            }
            Err(_) => {
                self.invalid(dir, out);
                return false;
            }
        }
        !self.stopped
    }
}
