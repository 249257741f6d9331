//! Protocol classification from a connection's first bytes. Runs in the kernel (so payload of
//! other protocols is never copied) and in the agent; kept branch-light and bounded.

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Not decided yet (too few bytes seen).
    Unknown = 0,
    Http1 = 1,
    /// HTTP/2 with prior knowledge (h2c): the client preface.
    Http2 = 2,
    /// PostgreSQL frontend/backend protocol v3, seen from the client.
    Postgres = 3,
    /// Redis RESP2/RESP3, seen from the client.
    Redis = 4,
    /// MySQL / MariaDB client/server protocol, seen from the client.
    Mysql = 5,
    /// A TLS record: the plaintext, if any, comes from the TLS library probes.
    Tls = 6,
    /// Anything else: no payload is copied.
    Other = 7,
}

impl Protocol {
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Http1,
            2 => Self::Http2,
            3 => Self::Postgres,
            4 => Self::Redis,
            5 => Self::Mysql,
            6 => Self::Tls,
            7 => Self::Other,
            _ => Self::Unknown,
        }
    }

    /// Whether the agent parses this protocol (its payload is copied). The parsed ones are
    /// numbered 1..=5 so this is one compare: a second branch here, in every syscall
    /// program, took `sys_exit_recvmsg` over the verifier's 1M instructions on 6.1.
    #[inline(always)]
    pub fn is_parsed(self) -> bool {
        (self as u8).wrapping_sub(1) < 5
    }
}

/// How many data calls on one connection may leave the protocol undecided before the
/// connection is classified `Other`. Connections already open when the agent started may be
/// in the middle of a body; the next message usually starts at a call boundary.
pub const MAX_CLASSIFY_ATTEMPTS: u8 = 8;

const METHODS: [&[u8; 4]; 9] = [
    b"GET ", b"POST", b"PUT ", b"HEAD", b"DELE", b"PATC", b"OPTI", b"CONN", b"TRAC",
];

/// Classifies the first bytes of one read or write. `Unknown` means "not a message start we
/// know" (it may be the middle of a message); the caller counts attempts.
#[inline(always)]
pub fn classify(head: &[u8; 8], len: usize) -> Protocol {
    if len >= 3 && head[0] == 0x16 && head[1] == 0x03 && head[2] <= 0x04 {
        return Protocol::Tls;
    }
    if len < 4 {
        return Protocol::Unknown;
    }
    if head[0] == b'P' && head[1] == b'R' && head[2] == b'I' && head[3] == b' ' {
        return Protocol::Http2;
    }
    if len >= 7 && &head[..7] == b"HTTP/1." {
        return Protocol::Http1;
    }
    let first = [head[0], head[1], head[2], head[3]];
    let mut i = 0;
    while i < METHODS.len() {
        if &first == METHODS[i] {
            return Protocol::Http1;
        }
        i += 1;
    }
    Protocol::Unknown
}

/// Database client protocols from a call's first bytes, for a call `classify` left
/// `Unknown`. Only the client's end is traced: the pattern must come the way the client
/// sends it (`egress`); the same bytes received are a database server's end, `Other`.
/// - PostgreSQL: the startup message (length < 64 KiB, protocol 3.0) or an SSLRequest.
/// - Redis: a command array of bulk strings, `*<1-2 digits>\r\n$`.
///
/// MySQL / MariaDB servers speak first: the client's end is recognised by the greeting it
/// receives ([`is_mysql_greeting`], in the receiving programs only).
///
/// A few compares on the 8-byte head, no loop: it runs in every data syscall's program.
#[inline(always)]
pub fn classify_db(head: &[u8; 8], n: usize, egress: bool) -> Protocol {
    if n < 5 {
        return Protocol::Unknown;
    }
    let word = u64::from_be_bytes(*head);
    let postgres = n == 8
        && (word >> 48 == 0 && word & 0xffff_ffff == 0x0003_0000 || word == 0x0000_0008_04d2_162f);
    let digit = |b: u8| b.is_ascii_digit();
    let redis = head[0] == b'*'
        && digit(head[1])
        && head[1] != b'0'
        && (head[2] == b'\r' && head[3] == b'\n' && head[4] == b'$'
            || n >= 6 && digit(head[2]) && head[3] == b'\r' && head[4] == b'\n' && head[5] == b'$');
    match (postgres, redis, egress) {
        (true, _, true) => Protocol::Postgres,
        (_, true, true) => Protocol::Redis,
        (false, false, _) => Protocol::Unknown,
        _ => Protocol::Other,
    }
}

/// A MySQL / MariaDB server greeting (HandshakeV10) received at the start of a call, either
/// - whole: a 3-byte little-endian length from 32 to 255 that the call holds, sequence 0,
///   protocol 10, and the version's start (`8.0.36`, `5.5.5-10.11.6-MariaDB`): a digit 1-9
///   then two digits or dots; greetings are 70–130 bytes, read whole by most client
///   libraries;
/// - or its payload read by a call of its own after the 4-byte header (clients that read
///   each header apart, e.g. mysql-connector-python): the connection's first 4 bytes were
///   received, nothing was sent, and this call of 32 to 255 bytes holds protocol 10 and the
///   version's start.
///
/// A server's end receives no greeting (it sends one): it never matches. The equalities are
/// folded into one compare each: this runs in every receiving program.
#[inline(always)]
pub fn is_mysql_greeting(
    head: &[u8; 8],
    n: usize,
    call_len: u64,
    position: u64,
    other_position: u64,
) -> bool {
    let h = |i: usize| u64::from(head[i]);
    // A digit or a dot (or '/', between them: loose but harmless).
    let version = |b: u64| b.wrapping_sub(u64::from(b'.')) < 12;
    let first_digit = |b: u64| b.wrapping_sub(u64::from(b'1')) < 9;
    let whole = ((n as u64) ^ 8) | h(1) | h(2) | h(3) | (h(4) ^ 10) == 0
        && h(0).wrapping_sub(32) < 224
        && h(0) + 4 <= call_len
        && first_digit(h(5))
        && version(h(6))
        && version(h(7));
    let payload = (position ^ 4) | other_position | (h(0) ^ 10) == 0
        && n >= 4
        && call_len.wrapping_sub(32) < 224
        && first_digit(h(1))
        && version(h(2))
        && version(h(3));
    whole || payload
}

/// A database client's request on a connection open before tracing (no connect seen, so no
/// startup or greeting will come): one whole query the call holds exactly, whose text starts
/// with two letters.
/// - MySQL COM_QUERY: 3-byte little-endian length, sequence 0, command 0x03, the SQL.
/// - PostgreSQL Query: `Q`, a 4-byte big-endian length that counts itself, the SQL.
///
/// Only the sending end may call it: a server receives the same bytes. The equalities are
/// folded into one compare per protocol.
#[inline(always)]
pub fn classify_db_mid_stream(head: &[u8; 8], n: usize, call_len: u64) -> Protocol {
    let h = |i: usize| u64::from(head[i]);
    let letter = |b: u64| (b | 0x20).wrapping_sub(u64::from(b'a')) < 26;
    if n < 8 || !letter(h(5)) || !letter(h(6)) {
        return Protocol::Unknown;
    }
    let mysql_len = h(0) | h(1) << 8 | h(2) << 16;
    if h(3) | (h(4) ^ 0x03) | ((mysql_len + 4) ^ call_len) == 0 {
        return Protocol::Mysql;
    }
    let pg_len = h(1) << 24 | h(2) << 16 | h(3) << 8 | h(4);
    if (h(0) ^ u64::from(b'Q')) | ((pg_len + 1) ^ call_len) == 0 {
        return Protocol::Postgres;
    }
    Protocol::Unknown
}

/// HTTP/2 without its preface: for connections first seen mid-stream (open before tracing,
/// so neither accept nor connect was seen), a call that starts with a whole HEADERS frame
/// whose block fits in it (END_HEADERS), within the default maximum frame size, with only
/// HEADERS flags set and the stream id's reserved bit clear. Nine plausible bytes are a weak
/// proof on their own, hence only where no preface can come any more; the agent then decodes
/// what it can with an unknown HPACK table.
#[inline(always)]
pub fn is_h2_headers_frame(head: &[u8; 8], n: usize, call_len: u64) -> bool {
    const END_STREAM: u8 = 0x01;
    const END_HEADERS: u8 = 0x04;
    const PADDED: u8 = 0x08;
    const PRIORITY: u8 = 0x20;
    if n < 8 {
        return false;
    }
    let frame_len = (head[0] as u64) << 16 | (head[1] as u64) << 8 | head[2] as u64;
    head[3] == 0x01
        && head[4] & !(END_STREAM | END_HEADERS | PADDED | PRIORITY) == 0
        && head[4] & END_HEADERS != 0
        && head[5] & 0x80 == 0
        && frame_len > 0
        && frame_len <= 16_384
        && 9 + frame_len <= call_len
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(bytes: &[u8]) -> Protocol {
        let mut head = [0u8; 8];
        let n = bytes.len().min(8);
        head[..n].copy_from_slice(&bytes[..n]);
        classify(&head, bytes.len())
    }

    #[test]
    fn requests_and_responses_are_http1() {
        assert_eq!(c(b"GET / HTTP/1.1\r\n"), Protocol::Http1);
        assert_eq!(c(b"POST /x HTTP/1.1\r\n"), Protocol::Http1);
        assert_eq!(c(b"DELETE /x HTTP/1.1\r\n"), Protocol::Http1);
        assert_eq!(c(b"HTTP/1.1 200 OK\r\n"), Protocol::Http1);
        assert_eq!(c(b"HTTP/1.0 404 Not Found\r\n"), Protocol::Http1);
    }

    #[test]
    fn others() {
        assert_eq!(c(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Protocol::Http2);
        assert_eq!(c(&[0x16, 0x03, 0x01, 0x02, 0x00]), Protocol::Tls);
        assert_eq!(c(b"SSH-2.0-OpenSSH"), Protocol::Unknown);
        assert_eq!(c(b"GE"), Protocol::Unknown);
        assert_eq!(c(b""), Protocol::Unknown);
        assert_eq!(c(b"get / HTTP/1.1"), Protocol::Unknown);
    }

    #[test]
    fn database_clients() {
        fn d(bytes: &[u8], egress: bool) -> Protocol {
            let mut head = [0u8; 8];
            let n = bytes.len().min(8);
            head[..n].copy_from_slice(&bytes[..n]);
            classify_db(&head, n, egress)
        }
        // psql's startup message, an SSLRequest; the same received: a server's end.
        let startup = b"\x00\x00\x00\x3f\x00\x03\x00\x00user\x00";
        let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        assert_eq!(d(startup, true), Protocol::Postgres);
        assert_eq!(d(&ssl, true), Protocol::Postgres);
        assert_eq!(d(startup, false), Protocol::Other);
        assert_eq!(d(&ssl[..7], true), Protocol::Unknown);
        // GSSAPI encryption and cancel requests, other protocol versions.
        assert_eq!(
            d(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30], true),
            Protocol::Unknown
        );
        assert_eq!(
            d(&[0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e], true),
            Protocol::Unknown
        );
        assert_eq!(
            d(b"\x00\x00\x00\x3f\x00\x02\x00\x00", true),
            Protocol::Unknown
        );
        assert_eq!(
            d(b"\x00\x01\x00\x3f\x00\x03\x00\x00", true),
            Protocol::Unknown
        );
        // Redis commands: one- and two-digit element counts.
        assert_eq!(d(b"*1\r\n$4\r\nPING\r\n", true), Protocol::Redis);
        assert_eq!(d(b"*12\r\n$4\r\nMSET", true), Protocol::Redis);
        assert_eq!(d(b"*1\r\n$4\r\nPING\r\n", false), Protocol::Other);
        assert_eq!(d(b"*0\r\n", true), Protocol::Unknown);
        assert_eq!(d(b"*1\r\n:1\r\n", true), Protocol::Unknown);
        assert_eq!(d(b"*123\r\n$", true), Protocol::Unknown);
        assert_eq!(d(b"*1\r\n", true), Protocol::Unknown);
        assert_eq!(d(b"GET / HTTP/1.1", true), Protocol::Unknown);
    }

    /// MariaDB 10.11's and MySQL 8.0's greetings (first bytes, as recorded), received by the
    /// client, whole or (mysql-connector-python) their payload after the header's call.
    #[test]
    fn mysql_greetings() {
        fn g(bytes: &[u8], call_len: u64, position: u64, other: u64) -> bool {
            let mut head = [0u8; 8];
            let n = bytes.len().min(8);
            head[..n].copy_from_slice(&bytes[..n]);
            is_mysql_greeting(&head, n, call_len, position, other)
        }
        let mariadb = b"\x5b\x00\x00\x00\x0a5.5.5-10.11.6-MariaDB";
        let mysql = b"\x4a\x00\x00\x00\x0a8.0.36\x00";
        assert!(g(mariadb, 95, 0, 0));
        assert!(g(mysql, 78, 0, 0));
        // Cut short, a later packet (sequence 1), another protocol version, no version, a
        // length of 256 or more, a short call.
        assert!(!g(mariadb, 40, 0, 0));
        assert!(!g(b"\x5b\x00\x00\x01\x0a5.5.5", 95, 0, 0));
        assert!(!g(b"\x5b\x00\x00\x00\x095.5.5", 95, 0, 0));
        assert!(!g(b"\x5b\x00\x00\x00\x0a\x00\x00\x00", 95, 0, 0));
        assert!(!g(b"\x5b\x01\x00\x00\x0a5.5.5", 400, 0, 0));
        assert!(!g(&mariadb[..7], 7, 0, 0));
        // The payload read apart from its header: only as the connection's first bytes after
        // those 4, with nothing sent.
        assert!(g(&mariadb[4..], 91, 4, 0));
        assert!(!g(&mariadb[4..], 91, 0, 0));
        assert!(!g(&mariadb[4..], 91, 4, 120));
        assert!(!g(&mariadb[4..], 4000, 4, 0));
        assert!(!g(b"\x095.5.5-10", 91, 4, 0));
        // A client's COM_QUERY received: a server's end.
        assert!(!g(b"\x09\x00\x00\x00\x03SELECT 1", 13, 0, 0));
    }

    #[test]
    fn queries_on_connections_open_before_tracing() {
        fn m(bytes: &[u8], call_len: u64) -> Protocol {
            let mut head = [0u8; 8];
            let n = bytes.len().min(8);
            head[..n].copy_from_slice(&bytes[..n]);
            classify_db_mid_stream(&head, n, call_len)
        }
        let mut com_query = vec![9, 0, 0, 0, 0x03];
        com_query.extend(b"SELECT 1");
        assert_eq!(m(&com_query, 13), Protocol::Mysql);
        // Not the whole call, a continuation (sequence 1), another command, no SQL text.
        assert_eq!(m(&com_query, 20), Protocol::Unknown);
        com_query[3] = 1;
        assert_eq!(m(&com_query, 13), Protocol::Unknown);
        assert_eq!(m(b"\x05\x00\x00\x00\x16SEL", 9), Protocol::Unknown);
        assert_eq!(m(b"\x05\x00\x00\x00\x03\x00\x01\x02", 9), Protocol::Unknown);
        assert_eq!(m(b"\x05\x00\x00\x00\x03S1", 9), Protocol::Unknown);
        let mut q = b"Q\x00\x00\x00\x0dSELECT 1\x00".to_vec();
        assert_eq!(m(&q, q.len() as u64), Protocol::Postgres);
        assert_eq!(m(&q, 40), Protocol::Unknown);
        q[5] = b'1';
        assert_eq!(m(&q, q.len() as u64), Protocol::Unknown);
        assert_eq!(m(b"GET / HTTP/1.1\r\n", 16), Protocol::Unknown);
        assert_eq!(m(b"SELECT", 6), Protocol::Unknown);
    }

    #[test]
    fn mid_stream_http2_headers() {
        fn h(bytes: &[u8], call_len: u64) -> bool {
            let mut head = [0u8; 8];
            let n = bytes.len().min(8);
            head[..n].copy_from_slice(&bytes[..n]);
            is_h2_headers_frame(&head, n, call_len)
        }
        // grpc-go's second request on a connection: HEADERS, END_HEADERS, stream 3.
        let frame = [0x00, 0x00, 0x1d, 0x01, 0x04, 0x00, 0x00, 0x00, 0x03];
        assert!(h(&frame, 9 + 0x1d));
        assert!(h(&frame, 100));
        // The block does not fit in the call, or continues in CONTINUATION frames.
        assert!(!h(&frame, 20));
        assert!(!h(&[0x00, 0x00, 0x1d, 0x01, 0x00, 0, 0, 0, 3], 100));
        // Other frame types, unknown flags, the reserved bit, empty or oversized frames.
        assert!(!h(&[0x00, 0x00, 0x1d, 0x00, 0x04, 0, 0, 0, 3], 100));
        assert!(!h(&[0x00, 0x00, 0x1d, 0x01, 0x44, 0, 0, 0, 3], 100));
        assert!(!h(&[0x00, 0x00, 0x1d, 0x01, 0x04, 0x80, 0, 0, 3], 100));
        assert!(!h(&[0x00, 0x00, 0x00, 0x01, 0x04, 0, 0, 0, 3], 100));
        assert!(!h(&[0x00, 0x40, 0x01, 0x01, 0x04, 0, 0, 0, 3], 1 << 20));
        // Too short to tell; text protocols.
        assert!(!h(&frame[..7], 100));
        assert!(!h(b"GET / HTTP/1.1\r\n", 100));
    }
}
