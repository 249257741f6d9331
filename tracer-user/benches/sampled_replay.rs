//! What sampling saves the agent: the recorded event stream of `pipeline.rs`
//! (`data/events.bin`, the pids made this process's as there) replayed through the span
//! assembler → the sampling stage (`pipeline::Sampler`) → OTLP encoding of what it keeps, in
//! batches of 512. Throughput in events per second on one core (group `sampling`):
//!
//! - `off`: the default sampler (`always_on`): every span is kept and encoded.
//! - `ratio_0.1_tail`: head sampling `traceidratio` 0.1 (decided in the assembler's parent
//!   resolution, as in the agent) plus the tail rules keep-errors and keep-slower-than 100 ms:
//!   unsampled traces are held for their decision and, unmatched, dropped at the end of the
//!   pass (`Sampler::finish`, as the decision wait would) — never encoded. Being cheaper than
//!   `off` is the point: dropping most traces must save work, not add it.
//!
//! Run by `cargo xtask bench`, which reads criterion's estimates back and the `… per pass:`
//! lines printed here.
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput};

/// The same allocator as the agent binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use tracer::{
    assemble::SpanAssembler,
    pipeline::{
        Sampler, SamplingOptions,
        sample::{HeadSampler, Policies, SamplerKind},
    },
    span::Span,
    trace::ParentResolver,
};

mod replay;
use replay::{BATCH, Encoding, assembler, recorded, with_pid};

const RATIO: f64 = 0.1;
const SLOWER_THAN_NS: u64 = 100_000_000;

/// `None`: sampling off (the default `always_on`).
fn sampling(ratio: Option<f64>) -> SamplingOptions {
    match ratio {
        None => SamplingOptions::default(),
        Some(r) => SamplingOptions {
            head: HeadSampler::new(SamplerKind::TraceIdRatio, r),
            policies: Policies {
                keep_errors: true,
                keep_slower_than_ns: Some(SLOWER_THAN_NS),
                keep_attributes: Vec::new(),
            },
            ..SamplingOptions::default()
        },
    }
}

/// The assembler with the head sampler deciding new traces, and the sampling stage.
fn stages(opts: &SamplingOptions) -> (SpanAssembler, Sampler) {
    let assembler =
        assembler().with_parent_resolver(ParentResolver::default().with_head_sampler(opts.head));
    (assembler, Sampler::new(opts.clone()))
}

/// One pass; returns the spans built and the spans encoded.
fn replay(assembler: &mut SpanAssembler, sampler: &mut Sampler, records: &[Vec<u8>]) -> (u64, u64) {
    let mut batch: Vec<Span> = Vec::with_capacity(BATCH);
    let (mut built, mut encoded) = (0u64, 0u64);
    let mut enc = Encoding::default();
    let mut flush = |batch: &mut Vec<Span>| {
        encoded += batch.len() as u64;
        enc.encode(batch);
    };
    // A fixed clock: held traces wait for `finish`, the end of the pass.
    for record in records {
        assembler.on_record(record, &mut |span| {
            built += 1;
            sampler.on_span(span, || 0, &mut |s| batch.push(s));
        });
        if batch.len() >= BATCH {
            flush(&mut batch);
        }
    }
    sampler.finish();
    if !batch.is_empty() {
        flush(&mut batch);
    }
    (built, encoded)
}

fn main() {
    let records = with_pid(&recorded(), std::process::id());
    let variants = [
        ("off", sampling(None)),
        ("ratio_0.1_tail", sampling(Some(RATIO))),
    ];
    println!("events per pass: {}", records.len());
    for (name, opts) in &variants {
        let (mut a, mut s) = stages(opts);
        let (built, encoded) = replay(&mut a, &mut s, &records);
        println!("spans per pass ({name}): {built}");
        println!("spans encoded per pass ({name}): {encoded}");
    }

    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    let mut group = c.benchmark_group("sampling");
    group.throughput(Throughput::Elements(records.len() as u64));
    for (name, opts) in &variants {
        group.bench_function(*name, |b| {
            b.iter_batched_ref(
                || stages(opts),
                |(a, s)| replay(a, s, &records),
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
    c.final_summary();
}
