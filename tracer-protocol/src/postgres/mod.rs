//! PostgreSQL frontend/backend protocol v3, client side: the startup message (database and
//! user), simple queries, the extended protocol (Parse/Bind/Execute/Sync, statement text
//! remembered per connection by name, bounded), CommandComplete, ErrorResponse (SQLSTATE),
//! ReadyForQuery; an SSLRequest answered `S` hands the connection to TLS, whose plaintext
//! (from the TLS library probes) is a new connection's startup.
//!
//! # Pairing
//!
//! The server answers in order. A simple query (`Q`) is one call, ended by its
//! ReadyForQuery. Each Execute (`E`) of the extended protocol is one call, ended by its
//! CommandComplete / EmptyQueryResponse / PortalSuspended, or by an ErrorResponse — after an
//! error the server skips to the next Sync, so later Executes of that batch never ran and are
//! not reported. A loss of framing (a gap, a length that cannot be) ends the connection's
//! spans: what was waiting is counted as dropped, nothing is reported from it afterwards.
mod framer;
#[cfg(test)]
mod tests;

use std::{collections::VecDeque, sync::Arc};

use framer::{Framer, Mode};

use crate::db::{DbExchange, DbSystem, Input, Sent, StartGaps, Statement};
use crate::{Chunk, Direction, ParseStats};

/// Prepared statements and portals remembered per connection (the oldest is forgotten).
const MAX_STATEMENTS: usize = 64;
/// Calls waiting for their result; beyond, the connection's pairing is given up.
const MAX_PENDING: usize = 256;

/// The startup message's protocol 3.0 code, and the special request codes.
const PROTOCOL_3: u32 = 196_608;
const SSL_REQUEST: u32 = 80_877_103;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Before the startup message (or an SSLRequest answered `N`).
    Startup,
    /// SSLRequest sent: the server answers with one byte.
    SslAnswer,
    /// Startup sent, authenticating: everything up to the first ReadyForQuery.
    Authenticating,
    Ready,
    /// TLS (the syscalls carry ciphertext), a cancel or GSS request: nothing more to parse.
    Opaque,
    /// Framing lost: nothing more is reported.
    Lost,
}

#[derive(Debug)]
enum Pending {
    /// A simple query: ended by ReadyForQuery; an error seen on the way.
    Simple {
        statement: Statement,
        sent: Sent,
        error: Option<String>,
    },
    Execute {
        statement: Statement,
        sent: Sent,
    },
    Sync,
}

/// One connection's parser (client side).
pub struct PgConn {
    framers: [Framer; 2],
    /// A framing mode to switch a direction to once the message being handled is done.
    switch: [Option<Mode>; 2],
    phase: Phase,
    database: Option<Arc<str>>,
    /// Prepared statements by name ("" is the unnamed one), and portals by name.
    statements: VecDeque<(Box<str>, Statement)>,
    portals: VecDeque<(Box<str>, Statement)>,
    pending: VecDeque<Pending>,
    /// After an ErrorResponse of the extended protocol, until the Sync: Executes were skipped.
    skipping: bool,
    /// When the request of the message being parsed started (its first call).
    gaps: StartGaps,
    stats: ParseStats,
}

impl Default for PgConn {
    fn default() -> Self {
        Self {
            framers: [Framer::new(Mode::Untyped), Framer::new(Mode::Typed)],
            switch: [None; 2],
            phase: Phase::Startup,
            database: None,
            statements: VecDeque::new(),
            portals: VecDeque::new(),
            pending: VecDeque::new(),
            skipping: false,
            gaps: StartGaps::default(),
            stats: ParseStats::default(),
        }
    }
}

impl PgConn {
    pub fn on_chunk(&mut self, dir: Direction, chunk: &Chunk<'_>, out: &mut Vec<DbExchange>) {
        if !self.gaps.seen[dir.index()] && dir == Direction::Egress && self.phase == Phase::Startup
        {
            // A connection first seen mid-stream: typed messages start with a letter, the
            // untyped startup with its length's high byte (0).
            if chunk.data.first().is_some_and(|b| *b != 0) {
                self.framers[0] = Framer::new(Mode::Typed);
                self.phase = Phase::Ready;
            }
        }
        self.gaps.on_chunk(dir, chunk);
        if matches!(self.phase, Phase::Opaque | Phase::Lost) {
            return;
        }
        let sent = Sent::of(chunk);
        let mut input = Input::of(chunk);
        while !input.is_empty() && !matches!(self.phase, Phase::Opaque | Phase::Lost) {
            // The framer is taken out while its message is handled (the handlers see the rest
            // of the state); mode switches they ask for apply before the next message.
            let mut framer = std::mem::take(&mut self.framers[dir.index()]);
            let next = framer.next(&mut input, sent);
            if let Ok(Some(msg)) = next {
                match dir {
                    Direction::Egress => self.on_client(msg.kind, framer.body(), msg.sent),
                    Direction::Ingress => {
                        self.on_server(msg.kind, framer.body(), chunk.ts_exit, out)
                    }
                }
            }
            self.framers[dir.index()] = framer;
            for (f, switch) in self.framers.iter_mut().zip(&mut self.switch) {
                if let Some(mode) = switch.take() {
                    *f = Framer::new(mode);
                }
            }
            match next {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(()) => self.lose(),
            }
        }
    }

    pub fn on_gap(&mut self, dir: Direction, len: u64) {
        if self.gaps.is_start(dir, len) {
            return;
        }
        self.lose();
    }

    pub fn on_close(&mut self) {
        self.stats.unanswered_requests += self.calls_pending();
        self.pending.clear();
    }

    pub fn stats(&self) -> ParseStats {
        self.stats
    }

    pub fn is_idle(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn memory_bytes(&self) -> usize {
        let text = |s: &Statement| s.text.as_ref().map_or(0, |t| t.len());
        self.framers.iter().map(Framer::memory_bytes).sum::<usize>()
            + self
                .statements
                .iter()
                .chain(&self.portals)
                .map(|(n, s)| n.len() + text(s) + std::mem::size_of::<(Box<str>, Statement)>())
                .sum::<usize>()
            + self.pending.len() * std::mem::size_of::<Pending>()
    }

    fn calls_pending(&self) -> u64 {
        self.pending
            .iter()
            .filter(|p| !matches!(p, Pending::Sync))
            .count() as u64
    }

    fn lose(&mut self) {
        if self.phase != Phase::Lost {
            self.stats.dropped_messages += self.calls_pending();
            self.stats.invalid_messages += 1;
        }
        self.pending.clear();
        self.phase = Phase::Lost;
    }

    fn push(&mut self, p: Pending) {
        if self.pending.len() >= MAX_PENDING {
            self.lose();
            return;
        }
        self.pending.push_back(p);
    }

    fn on_client(&mut self, kind: u8, body: &[u8], sent: Sent) {
        match (self.phase, kind) {
            (Phase::Startup, 0) => self.on_startup(body),
            (Phase::Startup, _) => self.lose(),
            (Phase::Ready | Phase::Authenticating, b'Q') => {
                let statement = Statement::of_sql(cstr(body).0);
                self.push(Pending::Simple {
                    statement,
                    sent,
                    error: None,
                });
            }
            (_, b'P') => {
                let (name, rest) = cstr(body);
                let (query, _) = cstr(rest);
                let statement = Statement::of_sql(query);
                remember(&mut self.statements, name, statement);
            }
            (_, b'B') => {
                let (portal, rest) = cstr(body);
                let (name, _) = cstr(rest);
                let statement = find(&self.statements, name).cloned().unwrap_or_default();
                remember(&mut self.portals, portal, statement);
            }
            (_, b'E') => {
                let (portal, _) = cstr(body);
                let statement = find(&self.portals, portal).cloned().unwrap_or_default();
                self.push(Pending::Execute { statement, sent });
            }
            (_, b'S') => self.push(Pending::Sync),
            (_, b'C') => {
                // Close of a statement ('S') or portal ('P'): forget its text.
                let (target, name) = body.split_first().map_or((0, &[][..]), |(t, r)| (*t, r));
                let list = if target == b'S' {
                    &mut self.statements
                } else {
                    &mut self.portals
                };
                let name = cstr(name).0;
                list.retain(|(n, _)| n.as_bytes() != name);
            }
            // Password/SASL, Describe, Flush, COPY data, Terminate...: nothing to pair.
            _ => {}
        }
    }

    fn on_startup(&mut self, body: &[u8]) {
        let code = body
            .get(..4)
            .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        match code {
            SSL_REQUEST => {
                self.phase = Phase::SslAnswer;
                self.switch[1] = Some(Mode::Byte);
            }
            PROTOCOL_3 => {
                let mut rest = &body[4..];
                let (mut user, mut database) = (None, None);
                while !rest.is_empty() && rest[0] != 0 {
                    let (key, r) = cstr(rest);
                    let (value, r) = cstr(r);
                    rest = r;
                    match key {
                        b"user" => user = Some(value),
                        b"database" => database = Some(value),
                        _ => {}
                    }
                }
                // The database defaults to the user's name.
                self.database = database
                    .or(user)
                    .and_then(|d| std::str::from_utf8(d).ok())
                    .filter(|d| !d.is_empty() && d.len() <= 256)
                    .map(Into::into);
                self.phase = Phase::Authenticating;
                self.switch[0] = Some(Mode::Typed);
            }
            // Cancel, GSSAPI encryption, other versions.
            _ => self.phase = Phase::Opaque,
        }
    }

    fn on_server(&mut self, kind: u8, body: &[u8], end_ns: u64, out: &mut Vec<DbExchange>) {
        if self.phase == Phase::SslAnswer {
            if kind == b'S' {
                self.phase = Phase::Opaque;
            } else {
                // Refused: the client may go on in plaintext with a startup message.
                self.phase = Phase::Startup;
                self.switch = [Some(Mode::Untyped), Some(Mode::Typed)];
            }
            return;
        }
        match kind {
            b'C' | b'I' | b's' => {
                if self.skipping {
                    return;
                }
                if let Some(Pending::Execute { .. }) = self.pending.front()
                    && let Some(Pending::Execute { statement, sent }) = self.pending.pop_front()
                {
                    out.push(self.exchange(statement, sent, None, end_ns));
                }
            }
            b'E' => {
                let code = sqlstate(body);
                match self.pending.front_mut() {
                    Some(Pending::Simple { error, .. }) => *error = code,
                    Some(Pending::Execute { .. }) => {
                        if let Some(Pending::Execute { statement, sent }) = self.pending.pop_front()
                        {
                            out.push(self.exchange(statement, sent, code, end_ns));
                        }
                        self.skipping = true;
                    }
                    // An error of Parse/Bind before any Execute, or of the startup.
                    _ => self.skipping = self.phase == Phase::Ready,
                }
            }
            b'Z' => {
                if self.phase == Phase::Authenticating {
                    self.phase = Phase::Ready;
                }
                self.skipping = false;
                // Ends the front simple query, or the batch up to its Sync (Executes left in
                // it were skipped after an error).
                while let Some(p) = self.pending.pop_front() {
                    match p {
                        Pending::Simple {
                            statement,
                            sent,
                            error,
                        } => {
                            out.push(self.exchange(statement, sent, error, end_ns));
                            break;
                        }
                        Pending::Sync => break,
                        Pending::Execute { .. } => {}
                    }
                }
            }
            _ => {}
        }
    }

    fn exchange(
        &self,
        statement: Statement,
        sent: Sent,
        error_code: Option<String>,
        end_ns: u64,
    ) -> DbExchange {
        DbExchange {
            system: DbSystem::Postgresql,
            operation: statement.operation,
            collection: statement.collection,
            namespace: self.database.clone(),
            query_text: statement.text,
            error_code,
            start_ns: sent.start_ns,
            end_ns,
            tid: sent.tid,
        }
    }
}

/// A NUL-terminated string at the start of `b` and what follows it (all of `b` when no NUL).
fn cstr(b: &[u8]) -> (&[u8], &[u8]) {
    match b.iter().position(|&c| c == 0) {
        Some(i) => (&b[..i], &b[i + 1..]),
        None => (b, &[]),
    }
}

fn find<'a>(list: &'a VecDeque<(Box<str>, Statement)>, name: &[u8]) -> Option<&'a Statement> {
    list.iter()
        .rev()
        .find(|(n, _)| n.as_bytes() == name)
        .map(|(_, s)| s)
}

fn remember(list: &mut VecDeque<(Box<str>, Statement)>, name: &[u8], statement: Statement) {
    list.retain(|(n, _)| n.as_bytes() != name);
    if list.len() >= MAX_STATEMENTS {
        list.pop_front();
    }
    list.push_back((String::from_utf8_lossy(name).into(), statement));
}

/// The SQLSTATE (`C` field) of an ErrorResponse: five characters of [0-9A-Z].
fn sqlstate(body: &[u8]) -> Option<String> {
    let mut rest = body;
    while let Some((&field, r)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let (value, r) = cstr(r);
        if field == b'C' {
            return (value.len() == 5
                && value
                    .iter()
                    .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()))
            .then(|| String::from_utf8_lossy(value).into_owned());
        }
        rest = r;
    }
    None
}
