//! Kernel events in, finished spans out: connection tracking, protocol parsing and span
//! building in one synchronous step per event. No I/O here, so the benchmark can replay
//! recorded events through exactly the path the agent runs.
use std::{collections::VecDeque, sync::Arc};

use crate::{
    capture::events::{Event, decode},
    conn::{ConnTable, Finished, TableLimits},
    process::ProcessTable,
    span::Span,
    trace::{
        Clock, ParentResolver, ParentStats, SpanOptions, db_context, span_from_db,
        span_from_exchange,
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

/// Turns the kernel's events into finished spans (see the module documentation).
pub struct SpanAssembler {
    pub conns: ConnTable,
    pub processes: ProcessTable,
    clock: Clock,
    options: SpanOptions,
    finished: Vec<Finished>,
    stats: EventStats,
    /// Exited processes, forgotten only after `EXIT_GRACE_NS`: a connection's last span may be
    /// finished by its close, after the process is gone from /proc.
    exits: VecDeque<(u32, u64)>,
    /// Resolves each span's parent: incoming context, same-thread and same-node callers (see
    /// [`crate::trace::parent`]).
    parents: ParentResolver,
}

const EXIT_GRACE_NS: u64 = 5_000_000_000;
/// Beyond this many pending exits, forget processes at once (bounded memory).
const MAX_PENDING_EXITS: usize = 65536;

impl SpanAssembler {
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
            parents: ParentResolver::default(),
        }
    }

    /// Replaces the trace context resolver (deterministic tests, other bounds).
    pub fn with_parent_resolver(mut self, parents: ParentResolver) -> Self {
        self.parents = parents;
        self
    }

    pub fn parent_stats(&self) -> ParentStats {
        self.parents.stats()
    }

    pub fn stats(&self) -> EventStats {
        self.stats
    }

    /// Decodes and handles one ring-buffer record (replays of recorded events); finished
    /// spans go to `emit`.
    pub fn on_record(&mut self, record: &[u8], emit: &mut impl FnMut(Span)) {
        match decode(record) {
            Some(event) => self.on_event(event, emit),
            None => self.on_malformed(),
        }
    }

    /// A record that did not decode (counted; never expected).
    pub fn on_malformed(&mut self) {
        self.stats.events += 1;
        self.stats.malformed += 1;
    }

    /// Handles one decoded event; finished spans go to `emit`.
    pub fn on_event(&mut self, event: Event<'_>, emit: &mut impl FnMut(Span)) {
        self.stats.events += 1;
        match event {
            Event::Data { header, payload } => {
                self.stats.data_events += 1;
                self.stats.payload_bytes += payload.len() as u64;
                // Read the process's metadata while it certainly exists (short-lived clients
                // such as curl are often gone when their last span is finished). Cached.
                self.processes.remember(header.header.pid, &header.comm);
                let parents = &mut self.parents;
                self.conns.on_data_with(
                    &header,
                    payload,
                    &mut self.finished,
                    &mut |conn, start| parents.on_start(conn, start),
                );
            }
            Event::Close(close) => {
                self.conns.on_close(&close, &mut self.finished);
                self.parents.on_conn_gone(close.conn_id);
            }
            Event::Exec { pid, .. } => self.processes.on_exec(pid),
            Event::Exit { pid, ts } => {
                if self.exits.len() >= MAX_PENDING_EXITS
                    && let Some((old, _)) = self.exits.pop_front()
                {
                    self.processes.on_exit(old);
                }
                self.exits.push_back((pid, ts));
            }
        }
        self.flush(emit);
    }

    /// Expires idle connections (call about once a second).
    pub fn tick(&mut self, now_monotonic_ns: u64, emit: &mut impl FnMut(Span)) {
        self.conns.expire(now_monotonic_ns, &mut self.finished);
        let conns = &self.conns;
        self.parents.tick(now_monotonic_ns, |id| conns.contains(id));
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
            let ctx = self.parents.context_for(&conn, &exchange);
            emit(span_from_exchange(
                &exchange,
                &conn,
                resource,
                &self.clock,
                &self.options,
                ctx,
            ));
        }
        for (conn, call) in self.conns.drain_db() {
            let resource: Arc<_> = self.processes.resource(conn.pid);
            self.stats.spans += 1;
            let ctx = db_context(&mut self.parents, &conn, &call);
            emit(span_from_db(&call, &conn, resource, &self.clock, ctx));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::nat::{NatError, NatLookup};
    use crate::trace::{
        AttrValue, IdGenerator, SpanKind, context::hex, parent::MULTIPLEXED_TTL_NS,
    };
    use std::{
        net::SocketAddr,
        sync::atomic::{AtomicUsize, Ordering},
    };
    use tracer_common::{
        AF_INET, CloseEvent, ConnAddr, DataHeader, Direction, EventKind, ProcessEvent, Role,
    };

    const PROXY: u32 = 100;
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const CALLER: &str = "00f067aa0ba902b7";

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading a POD value's bytes.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    struct T {
        s: SpanAssembler,
        pos: std::collections::HashMap<(u64, u8), u64>,
        spans: Vec<Span>,
        /// The port client connections connect to (8080: this node's server, see `serve`).
        client_remote_port: u16,
    }

    impl T {
        fn new() -> Self {
            Self::with(|p| p)
        }

        /// With the parent resolver `f` makes of the test's own.
        fn with(f: impl FnOnce(ParentResolver) -> ParentResolver) -> Self {
            let s = SpanAssembler::new(
                ProcessTable::new(Some("h".into()), vec![]),
                Clock::with_offset(0),
                SpanOptions::default(),
                TableLimits::default(),
            )
            .with_parent_resolver(f(ParentResolver::with_ids(
                16,
                7,
                IdGenerator::from_seed(3),
            )));
            Self {
                s,
                pos: Default::default(),
                spans: Vec::new(),
                client_remote_port: 9090,
            }
        }

        /// One call of `tid` on connection `conn` (role from the side that starts it), at `ts`.
        fn data(&mut self, conn: u64, role: Role, dir: Direction, tid: u32, ts: u64, b: &[u8]) {
            let mut h = DataHeader::default();
            h.header.kind = EventKind::Data as u8;
            h.header.pid = PROXY;
            h.header.tid = tid;
            h.header.ts = ts;
            h.conn_id = conn;
            let pos = self.pos.entry((conn, dir as u8)).or_default();
            h.position = *pos;
            *pos += b.len() as u64;
            h.ts_enter = ts - 1;
            h.total_len = b.len() as u32;
            h.captured_len = b.len() as u32;
            h.direction = dir as u8;
            h.role = role as u8;
            h.addr = ConnAddr {
                family: AF_INET,
                local_port: if role == Role::Server { 8080 } else { 40000 },
                remote_port: if role == Role::Server {
                    40000
                } else {
                    self.client_remote_port
                },
                local_addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                remote_addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                ..Default::default()
            };
            let mut rec = bytes_of(&h);
            rec.extend_from_slice(b);
            let spans = &mut self.spans;
            self.s.on_record(&rec, &mut |sp| spans.push(sp));
        }

        fn close(&mut self, conn: u64, ts: u64) {
            let mut c = CloseEvent {
                conn_id: conn,
                ..Default::default()
            };
            c.header.kind = EventKind::Close as u8;
            c.header.pid = PROXY;
            c.header.ts = ts;
            let spans = &mut self.spans;
            self.s.on_record(&bytes_of(&c), &mut |sp| spans.push(sp));
        }

        /// Server request on `conn` read by `tid`.
        fn serve(&mut self, conn: u64, tid: u32, ts: u64, extra: &str) {
            let req = format!("GET /in HTTP/1.1\r\nHost: a\r\n{extra}\r\n");
            self.data(
                conn,
                Role::Server,
                Direction::Ingress,
                tid,
                ts,
                req.as_bytes(),
            );
        }
        fn answer(&mut self, conn: u64, tid: u32, ts: u64) {
            let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
            self.data(conn, Role::Server, Direction::Egress, tid, ts, resp);
        }
        /// A whole client exchange on `conn` sent by `tid`.
        fn call(&mut self, conn: u64, tid: u32, ts: u64, extra: &str) {
            let req = format!("GET /out HTTP/1.1\r\nHost: b\r\n{extra}\r\n");
            self.data(
                conn,
                Role::Client,
                Direction::Egress,
                tid,
                ts,
                req.as_bytes(),
            );
            let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
            self.data(conn, Role::Client, Direction::Ingress, tid, ts + 10, resp);
        }
        fn take(&mut self, kind: SpanKind) -> Span {
            let i = self.spans.iter().position(|s| s.kind == kind).unwrap();
            self.spans.remove(i)
        }
    }

    fn source(s: &Span) -> &str {
        match s.attr("tracer.parent.source") {
            Some(AttrValue::Str(v)) => v,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn same_node_server_span_is_the_child_of_its_callers_client_span() {
        for server_event_first in [false, true] {
            let mut t = T::new();
            t.client_remote_port = 8080;
            let req = b"GET /in HTTP/1.1\r\nHost: a\r\n\r\n";
            let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
            // Connection 10 is the client's end, 11 the server's: mirrored addresses.
            if server_event_first {
                t.serve(11, 8, 1_010, "");
                t.data(10, Role::Client, Direction::Egress, 9, 1_000, req);
            } else {
                t.data(10, Role::Client, Direction::Egress, 9, 1_000, req);
                t.serve(11, 8, 1_010, "");
            }
            t.answer(11, 8, 1_020);
            t.data(10, Role::Client, Direction::Ingress, 9, 1_030, resp);
            let client = t.take(SpanKind::Client);
            let server = t.take(SpanKind::Server);
            assert_eq!(server.trace_id, client.trace_id, "{server_event_first}");
            assert_eq!(server.parent_span_id, Some(client.span_id));
            assert_eq!(source(&server), "address");
            assert_eq!(source(&client), "none");
            assert_eq!(t.s.parent_stats().address_linked, 1);
        }
        // Another client port: no link.
        let mut t = T::new();
        t.client_remote_port = 8081;
        t.data(
            10,
            Role::Client,
            Direction::Egress,
            9,
            1_000,
            b"GET /in HTTP/1.1\r\n\r\n",
        );
        t.serve(11, 8, 1_010, "");
        t.answer(11, 8, 1_020);
        let server = t.take(SpanKind::Server);
        assert_eq!((server.parent_span_id, source(&server)), (None, "none"));
    }

    /// What conntrack answers for one server connection (the kernel side is tested in
    /// `conn::nat` on its real replies and end to end in tests/tests/dnat.rs).
    struct OneEntry {
        answer: Result<Option<(SocketAddr, SocketAddr)>, NatError>,
        asked: Arc<AtomicUsize>,
    }

    impl NatLookup for OneEntry {
        fn client_view(
            &mut self,
            local: SocketAddr,
            remote: SocketAddr,
        ) -> Result<Option<(SocketAddr, SocketAddr)>, NatError> {
            self.asked.fetch_add(1, Ordering::Relaxed);
            assert_eq!((local.port(), remote.port()), (8080, 40000));
            self.answer.clone()
        }
    }

    #[test]
    fn a_caller_that_dialled_a_service_ip_is_found_through_conntrack() {
        let lo = |port| SocketAddr::from(([127, 0, 0, 1], port));
        // The client dialled port 80 (a Service), DNAT sent it to 8080.
        let run = |answer| {
            let asked = Arc::new(AtomicUsize::new(0));
            let nat = OneEntry {
                answer,
                asked: asked.clone(),
            };
            let mut t = T::with(|p| p.with_nat(Box::new(nat)));
            t.client_remote_port = 80;
            let req = b"GET /in HTTP/1.1\r\nHost: a\r\n\r\n";
            let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
            // Two requests on one keep-alive connection: one lookup.
            for ts in [1_000, 2_000] {
                t.data(10, Role::Client, Direction::Egress, 9, ts, req);
                t.serve(11, 8, ts + 10, "");
                t.answer(11, 8, ts + 20);
                t.data(10, Role::Client, Direction::Ingress, 9, ts + 30, resp);
            }
            (t, asked.load(Ordering::Relaxed))
        };
        let (mut t, asked) = run(Ok(Some((lo(40000), lo(80)))));
        assert_eq!(asked, 1);
        for _ in 0..2 {
            let client = t.take(SpanKind::Client);
            let server = t.take(SpanKind::Server);
            assert_eq!(server.parent_span_id, Some(client.span_id));
            assert_eq!(source(&server), "address");
        }
        let st = t.s.parent_stats();
        assert_eq!(
            (
                st.nat_lookups,
                st.nat_resolved,
                st.nat_linked,
                st.address_linked
            ),
            (1, 1, 2, 2)
        );

        // No answer, no NAT, or NAT to an address no caller dialled: no link.
        for (answer, failed) in [
            (Err(NatError::Timeout), 1),
            (Ok(None), 0),
            (Ok(Some((lo(40000), lo(81)))), 0),
        ] {
            let (mut t, asked) = run(answer);
            assert_eq!(asked, 1);
            let server = t.take(SpanKind::Server);
            assert_eq!((server.parent_span_id, source(&server)), (None, "none"));
            let st = t.s.parent_stats();
            assert_eq!((st.nat_lookup_failed, st.nat_linked), (failed, 0));
        }
    }

    #[test]
    fn client_sent_while_serving_is_the_server_spans_child() {
        let mut t = T::new();
        let tp = format!("traceparent: 00-{TRACE}-{CALLER}-01\r\ntracestate: k=v\r\n");
        t.serve(1, 7, 1_000, &tp);
        t.call(2, 7, 2_000, "");
        t.answer(1, 7, 3_000);
        let client = t.take(SpanKind::Client);
        let server = t.take(SpanKind::Server);
        assert_eq!(hex(&server.trace_id), TRACE);
        assert_eq!(
            server.parent_span_id.map(|p| hex(&p)).as_deref(),
            Some(CALLER)
        );
        assert_eq!(server.trace_state.as_deref(), Some("k=v"));
        assert_eq!((server.flags, source(&server)), (1, "w3c"));
        assert_eq!(client.trace_id, server.trace_id);
        assert_eq!(client.parent_span_id, Some(server.span_id));
        assert_ne!(client.span_id, server.span_id);
        assert_eq!(client.trace_state.as_deref(), Some("k=v"));
        assert_eq!(source(&client), "thread");
        assert_eq!(t.s.parent_stats().linked, 1);
        assert_eq!(t.s.parent_stats().open, 0);

        // Without incoming context: a new root server span, still the client's parent.
        t.serve(1, 7, 4_000, "");
        t.call(2, 7, 5_000, "");
        t.answer(1, 7, 6_000);
        let client = t.take(SpanKind::Client);
        let server = t.take(SpanKind::Server);
        assert_eq!((server.parent_span_id, source(&server)), (None, "none"));
        assert_ne!(hex(&server.trace_id), TRACE);
        assert_eq!(client.trace_id, server.trace_id);
        assert_eq!(client.parent_span_id, Some(server.span_id));

        // After the server exchange completed, the thread serves nothing: a new root.
        t.call(2, 7, 7_000, "");
        let client = t.take(SpanKind::Client);
        assert_eq!((client.parent_span_id, source(&client)), (None, "none"));
    }

    #[test]
    fn no_link_from_another_thread_an_earlier_call_or_a_closed_connection() {
        let mut t = T::new();
        t.serve(1, 7, 1_000, "");
        // Another thread of the process.
        t.call(2, 8, 2_000, "");
        // A call that started before the request arrived (completes after).
        t.data(
            3,
            Role::Client,
            Direction::Egress,
            7,
            500,
            b"GET /early HTTP/1.1\r\n\r\n",
        );
        t.data(
            3,
            Role::Client,
            Direction::Ingress,
            7,
            2_500,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        );
        // The served connection closes without an answer: the thread serves nothing.
        t.close(1, 2_600);
        t.call(2, 7, 3_000, "");
        assert_eq!(t.spans.len(), 3);
        for s in &t.spans {
            assert_eq!(s.kind, SpanKind::Client);
            assert_eq!((s.parent_span_id, source(s)), (None, "none"), "{s:?}");
        }
        assert_eq!(t.s.parent_stats().open, 0);
    }

    #[test]
    fn a_thread_serving_two_requests_never_links() {
        let mut t = T::new();
        t.serve(1, 7, 1_000, "");
        t.serve(3, 7, 1_500, "");
        t.call(2, 7, 2_000, "");
        t.answer(3, 7, 2_500);
        // One open request left, but the thread was seen multiplexing: still no link.
        t.call(2, 7, 3_000, "");
        t.answer(1, 7, 3_500);
        let clients: Vec<_> = t
            .spans
            .iter()
            .filter(|s| s.kind == SpanKind::Client)
            .collect();
        assert_eq!(clients.len(), 2);
        assert!(clients.iter().all(|c| c.parent_span_id.is_none()));
        assert_eq!(t.s.parent_stats().ambiguous, 2);
        // The multiplexed mark is forgotten once the thread has been idle long enough.
        t.spans.clear();
        t.s.tick(3_600 + MULTIPLEXED_TTL_NS, &mut |_| {});
        t.serve(4, 7, 5_000_000_000_000, "");
        t.call(2, 7, 5_000_000_001_000, "");
        assert!(t.take(SpanKind::Client).parent_span_id.is_some());
    }

    #[test]
    fn client_requests_carrying_context() {
        let mut t = T::new();
        let tp = format!("traceparent: 00-{TRACE}-{CALLER}-01\r\n");
        // Injected by an SDK (another span id): the CLIENT span takes the header's id.
        let injected = format!("traceparent: 00-{TRACE}-1111111111111111-01\r\n");
        t.serve(1, 7, 1_000, &tp);
        t.call(2, 7, 2_000, &injected);
        let c = t.take(SpanKind::Client);
        assert_eq!(hex(&c.trace_id), TRACE);
        assert_eq!(hex(&c.span_id), "1111111111111111");
        // Same trace as the serving span: its child.
        assert!(c.parent_span_id.is_some());
        assert_eq!(source(&c), "thread");
        // The incoming header forwarded verbatim (a proxy) names the caller: the serving
        // request's child, found by the forwarded context, with an id of its own.
        t.call(2, 7, 3_000, &tp);
        let c = t.take(SpanKind::Client);
        assert_ne!(hex(&c.span_id), CALLER);
        assert_eq!(hex(&c.trace_id), TRACE);
        assert_eq!(source(&c), "forwarded");
        t.answer(1, 7, 4_000);
        let s = t.take(SpanKind::Server);
        assert_eq!(c.parent_span_id, Some(s.span_id));
        // No serving span: the header's context, no parent.
        t.call(
            2,
            9,
            5_000,
            "b3: 80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0\r\n",
        );
        let c = t.take(SpanKind::Client);
        assert_eq!(hex(&c.span_id), "e457b5a2e4d86bd1");
        assert_eq!((c.parent_span_id, c.flags, source(&c)), (None, 0, "b3"));
    }

    #[test]
    fn server_context_from_b3_and_sampling() {
        let mut t = T::new();
        t.serve(1, 7, 1_000, "X-B3-TraceId: a3ce929d0e0e4736\r\nX-B3-SpanId: 00f067aa0ba902b7\r\nX-B3-Sampled: 0\r\n");
        t.answer(1, 7, 2_000);
        let s = t.take(SpanKind::Server);
        assert_eq!(hex(&s.trace_id), "0000000000000000a3ce929d0e0e4736");
        assert_eq!(s.parent_span_id.map(|p| hex(&p)).as_deref(), Some(CALLER));
        assert_eq!((s.flags, source(&s)), (0, "b3"));
        // Malformed: a new trace, nothing trusted.
        let bad = format!("traceparent: 00-{}-{CALLER}-01\r\n", TRACE.to_uppercase());
        t.serve(1, 7, 3_000, &bad);
        t.answer(1, 7, 4_000);
        let s = t.take(SpanKind::Server);
        assert_eq!((s.parent_span_id, s.flags, source(&s)), (None, 1, "none"));
        assert_ne!(hex(&s.trace_id), TRACE);
        // Sampling only.
        t.serve(1, 7, 5_000, "b3: 0\r\n");
        t.answer(1, 7, 6_000);
        let s = t.take(SpanKind::Server);
        assert_eq!((s.parent_span_id, s.flags, source(&s)), (None, 0, "none"));
    }

    #[test]
    fn an_exited_process_is_forgotten_a_grace_period_after_its_exit() {
        let mut t = T::new();
        drop(t.s.processes.resource_named(PROXY, b"proxy\0"));
        assert_eq!(t.s.processes.len(), 1);
        let mut exit = ProcessEvent::default();
        exit.header.kind = EventKind::Exit as u8;
        exit.header.pid = PROXY;
        exit.header.ts = 1_000;
        t.s.on_record(&bytes_of(&exit), &mut |_| {});
        t.s.tick(1_000 + EXIT_GRACE_NS - 1, &mut |_| {});
        assert_eq!(t.s.processes.len(), 1, "still within the grace period");
        t.s.tick(1_000 + EXIT_GRACE_NS, &mut |_| {});
        assert!(t.s.processes.is_empty());
    }

    #[test]
    fn open_requests_are_bounded_and_expire_with_their_connection() {
        let mut t = T::new();
        for conn in 0..40u64 {
            t.serve(100 + conn, 1000 + conn as u32, 1_000 + conn, "");
        }
        let st = t.s.parent_stats();
        assert_eq!((st.open, st.tracked, st.refused_full), (16, 16, 24));
        // A thread whose request could not be tracked never links.
        t.call(2, 1039, 5_000, "");
        assert!(t.take(SpanKind::Client).parent_span_id.is_none());
        // Expired connections take their state with them.
        t.s.tick(1_000_000_000_000, &mut |_| {});
        assert_eq!(t.s.parent_stats().open, 0);
    }
}
