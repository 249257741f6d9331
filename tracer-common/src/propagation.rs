//! Trace context that both sides must agree on, bit for bit.
//!
//! The kernel decides the ids of an outgoing request at send time (it injects them into the
//! request with `traceparent`), long before the agent has parsed anything. So:
//! - a SERVER span's ids are *derived* from (agent key, connection id, byte position of the
//!   request head) by [`server_ids`]: the kernel computes them when it sees the request
//!   arrive, the agent when it parses the head, and both get the same ids without talking;
//! - the ids of an injected CLIENT request travel with its data event ([`SpanCtx`]).
//!
//! Everything here is `no_std`, allocation-free and bounded, for the kernel programs.

/// Ids of a span the kernel chose, carried by a data event ([`crate::DataHeader::ctx`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SpanCtx {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// All zero: a root span (the sending thread was not serving a request the kernel knew).
    pub parent_id: [u8; 8],
    /// W3C trace flags (bit 0: sampled).
    pub flags: u8,
    /// A [`CtxState`].
    pub state: u8,
    pub _pad: [u8; 6],
}

/// What [`SpanCtx`] in a data event means.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtxState {
    /// No kernel-chosen ids for this call.
    None = 0,
    /// The call's bytes start a request into which the kernel inserted `traceparent` with
    /// these ids (the captured bytes are what the application wrote, without the header).
    Injected = 1,
    /// The call's bytes start a request that forwarded the `traceparent` its process had
    /// received; the kernel overwrote the header's parent-id field with `span_id` (trace id and
    /// flags kept). `parent_id` is the SERVER span that received the header. The captured
    /// bytes are what the application wrote, with the forwarded value.
    Rewritten = 2,
}

impl SpanCtx {
    /// Whether the kernel chose this request's ids and put them on the wire (inserted or
    /// rewritten header): the callee names `span_id`.
    pub fn injected(&self) -> bool {
        self.state == CtxState::Injected as u8 || self.rewritten()
    }

    /// Whether the ids went out by rewriting a forwarded header's parent-id field.
    pub fn rewritten(&self) -> bool {
        self.state == CtxState::Rewritten as u8
    }
}

/// Bytes of the header line the kernel inserts:
/// `traceparent: 00-<32 hex>-<16 hex>-<2 hex>\r\n`.
pub const TRACEPARENT_LINE_LEN: usize = 70;
/// Length of a version-00 `traceparent` value.
pub const TRACEPARENT_VALUE_LEN: usize = 55;
/// Offset of the parent-id field in a `traceparent` value (`00-<32 hex>-`), and its length.
pub const TRACEPARENT_PARENT_AT: usize = 36;
pub const SPAN_ID_HEX_LEN: usize = 16;

/// SplitMix64's finaliser: a cheap, well-mixed 64-bit hash step.
#[inline(always)]
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Trace id and span id of the SERVER span of the request whose head starts at byte
/// `head_position` of connection `conn_id`'s ingress stream. The trace id is used only when
/// the request carries no valid trace context. Never all zero.
#[inline(always)]
pub fn server_ids(key: u64, conn_id: u64, head_position: u64) -> ([u8; 16], [u8; 8]) {
    let seed = mix64(mix64(key ^ conn_id) ^ head_position);
    let span = mix64(seed ^ 0x5350_414E) | 1;
    let hi = mix64(seed ^ 0x5452_4143_4531);
    let lo = mix64(seed ^ 0x5452_4143_4532) | 1;
    let mut trace = [0u8; 16];
    trace[..8].copy_from_slice(&hi.to_be_bytes());
    trace[8..].copy_from_slice(&lo.to_be_bytes());
    (trace, span.to_be_bytes())
}

/// Value of a lower-case hex digit (the only form W3C allows).
#[inline(always)]
pub const fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

#[inline(always)]
fn hex_digit(v: u8) -> u8 {
    let v = v & 0xf;
    if v < 10 { b'0' + v } else { b'a' + v - 10 }
}

/// Lower-case hex digits to their value; every other byte to 0x10. A table rather than
/// comparisons: the kernel's verifier walks every branch, and this runs 50 times per header.
/// The kernel programs read it from a map the agent fills (`HEX_TABLE` there).
pub const HEX_TABLE: [u8; 256] = {
    let mut t = [0x10u8; 256];
    let mut c = 0;
    while c < 256 {
        if let Some(v) = hex_value(c as u8) {
            t[c] = v;
        }
        c += 1;
    }
    t
};

/// Value of a lower-case hex digit and, separately, 1 when `c` is not one.
#[inline(always)]
fn nibble(table: &[u8; 256], c: u8) -> (u8, u8) {
    let v = table[c as usize];
    (v & 0xf, v >> 4)
}

/// Trace flags W3C defines (sampled, random): the others are reserved and must be zeroed.
pub const KNOWN_FLAGS: u8 = 0x03;

/// Parses a version-00 `traceparent` value (exactly 55 bytes, already cut at the header's end):
/// `(trace id, parent span id, flags)`, or `None` if anything is off (then nothing of it is
/// trusted). Zero ids are invalid; only [`KNOWN_FLAGS`] are kept.
#[inline(always)]
pub fn parse_traceparent(v: &[u8; TRACEPARENT_VALUE_LEN]) -> Option<([u8; 16], [u8; 8], u8)> {
    parse_traceparent_with(&HEX_TABLE, |i| v[i])
}

/// [`parse_traceparent`] reading byte `i` of the value through `v` (the kernel reads straight
/// from its buffer), with the hex table passed in (the kernel's lives in a map).
#[inline(always)]
pub fn parse_traceparent_with(
    table: &[u8; 256],
    v: impl Fn(usize) -> u8,
) -> Option<([u8; 16], [u8; 8], u8)> {
    let mut bad = (v(0) ^ b'0') | (v(1) ^ b'0') | (v(2) ^ b'-') | (v(35) ^ b'-') | (v(52) ^ b'-');
    let mut trace = [0u8; 16];
    let mut span = [0u8; 8];
    let mut any_trace = 0u8;
    let mut any_span = 0u8;
    let mut i = 0;
    while i < 16 {
        let (hi, bh) = nibble(table, v(3 + 2 * i));
        let (lo, bl) = nibble(table, v(4 + 2 * i));
        trace[i] = (hi << 4) | lo;
        any_trace |= trace[i];
        bad |= bh | bl;
        i += 1;
    }
    let mut i = 0;
    while i < 8 {
        let (hi, bh) = nibble(table, v(36 + 2 * i));
        let (lo, bl) = nibble(table, v(37 + 2 * i));
        span[i] = (hi << 4) | lo;
        any_span |= span[i];
        bad |= bh | bl;
        i += 1;
    }
    let (hi, bh) = nibble(table, v(53));
    let (lo, bl) = nibble(table, v(54));
    bad |= bh | bl;
    if bad != 0 || any_trace == 0 || any_span == 0 {
        return None;
    }
    Some((trace, span, ((hi << 4) | lo) & KNOWN_FLAGS))
}

/// Eight bytes from 16 lower-case hex digits read through `v` from `at`, and 1 when any of
/// them is not one.
#[inline(always)]
fn hex_id8(table: &[u8; 256], v: &impl Fn(usize) -> u8, at: usize) -> ([u8; 8], u8) {
    let mut id = [0u8; 8];
    let mut bad = 0;
    let mut i = 0;
    while i < 8 {
        let (hi, bh) = nibble(table, v(at + 2 * i));
        let (lo, bl) = nibble(table, v(at + 2 * i + 1));
        id[i] = (hi << 4) | lo;
        bad |= bh | bl;
        i += 1;
    }
    (id, bad)
}

/// A B3 trace id at the start of `v`: 32 lower-case hex digits, or 16 (a 64-bit id,
/// left-padded with zeros to 128 bits, as the agent reads it), told apart by whether the 17th
/// byte is a hex digit. The id and its length in bytes; `None` when malformed or zero.
#[inline(always)]
pub fn parse_b3_trace_id_with(
    table: &[u8; 256],
    v: &impl Fn(usize) -> u8,
) -> Option<([u8; 16], usize)> {
    let (first, bad_first) = hex_id8(table, v, 0);
    let wide = table[v(16) as usize] < 0x10;
    let mut trace = [0u8; 16];
    let len = if wide {
        let (second, bad_second) = hex_id8(table, v, 16);
        if bad_second != 0 {
            return None;
        }
        trace[..8].copy_from_slice(&first);
        trace[8..].copy_from_slice(&second);
        32
    } else {
        trace[8..].copy_from_slice(&first);
        16
    };
    if bad_first != 0 || trace == [0; 16] {
        return None;
    }
    Some((trace, len))
}

/// A B3 span id (16 lower-case hex digits, not zero) at byte `at` of `v`.
#[inline(always)]
pub fn parse_b3_span_id_with(
    table: &[u8; 256],
    v: &impl Fn(usize) -> u8,
    at: usize,
) -> Option<[u8; 8]> {
    let (id, bad) = hex_id8(table, v, at);
    if bad != 0 || id == [0; 8] {
        return None;
    }
    Some(id)
}

/// A B3 single header value (`{trace id}-{span id}[-{sampling}[-{parent span id}]]`) as the
/// kernel reads it to rewrite a forwarded one: the ids, where its 16-hex span id fields are
/// (offsets in the value) and where the value ends; the caller checks that only spaces or
/// tabs and the line's end follow. Strict as the agent's parser
/// (`tracer_protocol::trace_context::parse_b3_single`): lower-case hex, non-zero ids,
/// sampling `0`, `1` or `d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct B3Single {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// Offset of the span id field.
    pub span_at: usize,
    /// Offset of the parent span id field; 0 when the value has none.
    pub parent_at: usize,
    /// Length of the value.
    pub len: usize,
    /// W3C flags: sampled unless the sampling field is `0` (an absent decision is "sampled",
    /// as the agent reads it).
    pub flags: u8,
}

/// Parses a B3 single header value read through `v` (byte `i` of the value; reads past its
/// end must return a byte that is neither a hex digit nor `-`, e.g. the line's `\r`).
#[inline(always)]
pub fn parse_b3_single_with(table: &[u8; 256], v: impl Fn(usize) -> u8) -> Option<B3Single> {
    let (trace_id, t) = parse_b3_trace_id_with(table, &v)?;
    if v(t) != b'-' {
        return None;
    }
    let span_at = t + 1;
    let span_id = parse_b3_span_id_with(table, &v, span_at)?;
    let mut b = B3Single {
        trace_id,
        span_id,
        span_at,
        parent_at: 0,
        len: span_at + SPAN_ID_HEX_LEN,
        flags: 1,
    };
    if v(b.len) != b'-' {
        return Some(b);
    }
    b.flags = match v(b.len + 1) {
        b'0' => 0,
        b'1' | b'd' => 1,
        _ => return None,
    };
    b.len += 2;
    if v(b.len) != b'-' {
        return Some(b);
    }
    b.parent_at = b.len + 1;
    parse_b3_span_id_with(table, &v, b.parent_at)?;
    b.len = b.parent_at + SPAN_ID_HEX_LEN;
    Some(b)
}

/// The 16 lower-case hex digits of a span id, as a `traceparent` parent-id field (or a B3
/// span id) spells it.
#[inline(always)]
pub fn span_id_hex(id: &[u8; 8], out: &mut [u8; SPAN_ID_HEX_LEN]) {
    let mut i = 0;
    while i < 8 {
        out[2 * i] = hex_digit(id[i] >> 4);
        out[2 * i + 1] = hex_digit(id[i]);
        i += 1;
    }
}

/// The header line the kernel inserts, `traceparent: 00-…-…-…\r\n`.
#[inline(always)]
pub fn traceparent_line(ctx: &SpanCtx, out: &mut [u8; TRACEPARENT_LINE_LEN]) {
    const PREFIX: &[u8; 16] = b"traceparent: 00-";
    let mut i = 0;
    while i < 16 {
        out[i] = PREFIX[i];
        i += 1;
    }
    let mut i = 0;
    while i < 16 {
        out[16 + 2 * i] = hex_digit(ctx.trace_id[i] >> 4);
        out[17 + 2 * i] = hex_digit(ctx.trace_id[i]);
        i += 1;
    }
    out[48] = b'-';
    let mut i = 0;
    while i < 8 {
        out[49 + 2 * i] = hex_digit(ctx.span_id[i] >> 4);
        out[50 + 2 * i] = hex_digit(ctx.span_id[i]);
        i += 1;
    }
    out[65] = b'-';
    out[66] = hex_digit(ctx.flags >> 4);
    out[67] = hex_digit(ctx.flags);
    out[68] = b'\r';
    out[69] = b'\n';
}

/// Counters of the kernel's injection decisions (per-CPU array `INJECT_STATS`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InjectStat {
    /// A `traceparent` was inserted.
    Injected = 0,
    /// The request already carried trace context (W3C or B3): left alone, adopted instead.
    HasContext = 1,
    /// The request head did not end within the bytes examined (or the first write held only
    /// part of it): left alone rather than risk a second header.
    HeadIncomplete = 2,
    /// An earlier request on the connection is still waiting for its response (pipelining, or
    /// body bytes that look like a request): left alone.
    Pipelined = 3,
    /// The kernel refused to grow the message (memory), or its bytes were not as expected.
    Failed = 4,
    /// Server requests whose context the kernel recorded for their thread.
    ServerRequests = 5,
    /// A forwarded `traceparent`'s parent-id field was overwritten with the proxy's CLIENT
    /// span id (same length: no bytes inserted). Skips count as above: a split head as
    /// `HeadIncomplete`, a pending response as `Pipelined`, a kernel refusal as `Failed`.
    Rewritten = 6,
}

pub const INJECT_STATS: usize = 7;

impl InjectStat {
    pub const ALL: [InjectStat; INJECT_STATS] = [
        Self::Injected,
        Self::HasContext,
        Self::HeadIncomplete,
        Self::Pipelined,
        Self::Failed,
        Self::ServerRequests,
        Self::Rewritten,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Injected => "inject_done",
            Self::HasContext => "inject_skipped_has_context",
            Self::HeadIncomplete => "inject_skipped_head_incomplete",
            Self::Pipelined => "inject_skipped_pipelined",
            Self::Failed => "inject_failed",
            Self::ServerRequests => "server_requests_seen_by_kernel",
            Self::Rewritten => "rewrite_done",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)] and Copy, only integers and arrays of them, padding spelled out as
    // fields: every bit pattern is a valid value.
    unsafe impl aya::Pod for super::SpanCtx {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(s: &str) -> [u8; TRACEPARENT_VALUE_LEN] {
        s.as_bytes().try_into().unwrap()
    }

    #[test]
    fn parses_the_spec_example() {
        let (t, s, f) = parse_traceparent(&value(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ))
        .unwrap();
        assert_eq!(t[0], 0x4b);
        assert_eq!(t[15], 0x36);
        assert_eq!(s, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert_eq!(f, 1);
    }

    #[test]
    fn nibbles_match_the_obvious_definition() {
        for c in 0..=255u8 {
            let (v, bad) = nibble(&HEX_TABLE, c);
            match hex_value(c) {
                Some(x) => assert_eq!((v, bad), (x, 0), "{c}"),
                None => assert_eq!(bad, 1, "{c}"),
            }
        }
    }

    #[test]
    fn rejects_what_the_spec_rejects() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
        ] {
            assert_eq!(parse_traceparent(&value(bad)), None, "{bad}");
        }
    }

    #[test]
    fn line_round_trips_through_the_parser() {
        let ctx = SpanCtx {
            trace_id: *b"\x01\x23\x45\x67\x89\xab\xcd\xef\xfe\xdc\xba\x98\x76\x54\x32\x10",
            span_id: [0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3],
            flags: 1,
            ..Default::default()
        };
        let mut line = [0u8; TRACEPARENT_LINE_LEN];
        traceparent_line(&ctx, &mut line);
        let text = core::str::from_utf8(&line).unwrap();
        assert_eq!(
            text,
            "traceparent: 00-0123456789abcdeffedcba9876543210-deadbeef00010203-01\r\n"
        );
        let v: [u8; TRACEPARENT_VALUE_LEN] = line[13..68].try_into().unwrap();
        assert_eq!(parse_traceparent(&v), Some((ctx.trace_id, ctx.span_id, 1)));
    }

    #[test]
    fn span_id_hex_is_the_parent_field_of_the_line() {
        let ctx = SpanCtx {
            trace_id: [7; 16],
            span_id: [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7],
            flags: 1,
            ..Default::default()
        };
        let mut line = [0u8; TRACEPARENT_LINE_LEN];
        traceparent_line(&ctx, &mut line);
        let mut hex = [0u8; SPAN_ID_HEX_LEN];
        span_id_hex(&ctx.span_id, &mut hex);
        let at = 13 + TRACEPARENT_PARENT_AT;
        assert_eq!(&line[at..at + SPAN_ID_HEX_LEN], &hex);
        assert_eq!(&hex, b"00f067aa0ba902b7");
    }

    /// The value `s` as the kernel reads it: the line's `\r` past its end.
    fn b3(s: &str) -> Option<B3Single> {
        let b = s.as_bytes();
        let got = parse_b3_single_with(&HEX_TABLE, |i| *b.get(i).unwrap_or(&b'\r'))?;
        (got.len == b.len()).then_some(got)
    }

    #[test]
    fn b3_single_fields_are_found_where_they_are() {
        const T: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
        const S: &str = "00f067aa0ba902b7";
        const P: &str = "05e3ac9a4f6e3b90";
        let full = b3(&format!("{T}-{S}-1-{P}")).unwrap();
        assert_eq!(full.trace_id[0], 0x4b);
        assert_eq!(
            full.span_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!((full.span_at, full.parent_at, full.len), (33, 52, 68));
        assert_eq!(full.flags, 1);
        let short = b3(&format!("a3ce929d0e0e4736-{S}")).unwrap();
        assert_eq!(&short.trace_id[..8], &[0; 8]);
        assert_eq!(short.trace_id[8], 0xa3);
        assert_eq!((short.span_at, short.parent_at, short.len), (17, 0, 33));
        assert_eq!(b3(&format!("{T}-{S}-0")).unwrap().flags, 0);
        assert_eq!(b3(&format!("{T}-{S}-d")).unwrap().flags, 1);
        assert_eq!(b3(&format!("{T}-{S}")).unwrap().flags, 1);
        for bad in [
            "1".to_string(),
            format!("{T}-{S}-"),
            format!("{T}-{S}-2"),
            format!("{T}-{S}-1-"),
            format!("{T}-{S}-1-{}", &P[1..]),
            format!("{T}-{S}-1-{}", "0".repeat(16)),
            format!("{T}-{S}-1-{P}-"),
            format!("{T}-{S}-10"),
            format!("{T}-{}", S.to_uppercase()),
            format!("{T}-{}", "0".repeat(16)),
            format!("{}-{S}", "0".repeat(32)),
            format!("{}-{S}", "0".repeat(16)),
            format!("{}-{S}", &T[..24]),
            format!("{T}0-{S}"),
            format!("{T}--{S}"),
            format!("{T}_{S}"),
        ] {
            assert_eq!(b3(&bad), None, "{bad}");
        }
    }

    #[test]
    fn b3_ids_alone_read_as_the_multi_headers_carry_them() {
        let v = |s: &'static str| move |i: usize| *s.as_bytes().get(i).unwrap_or(&b'\r');
        let (t, len) = parse_b3_trace_id_with(&HEX_TABLE, &v("a3ce929d0e0e4736")).unwrap();
        assert_eq!((t[15], len), (0x36, 16));
        let (_, len) =
            parse_b3_trace_id_with(&HEX_TABLE, &v("4bf92f3577b34da6a3ce929d0e0e4736")).unwrap();
        assert_eq!(len, 32);
        assert_eq!(
            parse_b3_trace_id_with(&HEX_TABLE, &v("a3ce929d0e0e473")),
            None
        );
        assert_eq!(
            parse_b3_span_id_with(&HEX_TABLE, &v("00f067aa0ba902b7"), 0),
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert_eq!(
            parse_b3_span_id_with(&HEX_TABLE, &v("0000000000000000"), 0),
            None
        );
    }

    #[test]
    fn rewritten_ids_count_as_injected() {
        let mut c = SpanCtx {
            state: CtxState::Rewritten as u8,
            ..Default::default()
        };
        assert!(c.injected() && c.rewritten());
        c.state = CtxState::Injected as u8;
        assert!(c.injected() && !c.rewritten());
        c.state = CtxState::None as u8;
        assert!(!c.injected());
    }

    #[test]
    fn server_ids_are_stable_distinct_and_never_zero() {
        let a = server_ids(7, 1, 0);
        assert_eq!(a, server_ids(7, 1, 0));
        assert_ne!(a, server_ids(7, 1, 100));
        assert_ne!(a, server_ids(7, 2, 0));
        assert_ne!(a, server_ids(8, 1, 0));
        for p in 0..1000 {
            let (t, s) = server_ids(0, 0, p);
            assert_ne!(t, [0; 16]);
            assert_ne!(s, [0; 8]);
        }
    }

    #[test]
    fn stats_index_their_array() {
        for (i, s) in InjectStat::ALL.iter().enumerate() {
            assert_eq!(*s as usize, i);
        }
    }
}
