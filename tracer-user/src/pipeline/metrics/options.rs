//! The span-metrics stage's configuration: command-line options (each also an environment
//! variable) and what they resolve to.
use std::sync::Arc;

use anyhow::{Result, bail, ensure};

use super::IDENTITY;
use super::red::{MAX_DIMENSIONS, fixed_labels};
use super::series::OVERFLOW_LABEL;

/// The semantic conventions' advice for duration histograms, in seconds.
pub const DEFAULT_DURATION_BOUNDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Span metrics (request durations, service graph, fan-out, retries, self time) computed from
/// every finished span.
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Span metrics")]
pub struct MetricsArgs {
    /// Do not compute metrics from spans (RED histograms, service graph, fan-out, retries,
    /// self time). The agent's own counters are still exported.
    #[arg(long, env = "TRACER_NO_SPAN_METRICS")]
    pub no_span_metrics: bool,

    /// At most this many series (label sets) per metric. Observations of further label sets go
    /// to one series labelled `otel_metric_overflow="true"` and are counted in
    /// `tracer_metrics_overflow_total`.
    #[arg(long, value_name = "N", default_value_t = 2000, env = "TRACER_METRICS_MAX_SERIES",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub metrics_max_series: u64,

    /// A series with no observation for this many seconds is dropped (its counts restart from
    /// zero if it comes back), which frees its place under the cap.
    #[arg(long, value_name = "SECS", default_value_t = 600, env = "TRACER_METRICS_SERIES_IDLE",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub metrics_series_idle: u64,

    /// Upper bounds of the duration histograms' buckets, in seconds, ascending
    /// (comma-separated). Default: the OpenTelemetry semantic conventions' advice,
    /// 0.005,0.01,0.025,0.05,0.075,0.1,0.25,0.5,0.75,1,2.5,5,7.5,10.
    #[arg(
        long,
        value_name = "SECS,...",
        value_delimiter = ',',
        env = "TRACER_METRICS_DURATION_BUCKETS"
    )]
    pub metrics_duration_buckets: Vec<f64>,

    /// Milliseconds a CLIENT span waits for the SERVER span it called (when that server is
    /// traced on this node) before it counts in the service graph with its peer's name.
    #[arg(long, value_name = "MS", default_value_t = 2000, env = "TRACER_SERVICE_GRAPH_WAIT_MS",
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub service_graph_wait_ms: u64,

    /// Also label the request duration histograms with the span attribute ATTRIBUTE, e.g. a
    /// captured header (`http.request.header.x-tier` with --capture-request-header x-tier).
    /// Repeatable (or comma-separated), at most 4. Each multiplies the series: the
    /// --metrics-max-series cap still bounds them. Prometheus shows the name with `_` for `.`
    /// and `-` (`http_request_header_x_tier`).
    #[arg(
        long,
        value_name = "ATTRIBUTE",
        value_delimiter = ',',
        env = "TRACER_METRICS_DIMENSIONS"
    )]
    pub metrics_dimension: Vec<String>,
}

/// What the stage does; [`MetricsArgs::options`] builds it.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricsOptions {
    pub enabled: bool,
    pub max_series: usize,
    pub series_idle_ns: u64,
    pub duration_bounds: Arc<[f64]>,
    pub pair_wait_ns: u64,
    /// How long children wait for their parent server span.
    pub children_wait_ns: u64,
    /// Span attributes that label the request duration histograms too (`--metrics-dimension`).
    pub dimensions: Vec<String>,
}

impl Default for MetricsOptions {
    fn default() -> Self {
        Self {
            enabled: true,
            max_series: 2000,
            series_idle_ns: 600 * 1_000_000_000,
            duration_bounds: DEFAULT_DURATION_BOUNDS.into(),
            pair_wait_ns: 2_000_000_000,
            children_wait_ns: 60 * 1_000_000_000,
            dimensions: Vec::new(),
        }
    }
}

impl MetricsArgs {
    /// The options, or an error naming what is wrong with the buckets.
    pub fn options(&self) -> Result<MetricsOptions> {
        let duration_bounds: Arc<[f64]> = if self.metrics_duration_buckets.is_empty() {
            DEFAULT_DURATION_BOUNDS.into()
        } else {
            let b = &self.metrics_duration_buckets;
            ensure!(
                b.iter().all(|v| v.is_finite() && *v >= 0.0),
                "--metrics-duration-buckets: bounds must be finite seconds ≥ 0, got {b:?}"
            );
            ensure!(
                b.windows(2).all(|w| w[0] < w[1]),
                "--metrics-duration-buckets: bounds must be strictly ascending, got {b:?}"
            );
            b.as_slice().into()
        };
        Ok(MetricsOptions {
            enabled: !self.no_span_metrics,
            max_series: self.metrics_max_series as usize,
            series_idle_ns: self.metrics_series_idle.saturating_mul(1_000_000_000),
            duration_bounds,
            pair_wait_ns: self.service_graph_wait_ms * 1_000_000,
            dimensions: dimensions(&self.metrics_dimension)?,
            ..MetricsOptions::default()
        })
    }
}

/// The `--metrics-dimension`s, checked: at most [`MAX_DIMENSIONS`], none that is, or that
/// Prometheus would show as, a label the metrics already have or another dimension.
fn dimensions(names: &[String]) -> Result<Vec<String>> {
    // Prometheus keeps letters, digits and `_`; the exporter makes every other character `_`.
    let prometheus = |n: &str| -> String {
        n.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect()
    };
    let mut out: Vec<String> = Vec::new();
    for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        let p = prometheus(name);
        let same = |t: &str| prometheus(t) == p;
        let taken = fixed_labels()
            .chain(IDENTITY.iter().copied())
            .chain([OVERFLOW_LABEL])
            .any(same)
            || out.iter().any(|t| same(t));
        if taken {
            bail!("--metrics-dimension {name}: the metrics already have this label");
        }
        out.push(name.to_owned());
    }
    ensure!(
        out.len() <= MAX_DIMENSIONS,
        "--metrics-dimension: at most {MAX_DIMENSIONS} dimensions, got {}",
        out.len()
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        metrics: MetricsArgs,
    }

    fn parse(args: &[&str]) -> Result<MetricsOptions> {
        Cli::try_parse_from(std::iter::once("t").chain(args.iter().copied()))?
            .metrics
            .options()
    }

    #[test]
    fn defaults_and_flags() {
        assert_eq!(parse(&[]).unwrap(), MetricsOptions::default());
        let o = parse(&[
            "--no-span-metrics",
            "--metrics-max-series=5",
            "--metrics-series-idle=3",
            "--metrics-duration-buckets=0.1,1,10",
        ])
        .unwrap();
        assert!(!o.enabled);
        assert_eq!(o.max_series, 5);
        assert_eq!(o.series_idle_ns, 3_000_000_000);
        assert_eq!(&*o.duration_bounds, &[0.1, 1.0, 10.0]);
    }

    #[test]
    fn bad_buckets_are_a_clear_error() {
        let e = parse(&["--metrics-duration-buckets=1,0.5"]).unwrap_err();
        assert!(e.to_string().contains("ascending"), "{e}");
        assert!(parse(&["--metrics-duration-buckets=-1"]).is_err());
        assert!(parse(&["--metrics-max-series=0"]).is_err());
    }

    #[test]
    fn dimensions_are_checked() {
        let o = parse(&[
            "--metrics-dimension",
            "http.request.header.x-tier",
            "--metrics-dimension=deployment.environment, app.tenant",
        ])
        .unwrap();
        assert_eq!(
            o.dimensions,
            [
                "http.request.header.x-tier",
                "deployment.environment",
                "app.tenant"
            ]
        );
        assert!(parse(&[]).unwrap().dimensions.is_empty());
        for taken in [
            "http.route",
            "http_route",
            "service.name",
            "otel.metric.overflow",
            "rpc.method",
            "a.b,a-b",
        ] {
            let e = parse(&["--metrics-dimension", taken]).unwrap_err();
            assert!(e.to_string().contains("already have"), "{taken}: {e}");
        }
        let e = parse(&["--metrics-dimension=a,b,c,d,e"]).unwrap_err();
        assert!(e.to_string().contains("at most 4"), "{e}");
    }
}
