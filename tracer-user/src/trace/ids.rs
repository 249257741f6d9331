//! Trace and span ids for spans the agent starts itself (new traces, CLIENT spans).
use super::Clock;
use crate::span::{SpanId, TraceId};

/// Trace and span ids from a SplitMix64 stream seeded from the OS (`getrandom(2)`). Fast and
/// well spread; not cryptographic (ids need uniqueness, not secrecy). Never yields all-zero
/// ids (invalid in W3C trace context).
#[derive(Clone, Debug)]
pub struct IdGenerator {
    state: u64,
}

impl IdGenerator {
    /// Seeded from the OS random source; falls back to time, pid and an address if that fails.
    pub fn from_os() -> Self {
        let mut seed = [0u8; 8];
        // SAFETY: getrandom writes at most `len` bytes into the buffer we own.
        let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
        let mut s = u64::from_ne_bytes(seed);
        if n != seed.len() as isize {
            let local = 0u8;
            s ^= (Clock::monotonic_now() << 17)
                ^ u64::from(std::process::id())
                ^ (&local as *const u8 as u64).rotate_left(32);
        }
        Self::from_seed(s)
    }

    pub fn from_seed(seed: u64) -> Self {
        Self { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn trace_id(&mut self) -> TraceId {
        loop {
            let (a, b) = (self.next_u64(), self.next_u64());
            if a | b != 0 {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&a.to_be_bytes());
                id[8..].copy_from_slice(&b.to_be_bytes());
                return id;
            }
        }
    }

    pub fn span_id(&mut self) -> SpanId {
        loop {
            let a = self.next_u64();
            if a != 0 {
                return a.to_be_bytes();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::IdGenerator;

    #[test]
    fn id_generator() {
        let mut g = IdGenerator::from_os();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let t = g.trace_id();
            let sid = g.span_id();
            assert_ne!(t, [0; 16]);
            assert_ne!(sid, [0; 8]);
            assert!(seen.insert(sid));
        }
        // Two OS-seeded generators differ.
        assert_ne!(
            IdGenerator::from_os().trace_id(),
            IdGenerator::from_os().trace_id()
        );
        // A zero seed still gives non-zero ids.
        let mut z = IdGenerator::from_seed(0);
        assert_ne!(z.span_id(), [0; 8]);
    }
}
