//! The sampling stage: head decision (carried by each span's sampled flag, decided where its
//! context was created: [`head`]) plus node-local tail policies ([`tail`]).
//!
//! - A sampled span passes at once (the tail can only add traces, never remove one).
//! - Without tail policies an unsampled span is dropped at once (`always_on` exports
//!   everything).
//! - With tail policies, the spans of an unsampled trace are held, from its first span on, for
//!   the decision wait. A span matching a policy keeps the trace at once: its held spans and
//!   every later one pass (their sampled flag set, and `th` removed from `tracestate`: their
//!   weight is no longer the head probability's). When the wait ends with no match, the trace
//!   is dropped. The hold buffer is bounded (traces and bytes): when full, the oldest trace is
//!   decided early (dropped, counted as overflow).
//! - Decisions are remembered in a bounded cache (FIFO): spans arriving after their trace's
//!   decision follow it (counted as late). A trace forgotten by the cache starts anew.
//!
//! Dropped spans go no further: they are never encoded.
pub mod head;
pub mod options;
pub mod tail;
pub mod tracestate;

use std::collections::VecDeque;

// Looked up per span: foldhash (seeded per process), not std's SipHash.
use hashbrown::HashMap;

use crate::span::{Span, TraceId};

pub use head::{HeadSampler, SamplerKind};
pub use options::SamplingArgs;
pub use tail::{AttributeMatch, DropReason, KeepReason, Policies};

/// Default decision wait.
pub const DEFAULT_DECISION_WAIT_NS: u64 = 2_000_000_000;
/// Default bounds of the hold buffer and of the decision cache.
pub const DEFAULT_MAX_TRACES: usize = 10_000;
pub const DEFAULT_MAX_BYTES: usize = 64 << 20;
pub const DEFAULT_DECISION_CACHE: usize = 100_000;

/// The stage's configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingOptions {
    pub head: HeadSampler,
    pub policies: Policies,
    pub decision_wait_ns: u64,
    pub max_traces: usize,
    pub max_bytes: usize,
    pub decision_cache: usize,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        Self {
            head: HeadSampler::default(),
            policies: Policies::default(),
            decision_wait_ns: DEFAULT_DECISION_WAIT_NS,
            max_traces: DEFAULT_MAX_TRACES,
            max_bytes: DEFAULT_MAX_BYTES,
            decision_cache: DEFAULT_DECISION_CACHE,
        }
    }
}

/// Traces and spans kept and dropped, per reason (indexed by [`KeepReason`] /
/// [`DropReason`]), and what is held now. Traces are counted at their decision; a trace the
/// decision cache forgot may count twice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SamplingStats {
    pub traces_kept: [u64; 4],
    pub spans_kept: [u64; 4],
    pub traces_dropped: [u64; 2],
    pub spans_dropped: [u64; 2],
    /// Spans that arrived after their trace's tail decision, and followed it.
    pub late_spans_kept: u64,
    pub late_spans_dropped: u64,
    /// Held now (gauges).
    pub held_traces: u64,
    pub held_bytes: u64,
}

impl SamplingStats {
    /// Every counter by name (`kept_traces_head`, ..., `held_bytes`): the stats line's
    /// `sampling` object, and the names a metrics exporter can publish.
    pub fn named(&self) -> Vec<(String, u64)> {
        let mut out = Vec::with_capacity(16);
        for r in KeepReason::ALL {
            out.push((
                format!("kept_traces_{}", r.name()),
                self.traces_kept[r as usize],
            ));
            out.push((
                format!("kept_spans_{}", r.name()),
                self.spans_kept[r as usize],
            ));
        }
        for r in DropReason::ALL {
            out.push((
                format!("dropped_traces_{}", r.name()),
                self.traces_dropped[r as usize],
            ));
            out.push((
                format!("dropped_spans_{}", r.name()),
                self.spans_dropped[r as usize],
            ));
        }
        out.extend([
            ("late_spans_kept".to_owned(), self.late_spans_kept),
            ("late_spans_dropped".to_owned(), self.late_spans_dropped),
            ("held_traces".to_owned(), self.held_traces),
            ("held_bytes".to_owned(), self.held_bytes),
        ]);
        out
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decision {
    Keep(KeepReason),
    Drop(DropReason),
}

/// Spans of an unsampled trace waiting for its decision.
struct Held {
    spans: Vec<Span>,
    first_ns: u64,
    bytes: usize,
}

/// The stage.
pub struct Sampler {
    opts: SamplingOptions,
    tail: bool,
    held: HashMap<TraceId, Held>,
    /// Held traces by arrival (entries of traces decided since are skipped).
    order: VecDeque<(TraceId, u64)>,
    held_bytes: usize,
    decided: HashMap<TraceId, Decision>,
    decided_order: VecDeque<TraceId>,
    stats: SamplingStats,
}

impl Sampler {
    pub fn new(opts: SamplingOptions) -> Self {
        Self {
            tail: opts.policies.any() && opts.head.can_drop(),
            opts,
            held: HashMap::new(),
            order: VecDeque::new(),
            held_bytes: 0,
            decided: HashMap::new(),
            decided_order: VecDeque::new(),
            stats: SamplingStats::default(),
        }
    }

    pub fn stats(&self) -> SamplingStats {
        SamplingStats {
            held_traces: self.held.len() as u64,
            held_bytes: self.held_bytes as u64,
            ..self.stats
        }
    }

    /// One span; what passes goes to `emit`. `now_ns` (wall clock) is asked for only when a
    /// trace starts being held.
    pub fn on_span(
        &mut self,
        mut span: Span,
        now_ns: impl FnOnce() -> u64,
        emit: &mut impl FnMut(Span),
    ) {
        if self.opts.head.exports_unsampled() {
            self.stats.spans_kept[KeepReason::Head as usize] += 1;
            emit(span);
            return;
        }
        let id = span.trace_id;
        if let Some(d) = self.decided.get(&id).copied() {
            return self.follow(d, span, emit);
        }
        if span.flags & 1 == 1 {
            self.decide(id, Decision::Keep(KeepReason::Head));
            self.stats.spans_kept[KeepReason::Head as usize] += 1;
            emit(span);
            return;
        }
        if !self.tail {
            self.decide(id, Decision::Drop(DropReason::Unsampled));
            self.stats.spans_dropped[DropReason::Unsampled as usize] += 1;
            return;
        }
        if let Some(reason) = self.opts.policies.matches(&span) {
            let held = self.release(&id);
            self.decide(id, Decision::Keep(reason));
            let n = held.as_ref().map_or(0, |h| h.spans.len()) + 1;
            self.stats.spans_kept[reason as usize] += n as u64;
            for mut s in held.into_iter().flat_map(|h| h.spans) {
                kept_by_policy(&mut s);
                emit(s);
            }
            kept_by_policy(&mut span);
            emit(span);
            return;
        }
        let bytes = tail::span_bytes(&span);
        self.held_bytes += bytes;
        match self.held.get_mut(&id) {
            Some(h) => {
                h.spans.push(span);
                h.bytes += bytes;
            }
            None => {
                let first_ns = now_ns();
                self.held.insert(
                    id,
                    Held {
                        spans: vec![span],
                        first_ns,
                        bytes,
                    },
                );
                self.order.push_back((id, first_ns));
            }
        }
        self.enforce_bounds();
    }

    /// Traces whose decision wait ended are dropped.
    pub fn tick(&mut self, now_ns: u64) {
        while let Some(&(id, first)) = self.order.front() {
            if now_ns.saturating_sub(first) < self.opts.decision_wait_ns {
                break;
            }
            self.order.pop_front();
            self.drop_held(id, first, DropReason::Unsampled);
        }
    }

    /// At shutdown: every held trace is decided (no policy matched it: dropped).
    pub fn finish(&mut self) {
        while let Some((id, first)) = self.order.pop_front() {
            self.drop_held(id, first, DropReason::Unsampled);
        }
    }

    fn follow(&mut self, d: Decision, mut span: Span, emit: &mut impl FnMut(Span)) {
        match d {
            Decision::Keep(KeepReason::Head) => {
                self.stats.spans_kept[KeepReason::Head as usize] += 1;
                emit(span);
            }
            Decision::Keep(r) => {
                self.stats.spans_kept[r as usize] += 1;
                self.stats.late_spans_kept += 1;
                kept_by_policy(&mut span);
                emit(span);
            }
            Decision::Drop(r) if span.flags & 1 == 1 => {
                // Sampled after all (flags differ within the trace): the head decision wins.
                let _ = r;
                self.stats.spans_kept[KeepReason::Head as usize] += 1;
                emit(span);
            }
            Decision::Drop(r) => {
                self.stats.spans_dropped[r as usize] += 1;
                if self.tail {
                    self.stats.late_spans_dropped += 1;
                }
            }
        }
    }

    /// The held trace `id` (held since `first`) is dropped, if it is still held.
    fn drop_held(&mut self, id: TraceId, first: u64, reason: DropReason) {
        if self.held.get(&id).is_none_or(|h| h.first_ns != first) {
            return;
        }
        if let Some(h) = self.release(&id) {
            self.stats.spans_dropped[reason as usize] += h.spans.len() as u64;
        }
        self.decide(id, Decision::Drop(reason));
    }

    fn release(&mut self, id: &TraceId) -> Option<Held> {
        let h = self.held.remove(id)?;
        self.held_bytes -= h.bytes;
        Some(h)
    }

    fn enforce_bounds(&mut self) {
        while self.held.len() > self.opts.max_traces || self.held_bytes > self.opts.max_bytes {
            let Some((id, first)) = self.order.pop_front() else {
                break;
            };
            self.drop_held(id, first, DropReason::Overflow);
        }
        // Entries of traces kept since: bounded by the held traces they stand for.
        if self.order.len() > 2 * self.opts.max_traces.max(1) {
            let held = &self.held;
            self.order
                .retain(|(id, first)| held.get(id).is_some_and(|h| h.first_ns == *first));
        }
    }

    /// Records a trace's decision (counted once) in the bounded cache.
    fn decide(&mut self, id: TraceId, d: Decision) {
        match d {
            Decision::Keep(r) => self.stats.traces_kept[r as usize] += 1,
            Decision::Drop(r) => self.stats.traces_dropped[r as usize] += 1,
        }
        if self.opts.decision_cache == 0 {
            return;
        }
        while self.decided_order.len() >= self.opts.decision_cache {
            if let Some(old) = self.decided_order.pop_front() {
                self.decided.remove(&old);
            }
        }
        if self.decided.insert(id, d).is_none() {
            self.decided_order.push_back(id);
        }
    }
}

/// A span kept by a tail policy: sampled now, and `th` no longer says its weight.
fn kept_by_policy(span: &mut Span) {
    span.flags |= 1;
    if let Some(ts) = span.trace_state.take() {
        span.trace_state = tracestate::without_threshold(&ts);
    }
}

#[cfg(test)]
mod tests;
