//! The agent's span model: what span building produces and the exporters work on. Close to
//! OTLP's so export is a field-by-field copy. It depends on nothing else in the crate, so every
//! layer (`trace`, `process`, `export`) can use it.
use std::{borrow::Cow, sync::Arc};

pub type TraceId = [u8; 16];
pub type SpanId = [u8; 8];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    Server,
    Client,
}

#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    /// Borrowed when the value is one of a fixed set (a method, a scheme, a parent source):
    /// no allocation per span for those.
    Str(Cow<'static, str>),
    Int(i64),
    Bool(bool),
    /// An array of strings (OTLP `ArrayValue`): e.g. a captured header, one element per
    /// field line, as the semantic conventions define `http.request.header.<name>`.
    StrArray(Vec<String>),
}

impl AttrValue {
    /// The strings a string or string-array value holds (none for other values).
    #[cfg(test)]
    pub fn strs(&self) -> Vec<&str> {
        match self {
            Self::Str(s) => vec![s],
            Self::StrArray(a) => a.iter().map(String::as_str).collect(),
            Self::Int(_) | Self::Bool(_) => Vec::new(),
        }
    }

    /// A value from a fixed set of strings (a method, a scheme, a parent source): borrowed,
    /// nothing allocated per span.
    pub const fn fixed(s: &'static str) -> Self {
        Self::Str(Cow::Borrowed(s))
    }

    /// Heap bytes the value owns (what a bounded store or buffer charges for it).
    pub fn heap_bytes(&self) -> usize {
        match self {
            Self::Str(Cow::Owned(s)) => s.capacity(),
            Self::Str(Cow::Borrowed(_)) => 0,
            Self::StrArray(a) => {
                a.capacity() * std::mem::size_of::<String>()
                    + a.iter().map(String::capacity).sum::<usize>()
            }
            Self::Int(_) | Self::Bool(_) => 0,
        }
    }
}

impl From<String> for AttrValue {
    fn from(v: String) -> Self {
        Self::Str(Cow::Owned(v))
    }
}
impl From<&str> for AttrValue {
    fn from(v: &str) -> Self {
        Self::Str(Cow::Owned(v.to_owned()))
    }
}
impl From<Vec<String>> for AttrValue {
    fn from(v: Vec<String>) -> Self {
        Self::StrArray(v)
    }
}
impl From<i64> for AttrValue {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}
impl From<bool> for AttrValue {
    fn from(v: bool) -> Self {
        Self::Bool(v)
    }
}

/// Attribute keys are static: the semantic-convention names.
pub type Attributes = Vec<(&'static str, AttrValue)>;

/// At most `max_bytes` of `value`, cut at a character boundary: attribute values taken from
/// traffic or procfs are bounded.
pub fn truncate_value(value: &str, max_bytes: usize) -> &str {
    &value[..value.floor_char_boundary(max_bytes)]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusCode {
    Unset,
    Error,
}

/// The process a span belongs to: OTel resource attributes (`service.name`, `process.pid`,
/// `host.name`, ...). Shared by all spans of a process; exporters group spans by it.
#[derive(Debug, PartialEq)]
pub struct Resource {
    pub pid: u32,
    /// Keys owned: `OTEL_RESOURCE_ATTRIBUTES` may carry any key.
    pub attributes: Vec<(String, AttrValue)>,
}

impl Resource {
    pub fn service_name(&self) -> &str {
        self.attributes
            .iter()
            .find_map(|(k, v)| match (k.as_str(), v) {
                ("service.name", AttrValue::Str(s)) => Some(&**s),
                _ => None,
            })
            .unwrap_or("unknown_service")
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    /// W3C tracestate carried over from the incoming request, if any.
    pub trace_state: Option<String>,
    /// W3C trace flags (bit 0: sampled).
    pub flags: u8,
    pub name: String,
    pub kind: SpanKind,
    /// Wall-clock nanoseconds since the Unix epoch.
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub attributes: Attributes,
    pub status: StatusCode,
    pub status_message: Option<String>,
    pub resource: Arc<Resource>,
    /// Timed events (gRPC: one `rpc.message` per message), in time order.
    pub events: Vec<SpanEvent>,
    /// Events seen but not kept (bounded per span): OTLP's `dropped_events_count`.
    pub dropped_events: u32,
}

/// A timed event within a span (OTLP `Span.Event`).
#[derive(Clone, Debug, PartialEq)]
pub struct SpanEvent {
    pub time_unix_ns: u64,
    pub name: &'static str,
    pub attributes: Attributes,
}

impl Span {
    pub fn attr(&self, key: &str) -> Option<&AttrValue> {
        self.attributes
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
    pub fn duration_ns(&self) -> u64 {
        self.end_unix_ns.saturating_sub(self.start_unix_ns)
    }
}

/// A plain SERVER span of service `svc` (pid 1) for unit tests of later stages: ids 1,
/// no parent, 1 ms long, no attributes. Tests set what they look at.
#[cfg(test)]
pub fn test_span() -> Span {
    Span {
        trace_id: [1; 16],
        span_id: [1; 8],
        parent_span_id: None,
        trace_state: None,
        flags: 1,
        name: "GET /".into(),
        kind: SpanKind::Server,
        start_unix_ns: 1_700_000_000_000_000_000,
        end_unix_ns: 1_700_000_000_001_000_000,
        attributes: Vec::new(),
        status: StatusCode::Unset,
        status_message: None,
        resource: Arc::new(Resource {
            pid: 1,
            attributes: vec![("service.name".into(), "svc".into())],
        }),
        events: Vec::new(),
        dropped_events: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::{AttrValue, truncate_value};

    #[test]
    fn string_arrays_expose_their_strings_and_their_size() {
        let a = AttrValue::from(vec!["gold".to_owned(), "free".to_owned()]);
        assert_eq!(a.strs(), ["gold", "free"]);
        assert_eq!(AttrValue::from("x").strs(), ["x"]);
        assert!(AttrValue::Int(1).strs().is_empty());
        assert!(a.heap_bytes() >= 8 + 2 * std::mem::size_of::<String>());
        assert_eq!(AttrValue::Bool(true).heap_bytes(), 0);
    }

    #[test]
    fn truncation_cuts_at_char_boundaries() {
        assert_eq!(truncate_value("héllo", 2), "h");
        assert_eq!(truncate_value("héllo", 3), "hé");
        assert_eq!(truncate_value("abc", 10), "abc");
    }
}
