//! The node's service map from the service-graph metrics (Tempo's
//! `traces_service_graph_request_total` and `traces_service_graph_request_failed_total`,
//! labels `client` and `server`) of the metric sources the agent hands the view. The counters
//! are cumulative: each read keeps a snapshot (at most one a second, the last minute's), so an
//! edge's rate and error share are over the last minute of reads. With no source giving these
//! families, the view falls back to the edges its own store saw (see `RecentStore::edges`).
use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::metric::{MetricData, MetricSources, collect_all};

use super::store::EdgeRow;

const REQUESTS: &str = "traces_service_graph_request";
const FAILED: &str = "traces_service_graph_request_failed";
const HISTORY: Duration = Duration::from_secs(60);
const MIN_SPACING: Duration = Duration::from_secs(1);

/// (client, server) → (requests, failed), cumulative.
type Totals = HashMap<(String, String), (u64, u64)>;

pub struct MetricServiceMap {
    sources: MetricSources,
    history: Mutex<VecDeque<(Instant, Totals)>>,
}

impl MetricServiceMap {
    pub fn new(sources: MetricSources) -> Self {
        Self {
            sources,
            history: Mutex::new(VecDeque::new()),
        }
    }

    /// The edges now, or `None` when no source gives service-graph metrics.
    pub fn edges(&self, now: Instant) -> Option<Vec<EdgeRow>> {
        let totals = totals(&self.sources)?;
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        while history
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > HISTORY)
        {
            history.pop_front();
        }
        let rows = {
            let base = history.front();
            let mut rows: Vec<EdgeRow> = totals
                .iter()
                .map(|((client, server), &(count, failed))| {
                    let (rate, window_count, window_failed) = match base {
                        Some((at, old)) if now.duration_since(*at) >= MIN_SPACING => {
                            let (c0, f0) = old
                                .get(&(client.clone(), server.clone()))
                                .copied()
                                .unwrap_or((0, 0));
                            let secs = now.duration_since(*at).as_secs_f64();
                            let (dc, df) = (count.saturating_sub(c0), failed.saturating_sub(f0));
                            (dc as f64 / secs, dc, df)
                        }
                        _ => (0.0, count, failed),
                    };
                    EdgeRow {
                        client: client.clone(),
                        server: server.clone(),
                        count,
                        failed,
                        rate,
                        error_pct: if window_count == 0 {
                            0.0
                        } else {
                            100.0 * window_failed as f64 / window_count as f64
                        },
                    }
                })
                .collect();
            rows.sort_by(|a, b| (&a.client, &a.server).cmp(&(&b.client, &b.server)));
            rows
        };
        if history
            .back()
            .is_none_or(|(at, _)| now.duration_since(*at) >= MIN_SPACING)
        {
            history.push_back((now, totals));
        }
        Some(rows)
    }
}

/// The family's base name: Tempo's names are given with or without the counter's `_total`.
fn base_name(name: &str) -> &str {
    name.strip_suffix("_total").unwrap_or(name)
}

fn totals(sources: &MetricSources) -> Option<Totals> {
    if sources.is_empty() {
        return None;
    }
    let mut found = false;
    let mut totals = Totals::new();
    for family in collect_all(sources) {
        let failed = match base_name(family.name) {
            REQUESTS => false,
            FAILED => true,
            _ => continue,
        };
        let MetricData::Counter(points) = &family.data else {
            continue;
        };
        found = true;
        for p in points {
            let label = |key| {
                p.labels
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.clone())
            };
            let (Some(client), Some(server)) = (label("client"), label("server")) else {
                continue;
            };
            let entry = totals.entry((client, server)).or_default();
            if failed {
                entry.1 += p.value;
            } else {
                entry.0 += p.value;
            }
        }
    }
    found.then_some(totals)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::metric::{MetricFamily, MetricSource, NumberPoint};

    /// A fake producer: service-graph counters with the values the test sets.
    struct FakeGraph(Mutex<Vec<(&'static str, &'static str, u64, u64)>>);

    impl MetricSource for FakeGraph {
        fn collect(&self, out: &mut Vec<MetricFamily>) {
            let edges = self.0.lock().unwrap();
            let point = |c: &str, s: &str, value| NumberPoint {
                identity: Vec::new(),
                labels: vec![("client", c.to_owned()), ("server", s.to_owned())],
                start_unix_ns: 0,
                time_unix_ns: 0,
                value,
            };
            out.push(MetricFamily {
                name: "traces_service_graph_request_total",
                description: "",
                unit: "{request}",
                data: MetricData::Counter(edges.iter().map(|e| point(e.0, e.1, e.2)).collect()),
            });
            out.push(MetricFamily {
                name: "traces_service_graph_request_failed_total",
                description: "",
                unit: "{request}",
                data: MetricData::Counter(edges.iter().map(|e| point(e.0, e.1, e.3)).collect()),
            });
            out.push(MetricFamily {
                name: "http.server.request.duration",
                description: "",
                unit: "s",
                data: MetricData::Gauge(vec![point("x", "y", 99)]),
            });
        }
    }

    #[test]
    fn edges_come_from_the_service_graph_counters_with_rates_over_reads() {
        let graph = Arc::new(FakeGraph(Mutex::new(vec![("web", "db", 10, 1)])));
        let map = MetricServiceMap::new(vec![graph.clone()]);
        let t0 = Instant::now();
        let first = map.edges(t0).unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(
            (first[0].client.as_str(), first[0].server.as_str()),
            ("web", "db")
        );
        assert_eq!((first[0].count, first[0].failed), (10, 1));
        assert_eq!(first[0].rate, 0.0);
        assert_eq!(first[0].error_pct, 10.0);

        *graph.0.lock().unwrap() = vec![("web", "db", 30, 11), ("web", "cache", 4, 0)];
        let later = map.edges(t0 + Duration::from_secs(10)).unwrap();
        let db = later.iter().find(|e| e.server == "db").unwrap();
        assert_eq!(db.rate, 2.0);
        assert_eq!(db.error_pct, 50.0);
        let cache = later.iter().find(|e| e.server == "cache").unwrap();
        assert_eq!((cache.count, cache.rate), (4, 0.4));
    }

    #[test]
    fn no_source_or_no_service_graph_family_is_none() {
        assert!(
            MetricServiceMap::new(Vec::new())
                .edges(Instant::now())
                .is_none()
        );
        struct Empty;
        impl MetricSource for Empty {
            fn collect(&self, _: &mut Vec<MetricFamily>) {}
        }
        let map = MetricServiceMap::new(vec![Arc::new(Empty)]);
        assert!(map.edges(Instant::now()).is_none());
    }
}
