//! `cargo xtask bench`: what tracing costs, measured side by side in one run.
//!
//! - Throughput: nginx (1 worker, tiny `return 200`) saturated by `wrk` with keep-alive,
//!   untraced and traced rounds interleaved (A B A B ...): traced/untraced requests per second,
//!   and the TCP segments sent per request in each (OutSegs, /proc/net/snmp; 2.00 untraced).
//! - Latency at a fixed rate (5k req/s, `oha` open loop with latency correction): p50 and p99
//!   added by tracing.
//! - Coverage at that rate: server spans received over OTLP / requests sent, with the agent's
//!   own loss counters for every round.
//! - Agent cost under that load: CPU per request (utime+stime of the agent over the load
//!   window) and peak RSS (VmHWM).
//! - Pipeline throughput without the kernel: the criterion benchmark `tracer-user/benches/
//!   pipeline.rs` replays a recorded event stream through reassembly → parsing → spans →
//!   OTLP encoding (`cargo xtask bench --record` re-records the stream from live traffic),
//!   with and without the span-metrics stage (its cost: at most 10 % of the replay's
//!   throughput); `--replay-only` runs only this part.
//!
//! - gRPC (`--grpc`, instead of the above): the grpc-go peer (tests/servers/grpcpeer) serving
//!   unary calls that `h2load` drives over h2c, untraced and traced rounds interleaved:
//!   throughput ratio, coverage (SERVER spans with `grpc-status` 0 / calls), agent CPU per call
//!   and peak RSS; written as `target/bench/bench-grpc-<unix time>.json` and `latest-grpc.json`.
//!
//! - Side by side with the OpenTelemetry Python SDK (`--vs-sdk`, instead of the above): a Flask
//!   service plain, traced by the agent and instrumented with the SDK, rounds interleaved:
//!   throughput kept and p50/p99 added by each; `bench-sdk-<unix time>.json`, `latest-sdk.json`.
//!
//! - Databases (`--db`, instead of the above): pgbench `-S` against PostgreSQL and
//!   redis-benchmark against redis-server, untraced and traced rounds interleaved: throughput
//!   kept, p50/p99 added, coverage (CLIENT spans / calls), agent CPU per call;
//!   `bench-db-<unix time>.json`, `latest-db.json`.
//!
//! - Memory per tracked connection (HTTP/1 run, after the live rounds): 50,000 keep-alive
//!   connections to nginx with one request each, both ends traced (100,000 tracked), then idle:
//!   the agent's VmRSS before and with them open, per tracked connection (`connections`).
//!
//! In the traced rounds at a fixed rate the kernel's BPF statistics are on (`bpf_stats`): the
//! agent's programs' run time per request, per program and summed (both ends). One more traced
//! round runs under `perf record -g` (`profile`, where perf is installed): the agent's top 10
//! symbols, printed, in the JSON and as the whole report in `target/bench/profile-*.txt`.
//! Every report carries the commit measured and the machine (`report::run_info`), so that runs
//! of HTTP/1 (`bench-*.json`), `--tls` (`bench-tls-*.json`) and `--grpc` compare across commits.
//!
//! The traced rounds export to a counting OTLP/gRPC receiver that runs inside this process, at
//! SCHED_IDLE: it stands in for a backend on another machine, so its decoding takes only CPU
//! the measured processes leave idle (at normal priority it added ~2 ms to the HTTP/1 p99).
//! Figures are medians over the rounds, printed as a table and written as JSON to
//! `target/bench/bench-<unix time>.json` and `target/bench/latest.json`. A missed target is a
//! finding (printed as MISSED), never an error: the task fails only when something breaks.
//! Every process it starts (nginx, the agent, load generators) is stopped on every path (the
//! `test-kit` crate's `Proc`, shared with the end-to-end tests).
//!
//! One module per concern: `http` and `grpc` run the two benchmarks, `pipeline` the criterion
//! replay of the `recording`; `nginx`, `load` (wrk, oha), `agent` (its CPU, RSS and final
//! `counters`) and the counting `receiver` are what the rounds drive and read; `bpf_stats` and
//! `profile` what the kernel programs and the agent spend; `vs_sdk` the Flask side-by-side;
//! `sampled_replay` the replay with sampling on (issue 14's figure); `report` turns the rounds
//! into figures, the table and the JSON file.
mod agent;
mod bpf_stats;
mod connections;
mod counters;
mod criterion;
mod db;
mod grpc;
mod http;
mod load;
mod nginx;
mod pipeline;
mod profile;
mod receiver;
mod recording;
mod report;
mod sampled_replay;
mod vs_sdk;

use std::time::{Duration, Instant};

use anyhow::Result;

pub use load::cargo_home;

/// Fixed request rate of the latency and coverage rounds.
const RATE: u32 = 5000;

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
    /// Only the pipeline replay (criterion, the committed recording, one core): its
    /// throughput with the span-metrics stage on and off, the stage's cost per span, and the
    /// replay with sampling at 0.1 plus tail rules against sampling off. No live rounds:
    /// needs neither root nor nginx.
    #[arg(long, conflicts_with_all = ["record", "tls", "grpc", "vs_sdk", "db"])]
    replay_only: bool,
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
    /// Side by side with the OpenTelemetry Python SDK instead: a Flask service (waitress)
    /// plain, traced by the agent, and under `opentelemetry-instrument` (OTLP batch export to
    /// the same receiver), rounds interleaved; throughput kept and p50/p99 added by each.
    #[arg(long, conflicts_with_all = ["tls", "record", "grpc"])]
    vs_sdk: bool,
    /// Database clients instead: pgbench `-S` (4 clients) against a PostgreSQL 15 started in a
    /// temporary directory, and redis-benchmark (SET, GET; 16 clients) against redis-server,
    /// untraced and traced: throughput kept, p50/p99 added, coverage (CLIENT spans / calls),
    /// agent CPU per call.
    #[arg(long, conflicts_with_all = ["tls", "record", "grpc", "vs_sdk"])]
    db: bool,
    /// Only the memory-per-connection round of the HTTP/1 run: 50,000 keep-alive connections
    /// to nginx, one request each, both ends traced (100,000 tracked), then idle; the agent's
    /// RSS before and with them open.
    #[arg(long, conflicts_with_all = ["record", "replay_only", "tls", "grpc", "vs_sdk", "db"])]
    connections_only: bool,
    /// Only the live rounds of the HTTP/1 run (throughput, latency, coverage, agent CPU, kernel
    /// time): no profile, no memory-per-connection round, no pipeline replay. For quick A/B
    /// runs of two builds (`TRACER_BIN`) or two agent options, alternated.
    #[arg(long, conflicts_with_all = ["record", "replay_only", "grpc", "vs_sdk", "db", "connections_only"])]
    live_only: bool,
    /// With `--live-only`: the agent's profile round as well (`perf record -g` during one more
    /// traced round), for an A/B run that also shows where the agent's time went.
    #[arg(long, requires = "live_only")]
    profile: bool,
    /// Extra option for the traced agent (repeatable), e.g.
    /// `--agent-arg=--inject-traceparent` to measure injection.
    #[arg(long = "agent-arg", value_name = "ARG", allow_hyphen_values = true)]
    agent_args: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    if args.replay_only {
        pipeline::replay_only()?;
        report::print_table(&sampled_replay::sampled_replay()?.figures());
        return Ok(());
    }
    let started = Instant::now();
    crate::setup::bench_deps()?;
    // `TRACER_BIN` (as for the end-to-end tests): measure that agent binary instead of
    // building the release one — a check of the bench itself, or two builds compared.
    let tracer = match std::env::var_os("TRACER_BIN") {
        Some(bin) => {
            crate::util::step(format!(
                "measuring TRACER_BIN={} (not a fresh release build)",
                bin.to_string_lossy()
            ));
            bin.into()
        }
        None => crate::build_agent()?,
    };
    if args.grpc {
        grpc::run(&args, &tracer, started)
    } else if args.vs_sdk {
        vs_sdk::run(&args, &tracer, started)
    } else if args.db {
        db::run(&args, &tracer, started)
    } else if args.connections_only {
        let m = connections::idle_connections(&tracer, &args.agent_args)?;
        report::print_table(&m.figures());
        Ok(())
    } else {
        http::run(&args, &tracer, started)
    }
}

/// Lets the agent take the last events and export the last batch after a load round.
fn settle() {
    std::thread::sleep(Duration::from_millis(1000));
}
