//! The span model, and turning protocol exchanges into spans.

pub mod clock;
pub mod http_span;
pub mod span;

pub use clock::Clock;
pub use span::*;
