//! Kernel events in, finished spans out: connection tracking, protocol parsing and span
//! building in one synchronous step per event. No I/O here, so the benchmark can replay
//! recorded events through exactly the path the agent runs.
use std::{collections::VecDeque, sync::Arc};

use crate::{
    capture::events::{Event, decode},
    conn::{ConnTable, Finished, TableLimits},
    process::ProcessTable,
    trace::{
        Clock, Span,
        http_span::{SpanOptions, span_from_exchange},
    },
};

/// Counters of the event stream itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventStats {
    pub events: u64,
    pub data_events: u64,
    pub payload_bytes: u64,
    /// Records that could not be decoded (never expected; a kernel/user version mismatch).
    pub malformed: u64,
    pub spans: u64,
}

pub struct Stitcher {
    pub conns: ConnTable,
    pub processes: ProcessTable,
    clock: Clock,
    options: SpanOptions,
    finished: Vec<Finished>,
    stats: EventStats,
    /// Exited processes, forgotten only after `EXIT_GRACE_NS`: a connection's last span may be
    /// finished by its close, after the process is gone from /proc.
    exits: VecDeque<(u32, u64)>,
}

const EXIT_GRACE_NS: u64 = 5_000_000_000;
/// Beyond this many pending exits, forget processes at once (bounded memory).
const MAX_PENDING_EXITS: usize = 65536;

impl Stitcher {
    pub fn new(
        processes: ProcessTable,
        clock: Clock,
        options: SpanOptions,
        limits: TableLimits,
    ) -> Self {
        Self {
            conns: ConnTable::new(limits),
            processes,
            clock,
            options,
            finished: Vec::new(),
            stats: EventStats::default(),
            exits: VecDeque::new(),
        }
    }

    pub fn stats(&self) -> EventStats {
        self.stats
    }

    /// Handles one ring-buffer record; finished spans go to `emit`.
    pub fn on_record(&mut self, record: &[u8], emit: &mut impl FnMut(Span)) {
        self.stats.events += 1;
        let Some(event) = decode(record) else {
            self.stats.malformed += 1;
            return;
        };
        match event {
            Event::Data { header, payload } => {
                self.stats.data_events += 1;
                self.stats.payload_bytes += payload.len() as u64;
                // Read the process's metadata while it certainly exists (short-lived clients
                // such as curl are often gone when their last span is finished). Cached.
                drop(
                    self.processes
                        .resource_named(header.header.pid, &header.comm),
                );
                self.conns.on_data(&header, payload, &mut self.finished);
            }
            Event::Close(close) => self.conns.on_close(&close, &mut self.finished),
            Event::Exec { pid } => self.processes.on_exec(pid),
            Event::Exit { pid } => {
                if self.exits.len() >= MAX_PENDING_EXITS
                    && let Some((old, _)) = self.exits.pop_front()
                {
                    self.processes.on_exit(old);
                }
                self.exits.push_back((pid, header_ts(record)));
            }
        }
        self.flush(emit);
    }

    /// Expires idle connections (call about once a second).
    pub fn tick(&mut self, now_monotonic_ns: u64, emit: &mut impl FnMut(Span)) {
        self.conns.expire(now_monotonic_ns, &mut self.finished);
        while let Some(&(pid, ts)) = self.exits.front() {
            if now_monotonic_ns.saturating_sub(ts) < EXIT_GRACE_NS {
                break;
            }
            self.exits.pop_front();
            self.processes.on_exit(pid);
        }
        self.flush(emit);
    }

    fn flush(&mut self, emit: &mut impl FnMut(Span)) {
        for (conn, exchange) in self.finished.drain(..) {
            let resource: Arc<_> = self.processes.resource(conn.pid);
            self.stats.spans += 1;
            emit(span_from_exchange(
                &exchange,
                &conn,
                resource,
                &self.clock,
                &self.options,
            ));
        }
    }
}

/// The kernel timestamp of a record (its header's `ts`), 0 when too short.
fn header_ts(record: &[u8]) -> u64 {
    record
        .get(16..24)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_ne_bytes)
        .unwrap_or(0)
}
