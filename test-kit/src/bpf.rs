//! The kernel's view of loaded BPF programs, to check what an agent holds and leaves behind.
use std::collections::HashSet;

/// Ids of every BPF program loaded in the kernel.
pub fn loaded_program_ids() -> HashSet<u32> {
    aya::programs::loaded_programs()
        .filter_map(|p| p.ok().map(|p| p.id()))
        .collect()
}

/// Ids of the BPF programs process `pid` holds (from its fds' fdinfo).
pub fn program_ids_of(pid: u32) -> HashSet<u32> {
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
