//! Harness for the end-to-end tests: free ports, real servers and clients as child processes,
//! the agent binary, the OTLP receiver that decodes with the official protobufs, and the
//! scenario that ties them together and reads the agent's counters.
pub mod agent;
pub mod counters;
pub mod databases;
pub mod netns;
pub mod peers;
pub mod privilege;
pub mod procs;
pub mod prometheus;
pub mod receiver;
pub mod scenario;
pub mod services;

pub use agent::{Agent, log_line, rss_kib, summary, without_endpoints};
pub use counters::{Counters, DbLosses, ExportTotals, Injection, KernelDrops, Sampling};
pub use databases::{check_a_web_requests_queries, is_db, run_python, start_postgres};
pub use netns::Node;
pub use peers::{Certs, grpcpeer};
pub use privilege::require_root;
pub use procs::*;
pub use receiver::{Receiver, SpanJson, by_path};
pub use scenario::{Outcome, Scenario, Setup};
pub use services::{echo_server, proxy, python_service};

use std::{process::Command, time::Duration};

/// The test HTTP server (tests/servers/http_server.py) on a free port.
pub fn test_http_server() -> anyhow::Result<(Proc, u16)> {
    let port = free_port();
    let script = workspace_root().join("tests/servers/http_server.py");
    let p = Proc::spawn(
        "test http server",
        Command::new("python3").arg(script).arg(port.to_string()),
    )?;
    p.wait_line("READY", Duration::from_secs(10))?;
    Ok((p, port))
}
