//! OTLP metrics: every `--metric-export-interval`, a snapshot of every metric source goes out
//! as one `ExportMetricsServiceRequest` over gRPC or HTTP/protobuf (cumulative temporality,
//! exemplars included), points grouped into resources by their identity.
//!
//! Bounded like span export: one snapshot in flight at a time (values are cumulative, so an
//! export skipped while the previous one still runs loses nothing: the next carries the
//! totals); each request has `--otlp-metrics-timeout`, one export's retries stop after
//! `--metric-export-timeout`; retryable failures (unreachable, UNAVAILABLE, HTTP 429/502/
//! 503/504) back off exponentially from 200 ms to 5 s, jittered, as for spans. Failed exports
//! are counted (`tracer.metrics.export.failed`) and warned about at most every 30 s. At
//! shutdown one final export runs, bounded by the request timeout.
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, metrics_service_client::MetricsServiceClient,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1 as proto;
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::codec::CompressionEncoding;
use tonic::metadata::MetadataMap;

use super::config::{Compression, ExportConfig, Target};
use super::metrics_config::OtlpMetricsConfig;
use super::otlp::{SCOPE_NAME, SCOPE_VERSION};
use super::retry::{INITIAL_BACKOFF, Jitter, MAX_BACKOFF, WarnThrottle};
use super::transport::{
    ExportError, HttpTransport, Sent, grpc_channel, grpc_metadata, grpc_retryable,
};
use crate::metric::{
    self, Exemplar, HistogramPoint, Identity, MetricData, MetricFamily, MetricSource,
    MetricSources, NumberPoint,
};

/// The resource of points without an identity (the agent's own counters).
const AGENT_SERVICE_NAME: &str = "tracer";

/// The exporter's own counters, a metric source like any other.
#[derive(Debug)]
pub struct MetricsExportStats {
    start_unix_ns: u64,
    /// Exports whose data points the receiver accepted.
    exports: AtomicU64,
    /// Exports abandoned: non-retryable error, retries exhausted, or shutdown deadline.
    failed: AtomicU64,
    /// Data points the receiver accepted.
    points: AtomicU64,
}

impl MetricsExportStats {
    pub fn new(start_unix_ns: u64) -> Self {
        Self {
            start_unix_ns,
            exports: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            points: AtomicU64::new(0),
        }
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Relaxed)
    }

    pub fn exports(&self) -> u64 {
        self.exports.load(Relaxed)
    }
}

impl MetricSource for MetricsExportStats {
    fn collect(&self, out: &mut Vec<MetricFamily>) {
        let now = unix_now_ns();
        let point = |value| {
            vec![NumberPoint {
                identity: Vec::new(),
                labels: Vec::new(),
                start_unix_ns: self.start_unix_ns,
                time_unix_ns: now,
                value,
            }]
        };
        out.extend([
            MetricFamily {
                name: "tracer.metrics.exports",
                description: "OTLP metric exports the receiver accepted.",
                unit: "{export}",
                data: MetricData::Counter(point(self.exports.load(Relaxed))),
            },
            MetricFamily {
                name: "tracer.metrics.export.failed",
                description: "OTLP metric exports abandoned (non-retryable error, retries \
                              exhausted, or shutdown).",
                unit: "{export}",
                data: MetricData::Counter(point(self.failed.load(Relaxed))),
            },
            MetricFamily {
                name: "tracer.metrics.exported_points",
                description: "Metric data points the OTLP receiver accepted.",
                unit: "{point}",
                data: MetricData::Counter(point(self.points.load(Relaxed))),
            },
        ]);
    }
}

fn unix_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Owns the export task.
pub struct OtlpMetricsHandle {
    task: JoinHandle<()>,
    shutdown: watch::Sender<Option<Instant>>,
    timeout: Duration,
    description: String,
}

impl OtlpMetricsHandle {
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Runs the final export (everything collected up to now) and returns within about the
    /// request timeout.
    pub async fn shutdown(mut self) {
        let deadline = Instant::now() + self.timeout;
        self.shutdown.send_replace(Some(deadline));
        let grace = deadline + Duration::from_millis(500);
        if tokio::time::timeout_at(grace, &mut self.task)
            .await
            .is_err()
        {
            tracing::warn!("the final OTLP metrics export did not finish in time; abandoning it");
            self.task.abort();
        }
    }
}

/// Starts the exporter on the current tokio runtime.
pub fn spawn(
    cfg: OtlpMetricsConfig,
    sources: MetricSources,
    stats: Arc<MetricsExportStats>,
) -> anyhow::Result<OtlpMetricsHandle> {
    let (backend, description) = match &cfg.transport.target {
        Target::Grpc(url) => {
            let (client, metadata) = grpc_client(url, &cfg.transport)?;
            (Backend::Grpc(client, metadata), format!("OTLP/gRPC {url}"))
        }
        Target::Http(url) => (
            Backend::Http(HttpTransport::new(url, &cfg.transport)?),
            format!("OTLP/HTTP {url}"),
        ),
        Target::Console | Target::None => anyhow::bail!("OTLP metrics need an OTLP endpoint"),
    };
    let (shutdown, shutdown_rx) = watch::channel(None);
    let timeout = cfg.transport.timeout;
    let worker = Worker {
        host_name: host_name(),
        backend,
        sources,
        stats,
        shutdown: shutdown_rx,
        description: description.clone(),
        healthy: true,
        warnings: WarnThrottle::default(),
        jitter: Jitter::new(),
        cfg,
    };
    Ok(OtlpMetricsHandle {
        task: tokio::spawn(worker.run()),
        shutdown,
        timeout,
        description,
    })
}

type GrpcClient = MetricsServiceClient<tonic::transport::Channel>;

enum Backend {
    Grpc(GrpcClient, MetadataMap),
    Http(HttpTransport),
}

/// The traces' channel (`transport::grpc_channel`) for the metrics service.
fn grpc_client(url: &str, cfg: &ExportConfig) -> anyhow::Result<(GrpcClient, MetadataMap)> {
    let channel = grpc_channel(url, cfg).context("metrics")?;
    let mut client = MetricsServiceClient::new(channel)
        .max_encoding_message_size(usize::MAX)
        .accept_compressed(CompressionEncoding::Gzip);
    if cfg.compression == Compression::Gzip {
        client = client.send_compressed(CompressionEncoding::Gzip);
    }
    Ok((client, grpc_metadata(cfg)))
}

async fn grpc_send(
    client: &mut GrpcClient,
    metadata: &MetadataMap,
    req: ExportMetricsServiceRequest,
    timeout: Duration,
) -> Result<Sent, ExportError> {
    let mut request = tonic::Request::new(req);
    *request.metadata_mut() = metadata.clone();
    request.set_timeout(timeout);
    let error = |retryable, message| ExportError {
        retryable,
        retry_after: None,
        message,
    };
    match tokio::time::timeout(timeout, client.export(request)).await {
        Err(_) => Err(error(
            true,
            format!("no answer within {} ms", timeout.as_millis()),
        )),
        Ok(Ok(resp)) => Ok(match resp.into_inner().partial_success {
            Some(p) => Sent {
                rejected: u64::try_from(p.rejected_data_points).unwrap_or(0),
                message: p.error_message,
            },
            None => Sent::default(),
        }),
        Ok(Err(status)) => {
            let retryable = grpc_retryable(status.code());
            Err(error(
                retryable,
                format!("gRPC {:?}: {}", status.code(), status.message()),
            ))
        }
    }
}

struct Worker {
    host_name: Option<String>,
    backend: Backend,
    sources: MetricSources,
    stats: Arc<MetricsExportStats>,
    shutdown: watch::Receiver<Option<Instant>>,
    cfg: OtlpMetricsConfig,
    description: String,
    healthy: bool,
    warnings: WarnThrottle,
    jitter: Jitter,
}

impl Worker {
    async fn run(mut self) {
        let mut every =
            tokio::time::interval_at(Instant::now() + self.cfg.interval, self.cfg.interval);
        // An export longer than the interval delays the next one instead of queueing more.
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {
                    let deadline = Instant::now() + self.cfg.export_timeout;
                    self.export(deadline).await;
                }
                changed = self.shutdown.changed() => {
                    if changed.is_err() || self.shutdown.borrow().is_some() {
                        break;
                    }
                }
            }
        }
        let deadline = self
            .shutdown
            .borrow()
            .unwrap_or_else(|| Instant::now() + self.cfg.transport.timeout);
        self.export(deadline).await;
    }

    fn effective_deadline(&self, deadline: Instant) -> Instant {
        self.shutdown.borrow().map_or(deadline, |s| s.min(deadline))
    }

    /// Collects every source and exports the snapshot, retrying until `deadline`.
    async fn export(&mut self, deadline: Instant) {
        let families = metric::collect_all(&self.sources);
        let req = export_request(&families, self.host_name.as_deref());
        let points = data_points(&req);
        if points == 0 {
            return;
        }
        let body = match &self.backend {
            Backend::Http(_) => encode_body(&req, self.cfg.transport.compression),
            Backend::Grpc(..) => Bytes::new(),
        };
        let mut backoff = INITIAL_BACKOFF;
        loop {
            let now = Instant::now();
            let dl = self.effective_deadline(deadline);
            if now >= dl {
                return self.failed("deadline reached");
            }
            let timeout = self.cfg.transport.timeout.min(dl - now);
            let r = match &mut self.backend {
                Backend::Grpc(client, metadata) => {
                    grpc_send(client, metadata, req.clone(), timeout).await
                }
                // The traces' HTTP transport: its response decoding reads a metrics
                // response too (same fields: partial_success {rejected = 1, message = 2}).
                Backend::Http(h) => h.send(body.clone(), timeout).await,
            };
            match r {
                Ok(sent) => {
                    self.stats.exports.fetch_add(1, Relaxed);
                    self.stats
                        .points
                        .fetch_add(points.saturating_sub(sent.rejected), Relaxed);
                    if sent.rejected > 0 {
                        let msg = format!(
                            "{}: receiver rejected {} of {points} metric points: {}",
                            self.description, sent.rejected, sent.message
                        );
                        self.warnings.warn(&msg);
                    }
                    if !self.healthy {
                        tracing::info!("metric export to {} recovered", self.description);
                        self.healthy = true;
                    }
                    return;
                }
                Err(e) if !e.retryable => return self.failed(&e.message),
                Err(e) => {
                    if self.healthy {
                        self.healthy = false;
                        self.warnings.warn(&format!(
                            "metric export to {} failing: {e} (retrying)",
                            self.description
                        ));
                    }
                    let wait = self
                        .jitter
                        .apply(backoff)
                        .max(e.retry_after.unwrap_or_default());
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    let wake = Instant::now() + wait;
                    loop {
                        if wake >= self.effective_deadline(deadline) {
                            return self.failed(&format!("retries exhausted ({e})"));
                        }
                        tokio::select! {
                            _ = tokio::time::sleep_until(wake) => break,
                            _ = self.shutdown.changed() => {}
                        }
                    }
                }
            }
        }
    }

    fn failed(&mut self, why: &str) {
        self.stats.failed.fetch_add(1, Relaxed);
        let msg = format!("{}: metric export failed: {why}", self.description);
        self.warnings.warn(&msg);
    }
}

/// This machine's name, as traces' resources carry it (`host.name`).
fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn encode_body(req: &ExportMetricsServiceRequest, compression: Compression) -> Bytes {
    let raw = req.encode_to_vec();
    if compression == Compression::None {
        return raw.into();
    }
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(raw.len() / 4 + 64),
        flate2::Compression::fast(),
    );
    // Writing to a Vec cannot fail.
    match gz.write_all(&raw).and_then(|()| gz.finish()) {
        Ok(v) => v.into(),
        Err(_) => Bytes::new(),
    }
}

fn data_points(req: &ExportMetricsServiceRequest) -> u64 {
    req.resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .map(|m| match &m.data {
            Some(proto::metric::Data::Histogram(h)) => h.data_points.len(),
            Some(proto::metric::Data::Sum(s)) => s.data_points.len(),
            Some(proto::metric::Data::Gauge(g)) => g.data_points.len(),
            _ => 0,
        } as u64)
        .sum()
}

fn string_kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
    }
}

fn attributes(labels: &[(&str, String)]) -> Vec<KeyValue> {
    labels.iter().map(|(k, v)| string_kv(k, v)).collect()
}

/// Builds one request from a snapshot: one resource per distinct identity (in order of first
/// appearance), each with the `tracer` scope and, per family, the points of that identity.
pub fn export_request(
    families: &[MetricFamily],
    host_name: Option<&str>,
) -> ExportMetricsServiceRequest {
    let mut grouping = Grouping {
        identities: Vec::new(),
        resources: Vec::new(),
        host_name,
    };
    for family in families {
        // Per resource index, this family's points for it.
        let mut per_resource: Vec<(usize, proto::metric::Data)> = Vec::new();
        match &family.data {
            MetricData::Histogram { bounds, points } => {
                for p in points {
                    let j = slot(&mut grouping, &mut per_resource, &p.identity, &family.data);
                    if let proto::metric::Data::Histogram(h) = &mut per_resource[j].1 {
                        h.data_points.push(histogram_point(p, bounds));
                    }
                }
            }
            MetricData::Counter(points) | MetricData::Gauge(points) => {
                for p in points {
                    let j = slot(&mut grouping, &mut per_resource, &p.identity, &family.data);
                    match &mut per_resource[j].1 {
                        proto::metric::Data::Sum(s) => s.data_points.push(number_point(p)),
                        proto::metric::Data::Gauge(g) => g.data_points.push(number_point(p)),
                        _ => {}
                    }
                }
            }
        }
        for (i, data) in per_resource {
            grouping.resources[i].scope_metrics[0]
                .metrics
                .push(proto::Metric {
                    name: family.name.to_owned(),
                    description: family.description.to_owned(),
                    unit: family.unit.to_owned(),
                    metadata: Vec::new(),
                    data: Some(data),
                });
        }
    }
    ExportMetricsServiceRequest {
        resource_metrics: grouping
            .resources
            .into_iter()
            .filter(|r| !r.scope_metrics[0].metrics.is_empty())
            .collect(),
    }
}

/// The resources of a request under construction, one per identity.
struct Grouping<'a> {
    identities: Vec<&'a Identity>,
    resources: Vec<proto::ResourceMetrics>,
    host_name: Option<&'a str>,
}

/// The index in `per_resource` of the entry for `identity`'s resource, added (with an
/// empty `data` of the family's type, and the resource itself if new) on first use.
fn slot<'a>(
    grouping: &mut Grouping<'a>,
    per_resource: &mut Vec<(usize, proto::metric::Data)>,
    identity: &'a Identity,
    data: &MetricData,
) -> usize {
    let i = match grouping.identities.iter().position(|id| *id == identity) {
        Some(i) => i,
        None => {
            grouping.identities.push(identity);
            grouping
                .resources
                .push(resource_metrics(identity, grouping.host_name));
            grouping.identities.len() - 1
        }
    };
    match per_resource.iter().position(|(r, _)| *r == i) {
        Some(j) => j,
        None => {
            per_resource.push((i, empty_data(data)));
            per_resource.len() - 1
        }
    }
}

fn resource_metrics(identity: &Identity, host_name: Option<&str>) -> proto::ResourceMetrics {
    let mut attrs = attributes(identity);
    if !identity.iter().any(|(k, _)| *k == "service.name") {
        attrs.push(string_kv("service.name", AGENT_SERVICE_NAME));
    }
    if let Some(h) = host_name
        && !identity.iter().any(|(k, _)| *k == "host.name")
    {
        attrs.push(string_kv("host.name", h));
    }
    proto::ResourceMetrics {
        resource: Some(Resource {
            attributes: attrs,
            dropped_attributes_count: 0,
            entity_refs: Vec::new(),
        }),
        scope_metrics: vec![proto::ScopeMetrics {
            scope: Some(InstrumentationScope {
                name: SCOPE_NAME.to_owned(),
                version: SCOPE_VERSION.to_owned(),
                attributes: Vec::new(),
                dropped_attributes_count: 0,
            }),
            metrics: Vec::new(),
            schema_url: String::new(),
        }],
        schema_url: String::new(),
    }
}

fn empty_data(data: &MetricData) -> proto::metric::Data {
    let cumulative = proto::AggregationTemporality::Cumulative as i32;
    match data {
        MetricData::Histogram { .. } => proto::metric::Data::Histogram(proto::Histogram {
            data_points: Vec::new(),
            aggregation_temporality: cumulative,
        }),
        MetricData::Counter(_) => proto::metric::Data::Sum(proto::Sum {
            data_points: Vec::new(),
            aggregation_temporality: cumulative,
            is_monotonic: true,
        }),
        MetricData::Gauge(_) => proto::metric::Data::Gauge(proto::Gauge {
            data_points: Vec::new(),
        }),
    }
}

fn histogram_point(p: &HistogramPoint, bounds: &[f64]) -> proto::HistogramDataPoint {
    proto::HistogramDataPoint {
        attributes: attributes(&p.labels),
        start_time_unix_nano: p.start_unix_ns,
        time_unix_nano: p.time_unix_ns,
        count: p.count,
        sum: Some(p.sum),
        bucket_counts: p.bucket_counts.clone(),
        explicit_bounds: bounds.to_vec(),
        exemplars: p.exemplars.iter().map(exemplar).collect(),
        flags: 0,
        min: None,
        max: None,
    }
}

fn number_point(p: &NumberPoint) -> proto::NumberDataPoint {
    proto::NumberDataPoint {
        attributes: attributes(&p.labels),
        start_time_unix_nano: p.start_unix_ns,
        time_unix_nano: p.time_unix_ns,
        exemplars: Vec::new(),
        flags: 0,
        value: Some(proto::number_data_point::Value::AsInt(
            i64::try_from(p.value).unwrap_or(i64::MAX),
        )),
    }
}

fn exemplar(e: &Exemplar) -> proto::Exemplar {
    proto::Exemplar {
        filtered_attributes: Vec::new(),
        time_unix_nano: e.time_unix_ns,
        span_id: e.span_id.to_vec(),
        trace_id: e.trace_id.to_vec(),
        value: Some(proto::exemplar::Value::AsDouble(e.value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(service: Option<&str>, value: u64) -> NumberPoint {
        NumberPoint {
            identity: service
                .map(|s| vec![("service.name", s.to_owned())])
                .unwrap_or_default(),
            labels: vec![("cause", "x".into())],
            start_unix_ns: 1,
            time_unix_ns: 2,
            value,
        }
    }

    #[test]
    fn groups_points_by_identity_with_cumulative_temporality() {
        let families = vec![
            MetricFamily {
                name: "tracer.events",
                description: "d",
                unit: "{event}",
                data: MetricData::Counter(vec![counter(None, 5)]),
            },
            MetricFamily {
                name: "http.server.request.duration",
                description: "d",
                unit: "s",
                data: MetricData::Histogram {
                    bounds: Arc::from([0.1, 1.0]),
                    points: vec![
                        HistogramPoint {
                            identity: vec![("service.name", "a".into())],
                            labels: vec![("http.route", "/x".into())],
                            start_unix_ns: 1,
                            time_unix_ns: 2,
                            count: 2,
                            sum: 0.6,
                            bucket_counts: vec![1, 1, 0],
                            exemplars: vec![Exemplar {
                                trace_id: [1; 16],
                                span_id: [2; 8],
                                value: 0.5,
                                time_unix_ns: 3,
                            }],
                        },
                        HistogramPoint {
                            identity: vec![("service.name", "b".into())],
                            labels: Vec::new(),
                            start_unix_ns: 1,
                            time_unix_ns: 2,
                            count: 0,
                            sum: 0.0,
                            bucket_counts: vec![0, 0, 0],
                            exemplars: Vec::new(),
                        },
                    ],
                },
            },
            MetricFamily {
                name: "tracer.queue_len",
                description: "d",
                unit: "{span}",
                data: MetricData::Gauge(vec![counter(Some("a"), 3)]),
            },
        ];
        let req = export_request(&families, Some("node-1"));
        let services: Vec<String> = req
            .resource_metrics
            .iter()
            .map(|r| {
                let attrs = &r.resource.as_ref().unwrap().attributes;
                assert!(attrs.contains(&string_kv("host.name", "node-1")));
                match &attrs[0].value.as_ref().unwrap().value {
                    Some(any_value::Value::StringValue(s)) => s.clone(),
                    _ => String::new(),
                }
            })
            .collect();
        assert_eq!(services, ["tracer", "a", "b"]);
        let a = &req.resource_metrics[1].scope_metrics[0];
        assert_eq!(a.scope.as_ref().unwrap().name, "tracer");
        let names: Vec<&str> = a.metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["http.server.request.duration", "tracer.queue_len"]);
        let Some(proto::metric::Data::Histogram(h)) = &a.metrics[0].data else {
            panic!("histogram expected: {:?}", a.metrics[0]);
        };
        assert_eq!(
            h.aggregation_temporality,
            proto::AggregationTemporality::Cumulative as i32
        );
        assert_eq!(h.data_points[0].bucket_counts, [1, 1, 0]);
        assert_eq!(h.data_points[0].explicit_bounds, [0.1, 1.0]);
        assert_eq!(h.data_points[0].exemplars[0].trace_id, vec![1; 16]);
        let tracer = &req.resource_metrics[0].scope_metrics[0].metrics[0];
        let Some(proto::metric::Data::Sum(s)) = &tracer.data else {
            panic!("sum expected");
        };
        assert!(s.is_monotonic);
        assert_eq!(
            s.data_points[0].value,
            Some(proto::number_data_point::Value::AsInt(5))
        );
        assert_eq!(data_points(&req), 4);
    }
}
