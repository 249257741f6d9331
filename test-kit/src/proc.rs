//! Child processes that are stopped on every path, with their output collected line by line.
use std::{
    ffi::OsStr,
    io::{BufRead, BufReader, Read},
    net::TcpStream,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use crate::wait::wait_for;

/// Lines kept per output stream: far more than any test or bench round prints, yet bounded
/// should a child log in a loop (later lines are read, so the child never blocks, and dropped).
const MAX_LINES: usize = 100_000;
/// How long a load generator that overran its time has to exit after SIGTERM, before SIGKILL.
const OVERRUN_GRACE: Duration = Duration::from_secs(5);
/// How long the output readers may take to see the end of the pipes once the child exited
/// (a grandchild that inherited them can keep them open: then the lines so far are enough).
const READERS_GRACE: Duration = Duration::from_secs(2);
/// Lines of stderr quoted in error messages.
const TAIL_LINES: usize = 20;

type Lines = Arc<Mutex<Vec<String>>>;

/// A child process stopped and reaped when dropped (killed at once, or given time to exit
/// after SIGTERM: [`Proc::terminate_on_drop`]); its stdout and stderr lines are collected.
pub struct Proc {
    pub child: Child,
    pub name: String,
    stdout: Lines,
    stderr: Lines,
    readers: Vec<JoinHandle<()>>,
    /// `Some`: dropping sends SIGTERM and waits this long before SIGKILL.
    drop_grace: Option<Duration>,
}

/// Reads `stream` to its end, keeping up to [`MAX_LINES`] lines (lossy UTF-8).
fn collect(stream: impl Read + Send + 'static, sink: Lines) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            let mut lines = sink.lock().unwrap();
            if lines.len() < MAX_LINES {
                lines.push(String::from_utf8_lossy(text).into_owned());
            }
        }
    })
}

impl Proc {
    /// Starts `cmd` with stdin closed, collecting both stdout and stderr.
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Self> {
        Self::start(name, cmd.stdout(Stdio::piped()))
    }

    /// Starts `cmd` with stdin closed, collecting stderr only: stdout goes where `cmd` already
    /// sends it (e.g. `Stdio::null()` for a child whose output is not wanted).
    pub fn spawn_keeping_stdout(name: &str, cmd: &mut Command) -> Result<Self> {
        Self::start(name, cmd)
    }

    fn start(name: &str, cmd: &mut Command) -> Result<Self> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {name} (`{}`)", describe(cmd)))?;
        let stdout = Lines::default();
        let stderr = Lines::default();
        let mut readers = vec![collect(
            child.stderr.take().expect("stderr is piped"),
            stderr.clone(),
        )];
        if let Some(out) = child.stdout.take() {
            readers.push(collect(out, stdout.clone()));
        }
        Ok(Self {
            child,
            name: name.to_owned(),
            stdout,
            stderr,
            readers,
            drop_grace: None,
        })
    }

    /// When dropped while running, the child gets SIGTERM and `grace` to exit before SIGKILL
    /// (for children that must clean up: nginx's workers outlive a killed master, the agent
    /// flushes its spans), instead of SIGKILL at once.
    pub fn terminate_on_drop(mut self, grace: Duration) -> Self {
        self.drop_grace = Some(grace);
        self
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

    /// The last lines of stderr, for error messages.
    pub fn stderr_tail(&self) -> String {
        let lines = self.stderr.lock().unwrap();
        lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
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

    /// Waits until something accepts connections on 127.0.0.1:`port`; fails at once if the
    /// child exits first.
    pub fn wait_listening(&mut self, port: u16, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.try_wait() {
                bail!(
                    "{} exited ({status}) before listening on port {port}:\n{}",
                    self.name,
                    self.stderr_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} is not listening on 127.0.0.1:{port} after {timeout:?}",
                    self.name
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status, if the child has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for exit up to `timeout`, killing (and reaping) the child on timeout; once it
    /// exited, gives the readers a moment to collect its last lines.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let status = self.reap(timeout)?;
        self.finish_readers();
        Ok(status)
    }

    /// Waits for exit up to `timeout`, killing (and reaping) the child on timeout.
    fn reap(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("{} did not exit within {timeout:?}: killed", self.name);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `sig` (unless the child already exited) and waits up to `timeout` for the exit;
    /// SIGKILL after that.
    pub fn stop(&mut self, sig: i32, timeout: Duration) -> Result<ExitStatus> {
        // Only a child not reaped yet is signalled: a reaped pid may belong to someone else.
        if self.child.try_wait()?.is_none() {
            self.signal(sig);
        }
        self.wait_exit(timeout)
    }

    fn finish_readers(&mut self) {
        let deadline = Instant::now() + READERS_GRACE;
        while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        // A reader still running is left to end with its pipe.
        self.readers.clear();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Nobody reads the output any more: no waiting for the readers.
        if self.try_wait().is_some() {
            return;
        }
        match self.drop_grace {
            Some(grace) => {
                self.signal(libc::SIGTERM);
                let _ = self.reap(grace);
            }
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// Runs `cmd` to completion, killing it after `timeout`; returns its stdout. Fails when it
/// exits unsuccessfully, with its output.
pub fn run_bounded(name: &str, cmd: &mut Command, timeout: Duration) -> Result<String> {
    let mut p = Proc::spawn(name, cmd)?;
    let deadline = Instant::now() + timeout;
    while p.try_wait().is_none() {
        if Instant::now() > deadline {
            let _ = p.stop(libc::SIGTERM, OVERRUN_GRACE);
            bail!("{name} did not finish within {timeout:?}: killed");
        }
        thread::sleep(Duration::from_millis(20));
    }
    let status = p.wait_exit(Duration::ZERO)?;
    let stdout: String = p.stdout().iter().map(|l| format!("{l}\n")).collect();
    ensure!(
        status.success(),
        "`{}` failed ({status}):\n{stdout}\n{}",
        describe(cmd),
        p.stderr_tail()
    );
    Ok(stdout)
}

/// The command line of `cmd`, as a shell user would type it (without quoting).
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_both_streams_and_the_last_lines() {
        let mut p = Proc::spawn(
            "sh",
            Command::new("sh").args(["-c", "echo out; echo err >&2; printf 'no newline'"]),
        )
        .unwrap();
        assert!(p.wait_exit(Duration::from_secs(10)).unwrap().success());
        assert_eq!(p.stdout(), ["out", "no newline"]);
        assert_eq!(p.stderr(), ["err"]);
    }

    #[test]
    fn keeping_stdout_collects_stderr_only() {
        let mut p = Proc::spawn_keeping_stdout(
            "sh",
            Command::new("sh")
                .args(["-c", "echo out; echo err >&2"])
                .stdout(Stdio::null()),
        )
        .unwrap();
        p.wait_exit(Duration::from_secs(10)).unwrap();
        assert!(p.stdout().is_empty());
        assert_eq!(p.stderr_tail(), "err");
    }

    #[test]
    fn stop_signals_a_running_child_and_drop_stops_one() {
        let mut p = Proc::spawn("sleep", Command::new("sleep").arg("60")).unwrap();
        let status = p.stop(libc::SIGTERM, Duration::from_secs(5)).unwrap();
        assert!(!status.success());
        // Stopping again only reports the status it exited with.
        assert_eq!(p.stop(libc::SIGTERM, Duration::ZERO).unwrap(), status);

        let gone = |p: Proc| {
            let pid = p.pid();
            drop(p);
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
        };
        let p = Proc::spawn("sleep", Command::new("sleep").arg("60")).unwrap();
        assert!(gone(p), "killed and reaped");
        // A child that ignores SIGTERM is killed once its grace has passed.
        let p = Proc::spawn(
            "sh",
            Command::new("sh").args(["-c", "trap '' TERM; echo up; exec sleep 60"]),
        )
        .unwrap()
        .terminate_on_drop(Duration::from_millis(300));
        p.wait_line("up", Duration::from_secs(10)).unwrap();
        let started = Instant::now();
        assert!(gone(p), "terminated, then killed, and reaped");
        assert!(started.elapsed() >= Duration::from_millis(300));
    }

    #[test]
    fn run_bounded_returns_stdout_and_fails_with_the_output() {
        let out = run_bounded(
            "sh",
            Command::new("sh").args(["-c", "echo a; echo b"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(out, "a\nb\n");
        let err = run_bounded(
            "sh",
            Command::new("sh").args(["-c", "echo why >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .unwrap_err();
        assert!(format!("{err}").contains("why"), "{err}");
        let err = run_bounded(
            "sleep",
            Command::new("sleep").arg("60"),
            Duration::from_millis(100),
        )
        .unwrap_err();
        assert!(format!("{err}").contains("killed"), "{err}");
    }
}
