//! The Helm chart (deploy/helm/tracer) with the real helm binary and the official Kubernetes
//! schemas (kubernetes-validate): it lints, deploy/daemonset.yaml is what it renders, the
//! manifests validate strictly on the oldest and newest Kubernetes the schemas know, and the
//! DaemonSet says what the agent needs and no more.
mod deploy;

use std::process::Command;

use deploy::*;
use serde_json::Value;
use tracer_tests::{TempDir, workspace_root};

#[test]
fn chart_lints() {
    let out = run_helm(&["lint", "--strict", CHART]);
    assert!(out.contains("0 chart(s) failed"), "{out}");
}

#[test]
fn checked_in_daemonset_yaml_is_the_rendered_chart() {
    let checked_in = std::fs::read_to_string(workspace_root().join("deploy/daemonset.yaml"))
        .expect("deploy/daemonset.yaml");
    assert!(
        checked_in == template(&[]),
        "deploy/daemonset.yaml is not `helm template {RELEASE} {CHART} --namespace \
         {NAMESPACE}`: render it again with that command"
    );
}

/// The Kubernetes versions kubernetes-validate has schemas for, oldest first.
fn schema_versions() -> Vec<String> {
    let out = Command::new("python3")
        .args([
            "-c",
            "from kubernetes_validate.utils import all_versions; \
             print('\\n'.join(sorted(set(all_versions()), \
             key=lambda v: tuple(map(int, v.split('.'))))))",
        ])
        .output()
        .expect("python3 with kubernetes-validate (`cargo xtask setup --test-deps`)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn validate(manifests: &str, version: &str) {
    let dir = TempDir::new("chart");
    let file = dir.path().join("manifests.yaml");
    std::fs::write(&file, manifests).unwrap();
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "-k", version])
        .arg(&file)
        .output()
        .expect("kubernetes-validate (`cargo xtask setup --test-deps`)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kubernetes {version}:\n{text}");
    assert!(!text.contains("ERROR"), "kubernetes {version}:\n{text}");
}

#[test]
fn manifests_validate_strictly_on_the_oldest_and_newest_kubernetes() {
    let versions = schema_versions();
    assert!(versions.len() >= 2, "schema versions: {versions:?}");
    let (oldest, newest) = (&versions[0], versions.last().unwrap());
    let defaults = template(&[]);
    // Every optional part on: sampler, privileged, extra env, the ServiceMonitor's Service.
    let everything = template(&[
        "sampler.name=parentbased_traceidratio",
        "sampler.arg=0.25",
        "privileged=true",
        "resourceAttributes=deployment.environment=prod",
        "extraArgs={--inject-traceparent,off}",
        "extraEnv[0].name=RUST_LOG,extraEnv[0].value=debug",
        "metrics.serviceMonitor.enabled=true",
    ]);
    for version in [oldest, newest] {
        validate(&defaults, version);
        validate(&everything, version);
    }
}

fn env_names(container: &Value) -> Vec<String> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect()
}

fn env_value<'a>(container: &'a Value, name: &str) -> &'a str {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| panic!("no {name} in the agent's env"))
}

#[test]
fn node_name_is_defined_before_the_variables_that_use_it() {
    let docs = parse_yaml(&template(&["resourceAttributes=team=shop"]));
    let agent = agent_container(&docs);
    let names = env_names(agent);
    let node = names.iter().position(|n| n == "NODE_NAME").unwrap();
    assert_eq!(
        agent["env"][node]["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    for (i, e) in agent["env"].as_array().unwrap().iter().enumerate() {
        if e["value"]
            .as_str()
            .is_some_and(|v| v.contains("$(NODE_NAME)"))
        {
            assert!(
                i > node,
                "{} uses $(NODE_NAME) before it is defined",
                e["name"]
            );
        }
    }
    assert_eq!(
        env_value(agent, "OTEL_RESOURCE_ATTRIBUTES"),
        "team=shop,k8s.node.name=$(NODE_NAME)"
    );
}

#[test]
fn values_map_to_the_opentelemetry_variables() {
    let docs = parse_yaml(&template(&[
        "otlp.endpoint=http://collector:4318",
        "otlp.protocol=http/protobuf",
        "sampler.name=parentbased_traceidratio",
        "sampler.arg=0.1",
        "metrics.exporter=prometheus\\,otlp",
    ]));
    let agent = agent_container(&docs);
    for (name, value) in [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
        ("OTEL_METRICS_EXPORTER", "prometheus,otlp"),
        // Prometheus scrapes the pod's IP; the node-local view stays on its loopback.
        ("OTEL_EXPORTER_PROMETHEUS_HOST", "0.0.0.0"),
        ("OTEL_EXPORTER_PROMETHEUS_PORT", "9464"),
        ("TRACER_UI_LISTEN", "127.0.0.1:9400"),
    ] {
        assert_eq!(env_value(agent, name), value, "{name}");
    }
    assert_eq!(agent["ports"][0]["containerPort"], 9464);
    let pod = &of_kind(&docs, "DaemonSet")["spec"]["template"];
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "9464");
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    // No sampler values: the agent's own default, no variable.
    let defaults = parse_yaml(&template(&[]));
    assert!(!env_names(agent_container(&defaults)).contains(&"OTEL_TRACES_SAMPLER".into()));
}

#[test]
fn daemonset_runs_everywhere_with_least_privilege_by_default() {
    let docs = parse_yaml(&template(&[]));
    let pod = &of_kind(&docs, "DaemonSet")["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    // The node's network: conntrack lookups link calls through Service IPs there.
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    let own_network = parse_yaml(&template(&["hostNetwork=false"]));
    let pod = &of_kind(&own_network, "DaemonSet")["spec"]["template"]["spec"];
    assert!(pod["hostNetwork"].is_null() && pod["dnsPolicy"].is_null());
    assert_eq!(
        pod["tolerations"],
        serde_json::json!([{"operator": "Exists"}])
    );
    let agent = agent_container(&docs);
    let sc = &agent["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(
        capabilities(agent),
        ["SYS_ADMIN", "NET_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH"]
    );
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    for (_, _, read_only) in host_mounts(&docs) {
        assert!(read_only, "every host path is mounted read-only");
    }
    assert!(agent["resources"]["limits"]["memory"].is_string());
    assert!(
        agent["resources"]["limits"]["cpu"].is_null(),
        "no CPU limit: a throttled agent drops events"
    );
    // privileged=true: no capability list beside it.
    let privileged = parse_yaml(&template(&["privileged=true"]));
    let sc = &agent_container(&privileged)["securityContext"];
    assert_eq!(sc["privileged"], true);
    assert!(sc["capabilities"].is_null());
}

#[test]
fn rbac_grants_only_what_the_metadata_watcher_reads() {
    let docs = parse_yaml(&template(&[]));
    let role = of_kind(&docs, "ClusterRole");
    assert_eq!(
        role["rules"],
        serde_json::json!([{
            "apiGroups": [""],
            "resources": ["pods", "services"],
            "verbs": ["list", "watch"],
        }])
    );
    let binding = of_kind(&docs, "ClusterRoleBinding");
    let account = of_kind(&docs, "ServiceAccount");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["name"], account["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["namespace"], NAMESPACE);
    let pod = &of_kind(&docs, "DaemonSet")["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], account["metadata"]["name"]);
}
