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
    /// A TLS record: the plaintext, if any, comes from the TLS library probes.
    Tls = 3,
    /// Anything else: no payload is copied.
    Other = 4,
}

impl Protocol {
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Http1,
            2 => Self::Http2,
            3 => Self::Tls,
            4 => Self::Other,
            _ => Self::Unknown,
        }
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
