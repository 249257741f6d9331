//! OTLP trace export requests encoded straight from our [`Span`]s into protobuf bytes, with
//! no intermediate `opentelemetry-proto` messages: no string is copied and nothing is
//! allocated per span. The bytes are exactly those prost writes for the request
//! [`super::otlp::export_request`] builds (fields in tag order, proto3 defaults left out);
//! the tests hold the two to byte equality.
//!
//! Protobuf prefixes every nested message with its length, so a batch is sized first (each
//! span's length kept) and then written in one pass into a buffer reserved to the exact size.
use std::sync::Arc;

// Looked up per span: foldhash, not std's SipHash.
use hashbrown::HashMap;
use prost::encoding::{WireType, encoded_len_varint, key_len};

use super::otlp::{SCOPE_NAME, SCOPE_VERSION, span_flags};
use crate::span::{AttrValue, Span, SpanKind, StatusCode};

/// Field numbers of the OTLP messages written (opentelemetry/proto/*/v1/*.proto).
mod field {
    /// `ExportTraceServiceRequest.resource_spans`
    pub const RESOURCE_SPANS: u32 = 1;
    /// `ResourceSpans.resource`, `.scope_spans`
    pub const RESOURCE: u32 = 1;
    pub const SCOPE_SPANS: u32 = 2;
    /// `Resource.attributes`
    pub const RESOURCE_ATTRIBUTES: u32 = 1;
    /// `ScopeSpans.scope`, `.spans`
    pub const SCOPE: u32 = 1;
    pub const SPANS: u32 = 2;
    /// `InstrumentationScope.name`, `.version`
    pub const SCOPE_NAME: u32 = 1;
    pub const SCOPE_VERSION: u32 = 2;
    /// `Span.*`
    pub const TRACE_ID: u32 = 1;
    pub const SPAN_ID: u32 = 2;
    pub const TRACE_STATE: u32 = 3;
    pub const PARENT_SPAN_ID: u32 = 4;
    pub const NAME: u32 = 5;
    pub const KIND: u32 = 6;
    pub const START_TIME: u32 = 7;
    pub const END_TIME: u32 = 8;
    pub const ATTRIBUTES: u32 = 9;
    pub const EVENTS: u32 = 11;
    pub const DROPPED_EVENTS: u32 = 12;
    pub const STATUS: u32 = 15;
    pub const FLAGS: u32 = 16;
    /// `Span.Event.*`
    pub const EVENT_TIME: u32 = 1;
    pub const EVENT_NAME: u32 = 2;
    pub const EVENT_ATTRIBUTES: u32 = 3;
    /// `Status.message`, `.code`
    pub const STATUS_MESSAGE: u32 = 2;
    pub const STATUS_CODE: u32 = 3;
    /// `KeyValue.key`, `.value`
    pub const KEY: u32 = 1;
    pub const VALUE: u32 = 2;
    /// `AnyValue` oneof members
    pub const STRING_VALUE: u32 = 1;
    pub const BOOL_VALUE: u32 = 2;
    pub const INT_VALUE: u32 = 3;
    pub const ARRAY_VALUE: u32 = 5;
    /// `ArrayValue.values`
    pub const ARRAY_VALUES: u32 = 1;
}

/// OTLP `SpanKind` and `StatusCode` numbers.
const KIND_SERVER: u64 = 2;
const KIND_CLIENT: u64 = 3;
const STATUS_ERROR: u64 = 2;

/// The spans of one resource (one process) in a batch.
struct Group {
    /// Index of its first span: the resource is that span's.
    first: usize,
    spans: usize,
    /// Where its spans start in [`TraceEncoder::order`], and where the next one goes.
    start: usize,
    filled: usize,
    resource_len: usize,
    /// Length of the `ScopeSpans.spans` fields together.
    spans_len: usize,
}

/// Encodes batches of spans as `ExportTraceServiceRequest` bytes. Keeps its bookkeeping
/// between batches, so a batch costs no allocation once the first has sized it.
#[derive(Default)]
pub struct TraceEncoder {
    groups: Vec<Group>,
    /// Group of each resource seen in the batch, by its `Arc` address.
    group_of_resource: HashMap<usize, usize>,
    /// Group and encoded length of each span of the batch.
    span_group: Vec<usize>,
    span_len: Vec<usize>,
    /// Span indices grouped by resource, in order of first appearance.
    order: Vec<usize>,
}

impl TraceEncoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one export request carrying `spans` to `out`, grouped by resource (the
    /// `Arc<Resource>`: one per process) in order of first appearance.
    pub fn encode(&mut self, spans: &[Span], out: &mut Vec<u8>) {
        let total = self.size(spans);
        out.reserve(total);
        let before = out.len();
        let scope_len = scope_len();
        for g in &self.groups {
            let scope_spans_len = len_delimited(field::SCOPE, scope_len) + g.spans_len;
            let resource_spans_len = len_delimited(field::RESOURCE, g.resource_len)
                + len_delimited(field::SCOPE_SPANS, scope_spans_len);
            put_header(field::RESOURCE_SPANS, resource_spans_len, out);
            put_header(field::RESOURCE, g.resource_len, out);
            for (k, v) in &spans[g.first].resource.attributes {
                put_key_value(field::RESOURCE_ATTRIBUTES, k, v, out);
            }
            put_header(field::SCOPE_SPANS, scope_spans_len, out);
            put_header(field::SCOPE, scope_len, out);
            put_str(field::SCOPE_NAME, SCOPE_NAME, out);
            put_str(field::SCOPE_VERSION, SCOPE_VERSION, out);
            for &i in &self.order[g.start..g.start + g.spans] {
                put_header(field::SPANS, self.span_len[i], out);
                put_span(&spans[i], out);
            }
        }
        debug_assert_eq!(out.len() - before, total, "sizing and writing disagree");
    }

    /// One export request carrying `spans`, in a buffer of exactly its size.
    pub fn encode_to_vec(&mut self, spans: &[Span]) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(spans, &mut out);
        out
    }

    /// Groups the batch and sizes every span and group; the request's length.
    fn size(&mut self, spans: &[Span]) -> usize {
        self.groups.clear();
        self.group_of_resource.clear();
        self.span_group.clear();
        self.span_len.clear();
        for (i, s) in spans.iter().enumerate() {
            let key = Arc::as_ptr(&s.resource) as usize;
            // Batches are mostly runs of one process's spans: try the last group first.
            let g = match self.span_group.last() {
                Some(&g) if self.groups[g].first_key(spans) == key => g,
                _ => *self.group_of_resource.entry(key).or_insert_with(|| {
                    self.groups.push(Group {
                        first: i,
                        spans: 0,
                        start: 0,
                        filled: 0,
                        resource_len: attributes_len(
                            field::RESOURCE_ATTRIBUTES,
                            &s.resource.attributes,
                        ),
                        spans_len: 0,
                    });
                    self.groups.len() - 1
                }),
            };
            let len = span_len(s);
            let group = &mut self.groups[g];
            group.spans += 1;
            group.spans_len += len_delimited(field::SPANS, len);
            self.span_group.push(g);
            self.span_len.push(len);
        }
        // Span indices in group order (a counting sort: groups are in order of appearance).
        let mut start = 0;
        for g in &mut self.groups {
            (g.start, g.filled) = (start, start);
            start += g.spans;
        }
        self.order.clear();
        self.order.resize(spans.len(), 0);
        for (i, &g) in self.span_group.iter().enumerate() {
            let group = &mut self.groups[g];
            self.order[group.filled] = i;
            group.filled += 1;
        }
        let scope_len = scope_len();
        self.groups
            .iter()
            .map(|g| {
                let scope_spans_len = len_delimited(field::SCOPE, scope_len) + g.spans_len;
                len_delimited(
                    field::RESOURCE_SPANS,
                    len_delimited(field::RESOURCE, g.resource_len)
                        + len_delimited(field::SCOPE_SPANS, scope_spans_len),
                )
            })
            .sum()
    }
}

impl Group {
    fn first_key(&self, spans: &[Span]) -> usize {
        Arc::as_ptr(&spans[self.first].resource) as usize
    }
}

// ---- lengths ----

/// A length-delimited field whose payload is `len` bytes.
fn len_delimited(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// A string or bytes field: absent when empty (proto3 default).
fn str_len(tag: u32, s: &[u8]) -> usize {
    if s.is_empty() {
        0
    } else {
        len_delimited(tag, s.len())
    }
}

fn fixed64_len(tag: u32, v: u64) -> usize {
    if v == 0 { 0 } else { key_len(tag) + 8 }
}

fn varint_len(tag: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(v)
    }
}

fn scope_len() -> usize {
    str_len(field::SCOPE_NAME, SCOPE_NAME.as_bytes())
        + str_len(field::SCOPE_VERSION, SCOPE_VERSION.as_bytes())
}

/// An `AnyValue` holding a string: set oneof members are written even when empty.
fn string_value_len(s: &str) -> usize {
    len_delimited(field::STRING_VALUE, s.len())
}

fn array_len(values: &[String]) -> usize {
    values
        .iter()
        .map(|s| len_delimited(field::ARRAY_VALUES, string_value_len(s)))
        .sum()
}

fn any_value_len(v: &AttrValue) -> usize {
    match v {
        AttrValue::Str(s) => string_value_len(s),
        AttrValue::Int(i) => key_len(field::INT_VALUE) + encoded_len_varint(*i as u64),
        AttrValue::Bool(_) => key_len(field::BOOL_VALUE) + 1,
        AttrValue::StrArray(a) => len_delimited(field::ARRAY_VALUE, array_len(a)),
    }
}

fn key_value_len(key: &str, v: &AttrValue) -> usize {
    str_len(field::KEY, key.as_bytes()) + len_delimited(field::VALUE, any_value_len(v))
}

fn attributes_len<K: AsRef<str>>(tag: u32, attrs: &[(K, AttrValue)]) -> usize {
    attrs
        .iter()
        .map(|(k, v)| len_delimited(tag, key_value_len(k.as_ref(), v)))
        .sum()
}

fn kind_number(kind: SpanKind) -> u64 {
    match kind {
        SpanKind::Server => KIND_SERVER,
        SpanKind::Client => KIND_CLIENT,
    }
}

/// The `Status` message's length, `None` when the span has none (unset, no message).
fn status_len(s: &Span) -> Option<usize> {
    let code = match s.status {
        StatusCode::Unset if s.status_message.is_none() => return None,
        StatusCode::Unset => 0,
        StatusCode::Error => STATUS_ERROR,
    };
    let message = s.status_message.as_deref().unwrap_or_default();
    Some(str_len(field::STATUS_MESSAGE, message.as_bytes()) + varint_len(field::STATUS_CODE, code))
}

fn event_len(e: &crate::span::SpanEvent) -> usize {
    fixed64_len(field::EVENT_TIME, e.time_unix_ns)
        + str_len(field::EVENT_NAME, e.name.as_bytes())
        + attributes_len(field::EVENT_ATTRIBUTES, &e.attributes)
}

fn span_len(s: &Span) -> usize {
    let flags = span_flags(s);
    str_len(field::TRACE_ID, &s.trace_id)
        + str_len(field::SPAN_ID, &s.span_id)
        + str_len(
            field::TRACE_STATE,
            s.trace_state.as_deref().unwrap_or_default().as_bytes(),
        )
        + s.parent_span_id
            .map_or(0, |p| str_len(field::PARENT_SPAN_ID, &p))
        + str_len(field::NAME, s.name.as_bytes())
        + varint_len(field::KIND, kind_number(s.kind))
        + fixed64_len(field::START_TIME, s.start_unix_ns)
        + fixed64_len(field::END_TIME, s.end_unix_ns)
        + attributes_len(field::ATTRIBUTES, &s.attributes)
        + s.events
            .iter()
            .map(|e| len_delimited(field::EVENTS, event_len(e)))
            .sum::<usize>()
        + varint_len(field::DROPPED_EVENTS, s.dropped_events.into())
        + status_len(s).map_or(0, |n| len_delimited(field::STATUS, n))
        + if flags == 0 {
            0
        } else {
            key_len(field::FLAGS) + 4
        }
}

// ---- writing ----

/// A varint, written here rather than by prost's `encode_varint` so that it inlines: most
/// values written are tags and lengths below 128, one byte.
#[inline]
fn put_raw_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[inline]
fn put_key(tag: u32, wire_type: WireType, out: &mut Vec<u8>) {
    put_raw_varint(u64::from(tag << 3 | wire_type as u32), out);
}

fn put_header(tag: u32, len: usize, out: &mut Vec<u8>) {
    put_key(tag, WireType::LengthDelimited, out);
    put_raw_varint(len as u64, out);
}

fn put_str(tag: u32, s: &str, out: &mut Vec<u8>) {
    put_bytes(tag, s.as_bytes(), out);
}

fn put_bytes(tag: u32, b: &[u8], out: &mut Vec<u8>) {
    if !b.is_empty() {
        put_header(tag, b.len(), out);
        out.extend_from_slice(b);
    }
}

fn put_fixed64(tag: u32, v: u64, out: &mut Vec<u8>) {
    if v != 0 {
        put_key(tag, WireType::SixtyFourBit, out);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn put_varint(tag: u32, v: u64, out: &mut Vec<u8>) {
    if v != 0 {
        put_key(tag, WireType::Varint, out);
        put_raw_varint(v, out);
    }
}

fn put_string_value(s: &str, out: &mut Vec<u8>) {
    put_header(field::STRING_VALUE, s.len(), out);
    out.extend_from_slice(s.as_bytes());
}

fn put_key_value(tag: u32, key: &str, v: &AttrValue, out: &mut Vec<u8>) {
    let value_len = any_value_len(v);
    put_header(
        tag,
        str_len(field::KEY, key.as_bytes()) + len_delimited(field::VALUE, value_len),
        out,
    );
    put_str(field::KEY, key, out);
    put_header(field::VALUE, value_len, out);
    match v {
        AttrValue::Str(s) => put_string_value(s, out),
        AttrValue::Int(i) => {
            // A set oneof member is written even when zero.
            put_key(field::INT_VALUE, WireType::Varint, out);
            put_raw_varint(*i as u64, out);
        }
        AttrValue::Bool(b) => {
            put_key(field::BOOL_VALUE, WireType::Varint, out);
            out.push(u8::from(*b));
        }
        AttrValue::StrArray(a) => {
            put_header(field::ARRAY_VALUE, array_len(a), out);
            for s in a {
                put_header(field::ARRAY_VALUES, string_value_len(s), out);
                put_string_value(s, out);
            }
        }
    }
}

fn put_span(s: &Span, out: &mut Vec<u8>) {
    put_bytes(field::TRACE_ID, &s.trace_id, out);
    put_bytes(field::SPAN_ID, &s.span_id, out);
    put_str(
        field::TRACE_STATE,
        s.trace_state.as_deref().unwrap_or_default(),
        out,
    );
    if let Some(p) = &s.parent_span_id {
        put_bytes(field::PARENT_SPAN_ID, p, out);
    }
    put_str(field::NAME, &s.name, out);
    put_varint(field::KIND, kind_number(s.kind), out);
    put_fixed64(field::START_TIME, s.start_unix_ns, out);
    put_fixed64(field::END_TIME, s.end_unix_ns, out);
    for (k, v) in &s.attributes {
        put_key_value(field::ATTRIBUTES, k, v, out);
    }
    for e in &s.events {
        put_header(field::EVENTS, event_len(e), out);
        put_fixed64(field::EVENT_TIME, e.time_unix_ns, out);
        put_str(field::EVENT_NAME, e.name, out);
        for (k, v) in &e.attributes {
            put_key_value(field::EVENT_ATTRIBUTES, k, v, out);
        }
    }
    put_varint(field::DROPPED_EVENTS, s.dropped_events.into(), out);
    if let Some(len) = status_len(s) {
        put_header(field::STATUS, len, out);
        put_str(
            field::STATUS_MESSAGE,
            s.status_message.as_deref().unwrap_or_default(),
            out,
        );
        if s.status == StatusCode::Error {
            put_varint(field::STATUS_CODE, STATUS_ERROR, out);
        }
    }
    let flags = span_flags(s);
    if flags != 0 {
        put_key(field::FLAGS, WireType::ThirtyTwoBit, out);
        out.extend_from_slice(&flags.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;

    use super::*;
    use crate::export::otlp::export_request;
    use crate::export::otlp::tests::{resource, span};
    use crate::span::{Resource, SpanEvent};

    /// A small deterministic generator (xorshift64*), so failures reproduce.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        /// Lengths around the varint boundaries of a length prefix (0, 127/128, 16383/16384).
        fn string(&mut self) -> String {
            let len = match self.below(6) {
                0 => 0,
                1 => 1 + self.below(20) as usize,
                2 => 127 + self.below(2) as usize,
                3 => 16_383 + self.below(2) as usize,
                _ => self.below(300) as usize,
            };
            (0..len)
                .map(|i| char::from(b'a' + (i % 26) as u8))
                .collect()
        }
        fn value(&mut self) -> AttrValue {
            match self.below(7) {
                0 => AttrValue::from(self.string()),
                1 => AttrValue::Int(0),
                2 => AttrValue::Int(match self.below(3) {
                    0 => -1,
                    1 => i64::MIN,
                    _ => self.next() as i64,
                }),
                3 => AttrValue::Bool(self.below(2) == 1),
                4 => AttrValue::StrArray(Vec::new()),
                5 => AttrValue::StrArray((0..self.below(4)).map(|_| self.string()).collect()),
                _ => AttrValue::Str("GET".into()),
            }
        }
        fn attributes(&mut self) -> crate::span::Attributes {
            const KEYS: [&str; 4] = ["", "http.request.method", "url.path", "tracer.x"];
            (0..self.below(8))
                .map(|_| (KEYS[self.below(4) as usize], self.value()))
                .collect()
        }
        fn span(&mut self, resources: &[Arc<Resource>]) -> Span {
            let mut s = span(&resources[self.below(resources.len() as u64) as usize], 0);
            s.trace_id = self.next().to_le_bytes().repeat(2).try_into().unwrap();
            s.span_id = self.next().to_le_bytes();
            s.parent_span_id = (self.below(2) == 1).then(|| self.next().to_le_bytes());
            s.trace_state = match self.below(3) {
                0 => None,
                1 => Some(String::new()),
                _ => Some(self.string()),
            };
            s.flags = self.below(2) as u8;
            s.name = self.string();
            s.kind = if self.below(2) == 1 {
                SpanKind::Server
            } else {
                SpanKind::Client
            };
            s.start_unix_ns = if self.below(8) == 0 { 0 } else { self.next() };
            s.end_unix_ns = self.next();
            s.attributes = self.attributes();
            s.status = if self.below(2) == 1 {
                StatusCode::Error
            } else {
                StatusCode::Unset
            };
            s.status_message = match self.below(3) {
                0 => None,
                1 => Some(String::new()),
                _ => Some(self.string()),
            };
            s.events = (0..self.below(4))
                .map(|_| SpanEvent {
                    time_unix_ns: if self.below(4) == 0 { 0 } else { self.next() },
                    name: ["", "rpc.message", "exception"][self.below(3) as usize],
                    attributes: self.attributes(),
                })
                .collect();
            s.dropped_events = [0, 1, 300, u32::MAX][self.below(4) as usize];
            s
        }
    }

    fn resources() -> Vec<Arc<Resource>> {
        let mut big = Resource {
            pid: 3,
            attributes: resource(3, "big").attributes.clone(),
        };
        big.attributes.push((
            "k8s.pod.labels".into(),
            AttrValue::StrArray(vec!["a".into()]),
        ));
        big.attributes
            .push(("host.id".into(), AttrValue::from("x".repeat(200))));
        vec![
            resource(1, "a"),
            resource(2, "b"),
            Arc::new(big),
            Arc::new(Resource {
                pid: 4,
                attributes: Vec::new(),
            }),
        ]
    }

    /// What the exporters sent before: the prost messages of `export_request`, encoded.
    fn reference(spans: &[Span]) -> Vec<u8> {
        export_request(spans.to_vec()).encode_to_vec()
    }

    #[test]
    fn bytes_equal_prost_encoding_of_the_proto_messages() {
        let resources = resources();
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        let mut enc = TraceEncoder::new();
        let mut out = Vec::new();
        // Batches of up to 63 spans, one encoder reused throughout.
        for batch in 0..100 {
            let n = match batch {
                0 => 0,
                1 => 1,
                _ => g.below(64) as usize,
            };
            let spans: Vec<Span> = (0..n).map(|_| g.span(&resources)).collect();
            out.clear();
            enc.encode(&spans, &mut out);
            assert_eq!(out, reference(&spans), "batch {batch} of {n} spans");
            let decoded = ExportTraceServiceRequest::decode(out.as_slice()).unwrap();
            assert_eq!(decoded, export_request(spans), "batch {batch}");
        }
    }

    #[test]
    fn fixed_spans_of_every_kind_match() {
        let a = resource(1, "a");
        let b = resource(2, "b");
        let mut spans = vec![span(&a, 1), span(&b, 2), span(&a, 3), span(&b, 4)];
        spans[1].kind = SpanKind::Server;
        spans[1].status = StatusCode::Error;
        spans[1].status_message = Some("boom".into());
        spans[2].attributes.push((
            "http.request.header.x-tier",
            vec!["gold".to_owned(), String::new()].into(),
        ));
        spans[3].parent_span_id = None;
        spans[3].trace_state = None;
        spans[3].events.clear();
        spans[3].dropped_events = 0;
        let mut out = vec![0xff];
        TraceEncoder::new().encode(&spans, &mut out);
        assert_eq!(out[0], 0xff, "appends");
        assert_eq!(out[1..], reference(&spans));
        let req = ExportTraceServiceRequest::decode(&out[1..]).unwrap();
        assert_eq!(req.resource_spans.len(), 2, "grouped by resource");
        let ids: Vec<u8> = req.resource_spans[0].scope_spans[0]
            .spans
            .iter()
            .map(|s| s.span_id[0])
            .collect();
        assert_eq!(ids, [1, 3], "in order of appearance");
    }
}
