//! A real Prometheus server (Debian's `prometheus`) scraping the agent every second, queried
//! through its HTTP API; and the official Python `prometheus_client` parsers for the agent's
//! `/metrics` page.
use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{Proc, TempDir, curl, free_port, wait_for};

pub struct Prometheus {
    pub proc: Proc,
    pub port: u16,
    _dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus (own config and storage in a temporary directory, exemplar storage
    /// on) scraping `targets` (`host:port`, path `/metrics`) every second; returns once it
    /// is ready.
    pub fn start(targets: &[String]) -> Result<Self> {
        let dir = TempDir::new("prometheus");
        let config = dir.path().join("prometheus.yml");
        let quoted: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n\
                 scrape_configs:\n  - job_name: tracer\n    static_configs:\n      \
                 - targets: [{}]\n",
                quoted.join(", ")
            ),
        )?;
        let port = free_port();
        let storage: PathBuf = dir.path().join("data");
        let proc = Proc::spawn(
            "prometheus",
            Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", storage.display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--enable-feature=exemplar-storage")
                .arg("--log.level=warn"),
        )
        .context("starting prometheus (is it installed? `cargo xtask setup --test-deps`)")?;
        let base = format!("http://127.0.0.1:{port}");
        let ready = wait_for(Duration::from_secs(30), || {
            curl(&["-f", &format!("{base}/-/ready")]).ok()
        });
        if ready.is_none() {
            bail!("prometheus not ready: {}", proc.stderr_tail());
        }
        Ok(Self {
            proc,
            port,
            _dir: dir,
        })
    }

    fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value> {
        let url = format!("http://127.0.0.1:{}/api/v1/{path}", self.port);
        let mut args = vec!["-G".to_owned(), url];
        for (k, v) in params {
            args.push("--data-urlencode".into());
            args.push(format!("{k}={v}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let body: Value = serde_json::from_str(&curl(&args)?)?;
        if body["status"] != "success" {
            bail!("prometheus {path} {params:?}: {body}");
        }
        Ok(body["data"].clone())
    }

    /// An instant query: the result vector (`[{"metric": {...}, "value": [t, "v"]}, ...]`).
    pub fn query(&self, promql: &str) -> Result<Vec<Value>> {
        let data = self.api("query", &[("query", promql)])?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// The single value of an instant query, if it has exactly one series.
    pub fn value(&self, promql: &str) -> Option<f64> {
        let r = self.query(promql).ok()?;
        match r.as_slice() {
            [one] => one["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }

    /// Waits until `promql` has exactly one series whose value satisfies `ok`; returns the
    /// last value seen.
    pub fn wait_value(
        &self,
        promql: &str,
        timeout: Duration,
        ok: impl Fn(f64) -> bool,
    ) -> Option<f64> {
        let mut last = None;
        wait_for(timeout, || {
            last = self.value(promql);
            last.filter(|v| ok(*v))
        })
        .or(last)
    }

    /// `/api/v1/query_exemplars` over the last 10 minutes: every exemplar's labels.
    pub fn exemplars(&self, promql: &str) -> Result<Vec<Value>> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let data = self.api(
            "query_exemplars",
            &[
                ("query", promql),
                ("start", &(now - 600).to_string()),
                ("end", &(now + 60).to_string()),
            ],
        )?;
        Ok(data
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|series| series["exemplars"].as_array().cloned().unwrap_or_default())
            .map(|e| e["labels"].clone())
            .collect())
    }
}

/// The agent's `/metrics` page at `url`, asking for OpenMetrics or the classic format.
pub fn scrape(url: &str, openmetrics: bool) -> Result<String> {
    let accept = if openmetrics {
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    } else {
        "Accept: text/plain;version=0.0.4"
    };
    curl(&["-f", "-H", accept, url])
}

/// Parses `text` with the official Python parser (`prometheus_client.openmetrics.parser` or
/// `prometheus_client.parser`); returns its families as
/// `[{"name", "type", "samples": [{"name", "labels", "value", "exemplar"}]}]`, or the parser's
/// error.
pub fn parse_with_python(text: &str, openmetrics: bool) -> Result<Vec<Value>> {
    let parser = if openmetrics {
        "from prometheus_client.openmetrics.parser import text_string_to_metric_families"
    } else {
        "from prometheus_client.parser import text_string_to_metric_families"
    };
    let script = format!(
        "{parser}\nimport json, sys\nout = []\n\
         for f in text_string_to_metric_families(sys.stdin.read()):\n    \
             out.append({{'name': f.name, 'type': f.type, 'samples': [\n        \
                 {{'name': s.name, 'labels': s.labels, 'value': s.value,\n         \
                   'exemplar': s.exemplar and {{'labels': s.exemplar.labels, 'value': s.exemplar.value}}}}\n        \
                 for s in f.samples]}})\n\
         print(json.dumps(out))\n"
    );
    let mut child = Command::new("python3")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("python3")?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().context("stdin")?;
        stdin.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "the Python parser rejected the page: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}
