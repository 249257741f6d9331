//! Resolving each span's parent and trace context: from the request's own headers, from the
//! request the sending thread is serving (in-process), from the same-node CLIENT span that
//! sent the request (by the connection's addresses), or a new trace. Every span records which
//! in `tracer.parent.source` (`w3c`, `b3`, `thread`, `forwarded`, `address`, `none`).
//!
//! **SERVER spans.** A valid incoming context ([`super::context::extract`]: W3C, else B3) makes
//! the span a child of the caller's span: same trace id, parent = the header's span id, its
//! flags and (W3C) `tracestate`. A sampling-only B3 header (`b3: 0`) gives a new trace with that
//! decision; anything else a new sampled trace. The server span's own ids are *derived*
//! (a keyed hash of connection id, request sequence number and start time, with a random
//! per-agent key), not drawn: they are known as soon as the request head is parsed and are the
//! same when the exchange completes, with no state kept in between. So losing the in-process
//! state (caps, expiry) never leaves a client span pointing at a server span id that is not
//! emitted.
//!
//! **CLIENT spans with context in the request** (the application, or an SDK in it, injected a
//! `traceparent`/B3): the header's span id is the one the callee will use as its parent, so the
//! CLIENT span *takes that id* (trace id, flags and tracestate from the header too). The
//! callee's SERVER span then hangs under our CLIENT span. Its parent is the in-process link
//! below when that server span is in the same trace, else none. The cost: with an SDK client
//! span in the process, two spans carry that id (ours and the SDK's); we accept the duplicate
//! rather than give our span an id nobody refers to. One exception, below: a forwarded header.
//!
//! **Forwarded context (proxies).** A request carrying the very `traceparent`/B3 context
//! (trace id and span id) an open SERVER request of the same process received was caused by
//! it, whichever thread sends it: trace ids are unique, so this holds on event loops (nginx,
//! HAProxy, Envoy) where the thread view is ambiguous. The CLIENT span is that SERVER span's
//! child (`forwarded`) and gets an id of its own (the header's names the caller's span). Its
//! callee would still read the header's parent, skipping the proxy:
//! - the kernel rewrites the forwarded header's parent-id field in place (same length) with
//!   the CLIENT span's id it chose ([`SpanCtx::rewritten`]): the callee, on any node, names
//!   the proxy's CLIENT span; the agent confirms the kernel's parent against its own view;
//! - where the header went out unchanged (injection off, a split head) and the callee is on
//!   this node, the connection wins: a SERVER span whose header parent is the ancestor its
//!   same-node CLIENT span forwarded becomes that CLIENT span's child (`address`).
//!
//! **In-process parents.** When a thread sends a request while it is serving exactly one
//! request, the CLIENT span becomes that SERVER span's child (`thread`). The parser reports
//! each received request's head ([`crate::protocol::http1::RequestStart`]); from then until its
//! exchange completes (or its connection closes or expires), "thread T serves context C since
//! t0" is kept. A CLIENT exchange of thread T (same process) that started at or after t0 gets
//! parent C. What it cannot see, and how it degrades (always to a new root, never a guess):
//! - event loops (node, nginx, Python asyncio) serve many requests on one thread: a thread seen
//!   with two requests open at once (or one whose request could not be tracked) is marked
//!   *multiplexed* and never links until it has been idle for [`MULTIPLEXED_TTL_NS`]. A
//!   remaining risk: an event-loop thread doing background work while it has exactly one
//!   request open, before it was ever seen multiplexing, links that work to the request;
//! - hand-offs between threads (acceptor/worker pools reading the head on one thread and
//!   calling out on another), async runtimes moving tasks between threads: no link;
//! - a client exchange still in flight when its server exchange completes: no link;
//! - connections and requests the parser dropped: their state ends at the next completion on
//!   the same connection, or the connection's close or expiry.
//!
//! **Through NAT.** A client that dialled a Service virtual IP (kube-proxy DNAT, maybe with
//! masquerading) sees other addresses than the pod that answers. A SERVER request that finds
//! no caller by its own addresses asks the kernel's connection tracking once per connection
//! ([`crate::conn::nat`]) how its client addressed it, and looks the caller up by those. A
//! failed lookup is counted and gives no link, never a guessed one.
//!
//! Bounded: at most `cap` open server requests and `cap` thread states; beyond, requests are
//! not tracked (counted in [`ParentStats::refused_full`]) and their thread is marked multiplexed.
//! At most `cap` CLIENT requests are remembered for same-node callees, each until its callee
//! takes it, about a second after its response (a callee on another node), or 30 s; one the
//! kernel injected `traceparent` into is not remembered (its callee reads the header).
use std::{collections::VecDeque, net::SocketAddr};

use smallvec::SmallVec;

// Not std's SipHash: these maps are looked up several times per request (foldhash, seeded
// per process, as everywhere else in the agent).
use hashbrown::{HashMap, hash_map::Entry};

use super::context::{Extracted, ParentSource, extract};
use super::{IdGenerator, SpanContext};
use crate::conn::{ConnMeta, nat::NatLookup};
use crate::pipeline::sample::HeadSampler;
use crate::protocol::{Direction, HttpExchange, RequestHead, http1::RequestStart};
use crate::span::{SpanId, TraceId};
use tracer_common::{SpanCtx, propagation::server_ids};

/// Default bound of open server requests (and of thread states) tracked.
pub const DEFAULT_CAP: usize = 16384;
/// A thread marked multiplexed is forgotten after this long without a new request.
pub const MULTIPLEXED_TTL_NS: u64 = 600_000_000_000;

/// Counters of the parent resolution.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParentStats {
    /// Server requests tracked from their head.
    pub tracked: u64,
    /// Server requests not tracked because a table was full.
    pub refused_full: u64,
    /// CLIENT spans given a parent by a thread link.
    pub linked: u64,
    /// CLIENT spans not linked because their thread was multiplexed or serving several.
    pub ambiguous: u64,
    /// Server requests open now.
    pub open: u64,
    /// CLIENT spans whose ids the kernel injected into the request.
    pub injected: u64,
    /// Of those, spans the kernel gave a parent the in-process view did not confirm (left
    /// without a parent).
    pub injected_unlinked: u64,
    /// SERVER spans linked to a CLIENT span on this node by the connection's addresses.
    pub address_linked: u64,
    /// CLIENT spans that forwarded the context an open SERVER request of their process
    /// received, made that request's children (also counted in `linked`).
    pub forwarded_linked: u64,
    /// Of those, requests whose forwarded header the kernel rewrote.
    pub forwarded_rewritten: u64,
    /// SERVER spans whose header named an ancestor of the same-node CLIENT span that sent
    /// them (a proxy forwarded it unchanged): linked to that CLIENT span instead (also
    /// counted in `address_linked`).
    pub connection_won: u64,
    /// Connections whose conntrack entry was looked up (a server request without a caller).
    pub nat_lookups: u64,
    /// Of those, entries that showed NAT (the client dialled another address).
    pub nat_resolved: u64,
    /// Lookups without an answer (no entry, error, timeout): no link through NAT.
    pub nat_lookup_failed: u64,
    /// Of `address_linked`, links found through a NAT-resolved address.
    pub nat_linked: u64,
}

/// An open server request.
#[derive(Debug)]
struct Open {
    seq: u64,
    tid: u32,
    pid: u32,
    start_ns: u64,
    trace_id: TraceId,
    span_id: SpanId,
    flags: u8,
    trace_state: Option<String>,
    /// The caller's span id (from the request's header, or the same-node CLIENT span).
    remote_parent: Option<SpanId>,
    source: ParentSource,
    /// Where the request came from: finds the same-node CLIENT span that sent it.
    addr_key: AddrKey,
    /// The context its header gave, as a request forwarding it carries it.
    received: Option<ReceivedKey>,
    /// A CLIENT span already took this context as parent: it may no longer change.
    frozen: bool,
}

/// (client address, server address, byte position of the request head): the same for both
/// ends of a connection when both are on this node and were seen from their first byte.
type AddrKey = (SocketAddr, SocketAddr, u64);

/// A CLIENT request's context as a SERVER span on this node adopts it.
#[derive(Clone, Debug)]
struct Caller {
    trace_id: TraceId,
    span_id: SpanId,
    flags: u8,
    trace_state: Option<String>,
    start_ns: u64,
    /// The span id of the context the request forwarded (an ancestor of `span_id`): a callee
    /// reading it from the header is this request's child.
    forwarded_from: Option<SpanId>,
}

/// A received context by (process, trace id, the caller's span id in the header).
type ReceivedKey = (u32, TraceId, SpanId);

/// CLIENT requests are remembered by address for this long at most (a same-node server reads
/// them within microseconds; this only bounds requests that are never answered).
const CALLER_TTL_NS: u64 = 30_000_000_000;
/// A CLIENT request whose response arrived is forgotten this long after it. Its same-node
/// server has read the request by then (it answered), but the server's own events can come
/// later in the ring than the client's (the ring is ordered by event end): its exchange may
/// still look its caller up. A request to another node is never looked up: this keeps what
/// those cost to about a second of them instead of [`CALLER_TTL_NS`] (or the cap).
const ANSWERED_CALLER_GRACE_NS: u64 = 1_000_000_000;

#[derive(Debug)]
struct TidState {
    open: u32,
    /// (connection, seq) of the last request started on the thread.
    last: (u64, u64),
    multiplexed: bool,
    last_ns: u64,
}

/// Resolves the trace context (ids, parent, flags) of every span; see the module doc.
pub struct ParentResolver {
    key: u64,
    ids: IdGenerator,
    /// Decides the sampled flag (and `ot=th`) of the contexts created here, as the kernel
    /// does for those it creates.
    head: HeadSampler,
    cap: usize,
    /// A connection's open requests, in order: inline while there is one (the keep-alive
    /// case), so a request costs no allocation here.
    conns: HashMap<u64, SmallVec<[Open; 1]>>,
    tids: HashMap<u32, TidState>,
    stats: ParentStats,
    /// Open server requests (entries of `conns`).
    open: usize,
    /// Open server requests whose headers gave their context: (connection, seq) by
    /// [`ReceivedKey`], for requests forwarding it.
    received: HashMap<ReceivedKey, (u64, u64)>,
    /// CLIENT contexts decided when their request head was parsed, until their exchange
    /// completes: (seq, context) per connection.
    clients: HashMap<u64, SmallVec<[(u64, SpanContext); 1]>>,
    client_count: usize,
    /// Recent CLIENT requests by address, for same-node SERVER spans: until a SERVER span
    /// takes one as its parent, [`ANSWERED_CALLER_GRACE_NS`] after its response, or
    /// [`CALLER_TTL_NS`] (FIFO-bounded by `cap`).
    callers: HashMap<AddrKey, Caller>,
    /// (key, start) of `callers` in insertion order; entries taken meanwhile are skipped.
    caller_order: VecDeque<(AddrKey, u64)>,
    /// (key, start, response time) of answered CLIENT requests, in the order answered.
    answered: VecDeque<(AddrKey, u64, u64)>,
    scratch: Vec<u64>,
    /// Conntrack lookups, when on.
    nat: Option<Box<dyn NatLookup>>,
    /// Per server connection looked up: the (client, dialled) addresses when NAT rewrote them.
    nat_views: HashMap<u64, Option<(SocketAddr, SocketAddr)>>,
}

impl Default for ParentResolver {
    fn default() -> Self {
        Self::new(DEFAULT_CAP)
    }
}

impl ParentResolver {
    /// Random key and ids from the OS.
    pub fn new(cap: usize) -> Self {
        let mut ids = IdGenerator::from_os();
        let key = u64::from_ne_bytes(ids.span_id());
        Self::with_ids(cap, key, ids)
    }

    /// Explicit key and generator (deterministic tests).
    pub fn with_ids(cap: usize, key: u64, ids: IdGenerator) -> Self {
        Self {
            key,
            ids,
            head: HeadSampler::default(),
            cap: cap.max(1),
            conns: HashMap::new(),
            tids: HashMap::new(),
            stats: ParentStats::default(),
            open: 0,
            received: HashMap::new(),
            scratch: Vec::new(),
            clients: HashMap::new(),
            client_count: 0,
            callers: HashMap::new(),
            caller_order: VecDeque::new(),
            answered: VecDeque::new(),
            nat: None,
            nat_views: HashMap::new(),
        }
    }

    /// Links SERVER requests whose client dialled a NAT-ed address (see the module docs).
    pub fn with_nat(mut self, nat: Box<dyn NatLookup>) -> Self {
        self.nat = Some(nat);
        self
    }

    /// The head sampler deciding new contexts (the kernel must be given the same rule).
    pub fn with_head_sampler(mut self, head: HeadSampler) -> Self {
        self.head = head;
        self
    }

    pub fn stats(&self) -> ParentStats {
        let mut s = self.stats;
        s.open = self.open as u64;
        s
    }

    /// The key of the id derivation shared with the kernel (it must see the same one).
    pub fn key(&self) -> u64 {
        self.key
    }

    /// The context of the SERVER span of the request whose head starts at byte
    /// `head_position` of connection `conn_id`'s ingress: a pure function of its arguments and
    /// the agent's key, computed the same way by the kernel when the request arrives (so the
    /// `traceparent` it injects into the requests this one causes names this span).
    pub fn server_context(
        &self,
        conn_id: u64,
        head_position: u64,
        head: &RequestHead,
    ) -> SpanContext {
        let (trace_id, span_id) = server_ids(self.key, conn_id, head_position);
        let headers = head.headers.iter().map(|(k, v)| (&**k, v.as_str()));
        match extract(headers) {
            Extracted::Context(remote) => {
                let parent_flags = remote.flags;
                let mut ctx = SpanContext::child_of_remote(remote, span_id);
                (ctx.flags, ctx.trace_state) =
                    self.head
                        .decide(&ctx.trace_id, Some(parent_flags), ctx.trace_state.take());
                ctx
            }
            other => {
                // A sampling-only header (`b3: 0`) is an upstream decision, as a parent's is.
                let parent_flags = match other {
                    Extracted::SamplingOnly(f) => Some(f),
                    _ => None,
                };
                let (flags, trace_state) = self.head.decide(&trace_id, parent_flags, None);
                SpanContext {
                    trace_id,
                    span_id,
                    parent_span_id: None,
                    flags,
                    trace_state,
                    source: ParentSource::None,
                }
            }
        }
    }

    /// A request head was just parsed: received (SERVER) or sent (CLIENT).
    pub fn on_start(&mut self, conn: &ConnMeta, start: &RequestStart<'_>) {
        match start.direction {
            Direction::Ingress => self.on_server_start(conn, start),
            Direction::Egress => self.on_client_start(conn, start),
        }
    }

    /// The CLIENT span's context is decided when its request leaves (the thread's serving
    /// request is certainly open then), and remembered by address for a same-node callee.
    fn on_client_start(&mut self, conn: &ConnMeta, start: &RequestStart<'_>) {
        let Some(head) = start.head else {
            return;
        };
        if self.client_count >= self.cap {
            self.stats.refused_full += 1;
            return;
        }
        let (ctx, forwarded_from) = self.client_context_of(
            conn,
            start.tid,
            start.start_ns,
            head,
            start.injected.as_ref(),
        );
        // The kernel put `traceparent` into this request, naming this span: a same-node callee
        // reads it there (only a forwarded header's callee also needs the address).
        let by_header = start
            .injected
            .as_ref()
            .is_some_and(|c| c.injected() && !c.rewritten());
        if !by_header {
            self.remember_caller(
                (conn.local, conn.remote, start.head_position),
                Caller {
                    trace_id: ctx.trace_id,
                    span_id: ctx.span_id,
                    flags: ctx.flags,
                    trace_state: ctx.trace_state.clone(),
                    start_ns: start.start_ns,
                    forwarded_from,
                },
            );
        }
        self.clients
            .entry(conn.conn_id)
            .or_default()
            .push((start.seq, ctx));
        self.client_count += 1;
    }

    fn remember_caller(&mut self, key: AddrKey, caller: Caller) {
        // Entries already taken or forgotten go first (each costs one look-up, once), so the
        // order stays about as long as the requests still remembered.
        while let Some(&(old, at)) = self.caller_order.front() {
            if self.caller_order.len() < self.cap
                && self.callers.get(&old).is_some_and(|c| c.start_ns == at)
            {
                break;
            }
            self.caller_order.pop_front();
            self.forget_caller(&old, at);
        }
        self.caller_order.push_back((key, caller.start_ns));
        self.callers.insert(key, caller);
    }

    /// The same-node CLIENT request that sent the request at `key`, if it was seen.
    fn caller(&self, key: &AddrKey, server_start_ns: u64) -> Option<&Caller> {
        self.callers
            .get(key)
            .filter(|c| c.start_ns <= server_start_ns)
    }

    /// As [`Self::caller`], taken: one request has one callee, so a SERVER span that adopts
    /// its caller ends the need to remember it.
    fn take_caller(&mut self, key: &AddrKey, server_start_ns: u64) -> Option<Caller> {
        match self.callers.entry(*key) {
            Entry::Occupied(e) if e.get().start_ns <= server_start_ns => Some(e.remove()),
            _ => None,
        }
    }

    /// Forgets the caller at `key` when it is still the request that started at `start_ns`
    /// (a later request may have reused the key).
    fn forget_caller(&mut self, key: &AddrKey, start_ns: u64) {
        if let Entry::Occupied(e) = self.callers.entry(*key)
            && e.get().start_ns == start_ns
        {
            e.remove();
        }
    }

    /// The same-node caller of a server request, taken: by the server's view of the
    /// addresses, else (NAT lookups on) by its client's view, looked up once per connection.
    fn find_caller(&mut self, conn_id: u64, key: &AddrKey, start_ns: u64) -> Option<Caller> {
        if let Some(c) = self.take_caller(key, start_ns) {
            return Some(c);
        }
        let (client, dialled) = self.nat_view(conn_id, key)?;
        let c = self.take_caller(&(client, dialled, key.2), start_ns)?;
        self.stats.nat_linked += 1;
        Some(c)
    }

    /// A CLIENT request was answered: its caller entry goes after the grace.
    fn caller_answered(&mut self, key: AddrKey, end_ns: u64) {
        let Some(start_ns) = self.callers.get(&key).map(|c| c.start_ns) else {
            return;
        };
        if self.answered.len() >= self.cap
            && let Some((old, at, _)) = self.answered.pop_front()
        {
            self.forget_caller(&old, at);
        }
        self.answered.push_back((key, start_ns, end_ns));
    }

    /// Callers remembered now (for tests and the bound's check).
    #[cfg(test)]
    fn callers_held(&self) -> usize {
        self.callers.len()
    }

    /// How the client of server connection `conn_id` (seen as `key`) addressed it, when NAT
    /// rewrote that: asked of the kernel the first time only.
    fn nat_view(&mut self, conn_id: u64, key: &AddrKey) -> Option<(SocketAddr, SocketAddr)> {
        if let Some(view) = self.nat_views.get(&conn_id) {
            return *view;
        }
        let nat = self.nat.as_mut()?;
        if self.nat_views.len() >= self.cap {
            self.stats.refused_full += 1;
            return None;
        }
        self.stats.nat_lookups += 1;
        let (remote, local) = (key.0, key.1);
        let view = match nat.client_view(local, remote) {
            Ok(view) => view,
            Err(e) => {
                tracing::debug!(%local, %remote, "conntrack lookup: {e}");
                self.stats.nat_lookup_failed += 1;
                None
            }
        };
        if view.is_some() {
            self.stats.nat_resolved += 1;
        }
        self.nat_views.insert(conn_id, view);
        view
    }

    /// A SERVER context without a header-given parent becomes the child of its same-node
    /// caller, when there is one.
    fn link_by_address(
        &mut self,
        ctx: &mut SpanContext,
        conn_id: u64,
        key: &AddrKey,
        start_ns: u64,
    ) {
        if ctx.source != ParentSource::None {
            self.connection_wins(ctx, key, start_ns);
            return;
        }
        if let Some(c) = self.find_caller(conn_id, key, start_ns) {
            self.adopt(ctx, c);
        }
    }

    /// A SERVER context from the request's header, when its same-node CLIENT span forwarded
    /// that header (the header names the CLIENT span's ancestor): the CLIENT span is the parent.
    /// By address only: a caller behind NAT that forwarded unchanged keeps the header's parent.
    fn connection_wins(&mut self, ctx: &mut SpanContext, key: &AddrKey, start_ns: u64) -> bool {
        if !matches!(ctx.source, ParentSource::W3c | ParentSource::B3) {
            return false;
        }
        let Some(c) = self.caller(key, start_ns) else {
            return false;
        };
        if c.trace_id != ctx.trace_id
            || c.forwarded_from.is_none()
            || c.forwarded_from != ctx.parent_span_id
        {
            return false;
        }
        let Some(c) = self.callers.remove(key) else {
            return false;
        };
        self.adopt(ctx, c);
        self.stats.connection_won += 1;
        true
    }

    fn adopt(&mut self, ctx: &mut SpanContext, c: Caller) {
        ctx.trace_id = c.trace_id;
        ctx.parent_span_id = Some(c.span_id);
        ctx.flags = c.flags;
        ctx.trace_state = c.trace_state;
        ctx.source = ParentSource::Address;
        self.stats.address_linked += 1;
    }

    /// A request the process received: its head was just parsed.
    fn on_server_start(&mut self, conn: &ConnMeta, start: &RequestStart<'_>) {
        let Some(head) = start.head else {
            // It will never complete and its thread may work for it: no link from there.
            self.mark_multiplexed(start.tid, start.start_ns);
            return;
        };
        if self.open >= self.cap
            || (self.tids.len() >= self.cap && !self.tids.contains_key(&start.tid))
        {
            self.stats.refused_full += 1;
            self.mark_multiplexed(start.tid, start.start_ns);
            return;
        }
        let addr_key = (conn.remote, conn.local, start.head_position);
        let mut ctx = self.server_context(conn.conn_id, start.head_position, head);
        // What a request forwarding this one's context will carry.
        let received = matches!(ctx.source, ParentSource::W3c | ParentSource::B3)
            .then_some(ctx.parent_span_id)
            .flatten()
            .map(|p| (conn.pid, ctx.trace_id, p));
        // By address only: the caller's event may not be read yet (NAT lookups, which cannot
        // tell that, wait for `resolve_late`).
        if ctx.source == ParentSource::None
            && let Some(c) = self.take_caller(&addr_key, start.start_ns)
        {
            self.adopt(&mut ctx, c);
        } else {
            self.connection_wins(&mut ctx, &addr_key, start.start_ns);
        }
        if let Some(key) = received {
            self.received.insert(key, (conn.conn_id, start.seq));
        }
        let st = self.tids.entry(start.tid).or_insert(TidState {
            open: 0,
            last: (0, 0),
            multiplexed: false,
            last_ns: 0,
        });
        st.open += 1;
        if st.open > 1 {
            st.multiplexed = true;
        }
        st.last = (conn.conn_id, start.seq);
        st.last_ns = start.start_ns;
        self.conns.entry(conn.conn_id).or_default().push(Open {
            seq: start.seq,
            tid: start.tid,
            pid: conn.pid,
            start_ns: start.start_ns,
            trace_id: ctx.trace_id,
            span_id: ctx.span_id,
            flags: ctx.flags,
            trace_state: ctx.trace_state,
            remote_parent: ctx.parent_span_id,
            source: ctx.source,
            addr_key,
            received,
            frozen: false,
        });
        self.open += 1;
        self.stats.tracked += 1;
    }

    /// An open request not linked yet looks for its same-node caller again (the caller's
    /// event may have been read after the request's: the ring is ordered by event end).
    fn resolve_late(&mut self, conn_id: u64, seq: u64) {
        let Some(o) = self
            .conns
            .get(&conn_id)
            .and_then(|q| q.iter().find(|o| o.seq == seq))
        else {
            return;
        };
        if matches!(o.source, ParentSource::W3c | ParentSource::B3) {
            // The caller that forwarded the header may have been read after this request.
            let mut ctx = SpanContext {
                trace_id: o.trace_id,
                span_id: o.span_id,
                parent_span_id: o.remote_parent,
                flags: o.flags,
                trace_state: None,
                source: o.source,
            };
            let (key, start_ns) = (o.addr_key, o.start_ns);
            if self.connection_wins(&mut ctx, &key, start_ns)
                && let Some(o) = self
                    .conns
                    .get_mut(&conn_id)
                    .and_then(|q| q.iter_mut().find(|o| o.seq == seq))
            {
                // Same trace (the condition): children that took this context keep it.
                o.remote_parent = ctx.parent_span_id;
                o.flags = ctx.flags;
                o.trace_state = ctx.trace_state;
                o.source = ctx.source;
            }
            return;
        }
        if o.frozen || o.source != ParentSource::None {
            return;
        }
        let (key, start_ns) = (o.addr_key, o.start_ns);
        let Some(c) = self.find_caller(conn_id, &key, start_ns) else {
            return;
        };
        if let Some(o) = self
            .conns
            .get_mut(&conn_id)
            .and_then(|q| q.iter_mut().find(|o| o.seq == seq))
        {
            o.trace_id = c.trace_id;
            o.remote_parent = Some(c.span_id);
            o.flags = c.flags;
            o.trace_state = c.trace_state;
            o.source = ParentSource::Address;
            self.stats.address_linked += 1;
        }
    }

    fn mark_multiplexed(&mut self, tid: u32, now_ns: u64) {
        if let Some(st) = self.tids.get_mut(&tid) {
            st.multiplexed = true;
            st.last_ns = now_ns;
        } else if self.tids.len() < self.cap {
            self.tids.insert(
                tid,
                TidState {
                    open: 0,
                    last: (0, 0),
                    multiplexed: true,
                    last_ns: now_ns,
                },
            );
        }
    }

    fn release(
        tids: &mut HashMap<u32, TidState>,
        received: &mut HashMap<ReceivedKey, (u64, u64)>,
        open: &mut usize,
        conn_id: u64,
        o: &Open,
    ) {
        *open = open.saturating_sub(1);
        if let Some(key) = &o.received
            && received.get(key) == Some(&(conn_id, o.seq))
        {
            received.remove(key);
        }
        if let Some(st) = tids.get_mut(&o.tid) {
            st.open = st.open.saturating_sub(1);
            if st.open == 0 && !st.multiplexed {
                tids.remove(&o.tid);
            }
        }
    }

    /// Server request `seq` of `conn_id` completed: it is no longer open. With `in_order`
    /// (HTTP/1: responses come in request order) older ones of the connection will never
    /// complete and are released too; HTTP/2 streams complete in any order.
    pub fn on_server_done(&mut self, conn_id: u64, seq: u64, in_order: bool) {
        let Some(q) = self.conns.get_mut(&conn_id) else {
            return;
        };
        let done = if in_order {
            0..q.iter().take_while(|o| o.seq <= seq).count()
        } else {
            q.iter()
                .position(|o| o.seq == seq)
                .map_or(0..0, |i| i..i + 1)
        };
        for o in q.drain(done) {
            Self::release(
                &mut self.tids,
                &mut self.received,
                &mut self.open,
                conn_id,
                &o,
            );
        }
        if q.is_empty() {
            self.conns.remove(&conn_id);
        }
    }

    /// The connection closed or expired: its requests are no longer open.
    pub fn on_conn_gone(&mut self, conn_id: u64) {
        if let Some(q) = self.conns.remove(&conn_id) {
            for o in &q {
                Self::release(
                    &mut self.tids,
                    &mut self.received,
                    &mut self.open,
                    conn_id,
                    o,
                );
            }
        }
        if let Some(q) = self.clients.remove(&conn_id) {
            self.client_count -= q.len();
        }
        self.nat_views.remove(&conn_id);
    }

    /// Periodic clean-up: forgets connections `alive` denies, and idle multiplexed threads.
    pub fn tick(&mut self, now_ns: u64, alive: impl Fn(u64) -> bool) {
        self.scratch.clear();
        self.scratch.extend(
            self.conns
                .keys()
                .chain(self.clients.keys())
                .chain(self.nat_views.keys())
                .copied()
                .filter(|id| !alive(*id)),
        );
        let mut gone = std::mem::take(&mut self.scratch);
        for id in gone.drain(..) {
            self.on_conn_gone(id);
        }
        self.scratch = gone;
        self.tids
            .retain(|_, st| st.open > 0 || now_ns.saturating_sub(st.last_ns) < MULTIPLEXED_TTL_NS);
        while let Some(&(key, at)) = self.caller_order.front() {
            if now_ns.saturating_sub(at) < CALLER_TTL_NS {
                break;
            }
            self.caller_order.pop_front();
            self.forget_caller(&key, at);
        }
        while let Some(&(key, at, answered_ns)) = self.answered.front() {
            if now_ns.saturating_sub(answered_ns) < ANSWERED_CALLER_GRACE_NS {
                break;
            }
            self.answered.pop_front();
            self.forget_caller(&key, at);
        }
    }

    /// The open server request thread `tid` of `pid` is serving, when it serves exactly one,
    /// is not multiplexed, and that request started no later than `start_ns`.
    fn serving(&mut self, pid: u32, tid: u32, start_ns: u64) -> Option<&Open> {
        let st = self.tids.get(&tid)?;
        if st.multiplexed || st.open != 1 {
            self.stats.ambiguous += 1;
            return None;
        }
        let (conn_id, seq) = st.last;
        self.resolve_late(conn_id, seq);
        let o = self
            .conns
            .get_mut(&conn_id)?
            .iter_mut()
            .find(|o| o.seq == seq)
            .filter(|o| o.tid == tid && o.pid == pid && o.start_ns <= start_ns)?;
        // A child names this context now: it must not change any more.
        o.frozen = true;
        Some(o)
    }

    /// The context of the span for a finished exchange. For a SERVER exchange this also ends
    /// its in-process state.
    pub fn context_for(&mut self, conn: &ConnMeta, ex: &HttpExchange) -> SpanContext {
        match ex.request_direction {
            Direction::Ingress => {
                // The context its children took, when the request was tracked from its head.
                self.resolve_late(conn.conn_id, ex.seq);
                let open = self
                    .conns
                    .get(&conn.conn_id)
                    .and_then(|q| q.iter().find(|o| o.seq == ex.seq));
                let ctx = match open {
                    Some(o) => SpanContext {
                        trace_id: o.trace_id,
                        span_id: o.span_id,
                        parent_span_id: o.remote_parent,
                        flags: o.flags,
                        trace_state: o.trace_state.clone(),
                        source: o.source,
                    },
                    None => {
                        let mut ctx =
                            self.server_context(conn.conn_id, ex.head_position, &ex.request);
                        let key = (conn.remote, conn.local, ex.head_position);
                        self.link_by_address(&mut ctx, conn.conn_id, &key, ex.start_ns);
                        ctx
                    }
                };
                // HTTP/2 streams (version "2") complete in any order.
                self.on_server_done(conn.conn_id, ex.seq, ex.request.version != "2");
                ctx
            }
            Direction::Egress => {
                self.caller_answered((conn.local, conn.remote, ex.head_position), ex.end_ns);
                let decided = self.clients.get_mut(&conn.conn_id).and_then(|q| {
                    let i = q.iter().position(|(seq, _)| *seq == ex.seq)?;
                    Some(q.remove(i).1)
                });
                match decided {
                    Some(ctx) => {
                        self.client_count -= 1;
                        if self
                            .clients
                            .get(&conn.conn_id)
                            .is_some_and(|q| q.is_empty())
                        {
                            self.clients.remove(&conn.conn_id);
                        }
                        ctx
                    }
                    None => {
                        self.client_context_of(
                            conn,
                            ex.tid,
                            ex.start_ns,
                            &ex.request,
                            ex.injected.as_ref(),
                        )
                        .0
                    }
                }
            }
        }
    }

    /// The context of a CLIENT call that carries no trace context of its own (a database
    /// call): the child of the SERVER span its thread is serving, else a new root (the path an
    /// HTTP request without headers takes in [`Self::context_for`]).
    pub fn client_context(&mut self, conn: &ConnMeta, tid: u32, start_ns: u64) -> SpanContext {
        self.client_context_of(conn, tid, start_ns, &RequestHead::default(), None)
            .0
    }

    /// A request the kernel injected `traceparent` into: the callee names these ids, so the
    /// CLIENT span takes them as they are. Its parent is the SERVER span the kernel saw the
    /// thread serving, when the in-process view agrees (same span, same trace); otherwise the
    /// span has no parent (in the injected trace), never a guessed one.
    fn injected_context(
        &mut self,
        conn: &ConnMeta,
        tid: u32,
        start_ns: u64,
        injected: &SpanCtx,
    ) -> SpanContext {
        self.stats.injected += 1;
        let kernel_parent = (injected.parent_id != [0; 8]).then_some(injected.parent_id);
        let serving = self
            .serving(conn.pid, tid, start_ns)
            .map(|o| (o.trace_id, o.span_id, o.trace_state.clone()));
        let (parent, trace_state) = match (kernel_parent, serving) {
            (Some(p), Some((trace, span, state))) if p == span && trace == injected.trace_id => {
                (Some(p), state)
            }
            // A new trace the kernel decided (with the same rule): its threshold, if any.
            (None, _) => (None, self.head.decide(&injected.trace_id, None, None).1),
            _ => {
                self.stats.injected_unlinked += 1;
                (None, None)
            }
        };
        if parent.is_some() {
            self.stats.linked += 1;
        }
        SpanContext {
            trace_id: injected.trace_id,
            span_id: injected.span_id,
            parent_span_id: parent,
            flags: injected.flags,
            trace_state,
            source: if parent.is_some() {
                ParentSource::Thread
            } else {
                ParentSource::None
            },
        }
    }

    /// The open SERVER request of process `pid` that received context (`trace_id`,
    /// `span_id`), if it started no later than `start_ns`. A child names it now: frozen.
    fn received_by(
        &mut self,
        pid: u32,
        trace_id: &TraceId,
        span_id: &SpanId,
        start_ns: u64,
    ) -> Option<&Open> {
        let &(conn_id, seq) = self.received.get(&(pid, *trace_id, *span_id))?;
        let o = self
            .conns
            .get_mut(&conn_id)?
            .iter_mut()
            .find(|o| o.seq == seq)
            .filter(|o| o.start_ns <= start_ns)?;
        o.frozen = true;
        Some(o)
    }

    /// A request whose forwarded header the kernel rewrote: the callee names the kernel's ids,
    /// so the CLIENT span takes them. Its parent is the SERVER span the kernel found, when the
    /// agent's view agrees (the request received this header, and has that span id).
    fn rewritten_context(
        &mut self,
        conn: &ConnMeta,
        start_ns: u64,
        request: &RequestHead,
        rewritten: &SpanCtx,
    ) -> (SpanContext, Option<SpanId>) {
        self.stats.injected += 1;
        let headers = request.headers.iter().map(|(k, v)| (&**k, v.as_str()));
        // The header as the application sent it (the kernel changed only span ids): its
        // sampling decision (B3's multi headers carry it apart) and `tracestate`.
        let (forwarded, flags, trace_state) = match extract(headers) {
            Extracted::Context(r) => (Some(r.span_id), r.flags, r.trace_state),
            _ => (None, rewritten.flags, None),
        };
        let parent = forwarded.and_then(|f| {
            self.received_by(conn.pid, &rewritten.trace_id, &f, start_ns)
                .filter(|o| o.span_id == rewritten.parent_id && o.trace_id == rewritten.trace_id)
                .map(|o| o.span_id)
        });
        if parent.is_some() {
            self.stats.linked += 1;
            self.stats.forwarded_linked += 1;
            self.stats.forwarded_rewritten += 1;
        } else {
            self.stats.injected_unlinked += 1;
        }
        let ctx = SpanContext {
            trace_id: rewritten.trace_id,
            span_id: rewritten.span_id,
            parent_span_id: parent,
            flags,
            // What the callee receives: the forwarded header's.
            trace_state,
            source: if parent.is_some() {
                ParentSource::Forwarded
            } else {
                ParentSource::None
            },
        };
        (ctx, forwarded)
    }

    /// The context of a CLIENT span (see the module docs), and the span id of the context it
    /// forwarded, if it forwarded one.
    fn client_context_of(
        &mut self,
        conn: &ConnMeta,
        tid: u32,
        start_ns: u64,
        request: &RequestHead,
        injected: Option<&SpanCtx>,
    ) -> (SpanContext, Option<SpanId>) {
        match injected {
            Some(c) if c.rewritten() => {
                return self.rewritten_context(conn, start_ns, request, c);
            }
            Some(c) => return (self.injected_context(conn, tid, start_ns, c), None),
            None => {}
        }
        let headers = request.headers.iter().map(|(k, v)| (&**k, v.as_str()));
        let outgoing = extract(headers);
        // Forwarded: the child of the request that received it, whichever thread this is.
        if let Extracted::Context(r) = &outgoing
            && let Some((trace_id, parent, flags, trace_state)) = self
                .received_by(conn.pid, &r.trace_id, &r.span_id, start_ns)
                .map(|o| (o.trace_id, o.span_id, o.flags, o.trace_state.clone()))
        {
            self.stats.linked += 1;
            self.stats.forwarded_linked += 1;
            let ctx = SpanContext {
                trace_id,
                span_id: self.ids.span_id(),
                parent_span_id: Some(parent),
                flags,
                trace_state,
                source: ParentSource::Forwarded,
            };
            return (ctx, Some(r.span_id));
        }
        // The server span this thread is serving: (trace, span, flags, remote parent, state).
        let serving = self.serving(conn.pid, tid, start_ns).map(|o| {
            (
                o.trace_id,
                o.span_id,
                o.flags,
                o.remote_parent,
                o.trace_state.clone(),
            )
        });
        // Context the application put in the request names our span: the head sampler
        // treats it as the parent (parent-based samplers follow it, as the callee will).
        let outgoing = match outgoing {
            Extracted::Context(mut r) => {
                (r.flags, r.trace_state) =
                    self.head
                        .decide(&r.trace_id, Some(r.flags), r.trace_state.take());
                Extracted::Context(r)
            }
            other => other,
        };
        let ctx = match (outgoing, serving) {
            (Extracted::Context(r), Some(srv))
                if !(r.trace_id == srv.0 && srv.3 == Some(r.span_id)) =>
            {
                // Context injected for this call: it names our span. The serving span is its
                // parent only within the same trace.
                let parent = (srv.0 == r.trace_id).then_some(srv.1);
                SpanContext {
                    trace_id: r.trace_id,
                    span_id: r.span_id,
                    parent_span_id: parent,
                    flags: r.flags,
                    trace_state: r.trace_state,
                    source: if parent.is_some() {
                        ParentSource::Thread
                    } else {
                        r.source
                    },
                }
            }
            (Extracted::Context(r), None) => SpanContext {
                trace_id: r.trace_id,
                span_id: r.span_id,
                parent_span_id: None,
                flags: r.flags,
                trace_state: r.trace_state,
                source: r.source,
            },
            // No context in the request (or the incoming header forwarded verbatim, its
            // request no longer open): the child of the serving span.
            (_, Some((trace_id, parent, flags, _, trace_state))) => SpanContext {
                trace_id,
                span_id: self.ids.span_id(),
                parent_span_id: Some(parent),
                flags,
                trace_state,
                source: ParentSource::Thread,
            },
            (other, None) => {
                let mut root = SpanContext::root(&mut self.ids);
                let parent_flags = match other {
                    Extracted::SamplingOnly(f) => Some(f),
                    _ => None,
                };
                (root.flags, root.trace_state) =
                    self.head.decide(&root.trace_id, parent_flags, None);
                root
            }
        };
        if ctx.source == ParentSource::Thread {
            self.stats.linked += 1;
        }
        (ctx, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::{CtxState, Role};

    const CURL_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn conn(conn_id: u64, pid: u32, local: &str, remote: &str, role: Role) -> ConnMeta {
        ConnMeta {
            conn_id,
            pid,
            local: addr(local),
            remote: addr(remote),
            role,
            tls: false,
        }
    }

    /// A request head carrying `traceparent: 00-<CURL_TRACE>-<span>-01`.
    fn head_with(span: &str) -> RequestHead {
        let mut h = RequestHead {
            method: "GET".into(),
            target: "/".into(),
            version: "1.1",
            ..RequestHead::default()
        };
        h.headers.push((
            "traceparent".into(),
            format!("00-{CURL_TRACE}-{span}-01").into(),
        ));
        h
    }

    fn hex(id: &SpanId) -> String {
        id.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn start<'a>(
        direction: Direction,
        seq: u64,
        tid: u32,
        start_ns: u64,
        head: &'a RequestHead,
        injected: Option<SpanCtx>,
    ) -> RequestStart<'a> {
        RequestStart {
            seq,
            tid,
            direction,
            injected,
            start_ns,
            head_position: seq * 100,
            head: Some(head),
        }
    }

    fn exchange(
        direction: Direction,
        seq: u64,
        tid: u32,
        start_ns: u64,
        request: RequestHead,
        injected: Option<SpanCtx>,
    ) -> HttpExchange {
        HttpExchange {
            request_direction: direction,
            request,
            response: None,
            start_ns,
            end_ns: start_ns + 1000,
            request_body_size: 0,
            response_body_size: 0,
            tid,
            seq,
            incomplete: false,
            head_position: seq * 100,
            injected,
            messages: Vec::new(),
            messages_dropped: 0,
        }
    }

    fn resolver() -> ParentResolver {
        ParentResolver::with_ids(64, 7, IdGenerator::from_seed(3))
    }

    const PROXY: u32 = 100;
    const LOOP_TID: u32 = 100;

    fn plain_head() -> RequestHead {
        RequestHead {
            method: "GET".into(),
            target: "/".into(),
            version: "1.1",
            ..RequestHead::default()
        }
    }

    /// A keep-alive client and its same-node server: every SERVER span is its CLIENT span's
    /// child, whether the server's head or the client's was read first, and nothing is left
    /// remembered once each request was taken or answered.
    #[test]
    fn same_node_callers_are_taken_by_their_callee() {
        let client = conn(1, 200, "127.0.0.1:6000", "127.0.0.1:8000", Role::Client);
        let server = conn(2, 300, "127.0.0.1:8000", "127.0.0.1:6000", Role::Server);
        let h = plain_head();
        let mut r = resolver();
        for seq in 0..1000u64 {
            let t = 1_000 + seq * 10_000;
            // Every other request: the server's head is read before the client's event.
            let server_first = seq % 2 == 1;
            if server_first {
                r.on_start(
                    &server,
                    &start(Direction::Ingress, seq, 301, t + 5, &h, None),
                );
            }
            r.on_start(&client, &start(Direction::Egress, seq, 201, t, &h, None));
            if !server_first {
                r.on_start(
                    &server,
                    &start(Direction::Ingress, seq, 301, t + 5, &h, None),
                );
            }
            // The client's response can come before the server's own end in the ring.
            let c = r.context_for(
                &client,
                &exchange(Direction::Egress, seq, 201, t, h.clone(), None),
            );
            let s = r.context_for(
                &server,
                &exchange(Direction::Ingress, seq, 301, t + 5, h.clone(), None),
            );
            assert_eq!(s.parent_span_id, Some(c.span_id), "request {seq}");
            assert_eq!(s.trace_id, c.trace_id);
            assert_eq!(s.source, ParentSource::Address);
        }
        assert_eq!(r.stats().address_linked, 1000);
        assert_eq!(r.callers_held(), 0);
        // The order is trimmed as requests come: about as long as what is remembered.
        assert!(r.caller_order.len() <= 2, "{}", r.caller_order.len());
    }

    /// A request the kernel put `traceparent` into is not remembered by address: its
    /// same-node callee reads the header, which names the CLIENT span.
    #[test]
    fn injected_requests_are_linked_by_their_header_alone() {
        let client = conn(1, 200, "127.0.0.1:6000", "127.0.0.1:8000", Role::Client);
        let server = conn(2, 300, "127.0.0.1:8000", "127.0.0.1:6000", Role::Server);
        let mut r = resolver();
        let mut kernel = SpanCtx {
            span_id: [9; 8],
            flags: 1,
            state: CtxState::Injected as u8,
            ..SpanCtx::default()
        };
        kernel.trace_id.copy_from_slice(&[0x4b; 16]);
        let sent = plain_head();
        r.on_start(
            &client,
            &start(Direction::Egress, 0, 201, 10, &sent, Some(kernel)),
        );
        assert_eq!(r.callers_held(), 0);
        // What the server reads: the request with the inserted line.
        let mut received = plain_head();
        received.headers.push((
            "traceparent".into(),
            format!("00-{}-{}-01", "4b".repeat(16), hex(&[9; 8])).into(),
        ));
        r.on_start(
            &server,
            &start(Direction::Ingress, 0, 301, 20, &received, None),
        );
        let s = r.context_for(
            &server,
            &exchange(Direction::Ingress, 0, 301, 20, received.clone(), None),
        );
        let c = r.context_for(
            &client,
            &exchange(Direction::Egress, 0, 201, 10, sent, Some(kernel)),
        );
        assert_eq!(c.span_id, [9; 8]);
        assert_eq!(s.parent_span_id, Some(c.span_id));
        assert_eq!(s.trace_id, c.trace_id);
        assert_eq!(s.source, ParentSource::W3c);
    }

    /// Requests to another node are never taken: each is forgotten a second after its
    /// response, so what they cost stays at about a second of them, not the cap.
    #[test]
    fn answered_callers_to_other_nodes_are_forgotten_after_a_second() {
        let client = conn(1, 200, "10.0.0.1:6000", "10.0.0.2:8000", Role::Client);
        let h = plain_head();
        let mut r = ParentResolver::with_ids(10_000, 7, IdGenerator::from_seed(3));
        let sec = 1_000_000_000u64;
        for seq in 0..5000u64 {
            let t = seq * (sec / 1000);
            r.on_start(&client, &start(Direction::Egress, seq, 201, t, &h, None));
            r.context_for(
                &client,
                &exchange(Direction::Egress, seq, 201, t, h.clone(), None),
            );
            if seq % 1000 == 999 {
                r.tick(t, |_| true);
                // At most the last second's requests (and those of the tick's own second).
                assert!(r.callers_held() <= 2000, "{}", r.callers_held());
            }
        }
        r.tick(5 * sec + ANSWERED_CALLER_GRACE_NS, |_| true);
        assert_eq!(r.callers_held(), 0);
        // A request still waiting for its response is kept.
        r.on_start(
            &client,
            &start(Direction::Egress, 5000, 201, 6 * sec, &h, None),
        );
        r.tick(8 * sec, |_| true);
        assert_eq!(r.callers_held(), 1);
        r.tick(6 * sec + CALLER_TTL_NS, |_| true);
        assert_eq!(r.callers_held(), 0);
    }

    /// An nginx-like event loop: one thread holds four requests open at once, each forwarding
    /// its own incoming header upstream. Every CLIENT span is its SERVER span's child.
    #[test]
    fn forwarded_context_parents_on_an_event_loop() {
        let mut r = resolver();
        let callers = [
            "00f067aa0ba902b1",
            "00f067aa0ba902b2",
            "00f067aa0ba902b3",
            "00f067aa0ba902b4",
        ];
        let mut servers = Vec::new();
        for (i, span) in callers.iter().enumerate() {
            let c = conn(
                i as u64 + 1,
                PROXY,
                "127.0.0.1:80",
                &format!("127.0.0.1:{}", 5000 + i),
                Role::Server,
            );
            let h = head_with(span);
            r.on_start(
                &c,
                &start(Direction::Ingress, 0, LOOP_TID, 10 + i as u64, &h, None),
            );
            servers.push((c, h));
        }
        // Upstream requests leave in another order, all from the same thread.
        for (k, i) in [2usize, 0, 3, 1].into_iter().enumerate() {
            let up = conn(
                10 + i as u64,
                PROXY,
                &format!("127.0.0.1:{}", 6000 + i),
                "127.0.0.1:8000",
                Role::Client,
            );
            let h = head_with(callers[i]);
            r.on_start(
                &up,
                &start(Direction::Egress, 0, LOOP_TID, 100 + k as u64, &h, None),
            );
            let client = r.context_for(
                &up,
                &exchange(Direction::Egress, 0, LOOP_TID, 100 + k as u64, h, None),
            );
            let (sc, sh) = &servers[i];
            let server = r.context_for(
                sc,
                &exchange(
                    Direction::Ingress,
                    0,
                    LOOP_TID,
                    10 + i as u64,
                    sh.clone(),
                    None,
                ),
            );
            assert_eq!(server.source, ParentSource::W3c);
            assert_eq!(client.source, ParentSource::Forwarded, "{i}");
            assert_eq!(client.parent_span_id, Some(server.span_id), "{i}");
            assert_eq!(client.trace_id, server.trace_id);
            assert_ne!(
                hex(&client.span_id),
                callers[i],
                "its own id, not the caller's"
            );
        }
        let st = r.stats();
        assert_eq!(
            (st.forwarded_linked, st.ambiguous, st.open),
            (4, 0, 0),
            "{st:?}"
        );
        assert!(r.received.is_empty());
    }

    /// curl → proxy (forwards the header unchanged) → app, all on this node: the app's header
    /// names curl's span, an ancestor of the proxy's CLIENT span on the same connection, so
    /// the connection wins; also when the proxy's request is read after the app's.
    #[test]
    fn the_connection_wins_over_a_forwarded_header() {
        for late in [false, true] {
            let mut r = resolver();
            let curl_span = "00f067aa0ba902b7";
            let ingress = conn(1, PROXY, "127.0.0.1:80", "127.0.0.1:5000", Role::Server);
            let h = head_with(curl_span);
            r.on_start(
                &ingress,
                &start(Direction::Ingress, 0, LOOP_TID, 10, &h, None),
            );
            let up = conn(2, PROXY, "127.0.0.1:6000", "127.0.0.1:8000", Role::Client);
            let app = conn(3, 200, "127.0.0.1:8000", "127.0.0.1:6000", Role::Server);
            let fwd = head_with(curl_span);
            if !late {
                r.on_start(&up, &start(Direction::Egress, 0, LOOP_TID, 20, &fwd, None));
            }
            r.on_start(&app, &start(Direction::Ingress, 0, 201, 30, &fwd, None));
            if late {
                r.on_start(&up, &start(Direction::Egress, 0, LOOP_TID, 20, &fwd, None));
            }
            let app_ctx = r.context_for(
                &app,
                &exchange(Direction::Ingress, 0, 201, 30, fwd.clone(), None),
            );
            let client = r.context_for(
                &up,
                &exchange(Direction::Egress, 0, LOOP_TID, 20, fwd.clone(), None),
            );
            let server = r.context_for(
                &ingress,
                &exchange(Direction::Ingress, 0, LOOP_TID, 10, h.clone(), None),
            );
            assert_eq!(client.parent_span_id, Some(server.span_id), "late {late}");
            assert_eq!(app_ctx.parent_span_id, Some(client.span_id), "late {late}");
            assert_eq!(app_ctx.source, ParentSource::Address);
            assert_eq!(app_ctx.trace_id, server.trace_id);
            assert_eq!(r.stats().connection_won, 1);
        }
    }

    /// A header the process did not receive (its own SDK's) still names the CLIENT span, and
    /// a callee on this node keeps it.
    #[test]
    fn a_header_of_its_own_is_not_forwarded() {
        let mut r = resolver();
        let up = conn(2, PROXY, "127.0.0.1:6000", "127.0.0.1:8000", Role::Client);
        let app = conn(3, 200, "127.0.0.1:8000", "127.0.0.1:6000", Role::Server);
        let h = head_with("1111111111111111");
        r.on_start(&up, &start(Direction::Egress, 0, 1, 20, &h, None));
        r.on_start(&app, &start(Direction::Ingress, 0, 2, 30, &h, None));
        let app_ctx = r.context_for(
            &app,
            &exchange(Direction::Ingress, 0, 2, 30, h.clone(), None),
        );
        let client = r.context_for(&up, &exchange(Direction::Egress, 0, 1, 20, h, None));
        assert_eq!(hex(&client.span_id), "1111111111111111");
        assert_eq!(app_ctx.parent_span_id, Some(client.span_id));
        assert_eq!(app_ctx.source, ParentSource::W3c);
        assert_eq!(r.stats().connection_won, 0);
    }

    /// The kernel rewrote the forwarded header with its CLIENT span id: the span takes it, and
    /// the kernel's parent when it is the SERVER span that received the header.
    #[test]
    fn a_rewritten_header_is_confirmed_against_the_received_one() {
        for agrees in [true, false] {
            let mut r = resolver();
            let ingress = conn(1, PROXY, "127.0.0.1:80", "127.0.0.1:5000", Role::Server);
            let h = head_with("00f067aa0ba902b7");
            r.on_start(
                &ingress,
                &start(Direction::Ingress, 0, LOOP_TID, 10, &h, None),
            );
            let server_span = r.server_context(1, 0, &h).span_id;
            let up = conn(2, PROXY, "127.0.0.1:6000", "127.0.0.1:8000", Role::Client);
            let mut kernel = SpanCtx {
                span_id: [9; 8],
                parent_id: if agrees { server_span } else { [1; 8] },
                flags: 1,
                state: CtxState::Rewritten as u8,
                ..SpanCtx::default()
            };
            kernel
                .trace_id
                .copy_from_slice(&r.server_context(1, 0, &h).trace_id);
            r.on_start(&up, &start(Direction::Egress, 0, 7, 20, &h, Some(kernel)));
            let client = r.context_for(
                &up,
                &exchange(Direction::Egress, 0, 7, 20, h.clone(), Some(kernel)),
            );
            assert_eq!(client.span_id, [9; 8]);
            if agrees {
                assert_eq!(client.parent_span_id, Some(server_span));
                assert_eq!(client.source, ParentSource::Forwarded);
                assert_eq!(r.stats().forwarded_rewritten, 1);
            } else {
                assert_eq!(client.parent_span_id, None);
                assert_eq!(r.stats().injected_unlinked, 1);
            }
        }
    }

    /// A forwarded B3 multi-header context the kernel rewrote: linked as a `traceparent` is,
    /// with the sampling decision of the header (the kernel does not read `X-B3-Sampled`).
    #[test]
    fn a_rewritten_b3_context_keeps_the_headers_sampling_decision() {
        let mut r = resolver();
        let mut h = RequestHead {
            method: "GET".into(),
            target: "/".into(),
            version: "1.1",
            ..RequestHead::default()
        };
        for (k, v) in [
            ("X-B3-TraceId", CURL_TRACE),
            ("X-B3-SpanId", "00f067aa0ba902b7"),
            ("X-B3-Sampled", "0"),
        ] {
            h.headers.push((k.into(), v.into()));
        }
        let ingress = conn(1, PROXY, "127.0.0.1:80", "127.0.0.1:5000", Role::Server);
        r.on_start(
            &ingress,
            &start(Direction::Ingress, 0, LOOP_TID, 10, &h, None),
        );
        let server = r.server_context(1, 0, &h);
        assert_eq!((server.source, server.flags), (ParentSource::B3, 0));
        let up = conn(2, PROXY, "127.0.0.1:6000", "127.0.0.1:8000", Role::Client);
        let kernel = SpanCtx {
            trace_id: server.trace_id,
            span_id: [9; 8],
            parent_id: server.span_id,
            flags: 1,
            state: CtxState::Rewritten as u8,
            ..SpanCtx::default()
        };
        r.on_start(&up, &start(Direction::Egress, 0, 7, 20, &h, Some(kernel)));
        let client = r.context_for(
            &up,
            &exchange(Direction::Egress, 0, 7, 20, h.clone(), Some(kernel)),
        );
        assert_eq!(client.span_id, [9; 8]);
        assert_eq!(client.parent_span_id, Some(server.span_id));
        assert_eq!(client.source, ParentSource::Forwarded);
        assert_eq!(client.flags, 0);
    }
}
