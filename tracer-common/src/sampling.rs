//! Consistent head sampling, shared by the kernel (the flags of the `traceparent` it injects)
//! and the agent (the flags of the contexts it creates): one function decides, so both agree
//! bit for bit.
//!
//! OpenTelemetry probability sampling (W3C trace context level 2 randomness): the randomness
//! value R is the rightmost 7 bytes (56 bits) of the trace id; a sampler with probability p has
//! the rejection threshold T = (1 − p) · 2^56, and keeps a trace iff R ≥ T. Every agent and
//! every SDK using this rule keeps the same traces, and a smaller p keeps a subset of what a
//! larger one keeps. Exported spans carry T in `tracestate` as `ot=th:<hex>`: 14 hex digits
//! with trailing zeros removed (`0` for T = 0, i.e. p = 1).
//!
//! Everything here is `no_std`, allocation-free and bounded, for the kernel programs.

/// Bits of randomness taken from the trace id.
pub const RANDOMNESS_BITS: u32 = 56;
/// The threshold that rejects everything (p = 0): no 56-bit R reaches it. Not encodable in
/// `th` (nothing is exported under it).
pub const NEVER: u64 = 1 << RANDOMNESS_BITS;
/// Hex digits of a full `th` value.
pub const TH_DIGITS: usize = 14;

/// R: the rightmost 7 bytes of the trace id, big-endian.
#[inline(always)]
pub fn randomness(trace_id: &[u8; 16]) -> u64 {
    let mut r = 0u64;
    let mut i = 16 - (RANDOMNESS_BITS as usize / 8);
    while i < 16 {
        r = (r << 8) | trace_id[i] as u64;
        i += 1;
    }
    r
}

/// The consistent test: keep iff R ≥ T.
#[inline(always)]
pub fn keeps(trace_id: &[u8; 16], threshold: u64) -> bool {
    randomness(trace_id) >= threshold
}

/// How the sampled flag of a new context is decided: the kernel's `Config` carries these two
/// fields, the agent builds the same value from its options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadRule {
    /// T: 0 keeps everything (always_on), [`NEVER`] nothing (always_off).
    pub threshold: u64,
    /// An incoming context's sampled flag is followed (`parentbased_*`, and `always_on`, which
    /// passes an upstream decision on unchanged); otherwise the threshold decides every trace.
    pub follow_parent: bool,
}

impl HeadRule {
    pub const ALWAYS_ON: Self = Self {
        threshold: 0,
        follow_parent: true,
    };

    /// W3C trace flags of a context in trace `trace_id`: `parent_flags` are those of the
    /// incoming context it continues (`None`: a new trace). Bits other than sampled are kept
    /// from the parent (the random flag).
    #[inline(always)]
    pub fn flags(&self, trace_id: &[u8; 16], parent_flags: Option<u8>) -> u8 {
        match parent_flags {
            Some(f) if self.follow_parent => f,
            Some(f) => (f & !1) | keeps(trace_id, self.threshold) as u8,
            None => keeps(trace_id, self.threshold) as u8,
        }
    }
}

/// T for probability `p`, clamped to [0, 1] (NaN: 0): 2^56 − round(p · 2^56), exact to the
/// precision of `p` (scaling by a power of two loses nothing).
pub fn threshold_for_probability(p: f64) -> u64 {
    if p.is_nan() || p <= 0.0 {
        return NEVER;
    }
    if p >= 1.0 {
        return 0;
    }
    let kept = (p * NEVER as f64 + 0.5) as u64;
    NEVER - kept.min(NEVER)
}

/// The probability a threshold stands for (for display).
pub fn probability_of(threshold: u64) -> f64 {
    (NEVER - threshold.min(NEVER)) as f64 / NEVER as f64
}

/// The `th` value of `threshold` (< [`NEVER`]) into `out`: its length. Trailing zeros are
/// removed; zero is `0`.
pub fn encode_threshold(threshold: u64, out: &mut [u8; TH_DIGITS]) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let t = threshold.min(NEVER - 1);
    let mut i = 0;
    while i < TH_DIGITS {
        out[i] = HEX[((t >> (4 * (TH_DIGITS - 1 - i))) & 0xf) as usize];
        i += 1;
    }
    let mut len = TH_DIGITS;
    while len > 1 && out[len - 1] == b'0' {
        len -= 1;
    }
    len
}

/// Parses a `th` value: 1 to 14 lower-case hex digits, the omitted trailing digits zero.
pub fn parse_threshold(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > TH_DIGITS {
        return None;
    }
    let mut t = 0u64;
    let mut i = 0;
    while i < TH_DIGITS {
        let digit = if i < value.len() {
            crate::propagation::hex_value(value[i])? as u64
        } else {
            0
        };
        t = (t << 4) | digit;
        i += 1;
    }
    Some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_with_randomness(r: u64) -> [u8; 16] {
        let mut id = [0xab; 16];
        id[8..].copy_from_slice(&r.to_be_bytes());
        id[8] = 0x5a; // outside the 56 bits
        id
    }

    #[test]
    fn randomness_is_the_rightmost_seven_bytes() {
        let id = *b"\x4b\xf9\x2f\x35\x77\xb3\x4d\xa6\xa3\xce\x92\x9d\x0e\x0e\x47\x36";
        assert_eq!(randomness(&id), 0xce929d0e0e4736);
        assert_eq!(randomness(&id_with_randomness(42)), 42);
    }

    #[test]
    fn thresholds_of_the_spec_examples() {
        let enc = |t| {
            let mut out = [0; TH_DIGITS];
            let n = encode_threshold(t, &mut out);
            core::str::from_utf8(&out[..n]).unwrap().to_owned()
        };
        assert_eq!(enc(threshold_for_probability(1.0)), "0");
        assert_eq!(enc(threshold_for_probability(0.5)), "8");
        assert_eq!(enc(threshold_for_probability(0.25)), "c");
        assert_eq!(enc(threshold_for_probability(0.01)), "fd70a3d70a3d71");
        assert_eq!(enc(threshold_for_probability(0.1)), "e6666666666666");
        assert_eq!(enc(1), "00000000000001");
        assert_eq!(threshold_for_probability(0.0), NEVER);
        assert_eq!(threshold_for_probability(-3.0), NEVER);
        assert_eq!(threshold_for_probability(f64::NAN), NEVER);
        assert_eq!(threshold_for_probability(7.0), 0);
    }

    #[test]
    fn thresholds_round_trip() {
        for t in [0, 1, 0xc0_0000_0000_0000, NEVER - 1, 0x12_3456_789a_bcde] {
            let mut out = [0; TH_DIGITS];
            let n = encode_threshold(t, &mut out);
            assert_eq!(parse_threshold(&out[..n]), Some(t), "{t:x}");
        }
        assert_eq!(parse_threshold(b"c"), Some(0xc0_0000_0000_0000));
        for bad in [&b""[..], b"C", b"0x1", b"123456789012345", b"g"] {
            assert_eq!(parse_threshold(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_test_is_r_at_least_t() {
        let t = threshold_for_probability(0.25);
        assert!(keeps(&id_with_randomness(t), t));
        assert!(!keeps(&id_with_randomness(t - 1), t));
        assert!(keeps(&id_with_randomness(NEVER - 1), 0));
        assert!(!keeps(&id_with_randomness(NEVER - 1), NEVER));
    }

    #[test]
    fn rules_decide_roots_and_follow_or_override_parents() {
        let ratio = HeadRule {
            threshold: threshold_for_probability(0.5),
            follow_parent: false,
        };
        let low = id_with_randomness(1);
        let high = id_with_randomness(NEVER - 1);
        assert_eq!(ratio.flags(&low, None), 0);
        assert_eq!(ratio.flags(&high, None), 1);
        assert_eq!(ratio.flags(&low, Some(3)), 2, "the random flag stays");
        assert_eq!(ratio.flags(&high, Some(0)), 1);
        let parent_based = HeadRule {
            follow_parent: true,
            ..ratio
        };
        assert_eq!(parent_based.flags(&high, Some(0)), 0);
        assert_eq!(parent_based.flags(&low, Some(1)), 1);
        assert_eq!(parent_based.flags(&low, None), 0);
        assert_eq!(HeadRule::ALWAYS_ON.flags(&low, None), 1);
    }

    #[test]
    fn a_smaller_probability_keeps_a_subset() {
        let (a, b) = (
            threshold_for_probability(0.3),
            threshold_for_probability(0.1),
        );
        let mut x = 0x1234_5678_9abc_def0u64;
        for _ in 0..10_000 {
            x = crate::propagation::mix64(x);
            let id = id_with_randomness(x & (NEVER - 1));
            assert!(!keeps(&id, b) || keeps(&id, a));
        }
    }
}
