//! The agent's main loop: ring buffer → span assembler → span pipeline (stages, then the
//! exporter), periodic expiry and counters, clean shutdown on SIGINT/SIGTERM.
use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};
use tracer_common::KernelOffsets;

use crate::{
    assemble::SpanAssembler,
    capture::{Capture, DRAIN_INTERVAL, events::decode, features::Features, tls::TlsAttacher},
    cli::Cli,
    export::{self, ExportStats},
    pipeline::{Pipeline, RecentTraces, RedactOptions},
    process::{self, ProcessTable},
    span::Span,
    trace::{Clock, ParentResolver, SpanOptions},
    ui::{self, RecentStore},
};

/// Runs the agent. `offsets` and `features`: kernel struct offsets and kernel features computed
/// before the runtime started (see `capture::btf::kernel_offsets_isolated` and
/// `Features::detect_isolated`), or `None` to compute them now.
pub async fn run(
    cli: Cli,
    offsets: Option<KernelOffsets>,
    features: Option<Features>,
) -> Result<()> {
    // The kernel derives SERVER span ids with the same key (see `tracer_common::propagation`).
    let parents = ParentResolver::default();
    // Before loading anything: a taken address is a quick, clear failure.
    let recent = Arc::new(RecentStore::new(cli.ui.limits(), unix_now_ns()));
    // No metric source yet: the service map comes from the store's own span pairs.
    let ui = ui::start(&cli.ui, recent.clone(), Vec::new())?;
    let mut capture = Capture::load(&cli.capture_options(offsets, features, parents.key())?)?;
    // SAFETY: the ring buffer owns its fd and outlives the registration (dropped together).
    let mut ring = unsafe { AsyncFd::register(capture.take_ring()?) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?;

    let mut tls = TlsAttacher::new();
    if capture.tls_loaded {
        let started = Instant::now();
        tls.scan_all(capture.ebpf_mut());
        tracing::info!(
            files = tls.stats().files_attached,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "TLS probes attached to the files running processes map"
        );
    }

    let export_stats = Arc::new(ExportStats::default());
    let (spans, exporter) = export::spawn(&cli.export, export_stats.clone())?;
    tracing::info!("exporting spans to {}", exporter.description());

    let mut pipeline = Pipeline::new(
        RedactOptions {
            query_values: !cli.keep_query_values,
        },
        spans,
    );
    if let Some(ui) = &ui {
        pipeline = pipeline.with_recent(RecentTraces::new(recent));
        tracing::info!(
            "node-local view: {} (in a terminal: tracer top --connect {})",
            ui.url(),
            ui.addr
        );
    }
    let mut assembler = SpanAssembler::new(
        ProcessTable::new(None, process::resource_attributes_from_env()),
        Clock::measure(),
        SpanOptions::default(),
        cli.table_limits(),
    )
    .with_parent_resolver(parents);
    let mut recorder = match &cli.record_events {
        Some(path) => Some(Recorder::create(path)?),
        None => None,
    };

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut drain = tokio::time::interval(DRAIN_INTERVAL);
    drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stats_every = cli.stats_interval();
    let mut last_stats = Instant::now();
    tracing::info!(
        pid = std::process::id(),
        "tracing; stop with Ctrl-C or SIGTERM"
    );

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let inner = guard.get_inner_mut();
                drain_ring(inner, &mut recorder, &mut assembler, &mut tls, &mut |s| pipeline.on_span(s));
                guard.clear_ready();
            }
            _ = drain.tick() => {
                drain_ring(ring.get_mut(), &mut recorder, &mut assembler, &mut tls, &mut |s| pipeline.on_span(s));
                if capture.tls_loaded {
                    tls.process(capture.ebpf_mut());
                }
            }
            _ = tick.tick() => {
                assembler.tick(Clock::monotonic_now(), &mut |s| pipeline.on_span(s));
                pipeline.tick(unix_now_ns());
                if stats_every.is_some_and(|every| last_stats.elapsed() >= every) {
                    last_stats = Instant::now();
                    log_stats("periodic", &capture, &assembler, &tls, &export_stats);
                }
            }
            _ = sigint.recv() => { tracing::info!("SIGINT: stopping"); break; }
            _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping"); break; }
        }
    }

    // Take what the kernel already reported, then detach before the final flush.
    drain_ring(
        ring.get_mut(),
        &mut recorder,
        &mut assembler,
        &mut tls,
        &mut |s| pipeline.on_span(s),
    );
    log_stats("final", &capture, &assembler, &tls, &export_stats);
    tls.detach_all(capture.ebpf_mut());
    drop(ring);
    drop(capture);
    tracing::info!("detached all programs");
    drop(pipeline);
    if let Some(ui) = ui {
        ui.stop();
    }
    exporter.shutdown().await;
    let e = export_stats.snapshot();
    tracing::info!(
        exported = e.spans_exported,
        failed = e.spans_failed,
        dropped_queue_full = e.spans_dropped_queue_full,
        "export finished"
    );
    Ok(())
}

fn unix_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Decodes every record waiting in the ring buffer (once) and hands it to the TLS attacher
/// and the span assembler; the raw record goes to the recorder.
fn drain_ring(
    ring: &mut RingBuf<MapData>,
    recorder: &mut Option<Recorder>,
    assembler: &mut SpanAssembler,
    tls: &mut TlsAttacher,
    emit: &mut impl FnMut(Span),
) {
    while let Some(record) = ring.next() {
        if let Some(r) = recorder.as_mut() {
            r.write(&record);
        }
        match decode(&record) {
            Some(event) => {
                tls.on_event(&event);
                assembler.on_event(event, emit);
            }
            None => assembler.on_malformed(),
        }
    }
}

/// Appends raw ring-buffer records to a file (u32 little-endian length, then the bytes), for
/// replay by the pipeline benchmark and for debugging. Stops recording on the first write error.
struct Recorder {
    out: Option<std::io::BufWriter<std::fs::File>>,
}

impl Recorder {
    fn create(path: &std::path::Path) -> Result<Self> {
        let file = std::fs::File::create(path)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
        tracing::info!("recording kernel events to {}", path.display());
        Ok(Self {
            out: Some(std::io::BufWriter::new(file)),
        })
    }

    fn write(&mut self, record: &[u8]) {
        use std::io::Write;
        let Some(out) = self.out.as_mut() else { return };
        let len = (record.len() as u32).to_le_bytes();
        if let Err(e) = out.write_all(&len).and_then(|_| out.write_all(record)) {
            tracing::warn!("event recording stopped: {e}");
            self.out = None;
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        use std::io::Write;
        if let Some(out) = self.out.as_mut() {
            let _ = out.flush();
        }
    }
}

/// Reads a file written by `--record-events` back into records.
pub fn read_recording(bytes: &[u8]) -> Vec<&[u8]> {
    let mut records = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 4 {
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let Some(record) = rest.get(4..4 + len) else {
            break;
        };
        records.push(record);
        rest = &rest[4 + len..];
    }
    records
}

/// Logs every counter twice: the human line (`{when} counters; ...`, kernel drops only where
/// not zero) and, beside it, the same counters under the same names as one JSON object
/// (`{when} stats {...}`) for scripts and tests (see the README's counters section).
fn log_stats(
    when: &str,
    capture: &Capture,
    assembler: &SpanAssembler,
    tls: &TlsAttacher,
    export: &ExportStats,
) {
    let drops = capture.drops();
    let injection = capture.injecting.then(|| capture.inject_counts());
    let ev = assembler.stats();
    let conns = assembler.conns.stats();
    let parse = assembler.conns.parse_stats();
    let h2 = assembler.conns.h2_stats();
    let ex = export.snapshot();
    let links = assembler.parent_stats();
    let tls = tls.stats();
    let counters = [
        ("events", ev.events),
        ("data_events", ev.data_events),
        ("malformed", ev.malformed),
        ("spans", ev.spans),
        ("conns_open", conns.open),
        ("conns_opened", conns.opened),
        ("conns_expired", conns.expired),
        ("conns_refused_full", conns.refused_full),
        ("gaps", conns.gaps),
        ("gap_bytes", conns.gap_bytes),
        ("invalid_messages", parse.invalid_messages),
        ("dropped_messages", parse.dropped_messages),
        ("unmatched_responses", parse.unmatched_responses),
        ("unanswered_requests", parse.unanswered_requests),
        ("h2_desyncs", h2.frames.desyncs),
        ("h2_invalid", h2.frames.invalid),
        ("h2_dropped_blocks", h2.frames.dropped_blocks),
        ("h2_oversized_frames", h2.frames.oversized_frames),
        ("h2_skipped_gaps", h2.frames.skipped_gaps),
        ("h2_streams_over_limit", h2.streams_over_limit),
        ("h2_streams_reset", h2.streams_reset),
        ("h2_unknown_fields", h2.unknown_fields),
        ("links_open", links.open),
        ("links_linked", links.linked),
        ("links_ambiguous", links.ambiguous),
        ("links_refused_full", links.refused_full),
        ("links_injected", links.injected),
        ("links_injected_unlinked", links.injected_unlinked),
        ("address_linked", links.address_linked),
        ("tls_files_attached", tls.files_attached),
        ("tls_attach_failed", tls.attach_failed),
        ("tls_unsupported", tls.unsupported),
        ("tls_detached", tls.detached),
        ("exported", ex.spans_exported),
        ("export_failed", ex.spans_failed),
        ("export_queue_full", ex.spans_dropped_queue_full),
        ("queue_len", ex.queue_len),
    ];

    let human_drops = match &drops {
        Ok(d) => Some(name_values(d.iter().filter(|(_, v)| **v > 0))).filter(|s| !s.is_empty()),
        Err(e) => Some(format!("unavailable ({e})")),
    };
    let human_injection = match &injection {
        None => "off".to_owned(),
        Some(Ok(c)) => name_values(c),
        Some(Err(e)) => format!("unavailable ({e})"),
    };
    tracing::info!(
        "{when} counters; kernel drops: {}; injection: {human_injection} {}",
        human_drops.as_deref().unwrap_or("none"),
        name_values(counters)
    );

    // Counters that could not be read, and injection's when it is off, are `null`.
    let nested = |m: Option<&BTreeMap<&'static str, u64>>| {
        m.map_or_else(|| "null".to_owned(), |m| json_object(m.iter()))
    };
    let stats = json_object(counters.iter().map(|(k, v)| (*k, v.to_string())).chain([
        ("kernel_drops", nested(drops.as_ref().ok())),
        (
            "injection",
            nested(injection.as_ref().and_then(|r| r.as_ref().ok())),
        ),
    ]));
    tracing::info!("{when} stats {stats}");
}

/// `name=value name=value ...`
fn name_values<K: std::fmt::Display, V: std::fmt::Display>(
    pairs: impl IntoIterator<Item = (K, V)>,
) -> String {
    let words: Vec<String> = pairs.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    words.join(" ")
}

/// `{"name":value,...}`. The names are the agent's own identifiers (ASCII letters and `_`):
/// nothing to escape.
fn json_object<K: std::fmt::Display, V: std::fmt::Display>(
    members: impl IntoIterator<Item = (K, V)>,
) -> String {
    let members: Vec<String> = members
        .into_iter()
        .map(|(k, v)| format!("\"{k}\":{v}"))
        .collect();
    format!("{{{}}}", members.join(","))
}
