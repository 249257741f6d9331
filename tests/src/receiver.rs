//! The OTLP receiver (tests/receiver/otlp_receiver.py): decodes what the agent exports with the
//! official OpenTelemetry protobuf definitions and writes one JSON line per span and per
//! metric data point.
use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::{Proc, TempDir, wait_for, workspace_root};

/// How long [`Receiver::one_span`] waits for its span.
const ONE_SPAN_WAIT: Duration = Duration::from_secs(20);

pub struct Receiver {
    pub proc: Proc,
    pub grpc_port: u16,
    pub http_port: u16,
    out: PathBuf,
    metrics_out: PathBuf,
    _dir: TempDir,
}

impl Receiver {
    pub fn start(extra_args: &[&str]) -> Result<Self> {
        let dir = TempDir::new("receiver");
        let out = dir.path().join("spans.jsonl");
        let metrics_out = dir.path().join("metrics.jsonl");
        let script = workspace_root().join("tests/receiver/otlp_receiver.py");
        let proc = Proc::spawn(
            "otlp receiver",
            Command::new("python3")
                .arg(script)
                .args(["--grpc-port", "0", "--http-port", "0", "--out"])
                .arg(&out)
                .arg("--metrics-out")
                .arg(&metrics_out)
                .args(extra_args),
        )?;
        let ready = proc.wait_line("READY", Duration::from_secs(20))?;
        let port = |key: &str| -> Result<u16> {
            ready
                .split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|p| p.parse().ok())
                .with_context(|| format!("no {key} in {ready:?}"))
        };
        Ok(Self {
            grpc_port: port("grpc=")?,
            http_port: port("http=")?,
            proc,
            out,
            metrics_out,
            _dir: dir,
        })
    }

    pub fn grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    pub fn http_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Every metric data point received so far (see the receiver's docs for the fields:
    /// `name`, `type`, `resource`, `attributes`, `value` or `count`/`bucket_counts`/
    /// `exemplars`, ...).
    pub fn metric_points(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.metrics_out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until some data point matches `pred`; returns every matching one.
    pub fn wait_metric_points(
        &self,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        wait_for(timeout, || {
            let matching: Vec<Value> = self
                .metric_points()
                .into_iter()
                .filter(|p| pred(p))
                .collect();
            (!matching.is_empty()).then_some(matching)
        })
        .unwrap_or_default()
    }

    /// Waits until `pred` holds for at least `n` spans; returns all spans matching `pred`.
    pub fn wait_spans(
        &self,
        n: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        wait_for(timeout, || {
            let matching: Vec<Value> = self.spans().into_iter().filter(|s| pred(s)).collect();
            (matching.len() >= n).then_some(matching)
        })
        .unwrap_or_else(|| self.spans().into_iter().filter(|s| pred(s)).collect())
    }

    /// The one span of `kind` (`SPAN_KIND_SERVER`, …) for `url.path` `path` that process `pid`
    /// made; panics (showing what matched) unless exactly one arrives within 20 s.
    pub fn one_span(&self, kind: &str, path: &str, pid: u32) -> Value {
        let spans = self.wait_spans(1, ONE_SPAN_WAIT, |s| {
            s.kind() == kind
                && s.attr_str("url.path") == path
                && s.res("process.pid").as_i64() == Some(i64::from(pid))
        });
        assert_eq!(spans.len(), 1, "{kind} {path} of pid {pid}: {spans:#?}");
        spans.into_iter().next().unwrap()
    }
}

/// The one span of `spans` whose `url.path` is `path`; panics (showing them) unless there is
/// exactly one.
pub fn by_path<'a>(spans: &'a [Value], path: &str) -> &'a Value {
    let found: Vec<&Value> = spans
        .iter()
        .filter(|s| s.attr_str("url.path") == path)
        .collect();
    assert_eq!(found.len(), 1, "one span for {path}: {spans:#?}");
    found[0]
}

/// Accessors for the receiver's JSON spans.
pub trait SpanJson {
    fn attr(&self, key: &str) -> &Value;
    fn attr_str(&self, key: &str) -> &str;
    fn attr_i64(&self, key: &str) -> i64;
    fn res(&self, key: &str) -> &Value;
    fn kind(&self) -> &str;
    fn name(&self) -> &str;
    fn start_ns(&self) -> u64;
    fn end_ns(&self) -> u64;
    fn status_code(&self) -> &str;
    /// Hex ids as exported ("" when absent).
    fn trace_id(&self) -> &str;
    fn span_id(&self) -> &str;
    fn parent_id(&self) -> &str;
    /// W3C trace flags (the low byte of the OTLP span flags).
    fn trace_flags(&self) -> i64;
    /// The span's events (`name`, `time_unix_nano`, `attributes`).
    fn events(&self) -> Vec<&Value>;
}

impl SpanJson for Value {
    fn attr(&self, key: &str) -> &Value {
        &self["attributes"][key]
    }
    fn attr_str(&self, key: &str) -> &str {
        self.attr(key).as_str().unwrap_or("")
    }
    fn attr_i64(&self, key: &str) -> i64 {
        self.attr(key).as_i64().unwrap_or(i64::MIN)
    }
    fn res(&self, key: &str) -> &Value {
        &self["resource"][key]
    }
    fn kind(&self) -> &str {
        self["kind"].as_str().unwrap_or("")
    }
    fn name(&self) -> &str {
        self["name"].as_str().unwrap_or("")
    }
    fn start_ns(&self) -> u64 {
        self["start_time_unix_nano"].as_u64().unwrap_or(0)
    }
    fn end_ns(&self) -> u64 {
        self["end_time_unix_nano"].as_u64().unwrap_or(0)
    }
    fn status_code(&self) -> &str {
        self["status"]["code"].as_str().unwrap_or("")
    }
    fn trace_id(&self) -> &str {
        self["trace_id"].as_str().unwrap_or("")
    }
    fn span_id(&self) -> &str {
        self["span_id"].as_str().unwrap_or("")
    }
    fn parent_id(&self) -> &str {
        self["parent_span_id"].as_str().unwrap_or("")
    }
    fn trace_flags(&self) -> i64 {
        self["flags"].as_i64().map_or(-1, |f| f & 0xff)
    }
    fn events(&self) -> Vec<&Value> {
        self["events"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default()
    }
}
