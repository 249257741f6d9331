//! Child processes that are always cleaned up, and waiting helpers.
use std::{
    io::{BufRead, BufReader, Read},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A port nobody listens on right now (the OS picks it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

pub fn wait_port(port: u16, timeout: Duration) -> Result<()> {
    wait_for(timeout, || TcpStream::connect(("127.0.0.1", port)).ok())
        .map(|_| ())
        .with_context(|| format!("nothing listens on port {port} after {timeout:?}"))
}

/// A child process killed (and reaped) when dropped; its output lines are collected.
pub struct Proc {
    pub child: Child,
    pub name: String,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

fn collect(stream: impl Read + Send + 'static, sink: Arc<Mutex<Vec<String>>>) {
    thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Self> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        collect(child.stdout.take().unwrap(), stdout.clone());
        collect(child.stderr.take().unwrap(), stderr.clone());
        Ok(Self {
            child,
            name: name.to_owned(),
            stdout,
            stderr,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until a line of stdout or stderr contains `needle`.
    pub fn wait_line(&self, needle: &str, timeout: Duration) -> Result<String> {
        wait_for(timeout, || {
            self.stdout()
                .into_iter()
                .chain(self.stderr())
                .find(|l| l.contains(needle))
        })
        .with_context(|| {
            format!(
                "{} printed no line containing {needle:?} in {timeout:?}; stderr:\n{}",
                self.name,
                self.stderr().join("\n")
            )
        })
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for exit up to `timeout`; kills on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("{} did not exit within {timeout:?}", self.name);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `python3 -m http.server` (threaded) on `port`, serving `dir`.
pub fn python_http_server(port: u16, dir: &Path) -> Result<Proc> {
    let p = Proc::spawn(
        "python http.server",
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(dir),
    )?;
    wait_port(port, Duration::from_secs(10))?;
    Ok(p)
}

/// Runs curl to completion; returns its stdout.
pub fn curl(args: &[&str]) -> Result<String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .context("running curl (is it installed? `cargo xtask setup --test-deps`)")?;
    if !out.status.success() {
        bail!(
            "curl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The agent binary built by `cargo xtask test` (TRACER_BIN), else the workspace's debug build.
pub fn tracer_bin() -> Result<PathBuf> {
    let path = std::env::var_os("TRACER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/debug/tracer"));
    if !path.exists() {
        bail!(
            "agent binary {} not found: run the tests with `cargo xtask test` (it builds it)",
            path.display()
        );
    }
    Ok(path)
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tracer-test-{tag}-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A raw TCP server in this test process (traced like any other process): each accepted
/// connection is handed to `handler` on its own thread. Returns the port.
pub fn raw_server(handler: fn(std::net::TcpStream)) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            thread::spawn(move || handler(conn));
        }
    });
    port
}

/// Reads from `s` until the bytes contain the end of a request head (or EOF/error).
pub fn read_head(s: &mut std::net::TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

/// Closes with a reset (SO_LINGER 0) instead of a FIN.
pub fn reset(s: std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a correctly sized value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        );
    }
    drop(s);
}

/// Ids of every BPF program loaded in the kernel (the kernel's own view).
pub fn loaded_program_ids() -> std::collections::HashSet<u32> {
    aya::programs::loaded_programs()
        .filter_map(|p| p.ok().map(|p| p.id()))
        .collect()
}

/// Ids of the BPF programs process `pid` holds (from its fds' fdinfo).
pub fn program_ids_of(pid: u32) -> std::collections::HashSet<u32> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Default::default();
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_to_string(fd.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect()
}

/// A private nginx in `dir` whose server block listens with `listen` (e.g.
/// `127.0.0.1:8443 ssl` plus `extra` certificate lines, or `127.0.0.1:8080 http2`) on `port`:
/// `/missing` answers 404, everything else 200 "ok".
pub fn nginx(dir: &Path, port: u16, listen: &str, extra: &str) -> Proc {
    let d = dir.join("nginx");
    std::fs::create_dir_all(&d).unwrap();
    let conf = format!(
        r#"user root;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    default_type text/plain;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen {listen};
        {extra}
        location /missing {{ return 404 "not here\n"; }}
        location / {{ return 200 "ok\n"; }}
    }}
}}
"#,
        d = d.display(),
    );
    let conf_path = d.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let p = Proc::spawn(
        "nginx",
        Command::new("nginx")
            .arg("-p")
            .arg(&d)
            .arg("-e")
            .arg(d.join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null()),
    )
    .expect("starting nginx (install it: `cargo xtask setup --test-deps`)");
    if let Err(e) = wait_port(port, Duration::from_secs(10)) {
        panic!(
            "nginx did not listen: {e}; error log:\n{}",
            std::fs::read_to_string(d.join("error.log")).unwrap_or_default()
        );
    }
    p
}
