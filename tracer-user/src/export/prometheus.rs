//! The Prometheus endpoint: `GET /metrics` on `--prometheus-host:--prometheus-port` serves a
//! snapshot of every metric source, in the OpenMetrics text format (with exemplars) when the
//! scraper's `Accept` header asks for `application/openmetrics-text`, in the classic text
//! format 0.0.4 otherwise.
//!
//! Names follow the OpenTelemetry → Prometheus compatibility rules: characters other than
//! `[a-zA-Z0-9_:]` become `_` (runs collapsed), the unit becomes a suffix (`s` → `_seconds`,
//! `By` → `_bytes`, `{...}` annotations dropped), counters end in `_total`; a suffix the
//! name already has is not added again (Tempo's `traces_service_graph_request_total`). A
//! point's identity (`service.name`, ...) becomes labels (`service_name`) before its own.
//!
//! The encoder is our own: `prometheus-client` 0.26 encodes both formats, but only for
//! metrics it holds itself — its `Exemplar` has no public constructor, so a histogram
//! snapshot with exemplars cannot be handed to its `MetricEncoder`.
use std::fmt::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};

use anyhow::Context;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::IntoResponse;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::metrics_config::PrometheusAddr;
use crate::metric::{Exemplar, MetricData, MetricFamily, MetricSources, collect_all};

pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const CLASSIC_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The classic Prometheus text format 0.0.4 (no exemplars).
    Classic,
    /// OpenMetrics 1.0 text, with exemplars.
    OpenMetrics,
}

impl Format {
    /// What the scraper asked for in its `Accept` header.
    pub fn negotiate(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Self::OpenMetrics,
            _ => Self::Classic,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Classic => CLASSIC_CONTENT_TYPE,
            Self::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

/// The sockets of the endpoint, bound before anything else starts so that a port already in
/// use is one clear error at start-up. `localhost` binds every address it resolves to.
pub struct PrometheusListeners {
    listeners: Vec<std::net::TcpListener>,
    shown: String,
}

pub fn bind(addr: &PrometheusAddr) -> anyhow::Result<PrometheusListeners> {
    let shown = format!("{}:{}", addr.host, addr.port);
    let mut addrs = resolve(&addr.host, addr.port).with_context(|| {
        format!(
            "Prometheus endpoint {shown}: cannot resolve {:?}",
            addr.host
        )
    })?;
    addrs.dedup();
    let mut listeners = Vec::with_capacity(addrs.len());
    let mut unavailable = None;
    for a in addrs {
        let cannot_listen = || {
            let target = if a.to_string() == shown {
                shown.clone()
            } else {
                format!("{shown} ({a})")
            };
            format!(
                "cannot listen for Prometheus scrapes on {target} (another port: \
                 --prometheus-port / OTEL_EXPORTER_PROMETHEUS_PORT)"
            )
        };
        match std::net::TcpListener::bind(a) {
            Ok(l) => {
                l.set_nonblocking(true)
                    .context("Prometheus endpoint: non-blocking socket")?;
                listeners.push(l);
            }
            // A port in use is always an error; an address this machine lacks (`localhost`
            // → `::1` with IPv6 off) only if no other address of the name works.
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(anyhow::Error::new(e).context(cannot_listen()));
            }
            Err(e) => {
                unavailable.get_or_insert_with(|| anyhow::Error::new(e).context(cannot_listen()));
            }
        }
    }
    if listeners.is_empty() {
        return Err(
            unavailable.unwrap_or_else(|| anyhow::anyhow!("{shown}: no address to listen on"))
        );
    }
    Ok(PrometheusListeners { listeners, shown })
}

/// The addresses of `host`. `localhost` is the loopback addresses without asking the
/// resolver (RFC 6761): a minimal root file system (a `FROM scratch` image, an initramfs) may
/// have no `/etc/hosts`, and the default endpoint must not depend on it.
fn resolve(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(vec![
            SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port)),
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
        ]);
    }
    Ok((host, port).to_socket_addrs()?.collect())
}

/// The running endpoint.
pub struct PrometheusEndpoint {
    tasks: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    shown: String,
}

impl PrometheusEndpoint {
    /// `http://host:port/metrics`, for the start-up log line.
    pub fn url(&self) -> String {
        format!("http://{}/metrics", self.shown)
    }

    /// Stops accepting scrapes; a scrape in progress finishes.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Serves `GET /metrics` on `listeners` until shut down. Must be called inside a tokio
/// runtime. Collection and encoding run on the blocking pool, off the agent's event loop.
pub fn serve(
    listeners: PrometheusListeners,
    sources: MetricSources,
) -> anyhow::Result<PrometheusEndpoint> {
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |headers: HeaderMap| scrape(headers, sources.clone())),
    );
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::new();
    for l in listeners.listeners {
        let l = tokio::net::TcpListener::from_std(l).context("Prometheus endpoint socket")?;
        let router = router.clone();
        let mut stopped = stopped.clone();
        tasks.push(tokio::spawn(async move {
            let served = axum::serve(l, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = served {
                tracing::warn!("Prometheus endpoint stopped: {e}");
            }
        }));
    }
    Ok(PrometheusEndpoint {
        tasks,
        stop,
        shown: listeners.shown,
    })
}

async fn scrape(headers: HeaderMap, sources: MetricSources) -> impl IntoResponse {
    let format = Format::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let body = tokio::task::spawn_blocking(move || encode(&collect_all(&sources), format))
        .await
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(format.content_type()),
        )],
        body,
    )
}

/// Encodes a snapshot. Families that translate to the same Prometheus name are written as
/// one (the first one's type and help); a later one of another type is left out, as a
/// scraper would reject the whole page.
pub fn encode(families: &[MetricFamily], format: Format) -> String {
    let mut out = String::new();
    let mut groups: Vec<(String, Vec<&MetricFamily>)> = Vec::new();
    for f in families {
        let name = prometheus_name(f);
        match groups.iter_mut().find(|(n, _)| *n == name) {
            Some((_, members)) => {
                if same_type(&members[0].data, &f.data) {
                    members.push(f);
                }
            }
            None => groups.push((name, vec![f])),
        }
    }
    for (name, members) in &groups {
        write_family(&mut out, name, members, format);
    }
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
    out
}

fn same_type(a: &MetricData, b: &MetricData) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

fn write_family(out: &mut String, name: &str, members: &[&MetricFamily], format: Format) {
    let first = members[0];
    let (kind, family_name) = match (&first.data, format) {
        (MetricData::Histogram { .. }, _) => ("histogram", name),
        (MetricData::Gauge(_), _) => ("gauge", name),
        (MetricData::Counter(_), Format::Classic) => ("counter", name),
        // OpenMetrics names the counter family without its `_total` sample suffix.
        (MetricData::Counter(_), Format::OpenMetrics) => {
            ("counter", name.strip_suffix("_total").unwrap_or(name))
        }
    };
    let _ = writeln!(
        out,
        "# HELP {family_name} {}",
        escape_help(first.description, format)
    );
    let _ = writeln!(out, "# TYPE {family_name} {kind}");
    if format == Format::OpenMetrics {
        let unit = unit_suffix(first.unit);
        if !unit.is_empty() && family_name.ends_with(&format!("_{unit}")) {
            let _ = writeln!(out, "# UNIT {family_name} {unit}");
        }
    }
    let mut labels = String::new();
    for f in members {
        match &f.data {
            MetricData::Counter(points) | MetricData::Gauge(points) => {
                for p in points {
                    label_text(&mut labels, &p.identity, &p.labels);
                    let _ = writeln!(out, "{name}{} {}", braced(&labels), p.value);
                }
            }
            MetricData::Histogram { bounds, points } => {
                for p in points {
                    label_text(&mut labels, &p.identity, &p.labels);
                    let sep = if labels.is_empty() { "" } else { "," };
                    let mut cumulative = 0u64;
                    for (i, n) in p.bucket_counts.iter().enumerate() {
                        cumulative += n;
                        let le = bounds
                            .get(i)
                            .map_or_else(|| "+Inf".to_owned(), |b| number(*b));
                        let _ = write!(
                            out,
                            "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
                        );
                        if format == Format::OpenMetrics
                            && let Some(e) = bucket_exemplar(&p.exemplars, bounds, i)
                        {
                            let _ = write!(
                                out,
                                " # {{trace_id=\"{}\",span_id=\"{}\"}} {} {}",
                                hex(&e.trace_id),
                                hex(&e.span_id),
                                number(e.value),
                                seconds(e.time_unix_ns)
                            );
                        }
                        out.push('\n');
                    }
                    let _ = writeln!(out, "{name}_sum{} {}", braced(&labels), number(p.sum));
                    let _ = writeln!(out, "{name}_count{} {}", braced(&labels), p.count);
                }
            }
        }
    }
}

/// The most recent exemplar whose value falls in bucket `i` (`(bounds[i-1], bounds[i]]`).
fn bucket_exemplar<'a>(
    exemplars: &'a [Exemplar],
    bounds: &[f64],
    i: usize,
) -> Option<&'a Exemplar> {
    exemplars
        .iter()
        .filter(|e| bounds.partition_point(|b| *b < e.value) == i)
        .max_by_key(|e| e.time_unix_ns)
}

fn braced(labels: &str) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    }
}

/// `k="v",k2="v2"`: identity first, then the point's labels; keys sanitised, values escaped.
/// Two keys that sanitise to the same name share one label, values joined by `;` (the
/// OTel compatibility rule).
fn label_text(out: &mut String, identity: &[(&str, String)], labels: &[(&str, String)]) {
    out.clear();
    let mut merged: Vec<(String, String)> = Vec::with_capacity(identity.len() + labels.len());
    for (k, v) in identity.iter().chain(labels) {
        let key = label_name(k);
        match merged.iter_mut().find(|(k2, _)| *k2 == key) {
            Some((_, existing)) => {
                existing.push(';');
                existing.push_str(v);
            }
            None => merged.push((key, v.clone())),
        }
    }
    for (i, (k, v)) in merged.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        escape_label_value(out, v);
        out.push('"');
    }
}

fn escape_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn escape_help(help: &str, format: Format) -> String {
    let mut out = String::with_capacity(help.len());
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if format == Format::OpenMetrics => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

/// A float as both parsers read it: integral values keep a `.0` (OpenMetrics' canonical
/// `le`), infinities are `+Inf`/`-Inf`.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

/// Unix nanoseconds as OpenMetrics' seconds timestamp.
fn seconds(unix_ns: u64) -> String {
    format!("{}.{:09}", unix_ns / 1_000_000_000, unix_ns % 1_000_000_000)
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The full Prometheus name of a family's samples (histograms: before `_bucket`/`_sum`/
/// `_count`; counters: with `_total`).
pub fn prometheus_name(f: &MetricFamily) -> String {
    let mut name = sanitize(f.name, true);
    let unit = unit_suffix(f.unit);
    if !unit.is_empty() {
        let counted_unit = format!("_{unit}_total");
        if !name.ends_with(&format!("_{unit}")) && !name.ends_with(&counted_unit) {
            name.push('_');
            name.push_str(&unit);
        }
    }
    if matches!(f.data, MetricData::Counter(_)) && !name.ends_with("_total") {
        name.push_str("_total");
    }
    name
}

/// Characters outside `[a-zA-Z0-9_]` (and `:` in metric names) become `_`, runs of `_`
/// collapse, a leading digit gets a `_` in front; an empty name becomes `_`.
fn sanitize(raw: &str, allow_colon: bool) -> String {
    let mut out = String::with_capacity(raw.len() + 1);
    for c in raw.chars() {
        let ok = c.is_ascii_alphanumeric() || c == '_' || (allow_colon && c == ':');
        let c = if ok { c } else { '_' };
        if c == '_' && out.ends_with('_') {
            continue;
        }
        out.push(c);
    }
    if out.starts_with(|c: char| c.is_ascii_digit()) || out.is_empty() {
        out.insert(0, '_');
    }
    out
}

fn label_name(raw: &str) -> String {
    sanitize(raw, false)
}

/// UCUM unit → Prometheus suffix word (`s` → `seconds`, `By/s` → `bytes_per_second`);
/// annotations (`{request}`) and the dimensionless `1` give none.
fn unit_suffix(unit: &str) -> String {
    let mut without_annotations = String::with_capacity(unit.len());
    let mut depth = 0u32;
    for c in unit.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            c if depth == 0 => without_annotations.push(c),
            _ => {}
        }
    }
    let unit = without_annotations.trim();
    if unit.is_empty() || unit == "1" {
        return String::new();
    }
    let word = |u: &str, per: bool| -> String {
        let w = match u {
            "s" => "seconds",
            "ms" => "milliseconds",
            "us" => "microseconds",
            "ns" => "nanoseconds",
            "min" => "minutes",
            "h" => "hours",
            "d" => "days",
            "By" => "bytes",
            "KiBy" => "kibibytes",
            "MiBy" => "mebibytes",
            "GiBy" => "gibibytes",
            "KBy" => "kilobytes",
            "MBy" => "megabytes",
            "GBy" => "gigabytes",
            "bit" => "bits",
            "m" => "meters",
            "%" => "percent",
            "Hz" => "hertz",
            other => return sanitize(other, false).trim_matches('_').to_owned(),
        };
        // After `/` the singular reads right: `bytes_per_second`.
        if per {
            w.strip_suffix('s').unwrap_or(w)
        } else {
            w
        }
        .to_owned()
    };
    match unit.split_once('/') {
        Some((num, den)) if !num.is_empty() && !den.is_empty() => {
            format!("{}_per_{}", word(num, false), word(den, true))
        }
        _ => word(unit, false),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::metric::{HistogramPoint, NumberPoint};

    fn family(name: &'static str, unit: &'static str, data: MetricData) -> MetricFamily {
        MetricFamily {
            name,
            description: "what it \"counts\"\\ and\nmore",
            unit,
            data,
        }
    }

    fn counter(value: u64) -> MetricData {
        MetricData::Counter(vec![NumberPoint {
            identity: vec![("service.name", "shop".into())],
            labels: vec![("http.route", "/a\"b\\c\nd".into())],
            start_unix_ns: 1,
            time_unix_ns: 2,
            value,
        }])
    }

    #[test]
    fn localhost_is_loopback_without_the_resolver() {
        let addrs = resolve("LocalHost", 9464).unwrap();
        assert_eq!(addrs.len(), 2);
        assert!(
            addrs
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 9464)
        );
        assert_eq!(resolve("127.0.0.1", 1).unwrap().len(), 1);
    }

    #[test]
    fn translates_names() {
        let name = |n, unit, data| prometheus_name(&family(n, unit, data));
        let hist = || MetricData::Histogram {
            bounds: Arc::from([1.0]),
            points: Vec::new(),
        };
        let gauge = || MetricData::Gauge(Vec::new());
        assert_eq!(
            name("http.server.request.duration", "s", hist()),
            "http_server_request_duration_seconds"
        );
        assert_eq!(
            name("tracer.events", "{event}", counter(1)),
            "tracer_events_total"
        );
        assert_eq!(
            name(
                "traces_service_graph_request_total",
                "{request}",
                counter(1)
            ),
            "traces_service_graph_request_total"
        );
        assert_eq!(
            name("traces_service_graph_request_server_seconds", "s", hist()),
            "traces_service_graph_request_server_seconds"
        );
        assert_eq!(
            name("tracer.gap_bytes", "By", counter(1)),
            "tracer_gap_bytes_total"
        );
        assert_eq!(name("net.io", "By", counter(1)), "net_io_bytes_total");
        assert_eq!(name("rate", "By/s", gauge()), "rate_bytes_per_second");
        assert_eq!(
            name("tracer.queue_len", "{span}", gauge()),
            "tracer_queue_len"
        );
        assert_eq!(name("9lives..odd-name", "1", gauge()), "_9lives_odd_name");
        assert_eq!(name("a", "weird unit", gauge()), "a_weird_unit");
        assert_eq!(label_name("service.name"), "service_name");
        assert_eq!(label_name("k8s:pod"), "k8s_pod");
        assert_eq!(label_name("1x"), "_1x");
    }

    #[test]
    fn classic_text() {
        let fams = [
            family("tracer.events", "{event}", counter(7)),
            family(
                "http.server.request.duration",
                "s",
                MetricData::Histogram {
                    bounds: Arc::from([0.1, 1.0]),
                    points: vec![HistogramPoint {
                        identity: vec![("service.name", "shop".into())],
                        labels: vec![("http.route", "/x".into())],
                        start_unix_ns: 1,
                        time_unix_ns: 2,
                        count: 3,
                        sum: 1.5,
                        bucket_counts: vec![1, 1, 1],
                        exemplars: vec![Exemplar {
                            trace_id: [0xab; 16],
                            span_id: [0xcd; 8],
                            value: 0.5,
                            time_unix_ns: 1_700_000_000_250_000_000,
                        }],
                    }],
                },
            ),
        ];
        let text = encode(&fams, Format::Classic);
        assert_eq!(
            text,
            "# HELP tracer_events_total what it \"counts\"\\\\ and\\nmore\n\
             # TYPE tracer_events_total counter\n\
             tracer_events_total{service_name=\"shop\",http_route=\"/a\\\"b\\\\c\\nd\"} 7\n\
             # HELP http_server_request_duration_seconds what it \"counts\"\\\\ and\\nmore\n\
             # TYPE http_server_request_duration_seconds histogram\n\
             http_server_request_duration_seconds_bucket{service_name=\"shop\",http_route=\"/x\",le=\"0.1\"} 1\n\
             http_server_request_duration_seconds_bucket{service_name=\"shop\",http_route=\"/x\",le=\"1.0\"} 2\n\
             http_server_request_duration_seconds_bucket{service_name=\"shop\",http_route=\"/x\",le=\"+Inf\"} 3\n\
             http_server_request_duration_seconds_sum{service_name=\"shop\",http_route=\"/x\"} 1.5\n\
             http_server_request_duration_seconds_count{service_name=\"shop\",http_route=\"/x\"} 3\n"
        );
        let om = encode(&fams, Format::OpenMetrics);
        assert!(om.contains("# TYPE tracer_events counter\n"), "{om}");
        assert!(om.contains("\ntracer_events_total{"), "{om}");
        assert!(
            om.contains("# UNIT http_server_request_duration_seconds seconds\n"),
            "{om}"
        );
        assert!(
            om.contains(
                "le=\"1.0\"} 2 # {trace_id=\"abababababababababababababababab\",\
                 span_id=\"cdcdcdcdcdcdcdcd\"} 0.5 1700000000.250000000\n"
            ),
            "{om}"
        );
        assert!(om.ends_with("# EOF\n"));
    }

    #[test]
    fn negotiates_the_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                          version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Classic);
        assert_eq!(Format::negotiate(None), Format::Classic);
    }
}
