//! Privileged tests (eBPF programs, network namespaces, cgroups) say that they need root, in
//! one message, instead of failing later with whatever error the first privileged step gives.
//! Each calls [`require_root`] first, before its peers start (some peers, e.g. the grpcio
//! server, do not start for an unprivileged user either); [`Agent::start`](crate::Agent::start)
//! checks again for any test that forgets.

/// Fails the calling test unless it runs as root. Never a skip: a privileged suite run without
/// privileges must not look like a passing one.
pub fn require_root() {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "this test needs root (it loads eBPF programs into the kernel): run the suite with \
         `cargo xtask test` (it re-runs itself through sudo) or `sudo -E cargo test` \
         (effective uid here: {euid})"
    );
}
