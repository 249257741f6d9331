//! Command line / environment configuration of metric export, following the OpenTelemetry
//! SDK environment variables (`OTEL_METRICS_EXPORTER`, `OTEL_EXPORTER_PROMETHEUS_*`,
//! `OTEL_EXPORTER_OTLP_METRICS_*` falling back to the generic `OTEL_EXPORTER_OTLP_*` of
//! [`ExportArgs`], `OTEL_METRIC_EXPORT_*`).
use std::time::Duration;

use anyhow::{Context, bail};

use super::config::{Compression, ExportArgs, ExportConfig, Protocol, Target, parse_headers};

const HEADING: &str = "Metrics (Prometheus endpoint, OTLP metrics)";

/// Where metrics go (`OTEL_METRICS_EXPORTER` takes a comma-separated list of these).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsExporterKind {
    /// Serve `GET /metrics` for a Prometheus scraper on --prometheus-host:--prometheus-port.
    Prometheus,
    /// Push every --metric-export-interval over OTLP (--otlp-metrics-endpoint).
    Otlp,
    /// No metric export.
    None,
}

// Metrics options, `#[command(flatten)]`-ed into the agent's command line. Each can also be
// set through the OpenTelemetry SDK environment variable shown in `--help`; a flag wins over
// its own variable, and empty variables count as unset. (A `//` comment: clap would turn a
// doc comment into the command's `about`.)
#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = HEADING)]
pub struct MetricsExportArgs {
    /// Metric exporters, comma-separated: `prometheus`, `otlp`, `none` (e.g.
    /// `prometheus,otlp`). Default: prometheus.
    #[arg(
        long,
        env = "OTEL_METRICS_EXPORTER",
        value_enum,
        ignore_case = true,
        value_delimiter = ',',
        value_name = "EXPORTER,..."
    )]
    pub metrics_exporter: Vec<MetricsExporterKind>,

    /// Address the Prometheus endpoint (`/metrics`) listens on. Default: localhost (use
    /// `0.0.0.0` or `::` to be scraped from other machines).
    #[arg(long, env = "OTEL_EXPORTER_PROMETHEUS_HOST", value_name = "HOST")]
    pub prometheus_host: Option<String>,

    /// Port of the Prometheus endpoint. Default: 9464.
    #[arg(long, env = "OTEL_EXPORTER_PROMETHEUS_PORT", value_name = "PORT")]
    pub prometheus_port: Option<u16>,

    /// Metrics-specific OTLP endpoint; wins over --otlp-endpoint. For http/protobuf it is
    /// used as is (no `/v1/metrics` appended), e.g. `http://collector:4318/v1/metrics`.
    /// Default: --otlp-endpoint (with `/v1/metrics` appended for http/protobuf), else
    /// `http://localhost:4317` (grpc) / `http://localhost:4318/v1/metrics`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", value_name = "URL")]
    pub otlp_metrics_endpoint: Option<String>,

    /// Metrics-specific OTLP protocol (`grpc` or `http/protobuf`); wins over
    /// --otlp-protocol. Default: grpc.
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        value_enum,
        ignore_case = true
    )]
    pub otlp_metrics_protocol: Option<Protocol>,

    /// Metrics-specific headers (`key=value,...`, values URL-encoded), merged over
    /// --otlp-headers (same key: this one wins).
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
        value_name = "K=V,..."
    )]
    pub otlp_metrics_headers: Option<String>,

    /// Metrics-specific timeout of one OTLP request in milliseconds; wins over
    /// --otlp-timeout. Default: 10000.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub otlp_metrics_timeout: Option<u64>,

    /// Metrics-specific compression (`gzip` or `none`); wins over --otlp-compression.
    /// Default: none.
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION",
        value_enum,
        ignore_case = true
    )]
    pub otlp_metrics_compression: Option<Compression>,

    /// Milliseconds between two OTLP metric exports (cumulative values: a missed export
    /// loses nothing, the next one carries the totals). A final export runs at shutdown.
    #[arg(long, env = "OTEL_METRIC_EXPORT_INTERVAL", value_name = "MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub metric_export_interval: u64,

    /// Maximum milliseconds spent on one OTLP metric export, retries included; after that
    /// the export is abandoned (and counted in `tracer_metrics_export_failed_total`).
    #[arg(long, env = "OTEL_METRIC_EXPORT_TIMEOUT", value_name = "MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub metric_export_timeout: u64,
}

/// The resolved configuration.
#[derive(Clone, Debug)]
pub struct MetricsConfig {
    /// `host:port` of the Prometheus endpoint, when enabled.
    pub prometheus: Option<PrometheusAddr>,
    /// The OTLP metrics exporter, when enabled.
    pub otlp: Option<OtlpMetricsConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrometheusAddr {
    pub host: String,
    pub port: u16,
}

#[derive(Clone, Debug)]
pub struct OtlpMetricsConfig {
    /// Transport settings in the traces' shape (`target`, `headers`, `timeout`,
    /// `compression`), so the traces' transports serve metrics too. The batch fields are
    /// unused.
    pub transport: ExportConfig,
    pub interval: Duration,
    /// One export's budget, retries included.
    pub export_timeout: Duration,
}

fn non_empty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

impl MetricsExportArgs {
    /// Applies defaults and the OTel precedence rules (metrics-specific over the generic
    /// `OTEL_EXPORTER_OTLP_*` of `export`).
    pub fn resolve(&self, export: &ExportArgs) -> anyhow::Result<MetricsConfig> {
        let kinds = if self.metrics_exporter.is_empty() {
            vec![MetricsExporterKind::Prometheus]
        } else {
            self.metrics_exporter.clone()
        };
        let only_none = kinds.iter().all(|k| *k == MetricsExporterKind::None);
        if kinds.contains(&MetricsExporterKind::None) && !only_none {
            bail!("--metrics-exporter: `none` cannot be combined with other exporters");
        }
        let prometheus = kinds
            .contains(&MetricsExporterKind::Prometheus)
            .then(|| PrometheusAddr {
                host: non_empty(&self.prometheus_host)
                    .unwrap_or("localhost")
                    .to_owned(),
                port: self.prometheus_port.unwrap_or(9464),
            });
        let otlp = if kinds.contains(&MetricsExporterKind::Otlp) {
            Some(self.resolve_otlp(export)?)
        } else {
            None
        };
        Ok(MetricsConfig { prometheus, otlp })
    }

    fn resolve_otlp(&self, export: &ExportArgs) -> anyhow::Result<OtlpMetricsConfig> {
        let protocol = self
            .otlp_metrics_protocol
            .or(export.otlp_protocol)
            .unwrap_or(Protocol::Grpc);
        let url = match (
            non_empty(&self.otlp_metrics_endpoint),
            non_empty(&export.otlp_endpoint),
            protocol,
        ) {
            (Some(ep), _, _) => checked_url(ep)?,
            (None, Some(ep), Protocol::Grpc) => checked_url(ep)?,
            (None, Some(ep), Protocol::HttpProtobuf) => with_metrics_path(&checked_url(ep)?),
            (None, None, Protocol::Grpc) => "http://localhost:4317".to_owned(),
            (None, None, Protocol::HttpProtobuf) => "http://localhost:4318/v1/metrics".to_owned(),
        };
        let mut headers: Vec<(String, String)> = Vec::new();
        for src in [&export.otlp_headers, &self.otlp_metrics_headers] {
            for (k, v) in non_empty(src).map(parse_headers).unwrap_or_default() {
                headers.retain(|(k2, _)| *k2 != k);
                headers.push((k, v));
            }
        }
        let timeout = Duration::from_millis(
            self.otlp_metrics_timeout
                .or(export.otlp_timeout)
                .unwrap_or(10_000),
        );
        Ok(OtlpMetricsConfig {
            transport: ExportConfig {
                target: match protocol {
                    Protocol::Grpc => Target::Grpc(url),
                    Protocol::HttpProtobuf => Target::Http(url),
                },
                headers,
                timeout,
                compression: self
                    .otlp_metrics_compression
                    .or(export.otlp_compression)
                    .unwrap_or(Compression::None),
                max_queue_size: 1,
                schedule_delay: Duration::ZERO,
                max_batch_size: 1,
                export_timeout: Duration::from_millis(self.metric_export_timeout),
            },
            interval: Duration::from_millis(self.metric_export_interval),
            export_timeout: Duration::from_millis(self.metric_export_timeout),
        })
    }
}

/// An `http(s)://` URL with a host; a bare `host:port` gets `http://`, as for traces.
fn checked_url(ep: &str) -> anyhow::Result<String> {
    let url = if ep.contains("://") {
        ep.to_owned()
    } else {
        format!("http://{ep}")
    };
    let parsed = reqwest::Url::parse(&url)
        .with_context(|| format!("OTLP metrics endpoint {ep:?}: not a valid URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        bail!("OTLP metrics endpoint {ep:?}: scheme must be http or https");
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        bail!("OTLP metrics endpoint {ep:?}: no host");
    }
    Ok(url)
}

/// The generic `OTEL_EXPORTER_OTLP_ENDPOINT` for http/protobuf: `v1/metrics` is appended to
/// the base path.
fn with_metrics_path(base: &str) -> String {
    let (path, tail) = base.split_at(base.find(['?', '#']).unwrap_or(base.len()));
    let sep = if path.ends_with('/') { "" } else { "/" };
    format!("{path}{sep}v1/metrics{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        metrics: MetricsExportArgs,
    }

    /// The generic OTLP options, as a struct: the traces' tests set their variables
    /// concurrently, so these tests do not parse them from the environment.
    fn generic() -> ExportArgs {
        ExportArgs {
            traces_exporter: None,
            otlp_endpoint: None,
            otlp_traces_endpoint: None,
            otlp_protocol: None,
            otlp_traces_protocol: None,
            otlp_headers: None,
            otlp_traces_headers: None,
            otlp_timeout: None,
            otlp_traces_timeout: None,
            otlp_compression: None,
            otlp_traces_compression: None,
            bsp_max_queue_size: 2048,
            bsp_schedule_delay: 200,
            bsp_max_export_batch_size: 512,
            bsp_export_timeout: 30_000,
        }
    }

    fn parse(args: &[&str], export: &ExportArgs) -> anyhow::Result<MetricsConfig> {
        let mut argv = vec!["tracer"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv)?.metrics.resolve(export)
    }

    #[test]
    fn defaults_to_prometheus_on_localhost_9464() {
        let c = parse(&[], &generic()).unwrap();
        assert_eq!(
            c.prometheus,
            Some(PrometheusAddr {
                host: "localhost".into(),
                port: 9464
            })
        );
        assert!(c.otlp.is_none());
    }

    #[test]
    fn exporter_lists() {
        let c = parse(&["--metrics-exporter", "otlp,prometheus"], &generic()).unwrap();
        assert!(c.prometheus.is_some());
        let o = c.otlp.unwrap();
        assert_eq!(
            o.transport.target,
            Target::Grpc("http://localhost:4317".into())
        );
        assert_eq!(o.interval, Duration::from_secs(60));
        assert_eq!(o.export_timeout, Duration::from_secs(30));
        let c = parse(&["--metrics-exporter", "none"], &generic()).unwrap();
        assert!(c.prometheus.is_none() && c.otlp.is_none());
        assert!(parse(&["--metrics-exporter", "none,otlp"], &generic()).is_err());
        assert!(parse(&["--metrics-exporter", "statsd"], &generic()).is_err());
    }

    #[test]
    fn otlp_falls_back_to_the_generic_options() {
        let mut export = generic();
        export.otlp_endpoint = Some("http://c:4318/base".into());
        export.otlp_protocol = Some(Protocol::HttpProtobuf);
        export.otlp_headers = Some("a=1,b=2".into());
        export.otlp_timeout = Some(700);
        let c = parse(
            &[
                "--metrics-exporter",
                "otlp",
                "--otlp-metrics-headers",
                "b=3",
                "--metric-export-interval",
                "1000",
            ],
            &export,
        )
        .unwrap();
        let o = c.otlp.unwrap();
        assert_eq!(
            o.transport.target,
            Target::Http("http://c:4318/base/v1/metrics".into())
        );
        assert_eq!(
            o.transport.headers,
            vec![("a".into(), "1".into()), ("b".into(), "3".into())]
        );
        assert_eq!(o.transport.timeout, Duration::from_millis(700));
        assert_eq!(o.interval, Duration::from_secs(1));

        // Metrics-specific endpoint and protocol win; the endpoint is used as is.
        export.otlp_protocol = Some(Protocol::Grpc);
        let c = parse(
            &[
                "--metrics-exporter",
                "otlp",
                "--otlp-metrics-endpoint",
                "specific:4318/custom",
                "--otlp-metrics-protocol",
                "http/protobuf",
                "--otlp-metrics-timeout",
                "5",
            ],
            &export,
        )
        .unwrap();
        let o = c.otlp.unwrap();
        assert_eq!(
            o.transport.target,
            Target::Http("http://specific:4318/custom".into())
        );
        assert_eq!(o.transport.timeout, Duration::from_millis(5));
        let bad = [
            "--metrics-exporter",
            "otlp",
            "--otlp-metrics-endpoint",
            "ftp://x",
        ];
        assert!(parse(&bad, &export).is_err());
    }
}
