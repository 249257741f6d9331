//! The agent's counters as the tests read them: the JSON object of its `{when} stats` log line
//! (see the README's counters section), typed. Every counter the agent prints is a field here
//! and unknown names are refused, so a counter added or renamed in the agent fails the tests
//! until this file follows, and an assertion can never read a counter that does not exist.
use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// One `stats` line: the agent's own counters, the kernel's drops and injection counts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counters {
    pub events: u64,
    pub data_events: u64,
    pub malformed: u64,
    pub spans: u64,
    pub conns_open: u64,
    pub conns_opened: u64,
    pub conns_expired: u64,
    pub conns_refused_full: u64,
    pub gaps: u64,
    pub gap_bytes: u64,
    pub invalid_messages: u64,
    pub dropped_messages: u64,
    pub unmatched_responses: u64,
    pub unanswered_requests: u64,
    pub h2_desyncs: u64,
    pub h2_invalid: u64,
    pub h2_dropped_blocks: u64,
    pub h2_oversized_frames: u64,
    pub h2_skipped_gaps: u64,
    pub h2_streams_over_limit: u64,
    pub h2_streams_reset: u64,
    pub h2_unknown_fields: u64,
    pub links_open: u64,
    pub links_linked: u64,
    pub links_ambiguous: u64,
    pub links_refused_full: u64,
    pub links_injected: u64,
    pub links_injected_unlinked: u64,
    pub address_linked: u64,
    pub tls_files_attached: u64,
    pub tls_attach_failed: u64,
    pub tls_unsupported: u64,
    pub tls_detached: u64,
    pub exported: u64,
    pub export_failed: u64,
    pub export_queue_full: u64,
    pub queue_len: u64,
    /// Required: a line whose kernel counters could not be read fails to parse.
    pub kernel_drops: KernelDrops,
    /// `None` when injection is off (or its counters could not be read).
    pub injection: Option<Injection>,
}

/// Kernel-side drops by cause (`tracer_common::DropCause`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelDrops {
    pub ringbuf_full: u64,
    pub conn_map_full: u64,
    pub inflight_map_full: u64,
    pub copy_failed: u64,
    pub truncated_calls: u64,
    pub not_http_conns: u64,
    pub stale_conn_replaced: u64,
    pub tls_no_socket: u64,
}

/// The kernel's traceparent injection counts (`tracer_common::propagation::InjectStat`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Injection {
    pub inject_done: u64,
    pub inject_skipped_has_context: u64,
    pub inject_skipped_head_incomplete: u64,
    pub inject_skipped_pipelined: u64,
    pub inject_failed: u64,
    pub server_requests_seen_by_kernel: u64,
}

impl Counters {
    /// The counters of the agent's last `final stats` line in `log` (its stderr).
    pub fn final_in(log: &str) -> Result<Self> {
        Self::last_in(log.lines(), "final").context("the agent logged no `final stats` line")?
    }

    /// The counters of the last `periodic stats` line among `lines`, if there is one yet.
    pub fn last_periodic(lines: &[String]) -> Option<Result<Self>> {
        Self::last_in(lines.iter().map(String::as_str), "periodic")
    }

    /// Injection's counts; panics when the agent had injection off.
    pub fn injection(&self) -> &Injection {
        self.injection
            .as_ref()
            .unwrap_or_else(|| panic!("injection was off: {self:?}"))
    }

    fn last_in<'a>(
        lines: impl DoubleEndedIterator<Item = &'a str>,
        when: &str,
    ) -> Option<Result<Self>> {
        let marker = format!("{when} stats ");
        let line = lines.rev().find(|l| l.contains(&marker))?;
        let json = &line[line.find(&marker)? + marker.len()..];
        Some(serde_json::from_str(json).with_context(|| format!("reading counters from {line}")))
    }
}

/// The agent's `export finished` line (after the final flush): what the exporter delivered.
#[derive(Debug, Clone, Copy)]
pub struct ExportTotals {
    pub exported: u64,
    pub failed: u64,
    pub dropped_queue_full: u64,
}

impl ExportTotals {
    /// From the last `export finished` line of `log`; every field must be there.
    pub fn from_log(log: &str) -> Result<Self> {
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("export finished"))
            .context("the agent logged no `export finished` line")?;
        let field = |name: &str| -> Result<u64> {
            let Some(value) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
            else {
                bail!("no `{name}=` in {line}");
            };
            value
                .parse()
                .with_context(|| format!("`{name}={value}` in {line}"))
        };
        Ok(Self {
            exported: field("exported")?,
            failed: field("failed")?,
            dropped_queue_full: field("dropped_queue_full")?,
        })
    }
}
