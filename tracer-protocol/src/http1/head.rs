//! Message heads: where one starts, where it ends, and what the tracer keeps of it (parsed with
//! `httparse`), including what it says about its body's framing.

use crate::headers::{self, MAX_KEPT_HEADERS, MAX_METHOD, MAX_TARGET, Version, lossy};
use crate::{HeaderList, RequestHead, ResponseHead};

/// Headers parsed on the stack before falling back to a heap array.
const STACK_HEADERS: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Request,
    Response,
}

impl Kind {
    /// The kind of a complete head starting at a message start.
    pub(super) fn of_head(bytes: &[u8]) -> Self {
        if bytes.starts_with(b"HTTP/") {
            Self::Response
        } else {
            Self::Request
        }
    }
}

/// What the first bytes at a message boundary say.
pub(super) enum MessageStart {
    /// A message of this kind starts here.
    Found(Kind),
    /// Too few bytes to tell (a prefix of something that could be a start).
    Undecided,
    /// Not the start of an HTTP/1 message.
    NotHttp,
}

/// Whether `b` looks like the beginning of a request (`METHOD target`) or response
/// (`HTTP/1.x `).
pub(super) fn message_start(b: &[u8]) -> MessageStart {
    const RESP: &[u8] = b"HTTP/1.";
    let n = b.len().min(RESP.len());
    if b[..n] == RESP[..n] {
        return match (b.get(7), b.get(8)) {
            (Some(b'0' | b'1'), Some(b' ')) => MessageStart::Found(Kind::Response),
            (None, _) | (Some(b'0' | b'1'), None) => MessageStart::Undecided,
            _ => MessageStart::NotHttp,
        };
    }
    for (i, &c) in b.iter().enumerate() {
        if c.is_ascii_uppercase() || c == b'-' || c == b'_' {
            if i >= MAX_METHOD {
                return MessageStart::NotHttp;
            }
            continue;
        }
        if c == b' ' && i > 0 {
            return match b.get(i + 1) {
                Some(t) if (0x21..=0x7e).contains(t) => MessageStart::Found(Kind::Request),
                Some(_) => MessageStart::NotHttp,
                None => MessageStart::Undecided,
            };
        }
        return MessageStart::NotHttp;
    }
    MessageStart::Undecided
}

/// Index just past the empty line ending a head (`\n\n` or `\n\r\n`), scanning from `from`.
pub(super) fn find_head_end(b: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(n) = next_newline(b, i) {
        match (b.get(n + 1), b.get(n + 2)) {
            (Some(b'\n'), _) => return Some(n + 2),
            (Some(b'\r'), Some(b'\n')) => return Some(n + 3),
            _ => {}
        }
        i = n + 1;
    }
    None
}

/// Index of the first `\n` at or after `from`. Every message's head is scanned for its end:
/// eight bytes at a time (a word holds a `\n` when it XORed with `\n`s has a zero byte; the
/// lowest flagged byte is exact).
fn next_newline(b: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const NEWLINES: u64 = u64::from_ne_bytes([b'\n'; 8]);
    let mut i = from;
    while let Some(word) = b.get(i..i + 8) {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        let x = u64::from_le_bytes(bytes) ^ NEWLINES;
        let zeros = x.wrapping_sub(ONES) & !x & HIGHS;
        if zeros != 0 {
            return Some(i + (zeros.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    let rest = b.get(i..)?;
    rest.iter().position(|&c| c == b'\n').map(|p| i + p)
}

/// Why a complete head could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Error {
    /// Not a well-formed head.
    Malformed,
    /// More header lines than the array given to the parser (retried with a larger one).
    TooManyHeaders,
    /// The parser needed bytes past the empty line that ended the head.
    Partial,
    /// A response status below 100.
    InvalidStatus,
}

impl From<httparse::Error> for Error {
    fn from(e: httparse::Error) -> Self {
        match e {
            httparse::Error::TooManyHeaders => Self::TooManyHeaders,
            _ => Self::Malformed,
        }
    }
}

/// The request methods whose exchanges are framed or end differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Method {
    /// The response has no body, whatever its headers say.
    Head,
    /// A 2xx response opens a tunnel.
    Connect,
    Other,
}

/// A `Content-Length` header's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ContentLength {
    Absent,
    Exact(u64),
    /// Not a number, or several that differ.
    Invalid,
}

/// What a head's headers say about its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct BodyHeaders {
    length: ContentLength,
    /// `Transfer-Encoding` ends with `chunked`.
    chunked: bool,
    /// `Transfer-Encoding` ends with another coding.
    other_coding: bool,
}

/// How a message's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
    /// Unusable (conflicting lengths, unknown transfer coding on a request).
    Invalid,
}

impl BodyHeaders {
    fn of(headers: &[httparse::Header<'_>]) -> Self {
        let mut length = ContentLength::Absent;
        let mut te_seen = false;
        let mut last_chunked = false;
        for h in headers {
            if h.name.eq_ignore_ascii_case("content-length") {
                length = match (length, parse_decimal(h.value)) {
                    (ContentLength::Absent, Some(n)) => ContentLength::Exact(n),
                    (ContentLength::Exact(a), Some(b)) if a == b => ContentLength::Exact(a),
                    _ => ContentLength::Invalid,
                };
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                for coding in h.value.split(|&c| c == b',') {
                    let coding = trim_ows(coding);
                    if coding.is_empty() {
                        continue;
                    }
                    te_seen = true;
                    last_chunked = coding.eq_ignore_ascii_case(b"chunked");
                }
            }
        }
        Self {
            length,
            chunked: te_seen && last_chunked,
            other_coding: te_seen && !last_chunked,
        }
    }

    /// A request's body: without a length or chunked coding there is none (RFC 9112 6.3).
    pub(super) fn request_framing(self) -> Framing {
        if self.chunked {
            Framing::Chunked
        } else if self.other_coding {
            Framing::Invalid
        } else {
            match self.length {
                ContentLength::Absent | ContentLength::Exact(0) => Framing::None,
                ContentLength::Exact(n) => Framing::Length(n),
                ContentLength::Invalid => Framing::Invalid,
            }
        }
    }

    /// A final response's body, given the request it answers: without a length or chunked
    /// coding it runs until the close.
    pub(super) fn response_framing(self, request: Method, status: u16) -> Framing {
        if request == Method::Head || status == 204 || status == 304 {
            Framing::None
        } else if self.chunked {
            Framing::Chunked
        } else if self.other_coding {
            Framing::UntilClose
        } else {
            match self.length {
                ContentLength::Exact(0) => Framing::None,
                ContentLength::Exact(n) => Framing::Length(n),
                ContentLength::Absent => Framing::UntilClose,
                ContentLength::Invalid => Framing::Invalid,
            }
        }
    }
}

/// A parsed head, reduced to what the tracer keeps.
pub(super) enum ParsedHead {
    Request {
        head: RequestHead,
        method: Method,
        body: BodyHeaders,
    },
    Response {
        head: ResponseHead,
        body: BodyHeaders,
    },
}

/// Parses a complete head of `kind`.
pub(super) fn parse_head(
    config: &httparse::ParserConfig,
    kind: Kind,
    bytes: &[u8],
    max_value: usize,
) -> Result<ParsedHead, Error> {
    let mut headers = [httparse::EMPTY_HEADER; STACK_HEADERS];
    match parse_with(config, kind, bytes, &mut headers, max_value) {
        Err(Error::TooManyHeaders) => {}
        done => return done,
    }
    // Rare: more headers than the stack array. A header line takes at least 3 bytes.
    let mut headers = vec![httparse::EMPTY_HEADER; bytes.len() / 3 + 1];
    parse_with(config, kind, bytes, &mut headers, max_value)
}

fn parse_with<'b>(
    config: &httparse::ParserConfig,
    kind: Kind,
    bytes: &'b [u8],
    headers: &mut [httparse::Header<'b>],
    max_value: usize,
) -> Result<ParsedHead, Error> {
    fn complete(status: httparse::Result<usize>) -> Result<(), Error> {
        match status? {
            httparse::Status::Complete(_) => Ok(()),
            httparse::Status::Partial => Err(Error::Partial),
        }
    }
    match kind {
        Kind::Request => {
            let mut req = httparse::Request::new(headers);
            complete(config.parse_request(&mut req, bytes))?;
            let method = req.method.unwrap_or("");
            Ok(ParsedHead::Request {
                method: match method {
                    "HEAD" => Method::Head,
                    "CONNECT" => Method::Connect,
                    _ => Method::Other,
                },
                head: RequestHead {
                    method: lossy(method.as_bytes(), MAX_METHOD),
                    target: lossy(req.path.unwrap_or("").as_bytes(), MAX_TARGET),
                    version: version_str(req.version),
                    headers: kept_headers(req.headers, max_value),
                },
                body: BodyHeaders::of(req.headers),
            })
        }
        Kind::Response => {
            let mut resp = httparse::Response::new(headers);
            complete(config.parse_response(&mut resp, bytes))?;
            let status = resp.code.unwrap_or(0);
            if status < 100 {
                return Err(Error::InvalidStatus);
            }
            Ok(ParsedHead::Response {
                head: ResponseHead {
                    status,
                    version: version_str(resp.version),
                    headers: kept_headers(resp.headers, max_value),
                },
                body: BodyHeaders::of(resp.headers),
            })
        }
    }
}

fn kept_headers(headers: &[httparse::Header<'_>], max_value: usize) -> HeaderList {
    let mut out = HeaderList::new();
    for h in headers {
        if out.len() >= MAX_KEPT_HEADERS {
            break;
        }
        if let Some(name) = headers::kept_header(h.name.as_bytes(), Version::Http1) {
            out.push((name, lossy(h.value, max_value)));
        }
    }
    out
}

fn version_str(v: Option<u8>) -> &'static str {
    if v == Some(0) { "1.0" } else { "1.1" }
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|c| !matches!(c, b' ' | b'\t'))
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|c| !matches!(c, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    v.get(start..end).unwrap_or(&[])
}

fn parse_decimal(v: &[u8]) -> Option<u64> {
    let v = trim_ows(v);
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    let mut n: u64 = 0;
    for &c in v {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::find_head_end;

    /// The byte-at-a-time scan the word-at-a-time one must agree with.
    fn naive(b: &[u8], from: usize) -> Option<usize> {
        (from..b.len()).find_map(|i| match (b[i], b.get(i + 1), b.get(i + 2)) {
            (b'\n', Some(b'\n'), _) => Some(i + 2),
            (b'\n', Some(b'\r'), Some(b'\n')) => Some(i + 3),
            _ => None,
        })
    }

    #[test]
    fn head_ends_are_found_at_every_offset_and_alignment() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody\n\n";
        for pad in 0..9 {
            let mut b = vec![b'x'; pad];
            b.extend_from_slice(head);
            for len in 0..=b.len() {
                for from in 0..=len + 1 {
                    assert_eq!(find_head_end(&b[..len], from), naive(&b[..len], from));
                }
            }
        }
        // Bytes that differ from `\n` by one bit, and high bytes, are not line ends.
        let b = [0x0b, 0x8a, 0x0a, 0x0e, 0x0a, 0xff, 0x0a, 0x0d, 0x0a, 0x80];
        for from in 0..b.len() {
            assert_eq!(find_head_end(&b, from), naive(&b, from));
        }
        assert_eq!(find_head_end(b"a\n\n", 0), Some(3));
        assert_eq!(find_head_end(b"", 5), None);
    }
}
