//! The connection table: one entry per connection with HTTP traffic, per-direction reassembly
//! by byte position, and expiry of idle and abandoned state.
use std::collections::HashMap;

use tracer_common::{CloseEvent, DataHeader, Direction, Role};

use super::{ConnMeta, socket_addrs};
use crate::protocol::{Chunk, HttpExchange, ParseStats, http1::Http1Conn};

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
            max_conns: 16384,
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
}

struct Conn {
    meta: ConnMeta,
    /// Next expected byte position per direction; `None` until the first call.
    next: [Option<u64>; 2],
    http: Http1Conn,
    last_ns: u64,
}

/// Exchanges are reported with the connection they happened on.
pub type Finished = (ConnMeta, HttpExchange);

#[derive(Default)]
pub struct ConnTable {
    conns: HashMap<u64, Conn>,
    limits: TableLimits,
    stats: TableStats,
    /// Reused output buffer of the parsers (no allocation per call).
    scratch: Vec<HttpExchange>,
}

impl ConnTable {
    pub fn new(limits: TableLimits) -> Self {
        Self {
            conns: HashMap::new(),
            limits,
            stats: TableStats::default(),
            scratch: Vec::new(),
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

    /// One data call from the kernel.
    pub fn on_data(&mut self, h: &DataHeader, payload: &[u8], out: &mut Vec<Finished>) {
        let ts = h.header.ts;
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
            };
            self.stats.opened += 1;
            self.conns.insert(
                h.conn_id,
                Conn {
                    meta,
                    next: [None; 2],
                    http: Http1Conn::new(Default::default()),
                    last_ns: ts,
                },
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
        let mut chunk = Chunk {
            data: payload,
            total_len: h.total_len,
            ts_enter: h.ts_enter,
            ts_exit: ts,
            tid: h.header.tid,
        };
        let end = h.position + h.total_len as u64;
        match conn.next[dir.index()] {
            Some(expected) if h.position > expected => {
                let gap = h.position - expected;
                self.stats.gaps += 1;
                self.stats.gap_bytes += gap;
                conn.http.on_gap(dir, gap);
            }
            Some(expected) if h.position < expected => {
                self.stats.overlaps += 1;
                if end <= expected {
                    return; // nothing new
                }
                // Keep only the new tail; if it starts past the captured prefix it is unseen.
                let skip = (expected - h.position) as usize;
                chunk.data = payload.get(skip..).unwrap_or(&[]);
                chunk.total_len = (end - expected) as u32;
            }
            _ => {}
        }
        conn.next[dir.index()] = Some(end);
        conn.http.on_chunk(dir, &chunk, &mut self.scratch);
        out.extend(self.scratch.drain(..).map(|ex| (conn.meta, ex)));
    }

    /// The connection ended: finish what its framing allows, forget it.
    pub fn on_close(&mut self, ev: &CloseEvent, out: &mut Vec<Finished>) {
        if let Some(conn) = self.conns.remove(&ev.conn_id) {
            self.stats.closed += 1;
            Self::finish(conn, ev.header.ts, out, &mut self.stats);
        }
    }

    fn finish(mut conn: Conn, ts: u64, out: &mut Vec<Finished>, stats: &mut TableStats) {
        let mut done = Vec::new();
        conn.http.on_close(ts, &mut done);
        out.extend(done.into_iter().map(|ex| (conn.meta, ex)));
        add_parse_stats(&mut stats.parse, &conn.http.stats());
    }

    /// Forgets connections without traffic for longer than the limits allow.
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<Finished>) {
        let limits = self.limits;
        let expired: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                let quiet = now_ns.saturating_sub(c.last_ns);
                if c.http.is_idle() {
                    quiet > limits.idle_timeout_ns
                } else {
                    quiet > limits.stalled_timeout_ns
                }
            })
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(conn) = self.conns.remove(&id) {
                self.stats.expired += 1;
                let last = conn.last_ns;
                Self::finish(conn, last, out, &mut self.stats);
            }
        }
    }

    /// Parser statistics of the connections still open plus those already gone.
    pub fn parse_stats(&self) -> ParseStats {
        let mut s = self.stats.parse;
        for c in self.conns.values() {
            add_parse_stats(&mut s, &c.http.stats());
        }
        s
    }

    /// Approximate heap bytes held by the parsers.
    pub fn memory_bytes(&self) -> usize {
        self.conns
            .values()
            .map(|c| c.http.memory_bytes())
            .sum::<usize>()
            + self.conns.capacity() * std::mem::size_of::<(u64, Conn)>()
    }
}

fn add_parse_stats(total: &mut ParseStats, s: &ParseStats) {
    total.invalid_messages += s.invalid_messages;
    total.dropped_messages += s.dropped_messages;
    total.unmatched_responses += s.unmatched_responses;
    total.unanswered_requests += s.unanswered_requests;
}
