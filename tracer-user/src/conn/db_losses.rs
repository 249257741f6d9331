//! What the database parsers lost, per protocol: the table's totals (`gaps`,
//! `invalid_messages`, ...) mix every protocol, so a PostgreSQL stream losing its framing
//! would hide among HTTP's. Counted for connections open and gone, like the totals, and
//! published as `tracer.postgres_*` / `tracer.mysql_*` / `tracer.redis_*` (see [`crate::agent_counters`]).
use tracer_common::Protocol;

use crate::protocol::ParseStats;

/// One protocol's losses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProtocolLosses {
    /// Holes in the connections' byte streams (the kernel could not deliver bytes).
    pub gaps: u64,
    /// What the parser counted: framing lost (a gap, a length that cannot be, a desync),
    /// calls dropped with it, replies without a call, calls never answered.
    pub parse: ParseStats,
}

impl ProtocolLosses {
    fn add(&mut self, other: &ProtocolLosses) {
        self.gaps += other.gaps;
        add_parse(&mut self.parse, &other.parse);
    }
}

/// Losses of the database connections, by protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DbLosses {
    pub postgres: ProtocolLosses,
    /// MySQL and MariaDB (one wire protocol).
    pub mysql: ProtocolLosses,
    pub redis: ProtocolLosses,
}

impl DbLosses {
    /// The protocol's losses (`None`: not a database protocol).
    pub fn of_mut(&mut self, protocol: Protocol) -> Option<&mut ProtocolLosses> {
        match protocol {
            Protocol::Postgres => Some(&mut self.postgres),
            Protocol::Mysql => Some(&mut self.mysql),
            Protocol::Redis => Some(&mut self.redis),
            _ => None,
        }
    }

    /// Adds a connection's parser counters to its protocol's.
    pub fn add_parse(&mut self, protocol: Protocol, s: &ParseStats) {
        if let Some(l) = self.of_mut(protocol) {
            add_parse(&mut l.parse, s);
        }
    }

    pub fn add(&mut self, other: &DbLosses) {
        self.postgres.add(&other.postgres);
        self.mysql.add(&other.mysql);
        self.redis.add(&other.redis);
    }

    /// `(log name, value)` of every counter, in log order (each name has its row in
    /// [`crate::agent_counters::AGENT_COUNTERS`]).
    pub fn readings(&self) -> [(&'static str, u64); 15] {
        let (p, m, r) = (&self.postgres, &self.mysql, &self.redis);
        [
            ("postgres_gaps", p.gaps),
            ("postgres_invalid_messages", p.parse.invalid_messages),
            ("postgres_dropped_calls", p.parse.dropped_messages),
            ("postgres_unmatched_responses", p.parse.unmatched_responses),
            ("postgres_unanswered_calls", p.parse.unanswered_requests),
            ("mysql_gaps", m.gaps),
            ("mysql_invalid_messages", m.parse.invalid_messages),
            ("mysql_dropped_calls", m.parse.dropped_messages),
            ("mysql_unmatched_responses", m.parse.unmatched_responses),
            ("mysql_unanswered_calls", m.parse.unanswered_requests),
            ("redis_gaps", r.gaps),
            ("redis_invalid_messages", r.parse.invalid_messages),
            ("redis_dropped_calls", r.parse.dropped_messages),
            ("redis_unmatched_responses", r.parse.unmatched_responses),
            ("redis_unanswered_calls", r.parse.unanswered_requests),
        ]
    }
}

pub fn add_parse(total: &mut ParseStats, s: &ParseStats) {
    total.invalid_messages += s.invalid_messages;
    total.dropped_messages += s.dropped_messages;
    total.unmatched_responses += s.unmatched_responses;
    total.unanswered_requests += s.unanswered_requests;
}
