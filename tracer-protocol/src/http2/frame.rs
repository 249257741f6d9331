//! HTTP/2 frame headers (RFC 9113 4.1) and the checks used to find one without context.

pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const HEADER_LEN: usize = 9;
/// SETTINGS_MAX_FRAME_SIZE's initial value.
pub const DEFAULT_MAX_FRAME: u32 = 16_384;

pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const PRIORITY: u8 = 2;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PUSH_PROMISE: u8 = 5;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const WINDOW_UPDATE: u8 = 8;
pub const CONTINUATION: u8 = 9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY_FLAG: u8 = 0x20;

pub const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    /// The reserved bit, which must be 0.
    pub reserved: bool,
    pub stream: u32,
}

impl FrameHeader {
    pub fn parse(b: &[u8; HEADER_LEN]) -> Self {
        let sid = u32::from_be_bytes([b[5], b[6], b[7], b[8]]);
        Self {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            reserved: sid & 0x8000_0000 != 0,
            stream: sid & 0x7fff_ffff,
        }
    }

    /// Whether this could be a real frame header where no context says so (tracing started
    /// mid-connection): a known type that can start a message (not CONTINUATION), only that
    /// type's flags, a length allowed for the type, the reserved bit clear, and a stream id of
    /// the right kind (client-initiated, odd, for stream frames; 0 for connection frames).
    pub fn plausible(&self, max_frame: u32) -> bool {
        let (flags, stream_frame, len_ok) = match self.kind {
            DATA => (END_STREAM | PADDED, true, true),
            HEADERS => (
                END_STREAM | END_HEADERS | PADDED | PRIORITY_FLAG,
                true,
                true,
            ),
            PRIORITY => (0, true, self.len == 5),
            RST_STREAM => (0, true, self.len == 4),
            SETTINGS => (
                ACK,
                false,
                self.len.is_multiple_of(6) && (self.flags == 0 || self.len == 0),
            ),
            PING => (ACK, false, self.len == 8),
            GOAWAY => (0, false, self.len >= 8),
            WINDOW_UPDATE => {
                return !self.reserved && self.flags == 0 && self.len == 4;
            }
            _ => return false,
        };
        let stream_ok = if stream_frame {
            self.stream % 2 == 1
        } else {
            self.stream == 0
        };
        !self.reserved && self.flags & !flags == 0 && len_ok && stream_ok && self.len <= max_frame
    }
}

/// Whether `data` (the start of a chunk) begins with a chain of plausible frame headers that
/// either ends exactly at the chunk's end or holds at least two headers: one plausible header
/// alone is too weak a sign inside arbitrary bytes.
pub fn plausible_start(data: &[u8], total_len: usize, max_frame: u32) -> bool {
    let mut p = 0usize;
    let mut headers = 0;
    while let Some(h) = data.get(p..p + HEADER_LEN) {
        let h = FrameHeader::parse(h.try_into().expect("9 bytes"));
        if !h.plausible(max_frame) {
            return false;
        }
        headers += 1;
        p += HEADER_LEN + h.len as usize;
        if p >= total_len {
            return p == total_len || headers >= 2;
        }
    }
    headers >= 2
}

/// A HEADERS or PUSH_PROMISE payload without padding, priority or promised stream id:
/// the header block fragment. `None` when the lengths do not fit (a malformed frame).
pub fn block_fragment(kind: u8, flags: u8, payload: &[u8]) -> Option<&[u8]> {
    let mut p = payload;
    let mut pad = 0usize;
    if flags & PADDED != 0 {
        let (&n, rest) = p.split_first()?;
        pad = n as usize;
        p = rest;
    }
    if kind == HEADERS && flags & PRIORITY_FLAG != 0 {
        p = p.get(5..)?;
    }
    if kind == PUSH_PROMISE {
        p = p.get(4..)?;
    }
    p.get(..p.len().checked_sub(pad)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(len: u32, kind: u8, flags: u8, stream: u32) -> [u8; 9] {
        let l = len.to_be_bytes();
        let s = stream.to_be_bytes();
        [l[1], l[2], l[3], kind, flags, s[0], s[1], s[2], s[3]]
    }

    #[test]
    fn parse_header() {
        let mut b = hdr(0x012345, HEADERS, END_HEADERS, 7);
        b[5] |= 0x80;
        let h = FrameHeader::parse(&b);
        assert_eq!(
            h,
            FrameHeader {
                len: 0x012345,
                kind: HEADERS,
                flags: END_HEADERS,
                reserved: true,
                stream: 7
            }
        );
        assert!(!h.plausible(1 << 24));
    }

    #[test]
    fn plausibility() {
        let p = |len, kind, flags, stream| {
            FrameHeader::parse(&hdr(len, kind, flags, stream)).plausible(DEFAULT_MAX_FRAME)
        };
        assert!(p(10, HEADERS, END_HEADERS | END_STREAM, 1));
        assert!(!p(10, HEADERS, END_HEADERS, 2), "even stream");
        assert!(!p(10, HEADERS, 0x40, 1), "unknown flag");
        assert!(!p(20_000, DATA, 0, 1), "too long");
        assert!(p(6, SETTINGS, 0, 0));
        assert!(!p(6, SETTINGS, ACK, 0), "ACK carries nothing");
        assert!(!p(6, SETTINGS, 0, 1));
        assert!(!p(10, CONTINUATION, END_HEADERS, 1));
        assert!(!p(4, 0x0a, 0, 1), "unknown type");
        assert!(p(4, WINDOW_UPDATE, 0, 0));
    }

    #[test]
    fn plausible_chains() {
        let mut two = hdr(2, DATA, 0, 1).to_vec();
        two.extend_from_slice(&[0, 0]);
        two.extend_from_slice(&hdr(100, DATA, 0, 1));
        assert!(plausible_start(&two, two.len() + 100, DEFAULT_MAX_FRAME));
        // One header whose frame ends exactly with the chunk.
        assert!(plausible_start(&two[..11], 11, DEFAULT_MAX_FRAME));
        // One header running past the chunk: too weak.
        assert!(!plausible_start(&two[..11], 50, DEFAULT_MAX_FRAME));
        assert!(!plausible_start(
            b"GET / HTTP/1.1\r\n",
            16,
            DEFAULT_MAX_FRAME
        ));
    }

    #[test]
    fn fragments() {
        // PADDED (2 bytes of padding) + PRIORITY (5 bytes).
        let payload = [2, 0, 0, 0, 3, 16, 0x82, 0x84, 0, 0];
        assert_eq!(
            block_fragment(HEADERS, PADDED | PRIORITY_FLAG, &payload),
            Some(&[0x82, 0x84][..])
        );
        assert_eq!(block_fragment(HEADERS, PADDED, &[5, 1]), None);
        assert_eq!(
            block_fragment(PUSH_PROMISE, 0, &[0, 0, 0, 2, 0x82]),
            Some(&[0x82][..])
        );
        assert_eq!(block_fragment(HEADERS, PRIORITY_FLAG, &[0, 0]), None);
    }
}
