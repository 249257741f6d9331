//! `cargo xtask bench`: what tracing costs, measured side by side in one run.
//!
//! - Throughput: nginx (1 worker, tiny `return 200`) saturated by `wrk` with keep-alive,
//!   untraced and traced rounds interleaved (A B A B ...): traced/untraced requests per second.
//! - Latency at a fixed rate (5k req/s, `oha` open loop with latency correction): p50 and p99
//!   added by tracing.
//! - Coverage at that rate: server spans received over OTLP / requests sent, with the agent's
//!   own loss counters for every round.
//! - Agent cost under that load: CPU per request (utime+stime of the agent over the load
//!   window) and peak RSS (VmHWM).
//! - Pipeline throughput without the kernel: the criterion benchmark `tracer-user/benches/
//!   pipeline.rs` replays a recorded event stream through reassembly → parsing → spans →
//!   OTLP encoding (`cargo xtask bench --record` re-records the stream from live traffic).
//!
//! - gRPC (`--grpc`, instead of the above): the grpc-go peer (tests/servers/grpcpeer) serving
//!   unary calls that `h2load` drives over h2c, untraced and traced rounds interleaved:
//!   throughput ratio, coverage (SERVER spans with `grpc-status` 0 / calls), agent CPU per call
//!   and peak RSS; written as `target/bench/bench-grpc-<unix time>.json` and `latest-grpc.json`.
//!
//! The traced rounds export to a counting OTLP/gRPC receiver that runs inside this process.
//! Figures are medians over the rounds, printed as a table and written as JSON to
//! `target/bench/bench-<unix time>.json` and `target/bench/latest.json`. A missed target is a
//! finding (printed as MISSED), never an error: the task fails only when something breaks.
//! Every process it starts (nginx, the agent, load generators) is stopped on every path.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail, ensure};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
};
use serde_json::{Value as Json, json};

use crate::util::{self, step};

/// Where the pipeline benchmark's recorded event stream lives (commit-friendly size).
const RECORDING: &str = "tracer-user/benches/data/events.bin";
const RECORDING_MAX_BYTES: u64 = 2 << 20;
/// Fixed request rate of the latency and coverage rounds.
const RATE: u32 = 5000;
/// OTLP span kinds.
const KIND_SERVER: i32 = 2;
const KIND_CLIENT: i32 = 3;

#[derive(clap::Args)]
pub struct Args {
    /// Untraced/traced pairs per live figure.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pairs: u32,
    /// Seconds of load per round.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=120))]
    secs: u64,
    /// Only re-record the pipeline benchmark's event stream (tracer-user/benches/data/) from
    /// live traffic, then stop.
    #[arg(long)]
    record: bool,
    /// nginx serves HTTPS (self-signed certificate, HTTP/1.1) and wrk and oha connect over
    /// TLS: the cost of tracing through the TLS library probes.
    #[arg(long)]
    tls: bool,
    /// gRPC instead of HTTP/1: the grpc-go peer (tests/servers/grpcpeer, built under
    /// target/bench/grpcpeer) serving unary `demo.Greeter/SayHello` calls that `h2load` drives
    /// over h2c (4 connections, 10 streams each); throughput untraced and traced, coverage
    /// (server spans with `grpc-status` 0 per call), agent CPU per call and peak RSS.
    #[arg(long, conflicts_with_all = ["tls", "record"])]
    grpc: bool,
    /// Extra option for the traced agent (repeatable), e.g.
    /// `--agent-arg=--inject-traceparent` to measure injection.
    #[arg(long = "agent-arg", value_name = "ARG", allow_hyphen_values = true)]
    agent_args: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    crate::setup::bench_deps()?;
    let tracer = crate::build_agent()?;
    if args.grpc {
        return grpc(&args, &tracer, started);
    }
    let root = util::workspace_root();
    let recording = root.join(RECORDING);
    if args.record || !recording.exists() {
        record(&tracer, &recording)?;
        if args.record {
            return Ok(());
        }
    }
    // Compile the criterion benchmark now, so compiling never overlaps a measurement.
    util::cargo(&[
        "bench",
        "-p",
        "tracer-user",
        "--bench",
        "pipeline",
        "--no-run",
    ])?;
    if !recording_decodes()? {
        step(format!(
            "{RECORDING} no longer decodes with this build's event layout (tracer-common changed): \
             re-recording it (commit the new file)"
        ));
        record(&tracer, &recording)?;
        ensure!(
            recording_decodes()?,
            "a fresh recording does not decode either"
        );
    }

    let setup_took = started.elapsed();
    let busy_before = busy_cpus();
    let measuring = Instant::now();
    let dir = TempDir::new("run")?;
    let receiver = Receiver::start()?;
    let nginx = Nginx::start(&dir, false, args.tls)?;
    let scheme = if args.tls { "https" } else { "http" };
    let target = format!("{scheme}://127.0.0.1:{}/", nginx.port);
    let endpoint = format!("http://127.0.0.1:{}", receiver.port);
    let agent = |record: Option<&Path>| {
        Agent::start(
            &tracer,
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
    for pair in 1..=args.pairs {
        step(format!("throughput pair {pair}/{}: untraced", args.pairs));
        let a = wrk(&target, args.secs)?;
        step(format!("throughput pair {pair}/{}: traced", args.pairs));
        let before = receiver.counts();
        let ag = agent(None)?;
        let (cpu0, cs0) = (ag.cpu_seconds()?, ag.ctx_switches());
        let b = wrk(&target, args.secs)?;
        settle();
        let cpu = ag.cpu_seconds()? - cpu0;
        let cs = ag.ctx_switches() - cs0;
        let rss = ag.peak_rss_kib()?;
        let counters = ag.stop()?;
        let got = receiver.counts().since(&before);
        step(format!(
            "  untraced {:.0} req/s, traced {:.0} req/s ({:.3}); traced: {} server spans for {} requests, losses: {}",
            a.rps,
            b.rps,
            b.rps / a.rps,
            got.server,
            b.requests,
            counters.losses_text()
        ));
        tp_untraced.push(a.rps);
        tp_traced.push(b.rps);
        tp_rounds.push(json!({
            "untraced": a.json(),
            "traced": b.json(),
            "ratio": b.rps / a.rps,
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
        let ag = agent(None)?;
        let (cpu0, cs0) = (ag.cpu_seconds()?, ag.ctx_switches());
        let b = oha(&target, args.secs)?;
        settle();
        let cpu = ag.cpu_seconds()? - cpu0;
        let cs = ag.ctx_switches() - cs0;
        let rss = ag.peak_rss_kib()?;
        let counters = ag.stop()?;
        let got = receiver.counts().since(&before);
        let cov = got.server as f64 / b.requests as f64;
        let cpu_us = cpu * 1e6 / b.requests as f64;
        step(format!(
            "  p50 {:.1} → {:.1} µs, p99 {:.1} → {:.1} µs; {} server spans / {} requests = {:.4}%; agent {:.2} µs CPU/req, {:.2} wake-ups/req, peak RSS {:.1} MiB; losses: {}",
            a.p50_us,
            b.p50_us,
            a.p99_us,
            b.p99_us,
            got.server,
            b.requests,
            cov * 100.0,
            cpu_us,
            cs as f64 / b.requests as f64,
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
            "agent_peak_rss_kib": rss,
            "agent": counters.json(),
        }));
    }
    drop(nginx);
    drop(receiver);
    drop(dir);
    let live_took = measuring.elapsed();
    let busy_after = busy_cpus();

    // ---- pipeline replay (criterion) ----
    let pipeline = pipeline(&recording)?;

    // ---- figures ----
    let ratios: Vec<f64> = tp_traced
        .iter()
        .zip(&tp_untraced)
        .map(|(b, a)| b / a)
        .collect();
    let p50 = |v: &[Oha]| median(&v.iter().map(|o| o.p50_us).collect::<Vec<_>>());
    let p99 = |v: &[Oha]| median(&v.iter().map(|o| o.p99_us).collect::<Vec<_>>());
    let figures = vec![
        Figure::min(
            "throughput traced/untraced",
            median(&ratios),
            0.95,
            "",
            format!(
                "median of {} pairs; untraced {:.0} req/s, traced {:.0} req/s",
                ratios.len(),
                median(&tp_untraced),
                median(&tp_traced)
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
            50.0,
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
            format!(
                "server spans / requests; per round {}; losses {}",
                coverage
                    .iter()
                    .map(|c| format!("{:.3}%", c * 100.0))
                    .collect::<Vec<_>>()
                    .join(" "),
                all_losses.join(" | ")
            ),
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
            64.0,
            "MiB",
            "VmHWM, highest over the traced rounds".into(),
        ),
        Figure::min(
            "pipeline replay",
            pipeline.events_per_sec / 1e6,
            1.0,
            "M events/s",
            format!(
                "{} events, {} spans per pass, one core; as recorded (pids gone): {:.2} M events/s",
                pipeline.events,
                pipeline.spans,
                pipeline.recorded_pids_events_per_sec / 1e6
            ),
        ),
    ];

    let total = started.elapsed();
    print_table(&figures);
    print_other_work(busy_before, busy_after);
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let report = json!({
        "unix_time": now,
        "host": { "cpus": cpus(), "other_busy_cpus_before": busy_before, "other_busy_cpus_after": busy_after },
        "settings": {
            "pairs": args.pairs, "secs_per_round": args.secs, "rate": RATE, "tls": args.tls,
            "wrk": "-t1 -c16 keep-alive", "oha": format!("-q {RATE} -c 16 --latency-correction"),
        },
        "figures": figures.iter().map(Figure::json).collect::<Vec<_>>(),
        "throughput_rounds": tp_rounds,
        "latency_rounds": lat_rounds,
        "pipeline": {
            "events_per_pass": pipeline.events,
            "spans_per_pass": pipeline.spans,
            "events_per_sec": pipeline.events_per_sec,
            "recorded_pids_events_per_sec": pipeline.recorded_pids_events_per_sec,
            "recording": RECORDING,
        },
        "seconds": { "setup": setup_took.as_secs_f64(), "live": live_took.as_secs_f64(), "total": total.as_secs_f64() },
    });
    let out_dir = root.join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let text = serde_json::to_string_pretty(&report)?;
    let path = out_dir.join(format!("bench-{now}.json"));
    std::fs::write(&path, &text)?;
    std::fs::write(out_dir.join("latest.json"), &text)?;
    println!(
        "\nwritten {} (and latest.json); {:.0} s in all, {:.0} s of it measuring",
        path.display(),
        total.as_secs_f64(),
        (live_took + pipeline.took).as_secs_f64()
    );
    let missed: Vec<&str> = figures
        .iter()
        .filter(|f| !f.pass())
        .map(|f| f.name)
        .collect();
    if !missed.is_empty() {
        println!("MISSED: {}", missed.join(", "));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// gRPC (`--grpc`)

/// Streams per h2load connection and connections: many calls in flight on few connections,
/// yet at most 10 responses (~60 bytes each) queued per connection, so no read or write is
/// larger than the kernel's 4096-byte capture limit (past it an HTTP/2 direction loses sync).
const GRPC_CONNS: u32 = 4;
const GRPC_STREAMS: u32 = 10;

/// `cargo xtask bench --grpc`: grpc-go's server (`grpcpeer server`) saturated by h2load unary
/// calls, untraced and traced rounds interleaved, as for nginx. Each traced round exports to
/// the counting receiver: coverage is the calls whose SERVER span carries `grpc-status` 0.
fn grpc(args: &Args, tracer: &Path, started: Instant) -> Result<()> {
    crate::setup::grpc_bench_deps()?;
    let root = util::workspace_root();
    let out = root.join("target/bench/grpcpeer");
    std::fs::create_dir_all(&out)?;
    let mut build = Command::new(root.join("tests/servers/grpcpeer/build.sh"));
    build.arg(&out);
    step(format!("$ {}", util::describe(&build)));
    run_bounded("grpcpeer build", &mut build, Duration::from_secs(300))?;
    let peer = out.join("grpcpeer");
    // One gRPC message (not compressed, 4-byte big-endian length) holding
    // `HelloRequest { name: "world" }`: field 1, length-delimited, 5 bytes.
    let dir = TempDir::new("grpc")?;
    let body = dir.0.join("hello.bin");
    let message = [&[0x0a, 0x05][..], b"world"].concat();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    std::fs::write(&body, &frame)?;

    let setup_took = started.elapsed();
    let busy_before = busy_cpus();
    let measuring = Instant::now();
    let receiver = Receiver::start()?;
    let port = free_port()?;
    let mut cmd = Command::new(&peer);
    cmd.args(["server", &port.to_string()])
        .stdout(Stdio::null());
    step(format!("$ {}", util::describe(&cmd)));
    let mut server = Proc::spawn("grpcpeer server", &mut cmd)?;
    wait_for_port(port, &mut server, Duration::from_secs(10))?;
    let url = format!("http://127.0.0.1:{port}/demo.Greeter/SayHello");
    let endpoint = format!("http://127.0.0.1:{}", receiver.port);

    step("warming up the gRPC server (untraced); its rate sizes the rounds");
    let warm = h2load_grpc(&url, &body, 20_000, None)?;
    // Rounds of a fixed number of calls (exact coverage: every call sent is counted), sized
    // to last about `secs` untraced.
    let calls = ((warm.rps * args.secs as f64) as u64).clamp(10_000, 2_000_000);
    step(format!(
        "{:.0} calls/s untraced: {calls} calls per round",
        warm.rps
    ));

    // One untraced/traced pair: `rate` calls/s in all (open loop), or as fast as possible.
    let pair = |what: &str, calls: u64, rate: Option<u32>| -> Result<GrpcPair> {
        step(format!("{what}: untraced"));
        let a = h2load_grpc(&url, &body, calls, rate)?;
        step(format!("{what}: traced"));
        let before = receiver.counts();
        let ag = Agent::start(tracer, port, Some(&endpoint), None, &args.agent_args)?;
        let (cpu0, cs0) = (ag.cpu_seconds()?, ag.ctx_switches());
        let b = h2load_grpc(&url, &body, calls, rate)?;
        settle();
        let cpu = ag.cpu_seconds()? - cpu0;
        let cs = ag.ctx_switches() - cs0;
        let rss = ag.peak_rss_kib()?;
        let counters = ag.stop()?;
        let got = receiver.counts().since(&before);
        let server_ok = got.grpc(KIND_SERVER, Some(0));
        let client_ok = got.grpc(KIND_CLIENT, Some(0));
        let not_ok =
            got.grpc(KIND_SERVER, None) - server_ok + got.grpc(KIND_CLIENT, None) - client_ok;
        let calls = b.requests as f64;
        let p = GrpcPair {
            untraced_rps: a.rps,
            traced_rps: b.rps,
            ratio: b.rps / a.rps,
            coverage: server_ok as f64 / calls,
            cpu_us: cpu * 1e6 / calls,
            rss_kib: rss,
            losses: counters.losses_text(),
            json: json!({
                "untraced": a.json(),
                "traced": b.json(),
                "ratio": b.rps / a.rps,
                "server_spans": got.server,
                "client_spans": got.client,
                "server_spans_grpc_ok": server_ok,
                "client_spans_grpc_ok": client_ok,
                "spans_other_grpc_status": not_ok,
                "spans_by_service_kind": got.by_service_kind(),
                "coverage": server_ok as f64 / calls,
                "client_coverage": client_ok as f64 / calls,
                "agent_cpu_us_per_call": cpu * 1e6 / calls,
                "agent_context_switches_per_call": cs as f64 / calls,
                "agent_peak_rss_kib": rss,
                "agent": counters.json(),
            }),
        };
        step(format!(
            "  untraced {:.0} calls/s, traced {:.0} calls/s ({:.3}); {} server / {} client spans \
             for {} calls, grpc-status 0 on {server_ok} server / {client_ok} client spans, \
             other status {not_ok}; agent {:.2} µs CPU/call, peak RSS {:.1} MiB; losses: {}",
            a.rps,
            b.rps,
            p.ratio,
            got.server,
            got.client,
            b.requests,
            p.cpu_us,
            rss as f64 / 1024.0,
            p.losses
        ));
        Ok(p)
    };
    // ---- throughput: A B A B ... at saturation ----
    let mut tp = Vec::new();
    for i in 1..=args.pairs {
        let what = format!("gRPC throughput pair {i}/{}", args.pairs);
        tp.push(pair(&what, calls, None)?);
    }
    // ---- coverage and agent cost at a fixed rate: A B A B ... ----
    let mut fixed = Vec::new();
    for i in 1..=args.pairs {
        let what = format!("gRPC pair {i}/{} at {RATE} calls/s", args.pairs);
        fixed.push(pair(&what, u64::from(RATE) * args.secs, Some(RATE))?);
    }
    let of = |v: &[GrpcPair], f: fn(&GrpcPair) -> f64| v.iter().map(f).collect::<Vec<f64>>();
    let ratios = of(&tp, |p| p.ratio);
    let untraced = of(&tp, |p| p.untraced_rps);
    let traced = of(&tp, |p| p.traced_rps);
    let coverage = of(&fixed, |p| p.coverage);
    let cpu_per_call = of(&fixed, |p| p.cpu_us);
    let rss_kib = of(&fixed, |p| p.rss_kib as f64);
    let all_losses: Vec<String> = fixed.iter().map(|p| p.losses.clone()).collect();
    let rounds: Vec<Json> = tp.iter().map(|p| p.json.clone()).collect();
    let rate_rounds: Vec<Json> = fixed.iter().map(|p| p.json.clone()).collect();
    drop(server);
    drop(receiver);
    let live_took = measuring.elapsed();
    let busy_after = busy_cpus();

    let figures = vec![
        Figure::min(
            "gRPC throughput ratio",
            median(&ratios),
            0.95,
            "",
            format!(
                "traced/untraced, median of {} pairs; untraced {:.0} calls/s, traced {:.0} calls/s \
                 (grpc-go server, h2load -c {GRPC_CONNS} -m {GRPC_STREAMS} unary SayHello, h2c)",
                ratios.len(),
                median(&untraced),
                median(&traced)
            ),
        ),
        Figure::min(
            "gRPC coverage at 5k calls/s",
            median(&coverage) * 100.0,
            99.9,
            "%",
            format!(
                "SERVER spans with grpc-status 0 / calls; per round {}; losses {}",
                coverage
                    .iter()
                    .map(|c| format!("{:.3}%", c * 100.0))
                    .collect::<Vec<_>>()
                    .join(" "),
                all_losses.join(" | ")
            ),
        ),
        Figure::max(
            "agent CPU per gRPC call",
            median(&cpu_per_call),
            5.0,
            "µs",
            format!(
                "utime+stime of the agent / calls at {RATE} calls/s (server and client side traced)"
            ),
        ),
        Figure::max(
            "agent peak RSS (gRPC)",
            rss_kib.iter().copied().fold(0.0, f64::max) / 1024.0,
            64.0,
            "MiB",
            format!("VmHWM, highest over the traced rounds at {RATE} calls/s"),
        ),
    ];
    let total = started.elapsed();
    print_table(&figures);
    print_other_work(busy_before, busy_after);
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let report = json!({
        "unix_time": now,
        "mode": "grpc",
        "host": { "cpus": cpus(), "other_busy_cpus_before": busy_before, "other_busy_cpus_after": busy_after },
        "settings": {
            "pairs": args.pairs, "calls_per_throughput_round": calls, "warm_up_calls_per_sec": warm.rps,
            "rate": RATE, "calls_per_rate_round": u64::from(RATE) * args.secs,
            "h2load": format!("-c {GRPC_CONNS} -m {GRPC_STREAMS} -d <SayHello{{name: world}}> -H content-type: application/grpc -H te: trailers"),
            "agent_args": args.agent_args,
        },
        "figures": figures.iter().map(Figure::json).collect::<Vec<_>>(),
        "throughput_rounds": rounds,
        "rate_rounds": rate_rounds,
        "seconds": { "setup": setup_took.as_secs_f64(), "live": live_took.as_secs_f64(), "total": total.as_secs_f64() },
    });
    let out_dir = root.join("target/bench");
    let text = serde_json::to_string_pretty(&report)?;
    let path = out_dir.join(format!("bench-grpc-{now}.json"));
    std::fs::write(&path, &text)?;
    std::fs::write(out_dir.join("latest-grpc.json"), &text)?;
    println!(
        "\nwritten {} (and latest-grpc.json); {:.0} s in all, {:.0} s of it measuring",
        path.display(),
        total.as_secs_f64(),
        live_took.as_secs_f64()
    );
    let missed: Vec<&str> = figures
        .iter()
        .filter(|f| !f.pass())
        .map(|f| f.name)
        .collect();
    if !missed.is_empty() {
        println!("MISSED: {}", missed.join(", "));
    }
    Ok(())
}

/// One untraced/traced pair of the gRPC benchmark.
struct GrpcPair {
    untraced_rps: f64,
    traced_rps: f64,
    ratio: f64,
    /// SERVER spans with `grpc-status` 0 / calls of the traced round.
    coverage: f64,
    cpu_us: f64,
    rss_kib: u64,
    losses: String,
    json: Json,
}

/// `h2load` making `calls` unary gRPC calls (POST with the message in `body`) on
/// [`GRPC_CONNS`] connections × [`GRPC_STREAMS`] streams, at `rate` calls/s in all (h2load's
/// `--rps` per connection) or as fast as the server answers. Every call must succeed (HTTP 2xx;
/// the gRPC status is in the trailers, checked on the spans).
fn h2load_grpc(url: &str, body: &Path, calls: u64, rate: Option<u32>) -> Result<Wrk> {
    let mut cmd = Command::new("h2load");
    cmd.args(["-n", &calls.to_string()]).args([
        "-c",
        &GRPC_CONNS.to_string(),
        "-m",
        &GRPC_STREAMS.to_string(),
    ]);
    if let Some(rate) = rate {
        // Per connection.
        cmd.arg(format!("--rps={}", rate / GRPC_CONNS));
    }
    cmd.arg("-d")
        .arg(body)
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg(url);
    let out = run_bounded("h2load", &mut cmd, Duration::from_secs(300))?;
    // `finished in 1.23s, 8108.26 req/s, 414.77KB/s`
    let rps: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1)?.strip_suffix(" req/s")?.parse().ok())
        .with_context(|| format!("no req/s in h2load's output:\n{out}"))?;
    // `requests: N total, N started, N done, N succeeded, 0 failed, 0 errored, 0 timeout`
    let requests = |what: &str| -> Option<u64> {
        let line = out.lines().find_map(|l| l.strip_prefix("requests: "))?;
        line.split(", ")
            .find_map(|p| p.strip_suffix(what)?.trim().parse().ok())
    };
    let ok_2xx: Option<u64> = out
        .lines()
        .find_map(|l| l.strip_prefix("status codes: "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok());
    let (done, succeeded) = (requests(" done"), requests(" succeeded"));
    ensure!(
        done == Some(calls) && succeeded == Some(calls) && ok_2xx == Some(calls),
        "h2load: not every call succeeded with a 2xx (done {done:?}, succeeded {succeeded:?}, \
         2xx {ok_2xx:?} of {calls}):\n{out}"
    );
    Ok(Wrk {
        rps,
        requests: calls,
    })
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

/// How busy the machine is without us (nothing of the bench runs while this samples
/// `/proc/stat` for a second), in CPUs: other work disturbs every live figure.
fn busy_cpus() -> f64 {
    let sample = || -> Option<(f64, f64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let v: Vec<f64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|x| x.parse().ok())
            .collect();
        let total: f64 = v.iter().sum();
        let idle = v.get(3)? + v.get(4)?;
        Some((total, total - idle))
    };
    let Some((t0, b0)) = sample() else {
        return f64::NAN;
    };
    std::thread::sleep(Duration::from_secs(1));
    let Some((t1, b1)) = sample() else {
        return f64::NAN;
    };
    if t1 <= t0 {
        return f64::NAN;
    }
    (b1 - b0) / (t1 - t0) * cpus() as f64
}

/// Lets the agent take the last events and export the last batch after a load round.
fn settle() {
    std::thread::sleep(Duration::from_millis(1000));
}

// ---------------------------------------------------------------------------------------------
// Figures

struct Figure {
    name: &'static str,
    value: f64,
    target: f64,
    /// True: the value must be at least `target`; false: at most.
    at_least: bool,
    unit: &'static str,
    note: String,
}

impl Figure {
    fn min(name: &'static str, value: f64, target: f64, unit: &'static str, note: String) -> Self {
        Self {
            name,
            value,
            target,
            at_least: true,
            unit,
            note,
        }
    }

    fn max(name: &'static str, value: f64, target: f64, unit: &'static str, note: String) -> Self {
        Self {
            name,
            value,
            target,
            at_least: false,
            unit,
            note,
        }
    }

    fn pass(&self) -> bool {
        if self.at_least {
            self.value >= self.target
        } else {
            self.value <= self.target
        }
    }

    fn json(&self) -> Json {
        json!({
            "name": self.name, "value": self.value, "unit": self.unit,
            "target": format!("{} {} {}", if self.at_least { ">=" } else { "<=" }, self.target, self.unit).trim_end().to_owned(),
            "pass": self.pass(), "note": self.note,
        })
    }
}

fn fmt_value(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else if v.abs() >= 1.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.4}")
    }
}

/// How busy the machine was with other work around the live rounds (their figures are only
/// meaningful on a quiet machine).
fn print_other_work(busy_before: f64, busy_after: f64) {
    println!(
        "\nother work on the machine before/after the live rounds: {busy_before:.2} / {busy_after:.2} of {} CPUs busy{}",
        cpus(),
        if busy_before.max(busy_after) > 0.2 {
            " — other work was running: live figures are disturbed"
        } else {
            ""
        }
    );
}

fn print_table(figures: &[Figure]) {
    println!();
    println!(
        "{:<28} {:>16} {:>18}  {:<6}",
        "figure", "value", "target", "result"
    );
    println!("{}", "-".repeat(72));
    for f in figures {
        let value = format!("{} {}", fmt_value(f.value), f.unit);
        let target = format!(
            "{} {} {}",
            if f.at_least { "≥" } else { "≤" },
            fmt_value(f.target),
            f.unit
        );
        let result = if f.pass() { "pass" } else { "MISSED" };
        println!(
            "{:<28} {:>16} {:>18}  {:<6}",
            f.name,
            value.trim_end(),
            target.trim_end(),
            result
        );
        println!("    {}", f.note);
    }
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped, on every path.
struct Proc {
    name: String,
    child: Option<Child>,
    stderr: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl Proc {
    /// Starts `cmd`; stdin and stdout are discarded unless the caller set them, stderr is
    /// collected line by line (bounded).
    fn spawn(name: &str, cmd: &mut Command) -> Result<Self> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start `{}`", util::describe(cmd)))?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let pipe = child.stderr.take().expect("stderr is piped");
        let lines = stderr.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut l = lines.lock().unwrap();
                if l.len() < 10_000 {
                    l.push(line);
                }
            }
        });
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            stderr,
            reader: Some(reader),
        })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Sends `sig` and waits up to `timeout` for the exit; SIGKILL after that.
    fn stop(&mut self, sig: i32, timeout: Duration) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("{} was already stopped", self.name);
        };
        if child.try_wait()?.is_none() {
            // SAFETY: kill(2) on our own child, not reaped yet (try_wait said it runs).
            unsafe { libc::kill(child.id() as i32, sig) };
        }
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                bail!("{} did not stop within {timeout:?}: killed", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        Ok(status)
    }

    fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    fn stderr_tail(&self) -> String {
        let l = self.stderr.lock().unwrap();
        l[l.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop(libc::SIGTERM, Duration::from_secs(5));
        }
    }
}

/// Runs a load generator to completion (bounded in time) and returns its stdout.
fn run_bounded(name: &str, cmd: &mut Command, timeout: Duration) -> Result<String> {
    let mut p = Proc::spawn(name, cmd.stdout(Stdio::piped()))?;
    let mut out = p
        .child
        .as_mut()
        .and_then(|c| c.stdout.take())
        .expect("stdout is piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    while p.try_wait().is_none() {
        if Instant::now() > deadline {
            drop(p);
            bail!("{name} did not finish within {timeout:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = p.stop(libc::SIGTERM, Duration::from_secs(1))?;
    let stdout = reader.join().unwrap_or_default();
    ensure!(
        status.success(),
        "`{}` failed ({status}):\n{stdout}\n{}",
        util::describe(cmd),
        p.stderr_tail()
    );
    Ok(stdout)
}

/// A scratch directory under /tmp, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Result<Self> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.subsec_nanos();
        let p = std::env::temp_dir().join(format!(
            "tracer-bench-{what}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(Self(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_for_port(port: u16, p: &mut Proc, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(s) = p.try_wait() {
            bail!(
                "{} exited ({s}) before listening:\n{}",
                p.name,
                p.stderr_tail()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{} is not listening on 127.0.0.1:{port} after {timeout:?}",
                p.name
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// nginx

/// A private nginx: its own prefix, config, pid file and logs in a scratch directory, one
/// worker, on a free loopback port. Never touches the system's nginx.
struct Nginx {
    port: u16,
    _proc: Proc,
}

impl Nginx {
    /// `extra`: also serve `/big` (64 KiB file), `/missing` (404) and accept uploads, for the
    /// recording.
    /// `tls`: HTTPS with a self-signed certificate made by the openssl command line.
    fn start(dir: &TempDir, extra: bool, tls: bool) -> Result<Self> {
        let d = dir.0.join("nginx");
        std::fs::create_dir_all(d.join("www"))?;
        let port = free_port()?;
        let ssl = if tls {
            let (cert, key) = (d.join("cert.pem"), d.join("key.pem"));
            let out = Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                ])
                .args(["-subj", "/CN=127.0.0.1", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .output()
                .context("running openssl")?;
            ensure!(
                out.status.success(),
                "openssl req: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            format!(
                " ssl;\n        ssl_certificate {};\n        ssl_certificate_key {}",
                cert.display(),
                key.display()
            )
        } else {
            String::new()
        };
        let extra_locations = if extra {
            std::fs::write(d.join("www/big"), vec![b'x'; 64 * 1024])?;
            format!(
                "location = /big {{ default_type application/octet-stream; root {www}; }}\n        \
                 location /missing {{ return 404 \"not here\\n\"; }}\n        \
                 location /upload {{ client_max_body_size 1m; return 201 \"stored\\n\"; }}",
                www = d.join("www").display()
            )
        } else {
            String::new()
        };
        let conf = format!(
            r#"# written by cargo xtask bench
user root;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    default_type text/plain;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port}{ssl};
        {extra_locations}
        location / {{ return 200 "ok"; }}
    }}
}}
"#,
            d = d.display()
        );
        let conf_path = d.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let mut cmd = Command::new("nginx");
        cmd.arg("-p")
            .arg(&d)
            .arg("-e")
            .arg(d.join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null());
        step(format!("$ {}", util::describe(&cmd)));
        let mut proc = Proc::spawn("nginx", &mut cmd)?;
        wait_for_port(port, &mut proc, Duration::from_secs(10)).with_context(|| {
            format!(
                "nginx error log:\n{}",
                std::fs::read_to_string(d.join("error.log")).unwrap_or_default()
            )
        })?;
        Ok(Self { port, _proc: proc })
    }
}

// ---------------------------------------------------------------------------------------------
// Load generators

struct Wrk {
    rps: f64,
    requests: u64,
}

impl Wrk {
    fn json(&self) -> Json {
        json!({ "rps": self.rps, "requests": self.requests })
    }
}

/// `wrk` with 16 keep-alive connections on one thread: nginx at saturation.
fn wrk(url: &str, secs: u64) -> Result<Wrk> {
    let out = run_bounded(
        "wrk",
        Command::new("wrk").args(["-t1", "-c16", &format!("-d{secs}s"), url]),
        Duration::from_secs(secs + 30),
    )?;
    let field = |prefix: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_owned()))
    };
    let rps: f64 = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{out}"))?;
    let requests: u64 = out
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no request count in wrk's output:\n{out}"))?;
    if let Some(errors) = field("Non-2xx or 3xx responses:").or(field("Socket errors:")) {
        bail!("wrk saw errors ({errors}):\n{out}");
    }
    Ok(Wrk { rps, requests })
}

#[derive(Clone)]
struct Oha {
    rps: f64,
    requests: u64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
}

impl Oha {
    fn json(&self) -> Json {
        json!({
            "rps": self.rps, "requests": self.requests,
            "p50_us": self.p50_us, "p99_us": self.p99_us, "p99.9_us": self.p999_us,
        })
    }
}

/// `oha` at a fixed rate (open loop, latencies measured from the scheduled send time), on 16
/// keep-alive connections; requests still in flight at the deadline are waited for.
fn oha(url: &str, secs: u64) -> Result<Oha> {
    let out = run_bounded(
        "oha",
        Command::new(oha_bin()).args([
            "--no-tui",
            "--output-format",
            "json",
            "-q",
            &RATE.to_string(),
            "-z",
            &format!("{secs}s"),
            "-c",
            "16",
            "--latency-correction",
            "--wait-ongoing-requests-after-deadline",
            // The TLS variant's self-signed certificate.
            "--insecure",
            url,
        ]),
        Duration::from_secs(secs + 30),
    )?;
    let v: Json = serde_json::from_str(&out).with_context(|| format!("oha's output:\n{out}"))?;
    let num = |path: &[&str]| -> Result<f64> {
        path.iter()
            .try_fold(&v, |v, k| v.get(k))
            .and_then(Json::as_f64)
            .with_context(|| format!("no {} in oha's output", path.join(".")))
    };
    let count = |key: &str| -> u64 {
        v.get(key)
            .and_then(Json::as_object)
            .map_or(0, |m| m.values().filter_map(Json::as_u64).sum())
    };
    let ok = v
        .get("statusCodeDistribution")
        .and_then(|m| m.get("200"))
        .and_then(Json::as_u64)
        .unwrap_or(0);
    let requests = count("statusCodeDistribution");
    let errors = count("errorDistribution");
    ensure!(
        ok == requests && errors == 0,
        "oha saw errors or non-200 answers: {} / {}",
        v.get("statusCodeDistribution").unwrap_or(&Json::Null),
        v.get("errorDistribution").unwrap_or(&Json::Null)
    );
    ensure!(requests > 0, "oha sent no request:\n{out}");
    Ok(Oha {
        rps: num(&["summary", "requestsPerSec"])?,
        requests,
        p50_us: num(&["latencyPercentiles", "p50"])? * 1e6,
        p99_us: num(&["latencyPercentiles", "p99"])? * 1e6,
        p999_us: num(&["latencyPercentiles", "p99.9"])? * 1e6,
    })
}

fn oha_bin() -> PathBuf {
    util::which("oha").unwrap_or_else(|| cargo_home().join("bin/oha"))
}

pub fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

// ---------------------------------------------------------------------------------------------
// The agent

struct Agent {
    proc: Proc,
}

impl Agent {
    /// Starts `tracer` for `port` only, exporting over OTLP/gRPC to `endpoint` (none: spans
    /// are counted and discarded), and waits until its programs are attached.
    fn start(
        tracer: &Path,
        port: u16,
        endpoint: Option<&str>,
        record: Option<&Path>,
        extra: &[String],
    ) -> Result<Self> {
        let mut cmd = Command::new(tracer);
        cmd.args(["--port", &port.to_string(), "--stats-interval", "0"]);
        cmd.args(extra);
        if let Some(path) = record {
            cmd.arg("--record-events").arg(path);
        }
        // Nothing from the caller's environment changes what is measured.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("OTEL_") || k.starts_with("TRACER_") {
                cmd.env_remove(&*k);
            }
        }
        match endpoint {
            Some(url) => cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", url),
            None => cmd.env("OTEL_TRACES_EXPORTER", "none"),
        };
        cmd.env("NO_COLOR", "1").stdout(Stdio::null());
        let mut proc = Proc::spawn("tracer", &mut cmd)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if proc
                .stderr_lines()
                .iter()
                .any(|l| l.contains("tracing; stop with"))
            {
                return Ok(Self { proc });
            }
            if let Some(s) = proc.try_wait() {
                bail!(
                    "the agent exited ({s}) while starting:\n{}",
                    proc.stderr_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent did not start within 60 s:\n{}",
                    proc.stderr_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// utime + stime of the whole agent (all threads), in seconds.
    fn cpu_seconds(&self) -> Result<f64> {
        let pid = self.proc.pid();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let rest = stat.rsplit_once(')').context("malformed /proc/PID/stat")?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // After the command name: state is field 3 of stat(5), utime 14, stime 15.
        let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Ok(ticks as f64 / hz)
    }

    /// Context switches (voluntary and not) of all the agent's threads so far: how often it
    /// was woken up.
    fn ctx_switches(&self) -> u64 {
        let pid = self.proc.pid();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return 0;
        };
        tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
            .flat_map(|status| {
                status
                    .lines()
                    .filter(|l| l.contains("ctxt_switches:"))
                    .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .collect::<Vec<_>>()
            })
            .sum()
    }

    /// Peak resident set size (VmHWM) in KiB.
    fn peak_rss_kib(&self) -> Result<u64> {
        let pid = self.proc.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("no VmHWM in /proc/PID/status")
    }

    /// SIGTERM (the agent flushes its spans), then its final counters.
    fn stop(mut self) -> Result<Counters> {
        let status = self.proc.stop(libc::SIGTERM, Duration::from_secs(30))?;
        let lines = self.proc.stderr_lines();
        ensure!(
            status.success(),
            "the agent exited with {status}:\n{}",
            self.proc.stderr_tail()
        );
        Counters::parse(&lines).with_context(|| {
            format!(
                "no final counters in the agent's log:\n{}",
                lines.join("\n")
            )
        })
    }
}

/// The agent's own accounting at exit: the `final counters` line (kernel drops, reassembly and
/// parser losses) and the `export finished` line (spans exported after the final flush).
#[derive(Default)]
struct Counters {
    kernel_drops: BTreeMap<String, u64>,
    agent: BTreeMap<String, u64>,
    export: BTreeMap<String, u64>,
}

/// Fields of the `final counters` line reported with each round (kernel drop causes come
/// between `kernel drops:` and the next `;`).
const AGENT_FIELDS: &[&str] = &[
    "events",
    "data_events",
    "malformed",
    "spans",
    "conns_open",
    "conns_opened",
    "conns_expired",
    "conns_refused_full",
    "gaps",
    "gap_bytes",
    "invalid_messages",
    "dropped_messages",
    "unmatched_responses",
    "unanswered_requests",
    "h2_desyncs",
    "h2_dropped_blocks",
    "h2_streams_over_limit",
    "h2_streams_reset",
    "exported",
    "export_failed",
    "export_queue_full",
    "queue_len",
    "tls_files_attached",
    "tls_attach_failed",
    "tls_unsupported",
    "tls_detached",
];
/// Counters that mean lost or incomplete spans.
const LOSS_FIELDS: &[&str] = &[
    "malformed",
    "conns_refused_full",
    "gaps",
    "invalid_messages",
    "dropped_messages",
    "unmatched_responses",
    "h2_desyncs",
    "h2_dropped_blocks",
    "h2_streams_over_limit",
];

fn pairs(s: &str) -> impl Iterator<Item = (&str, u64)> {
    s.split_whitespace().filter_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        Some((k, v.trim_matches(['"', ';', ',']).parse().ok()?))
    })
}

impl Counters {
    fn parse(lines: &[String]) -> Option<Self> {
        let mut c = Self::default();
        let fin = lines.iter().rev().find(|l| l.contains("final counters"))?;
        // `kernel drops: a=1 b=2; injection: …` then the agent's own `key=value` fields.
        let rest = fin.split_once("kernel drops:")?.1;
        let (drops, fields) = rest.split_once(';').unwrap_or((rest, ""));
        for (k, v) in pairs(drops) {
            c.kernel_drops.insert(k.to_owned(), v);
        }
        for (k, v) in pairs(fields) {
            if AGENT_FIELDS.contains(&k) || k.starts_with("inject_") {
                c.agent.insert(k.to_owned(), v);
            }
        }
        if let Some(l) = lines.iter().rev().find(|l| l.contains("export finished")) {
            for (k, v) in pairs(l) {
                c.export.insert(k.to_owned(), v);
            }
        }
        Some(c)
    }

    /// Every non-zero loss counter, or `none`.
    fn losses_text(&self) -> String {
        let mut out: Vec<String> = self
            .kernel_drops
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("kernel {k}={v}"))
            .collect();
        for k in LOSS_FIELDS {
            if let Some(v) = self.agent.get(*k).filter(|v| **v > 0) {
                out.push(format!("{k}={v}"));
            }
        }
        for k in ["failed", "dropped_queue_full"] {
            if let Some(v) = self.export.get(k).filter(|v| **v > 0) {
                out.push(format!("export {k}={v}"));
            }
        }
        if out.is_empty() {
            "none".into()
        } else {
            out.join(" ")
        }
    }

    fn json(&self) -> Json {
        json!({
            "kernel_drops": self.kernel_drops,
            "counters": self.agent,
            "export": self.export,
            "losses": self.losses_text(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Counting OTLP/gRPC receiver (in this process, on its own small runtime)

/// Spans received by (service.name, kind), and by (kind, `rpc.grpc.status_code`) for gRPC.
#[derive(Clone, Default)]
struct Counts(BTreeMap<(String, i32), u64>, BTreeMap<(i32, i64), u64>);

impl Counts {
    fn since(&self, before: &Counts) -> Spans {
        let mut by = BTreeMap::new();
        for (k, v) in &self.0 {
            let d = v - before.0.get(k).copied().unwrap_or(0);
            if d > 0 {
                by.insert(k.clone(), d);
            }
        }
        let mut grpc_status = BTreeMap::new();
        for (k, v) in &self.1 {
            let d = v - before.1.get(k).copied().unwrap_or(0);
            if d > 0 {
                grpc_status.insert(*k, d);
            }
        }
        let kind = |want| {
            by.iter()
                .filter(|((_, k), _)| *k == want)
                .map(|(_, v)| v)
                .sum()
        };
        Spans {
            server: kind(KIND_SERVER),
            client: kind(KIND_CLIENT),
            by,
            grpc_status,
        }
    }
}

struct Spans {
    server: u64,
    client: u64,
    by: BTreeMap<(String, i32), u64>,
    grpc_status: BTreeMap<(i32, i64), u64>,
}

impl Spans {
    /// Spans of `kind` whose `rpc.grpc.status_code` is `code` (`None`: any code).
    fn grpc(&self, kind: i32, code: Option<i64>) -> u64 {
        self.grpc_status
            .iter()
            .filter(|((k, c), _)| *k == kind && code.is_none_or(|want| *c == want))
            .map(|(_, v)| v)
            .sum()
    }

    fn by_service_kind(&self) -> Json {
        let kind = |k: i32| match k {
            KIND_SERVER => "server".to_owned(),
            KIND_CLIENT => "client".to_owned(),
            k => format!("kind{k}"),
        };
        self.by
            .iter()
            .map(|((s, k), v)| (format!("{s}/{}", kind(*k)), json!(v)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

struct Counter(Arc<Mutex<Counts>>);

#[tonic::async_trait]
impl TraceService for Counter {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        let mut counts = self.0.lock().unwrap();
        for rs in &request.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| "?".to_owned());
            for ss in &rs.scope_spans {
                for span in &ss.spans {
                    *counts.0.entry((service.clone(), span.kind)).or_default() += 1;
                    let grpc_status = span
                        .attributes
                        .iter()
                        .find(|a| a.key == "rpc.grpc.status_code")
                        .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                            Value::IntValue(v) => Some(*v),
                            _ => None,
                        });
                    if let Some(code) = grpc_status {
                        *counts.1.entry((span.kind, code)).or_default() += 1;
                    }
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

struct Receiver {
    port: u16,
    counts: Arc<Mutex<Counts>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Receiver {
    fn start() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-receiver")
            .enable_all()
            .build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let port = listener.local_addr()?.port();
        let counts = Arc::new(Mutex::new(Counts::default()));
        let service = TraceServiceServer::new(Counter(counts.clone()));
        runtime.spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        step(format!("counting OTLP/gRPC receiver on 127.0.0.1:{port}"));
        Ok(Self {
            port,
            counts,
            runtime: Some(runtime),
        })
    }

    fn counts(&self) -> Counts {
        self.counts.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pipeline replay (criterion)

struct Pipeline {
    events: u64,
    spans: u64,
    events_per_sec: f64,
    recorded_pids_events_per_sec: f64,
    took: Duration,
}

/// Runs the criterion benchmark and reads its estimates (time per pass over the recording)
/// back; the events and spans per pass come from the benchmark's own output.
fn pipeline(recording: &Path) -> Result<Pipeline> {
    let started = Instant::now();
    let root = util::workspace_root();
    let criterion = root.join("target/criterion/pipeline");
    let _ = std::fs::remove_dir_all(&criterion);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "bench",
        "-p",
        "tracer-user",
        "--bench",
        "pipeline",
        "--",
        "--noplot",
    ])
    .current_dir(&root)
    .stdout(Stdio::piped());
    step(format!("$ {}", util::describe(&cmd)));
    let out = run_bounded("cargo bench", &mut cmd, Duration::from_secs(600))?;
    print!("{out}");
    let per_pass = |key: &str| -> Result<u64> {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no `{key}` line in the benchmark's output"))
    };
    let events = per_pass("events per pass:")?;
    let spans = per_pass("spans per pass:")?;
    let expected = tracer_records(&std::fs::read(recording)?);
    ensure!(
        events == expected,
        "the benchmark replayed {events} events, the recording has {expected}"
    );
    let estimate_ns = |name: &str| -> Result<f64> {
        let p = criterion.join(name).join("new/estimates.json");
        let v: Json = serde_json::from_str(
            &std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?,
        )?;
        // The estimate criterion prints: the slope (linear sampling), else the mean.
        v.pointer("/slope/point_estimate")
            .or_else(|| v.pointer("/mean/point_estimate"))
            .and_then(Json::as_f64)
            .with_context(|| format!("no estimate in {}", p.display()))
    };
    Ok(Pipeline {
        events,
        spans,
        events_per_sec: events as f64 / (estimate_ns("replay")? * 1e-9),
        recorded_pids_events_per_sec: events as f64 / (estimate_ns("replay_recorded_pids")? * 1e-9),
        took: started.elapsed(),
    })
}

/// Whether the recorded stream still decodes into spans with this build (the benchmark's
/// check-only mode).
fn recording_decodes() -> Result<bool> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["bench", "-q", "-p", "tracer-user", "--bench", "pipeline"])
        .env("PIPELINE_CHECK_ONLY", "1")
        .current_dir(util::workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("running the pipeline benchmark's check")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if stdout.contains("stale recording") {
        return Ok(false);
    }
    ensure!(
        out.status.success(),
        "the pipeline benchmark's check failed ({}):\n{stdout}",
        out.status
    );
    Ok(true)
}

/// Records in a `--record-events` file (u32 little-endian length, then the bytes).
fn tracer_records(bytes: &[u8]) -> u64 {
    let (mut n, mut rest) = (0, bytes);
    while rest.len() >= 4 {
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if rest.len() < 4 + len {
            break;
        }
        n += 1;
        rest = &rest[4 + len..];
    }
    n
}

/// Records a real event stream for the pipeline benchmark: the agent with `--record-events`
/// while keep-alive GETs (oha), uploads, large downloads, 404s and HTTP/1.0 requests (curl)
/// hit a private nginx. Kept under 2 MiB (cut at a record boundary if ever larger).
fn record(tracer: &Path, out: &Path) -> Result<()> {
    step(format!(
        "recording a live event stream into {}",
        out.display()
    ));
    let dir = TempDir::new("record")?;
    let nginx = Nginx::start(&dir, true, false)?;
    let base = format!("http://127.0.0.1:{}", nginx.port);
    let raw = dir.0.join("events.bin");
    let body = dir.0.join("body");
    std::fs::write(&body, "k=v&".repeat(2048))?;
    let agent = Agent::start(tracer, nginx.port, None, Some(&raw), &[])?;
    run_bounded(
        "oha",
        Command::new(oha_bin()).args(["--no-tui", "-n", "1500", "-c", "4", &format!("{base}/")]),
        Duration::from_secs(60),
    )?;
    for i in 0..10 {
        let mut curl = Command::new("curl");
        curl.args(["-s", "-o", "/dev/null", "--max-time", "5"])
            .arg(format!("{base}/api/items/{i}?token=secret&page={i}"))
            .args(["-X", "POST", "--data-binary"])
            .arg(format!("@{}", body.display()))
            .arg(format!("{base}/upload"))
            .arg(format!("{base}/big"))
            .arg(format!("{base}/missing/{i}"));
        run_bounded("curl", &mut curl, Duration::from_secs(30))?;
        run_bounded(
            "curl",
            Command::new("curl").args([
                "-s",
                "-0",
                "-o",
                "/dev/null",
                "--max-time",
                "5",
                &format!("{base}/old"),
            ]),
            Duration::from_secs(30),
        )?;
    }
    settle();
    let counters = agent.stop()?;
    step(format!(
        "recorded; agent losses: {}",
        counters.losses_text()
    ));
    let mut bytes = std::fs::read(&raw)?;
    if bytes.len() as u64 > RECORDING_MAX_BYTES {
        let mut end = 0;
        while end + 4 <= bytes.len() {
            let len = u32::from_le_bytes(bytes[end..end + 4].try_into()?) as usize;
            if (end + 4 + len) as u64 > RECORDING_MAX_BYTES {
                break;
            }
            end += 4 + len;
        }
        step(format!("recording cut from {} to {end} bytes", bytes.len()));
        bytes.truncate(end);
    }
    ensure!(
        tracer_records(&bytes) > 1000,
        "the recording has too few events"
    );
    std::fs::create_dir_all(out.parent().expect("a file path"))?;
    std::fs::write(out, &bytes)?;
    step(format!(
        "{} events, {} bytes in {}",
        tracer_records(&bytes),
        bytes.len(),
        out.display()
    ));
    drop(nginx);
    Ok(())
}
