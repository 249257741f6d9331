//! Leading indicators from each SERVER span and the CLIENT spans made while serving it (its
//! children: CLIENT spans whose parent is that server span, same trace):
//!
//! - `tracer.server.fanout` (histogram, `{call}`): per SERVER span, its number of children;
//!   by service and `http.route`.
//! - `tracer.server.self_time` (histogram, `s`): the server span's duration minus the union of
//!   its children's intervals, each clipped to the server span (overlapping children count
//!   once); by service and `http.route`.
//! - `tracer.client.retries` (counter, `{call}`): children that repeat the same method +
//!   route + peer (`http.request.method`, `http.route`, `server.address`, `server.port`) as an
//!   earlier child of the same server span that failed (status Error, which includes no
//!   response) and ended at or before this one started; by the child's service, method, route
//!   and peer. A call after two failed ones counts once.
//!
//! Children finish before their parent in the normal case: they are held per parent until
//! the parent arrives. A child arriving after its parent (a call left running) is not counted
//! anywhere: it waits in vain and expires (counted). Bounded: at most `HELD_PARENTS` parents
//! and `HELD_CHILDREN` children held, and `CHILDREN_PER_PARENT` per parent. A child of a
//! parent already held that finds no room counts in the fan-out only (not in self time or
//! retries); a child of a new parent that finds the table full is dropped (counted).
use std::sync::Arc;

use hashbrown::HashMap;

use super::red::{ADDRESS, METHOD, PORT, ROUTE, SpanAttrs};
use super::series::{Count, Histogram, KeyNames, SeriesTable, Value};
use super::{IDENTITY, Identity, Unmatched, identity_key, identity_of, span_ref};
use crate::metric::{MetricData, MetricFamily};
use crate::span::{Resource, Span, SpanId, SpanKind, StatusCode, TraceId};

/// Default buckets of `tracer.server.fanout`.
pub const FANOUT_BOUNDS: &[f64] = &[
    0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0, 50.0, 100.0,
];
pub const HELD_PARENTS: usize = 16384;
pub const HELD_CHILDREN: usize = 65536;
pub const CHILDREN_PER_PARENT: usize = 128;

const SERVER_NAMES: KeyNames = KeyNames {
    identity: IDENTITY,
    labels: &["http.route"],
};
const RETRY_NAMES: KeyNames = KeyNames {
    identity: IDENTITY,
    labels: &[
        "http.request.method",
        "http.route",
        "server.address",
        "server.port",
    ],
};

const FANOUT: &str = "tracer.server.fanout";
const SELF_TIME: &str = "tracer.server.self_time";
const RETRIES: &str = "tracer.client.retries";

pub struct TreeMetrics {
    duration_bounds: Arc<[f64]>,
    fanout_bounds: Arc<[f64]>,
    /// Fan-out and self time have the same labels and are observed together: one series
    /// table (one look-up per server span) holds both.
    served: SeriesTable<Served>,
    retries: SeriesTable<Count>,
}

struct Served {
    fanout: Histogram,
    self_time: Histogram,
}

impl TreeMetrics {
    pub fn new(duration_bounds: Arc<[f64]>, cap: usize) -> Self {
        Self {
            duration_bounds,
            fanout_bounds: FANOUT_BOUNDS.into(),
            served: SeriesTable::new(SERVER_NAMES, cap),
            retries: SeriesTable::new(RETRY_NAMES, cap),
        }
    }

    pub fn expire(&mut self, now: u64, idle_ns: u64) {
        self.served.expire(now, idle_ns);
        self.retries.expire(now, idle_ns);
    }

    pub fn stats(&self) -> impl Iterator<Item = (&'static str, usize, u64)> + '_ {
        [
            (FANOUT, self.served.series_count(), self.served.overflowed()),
            (
                SELF_TIME,
                self.served.series_count(),
                self.served.overflowed(),
            ),
            (
                RETRIES,
                self.retries.series_count(),
                self.retries.overflowed(),
            ),
        ]
        .into_iter()
    }

    pub fn collect(&self, now: u64, out: &mut Vec<MetricFamily>) {
        out.push(MetricFamily {
            name: FANOUT,
            description: "Outgoing calls made while serving one request (CLIENT spans whose parent is the SERVER span).",
            unit: "{call}",
            data: MetricData::Histogram {
                bounds: self.fanout_bounds.clone(),
                points: self.served.points_by(now, |s| Some(&s.fanout)),
            },
        });
        out.push(MetricFamily {
            name: SELF_TIME,
            description: "Time a request spent in the service itself: its duration minus the union of its outgoing calls.",
            unit: "s",
            data: MetricData::Histogram {
                bounds: self.duration_bounds.clone(),
                points: self.served.points_by(now, |s| Some(&s.self_time)),
            },
        });
        out.push(MetricFamily {
            name: RETRIES,
            description: "Outgoing calls that repeat a failed call (same method, route and peer) made while serving the same request.",
            unit: "{call}",
            data: MetricData::Counter(self.retries.points(now)),
        });
    }
}

/// A held child: its interval, outcome, and what a retry is recognised by.
struct Child {
    start: u64,
    end: u64,
    error: bool,
    port: Option<i64>,
    /// `method \x1f route \x1f address` (recycled through `Tree::free_text`).
    text: String,
    resource: Arc<Resource>,
}

const SEP: char = '\x1f';

impl Child {
    fn same_call(&self, other: &Child) -> bool {
        self.port == other.port && self.text == other.text
    }

    /// (method, route, address), `None` for an empty part.
    fn parts(&self) -> [Option<&str>; 3] {
        let mut it = self.text.split(SEP).map(|p| (!p.is_empty()).then_some(p));
        [
            it.next().flatten(),
            it.next().flatten(),
            it.next().flatten(),
        ]
    }
}

struct Held {
    children: Vec<Child>,
    /// Children beyond `CHILDREN_PER_PARENT`: in the fan-out only.
    extra: u32,
    first_at: u64,
}

/// The held children (owned by the stage, outside the metrics' lock).
pub struct Tree {
    wait_ns: u64,
    parents: HashMap<(TraceId, SpanId), Held>,
    children: usize,
    free_text: Vec<String>,
    free_vecs: Vec<Vec<Child>>,
    /// Scratch for the merged child intervals.
    intervals: Vec<(u64, u64)>,
}

/// Buffers kept for reuse, at most.
const FREE: usize = 1024;

impl Tree {
    pub fn new(wait_ns: u64) -> Self {
        Self {
            wait_ns,
            parents: HashMap::new(),
            children: 0,
            free_text: Vec::new(),
            free_vecs: Vec::new(),
            intervals: Vec::new(),
        }
    }

    pub fn on_span(
        &mut self,
        span: &Span,
        attrs: &SpanAttrs<'_>,
        identity: &Identity<'_>,
        now: u64,
        m: &mut TreeMetrics,
        u: &mut Unmatched,
    ) {
        match span.kind {
            SpanKind::Client => self.on_client(span, attrs, now, u),
            SpanKind::Server => self.on_server(span, attrs, identity, now, m),
        }
    }

    fn on_client(&mut self, span: &Span, attrs: &SpanAttrs<'_>, now: u64, u: &mut Unmatched) {
        let Some(parent) = span.parent_span_id else {
            return;
        };
        let key = (span.trace_id, parent);
        if !self.parents.contains_key(&key)
            && (self.parents.len() >= HELD_PARENTS || self.children >= HELD_CHILDREN)
        {
            u.children_full += 1;
            return;
        }
        let free_vecs = &mut self.free_vecs;
        let held = self.parents.entry(key).or_insert_with(|| Held {
            children: free_vecs.pop().unwrap_or_default(),
            extra: 0,
            first_at: now,
        });
        if held.children.len() >= CHILDREN_PER_PARENT || self.children >= HELD_CHILDREN {
            held.extra += 1;
            return;
        }
        let part = |i| attrs.http_str(i).unwrap_or_default();
        let (method, route, address) = (part(METHOD), part(ROUTE), part(ADDRESS));
        let port = match attrs.http[PORT] {
            Some(Value::Int(p)) => Some(p),
            _ => None,
        };
        let mut text = self.free_text.pop().unwrap_or_default();
        for (i, part) in [method, route, address].into_iter().enumerate() {
            if i > 0 {
                text.push(SEP);
            }
            text.push_str(part);
        }
        held.children.push(Child {
            start: span.start_unix_ns,
            end: span.end_unix_ns,
            error: span.status == StatusCode::Error,
            port,
            text,
            resource: span.resource.clone(),
        });
        self.children += 1;
    }

    fn on_server(
        &mut self,
        span: &Span,
        attrs: &SpanAttrs<'_>,
        identity: &Identity<'_>,
        now: u64,
        m: &mut TreeMetrics,
    ) {
        let mut held = self.parents.remove(&(span.trace_id, span.span_id));
        let extra = held.as_ref().map_or(0, |h| h.extra as usize);
        let children: &mut [Child] = held.as_mut().map_or(&mut [], |h| &mut h.children);
        let fanout = children.len() + extra;

        let mut key = identity_key(identity);
        key.push(attrs.http[ROUTE]);
        let self_ns = self_time_ns(span, children, &mut self.intervals);
        let from = span_ref(span);
        let (fb, db) = (&m.fanout_bounds, &m.duration_bounds);
        let served = m.served.get(&key, now, || Served {
            fanout: Histogram::new(fb),
            self_time: Histogram::new(db),
        });
        served.fanout.observe(fb, fanout as f64, from);
        served.self_time.observe(db, self_ns as f64 * 1e-9, from);

        children.sort_unstable_by_key(|c| c.start);
        for (i, c) in children.iter().enumerate() {
            let retry = children[..i]
                .iter()
                .any(|e| e.error && e.end <= c.start && e.same_call(c));
            if retry {
                let [method, route, address] = c.parts();
                let mut key = identity_key(&identity_of(&c.resource));
                key.str(method)
                    .str(route)
                    .str(address)
                    .push(c.port.map(Value::Int));
                m.retries.get(&key, now, Count::default).0 += 1;
            }
        }
        if let Some(held) = held {
            self.release(held);
        }
    }

    fn release(&mut self, mut held: Held) {
        self.children -= held.children.len();
        for c in held.children.drain(..) {
            if self.free_text.len() < FREE {
                let mut t = c.text;
                t.clear();
                self.free_text.push(t);
            }
        }
        if self.free_vecs.len() < FREE {
            self.free_vecs.push(held.children);
        }
    }

    /// Children whose parent did not come within the wait are dropped (counted).
    pub fn tick(&mut self, now: u64, u: &mut Unmatched) {
        let wait = self.wait_ns;
        let expired: Vec<Held> = self
            .parents
            .extract_if(|_, h| now.saturating_sub(h.first_at) > wait)
            .map(|(_, h)| h)
            .collect();
        for h in expired {
            u.children_expired += (h.children.len() + h.extra as usize) as u64;
            self.release(h);
        }
    }

    /// Children held now.
    pub fn held(&self) -> usize {
        self.children
    }
}

/// The server span's duration minus the union of its children's intervals clipped to it.
fn self_time_ns(server: &Span, children: &[Child], scratch: &mut Vec<(u64, u64)>) -> u64 {
    let (s0, s1) = (
        server.start_unix_ns,
        server.end_unix_ns.max(server.start_unix_ns),
    );
    scratch.clear();
    scratch.extend(
        children
            .iter()
            .map(|c| (c.start.clamp(s0, s1), c.end.clamp(s0, s1)))
            .filter(|(a, b)| a < b),
    );
    scratch.sort_unstable();
    let mut covered = 0;
    let mut current: Option<(u64, u64)> = None;
    for &(a, b) in scratch.iter() {
        current = match current {
            Some((ca, cb)) if a <= cb => Some((ca, cb.max(b))),
            Some((ca, cb)) => {
                covered += cb - ca;
                Some((a, b))
            }
            None => Some((a, b)),
        };
    }
    if let Some((ca, cb)) = current {
        covered += cb - ca;
    }
    (s1 - s0) - covered
}
