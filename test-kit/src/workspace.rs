//! Where the workspace and the agent binary are.
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// The workspace's root directory (this crate is one of its members).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("test-kit lives in the workspace")
        .to_path_buf()
}

/// The agent binary built by `cargo xtask test` (TRACER_BIN), else the workspace's debug build.
pub fn tracer_bin() -> Result<PathBuf> {
    let path = std::env::var_os("TRACER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/debug/tracer"));
    if !path.exists() {
        bail!(
            "agent binary {} not found: run the tests with `cargo xtask test` (it builds it)",
            path.display()
        );
    }
    Ok(path)
}
