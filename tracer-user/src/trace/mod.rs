//! The span model, and turning protocol exchanges into spans.

pub mod clock;
pub use tracer_protocol::trace_context as context;
pub mod http_span;
pub mod links;
pub mod span;

pub use clock::Clock;
pub use span::*;
