//! Arbitrary bytes through every trace-context parser (`traceparent`, `tracestate`, B3 single
//! and multi, and header precedence): no panic, and what is accepted is valid (non-zero ids
//! that round-trip to the lowercase hex they came from, bounded tracestate). The invariants are
//! in `context::fuzz_check`.
//!
//! The module is compiled straight from the agent's sources (it depends only on std).
#![no_main]

#[allow(dead_code)]
#[path = "../../tracer-user/src/trace/context.rs"]
mod context;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    context::fuzz_check(input);
});
