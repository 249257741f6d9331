//! Sliding-window request statistics: a ring of 10-second buckets covering 5 minutes, each
//! with a count, an error count and a small log-scale latency histogram (4 bins per power of
//! two from 1 µs, so a quantile is within about 10 % of the true value). Recording is a few
//! additions; the 1 min and 5 min views merge the buckets they cover when asked.

/// Seconds per bucket.
pub const BUCKET_SECS: u64 = 10;
/// Buckets in the ring: 5 minutes.
pub const BUCKETS: usize = 30;
const BINS_PER_OCTAVE: usize = 4;
/// 1 µs .. 2^27 µs (134 s); longer requests land in the last bin.
const OCTAVES: usize = 27;
const BINS: usize = 1 + OCTAVES * BINS_PER_OCTAVE;

/// The windows the view shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    OneMinute,
    FiveMinutes,
}

impl Window {
    pub fn secs(self) -> u64 {
        match self {
            Self::OneMinute => 60,
            Self::FiveMinutes => 300,
        }
    }
    fn buckets(self) -> u64 {
        self.secs() / BUCKET_SECS
    }
}

/// The bucket a time (Unix seconds) falls in: its sequence number since the epoch.
pub fn bucket_of(unix_secs: u64) -> u64 {
    unix_secs / BUCKET_SECS
}

#[derive(Clone, Copy)]
struct Counts {
    /// Which 10 s interval these counts are for (`bucket_of`); stale ones are reset on use.
    bucket: u64,
    count: u32,
    errors: u32,
}

/// Counts only (service-map edges).
pub struct CountRing {
    slots: [Counts; BUCKETS],
}

impl Default for CountRing {
    fn default() -> Self {
        Self {
            slots: [Counts {
                bucket: u64::MAX,
                count: 0,
                errors: 0,
            }; BUCKETS],
        }
    }
}

impl CountRing {
    /// Records one request in bucket `bucket`; returns the slot used.
    fn record(&mut self, bucket: u64, error: bool) -> usize {
        let slot = (bucket % BUCKETS as u64) as usize;
        let c = &mut self.slots[slot];
        if c.bucket != bucket {
            *c = Counts {
                bucket,
                count: 0,
                errors: 0,
            };
        }
        c.count = c.count.saturating_add(1);
        c.errors = c.errors.saturating_add(u32::from(error));
        slot
    }

    pub fn add(&mut self, bucket: u64, error: bool) {
        self.record(bucket, error);
    }

    /// Slots within `window` of bucket `now`, oldest first, as (bucket, slot index).
    fn live(&self, now: u64, window: Window) -> impl Iterator<Item = usize> + '_ {
        let first = now.saturating_sub(window.buckets() - 1);
        (0..BUCKETS).filter(move |&i| {
            let b = self.slots[i].bucket;
            b != u64::MAX && b >= first && b <= now
        })
    }

    /// (requests, errors) within `window` ending at bucket `now`.
    pub fn totals(&self, now: u64, window: Window) -> (u64, u64) {
        self.live(now, window).fold((0, 0), |(n, e), i| {
            (
                n + u64::from(self.slots[i].count),
                e + u64::from(self.slots[i].errors),
            )
        })
    }

    /// Requests per bucket over the last 5 minutes, oldest first (a sparkline).
    pub fn series(&self, now: u64) -> Vec<u32> {
        let first = now.saturating_sub(BUCKETS as u64 - 1);
        (first..=now)
            .map(|b| {
                let c = &self.slots[(b % BUCKETS as u64) as usize];
                if c.bucket == b { c.count } else { 0 }
            })
            .collect()
    }

    /// The newest bucket with data, if any.
    pub fn last_bucket(&self) -> Option<u64> {
        self.slots
            .iter()
            .map(|c| c.bucket)
            .filter(|&b| b != u64::MAX)
            .max()
    }
}

/// Counts and latencies of one route.
pub struct LatencyRing {
    counts: CountRing,
    hist: Box<[[u32; BINS]; BUCKETS]>,
}

impl Default for LatencyRing {
    fn default() -> Self {
        Self {
            counts: CountRing::default(),
            hist: Box::new([[0; BINS]; BUCKETS]),
        }
    }
}

/// What a window shows for one route.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub errors: u64,
    pub p50_ns: u64,
    pub p95_ns: u64,
    pub p99_ns: u64,
}

impl LatencyRing {
    pub fn record(&mut self, bucket: u64, duration_ns: u64, error: bool) {
        let slot = (bucket % BUCKETS as u64) as usize;
        if self.counts.slots[slot].bucket != bucket {
            self.hist[slot] = [0; BINS];
        }
        self.counts.record(bucket, error);
        let bin = &mut self.hist[slot][bin_of(duration_ns)];
        *bin = bin.saturating_add(1);
    }

    pub fn counts(&self) -> &CountRing {
        &self.counts
    }

    pub fn summary(&self, now: u64, window: Window) -> Summary {
        let (count, errors) = self.counts.totals(now, window);
        let mut merged = [0u64; BINS];
        for slot in self.counts.live(now, window) {
            for (m, h) in merged.iter_mut().zip(self.hist[slot].iter()) {
                *m += u64::from(*h);
            }
        }
        Summary {
            count,
            errors,
            p50_ns: quantile(&merged, count, 0.50),
            p95_ns: quantile(&merged, count, 0.95),
            p99_ns: quantile(&merged, count, 0.99),
        }
    }
}

/// Bin 0: under 1 µs; then 4 bins per power of two of microseconds.
fn bin_of(duration_ns: u64) -> usize {
    let us = duration_ns / 1000;
    if us == 0 {
        return 0;
    }
    let octave = 63 - us.leading_zeros() as usize;
    let frac = if octave >= 2 {
        (us >> (octave - 2)) & 3
    } else {
        (us << (2 - octave)) & 3
    } as usize;
    (1 + octave * BINS_PER_OCTAVE + frac).min(BINS - 1)
}

/// The lower edge of a bin, in nanoseconds.
fn bin_floor_ns(bin: usize) -> f64 {
    if bin == 0 {
        return 0.0;
    }
    let octave = (bin - 1) / BINS_PER_OCTAVE;
    let frac = (bin - 1) % BINS_PER_OCTAVE;
    1000.0 * (1u64 << octave) as f64 * (1.0 + frac as f64 / BINS_PER_OCTAVE as f64)
}

/// The `q` quantile of a histogram of `count` values, interpolated within its bin.
fn quantile(bins: &[u64; BINS], count: u64, q: f64) -> u64 {
    if count == 0 {
        return 0;
    }
    let rank = (q * count as f64).ceil().max(1.0);
    let mut seen = 0u64;
    for (i, &n) in bins.iter().enumerate() {
        if n == 0 {
            continue;
        }
        if (seen + n) as f64 >= rank {
            let lo = bin_floor_ns(i);
            let hi = if i + 1 < BINS {
                bin_floor_ns(i + 1)
            } else {
                lo * 2.0
            };
            let within = (rank - seen as f64) / n as f64;
            return (lo + (hi - lo) * within) as u64;
        }
        seen += n;
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_are_monotonic_and_bracket_their_values() {
        let mut last = 0;
        for us in [1u64, 2, 3, 5, 7, 8, 100, 1000, 12_345, 1_000_000] {
            let b = bin_of(us * 1000);
            assert!(b >= last, "{us}");
            last = b;
            assert!(bin_floor_ns(b) <= (us * 1000) as f64);
            assert!(bin_floor_ns(b + 1) > (us * 1000) as f64, "{us}");
        }
        assert_eq!(bin_of(u64::MAX), BINS - 1);
    }

    #[test]
    fn quantiles_are_within_a_bin_of_the_truth() {
        let mut ring = LatencyRing::default();
        // 1..=1000 ms, one each.
        for ms in 1..=1000u64 {
            ring.record(100, ms * 1_000_000, ms % 10 == 0);
        }
        let s = ring.summary(100, Window::OneMinute);
        assert_eq!((s.count, s.errors), (1000, 100));
        for (got, want) in [(s.p50_ns, 500e6), (s.p95_ns, 950e6), (s.p99_ns, 990e6)] {
            let err = (got as f64 - want).abs() / want;
            assert!(err < 0.12, "{got} vs {want}");
        }
    }

    #[test]
    fn old_buckets_leave_the_windows() {
        let mut ring = LatencyRing::default();
        ring.record(100, 1_000_000, false);
        ring.record(103, 1_000_000, true);
        assert_eq!(ring.summary(106, Window::OneMinute).count, 1);
        assert_eq!(ring.summary(106, Window::FiveMinutes).count, 2);
        assert_eq!(ring.summary(200, Window::FiveMinutes).count, 0);
        // A slot reused 5 minutes later starts from zero.
        ring.record(130, 5_000_000, false);
        let s = ring.summary(130, Window::FiveMinutes);
        assert_eq!((s.count, s.errors), (2, 1));
        assert_eq!(ring.counts().series(130).len(), BUCKETS);
        assert_eq!(*ring.counts().series(130).last().unwrap(), 1);
    }
}
