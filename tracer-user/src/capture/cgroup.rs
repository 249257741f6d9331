//! `--cgroup` targets: cgroup v2 directories to their ids (the kernel's
//! `bpf_get_current_cgroup_id()` is the inode number of the task's cgroup v2 directory).
use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

/// Where cgroup v2 is mounted (`/sys/fs/cgroup` on most nodes, `/sys/fs/cgroup/unified` on
/// hybrid layouts), from /proc/self/mounts.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir))
    })
}

/// The ids of `path` (absolute, or relative to the cgroup v2 mount) and of every cgroup below
/// it now: processes of a pod or service usually sit in child cgroups. Cgroups created later
/// below it are not included.
pub fn cgroup_ids(path: &Path) -> Result<Vec<u64>> {
    let mount = cgroup2_mount().context("cgroup v2 is not mounted: --cgroup needs it")?;
    let dir = if path.is_absolute() {
        path.to_path_buf()
    } else {
        mount.join(path)
    };
    if !dir.starts_with(&mount) {
        bail!(
            "{} is not inside the cgroup v2 mount {}",
            dir.display(),
            mount.display()
        );
    }
    let mut ids = Vec::new();
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        let meta = fs::metadata(&d).with_context(|| format!("cgroup {}", d.display()))?;
        if !meta.is_dir() {
            bail!("{} is not a cgroup directory", d.display());
        }
        ids.push(meta.ino());
        if ids.len() > 4096 {
            bail!("{} has more than 4096 cgroups below it", dir.display());
        }
        for entry in fs::read_dir(&d)?.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_cgroup_resolves_and_a_missing_one_is_a_clear_error() {
        let mount = cgroup2_mount().expect("cgroup v2 mounted on this machine");
        let ids = cgroup_ids(&mount).unwrap();
        assert!(!ids.is_empty());
        let err = cgroup_ids(Path::new("no-such-cgroup-here")).unwrap_err();
        assert!(
            format!("{err:#}").contains("no-such-cgroup-here"),
            "{err:#}"
        );
        assert!(cgroup_ids(Path::new("/tmp")).is_err());
    }
}
