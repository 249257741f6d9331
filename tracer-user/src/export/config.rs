//! Command line / environment configuration of the export layer, following the OpenTelemetry
//! SDK environment variables (`OTEL_EXPORTER_OTLP_*`, `OTEL_BSP_*`, `OTEL_TRACES_EXPORTER`).
use std::time::Duration;

use anyhow::{Context, bail};

use crate::key_value_list;

const HEADING: &str = "Export (OpenTelemetry OTLP)";

/// Where finished spans go.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExporterKind {
    /// OTLP to `--otlp-endpoint` (default `http://localhost:4317`, or `:4318` for http/protobuf).
    Otlp,
    /// One human-readable line per span on stdout.
    Console,
    /// Discard spans (still counted).
    None,
}

/// OTLP transport protocol.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (usually port 4317).
    #[value(name = "grpc")]
    Grpc,
    /// OTLP/HTTP with binary protobuf bodies (usually port 4318, path /v1/traces).
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

/// Request body compression.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    None,
}

// Export options, to be `#[command(flatten)]`-ed into the agent's command line. Every option
// can also be set through the standard OpenTelemetry SDK environment variable shown in
// `--help`; a command-line flag wins over its own variable. Empty variables count as unset.
// (A `//` comment: clap would turn a doc comment into the command's `about`.)
#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = HEADING)]
pub struct ExportArgs {
    /// Span exporter: `otlp`, `console` or `none`. Default: `otlp` when an OTLP endpoint is
    /// configured (--otlp-endpoint / --otlp-traces-endpoint), otherwise `console` (one line
    /// per span on stdout, no backend needed).
    #[arg(
        long,
        env = "OTEL_TRACES_EXPORTER",
        value_enum,
        ignore_case = true,
        value_name = "EXPORTER"
    )]
    pub traces_exporter: Option<ExporterKind>,

    /// Base URL of an OpenTelemetry collector/backend, e.g. `http://localhost:4317` (grpc) or
    /// `http://localhost:4318` (http/protobuf; `/v1/traces` is appended to the path).
    /// `https://` uses TLS with the Mozilla root certificates. Setting an endpoint switches
    /// from the console exporter to OTLP.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// Traces-specific endpoint; wins over --otlp-endpoint. For http/protobuf it is used as
    /// is (no `/v1/traces` appended), e.g. `http://collector:4318/v1/traces`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", value_name = "URL")]
    pub otlp_traces_endpoint: Option<String>,

    /// OTLP protocol: `grpc` or `http/protobuf`. Default: grpc (the OTel spec lets SDKs
    /// choose; grpc is what most collectors listen on at 4317).
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_PROTOCOL",
        value_enum,
        ignore_case = true
    )]
    pub otlp_protocol: Option<Protocol>,

    /// Traces-specific protocol; wins over --otlp-protocol.
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        value_enum,
        ignore_case = true
    )]
    pub otlp_traces_protocol: Option<Protocol>,

    /// Extra request headers (gRPC metadata) sent with every export, as `key=value` pairs
    /// separated by commas, values URL-encoded: `api-key=s3cr3t,x-tenant=a%20b`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_HEADERS", value_name = "K=V,...")]
    pub otlp_headers: Option<String>,

    /// Traces-specific headers, merged over --otlp-headers (same key: this one wins).
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        value_name = "K=V,..."
    )]
    pub otlp_traces_headers: Option<String>,

    /// Timeout of one export request in milliseconds (also bounds connecting, and the final
    /// flush at shutdown). Default: 10000.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TIMEOUT", value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub otlp_timeout: Option<u64>,

    /// Traces-specific request timeout in milliseconds; wins over --otlp-timeout.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub otlp_traces_timeout: Option<u64>,

    /// Compress export requests: `gzip` or `none`. Default: none.
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_COMPRESSION",
        value_enum,
        ignore_case = true
    )]
    pub otlp_compression: Option<Compression>,

    /// Traces-specific compression; wins over --otlp-compression.
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
        value_enum,
        ignore_case = true
    )]
    pub otlp_traces_compression: Option<Compression>,

    /// Maximum number of finished spans waiting for export. When full, new spans are dropped
    /// (and counted) rather than slowing down capture.
    #[arg(long, env = "OTEL_BSP_MAX_QUEUE_SIZE", value_name = "N", default_value_t = 2048,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub bsp_max_queue_size: u64,

    /// Maximum delay in milliseconds between a span finishing and its batch being sent.
    /// Default 200 (the SDK default is 1000; an agent's spans are already complete, so a
    /// shorter delay makes them visible sooner at little cost).
    #[arg(
        long,
        env = "OTEL_BSP_SCHEDULE_DELAY",
        value_name = "MS",
        default_value_t = 200
    )]
    pub bsp_schedule_delay: u64,

    /// Maximum number of spans in one export request (capped at the queue size).
    #[arg(long, env = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", value_name = "N", default_value_t = 512,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub bsp_max_export_batch_size: u64,

    /// Maximum time in milliseconds spent exporting one batch, retries included; after that
    /// the batch is dropped (and counted). Retryable failures (endpoint unreachable,
    /// UNAVAILABLE, HTTP 429/502/503/504, ...) are retried with exponential backoff.
    #[arg(
        long,
        env = "OTEL_BSP_EXPORT_TIMEOUT",
        value_name = "MS",
        default_value_t = 30000
    )]
    pub bsp_export_timeout: u64,
}

/// Where spans go, resolved from [`ExportArgs`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Console,
    None,
    /// OTLP/gRPC to this URL (`http(s)://host:port`).
    Grpc(String),
    /// OTLP/HTTP protobuf to this exact URL (path included).
    Http(String),
}

/// The resolved, validated configuration.
#[derive(Clone, Debug)]
pub struct ExportConfig {
    pub target: Target,
    /// Header names lowercased, values decoded.
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    pub compression: Compression,
    pub max_queue_size: usize,
    pub schedule_delay: Duration,
    pub max_batch_size: usize,
    /// Max time spent on one batch, retries included.
    pub export_timeout: Duration,
}

fn non_empty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

impl ExportArgs {
    /// Applies the OTel precedence rules (traces-specific over generic) and defaults.
    pub fn resolve(&self) -> anyhow::Result<ExportConfig> {
        let protocol = self
            .otlp_traces_protocol
            .or(self.otlp_protocol)
            .unwrap_or(Protocol::Grpc);
        let traces_ep = non_empty(&self.otlp_traces_endpoint);
        let generic_ep = non_empty(&self.otlp_endpoint);
        let kind = self
            .traces_exporter
            .unwrap_or(if traces_ep.or(generic_ep).is_some() {
                ExporterKind::Otlp
            } else {
                ExporterKind::Console
            });
        let target = match kind {
            ExporterKind::Console => Target::Console,
            ExporterKind::None => Target::None,
            ExporterKind::Otlp => {
                let url = match (traces_ep, generic_ep, protocol) {
                    (Some(ep), _, _) => normalize_url(ep)?,
                    (None, Some(ep), Protocol::Grpc) => normalize_url(ep)?,
                    (None, Some(ep), Protocol::HttpProtobuf) => {
                        append_signal_path(&normalize_url(ep)?)
                    }
                    (None, None, Protocol::Grpc) => "http://localhost:4317".to_owned(),
                    (None, None, Protocol::HttpProtobuf) => {
                        "http://localhost:4318/v1/traces".to_owned()
                    }
                };
                match protocol {
                    Protocol::Grpc => Target::Grpc(url),
                    Protocol::HttpProtobuf => Target::Http(url),
                }
            }
        };

        let mut headers = Vec::new();
        for src in [&self.otlp_headers, &self.otlp_traces_headers] {
            if let Some(s) = non_empty(src) {
                for (k, v) in parse_headers(s) {
                    headers.retain(|(k2, _): &(String, String)| *k2 != k);
                    headers.push((k, v));
                }
            }
        }

        let max_queue_size = usize::try_from(self.bsp_max_queue_size).unwrap_or(usize::MAX);
        let max_batch_size = usize::try_from(self.bsp_max_export_batch_size)
            .unwrap_or(usize::MAX)
            .min(max_queue_size);
        Ok(ExportConfig {
            target,
            headers,
            timeout: Duration::from_millis(
                self.otlp_traces_timeout
                    .or(self.otlp_timeout)
                    .unwrap_or(10_000),
            ),
            compression: self
                .otlp_traces_compression
                .or(self.otlp_compression)
                .unwrap_or(Compression::None),
            max_queue_size,
            schedule_delay: Duration::from_millis(self.bsp_schedule_delay),
            max_batch_size,
            export_timeout: Duration::from_millis(self.bsp_export_timeout),
        })
    }
}

/// Checks the scheme; a bare `host:port` gets `http://` (lenient: collectors' docs often show
/// `localhost:4317`).
fn normalize_url(ep: &str) -> anyhow::Result<String> {
    let url = if ep.contains("://") {
        ep.to_owned()
    } else {
        format!("http://{ep}")
    };
    let scheme = &url[..url.find("://").unwrap_or(0)];
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        bail!("OTLP endpoint {ep:?}: scheme must be http or https");
    }
    let rest = &url[scheme.len() + 3..];
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() {
        bail!("OTLP endpoint {ep:?}: no host");
    }
    reqwest::Url::parse(&url).with_context(|| format!("OTLP endpoint {ep:?}: not a valid URL"))?;
    Ok(url)
}

/// `OTEL_EXPORTER_OTLP_ENDPOINT` for http/protobuf: `v1/traces` is appended to the base path.
fn append_signal_path(base: &str) -> String {
    // Query strings/fragments in a base endpoint are unusual; keep them after the path.
    let (path_part, tail) = match base.find(['?', '#']) {
        Some(i) => base.split_at(i),
        None => (base, ""),
    };
    let sep = if path_part.ends_with('/') { "" } else { "/" };
    format!("{path_part}{sep}v1/traces{tail}")
}

/// Parses an `OTEL_EXPORTER_OTLP_HEADERS` list ([`key_value_list`]): names lowercased,
/// values decoded. Invalid entries, and names or values HTTP does not allow, are skipped with
/// a warning, as the SDKs do.
pub fn parse_headers(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in key_value_list::entries(s) {
        let (k, v) = match entry {
            Ok(kv) => kv,
            Err(invalid) => {
                tracing::warn!(
                    "OTLP headers: ignoring {:?} ({})",
                    invalid.text,
                    invalid.error
                );
                continue;
            }
        };
        let k = k.trim().to_ascii_lowercase();
        let valid_key = !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        let valid_value = v.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f));
        if !valid_key || !valid_value {
            tracing::warn!("OTLP headers: ignoring invalid header {k:?}");
            continue;
        }
        out.push((k, v));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::sync::Mutex;

    /// Tests that read or write the process environment hold this.
    pub(crate) static ENV_LOCK: Mutex<()> = Mutex::new(());

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        export: ExportArgs,
    }

    const VARS: &[&str] = &[
        "OTEL_TRACES_EXPORTER",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "OTEL_EXPORTER_OTLP_COMPRESSION",
        "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
        "OTEL_BSP_MAX_QUEUE_SIZE",
        "OTEL_BSP_SCHEDULE_DELAY",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
        "OTEL_BSP_EXPORT_TIMEOUT",
    ];

    /// Parses `args` with exactly the variables `env` set.
    fn parse(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<ExportConfig> {
        let _g = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: all tests touching the environment hold ENV_LOCK; nothing else in this test
        // binary reads these variables concurrently.
        unsafe {
            for v in VARS {
                std::env::remove_var(v);
            }
            for (k, v) in env {
                std::env::set_var(k, v);
            }
        }
        let mut argv = vec!["tracer"];
        argv.extend_from_slice(args);
        let r = Cli::try_parse_from(argv).map_err(anyhow::Error::from);
        // SAFETY: as above, ENV_LOCK is still held.
        unsafe {
            for (k, _) in env {
                std::env::remove_var(k);
            }
        }
        r?.export.resolve()
    }

    #[test]
    fn defaults_to_console() {
        let c = parse(&[], &[]).unwrap();
        assert_eq!(c.target, Target::Console);
        assert_eq!(c.timeout, Duration::from_millis(10_000));
        assert_eq!(c.max_queue_size, 2048);
        assert_eq!(c.max_batch_size, 512);
        assert_eq!(c.schedule_delay, Duration::from_millis(200));
        assert_eq!(c.compression, Compression::None);
        assert!(c.headers.is_empty());
    }

    #[test]
    fn endpoint_rules() {
        // grpc (default): generic endpoint as is.
        let c = parse(&[], &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")]).unwrap();
        assert_eq!(c.target, Target::Grpc("http://c:4317".into()));
        // http/protobuf: generic gets /v1/traces, with or without trailing slash or base path.
        for (ep, want) in [
            ("http://c:4318", "http://c:4318/v1/traces"),
            ("http://c:4318/", "http://c:4318/v1/traces"),
            ("https://c/base", "https://c/base/v1/traces"),
            ("https://c/base/", "https://c/base/v1/traces"),
        ] {
            let c = parse(
                &[],
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", ep),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ],
            )
            .unwrap();
            assert_eq!(c.target, Target::Http(want.into()), "{ep}");
        }
        // traces-specific wins and is used as is.
        let c = parse(
            &["--otlp-protocol", "http/protobuf"],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://specific:4318/custom",
                ),
            ],
        )
        .unwrap();
        assert_eq!(c.target, Target::Http("http://specific:4318/custom".into()));
        // traces protocol wins over generic protocol.
        let c = parse(
            &["--otlp-endpoint", "localhost:4317"],
            &[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ],
        )
        .unwrap();
        assert_eq!(c.target, Target::Grpc("http://localhost:4317".into()));
        // flag wins over its own env variable.
        let c = parse(
            &["--otlp-endpoint", "http://flag:1"],
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:1")],
        )
        .unwrap();
        assert_eq!(c.target, Target::Grpc("http://flag:1".into()));
        // empty variable = unset.
        let c = parse(&[], &[("OTEL_EXPORTER_OTLP_ENDPOINT", "")]).unwrap();
        assert_eq!(c.target, Target::Console);
        // explicit exporter kinds.
        let c = parse(
            &[],
            &[
                ("OTEL_TRACES_EXPORTER", "otlp"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ],
        )
        .unwrap();
        assert_eq!(
            c.target,
            Target::Http("http://localhost:4318/v1/traces".into())
        );
        let c = parse(
            &["--traces-exporter", "none", "--otlp-endpoint", "http://x:1"],
            &[],
        )
        .unwrap();
        assert_eq!(c.target, Target::None);
        // invalid values are errors.
        assert!(parse(&[], &[("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://x")]).is_err());
        assert!(parse(&[], &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]).is_err());
        assert!(parse(&[], &[("OTEL_EXPORTER_OTLP_TIMEOUT", "0")]).is_err());
    }

    #[test]
    fn knobs() {
        let c = parse(
            &["--bsp-max-export-batch-size", "100"],
            &[
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "500"),
                ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "250"),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
                ("OTEL_BSP_MAX_QUEUE_SIZE", "50"),
                ("OTEL_BSP_SCHEDULE_DELAY", "1000"),
            ],
        )
        .unwrap();
        assert_eq!(c.timeout, Duration::from_millis(250));
        assert_eq!(c.compression, Compression::Gzip);
        assert_eq!(c.max_queue_size, 50);
        assert_eq!(c.max_batch_size, 50, "batch size capped at queue size");
        assert_eq!(c.schedule_delay, Duration::from_millis(1000));
    }

    #[test]
    fn headers_decoding() {
        assert_eq!(
            parse_headers(
                "api-key=s3cr3t, X-Tenant = a%20b%2Cc ,bad, =x,k2=v=w,%41uth=%E2%9C%93,x=%zz"
            ),
            vec![
                ("api-key".into(), "s3cr3t".into()),
                ("x-tenant".into(), "a b,c".into()),
                ("k2".into(), "v=w".into()),
                ("auth".into(), "✓".into()),
            ]
        );
        // A `%` that starts no escape is malformed (W3C Baggage: `%` itself must be encoded):
        // that entry is skipped, the others kept.
        assert_eq!(parse_headers("x=%zz,y=1"), vec![("y".into(), "1".into())]);
        assert!(
            parse_headers("k=a%0Ab").is_empty(),
            "control characters rejected"
        );
        let c = parse(
            &[],
            &[
                ("OTEL_EXPORTER_OTLP_HEADERS", "a=1,b=2"),
                ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "b=3"),
            ],
        )
        .unwrap();
        assert_eq!(
            c.headers,
            vec![("a".into(), "1".into()), ("b".into(), "3".into())]
        );
    }
}
