//! What the parsers keep of a message's headers, the same for HTTP/1 and HTTP/2: the names the
//! tracer uses and the bounds on what is copied.
use crate::{HeaderList, HeaderName, HeaderValue, RequestHead};

/// Headers kept per message (HTTP/1 head, HTTP/2 header block).
pub const MAX_KEPT_HEADERS: usize = 16;
/// Longest header name kept (only `x-b3-*` names vary).
pub const MAX_KEPT_NAME: usize = 64;
/// Request targets (HTTP/1) and `:path` values (HTTP/2) are truncated to this many bytes.
pub const MAX_TARGET: usize = 2048;
/// Longest method kept; in HTTP/1 also the longest token taken as a request's start.
pub const MAX_METHOD: usize = 24;
/// Kept header values are truncated to this many bytes unless a parser's `Limits` say otherwise.
pub const DEFAULT_MAX_HEADER_VALUE: usize = 512;

/// The HTTP version whose header rules apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// Names are case-insensitive.
    Http1,
    /// Names are lower case on the wire (RFC 9113 8.2.1); `host` travels as `:authority`.
    Http2,
}

/// Names kept in every version: span attributes and incoming trace context.
const KEPT: [&str; 6] = [
    "user-agent",
    "content-length",
    "content-type",
    "traceparent",
    "tracestate",
    "b3",
];
/// HTTP/1 only: HTTP/2 carries the host as the `:authority` pseudo-header.
const KEPT_HTTP1: [&str; 1] = ["host"];
/// HTTP/2 only: gRPC's request and trailer fields.
const KEPT_HTTP2: [&str; 4] = [
    "grpc-timeout",
    "grpc-status",
    "grpc-message",
    "grpc-encoding",
];
/// B3 multi-header names (`x-b3-traceid`, ...): a prefix, bounded by [`MAX_KEPT_NAME`].
const B3_PREFIX: &[u8] = b"x-b3-";

/// The header list's name for a header named `name` when the tracer keeps it, `None` when it
/// does not. Called for every header of every message, so the decision and the name come from
/// one pass: the always-kept names are borrowed from the static lists, any other kept name
/// (`x-b3-*`, a captured header) is an owned copy of at most [`MAX_KEPT_NAME`] bytes,
/// lower-cased in HTTP/1 (HTTP/2 names are lower case on the wire and compared exactly).
pub fn kept_header(name: &[u8], version: Version) -> Option<HeaderName> {
    match version {
        Version::Http1 => kept_in(name, &KEPT_HTTP1, |a, b| a.eq_ignore_ascii_case(b), true),
        Version::Http2 => kept_in(name, &KEPT_HTTP2, |a, b| a == b, false),
    }
}

/// More names kept, set once at start-up by the agent (`--capture-request-header` ...), lower
/// case.
static ALSO_KEPT: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();

/// Keeps these headers too (lower-case names), for every parser of the process. Only the first
/// call counts; returns whether it did.
pub fn keep_also(names: &[String]) -> bool {
    ALSO_KEPT
        .set(
            names
                .iter()
                .map(|n| n.to_ascii_lowercase().into_bytes())
                .collect(),
        )
        .is_ok()
}

/// Heap bytes a kept value owns: none when it is stored inline.
pub fn value_heap_bytes(v: &HeaderValue) -> usize {
    if v.is_heap_allocated() {
        v.capacity()
    } else {
        0
    }
}

/// Heap bytes a request head owns.
pub fn request_heap_bytes(head: &RequestHead) -> usize {
    value_heap_bytes(&head.method) + value_heap_bytes(&head.target) + list_heap_bytes(&head.headers)
}

/// Heap bytes a header list owns (what a bounded buffer charges for it).
pub fn list_heap_bytes(list: &HeaderList) -> usize {
    let name = |n: &HeaderName| match n {
        HeaderName::Borrowed(_) => 0,
        HeaderName::Owned(s) => s.capacity(),
    };
    list.capacity() * std::mem::size_of::<(HeaderName, HeaderValue)>()
        + list
            .iter()
            .map(|(n, v)| name(n) + value_heap_bytes(v))
            .sum::<usize>()
}

#[inline(always)]
fn kept_in(
    name: &[u8],
    only_here: &[&'static str],
    same: impl Fn(&[u8], &[u8]) -> bool,
    lower_case: bool,
) -> Option<HeaderName> {
    let listed = |list: &[&'static str]| {
        list.iter()
            .copied()
            .find(|k| k.len() == name.len() && same(name, k.as_bytes()))
    };
    if let Some(k) = listed(&KEPT).or_else(|| listed(only_here)) {
        return Some(HeaderName::Borrowed(k));
    }
    let also = ALSO_KEPT
        .get()
        .is_some_and(|also| also.iter().any(|k| k.len() == name.len() && same(name, k)));
    let b3 = name.len() > B3_PREFIX.len()
        && name.len() <= MAX_KEPT_NAME
        && same(&name[..B3_PREFIX.len()], B3_PREFIX)
        && name.iter().all(|&b| is_token(b));
    (also || b3).then(|| {
        let mut owned = lossy(name, MAX_KEPT_NAME);
        if lower_case {
            owned.make_ascii_lowercase();
        }
        HeaderName::Owned(owned.into())
    })
}

/// A byte of an RFC 9110 token (`tchar`): what a field name is made of. HTTP/1 names reach
/// here already checked by httparse; HTTP/2 names come from HPACK as any bytes.
pub(crate) fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// At most `max` bytes of text made of the start of `b` (invalid UTF-8 replaced by U+FFFD, cut
/// at a character boundary): the bound holds for the kept text, whose replacement characters
/// take three bytes each, not only for the bytes read.
pub fn lossy(b: &[u8], max: usize) -> HeaderValue {
    let b = &b[..b.len().min(max)];
    // Valid UTF-8 is copied as it is (compact_str's own lossy conversion goes character by
    // character, and was 9 % of the agent's replay).
    if let Ok(s) = std::str::from_utf8(b) {
        return HeaderValue::new(s);
    }
    let mut text = HeaderValue::from(String::from_utf8_lossy(b));
    if text.len() > max {
        text.truncate(text.floor_char_boundary(max));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(name: &[u8], version: Version) -> bool {
        kept_header(name, version).is_some()
    }

    #[test]
    fn kept_names_per_version() {
        use Version::{Http1, Http2};
        for name in ["traceparent", "b3", "x-b3-traceid", "content-type"] {
            assert!(kept(name.as_bytes(), Http1), "{name}");
            assert!(kept(name.as_bytes(), Http2), "{name}");
        }
        assert!(kept(b"Host", Http1) && !kept(b"host", Http2));
        assert!(kept(b"grpc-status", Http2) && !kept(b"grpc-status", Http1));
        // Case matters only in HTTP/2, where upper case is not valid on the wire.
        assert!(kept(b"X-B3-SpanId", Http1) && !kept(b"X-B3-SpanId", Http2));
        for version in [Http1, Http2] {
            assert!(!kept(b"x-b3-", version));
            assert!(!kept(&[b"x-b3-".as_slice(), &[b'a'; 60]].concat(), version));
            assert!(!kept(b"cookie", version));
            // A B3-like name with bytes no field name may have is not kept.
            assert!(!kept(b"x-b3-\xba\xba", version));
            assert!(!kept(b"x-b3-span id", version));
        }
        // The always-kept names are the static lower-case ones; others are lower-cased copies.
        assert!(matches!(
            kept_header(b"Host", Http1),
            Some(HeaderName::Borrowed("host"))
        ));
        assert!(matches!(
            kept_header(b"X-B3-SpanId", Http1),
            Some(HeaderName::Owned(n)) if n == "x-b3-spanid"
        ));
    }

    #[test]
    fn lossy_text_stays_within_its_bound() {
        assert_eq!(lossy(b"abcdef", 4), "abcd");
        assert_eq!(lossy("h\u{e9}llo".as_bytes(), 2), "h");
        // Each invalid byte becomes a 3-byte U+FFFD: 64 of them fill only 21 characters.
        let kept = lossy(&[0xba; 100], 64);
        assert_eq!(kept.len(), 63);
        assert!(kept.chars().all(|c| c == char::REPLACEMENT_CHARACTER));
    }
}
