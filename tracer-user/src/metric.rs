//! The agent's metric model: what metric producers (the span pipeline's metrics stage, the
//! agent's own counters) hand to metric readers (the Prometheus endpoint, the OTLP metrics
//! exporter, the node-local view). Close to OTLP's data model so OTLP export is a copy;
//! Prometheus export translates names (`http.server.request.duration` with unit `s` →
//! `http_server_request_duration_seconds`) and merges a point's identity into its labels.
//!
//! A producer implements [`MetricSource`]; readers call [`MetricSource::collect`] when they
//! export (a scrape, an export interval), so a producer only pays for a snapshot then. The
//! model depends on nothing else in the crate, like `span`.
use std::sync::Arc;

use crate::span::{SpanId, TraceId};

/// Label (OTLP: attribute) keys are the semantic-convention names, static; values are owned
/// copies made at collection time.
pub type Labels = Vec<(&'static str, String)>;

/// One metric: a name, its instrument and its points (one per label set).
#[derive(Clone, Debug, PartialEq)]
pub struct MetricFamily {
    /// The OpenTelemetry name (`http.server.request.duration`, `tracer.server.fanout`); names
    /// given in Prometheus form by their convention (Tempo's `traces_service_graph_*`) are kept
    /// as they are.
    pub name: &'static str,
    pub description: &'static str,
    /// UCUM unit: `s`, `By`, or an annotation such as `{call}` (no Prometheus suffix).
    pub unit: &'static str,
    pub data: MetricData,
}

#[derive(Clone, Debug, PartialEq)]
pub enum MetricData {
    /// Explicit-bucket histogram, cumulative temporality.
    Histogram {
        /// Upper bounds, ascending; bucket `i` counts values in `(bounds[i-1], bounds[i]]`,
        /// the last bucket (index `bounds.len()`) the values above every bound.
        bounds: Arc<[f64]>,
        points: Vec<HistogramPoint>,
    },
    /// Monotonic sum, cumulative temporality (Prometheus: a counter, `_total`).
    Counter(Vec<NumberPoint>),
    /// A value that goes up and down (queue length, open connections).
    Gauge(Vec<NumberPoint>),
}

/// Who a point is about: the resource attributes that identify the service it was measured for
/// (`service.name`, `service.namespace`, `k8s.namespace.name`, `k8s.pod.name`). OTLP export
/// groups points by it into resources; Prometheus export makes each a label (`service_name`) so
/// one endpoint serves many services. Empty for the agent's own metrics.
pub type Identity = Labels;

#[derive(Clone, Debug, PartialEq)]
pub struct HistogramPoint {
    pub identity: Identity,
    pub labels: Labels,
    /// When this series started counting (cumulative start time), Unix nanoseconds.
    pub start_unix_ns: u64,
    /// When this snapshot was taken, Unix nanoseconds.
    pub time_unix_ns: u64,
    pub count: u64,
    pub sum: f64,
    /// Per bucket, not cumulative: `bounds.len() + 1` entries summing to `count`.
    pub bucket_counts: Vec<u64>,
    /// Recent observations with the span they came from, at most one per bucket.
    pub exemplars: Vec<Exemplar>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NumberPoint {
    pub identity: Identity,
    pub labels: Labels,
    pub start_unix_ns: u64,
    pub time_unix_ns: u64,
    pub value: u64,
}

/// An observation linked to the span it measured, so a latency spike opens a real trace.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Exemplar {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub value: f64,
    pub time_unix_ns: u64,
}

/// A producer of metrics. `collect` appends a snapshot of every family it has; it is called
/// from reader tasks, concurrently with the producer's own updates, so it must be cheap to
/// wait for (take a lock, copy, release).
pub trait MetricSource: Send + Sync {
    fn collect(&self, out: &mut Vec<MetricFamily>);
}

/// The producers a reader exports, in order.
pub type MetricSources = Vec<Arc<dyn MetricSource>>;

/// Snapshot of every source, in order.
pub fn collect_all(sources: &[Arc<dyn MetricSource>]) -> Vec<MetricFamily> {
    let mut out = Vec::new();
    for source in sources {
        source.collect(&mut out);
    }
    out
}
