//! The TLS scanner thread: which files the processes map, which of them hold TLS code, where
//! its probes go (procfs reads, ELF parsing, disassembly of Go binaries: hundreds of
//! milliseconds for a large Go binary), and attaching them (from a few to over a hundred
//! milliseconds per file: the kernel reads the probed pages of the file in). None of it runs
//! on the event loop, which keeps draining the ring buffer meanwhile.
use std::{
    collections::{HashMap, HashSet, VecDeque},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, RecvTimeoutError},
    },
    time::{Duration, Instant},
};

use aya::Ebpf;

use super::{
    FileId, Mapping,
    elf::{self, Inspection, TlsTarget},
    executable_mappings, is_not_found, needed_closure,
    probes::{self, Detacher, Links},
};

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

/// How often due looks are taken while some wait (as the event loop's drain did before).
const POLL: Duration = Duration::from_millis(10);

/// Notes taken at most between two rounds of looks.
const NOTES_PER_ROUND: usize = 4096;

/// Bounds: pending looks and files remembered.
const MAX_PENDING: usize = 65536;
const MAX_FILES: usize = 65536;

/// What the event loop tells the scanner (from the event stream).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Note {
    Exec(u32),
    Exit(u32),
}

/// Counters the scanner keeps (read by the event loop).
#[derive(Default)]
pub struct ScanCounters {
    /// Files with probes now.
    pub files_attached: AtomicU64,
    pub attach_failed: AtomicU64,
    pub unsupported: AtomicU64,
    pub detached: AtomicU64,
    pub processes_scanned: AtomicU64,
}

/// A file with probes.
struct Probed {
    /// The path as a process names it, with what is probed (for logs).
    description: String,
    links: Links,
    /// Processes known to map it.
    pids: HashSet<u32>,
}

pub struct Scanner {
    /// The loaded programs (only this thread attaches; the event loop never takes the lock).
    ebpf: Arc<Mutex<Ebpf>>,
    detacher: Detacher,
    counters: Arc<ScanCounters>,
    probed: HashMap<FileId, Probed>,
    /// Files already looked at that need no probe, or cannot have one.
    ignored: HashSet<FileId>,
    pid_files: HashMap<u32, Vec<FileId>>,
    pending: VecDeque<(Instant, u32)>,
    /// Processes just exec'ed whose executable's libraries are resolved before they load.
    fresh: Vec<u32>,
    /// `DT_NEEDED` names and search paths per file (bounded cache).
    deps: HashMap<FileId, (Vec<String>, Vec<String>)>,
    /// Files no process was known to map any more, and when to detach them if that holds.
    idle: VecDeque<(Instant, FileId)>,
    /// Files whose TLS code cannot be probed, already reported (each once).
    reported: HashSet<FileId>,
}

impl Scanner {
    pub fn new(ebpf: Arc<Mutex<Ebpf>>, detacher: Detacher, counters: Arc<ScanCounters>) -> Self {
        Self {
            ebpf,
            detacher,
            counters,
            probed: HashMap::new(),
            ignored: HashSet::new(),
            pid_files: HashMap::new(),
            pending: VecDeque::new(),
            fresh: Vec::new(),
            deps: HashMap::new(),
            idle: VecDeque::new(),
            reported: HashSet::new(),
        }
    }

    /// Looks at every running process, then follows the notes until the event loop stops
    /// (closes them); then detaches every probe.
    pub fn run(mut self, notes: Receiver<Note>) {
        let started = Instant::now();
        self.scan_all();
        tracing::info!(
            files = self.probed.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "TLS probes attached to the files running processes map"
        );
        self.follow(&notes);
        let started = Instant::now();
        let files = self.probed.len();
        let links: Links = self.probed.drain().flat_map(|(_, p)| p.links).collect();
        let count = links.len();
        self.detacher.detach(links);
        self.detacher.finish();
        tracing::info!(
            files,
            probes = count,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "detached every TLS probe"
        );
    }

    fn follow(&mut self, notes: &Receiver<Note>) {
        loop {
            let wait = self.next_wait();
            match notes.recv_timeout(wait) {
                Ok(note) => {
                    self.note(note);
                    // Take the notes waiting before looking at processes (a bounded number:
                    // a flood of execs must not keep the looks from ever running).
                    for note in notes.try_iter().take(NOTES_PER_ROUND) {
                        self.note(note);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            self.process();
        }
    }

    fn next_wait(&self) -> Duration {
        if !self.pending.is_empty() || !self.fresh.is_empty() {
            return POLL;
        }
        self.idle.front().map_or(Duration::from_secs(1), |(at, _)| {
            at.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1))
        })
    }

    fn note(&mut self, note: Note) {
        match note {
            Note::Exec(pid) => self.on_exec(pid),
            Note::Exit(pid) => self.on_exit(pid),
        }
    }

    fn on_exec(&mut self, pid: u32) {
        let now = Instant::now();
        // The old image's files are no longer mapped by this pid.
        self.release(pid);
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

    fn on_exit(&mut self, pid: u32) {
        self.release(pid);
        self.pending.retain(|(_, p)| *p != pid);
        self.fresh.retain(|p| *p != pid);
    }

    /// Does what is due: looks at processes, detaches files no process maps.
    fn process(&mut self) {
        // A new process's libraries are probed before the dynamic loader maps them where
        // possible: a short-lived client (curl) would otherwise often finish first.
        for pid in std::mem::take(&mut self.fresh) {
            self.scan_needed(pid);
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
            self.scan(pid);
        }
        while let Some(&(at, f)) = self.idle.front() {
            if at > now {
                break;
            }
            self.idle.pop_front();
            if self.probed.get(&f).is_some_and(|p| p.pids.is_empty()) {
                self.detach(f);
            }
        }
    }

    fn detach(&mut self, f: FileId) {
        let Some(p) = self.probed.remove(&f) else {
            return;
        };
        self.detacher.detach(p.links);
        self.counters.detached.fetch_add(1, Ordering::Relaxed);
        self.counters
            .files_attached
            .store(self.probed.len() as u64, Ordering::Relaxed);
        tracing::info!(
            "detached TLS probes from {} (no process maps it)",
            p.description
        );
    }

    fn scan_all(&mut self) {
        let own = std::process::id();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return;
        };
        let pids: Vec<u32> = dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|p| *p != own)
            .collect();
        for pid in pids {
            self.scan(pid);
        }
    }

    /// `pid` no longer maps its files; those left without a process are detached after
    /// [`DETACH_AFTER`] unless a process maps them again meanwhile.
    fn release(&mut self, pid: u32) {
        let Some(files) = self.pid_files.remove(&pid) else {
            return;
        };
        for f in files {
            let empty = self.probed.get_mut(&f).is_some_and(|p| {
                p.pids.remove(&pid);
                p.pids.is_empty()
            });
            if empty && self.idle.len() < MAX_PENDING {
                self.idle.push_back((Instant::now() + DETACH_AFTER, f));
            }
        }
    }

    /// Looks at one process's mapped files.
    fn scan(&mut self, pid: u32) {
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            return; // gone, or a kernel thread
        };
        self.counters
            .processes_scanned
            .fetch_add(1, Ordering::Relaxed);
        for m in executable_mappings(&maps) {
            self.consider(pid, m);
        }
    }

    /// Resolves the libraries a just exec'ed process's executable will load (`DT_NEEDED`,
    /// transitively) and considers them as if already mapped.
    fn scan_needed(&mut self, pid: u32) {
        let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
            return;
        };
        let root = format!("/proc/{pid}/root");
        if self.deps.len() >= MAX_FILES {
            self.deps.clear();
        }
        for m in needed_closure(&root, &exe.to_string_lossy(), &mut self.deps) {
            self.consider(pid, m);
        }
    }

    /// One file a process maps (or is about to map).
    fn consider(&mut self, pid: u32, m: Mapping) {
        if let Some(p) = self.probed.get_mut(&m.file) {
            if p.pids.insert(pid) {
                self.pid_files.entry(pid).or_default().push(m.file);
            }
            return;
        }
        if self.ignored.contains(&m.file) {
            return;
        }
        let started = Instant::now();
        let path = PathBuf::from(format!("/proc/{pid}/root{}", m.path));
        match elf::inspect(&path) {
            Ok(Inspection::None) => self.ignore(m.file),
            Ok(Inspection::Unsupported(why)) => {
                self.counters.unsupported.fetch_add(1, Ordering::Relaxed);
                if self.reported.len() < MAX_FILES && self.reported.insert(m.file) {
                    tracing::warn!("TLS plaintext of {} cannot be traced: {why}", m.path);
                }
                self.ignore(m.file);
            }
            Ok(Inspection::Target(target)) => {
                let analysis = started.elapsed();
                self.attach(pid, &m, &path, &target, analysis);
            }
            Err(e) if is_not_found(&e) => {
                // The process (or its mount namespace) went away meanwhile.
                tracing::debug!("{} (pid {pid}) vanished: {e:#}", m.path);
            }
            Err(e) => {
                self.counters.attach_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("TLS probes not attached to {} (pid {pid}): {e:#}", m.path);
                self.ignore(m.file);
            }
        }
    }

    /// Attaches the probes of `target` to the file of `m` (found in `analysis`).
    fn attach(
        &mut self,
        pid: u32,
        m: &Mapping,
        path: &Path,
        target: &TlsTarget,
        analysis: Duration,
    ) {
        let description = describe(&m.path, target);
        if self.probed.len() >= MAX_FILES {
            tracing::warn!(
                "TLS probes not attached to {description}: {MAX_FILES} files probed already"
            );
            self.counters.attach_failed.fetch_add(1, Ordering::Relaxed);
            self.ignore(m.file);
            return;
        }
        let started = Instant::now();
        let result = {
            let mut ebpf = self.ebpf.lock().unwrap_or_else(PoisonError::into_inner);
            probes::attach(&mut ebpf, path, target)
        };
        match result {
            Ok(links) => {
                tracing::info!(
                    probes = links.len(),
                    attach_ms = started.elapsed().as_millis() as u64,
                    analysis_ms = analysis.as_millis() as u64,
                    "attached TLS probes to {description}"
                );
                self.probed.insert(
                    m.file,
                    Probed {
                        description,
                        links,
                        pids: HashSet::from([pid]),
                    },
                );
                self.pid_files.entry(pid).or_default().push(m.file);
                self.counters
                    .files_attached
                    .store(self.probed.len() as u64, Ordering::Relaxed);
            }
            Err(e) if is_not_found(&e) => {
                tracing::debug!("{} (pid {pid}) vanished: {e:#}", m.path);
            }
            Err(e) => {
                self.counters.attach_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("TLS probes not attached to {description} (pid {pid}): {e:#}");
                self.ignore(m.file);
            }
        }
    }

    fn ignore(&mut self, f: FileId) {
        if self.ignored.len() >= MAX_FILES {
            self.ignored.clear();
        }
        self.ignored.insert(f);
    }
}

/// `/usr/bin/app [Go 1.22 crypto/tls: ...]`: the file and what is probed in it.
fn describe(path: &str, target: &TlsTarget) -> String {
    match target {
        TlsTarget::OpenSsl(found) => format!(
            "{path} [OpenSSL API: {}]",
            found.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(" ")
        ),
        TlsTarget::Go {
            version, read_rets, ..
        } => format!(
            "{path} [Go {version} crypto/tls: Read (entry and {} RETs), Write (entry)]",
            read_rets.len(),
        ),
    }
}
