//! `cargo xtask bench --vs-sdk`: "why not just use the SDK?" The same Flask service (one `GET /`
//! route, served by waitress) three ways, rounds interleaved (plain, agent, SDK, plain, ...):
//!
//! - plain: nothing traces it;
//! - agent: the same process, traced by the agent (both ends: wrk/oha's side too);
//! - SDK: a second instance run under `opentelemetry-instrument` (the OpenTelemetry Python SDK's
//!   Flask auto-instrumentation, batch span processor, OTLP/gRPC export to the same counting
//!   receiver).
//!
//! Throughput at saturation (wrk) kept by each, and p50/p99 added at a fixed rate (oha, a
//! quarter of the plain service's saturation rate, so that none of the three saturates). The
//! agent's figures have the SDK's as their target: tracing from the kernel must cost the
//! service less than instrumenting its code.
use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Result;
use serde_json::{Value as Json, json};
use test_kit::{Proc, TempDir, free_port};

use super::{
    Args,
    agent::Agent,
    load::{Oha, oha_at, wrk},
    receiver::Receiver,
    report::{
        Figure, busy_cpus, cpus, median, print_other_work, print_table, run_info, save, unix_time,
    },
    settle,
};
use crate::util::{self, step};

/// The service: one route answering `ok`, as nginx's `return 200 "ok"` in the other benchmarks.
const APP: &str = "from flask import Flask\n\n\
                   app = Flask(__name__)\n\n\n\
                   @app.get(\"/\")\n\
                   def index():\n    return \"ok\"\n";
/// waitress's worker threads (its default).
const THREADS: u32 = 4;
/// The service name the SDK's spans carry.
const SDK_SERVICE: &str = "flask-sdk";

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Plain,
    Agent,
    Sdk,
}

impl Variant {
    const ALL: [Self; 3] = [Self::Plain, Self::Agent, Self::Sdk];

    fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Agent => "agent",
            Self::Sdk => "sdk",
        }
    }
}

/// Starts waitress serving the app on `port`; under `opentelemetry-instrument` exporting to
/// `sdk_endpoint` when given.
fn flask(venv: &Path, dir: &Path, port: u16, sdk_endpoint: Option<&str>) -> Result<Proc> {
    let python = venv.join("bin/python");
    let mut cmd = match sdk_endpoint {
        Some(_) => {
            let mut c = Command::new(venv.join("bin/opentelemetry-instrument"));
            c.arg(&python);
            c
        }
        None => Command::new(&python),
    };
    cmd.args(["-m", "waitress", "--threads", &THREADS.to_string()])
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg("app:app")
        .current_dir(dir)
        .stdout(Stdio::null());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("OTEL_") {
            cmd.env_remove(k);
        }
    }
    if let Some(url) = sdk_endpoint {
        cmd.envs([
            ("OTEL_SERVICE_NAME", SDK_SERVICE),
            ("OTEL_TRACES_EXPORTER", "otlp"),
            ("OTEL_METRICS_EXPORTER", "none"),
            ("OTEL_LOGS_EXPORTER", "none"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", url),
            ("OTEL_EXPORTER_OTLP_INSECURE", "true"),
        ]);
    }
    step(format!("$ {}", util::describe(&cmd)));
    let mut p = Proc::spawn_keeping_stdout(
        if sdk_endpoint.is_some() {
            "flask (SDK)"
        } else {
            "flask"
        },
        &mut cmd,
    )?
    .terminate_on_drop(Duration::from_secs(5));
    p.wait_listening(port, Duration::from_secs(30))?;
    Ok(p)
}

/// The medians of one variant over its rounds.
#[derive(Default)]
struct Rounds {
    rps: Vec<f64>,
    p50_us: Vec<f64>,
    p99_us: Vec<f64>,
    /// Server spans received per request of the fixed-rate rounds.
    spans_per_request: Vec<f64>,
}

pub(super) fn run(args: &Args, tracer: &Path, started: Instant) -> Result<()> {
    let venv = crate::setup::sdk_bench_deps()?;
    let dir = TempDir::create("bench-sdk")?;
    std::fs::write(dir.path().join("app.py"), APP)?;

    let setup_took = started.elapsed();
    let busy_before = busy_cpus();
    let measuring = Instant::now();
    let receiver = Receiver::start()?;
    let endpoint = format!("http://127.0.0.1:{}", receiver.port);
    let (plain_port, sdk_port) = (free_port(), free_port());
    let plain = flask(&venv, dir.path(), plain_port, None)?;
    let sdk = flask(&venv, dir.path(), sdk_port, Some(&endpoint))?;
    let url = |v: Variant| {
        let port = if v == Variant::Sdk {
            sdk_port
        } else {
            plain_port
        };
        format!("http://127.0.0.1:{port}/")
    };

    step("warming up both services (2 s each); the plain one's rate sizes the fixed-rate rounds");
    let warm = wrk(&url(Variant::Plain), 2)?;
    wrk(&url(Variant::Sdk), 2)?;
    let rate = ((warm.rps / 4.0) as u32 / 50 * 50).max(50);
    step(format!(
        "plain Flask: {:.0} req/s at saturation; fixed-rate rounds at {rate} req/s",
        warm.rps
    ));

    // One round of `v`: wrk at saturation, or oha at `rate` when `fixed`.
    let round = |v: Variant, fixed: bool| -> Result<(f64, Option<Oha>, u64, u64, Json)> {
        let before = receiver.counts();
        let agent = match v {
            Variant::Agent => Some(Agent::start(
                tracer,
                plain_port,
                Some(&endpoint),
                None,
                &args.agent_args,
            )?),
            _ => None,
        };
        let (rps, oha, requests) = if fixed {
            let o = oha_at(&url(v), args.secs, rate)?;
            (o.rps, Some(o.clone()), o.requests)
        } else {
            let t = wrk(&url(v), args.secs)?;
            (t.rps, None, t.requests)
        };
        // The agent and the SDK's batch processor export what they still hold.
        settle();
        let losses = match agent {
            Some(a) => a.stop()?.losses_text(),
            None => String::new(),
        };
        if v == Variant::Sdk {
            // The batch processor exports every 5 s by default.
            std::thread::sleep(Duration::from_secs(5));
        }
        let got = receiver.counts().since(&before);
        let json = json!({
            "variant": v.name(),
            "load": if fixed { format!("oha -q {rate}") } else { "wrk -t1 -c16".to_owned() },
            "rps": rps,
            "requests": requests,
            "p50_us": oha.as_ref().map(|o| o.p50_us),
            "p99_us": oha.as_ref().map(|o| o.p99_us),
            "server_spans": got.server,
            "spans_by_service_kind": got.by_service_kind(),
            "agent_losses": losses,
        });
        Ok((rps, oha, requests, got.server, json))
    };

    let mut by = [Rounds::default(), Rounds::default(), Rounds::default()];
    let mut rounds_json = Vec::new();
    for fixed in [false, true] {
        for i in 1..=args.pairs {
            for v in Variant::ALL {
                step(format!(
                    "Flask {} round {i}/{}: {}",
                    if fixed { "latency" } else { "throughput" },
                    args.pairs,
                    v.name()
                ));
                let (rps, oha, requests, spans, json) = round(v, fixed)?;
                let r = &mut by[v as usize];
                match oha {
                    Some(o) => {
                        r.p50_us.push(o.p50_us);
                        r.p99_us.push(o.p99_us);
                        r.spans_per_request
                            .push(spans as f64 / requests.max(1) as f64);
                        step(format!(
                            "  p50 {:.0} µs, p99 {:.0} µs; {spans} server spans / {requests} requests",
                            o.p50_us, o.p99_us
                        ));
                    }
                    None => {
                        r.rps.push(rps);
                        step(format!("  {rps:.0} req/s"));
                    }
                }
                rounds_json.push(json);
            }
        }
    }
    drop(sdk);
    drop(plain);
    drop(receiver);
    let live_took = measuring.elapsed();
    let busy_after = busy_cpus();

    let [p, a, s] = by.map(|r| {
        (
            median(&r.rps),
            median(&r.p50_us),
            median(&r.p99_us),
            median(&r.spans_per_request),
        )
    });
    let (kept_agent, kept_sdk) = (a.0 / p.0, s.0 / p.0);
    let (p50_agent, p50_sdk) = (a.1 - p.1, s.1 - p.1);
    let (p99_agent, p99_sdk) = (a.2 - p.2, s.2 - p.2);
    let figures = vec![
        Figure::min(
            "Flask kept, agent",
            kept_agent,
            kept_sdk,
            "",
            format!(
                "throughput traced by the agent / plain (target: the SDK's); plain {:.0} req/s, \
                 agent {:.0} req/s, median of {} rounds (wrk -t1 -c16, waitress {THREADS} threads)",
                p.0, a.0, args.pairs
            ),
        ),
        Figure::info(
            "Flask kept, SDK",
            kept_sdk,
            "",
            format!(
                "throughput under opentelemetry-instrument / plain; SDK {:.0} req/s",
                s.0
            ),
        ),
        Figure::max(
            "Flask p50 added, agent",
            p50_agent,
            p50_sdk,
            "µs",
            format!(
                "at {rate} req/s (target: the SDK's); plain {:.0} µs, agent {:.0} µs; \
                 {:.3} server spans per request",
                p.1, a.1, a.3
            ),
        ),
        Figure::info(
            "Flask p50 added, SDK",
            p50_sdk,
            "µs",
            format!("SDK {:.0} µs; {:.3} server spans per request", s.1, s.3),
        ),
        Figure::max(
            "Flask p99 added, agent",
            p99_agent,
            p99_sdk,
            "µs",
            format!(
                "at {rate} req/s (target: the SDK's); plain {:.0} µs, agent {:.0} µs",
                p.2, a.2
            ),
        ),
        Figure::info(
            "Flask p99 added, SDK",
            p99_sdk,
            "µs",
            format!("SDK {:.0} µs", s.2),
        ),
    ];
    let total = started.elapsed();
    print_table(&figures);
    print_other_work(busy_before, busy_after);
    let now = unix_time()?;
    let versions = util::output(
        &venv.join("bin/python").to_string_lossy(),
        &[
            "-m",
            "pip",
            "list",
            "--format=freeze",
            "--disable-pip-version-check",
        ],
    )
    .map(|out| {
        out.lines()
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                [
                    "flask",
                    "waitress",
                    "opentelemetry-sdk",
                    "opentelemetry-instrumentation-flask",
                ]
                .iter()
                .any(|p| l.starts_with(&format!("{p}==")))
            })
            .map(str::to_owned)
            .collect::<Vec<_>>()
    });
    let report = json!({
        "unix_time": now,
        "mode": "vs-sdk",
        "run": run_info(),
        "host": { "cpus": cpus(), "other_busy_cpus_before": busy_before, "other_busy_cpus_after": busy_after },
        "settings": {
            "pairs": args.pairs, "secs_per_round": args.secs, "rate": rate,
            "waitress_threads": THREADS, "warm_up_plain_rps": warm.rps,
            "wrk": "-t1 -c16 keep-alive", "oha": format!("-q {rate} -c 16 --latency-correction"),
            "python_packages": versions, "agent_args": args.agent_args,
        },
        "figures": figures.iter().map(Figure::json).collect::<Vec<_>>(),
        "rounds": rounds_json,
        "seconds": { "setup": setup_took.as_secs_f64(), "live": live_took.as_secs_f64(), "total": total.as_secs_f64() },
    });
    save(
        &report,
        "bench-sdk",
        "latest-sdk",
        now,
        total,
        live_took,
        &figures,
    )
}
