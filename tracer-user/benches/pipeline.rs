//! The agent's event pipeline without the kernel: a recorded ring-buffer stream
//! (`data/events.bin`, written by `tracer --record-events` during `cargo xtask bench --record`)
//! replayed through decoding, reassembly → HTTP parsing → spans (`SpanAssembler::on_record`, the
//! path the agent runs) → OTLP encoding in batches of 512 (`export_request` + protobuf
//! encoding, as the OTLP exporters do). Throughput is in events (ring-buffer records) per
//! second on one core.
//!
//! Variants (group `pipeline`, throughput in events):
//! - `replay`: every data and close event is attributed to this (live) process, so resource
//!   look-ups hit the cache after the first one, as they do in the agent for live processes.
//! - `replay_metrics`: the same with every span also through the span-metrics stage
//!   (`pipeline::SpanMetrics`, default options) before encoding, as in the agent: its cost is
//!   the difference to `replay`.
//! - `replay_recorded_pids`: the pids as recorded. Those processes are gone at replay time, and
//!   `ProcessTable` does not cache misses, so every span pays a failed procfs look-up.
//!
//! And the stage alone (group `span_metrics`, throughput in spans): `stage` runs the spans of
//! one pass, built beforehand, through a fresh `SpanMetrics`: its cost per span.
//!
//! Run by `cargo xtask bench`, which reads the figures back from criterion's estimates and
//! the `events per pass:` / `spans per pass:` lines printed here. A recording made before a
//! change of the event layout (tracer-common) no longer decodes: this then says
//! `stale recording` and exits with status 3 (with `PIPELINE_CHECK_ONLY` set it only checks),
//! and `cargo xtask bench` re-records it.
use std::{hint::black_box, time::Duration};

use criterion::{BatchSize, Criterion, Throughput};

/// The same allocator as the agent binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use prost::Message;
use tracer::{
    agent::read_recording,
    assemble::SpanAssembler,
    capture::events::{Event, decode},
    conn::TableLimits,
    export::export_request,
    pipeline::{MetricsOptions, SpanMetrics},
    process::ProcessTable,
    span::Span,
    trace::{Clock, SpanOptions},
};
use tracer_common::EventHeader;

const RECORDING: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/data/events.bin");
/// The OTLP exporters' default batch size (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`).
const BATCH: usize = 512;
/// Offset of `EventHeader::pid` in every record.
const PID_OFFSET: usize = std::mem::offset_of!(EventHeader, pid);

fn assembler() -> SpanAssembler {
    SpanAssembler::new(
        ProcessTable::new(None, vec![]),
        Clock::measure(),
        SpanOptions::default(),
        TableLimits::default(),
    )
}

/// One pass: every record through the span assembler, each span through `metrics` if given,
/// spans encoded in batches. Returns the spans produced and the encoded bytes.
fn replay(
    assembler: &mut SpanAssembler,
    mut metrics: Option<&mut SpanMetrics>,
    records: &[Vec<u8>],
) -> (u64, usize) {
    let mut batch: Vec<Span> = Vec::with_capacity(BATCH);
    let mut spans = 0u64;
    let mut encoded = 0usize;
    let mut flush = |batch: &mut Vec<Span>| {
        spans += batch.len() as u64;
        encoded += black_box(export_request(batch.drain(..)).encode_to_vec()).len();
    };
    for record in records {
        assembler.on_record(record, &mut |span| {
            if let Some(m) = metrics.as_deref_mut() {
                m.on_span(&span);
            }
            batch.push(span)
        });
        if batch.len() >= BATCH {
            flush(&mut batch);
        }
    }
    if !batch.is_empty() {
        flush(&mut batch);
    }
    (spans, encoded)
}

fn stage() -> SpanMetrics {
    SpanMetrics::new(&MetricsOptions::default())
}

/// The spans of one pass over `records`.
fn spans_of(records: &[Vec<u8>]) -> Vec<Span> {
    let mut a = assembler();
    let mut spans = Vec::new();
    for record in records {
        a.on_record(record, &mut |span| spans.push(span));
    }
    spans
}

/// The records with data and close events attributed to `pid`.
fn with_pid(records: &[Vec<u8>], pid: u32) -> Vec<Vec<u8>> {
    records
        .iter()
        .map(|r| {
            let mut r = r.clone();
            if matches!(decode(&r), Some(Event::Data { .. } | Event::Close(_))) {
                r[PID_OFFSET..PID_OFFSET + 4].copy_from_slice(&pid.to_ne_bytes());
            }
            r
        })
        .collect()
}

fn main() {
    let bytes = std::fs::read(RECORDING).unwrap_or_else(|e| {
        panic!("{RECORDING}: {e} (record one with `cargo xtask bench --record`)")
    });
    let recorded: Vec<Vec<u8>> = read_recording(&bytes)
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect();
    let live = with_pid(&recorded, std::process::id());
    let mut check = assembler();
    let (spans, encoded) = replay(&mut check, None, &live);
    let malformed = check.stats().malformed;
    println!("events per pass: {}", recorded.len());
    println!("malformed per pass: {malformed}");
    println!("spans per pass: {spans}");
    println!("OTLP bytes per pass: {encoded}");
    if malformed > 0 || spans == 0 {
        // The event layout (tracer-common) changed since the recording was made.
        println!("stale recording: re-record it with `cargo xtask bench --record`");
        std::process::exit(3);
    }
    if std::env::var_os("PIPELINE_CHECK_ONLY").is_some() {
        return;
    }

    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(recorded.len() as u64));
    for (name, records, metrics) in [
        ("replay", &live, false),
        ("replay_metrics", &live, true),
        ("replay_recorded_pids", &recorded, false),
    ] {
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || (assembler(), metrics.then(stage)),
                |(a, m)| replay(a, m.as_mut(), records),
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();

    let spans = spans_of(&live);
    let mut group = c.benchmark_group("span_metrics");
    group.throughput(Throughput::Elements(spans.len() as u64));
    group.bench_function("stage", |b| {
        b.iter_batched_ref(
            stage,
            |m| {
                for s in &spans {
                    m.on_span(black_box(s));
                }
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
    c.final_summary();
}
