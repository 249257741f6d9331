//! The connection table: one entry per connection with HTTP traffic, per-direction reassembly
//! by byte position, and expiry of idle and abandoned state.
// Looked up on every event: foldhash (seeded per process), not std's SipHash.
use std::cmp::Ordering;

use hashbrown::HashMap;

use tracer_common::{CloseEvent, DataHeader, Direction, Protocol, Role, Source};

use super::{
    ConnMeta,
    db_losses::{DbLosses, add_parse},
    socket_addrs,
};
use crate::protocol::{
    Chunk, ConnParser, DbExchange, HttpExchange, ParseStats, http1::RequestStart, http2::H2Stats,
};

/// Bounds of the table.
#[derive(Clone, Copy, Debug)]
pub struct TableLimits {
    /// Connections tracked at once; beyond, new connections are dropped (counted).
    pub max_conns: usize,
    /// A connection with nothing in flight is forgotten after this long without traffic.
    pub idle_timeout_ns: u64,
    /// A connection with a message in flight is given up after this long without traffic.
    pub stalled_timeout_ns: u64,
}

impl Default for TableLimits {
    fn default() -> Self {
        Self {
            max_conns: crate::capture::DEFAULT_MAX_CONNECTIONS as usize,
            idle_timeout_ns: 30_000_000_000,
            stalled_timeout_ns: 120_000_000_000,
        }
    }
}

/// Counters of the table (monotonic, except `open`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    pub open: u64,
    pub opened: u64,
    pub closed: u64,
    pub expired: u64,
    pub refused_full: u64,
    /// Bytes the kernel reported but never delivered (ring buffer full, out-of-order calls).
    pub gap_bytes: u64,
    pub gaps: u64,
    /// Calls that repeated bytes already seen (concurrent calls on one socket).
    pub overlaps: u64,
    pub parse: ParseStats,
    /// HTTP/2 framing and stream counters of the connections already gone.
    pub h2: H2Stats,
    /// The database connections' gaps (open and gone) and parser losses (gone), by protocol.
    pub db: DbLosses,
}

struct Conn {
    meta: ConnMeta,
    /// Next expected byte position per direction (0 until the first call: positions count
    /// from when the kernel first saw the connection).
    next: [u64; 2],
    /// What the kernel classified: which parser, whose losses.
    protocol: Protocol,
    http: ConnParser,
    last_ns: u64,
}

/// Exchanges are reported with the connection they happened on.
pub type Finished = (ConnMeta, HttpExchange);

#[derive(Default)]
pub struct ConnTable {
    /// Boxed: the map's spare capacity (up to half its buckets) then costs a pointer per
    /// bucket, not a whole connection's state.
    conns: HashMap<u64, Box<Conn>>,
    limits: TableLimits,
    stats: TableStats,
    /// Reused output buffer of the parsers (no allocation per call).
    scratch: Vec<HttpExchange>,
    /// Database calls finished, until [`Self::drain_db`] takes them.
    db_done: Vec<(ConnMeta, DbExchange)>,
}

impl ConnTable {
    pub fn new(limits: TableLimits) -> Self {
        Self {
            conns: HashMap::new(),
            limits,
            stats: TableStats::default(),
            scratch: Vec::new(),
            db_done: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    pub fn stats(&self) -> TableStats {
        let mut s = self.stats;
        s.open = self.conns.len() as u64;
        s
    }

    /// Whether the connection is tracked.
    pub fn contains(&self, conn_id: u64) -> bool {
        self.conns.contains_key(&conn_id)
    }

    /// One data call from the kernel.
    pub fn on_data(&mut self, h: &DataHeader, payload: &[u8], out: &mut Vec<Finished>) {
        self.on_data_with(h, payload, out, &mut |_, _| {});
    }

    /// [`Self::on_data`], also reporting each request the process received whose head this
    /// call completed (before its exchange completes).
    pub fn on_data_with(
        &mut self,
        h: &DataHeader,
        payload: &[u8],
        out: &mut Vec<Finished>,
        on_start: &mut impl FnMut(&ConnMeta, &RequestStart<'_>),
    ) {
        let ts = h.header.ts;
        let tls = Source::is_tls(h.source);
        if let Some(conn) = self.conns.get_mut(&h.conn_id)
            && conn.meta.tls != tls
        {
            if !tls {
                // The syscalls of a connection whose plaintext the TLS probes deliver carry
                // ciphertext: never parsed.
                return;
            }
            // Plaintext of a connection that began in the clear (PostgreSQL's SSLRequest and
            // its answer): a stream of its own, with its own byte positions.
            conn.restart_as_tls(Protocol::from_u8(h.protocol), ts, out, &mut self.stats);
        }
        if !self.conns.contains_key(&h.conn_id) {
            if self.conns.len() >= self.limits.max_conns {
                self.stats.refused_full += 1;
                return;
            }
            let Some((local, remote)) = socket_addrs(&h.addr) else {
                return;
            };
            let meta = ConnMeta {
                conn_id: h.conn_id,
                pid: h.header.pid,
                local,
                remote,
                role: Role::from_u8(h.role),
                tls,
            };
            self.stats.opened += 1;
            let protocol = Protocol::from_u8(h.protocol);
            self.conns.insert(
                h.conn_id,
                Box::new(Conn {
                    meta,
                    next: [0; 2],
                    protocol,
                    http: ConnParser::new(protocol),
                    last_ns: ts,
                }),
            );
        }
        let Some(conn) = self.conns.get_mut(&h.conn_id) else {
            return;
        };
        conn.last_ns = ts;
        conn.meta.pid = h.header.pid;
        if conn.meta.role == Role::Unknown {
            conn.meta.role = Role::from_u8(h.role);
        }
        let dir = Direction::from_u8(h.direction);
        let other_seen = conn.next[dir.opposite().index()];
        let mut chunk = Chunk {
            data: payload,
            total_len: h.total_len,
            ts_enter: h.ts_enter,
            ts_exit: ts,
            tid: h.header.tid,
            other_unseen: h.other_position.saturating_sub(other_seen),
            position: h.position,
            ctx: h.ctx.injected().then_some(h.ctx),
        };
        let end = h.position + h.total_len as u64;
        // Positions count from when the kernel first saw the connection: a direction's first
        // event past 0 follows bytes that were moved but not delivered (lost, or seen before
        // the protocol was recognised), so the parser may be mid-message.
        let expected = conn.next[dir.index()];
        match h.position.cmp(&expected) {
            Ordering::Greater => {
                let gap = h.position - expected;
                self.stats.gaps += 1;
                self.stats.gap_bytes += gap;
                if let Some(db) = self.stats.db.of_mut(conn.protocol) {
                    db.gaps += 1;
                }
                conn.http.on_gap(dir, gap);
            }
            Ordering::Less => {
                self.stats.overlaps += 1;
                if end <= expected {
                    return; // nothing new
                }
                // Keep only the new tail; if it starts past the captured prefix it is unseen.
                let skip = (expected - h.position) as usize;
                chunk.data = payload.get(skip..).unwrap_or(&[]);
                chunk.total_len = (end - expected) as u32;
                chunk.position = expected;
                chunk.ctx = None;
            }
            Ordering::Equal => {}
        }
        conn.next[dir.index()] = end;
        conn.http.on_chunk(dir, &chunk, &mut self.scratch);
        for start in conn.http.started() {
            on_start(&conn.meta, &start);
        }
        out.extend(self.scratch.drain(..).map(|ex| (conn.meta, ex)));
        let meta = conn.meta;
        self.db_done
            .extend(conn.http.drain_db().map(|call| (meta, call)));
    }

    /// The database calls finished since the last drain.
    pub fn drain_db(&mut self) -> std::vec::Drain<'_, (ConnMeta, DbExchange)> {
        self.db_done.drain(..)
    }

    /// The connection ended: finish what its framing allows, forget it. The kernel's final
    /// byte counts reveal trailing losses (e.g. a response lost when the ring buffer was full),
    /// which must not pass for "no response".
    pub fn on_close(&mut self, ev: &CloseEvent, out: &mut Vec<Finished>) {
        if let Some(mut conn) = self.conns.remove(&ev.conn_id) {
            self.stats.closed += 1;
            for dir in [Direction::Egress, Direction::Ingress] {
                let seen = conn.next[dir.index()];
                let total = ev.positions[dir.index()];
                if total > seen {
                    self.stats.gaps += 1;
                    self.stats.gap_bytes += total - seen;
                    if let Some(db) = self.stats.db.of_mut(conn.protocol) {
                        db.gaps += 1;
                    }
                    conn.http.on_gap(dir, total - seen);
                }
            }
            Self::finish(conn, ev.header.ts, false, out, &mut self.stats);
        }
    }

    fn finish(
        mut conn: Box<Conn>,
        ts: u64,
        expired: bool,
        out: &mut Vec<Finished>,
        stats: &mut TableStats,
    ) {
        let mut done = Vec::new();
        if expired {
            conn.http.on_expire(ts, &mut done);
        } else {
            conn.http.on_close(ts, &mut done);
        }
        out.extend(done.into_iter().map(|ex| (conn.meta, ex)));
        let parse = conn.http.stats();
        add_parse(&mut stats.parse, &parse);
        stats.db.add_parse(conn.protocol, &parse);
        if let Some(h2) = conn.http.h2_stats() {
            add_h2_stats(&mut stats.h2, &h2);
        }
    }

    /// Forgets connections without traffic for longer than the limits allow, and frees the
    /// parser buffers of idle ones quiet for [`SHRINK_AFTER_NS`] (a keep-alive connection
    /// waiting for its next request then costs its entry alone).
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<Finished>) {
        let limits = self.limits;
        let mut expired = Vec::new();
        for (id, c) in &mut self.conns {
            let quiet = now_ns.saturating_sub(c.last_ns);
            if c.http.is_idle() {
                if quiet > limits.idle_timeout_ns {
                    expired.push(*id);
                } else if quiet >= SHRINK_AFTER_NS {
                    shrink_idle(&mut c.http);
                }
            } else if quiet > limits.stalled_timeout_ns {
                expired.push(*id);
            }
        }
        for id in expired {
            if let Some(conn) = self.conns.remove(&id) {
                self.stats.expired += 1;
                let last = conn.last_ns;
                Self::finish(conn, last, true, out, &mut self.stats);
            }
        }
    }

    /// Parser statistics of the connections still open plus those already gone.
    pub fn parse_stats(&self) -> ParseStats {
        let mut s = self.stats.parse;
        for c in self.conns.values() {
            add_parse(&mut s, &c.http.stats());
        }
        s
    }

    /// The database connections' losses by protocol, open connections included.
    pub fn db_losses(&self) -> DbLosses {
        let mut s = self.stats.db;
        for c in self.conns.values() {
            s.add_parse(c.protocol, &c.http.stats());
        }
        s
    }

    /// HTTP/2 counters of the connections still open plus those already gone.
    pub fn h2_stats(&self) -> H2Stats {
        let mut s = self.stats.h2;
        for c in self.conns.values() {
            if let Some(h2) = c.http.h2_stats() {
                add_h2_stats(&mut s, &h2);
            }
        }
        s
    }

    /// Approximate heap bytes held by the table: its buckets, the connections' state and the
    /// parsers' buffers.
    pub fn memory_bytes(&self) -> usize {
        self.conns
            .values()
            .map(|c| std::mem::size_of::<Conn>() + c.http.memory_bytes())
            .sum::<usize>()
            + self.conns.capacity() * (std::mem::size_of::<(u64, Box<Conn>)>() + 1)
    }
}

impl Conn {
    /// Starts the connection over with the TLS plaintext's parser: the cleartext parser is
    /// finished as at a close (what it still waited for is counted, in the totals), unless it
    /// resumes on the plaintext.
    fn restart_as_tls(
        &mut self,
        protocol: Protocol,
        ts: u64,
        out: &mut Vec<Finished>,
        stats: &mut TableStats,
    ) {
        if protocol == self.protocol && self.http.resume_over_tls() {
            // MySQL: the plaintext goes on with the conversation (the greeting was in the
            // clear), with its own byte positions.
            self.next = [0; 2];
            self.meta.tls = true;
            return;
        }
        let mut done = Vec::new();
        self.http.on_close(ts, &mut done);
        out.extend(done.into_iter().map(|ex| (self.meta, ex)));
        let parse = self.http.stats();
        add_parse(&mut stats.parse, &parse);
        stats.db.add_parse(self.protocol, &parse);
        self.protocol = protocol;
        self.http = ConnParser::new(protocol);
        self.next = [0; 2];
        self.meta.tls = true;
    }
}

/// An idle connection quiet this long has its parser's buffers freed: a busy one keeps them
/// (no allocation per request), one between sparse requests gives them back.
const SHRINK_AFTER_NS: u64 = 1_000_000_000;

/// Frees the buffers an idle connection's parser keeps for reuse.
fn shrink_idle(parser: &mut ConnParser) {
    match parser {
        ConnParser::Http1(c) => c.shrink_idle(),
        // Drained by every call.
        ConnParser::Http2 { scratch, .. } => *scratch = Vec::new(),
        ConnParser::Db(_) => {}
    }
}

fn add_h2_stats(total: &mut H2Stats, s: &H2Stats) {
    total.frames.invalid += s.frames.invalid;
    total.frames.dropped_blocks += s.frames.dropped_blocks;
    total.frames.oversized_frames += s.frames.oversized_frames;
    total.frames.desyncs += s.frames.desyncs;
    total.frames.skipped_gaps += s.frames.skipped_gaps;
    total.streams_over_limit += s.streams_over_limit;
    total.streams_reset += s.streams_reset;
    total.unknown_fields += s.unknown_fields;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::{AF_INET, ConnAddr, EventKind};

    const SERVER: u8 = Role::Server as u8;

    fn header(conn_id: u64, dir: Direction, position: u64, payload: &[u8], ts: u64) -> DataHeader {
        let mut h = DataHeader::default();
        h.header.kind = EventKind::Data as u8;
        h.header.pid = 42;
        h.header.tid = 43;
        h.header.ts = ts;
        h.conn_id = conn_id;
        h.position = position;
        h.ts_enter = ts.saturating_sub(10);
        h.total_len = payload.len() as u32;
        h.captured_len = payload.len() as u32;
        h.direction = dir as u8;
        h.role = SERVER;
        h.addr = ConnAddr {
            family: AF_INET,
            local_port: 8080,
            remote_port: 50000,
            local_addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            remote_addr: [127, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ..Default::default()
        };
        h
    }

    struct T {
        table: ConnTable,
        pos: [u64; 2],
        out: Vec<Finished>,
        ts: u64,
    }

    impl T {
        fn new(limits: TableLimits) -> Self {
            Self {
                table: ConnTable::new(limits),
                pos: [0; 2],
                out: Vec::new(),
                ts: 1_000,
            }
        }
        fn send(&mut self, dir: Direction, bytes: &[u8]) {
            self.ts += 1_000;
            let h = header(1, dir, self.pos[dir.index()], bytes, self.ts);
            self.pos[dir.index()] += bytes.len() as u64;
            self.table.on_data(&h, bytes, &mut self.out);
        }
        /// Bytes that were moved but never delivered (a lost event).
        fn lose(&mut self, dir: Direction, n: u64) {
            self.pos[dir.index()] += n;
        }
    }

    const REQ: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
    const RESP: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

    #[test]
    fn request_and_response_make_one_exchange_with_connection_metadata() {
        let mut t = T::new(TableLimits::default());
        t.send(Direction::Ingress, REQ);
        t.send(Direction::Egress, RESP);
        assert_eq!(t.out.len(), 1);
        let (meta, ex) = &t.out[0];
        assert_eq!(meta.local.to_string(), "127.0.0.1:8080");
        assert_eq!(meta.remote.to_string(), "127.0.0.2:50000");
        assert_eq!((meta.pid, meta.role), (42, Role::Server));
        assert_eq!(ex.request.target, "/a");
        assert_eq!(ex.response.as_ref().map(|r| r.status), Some(200));
        assert!(ex.start_ns < ex.end_ns);
    }

    #[test]
    fn a_lost_event_is_a_gap_never_a_wrong_span() {
        let mut t = T::new(TableLimits::default());
        t.send(Direction::Ingress, REQ);
        // The response head was lost; the next bytes seen are its body's tail.
        t.lose(Direction::Egress, 30);
        t.send(Direction::Egress, b"k");
        assert!(t.out.is_empty(), "{:?}", t.out);
        let s = t.table.stats();
        assert_eq!((s.gaps, s.gap_bytes), (1, 30));
        // The connection recovers at the next message.
        t.send(Direction::Ingress, REQ);
        t.send(Direction::Egress, RESP);
        assert_eq!(t.out.len(), 1);
        assert!(!t.out[0].1.incomplete);
    }

    #[test]
    fn repeated_bytes_are_dropped_and_partial_overlaps_trimmed() {
        let mut t = T::new(TableLimits::default());
        t.send(Direction::Ingress, REQ);
        // The same call reported again (concurrent calls on one socket): ignored.
        let h = header(1, Direction::Ingress, 0, REQ, 99_000);
        t.table.on_data(&h, REQ, &mut t.out);
        // A call overlapping the end of what was seen: only its new bytes count.
        let head = &RESP[..10];
        t.send(Direction::Egress, head);
        let overlap = [&RESP[5..10], &RESP[10..]].concat();
        let h = header(1, Direction::Egress, 5, &overlap, 100_000);
        t.table.on_data(&h, &overlap, &mut t.out);
        assert_eq!(t.table.stats().overlaps, 2);
        assert_eq!(t.out.len(), 1, "exactly one exchange");
        assert_eq!(t.out[0].1.response_body_size, 2);
    }

    #[test]
    fn close_finishes_and_forgets() {
        let mut t = T::new(TableLimits::default());
        t.send(Direction::Ingress, REQ);
        t.send(
            Direction::Egress,
            b"HTTP/1.0 200 OK\r\n\r\nbody until close",
        );
        assert!(t.out.is_empty());
        let mut close = CloseEvent {
            conn_id: 1,
            ..Default::default()
        };
        close.header.ts = t.ts + 5;
        t.table.on_close(&close, &mut t.out);
        assert_eq!(t.out.len(), 1);
        assert_eq!(t.out[0].1.response_body_size, 16);
        assert!(t.table.is_empty());
        assert_eq!(t.table.stats().closed, 1);
    }

    #[test]
    fn a_response_lost_at_the_end_is_not_reported_as_no_response() {
        // A client request; its response was lost (ring buffer full), so only the close's
        // final byte counts tell the response bytes existed.
        let client = |t: &mut T| {
            let mut h = header(1, Direction::Egress, 0, REQ, 2_000);
            h.role = Role::Client as u8;
            t.table.on_data(&h, REQ, &mut t.out);
        };
        let close = |t: &mut T, ingress: u64| {
            let mut ev = CloseEvent {
                conn_id: 1,
                positions: [REQ.len() as u64, ingress],
                ..Default::default()
            };
            ev.header.ts = 9_000;
            t.table.on_close(&ev, &mut t.out);
        };
        let mut t = T::new(TableLimits::default());
        client(&mut t);
        close(&mut t, RESP.len() as u64);
        assert!(t.out.is_empty(), "{:?}", t.out);
        assert_eq!(t.table.stats().gap_bytes, RESP.len() as u64);
        // Nothing was lost: the server really did not answer, and the client span says so.
        let mut t = T::new(TableLimits::default());
        client(&mut t);
        close(&mut t, 0);
        assert_eq!(t.out.len(), 1);
        assert!(t.out[0].1.response.is_none());
    }

    #[test]
    fn expiry_does_not_report_no_response() {
        let limits = TableLimits {
            max_conns: 10,
            idle_timeout_ns: 1_000,
            stalled_timeout_ns: 1_000,
        };
        let mut t = T::new(limits);
        let mut h = header(1, Direction::Egress, 0, REQ, 2_000);
        h.role = Role::Client as u8;
        t.table.on_data(&h, REQ, &mut t.out);
        t.table.expire(1_000_000, &mut t.out);
        assert!(t.table.is_empty());
        assert!(
            t.out.is_empty(),
            "its close may have been lost: {:?}",
            t.out
        );
    }

    #[test]
    fn full_table_refuses_new_connections_and_counts() {
        let mut t = T::new(TableLimits {
            max_conns: 1,
            ..Default::default()
        });
        t.send(Direction::Ingress, REQ);
        let h = header(2, Direction::Ingress, 0, REQ, 5_000);
        t.table.on_data(&h, REQ, &mut t.out);
        assert_eq!(t.table.len(), 1);
        assert_eq!(t.table.stats().refused_full, 1);
    }

    #[test]
    fn idle_and_stalled_connections_expire_and_memory_returns() {
        let limits = TableLimits {
            max_conns: 100,
            idle_timeout_ns: 1_000,
            stalled_timeout_ns: 10_000,
        };
        let mut t = T::new(limits);
        t.send(Direction::Ingress, REQ);
        t.send(Direction::Egress, RESP);
        // Idle (nothing in flight): forgotten after the idle timeout.
        t.table.expire(t.ts + 500, &mut t.out);
        assert_eq!(t.table.len(), 1);
        t.table.expire(t.ts + 1_500, &mut t.out);
        assert!(t.table.is_empty());
        // Half-finished (a request without response): kept longer, then given up.
        let mut t = T::new(limits);
        t.send(Direction::Ingress, b"GET /half HTTP/1.1\r\nHost: x\r\n");
        t.table.expire(t.ts + 5_000, &mut t.out);
        assert_eq!(t.table.len(), 1);
        t.table.expire(t.ts + 20_000, &mut t.out);
        assert!(t.table.is_empty());
        assert_eq!(t.table.stats().expired, 1);
        assert!(t.out.is_empty(), "a half request makes no span");
    }

    /// What an idle keep-alive connection (one exchange done, nothing in flight) costs the
    /// agent: its table entry and the parser's buffers.
    #[test]
    fn an_idle_keep_alive_connection_is_small() {
        const N: u64 = 1000;
        let mut table = ConnTable::new(TableLimits::default());
        let mut out = Vec::new();
        for id in 1..=N {
            let req = header(id, Direction::Ingress, 0, REQ, 1_000);
            table.on_data(&req, REQ, &mut out);
            let resp = header(id, Direction::Egress, 0, RESP, 2_000);
            table.on_data(&resp, RESP, &mut out);
        }
        assert_eq!(out.len(), N as usize);
        let per_conn = |table: &ConnTable| table.memory_bytes() as u64 / N;
        let busy = per_conn(&table);
        // The sweep right after keeps the buffers of connections just used...
        table.expire(2_000 + SHRINK_AFTER_NS - 1, &mut out);
        assert_eq!(per_conn(&table), busy);
        // ...and frees them once the connections have been quiet for a while.
        table.expire(2_000 + SHRINK_AFTER_NS, &mut out);
        let idle = per_conn(&table);
        eprintln!(
            "idle connection: {idle} bytes ({busy} just used; state {} bytes, parser heap {}, \
             table capacity {})",
            std::mem::size_of::<Conn>(),
            table.conns.values().next().unwrap().http.memory_bytes(),
            table.conns.capacity(),
        );
        assert_eq!(table.len(), N as usize, "none expired");
        assert!(idle <= 1024, "{idle} bytes per idle connection");
        // Each connection's box is one of the allocator's size classes (mimalloc: 384, then
        // 448, 512, 640): a byte more costs 64 per connection.
        assert!(
            std::mem::size_of::<Conn>() <= 384,
            "{} bytes",
            std::mem::size_of::<Conn>()
        );
        // Each still parses its next exchange.
        for id in 1..=N {
            let req = header(id, Direction::Ingress, REQ.len() as u64, REQ, 3_000_000_000);
            table.on_data(&req, REQ, &mut out);
            let resp = header(
                id,
                Direction::Egress,
                RESP.len() as u64,
                RESP,
                3_000_000_100,
            );
            table.on_data(&resp, RESP, &mut out);
        }
        assert_eq!(out.len(), 2 * N as usize);
        assert!(out[N as usize..].iter().all(|(_, ex)| !ex.incomplete));
    }

    /// A PostgreSQL client connection's calls: each `(direction, TLS plaintext?, bytes)`
    /// with its positions counted per stream (the syscalls' and the plaintext's).
    struct Pg {
        table: ConnTable,
        pos: [[u64; 2]; 2],
        ts: u64,
    }

    impl Pg {
        fn new() -> Self {
            Self {
                table: ConnTable::new(TableLimits::default()),
                pos: [[0; 2]; 2],
                ts: 1_000,
            }
        }

        fn call(&mut self, dir: Direction, tls: bool, bytes: &[u8]) {
            self.ts += 1_000;
            let pos = &mut self.pos[usize::from(tls)][dir.index()];
            let mut h = header(7, dir, *pos, bytes, self.ts);
            *pos += bytes.len() as u64;
            h.role = Role::Client as u8;
            h.protocol = Protocol::Postgres as u8;
            h.source = match (tls, dir) {
                (false, Direction::Egress) => Source::Write,
                (false, Direction::Ingress) => Source::Read,
                (true, Direction::Egress) => Source::TlsWrite,
                (true, Direction::Ingress) => Source::TlsRead,
            } as u8;
            let mut http = Vec::new();
            self.table.on_data(&h, bytes, &mut http);
            assert!(http.is_empty());
        }

        fn lose(&mut self, dir: Direction, tls: bool, n: u64) {
            self.pos[usize::from(tls)][dir.index()] += n;
        }

        /// A session on the stream: startup, authentication, `SELECT 1`.
        fn session(&mut self, tls: bool) {
            self.call(Direction::Egress, tls, &PG_STARTUP);
            self.call(Direction::Ingress, tls, PG_READY);
            self.call(Direction::Egress, tls, PG_QUERY);
        }

        fn texts(&mut self) -> Vec<String> {
            self.table
                .drain_db()
                .map(|(meta, call)| {
                    assert!(meta.tls);
                    call.query_text.as_deref().unwrap_or_default().to_owned()
                })
                .collect()
        }
    }

    /// Startup message (protocol 3.0, user postgres), AuthenticationOk + ReadyForQuery,
    /// `SELECT 1` and its CommandComplete + ReadyForQuery.
    const PG_STARTUP: [u8; 23] = *b"\0\0\0\x17\0\x03\0\0user\0postgres\0\0";
    const PG_READY: &[u8] = b"R\0\0\0\x08\0\0\0\0Z\0\0\0\x05I";
    const PG_QUERY: &[u8] = b"Q\0\0\0\x0dSELECT 1\0";
    const PG_RESULT: &[u8] = b"C\0\0\0\x0dSELECT 1\0Z\0\0\0\x05I";

    #[test]
    fn postgres_over_tls_parses_the_plaintext_never_the_ciphertext() {
        let mut t = Pg::new();
        // SSLRequest and the server's `S`, in the clear; then ciphertext the kernel copied
        // before it knew (a TLS record), whose positions continue the clear stream's.
        t.call(
            Direction::Egress,
            false,
            &[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f],
        );
        t.call(Direction::Ingress, false, b"S");
        t.call(
            Direction::Egress,
            false,
            &[0x16, 0x03, 0x01, 0x02, 0x00, 1, 2],
        );
        // The plaintext from the TLS probes: a stream of its own from position 0.
        t.session(true);
        // Ciphertext after the plaintext started: ignored, whatever it looks like.
        t.call(Direction::Ingress, false, PG_RESULT);
        t.call(Direction::Ingress, true, PG_RESULT);
        assert_eq!(t.texts(), ["SELECT ?"]);
        assert_eq!(t.table.db_losses(), DbLosses::default());
        let s = t.table.stats();
        assert_eq!((s.gaps, s.overlaps, s.opened, s.open), (0, 0, 1, 1));
    }

    #[test]
    fn a_broken_postgres_stream_is_counted_never_spanned() {
        let mut t = Pg::new();
        t.session(true);
        // The result's first bytes were lost (the ring buffer was full).
        t.lose(Direction::Ingress, true, 5);
        t.call(Direction::Ingress, true, &PG_RESULT[5..]);
        // Nothing from the connection afterwards, though these bytes would pair.
        t.call(Direction::Egress, true, PG_QUERY);
        t.call(Direction::Ingress, true, PG_RESULT);
        assert_eq!(t.texts(), Vec::<String>::new());
        let pg = t.table.db_losses().postgres;
        assert_eq!(pg.gaps, 1);
        assert_eq!(
            (pg.parse.invalid_messages, pg.parse.dropped_messages),
            (1, 1)
        );
        assert_eq!(t.table.db_losses().redis, Default::default());
        // The counters stay once the connection is gone.
        let close = CloseEvent {
            conn_id: 7,
            positions: t.pos[1],
            ..Default::default()
        };
        t.table.on_close(&close, &mut Vec::new());
        assert!(t.table.is_empty());
        assert_eq!(t.table.db_losses().postgres, pg);
        let readings = t.table.db_losses().readings();
        assert!(readings.contains(&("postgres_gaps", 1)));
        assert!(readings.contains(&("postgres_invalid_messages", 1)));
        assert!(readings.contains(&("postgres_dropped_calls", 1)));
    }

    #[test]
    fn unknown_address_family_is_ignored() {
        let mut t = T::new(TableLimits::default());
        let mut h = header(1, Direction::Ingress, 0, REQ, 1);
        h.addr.family = 1; // AF_UNIX: never reported by the kernel side for TCP
        t.table.on_data(&h, REQ, &mut t.out);
        assert!(t.table.is_empty());
    }
}
