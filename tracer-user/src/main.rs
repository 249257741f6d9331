use std::{io::IsTerminal, process::ExitCode};

use clap::Parser;
use tracer::cli::{Cli, Command};
use tracing_subscriber::EnvFilter;

/// The per-event path allocates small, short-lived objects (heads, attributes, protobuf
/// buffers): mimalloc makes them markedly cheaper than glibc's allocator (see the benchmark).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Transparent huge pages off for the agent's memory. mimalloc asks for huge pages on its
/// arenas, so a first touch faulted in and zeroed 2 MiB at once: in `cargo xtask bench`
/// `clear_page_erms` was 7-20 % of the agent's profile, and the peak RSS 87-91 MiB against 69-72
/// MiB with them off (idle: 68.6 → 58.9 MiB peak), at no cost in CPU per request. Setting
/// `MIMALLOC_ALLOW_THP` leaves the choice to mimalloc.
fn no_transparent_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: prctl with integer arguments only; it sets a flag of this process.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
}

fn main() -> ExitCode {
    no_transparent_huge_pages();
    let cli = Cli::parse();
    if let Some(Command::Top(args)) = &cli.command {
        // A client of a running agent: no programs, no privileges, no agent logging.
        return tracer::ui::top::run(args);
    }
    let filter = cli.log_filter();
    let (filter, bad_filter) = match EnvFilter::try_new(&filter) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new("info"), Some(format!("{filter:?}: {e}"))),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    if let Some(why) = bad_filter {
        tracing::warn!("ignoring the log filter {why}; logging at info");
    }
    // Before any thread exists: the BTF child is forked from here (see the function's docs).
    // A failure here is reported by the start-up checks in `Capture::load` (no BTF, ...).
    let preflight = tracer::capture::preflight::check().is_ok();
    let offsets = preflight
        .then(|| {
            tracer::capture::btf::kernel_offsets_isolated(std::path::Path::new(
                tracer::capture::btf::VMLINUX_BTF,
            ))
            .ok()
        })
        .flatten();
    // Probing fentry parses the kernel's BTF too: also in a child, also before the runtime.
    let features = preflight.then(tracer::capture::features::Features::detect_isolated);
    if let Err(e) = cli.cpu_priority.apply() {
        tracing::warn!("--cpu-priority {:?} not applied: {e}", cli.cpu_priority);
    }
    // One thread: capture, stitching and export are a single sequential flow; a multi-thread
    // runtime only added cross-thread wakeups (measured with `cargo xtask bench`).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tracer: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(tracer::agent::run(cli, offsets, features)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn transparent_huge_pages_are_off_for_the_agent() {
        if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
            return; // the user's choice then, not the agent's
        }
        super::no_transparent_huge_pages();
        // SAFETY: reads a flag of this process.
        let disabled = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(disabled, 1);
    }
}
