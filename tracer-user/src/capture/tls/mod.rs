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
//!
//! The looking (procfs, ELF parsing, Go disassembly) and the attaching run on a thread of
//! their own ([`scanner`]), fed the exec and exit events over a bounded queue, so the event
//! loop keeps draining the ring buffer meanwhile; detaching runs on another ([`probes`]).
pub mod elf;
mod probes;
mod scanner;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::Ordering,
        mpsc::{SyncSender, TrySendError},
    },
};

use anyhow::{Context, Result, anyhow};
use aya::{Ebpf, programs::UProbe};

use self::{
    probes::Detacher,
    scanner::{Note, ScanCounters, Scanner},
};
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

/// Notes waiting for the scanner: in its queue, then (when it is full) kept by the loop and
/// offered again at each drain. Beyond both, notes are dropped and counted.
const QUEUE: usize = 4096;
const MAX_BACKLOG: usize = 65536;
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
    /// Exec/exit notes that found the scanner's queue full (kept and offered again).
    pub queue_full: u64,
    /// Notes dropped because the backlog was full too.
    pub notes_dropped: u64,
}

/// The event loop's side of TLS probing: notes the exec and exit events for the scanner
/// thread, never waiting for it.
#[derive(Default)]
pub struct TlsAttacher {
    running: Option<Running>,
    /// Notes the scanner's queue had no room for, oldest first.
    backlog: VecDeque<Note>,
    queue_full: u64,
    notes_dropped: u64,
}

struct Running {
    notes: SyncSender<Note>,
    scanner: std::thread::JoinHandle<()>,
    counters: Arc<ScanCounters>,
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
    /// Attaches nothing (the TLS programs did not load).
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the scanner (it looks at every running process first), which attaches the
    /// probes with the programs of `ebpf`.
    pub fn start(ebpf: Arc<Mutex<Ebpf>>) -> Result<Self> {
        let (notes, notes_rx) = std::sync::mpsc::sync_channel(QUEUE);
        let counters = Arc::new(ScanCounters::default());
        let scanner = Scanner::new(ebpf, Detacher::start()?, counters.clone());
        let scanner = std::thread::Builder::new()
            .name("tls-scanner".into())
            .spawn(move || scanner.run(notes_rx))
            .context("starting the TLS scanner thread")?;
        Ok(Self {
            running: Some(Running {
                notes,
                scanner,
                counters,
            }),
            ..Self::default()
        })
    }

    pub fn stats(&self) -> TlsStats {
        let mut s = TlsStats {
            queue_full: self.queue_full,
            notes_dropped: self.notes_dropped,
            ..TlsStats::default()
        };
        if let Some(r) = &self.running {
            let c = &r.counters;
            s.files_attached = c.files_attached.load(Ordering::Relaxed);
            s.attach_failed = c.attach_failed.load(Ordering::Relaxed);
            s.unsupported = c.unsupported.load(Ordering::Relaxed);
            s.detached = c.detached.load(Ordering::Relaxed);
            s.processes_scanned = c.processes_scanned.load(Ordering::Relaxed);
        }
        s
    }

    /// Notes the exec and exit events of the event stream (ignores the others).
    pub fn on_event(&mut self, event: &Event<'_>) {
        let note = match *event {
            Event::Exec { pid, .. } => Note::Exec(pid),
            Event::Exit { pid, .. } => Note::Exit(pid),
            Event::Data { .. } | Event::Close(_) => return,
        };
        if note == Note::Exec(std::process::id()) {
            return;
        }
        self.offer(note);
    }

    /// Gives `note` to the scanner, behind any notes kept back (order matters: an exit after
    /// an exec of the same pid).
    fn offer(&mut self, note: Note) {
        let Some(r) = &self.running else { return };
        if self.backlog.is_empty() {
            match r.notes.try_send(note) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => return,
                Err(TrySendError::Full(_)) => self.queue_full += 1,
            }
        }
        if self.backlog.len() < MAX_BACKLOG {
            self.backlog.push_back(note);
        } else {
            self.notes_dropped += 1;
        }
    }

    /// Offers the notes kept back again (called at every drain of the ring).
    pub fn flush_backlog(&mut self) {
        let Some(r) = &self.running else { return };
        while let Some(&note) = self.backlog.front() {
            match r.notes.try_send(note) {
                Ok(()) => {
                    self.backlog.pop_front();
                }
                Err(TrySendError::Full(_)) => break,
                Err(TrySendError::Disconnected(_)) => {
                    self.backlog.clear();
                    break;
                }
            }
        }
    }

    /// Stops the scanner, which detaches every probe; returns when it is done.
    pub fn shutdown(&mut self) {
        let Some(r) = self.running.take() else { return };
        if self.queue_full > 0 || self.notes_dropped > 0 {
            tracing::info!(
                queue_full = self.queue_full,
                notes_dropped = self.notes_dropped,
                "TLS scanner queue"
            );
        }
        // Closing the queue ends the scanner's loop.
        drop(r.notes);
        let _ = r.scanner.join();
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

fn is_not_found(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
    })
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
