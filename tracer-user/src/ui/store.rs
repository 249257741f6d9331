//! The store of recent traces behind the node-local view: the spans the pipeline hands it,
//! grouped by trace, bounded by span count and by (estimated) bytes. When over a bound the
//! oldest trace (by its first span's arrival) goes, all its spans together, and is counted.
//! Beside the spans it keeps per-route request windows (rate, errors, latency quantiles), the
//! client → server edges it sees on this node, and the live subscribers' queues; those two
//! count every span.
//!
//! Admission: a span of a trace already kept is kept. A span that would start a new trace is
//! kept when it failed, when it is slower than its route's p99 over the last minute, or while
//! fewer than `max_new_traces_per_sec` traces started in its second; the rest are counted
//! (`spans_not_kept`). On a busy node this keeps the store's memory spanning a useful stretch
//! of time (at 5k req/s, every trace kept filled 10,000 spans in one second) with what a
//! person opens the view for, and spares the agent copying spans no one will look at.
//!
//! Writers: the pipeline stage, on the agent's event loop: one short lock and a trace look-up
//! per span (two for a span kept), no waiting on readers' work (a subscriber whose queue is full is dropped,
//! never waited for).
//! A span is kept compact: its fixed part in a slot of one slab shared by all spans (a trace's
//! spans chained through it in arrival order, freed slots reused), its text (name, status
//! message, string attribute values) in one allocation and its attributes in another,
//! whatever their number; the full [`StoredSpan`] is made again only for a reader that opens
//! its trace.
//! The byte bound counts what the store really holds: each span's allocations at the
//! allocator's size classes, and the slab's, the trace index's and the arrival queue's
//! capacity (a test checks the estimate against a counting allocator).
//! Readers: the API handlers, which copy what they answer while holding the lock.
use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
};

use hashbrown::{HashMap, hash_map::Entry};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::span::{AttrValue, Attributes, Resource, Span, SpanId, SpanKind, StatusCode, TraceId};

use super::window::{self, CountRing, LatencyRing, Window};

/// Bounds of the store.
#[derive(Clone, Copy, Debug)]
pub struct StoreLimits {
    pub max_spans: usize,
    pub max_bytes: usize,
    /// Distinct (service, kind, route) windows kept, and client → server edges; beyond it
    /// new ones are not tracked (counted).
    pub max_routes: usize,
    /// New traces kept per second (by span end time) beyond the failed and the slow ones;
    /// 0: every trace.
    pub max_new_traces_per_sec: u32,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            // About a second of a 5k req/s node, minutes of a quiet one; the store's growth
            // to its bound is most of the agent's resident memory after start-up.
            max_spans: 10_000,
            max_bytes: 8 << 20,
            max_routes: 1_000,
            // With the failed and the slow ones besides, 10,000 spans hold 10 s or more of a
            // busy node's traces (5 spans each).
            max_new_traces_per_sec: 200,
        }
    }
}

/// What the view keeps of a span.
#[derive(Clone, Debug)]
pub struct StoredSpan {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub name: String,
    pub kind: SpanKind,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub error: bool,
    pub status_message: Option<String>,
    pub resource: Arc<Resource>,
    pub attributes: Attributes,
    /// Arrival order in the store.
    pub seq: u64,
}

impl StoredSpan {
    pub fn from_span(span: &Span) -> Self {
        Self {
            trace_id: span.trace_id,
            span_id: span.span_id,
            parent_span_id: span.parent_span_id,
            name: span.name.clone(),
            kind: span.kind,
            start_unix_ns: span.start_unix_ns,
            end_unix_ns: span.end_unix_ns,
            error: span.status == StatusCode::Error,
            status_message: span.status_message.clone(),
            resource: span.resource.clone(),
            attributes: span.attributes.clone(),
            seq: 0,
        }
    }

    pub fn service(&self) -> &str {
        self.resource.service_name()
    }

    pub fn duration_ns(&self) -> u64 {
        self.end_unix_ns.saturating_sub(self.start_unix_ns)
    }

    pub fn attr(&self, key: &str) -> Option<&AttrValue> {
        self.attributes
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
}

/// The identity and timing of a kept span (everything but its text and attributes).
#[derive(Clone, Debug)]
struct Head {
    trace_id: TraceId,
    span_id: SpanId,
    parent_span_id: Option<SpanId>,
    kind: SpanKind,
    start_unix_ns: u64,
    end_unix_ns: u64,
    error: bool,
    resource: Arc<Resource>,
}

/// An attribute value of a kept span: a string is a range of the span's text. 16 bytes: the
/// rare values that own allocations (string arrays: captured headers) are boxed.
#[derive(Debug)]
enum KeptValue {
    Str { start: u32, end: u32 },
    Int(i64),
    Bool(bool),
    Other(Box<AttrValue>),
}

impl KeptValue {
    /// What the value owns beyond itself, as allocated.
    fn heap_bytes(&self) -> usize {
        match self {
            Self::Other(v) => allocated(size_of::<AttrValue>()) + v.heap_bytes(),
            Self::Str { .. } | Self::Int(_) | Self::Bool(_) => 0,
        }
    }

    fn to_value(&self, text: &str) -> AttrValue {
        match self {
            Self::Str { start, end } => text[*start as usize..*end as usize].into(),
            Self::Int(i) => AttrValue::Int(*i),
            Self::Bool(b) => AttrValue::Bool(*b),
            Self::Other(v) => (**v).clone(),
        }
    }
}

/// What an allocation of `n` bytes takes from the allocator: mimalloc's size classes (whole
/// words up to 8 words, then 4 classes per power of two).
fn allocated(n: usize) -> usize {
    let words = n.div_ceil(8);
    if words <= 8 {
        return words * 8;
    }
    let octave = usize::BITS - 1 - (words - 1).leading_zeros();
    let step = 1usize << (octave - 2);
    words.div_ceil(step) * step * 8
}

/// A span as the store keeps it (see the module documentation).
#[derive(Debug)]
struct KeptSpan {
    head: Head,
    /// The name, then the status message, then each string attribute value, back to back.
    text: Box<str>,
    name_end: u32,
    /// Where the status message ends, when there is one.
    status_end: Option<u32>,
    attributes: Box<[(&'static str, KeptValue)]>,
    /// Arrival order in the store.
    seq: u64,
}

impl KeptSpan {
    fn new(
        head: Head,
        name: &str,
        status_message: Option<&str>,
        attributes: &[(&'static str, AttrValue)],
    ) -> Self {
        let strings: usize = attributes
            .iter()
            .map(|(_, v)| match v {
                AttrValue::Str(s) => s.len(),
                _ => 0,
            })
            .sum();
        let status = status_message.unwrap_or_default();
        let mut text = String::with_capacity(name.len() + status.len() + strings);
        // Every offset fits a u32: the span's text is bounded far below 4 GiB.
        let mut push = |s: &str| {
            let start = text.len() as u32;
            text.push_str(s);
            (start, text.len() as u32)
        };
        let name_end = push(name).1;
        let status_end = status_message.map(|m| push(m).1);
        let attributes = attributes
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    AttrValue::Str(s) => {
                        let (start, end) = push(s);
                        KeptValue::Str { start, end }
                    }
                    AttrValue::Int(i) => KeptValue::Int(*i),
                    AttrValue::Bool(b) => KeptValue::Bool(*b),
                    other => KeptValue::Other(Box::new(other.clone())),
                };
                (*k, v)
            })
            .collect();
        Self {
            head,
            text: text.into_boxed_str(),
            name_end,
            status_end,
            attributes,
            seq: 0,
        }
    }

    fn of_span(span: &Span) -> Self {
        let head = Head {
            trace_id: span.trace_id,
            span_id: span.span_id,
            parent_span_id: span.parent_span_id,
            kind: span.kind,
            start_unix_ns: span.start_unix_ns,
            end_unix_ns: span.end_unix_ns,
            error: span.status == StatusCode::Error,
            resource: span.resource.clone(),
        };
        Self::new(
            head,
            &span.name,
            span.status_message.as_deref(),
            &span.attributes,
        )
    }

    fn name(&self) -> &str {
        &self.text[..self.name_end as usize]
    }

    fn status_message(&self) -> Option<&str> {
        self.status_end
            .map(|end| &self.text[self.name_end as usize..end as usize])
    }

    fn service(&self) -> &str {
        self.head.resource.service_name()
    }

    fn duration_ns(&self) -> u64 {
        self.head
            .end_unix_ns
            .saturating_sub(self.head.start_unix_ns)
    }

    fn value(&self, key: &str) -> Option<&KeptValue> {
        self.attributes
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    fn str_attr(&self, key: &str) -> Option<&str> {
        match self.value(key)? {
            KeptValue::Str { start, end } => Some(&self.text[*start as usize..*end as usize]),
            _ => None,
        }
    }

    fn int_attr(&self, key: &str) -> Option<i64> {
        match self.value(key)? {
            KeptValue::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// What the span's own allocations take (its slot is the slab's; the shared resource
    /// not counted).
    fn heap_bytes(&self) -> usize {
        let others: usize = self.attributes.iter().map(|(_, v)| v.heap_bytes()).sum();
        allocated(self.text.len())
            + allocated(self.attributes.len() * size_of::<(&str, KeptValue)>())
            + others
    }

    /// The span as readers get it.
    fn stored(&self) -> StoredSpan {
        let h = &self.head;
        StoredSpan {
            trace_id: h.trace_id,
            span_id: h.span_id,
            parent_span_id: h.parent_span_id,
            name: self.name().to_owned(),
            kind: h.kind,
            start_unix_ns: h.start_unix_ns,
            end_unix_ns: h.end_unix_ns,
            error: h.error,
            status_message: self.status_message().map(str::to_owned),
            resource: h.resource.clone(),
            attributes: self
                .attributes
                .iter()
                .map(|(k, v)| (*k, v.to_value(&self.text)))
                .collect(),
            seq: self.seq,
        }
    }

    /// The one-line summary the request lists and the live stream show.
    fn summary(&self) -> SpanSummary {
        let h = &self.head;
        SpanSummary {
            trace_id: hex(&h.trace_id),
            span_id: hex(&h.span_id),
            service: self.service().to_owned(),
            kind: kind_name(h.kind),
            name: self.name().to_owned(),
            method: self.str_attr("http.request.method").map(str::to_owned),
            route: self
                .str_attr("http.route")
                .or_else(|| self.str_attr("rpc.method"))
                .map(str::to_owned),
            status_code: self
                .int_attr("http.response.status_code")
                .or_else(|| self.int_attr("rpc.grpc.status_code")),
            error: h.error,
            duration_ms: self.duration_ns() as f64 / 1e6,
            start_unix_ms: h.start_unix_ns as f64 / 1e6,
        }
    }
}

/// A span as a list row (JSON).
#[derive(Clone, Debug, Serialize)]
pub struct SpanSummary {
    pub trace_id: String,
    pub span_id: String,
    pub service: String,
    pub kind: &'static str,
    pub name: String,
    pub method: Option<String>,
    pub route: Option<String>,
    pub status_code: Option<i64>,
    pub error: bool,
    pub duration_ms: f64,
    pub start_unix_ms: f64,
}

pub fn kind_name(kind: SpanKind) -> &'static str {
    match kind {
        SpanKind::Server => "server",
        SpanKind::Client => "client",
    }
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Which spans a list shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpanFilter {
    pub service: Option<String>,
    /// The span name (`GET /users/{id}`): the route key of the routes table.
    pub route: Option<String>,
    pub kind: Option<SpanKind>,
    pub min_duration_ns: u64,
    /// `Some(true)`: errors only; `Some(false)`: successes only.
    pub error: Option<bool>,
    pub since_unix_ns: Option<u64>,
    pub until_unix_ns: Option<u64>,
}

impl SpanFilter {
    fn matches(&self, s: &KeptSpan) -> bool {
        let h = &s.head;
        self.service.as_deref().is_none_or(|v| v == s.service())
            && self.route.as_deref().is_none_or(|v| v == s.name())
            && self.kind.is_none_or(|k| k == h.kind)
            && s.duration_ns() >= self.min_duration_ns
            && self.error.is_none_or(|e| e == h.error)
            && self.since_unix_ns.is_none_or(|t| h.end_unix_ns >= t)
            && self.until_unix_ns.is_none_or(|t| h.start_unix_ns <= t)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Newest (latest end) first.
    Recent,
    /// Longest first.
    Slowest,
}

/// The store's own counters (JSON at `/api/stats`).
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct StoreStats {
    pub spans: usize,
    pub traces: usize,
    pub bytes: usize,
    pub max_spans: usize,
    pub max_bytes: usize,
    pub spans_seen: u64,
    pub traces_evicted: u64,
    pub spans_evicted: u64,
    pub routes: usize,
    pub routes_over_limit: u64,
    pub live_clients: usize,
    pub live_clients_dropped: u64,
    /// Spans not kept: of new traces past `max_new_traces_per_sec`, neither failed nor slow
    /// (they still count in the routes and edges).
    pub spans_not_kept: u64,
}

/// One row of the routes table.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RouteRow {
    pub service: String,
    pub kind: &'static str,
    pub route: String,
    pub count: u64,
    pub errors: u64,
    pub rate: f64,
    pub error_pct: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// Requests per 10 s over the last 5 minutes, oldest first.
    pub spark: Vec<u32>,
}

/// A client → server edge seen on this node.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct EdgeRow {
    pub client: String,
    pub server: String,
    pub count: u64,
    pub failed: u64,
    pub rate: f64,
    pub error_pct: f64,
}

/// A trace's spans: a chain through the slab, in arrival order.
struct Trace {
    first: u32,
    last: u32,
    spans: u32,
    /// What its spans' own allocations take.
    bytes: usize,
}

/// No slot (the end of a chain).
const NONE: u32 = u32::MAX;

/// A kept span's place: `next` chains a trace's spans, and the free slots.
struct Slot {
    span: Option<KeptSpan>,
    next: u32,
}

/// Every kept span, in one allocation that eviction makes room in, not gives back.
struct Slab {
    slots: Vec<Slot>,
    /// The first free slot (`NONE`: none; the slab grows).
    free: u32,
}

impl Slab {
    fn new() -> Self {
        Self {
            slots: Vec::new(),
            free: NONE,
        }
    }

    /// Puts `span` in a slot, the end of a chain; returns the slot.
    fn insert(&mut self, span: KeptSpan) -> u32 {
        if self.free == NONE {
            // At most `max_spans` (below `NONE`) spans at once, so the number fits.
            self.slots.push(Slot {
                span: Some(span),
                next: NONE,
            });
            return (self.slots.len() - 1) as u32;
        }
        let at = self.free;
        let slot = &mut self.slots[at as usize];
        self.free = slot.next;
        *slot = Slot {
            span: Some(span),
            next: NONE,
        };
        at
    }

    /// Puts `span` in a slot chained after slot `last`; returns the slot.
    fn append(&mut self, last: u32, span: KeptSpan) -> u32 {
        let at = self.insert(span);
        if let Some(slot) = self.slots.get_mut(last as usize) {
            slot.next = at;
        }
        at
    }

    /// Frees slot `at`; returns the next slot of its chain.
    fn remove(&mut self, at: u32) -> u32 {
        let slot = &mut self.slots[at as usize];
        let next = slot.next;
        slot.span = None;
        slot.next = self.free;
        self.free = at;
        next
    }

    /// The spans of the chain starting at `first`.
    fn chain(&self, first: u32) -> impl Iterator<Item = &KeptSpan> + '_ {
        let mut at = first;
        std::iter::from_fn(move || {
            let slot = self.slots.get(at as usize)?;
            at = slot.next;
            slot.span.as_ref()
        })
    }
}

/// What a hash table of `capacity` entries of `entry` bytes allocates (hashbrown: a power of
/// two of buckets at most 7/8 full, one control byte each).
fn table_bytes(capacity: usize, entry: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    let buckets = (capacity * 8 / 7).next_power_of_two();
    allocated(buckets * (entry + 1) + 16)
}

/// Route windows by service, then route, then kind (looked up by `&str`: no key allocation
/// per span).
type Routes = HashMap<String, HashMap<String, [Option<RouteWindow>; 2]>>;
type Edges = HashMap<String, HashMap<String, CountRing>>;

/// One route's window, and the duration above which its spans count as slow (the window's
/// p99 over the last minute, worked out again once a second; 0: none yet).
#[derive(Default)]
struct RouteWindow {
    ring: LatencyRing,
    slow_ns: u64,
    slow_sec: u64,
}

/// Spans of a route with fewer requests in the last minute have no slow threshold (the
/// admission rate keeps them).
const SLOW_MIN_COUNT: u64 = 100;

/// What admission needs of a span, before the span is copied.
struct Arrival<'a> {
    trace_id: TraceId,
    span_id: SpanId,
    parent_span_id: Option<SpanId>,
    kind: SpanKind,
    end_unix_ns: u64,
    duration_ns: u64,
    error: bool,
    resource: &'a Arc<Resource>,
    name: &'a str,
}

impl Arrival<'_> {
    fn service(&self) -> &str {
        self.resource.service_name()
    }

    /// The key its other end on this node shares: a CLIENT span's own id is its callee's
    /// parent id.
    fn pair_key(&self) -> Option<SpanId> {
        match self.kind {
            SpanKind::Client => Some(self.span_id),
            SpanKind::Server => self.parent_span_id,
        }
    }
}

/// A span not kept, waiting for its other end so that their edge is counted.
struct Unpaired {
    kind: SpanKind,
    resource: Arc<Resource>,
    error: bool,
}

struct Inner {
    limits: StoreLimits,
    traces: HashMap<TraceId, Trace>,
    slab: Slab,
    /// Traces by first arrival, oldest first (each trace once).
    order: VecDeque<TraceId>,
    /// What the kept spans' own allocations take (`stats.bytes` adds the tables).
    span_bytes: usize,
    routes: Routes,
    edges: Edges,
    /// Spans not kept, by [`Arrival::pair_key`], oldest first in `unpaired_order` (at most
    /// `max_spans`; the key of one that found its other end stays queued until it reaches the
    /// front, so the bound holds without a search).
    unpaired: HashMap<SpanId, Unpaired>,
    unpaired_order: VecDeque<SpanId>,
    /// The second new traces are being counted in, and how many were kept in it.
    admit_sec: u64,
    admitted_in_sec: u32,
    subscribers: Vec<mpsc::Sender<Arc<str>>>,
    stats: StoreStats,
    next_seq: u64,
    started_unix_ns: u64,
}

pub struct RecentStore {
    inner: Mutex<Inner>,
    /// Whether any live subscriber exists (the writer builds live events only then).
    live: AtomicBool,
}

impl RecentStore {
    pub fn new(limits: StoreLimits, now_unix_ns: u64) -> Self {
        // Slots are numbered by u32 (`NONE` aside).
        let limits = StoreLimits {
            max_spans: limits.max_spans.min(NONE as usize - 1),
            ..limits
        };
        Self {
            inner: Mutex::new(Inner {
                limits,
                traces: HashMap::new(),
                slab: Slab::new(),
                order: VecDeque::new(),
                span_bytes: 0,
                routes: HashMap::new(),
                edges: HashMap::new(),
                unpaired: HashMap::new(),
                unpaired_order: VecDeque::new(),
                admit_sec: 0,
                admitted_in_sec: 0,
                subscribers: Vec::new(),
                stats: StoreStats {
                    max_spans: limits.max_spans,
                    max_bytes: limits.max_bytes,
                    ..StoreStats::default()
                },
                next_seq: 0,
                started_unix_ns: now_unix_ns,
            }),
            live: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves consistent-enough data to show.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Offers one span (the pipeline stage's work).
    pub fn insert_span(&self, span: &Span) {
        let arrival = Arrival {
            trace_id: span.trace_id,
            span_id: span.span_id,
            parent_span_id: span.parent_span_id,
            kind: span.kind,
            end_unix_ns: span.end_unix_ns,
            duration_ns: span.end_unix_ns.saturating_sub(span.start_unix_ns),
            error: span.status == StatusCode::Error,
            resource: &span.resource,
            name: &span.name,
        };
        self.offer(&arrival, || KeptSpan::of_span(span));
    }

    /// Counts the span in its route (and edge), then keeps it when admitted: the copy is made
    /// only then.
    fn offer(&self, arrival: &Arrival<'_>, copy: impl FnOnce() -> KeptSpan) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        inner.stats.spans_seen += 1;
        let slow_ns = inner.record_route(arrival);
        if !inner.admit(arrival, slow_ns) {
            inner.stats.spans_not_kept += 1;
            inner.pair_unkept(arrival);
            return;
        }
        let mut span = copy();
        span.seq = inner.next_seq;
        inner.next_seq += 1;
        if self.live.load(Ordering::Relaxed) {
            if let Ok(event) = serde_json::to_string(&span.summary()) {
                inner.publish(Arc::from(event));
            }
            self.live
                .store(!inner.subscribers.is_empty(), Ordering::Relaxed);
        }
        inner.add(arrival, span);
    }

    /// A live feed of span summaries (JSON). At most `capacity` events wait for the reader; a
    /// reader that falls further behind is dropped (its receiver ends) and counted.
    pub fn subscribe(&self, capacity: usize) -> mpsc::Receiver<Arc<str>> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let mut inner = self.lock();
        inner.subscribers.push(tx);
        inner.stats.live_clients = inner.subscribers.len();
        self.live.store(true, Ordering::Relaxed);
        rx
    }

    pub fn stats(&self) -> StoreStats {
        let mut inner = self.lock();
        inner.subscribers.retain(|s| !s.is_closed());
        inner.stats.live_clients = inner.subscribers.len();
        inner.stats
    }

    /// Forgets route and edge windows without data in the last 5 minutes.
    pub fn tick(&self, now_unix_ns: u64) {
        let now = window::bucket_of(now_unix_ns / 1_000_000_000);
        let stale = |ring: &CountRing| {
            ring.last_bucket()
                .is_none_or(|b| b + (window::BUCKETS as u64) <= now)
        };
        let mut inner = self.lock();
        for routes in inner.routes.values_mut() {
            for kinds in routes.values_mut() {
                for k in kinds.iter_mut() {
                    if k.as_ref().is_some_and(|r| stale(r.ring.counts())) {
                        *k = None;
                    }
                }
            }
            routes.retain(|_, kinds| kinds.iter().any(Option::is_some));
        }
        inner.routes.retain(|_, r| !r.is_empty());
        for servers in inner.edges.values_mut() {
            servers.retain(|_, ring| !stale(ring));
        }
        inner.edges.retain(|_, s| !s.is_empty());
        inner.stats.routes = count_routes(&inner.routes);
        inner.subscribers.retain(|s| !s.is_closed());
        inner.stats.live_clients = inner.subscribers.len();
    }

    /// The routes table over `window` ending now.
    pub fn routes(&self, now_unix_ns: u64, window: Window, service: Option<&str>) -> Vec<RouteRow> {
        let inner = self.lock();
        let now = window::bucket_of(now_unix_ns / 1_000_000_000);
        let secs = inner.covered_secs(now_unix_ns, window);
        let mut rows = Vec::new();
        for (svc, routes) in &inner.routes {
            if service.is_some_and(|s| s != svc) {
                continue;
            }
            for (route, kinds) in routes {
                for (kind, ring) in [SpanKind::Server, SpanKind::Client]
                    .into_iter()
                    .zip(kinds.iter())
                {
                    let Some(RouteWindow { ring, .. }) = ring else {
                        continue;
                    };
                    let s = ring.summary(now, window);
                    if s.count == 0 {
                        continue;
                    }
                    rows.push(RouteRow {
                        service: svc.clone(),
                        kind: kind_name(kind),
                        route: route.clone(),
                        count: s.count,
                        errors: s.errors,
                        rate: s.count as f64 / secs,
                        error_pct: 100.0 * s.errors as f64 / s.count as f64,
                        p50_ms: s.p50_ns as f64 / 1e6,
                        p95_ms: s.p95_ns as f64 / 1e6,
                        p99_ms: s.p99_ns as f64 / 1e6,
                        spark: ring.counts().series(now),
                    });
                }
            }
        }
        // Servers first, then by service and route.
        let key = |r: &RouteRow| (r.kind != "server", r.service.clone(), r.route.clone());
        rows.sort_by_cached_key(key);
        rows
    }

    /// The client → server edges over `window`, from the span pairs this store saw.
    pub fn edges(&self, now_unix_ns: u64, window: Window) -> Vec<EdgeRow> {
        let inner = self.lock();
        let now = window::bucket_of(now_unix_ns / 1_000_000_000);
        let secs = inner.covered_secs(now_unix_ns, window);
        let mut rows = Vec::new();
        for (client, servers) in &inner.edges {
            for (server, ring) in servers {
                let (count, failed) = ring.totals(now, window);
                if count == 0 {
                    continue;
                }
                rows.push(EdgeRow {
                    client: client.clone(),
                    server: server.clone(),
                    count,
                    failed,
                    rate: count as f64 / secs,
                    error_pct: 100.0 * failed as f64 / count as f64,
                });
            }
        }
        rows.sort_by(|a, b| (&a.client, &a.server).cmp(&(&b.client, &b.server)));
        rows
    }

    /// Spans matching `filter`, in `order`, at most `limit`; with `one_per_trace` only the
    /// longest matching span of each trace.
    pub fn spans(
        &self,
        filter: &SpanFilter,
        order: Order,
        limit: usize,
        one_per_trace: bool,
    ) -> Vec<SpanSummary> {
        let inner = self.lock();
        let mut hits: Vec<&KeptSpan> = Vec::new();
        for trace in inner.traces.values() {
            let matching = inner.slab.chain(trace.first).filter(|s| filter.matches(s));
            if one_per_trace {
                hits.extend(matching.max_by_key(|s| (s.duration_ns(), s.seq)));
            } else {
                hits.extend(matching);
            }
        }
        match order {
            Order::Recent => {
                hits.sort_unstable_by_key(|s| std::cmp::Reverse((s.head.end_unix_ns, s.seq)))
            }
            Order::Slowest => {
                hits.sort_unstable_by_key(|s| std::cmp::Reverse((s.duration_ns(), s.seq)))
            }
        }
        hits.into_iter()
            .take(limit)
            .map(KeptSpan::summary)
            .collect()
    }

    /// Every stored span of a trace, in arrival order.
    pub fn trace(&self, id: &TraceId) -> Option<Vec<StoredSpan>> {
        let inner = self.lock();
        let trace = inner.traces.get(id)?;
        Some(
            inner
                .slab
                .chain(trace.first)
                .map(KeptSpan::stored)
                .collect(),
        )
    }
}

fn count_routes(routes: &Routes) -> usize {
    routes
        .values()
        .flat_map(|r| r.values())
        .map(|k| k.iter().filter(|r| r.is_some()).count())
        .sum()
}

fn kind_index(kind: SpanKind) -> usize {
    match kind {
        SpanKind::Server => 0,
        SpanKind::Client => 1,
    }
}

impl Inner {
    /// Seconds of data a window holds: the window, or less while the store is younger.
    fn covered_secs(&self, now_unix_ns: u64, window: Window) -> f64 {
        let age = now_unix_ns.saturating_sub(self.started_unix_ns) as f64 / 1e9;
        age.clamp(1.0, window.secs() as f64)
    }

    /// Counts the span in its route's window; returns the route's slow threshold (0: none).
    fn record_route(&mut self, span: &Arrival<'_>) -> u64 {
        let sec = span.end_unix_ns / 1_000_000_000;
        let bucket = window::bucket_of(sec);
        let kind = kind_index(span.kind);
        let route = match self
            .routes
            .get_mut(span.service())
            .and_then(|r| r.get_mut(span.name))
            .and_then(|k| k[kind].as_mut())
        {
            Some(route) => route,
            None => {
                if self.stats.routes >= self.limits.max_routes {
                    self.stats.routes_over_limit += 1;
                    return 0;
                }
                self.stats.routes += 1;
                self.routes
                    .entry(span.service().to_owned())
                    .or_default()
                    .entry(span.name.to_owned())
                    .or_default()[kind]
                    .get_or_insert_with(RouteWindow::default)
            }
        };
        if route.slow_sec != sec {
            route.slow_sec = sec;
            let s = route.ring.summary(bucket, Window::OneMinute);
            route.slow_ns = if s.count >= SLOW_MIN_COUNT {
                s.p99_ns
            } else {
                0
            };
        }
        route.ring.record(bucket, span.duration_ns, span.error);
        route.slow_ns
    }

    /// Whether to keep the span (see the module documentation).
    fn admit(&mut self, span: &Arrival<'_>, slow_ns: u64) -> bool {
        let rate = self.limits.max_new_traces_per_sec;
        if rate == 0 || self.traces.contains_key(&span.trace_id) {
            return true;
        }
        if span.error || (slow_ns > 0 && span.duration_ns > slow_ns) {
            return true;
        }
        let sec = span.end_unix_ns / 1_000_000_000;
        if sec != self.admit_sec {
            self.admit_sec = sec;
            self.admitted_in_sec = 0;
        }
        if self.admitted_in_sec < rate {
            self.admitted_in_sec += 1;
            return true;
        }
        false
    }

    /// A span not kept still closes an edge with its other end, kept or not; else it waits
    /// for that end (bounded: the oldest waiting go first).
    fn pair_unkept(&mut self, span: &Arrival<'_>) {
        let Some(key) = span.pair_key() else {
            return;
        };
        if self.pair_kept(span) {
            return;
        }
        while self.unpaired_order.len() >= self.limits.max_spans.max(1) {
            if let Some(old) = self.unpaired_order.pop_front() {
                self.unpaired.remove(&old);
            }
        }
        self.unpaired.insert(
            key,
            Unpaired {
                kind: span.kind,
                resource: span.resource.clone(),
                error: span.error,
            },
        );
        self.unpaired_order.push_back(key);
    }

    /// A span (kept or not) whose other end is a span not kept that waits in `unpaired`:
    /// counts their edge. Whether it found one.
    fn pair_kept(&mut self, span: &Arrival<'_>) -> bool {
        let Some(key) = span.pair_key() else {
            return false;
        };
        let peer = match self.unpaired.entry(key) {
            Entry::Occupied(e) if e.get().kind != span.kind => e.remove(),
            _ => return false,
        };
        let bucket = window::bucket_of(span.end_unix_ns / 1_000_000_000);
        let (client, server) = match span.kind {
            SpanKind::Client => (span.service(), peer.resource.service_name()),
            SpanKind::Server => (peer.resource.service_name(), span.service()),
        };
        record_edge(
            &mut self.edges,
            &mut self.stats,
            self.limits,
            bucket,
            (client, server),
            span.error || peer.error,
        );
        true
    }

    /// Queues `event` for every subscriber; one whose queue is full is dropped (counted), one
    /// that went away is forgotten.
    fn publish(&mut self, event: Arc<str>) {
        let mut dropped = 0;
        self.subscribers
            .retain(|tx| match tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    dropped += 1;
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
        self.stats.live_clients_dropped += dropped;
        self.stats.live_clients = self.subscribers.len();
    }

    /// Keeps `span` with its trace (one look-up), counts the edge it closes, and evicts the
    /// oldest traces while over a bound.
    fn add(&mut self, arrival: &Arrival<'_>, span: KeptSpan) {
        let bytes = span.heap_bytes();
        let id = span.head.trace_id;
        // Whether its other end is kept with it; else it may be a span not kept.
        let mut paired = false;
        match self.traces.entry(id) {
            Entry::Occupied(e) => {
                let trace = e.into_mut();
                if let Some(peer) = self
                    .slab
                    .chain(trace.first)
                    .find(|s| calls(s, &span) || calls(&span, s))
                {
                    let (client, server) = match span.head.kind {
                        SpanKind::Client => (&span, peer),
                        SpanKind::Server => (peer, &span),
                    };
                    let bucket = window::bucket_of(span.head.end_unix_ns / 1_000_000_000);
                    record_edge(
                        &mut self.edges,
                        &mut self.stats,
                        self.limits,
                        bucket,
                        (client.service(), server.service()),
                        client.head.error || server.head.error,
                    );
                    paired = true;
                }
                trace.last = self.slab.append(trace.last, span);
                trace.spans += 1;
                trace.bytes += bytes;
            }
            Entry::Vacant(e) => {
                let at = self.slab.insert(span);
                e.insert(Trace {
                    first: at,
                    last: at,
                    spans: 1,
                    bytes,
                });
                self.order.push_back(id);
            }
        }
        if !paired && !self.unpaired.is_empty() {
            self.pair_kept(arrival);
        }
        self.stats.spans += 1;
        self.span_bytes += bytes;
        // Evicting frees slots and entries, not the tables' capacity.
        let tables = self.table_bytes();
        self.stats.bytes = self.span_bytes + tables;
        while self.stats.spans > self.limits.max_spans || self.stats.bytes > self.limits.max_bytes {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(t) = self.traces.remove(&oldest) {
                let mut at = t.first;
                while at != NONE {
                    at = self.slab.remove(at);
                }
                self.stats.spans -= t.spans as usize;
                self.span_bytes -= t.bytes;
                self.stats.traces_evicted += 1;
                self.stats.spans_evicted += u64::from(t.spans);
            }
            self.stats.bytes = self.span_bytes + tables;
        }
        self.stats.traces = self.traces.len();
    }

    /// What the store's tables take: the slab, the trace index and the arrival queue, at
    /// their capacity (they keep it after evictions, to be refilled).
    fn table_bytes(&self) -> usize {
        allocated(self.slab.slots.capacity() * size_of::<Slot>())
            + table_bytes(self.traces.capacity(), size_of::<(TraceId, Trace)>())
            + allocated(self.order.capacity() * size_of::<TraceId>())
    }
}

/// Whether CLIENT span `client` made the call SERVER span `server` handled.
fn calls(client: &KeptSpan, server: &KeptSpan) -> bool {
    client.head.kind == SpanKind::Client
        && server.head.kind == SpanKind::Server
        && server.head.parent_span_id == Some(client.head.span_id)
}

/// A CLIENT span and the SERVER span it called, both on this node, make one edge: counted
/// when the second of the two arrives.
fn record_edge(
    edges: &mut Edges,
    stats: &mut StoreStats,
    limits: StoreLimits,
    bucket: u64,
    (client, server): (&str, &str),
    error: bool,
) {
    if let Some(ring) = edges.get_mut(client).and_then(|s| s.get_mut(server)) {
        ring.add(bucket, error);
        return;
    }
    let count: usize = edges.values().map(HashMap::len).sum();
    if count >= limits.max_routes {
        stats.routes_over_limit += 1;
        return;
    }
    edges
        .entry(client.to_owned())
        .or_default()
        .entry(server.to_owned())
        .or_default()
        .add(bucket, error);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::test_span;

    const SEC: u64 = 1_000_000_000;

    fn span(trace: u32, id: u8, parent: Option<u8>, kind: SpanKind, service: &str) -> Span {
        let mut s = test_span();
        s.trace_id[..4].copy_from_slice(&trace.to_le_bytes());
        s.span_id = [id; 8];
        s.parent_span_id = parent.map(|p| [p; 8]);
        s.kind = kind;
        s.resource = Arc::new(Resource {
            pid: 1,
            attributes: vec![("service.name".into(), service.into())],
        });
        s
    }

    /// Trace `i` as it arrives: the backend's SERVER span, then the proxy's CLIENT span, then
    /// the proxy's SERVER span (curl → proxy → backend).
    fn proxy_trace(i: u32) -> [Span; 3] {
        [
            span(i, 3, Some(2), SpanKind::Server, "backend"),
            span(i, 2, Some(1), SpanKind::Client, "proxy"),
            span(i, 1, None, SpanKind::Server, "proxy"),
        ]
    }

    fn store(max_spans: usize) -> RecentStore {
        RecentStore::new(
            StoreLimits {
                max_spans,
                max_bytes: usize::MAX,
                max_routes: 100,
                max_new_traces_per_sec: 0,
            },
            test_span().start_unix_ns,
        )
    }

    #[test]
    fn oldest_traces_go_first_with_all_their_spans() {
        let store = store(5);
        for trace in 0..3u32 {
            store.insert_span(&span(trace, 1, None, SpanKind::Server, "a"));
            store.insert_span(&span(trace, 2, Some(1), SpanKind::Client, "a"));
        }
        let stats = store.stats();
        // 6 spans > 5: trace 0 (2 spans) went, whole.
        assert_eq!((stats.spans, stats.traces), (4, 2));
        assert_eq!((stats.traces_evicted, stats.spans_evicted), (1, 2));
        let id = |t: u32| span(t, 1, None, SpanKind::Server, "a").trace_id;
        assert!(store.trace(&id(0)).is_none());
        assert_eq!(store.trace(&id(1)).unwrap().len(), 2);
        assert_eq!(store.trace(&id(2)).unwrap().len(), 2);
    }

    #[test]
    fn ten_thousand_traces_a_second_keep_both_bounds() {
        let store = RecentStore::new(
            StoreLimits {
                max_spans: 5_000,
                max_bytes: 2 << 20,
                max_routes: 100,
                max_new_traces_per_sec: 0,
            },
            test_span().start_unix_ns,
        );
        let base = test_span().start_unix_ns;
        let mut max_seen = (0, 0);
        // 10 s of 10k traces/s, three spans each (curl → proxy → backend), synthetic times.
        for i in 0..100_000u32 {
            let t = base + u64::from(i) * 100_000;
            let mut spans = proxy_trace(i);
            for (k, s) in spans.iter_mut().enumerate() {
                s.start_unix_ns = t + 10_000 * (2 - k as u64);
                s.end_unix_ns = t + 90_000 - 10_000 * (2 - k as u64);
                s.attributes
                    .push(("url.path", format!("/items/{i}").into()));
                store.insert_span(s);
            }
            let st = store.stats();
            max_seen = (max_seen.0.max(st.spans), max_seen.1.max(st.bytes));
        }
        let st = store.stats();
        assert!(max_seen.0 <= 5_000 && max_seen.1 <= 2 << 20, "{max_seen:?}");
        assert_eq!(st.spans_seen, 300_000);
        assert_eq!(st.spans + st.spans_evicted as usize, 300_000);
        assert!(st.traces_evicted > 90_000, "{st:?}");
        // Every trace left is whole.
        assert_eq!(st.spans, st.traces * 3, "{st:?}");
        // The windows saw every span: 1 min of the last 10 s.
        let now = base + 10 * SEC;
        let routes = store.routes(now, Window::OneMinute, None);
        let total: u64 = routes.iter().map(|r| r.count).sum();
        assert_eq!(total, 300_000);
        let edges = store.edges(now, Window::OneMinute);
        assert_eq!(edges.len(), 1, "{edges:?}");
        assert_eq!(
            (
                edges[0].client.as_str(),
                edges[0].server.as_str(),
                edges[0].count
            ),
            ("proxy", "backend", 100_000)
        );
    }

    #[test]
    fn past_the_rate_only_failed_and_slow_traces_are_kept_and_every_request_still_counts() {
        let store = RecentStore::new(
            StoreLimits {
                max_spans: 100_000,
                max_bytes: usize::MAX,
                max_routes: 100,
                max_new_traces_per_sec: 50,
            },
            test_span().start_unix_ns,
        );
        let base = test_span().start_unix_ns;
        let (failed, slow) = (|i: u32| i % 100 == 7, |i: u32| i % 97 == 5 && i > 1_000);
        // 10 s of 1k traces/s, three spans each (backend, then proxy's CLIENT, then proxy's
        // SERVER), 1 ms apart; every 100th fails at the backend, every 97th is slow there.
        for i in 0..10_000u32 {
            let t = base + u64::from(i) * 1_000_000;
            let backend_ns = if slow(i) { 5_000_000 } else { 200_000 };
            let mut spans = proxy_trace(i);
            for (k, s) in spans.iter_mut().enumerate() {
                s.start_unix_ns = t + 10_000 * (2 - k as u64);
                s.end_unix_ns = s.start_unix_ns + backend_ns + 20_000 * k as u64;
                if failed(i) {
                    s.status = StatusCode::Error;
                }
                store.insert_span(s);
            }
        }
        let st = store.stats();
        assert_eq!(st.spans_seen, 30_000);
        // 50 a second (10 s, 11 seconds touched at most), plus the failed and the slow ones.
        let (n_failed, n_slow) = (100, (0..10_000).filter(|&i| slow(i)).count());
        assert!(st.traces >= n_failed + n_slow, "{st:?}");
        assert!(st.traces <= 11 * 50 + n_failed + n_slow, "{st:?}");
        assert_eq!(st.spans_not_kept as usize + st.spans, 30_000, "{st:?}");
        let id = |i: u32| span(i, 1, None, SpanKind::Server, "a").trace_id;
        for i in (0..10_000).filter(|&i| failed(i) || slow(i)) {
            let trace = store
                .trace(&id(i))
                .unwrap_or_else(|| panic!("trace {i} not kept"));
            // Kept from its first span on: whole.
            assert_eq!(trace.len(), 3, "trace {i}");
        }
        // The windows and the service map saw every request.
        let now = base + 10 * SEC;
        let routes = store.routes(now, Window::OneMinute, None);
        assert_eq!(routes.iter().map(|r| r.count).sum::<u64>(), 30_000);
        let edges = store.edges(now, Window::OneMinute);
        assert_eq!(edges.len(), 1, "{edges:?}");
        assert_eq!(
            (edges[0].client.as_str(), edges[0].server.as_str()),
            ("proxy", "backend")
        );
        assert_eq!((edges[0].count, edges[0].failed), (10_000, 100));
    }

    #[test]
    fn routes_have_red_per_service_kind_and_name() {
        let store = store(100);
        for i in 0..10u8 {
            let mut s = span(u32::from(i), 1, None, SpanKind::Server, "web");
            s.name = "GET /users/{id}".into();
            s.end_unix_ns = s.start_unix_ns + u64::from(i + 1) * 1_000_000;
            if i == 9 {
                s.status = StatusCode::Error;
            }
            store.insert_span(&s);
        }
        let now = test_span().start_unix_ns + 30 * SEC;
        let rows = store.routes(now, Window::OneMinute, None);
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!(
            (r.service.as_str(), r.kind, r.route.as_str()),
            ("web", "server", "GET /users/{id}")
        );
        assert_eq!((r.count, r.errors, r.error_pct), (10, 1, 10.0));
        assert!((r.rate - 10.0 / 30.0).abs() < 1e-9, "{}", r.rate);
        assert!(r.p50_ms > 4.0 && r.p50_ms < 6.0, "{}", r.p50_ms);
        assert!(r.p99_ms > 8.5 && r.p99_ms < 11.0, "{}", r.p99_ms);
        // Later than 5 minutes: gone from the table, and forgotten by the tick.
        assert!(
            store
                .routes(now + 400 * SEC, Window::FiveMinutes, None)
                .is_empty()
        );
        store.tick(now + 400 * SEC);
        assert_eq!(store.stats().routes, 0);
    }

    #[test]
    fn lists_filter_order_and_keep_one_span_per_trace() {
        let store = store(100);
        for i in 0..5u32 {
            let mut s = span(i, 1, None, SpanKind::Server, "web");
            s.end_unix_ns = s.start_unix_ns + u64::from(i + 1) * 1_000_000;
            store.insert_span(&s);
            let mut c = span(i, 2, Some(1), SpanKind::Client, "web");
            c.end_unix_ns = c.start_unix_ns + 500_000;
            store.insert_span(&c);
        }
        let all = SpanFilter::default();
        assert_eq!(store.spans(&all, Order::Recent, 100, false).len(), 10);
        let slowest = store.spans(&all, Order::Slowest, 2, true);
        assert_eq!(slowest.len(), 2);
        assert_eq!(slowest[0].duration_ms, 5.0);
        assert_eq!(slowest[1].duration_ms, 4.0);
        let filter = SpanFilter {
            min_duration_ns: 3_000_000,
            kind: Some(SpanKind::Server),
            ..SpanFilter::default()
        };
        assert_eq!(store.spans(&filter, Order::Recent, 100, false).len(), 3);
        let errors = SpanFilter {
            error: Some(true),
            ..SpanFilter::default()
        };
        assert!(store.spans(&errors, Order::Recent, 100, false).is_empty());
    }

    #[test]
    fn a_full_live_queue_drops_its_subscriber_without_waiting() {
        let store = store(1000);
        let mut slow = store.subscribe(8);
        let mut fast = store.subscribe(1000);
        for i in 0..100u32 {
            store.insert_span(&span(i, 1, None, SpanKind::Server, "a"));
        }
        let st = store.stats();
        assert_eq!((st.live_clients, st.live_clients_dropped), (1, 1));
        // The slow one gets what was queued, then its stream ends.
        let mut got = 0;
        while slow.try_recv().is_ok() {
            got += 1;
        }
        assert_eq!(got, 8);
        assert!(slow.is_closed());
        let mut got = 0;
        while let Ok(event) = fast.try_recv() {
            assert!(event.contains("\"service\":\"a\""), "{event}");
            got += 1;
        }
        assert_eq!(got, 100);
        // A reader that went away is forgotten, not counted as dropped.
        drop(fast);
        store.insert_span(&span(999, 1, None, SpanKind::Server, "a"));
        let st = store.stats();
        assert_eq!((st.live_clients, st.live_clients_dropped), (0, 1));
    }
}
