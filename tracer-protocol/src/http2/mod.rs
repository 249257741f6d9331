//! HTTP/2 (RFC 9113) and gRPC over it: an incremental parser per connection that turns both
//! directions' bytes into [`H2Exchange`]s, one per stream.
//!
//! # Layers
//!
//! * `frame`: frame headers, and the plausibility checks used to find one without context.
//! * `framer`: one direction's bytes → frames (reassembled across chunks) → `framer::Event`s;
//!   header blocks (HEADERS/PUSH_PROMISE + CONTINUATION) are decoded there with the direction's
//!   `hpack` decoder and reduced to a `block::Block`.
//! * `grpc`: gRPC message prefixes followed through a stream's DATA content.
//! * This module: streams paired into exchanges.
//!
//! # Streams
//!
//! A stream's request is the first HEADERS block in the request direction (`:method`, `:path`,
//! `:scheme`, `:authority`, kept headers); its response the first non-1xx HEADERS in the other
//! direction (`:status`); a later HEADERS there is the trailers (`grpc-status`, `grpc-message`).
//! A trailers-only response (one HEADERS with `:status`, `grpc-status` and END_STREAM) is the
//! response. DATA bytes (padding excluded) are the body sizes; on gRPC streams their content is
//! also read for the messages' length prefixes (`grpc`). The exchange is emitted when the
//! response direction ends the stream (END_STREAM), or `incomplete` on RST_STREAM, on GOAWAY
//! (streams it refuses), and on close.
//!
//! The request direction is learnt from the client preface, or failing that from the first
//! block with `:method` or `:status`.
//!
//! HPACK tables are known from a connection's start only when the client preface is seen:
//! positions count from the kernel's first sight of a connection, so position 0 alone does not
//! prove it (the connection may have been open before tracing).
//!
//! # Losses ("never a wrong attribute")
//!
//! A connection joined mid-way (first bytes past position 0) is decoded from the first chunk that
//! starts with plausible frames; its HPACK tables are unknown, so references to entries from
//! before are reported as unknown fields (never guessed) and mark the exchange
//! ([`H2Exchange::unknown_fields`], `incomplete`). A gap or an uncaptured tail outside a payload
//! that is only counted loses that direction for good (frame boundaries cannot be found reliably
//! again): open streams are marked incomplete and emitted at close. A header block that cannot
//! be decoded (too large, malformed) leaves its table unknown from then on.

//! # Interface (as [`super::http1::Http1Conn`])
//!
//! [`Http2Conn::new`] with [`Limits`]; [`Http2Conn::on_chunk`] pushes completed
//! [`H2Exchange`]s (an [`HttpExchange`] plus stream id, scheme, trailers and a count of unknown
//! fields); [`Http2Conn::started`] lists the request heads the last chunk parsed;
//! [`Http2Conn::on_gap`], [`Http2Conn::on_close`], [`Http2Conn::on_expire`],
//! [`Http2Conn::stats`] (+ [`Http2Conn::h2_stats`]), [`Http2Conn::memory_bytes`],
//! [`Http2Conn::is_idle`].

mod block;
mod frame;
mod framer;
mod grpc;
mod hpack;
mod huffman;

use std::collections::HashMap;

use super::http1::RequestStart;
use crate::headers::DEFAULT_MAX_HEADER_VALUE;
use crate::{
    Chunk, Direction, HeaderList, HeaderValue, HttpExchange, ParseStats, RequestHead, ResponseHead,
};
use block::Block;
pub use framer::FrameStats;
use framer::{Event, FrameOrigin, Framer};
use grpc::MessageLog;
pub use grpc::{MAX_MESSAGES, RpcMessage};

/// Bounds on what one connection's parser holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Streams tracked at once; requests beyond are counted as dropped.
    pub max_streams: usize,
    /// Largest header block (and other buffered frame) decoded; larger ones are skipped and
    /// counted, and leave the direction's HPACK table unknown.
    pub max_header_block: usize,
    /// Kept header values are truncated to this many bytes.
    pub max_header_value: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_streams: 1000,
            max_header_block: 64 * 1024,
            max_header_value: DEFAULT_MAX_HEADER_VALUE,
        }
    }
}

/// One stream's exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct H2Exchange {
    /// As for HTTP/1, with `version` "2"; `request.headers` has `:authority` as `host`.
    /// `injected` is always `None` (the kernel injects into HTTP/1 only).
    pub http: HttpExchange,
    pub stream_id: u32,
    /// `:scheme`, when known.
    pub scheme: Option<HeaderValue>,
    /// Kept headers of the trailers block (gRPC: `grpc-status`, `grpc-message`).
    pub trailers: HeaderList,
    /// Header fields that referenced HPACK table entries this parser could not know (joined
    /// mid-connection, or after a skipped block). Any of them may have been a pseudo-header or
    /// a kept header: the exchange is also `incomplete`, and its empty fields mean "unknown".
    pub unknown_fields: u32,
}

impl H2Exchange {
    /// `grpc-status` from the trailers, or from a trailers-only response.
    pub fn grpc_status(&self) -> Option<&str> {
        fn find(l: &HeaderList) -> Option<&str> {
            l.iter()
                .find(|(n, _)| n == "grpc-status")
                .map(|(_, v)| v.as_str())
        }
        find(&self.trailers).or_else(|| self.http.response.as_ref().and_then(|r| find(&r.headers)))
    }
}

/// HTTP/2-specific counters, besides [`ParseStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct H2Stats {
    pub frames: FrameStats,
    /// Requests not tracked because `max_streams` were open.
    pub streams_over_limit: u64,
    /// Streams reset (RST_STREAM) or refused (GOAWAY) before their end.
    pub streams_reset: u64,
    /// Header fields that referenced unknown HPACK entries.
    pub unknown_fields: u64,
}

#[derive(Debug)]
struct Stream {
    seq: u64,
    request: RequestHead,
    scheme: Option<HeaderValue>,
    response: Option<ResponseHead>,
    trailers: HeaderList,
    start_ns: u64,
    tid: u32,
    head_position: u64,
    request_body: u64,
    response_body: u64,
    incomplete: bool,
    unknown: u32,
    /// gRPC only.
    messages: Option<MessageLog>,
    /// The response direction lost its frame boundaries while this stream awaited its
    /// response: the response may have been in the lost bytes, so "no response" is not known.
    response_lost: bool,
    /// End of the latest call whose uncaptured bytes may have held this stream's end (its
    /// response direction lost sync while it was open). A stream still open at close ends
    /// there: closer to the truth than the close for a short exchange, and flagged incomplete.
    lost_at: Option<u64>,
}

impl Stream {
    fn heap_bytes(&self) -> usize {
        use crate::headers::{list_heap_bytes as l, request_heap_bytes, value_heap_bytes};
        request_heap_bytes(&self.request)
            + self.scheme.as_ref().map_or(0, value_heap_bytes)
            + self.response.as_ref().map_or(0, |r| l(&r.headers))
            + l(&self.trailers)
            + self.messages.as_ref().map_or(0, MessageLog::heap_bytes)
    }
}

/// One connection's HTTP/2 parser and stream pairing.
#[derive(Debug)]
pub struct Http2Conn {
    limits: Limits,
    dirs: [Framer; 2],
    req_dir: Option<Direction>,
    streams: HashMap<u32, Stream>,
    stats: ParseStats,
    h2: H2Stats,
    next_seq: u64,
    events: Vec<Event>,
    /// Exchanges completed by [`Http2Conn::on_gap`] (a gap can end a DATA frame with
    /// END_STREAM), handed out by the next `on_chunk` or `on_close`.
    ready: Vec<H2Exchange>,
    /// `ts_exit` of the last chunk seen per direction (the time of what a gap completes).
    last_exit: [u64; 2],
    /// Requests whose head the last `on_chunk` parsed: see [`Http2Conn::started`].
    started: Vec<Started>,
}

/// A request head parsed in [`Http2Conn::on_chunk`].
#[derive(Clone, Copy, Debug)]
struct Started {
    stream: u32,
    seq: u64,
    tid: u32,
    start_ns: u64,
    head_position: u64,
    direction: Direction,
}

impl Http2Conn {
    pub fn new(limits: Limits) -> Self {
        let framer = || Framer::new(limits.max_header_block, limits.max_header_value);
        Self {
            limits,
            dirs: [framer(), framer()],
            req_dir: None,
            streams: HashMap::new(),
            stats: ParseStats::default(),
            h2: H2Stats::default(),
            next_seq: 0,
            events: Vec::new(),
            ready: Vec::new(),
            last_exit: [0; 2],
            started: Vec::new(),
        }
    }

    /// Feed one chunk of one direction. Completed exchanges are pushed to `out`.
    pub fn on_chunk(&mut self, dir: Direction, chunk: &Chunk<'_>, out: &mut Vec<H2Exchange>) {
        out.append(&mut self.ready);
        self.started.clear();
        self.last_exit[dir.index()] = chunk.ts_exit;
        let origin = FrameOrigin {
            ts_enter: chunk.ts_enter,
            ts_exit: chunk.ts_exit,
            tid: chunk.tid,
            position: chunk.position,
        };
        let mut events = std::mem::take(&mut self.events);
        let peer_saw_preface = self.dirs[dir.opposite().index()].saw_preface;
        let framer = &mut self.dirs[dir.index()];
        framer.peer_saw_preface = peer_saw_preface;
        framer.feed(
            chunk.data,
            chunk.total_len,
            origin,
            &mut events,
            &mut self.h2.frames,
        );
        if framer.saw_preface && self.req_dir.is_none() {
            self.req_dir = Some(dir);
        }
        self.after_feed(dir, origin, chunk.data, &mut events, out);
        self.events = events;
    }

    /// `len` bytes of `dir` were lost. Inside a DATA payload they are skipped; anywhere else the
    /// direction stops being decoded and open streams are marked incomplete.
    pub fn on_gap(&mut self, dir: Direction, len: u64) {
        self.started.clear();
        let mut events = std::mem::take(&mut self.events);
        let origin = FrameOrigin {
            ts_exit: self.last_exit[dir.index()],
            ..FrameOrigin::default()
        };
        let skipped_in = self.dirs[dir.index()].gap(len, origin, &mut events, &mut self.h2.frames);
        if let Some(s) = skipped_in.and_then(|id| self.streams.get_mut(&id)) {
            // Body bytes not seen (their count is still right).
            s.incomplete = true;
        }
        let mut ready = std::mem::take(&mut self.ready);
        self.after_feed(dir, origin, &[], &mut events, &mut ready);
        self.ready = ready;
        self.events = events;
    }

    /// Connection closed at monotonic time `ts`: open streams are emitted `incomplete` (those
    /// without a response also counted in `unanswered_requests`). The parser is then reset
    /// (statistics are kept).
    pub fn on_close(&mut self, ts: u64, out: &mut Vec<H2Exchange>) {
        self.end_all(ts, true, out);
    }

    /// The connection is given up without its end seen: like [`Self::on_close`], but streams
    /// without a response are only counted ("no response" cannot be told from "lost").
    pub fn on_expire(&mut self, ts: u64, out: &mut Vec<H2Exchange>) {
        self.end_all(ts, false, out);
    }

    pub fn stats(&self) -> ParseStats {
        self.stats
    }

    pub fn h2_stats(&self) -> H2Stats {
        self.h2
    }

    /// The requests (received or sent) whose head the last [`Self::on_chunk`] parsed, in
    /// order, as for HTTP/1 ([`RequestStart::head`] is `None` when the stream already ended in
    /// the same chunk). Empty after `on_gap` and `on_close`.
    pub fn started(&self) -> impl Iterator<Item = RequestStart<'_>> {
        self.started.iter().map(|s| RequestStart {
            seq: s.seq,
            tid: s.tid,
            direction: s.direction,
            injected: None,
            start_ns: s.start_ns,
            head_position: s.head_position,
            head: self
                .streams
                .get(&s.stream)
                .filter(|st| st.seq == s.seq)
                .map(|st| &st.request),
        })
    }

    /// The direction that carries requests (`Egress`: the traced process is the client), once
    /// known.
    pub fn request_direction(&self) -> Option<Direction> {
        self.req_dir
    }

    /// Approximate heap bytes held (for bounded-memory assertions).
    pub fn memory_bytes(&self) -> usize {
        self.dirs.iter().map(Framer::memory_bytes).sum::<usize>()
            + self.streams.capacity() * (std::mem::size_of::<(u32, Stream)>() + 1)
            + self.streams.values().map(Stream::heap_bytes).sum::<usize>()
            + self.events.capacity() * std::mem::size_of::<Event>()
            + self.ready.capacity() * std::mem::size_of::<H2Exchange>()
            + self.started.capacity() * std::mem::size_of::<Started>()
    }

    /// No open stream and no partial frame: the table may expire it cheaply.
    pub fn is_idle(&self) -> bool {
        self.streams.is_empty()
            && self.ready.is_empty()
            && self.dirs.iter().all(|d| d.lost() || d.is_idle())
    }

    // ---- internals ----

    /// Handles the events of one feed; `data` is what was fed (the chunk's captured bytes).
    fn after_feed(
        &mut self,
        dir: Direction,
        origin: FrameOrigin,
        data: &[u8],
        events: &mut Vec<Event>,
        out: &mut Vec<H2Exchange>,
    ) {
        for e in events.drain(..) {
            match e {
                Event::Headers {
                    stream,
                    end_stream,
                    block,
                    first,
                } => self.on_headers(dir, stream, end_stream, block, first, origin, out),
                Event::Payload { stream, start, end } => {
                    if let Some(log) = self.messages_of(stream) {
                        // Sent when the write began, received when the read returned.
                        let at = match dir {
                            Direction::Egress => origin.ts_enter,
                            Direction::Ingress => origin.ts_exit,
                        };
                        log.feed(dir, &data[start..end], at);
                    }
                }
                Event::PayloadGap { stream, len } => {
                    if let Some(log) = self.messages_of(stream) {
                        log.gap(dir, len);
                    }
                }
                Event::Data {
                    stream,
                    len,
                    end_stream,
                } => {
                    let Some(req_dir) = self.req_dir else {
                        continue;
                    };
                    let Some(s) = self.streams.get_mut(&stream) else {
                        continue;
                    };
                    if dir == req_dir {
                        s.request_body += len;
                    } else {
                        s.response_body += len;
                        if end_stream {
                            self.finish(stream, origin.ts_exit, false, out);
                        }
                    }
                }
                Event::Rst { stream } => {
                    if self.streams.contains_key(&stream) {
                        self.h2.streams_reset += 1;
                        self.finish(stream, origin.ts_exit, true, out);
                    }
                }
                Event::Settings {
                    header_table_size,
                    max_frame_size,
                } => {
                    // This direction's sender decodes (and receives) the other direction.
                    let other = &mut self.dirs[dir.opposite().index()];
                    if let Some(n) = header_table_size {
                        other.decoder.set_limit(n);
                    }
                    if let Some(n) = max_frame_size {
                        other.max_frame = other.max_frame.max(n);
                    }
                }
                Event::Desync => {
                    let response_dir = self.req_dir.map(Direction::opposite);
                    for s in self.streams.values_mut() {
                        s.incomplete = true;
                        if Some(dir) == response_dir {
                            s.response_lost |= s.response.is_none();
                            s.lost_at = Some(origin.ts_exit);
                        }
                        if let Some(log) = &mut s.messages {
                            log.gap(dir, None);
                        }
                    }
                }
                Event::GoAway { last_stream } => {
                    // From the server: client streams above `last_stream` were not processed.
                    if self.req_dir == Some(dir.opposite()) {
                        let mut refused: Vec<u32> = self
                            .streams
                            .keys()
                            .copied()
                            .filter(|&id| id > last_stream)
                            .collect();
                        refused.sort_unstable();
                        for id in refused {
                            self.h2.streams_reset += 1;
                            self.finish(id, origin.ts_exit, true, out);
                        }
                    }
                }
            }
        }
        if self.dirs[dir.index()].lost() {
            for s in self.streams.values_mut() {
                s.incomplete = true;
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_headers(
        &mut self,
        dir: Direction,
        id: u32,
        end_stream: bool,
        block: Option<Block>,
        first: FrameOrigin,
        origin: FrameOrigin,
        out: &mut Vec<H2Exchange>,
    ) {
        if let Some(b) = &block {
            self.h2.unknown_fields += u64::from(b.unknown);
        }
        if id == 0 {
            self.stats.invalid_messages += 1;
            return;
        }
        let req_dir = match (self.req_dir, &block) {
            (Some(r), _) => r,
            (None, Some(b)) if b.method.is_some() => dir,
            (None, Some(b)) if b.status.is_some() => dir.opposite(),
            _ => {
                // Which side sent it is unknown: nothing can be paired.
                self.stats.dropped_messages += 1;
                return;
            }
        };
        self.req_dir = Some(req_dir);
        if dir == req_dir {
            if self.streams.contains_key(&id) {
                // Request trailers: nothing kept.
                return;
            }
            let Some(b) = block else {
                self.stats.dropped_messages += 1;
                return;
            };
            if b.method.is_none() && b.unknown == 0 {
                // Trailers of a stream already ended (or not tracked).
                return;
            }
            if self.streams.len() >= self.limits.max_streams {
                self.h2.streams_over_limit += 1;
                self.stats.dropped_messages += 1;
                return;
            }
            let mut headers = HeaderList::new();
            if let Some(a) = b.authority {
                headers.push(("host".into(), a));
            }
            headers.extend(b.headers);
            let incomplete = b.unknown > 0 || b.method.is_none() || b.path.is_none();
            let grpc = headers
                .iter()
                .any(|(n, v)| n == "content-type" && v.starts_with("application/grpc"));
            let start_ns = if dir == Direction::Egress {
                first.ts_enter
            } else {
                first.ts_exit
            };
            self.streams.insert(
                id,
                Stream {
                    seq: self.next_seq,
                    request: RequestHead {
                        method: b.method.unwrap_or_default(),
                        target: b.path.unwrap_or_default(),
                        version: "2",
                        headers,
                    },
                    scheme: b.scheme,
                    response: None,
                    trailers: HeaderList::new(),
                    start_ns,
                    tid: first.tid,
                    head_position: first.position,
                    request_body: 0,
                    response_body: 0,
                    incomplete,
                    unknown: b.unknown,
                    messages: grpc.then(MessageLog::default),
                    response_lost: false,
                    lost_at: None,
                },
            );
            self.started.push(Started {
                stream: id,
                seq: self.next_seq,
                tid: first.tid,
                start_ns,
                head_position: first.position,
                direction: dir,
            });
            self.next_seq += 1;
            return;
        }
        let Some(s) = self.streams.get_mut(&id) else {
            if block
                .as_ref()
                .is_some_and(|b| b.status.is_some() || b.unknown > 0)
            {
                self.stats.unmatched_responses += 1;
            }
            return;
        };
        match block {
            None => s.incomplete = true,
            Some(b) => {
                s.unknown += b.unknown;
                s.incomplete |= b.unknown > 0;
                if s.response.is_none() && b.status.is_none() && (b.unknown == 0 || end_stream) {
                    // Trailers whose response head was not seen (joined mid-stream); or, with
                    // unknown fields and END_STREAM, trailers or a trailers-only response whose
                    // `:status` is unknown: either way a response with unknown status ended.
                    s.incomplete = true;
                    if b.unknown > 0 {
                        s.response = Some(ResponseHead {
                            status: 0,
                            version: "2",
                            headers: HeaderList::new(),
                        });
                    }
                    s.trailers = b.headers;
                } else if s.response.is_none() {
                    if matches!(b.status, Some(100..=199)) && !end_stream {
                        // Interim response.
                        return;
                    }
                    s.incomplete |= b.status.is_none();
                    s.response = Some(ResponseHead {
                        status: b.status.unwrap_or(0),
                        version: "2",
                        headers: b.headers,
                    });
                } else {
                    s.trailers = b.headers;
                }
            }
        }
        if end_stream {
            self.finish(id, origin.ts_exit, false, out);
        }
    }

    fn messages_of(&mut self, stream: u32) -> Option<&mut MessageLog> {
        self.streams.get_mut(&stream)?.messages.as_mut()
    }

    fn finish(&mut self, id: u32, end_ns: u64, incomplete: bool, out: &mut Vec<H2Exchange>) {
        let Some(mut s) = self.streams.remove(&id) else {
            return;
        };
        let req_dir = self.req_dir.unwrap_or(Direction::Ingress);
        if s.response.is_none() && s.response_lost {
            // Answered or not is unknown: a response of unknown status, never "no response".
            s.response = Some(ResponseHead {
                status: 0,
                version: "2",
                headers: HeaderList::new(),
            });
            s.incomplete = true;
        }
        if s.response.is_none() {
            self.stats.unanswered_requests += 1;
        }
        out.push(H2Exchange {
            http: HttpExchange {
                request_direction: req_dir,
                request: s.request,
                response: s.response,
                start_ns: s.start_ns,
                end_ns: end_ns.max(s.start_ns),
                request_body_size: s.request_body,
                response_body_size: s.response_body,
                tid: s.tid,
                seq: s.seq,
                incomplete: s.incomplete || incomplete,
                head_position: s.head_position,
                injected: None,
                messages: s
                    .messages
                    .as_mut()
                    .map_or_else(Vec::new, |l| std::mem::take(&mut l.messages)),
                messages_dropped: s.messages.map_or(0, |l| l.dropped),
            },
            stream_id: id,
            scheme: s.scheme,
            trailers: s.trailers,
            unknown_fields: s.unknown,
        });
    }

    fn end_all(&mut self, ts: u64, emit_unanswered: bool, out: &mut Vec<H2Exchange>) {
        out.append(&mut self.ready);
        let mut ids: Vec<u32> = self.streams.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let s = &self.streams[&id];
            if !emit_unanswered && s.response.is_none() && !s.response_lost {
                self.streams.remove(&id);
                self.stats.unanswered_requests += 1;
                continue;
            }
            let end = s.lost_at.map_or(ts, |t| t.min(ts));
            self.finish(id, end, true, out);
        }
        let (limits, stats, h2) = (self.limits, self.stats, self.h2);
        *self = Self::new(limits);
        self.stats = stats;
        self.h2 = h2;
    }
}

#[cfg(test)]
mod tests;
