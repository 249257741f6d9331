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
    /// A TLS record: the plaintext, if any, comes from the TLS library probes.
    Tls = 5,
    /// Anything else: no payload is copied.
    Other = 6,
}

impl Protocol {
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Http1,
            2 => Self::Http2,
            3 => Self::Postgres,
            4 => Self::Redis,
            5 => Self::Tls,
            6 => Self::Other,
            _ => Self::Unknown,
        }
    }

    /// Whether the agent parses this protocol (its payload is copied). The parsed ones are
    /// numbered 1..=4 so this is one compare: a second branch here, in every syscall
    /// program, took `sys_exit_recvmsg` over the verifier's 1M instructions on 6.1.
    #[inline(always)]
    pub fn is_parsed(self) -> bool {
        (self as u8).wrapping_sub(1) < 4
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
