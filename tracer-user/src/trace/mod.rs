//! The span model, and turning protocol exchanges into spans.

pub mod clock;
pub mod context;
pub mod http_span;
pub mod links;
pub mod span;

pub use clock::Clock;
pub use span::*;
