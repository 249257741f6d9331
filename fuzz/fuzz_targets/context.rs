//! Arbitrary bytes through every trace-context parser (`traceparent`, `tracestate`, B3 single
//! and multi, and header precedence): no panic, and what is accepted is valid (non-zero ids
//! that round-trip to the lowercase hex they came from, bounded tracestate), and the kernel's
//! reading of a `b3` value (the one it rewrites in place) agrees with the agent's. The
//! invariants are in `trace_context::fuzz_check` (built with `--cfg fuzzing`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer_protocol::trace_context;

fuzz_target!(|input: &[u8]| {
    trace_context::fuzz_check(input);
});
