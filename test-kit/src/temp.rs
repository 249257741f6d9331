//! Scratch directories removed when dropped.
use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};

/// A scratch directory under the system's temporary directory, removed (with its contents)
/// when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `tracer-<tag>-…`; panics when it cannot (for tests).
    pub fn new(tag: &str) -> Self {
        Self::create(tag).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Creates `tracer-<tag>-…`, unique to this process and call.
    pub fn create(tag: &str) -> Result<Self> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        // The time tells this run's directories from those a crashed run with the same pid left.
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "tracer-{tag}-{}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
