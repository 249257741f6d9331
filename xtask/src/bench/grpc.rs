//! `cargo xtask bench --grpc`: the grpc-go peer serving unary calls that h2load drives over
//! h2c, untraced and traced rounds interleaved.
use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use serde_json::{Value as Json, json};
use test_kit::{Proc, TempDir, free_port, run_bounded};

use super::{
    Args, RATE,
    agent::Agent,
    bpf_stats::{self, KernelCost, Snapshot, StatsOn},
    load::Throughput,
    receiver::{KIND_CLIENT, KIND_SERVER, Receiver},
    report::{
        Figure, busy_cpus, coverage_note, cpus, median, print_other_work, print_table, run_info,
        save, unix_time,
    },
    settle,
};
use crate::util::{self, step};

/// Streams per h2load connection and connections: many calls in flight on few connections,
/// yet at most 10 responses (~60 bytes each) queued per connection, so no read or write is
/// larger than the kernel's 4096-byte capture limit (past it an HTTP/2 direction loses sync).
const GRPC_CONNS: u32 = 4;
const GRPC_STREAMS: u32 = 10;

/// `cargo xtask bench --grpc`: grpc-go's server (`grpcpeer server`) saturated by h2load unary
/// calls, untraced and traced rounds interleaved, as for nginx. Each traced round exports to
/// the counting receiver: coverage is the calls whose SERVER span carries `grpc-status` 0.
pub(super) fn run(args: &Args, tracer: &Path, started: Instant) -> Result<()> {
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
    let dir = TempDir::create("bench-grpc")?;
    let body = dir.path().join("hello.bin");
    let message = [&[0x0a, 0x05][..], b"world"].concat();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    std::fs::write(&body, &frame)?;

    let setup_took = started.elapsed();
    let busy_before = busy_cpus();
    let measuring = Instant::now();
    let receiver = Receiver::start()?;
    let port = free_port();
    let mut cmd = Command::new(&peer);
    cmd.args(["server", &port.to_string()])
        .stdout(Stdio::null());
    step(format!("$ {}", util::describe(&cmd)));
    let mut server = Proc::spawn_keeping_stdout("grpcpeer server", &mut cmd)?
        .terminate_on_drop(Duration::from_secs(5));
    server.wait_listening(port, Duration::from_secs(10))?;
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
        // The kernel's BPF statistics only in the traced rounds at a fixed rate (they cost
        // the programs two clock reads per run: not in the throughput rounds).
        let stats = rate.map(|_| StatsOn::enable());
        let ag = Agent::start(tracer, port, Some(&endpoint), None, &args.agent_args)?;
        let (cpu0, cs0) = (ag.cpu_seconds()?, ag.ctx_switches());
        let progs0 = Snapshot::take(ag.pid())?;
        let b = h2load_grpc(&url, &body, calls, rate)?;
        settle();
        let progs1 = Snapshot::take(ag.pid())?;
        let cpu = ag.cpu_seconds()? - cpu0;
        let cs = ag.ctx_switches() - cs0;
        let rss = ag.peak_rss_kib()?;
        let counters = ag.stop()?;
        let kernel = match stats {
            Some(Ok(on)) => {
                drop(on);
                Some(KernelCost::between(&progs0, &progs1, b.requests))
            }
            Some(Err(e)) => {
                step(format!("  no kernel figure: {e:#}"));
                None
            }
            None => None,
        };
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
                "kernel": kernel.as_ref().map(KernelCost::json),
            }),
            kernel: kernel.map(|k| (k, b.requests)),
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
    let kernel_rounds: Vec<(KernelCost, u64)> =
        fixed.iter_mut().filter_map(|p| p.kernel.take()).collect();
    let rounds: Vec<Json> = tp.iter().map(|p| p.json.clone()).collect();
    let rate_rounds: Vec<Json> = fixed.iter().map(|p| p.json.clone()).collect();
    drop(server);
    drop(receiver);
    let live_took = measuring.elapsed();
    let busy_after = busy_cpus();

    let mut figures = vec![
        Figure::min(
            "gRPC throughput ratio",
            median(&ratios),
            0.75,
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
            coverage_note(
                "SERVER spans with grpc-status 0 / calls",
                &coverage,
                &all_losses,
            ),
        ),
        Figure::max(
            "agent CPU per gRPC call",
            median(&cpu_per_call),
            6.0,
            "µs",
            format!(
                "utime+stime of the agent / calls at {RATE} calls/s (server and client side traced)"
            ),
        ),
        Figure::max(
            "agent peak RSS (gRPC)",
            rss_kib.iter().copied().fold(0.0, f64::max) / 1024.0,
            48.0,
            "MiB",
            format!("VmHWM, highest over the traced rounds at {RATE} calls/s"),
        ),
    ];
    figures.extend(bpf_stats::figure(
        "kernel BPF time per gRPC call",
        &kernel_rounds,
        "call",
    ));
    let total = started.elapsed();
    print_table(&figures);
    print_other_work(busy_before, busy_after);
    let now = unix_time()?;
    let report = json!({
        "unix_time": now,
        "mode": "grpc",
        "run": run_info(),
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
    save(
        &report,
        "bench-grpc",
        "latest-grpc",
        now,
        total,
        live_took,
        &figures,
    )
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
    /// What the BPF programs ran, and for how many calls (rounds at a fixed rate).
    kernel: Option<(KernelCost, u64)>,
}

/// `h2load` making `calls` unary gRPC calls (POST with the message in `body`) on
/// [`GRPC_CONNS`] connections × [`GRPC_STREAMS`] streams, at `rate` calls/s in all (h2load's
/// `--rps` per connection) or as fast as the server answers. Every call must succeed (HTTP 2xx;
/// the gRPC status is in the trailers, checked on the spans).
fn h2load_grpc(url: &str, body: &Path, calls: u64, rate: Option<u32>) -> Result<Throughput> {
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
    Ok(Throughput {
        rps,
        requests: calls,
    })
}
