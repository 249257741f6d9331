//! MySQL / MariaDB client/server protocol, client side: the server's greeting (version:
//! `mysql` or `mariadb`; capabilities), the client's HandshakeResponse41 (the database it
//! connects with), authentication up to its OK, then commands: COM_QUERY, COM_STMT_PREPARE
//! (the statement text remembered by the id its PREPARE_OK gives, bounded; a failed one is
//! a span),
//! COM_STMT_EXECUTE, COM_INIT_DB (the namespace changes), COM_STMT_CLOSE/RESET/FETCH,
//! COM_PING, COM_QUIT and the other one-reply commands. An SSL request hands the connection to
//! TLS: the plaintext (from the TLS library probes) is a new connection's, not parsed here.
//!
//! # Pairing
//!
//! The server answers each command in order. A reply is an OK, an ERR (error code, SQLSTATE),
//! or a result set: a column count, column definitions, rows, and a terminator — an EOF
//! packet after the definitions and after the rows, or (CLIENT_DEPRECATE_EOF) one OK packet
//! with a 0xfe header after the rows. The two are told apart by length (an EOF is 5 bytes, an
//! OK at least 7), so the parser needs neither the column count nor MariaDB's metadata
//! caching; rows are skipped by their packet lengths. A terminator whose status says more
//! results exist (multi-statements, CALL) is followed by the next result of the same command.
//! A client packet that does not start a command (sequence other than 0, an unknown
//! command), or a gap, ends the connection's spans: what was waiting is counted as dropped.
mod framer;
#[cfg(test)]
mod tests;

use std::{collections::VecDeque, sync::Arc};

use framer::{CONTINUED, Framer, Packet};

use crate::db::{DbExchange, DbSystem, Input, Sent, StartGaps, Statement};
use crate::{Chunk, Direction, ParseStats};

/// Prepared statements remembered per connection (the oldest is forgotten).
const MAX_STATEMENTS: usize = 64;
/// Commands waiting for their reply; beyond, the connection's pairing is given up.
const MAX_PENDING: usize = 256;
/// Payload bytes kept per packet: the statement text of a client's command (longer text is
/// cut; its sanitised form is bounded anyway), the start of a server's packet.
const KEEP_CLIENT: usize = 16 * 1024;
const KEEP_SERVER: usize = 512;

// Capability flags.
const CLIENT_CONNECT_WITH_DB: u32 = 1 << 3;
const CLIENT_PROTOCOL_41: u32 = 1 << 9;
const CLIENT_SSL: u32 = 1 << 11;
const CLIENT_SECURE_CONNECTION: u32 = 1 << 15;
const CLIENT_PLUGIN_AUTH_LENENC_DATA: u32 = 1 << 21;
const CLIENT_DEPRECATE_EOF: u32 = 1 << 24;

// Server status flags.
const MORE_RESULTS_EXIST: u16 = 0x0008;
const CURSOR_EXISTS: u16 = 0x0040;

// Commands.
const COM_QUIT: u8 = 0x01;
const COM_INIT_DB: u8 = 0x02;
const COM_QUERY: u8 = 0x03;
const COM_FIELD_LIST: u8 = 0x04;
const COM_STATISTICS: u8 = 0x09;
const COM_PROCESS_KILL: u8 = 0x0c;
const COM_DEBUG: u8 = 0x0d;
const COM_PING: u8 = 0x0e;
const COM_CHANGE_USER: u8 = 0x11;
const COM_STMT_PREPARE: u8 = 0x16;
const COM_STMT_EXECUTE: u8 = 0x17;
const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
const COM_STMT_CLOSE: u8 = 0x19;
const COM_STMT_RESET: u8 = 0x1a;
const COM_SET_OPTION: u8 = 0x1b;
const COM_STMT_FETCH: u8 = 0x1c;
const COM_RESET_CONNECTION: u8 = 0x1f;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the server's greeting.
    Greeting,
    /// The greeting arrived: the client answers with its handshake response or SSL request.
    Response,
    /// Authenticating: everything up to the server's OK.
    Authenticating,
    Ready,
    /// The client asked for TLS: the syscalls carry ciphertext from here on; the conversation
    /// goes on in the TLS plaintext (see [`MysqlConn::resume_over_tls`]).
    TlsRequested,
    /// The server refused the connection (or the client's TLS plaintext is not delivered).
    Opaque,
    /// Framing lost: nothing more is reported.
    Lost,
}

#[derive(Debug)]
enum Command {
    /// COM_QUERY or COM_STMT_EXECUTE: a span. `use_db`: a `USE db` statement's database.
    Call {
        statement: Statement,
        sent: Sent,
        use_db: Option<Arc<str>>,
    },
    /// A failed PREPARE is a span too (the statement never runs); a prepared one is not.
    Prepare(Statement, Sent),
    InitDb(Arc<str>),
    /// Rows and their terminator (COM_STMT_FETCH), or column definitions up to an EOF
    /// (COM_FIELD_LIST): no span.
    Fetch,
    FieldList,
    /// One reply packet, whatever it is (ping, reset, statistics...).
    OnePacket,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CommandKind {
    Call,
    Prepare,
    InitDb,
    Fetch,
    FieldList,
    OnePacket,
}

impl CommandKind {
    fn of(c: &Command) -> Self {
        match c {
            Command::Call { .. } => Self::Call,
            Command::Prepare(..) => Self::Prepare,
            Command::InitDb(_) => Self::InitDb,
            Command::Fetch => Self::Fetch,
            Command::FieldList => Self::FieldList,
            Command::OnePacket => Self::OnePacket,
        }
    }
}

/// Where the reply of the front command is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reply {
    Start,
    /// Inside a result set; whether the EOF after the column definitions was seen.
    ResultSet {
        columns_eof: bool,
    },
    /// PREPARE_OK's parameter and column definitions still to come.
    PrepareMeta {
        left: u32,
    },
    /// LOCAL INFILE: the client sends the file; the server's OK or ERR ends the command.
    LocalInfile,
}

/// One connection's parser (client side).
pub struct MysqlConn {
    framers: [Framer; 2],
    phase: Phase,
    system: DbSystem,
    server_caps: u32,
    /// The capabilities both ends agreed on (the server's until the client answered).
    caps: u32,
    database: Option<Arc<str>>,
    statements: VecDeque<(u32, Statement)>,
    pending: VecDeque<Command>,
    reply: Reply,
    /// The greeting's header was read by a call of its own before the kernel recognised the
    /// connection (the kernel classified it from the payload's call): that call is the payload.
    headerless_greeting: bool,
    /// The error of the front command's reply (an ERR ends it; kept for a multi-result one).
    error: Option<String>,
    gaps: StartGaps,
    stats: ParseStats,
}

impl Default for MysqlConn {
    fn default() -> Self {
        Self {
            framers: [Framer::new(KEEP_CLIENT), Framer::new(KEEP_SERVER)],
            phase: Phase::Greeting,
            // Until a greeting names MariaDB (a connection seen mid-stream never shows one).
            system: DbSystem::Mysql,
            server_caps: 0,
            caps: CLIENT_PROTOCOL_41 | CLIENT_DEPRECATE_EOF,
            database: None,
            statements: VecDeque::new(),
            pending: VecDeque::new(),
            reply: Reply::Start,
            headerless_greeting: false,
            error: None,
            gaps: StartGaps::default(),
            stats: ParseStats::default(),
        }
    }
}

impl MysqlConn {
    pub fn on_chunk(&mut self, dir: Direction, chunk: &Chunk<'_>, out: &mut Vec<DbExchange>) {
        if self.phase == Phase::Greeting && !self.gaps.seen[0] && !self.gaps.seen[1] {
            // A connection whose first bytes are the client's: open before tracing, mid-stream
            // (the kernel recognised a command).
            if dir == Direction::Egress {
                self.phase = Phase::Ready;
            }
        }
        self.gaps.on_chunk(dir, chunk);
        if matches!(
            self.phase,
            Phase::TlsRequested | Phase::Opaque | Phase::Lost
        ) {
            return;
        }
        if dir == Direction::Ingress && std::mem::take(&mut self.headerless_greeting) {
            if chunk.data.len() as u64 == u64::from(chunk.total_len) {
                self.on_greeting(chunk.data);
            } else {
                self.lose();
            }
            return;
        }
        let sent = Sent::of(chunk);
        let mut input = Input::of(chunk);
        while !input.is_empty()
            && !matches!(
                self.phase,
                Phase::TlsRequested | Phase::Opaque | Phase::Lost
            )
        {
            let framer = &mut self.framers[dir.index()];
            match framer.next(&mut input, sent) {
                Ok(Some(packet)) => {
                    // The body is moved out while the packet is handled (the handlers see
                    // the rest of the state).
                    let framer = std::mem::replace(&mut self.framers[dir.index()], Framer::new(0));
                    match dir {
                        Direction::Egress => self.on_client(packet, framer.body()),
                        Direction::Ingress => {
                            self.on_server(packet, framer.body(), chunk.ts_exit, out)
                        }
                    }
                    self.framers[dir.index()] = framer;
                }
                Ok(None) => break,
                Err(()) => self.lose(),
            }
        }
    }

    /// The TLS plaintext of a connection whose client asked for TLS after the greeting: the
    /// same conversation, its next packet the client's handshake response (sequence 2), in a
    /// byte stream of its own. False (nothing changed) when the client had not asked.
    pub fn resume_over_tls(&mut self) -> bool {
        if self.phase != Phase::TlsRequested {
            return false;
        }
        self.phase = Phase::Response;
        self.framers = [Framer::new(KEEP_CLIENT), Framer::new(KEEP_SERVER)];
        self.gaps = StartGaps::default();
        true
    }

    pub fn on_gap(&mut self, dir: Direction, len: u64) {
        if dir == Direction::Ingress
            && len == 4
            && self.phase == Phase::Greeting
            && !self.gaps.seen[0]
            && !self.gaps.seen[1]
        {
            // A client that reads each header apart: the kernel saw the greeting's payload.
            self.headerless_greeting = true;
            return;
        }
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
                .map(|(_, s)| text(s) + std::mem::size_of::<(u32, Statement)>())
                .sum::<usize>()
            + self.pending.len() * std::mem::size_of::<Command>()
    }

    fn calls_pending(&self) -> u64 {
        self.pending
            .iter()
            .filter(|c| matches!(c, Command::Call { .. }))
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

    fn push(&mut self, c: Command) {
        if self.pending.len() >= MAX_PENDING {
            self.lose();
            return;
        }
        self.pending.push_back(c);
    }

    fn on_client(&mut self, packet: Packet, body: &[u8]) {
        match self.phase {
            Phase::Greeting => self.lose(),
            Phase::Response => self.on_handshake_response(packet, body),
            // Authentication data (plugin switches, public key requests...).
            Phase::Authenticating => {}
            Phase::Ready => {
                if packet.seq != 0 {
                    // LOCAL INFILE contents continue the command's sequence.
                    if self.reply != Reply::LocalInfile {
                        self.lose();
                    }
                    return;
                }
                self.on_command(packet, body);
            }
            Phase::TlsRequested | Phase::Opaque | Phase::Lost => {}
        }
    }

    fn on_command(&mut self, packet: Packet, body: &[u8]) {
        let Some((&command, arg)) = body.split_first() else {
            self.lose();
            return;
        };
        match command {
            COM_QUERY => {
                let use_db = use_database(arg);
                self.push(Command::Call {
                    statement: Statement::of_sql(arg),
                    sent: packet.sent,
                    use_db,
                });
            }
            COM_STMT_PREPARE => self.push(Command::Prepare(Statement::of_sql(arg), packet.sent)),
            COM_STMT_EXECUTE => {
                let id = le_u32(arg);
                // MariaDB: -1 names the statement prepared last.
                let statement = if id == Some(u32::MAX) {
                    self.statements.back().map(|(_, s)| s.clone())
                } else {
                    id.and_then(|id| self.statements.iter().find(|(i, _)| *i == id))
                        .map(|(_, s)| s.clone())
                };
                self.push(Command::Call {
                    statement: statement.unwrap_or_default(),
                    sent: packet.sent,
                    use_db: None,
                });
            }
            COM_STMT_CLOSE => {
                if let Some(id) = le_u32(arg) {
                    self.statements.retain(|(i, _)| *i != id);
                }
            }
            COM_INIT_DB => match name(arg) {
                Some(db) => self.push(Command::InitDb(db)),
                None => self.push(Command::OnePacket),
            },
            COM_STMT_FETCH => self.push(Command::Fetch),
            COM_FIELD_LIST => self.push(Command::FieldList),
            COM_PING | COM_STMT_RESET | COM_SET_OPTION | COM_RESET_CONNECTION
            | COM_PROCESS_KILL | COM_STATISTICS | COM_DEBUG => self.push(Command::OnePacket),
            COM_CHANGE_USER => {
                // A new authentication; commands wait for its OK.
                self.phase = Phase::Authenticating;
            }
            // No reply.
            COM_QUIT | COM_STMT_SEND_LONG_DATA => {}
            // Replication, unknown or retired commands: their replies cannot be followed.
            _ => self.lose(),
        }
    }

    /// HandshakeResponse41: capabilities (4), max packet (4), charset (1), filler (23), user,
    /// auth data, database (CLIENT_CONNECT_WITH_DB); or the SSL request: its first 32 bytes.
    fn on_handshake_response(&mut self, packet: Packet, body: &[u8]) {
        let client_caps = le_u32(body).unwrap_or(0);
        self.caps = client_caps & self.server_caps;
        if client_caps & CLIENT_SSL != 0 && packet.len == 32 {
            self.phase = Phase::TlsRequested;
            return;
        }
        self.phase = Phase::Authenticating;
        if client_caps & CLIENT_PROTOCOL_41 == 0 || body.len() < 32 {
            return;
        }
        let (_user, rest) = cstr(&body[32..]);
        let rest = if client_caps & CLIENT_PLUGIN_AUTH_LENENC_DATA != 0 {
            lenenc(rest).and_then(|(n, r)| r.get(n as usize..))
        } else if client_caps & CLIENT_SECURE_CONNECTION != 0 {
            rest.split_first().and_then(|(n, r)| r.get(*n as usize..))
        } else {
            Some(cstr(rest).1)
        };
        if client_caps & CLIENT_CONNECT_WITH_DB != 0
            && let Some(rest) = rest
        {
            self.database = name(cstr(rest).0);
        }
    }

    /// HandshakeV10: protocol 10, version, thread id (4), auth data (8), filler (1),
    /// capabilities' low half (2), charset (1), status (2), capabilities' high half (2)...
    fn on_greeting(&mut self, body: &[u8]) {
        let Some((&10, rest)) = body.split_first() else {
            // An ERR instead of a greeting (too many connections, host blocked).
            self.phase = Phase::Opaque;
            return;
        };
        let (version, rest) = cstr(rest);
        if version.windows(7).any(|w| w == b"MariaDB") {
            self.system = DbSystem::Mariadb;
        }
        let low = rest
            .get(13..15)
            .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
        let high = rest
            .get(18..20)
            .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
        self.server_caps = u32::from(low) | u32::from(high) << 16;
        self.phase = Phase::Response;
    }

    fn on_server(&mut self, packet: Packet, body: &[u8], end_ns: u64, out: &mut Vec<DbExchange>) {
        let first = body.first().copied();
        match self.phase {
            Phase::Greeting => return self.on_greeting(body),
            Phase::Authenticating => {
                match first {
                    Some(0x00) => self.phase = Phase::Ready,
                    Some(0xff) => self.phase = Phase::Opaque,
                    // Auth switch, more data.
                    _ => {}
                }
                return;
            }
            Phase::Ready => {}
            // Nothing is expected before the client's response.
            Phase::Response | Phase::TlsRequested | Phase::Opaque | Phase::Lost => return,
        }
        let Some(front) = self.pending.front() else {
            self.stats.unmatched_responses += 1;
            return;
        };
        let kind = CommandKind::of(front);
        let ok = first == Some(0x00);
        let err = first == Some(0xff);
        // An EOF (5 bytes) or the OK that ends rows under CLIENT_DEPRECATE_EOF (7 or more).
        let terminator = first == Some(0xfe) && packet.len < CONTINUED;
        let finished = match (self.reply, kind) {
            (_, CommandKind::OnePacket) => true,
            (Reply::PrepareMeta { left }, _) => {
                self.reply = Reply::PrepareMeta { left: left - 1 };
                left == 1
            }
            (_, _) if err => {
                self.error = error_code(body);
                true
            }
            (Reply::Start, CommandKind::Prepare) => ok && self.on_prepare_ok(body),
            (Reply::Start, CommandKind::InitDb) => true,
            (Reply::Start, CommandKind::FieldList) => terminator,
            (Reply::Start, CommandKind::Fetch) => {
                self.reply = Reply::ResultSet { columns_eof: true };
                terminator && !more_results(body)
            }
            (Reply::Start, CommandKind::Call) if ok || terminator => !more_results(body),
            (Reply::Start, CommandKind::Call) if first == Some(0xfb) => {
                self.reply = Reply::LocalInfile;
                false
            }
            (Reply::Start, CommandKind::Call) => {
                // A column count: a result set follows.
                self.reply = Reply::ResultSet { columns_eof: false };
                false
            }
            (Reply::ResultSet { columns_eof }, _) if terminator => {
                let status = status(body);
                if packet.len < 7 && !columns_eof {
                    // The EOF after the definitions; rows follow unless a cursor holds them.
                    self.reply = Reply::ResultSet { columns_eof: true };
                    status & CURSOR_EXISTS != 0
                } else if status & MORE_RESULTS_EXIST != 0 {
                    self.reply = Reply::Start;
                    false
                } else {
                    true
                }
            }
            (Reply::ResultSet { .. }, _) => false,
            (Reply::LocalInfile, _) => ok,
        };
        if finished {
            self.finish(end_ns, ok, out);
        }
    }

    /// PREPARE_OK: 0x00, statement id (4), columns (2), parameters (2). Remembers the
    /// statement; returns whether no definitions follow.
    fn on_prepare_ok(&mut self, body: &[u8]) -> bool {
        let id = le_u32(&body[1..]).unwrap_or(0);
        let columns = u32::from(le_u16(body.get(5..)).unwrap_or(0));
        let params = u32::from(le_u16(body.get(7..)).unwrap_or(0));
        if let Some(Command::Prepare(statement, _)) = self.pending.front() {
            let statement = statement.clone();
            self.remember(id, statement);
        }
        let eof = u32::from(self.caps & CLIENT_DEPRECATE_EOF == 0);
        let group = |n: u32| if n > 0 { n + eof } else { 0 };
        let left = group(columns) + group(params);
        self.reply = Reply::PrepareMeta { left };
        left == 0
    }

    /// The front command's reply ended (`ok`: with an OK packet).
    fn finish(&mut self, end_ns: u64, ok: bool, out: &mut Vec<DbExchange>) {
        self.reply = Reply::Start;
        let error = self.error.take();
        let (statement, sent) = match self.pending.pop_front() {
            Some(Command::Call {
                statement,
                sent,
                use_db,
            }) => {
                if ok && error.is_none() && use_db.is_some() {
                    self.database = use_db;
                }
                (statement, sent)
            }
            Some(Command::Prepare(statement, sent)) if error.is_some() => (statement, sent),
            Some(Command::InitDb(db)) if ok => {
                self.database = Some(db);
                return;
            }
            _ => return,
        };
        out.push(DbExchange {
            system: self.system,
            operation: statement.operation,
            collection: statement.collection,
            namespace: self.database.clone(),
            query_text: statement.text,
            error_code: error,
            start_ns: sent.start_ns,
            end_ns,
            tid: sent.tid,
        });
    }

    fn remember(&mut self, id: u32, statement: Statement) {
        self.statements.retain(|(i, _)| *i != id);
        if self.statements.len() >= MAX_STATEMENTS {
            self.statements.pop_front();
        }
        self.statements.push_back((id, statement));
    }
}

/// The database of a `USE db` statement (backquotes removed).
fn use_database(sql: &[u8]) -> Option<Arc<str>> {
    let sql = sql.trim_ascii();
    let (word, rest) = sql.split_at(sql.len().min(4));
    if !word.eq_ignore_ascii_case(b"use ") {
        return None;
    }
    let db = rest.trim_ascii();
    let db = db.strip_suffix(b";").unwrap_or(db).trim_ascii();
    let db = db
        .strip_prefix(b"`")
        .and_then(|d| d.strip_suffix(b"`"))
        .unwrap_or(db);
    name(db)
}

/// A database name as an attribute: UTF-8, not empty, bounded.
fn name(b: &[u8]) -> Option<Arc<str>> {
    std::str::from_utf8(b)
        .ok()
        .filter(|d| !d.is_empty() && d.len() <= 256)
        .map(Into::into)
}

/// ERR: 0xff, error code (2), then (protocol 4.1) `#` and the SQLSTATE. The code is what the
/// span reports (`db.response.status_code`), e.g. `1146`.
fn error_code(body: &[u8]) -> Option<String> {
    le_u16(body.get(1..)).map(|code| code.to_string())
}

/// The status flags of a terminator: EOF (0xfe, warnings (2), status (2)) or OK (header,
/// affected rows and last insert id as length-encoded integers, status (2)).
fn status(body: &[u8]) -> u16 {
    if body.len() == 5 {
        return le_u16(body.get(3..)).unwrap_or(0);
    }
    let rest = body.get(1..).unwrap_or(&[]);
    lenenc(rest)
        .and_then(|(_, r)| lenenc(r))
        .and_then(|(_, r)| le_u16(Some(r)))
        .unwrap_or(0)
}

fn more_results(body: &[u8]) -> bool {
    status(body) & MORE_RESULTS_EXIST != 0
}

/// A length-encoded integer and what follows it.
fn lenenc(b: &[u8]) -> Option<(u64, &[u8])> {
    let (&first, rest) = b.split_first()?;
    let size = match first {
        0..=0xfa => return Some((u64::from(first), rest)),
        0xfc => 2,
        0xfd => 3,
        0xfe => 8,
        _ => return None,
    };
    let bytes = rest.get(..size)?;
    let mut v = [0u8; 8];
    v[..size].copy_from_slice(bytes);
    Some((u64::from_le_bytes(v), &rest[size..]))
}

fn le_u16(b: Option<&[u8]>) -> Option<u16> {
    b.and_then(|b| b.get(..2))
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
}

fn le_u32(b: &[u8]) -> Option<u32> {
    b.get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// A NUL-terminated string at the start of `b` and what follows it (all of `b` when no NUL).
fn cstr(b: &[u8]) -> (&[u8], &[u8]) {
    match b.iter().position(|&c| c == 0) {
        Some(i) => (&b[..i], &b[i + 1..]),
        None => (b, &[]),
    }
}
