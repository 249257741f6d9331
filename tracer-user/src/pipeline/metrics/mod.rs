//! The span-metrics stage: every finished span (after redaction, before sampling) updates
//! - `red`: the request duration histograms (HTTP server/client, gRPC server/client);
//! - `db`: the database client call durations;
//! - `service_graph`: the edges between services (Tempo's `traces_service_graph_*`);
//! - `tree`: fan-out, retries and self time of each SERVER span from its CLIENT children;
//!
//! each a family of series in a bounded `series` table. The aggregates sit behind one mutex
//! shared with readers ([`SpanMetrics::source`]): the stage takes it once per span, readers
//! once per collection. What waits for a partner span (service-graph pairs, children waiting
//! for their parent) is the stage's own state, outside the lock.
//!
//! Every point's identity is its span's resource: `service.name`, and `service.namespace`,
//! `k8s.namespace.name`, `k8s.pod.name` when the resource has them.
mod db;
pub mod options;
mod red;
pub mod series;
mod service_graph;
mod tree;

use std::sync::{Arc, Mutex, MutexGuard};

use crate::metric::{MetricData, MetricFamily, MetricSource, NumberPoint};
use crate::span::{AttrValue, Resource, Span};

use db::DbMetrics;
pub use options::{DEFAULT_DURATION_BOUNDS, MetricsArgs, MetricsOptions};
use red::{Red, SpanAttrs};
use series::{Key, SpanRef};
use service_graph::{GraphMetrics, ServiceGraph};
use tree::{Tree, TreeMetrics};

/// The resource attributes that identify a point, in key order.
pub const IDENTITY: &[&str] = &[
    "service.name",
    "service.namespace",
    "k8s.namespace.name",
    "k8s.pod.name",
];

/// The stage.
pub struct SpanMetrics {
    shared: Arc<Shared>,
    graph: ServiceGraph,
    tree: Tree,
    idle_ns: u64,
    /// Wall clock at the latest tick (0 before the first one).
    now: u64,
}

impl SpanMetrics {
    pub fn new(options: &MetricsOptions) -> Self {
        let bounds = options.duration_bounds.clone();
        let cap = options.max_series.max(1);
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(Aggregates {
                    red: Red::with_dimensions(bounds.clone(), cap, &options.dimensions),
                    db: DbMetrics::new(bounds.clone(), cap),
                    graph: GraphMetrics::new(bounds.clone(), cap),
                    tree: TreeMetrics::new(bounds, cap),
                    unmatched: Unmatched::default(),
                    held: (0, 0, 0),
                }),
            }),
            graph: ServiceGraph::new(options.pair_wait_ns, service_graph::HELD_CAP),
            tree: Tree::new(options.children_wait_ns),
            idle_ns: options.series_idle_ns,
            now: 0,
        }
    }

    /// What readers collect the metrics from.
    pub fn source(&self) -> Arc<dyn MetricSource> {
        self.shared.clone()
    }

    pub fn on_span(&mut self, span: &Span) {
        // The tick's clock, not the span's: one span with a wrong end time must not age
        // everything held. Before the first tick, the span's end is all there is.
        let now = if self.now == 0 {
            span.end_unix_ns
        } else {
            self.now
        };
        let identity = identity_of(&span.resource);
        let attrs = SpanAttrs::of(span);
        let mut agg = self.shared.lock();
        let agg = &mut *agg;
        if !agg.db.record(span, &identity, now) {
            agg.red.record(span, &attrs, &identity, now);
        }
        self.graph
            .on_span(span, &attrs, now, &mut agg.graph, &mut agg.unmatched);
        self.tree.on_span(
            span,
            &attrs,
            &identity,
            now,
            &mut agg.tree,
            &mut agg.unmatched,
        );
    }

    /// Expires held spans and idle series.
    pub fn tick(&mut self, now_unix_ns: u64) {
        self.now = self.now.max(now_unix_ns);
        let now = self.now;
        let mut agg = self.shared.lock();
        let agg = &mut *agg;
        self.graph.tick(now, &mut agg.graph, &mut agg.unmatched);
        self.tree.tick(now, &mut agg.unmatched);
        agg.red.expire(now, self.idle_ns);
        agg.db.expire(now, self.idle_ns);
        agg.graph.expire(now, self.idle_ns);
        agg.tree.expire(now, self.idle_ns);
        let (servers, clients) = self.graph.held();
        agg.held = (servers, clients, self.tree.held());
    }
}

/// Spans that waited for a partner and found none, or found no room to wait.
#[derive(Debug, Default)]
pub struct Unmatched {
    pub graph_servers_expired: u64,
    pub graph_servers_full: u64,
    pub children_expired: u64,
    pub children_full: u64,
}

struct Aggregates {
    red: Red,
    db: DbMetrics,
    graph: GraphMetrics,
    tree: TreeMetrics,
    unmatched: Unmatched,
    /// Spans waiting at the last tick: (graph servers, graph clients, children).
    held: (usize, usize, usize),
}

struct Shared {
    state: Mutex<Aggregates>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Aggregates> {
        // A reader that panicked mid-copy left nothing half-written that matters.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl MetricSource for Shared {
    fn collect(&self, out: &mut Vec<MetricFamily>) {
        let now = unix_now_ns();
        let agg = self.lock();
        agg.red.collect(now, out);
        agg.db.collect(now, out);
        agg.graph.collect(now, out);
        agg.tree.collect(now, out);
        agg.collect_own(now, out);
    }
}

impl Aggregates {
    /// The stage's own state: series per metric, overflowed observations, unmatched spans.
    fn collect_own(&self, now: u64, out: &mut Vec<MetricFamily>) {
        let point = |labels: Vec<(&'static str, String)>, value: u64| NumberPoint {
            identity: Vec::new(),
            labels,
            start_unix_ns: 0,
            time_unix_ns: now,
            value,
        };
        let stats: Vec<_> = self
            .red
            .stats()
            .chain(self.db.stats())
            .chain(self.graph.stats())
            .chain(self.tree.stats())
            .collect();
        let metric = |name: &str| vec![("metric", name.to_owned())];
        out.push(MetricFamily {
            name: "tracer.metrics.overflow",
            description: "Observations of a span metric that went to its overflow series (the series cap was reached).",
            unit: "",
            data: MetricData::Counter(
                stats
                    .iter()
                    .map(|(n, _, overflowed)| point(metric(n), *overflowed))
                    .collect(),
            ),
        });
        out.push(MetricFamily {
            name: "tracer.metrics.series",
            description: "Series a span metric holds now (the overflow series not included).",
            unit: "",
            data: MetricData::Gauge(
                stats
                    .iter()
                    .map(|(n, len, _)| point(metric(n), *len as u64))
                    .collect(),
            ),
        });
        let u = &self.unmatched;
        let unmatched = |table: &str, reason: &str, value| {
            point(
                vec![("table", table.to_owned()), ("reason", reason.to_owned())],
                value,
            )
        };
        out.push(MetricFamily {
            name: "tracer.metrics.unmatched",
            description: "Spans that waited for a partner span and found none (expired) or found the waiting table full.",
            unit: "{span}",
            data: MetricData::Counter(vec![
                unmatched("service_graph", "expired", u.graph_servers_expired),
                unmatched("service_graph", "full", u.graph_servers_full),
                unmatched("children", "expired", u.children_expired),
                unmatched("children", "full", u.children_full),
            ]),
        });
        let (servers, clients, children) = self.held;
        let held =
            |table: &str, value: usize| point(vec![("table", table.to_owned())], value as u64);
        out.push(MetricFamily {
            name: "tracer.metrics.held",
            description: "Spans waiting for a partner span at the last tick.",
            unit: "{span}",
            data: MetricData::Gauge(vec![
                held("service_graph_servers", servers),
                held("service_graph_clients", clients),
                held("children", children),
            ]),
        });
    }
}

fn unix_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A resource's identity values, in [`IDENTITY`] order.
type Identity<'a> = [Option<&'a str>; 4];

/// The identity values of a resource (`service.name` as [`Resource::service_name`] has it).
fn identity_of(resource: &Resource) -> Identity<'_> {
    let mut out = [None; 4];
    for (k, v) in &resource.attributes {
        let AttrValue::Str(s) = v else { continue };
        let s: &str = s;
        match k.as_str() {
            "service.name" if out[0].is_none() => out[0] = Some(s),
            "service.namespace" => out[1] = Some(s),
            "k8s.namespace.name" => out[2] = Some(s),
            "k8s.pod.name" => out[3] = Some(s),
            _ => {}
        }
    }
    out[0] = out[0].or(Some(resource.service_name()));
    out
}

/// A key holding `identity`, ready for the labels.
fn identity_key<'a>(identity: &Identity<'a>) -> Key<'a> {
    let mut key = Key::new();
    for v in identity {
        key.str(*v);
    }
    key
}

fn span_ref(span: &Span) -> SpanRef {
    SpanRef {
        trace_id: span.trace_id,
        span_id: span.span_id,
        time_unix_ns: span.end_unix_ns,
        sampled: span.flags & 1 != 0,
    }
}

#[cfg(test)]
mod tests;
