//! The per-pid cache of resources: bounded, oldest evicted first, forgotten on exec and exit.
use std::collections::VecDeque;
use std::sync::Arc;

use hashbrown::HashMap;

use super::container::ContainerInfo;
use super::kubernetes::{ResourceJoin, Store};
use super::proc_info::read_proc;
use super::resource::{
    UNKNOWN_SERVICE, build_resource, minimal_resource, service_name_from_environment,
    system_host_name,
};
use crate::span::{AttrValue, Resource};

/// Cached processes at most, by default; the oldest entry is evicted beyond.
pub const DEFAULT_MAX_ENTRIES: usize = 16384;

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

/// What is cached about one process.
#[derive(Debug)]
struct Entry {
    resource: Arc<Resource>,
    container: ContainerInfo,
    /// Insertion generation (see `ProcessTable::order`).
    generation: u64,
}

/// Cache of resources per pid.
#[derive(Debug)]
pub struct ProcessTable {
    entries: HashMap<u32, Entry>,
    /// Insertion order; entries whose generation no longer matches are stale and skipped.
    order: VecDeque<(u32, u64)>,
    next_gen: u64,
    max_entries: usize,
    host_name: Option<String>,
    extra: Vec<(String, String)>,
    stats: ProcessStats,
    /// Kubernetes metadata joined into the resources of processes in pods, when watched.
    kube: Option<ResourceJoin>,
}

impl ProcessTable {
    /// `host_name`: `host.name` for every resource (`None`: this machine's hostname, read
    /// once). `extra`: the agent's own resource attributes (e.g. its `OTEL_RESOURCE_ATTRIBUTES`,
    /// see [`super::resource_attributes_from_env`]), added to every process; a process's own
    /// values win over them.
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
            kube: None,
        }
    }

    /// Joins the pod metadata of `store` (when there is one) into the resources of processes
    /// in containers (see `kubernetes::ResourceJoin`).
    pub fn with_kubernetes(mut self, store: Option<Arc<Store>>) -> Self {
        self.kube = store.map(ResourceJoin::new);
        self
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
        if let Some(e) = self.entries.get(&pid) {
            return match &mut self.kube {
                Some(kube) => kube.current(pid, &e.resource),
                None => Arc::clone(&e.resource),
            };
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
                let joined = match &mut self.kube {
                    Some(kube) => kube.on_built(
                        Arc::clone(&r),
                        service_name_from_environment(&info),
                        &info.container,
                    ),
                    None => Arc::clone(&r),
                };
                if !(info.exe.is_some() && info.cmdline.is_empty()) {
                    self.insert(pid, r, info.container);
                }
                joined
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

    /// Reads and caches the metadata of `pid` unless it is cached already: called on every
    /// data event, while the process certainly exists (short-lived clients such as curl are
    /// often gone when their last span is finished). A cached pid costs one hash look-up; one
    /// already gone from /proc is cached too, as [`ProcessTable::resource_named`] names it
    /// (so it is not read again per event).
    pub fn remember(&mut self, pid: u32, comm: &[u8]) {
        if self.entries.contains_key(&pid) {
            return;
        }
        let r = self.resource_named(pid, comm);
        if !self.entries.contains_key(&pid) && r.service_name() == UNKNOWN_SERVICE {
            self.insert(pid, r, ContainerInfo::default());
        }
    }

    /// Like [`ProcessTable::resource`], but when the process is already gone from /proc the
    /// resource is named after `comm` (the task name the kernel reported with its event) and
    /// kept until [`ProcessTable::on_exit`]/[`ProcessTable::on_exec`].
    pub fn resource_named(&mut self, pid: u32, comm: &[u8]) -> Arc<Resource> {
        let r = self.resource(pid);
        if self.entries.contains_key(&pid) || r.service_name() != UNKNOWN_SERVICE {
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
                *v = AttrValue::from(name.clone());
            }
        }
        named
            .attributes
            .insert(2, ("process.executable.name".into(), AttrValue::from(name)));
        let named = Arc::new(named);
        self.insert(pid, Arc::clone(&named), ContainerInfo::default());
        named
    }

    /// The process called execve: its metadata changed; the next look-up reads procfs again.
    pub fn on_exec(&mut self, pid: u32) {
        self.forget(pid);
    }

    /// The process exited: forget it.
    pub fn on_exit(&mut self, pid: u32) {
        self.forget(pid);
    }

    fn forget(&mut self, pid: u32) {
        self.entries.remove(&pid);
        if let Some(kube) = &mut self.kube {
            kube.forget(pid);
        }
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

    /// The container and pod of a cached process, as its `/proc/PID/cgroup` said when its
    /// resource was built (by [`ProcessTable::resource`]; the cache is not filled here).
    /// `None` for a pid not cached; an empty [`ContainerInfo`] for a host process or one that
    /// was gone before it could be read. For joining other metadata (e.g. Kubernetes pods) to
    /// processes by container id or pod UID.
    pub fn container(&self, pid: u32) -> Option<&ContainerInfo> {
        self.entries.get(&pid).map(|e| &e.container)
    }

    /// Every cached process in a container or pod, with its [`ContainerInfo`] (any order).
    pub fn containers(&self) -> impl Iterator<Item = (u32, &ContainerInfo)> {
        self.entries
            .iter()
            .filter(|(_, e)| !e.container.is_empty())
            .map(|(pid, e)| (*pid, &e.container))
    }

    /// The `host.name` given to every resource.
    pub fn host_name(&self) -> Option<&str> {
        self.host_name.as_deref()
    }

    fn insert(&mut self, pid: u32, resource: Arc<Resource>, container: ContainerInfo) {
        while self.entries.len() >= self.max_entries {
            if !self.evict_oldest() {
                break;
            }
        }
        let generation = self.next_gen;
        self.next_gen += 1;
        self.entries.insert(
            pid,
            Entry {
                resource,
                container,
                generation,
            },
        );
        self.order.push_back((pid, generation));
        // Entries removed by exec/exit leave stale order records: compact now and then.
        if self.order.len() > 2 * self.max_entries + 64 {
            let entries = &self.entries;
            self.order
                .retain(|(p, g)| entries.get(p).is_some_and(|e| e.generation == *g));
        }
    }

    /// Drops the oldest live entry; false when there is none.
    fn evict_oldest(&mut self) -> bool {
        while let Some((pid, generation)) = self.order.pop_front() {
            if self
                .entries
                .get(&pid)
                .is_some_and(|e| e.generation == generation)
            {
                self.forget(pid);
                self.stats.evictions += 1;
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::otel_env::parse_resource_attributes;
    use crate::process::test_support::{attr, s};
    use std::process::{Child, Command};

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

    #[test]
    fn a_gone_process_is_read_once_per_pid_not_per_event() {
        let mut t = ProcessTable::new(Some("h".into()), vec![]);
        for _ in 0..3 {
            t.remember(999_999_999, &[0; 16]);
        }
        assert_eq!((t.len(), t.stats().misses, t.stats().exited), (1, 1, 1));
        assert_eq!(t.resource(999_999_999).service_name(), UNKNOWN_SERVICE);
        t.on_exit(999_999_999);
        assert!(t.is_empty());
        // A live process: cached by its first event, as `resource` would.
        let me = std::process::id();
        t.remember(me, b"other\0\0\0\0\0\0\0\0\0\0\0");
        t.remember(me, b"other\0\0\0\0\0\0\0\0\0\0\0");
        assert_eq!((t.len(), t.stats().misses), (1, 2));
        assert_ne!(t.resource(me).service_name(), "other");
    }

    // ---- cache ----

    fn fake(pid: u32) -> Arc<Resource> {
        Arc::new(minimal_resource(pid, None, &[]))
    }

    #[test]
    fn eviction_of_oldest() {
        let mut t = ProcessTable::new(Some("h".into()), vec![]).with_max_entries(3);
        for pid in 1..=3 {
            t.insert(pid, fake(pid), ContainerInfo::default());
        }
        assert_eq!(t.len(), 3);
        t.insert(4, fake(4), ContainerInfo::default());
        assert_eq!(t.len(), 3);
        assert!(!t.entries.contains_key(&1));
        assert_eq!(t.stats().evictions, 1);
        // A removed entry leaves a stale record that eviction skips.
        t.on_exit(2);
        t.insert(5, fake(5), ContainerInfo::default());
        assert_eq!(t.len(), 3);
        t.insert(6, fake(6), ContainerInfo::default());
        assert!(!t.entries.contains_key(&3));
        assert!(
            t.entries.contains_key(&4) && t.entries.contains_key(&5) && t.entries.contains_key(&6)
        );
        // Re-inserting after exec makes the entry young again.
        t.on_exec(4);
        t.insert(4, fake(4), ContainerInfo::default());
        t.insert(7, fake(7), ContainerInfo::default());
        assert!(!t.entries.contains_key(&5));
        assert!(t.entries.contains_key(&4));
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn container_of_cached_processes() {
        let mut t = ProcessTable::new(Some("h".into()), vec![]);
        let pod = ContainerInfo {
            id: Some("9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d".into()),
            pod_uid: Some("0b7632a2-a56e-4278-987a-22de18008dbe".into()),
        };
        t.insert(1, fake(1), pod.clone());
        t.insert(2, fake(2), ContainerInfo::default());
        assert_eq!(t.container(1), Some(&pod));
        assert_eq!(t.container(2), Some(&ContainerInfo::default()));
        assert_eq!(t.container(3), None);
        assert_eq!(t.containers().collect::<Vec<_>>(), vec![(1, &pod)]);
        t.on_exec(1);
        assert_eq!(t.container(1), None);
        assert_eq!(t.containers().count(), 0);
    }

    #[test]
    fn order_stays_bounded() {
        let mut t = ProcessTable::new(None, vec![]).with_max_entries(4);
        for pid in 0..10_000 {
            t.insert(pid, fake(pid), ContainerInfo::default());
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
        // This test's own cgroup, parsed (a host process: no container.id; in a container: its id).
        let cgroup = std::fs::read("/proc/self/cgroup").unwrap();
        let container = crate::process::parse_cgroup(&cgroup);
        assert_eq!(t.container(me), Some(&container));
        assert_eq!(s(&r, "container.id"), container.id);
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
