//! Attaching a file's uprobes, and detaching them in parallel.
//!
//! Why detaching is slow: closing a uprobe's perf event waits for RCU grace periods in the
//! kernel (`perf_uprobe_destroy` → `perf_trace_event_unreg` → `tracepoint_synchronize_unregister`
//! under the global `event_mutex`, then the uprobe's own SRCU sync outside it): ~250 ms per
//! probe measured on this 2-core VM, 1.2–3 s per file one after the other. Closed from many
//! threads at once, the waits outside the mutex overlap: 65 probes of 7 files took 16.7 s one
//! by one and 6.2 s in parallel. Only `uprobe_multi` links (one per file, Linux 6.6+, not in
//! aya 0.14) would remove the per-probe wait.
use std::{path::Path, sync::mpsc, thread::JoinHandle};

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf,
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeLink, UProbeScope},
    },
};

use super::elf::{OPENSSL_FUNCTIONS, TlsTarget};

/// The probes of one file; dropping a link detaches it.
pub type Links = Vec<UProbeLink>;

/// Attaches every probe of `target` in the file at `path`. Nothing stays attached on error.
pub fn attach(ebpf: &mut Ebpf, path: &Path, target: &TlsTarget) -> Result<Links> {
    let mut links = Links::new();
    let mut attach = |prog: &'static str, offset: u64| -> Result<()> {
        let p: &mut UProbe = ebpf
            .program_mut(prog)
            .ok_or_else(|| anyhow!("program {prog} missing"))?
            .try_into()?;
        let id = p
            .attach(
                UProbeAttachLocation::AbsoluteOffset(offset),
                path,
                UProbeScope::AllProcesses,
            )
            .with_context(|| format!("attaching {prog} at {offset:#x}"))?;
        // Owned here, so that it can be dropped on another thread.
        links.push(p.take_link(id)?);
        Ok(())
    };
    let result = match target {
        TlsTarget::OpenSsl(found) => found.iter().try_for_each(|(name, off)| {
            let entry = OPENSSL_FUNCTIONS
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, p)| *p)
                .ok_or_else(|| anyhow!("no program for {name}"))?;
            attach(entry, *off)?;
            if *name != "SSL_free" {
                attach("ssl_ret", *off)?;
            }
            Ok(())
        }),
        TlsTarget::Go {
            read,
            read_rets,
            write,
            ..
        } => (|| {
            attach("go_tls_read_entry", *read)?;
            for r in read_rets {
                attach("go_tls_read_ret", *r)?;
            }
            attach("go_tls_write_entry", *write)
        })(),
    };
    match result {
        Ok(()) => Ok(links),
        Err(e) => {
            detach_in_parallel(links);
            Err(e)
        }
    }
}

/// Detaches `links` from many threads at once; returns when all are.
pub fn detach_in_parallel(links: Links) {
    crate::capture::drop_in_parallel(links);
}

/// A thread detaching the probes handed to it, so that the event loop never waits for it.
pub struct Detacher {
    batches: Option<mpsc::Sender<Links>>,
    thread: Option<JoinHandle<()>>,
}

impl Detacher {
    pub fn start() -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Links>();
        let thread = std::thread::Builder::new()
            .name("tls-detach".into())
            .spawn(move || {
                for links in rx {
                    detach_in_parallel(links);
                }
            })
            .context("starting the TLS detach thread")?;
        Ok(Self {
            batches: Some(tx),
            thread: Some(thread),
        })
    }

    /// Detaches `links` soon (or now, on this thread, if the detach thread is gone).
    pub fn detach(&self, links: Links) {
        if let Some(Err(mpsc::SendError(links))) = self.batches.as_ref().map(|tx| tx.send(links)) {
            detach_in_parallel(links);
        }
    }

    /// Waits until every probe handed over is detached.
    pub fn finish(mut self) {
        self.batches = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
