//! Incoming trace context: W3C Trace Context (`traceparent`, `tracestate`) and B3 (single `b3`
//! header and multi `X-B3-*` headers), parsed strictly. Pure functions over header values,
//! std only.
//!
//! Rules (a header that breaks any of them is ignored as a whole, never trusted in part):
//! - `traceparent` (W3C Trace Context level 1/2): `version-traceid-parentid-flags`, lowercase
//!   hex only. Version `ff` is invalid. Version `00` is exactly 55 characters. A higher
//!   (future) version needs at least 55 characters, and a `-` right after them when longer; its
//!   first four fields are read as version 00's. All-zero trace or parent ids are invalid.
//!   Only the flags this agent knows (sampled `0x01`, random `0x02`) are kept. Several
//!   `traceparent` headers are invalid (they cannot be told apart).
//! - `tracestate` is carried over as it is, only with a valid `traceparent`: several headers
//!   are joined with `,` (RFC 9110 list), surrounding whitespace is trimmed, and a value that
//!   is not printable ASCII, or has [`MAX_TRACESTATE`] bytes or more, is dropped (the HTTP
//!   parser keeps 512 bytes of a header, so a value that long may have been cut).
//! - B3 single (`b3: {traceid}-{spanid}[-{sampling}[-{parentspanid}]]`): trace id of 16 or 32
//!   lowercase hex (64-bit ids are left-padded with zeros to 128 bits), span id of 16,
//!   sampling `0`, `1` or `d` (debug, which implies sampled), parent span id of 16 (checked,
//!   then unused: the caller's span is our parent). `b3: 0`, `b3: 1` and `b3: d` carry only
//!   a sampling decision: a new trace with that decision, no parent.
//! - B3 multi: `X-B3-TraceId` and `X-B3-SpanId` (same formats) together, `X-B3-Sampled`
//!   (`0`/`1`, and the legacy `false`/`true`), `X-B3-Flags: 1` (debug, sampled),
//!   `X-B3-ParentSpanId` (checked, unused). Sampling headers alone are a sampling-only
//!   decision. An absent decision is "sampled": the agent records every span it sees.
//! - W3C wins when a valid `traceparent` is present; otherwise a valid B3 context, single
//!   header before multi. A sampling-only B3 decision is used only when there is no context.
use std::fmt;

/// W3C trace flag: sampled.
pub const FLAG_SAMPLED: u8 = 0x01;
/// W3C trace flag (level 2): the trace id is random.
pub const FLAG_RANDOM: u8 = 0x02;
/// `tracestate` values of this many bytes or more are dropped.
pub const MAX_TRACESTATE: usize = 512;
/// Length of a version-00 `traceparent`.
pub const TRACEPARENT_LEN: usize = 55;

/// Where a span's parent (or context) came from: the `tracer.parent.source` attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParentSource {
    /// A W3C `traceparent` header.
    W3c,
    /// A B3 header (single or multi).
    B3,
    /// In-process: the thread that sent a request was serving another one.
    Thread,
    /// Same node: the CLIENT span that sent this request on this node, found by the
    /// connection's addresses and the request's byte position.
    Address,
    /// In-process, any thread: the request forwarded the trace context a request the process
    /// is serving received (a proxy); that request's SERVER span is the parent.
    Forwarded,
    /// None: the span starts a new trace.
    None,
}

impl ParentSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::W3c => "w3c",
            Self::B3 => "b3",
            Self::Thread => "thread",
            Self::Address => "address",
            Self::Forwarded => "forwarded",
            Self::None => "none",
        }
    }
}

impl fmt::Display for ParentSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A remote span context taken from a request's headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteContext {
    pub trace_id: [u8; 16],
    /// The span id the header names: the sender's span.
    pub span_id: [u8; 8],
    /// W3C trace flags (bit 0: sampled).
    pub flags: u8,
    pub trace_state: Option<String>,
    /// [`ParentSource::W3c`] or [`ParentSource::B3`].
    pub source: ParentSource,
}

/// What a request's headers say about its trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Extracted {
    /// A valid remote context.
    Context(RemoteContext),
    /// Only a sampling decision (`b3: 0`, `X-B3-Sampled: 1` alone, ...): flags for a new trace.
    SamplingOnly(u8),
    /// Nothing usable.
    None,
}

/// A parsed `traceparent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub version: u8,
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    /// Known flags only (sampled, random).
    pub flags: u8,
}

/// A parsed B3 context (single or multi headers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum B3 {
    Context {
        trace_id: [u8; 16],
        span_id: [u8; 8],
        /// `None`: the decision is deferred.
        sampled: Option<bool>,
    },
    SamplingOnly(bool),
}

fn trim_ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// Lowercase hex digit value.
fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Decodes exactly `N * 2` lowercase hex characters.
fn decode_hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = (hex_val(pair[0])? << 4) | hex_val(pair[1])?;
    }
    Some(out)
}

/// A non-zero 64-bit id of 16 lowercase hex.
fn span_id_hex(s: &[u8]) -> Option<[u8; 8]> {
    decode_hex::<8>(s).filter(|id| *id != [0; 8])
}

/// A non-zero trace id of 32 lowercase hex, or 16 (left-padded to 128 bits) when `allow_64`.
fn trace_id_hex(s: &[u8], allow_64: bool) -> Option<[u8; 16]> {
    let id = match s.len() {
        32 => decode_hex::<16>(s)?,
        16 if allow_64 => {
            let low = decode_hex::<8>(s)?;
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&low);
            id
        }
        _ => return None,
    };
    (id != [0; 16]).then_some(id)
}

/// Parses one `traceparent` value (surrounding spaces and tabs allowed).
pub fn parse_traceparent(value: &str) -> Option<TraceParent> {
    let b = trim_ows(value).as_bytes();
    if b.len() < TRACEPARENT_LEN {
        return None;
    }
    let version = decode_hex::<1>(b.get(..2)?)?[0];
    if version == 0xff {
        return None;
    }
    if version == 0 && b.len() != TRACEPARENT_LEN {
        return None;
    }
    if b.len() > TRACEPARENT_LEN && b[TRACEPARENT_LEN] != b'-' {
        return None;
    }
    if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let trace_id = trace_id_hex(&b[3..35], false)?;
    let parent_id = span_id_hex(&b[36..52])?;
    let flags = decode_hex::<1>(&b[53..55])?[0];
    Some(TraceParent {
        version,
        trace_id,
        parent_id,
        flags: flags & (FLAG_SAMPLED | FLAG_RANDOM),
    })
}

/// Joins and checks `tracestate` values (see the module docs); `None` when unusable.
pub fn parse_tracestate<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mut out = String::new();
    for v in values {
        let v = trim_ows(v);
        if v.len() >= MAX_TRACESTATE || !v.bytes().all(|c| (0x20..=0x7e).contains(&c)) {
            return None;
        }
        if v.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(v);
        if out.len() >= MAX_TRACESTATE {
            return None;
        }
    }
    (!out.is_empty()).then_some(out)
}

fn b3_sampling(s: &[u8]) -> Option<bool> {
    match s {
        b"0" => Some(false),
        b"1" | b"d" => Some(true),
        _ => None,
    }
}

/// Parses one `b3` (single header) value.
pub fn parse_b3_single(value: &str) -> Option<B3> {
    let b = trim_ows(value).as_bytes();
    if b.len() == 1 {
        return b3_sampling(b).map(B3::SamplingOnly);
    }
    let mut parts = b.split(|c| *c == b'-');
    let trace_id = trace_id_hex(parts.next()?, true)?;
    let span_id = span_id_hex(parts.next()?)?;
    let sampled = match parts.next() {
        None => None,
        Some(s) => Some(b3_sampling(s)?),
    };
    if let Some(parent) = parts.next() {
        span_id_hex(parent)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(B3::Context {
        trace_id,
        span_id,
        sampled,
    })
}

/// Parses B3 multi headers (values as received; `None` for an absent header).
pub fn parse_b3_multi(
    trace_id: Option<&str>,
    span_id: Option<&str>,
    parent_span_id: Option<&str>,
    sampled: Option<&str>,
    flags: Option<&str>,
) -> Option<B3> {
    let debug = match flags.map(trim_ows) {
        None => false,
        Some("1") => true,
        Some("0") => false,
        Some(_) => return None,
    };
    let sampled = match sampled.map(trim_ows) {
        None => None,
        Some("1" | "true") => Some(true),
        Some("0" | "false") => Some(false),
        Some(_) => return None,
    };
    let sampled = if debug { Some(true) } else { sampled };
    match (trace_id, span_id) {
        (Some(t), Some(s)) => {
            let trace_id = trace_id_hex(trim_ows(t).as_bytes(), true)?;
            let span_id = span_id_hex(trim_ows(s).as_bytes())?;
            if let Some(p) = parent_span_id {
                span_id_hex(trim_ows(p).as_bytes())?;
            }
            Some(B3::Context {
                trace_id,
                span_id,
                sampled,
            })
        }
        (None, None) => sampled.map(B3::SamplingOnly),
        // One id without the other: malformed.
        _ => None,
    }
}

fn flags_of(sampled: Option<bool>) -> u8 {
    if sampled.unwrap_or(true) {
        FLAG_SAMPLED
    } else {
        0
    }
}

/// At most one value of header `name` (lower-case): `Err` when it appears more than once.
fn single<'a, I>(headers: I, name: &str) -> Result<Option<&'a str>, ()>
where
    I: Iterator<Item = (&'a str, &'a str)>,
{
    let mut found = None;
    for (k, v) in headers {
        if k.eq_ignore_ascii_case(name) {
            if found.is_some() {
                return Err(());
            }
            found = Some(v);
        }
    }
    Ok(found)
}

/// The trace context of a request, from its headers (names in any case). See the module docs
/// for the precedence and validity rules.
pub fn extract<'a, I>(headers: I) -> Extracted
where
    I: Iterator<Item = (&'a str, &'a str)> + Clone,
{
    // W3C.
    if let Ok(Some(tp)) = single(headers.clone(), "traceparent")
        && let Some(tp) = parse_traceparent(tp)
    {
        let states = headers
            .clone()
            .filter(|(k, _)| k.eq_ignore_ascii_case("tracestate"))
            .map(|(_, v)| v);
        return Extracted::Context(RemoteContext {
            trace_id: tp.trace_id,
            span_id: tp.parent_id,
            flags: tp.flags,
            trace_state: parse_tracestate(states),
            source: ParentSource::W3c,
        });
    }
    let mut sampling_only = None;
    let mut b3 = |parsed: Option<B3>| match parsed {
        Some(B3::Context {
            trace_id,
            span_id,
            sampled,
        }) => Some(RemoteContext {
            trace_id,
            span_id,
            flags: flags_of(sampled),
            trace_state: None,
            source: ParentSource::B3,
        }),
        Some(B3::SamplingOnly(s)) => {
            sampling_only.get_or_insert(flags_of(Some(s)));
            None
        }
        None => None,
    };
    // B3 single.
    if let Ok(Some(v)) = single(headers.clone(), "b3")
        && let Some(ctx) = b3(parse_b3_single(v))
    {
        return Extracted::Context(ctx);
    }
    // B3 multi.
    let get = |name| single(headers.clone(), name);
    if let (Ok(t), Ok(s), Ok(p), Ok(smp), Ok(f)) = (
        get("x-b3-traceid"),
        get("x-b3-spanid"),
        get("x-b3-parentspanid"),
        get("x-b3-sampled"),
        get("x-b3-flags"),
    ) && let Some(ctx) = b3(parse_b3_multi(t, s, p, smp, f))
    {
        return Extracted::Context(ctx);
    }
    match sampling_only {
        Some(flags) => Extracted::SamplingOnly(flags),
        None => Extracted::None,
    }
}

/// Fuzzing entry point: every parser on arbitrary bytes, with invariants checked (panics on a
/// violation). Splits `data` into header lines `name: value`.
#[cfg(any(test, fuzzing))]
pub fn fuzz_check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some(tp) = parse_traceparent(&text) {
        assert_ne!(tp.trace_id, [0; 16]);
        assert_ne!(tp.parent_id, [0; 8]);
        assert_ne!(tp.version, 0xff);
        let t = trim_ows(&text);
        assert!(t.len() >= TRACEPARENT_LEN);
        // The ids round-trip to the same lowercase hex.
        assert_eq!(hex(&tp.trace_id), t[3..35]);
        assert_eq!(hex(&tp.parent_id), t[36..52]);
    }
    if let Some(B3::Context {
        trace_id, span_id, ..
    }) = parse_b3_single(&text)
    {
        assert_ne!(trace_id, [0; 16]);
        assert_ne!(span_id, [0; 8]);
        let t = trim_ows(&text);
        let first = t.split('-').next().unwrap_or_default();
        assert_eq!(hex(&trace_id)[32 - first.len()..], *first);
    }
    if !data.iter().any(|b| matches!(b, b'\r' | b'\n')) {
        assert_b3_single_agrees(data);
    }
    if let Some(ts) = parse_tracestate([text.as_ref()]) {
        assert!(ts.len() < MAX_TRACESTATE);
    }
    let headers: Vec<(&str, &str)> = text.split('\n').filter_map(|l| l.split_once(':')).collect();
    match extract(headers.iter().copied()) {
        Extracted::Context(c) => {
            assert_ne!(c.trace_id, [0; 16]);
            assert_ne!(c.span_id, [0; 8]);
            assert!(matches!(c.source, ParentSource::W3c | ParentSource::B3));
            assert!(c.source == ParentSource::W3c || c.trace_state.is_none());
            assert!(
                c.trace_state
                    .as_ref()
                    .is_none_or(|s| s.len() < MAX_TRACESTATE)
            );
        }
        Extracted::SamplingOnly(f) => assert!(f <= FLAG_SAMPLED),
        Extracted::None => {}
    }
}

/// Spaces and tabs the kernel skips around a header value (`MAX_OWS` in
/// tracer-ebpf/src/context.rs).
#[cfg(any(test, fuzzing))]
const KERNEL_MAX_OWS: usize = 4;

/// What the kernel makes of the header line `b3:<raw>\r\n` (the framing of `b3_context` in
/// tracer-ebpf/src/context.rs: keep the two in step): at most [`KERNEL_MAX_OWS`] spaces or
/// tabs, the value, as many, the line's end. The value's fields are at offsets into `raw`.
#[cfg(any(test, fuzzing))]
fn kernel_b3_single(raw: &[u8]) -> Option<tracer_common::propagation::B3Single> {
    use tracer_common::propagation::{HEX_TABLE, parse_b3_single_with};
    let line = [raw, b"\r\n"].concat();
    let ows = |i: usize| matches!(line.get(i), Some(b' ' | b'\t'));
    let mut v = 0;
    while v < KERNEL_MAX_OWS && ows(v) {
        v += 1;
    }
    let mut b = parse_b3_single_with(&HEX_TABLE, |k| line.get(v + k).copied().unwrap_or(0))?;
    let mut end = v + b.len;
    let mut k = 0;
    while k < KERNEL_MAX_OWS && ows(end) {
        end += 1;
        k += 1;
    }
    if line.get(end) != Some(&b'\r') {
        return None;
    }
    b.span_at += v;
    if b.parent_at != 0 {
        b.parent_at += v;
    }
    Some(b)
}

/// The kernel reads a `b3` value (`raw`, without CR or LF) as the agent does: what it would
/// rewrite is a context the agent accepts with the same ids and decision, and its span id
/// fields hold those ids' hex. The one known difference: more than [`KERNEL_MAX_OWS`] spaces
/// or tabs around the value, which the kernel refuses.
#[cfg(any(test, fuzzing))]
fn assert_b3_single_agrees(raw: &[u8]) {
    let agent = std::str::from_utf8(raw).ok().and_then(parse_b3_single);
    let Some(k) = kernel_b3_single(raw) else {
        if let Some(B3::Context { .. }) = agent {
            let is_ows = |c: &&u8| matches!(c, b' ' | b'\t');
            let lead = raw.iter().take_while(is_ows).count();
            let trail = raw.iter().rev().take_while(is_ows).count();
            assert!(
                lead > KERNEL_MAX_OWS || trail > KERNEL_MAX_OWS,
                "the kernel refuses a b3 value the agent accepts: {:?}",
                String::from_utf8_lossy(raw)
            );
        }
        return;
    };
    let shown = String::from_utf8_lossy(raw);
    let Some(B3::Context {
        trace_id,
        span_id,
        sampled,
    }) = agent
    else {
        panic!("the kernel accepts a b3 value the agent refuses: {shown:?}");
    };
    assert_eq!(
        (k.trace_id, k.span_id, k.flags),
        (trace_id, span_id, flags_of(sampled)),
        "{shown:?}"
    );
    assert_eq!(raw[k.span_at..k.span_at + 16], *hex(&span_id).as_bytes());
    if k.parent_at != 0 {
        assert_eq!(raw[k.parent_at - 1], b'-', "{shown:?}");
        assert!(span_id_hex(&raw[k.parent_at..k.parent_at + 16]).is_some());
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    fn tid() -> [u8; 16] {
        decode_hex::<16>(TRACE.as_bytes()).unwrap()
    }
    fn sid() -> [u8; 8] {
        decode_hex::<8>(SPAN.as_bytes()).unwrap()
    }
    fn tp(v: &str) -> Option<TraceParent> {
        parse_traceparent(v)
    }
    fn ex(h: &[(&str, &str)]) -> Extracted {
        extract(h.iter().copied())
    }

    #[test]
    fn traceparent_spec_examples() {
        let p = tp(&format!("00-{TRACE}-{SPAN}-01")).unwrap();
        assert_eq!(
            p,
            TraceParent {
                version: 0,
                trace_id: tid(),
                parent_id: sid(),
                flags: 1
            }
        );
        let p = tp(&format!("00-{TRACE}-{SPAN}-00")).unwrap();
        assert_eq!(p.flags, 0);
        // Surrounding optional whitespace.
        assert!(tp(&format!(" \t00-{TRACE}-{SPAN}-01 ")).is_some());
        // Unknown flags are dropped, known ones kept.
        assert_eq!(tp(&format!("00-{TRACE}-{SPAN}-ff")).unwrap().flags, 3);
        assert_eq!(tp(&format!("00-{TRACE}-{SPAN}-02")).unwrap().flags, 2);
    }

    #[test]
    fn traceparent_future_versions() {
        let base = format!("{TRACE}-{SPAN}-01");
        assert_eq!(tp(&format!("01-{base}")).unwrap().version, 1);
        assert_eq!(
            tp(&format!("cc-{base}-what-the-future-holds"))
                .unwrap()
                .version,
            0xcc
        );
        assert_eq!(tp(&format!("fe-{base}-")).unwrap().trace_id, tid());
        // Longer, but not followed by '-'.
        assert!(tp(&format!("01-{base}x")).is_none());
        assert!(tp(&format!("01-{base}01")).is_none());
        // Too short, even for a future version.
        assert!(tp(&format!("01-{TRACE}-{SPAN}-1")).is_none());
        // Future versions still need lowercase hex in the first four fields.
        assert!(tp(&format!("01-{}-{SPAN}-01", TRACE.to_uppercase())).is_none());
    }

    #[test]
    fn traceparent_malformed() {
        let bad = [
            String::new(),
            "00".into(),
            // version ff
            format!("ff-{TRACE}-{SPAN}-01"),
            // version 00 must be exactly 55 long
            format!("00-{TRACE}-{SPAN}-01-"),
            format!("00-{TRACE}-{SPAN}-01-extra"),
            format!("00-{TRACE}-{SPAN}-1"),
            format!("00-{TRACE}0-{SPAN}-01"),
            format!("00-{}-{SPAN}-01", &TRACE[1..]),
            format!("00-{TRACE}-{}-01", &SPAN[1..]),
            format!("00-{TRACE}-{SPAN}0-01"),
            // uppercase hex anywhere
            format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
            format!("00-{TRACE}-{}-01", "00F067AA0BA902B7"),
            format!("00-{TRACE}-{SPAN}-0A"),
            format!("0A-{TRACE}-{SPAN}-01"),
            // all-zero ids
            format!("00-{}-{SPAN}-01", "0".repeat(32)),
            format!("00-{TRACE}-{}-01", "0".repeat(16)),
            // wrong separators / characters
            format!("00_{TRACE}-{SPAN}-01"),
            format!("00-{TRACE}_{SPAN}-01"),
            format!("00-{TRACE}-{SPAN}_01"),
            format!("00-{}g-{SPAN}-01", &TRACE[..31]),
            format!("00-{TRACE}-{}z-01", &SPAN[..15]),
            format!("00-{TRACE}-{SPAN}-0x"),
            format!("0g-{TRACE}-{SPAN}-01"),
            format!("00-{}-{SPAN}-01", "-".repeat(32)),
            format!("00-+{}-{SPAN}-01", &TRACE[1..]),
            format!("00 {TRACE} {SPAN} 01"),
            // inner whitespace
            format!("00- {}-{SPAN}-01", &TRACE[1..]),
            // non-ASCII of the right byte length
            format!("00-{}é-{SPAN}-01", &TRACE[..30]),
        ];
        for v in &bad {
            assert_eq!(tp(v), None, "{v:?}");
        }
    }

    #[test]
    fn tracestate_rules() {
        assert_eq!(
            parse_tracestate(["rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"]).as_deref(),
            Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
        );
        assert_eq!(
            parse_tracestate([" a=1 ", "b=2"]).as_deref(),
            Some("a=1,b=2")
        );
        assert_eq!(parse_tracestate(["", " "]), None);
        assert_eq!(parse_tracestate(["a=\u{1}"]), None);
        assert_eq!(parse_tracestate(["a=\u{fffd}"]), None);
        let long = format!("a={}", "x".repeat(MAX_TRACESTATE - 2));
        assert_eq!(parse_tracestate([long.as_str()]), None);
        let fits = format!("a={}", "x".repeat(MAX_TRACESTATE - 3));
        assert_eq!(parse_tracestate([fits.as_str()]), Some(fits.clone()));
        let half = "x".repeat(300);
        assert_eq!(parse_tracestate([half.as_str(), half.as_str()]), None);
    }

    #[test]
    fn extract_w3c() {
        let tpv = format!("00-{TRACE}-{SPAN}-01");
        let got = ex(&[("traceparent", &tpv), ("tracestate", "k=v")]);
        assert_eq!(
            got,
            Extracted::Context(RemoteContext {
                trace_id: tid(),
                span_id: sid(),
                flags: 1,
                trace_state: Some("k=v".into()),
                source: ParentSource::W3c,
            })
        );
        // Header names in any case.
        assert!(matches!(
            ex(&[("TraceParent", &tpv)]),
            Extracted::Context(_)
        ));
        // tracestate without a valid traceparent is ignored.
        assert_eq!(ex(&[("tracestate", "k=v")]), Extracted::None);
        let upper = format!("00-{}-{SPAN}-01", TRACE.to_uppercase());
        assert_eq!(
            ex(&[("traceparent", &upper), ("tracestate", "k=v")]),
            Extracted::None
        );
        // Two traceparent headers: ambiguous, ignored.
        assert_eq!(
            ex(&[("traceparent", &tpv), ("traceparent", &tpv)]),
            Extracted::None
        );
        // A bad tracestate is dropped; the traceparent still counts.
        match ex(&[("traceparent", &tpv), ("tracestate", "k=\u{7f}")]) {
            Extracted::Context(c) => assert_eq!(c.trace_state, None),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn b3_single_forms() {
        let s = |v: &str| parse_b3_single(v);
        let ctx = |sampled| {
            Some(B3::Context {
                trace_id: tid(),
                span_id: sid(),
                sampled,
            })
        };
        assert_eq!(s(&format!("{TRACE}-{SPAN}")), ctx(None));
        assert_eq!(s(&format!("{TRACE}-{SPAN}-1")), ctx(Some(true)));
        assert_eq!(s(&format!("{TRACE}-{SPAN}-0")), ctx(Some(false)));
        assert_eq!(s(&format!("{TRACE}-{SPAN}-d")), ctx(Some(true)));
        assert_eq!(
            s(&format!("{TRACE}-{SPAN}-1-05e3ac9a4f6e3b90")),
            ctx(Some(true))
        );
        assert_eq!(s("0"), Some(B3::SamplingOnly(false)));
        assert_eq!(s("1"), Some(B3::SamplingOnly(true)));
        assert_eq!(s("d"), Some(B3::SamplingOnly(true)));
        // 64-bit trace id: left-padded.
        match s(&format!("a3ce929d0e0e4736-{SPAN}-1")) {
            Some(B3::Context { trace_id, .. }) => {
                assert_eq!(hex(&trace_id), "0000000000000000a3ce929d0e0e4736")
            }
            other => panic!("{other:?}"),
        }
        let bad = [
            String::new(),
            "2".into(),
            "D".into(),
            "true".into(),
            TRACE.into(),
            format!("{TRACE}-"),
            format!("{TRACE}-{SPAN}-"),
            format!("{TRACE}-{SPAN}-2"),
            format!("{TRACE}-{SPAN}-1-"),
            format!("{TRACE}-{SPAN}-1-05e3ac9a4f6e3b9"),
            format!("{TRACE}-{SPAN}-1-05e3ac9a4f6e3b90-x"),
            format!("{TRACE}-{SPAN}-1-{}", "0".repeat(16)),
            format!("{}-{SPAN}", TRACE.to_uppercase()),
            format!("{TRACE}-{}", SPAN.to_uppercase()),
            format!("{}-{SPAN}", "0".repeat(32)),
            format!("{}-{SPAN}", "0".repeat(16)),
            format!("{TRACE}-{}", "0".repeat(16)),
            format!("{}-{SPAN}", &TRACE[..24]),
            format!("{TRACE}0-{SPAN}"),
            format!("{TRACE}-{SPAN}0"),
            format!("{TRACE}--{SPAN}"),
            format!("{TRACE}-{SPAN}-1-05e3ac9a4f6e3b90-"),
        ];
        for v in &bad {
            assert_eq!(s(v), None, "{v:?}");
        }
    }

    #[test]
    fn b3_multi_forms() {
        let m = parse_b3_multi;
        let ctx = |sampled| {
            Some(B3::Context {
                trace_id: tid(),
                span_id: sid(),
                sampled,
            })
        };
        assert_eq!(m(Some(TRACE), Some(SPAN), None, None, None), ctx(None));
        assert_eq!(
            m(Some(TRACE), Some(SPAN), None, Some("1"), None),
            ctx(Some(true))
        );
        assert_eq!(
            m(Some(TRACE), Some(SPAN), None, Some("true"), None),
            ctx(Some(true))
        );
        assert_eq!(
            m(Some(TRACE), Some(SPAN), None, Some("0"), None),
            ctx(Some(false))
        );
        assert_eq!(
            m(Some(TRACE), Some(SPAN), None, Some("0"), Some("1")),
            ctx(Some(true))
        );
        assert_eq!(
            m(
                Some(TRACE),
                Some(SPAN),
                Some("05e3ac9a4f6e3b90"),
                None,
                None
            ),
            ctx(None)
        );
        assert_eq!(
            m(None, None, None, Some("0"), None),
            Some(B3::SamplingOnly(false))
        );
        assert_eq!(
            m(None, None, None, None, Some("1")),
            Some(B3::SamplingOnly(true))
        );
        assert_eq!(m(None, None, None, None, None), None);
        // Malformed.
        assert_eq!(m(Some(TRACE), None, None, Some("1"), None), None);
        assert_eq!(m(None, Some(SPAN), None, None, None), None);
        assert_eq!(m(Some(TRACE), Some(SPAN), None, Some("yes"), None), None);
        assert_eq!(m(Some(TRACE), Some(SPAN), None, None, Some("2")), None);
        assert_eq!(m(Some(TRACE), Some(SPAN), Some("zz"), None, None), None);
        assert_eq!(
            m(Some(&TRACE.to_uppercase()), Some(SPAN), None, None, None),
            None
        );
        assert_eq!(
            m(Some(TRACE), Some("0000000000000000"), None, None, None),
            None
        );
        assert_eq!(m(Some("123"), Some(SPAN), None, None, None), None);
    }

    #[test]
    fn extract_precedence() {
        let tpv = format!("00-{TRACE}-{SPAN}-00");
        let other_trace = "80f198ee56343ba864fe8b2a57d3eff7";
        let b3v = format!("{other_trace}-e457b5a2e4d86bd1-1");
        // W3C wins over B3.
        match ex(&[("b3", &b3v), ("traceparent", &tpv)]) {
            Extracted::Context(c) => {
                assert_eq!(
                    (c.source, c.trace_id, c.flags),
                    (ParentSource::W3c, tid(), 0)
                )
            }
            other => panic!("{other:?}"),
        }
        // An invalid traceparent falls back to a valid B3.
        match ex(&[("b3", &b3v), ("traceparent", "garbage")]) {
            Extracted::Context(c) => {
                assert_eq!(c.source, ParentSource::B3);
                assert_eq!(hex(&c.trace_id), other_trace);
                assert_eq!(c.flags, 1);
                assert_eq!(c.trace_state, None);
            }
            other => panic!("{other:?}"),
        }
        // B3 never carries tracestate.
        match ex(&[("b3", &b3v), ("tracestate", "k=v")]) {
            Extracted::Context(c) => assert_eq!(c.trace_state, None),
            other => panic!("{other:?}"),
        }
        // Multi headers.
        let multi = [
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", SPAN),
            ("x-b3-sampled", "0"),
        ];
        match ex(&multi) {
            Extracted::Context(c) => {
                assert_eq!(hex(&c.trace_id), "0000000000000000a3ce929d0e0e4736");
                assert_eq!((c.span_id, c.flags), (sid(), 0));
            }
            other => panic!("{other:?}"),
        }
        // Sampling-only.
        assert_eq!(ex(&[("b3", "0")]), Extracted::SamplingOnly(0));
        assert_eq!(ex(&[("b3", "d")]), Extracted::SamplingOnly(1));
        assert_eq!(ex(&[("x-b3-sampled", "0")]), Extracted::SamplingOnly(0));
        // A sampling-only single header does not hide valid multi headers.
        assert!(matches!(
            ex(&[("b3", "0"), multi[0], multi[1]]),
            Extracted::Context(_)
        ));
        // Duplicated B3 headers are ambiguous.
        assert_eq!(ex(&[("b3", &b3v), ("b3", &b3v)]), Extracted::None);
        assert_eq!(
            ex(&[multi[0], multi[1], ("x-b3-spanid", "e457b5a2e4d86bd1")]),
            Extracted::None
        );
        assert_eq!(ex(&[]), Extracted::None);
        assert_eq!(ex(&[("host", "x")]), Extracted::None);
    }

    #[test]
    fn fuzz_check_on_samples() {
        let tpv = format!("00-{TRACE}-{SPAN}-01");
        for s in [
            tpv.as_str(),
            "",
            "\u{0}",
            "b3: 1",
            "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\ntracestate: a=b",
            "a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "-----------------------------------------------------------",
        ] {
            fuzz_check(s.as_bytes());
        }
    }

    /// The kernel's reading of `b3` values (the one it rewrites) agrees with the agent's on
    /// valid values, each of their one-byte mutations, and whitespace around them.
    #[test]
    fn kernel_and_agent_read_b3_alike() {
        let bases = [
            format!("{TRACE}-{SPAN}"),
            format!("{TRACE}-{SPAN}-1"),
            format!("{TRACE}-{SPAN}-0-05e3ac9a4f6e3b90"),
            format!("a3ce929d0e0e4736-{SPAN}-d"),
            format!("a3ce929d0e0e4736-{SPAN}-1-05e3ac9a4f6e3b90"),
        ];
        let mut accepted = 0;
        for base in &bases {
            assert!(kernel_b3_single(base.as_bytes()).is_some(), "{base}");
            for i in 0..base.len() {
                for c in (0..=255u8).filter(|c| !matches!(c, b'\r' | b'\n')) {
                    let mut v = base.clone().into_bytes();
                    v[i] = c;
                    assert_b3_single_agrees(&v);
                    accepted += usize::from(kernel_b3_single(&v).is_some());
                }
                // Cut short, or one byte longer.
                assert_b3_single_agrees(&base.as_bytes()[..i]);
                assert_b3_single_agrees(format!("{base}{}", &base[i..=i]).as_bytes());
            }
            for pad in ["", " ", "\t ", "    ", "     "] {
                assert_b3_single_agrees(format!("{pad}{base}{pad}").as_bytes());
            }
        }
        assert!(accepted > 100, "{accepted}");
    }

    #[test]
    fn source_names() {
        assert_eq!(ParentSource::W3c.to_string(), "w3c");
        assert_eq!(ParentSource::B3.as_str(), "b3");
        assert_eq!(ParentSource::Thread.as_str(), "thread");
        assert_eq!(ParentSource::None.as_str(), "none");
    }
}
