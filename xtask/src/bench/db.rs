//! `cargo xtask bench --db`: database clients traced by the agent. PostgreSQL 15 (initialised
//! in a temporary directory, `fsync=off`) driven by `pgbench -S` (select-only: one `SELECT`
//! per transaction, simple query protocol, no BEGIN/END) and redis-server driven by
//! `redis-benchmark -t set,get`, untraced and traced rounds interleaved. Figures: throughput
//! kept, p50/p99 added (pgbench at a fixed rate, a quarter of the untraced saturation;
//! redis-benchmark, which has no rate option, at saturation), coverage (CLIENT spans the
//! receiver got / calls made) and the agent's CPU per call. Written as
//! `target/bench/bench-db-<unix time>.json` and `latest-db.json`.
use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use serde_json::{Value as Json, json};
use test_kit::{Proc, TempDir, free_port, run_bounded};

use super::{
    Args,
    agent::Agent,
    receiver::Receiver,
    report::{
        Figure, busy_cpus, coverage_note, cpus, median, print_other_work, print_table, run_info,
        save, unix_time,
    },
    settle,
};
use crate::util::step;

/// pgbench's clients and threads: a few connections, as an application's pool.
const PGBENCH_CLIENTS: u32 = 4;
const PGBENCH_THREADS: u32 = 2;
/// Queries pgbench runs before its clients start (on a connection of its own): the scale
/// (`select count(*) from pgbench_branches`) and the partitioning of pgbench_accounts. Traced
/// like the transactions: the spans of a round are its transactions plus these.
const PGBENCH_SETUP_QUERIES: u64 = 2;
/// redis-benchmark's connections (and keep-alive, one command in flight each).
const REDIS_CLIENTS: u32 = 16;
/// Commands redis-benchmark sends before its tests (`CONFIG GET save`, `CONFIG GET
/// appendonly`): spans like the others.
const REDIS_SETUP_COMMANDS: u64 = 2;

pub(super) fn run(args: &Args, tracer: &Path, started: Instant) -> Result<()> {
    crate::setup::db_bench_deps()?;
    let dir = TempDir::create("bench-db")?;
    let pg = Postgres::start(dir.path())?;
    step("pgbench -i (scale 1), untraced");
    run_bounded(
        "pgbench -i",
        pgbench_cmd(pg.port).args(["-i", "-q", "-s", "1"]),
        Duration::from_secs(120),
    )?;
    let redis = RedisServer::start(dir.path())?;

    let setup_took = started.elapsed();
    let busy_before = busy_cpus();
    let measuring = Instant::now();
    let receiver = Receiver::start()?;
    let endpoint = format!("http://127.0.0.1:{}", receiver.port);
    // One untraced/traced pair of `load`: the traced round under an agent for `port`.
    let pair = |what: &str, port: u16, setup_calls: u64, load: &dyn Fn() -> Result<Load>| {
        step(format!("{what}: untraced"));
        let a = load()?;
        step(format!("{what}: traced"));
        let before = receiver.counts();
        let ag = Agent::start(tracer, port, Some(&endpoint), None, &args.agent_args)?;
        let cpu0 = ag.cpu_seconds()?;
        let b = load()?;
        settle();
        let cpu = ag.cpu_seconds()? - cpu0;
        let rss = ag.peak_rss_kib()?;
        let counters = ag.stop()?;
        let got = receiver.counts().since(&before);
        let calls = b.calls as f64;
        let spans = got.client.saturating_sub(setup_calls);
        let p = Pair {
            ratio: b.rps / a.rps,
            p50_added_us: b.p50_us - a.p50_us,
            p99_added_us: b.p99_us - a.p99_us,
            coverage: spans as f64 / calls,
            cpu_us: cpu * 1e6 / calls,
            losses: counters.losses_text(),
            json: json!({
                "untraced": a.json(),
                "traced": b.json(),
                "ratio": b.rps / a.rps,
                "client_spans": got.client,
                "setup_calls": setup_calls,
                "spans_by_service_kind": got.by_service_kind(),
                "coverage": spans as f64 / calls,
                "agent_cpu_us_per_call": cpu * 1e6 / calls,
                "agent_peak_rss_kib": rss,
                "agent": counters.json(),
            }),
        };
        step(format!(
            "  untraced {:.0} calls/s, traced {:.0} calls/s ({:.3}); p50 {:.0} → {:.0} µs, p99 \
             {:.0} → {:.0} µs; {} client spans for {} calls (+{setup_calls} set-up) = {:.3}%; \
             agent {:.2} µs CPU/call, peak RSS {:.1} MiB; losses: {}",
            a.rps,
            b.rps,
            p.ratio,
            a.p50_us,
            b.p50_us,
            a.p99_us,
            b.p99_us,
            got.client,
            b.calls,
            p.coverage * 100.0,
            p.cpu_us,
            rss as f64 / 1024.0,
            p.losses
        ));
        Ok::<_, anyhow::Error>(p)
    };

    step("warming up PostgreSQL (untraced); its rate sets the fixed-rate rounds'");
    let logs = dir.path().join("pgbench-logs");
    let warm = pgbench(pg.port, 2, None, &logs)?;
    // A quarter of saturation: the traced round must keep up for its latency to mean
    // something (an open loop behind schedule measures only its own backlog).
    let rate = ((warm.rps / 4.0) as u32).max(100);
    let mut pg_saturated = Vec::new();
    let mut pg_rate = Vec::new();
    for i in 1..=args.pairs {
        let what = format!("pgbench -S pair {i}/{}, saturated", args.pairs);
        pg_saturated.push(pair(&what, pg.port, PGBENCH_SETUP_QUERIES, &|| {
            pgbench(pg.port, args.secs, None, &logs)
        })?);
        let what = format!("pgbench -S pair {i}/{}, {rate} tps", args.pairs);
        pg_rate.push(pair(&what, pg.port, PGBENCH_SETUP_QUERIES, &|| {
            pgbench(pg.port, args.secs, Some(rate), &logs)
        })?);
    }

    step("warming up Redis (untraced); its rate sizes the rounds");
    let warm_redis = redis_benchmark(redis.port, 20_000)?;
    // Per test (SET, GET), sized so a round lasts about `secs` untraced.
    let per_test = ((warm_redis.rps * args.secs as f64 / 2.0) as u64).clamp(20_000, 5_000_000);
    let mut redis_rounds = Vec::new();
    for i in 1..=args.pairs {
        let what = format!("redis-benchmark pair {i}/{}", args.pairs);
        redis_rounds.push(pair(&what, redis.port, REDIS_SETUP_COMMANDS, &|| {
            redis_benchmark(redis.port, per_test)
        })?);
    }
    drop(receiver);
    drop(pg);
    drop(redis);
    drop(dir);
    let live_took = measuring.elapsed();
    let busy_after = busy_cpus();

    let of = |v: &[Pair], f: fn(&Pair) -> f64| median(&v.iter().map(f).collect::<Vec<f64>>());
    let losses = |v: &[Pair]| v.iter().map(|p| p.losses.clone()).collect::<Vec<_>>();
    let coverages = |v: &[Pair]| v.iter().map(|p| p.coverage).collect::<Vec<_>>();
    let pg_all: Vec<&Pair> = pg_saturated.iter().chain(&pg_rate).collect();
    let figures = vec![
        Figure::min(
            "PostgreSQL throughput ratio",
            of(&pg_saturated, |p| p.ratio),
            0.95,
            "",
            format!(
                "traced/untraced tps, median of {} pairs (pgbench -S -c {PGBENCH_CLIENTS} -j \
                 {PGBENCH_THREADS}, {} s, saturated)",
                pg_saturated.len(),
                args.secs
            ),
        ),
        Figure::max(
            "PostgreSQL p50 added",
            of(&pg_rate, |p| p.p50_added_us),
            50.0,
            "µs",
            format!("pgbench -S at {rate} tps (-R), per-transaction latencies (-l)"),
        ),
        Figure::max(
            "PostgreSQL p99 added",
            of(&pg_rate, |p| p.p99_added_us),
            200.0,
            "µs",
            format!("pgbench -S at {rate} tps (-R)"),
        ),
        Figure::min(
            "PostgreSQL coverage",
            median(&pg_all.iter().map(|p| p.coverage).collect::<Vec<_>>()) * 100.0,
            99.9,
            "%",
            coverage_note(
                &format!(
                    "CLIENT spans (less pgbench's {PGBENCH_SETUP_QUERIES} set-up queries) / \
                     transactions, saturated then fixed-rate rounds"
                ),
                &[coverages(&pg_saturated), coverages(&pg_rate)].concat(),
                &[losses(&pg_saturated), losses(&pg_rate)].concat(),
            ),
        ),
        Figure::max(
            "agent CPU per PostgreSQL call",
            of(&pg_rate, |p| p.cpu_us),
            10.0,
            "µs",
            format!(
                "utime+stime of the agent / transactions at {rate} tps; saturated: {:.2} µs",
                of(&pg_saturated, |p| p.cpu_us)
            ),
        ),
        Figure::min(
            "Redis throughput ratio",
            of(&redis_rounds, |p| p.ratio),
            0.95,
            "",
            format!(
                "traced/untraced commands/s, median of {} pairs (redis-benchmark -t set,get -c \
                 {REDIS_CLIENTS}, {per_test} each)",
                redis_rounds.len()
            ),
        ),
        Figure::max(
            "Redis p50 added",
            of(&redis_rounds, |p| p.p50_added_us),
            50.0,
            "µs",
            "at saturation (redis-benchmark has no fixed rate): mean of SET's and GET's p50".into(),
        ),
        Figure::max(
            "Redis p99 added",
            of(&redis_rounds, |p| p.p99_added_us),
            200.0,
            "µs",
            "at saturation: mean of SET's and GET's p99".into(),
        ),
        Figure::min(
            "Redis coverage",
            of(&redis_rounds, |p| p.coverage) * 100.0,
            99.9,
            "%",
            coverage_note(
                &format!(
                    "CLIENT spans (less redis-benchmark's {REDIS_SETUP_COMMANDS} set-up \
                     commands) / commands"
                ),
                &coverages(&redis_rounds),
                &losses(&redis_rounds),
            ),
        ),
        Figure::max(
            "agent CPU per Redis call",
            of(&redis_rounds, |p| p.cpu_us),
            10.0,
            "µs",
            "utime+stime of the agent / commands, at saturation".into(),
        ),
    ];
    let total = started.elapsed();
    print_table(&figures);
    print_other_work(busy_before, busy_after);
    let now = unix_time()?;
    let rounds = |v: &[Pair]| v.iter().map(|p| p.json.clone()).collect::<Vec<_>>();
    let report = json!({
        "unix_time": now,
        "mode": "db",
        "run": run_info(),
        "host": { "cpus": cpus(), "other_busy_cpus_before": busy_before, "other_busy_cpus_after": busy_after },
        "settings": {
            "pairs": args.pairs, "secs_per_round": args.secs,
            "pgbench": format!("-n -S -c {PGBENCH_CLIENTS} -j {PGBENCH_THREADS} -T {} (scale 1)", args.secs),
            "pgbench_rate_tps": rate, "pgbench_warm_up_tps": warm.rps,
            "redis_benchmark": format!("-t set,get -c {REDIS_CLIENTS} -n {per_test}"),
            "redis_warm_up_calls_per_sec": warm_redis.rps,
            "agent_args": args.agent_args,
        },
        "figures": figures.iter().map(Figure::json).collect::<Vec<_>>(),
        "postgres_saturated_rounds": rounds(&pg_saturated),
        "postgres_rate_rounds": rounds(&pg_rate),
        "redis_rounds": rounds(&redis_rounds),
        "seconds": { "setup": setup_took.as_secs_f64(), "live": live_took.as_secs_f64(), "total": total.as_secs_f64() },
    });
    save(
        &report,
        "bench-db",
        "latest-db",
        now,
        total,
        live_took,
        &figures,
    )
}

/// One untraced/traced pair.
struct Pair {
    ratio: f64,
    p50_added_us: f64,
    p99_added_us: f64,
    /// Spans (set-up calls taken off) / calls of the traced round.
    coverage: f64,
    cpu_us: f64,
    losses: String,
    json: Json,
}

/// What a load round made: calls, their rate and latency.
struct Load {
    calls: u64,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
}

impl Load {
    fn json(&self) -> Json {
        json!({ "calls": self.calls, "rps": self.rps, "p50_us": self.p50_us, "p99_us": self.p99_us })
    }
}

/// The command run as the `postgres` user (initdb and the server refuse root).
fn as_postgres(program: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
        .arg(format!("/usr/lib/postgresql/15/bin/{program}"));
    c
}

/// A private PostgreSQL 15 in `dir/pg` on a free loopback port: durability off (what is
/// measured is the wire, not the disk).
struct Postgres {
    port: u16,
    _proc: Proc,
}

impl Postgres {
    fn start(dir: &Path) -> Result<Self> {
        let root = dir.join("pg");
        std::fs::create_dir_all(&root)?;
        let chown = Command::new("chown").arg("postgres").arg(&root).status()?;
        ensure!(chown.success(), "chown postgres {}", root.display());
        let data = root.join("data");
        step("initdb (PostgreSQL 15, trust authentication)");
        run_bounded(
            "initdb",
            as_postgres("initdb")
                .args(["-A", "trust", "-U", "postgres", "-D"])
                .arg(&data),
            Duration::from_secs(120),
        )?;
        let port = free_port();
        let mut proc = Proc::spawn(
            "postgres",
            as_postgres("postgres")
                .arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
                .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
                .arg("-k")
                .arg(&root),
        )?
        .terminate_on_drop(Duration::from_secs(10));
        proc.wait_listening(port, Duration::from_secs(60))?;
        Ok(Self { port, _proc: proc })
    }
}

fn pgbench_cmd(port: u16) -> Command {
    let mut c = Command::new("pgbench");
    c.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"]);
    c.env("PGDATABASE", "postgres");
    c
}

/// `pgbench -n -S` for `secs` (at `rate` tps, or as fast as the server answers), each
/// transaction's latency logged under `logs` (emptied first).
fn pgbench(port: u16, secs: u64, rate: Option<u32>, logs: &Path) -> Result<Load> {
    let _ = std::fs::remove_dir_all(logs);
    std::fs::create_dir_all(logs)?;
    let mut cmd = pgbench_cmd(port);
    cmd.args(["-n", "-S", "-c", &PGBENCH_CLIENTS.to_string()])
        .args(["-j", &PGBENCH_THREADS.to_string(), "-T", &secs.to_string()])
        .arg("-l")
        .arg(format!("--log-prefix={}", logs.join("tx").display()));
    if let Some(rate) = rate {
        cmd.args(["-R", &rate.to_string()]);
    }
    let out = run_bounded("pgbench", &mut cmd, Duration::from_secs(secs + 60))?;
    let field = |prefix: &str| -> Option<String> {
        out.lines()
            .find_map(|l| l.strip_prefix(prefix).map(|v| v.trim().to_owned()))
    };
    // `number of transactions actually processed: 123456`
    let calls: u64 = field("number of transactions actually processed:")
        .and_then(|v| v.split('/').next()?.parse().ok())
        .with_context(|| format!("no transaction count in pgbench's output:\n{out}"))?;
    let failed: u64 = field("number of failed transactions:")
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    ensure!(failed == 0 && calls > 0, "pgbench: {failed} failed:\n{out}");
    // `tps = 12345.678901 (without initial connection time)`
    let rps: f64 = field("tps = ")
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no tps in pgbench's output:\n{out}"))?;
    // Each log line: client_id transaction_no latency_us script_no time_epoch time_us [lag].
    let mut latencies = Vec::with_capacity(calls as usize);
    for entry in std::fs::read_dir(logs)? {
        let text = std::fs::read_to_string(entry?.path())?;
        latencies.extend(
            text.lines()
                .filter_map(|l| l.split_whitespace().nth(2)?.parse::<f64>().ok()),
        );
    }
    ensure!(!latencies.is_empty(), "pgbench logged no transaction");
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    Ok(Load {
        calls,
        rps,
        p50_us: at(0.50),
        p99_us: at(0.99),
    })
}

/// A private redis-server on a free loopback port, persisting nothing.
struct RedisServer {
    port: u16,
    _proc: Proc,
}

impl RedisServer {
    fn start(dir: &Path) -> Result<Self> {
        let port = free_port();
        let mut proc = Proc::spawn(
            "redis-server",
            Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--dir"])
                .arg(dir),
        )?
        .terminate_on_drop(Duration::from_secs(10));
        proc.wait_listening(port, Duration::from_secs(20))?;
        Ok(Self { port, _proc: proc })
    }
}

/// `redis-benchmark -t set,get` with `per_test` commands each: the calls of both, their
/// combined rate and the mean of the two tests' p50 and p99.
fn redis_benchmark(port: u16, per_test: u64) -> Result<Load> {
    let out = run_bounded(
        "redis-benchmark",
        Command::new("redis-benchmark")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-t", "set,get", "-c", &REDIS_CLIENTS.to_string()])
            .args(["-n", &per_test.to_string(), "--csv"]),
        Duration::from_secs(600),
    )?;
    // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",
    // "p99_latency_ms","max_latency_ms"
    let mut tests = Vec::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split(',').map(|v| v.trim_matches('"')).collect();
        if f.len() >= 7
            && (f[0] == "SET" || f[0] == "GET")
            && let (Ok(rps), Ok(p50), Ok(p99)) = (
                f[1].parse::<f64>(),
                f[4].parse::<f64>(),
                f[6].parse::<f64>(),
            )
        {
            tests.push((rps, p50 * 1000.0, p99 * 1000.0));
        }
    }
    ensure!(
        tests.len() == 2,
        "redis-benchmark's CSV has no SET and GET rows:\n{out}"
    );
    let n = tests.len() as f64;
    let seconds: f64 = tests.iter().map(|(rps, _, _)| per_test as f64 / rps).sum();
    Ok(Load {
        calls: per_test * 2,
        rps: per_test as f64 * n / seconds,
        p50_us: tests.iter().map(|t| t.1).sum::<f64>() / n,
        p99_us: tests.iter().map(|t| t.2).sum::<f64>() / n,
    })
}
