//! Per-process OpenTelemetry resources, read from procfs and cached by pid.
//!
//! For a pid, [`ProcessTable::resource`] reads `/proc/PID/{exe,comm,cmdline,environ}` once
//! (through the `procfs` crate, with bounded reads) and builds:
//!
//! - `service.name`: the process's `OTEL_SERVICE_NAME`, else `service.name` from its
//!   `OTEL_RESOURCE_ATTRIBUTES`, else the executable's name (basename of `/proc/PID/exe`,
//!   falling back to `comm`), else `unknown_service`.
//! - `process.pid`, `process.executable.name` (exe basename, else `comm`),
//!   `process.executable.path`, `process.command_line` (arguments joined by spaces, at most
//!   [`MAX_COMMAND_LINE_BYTES`]), `host.name`, `telemetry.sdk.name=tracer`,
//!   `telemetry.sdk.version` (this crate's version).
//! - Every other `OTEL_RESOURCE_ATTRIBUTES` entry of the process, then the agent's own
//!   (`extra`) entries.
//!
//! Precedence: for any key, the process's own environment wins over the agent's `extra`,
//! which wins over what the tracer detected (`host.name`). The keys the tracer observes about
//! the process itself (`process.pid`, `process.executable.*`, `process.command_line`,
//! `telemetry.sdk.*`) are never overridden. `service.name` from `extra` is ignored: the
//! agent's own service name must not rename the processes it traces.
//!
//! `OTEL_RESOURCE_ATTRIBUTES` is parsed as the OTel spec says: `k=v` pairs separated by
//! commas, surrounding spaces trimmed, values percent-decoded; on any error (an entry without
//! `=`, an empty key, a bad `%` escape, invalid UTF-8) the whole variable is discarded.
//! Only the first [`MAX_ENVIRON_BYTES`] of a process's environment are read.
//!
//! A pid whose `/proc` entry is gone (the process exited before the first look-up) gets a
//! minimal resource (`service.name=unknown_service`, `process.pid`, plus `host.name`,
//! `telemetry.sdk.*` and `extra`) that is not cached, and is counted in
//! [`ProcessStats::exited`]. Unreadable parts of a live process (permissions, kernel
//! threads, zombies) are simply left out.
use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::sync::Arc;

use procfs::process::Process;

use crate::span::{AttrValue, Resource, truncate_value};

/// Cached processes at most, by default; the oldest entry is evicted beyond.
pub const DEFAULT_MAX_ENTRIES: usize = 16384;
/// Bytes of `/proc/PID/environ` read at most.
pub const MAX_ENVIRON_BYTES: usize = 64 * 1024;
/// `process.command_line` is cut to this many bytes (at a character boundary).
pub const MAX_COMMAND_LINE_BYTES: usize = 1024;
/// `service.name` when nothing better is known.
pub const UNKNOWN_SERVICE: &str = "unknown_service";
/// `telemetry.sdk.name`.
pub const SDK_NAME: &str = "tracer";

/// Keys the tracer sets from what it observes; environment values never replace them.
const OBSERVED_KEYS: &[&str] = &[
    "process.pid",
    "process.executable.name",
    "process.executable.path",
    "process.command_line",
    "telemetry.sdk.name",
    "telemetry.sdk.version",
];

/// Counters for the agent's own statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessStats {
    /// Calls to [`ProcessTable::resource`].
    pub lookups: u64,
    /// Look-ups that read procfs.
    pub misses: u64,
    /// Look-ups of a pid that had no `/proc` entry (already exited).
    pub exited: u64,
    /// Entries dropped to stay within the size cap.
    pub evictions: u64,
}

/// Cache of resources per pid.
#[derive(Debug)]
pub struct ProcessTable {
    /// pid → (resource, insertion generation).
    entries: HashMap<u32, (Arc<Resource>, u64)>,
    /// Insertion order; entries whose generation no longer matches are stale and skipped.
    order: VecDeque<(u32, u64)>,
    next_gen: u64,
    max_entries: usize,
    host_name: Option<String>,
    extra: Vec<(String, String)>,
    stats: ProcessStats,
}

impl ProcessTable {
    /// `host_name`: `host.name` for every resource (`None`: this machine's hostname, read
    /// once). `extra`: the agent's own resource attributes (e.g. its `OTEL_RESOURCE_ATTRIBUTES`,
    /// see [`resource_attributes_from_env`]), added to every process; a process's own values
    /// win over them.
    pub fn new(host_name: Option<String>, extra: Vec<(String, String)>) -> Self {
        let host_name = host_name
            .or_else(system_host_name)
            .filter(|h| !h.is_empty());
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            next_gen: 0,
            max_entries: DEFAULT_MAX_ENTRIES,
            host_name,
            extra,
            stats: ProcessStats::default(),
        }
    }

    /// Changes the cap on cached entries (at least 1).
    pub fn with_max_entries(mut self, max_entries: usize) -> Self {
        self.max_entries = max_entries.max(1);
        while self.entries.len() > self.max_entries {
            self.evict_oldest();
        }
        self
    }

    /// The resource of `pid`, from the cache or read from procfs now.
    pub fn resource(&mut self, pid: u32) -> Arc<Resource> {
        self.stats.lookups += 1;
        if let Some((r, _)) = self.entries.get(&pid) {
            return Arc::clone(r);
        }
        self.stats.misses += 1;
        match read_proc(pid) {
            Some(info) => {
                let r = Arc::new(build_resource(
                    pid,
                    &info,
                    self.host_name.as_deref(),
                    &self.extra,
                ));
                // A user process (it has an exe) with an empty command line is in the middle of
                // execve (the new image is mapped, its arguments and environment not yet):
                // answer but do not cache, so the next look-up sees the finished process.
                if !(info.exe.is_some() && info.cmdline.is_empty()) {
                    self.insert(pid, Arc::clone(&r));
                }
                r
            }
            None => {
                self.stats.exited += 1;
                Arc::new(minimal_resource(
                    pid,
                    self.host_name.as_deref(),
                    &self.extra,
                ))
            }
        }
    }

    /// Like [`ProcessTable::resource`], but when the process is already gone from /proc the
    /// resource is named after `comm` (the task name the kernel reported with its event) and
    /// kept until [`ProcessTable::on_exit`]/[`ProcessTable::on_exec`].
    pub fn resource_named(&mut self, pid: u32, comm: &[u8]) -> Arc<Resource> {
        let r = self.resource(pid);
        if r.service_name() != UNKNOWN_SERVICE || self.entries.contains_key(&pid) {
            return r;
        }
        let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
        let name = String::from_utf8_lossy(&comm[..end]).into_owned();
        if name.is_empty() {
            return r;
        }
        let mut named = minimal_resource(pid, self.host_name.as_deref(), &self.extra);
        for (k, v) in &mut named.attributes {
            if k == "service.name" {
                *v = AttrValue::Str(name.clone());
            }
        }
        named
            .attributes
            .insert(2, ("process.executable.name".into(), AttrValue::Str(name)));
        let named = Arc::new(named);
        self.insert(pid, Arc::clone(&named));
        named
    }

    /// The process called execve: its metadata changed; the next look-up reads procfs again.
    pub fn on_exec(&mut self, pid: u32) {
        self.entries.remove(&pid);
    }

    /// The process exited: forget it.
    pub fn on_exit(&mut self, pid: u32) {
        self.entries.remove(&pid);
    }

    /// Cached processes.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn stats(&self) -> ProcessStats {
        self.stats
    }

    /// The `host.name` given to every resource.
    pub fn host_name(&self) -> Option<&str> {
        self.host_name.as_deref()
    }

    fn insert(&mut self, pid: u32, resource: Arc<Resource>) {
        while self.entries.len() >= self.max_entries {
            if !self.evict_oldest() {
                break;
            }
        }
        let generation = self.next_gen;
        self.next_gen += 1;
        self.entries.insert(pid, (resource, generation));
        self.order.push_back((pid, generation));
        // Entries removed by exec/exit leave stale order records: compact now and then.
        if self.order.len() > 2 * self.max_entries + 64 {
            let entries = &self.entries;
            self.order
                .retain(|(p, g)| entries.get(p).is_some_and(|(_, eg)| eg == g));
        }
    }

    /// Drops the oldest live entry; false when there is none.
    fn evict_oldest(&mut self) -> bool {
        while let Some((pid, generation)) = self.order.pop_front() {
            if self
                .entries
                .get(&pid)
                .is_some_and(|(_, g)| *g == generation)
            {
                self.entries.remove(&pid);
                self.stats.evictions += 1;
                return true;
            }
        }
        false
    }
}

/// Parses the agent's own `OTEL_RESOURCE_ATTRIBUTES` (empty when unset or invalid), for
/// [`ProcessTable::new`]'s `extra`.
pub fn resource_attributes_from_env() -> Vec<(String, String)> {
    std::env::var("OTEL_RESOURCE_ATTRIBUTES")
        .ok()
        .and_then(|v| parse_resource_attributes(&v))
        .unwrap_or_default()
}

/// What procfs says about a process, raw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ProcInfo {
    /// Target of `/proc/PID/exe`, without a ` (deleted)` suffix.
    exe: Option<String>,
    /// `/proc/PID/comm`, without the newline.
    comm: Option<String>,
    /// `/proc/PID/cmdline`: NUL-separated arguments (a prefix, bounded).
    cmdline: Vec<u8>,
    /// `/proc/PID/environ`: NUL-separated `K=V` (whole entries only, bounded).
    environ: Vec<u8>,
}

/// Reads what can be read; `None` when the process has no `/proc` entry (exited) or vanished
/// while being read.
fn read_proc(pid: u32) -> Option<ProcInfo> {
    let pid = i32::try_from(pid).ok().filter(|p| *p > 0)?;
    let p = Process::new(pid).ok()?;
    let exe = p.exe().ok().map(|path| {
        let s = path.to_string_lossy();
        s.strip_suffix(" (deleted)").unwrap_or(&s).to_owned()
    });
    let comm = read_bounded(&p, "comm", 64)
        .map(|b| {
            String::from_utf8_lossy(&b)
                .trim_end_matches(['\n', '\0'])
                .to_owned()
        })
        .filter(|c| !c.is_empty());
    if exe.is_none() && comm.is_none() {
        return None;
    }
    let cmdline = read_bounded(&p, "cmdline", MAX_COMMAND_LINE_BYTES + 1).unwrap_or_default();
    let mut environ = read_bounded(&p, "environ", MAX_ENVIRON_BYTES).unwrap_or_default();
    if environ.len() >= MAX_ENVIRON_BYTES {
        // Cut: keep whole entries only.
        let keep = environ.iter().rposition(|b| *b == 0).map_or(0, |i| i + 1);
        environ.truncate(keep);
    }
    Some(ProcInfo {
        exe,
        comm,
        cmdline,
        environ,
    })
}

fn read_bounded(p: &Process, name: &str, max: usize) -> Option<Vec<u8>> {
    let file = p.open_relative(name).ok()?;
    let mut buf = Vec::with_capacity(max.min(4096));
    file.take(max as u64).read_to_end(&mut buf).ok()?;
    Some(buf)
}

/// The OTel variables of a process environment (first occurrence of each wins, as `getenv`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct OtelEnv {
    service_name: Option<String>,
    resource_attributes: Option<String>,
}

fn parse_environ(environ: &[u8]) -> OtelEnv {
    let mut env = OtelEnv::default();
    for entry in environ.split(|b| *b == 0) {
        let Some(eq) = entry.iter().position(|b| *b == b'=') else {
            continue;
        };
        let (key, value) = (&entry[..eq], &entry[eq + 1..]);
        let slot = match key {
            b"OTEL_SERVICE_NAME" => &mut env.service_name,
            b"OTEL_RESOURCE_ATTRIBUTES" => &mut env.resource_attributes,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(String::from_utf8_lossy(value).into_owned());
        }
    }
    env
}

/// Parses `OTEL_RESOURCE_ATTRIBUTES` (`k1=v1,k2=v2`, spaces around keys and values trimmed,
/// values percent-decoded; a repeated key keeps its last value). `None` when the value is
/// invalid, in which case the OTel spec says to discard all of it.
pub fn parse_resource_attributes(s: &str) -> Option<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    for entry in s.split(',') {
        if entry.trim().is_empty() {
            continue;
        }
        let (k, v) = entry.split_once('=')?;
        let k = k.trim();
        if k.is_empty() {
            return None;
        }
        let v = percent_decode(v.trim())?;
        match out.iter_mut().find(|(ek, _)| ek == k) {
            Some(slot) => slot.1 = v,
            None => out.push((k.to_owned(), v)),
        }
    }
    Some(out)
}

fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hi = (hex[0] as char).to_digit(16)?;
            let lo = (hex[1] as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Arguments joined by spaces, lossy UTF-8, at most [`MAX_COMMAND_LINE_BYTES`].
fn command_line(cmdline: &[u8]) -> String {
    let trimmed = match cmdline.iter().rposition(|b| *b != 0) {
        Some(last) => &cmdline[..=last],
        None => return String::new(),
    };
    let joined: Vec<u8> = trimmed
        .iter()
        .map(|b| if *b == 0 { b' ' } else { *b })
        .collect();
    let s = String::from_utf8_lossy(&joined);
    truncate_value(&s, MAX_COMMAND_LINE_BYTES).to_owned()
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn non_empty(s: &str) -> Option<&str> {
    let s = s.trim();
    (!s.is_empty()).then_some(s)
}

fn build_resource(
    pid: u32,
    info: &ProcInfo,
    host_name: Option<&str>,
    extra: &[(String, String)],
) -> Resource {
    let env = parse_environ(&info.environ);
    let own = env
        .resource_attributes
        .as_deref()
        .and_then(parse_resource_attributes)
        .unwrap_or_default();

    let exe_name = info.exe.as_deref().map(basename).and_then(non_empty);
    let executable_name = exe_name.or_else(|| info.comm.as_deref().and_then(non_empty));
    let service = env
        .service_name
        .as_deref()
        .and_then(non_empty)
        .or_else(|| {
            own.iter()
                .find(|(k, _)| k == "service.name")
                .and_then(|(_, v)| non_empty(v))
        })
        .or(executable_name)
        .unwrap_or(UNKNOWN_SERVICE);

    let mut attrs: Vec<(String, AttrValue)> = Vec::with_capacity(10 + own.len() + extra.len());
    attrs.push(("service.name".into(), service.into()));
    attrs.push(("process.pid".into(), i64::from(pid).into()));
    if let Some(name) = executable_name {
        attrs.push(("process.executable.name".into(), name.into()));
    }
    if let Some(path) = info.exe.as_deref().and_then(non_empty) {
        attrs.push(("process.executable.path".into(), path.into()));
    }
    let cmd = command_line(&info.cmdline);
    if !cmd.is_empty() {
        attrs.push(("process.command_line".into(), cmd.into()));
    }
    add_common(&mut attrs, &own, host_name, extra);
    Resource {
        pid,
        attributes: attrs,
    }
}

fn minimal_resource(pid: u32, host_name: Option<&str>, extra: &[(String, String)]) -> Resource {
    let mut attrs: Vec<(String, AttrValue)> = vec![
        ("service.name".into(), UNKNOWN_SERVICE.into()),
        ("process.pid".into(), i64::from(pid).into()),
    ];
    add_common(&mut attrs, &[], host_name, extra);
    Resource {
        pid,
        attributes: attrs,
    }
}

/// `host.name`, `telemetry.sdk.*`, then the process's own attributes and the agent's, with
/// the precedence the module documents.
fn add_common(
    attrs: &mut Vec<(String, AttrValue)>,
    own: &[(String, String)],
    host_name: Option<&str>,
    extra: &[(String, String)],
) {
    attrs.push(("telemetry.sdk.name".into(), SDK_NAME.into()));
    attrs.push((
        "telemetry.sdk.version".into(),
        env!("CARGO_PKG_VERSION").into(),
    ));
    // `service.name` was decided already (the agent's own never applies).
    let from_env = own.iter().chain(extra).filter(|(k, _)| k != "service.name");
    let mut host_set = false;
    for (k, v) in from_env {
        if OBSERVED_KEYS.contains(&k.as_str()) || attrs.iter().any(|(ak, _)| ak == k) {
            continue;
        }
        if k == "host.name" {
            host_set = true;
        }
        attrs.push((k.clone(), v.as_str().into()));
    }
    if !host_set && let Some(h) = host_name {
        attrs.push(("host.name".into(), h.into()));
    }
}

/// This machine's hostname (UTS namespace of the agent).
fn system_host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|s| s.trim().to_owned());
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command};

    fn attr<'a>(r: &'a Resource, key: &str) -> Option<&'a AttrValue> {
        r.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn s(r: &Resource, key: &str) -> Option<String> {
        match attr(r, key) {
            Some(AttrValue::Str(v)) => Some(v.clone()),
            None => None,
            other => panic!("{key}: {other:?}"),
        }
    }

    fn info(exe: Option<&str>, comm: Option<&str>, cmdline: &[u8], environ: &[u8]) -> ProcInfo {
        ProcInfo {
            exe: exe.map(Into::into),
            comm: comm.map(Into::into),
            cmdline: cmdline.to_vec(),
            environ: environ.to_vec(),
        }
    }

    fn keys(r: &Resource) -> Vec<&str> {
        r.attributes.iter().map(|(k, _)| k.as_str()).collect()
    }

    // ---- parsing ----

    #[test]
    fn environ_otel_service_name() {
        let env = parse_environ(b"PATH=/bin\0OTEL_SERVICE_NAME=checkout\0HOME=/root\0");
        assert_eq!(env.service_name.as_deref(), Some("checkout"));
        assert_eq!(env.resource_attributes, None);
        // First occurrence wins; values may contain '='.
        let env = parse_environ(b"OTEL_SERVICE_NAME=a=b\0OTEL_SERVICE_NAME=c\0");
        assert_eq!(env.service_name.as_deref(), Some("a=b"));
        // No trailing NUL, junk entries, a similar name.
        let env = parse_environ(b"junk\0\0=x\0MY_OTEL_SERVICE_NAME=no\0OTEL_SERVICE_NAME=last");
        assert_eq!(env.service_name.as_deref(), Some("last"));
        assert_eq!(parse_environ(b""), OtelEnv::default());
        assert_eq!(parse_environ(b"\xff\xfe\0A=\xff"), OtelEnv::default());
    }

    #[test]
    fn resource_attributes_parse() {
        let attrs = parse_resource_attributes(
            " service.name = my%20svc , deployment.environment=prod,team=a%2Cb%3Dc ,, ",
        )
        .unwrap();
        assert_eq!(
            attrs,
            vec![
                ("service.name".into(), "my svc".into()),
                ("deployment.environment".into(), "prod".into()),
                ("team".into(), "a,b=c".into()),
            ]
        );
        assert_eq!(parse_resource_attributes("").unwrap(), vec![]);
        assert_eq!(
            parse_resource_attributes("k=").unwrap(),
            vec![("k".into(), "".into())]
        );
        assert_eq!(
            parse_resource_attributes("k=1,k=2").unwrap(),
            vec![("k".into(), "2".into())]
        );
        assert_eq!(
            parse_resource_attributes("k=caf%C3%A9").unwrap(),
            vec![("k".into(), "café".into())]
        );
        assert_eq!(
            parse_resource_attributes("k=a+b").unwrap(),
            vec![("k".into(), "a+b".into())]
        );
        // Invalid: the whole value is discarded.
        for bad in ["a=1,novalue", "=v", "k=%", "k=%4", "k=%zz", "k=%ff"] {
            assert_eq!(parse_resource_attributes(bad), None, "{bad}");
        }
    }

    #[test]
    fn command_line_join_and_bound() {
        assert_eq!(
            command_line(b"python3\0-m\0http.server\0"),
            "python3 -m http.server"
        );
        assert_eq!(
            command_line(b"nginx: master process\0\0"),
            "nginx: master process"
        );
        assert_eq!(command_line(b""), "");
        assert_eq!(command_line(b"\0\0"), "");
        assert_eq!(command_line(b"a\0\0b"), "a  b");
        let long = "é".repeat(MAX_COMMAND_LINE_BYTES);
        let cut = command_line(long.as_bytes());
        assert!(cut.len() <= MAX_COMMAND_LINE_BYTES && cut.len() >= MAX_COMMAND_LINE_BYTES - 1);
        assert_eq!(command_line(b"x\xffy"), "x\u{fffd}y");
    }

    // ---- building ----

    #[test]
    fn service_name_from_otel_service_name() {
        let i = info(
            Some("/usr/bin/python3.11"),
            Some("python3"),
            b"python3\0app.py\0",
            b"OTEL_SERVICE_NAME=checkout\0OTEL_RESOURCE_ATTRIBUTES=service.name=other,team=pay\0",
        );
        let r = build_resource(7, &i, Some("node-1"), &[]);
        assert_eq!(r.service_name(), "checkout");
        assert_eq!(r.pid, 7);
        assert_eq!(attr(&r, "process.pid"), Some(&AttrValue::Int(7)));
        assert_eq!(
            s(&r, "process.executable.name").as_deref(),
            Some("python3.11")
        );
        assert_eq!(
            s(&r, "process.executable.path").as_deref(),
            Some("/usr/bin/python3.11")
        );
        assert_eq!(
            s(&r, "process.command_line").as_deref(),
            Some("python3 app.py")
        );
        assert_eq!(s(&r, "host.name").as_deref(), Some("node-1"));
        assert_eq!(s(&r, "telemetry.sdk.name").as_deref(), Some("tracer"));
        assert_eq!(
            s(&r, "telemetry.sdk.version").as_deref(),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(s(&r, "team").as_deref(), Some("pay"));
        // service.name appears once.
        assert_eq!(keys(&r).iter().filter(|k| **k == "service.name").count(), 1);
    }

    #[test]
    fn service_name_from_resource_attributes() {
        let i = info(
            Some("/app/server"),
            None,
            b"",
            b"OTEL_RESOURCE_ATTRIBUTES=deployment.environment=prod, service.name=cart%20svc\0",
        );
        let r = build_resource(1, &i, None, &[]);
        assert_eq!(r.service_name(), "cart svc");
        assert_eq!(s(&r, "deployment.environment").as_deref(), Some("prod"));
        assert_eq!(attr(&r, "process.command_line"), None);
        assert_eq!(attr(&r, "host.name"), None);
        // An empty OTEL_SERVICE_NAME does not count.
        let i = info(
            Some("/app/server"),
            None,
            b"",
            b"OTEL_SERVICE_NAME= \0OTEL_RESOURCE_ATTRIBUTES=service.name=x\0",
        );
        assert_eq!(build_resource(1, &i, None, &[]).service_name(), "x");
    }

    #[test]
    fn service_name_from_executable() {
        let r = build_resource(
            1,
            &info(
                Some("/usr/bin/curl"),
                Some("curl"),
                b"curl\0-s\0",
                b"PATH=/bin\0",
            ),
            None,
            &[],
        );
        assert_eq!(r.service_name(), "curl");
        let r = build_resource(
            1,
            &info(Some("/opt/app/bin/my-svc"), Some("my-svc"), b"", b""),
            None,
            &[],
        );
        assert_eq!(r.service_name(), "my-svc");
        // Unreadable exe: comm.
        let r = build_resource(1, &info(None, Some("kworker/0:1"), b"", b""), None, &[]);
        assert_eq!(r.service_name(), "kworker/0:1");
        assert_eq!(
            s(&r, "process.executable.name").as_deref(),
            Some("kworker/0:1")
        );
        assert_eq!(attr(&r, "process.executable.path"), None);
        // Nothing at all.
        let r = build_resource(1, &info(None, None, b"", b""), None, &[]);
        assert_eq!(r.service_name(), UNKNOWN_SERVICE);
        // Invalid OTEL_RESOURCE_ATTRIBUTES: discarded whole, exe name used.
        let i = info(
            Some("/bin/app"),
            None,
            b"",
            b"OTEL_RESOURCE_ATTRIBUTES=service.name=x,bad\0",
        );
        let r = build_resource(1, &i, None, &[]);
        assert_eq!(r.service_name(), "app");
        assert_eq!(attr(&r, "bad"), None);
    }

    #[test]
    fn precedence_of_attributes() {
        let extra = vec![
            ("deployment.environment".to_owned(), "agent-env".to_owned()),
            ("k8s.cluster.name".to_owned(), "c1".to_owned()),
            ("service.name".to_owned(), "the-agent".to_owned()),
            ("host.name".to_owned(), "agent-host".to_owned()),
            ("process.pid".to_owned(), "1".to_owned()),
        ];
        let i = info(
            Some("/bin/app"),
            None,
            b"",
            b"OTEL_RESOURCE_ATTRIBUTES=deployment.environment=proc-env,process.pid=99,telemetry.sdk.name=otel\0",
        );
        let r = build_resource(5, &i, Some("detected"), &extra);
        // The agent's service.name is ignored.
        assert_eq!(r.service_name(), "app");
        // Process beats agent; agent beats detection; observed keys are fixed.
        assert_eq!(s(&r, "deployment.environment").as_deref(), Some("proc-env"));
        assert_eq!(s(&r, "k8s.cluster.name").as_deref(), Some("c1"));
        assert_eq!(s(&r, "host.name").as_deref(), Some("agent-host"));
        assert_eq!(attr(&r, "process.pid"), Some(&AttrValue::Int(5)));
        assert_eq!(s(&r, "telemetry.sdk.name").as_deref(), Some("tracer"));
        // No duplicate keys.
        let mut k = keys(&r);
        let n = k.len();
        k.sort_unstable();
        k.dedup();
        assert_eq!(k.len(), n);

        // The process's own host.name wins over the agent's.
        let i = info(
            Some("/bin/app"),
            None,
            b"",
            b"OTEL_RESOURCE_ATTRIBUTES=host.name=pod-7\0",
        );
        assert_eq!(
            s(
                &build_resource(5, &i, Some("detected"), &extra),
                "host.name"
            )
            .as_deref(),
            Some("pod-7")
        );
    }

    #[test]
    fn minimal_resource_shape() {
        let extra = vec![
            ("service.name".to_owned(), "agent".to_owned()),
            ("a".to_owned(), "b".to_owned()),
        ];
        let r = minimal_resource(123, Some("h"), &extra);
        assert_eq!(r.service_name(), UNKNOWN_SERVICE);
        assert_eq!(attr(&r, "process.pid"), Some(&AttrValue::Int(123)));
        assert_eq!(s(&r, "host.name").as_deref(), Some("h"));
        assert_eq!(s(&r, "a").as_deref(), Some("b"));
    }

    #[test]
    fn gone_process_is_named_after_its_task_name() {
        let mut t = ProcessTable::new(Some("h".into()), vec![]);
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        let r = t.resource_named(999_999_999, &comm);
        assert_eq!(r.service_name(), "curl");
        assert_eq!(s(&r, "process.executable.name").as_deref(), Some("curl"));
        assert_eq!(attr(&r, "process.pid"), Some(&AttrValue::Int(999_999_999)));
        // Kept: the span finished later gets the same resource.
        assert!(Arc::ptr_eq(&r, &t.resource(999_999_999)));
        t.on_exit(999_999_999);
        assert_eq!(t.resource(999_999_999).service_name(), UNKNOWN_SERVICE);
        // A live process keeps its /proc metadata whatever the task name.
        let me = t.resource_named(std::process::id(), b"other\0\0\0\0\0\0\0\0\0\0\0");
        assert_ne!(me.service_name(), "other");
    }

    // ---- cache ----

    fn fake(pid: u32) -> Arc<Resource> {
        Arc::new(minimal_resource(pid, None, &[]))
    }

    #[test]
    fn eviction_of_oldest() {
        let mut t = ProcessTable::new(Some("h".into()), vec![]).with_max_entries(3);
        for pid in 1..=3 {
            t.insert(pid, fake(pid));
        }
        assert_eq!(t.len(), 3);
        t.insert(4, fake(4));
        assert_eq!(t.len(), 3);
        assert!(!t.entries.contains_key(&1));
        assert_eq!(t.stats().evictions, 1);
        // A removed entry leaves a stale record that eviction skips.
        t.on_exit(2);
        t.insert(5, fake(5));
        assert_eq!(t.len(), 3);
        t.insert(6, fake(6));
        assert!(!t.entries.contains_key(&3));
        assert!(
            t.entries.contains_key(&4) && t.entries.contains_key(&5) && t.entries.contains_key(&6)
        );
        // Re-inserting after exec makes the entry young again.
        t.on_exec(4);
        t.insert(4, fake(4));
        t.insert(7, fake(7));
        assert!(!t.entries.contains_key(&5));
        assert!(t.entries.contains_key(&4));
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn order_stays_bounded() {
        let mut t = ProcessTable::new(None, vec![]).with_max_entries(4);
        for pid in 0..10_000 {
            t.insert(pid, fake(pid));
            if pid % 2 == 0 {
                t.on_exit(pid);
            }
        }
        assert!(t.len() <= 4);
        assert!(t.order.len() <= 2 * 4 + 64 + 1);
    }

    // ---- live ----

    #[test]
    fn live_self() {
        let me = std::process::id();
        let mut t = ProcessTable::new(None, vec![]);
        let r = t.resource(me);
        assert_eq!(r.pid, me);
        assert_eq!(
            attr(&r, "process.pid"),
            Some(&AttrValue::Int(i64::from(me)))
        );
        let exe = std::env::current_exe().unwrap();
        let exe_name = exe.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(
            s(&r, "process.executable.name").as_deref(),
            Some(exe_name.as_str())
        );
        assert_eq!(
            s(&r, "process.executable.path").as_deref(),
            Some(exe.to_string_lossy().as_ref())
        );
        let expected = match std::env::var("OTEL_SERVICE_NAME") {
            Ok(v) if !v.trim().is_empty() => v.trim().to_owned(),
            _ => match parse_resource_attributes(
                &std::env::var("OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default(),
            )
            .and_then(|a| {
                a.into_iter()
                    .find(|(k, _)| k == "service.name")
                    .map(|(_, v)| v)
            })
            .filter(|v| !v.trim().is_empty())
            {
                Some(v) => v.trim().to_owned(),
                None => exe_name.clone(),
            },
        };
        assert_eq!(r.service_name(), expected);
        assert!(s(&r, "process.command_line").unwrap().contains(&exe_name));
        assert_eq!(
            s(&r, "host.name"),
            system_host_name().filter(|h| !h.is_empty())
        );
        // Cached.
        let again = t.resource(me);
        assert!(Arc::ptr_eq(&r, &again));
        assert_eq!(t.len(), 1);
        assert_eq!(
            t.stats(),
            ProcessStats {
                lookups: 2,
                misses: 1,
                exited: 0,
                evictions: 0
            }
        );
        // exec invalidates.
        t.on_exec(me);
        assert!(t.is_empty());
        let fresh = t.resource(me);
        assert!(!Arc::ptr_eq(&r, &fresh));
        assert_eq!(*r, *fresh);
    }

    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn live_child_with_service_name() {
        let child = Command::new("sleep")
            .arg("5")
            .env("OTEL_SERVICE_NAME", "checkout")
            .env(
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=staging,team=a%20b",
            )
            .spawn()
            .expect("spawn sleep");
        let child = Kill(child);
        let pid = child.0.id();
        // spawn returns once the child's execve is past the point of no return, before the
        // kernel has set up its arguments and environment: wait for them.
        let cmdline = format!("/proc/{pid}/cmdline");
        for _ in 0..200 {
            if std::fs::read(&cmdline).is_ok_and(|c| c.starts_with(b"sleep")) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let mut t = ProcessTable::new(
            Some("test-host".into()),
            vec![("cloud.region".into(), "eu".into())],
        );
        let r = t.resource(pid);
        assert_eq!(r.service_name(), "checkout");
        assert_eq!(
            attr(&r, "process.pid"),
            Some(&AttrValue::Int(i64::from(pid)))
        );
        assert_eq!(s(&r, "process.command_line").as_deref(), Some("sleep 5"));
        assert_eq!(s(&r, "deployment.environment").as_deref(), Some("staging"));
        assert_eq!(s(&r, "team").as_deref(), Some("a b"));
        assert_eq!(s(&r, "cloud.region").as_deref(), Some("eu"));
        assert_eq!(s(&r, "host.name").as_deref(), Some("test-host"));
        assert!(s(&r, "process.executable.path").is_some());
        assert_eq!(t.len(), 1);
        t.on_exit(pid);
        assert!(t.is_empty());
        drop(child);
    }

    #[test]
    fn live_missing_pids() {
        let mut t = ProcessTable::new(Some("h".into()), vec![]);
        for pid in [0, 999_999_999, u32::MAX] {
            let r = t.resource(pid);
            assert_eq!(r.service_name(), UNKNOWN_SERVICE);
            assert_eq!(r.pid, pid);
            assert_eq!(
                attr(&r, "process.pid"),
                Some(&AttrValue::Int(i64::from(pid)))
            );
        }
        assert!(t.is_empty());
        assert_eq!(t.stats().exited, 3);
        assert_eq!(t.stats().lookups, 3);
    }

    #[test]
    fn live_exited_child() {
        let mut child = Command::new("true").spawn().expect("spawn true");
        let pid = child.id();
        child.wait().unwrap();
        let mut t = ProcessTable::new(None, vec![]);
        // The pid may in theory have been reused already; only check it does not panic and,
        // if unknown, that it was counted.
        let r = t.resource(pid);
        if r.service_name() == UNKNOWN_SERVICE {
            assert_eq!(t.stats().exited, 1);
        }
    }
}
