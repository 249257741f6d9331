//! The kernel's and the agent's `traceparent` parsers fed the same header value must agree
//! (beyond the known differences `traceparent_agreement` documents): a header one accepts and
//! the other refuses, or reads differently, would split a trace in two.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer_protocol::traceparent_agreement::disagreement;

fuzz_target!(|input: &[u8]| {
    // A header value never holds CR or LF (the line would end there).
    if input.iter().any(|b| matches!(b, b'\r' | b'\n')) {
        return;
    }
    if let Some(d) = disagreement(input) {
        panic!("the parsers disagree:\n{d}");
    }
});
