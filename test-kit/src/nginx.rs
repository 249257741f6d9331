//! A private nginx: its own prefix, configuration, pid file and logs, one worker (unless asked
//! for more), on a loopback port. Never touches the system's nginx.
use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};

use crate::proc::Proc;

/// Starts nginx with everything it writes under `prefix` (created), serving one `server`
/// block that listens on 127.0.0.1:`port`. `http` holds extra directives of the `http` block,
/// `server` the server block's own (`listen` included), each a line or several. Returns once
/// nginx accepts connections; the error log is in the error when it does not.
pub fn start_nginx(prefix: &Path, port: u16, http: &str, server: &str) -> Result<Proc> {
    start_nginx_sized(prefix, port, http, server, 1, 1024)
}

/// [`start_nginx`] with `workers` worker processes, each with room for `connections` open at
/// once (its connection and file limits).
pub fn start_nginx_sized(
    prefix: &Path,
    port: u16,
    http: &str,
    server: &str,
    workers: u32,
    connections: u32,
) -> Result<Proc> {
    std::fs::create_dir_all(prefix).with_context(|| format!("creating {}", prefix.display()))?;
    let conf = format!(
        r#"user root;
worker_processes {workers};
worker_rlimit_nofile {files};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    default_type text/plain;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    {http}
    server {{
        {server}
    }}
}}
"#,
        d = prefix.display(),
        files = connections + 1000,
    );
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let error_log = prefix.join("error.log");
    let mut proc = Proc::spawn_keeping_stdout(
        "nginx",
        Command::new("nginx")
            .arg("-p")
            .arg(prefix)
            .arg("-e")
            .arg(&error_log)
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null()),
    )
    .context("starting nginx (install it: `cargo xtask setup --test-deps`)")?
    // A killed master leaves its worker serving: SIGTERM stops both.
    .terminate_on_drop(Duration::from_secs(5));
    proc.wait_listening(port, Duration::from_secs(10))
        .with_context(|| {
            format!(
                "nginx error log:\n{}",
                std::fs::read_to_string(&error_log).unwrap_or_default()
            )
        })?;
    Ok(proc)
}

/// The tests' nginx in `dir` whose server block listens with `listen` (e.g.
/// `127.0.0.1:8443 ssl` plus `extra` certificate lines, or `127.0.0.1:8080 http2`) on `port`:
/// `/missing` answers 404, everything else 200 "ok".
pub fn nginx(dir: &Path, port: u16, listen: &str, extra: &str) -> Proc {
    let server = format!(
        "listen {listen};\n        {extra}\n        \
         location /missing {{ return 404 \"not here\\n\"; }}\n        \
         location / {{ return 200 \"ok\\n\"; }}"
    );
    start_nginx(&dir.join("nginx"), port, "", &server).unwrap_or_else(|e| panic!("{e:#}"))
}
