//! What the watcher knows: the pods of this node (by uid, container id and pod IP) and the
//! cluster's Services (by cluster IP), kept compact, shared between the watcher task (writes)
//! and the agent loop (reads). A generation number tells readers something changed.
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::{Pod, Service};

use super::naming::{Owner, ServiceNames, annotation_attributes, service_names};

/// A container of a pod: its runtime id (the 64-hex of `containerd://<id>`) and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerMeta {
    pub id: String,
    pub name: String,
}

/// What the agent keeps of a Pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodMeta {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub node: Option<String>,
    /// Empty for host-network pods: their address is the node's, not theirs.
    pub ips: Vec<IpAddr>,
    pub labels: BTreeMap<String, String>,
    pub owner: Owner,
    pub service: ServiceNames,
    /// The other `resource.opentelemetry.io/*` annotations.
    pub annotation_attributes: Vec<(String, String)>,
    pub containers: Vec<ContainerMeta>,
}

impl PodMeta {
    /// `None` for an object without uid, name or namespace (not a stored Pod).
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let meta = &pod.metadata;
        let uid = meta.uid.clone().filter(|s| !s.is_empty())?;
        let name = meta.name.clone().filter(|s| !s.is_empty())?;
        let namespace = meta.namespace.clone().filter(|s| !s.is_empty())?;
        let labels = meta.labels.clone().unwrap_or_default();
        let annotations = meta.annotations.clone().unwrap_or_default();
        let owner = meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| Owner::from_reference(&o.kind, &o.name, &labels))
            .unwrap_or_default();
        let spec = pod.spec.as_ref();
        let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
        let status = pod.status.as_ref();
        let mut ips: Vec<IpAddr> = Vec::new();
        if !host_network && let Some(status) = status {
            let listed = status.pod_ips.iter().flatten().map(|p| p.ip.as_str());
            for ip in listed.chain(status.pod_ip.as_deref()) {
                if let Ok(ip) = ip.parse()
                    && !ips.contains(&ip)
                {
                    ips.push(ip);
                }
            }
        }
        let containers = status
            .map(|s| {
                [
                    &s.container_statuses,
                    &s.init_container_statuses,
                    &s.ephemeral_container_statuses,
                ]
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|c| {
                    Some(ContainerMeta {
                        id: runtime_container_id(c.container_id.as_deref()?)?.to_owned(),
                        name: c.name.clone(),
                    })
                })
                .collect()
            })
            .unwrap_or_default();
        Some(Self {
            service: service_names(&name, &namespace, &labels, &annotations, &owner),
            annotation_attributes: annotation_attributes(&annotations),
            node: spec.and_then(|s| s.node_name.clone()),
            uid,
            namespace,
            name,
            ips,
            labels,
            owner,
            containers,
        })
    }

    pub fn container_name(&self, id: &str) -> Option<&str> {
        self.containers
            .iter()
            .find(|c| c.id == id)
            .map(|c| c.name.as_str())
    }
}

/// `containerd://<id>`, `cri-o://<id>`, `docker://<id>` → `<id>`.
fn runtime_container_id(s: &str) -> Option<&str> {
    let id = s.split_once("://").map_or(s, |(_, id)| id);
    (!id.is_empty()).then_some(id)
}

/// What the agent keeps of a Service: where it sends traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceMeta {
    pub namespace: String,
    pub name: String,
    pub cluster_ips: Vec<IpAddr>,
    pub selector: BTreeMap<String, String>,
}

impl ServiceMeta {
    pub fn from_service(svc: &Service) -> Option<Self> {
        let name = svc.metadata.name.clone()?;
        let namespace = svc.metadata.namespace.clone()?;
        let spec = svc.spec.as_ref();
        let mut cluster_ips: Vec<IpAddr> = Vec::new();
        if let Some(spec) = spec {
            // Headless Services say `None`: no virtual IP.
            let listed = spec.cluster_ips.iter().flatten().map(String::as_str);
            for ip in listed.chain(spec.cluster_ip.as_deref()) {
                if let Ok(ip) = ip.parse()
                    && !cluster_ips.contains(&ip)
                {
                    cluster_ips.push(ip);
                }
            }
        }
        Some(Self {
            namespace,
            name,
            cluster_ips,
            selector: spec.and_then(|s| s.selector.clone()).unwrap_or_default(),
        })
    }
}

/// Counters of the Kubernetes watcher (see the README's counters).
#[derive(Debug, Default)]
pub struct KubeStats {
    /// Pods of this node known now.
    pub pods: AtomicU64,
    /// Services known now.
    pub services: AtomicU64,
    /// Watch events applied (list items included).
    pub events: AtomicU64,
    /// Full re-lists after the first list (410 Gone, or a watch that could not resume).
    pub relists: AtomicU64,
    /// Failed list/watch requests (API server down, slow, dropped connections).
    pub watch_errors: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    pods: HashMap<String, Arc<PodMeta>>,
    pods_by_container: HashMap<String, Arc<PodMeta>>,
    pods_by_ip: HashMap<IpAddr, Arc<PodMeta>>,
    services: HashMap<(String, String), Arc<ServiceMeta>>,
    services_by_ip: HashMap<IpAddr, Arc<ServiceMeta>>,
}

impl Inner {
    fn index_pods(&mut self) {
        self.pods_by_container.clear();
        self.pods_by_ip.clear();
        for pod in self.pods.values() {
            for c in &pod.containers {
                self.pods_by_container.insert(c.id.clone(), Arc::clone(pod));
            }
            for ip in &pod.ips {
                self.pods_by_ip.insert(*ip, Arc::clone(pod));
            }
        }
    }

    fn index_services(&mut self) {
        self.services_by_ip.clear();
        for svc in self.services.values() {
            for ip in &svc.cluster_ips {
                self.services_by_ip.insert(*ip, Arc::clone(svc));
            }
        }
    }
}

/// Pod and Service metadata shared by the watcher and the agent loop.
#[derive(Debug, Default)]
pub struct Store {
    inner: RwLock<Inner>,
    generation: AtomicU64,
    pub stats: KubeStats,
}

impl Store {
    /// Bumped on every change: readers compare it to what they saw last.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn change(&self, f: impl FnOnce(&mut Inner)) {
        // A poisoned lock only means a panic elsewhere mid-update: the maps are still usable.
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        f(&mut inner);
        self.stats
            .pods
            .store(inner.pods.len() as u64, Ordering::Relaxed);
        self.stats
            .services
            .store(inner.services.len() as u64, Ordering::Relaxed);
        drop(inner);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn apply_pod(&self, pod: PodMeta) {
        self.change(|i| {
            i.pods.insert(pod.uid.clone(), Arc::new(pod));
            i.index_pods();
        });
    }

    pub fn delete_pod(&self, uid: &str) {
        self.change(|i| {
            i.pods.remove(uid);
            i.index_pods();
        });
    }

    /// A full list: what is not in it is gone.
    pub fn replace_pods(&self, pods: Vec<PodMeta>) {
        self.change(|i| {
            i.pods = pods
                .into_iter()
                .map(|p| (p.uid.clone(), Arc::new(p)))
                .collect();
            i.index_pods();
        });
    }

    pub fn apply_service(&self, svc: ServiceMeta) {
        self.change(|i| {
            i.services
                .insert((svc.namespace.clone(), svc.name.clone()), Arc::new(svc));
            i.index_services();
        });
    }

    pub fn delete_service(&self, namespace: &str, name: &str) {
        self.change(|i| {
            i.services.remove(&(namespace.to_owned(), name.to_owned()));
            i.index_services();
        });
    }

    pub fn replace_services(&self, services: Vec<ServiceMeta>) {
        self.change(|i| {
            i.services = services
                .into_iter()
                .map(|s| ((s.namespace.clone(), s.name.clone()), Arc::new(s)))
                .collect();
            i.index_services();
        });
    }

    /// The pod of a process: by its container id, else by its pod uid.
    pub fn pod_of(
        &self,
        container_id: Option<&str>,
        pod_uid: Option<&str>,
    ) -> Option<Arc<PodMeta>> {
        let inner = self.read();
        container_id
            .and_then(|id| inner.pods_by_container.get(id))
            .or_else(|| pod_uid.and_then(|uid| inner.pods.get(uid)))
            .cloned()
    }

    /// The service name of what answers at `ip`: a pod of this node (its pod-level
    /// `service.name`), or a Service's cluster IP (the service name of a pod of this node it
    /// selects, else the Service's own name).
    pub fn peer_name(&self, ip: IpAddr) -> Option<String> {
        let inner = self.read();
        if let Some(pod) = inner.pods_by_ip.get(&ip) {
            return Some(pod.service.name.clone());
        }
        let svc = inner.services_by_ip.get(&ip)?;
        let selected = (!svc.selector.is_empty())
            .then(|| {
                inner.pods.values().find(|p| {
                    p.namespace == svc.namespace
                        && svc.selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
                })
            })
            .flatten();
        Some(selected.map_or_else(|| svc.name.clone(), |p| p.service.name.clone()))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A Pod as the API server returns it (the fields the agent reads).
    pub fn pod_json(
        name: &str,
        uid: &str,
        container_id: &str,
        ip: &str,
    ) -> k8s_openapi::serde_json::Value {
        k8s_openapi::serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": "shop",
                "uid": uid,
                "labels": {"pod-template-hash": "6d5f7c9b8", "app.kubernetes.io/version": "1.4"},
                "annotations": {"resource.opentelemetry.io/team": "payments"},
                "ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "checkout-6d5f7c9b8",
                    "uid": "11111111-2222-3333-4444-555555555555", "controller": true
                }]
            },
            "spec": {"nodeName": "node-1", "containers": [{"name": "app", "image": "x"}]},
            "status": {
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "containerStatuses": [{
                    "name": "app", "containerID": format!("containerd://{container_id}"),
                    "image": "x", "imageID": "", "ready": true, "restartCount": 0
                }]
            }
        })
    }

    pub fn pod(name: &str, uid: &str, container_id: &str, ip: &str) -> PodMeta {
        let pod: Pod =
            k8s_openapi::serde_json::from_value(pod_json(name, uid, container_id, ip)).unwrap();
        PodMeta::from_pod(&pod).unwrap()
    }

    #[test]
    fn pod_meta_from_an_api_object() {
        let p = pod(
            "checkout-6d5f7c9b8-abcde",
            "u1",
            &"a".repeat(64),
            "10.1.0.5",
        );
        assert_eq!(p.namespace, "shop");
        assert_eq!(p.node.as_deref(), Some("node-1"));
        assert_eq!(p.owner.deployment.as_deref(), Some("checkout"));
        assert_eq!(p.service.name, "checkout");
        assert_eq!(p.service.version.as_deref(), Some("1.4"));
        assert_eq!(p.ips, vec!["10.1.0.5".parse::<IpAddr>().unwrap()]);
        assert_eq!(p.container_name(&"a".repeat(64)), Some("app"));
        assert_eq!(
            p.annotation_attributes,
            vec![("team".to_owned(), "payments".to_owned())]
        );
        // Host-network pods have the node's address: not indexed by IP.
        let mut v = pod_json("h", "u2", "b", "10.0.0.1");
        v["spec"]["hostNetwork"] = true.into();
        let p = PodMeta::from_pod(&k8s_openapi::serde_json::from_value(v).unwrap()).unwrap();
        assert!(p.ips.is_empty());
        // Not a stored object.
        let mut v = pod_json("h", "u2", "b", "10.0.0.1");
        v["metadata"]["uid"] = k8s_openapi::serde_json::Value::Null;
        assert!(PodMeta::from_pod(&k8s_openapi::serde_json::from_value(v).unwrap()).is_none());
    }

    #[test]
    fn container_ids_of_each_runtime() {
        for (raw, id) in [
            ("containerd://abc123", Some("abc123")),
            ("cri-o://def456", Some("def456")),
            ("docker://0123", Some("0123")),
            ("0123", Some("0123")),
            ("containerd://", None),
        ] {
            assert_eq!(runtime_container_id(raw), id, "{raw}");
        }
    }

    #[test]
    fn lookups_and_replacement() {
        let store = Store::default();
        let g0 = store.generation();
        store.apply_pod(pod("a-1", "u1", "c1", "10.1.0.5"));
        assert!(store.generation() > g0);
        assert_eq!(store.pod_of(Some("c1"), None).unwrap().name, "a-1");
        assert_eq!(store.pod_of(Some("nope"), Some("u1")).unwrap().name, "a-1");
        assert!(store.pod_of(Some("nope"), Some("nope")).is_none());
        assert_eq!(
            store.peer_name("10.1.0.5".parse().unwrap()).as_deref(),
            Some("checkout")
        );
        // A Service selecting it, one selecting nothing here, a headless one.
        let svc = |name: &str, ip: &str, selector: &[(&str, &str)]| {
            let v = k8s_openapi::serde_json::json!({
                "metadata": {"name": name, "namespace": "shop"},
                "spec": {"clusterIP": ip, "clusterIPs": [ip],
                         "selector": selector.iter().map(|(k, v)| ((*k).to_owned(), k8s_openapi::serde_json::Value::from(*v))).collect::<k8s_openapi::serde_json::Map<_, _>>()}
            });
            ServiceMeta::from_service(&k8s_openapi::serde_json::from_value(v).unwrap()).unwrap()
        };
        store.replace_services(vec![
            svc(
                "checkout-svc",
                "10.96.0.10",
                &[("pod-template-hash", "6d5f7c9b8")],
            ),
            svc("elsewhere", "10.96.0.11", &[("app", "x")]),
            svc("headless", "None", &[]),
        ]);
        assert_eq!(store.stats.services.load(Ordering::Relaxed), 3);
        assert_eq!(
            store.peer_name("10.96.0.10".parse().unwrap()).as_deref(),
            Some("checkout")
        );
        assert_eq!(
            store.peer_name("10.96.0.11".parse().unwrap()).as_deref(),
            Some("elsewhere")
        );
        assert_eq!(store.peer_name("10.9.9.9".parse().unwrap()), None);
        store.delete_service("shop", "elsewhere");
        assert_eq!(store.peer_name("10.96.0.11".parse().unwrap()), None);
        // A re-list drops what it does not name.
        store.replace_pods(vec![pod("b-1", "u2", "c2", "10.1.0.6")]);
        assert!(store.pod_of(Some("c1"), Some("u1")).is_none());
        assert_eq!(store.stats.pods.load(Ordering::Relaxed), 1);
        store.delete_pod("u2");
        assert!(store.pod_of(Some("c2"), None).is_none());
        assert_eq!(store.peer_name("10.1.0.6".parse().unwrap()), None);
    }
}
