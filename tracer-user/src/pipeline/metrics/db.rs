//! `db.client.operation.duration`: the duration histogram of database client calls, with the
//! semantic conventions' attributes (database client metrics, stable since 1.33). A database
//! span counts here only, not also in `http.client.request.duration`.
use std::sync::Arc;

use super::red::seconds;
use super::series::{Histogram, KeyNames, SeriesTable, Value};
use super::{IDENTITY, Identity, identity_key, span_ref};
use crate::metric::{MetricData, MetricFamily};
use crate::span::{AttrValue, Span, SpanKind};

const NAME: &str = "db.client.operation.duration";

const LABELS: &[&str] = &[
    "db.system.name",
    "db.namespace",
    "db.operation.name",
    "db.collection.name",
    "db.response.status_code",
    "error.type",
    "server.address",
    "server.port",
];

pub struct DbMetrics {
    bounds: Arc<[f64]>,
    table: SeriesTable<Histogram>,
}

impl DbMetrics {
    pub fn new(bounds: Arc<[f64]>, cap: usize) -> Self {
        Self {
            bounds,
            table: SeriesTable::new(
                KeyNames {
                    identity: IDENTITY,
                    labels: LABELS,
                },
                cap,
            ),
        }
    }

    /// Observes `span` if it is a database client call; returns whether it was.
    pub fn record(&mut self, span: &Span, identity: &Identity<'_>, now: u64) -> bool {
        if span.kind != SpanKind::Client {
            return false;
        }
        let mut values: [Option<Value<'_>>; LABELS.len()] = [None; LABELS.len()];
        for (k, v) in &span.attributes {
            let Some(i) = LABELS.iter().position(|l| l == k) else {
                continue;
            };
            values[i] = match v {
                AttrValue::Str(s) => Some(Value::Str(s)),
                AttrValue::Int(n) => Some(Value::Int(*n)),
                // No db label is a flag or an array.
                AttrValue::Bool(_) | AttrValue::StrArray(_) => None,
            };
        }
        if values[0].is_none() {
            return false;
        }
        let mut key = identity_key(identity);
        for v in values {
            key.push(v);
        }
        let bounds = &self.bounds;
        self.table
            .get(&key, now, || Histogram::new(bounds))
            .observe(bounds, seconds(span), span_ref(span));
        true
    }

    pub fn expire(&mut self, now: u64, idle_ns: u64) {
        self.table.expire(now, idle_ns);
    }

    /// (metric name, series held, observations overflowed).
    pub fn stats(&self) -> impl Iterator<Item = (&'static str, usize, u64)> + '_ {
        std::iter::once((NAME, self.table.series_count(), self.table.overflowed()))
    }

    pub fn collect(&self, now: u64, out: &mut Vec<MetricFamily>) {
        out.push(MetricFamily {
            name: NAME,
            description: "Duration of database client operations.",
            unit: "s",
            data: MetricData::Histogram {
                bounds: self.bounds.clone(),
                points: self.table.points(now),
            },
        });
    }
}
