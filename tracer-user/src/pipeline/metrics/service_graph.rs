//! The service graph, in Tempo's metric names (which Grafana's service-graph view reads): one
//! edge per CLIENT span, `client` = its service, `server` = the service of the SERVER span
//! whose parent it is (same trace), or, when no such span is traced on this node, its peer's
//! name (`service.peer.name`, else `server.address`).
//!
//! Pairing: the server span usually finishes first and waits here for its client span; a
//! client span that finds no server waits for one (the pair wait, 2 s by default) and then
//! counts with its peer's name. Only server spans whose parent may be a same-node client
//! (`tracer.parent.source` `address`, `w3c` or `b3`) wait; a server span whose client never
//! comes (it ran on another node) is not an edge here: it expires, counted. Both waiting
//! tables are bounded: a client span that finds its table full counts at once with its peer's
//! name; a server span that does is dropped, counted.
use std::sync::Arc;

use hashbrown::HashMap;

use super::red::SpanAttrs;
use super::series::{Count, Histogram, Key, KeyNames, SeriesTable, SpanRef};
use super::{Unmatched, span_ref};
use crate::metric::{MetricData, MetricFamily};
use crate::span::{AttrValue, Resource, Span, SpanId, SpanKind, StatusCode, TraceId};

const NAMES: KeyNames = KeyNames {
    identity: &[],
    labels: &["client", "server"],
};

/// Held spans per table, at most.
pub const HELD_CAP: usize = 16384;

/// The four families of the graph.
pub struct GraphMetrics {
    bounds: Arc<[f64]>,
    /// The four families have the same labels: one table (one look-up per edge) holds all.
    edges: SeriesTable<Edge>,
}

struct Edge {
    total: Count,
    failed: Count,
    server_seconds: Histogram,
    client_seconds: Histogram,
}

/// One side of an edge: its duration, the span, and whether it failed.
#[derive(Clone, Copy)]
struct Side {
    seconds: f64,
    span: SpanRef,
    error: bool,
}

impl Side {
    fn of(span: &Span) -> Self {
        Self {
            seconds: super::red::seconds(span),
            span: span_ref(span),
            error: span.status == StatusCode::Error,
        }
    }
}

impl GraphMetrics {
    pub fn new(bounds: Arc<[f64]>, cap: usize) -> Self {
        Self {
            bounds,
            edges: SeriesTable::new(NAMES, cap),
        }
    }

    fn edge(&mut self, now: u64, client: &str, server: &str, c: Side, s: Option<Side>) {
        let mut key = Key::new();
        key.str(Some(client)).str(Some(server));
        let bounds = &self.bounds;
        let edge = self.edges.get(&key, now, || Edge {
            total: Count::default(),
            failed: Count::default(),
            server_seconds: Histogram::new(bounds),
            client_seconds: Histogram::new(bounds),
        });
        edge.total.0 += 1;
        if c.error || s.is_some_and(|s| s.error) {
            edge.failed.0 += 1;
        }
        edge.client_seconds.observe(bounds, c.seconds, c.span);
        if let Some(s) = s {
            edge.server_seconds.observe(bounds, s.seconds, s.span);
        }
    }

    pub fn expire(&mut self, now: u64, idle_ns: u64) {
        self.edges.expire(now, idle_ns);
    }

    pub fn stats(&self) -> impl Iterator<Item = (&'static str, usize, u64)> + '_ {
        let (len, overflowed) = (self.edges.series_count(), self.edges.overflowed());
        [TOTAL, FAILED, SERVER_SECONDS, CLIENT_SECONDS]
            .into_iter()
            .map(move |name| (name, len, overflowed))
    }

    pub fn collect(&self, now: u64, out: &mut Vec<MetricFamily>) {
        out.push(MetricFamily {
            name: TOTAL,
            description: "Requests between two services (client span and server span, or the client's peer).",
            unit: "",
            data: MetricData::Counter(self.edges.points_by(now, |e| Some(&e.total))),
        });
        out.push(MetricFamily {
            name: FAILED,
            description: "Requests between two services that failed on either side.",
            unit: "",
            data: MetricData::Counter(self.edges.points_by(now, |e| Some(&e.failed))),
        });
        type Side = fn(&Edge) -> &Histogram;
        let sides: [(&'static str, &'static str, Side); 2] = [
            (
                SERVER_SECONDS,
                "Duration of the requests between two services as the server saw it.",
                |e| &e.server_seconds,
            ),
            (
                CLIENT_SECONDS,
                "Duration of the requests between two services as the client saw it.",
                |e| &e.client_seconds,
            ),
        ];
        for (name, description, side) in sides {
            out.push(MetricFamily {
                name,
                description,
                unit: "s",
                data: MetricData::Histogram {
                    bounds: self.bounds.clone(),
                    // An edge whose server side was never seen has no server-side point.
                    points: self
                        .edges
                        .points_by(now, |e| Some(side(e)).filter(|h| h.count() > 0)),
                },
            });
        }
    }
}

const TOTAL: &str = "traces_service_graph_request_total";
const FAILED: &str = "traces_service_graph_request_failed_total";
const SERVER_SECONDS: &str = "traces_service_graph_request_server_seconds";
const CLIENT_SECONDS: &str = "traces_service_graph_request_client_seconds";

struct HeldServer {
    resource: Arc<Resource>,
    side: Side,
    held_at: u64,
}

struct HeldClient {
    resource: Arc<Resource>,
    /// Recycled through `ServiceGraph::free_peers`.
    peer: String,
    side: Side,
    held_at: u64,
}

type SpanKey = (TraceId, SpanId);

/// The pairing state (owned by the stage, outside the metrics' lock).
pub struct ServiceGraph {
    wait_ns: u64,
    cap: usize,
    /// Server spans by (trace, their parent = the client's span id).
    servers: HashMap<SpanKey, HeldServer>,
    /// Client spans by (trace, span id).
    clients: HashMap<SpanKey, HeldClient>,
    free_peers: Vec<String>,
}

impl ServiceGraph {
    pub fn new(wait_ns: u64, cap: usize) -> Self {
        Self {
            wait_ns,
            cap,
            servers: HashMap::new(),
            clients: HashMap::new(),
            free_peers: Vec::new(),
        }
    }

    pub fn on_span(
        &mut self,
        span: &Span,
        attrs: &SpanAttrs<'_>,
        now: u64,
        m: &mut GraphMetrics,
        u: &mut Unmatched,
    ) {
        match span.kind {
            SpanKind::Server => self.on_server(span, attrs, now, m, u),
            SpanKind::Client => self.on_client(span, now, m),
        }
    }

    fn on_server(
        &mut self,
        span: &Span,
        attrs: &SpanAttrs<'_>,
        now: u64,
        m: &mut GraphMetrics,
        u: &mut Unmatched,
    ) {
        let Some(parent) = span.parent_span_id else {
            return;
        };
        let may_be_local = matches!(attrs.parent_source, Some("address" | "w3c" | "b3"));
        if !may_be_local {
            return;
        }
        let key = (span.trace_id, parent);
        if let Some(client) = self.clients.remove(&key) {
            m.edge(
                now,
                client.resource.service_name(),
                span.resource.service_name(),
                client.side,
                Some(Side::of(span)),
            );
            self.recycle(client.peer);
        } else if self.servers.len() < self.cap {
            self.servers.insert(
                key,
                HeldServer {
                    resource: span.resource.clone(),
                    side: Side::of(span),
                    held_at: now,
                },
            );
        } else {
            u.graph_servers_full += 1;
        }
    }

    fn on_client(&mut self, span: &Span, now: u64, m: &mut GraphMetrics) {
        let key = (span.trace_id, span.span_id);
        let client = span.resource.service_name();
        if let Some(database) = database_name(span) {
            // No database server span is ever traced: the edge counts at once.
            m.edge(now, client, database, Side::of(span), None);
            return;
        }
        if let Some(server) = self.servers.remove(&key) {
            m.edge(
                now,
                client,
                server.resource.service_name(),
                Side::of(span),
                Some(server.side),
            );
        } else if self.clients.len() < self.cap {
            let mut peer = self.free_peers.pop().unwrap_or_default();
            peer.push_str(peer_name(span));
            self.clients.insert(
                key,
                HeldClient {
                    resource: span.resource.clone(),
                    peer,
                    side: Side::of(span),
                    held_at: now,
                },
            );
        } else {
            m.edge(now, client, peer_name(span), Side::of(span), None);
        }
    }

    /// Client spans that waited long enough count with their peer's name; server spans that
    /// did are dropped (their client is on another node).
    pub fn tick(&mut self, now: u64, m: &mut GraphMetrics, u: &mut Unmatched) {
        let wait = self.wait_ns;
        let expired = |held_at: u64| now.saturating_sub(held_at) > wait;
        let before = self.servers.len();
        self.servers.retain(|_, s| !expired(s.held_at));
        u.graph_servers_expired += (before - self.servers.len()) as u64;
        let free = &mut self.free_peers;
        self.clients.retain(|_, c| {
            if !expired(c.held_at) {
                return true;
            }
            m.edge(now, c.resource.service_name(), &c.peer, c.side, None);
            let mut peer = std::mem::take(&mut c.peer);
            if free.len() < FREE_PEERS {
                peer.clear();
                free.push(peer);
            }
            false
        });
    }

    fn recycle(&mut self, mut peer: String) {
        if self.free_peers.len() < FREE_PEERS {
            peer.clear();
            self.free_peers.push(peer);
        }
    }

    /// Spans waiting now: (servers, clients).
    pub fn held(&self) -> (usize, usize) {
        (self.servers.len(), self.clients.len())
    }
}

/// Peer name buffers kept for reuse, at most.
const FREE_PEERS: usize = 1024;

/// A database call's server node: its peer's service name, else the database system
/// (`postgresql`, `mysql`, `mariadb`, `redis`), as Tempo names database nodes. `None`: not a database call.
fn database_name(span: &Span) -> Option<&str> {
    let system = match span.attr("db.system.name") {
        Some(AttrValue::Str(s)) => &**s,
        _ => return None,
    };
    match span.attr("service.peer.name") {
        Some(AttrValue::Str(s)) => Some(s),
        _ => Some(system),
    }
}

fn peer_name(span: &Span) -> &str {
    for key in ["service.peer.name", "server.address"] {
        if let Some(AttrValue::Str(s)) = span.attr(key) {
            return s;
        }
    }
    "unknown"
}
