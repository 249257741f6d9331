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
    pub conns_closed: u64,
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
    pub nat_lookups: u64,
    pub nat_resolved: u64,
    pub nat_lookup_failed: u64,
    pub nat_linked: u64,
    pub forwarded_linked: u64,
    pub forwarded_rewritten: u64,
    pub connection_won: u64,
    pub tls_files_attached: u64,
    pub tls_attach_failed: u64,
    pub tls_unsupported: u64,
    pub tls_queue_full: u64,
    pub tls_notes_dropped: u64,
    pub tls_detached: u64,
    pub exported: u64,
    pub export_failed: u64,
    pub export_queue_full: u64,
    pub queue_len: u64,
    // The database parsers' losses by protocol (`tracer::conn::db_losses`): stream gaps,
    // framing lost, calls dropped with it, replies without a call, calls never answered.
    // Absent from lines recorded before them.
    #[serde(default)]
    pub postgres_gaps: u64,
    #[serde(default)]
    pub postgres_invalid_messages: u64,
    #[serde(default)]
    pub postgres_dropped_calls: u64,
    #[serde(default)]
    pub postgres_unmatched_responses: u64,
    #[serde(default)]
    pub postgres_unanswered_calls: u64,
    #[serde(default)]
    pub mysql_gaps: u64,
    #[serde(default)]
    pub mysql_invalid_messages: u64,
    #[serde(default)]
    pub mysql_dropped_calls: u64,
    #[serde(default)]
    pub mysql_unmatched_responses: u64,
    #[serde(default)]
    pub mysql_unanswered_calls: u64,
    #[serde(default)]
    pub redis_gaps: u64,
    #[serde(default)]
    pub redis_invalid_messages: u64,
    #[serde(default)]
    pub redis_dropped_calls: u64,
    #[serde(default)]
    pub redis_unmatched_responses: u64,
    #[serde(default)]
    pub redis_unanswered_calls: u64,
    /// Required: a line whose kernel counters could not be read fails to parse.
    pub kernel_drops: KernelDrops,
    /// `None` when injection is off (or its counters could not be read).
    pub injection: Option<Injection>,
    pub sampling: Sampling,
}

/// The sampling stage's counters (`tracer::pipeline::SamplingStats::named`): traces and spans
/// kept per reason (head, error, slow, attribute) and dropped per reason (unsampled, overflow),
/// late spans, and what is held now.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sampling {
    pub kept_traces_head: u64,
    pub kept_spans_head: u64,
    pub kept_traces_error: u64,
    pub kept_spans_error: u64,
    pub kept_traces_slow: u64,
    pub kept_spans_slow: u64,
    pub kept_traces_attribute: u64,
    pub kept_spans_attribute: u64,
    pub dropped_traces_unsampled: u64,
    pub dropped_spans_unsampled: u64,
    pub dropped_traces_overflow: u64,
    pub dropped_spans_overflow: u64,
    pub late_spans_kept: u64,
    pub late_spans_dropped: u64,
    pub held_traces: u64,
    pub held_bytes: u64,
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
    /// Forwarded `traceparent` headers whose parent-id the kernel rewrote (docs/proxies.md).
    #[serde(default)]
    pub rewrite_done: u64,
}

/// One database protocol's loss counters; all zero (`DbLosses::default()`) when nothing was
/// lost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DbLosses {
    pub gaps: u64,
    pub invalid_messages: u64,
    pub dropped_calls: u64,
    pub unmatched_responses: u64,
    pub unanswered_calls: u64,
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

    /// PostgreSQL's loss counters (`tracer_postgres_*`).
    pub fn postgres_losses(&self) -> DbLosses {
        DbLosses {
            gaps: self.postgres_gaps,
            invalid_messages: self.postgres_invalid_messages,
            dropped_calls: self.postgres_dropped_calls,
            unmatched_responses: self.postgres_unmatched_responses,
            unanswered_calls: self.postgres_unanswered_calls,
        }
    }

    /// MySQL's loss counters (`tracer_mysql_*`).
    pub fn mysql_losses(&self) -> DbLosses {
        DbLosses {
            gaps: self.mysql_gaps,
            invalid_messages: self.mysql_invalid_messages,
            dropped_calls: self.mysql_dropped_calls,
            unmatched_responses: self.mysql_unmatched_responses,
            unanswered_calls: self.mysql_unanswered_calls,
        }
    }

    /// Redis's loss counters (`tracer_redis_*`).
    pub fn redis_losses(&self) -> DbLosses {
        DbLosses {
            gaps: self.redis_gaps,
            invalid_messages: self.redis_invalid_messages,
            dropped_calls: self.redis_dropped_calls,
            unmatched_responses: self.redis_unmatched_responses,
            unanswered_calls: self.redis_unanswered_calls,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A `final stats` line as the agent logged it.
    const LINE: &str = r#"2026-12-01T09:33:31.411722Z  INFO tracer::agent: final stats {"events":240,"data_events":0,"malformed":0,"spans":0,"conns_open":0,"conns_opened":0,"conns_closed":0,"conns_expired":0,"conns_refused_full":0,"gaps":0,"gap_bytes":0,"invalid_messages":0,"dropped_messages":0,"unmatched_responses":0,"unanswered_requests":0,"h2_desyncs":0,"h2_invalid":0,"h2_dropped_blocks":0,"h2_oversized_frames":0,"h2_skipped_gaps":0,"h2_streams_over_limit":0,"h2_streams_reset":0,"h2_unknown_fields":0,"links_open":0,"links_linked":0,"links_ambiguous":0,"links_refused_full":0,"links_injected":0,"links_injected_unlinked":0,"address_linked":0,"nat_lookups":0,"nat_resolved":0,"nat_lookup_failed":0,"nat_linked":0,"forwarded_linked":0,"forwarded_rewritten":0,"connection_won":0,"tls_files_attached":1,"tls_attach_failed":0,"tls_unsupported":0,"tls_queue_full":0,"tls_notes_dropped":0,"tls_detached":0,"exported":0,"export_failed":0,"export_queue_full":0,"queue_len":0,"kernel_drops":{"conn_map_full":0,"copy_failed":0,"inflight_map_full":0,"not_http_conns":0,"ringbuf_full":0,"stale_conn_replaced":2,"tls_no_socket":0,"truncated_calls":0},"injection":{"inject_done":0,"inject_failed":0,"inject_skipped_has_context":0,"inject_skipped_head_incomplete":0,"inject_skipped_pipelined":0,"server_requests_seen_by_kernel":0},"sampling":{"kept_traces_head":3,"kept_spans_head":6,"kept_traces_error":0,"kept_spans_error":0,"kept_traces_slow":0,"kept_spans_slow":0,"kept_traces_attribute":0,"kept_spans_attribute":0,"dropped_traces_unsampled":0,"dropped_spans_unsampled":0,"dropped_traces_overflow":0,"dropped_spans_overflow":0,"late_spans_kept":0,"late_spans_dropped":0,"held_traces":0,"held_bytes":0}}"#;

    #[test]
    fn the_agents_line_parses() {
        let c = Counters::final_in(&format!("other line\n{LINE}\n")).unwrap();
        assert_eq!(c.events, 240);
        assert_eq!(c.kernel_drops.stale_conn_replaced, 2);
        assert_eq!(c.injection().inject_done, 0);
        assert_eq!(c.sampling.kept_traces_head, 3);
    }

    #[test]
    fn an_unknown_counter_fails() {
        let renamed = LINE.replace("\"gaps\":", "\"gap_count\":");
        let err = Counters::final_in(&renamed).unwrap_err();
        assert!(
            format!("{err:#}").contains("unknown field `gap_count`"),
            "{err:#}"
        );
        let nested = LINE.replace("\"ringbuf_full\":", "\"ring_full\":");
        assert!(Counters::final_in(&nested).is_err());
    }

    #[test]
    fn a_missing_counter_fails() {
        let without = LINE.replace("\"gaps\":0,", "");
        let err = Counters::final_in(&without).unwrap_err();
        assert!(
            format!("{err:#}").contains("missing field `gaps`"),
            "{err:#}"
        );
    }

    #[test]
    fn injection_off_is_none_and_unreadable_kernel_drops_fail() {
        // `key`'s object replaced by `null`, the rest of the line kept.
        let nulled = |key: &str| {
            let start = LINE.find(&format!("\"{key}\":{{")).unwrap();
            let end = start + LINE[start..].find('}').unwrap() + 1;
            format!("{}\"{key}\":null{}", &LINE[..start], &LINE[end..])
        };
        assert!(
            Counters::final_in(&nulled("injection"))
                .unwrap()
                .injection
                .is_none()
        );
        assert!(Counters::final_in(&nulled("kernel_drops")).is_err());
    }

    #[test]
    fn no_final_line_fails() {
        let periodic = LINE.replace("final stats", "periodic stats");
        assert!(Counters::final_in(&periodic).is_err());
        let lines = vec![periodic];
        assert_eq!(
            Counters::last_periodic(&lines).unwrap().unwrap().events,
            240
        );
    }

    #[test]
    fn export_totals_need_every_field() {
        let line = "INFO tracer::agent: export finished exported=3 failed=1 dropped_queue_full=0";
        let t = ExportTotals::from_log(line).unwrap();
        assert_eq!((t.exported, t.failed, t.dropped_queue_full), (3, 1, 0));
        assert!(ExportTotals::from_log("export finished exported=3 failed=1").is_err());
    }
}
