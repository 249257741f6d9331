//! Kubernetes metadata: in a pod (service-account token and `KUBERNETES_SERVICE_HOST`), or
//! when asked (`--kubernetes on`, with a kubeconfig), the agent watches the API server for the
//! pods of its node and the Services, and every process in one of those pods gets the pod's
//! resource attributes and a `service.name` from the pod (see `naming` for the order);
//! CLIENT spans to a pod or Service IP get `service.peer.name`.
//!
//! The parts: `naming` (owner and service names from a pod), `store` (what is known, shared
//! with the agent loop), `watch` (the API watches), `join` (a process's resource with its
//! pod's), `peer` (CLIENT spans' peer names).

mod join;
mod naming;
mod peer;
mod store;
mod watch;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context;

pub use join::ResourceJoin;
pub use peer::{PEER_NAME_KEY, PeerNames};
pub use store::{KubeStats, Store};

/// The service-account token a pod's containers get.
const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";
/// How long start-up waits for the API server to name this node (without `NODE_NAME`).
const NODE_LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether to watch the Kubernetes API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KubeMode {
    /// When running in a pod (service-account token present, `KUBERNETES_SERVICE_HOST` set).
    Auto,
    /// Always: in a pod, else from the kubeconfig (`KUBECONFIG`, `~/.kube/config`).
    On,
    Off,
}

#[derive(Clone, Debug, clap::Args)]
pub struct KubeArgs {
    /// Kubernetes metadata (pod, namespace, workload, service names from the pod) for
    /// processes in this node's pods, from the API server. `auto`: when running in a pod;
    /// `on`: also outside one, from the kubeconfig; `off`: never.
    #[arg(
        long = "kubernetes",
        value_enum,
        value_name = "MODE",
        default_value = "auto",
        env = "TRACER_KUBERNETES"
    )]
    pub mode: KubeMode,

    /// This node's name, whose pods are watched (the DaemonSet sets `NODE_NAME` from
    /// `spec.nodeName`). Default: the node of the agent's own pod (asked once), else the
    /// host name.
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    pub node_name: Option<String>,
}

/// The counters of the watcher, `(name, value)`, for the agent's counter reports.
pub fn counters(stats: &KubeStats) -> [(&'static str, u64); 5] {
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    [
        ("kube_pods", get(&stats.pods)),
        ("kube_services", get(&stats.services)),
        ("kube_events", get(&stats.events)),
        ("kube_relists", get(&stats.relists)),
        ("kube_watch_errors", get(&stats.watch_errors)),
    ]
}

/// The node of the agent's own pod (`HOSTNAME` in the service account's namespace), asked
/// once; `None` outside a pod or when the API server cannot say (e.g. a host-network pod,
/// whose host name is the node's: the caller then uses it).
async fn own_node(client: &kube::Client) -> Option<String> {
    let namespace = std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE).ok()?;
    let pod_name = std::env::var("HOSTNAME").ok()?;
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(client.clone(), namespace.trim());
    match tokio::time::timeout(NODE_LOOKUP_TIMEOUT, pods.get(&pod_name)).await {
        Ok(Ok(pod)) => pod.spec.and_then(|s| s.node_name),
        Ok(Err(e)) => {
            tracing::info!(
                "the agent's own pod {pod_name} not found ({e}): node name from the host name"
            );
            None
        }
        Err(_) => None,
    }
}

fn in_pod() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|h| !h.is_empty())
        && Path::new(SERVICE_ACCOUNT_TOKEN).exists()
}

/// Starts the watches when `args` and the environment say so (on the current tokio runtime)
/// and returns the store they fill; `None` (after one info line) when Kubernetes is off or
/// the agent is not in a cluster. An API server that cannot be reached is not an error: the
/// watches retry.
pub async fn start(args: &KubeArgs, host_name: Option<&str>) -> anyhow::Result<Option<Arc<Store>>> {
    let config = match args.mode {
        KubeMode::Off => return Ok(None),
        KubeMode::Auto if !in_pod() => {
            tracing::info!(
                "not running in a Kubernetes pod (no service-account token or KUBERNETES_SERVICE_HOST): no Kubernetes metadata"
            );
            return Ok(None);
        }
        KubeMode::Auto => {
            kube::Config::incluster().context("Kubernetes in-cluster configuration")?
        }
        KubeMode::On => kube::Config::infer()
            .await
            .context("--kubernetes on: no in-cluster configuration and no usable kubeconfig")?,
    };
    let api = config.cluster_url.to_string();
    let client = kube::Client::try_from(config).context("Kubernetes API client")?;
    let node = match args.node_name.clone().filter(|n| !n.is_empty()) {
        Some(n) => n,
        None => own_node(&client)
            .await
            .or_else(|| host_name.map(str::to_owned))
            .context(
                "no node name: set NODE_NAME (the downward API's spec.nodeName) or --node-name",
            )?,
    };
    let store = Arc::new(Store::default());
    watch::spawn(client, &node, Arc::clone(&store));
    tracing::info!(
        "Kubernetes metadata: watching the pods of node {node} and the Services at {api}"
    );
    Ok(Some(store))
}
