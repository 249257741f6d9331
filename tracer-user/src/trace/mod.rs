//! Turning protocol exchanges into spans: the semantic conventions per protocol (`http`,
//! `grpc` on top of it), the route heuristic, ids, the W3C/B3 context of
//! incoming requests, and resolving each span's parent.

pub mod address;
pub mod clock;
pub use tracer_protocol::trace_context as context;
pub mod db;
mod grpc;
pub mod http;
pub mod ids;
pub mod parent;
pub mod route;
pub mod span_context;

pub use clock::Clock;
pub use db::{db_context, span_from_db};
pub use http::{SpanOptions, span_from_exchange};
pub use ids::IdGenerator;
pub use parent::{ParentResolver, ParentStats};
pub use span_context::SpanContext;

// The span model lives in `crate::span`; still reachable here under its former path.
pub use crate::span::*;
