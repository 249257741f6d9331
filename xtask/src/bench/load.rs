//! The load generators: wrk at saturation, oha at a fixed rate.
use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value as Json, json};
use test_kit::run_bounded;

use super::RATE;
use crate::util;

/// Requests per second of a closed-loop round (wrk, h2load), and how many were made.
pub(super) struct Throughput {
    pub(super) rps: f64,
    pub(super) requests: u64,
}

impl Throughput {
    pub(super) fn json(&self) -> Json {
        json!({ "rps": self.rps, "requests": self.requests })
    }
}

/// `wrk` with 16 keep-alive connections on one thread: nginx at saturation.
pub(super) fn wrk(url: &str, secs: u64) -> Result<Throughput> {
    let out = run_bounded(
        "wrk",
        Command::new("wrk").args(["-t1", "-c16", &format!("-d{secs}s"), url]),
        Duration::from_secs(secs + 30),
    )?;
    let field = |prefix: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_owned()))
    };
    let rps: f64 = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{out}"))?;
    let requests: u64 = out
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no request count in wrk's output:\n{out}"))?;
    if let Some(errors) = field("Non-2xx or 3xx responses:").or(field("Socket errors:")) {
        bail!("wrk saw errors ({errors}):\n{out}");
    }
    Ok(Throughput { rps, requests })
}

#[derive(Clone)]
pub(super) struct Oha {
    pub(super) rps: f64,
    pub(super) requests: u64,
    pub(super) p50_us: f64,
    pub(super) p99_us: f64,
    pub(super) p999_us: f64,
}

impl Oha {
    pub(super) fn json(&self) -> Json {
        json!({
            "rps": self.rps, "requests": self.requests,
            "p50_us": self.p50_us, "p99_us": self.p99_us, "p99.9_us": self.p999_us,
        })
    }
}

/// `oha` at [`RATE`] (see [`oha_at`]).
pub(super) fn oha(url: &str, secs: u64) -> Result<Oha> {
    oha_at(url, secs, RATE)
}

/// `oha` at `rate` requests/s (open loop, latencies measured from the scheduled send time), on
/// 16 keep-alive connections; requests still in flight at the deadline are waited for.
pub(super) fn oha_at(url: &str, secs: u64, rate: u32) -> Result<Oha> {
    let out = run_bounded(
        "oha",
        Command::new(oha_bin()).args([
            "--no-tui",
            "--output-format",
            "json",
            "-q",
            &rate.to_string(),
            "-z",
            &format!("{secs}s"),
            "-c",
            "16",
            "--latency-correction",
            "--wait-ongoing-requests-after-deadline",
            // The TLS variant's self-signed certificate.
            "--insecure",
            url,
        ]),
        Duration::from_secs(secs + 30),
    )?;
    let v: Json = serde_json::from_str(&out).with_context(|| format!("oha's output:\n{out}"))?;
    let num = |path: &[&str]| -> Result<f64> {
        path.iter()
            .try_fold(&v, |v, k| v.get(k))
            .and_then(Json::as_f64)
            .with_context(|| format!("no {} in oha's output", path.join(".")))
    };
    let count = |key: &str| -> u64 {
        v.get(key)
            .and_then(Json::as_object)
            .map_or(0, |m| m.values().filter_map(Json::as_u64).sum())
    };
    let ok = v
        .get("statusCodeDistribution")
        .and_then(|m| m.get("200"))
        .and_then(Json::as_u64)
        .unwrap_or(0);
    let requests = count("statusCodeDistribution");
    let errors = count("errorDistribution");
    ensure!(
        ok == requests && errors == 0,
        "oha saw errors or non-200 answers: {} / {}",
        v.get("statusCodeDistribution").unwrap_or(&Json::Null),
        v.get("errorDistribution").unwrap_or(&Json::Null)
    );
    ensure!(requests > 0, "oha sent no request:\n{out}");
    Ok(Oha {
        rps: num(&["summary", "requestsPerSec"])?,
        requests,
        p50_us: num(&["latencyPercentiles", "p50"])? * 1e6,
        p99_us: num(&["latencyPercentiles", "p99"])? * 1e6,
        p999_us: num(&["latencyPercentiles", "p99.9"])? * 1e6,
    })
}

pub(super) fn oha_bin() -> PathBuf {
    util::which("oha").unwrap_or_else(|| cargo_home().join("bin/oha"))
}

pub fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// TCP segments this network namespace has sent (`OutSegs` of /proc/net/snmp): the bench's
/// traffic is all on loopback, so a round's difference over its requests is the segments per
/// request. A traced request split into more segments (as the sockmap's send path did with
/// an injected header) shows here.
pub(super) fn tcp_segments_sent() -> Result<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").context("reading /proc/net/snmp")?;
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next(), tcp.next());
    let (Some(names), Some(values)) = (names, values) else {
        bail!("no Tcp lines in /proc/net/snmp");
    };
    let at = names
        .split_whitespace()
        .position(|n| n == "OutSegs")
        .context("no OutSegs in /proc/net/snmp")?;
    values
        .split_whitespace()
        .nth(at)
        .and_then(|v| v.parse().ok())
        .context("an unreadable OutSegs in /proc/net/snmp")
}
