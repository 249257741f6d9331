//! The agent's event pipeline without the kernel: a recorded ring-buffer stream
//! (`data/events.bin`, written by `tracer --record-events` during `cargo xtask bench --record`)
//! replayed through what the agent runs on it: decoding, reassembly → HTTP parsing → spans
//! (`SpanAssembler::on_record`), the span pipeline (`Pipeline::on_span`: redact → span metrics →
//! the node view's store → sampling → the export queue) with the agent's default options, and
//! OTLP encoding of the queued spans in batches of 512 (`TraceEncoder`, straight from the spans
//! into a reused buffer, as the OTLP exporters do). Throughput is in events (ring-buffer records) per second on one
//! core: its inverse is the agent's CPU per event, transport and kernel aside.
//!
//! Variants (group `pipeline`, throughput in events):
//! - `replay`: the agent's path above. Every data and close event is attributed to this (live)
//!   process, so resource look-ups hit the cache after the first one, as they do in the agent
//!   for live processes.
//! - `replay_spans_only`: spans encoded straight from the assembler, no pipeline stage: the
//!   difference to `replay` is what the stages cost.
//! - `replay_recorded_pids`: the agent's path with the pids as recorded. Those processes are
//!   gone at replay time, and `ProcessTable` does not cache misses, so every span pays a failed
//!   procfs look-up.
//!
//! And each stage alone (group `stage`, throughput in spans), on the spans of one pass built
//! beforehand (redacted first, as the later stages see them): `redact`, `metrics`, `recent`,
//! `sample`, `encode`; their cost per span. `encode_via_proto` is the former encoding (the
//! `opentelemetry-proto` messages built by `export_request`, then prost-encoded), the same
//! bytes: the reference `encode` is measured against.
//!
//! `PIPELINE_PASSES=N` runs N passes of `replay` (each with fresh state, as criterion's) and
//! prints the process CPU time per pass instead: on a machine busy with other work, CPU time
//! moves far less than criterion's wall-clock figures, so before/after comparisons stay
//! readable.
//!
//! Run by `cargo xtask bench`, which reads the figures back from criterion's estimates and
//! the `events per pass:` / `spans per pass:` lines printed here. A recording made before a
//! change of the event layout (tracer-common) no longer decodes: this then says
//! `stale recording` and exits with status 3 (with `PIPELINE_CHECK_ONLY` set it only checks),
//! and `cargo xtask bench` re-records it.
use std::{
    alloc::{GlobalAlloc, Layout},
    hint::black_box,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use criterion::{BatchSize, Criterion, Throughput};

/// The same allocator as the agent binary, counting allocations while `COUNTING` is set
/// (only in `PIPELINE_PASSES` mode, so criterion's figures pay one relaxed load per call).
#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;
static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
/// Bytes allocated and not freed while `COUNTING` is set (the view store's measured size).
static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);

struct CountingAlloc;

// SAFETY: every call is forwarded unchanged to mimalloc; the counter has no effect on memory.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as i64);
        // SAFETY: the caller's contract, passed on.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        freed(layout.size() as i64);
        // SAFETY: the caller's contract, passed on.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as i64);
        // SAFETY: the caller's contract, passed on.
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as i64 - layout.size() as i64);
        // SAFETY: the caller's contract, passed on.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

/// One allocation (or reallocation) of `bytes` more, when counting.
#[inline(always)]
fn count(bytes: i64) {
    if COUNTING.load(Ordering::Relaxed) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        LIVE_BYTES.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// One free, when counting.
#[inline(always)]
fn freed(bytes: i64) {
    if COUNTING.load(Ordering::Relaxed) {
        LIVE_BYTES.fetch_sub(bytes, Ordering::Relaxed);
    }
}
use prost::Message;
use tokio::sync::mpsc;
use tracer::{
    assemble::SpanAssembler,
    export::{ExportStats, SpanSender, export_request},
    pipeline::{
        MetricsOptions, Pipeline, RecentTraces, RedactOptions, Redactor, Sampler, SamplingOptions,
        SpanMetrics,
    },
    span::Span,
    ui::{RecentStore, StoreLimits},
};

mod replay;
use replay::{BATCH, Encoding, assembler, recorded, with_pid};

/// The export queue's default capacity (`OTEL_BSP_MAX_QUEUE_SIZE`).
const QUEUE: usize = 2048;
/// Wall-clock time the replayed spans end near (the store's windows start there).
const NOW_NS: u64 = 1_700_000_000_000_000_000;

fn store() -> Arc<RecentStore> {
    Arc::new(RecentStore::new(StoreLimits::default(), NOW_NS))
}

/// The agent's span pipeline with its default options, its export queue's receiving end, and
/// the view's store it fills.
struct AgentStages {
    pipeline: Pipeline,
    queue: mpsc::Receiver<Span>,
    store: Arc<RecentStore>,
}

fn agent_stages() -> AgentStages {
    let (sender, queue) = SpanSender::queue(QUEUE, Arc::new(ExportStats::default()));
    let store = store();
    let pipeline = Pipeline::new(
        RedactOptions::default(),
        &MetricsOptions::default(),
        SamplingOptions::default(),
        sender,
    )
    .with_recent(RecentTraces::new(store.clone()));
    AgentStages {
        pipeline,
        queue,
        store,
    }
}

/// CPU time this process used so far (user and system).
fn process_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// One pass: every record through the span assembler, each span through `stages` if given
/// (else straight to the batch), spans encoded in batches. Returns the spans produced and the
/// encoded bytes.
fn replay(
    assembler: &mut SpanAssembler,
    mut stages: Option<&mut AgentStages>,
    records: &[Vec<u8>],
) -> (u64, usize) {
    let mut batch: Vec<Span> = Vec::with_capacity(BATCH);
    let mut enc = Encoding::default();
    let mut spans = 0u64;
    let mut encoded = 0usize;
    for record in records {
        match stages.as_deref_mut() {
            Some(st) => {
                let pipeline = &mut st.pipeline;
                assembler.on_record(record, &mut |span| {
                    spans += 1;
                    pipeline.on_span(span)
                });
                while batch.len() < BATCH
                    && let Ok(span) = st.queue.try_recv()
                {
                    batch.push(span);
                }
            }
            None => assembler.on_record(record, &mut |span| {
                spans += 1;
                batch.push(span)
            }),
        }
        if batch.len() >= BATCH {
            encoded += enc.encode(&mut batch);
        }
    }
    if let Some(st) = stages {
        st.pipeline.finish();
        while let Ok(span) = st.queue.try_recv() {
            batch.push(span);
            if batch.len() >= BATCH {
                encoded += enc.encode(&mut batch);
            }
        }
    }
    if !batch.is_empty() {
        encoded += enc.encode(&mut batch);
    }
    (spans, encoded)
}

/// The spans of one pass over `records`, redacted (as every stage after redaction sees them).
fn spans_of(records: &[Vec<u8>]) -> Vec<Span> {
    let mut a = assembler();
    let mut redact = Redactor::new(RedactOptions::default());
    let mut spans = Vec::new();
    for record in records {
        a.on_record(record, &mut |mut span| {
            redact.on_span(&mut span);
            spans.push(span)
        });
    }
    spans
}

/// The view's store with its default bounds, filled past them with this recording's spans
/// (fresh trace ids each round, so it evicts as in the agent): the bytes it holds allocated,
/// beside its own estimate and bound.
fn view_store_memory(spans: &mut [Span]) {
    let limits = StoreLimits::default();
    LIVE_BYTES.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    let store = RecentStore::new(limits, NOW_NS);
    let mut round = 0u32;
    while store.stats().spans_evicted < 2 * limits.max_spans as u64 {
        round += 1;
        for s in spans.iter_mut() {
            s.trace_id[12..].copy_from_slice(&round.to_le_bytes());
            store.insert_span(s);
        }
    }
    COUNTING.store(false, Ordering::Relaxed);
    ALLOCATIONS.store(0, Ordering::Relaxed);
    let allocated = LIVE_BYTES.load(Ordering::Relaxed);
    let st = store.stats();
    println!(
        "view store full: {} spans in {} traces, {} bytes estimated (bound {}), {allocated} bytes allocated ({:.0} per span)",
        st.spans,
        st.traces,
        st.bytes,
        st.max_bytes,
        allocated as f64 / st.spans.max(1) as f64
    );
}

fn main() {
    let recorded = recorded();
    let live = with_pid(&recorded, std::process::id());
    let mut check = assembler();
    let mut stages = agent_stages();
    let (spans, encoded) = replay(&mut check, Some(&mut stages), &live);
    let malformed = check.stats().malformed;
    println!("events per pass: {}", recorded.len());
    println!("malformed per pass: {malformed}");
    println!("spans per pass: {spans}");
    println!("OTLP bytes per pass: {encoded}");
    let view = stages.store.stats();
    println!(
        "view store after a pass: {} spans, {} bytes (estimated)",
        view.spans, view.bytes
    );
    if malformed > 0 || spans == 0 {
        // The event layout (tracer-common) changed since the recording was made.
        println!("stale recording: re-record it with `cargo xtask bench --record`");
        std::process::exit(3);
    }
    view_store_memory(&mut spans_of(&live));
    if std::env::var_os("PIPELINE_CHECK_ONLY").is_some() {
        return;
    }
    if let Some(passes) = std::env::var("PIPELINE_PASSES")
        .ok()
        .and_then(|n| n.parse::<u32>().ok())
    {
        let mut cpu = Duration::ZERO;
        for _ in 0..passes {
            let (mut a, mut st) = (assembler(), agent_stages());
            let before = process_cpu_time();
            COUNTING.store(true, Ordering::Relaxed);
            black_box(replay(&mut a, Some(&mut st), &live));
            COUNTING.store(false, Ordering::Relaxed);
            cpu += process_cpu_time().saturating_sub(before);
        }
        let per_pass = cpu / passes.max(1);
        println!(
            "CPU per pass: {:.3} ms ({:.3} M events/s)",
            per_pass.as_secs_f64() * 1e3,
            recorded.len() as f64 / per_pass.as_secs_f64() / 1e6
        );
        // The pass's allocations, the stages' state and the export batches included.
        let allocations = ALLOCATIONS.load(Ordering::Relaxed) as f64 / f64::from(passes.max(1));
        println!(
            "allocations per pass: {allocations:.0} ({:.1} per span)",
            allocations / spans.max(1) as f64
        );
        return;
    }

    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(recorded.len() as u64));
    for (name, records, with_stages) in [
        ("replay", &live, true),
        ("replay_spans_only", &live, false),
        ("replay_recorded_pids", &recorded, true),
    ] {
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || (assembler(), with_stages.then(agent_stages)),
                |(a, st)| replay(a, st.as_mut(), records),
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();

    let spans = spans_of(&live);
    let mut group = c.benchmark_group("stage");
    group.throughput(Throughput::Elements(spans.len() as u64));
    group.bench_function("redact", |b| {
        b.iter_batched_ref(
            || (Redactor::new(RedactOptions::default()), spans.clone()),
            |(r, spans)| {
                for s in spans.iter_mut() {
                    r.on_span(black_box(s));
                }
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("metrics", |b| {
        b.iter_batched_ref(
            || SpanMetrics::new(&MetricsOptions::default()),
            |m| {
                for s in &spans {
                    m.on_span(black_box(s));
                }
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("recent", |b| {
        b.iter_batched_ref(
            || RecentTraces::new(store()),
            |r| {
                for s in &spans {
                    r.on_span(black_box(s));
                }
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("sample", |b| {
        b.iter_batched_ref(
            || (Sampler::new(SamplingOptions::default()), spans.clone()),
            |(sampler, spans)| {
                for s in spans.drain(..) {
                    sampler.on_span(s, || NOW_NS, &mut |s| drop(black_box(s)));
                }
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("encode", |b| {
        b.iter_batched_ref(
            || (Encoding::default(), spans.clone()),
            |(enc, spans)| {
                while !spans.is_empty() {
                    let mut batch: Vec<Span> = spans.drain(..spans.len().min(BATCH)).collect();
                    enc.encode(&mut batch);
                }
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("encode_via_proto", |b| {
        b.iter_batched_ref(
            || spans.clone(),
            |spans| {
                while !spans.is_empty() {
                    let batch = spans.drain(..spans.len().min(BATCH));
                    black_box(export_request(batch).encode_to_vec());
                }
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
    c.final_summary();
}
