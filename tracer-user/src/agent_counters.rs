//! The agent's own counters (today's counters/stats log line) as metrics, so an operator can
//! alert on loss: the event loop reads every counter once per tick into [`CounterReadings`],
//! logs them when the stats interval says so, and publishes them here; metric readers (the
//! Prometheus endpoint, OTLP metrics) collect the last published snapshot.
//!
//! Names: `tracer.<log name>` (Prometheus `tracer_<log name>_total` for counters, without
//! `_total` for the gauges `conns_open`, `links_open`, `queue_len`, `tls_files_attached`);
//! the kernel's drop counters are one family `tracer.kernel.drops` with a `cause` label,
//! traceparent injection's one family `tracer.injection.events` with an `event` label, the
//! samplers' decisions `tracer.sampling.traces` / `tracer.sampling.spans` with `decision`
//! (`kept`, `dropped`) and `reason` labels.
use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::metric::{MetricData, MetricFamily, MetricSource, NumberPoint};
use crate::pipeline::SamplingStats;
use crate::pipeline::sample::{DropReason, KeepReason};

/// Every counter of one tick, as the log line shows them.
pub struct CounterReadings {
    /// `(log name, value)`, in log order; each name is in [`AGENT_COUNTERS`].
    pub counters: Vec<(&'static str, u64)>,
    /// The kernel's drops by cause, or why they could not be read.
    pub kernel_drops: Result<BTreeMap<&'static str, u64>, String>,
    /// Injection's counters; `None` when injection is off.
    pub injection: Option<Result<BTreeMap<&'static str, u64>, String>>,
    /// The Kubernetes watcher's counters; `None` when it does not run.
    pub kube: Option<[(&'static str, u64); 5]>,
    /// The samplers' decisions.
    pub sampling: SamplingStats,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// How one counter of the log line is published.
pub struct AgentCounter {
    /// The name in the log line and the stats JSON.
    pub log_name: &'static str,
    /// The OpenTelemetry metric name.
    pub name: &'static str,
    pub kind: Kind,
    pub unit: &'static str,
    pub description: &'static str,
}

const fn counter(
    log_name: &'static str,
    name: &'static str,
    unit: &'static str,
    description: &'static str,
) -> AgentCounter {
    AgentCounter {
        log_name,
        name,
        kind: Kind::Counter,
        unit,
        description,
    }
}

const fn gauge(
    log_name: &'static str,
    name: &'static str,
    unit: &'static str,
    description: &'static str,
) -> AgentCounter {
    AgentCounter {
        kind: Kind::Gauge,
        ..counter(log_name, name, unit, description)
    }
}

/// Every counter of the log line. A counter added there must be added here too (a name
/// missing here is not published; the unit test checks the names are unique).
pub const AGENT_COUNTERS: &[AgentCounter] = &[
    counter(
        "events",
        "tracer.events",
        "{event}",
        "Kernel events read from the ring buffer.",
    ),
    counter(
        "data_events",
        "tracer.data_events",
        "{event}",
        "Kernel events carrying payload bytes.",
    ),
    counter(
        "malformed",
        "tracer.malformed",
        "{event}",
        "Ring buffer records that did not decode (dropped).",
    ),
    counter("spans", "tracer.spans", "{span}", "Spans built."),
    gauge(
        "conns_open",
        "tracer.conns_open",
        "{connection}",
        "Connections currently followed.",
    ),
    counter(
        "conns_opened",
        "tracer.conns_opened",
        "{connection}",
        "Connections followed since start.",
    ),
    counter(
        "conns_closed",
        "tracer.conns_closed",
        "{connection}",
        "Connections followed until they closed.",
    ),
    counter(
        "conns_expired",
        "tracer.conns_expired",
        "{connection}",
        "Connections forgotten after being idle.",
    ),
    counter(
        "conns_refused_full",
        "tracer.conns_refused_full",
        "{connection}",
        "Connections not followed: the connection table was full.",
    ),
    counter(
        "gaps",
        "tracer.gaps",
        "{gap}",
        "Holes in captured byte streams (payload the kernel could not copy).",
    ),
    counter(
        "gap_bytes",
        "tracer.gap_bytes",
        "By",
        "Bytes lost in stream gaps.",
    ),
    counter(
        "invalid_messages",
        "tracer.invalid_messages",
        "{message}",
        "Messages the protocol parsers rejected.",
    ),
    counter(
        "dropped_messages",
        "tracer.dropped_messages",
        "{message}",
        "Messages the protocol parsers dropped (limits, gaps).",
    ),
    counter(
        "unmatched_responses",
        "tracer.unmatched_responses",
        "{message}",
        "Responses without a request to pair with.",
    ),
    counter(
        "unanswered_requests",
        "tracer.unanswered_requests",
        "{message}",
        "Requests that never got a response.",
    ),
    counter(
        "h2_desyncs",
        "tracer.h2_desyncs",
        "{event}",
        "HTTP/2 streams where frame boundaries were lost.",
    ),
    counter(
        "h2_invalid",
        "tracer.h2_invalid",
        "{frame}",
        "Invalid HTTP/2 frames.",
    ),
    counter(
        "h2_dropped_blocks",
        "tracer.h2_dropped_blocks",
        "{block}",
        "HTTP/2 header blocks dropped.",
    ),
    counter(
        "h2_oversized_frames",
        "tracer.h2_oversized_frames",
        "{frame}",
        "HTTP/2 frames above the size limit.",
    ),
    counter(
        "h2_skipped_gaps",
        "tracer.h2_skipped_gaps",
        "{gap}",
        "Stream gaps HTTP/2 parsing skipped over.",
    ),
    counter(
        "h2_streams_over_limit",
        "tracer.h2_streams_over_limit",
        "{stream}",
        "HTTP/2 streams not followed: per-connection limit.",
    ),
    counter(
        "h2_streams_reset",
        "tracer.h2_streams_reset",
        "{stream}",
        "HTTP/2 streams reset by a peer.",
    ),
    counter(
        "h2_unknown_fields",
        "tracer.h2_unknown_fields",
        "{field}",
        "HPACK header fields that could not be decoded.",
    ),
    gauge(
        "links_open",
        "tracer.links_open",
        "{link}",
        "Pending parent/child links held.",
    ),
    counter(
        "links_linked",
        "tracer.links_linked",
        "{link}",
        "Client spans linked to their server span.",
    ),
    counter(
        "links_ambiguous",
        "tracer.links_ambiguous",
        "{link}",
        "Links not made: more than one candidate parent.",
    ),
    counter(
        "links_refused_full",
        "tracer.links_refused_full",
        "{link}",
        "Links not made: the link table was full.",
    ),
    counter(
        "links_injected",
        "tracer.links_injected",
        "{link}",
        "Links made through an injected traceparent.",
    ),
    counter(
        "links_injected_unlinked",
        "tracer.links_injected_unlinked",
        "{link}",
        "Injected traceparents whose server span was not seen.",
    ),
    counter(
        "address_linked",
        "tracer.address_linked",
        "{link}",
        "Spans linked across same-node connections by address.",
    ),
    counter(
        "nat_lookups",
        "tracer.nat_lookups",
        "{lookup}",
        "Conntrack lookups for SERVER connections without a same-node caller.",
    ),
    counter(
        "nat_resolved",
        "tracer.nat_resolved",
        "{lookup}",
        "Conntrack lookups that found a translated (DNAT/SNAT) connection.",
    ),
    counter(
        "nat_lookup_failed",
        "tracer.nat_lookup_failed",
        "{lookup}",
        "Conntrack lookups that failed (error, timeout, malformed reply): no link made.",
    ),
    counter(
        "nat_linked",
        "tracer.nat_linked",
        "{link}",
        "Spans linked through a Service virtual IP (by the address the client dialled).",
    ),
    counter(
        "forwarded_linked",
        "tracer.forwarded_linked",
        "{link}",
        "CLIENT spans that forwarded the context an open SERVER request of their process received (a proxy), made that request's children.",
    ),
    counter(
        "forwarded_rewritten",
        "tracer.forwarded_rewritten",
        "{link}",
        "Of the forwarded requests, those whose traceparent the kernel rewrote to name the proxy's CLIENT span.",
    ),
    counter(
        "connection_won",
        "tracer.connection_won",
        "{link}",
        "SERVER spans whose header named an ancestor of the same-node CLIENT span that sent them: linked to that CLIENT span.",
    ),
    gauge(
        "kube_pods",
        "tracer.kube_pods",
        "{pod}",
        "Pods of this node the Kubernetes watcher knows.",
    ),
    gauge(
        "kube_services",
        "tracer.kube_services",
        "{service}",
        "Services (cluster IPs) the Kubernetes watcher knows.",
    ),
    counter(
        "kube_events",
        "tracer.kube_events",
        "{event}",
        "Watch events received from the Kubernetes API server.",
    ),
    counter(
        "kube_relists",
        "tracer.kube_relists",
        "{list}",
        "Full re-lists of pods or Services (start, 410 Gone, reconnect).",
    ),
    counter(
        "kube_watch_errors",
        "tracer.kube_watch_errors",
        "{error}",
        "Errors of the Kubernetes watches (each retried with backoff).",
    ),
    gauge(
        "tls_files_attached",
        "tracer.tls_files_attached",
        "{file}",
        "Files (TLS libraries, Go binaries) with TLS probes attached.",
    ),
    counter(
        "tls_attach_failed",
        "tracer.tls_attach_failed",
        "{file}",
        "TLS probe attachments that failed.",
    ),
    counter(
        "tls_unsupported",
        "tracer.tls_unsupported",
        "{file}",
        "Files whose TLS library is not supported.",
    ),
    counter(
        "tls_queue_full",
        "tracer.tls_queue_full",
        "{note}",
        "Process exec/exit notes the TLS scanner's queue could not take at once (kept and offered again).",
    ),
    counter(
        "tls_notes_dropped",
        "tracer.tls_notes_dropped",
        "{note}",
        "Process exec/exit notes lost because the TLS scanner's backlog was full (those processes may miss TLS probes).",
    ),
    counter(
        "tls_detached",
        "tracer.tls_detached",
        "{file}",
        "TLS probes detached (file no longer mapped).",
    ),
    counter(
        "exported",
        "tracer.exported",
        "{span}",
        "Spans delivered to the trace exporter's destination.",
    ),
    counter(
        "export_failed",
        "tracer.export_failed",
        "{span}",
        "Spans whose export failed for good.",
    ),
    counter(
        "export_queue_full",
        "tracer.export_queue_full",
        "{span}",
        "Spans dropped: the export queue was full.",
    ),
    gauge(
        "queue_len",
        "tracer.queue_len",
        "{span}",
        "Spans waiting in the export queue.",
    ),
    // The database parsers' losses by protocol (`conn::db_losses`).
    counter(
        "postgres_gaps",
        "tracer.postgres_gaps",
        "{gap}",
        "Holes in PostgreSQL client connections' byte streams (their calls since are not reported).",
    ),
    counter(
        "postgres_invalid_messages",
        "tracer.postgres_invalid_messages",
        "{event}",
        "PostgreSQL connections whose framing was lost (a gap, an impossible length, a desync): no span from them afterwards.",
    ),
    counter(
        "postgres_dropped_calls",
        "tracer.postgres_dropped_calls",
        "{call}",
        "PostgreSQL calls waiting for their result when their connection's framing was lost (no span).",
    ),
    counter(
        "postgres_unmatched_responses",
        "tracer.postgres_unmatched_responses",
        "{message}",
        "PostgreSQL results or replies without a call to pair with.",
    ),
    counter(
        "postgres_unanswered_calls",
        "tracer.postgres_unanswered_calls",
        "{call}",
        "PostgreSQL calls without a result when their connection closed or expired (no span).",
    ),
    counter(
        "mysql_gaps",
        "tracer.mysql_gaps",
        "{gap}",
        "Holes in MySQL/MariaDB client connections' byte streams (their calls since are not reported).",
    ),
    counter(
        "mysql_invalid_messages",
        "tracer.mysql_invalid_messages",
        "{event}",
        "MySQL/MariaDB connections whose framing was lost (a gap, an impossible length, a desync): no span from them afterwards.",
    ),
    counter(
        "mysql_dropped_calls",
        "tracer.mysql_dropped_calls",
        "{call}",
        "MySQL/MariaDB calls waiting for their result when their connection's framing was lost (no span).",
    ),
    counter(
        "mysql_unmatched_responses",
        "tracer.mysql_unmatched_responses",
        "{message}",
        "MySQL/MariaDB results or replies without a call to pair with.",
    ),
    counter(
        "mysql_unanswered_calls",
        "tracer.mysql_unanswered_calls",
        "{call}",
        "MySQL/MariaDB calls without a result when their connection closed or expired (no span).",
    ),
    counter(
        "redis_gaps",
        "tracer.redis_gaps",
        "{gap}",
        "Holes in Redis client connections' byte streams (their calls since are not reported).",
    ),
    counter(
        "redis_invalid_messages",
        "tracer.redis_invalid_messages",
        "{event}",
        "Redis connections whose framing was lost (a gap, an impossible length, a desync): no span from them afterwards.",
    ),
    counter(
        "redis_dropped_calls",
        "tracer.redis_dropped_calls",
        "{call}",
        "Redis calls waiting for their result when their connection's framing was lost (no span).",
    ),
    counter(
        "redis_unmatched_responses",
        "tracer.redis_unmatched_responses",
        "{message}",
        "Redis results or replies without a call to pair with.",
    ),
    counter(
        "redis_unanswered_calls",
        "tracer.redis_unanswered_calls",
        "{call}",
        "Redis calls without a result when their connection closed or expired (no span).",
    ),
];

const KERNEL_DROPS: &str = "tracer.kernel.drops";
const INJECTION: &str = "tracer.injection.events";

/// The last published snapshot.
pub struct AgentCounters {
    start_unix_ns: u64,
    families: Mutex<Vec<MetricFamily>>,
}

impl AgentCounters {
    /// `start_unix_ns`: when the agent started (the counters' cumulative start time).
    pub fn new(start_unix_ns: u64) -> Self {
        Self {
            start_unix_ns,
            families: Mutex::new(Vec::new()),
        }
    }

    /// Replaces the snapshot with `readings`, taken at `now_unix_ns`. Counters that could not
    /// be read are left out rather than reported as zero.
    pub fn publish(&self, readings: &CounterReadings, now_unix_ns: u64) {
        let point = |labels, value| NumberPoint {
            identity: Vec::new(),
            labels,
            start_unix_ns: self.start_unix_ns,
            time_unix_ns: now_unix_ns,
            value,
        };
        let mut families = Vec::with_capacity(readings.counters.len() + 2);
        let kube = readings.kube.iter().flatten();
        for (log_name, value) in readings.counters.iter().chain(kube) {
            let Some(c) = AGENT_COUNTERS.iter().find(|c| c.log_name == *log_name) else {
                continue;
            };
            let points = vec![point(Vec::new(), *value)];
            families.push(MetricFamily {
                name: c.name,
                description: c.description,
                unit: c.unit,
                data: match c.kind {
                    Kind::Counter => MetricData::Counter(points),
                    Kind::Gauge => MetricData::Gauge(points),
                },
            });
        }
        let labelled = |label: &'static str, m: &BTreeMap<&'static str, u64>| -> Vec<NumberPoint> {
            m.iter()
                .map(|(k, v)| point(vec![(label, (*k).to_owned())], *v))
                .collect()
        };
        if let Ok(drops) = &readings.kernel_drops {
            families.push(MetricFamily {
                name: KERNEL_DROPS,
                description: "Events the kernel programs dropped, by cause (ringbuf_full: the \
                              agent fell behind; *_map_full: a kernel table was full; ...).",
                unit: "{event}",
                data: MetricData::Counter(labelled("cause", drops)),
            });
        }
        if let Some(Ok(injection)) = &readings.injection {
            families.push(MetricFamily {
                name: INJECTION,
                description: "Traceparent injection in the kernel, by event.",
                unit: "{event}",
                data: MetricData::Counter(labelled("event", injection)),
            });
        }
        families.extend(sampling_families(&readings.sampling, point));
        *self.families.lock().unwrap_or_else(|e| e.into_inner()) = families;
    }
}

/// The samplers' decisions as two labelled counters (traces, spans), the late spans as one,
/// and what the tail sampler holds as gauges.
fn sampling_families(
    s: &SamplingStats,
    point: impl Fn(crate::metric::Labels, u64) -> NumberPoint,
) -> Vec<MetricFamily> {
    let decided = |kept: &[u64; 4], dropped: &[u64; 2]| -> Vec<NumberPoint> {
        let kept = KeepReason::ALL
            .iter()
            .map(|r| ("kept", r.name(), kept[*r as usize]));
        let dropped = DropReason::ALL
            .iter()
            .map(|r| ("dropped", r.name(), dropped[*r as usize]));
        kept.chain(dropped)
            .map(|(d, r, v)| {
                point(
                    vec![("decision", d.to_owned()), ("reason", r.to_owned())],
                    v,
                )
            })
            .collect()
    };
    vec![
        MetricFamily {
            name: "tracer.sampling.traces",
            description: "Traces decided by the samplers, by decision and reason.",
            unit: "{trace}",
            data: MetricData::Counter(decided(&s.traces_kept, &s.traces_dropped)),
        },
        MetricFamily {
            name: "tracer.sampling.spans",
            description: "Spans kept or dropped by the samplers, by decision and reason.",
            unit: "{span}",
            data: MetricData::Counter(decided(&s.spans_kept, &s.spans_dropped)),
        },
        MetricFamily {
            name: "tracer.sampling.late_spans",
            description: "Spans that arrived after their trace's tail decision and followed it.",
            unit: "{span}",
            data: MetricData::Counter(vec![
                point(vec![("decision", "kept".to_owned())], s.late_spans_kept),
                point(
                    vec![("decision", "dropped".to_owned())],
                    s.late_spans_dropped,
                ),
            ]),
        },
        MetricFamily {
            name: "tracer.sampling.held_traces",
            description: "Traces the tail sampler holds, waiting for their decision.",
            unit: "{trace}",
            data: MetricData::Gauge(vec![point(Vec::new(), s.held_traces)]),
        },
        MetricFamily {
            name: "tracer.sampling.held",
            description: "Bytes of the spans the tail sampler holds.",
            unit: "By",
            data: MetricData::Gauge(vec![point(Vec::new(), s.held_bytes)]),
        },
    ]
}

impl MetricSource for AgentCounters {
    fn collect(&self, out: &mut Vec<MetricFamily>) {
        out.extend(
            self.families
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::prometheus::{Format, encode};

    #[test]
    fn names_are_unique_and_in_the_tracer_namespace() {
        for (i, c) in AGENT_COUNTERS.iter().enumerate() {
            assert_eq!(c.name, format!("tracer.{}", c.log_name));
            assert!(
                AGENT_COUNTERS[i + 1..]
                    .iter()
                    .all(|d| d.log_name != c.log_name),
                "{} twice",
                c.log_name
            );
        }
    }

    #[test]
    fn every_database_loss_counter_is_a_prometheus_counter() {
        let mut losses = crate::conn::db_losses::DbLosses::default();
        losses.postgres.parse.invalid_messages = 3;
        losses.redis.gaps = 2;
        let source = AgentCounters::new(1);
        source.publish(
            &CounterReadings {
                counters: losses.readings().to_vec(),
                kernel_drops: Err("not read".into()),
                injection: None,
                kube: None,
                sampling: SamplingStats::default(),
            },
            2,
        );
        let mut families = Vec::new();
        source.collect(&mut families);
        let text = encode(&families, Format::Classic);
        for (name, value) in losses.readings() {
            let line = format!("# TYPE tracer_{name}_total counter\ntracer_{name}_total {value}\n");
            assert!(text.contains(&line), "{line:?} in\n{text}");
        }
        assert!(text.contains("tracer_postgres_invalid_messages_total 3\n"));
        assert!(text.contains("tracer_redis_gaps_total 2\n"));
    }

    #[test]
    fn publishes_counters_gauges_and_drops_by_cause() {
        let source = AgentCounters::new(1);
        source.publish(
            &CounterReadings {
                counters: vec![("events", 10), ("queue_len", 3), ("gap_bytes", 5)],
                kernel_drops: Ok(BTreeMap::from([("ringbuf_full", 2), ("copy_failed", 0)])),
                injection: Some(Err("map gone".into())),
                kube: Some([
                    ("kube_pods", 4),
                    ("kube_services", 2),
                    ("kube_events", 9),
                    ("kube_relists", 1),
                    ("kube_watch_errors", 0),
                ]),
                sampling: SamplingStats {
                    traces_kept: [3, 1, 0, 0],
                    ..SamplingStats::default()
                },
            },
            2,
        );
        let mut families = Vec::new();
        source.collect(&mut families);
        let text = encode(&families, Format::Classic);
        for line in [
            "# TYPE tracer_events_total counter\ntracer_events_total 10\n",
            "# TYPE tracer_queue_len gauge\ntracer_queue_len 3\n",
            "tracer_gap_bytes_total 5\n",
            "tracer_kernel_drops_total{cause=\"copy_failed\"} 0\n",
            "tracer_kernel_drops_total{cause=\"ringbuf_full\"} 2\n",
            "# TYPE tracer_kube_pods gauge\ntracer_kube_pods 4\n",
            "tracer_kube_relists_total 1\n",
            "tracer_sampling_traces_total{decision=\"kept\",reason=\"head\"} 3\n",
            "tracer_sampling_held_bytes 0\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
        assert!(
            !text.contains("injection"),
            "unreadable counters are left out"
        );
    }
}
