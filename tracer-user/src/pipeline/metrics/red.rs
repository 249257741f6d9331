//! Request duration histograms (rate, errors and duration from one instrument) with the
//! semantic conventions' names and attributes: HTTP server and client, and for gRPC calls the
//! RPC call durations instead (a gRPC span counts in the RPC histogram only, not also in the
//! HTTP one: one call, one observation).
//!
//! The RPC attributes are the ones our gRPC spans carry (`rpc.system`, `rpc.service`,
//! `rpc.method`, `rpc.grpc.status_code`); the current RPC conventions renamed them
//! (`rpc.system.name`, `rpc.method` = `service/method`, `rpc.response.status_code`), and the
//! histograms follow the spans so that a metric and its exemplar's span agree.
use std::sync::Arc;

use super::series::{Histogram, KeyNames, SeriesTable, Value};
use super::{IDENTITY, Identity, identity_key, span_ref};
use crate::metric::{MetricData, MetricFamily};
use crate::span::{AttrValue, Span, SpanKind};

/// HTTP client labels; the server's are the first six. [`http_slot`] maps a span attribute to
/// its index.
const HTTP_CLIENT: &[&str] = &[
    "http.request.method",
    "http.response.status_code",
    "http.route",
    "url.scheme",
    "network.protocol.version",
    "error.type",
    "server.address",
    "server.port",
];
const HTTP_SERVER: &[&str] = HTTP_CLIENT.split_at(6).0;
/// RPC client labels; the server's are the first five. [`rpc_slot`] maps a span attribute to
/// its index.
const RPC_CLIENT: &[&str] = &[
    "rpc.system",
    "rpc.service",
    "rpc.method",
    "rpc.grpc.status_code",
    "error.type",
    "server.address",
    "server.port",
];
const RPC_SERVER: &[&str] = RPC_CLIENT.split_at(5).0;

fn http_slot(key: &str) -> Option<usize> {
    Some(match key {
        "http.request.method" => 0,
        "http.response.status_code" => 1,
        "http.route" => 2,
        "url.scheme" => 3,
        "network.protocol.version" => 4,
        "error.type" => 5,
        "server.address" => 6,
        "server.port" => 7,
        _ => return None,
    })
}

fn rpc_slot(key: &str) -> Option<usize> {
    Some(match key {
        "rpc.system" => 0,
        "rpc.service" => 1,
        "rpc.method" => 2,
        "rpc.grpc.status_code" => 3,
        "error.type" => 4,
        "server.address" => 5,
        "server.port" => 6,
        _ => return None,
    })
}

/// The four duration histograms.
pub struct Red {
    bounds: Arc<[f64]>,
    http_server: SeriesTable<Histogram>,
    http_client: SeriesTable<Histogram>,
    rpc_server: SeriesTable<Histogram>,
    rpc_client: SeriesTable<Histogram>,
}

/// A histogram family's name and description (the unit is `s`).
struct Instrument {
    name: &'static str,
    description: &'static str,
}

const INSTRUMENTS: [Instrument; 4] = [
    Instrument {
        name: "http.server.request.duration",
        description: "Duration of HTTP server requests.",
    },
    Instrument {
        name: "http.client.request.duration",
        description: "Duration of HTTP client requests.",
    },
    Instrument {
        name: "rpc.server.call.duration",
        description: "Duration of incoming gRPC calls.",
    },
    Instrument {
        name: "rpc.client.call.duration",
        description: "Duration of outgoing gRPC calls.",
    },
];

impl Red {
    pub fn new(bounds: Arc<[f64]>, cap: usize) -> Self {
        let table = |labels| {
            SeriesTable::new(
                KeyNames {
                    identity: IDENTITY,
                    labels,
                },
                cap,
            )
        };
        Self {
            bounds,
            http_server: table(HTTP_SERVER),
            http_client: table(HTTP_CLIENT),
            rpc_server: table(RPC_SERVER),
            rpc_client: table(RPC_CLIENT),
        }
    }

    /// Observes `span`'s duration; `identity`: its resource's ([`super::identity_of`]).
    pub fn record(&mut self, span: &Span, identity: &Identity<'_>, now: u64) {
        // One pass over the attributes fills both label sets; the span's kind and whether it
        // is a gRPC call pick one.
        let mut http = [None; HTTP_CLIENT.len()];
        let mut rpc = [None; RPC_CLIENT.len()];
        let mut grpc = false;
        for (k, v) in &span.attributes {
            let v = match v {
                AttrValue::Str(s) => Value::Str(s),
                AttrValue::Int(n) => Value::Int(*n),
                AttrValue::Bool(_) => continue,
            };
            if let Some(i) = http_slot(k) {
                http[i] = Some(v);
            }
            if let Some(i) = rpc_slot(k) {
                rpc[i] = Some(v);
                grpc |= i == 0;
            }
        }
        let (table, values) = match (grpc, span.kind) {
            (false, SpanKind::Server) => (&mut self.http_server, &http[..HTTP_SERVER.len()]),
            (false, SpanKind::Client) => (&mut self.http_client, &http[..]),
            (true, SpanKind::Server) => (&mut self.rpc_server, &rpc[..RPC_SERVER.len()]),
            (true, SpanKind::Client) => (&mut self.rpc_client, &rpc[..]),
        };
        let mut key = identity_key(identity);
        for v in values {
            key.push(*v);
        }
        let bounds = &self.bounds;
        table.get(&key, now, || Histogram::new(bounds)).observe(
            bounds,
            seconds(span),
            span_ref(span),
        );
    }

    pub fn expire(&mut self, now: u64, idle_ns: u64) {
        for t in self.tables_mut() {
            t.expire(now, idle_ns);
        }
    }

    fn tables_mut(&mut self) -> [&mut SeriesTable<Histogram>; 4] {
        [
            &mut self.http_server,
            &mut self.http_client,
            &mut self.rpc_server,
            &mut self.rpc_client,
        ]
    }

    fn tables(&self) -> [(&'static str, &SeriesTable<Histogram>); 4] {
        [
            (INSTRUMENTS[0].name, &self.http_server),
            (INSTRUMENTS[1].name, &self.http_client),
            (INSTRUMENTS[2].name, &self.rpc_server),
            (INSTRUMENTS[3].name, &self.rpc_client),
        ]
    }

    /// (metric name, series held, observations overflowed) per histogram.
    pub fn stats(&self) -> impl Iterator<Item = (&'static str, usize, u64)> + '_ {
        self.tables()
            .into_iter()
            .map(|(n, t)| (n, t.series_count(), t.overflowed()))
    }

    pub fn collect(&self, now: u64, out: &mut Vec<MetricFamily>) {
        for (instrument, (_, table)) in INSTRUMENTS.iter().zip(self.tables()) {
            out.push(MetricFamily {
                name: instrument.name,
                description: instrument.description,
                unit: "s",
                data: MetricData::Histogram {
                    bounds: self.bounds.clone(),
                    points: table.points(now),
                },
            });
        }
    }
}

/// The span's duration in seconds.
pub fn seconds(span: &Span) -> f64 {
    span.duration_ns() as f64 * 1e-9
}

/// `Some(v)` for a span attribute usable as a label value.
pub fn label_value<'a>(span: &'a Span, key: &str) -> Option<Value<'a>> {
    match span.attr(key)? {
        AttrValue::Str(s) => Some(Value::Str(s)),
        AttrValue::Int(n) => Some(Value::Int(*n)),
        AttrValue::Bool(_) => None,
    }
}
