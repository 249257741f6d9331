//! Turning protocol exchanges into spans.

pub mod clock;
pub mod context;
pub mod http_span;
pub mod links;

pub use clock::Clock;

// The span model lives in `crate::span`; still reachable here under its former path.
pub use crate::span::*;
