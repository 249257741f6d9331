//! The bounded series table of one metric: series looked up by *borrowed* label values (a hash
//! of the values, then a compare), so an observation of an existing series allocates nothing;
//! a series is allocated only when it is created. At most `cap` series; an observation of a
//! new label set beyond that goes to the one overflow series (`otel.metric.overflow=true`,
//! no other label, no identity: what the OpenTelemetry SDKs do) and is counted. A series that
//! saw no observation for the idle time is dropped on expiry, which frees its place.
use std::hash::{BuildHasher, Hash, Hasher};

use hashbrown::{DefaultHashBuilder, HashTable};

use crate::metric::{Exemplar, HistogramPoint, Identity, Labels, NumberPoint};
use crate::span::{SpanId, TraceId};

/// Label of the overflow series (Prometheus: `otel_metric_overflow="true"`).
pub const OVERFLOW_LABEL: &str = "otel.metric.overflow";

/// Most values (identity and labels) a series key may have.
pub const MAX_KEY: usize = 16;

/// One label value as a span carries it, borrowed from the span.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    Str(&'a str),
    Int(i64),
}

impl Value<'_> {
    fn hash_into(&self, h: &mut impl Hasher) {
        match self {
            Value::Str(s) => {
                h.write_u8(1);
                s.hash(h);
            }
            Value::Int(i) => {
                h.write_u8(2);
                h.write_i64(*i);
            }
        }
    }

    fn to_owned_value(self) -> OwnedValue {
        match self {
            Value::Str(s) => OwnedValue::Str(s.into()),
            Value::Int(i) => OwnedValue::Int(i),
        }
    }
}

/// A stored label value.
#[derive(Debug)]
enum OwnedValue {
    Str(Box<str>),
    Int(i64),
}

impl OwnedValue {
    fn matches(&self, v: &Value<'_>) -> bool {
        match (self, v) {
            (OwnedValue::Str(a), Value::Str(b)) => **a == **b,
            (OwnedValue::Int(a), Value::Int(b)) => a == b,
            _ => false,
        }
    }

    fn render(&self) -> String {
        match self {
            OwnedValue::Str(s) => s.to_string(),
            OwnedValue::Int(i) => i.to_string(),
        }
    }
}

/// The names of a key's values: the identity's (resource attributes), then the labels'. A
/// value that is `None` in a key is left out of the point.
#[derive(Clone, Copy, Debug)]
pub struct KeyNames {
    pub identity: &'static [&'static str],
    pub labels: &'static [&'static str],
}

impl KeyNames {
    /// Values in a key.
    pub fn arity(&self) -> usize {
        self.identity.len() + self.labels.len()
    }
}

/// A key being built on the stack: identity values then label values, in [`KeyNames`] order.
pub struct Key<'a> {
    values: [Option<Value<'a>>; MAX_KEY],
    len: usize,
}

impl<'a> Key<'a> {
    pub fn new() -> Self {
        Self {
            values: [None; MAX_KEY],
            len: 0,
        }
    }

    /// Appends the next value (`None`: absent). Values beyond [`MAX_KEY`] are ignored (the
    /// metrics' key names are fixed and shorter).
    pub fn push(&mut self, v: Option<Value<'a>>) -> &mut Self {
        if self.len < MAX_KEY {
            self.values[self.len] = v;
            self.len += 1;
        }
        self
    }

    pub fn str(&mut self, v: Option<&'a str>) -> &mut Self {
        self.push(v.map(Value::Str))
    }

    pub fn values(&self) -> &[Option<Value<'a>>] {
        &self.values[..self.len]
    }
}

impl Default for Key<'_> {
    fn default() -> Self {
        Self::new()
    }
}

/// What a series accumulates.
pub trait Aggregate {
    type Point;
    fn point(&self, identity: Identity, labels: Labels, start: u64, now: u64) -> Self::Point;
}

/// A cumulative counter.
#[derive(Debug, Default)]
pub struct Count(pub u64);

impl Aggregate for Count {
    type Point = NumberPoint;
    fn point(&self, identity: Identity, labels: Labels, start: u64, now: u64) -> NumberPoint {
        NumberPoint {
            identity,
            labels,
            start_unix_ns: start,
            time_unix_ns: now,
            value: self.0,
        }
    }
}

/// An explicit-bucket histogram with the most recent exemplar of each bucket.
#[derive(Debug)]
pub struct Histogram {
    count: u64,
    sum: f64,
    buckets: Box<[u64]>,
    exemplars: Box<[Option<Exemplar>]>,
}

/// The span an observation came from, for its exemplar.
#[derive(Clone, Copy, Debug)]
pub struct SpanRef {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub time_unix_ns: u64,
    /// The span's sampled flag: only a sampled span (one the head sampler exports) may be an
    /// exemplar, so that an exemplar always opens a trace the backend has.
    pub sampled: bool,
}

impl Histogram {
    pub fn new(bounds: &[f64]) -> Self {
        Self {
            count: 0,
            sum: 0.0,
            buckets: vec![0; bounds.len() + 1].into(),
            exemplars: vec![None; bounds.len() + 1].into(),
        }
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Counts `value` in bucket `i` where `bounds[i-1] < value <= bounds[i]` (the last bucket:
    /// above every bound), and keeps `from` as that bucket's exemplar when it is sampled.
    pub fn observe(&mut self, bounds: &[f64], value: f64, from: SpanRef) {
        let i = bounds.partition_point(|b| *b < value);
        self.count += 1;
        self.sum += value;
        self.buckets[i] += 1;
        if !from.sampled {
            return;
        }
        self.exemplars[i] = Some(Exemplar {
            trace_id: from.trace_id,
            span_id: from.span_id,
            value,
            time_unix_ns: from.time_unix_ns,
        });
    }
}

impl Aggregate for Histogram {
    type Point = HistogramPoint;
    fn point(&self, identity: Identity, labels: Labels, start: u64, now: u64) -> HistogramPoint {
        HistogramPoint {
            identity,
            labels,
            start_unix_ns: start,
            time_unix_ns: now,
            count: self.count,
            sum: self.sum,
            bucket_counts: self.buckets.to_vec(),
            exemplars: self.exemplars.iter().flatten().copied().collect(),
        }
    }
}

struct Series<A> {
    hash: u64,
    key: Box<[Option<OwnedValue>]>,
    start_ns: u64,
    last_ns: u64,
    agg: A,
}

/// The series of one metric; see the module doc.
pub struct SeriesTable<A> {
    names: KeyNames,
    cap: usize,
    hasher: DefaultHashBuilder,
    series: HashTable<Series<A>>,
    overflow: Option<Series<A>>,
    /// Observations that went to the overflow series.
    overflowed: u64,
}

impl<A> SeriesTable<A> {
    pub fn new(names: KeyNames, cap: usize) -> Self {
        Self {
            names,
            cap,
            hasher: DefaultHashBuilder::default(),
            series: HashTable::new(),
            overflow: None,
            overflowed: 0,
        }
    }

    /// The aggregate of `key`'s series, created by `new` if it is not there (or the overflow
    /// series' when the table is full). `now` marks the series as used.
    pub fn get(&mut self, key: &Key<'_>, now: u64, new: impl FnOnce() -> A) -> &mut A {
        let values = key.values();
        debug_assert_eq!(values.len(), self.names.arity());
        let mut h = self.hasher.build_hasher();
        for v in values {
            match v {
                Some(v) => v.hash_into(&mut h),
                None => h.write_u8(0),
            }
        }
        let hash = h.finish();
        let full = self.series.len() >= self.cap;
        let eq = |s: &Series<A>| {
            s.hash == hash
                && s.key.len() == values.len()
                && s.key.iter().zip(values).all(|(a, b)| match (a, b) {
                    (Some(a), Some(b)) => a.matches(b),
                    (None, None) => true,
                    _ => false,
                })
        };
        let series = match self.series.entry(hash, eq, |s| s.hash) {
            hashbrown::hash_table::Entry::Occupied(e) => e.into_mut(),
            hashbrown::hash_table::Entry::Vacant(_) if full => {
                self.overflowed += 1;
                self.overflow.get_or_insert_with(|| Series {
                    hash: 0,
                    key: Box::new([]),
                    start_ns: now,
                    last_ns: now,
                    agg: new(),
                })
            }
            hashbrown::hash_table::Entry::Vacant(e) => e
                .insert(Series {
                    hash,
                    key: values
                        .iter()
                        .map(|v| v.map(Value::to_owned_value))
                        .collect(),
                    start_ns: now,
                    last_ns: now,
                    agg: new(),
                })
                .into_mut(),
        };
        series.last_ns = series.last_ns.max(now);
        &mut series.agg
    }

    /// Drops the series (the overflow series too) idle for longer than `idle_ns` at `now`.
    pub fn expire(&mut self, now: u64, idle_ns: u64) {
        let live = |s: &Series<A>| now.saturating_sub(s.last_ns) <= idle_ns;
        self.series.retain(|s| live(s));
        if self.overflow.as_ref().is_some_and(|s| !live(s)) {
            self.overflow = None;
        }
    }

    /// Series held now, the overflow series not included.
    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }

    /// A point per series (the overflow series last), taken at `now`, of the part of each
    /// series' aggregate that `part` picks (`None`: no point for that series).
    pub fn points_by<B: Aggregate>(
        &self,
        now: u64,
        part: impl Fn(&A) -> Option<&B>,
    ) -> Vec<B::Point> {
        let mut out = Vec::with_capacity(self.series.len() + 1);
        for s in &self.series {
            if let Some(b) = part(&s.agg) {
                let (identity, labels) = self.labels(&s.key);
                out.push(b.point(identity, labels, s.start_ns, now));
            }
        }
        if let Some((s, b)) = self
            .overflow
            .as_ref()
            .and_then(|s| part(&s.agg).map(|b| (s, b)))
        {
            let labels = vec![(OVERFLOW_LABEL, "true".to_owned())];
            out.push(b.point(Vec::new(), labels, s.start_ns, now));
        }
        out
    }

    fn labels(&self, key: &[Option<OwnedValue>]) -> (Identity, Labels) {
        let (id_values, label_values) = key.split_at(self.names.identity.len());
        let pairs = |names: &[&'static str], values: &[Option<OwnedValue>]| -> Labels {
            names
                .iter()
                .zip(values)
                .filter_map(|(n, v)| v.as_ref().map(|v| (*n, v.render())))
                .collect()
        };
        (
            pairs(self.names.identity, id_values),
            pairs(self.names.labels, label_values),
        )
    }
}

impl<A: Aggregate> SeriesTable<A> {
    /// A point per series (the overflow series last), taken at `now`.
    pub fn points(&self, now: u64) -> Vec<A::Point> {
        self.points_by(now, |a| Some(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: KeyNames = KeyNames {
        identity: &["service.name"],
        labels: &["http.route", "http.response.status_code"],
    };

    fn key<'a>(svc: &'a str, route: Option<&'a str>, code: i64) -> Key<'a> {
        let mut k = Key::new();
        k.str(Some(svc)).str(route).push(Some(Value::Int(code)));
        k
    }

    #[test]
    fn same_values_same_series_and_absent_values_left_out() {
        let mut t = SeriesTable::<Count>::new(NAMES, 10);
        t.get(&key("a", Some("/x"), 200), 1, Count::default).0 += 1;
        t.get(&key("a", Some("/x"), 200), 2, Count::default).0 += 1;
        t.get(&key("a", None, 200), 3, Count::default).0 += 1;
        // A string "200" is not the integer 200.
        let mut k = Key::new();
        k.str(Some("a")).str(Some("/x")).str(Some("200"));
        t.get(&k, 3, Count::default).0 += 1;
        assert_eq!(t.series_count(), 3);
        let mut points = t.points(9);
        points.sort_by_key(|p| (p.labels.len(), p.value));
        assert_eq!(
            points[0].labels,
            vec![("http.response.status_code", "200".into())]
        );
        assert_eq!(points[0].identity, vec![("service.name", "a".into())]);
        assert_eq!(points[2].value, 2);
        assert_eq!(points[2].start_unix_ns, 1);
        assert_eq!(points[2].time_unix_ns, 9);
    }

    #[test]
    fn beyond_the_cap_observations_go_to_the_overflow_series() {
        let mut t = SeriesTable::<Count>::new(NAMES, 2);
        for route in ["/a", "/b", "/c", "/d", "/a"] {
            t.get(&key("s", Some(route), 200), 1, Count::default).0 += 1;
        }
        assert_eq!(t.series_count(), 2);
        assert_eq!(t.overflowed(), 2);
        let points = t.points(2);
        let overflow = points.last().unwrap();
        assert_eq!(overflow.labels, vec![(OVERFLOW_LABEL, "true".into())]);
        assert!(overflow.identity.is_empty());
        assert_eq!(overflow.value, 2);
        assert_eq!(points.iter().map(|p| p.value).sum::<u64>(), 5);
    }

    #[test]
    fn idle_series_expire_and_free_their_place() {
        let mut t = SeriesTable::<Count>::new(NAMES, 1);
        t.get(&key("s", Some("/a"), 200), 100, Count::default);
        t.get(&key("s", Some("/b"), 200), 100, Count::default);
        t.expire(150, 50);
        assert_eq!((t.series_count(), t.points(150).len()), (1, 2));
        t.expire(151, 50);
        assert_eq!((t.series_count(), t.points(151).len()), (0, 0));
        t.get(&key("s", Some("/b"), 200), 200, Count::default);
        assert_eq!(t.series_count(), 1);
        assert_eq!(t.points(200)[0].labels[0].1, "/b");
    }

    #[test]
    fn histogram_buckets_include_their_upper_bound() {
        let bounds = [0.005, 0.01, 0.025];
        let mut h = Histogram::new(&bounds);
        let at = |n: u8| SpanRef {
            trace_id: [n; 16],
            span_id: [n; 8],
            time_unix_ns: u64::from(n),
            sampled: n != 9,
        };
        for (i, v) in [0.0, 0.005, 0.0050001, 0.01, 0.025, 0.03, 7.0]
            .into_iter()
            .enumerate()
        {
            h.observe(&bounds, v, at(i as u8));
        }
        let p = h.point(vec![], vec![], 0, 1);
        assert_eq!(p.bucket_counts, vec![2, 2, 1, 2]);
        assert_eq!(p.count, 7);
        assert!((p.sum - 7.0750001).abs() < 1e-9);
        // One exemplar per bucket: the most recent observation in it.
        let ex: Vec<_> = p
            .exemplars
            .iter()
            .map(|e| (e.span_id[0], e.value))
            .collect();
        assert_eq!(ex, vec![(1, 0.005), (3, 0.01), (4, 0.025), (6, 7.0)]);
        assert_eq!(p.exemplars[0].trace_id, [1; 16]);
        assert_eq!(p.exemplars[0].time_unix_ns, 1);
        // An unsampled span counts but is no exemplar (its trace is not exported).
        h.observe(&bounds, 7.5, at(9));
        let p = h.point(vec![], vec![], 0, 1);
        assert_eq!(p.bucket_counts, vec![2, 2, 1, 3]);
        assert_eq!(p.exemplars.last().map(|e| e.span_id[0]), Some(6));
    }
}
