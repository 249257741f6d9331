//! Harness for the end-to-end tests: free ports, real servers and clients as child processes,
//! the agent binary, and the OTLP receiver that decodes with the official protobufs.
pub mod agent;
pub mod peers;
pub mod procs;
pub mod receiver;

pub use agent::{Agent, counter, log_line, rss_kib};
pub use peers::{Certs, grpcpeer};
pub use procs::*;
pub use receiver::{Receiver, SpanJson};

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
