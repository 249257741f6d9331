//! Request duration histograms (rate, errors and duration from one instrument) with the
//! semantic conventions' names and attributes: HTTP server and client, and for gRPC calls the
//! RPC call durations instead (a gRPC span counts in the RPC histogram only, not also in the
//! HTTP one: one call, one observation).
//!
//! The RPC attributes are the ones our gRPC spans carry (`rpc.system`, `rpc.service`,
//! `rpc.method`, `rpc.grpc.status_code`); the current RPC conventions renamed them
//! (`rpc.system.name`, `rpc.method` = `service/method`, `rpc.response.status_code`), and the
//! histograms follow the spans so that a metric and its exemplar's span agree.
//!
//! `--metrics-dimension ATTRIBUTE` adds span attributes as further labels of all four (after
//! the conventions' labels; a span without the attribute has no such label). Their values are
//! what redaction left (it runs first); the series cap bounds their cardinality as any
//! label's.
use std::sync::Arc;

use super::series::{Histogram, KeyNames, SeriesTable, Value};
use super::{IDENTITY, Identity, identity_key, span_ref};
use crate::metric::{MetricData, MetricFamily};
use crate::span::{AttrValue, Span, SpanKind};

/// HTTP client labels; the server's are the first six.
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
/// RPC client labels; the server's are the first five.
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

/// Most `--metrics-dimension`s: each multiplies the series a route may have.
pub const MAX_DIMENSIONS: usize = 4;

/// The labels the histograms have without dimensions (a dimension must not repeat one).
pub fn fixed_labels() -> impl Iterator<Item = &'static str> {
    HTTP_CLIENT.iter().chain(RPC_CLIENT).copied()
}

/// Indexes into [`SpanAttrs::http`] the other metrics read.
pub const METHOD: usize = 0;
pub const ROUTE: usize = 2;
pub const ADDRESS: usize = 6;
pub const PORT: usize = 7;

/// The span attributes the metrics read, found in one pass over the span's.
pub struct SpanAttrs<'a> {
    /// In [`HTTP_CLIENT`] order.
    pub http: [Option<Value<'a>>; HTTP_CLIENT.len()],
    /// In [`RPC_CLIENT`] order.
    pub rpc: [Option<Value<'a>>; RPC_CLIENT.len()],
    /// The span has `rpc.system`: a gRPC call.
    pub grpc: bool,
    /// `tracer.parent.source`.
    pub parent_source: Option<&'a str>,
}

impl<'a> SpanAttrs<'a> {
    pub fn of(span: &'a Span) -> Self {
        let mut a = Self {
            http: [None; HTTP_CLIENT.len()],
            rpc: [None; RPC_CLIENT.len()],
            grpc: false,
            parent_source: None,
        };
        for (k, v) in &span.attributes {
            let v = match v {
                AttrValue::Str(s) => Value::Str(s),
                AttrValue::Int(n) => Value::Int(*n),
                AttrValue::Bool(_) | AttrValue::StrArray(_) => continue,
            };
            // Its index in the HTTP labels, in the RPC labels.
            let (h, r) = match *k {
                "http.request.method" => (Some(METHOD), None),
                "http.response.status_code" => (Some(1), None),
                "http.route" => (Some(ROUTE), None),
                "url.scheme" => (Some(3), None),
                "network.protocol.version" => (Some(4), None),
                "error.type" => (Some(5), Some(4)),
                "server.address" => (Some(ADDRESS), Some(5)),
                "server.port" => (Some(PORT), Some(6)),
                "rpc.system" => {
                    a.grpc = true;
                    (None, Some(0))
                }
                "rpc.service" => (None, Some(1)),
                "rpc.method" => (None, Some(2)),
                "rpc.grpc.status_code" => (None, Some(3)),
                "tracer.parent.source" => {
                    if let Value::Str(s) = v {
                        a.parent_source = Some(s);
                    }
                    continue;
                }
                _ => continue,
            };
            if let Some(h) = h {
                a.http[h] = Some(v);
            }
            if let Some(r) = r {
                a.rpc[r] = Some(v);
            }
        }
        a
    }

    /// The HTTP label `i` if it is a string.
    pub fn http_str(&self, i: usize) -> Option<&'a str> {
        match self.http[i] {
            Some(Value::Str(s)) => Some(s),
            _ => None,
        }
    }
}

/// The four duration histograms.
pub struct Red {
    bounds: Arc<[f64]>,
    /// `--metrics-dimension`s: the attributes labelling every histogram after its own labels.
    dimensions: &'static [&'static str],
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
    /// With the attributes `dimensions` as extra labels (at most [`MAX_DIMENSIONS`]; checked
    /// by the options). Their names are made to live as long as the agent (once, at start-up).
    pub fn with_dimensions(bounds: Arc<[f64]>, cap: usize, dimensions: &[String]) -> Self {
        let dimensions: &'static [&'static str] = if dimensions.is_empty() {
            &[]
        } else {
            let names = dimensions
                .iter()
                .map(|d| &*Box::leak(d.clone().into_boxed_str()));
            Box::leak(names.collect())
        };
        let table = |fixed: &'static [&'static str]| {
            let labels = if dimensions.is_empty() {
                fixed
            } else {
                Box::leak(fixed.iter().chain(dimensions).copied().collect())
            };
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
            dimensions,
            http_server: table(HTTP_SERVER),
            http_client: table(HTTP_CLIENT),
            rpc_server: table(RPC_SERVER),
            rpc_client: table(RPC_CLIENT),
        }
    }

    /// Observes `span`'s duration; `identity`: its resource's ([`super::identity_of`]).
    pub fn record(
        &mut self,
        span: &Span,
        attrs: &SpanAttrs<'_>,
        identity: &Identity<'_>,
        now: u64,
    ) {
        let (http, rpc) = (&attrs.http, &attrs.rpc);
        let (table, values) = match (attrs.grpc, span.kind) {
            (false, SpanKind::Server) => (&mut self.http_server, &http[..HTTP_SERVER.len()]),
            (false, SpanKind::Client) => (&mut self.http_client, &http[..]),
            (true, SpanKind::Server) => (&mut self.rpc_server, &rpc[..RPC_SERVER.len()]),
            (true, SpanKind::Client) => (&mut self.rpc_client, &rpc[..]),
        };
        // A string array of several elements is one label value, joined: the only case that
        // allocates, and only when such a dimension is configured.
        let mut joined: [String; MAX_DIMENSIONS] = Default::default();
        for (d, j) in self.dimensions.iter().zip(&mut joined) {
            if let Some(AttrValue::StrArray(a)) = span.attr(d)
                && a.len() > 1
            {
                *j = a.join(",");
            }
        }
        let mut key = identity_key(identity);
        for v in values {
            key.push(*v);
        }
        for (d, j) in self.dimensions.iter().zip(&joined) {
            key.push(span.attr(d).and_then(|v| dimension_value(v, j)));
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

/// A dimension's label value: an attribute's own value, a boolean as `true`/`false`, a string
/// array's one element, or `joined`, its elements joined by `,` (an empty array: no label).
fn dimension_value<'a>(v: &'a AttrValue, joined: &'a str) -> Option<Value<'a>> {
    Some(match v {
        AttrValue::Str(s) => Value::Str(s),
        AttrValue::Int(n) => Value::Int(*n),
        AttrValue::Bool(b) => Value::Str(if *b { "true" } else { "false" }),
        AttrValue::StrArray(a) => match a.as_slice() {
            [] => return None,
            [one] => Value::Str(one),
            _ => Value::Str(joined),
        },
    })
}

/// The span's duration in seconds.
pub fn seconds(span: &Span) -> f64 {
    span.duration_ns() as f64 * 1e-9
}
