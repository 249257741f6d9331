//! Arbitrary bytes through the sampling threshold's parser and the `tracestate` handling of its
//! `ot=th:` entry (`tracer_common::sampling`, and the agent's `pipeline/sample/tracestate.rs`,
//! compiled here on its own): no panic; a parsed threshold re-encodes canonically (no
//! trailing zeros) to a value that parses back to it; setting a threshold in any tracestate
//! reads back as that threshold, first, in at most 32 members; removing it leaves none.
#![no_main]

#[path = "../../tracer-user/src/pipeline/sample/tracestate.rs"]
mod tracestate;

use libfuzzer_sys::fuzz_target;
use tracer_common::sampling::{
    NEVER, TH_DIGITS, encode_threshold, parse_threshold, threshold_for_probability,
};

fuzz_target!(|input: &[u8]| {
    if let Some(t) = parse_threshold(input) {
        assert!(t < NEVER);
        let mut out = [0u8; TH_DIGITS];
        let n = encode_threshold(t, &mut out);
        assert!(n == 1 || out[n - 1] != b'0', "canonical: {:?}", &out[..n]);
        assert_eq!(parse_threshold(&out[..n]), Some(t));
    }
    if input.len() >= 8 {
        let p = f64::from_le_bytes(input[..8].try_into().unwrap());
        assert!(threshold_for_probability(p) <= NEVER);
    }
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let t = input.iter().fold(0u64, |a, b| a.wrapping_mul(31) ^ u64::from(*b)) % NEVER;
    let set = tracestate::with_threshold(Some(text), t);
    assert!(set.starts_with("ot=th:"), "{set:?}");
    assert_eq!(tracestate::threshold_in(&set), Some(t), "{set:?}");
    assert!(set.split(',').count() <= 32, "{set:?}");
    let removed = tracestate::without_threshold(&set);
    assert_eq!(removed.as_deref().and_then(tracestate::threshold_in), None);
});
