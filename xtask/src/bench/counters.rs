//! The agent's own accounting of a round, read from the lines it logs at exit.
use std::collections::BTreeMap;

use serde_json::{Value as Json, json};

/// The agent's own accounting at exit: the `final counters` line (kernel drops, reassembly and
/// parser losses) and the `export finished` line (spans exported after the final flush).
#[derive(Default)]
pub(super) struct Counters {
    kernel_drops: BTreeMap<String, u64>,
    agent: BTreeMap<String, u64>,
    export: BTreeMap<String, u64>,
}

/// Fields of the `final counters` line reported with each round (kernel drop causes come
/// between `kernel drops:` and the next `;`).
const AGENT_FIELDS: &[&str] = &[
    "events",
    "data_events",
    "malformed",
    "spans",
    "conns_open",
    "conns_opened",
    "conns_closed",
    "conns_expired",
    "conns_refused_full",
    "gaps",
    "gap_bytes",
    "invalid_messages",
    "dropped_messages",
    "unmatched_responses",
    "unanswered_requests",
    "h2_desyncs",
    "h2_dropped_blocks",
    "h2_streams_over_limit",
    "h2_streams_reset",
    "exported",
    "export_failed",
    "export_queue_full",
    "queue_len",
    "tls_files_attached",
    "tls_attach_failed",
    "tls_unsupported",
    "tls_detached",
    "postgres_gaps",
    "postgres_invalid_messages",
    "postgres_dropped_calls",
    "postgres_unmatched_responses",
    "postgres_unanswered_calls",
    "mysql_gaps",
    "mysql_invalid_messages",
    "mysql_dropped_calls",
    "mysql_unmatched_responses",
    "mysql_unanswered_calls",
    "redis_gaps",
    "redis_invalid_messages",
    "redis_dropped_calls",
    "redis_unmatched_responses",
    "redis_unanswered_calls",
];
/// Counters that mean lost or incomplete spans.
const LOSS_FIELDS: &[&str] = &[
    "malformed",
    "conns_refused_full",
    "gaps",
    "invalid_messages",
    "dropped_messages",
    "unmatched_responses",
    "h2_desyncs",
    "h2_dropped_blocks",
    "h2_streams_over_limit",
    "postgres_gaps",
    "postgres_invalid_messages",
    "postgres_dropped_calls",
    "postgres_unmatched_responses",
    "mysql_gaps",
    "mysql_invalid_messages",
    "mysql_dropped_calls",
    "mysql_unmatched_responses",
    "redis_gaps",
    "redis_invalid_messages",
    "redis_dropped_calls",
    "redis_unmatched_responses",
];

fn pairs(s: &str) -> impl Iterator<Item = (&str, u64)> {
    s.split_whitespace().filter_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        Some((k, v.trim_matches(['"', ';', ',']).parse().ok()?))
    })
}

impl Counters {
    pub(super) fn parse(lines: &[String]) -> Option<Self> {
        let mut c = Self::default();
        let fin = lines.iter().rev().find(|l| l.contains("final counters"))?;
        // `kernel drops: a=1 b=2; injection: …` then the agent's own `key=value` fields.
        let rest = fin.split_once("kernel drops:")?.1;
        let (drops, fields) = rest.split_once(';').unwrap_or((rest, ""));
        for (k, v) in pairs(drops) {
            c.kernel_drops.insert(k.to_owned(), v);
        }
        for (k, v) in pairs(fields) {
            if AGENT_FIELDS.contains(&k) || k.starts_with("inject_") {
                c.agent.insert(k.to_owned(), v);
            }
        }
        if let Some(l) = lines.iter().rev().find(|l| l.contains("export finished")) {
            for (k, v) in pairs(l) {
                c.export.insert(k.to_owned(), v);
            }
        }
        Some(c)
    }

    /// One of the agent's own fields of the `final counters` line (0 when absent).
    pub(super) fn agent(&self, key: &str) -> u64 {
        self.agent.get(key).copied().unwrap_or(0)
    }

    /// Every non-zero loss counter, or `none`.
    pub(super) fn losses_text(&self) -> String {
        let mut out: Vec<String> = self
            .kernel_drops
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("kernel {k}={v}"))
            .collect();
        for k in LOSS_FIELDS {
            if let Some(v) = self.agent.get(*k).filter(|v| **v > 0) {
                out.push(format!("{k}={v}"));
            }
        }
        for k in ["failed", "dropped_queue_full"] {
            if let Some(v) = self.export.get(k).filter(|v| **v > 0) {
                out.push(format!("export {k}={v}"));
            }
        }
        if out.is_empty() {
            "none".into()
        } else {
            out.join(" ")
        }
    }

    pub(super) fn json(&self) -> Json {
        json!({
            "kernel_drops": self.kernel_drops,
            "counters": self.agent,
            "export": self.export,
            "losses": self.losses_text(),
        })
    }
}
