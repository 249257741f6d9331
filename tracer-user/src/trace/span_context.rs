//! A span's identity and place in its trace, as span building receives it (from
//! [`super::parent`], or a new root).
use super::context::{FLAG_SAMPLED, ParentSource, RemoteContext};
use super::ids::IdGenerator;
use crate::span::{SpanId, TraceId};

/// A span's identity and place in its trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    /// W3C trace flags (bit 0: sampled).
    pub flags: u8,
    pub trace_state: Option<String>,
    /// How the parent (or the trace) was found: `tracer.parent.source`.
    pub source: ParentSource,
}

impl SpanContext {
    /// A new trace: random ids, no parent, sampled (the agent records every span it emits).
    pub fn root(ids: &mut IdGenerator) -> Self {
        Self {
            trace_id: ids.trace_id(),
            span_id: ids.span_id(),
            parent_span_id: None,
            flags: FLAG_SAMPLED,
            trace_state: None,
            source: ParentSource::None,
        }
    }

    /// The child of a remote span (its id becomes our parent).
    pub fn child_of_remote(remote: RemoteContext, span_id: SpanId) -> Self {
        Self {
            trace_id: remote.trace_id,
            span_id,
            parent_span_id: Some(remote.span_id),
            flags: remote.flags,
            trace_state: remote.trace_state,
            source: remote.source,
        }
    }
}
