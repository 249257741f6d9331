//! The kernel programs' diagnostics (aya-log): why a client socket or a request gets no
//! `traceparent`. Off unless the log filter shows target
//! [`tracer_common::config::KERNEL_LOG_TARGET`] at debug level (`--log info,tracer::kernel=debug`).
//! The level is fixed when the programs load: when off, the verifier drops the logging code
//! and the log ring shrinks to one page.
use anyhow::{Context, Result};
use aya::Ebpf;
use tokio::io::{Interest, unix::AsyncFd};
use tracer_common::config::KERNEL_LOG_TARGET;

/// The log ring of the programs (aya-log's map) and its size when nothing is logged.
pub const MAP: &str = "AYA_LOGS";
const OFF_RING_BYTES: u32 = 4096;
const ON_RING_BYTES: u32 = 128 << 10;

/// `AYA_LOG_LEVEL` for the programs: debug when the log filter shows kernel diagnostics, else
/// 0 (off).
pub fn level() -> u8 {
    if tracing::enabled!(target: KERNEL_LOG_TARGET, tracing::Level::DEBUG) {
        aya_log::Level::Debug as u8
    } else {
        0
    }
}

/// Size of the log ring for `level`.
pub fn ring_bytes(level: u8) -> u32 {
    if level == 0 {
        OFF_RING_BYTES
    } else {
        ON_RING_BYTES
    }
}

/// Forwards the programs' records to the agent's log, on the async runtime.
pub fn spawn_reader(ebpf: &mut Ebpf) -> Result<()> {
    let runtime = tokio::runtime::Handle::try_current()
        .context("kernel diagnostics need the async runtime")?;
    let _entered = runtime.enter();
    let logger = aya_log::EbpfLogger::init(ebpf).context("reading the kernel diagnostics")?;
    // SAFETY: the logger's fd is its ring's, owned by the logger, which moves into the
    // registration: the fd stays open and the same as long as the registration lives.
    let mut logger = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }?;
    runtime.spawn(async move {
        while let Ok(mut guard) = logger.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
    Ok(())
}
