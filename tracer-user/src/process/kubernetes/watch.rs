//! The watches: this node's pods (field selector `spec.nodeName=<node>`) and the cluster's
//! Services, with kube's watcher (list, then watch from the list's resourceVersion; a 410
//! Gone or a watch that cannot resume re-lists) and its default exponential backoff. While the
//! API server is unreachable the store keeps what it knew; one warning says so per outage.
use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::serde::de::DeserializeOwned;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};

use super::store::{PodMeta, ServiceMeta, Store};

/// What a watch event does to the store.
enum Change<K> {
    Applied(K),
    Deleted(K),
    /// A complete list (initial, or after a re-list).
    Listed(Vec<K>),
}

/// Watches the pods of `node` and every Service into `store`, until the runtime stops.
pub fn spawn(client: Client, node: &str, store: Arc<Store>) {
    let pods: Api<Pod> = Api::all(client.clone());
    let pod_config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let pod_store = Arc::clone(&store);
    tokio::spawn(watch(
        pods,
        pod_config,
        "pods",
        Arc::clone(&store),
        move |c| match c {
            Change::Applied(p) => {
                if let Some(p) = PodMeta::from_pod(&p) {
                    pod_store.apply_pod(p);
                }
            }
            Change::Deleted(p) => {
                if let Some(uid) = p.metadata.uid.as_deref() {
                    pod_store.delete_pod(uid);
                }
            }
            Change::Listed(all) => {
                pod_store.replace_pods(all.iter().filter_map(PodMeta::from_pod).collect());
            }
        },
    ));
    let services: Api<Service> = Api::all(client);
    let svc_store = Arc::clone(&store);
    tokio::spawn(watch(
        services,
        watcher::Config::default(),
        "services",
        store,
        move |c| match c {
            Change::Applied(s) => {
                if let Some(s) = ServiceMeta::from_service(&s) {
                    svc_store.apply_service(s);
                }
            }
            Change::Deleted(s) => {
                if let (Some(ns), Some(name)) = (&s.metadata.namespace, &s.metadata.name) {
                    svc_store.delete_service(ns, name);
                }
            }
            Change::Listed(all) => svc_store
                .replace_services(all.iter().filter_map(ServiceMeta::from_service).collect()),
        },
    ));
}

async fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
    store: Arc<Store>,
    mut apply: impl FnMut(Change<K>) + Send + 'static,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut listing: Option<Vec<K>> = None;
    let mut lists = 0u64;
    let mut failing = false;
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(e) => e,
            // The history the watch resumed from is compacted (routine on a real cluster):
            // the watcher re-lists, counted in `relists`.
            Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                tracing::debug!("Kubernetes {what} watch expired (410 Gone): re-listing");
                continue;
            }
            Err(e) => {
                store.stats.watch_errors.fetch_add(1, Ordering::Relaxed);
                if failing {
                    tracing::debug!("Kubernetes {what} watch still failing: {e}");
                } else {
                    failing = true;
                    tracing::warn!(
                        "Kubernetes {what} watch failed, retrying with backoff (spans keep the metadata known so far): {e}"
                    );
                }
                continue;
            }
        };
        // `Init` comes before the list request: only what follows shows the server answered.
        if failing && !matches!(event, watcher::Event::Init) {
            failing = false;
            tracing::info!("Kubernetes {what} watch resumed");
        }
        match event {
            watcher::Event::Init => listing = Some(Vec::new()),
            watcher::Event::InitApply(obj) => listing.get_or_insert_default().push(obj),
            // The store is replaced only once the list is complete: until then spans keep
            // the metadata known before.
            watcher::Event::InitDone => {
                let all = listing.take().unwrap_or_default();
                lists += 1;
                if lists == 1 {
                    tracing::info!("Kubernetes {what}: {} listed", all.len());
                } else {
                    store.stats.relists.fetch_add(1, Ordering::Relaxed);
                }
                store
                    .stats
                    .events
                    .fetch_add(all.len() as u64, Ordering::Relaxed);
                apply(Change::Listed(all));
            }
            watcher::Event::Apply(obj) => {
                store.stats.events.fetch_add(1, Ordering::Relaxed);
                apply(Change::Applied(obj));
            }
            watcher::Event::Delete(obj) => {
                store.stats.events.fetch_add(1, Ordering::Relaxed);
                apply(Change::Deleted(obj));
            }
        }
    }
}
