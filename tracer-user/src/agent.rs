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
    agent_counters::{AgentCounters, CounterReadings},
    assemble::SpanAssembler,
    capture::{Capture, DRAIN_INTERVAL, events::decode, features::Features, tls::TlsAttacher},
    cli::Cli,
    conn::nat::Conntrack,
    export::{
        self, ExportStats,
        otlp_metrics::{self, MetricsExportStats},
        prometheus,
    },
    metric::MetricSources,
    pipeline::{Pipeline, RecentTraces, SamplingStats},
    process::{
        self, ProcessTable,
        kubernetes::{self, PeerNames},
    },
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
    // Bind the metrics port first: a port in use is one clear error before anything loads.
    let metrics_config = cli.metrics_export.resolve(&cli.export)?;
    let prometheus_listeners = metrics_config
        .prometheus
        .as_ref()
        .map(prometheus::bind)
        .transpose()?;
    let start_unix_ns = unix_now_ns();
    // The kernel derives SERVER span ids with the same key (see `tracer_common::propagation`).
    let sampling = cli.sampling.options();
    let parents = ParentResolver::default().with_head_sampler(sampling.head);
    let mut capture = Capture::load(&cli.capture_options(offsets, features, parents.key())?)?;
    // Before the ring buffer is mapped (it counts in the resident set too): the peak stays low.
    crate::memory::release_start_up_memory();
    // SAFETY: the ring buffer owns its fd and outlives the registration (dropped together).
    let mut ring = unsafe { AsyncFd::register(capture.take_ring()?) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?;

    // TLS probes are looked for and attached on a thread of their own.
    let mut tls = if capture.tls_loaded {
        TlsAttacher::start(capture.shared_ebpf())?
    } else {
        TlsAttacher::new()
    };

    let export_stats = Arc::new(ExportStats::default());
    let (spans, exporter) = export::spawn(&cli.export, export_stats.clone())?;
    tracing::info!("exporting spans to {}", exporter.description());

    let redact = cli
        .span_data
        .redact_options(!cli.keep_query_values)
        .map_err(|e| anyhow::anyhow!(e))?;
    let (request_headers, response_headers, warnings) = cli.span_data.captured_headers();
    for w in warnings {
        tracing::warn!("{w}");
    }
    // The parsers keep only the headers the tracer uses: these too.
    let captured: Vec<String> = request_headers
        .iter()
        .chain(&response_headers)
        .cloned()
        .collect();
    tracer_protocol::headers::keep_also(&captured);
    tracing::info!(
        sampler = ?sampling.head.kind,
        ratio = sampling.head.ratio,
        tail_policies = sampling.policies.any(),
        "head sampling"
    );
    let mut pipeline = Pipeline::new(redact, &cli.metrics.options()?, sampling, spans);
    let processes = ProcessTable::new(None, process::resource_attributes_from_env());
    let kube = kubernetes::start(&cli.kubernetes, processes.host_name()).await?;
    pipeline = pipeline.with_peer_names(PeerNames::new(kube.clone()));
    let mut assembler = SpanAssembler::new(
        processes.with_kubernetes(kube.clone()),
        Clock::measure(),
        SpanOptions::default().with_headers(&request_headers, &response_headers),
        cli.table_limits(),
    )
    .with_parent_resolver(nat_lookups(&cli, parents));
    let agent_counters = Arc::new(AgentCounters::new(start_unix_ns));
    let metrics_export_stats = Arc::new(MetricsExportStats::new(start_unix_ns));
    // What every metric reader exports: span metrics (unless off), then the agent's own.
    let mut metric_sources: MetricSources = pipeline.metric_source().into_iter().collect();
    metric_sources.push(agent_counters.clone());
    metric_sources.push(metrics_export_stats.clone());
    // The node-local view: its service map reads the span metrics' service graph.
    let recent = Arc::new(RecentStore::new(cli.ui.limits(), unix_now_ns()));
    let ui = ui::start(&cli.ui, recent.clone(), metric_sources.clone())?;
    if let Some(ui) = &ui {
        pipeline = pipeline.with_recent(RecentTraces::new(recent));
        tracing::info!(
            "node-local view: {} (in a terminal: tracer top --connect {})",
            ui.url(),
            ui.addr
        );
    }
    let prometheus_endpoint = match prometheus_listeners {
        Some(l) => {
            let endpoint = prometheus::serve(l, metric_sources.clone())?;
            tracing::info!("serving metrics at {}", endpoint.url());
            Some(endpoint)
        }
        None => None,
    };
    let otlp_metrics = match metrics_config.otlp {
        Some(cfg) => {
            let handle = otlp_metrics::spawn(cfg, metric_sources, metrics_export_stats)?;
            tracing::info!("exporting metrics to {}", handle.description());
            Some(handle)
        }
        None => None,
    };
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
                drain_ring(guard.get_inner_mut(), &mut recorder, &mut assembler, &mut tls, &mut |s| pipeline.on_span(s)).await;
                guard.clear_ready();
            }
            _ = drain.tick() => {
                drain_ring(ring.get_mut(), &mut recorder, &mut assembler, &mut tls, &mut |s| pipeline.on_span(s)).await;
                tls.flush_backlog();
            }
            _ = tick.tick() => {
                assembler.tick(Clock::monotonic_now(), &mut |s| pipeline.on_span(s));
                let now = unix_now_ns();
                pipeline.tick(now);
                let readings = read_counters(&capture, &assembler, &tls, &export_stats, kube.as_deref(), pipeline.sampling_stats());
                agent_counters.publish(&readings, now);
                if stats_every.is_some_and(|every| last_stats.elapsed() >= every) {
                    last_stats = Instant::now();
                    log_stats("periodic", &readings);
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
    )
    .await;
    // Held traces are decided now (the final counters count them).
    pipeline.finish();
    let readings = read_counters(
        &capture,
        &assembler,
        &tls,
        &export_stats,
        kube.as_deref(),
        pipeline.sampling_stats(),
    );
    agent_counters.publish(&readings, unix_now_ns());
    log_stats("final", &readings);
    tls.shutdown();
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
    if let Some(m) = otlp_metrics {
        m.shutdown().await;
    }
    if let Some(p) = prometheus_endpoint {
        p.shutdown().await;
    }
    Ok(())
}

fn unix_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Ring-buffer records taken per turn of the event loop. The export task runs on the same
/// thread, between turns: draining a burst whole would fill the export queue (its spans
/// dropped, counted) before the exporter could take any.
const RECORDS_PER_TURN: usize = 1024;

/// Decodes every record waiting in the ring buffer and hands each to the TLS attacher and the
/// span assembler (the raw record to the recorder), [`RECORDS_PER_TURN`] at a time, yielding
/// to the other tasks between turns.
async fn drain_ring(
    ring: &mut RingBuf<MapData>,
    recorder: &mut Option<Recorder>,
    assembler: &mut SpanAssembler,
    tls: &mut TlsAttacher,
    emit: &mut impl FnMut(Span),
) {
    while drain_turn(ring, recorder, assembler, tls, emit) {
        tokio::task::yield_now().await;
    }
}

/// One turn of [`drain_ring`]: true when records were left.
fn drain_turn(
    ring: &mut RingBuf<MapData>,
    recorder: &mut Option<Recorder>,
    assembler: &mut SpanAssembler,
    tls: &mut TlsAttacher,
    emit: &mut impl FnMut(Span),
) -> bool {
    for _ in 0..RECORDS_PER_TURN {
        let Some(record) = ring.next() else {
            return false;
        };
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
    true
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

/// The resolver with conntrack lookups when they are on and the kernel answers them (one line
/// says which).
fn nat_lookups(cli: &Cli, parents: ParentResolver) -> ParentResolver {
    if !cli.nat_lookup {
        return parents;
    }
    match Conntrack::open(NAT_LOOKUP_TIMEOUT) {
        Ok(ct) => {
            tracing::info!("NAT lookups through conntrack on (links through Service IPs)");
            parents.with_nat(Box::new(ct))
        }
        Err(e) => {
            tracing::warn!(
                "NAT lookups off: conntrack netlink unusable ({e}; needs CAP_NET_ADMIN); \
                 same-node links through Service IPs are missing"
            );
            parents
        }
    }
}

/// The kernel answers a conntrack GET within its `send`: this only bounds a misbehaving one.
const NAT_LOOKUP_TIMEOUT: Duration = Duration::from_millis(5);

/// Every counter of the agent, read once per tick: logged by [`log_stats`] and published as
/// metrics (`agent_counters`, where each name needs its metric description).
fn read_counters(
    capture: &Capture,
    assembler: &SpanAssembler,
    tls: &TlsAttacher,
    export: &ExportStats,
    kube: Option<&kubernetes::Store>,
    sampling: SamplingStats,
) -> CounterReadings {
    let ev = assembler.stats();
    let conns = assembler.conns.stats();
    let parse = assembler.conns.parse_stats();
    let h2 = assembler.conns.h2_stats();
    let ex = export.snapshot();
    let links = assembler.parent_stats();
    let tls = tls.stats();
    let mut counters = vec![
        ("events", ev.events),
        ("data_events", ev.data_events),
        ("malformed", ev.malformed),
        ("spans", ev.spans),
        ("conns_open", conns.open),
        ("conns_opened", conns.opened),
        ("conns_closed", conns.closed),
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
        ("nat_lookups", links.nat_lookups),
        ("nat_resolved", links.nat_resolved),
        ("nat_lookup_failed", links.nat_lookup_failed),
        ("nat_linked", links.nat_linked),
        ("forwarded_linked", links.forwarded_linked),
        ("forwarded_rewritten", links.forwarded_rewritten),
        ("connection_won", links.connection_won),
        ("tls_files_attached", tls.files_attached),
        ("tls_attach_failed", tls.attach_failed),
        ("tls_unsupported", tls.unsupported),
        ("tls_queue_full", tls.queue_full),
        ("tls_notes_dropped", tls.notes_dropped),
        ("tls_detached", tls.detached),
        ("exported", ex.spans_exported),
        ("export_failed", ex.spans_failed),
        ("export_queue_full", ex.spans_dropped_queue_full),
        ("queue_len", ex.queue_len),
    ];
    counters.extend(assembler.conns.db_losses().readings());
    CounterReadings {
        counters,
        kube: kube.map(|k| kubernetes::counters(&k.stats)),
        sampling,
        kernel_drops: capture.drops().map_err(|e| e.to_string()),
        injection: capture
            .injecting
            .then(|| capture.inject_counts().map_err(|e| e.to_string())),
    }
}

/// Logs every counter twice: the human line (`{when} counters; ...`, kernel drops only where
/// not zero) and, beside it, the same counters under the same names as one JSON object
/// (`{when} stats {...}`) for scripts and tests (see the README's counters section).
fn log_stats(when: &str, readings: &CounterReadings) {
    let CounterReadings {
        counters,
        kernel_drops: drops,
        injection,
        kube,
        sampling,
    } = readings;
    // The Kubernetes watcher's, when it runs (their JSON on a line of their own).
    let human_kube = kube.map_or_else(String::new, |c| {
        format!(" {}", name_values(c.iter().copied()))
    });

    let human_drops = match &drops {
        Ok(d) => Some(name_values(d.iter().filter(|(_, v)| **v > 0))).filter(|s| !s.is_empty()),
        Err(e) => Some(format!("unavailable ({e})")),
    };
    let human_injection = match &injection {
        None => "off".to_owned(),
        Some(Ok(c)) => name_values(c),
        Some(Err(e)) => format!("unavailable ({e})"),
    };
    let sampling = sampling.named();
    tracing::info!(
        "{when} counters; kernel drops: {}; injection: {human_injection}; sampling: {} {}{human_kube}",
        human_drops.as_deref().unwrap_or("none"),
        name_values(sampling.iter().filter(|(_, v)| *v > 0).map(|(k, v)| (k, v))),
        name_values(counters.iter().copied())
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
        (
            "sampling",
            json_object(sampling.iter().map(|(k, v)| (k, v))),
        ),
    ]));
    tracing::info!("{when} stats {stats}");
    if let Some(c) = kube {
        tracing::info!("{when} kubernetes stats {}", json_object(c.iter().copied()));
    }
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
