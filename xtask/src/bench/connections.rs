//! Memory per tracked connection: the agent's resident memory before and after this process
//! opens many keep-alive connections to nginx (both ends traced), each carrying one request
//! and then idle. Issue 19's goal: 100,000 tracked connections within 128 MiB of agent memory.
use std::{
    net::Ipv4Addr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde_json::{Value as Json, json};
use test_kit::{Proc, TempDir, free_port, start_nginx_sized};

use super::{agent::Agent, report::Figure};
use crate::util::step;

/// Client connections opened: both ends are traced, so the agent tracks twice as many.
pub(super) const CLIENT_CONNECTIONS: usize = 50_000;
/// Processes the connections are spread over, on both sides (client processes, nginx
/// workers): the open-file limit here is 20,000 per process and cannot be raised (no
/// CAP_SYS_RESOURCE).
const PROCESSES: usize = 4;
/// Loopback addresses nginx listens on: one destination offers ~28k ephemeral ports
/// (`ip_local_port_range`), two give room for every connection.
const ADDRESSES: [Ipv4Addr; 2] = [Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2)];
/// Longer than the agent's idle sweep (1 s), which gives quiet connections' buffers back.
const IDLE: Duration = Duration::from_secs(3);

pub(super) struct ConnMemory {
    tracked: u64,
    rss_before_kib: u64,
    rss_open_kib: u64,
    refused: u64,
    took: Duration,
}

/// Starts nginx and an agent with room for every connection (`--max-connections`), opens the
/// connections with one request each, waits until they are idle, and reads the agent's RSS.
pub(super) fn idle_connections(tracer: &Path, extra: &[String]) -> Result<ConnMemory> {
    let started = Instant::now();
    let n = CLIENT_CONNECTIONS;
    let per_process = n / PROCESSES;
    let dir = TempDir::create("bench-conns")?;
    let port = free_port();
    let listen: String = ADDRESSES
        .iter()
        .map(|a| format!("listen {a}:{port} reuseport backlog=4096;\n        "))
        .collect();
    let server = format!("{listen}location / {{ return 200 \"ok\"; }}");
    let http = "keepalive_timeout 300s;\n    keepalive_requests 1000000;";
    let _nginx = start_nginx_sized(
        &dir.path().join("nginx"),
        port,
        http,
        &server,
        PROCESSES as u32,
        // Headroom: a worker short of free connections (under a sixteenth left) closes idle
        // keep-alive ones, 32 at a time, and reuseport does not spread them evenly.
        (per_process * 5 / 4 + 1000) as u32,
    )?;
    // Opening them all takes longer than the default idle timeout (30 s) on a slow machine:
    // the first ones would be forgotten before the last open, and the figure understate them.
    let mut args = vec![
        "--max-connections".to_owned(),
        (2 * n + 4096).to_string(),
        "--idle-timeout".to_owned(),
        "3600".to_owned(),
    ];
    args.extend_from_slice(extra);
    // Spans are counted and discarded: the figure is the connections' state, not an export
    // queue's.
    let agent = Agent::start(tracer, port, None, None, &args)?;
    std::thread::sleep(Duration::from_secs(1));
    let rss_before_kib = agent.rss_kib()?;
    step(format!(
        "connections round: {n} keep-alive connections to nginx, one request each, both ends traced ({} tracked)",
        2 * n
    ));
    let mut clients = Vec::with_capacity(PROCESSES);
    for _ in 0..PROCESSES {
        let mut c = Command::new("python3");
        c.args(["-c", CLIENT, &port.to_string(), &per_process.to_string()]);
        c.args(ADDRESSES.iter().map(|a| a.to_string()));
        clients.push(Proc::spawn("connections client", &mut c)?);
    }
    for c in &clients {
        c.wait_line("OPEN", Duration::from_secs(120))
            .context("a client did not open its connections")?;
    }
    std::thread::sleep(IDLE);
    let rss_open_kib = agent.rss_kib()?;
    let counters = agent.stop()?;
    drop(clients);
    // What the agent really tracked when its RSS was read (the clients still hold every
    // connection): a round whose events were lost or not yet read would understate the cost.
    let tracked = counters.agent("conns_open");
    let expected = 2 * n as u64;
    let accounted = format!(
        "opened {}, closed {}, expired {}; losses: {}",
        counters.agent("conns_opened"),
        counters.agent("conns_closed"),
        counters.agent("conns_expired"),
        counters.losses_text()
    );
    if tracked < expected - expected / 100 {
        anyhow::bail!(
            "the agent tracked {tracked} of the {expected} connections ({accounted}): the \
             memory figure would understate their cost"
        );
    }
    step(format!("  agent: {tracked} connections open ({accounted})"));
    let m = ConnMemory {
        tracked,
        rss_before_kib,
        rss_open_kib,
        refused: counters.agent("conns_refused_full"),
        took: started.elapsed(),
    };
    step(format!(
        "  agent RSS {:.1} MiB before, {:.1} MiB with {tracked} tracked connections open: {:.0} bytes per connection; refused for lack of room: {}; {:.0} s",
        rss_before_kib as f64 / 1024.0,
        rss_open_kib as f64 / 1024.0,
        m.bytes_per_connection(),
        m.refused,
        m.took.as_secs_f64()
    ));
    Ok(m)
}

/// Opens `COUNT` connections to `PORT`, spread over the addresses given, each carrying one
/// request and its whole response (200, body `ok`); prints `OPEN`, then holds them until
/// killed.
const CLIENT: &str = r#"
import socket, sys, time
port, count, addrs = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
held = []
for i in range(count):
    s = socket.create_connection((addrs[i % len(addrs)], port), timeout=10)
    s.sendall(b"GET /idle HTTP/1.1\r\nHost: bench\r\n\r\n")
    got = b""
    while not got.endswith(b"\r\n\r\nok"):
        chunk = s.recv(512)
        assert chunk and len(got) < 4096, got
        got += chunk
    assert got.startswith(b"HTTP/1.1 200"), got
    held.append(s)
print("OPEN", flush=True)
time.sleep(3600)
"#;

impl ConnMemory {
    fn bytes_per_connection(&self) -> f64 {
        self.rss_open_kib.saturating_sub(self.rss_before_kib) as f64 * 1024.0 / self.tracked as f64
    }

    pub(super) fn figures(&self) -> Vec<Figure> {
        let note = format!(
            "{} client connections to nginx, both ends traced, one request each then idle {} s; \
             VmRSS {} KiB before, {} KiB open; refused for lack of room: {}",
            self.tracked / 2,
            IDLE.as_secs(),
            self.rss_before_kib,
            self.rss_open_kib,
            self.refused
        );
        vec![
            Figure::max(
                "agent RSS, 100k tracked connections",
                self.rss_open_kib as f64 / 1024.0,
                128.0,
                "MiB",
                note,
            ),
            Figure::max(
                "agent memory per tracked connection",
                self.bytes_per_connection(),
                1024.0,
                "B",
                "(VmRSS open − VmRSS before) / tracked connections: the connection table, \
                 parsers and whatever the one request per connection left (spans in the view's \
                 store)"
                    .into(),
            ),
        ]
    }

    pub(super) fn json(&self) -> Json {
        json!({
            "tracked": self.tracked,
            "rss_before_kib": self.rss_before_kib,
            "rss_open_kib": self.rss_open_kib,
            "bytes_per_connection": self.bytes_per_connection(),
            "refused": self.refused,
            "seconds": self.took.as_secs_f64(),
        })
    }
}
