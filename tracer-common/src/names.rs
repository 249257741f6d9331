//! Names by which the agent finds the kernel object's maps and globals.
//!
//! aya-ebpf names a map after its `static` (or a string literal in `#[map(name = "...")]`),
//! so `tracer-ebpf` cannot take these constants: its statics carry the same names, and the
//! agent checks at load that every name here is in the object (a host unit test of
//! `tracer-user` checks the built object too), so a rename fails at once with the name.

/// Maps the agent reads or fills.
pub mod map {
    /// The ring buffer carrying every event to the agent (sized by the agent at load).
    pub const EVENTS: &str = "EVENTS";
    /// Per-CPU drop counters, indexed by [`crate::DropCause`].
    pub const DROPS: &str = "DROPS";
    /// Per-CPU injection counters, indexed by [`crate::InjectStat`].
    pub const INJECT_COUNTS: &str = "INJECT_COUNTS";
    /// The tail-call program array, indexed by [`crate::TailCall`].
    pub const PROGS: &str = "PROGS";
    /// Connection state, keyed by socket (sized from `--max-connections` at load).
    pub const CONNS: &str = "CONNS";
    /// A thread's socket call between its entry and exit (sized from the budget too).
    pub const INFLIGHT: &str = "INFLIGHT";
    /// The request a thread serves (sized from the budget too).
    pub const THREAD_CTX: &str = "THREAD_CTX";
    /// Client sockets the sk_msg program sees (sock_ops adds them).
    pub const SOCKS: &str = "SOCKS";
    /// [`crate::propagation::HEX_TABLE`], filled by the agent.
    pub const HEX_TABLE: &str = "HEX_TABLE";
    /// The optional target sets (see [`crate::Config`]'s filters).
    pub const TARGET_PIDS: &str = "TARGET_PIDS";
    pub const TARGET_PORTS: &str = "TARGET_PORTS";
    pub const TARGET_CGROUPS: &str = "TARGET_CGROUPS";

    /// Every map above.
    pub const ALL: [&str; 12] = [
        EVENTS,
        CONNS,
        INFLIGHT,
        THREAD_CTX,
        DROPS,
        INJECT_COUNTS,
        PROGS,
        SOCKS,
        HEX_TABLE,
        TARGET_PIDS,
        TARGET_PORTS,
        TARGET_CGROUPS,
    ];
}

/// Read-only globals the agent sets before the programs load.
pub mod global {
    /// A [`crate::Config`].
    pub const CONFIG: &str = "CONFIG";
    /// A [`crate::KernelOffsets`].
    pub const OFFSETS: &str = "OFFSETS";
}

#[cfg(test)]
mod tests {
    use super::map;

    #[test]
    fn map_names_are_distinct() {
        for (i, name) in map::ALL.iter().enumerate() {
            assert!(!map::ALL[i + 1..].contains(name), "{name} twice");
        }
    }
}
