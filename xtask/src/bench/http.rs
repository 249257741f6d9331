//! The HTTP/1 benchmark: nginx saturated by wrk (throughput), then driven at a fixed rate by
//! oha (latency, coverage, agent cost), untraced and traced rounds interleaved; then the
//! pipeline replay.
use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};
use serde_json::json;
use test_kit::TempDir;

use super::{
    Args, RATE,
    agent::Agent,
    bpf_stats::{self, KernelCost, Snapshot, StatsOn},
    connections::{ConnMemory, idle_connections},
    load::{Oha, oha, tcp_segments_sent, wrk},
    nginx::Nginx,
    pipeline::pipeline,
    profile::{self, Profile},
    receiver::Receiver,
    recording::{RECORDING, record, recording_decodes},
    report::{
        Figure, busy_cpus, coverage_note, cpus, median, print_other_work, print_table, run_info,
        save, unix_time,
    },
    sampled_replay::sampled_replay,
    settle,
};
use crate::util::{self, step};

/// `cargo xtask bench` (without `--grpc`), or only the recording with `--record`.
pub(super) fn run(args: &Args, tracer: &Path, started: Instant) -> Result<()> {
    let root = util::workspace_root();
    let recording = root.join(RECORDING);
    if args.record || !recording.exists() {
        record(tracer, &recording)?;
        if args.record {
            return Ok(());
        }
    }
    // Compile the criterion benchmark now, so compiling never overlaps a measurement.
    let replays: &[&str] = if args.live_only {
        &[]
    } else {
        &["pipeline", "sampled_replay"]
    };
    for bench in replays {
        util::cargo(&["bench", "-p", "tracer-user", "--bench", bench, "--no-run"])?;
    }
    if !args.live_only && !recording_decodes()? {
        step(format!(
            "{RECORDING} no longer decodes with this build's event layout (tracer-common changed): \
             re-recording it (commit the new file)"
        ));
        record(tracer, &recording)?;
        ensure!(
            recording_decodes()?,
            "a fresh recording does not decode either"
        );
    }

    let setup_took = started.elapsed();
    let busy_before = busy_cpus();
    let measuring = Instant::now();
    let dir = TempDir::create("bench-run")?;
    let receiver = Receiver::start()?;
    let nginx = Nginx::start(&dir, false, args.tls)?;
    let scheme = if args.tls { "https" } else { "http" };
    let mode = if args.tls { "tls" } else { "http" };
    let target = format!("{scheme}://127.0.0.1:{}/", nginx.port);
    let endpoint = format!("http://127.0.0.1:{}", receiver.port);
    let agent = |record: Option<&Path>| {
        Agent::start(
            tracer,
            nginx.port,
            Some(&endpoint),
            record,
            &args.agent_args,
        )
    };

    step("warming up nginx (2 s, untraced)");
    wrk(&target, 2)?;

    // ---- throughput: A B A B ... ----
    let mut tp_untraced = Vec::new();
    let mut tp_traced = Vec::new();
    let mut tp_rounds = Vec::new();
    let mut tp_segments = Vec::new();
    for pair in 1..=args.pairs {
        step(format!("throughput pair {pair}/{}: untraced", args.pairs));
        let segs0 = tcp_segments_sent()?;
        let a = wrk(&target, args.secs)?;
        let segs_a = (tcp_segments_sent()? - segs0) as f64 / a.requests as f64;
        step(format!("throughput pair {pair}/{}: traced", args.pairs));
        let before = receiver.counts();
        let ag = agent(None)?;
        let (cpu0, cs0) = (ag.cpu_seconds()?, ag.ctx_switches());
        let segs0 = tcp_segments_sent()?;
        let b = wrk(&target, args.secs)?;
        // The export to the receiver is loopback traffic too: counted in the traced figure.
        let segs_b = (tcp_segments_sent()? - segs0) as f64 / b.requests as f64;
        settle();
        let cpu = ag.cpu_seconds()? - cpu0;
        let cs = ag.ctx_switches() - cs0;
        let rss = ag.peak_rss_kib()?;
        let counters = ag.stop()?;
        let got = receiver.counts().since(&before);
        step(format!(
            "  untraced {:.0} req/s, traced {:.0} req/s ({:.3}); TCP segments per request {segs_a:.2} -> {segs_b:.2}; traced: {} server spans for {} requests, losses: {}",
            a.rps,
            b.rps,
            b.rps / a.rps,
            got.server,
            b.requests,
            counters.losses_text()
        ));
        tp_untraced.push(a.rps);
        tp_traced.push(b.rps);
        tp_segments.push((segs_a, segs_b));
        tp_rounds.push(json!({
            "untraced": a.json(),
            "traced": b.json(),
            "ratio": b.rps / a.rps,
            "tcp_segments_per_request": { "untraced": segs_a, "traced": segs_b },
            "server_spans": got.server,
            "client_spans": got.client,
            "coverage": got.server as f64 / b.requests as f64,
            "agent_cpu_us_per_request": cpu * 1e6 / b.requests as f64,
            "agent_context_switches_per_request": cs as f64 / b.requests as f64,
            "agent_peak_rss_kib": rss,
            "agent": counters.json(),
        }));
    }

    // ---- latency, coverage and agent cost at a fixed rate: A B A B ... ----
    let mut lat_untraced = Vec::new();
    let mut lat_traced = Vec::new();
    let mut coverage = Vec::new();
    let mut cpu_per_req = Vec::new();
    let mut wakeups = Vec::new();
    let mut rss_kib = Vec::new();
    let mut lat_rounds = Vec::new();
    let mut all_losses = Vec::new();
    let mut kernel_rounds = Vec::new();
    for pair in 1..=args.pairs {
        step(format!(
            "latency pair {pair}/{}: untraced, {RATE} req/s",
            args.pairs
        ));
        let a = oha(&target, args.secs)?;
        step(format!(
            "latency pair {pair}/{}: traced, {RATE} req/s",
            args.pairs
        ));
        let before = receiver.counts();
        // The kernel's BPF statistics only while this traced round runs.
        let stats = StatsOn::enable();
        let ag = agent(None)?;
        let (cpu0, cs0, faults0) = (ag.cpu_seconds()?, ag.ctx_switches(), ag.minor_faults()?);
        let progs0 = Snapshot::take(ag.pid())?;
        let b = oha(&target, args.secs)?;
        settle();
        let progs1 = Snapshot::take(ag.pid())?;
        let cpu = ag.cpu_seconds()? - cpu0;
        let faults = (ag.minor_faults()? - faults0) as f64 / b.requests as f64;
        let cs = ag.ctx_switches() - cs0;
        let rss = ag.peak_rss_kib()?;
        let counters = ag.stop()?;
        let kernel = match stats {
            Ok(on) => {
                drop(on);
                let k = KernelCost::between(&progs0, &progs1, b.requests);
                step(format!(
                    "  kernel: {:.2} µs of BPF programs per request",
                    k.ns_per_request / 1000.0
                ));
                let json = k.json();
                kernel_rounds.push((k, b.requests));
                json
            }
            Err(e) => {
                step(format!("  no kernel figure: {e:#}"));
                json!(null)
            }
        };
        let got = receiver.counts().since(&before);
        let cov = got.server as f64 / b.requests as f64;
        let cpu_us = cpu * 1e6 / b.requests as f64;
        step(format!(
            "  p50 {:.1} → {:.1} µs, p99 {:.1} → {:.1} µs; {} server spans / {} requests = {:.4}%; agent {:.2} µs CPU/req, {:.2} wake-ups/req, {:.3} page faults/req, peak RSS {:.1} MiB; losses: {}",
            a.p50_us,
            b.p50_us,
            a.p99_us,
            b.p99_us,
            got.server,
            b.requests,
            cov * 100.0,
            cpu_us,
            cs as f64 / b.requests as f64,
            faults,
            rss as f64 / 1024.0,
            counters.losses_text()
        ));
        lat_untraced.push(a.clone());
        lat_traced.push(b.clone());
        coverage.push(cov);
        cpu_per_req.push(cpu_us);
        wakeups.push(cs as f64 / b.requests as f64);
        rss_kib.push(rss as f64);
        all_losses.push(counters.losses_text());
        lat_rounds.push(json!({
            "untraced": a.json(),
            "traced": b.json(),
            "server_spans": got.server,
            "client_spans": got.client,
            "spans_by_service_kind": got.by_service_kind(),
            "coverage": cov,
            "agent_cpu_us_per_request": cpu_us,
            "agent_context_switches_per_request": cs as f64 / b.requests as f64,
            "agent_minor_faults_per_request": faults,
            "agent_peak_rss_kib": rss,
            "agent": counters.json(),
            "kernel": kernel,
        }));
    }

    // ---- the agent's profile, in a traced round of its own ----
    let mut profile = None;
    if (!args.live_only || args.profile) && profile::available() {
        step(format!(
            "profile round: traced, {RATE} req/s, perf record on the agent"
        ));
        let ag = agent(None)?;
        let recording = profile::start(ag.pid(), &dir.path().join("perf.data"))?;
        oha(&target, args.secs)?;
        let report = util::workspace_root()
            .join("target/bench")
            .join(format!("profile-{mode}-{}.txt", unix_time()?));
        std::fs::create_dir_all(report.parent().expect("a file path"))?;
        profile = Some(recording.finish(&report)?);
        ag.stop()?;
    }
    drop(nginx);
    drop(receiver);
    drop(dir);
    // ---- memory per tracked connection (plain HTTP only: the figure is the same with TLS) ----
    let conns = if args.tls || args.live_only {
        None
    } else {
        Some(idle_connections(tracer, &args.agent_args)?)
    };
    let live_took = measuring.elapsed();
    let busy_after = busy_cpus();

    // ---- pipeline replay (criterion) ----
    let (pipeline, sampled) = if args.live_only {
        (None, None)
    } else {
        (Some(pipeline(&recording)?), Some(sampled_replay()?))
    };

    // ---- figures ----
    let ratios: Vec<f64> = tp_traced
        .iter()
        .zip(&tp_untraced)
        .map(|(b, a)| b / a)
        .collect();
    let p50 = |v: &[Oha]| median(&v.iter().map(|o| o.p50_us).collect::<Vec<_>>());
    let p99 = |v: &[Oha]| median(&v.iter().map(|o| o.p99_us).collect::<Vec<_>>());
    // The targets are those of the cost issue (kernel ≤ 3 µs, agent ≤ 5 µs per request).
    let mut figures = vec![
        Figure::min(
            "throughput traced/untraced",
            median(&ratios),
            0.65,
            "",
            format!(
                "median of {} pairs; untraced {:.0} req/s, traced {:.0} req/s; TCP segments per \
                 request untraced {:.2}, traced {:.2}",
                ratios.len(),
                median(&tp_untraced),
                median(&tp_traced),
                median(&tp_segments.iter().map(|s| s.0).collect::<Vec<_>>()),
                median(&tp_segments.iter().map(|s| s.1).collect::<Vec<_>>()),
            ),
        ),
        Figure::max(
            "p50 added at 5k req/s",
            p50(&lat_traced) - p50(&lat_untraced),
            10.0,
            "µs",
            format!(
                "untraced {:.1} µs, traced {:.1} µs",
                p50(&lat_untraced),
                p50(&lat_traced)
            ),
        ),
        Figure::max(
            "p99 added at 5k req/s",
            p99(&lat_traced) - p99(&lat_untraced),
            200.0,
            "µs",
            format!(
                "untraced {:.1} µs, traced {:.1} µs",
                p99(&lat_untraced),
                p99(&lat_traced)
            ),
        ),
        Figure::min(
            "coverage at 5k req/s",
            median(&coverage) * 100.0,
            99.9,
            "%",
            coverage_note("server spans / requests", &coverage, &all_losses),
        ),
        Figure::max(
            "agent CPU per request",
            median(&cpu_per_req),
            5.0,
            "µs",
            format!(
                "utime+stime of the agent / requests (server and client side traced); {:.2} context switches per request",
                median(&wakeups)
            ),
        ),
        Figure::max(
            "agent peak RSS",
            rss_kib.iter().copied().fold(0.0, f64::max) / 1024.0,
            48.0,
            "MiB",
            "VmHWM, highest over the traced rounds".into(),
        ),
    ];
    figures.extend(bpf_stats::figure(
        "kernel BPF time per request",
        &kernel_rounds,
        "request",
    ));
    figures.extend(conns.iter().flat_map(ConnMemory::figures));
    figures.extend(pipeline.iter().flat_map(|p| p.figures()));
    figures.extend(sampled.iter().flat_map(|s| s.figures()));

    let total = started.elapsed();
    print_table(&figures);
    if let Some(p) = &profile {
        p.print();
    }
    print_other_work(busy_before, busy_after);
    let now = unix_time()?;
    let report = json!({
        "unix_time": now,
        "mode": mode,
        "run": run_info(),
        "host": { "cpus": cpus(), "other_busy_cpus_before": busy_before, "other_busy_cpus_after": busy_after },
        "settings": {
            "pairs": args.pairs, "secs_per_round": args.secs, "rate": RATE, "tls": args.tls,
            "wrk": "-t1 -c16 keep-alive", "oha": format!("-q {RATE} -c 16 --latency-correction"),
            "agent_args": args.agent_args,
        },
        "figures": figures.iter().map(Figure::json).collect::<Vec<_>>(),
        "throughput_rounds": tp_rounds,
        "latency_rounds": lat_rounds,
        "idle_connections": conns.as_ref().map(ConnMemory::json),
        "pipeline": pipeline.as_ref().map(|p| p.json()),
        "sampled_replay": sampled.as_ref().map(|s| s.json()),
        "agent_profile": profile.as_ref().map(Profile::json),
        "seconds": { "setup": setup_took.as_secs_f64(), "live": live_took.as_secs_f64(), "total": total.as_secs_f64() },
    });
    // A live-only run is a quick comparison, not the full figure set `latest.json` stands for.
    let (stem, latest) = match (args.tls, args.live_only) {
        (true, false) => ("bench-tls", "latest-tls"),
        (true, true) => ("bench-tls-live", "latest-tls-live"),
        (false, false) => ("bench", "latest"),
        (false, true) => ("bench-live", "latest-live"),
    };
    let replay_took = pipeline.as_ref().map_or(Duration::ZERO, |p| p.took)
        + sampled.as_ref().map_or(Duration::ZERO, |s| s.took);
    save(
        &report,
        stem,
        latest,
        now,
        total,
        live_took + replay_took,
        &figures,
    )
}
