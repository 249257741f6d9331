//! Attaching the TLS plaintext probes to the files processes map: OpenSSL-API libraries
//! (`libssl.so*`, or binaries with OpenSSL inside such as `node`) and Go binaries using
//! `crypto/tls`.
//!
//! At start-up every process is looked at; then each exec is looked at at once and again a
//! little later (shared libraries are mapped by the dynamic loader after the exec, and
//! `dlopen`ed ones, such as Python's `_ssl`, later still). Files are told apart by device and
//! inode from `/proc/PID/maps` and reached through `/proc/PID/root`, so a file inside a
//! container is probed once, like any other. A uprobe applies to every process mapping the
//! file; the probes of a file are detached when no process known to map it is alive.
pub mod elf;

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf,
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeLinkId, UProbeScope},
    },
};

use self::elf::{Inspection, OPENSSL_FUNCTIONS, TlsTarget};
use super::events::Event;

/// Kernel programs of the TLS probes (loaded with the others, attached per file).
pub const PROGRAMS: &[&str] = &[
    "ssl_read_entry",
    "ssl_read_ex_entry",
    "ssl_write_entry",
    "ssl_write_ex_entry",
    "ssl_handshake_entry",
    "ssl_free_entry",
    "ssl_ret",
    "go_tls_read_entry",
    "go_tls_write_entry",
    "go_tls_read_ret",
];

/// When a new process is looked at again after its exec.
const RESCAN_AFTER: &[Duration] = &[
    Duration::from_millis(0),
    Duration::from_millis(50),
    Duration::from_millis(300),
    Duration::from_secs(1),
    Duration::from_secs(3),
];

/// How long a file stays probed after its last known process went away. An exit and an exec
/// of the same binary often come close together (a server restarting, one test's process
/// ending as another starts): detaching at once would leave the new process unprobed until
/// the re-attach completes (hundreds of milliseconds for a Go binary), missing its first
/// requests.
const DETACH_AFTER: Duration = Duration::from_secs(3);

/// Bounds: pending looks and files remembered.
const MAX_PENDING: usize = 65536;
const MAX_FILES: usize = 65536;
/// Libraries followed at most per executable when resolving what it will load.
const MAX_NEEDED: usize = 256;
/// Where the dynamic loader looks when an object's own search path does not have a library
/// (Debian's multiarch directories first; `ld.so.cache` and `LD_LIBRARY_PATH` are not read).
const LIB_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
    "/usr/local/lib",
];

/// A file, as `/proc/PID/maps` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

struct Attached {
    description: String,
    links: Vec<(&'static str, UProbeLinkId)>,
    pids: HashSet<u32>,
}

/// Counters of the TLS attacher.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsStats {
    /// Files with TLS probes attached now.
    pub files_attached: u64,
    /// Files whose TLS code could not be probed (attach errors, stripped or old Go binaries).
    pub attach_failed: u64,
    pub unsupported: u64,
    pub detached: u64,
    pub processes_scanned: u64,
}

#[derive(Default)]
pub struct TlsAttacher {
    attached: HashMap<FileId, Attached>,
    /// Files already looked at that need no probe, or cannot have one (with the reason).
    ignored: HashMap<FileId, Option<String>>,
    pid_files: HashMap<u32, Vec<FileId>>,
    pending: VecDeque<(Instant, u32)>,
    /// Processes just exec'ed whose executable's libraries are resolved before they load.
    fresh: Vec<u32>,
    /// `DT_NEEDED` names and search paths per file (bounded cache).
    deps: HashMap<FileId, (Vec<String>, Vec<String>)>,
    /// Processes exited since the last `process` call.
    exited: Vec<u32>,
    /// Files no process was known to map any more, and when to detach them if that holds.
    idle: VecDeque<(Instant, FileId)>,
    stats: TlsStats,
    /// Failures already reported (each file once).
    failed: HashSet<FileId>,
}

/// One file-backed executable mapping of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub file: FileId,
    pub path: String,
}

/// Executable, file-backed mappings in a `/proc/PID/maps` text (one per file).
pub fn executable_mappings(maps: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in maps.lines() {
        let mut f = line.splitn(6, ' ');
        let (Some(_range), Some(perms), Some(_off), Some(dev), Some(ino)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let path = f.next().unwrap_or("").trim_start();
        if !perms.contains('x') || !path.starts_with('/') || path.ends_with(" (deleted)") {
            continue;
        }
        let Ok(ino) = ino.parse::<u64>() else {
            continue;
        };
        let Some((maj, min)) = dev.split_once(':') else {
            continue;
        };
        let (Ok(maj), Ok(min)) = (u64::from_str_radix(maj, 16), u64::from_str_radix(min, 16))
        else {
            continue;
        };
        if ino == 0 {
            continue;
        }
        let file = FileId {
            dev: (maj << 20) | min,
            ino,
        };
        if !out.iter().any(|m| m.file == file) {
            out.push(Mapping {
                file,
                path: path.to_owned(),
            });
        }
    }
    out
}

impl TlsAttacher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn stats(&self) -> TlsStats {
        let mut s = self.stats;
        s.files_attached = self.attached.len() as u64;
        s
    }

    /// Looks at every running process (agent start-up).
    pub fn scan_all(&mut self, ebpf: &mut Ebpf) {
        let own = std::process::id();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return;
        };
        let pids: Vec<u32> = dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|p| *p != own)
            .collect();
        for pid in pids {
            self.scan(ebpf, pid);
        }
    }

    /// A process called execve: look at it now and a few times later.
    pub fn on_exec(&mut self, pid: u32) {
        if pid == std::process::id() {
            return;
        }
        let now = Instant::now();
        // The old image's files are no longer mapped by this pid.
        self.exited.push(pid);
        if self.fresh.len() < MAX_PENDING {
            self.fresh.push(pid);
        }
        for d in RESCAN_AFTER {
            if self.pending.len() >= MAX_PENDING {
                break;
            }
            self.pending.push_back((now + *d, pid));
        }
    }

    /// Notes the exec and exit events of the event stream (ignores the others).
    pub fn on_event(&mut self, event: &Event<'_>) {
        match *event {
            Event::Exec { pid, .. } => self.on_exec(pid),
            Event::Exit { pid, .. } => self.on_exit(pid),
            Event::Data { .. } | Event::Close(_) => {}
        }
    }

    pub fn on_exit(&mut self, pid: u32) {
        self.exited.push(pid);
        self.pending.retain(|(_, p)| *p != pid);
    }

    /// Does what is due: releases exited processes' files, looks at processes.
    pub fn process(&mut self, ebpf: &mut Ebpf) {
        for pid in std::mem::take(&mut self.exited) {
            self.release(pid);
        }
        // A new process's libraries are probed before the dynamic loader maps them where
        // possible: a short-lived client (curl) would otherwise often finish first.
        for pid in std::mem::take(&mut self.fresh) {
            self.scan_needed(ebpf, pid);
        }
        let now = Instant::now();
        // Pending looks are pushed in time order per exec; several execs interleave, so
        // take every due entry, not only a prefix.
        let mut due = Vec::new();
        self.pending.retain(|(at, pid)| {
            if *at <= now {
                due.push(*pid);
                false
            } else {
                true
            }
        });
        due.dedup();
        for pid in due {
            self.scan(ebpf, pid);
        }
        while let Some(&(at, f)) = self.idle.front() {
            if at > now {
                break;
            }
            self.idle.pop_front();
            if self.attached.get(&f).is_some_and(|a| a.pids.is_empty()) {
                self.detach(ebpf, f);
            }
        }
    }

    /// Detaches everything (the agent stops).
    pub fn detach_all(&mut self, ebpf: &mut Ebpf) {
        let files: Vec<FileId> = self.attached.keys().copied().collect();
        for f in files {
            self.detach(ebpf, f);
        }
    }

    /// `pid` no longer maps its files; those left without a process are detached after
    /// [`DETACH_AFTER`] unless a process maps them again meanwhile.
    fn release(&mut self, pid: u32) {
        let Some(files) = self.pid_files.remove(&pid) else {
            return;
        };
        for f in files {
            let empty = match self.attached.get_mut(&f) {
                Some(a) => {
                    a.pids.remove(&pid);
                    a.pids.is_empty()
                }
                None => false,
            };
            if empty && self.idle.len() < MAX_PENDING {
                self.idle.push_back((Instant::now() + DETACH_AFTER, f));
            }
        }
    }

    fn detach(&mut self, ebpf: &mut Ebpf, f: FileId) {
        let Some(a) = self.attached.remove(&f) else {
            return;
        };
        detach_links(ebpf, a.links, &a.description);
        self.stats.detached += 1;
        tracing::info!(
            "detached TLS probes from {} (no process maps it)",
            a.description
        );
    }

    /// Looks at one process's mapped files.
    fn scan(&mut self, ebpf: &mut Ebpf, pid: u32) {
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            return; // gone, or a kernel thread
        };
        self.stats.processes_scanned += 1;
        for m in executable_mappings(&maps) {
            self.consider(ebpf, pid, m);
        }
    }

    /// Resolves the libraries a just exec'ed process's executable will load (`DT_NEEDED`,
    /// transitively) and considers them as if already mapped.
    fn scan_needed(&mut self, ebpf: &mut Ebpf, pid: u32) {
        let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
            return;
        };
        let root = format!("/proc/{pid}/root");
        if self.deps.len() >= MAX_FILES {
            self.deps.clear();
        }
        for m in needed_closure(&root, &exe.to_string_lossy(), &mut self.deps) {
            self.consider(ebpf, pid, m);
        }
    }

    /// One file a process maps (or is about to map).
    fn consider(&mut self, ebpf: &mut Ebpf, pid: u32, m: Mapping) {
        if let Some(a) = self.attached.get_mut(&m.file) {
            if a.pids.insert(pid) {
                self.pid_files.entry(pid).or_default().push(m.file);
            }
            return;
        }
        if self.ignored.contains_key(&m.file) {
            return;
        }
        let path = PathBuf::from(format!("/proc/{pid}/root{}", m.path));
        match self.attach_file(ebpf, &path, &m) {
            Ok(Some(a)) => {
                let mut a = a;
                a.pids.insert(pid);
                self.pid_files.entry(pid).or_default().push(m.file);
                self.attached.insert(m.file, a);
            }
            Ok(None) => self.ignore(m.file, None),
            Err(e) if is_not_found(&e) => {
                // The process (or its mount namespace) went away meanwhile.
                tracing::debug!("{} (pid {pid}) vanished: {e:#}", m.path);
            }
            Err(e) => {
                self.stats.attach_failed += 1;
                tracing::warn!("TLS probes not attached to {} (pid {pid}): {e:#}", m.path);
                self.ignore(m.file, Some(format!("{e:#}")));
            }
        }
    }

    fn ignore(&mut self, f: FileId, why: Option<String>) {
        if self.ignored.len() >= MAX_FILES {
            self.ignored.clear();
        }
        self.ignored.insert(f, why);
    }

    fn attach_file(
        &mut self,
        ebpf: &mut Ebpf,
        path: &std::path::Path,
        m: &Mapping,
    ) -> Result<Option<Attached>> {
        let inspection = elf::inspect(path)?;
        let target = match inspection {
            Inspection::None => return Ok(None),
            Inspection::Unsupported(why) => {
                self.stats.unsupported += 1;
                if self.failed.insert(m.file) {
                    tracing::warn!("TLS plaintext of {} cannot be traced: {why}", m.path);
                }
                return Ok(None);
            }
            Inspection::Target(t) => t,
        };
        let mut links: Vec<(&'static str, UProbeLinkId)> = Vec::new();
        let result = attach_target(ebpf, path, &target, &mut links);
        let description = match &target {
            TlsTarget::OpenSsl(found) => format!(
                "{} [OpenSSL API: {}]",
                m.path,
                found.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(" ")
            ),
            TlsTarget::Go {
                version, read_rets, ..
            } => format!(
                "{} [Go {version} crypto/tls: Read (entry and {} RETs), Write (entry)]",
                m.path,
                read_rets.len(),
            ),
        };
        let a = Attached {
            description,
            links,
            pids: HashSet::new(),
        };
        if let Err(e) = result {
            // Keep nothing half-attached.
            detach_links(ebpf, a.links, &a.description);
            return Err(e);
        }
        tracing::info!("attached TLS probes to {}", a.description);
        Ok(Some(a))
    }
}

/// The executable and the libraries it will load, resolved like the dynamic loader would
/// (`DT_NEEDED` transitively; the object's `DT_RUNPATH`/`DT_RPATH`, then [`LIB_DIRS`]), under
/// `root` (`/proc/PID/root`). `deps` caches each file's dynamic section.
pub fn needed_closure(
    root: &str,
    exe: &str,
    deps: &mut HashMap<FileId, (Vec<String>, Vec<String>)>,
) -> Vec<Mapping> {
    let mut out = Vec::new();
    let mut queue: VecDeque<String> = VecDeque::from([exe.to_owned()]);
    let mut seen: HashSet<FileId> = HashSet::new();
    while let Some(path) = queue.pop_front() {
        if seen.len() >= MAX_NEEDED {
            break;
        }
        let Some(file) = file_id(&format!("{root}{path}")) else {
            continue;
        };
        if !seen.insert(file) {
            continue;
        }
        let (needed, dirs) = deps
            .entry(file)
            .or_insert_with(|| {
                let origin = std::path::Path::new(&path)
                    .parent()
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default();
                std::fs::File::open(format!("{root}{path}"))
                    .ok()
                    // SAFETY: read-only mapping (see elf::inspect).
                    .and_then(|f| unsafe { memmap2::Mmap::map(&f) }.ok())
                    .map(|m| elf::dynamic_deps(&m, &origin))
                    .unwrap_or_default()
            })
            .clone();
        for name in needed {
            let found = dirs
                .iter()
                .map(String::as_str)
                .chain(LIB_DIRS.iter().copied())
                .map(|d| format!("{d}/{name}"))
                .find(|p| std::path::Path::new(&format!("{root}{p}")).is_file());
            if let Some(p) = found {
                queue.push_back(p);
            }
        }
        out.push(Mapping { file, path });
    }
    out
}

/// The identity of a file as `/proc/PID/maps` shows it (device major:minor, inode).
fn file_id(path: &str) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(path).ok()?;
    if !md.is_file() {
        return None;
    }
    let dev = md.dev();
    let (major, minor) = (libc::major(dev) as u64, libc::minor(dev) as u64);
    Some(FileId {
        dev: (major << 20) | minor,
        ino: md.ino(),
    })
}

fn detach_links(ebpf: &mut Ebpf, links: Vec<(&'static str, UProbeLinkId)>, what: &str) {
    for (prog, link) in links {
        if let Some(p) = ebpf
            .program_mut(prog)
            .and_then(|p| <&mut UProbe>::try_from(p).ok())
            && let Err(e) = p.detach(link)
        {
            tracing::warn!("detaching {prog} from {what}: {e}");
        }
    }
}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
    })
}

fn attach_target(
    ebpf: &mut Ebpf,
    path: &std::path::Path,
    target: &TlsTarget,
    links: &mut Vec<(&'static str, UProbeLinkId)>,
) -> Result<()> {
    let mut attach = |prog: &'static str, offset: u64| -> Result<()> {
        let p: &mut UProbe = ebpf
            .program_mut(prog)
            .ok_or_else(|| anyhow!("program {prog} missing"))?
            .try_into()?;
        let link = p
            .attach(
                UProbeAttachLocation::AbsoluteOffset(offset),
                path,
                UProbeScope::AllProcesses,
            )
            .with_context(|| format!("attaching {prog} at {offset:#x}"))?;
        links.push((prog, link));
        Ok(())
    };
    match target {
        TlsTarget::OpenSsl(found) => {
            for (name, off) in found {
                let entry = OPENSSL_FUNCTIONS
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, p)| *p)
                    .ok_or_else(|| anyhow!("no program for {name}"))?;
                attach(entry, *off)?;
                if *name != "SSL_free" {
                    attach("ssl_ret", *off)?;
                }
            }
        }
        TlsTarget::Go {
            read,
            read_rets,
            write,
            ..
        } => {
            attach("go_tls_read_entry", *read)?;
            for r in read_rets {
                attach("go_tls_read_ret", *r)?;
            }
            attach("go_tls_write_entry", *write)?;
        }
    }
    Ok(())
}

/// Loads the TLS programs (attached later, per file).
pub fn load_programs(ebpf: &mut Ebpf) -> Result<()> {
    for name in PROGRAMS {
        let p: &mut UProbe = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the object"))?
            .try_into()?;
        p.load().map_err(|e| super::describe_load_error(name, e))?;
    }
    Ok(())
}

/// Files with probes now, for logs and tests: description per file.
impl TlsAttacher {
    pub fn attached_files(&self) -> BTreeMap<FileId, String> {
        self.attached
            .iter()
            .map(|(k, v)| (*k, v.description.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curl_will_load_libssl_through_libcurl() {
        if !std::path::Path::new("/usr/bin/curl").exists() {
            return;
        }
        let libs = needed_closure("", "/usr/bin/curl", &mut HashMap::new());
        assert_eq!(libs[0].path, "/usr/bin/curl");
        assert!(
            libs.iter().any(|m| m.path.contains("/libcurl.so")),
            "{libs:?}"
        );
        assert!(
            libs.iter().any(|m| m.path.contains("/libssl.so")),
            "{libs:?}"
        );
        // The identities are those /proc/PID/maps shows.
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let own = executable_mappings(&maps);
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let from_maps = own
            .iter()
            .find(|m| std::path::Path::new(&m.path) == exe)
            .unwrap();
        assert_eq!(file_id(&exe.to_string_lossy()), Some(from_maps.file));
    }

    #[test]
    fn maps_lines() {
        let maps = "\
55d0c0a00000-55d0c0a28000 r--p 00000000 fd:01 1311  /usr/bin/curl
55d0c0a28000-55d0c0a90000 r-xp 00028000 fd:01 1311  /usr/bin/curl
7f0000000000-7f0000100000 r-xp 00000000 fd:01 2222                       /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000100000-7f0000200000 r-xp 00000000 00:00 0 
7f0000200000-7f0000300000 r-xp 00000000 fd:01 3333  /tmp/x (deleted)
7ffd00000000-7ffd00001000 r-xp 00000000 00:00 0                          [vdso]
";
        let m = executable_mappings(maps);
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(m[0].path, "/usr/bin/curl");
        assert_eq!(
            m[0].file,
            FileId {
                dev: (0xfd << 20) | 1,
                ino: 1311
            }
        );
        assert_eq!(m[1].path, "/usr/lib/x86_64-linux-gnu/libssl.so.3");
    }
}
