//! What the span and the metric exporters share when a send fails: the backoff schedule with
//! jitter, and a warning throttle (a backend that is down must not flood the log).
use std::time::Duration;

use tokio::time::Instant;

/// First retry delay; doubled per attempt up to [`MAX_BACKOFF`], each delay jittered by
/// ±50 % ([`Jitter`]).
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// At most one warning per this period; the next one says how many were held back.
pub const WARN_EVERY: Duration = Duration::from_secs(30);

/// Logs at most one warning per [`WARN_EVERY`].
#[derive(Debug, Default)]
pub struct WarnThrottle {
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnThrottle {
    pub fn warn(&mut self, msg: &str) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < WARN_EVERY)
        {
            self.suppressed += 1;
            return;
        }
        match std::mem::take(&mut self.suppressed) {
            0 => tracing::warn!("{msg}"),
            n => tracing::warn!("{msg} ({n} similar warnings suppressed)"),
        }
        self.last = Some(now);
    }
}

/// Spreads retries of many agents over time (a backend coming back is not hit by all at once).
#[derive(Debug)]
pub struct Jitter(u64);

impl Jitter {
    /// Seeded from the clock and the pid: agents started together still differ.
    pub fn new() -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self(t ^ (u64::from(std::process::id()) << 32) | 1)
    }

    /// `d` × a uniform factor in [0.5, 1.5) (xorshift64).
    pub fn apply(&mut self, d: Duration) -> Duration {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        d.mul_f64(0.5 + (x >> 11) as f64 / (1u64 << 53) as f64)
    }
}

impl Default for Jitter {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_to_one_and_a_half() {
        let mut j = Jitter::new();
        let d = Duration::from_millis(1000);
        for _ in 0..10_000 {
            let v = j.apply(d);
            assert!(v >= d / 2 && v < d * 3 / 2, "{v:?}");
        }
    }

    #[test]
    fn throttle_holds_back_repeats_within_the_period() {
        let mut t = WarnThrottle::default();
        t.warn("a");
        t.warn("b");
        t.warn("c");
        assert_eq!(t.suppressed, 2);
        // The period is over: the next warning goes out and reports the two held back.
        t.last = Instant::now().checked_sub(WARN_EVERY);
        t.warn("d");
        assert_eq!(t.suppressed, 0);
    }
}
