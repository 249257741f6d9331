//! The Python services of tests/servers as child processes, each returned once it printed
//! READY: any of them by script, the echo server, and the proxy that makes a chain of services
//! (each request it serves calls a backend first).
use std::{process::Command, time::Duration};

use anyhow::Result;

use crate::{Proc, free_port, workspace_root};

/// How long a service may take to print READY (the OpenTelemetry SDK's imports are slow).
const READY: Duration = Duration::from_secs(20);

/// `python3 tests/servers/<script> <args…>` with `env`, named `name` in failures.
pub fn python_service(
    name: &str,
    script: &str,
    args: &[String],
    env: &[(&str, &str)],
) -> Result<Proc> {
    let p = Proc::spawn(
        name,
        Command::new("python3")
            .arg(workspace_root().join("tests/servers").join(script))
            .args(args)
            .envs(env.iter().copied()),
    )?;
    p.wait_line("READY", READY)?;
    Ok(p)
}

/// The echo server (tests/servers/echo.py) on a free port: answers each request with the
/// bytes it received.
pub fn echo_server() -> Result<(Proc, u16)> {
    let port = free_port();
    let p = python_service("echo server", "echo.py", &[port.to_string()], &[])?;
    Ok((p, port))
}

/// A hop of a chain (tests/servers/proxy.py) on a free port: its handler thread answers each
/// request after one request of its own to the `backend` port, for `/backend<path>`.
pub fn proxy(backend: u16) -> Result<(Proc, u16)> {
    let port = free_port();
    let p = python_service(
        "proxy",
        "proxy.py",
        &[port.to_string(), backend.to_string()],
        &[],
    )?;
    Ok((p, port))
}
