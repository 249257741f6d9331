//! A process's resource joined with its pod's metadata. The process table keeps the resource
//! procfs gave and the container id / pod UID its cgroup named; this keeps, per process in a
//! container, the joined one, and joins again when the store changed, so a process seen
//! before its pod event gets the metadata on its later spans (spans already sent keep theirs).
use std::collections::HashMap;
use std::sync::Arc;

use super::store::{PodMeta, Store};
use crate::process::container::ContainerInfo;
use crate::span::{AttrValue, Resource};

#[derive(Debug)]
struct Joined {
    base: Arc<Resource>,
    container: ContainerInfo,
    /// `service.name` came from the process's own environment: it stays.
    service_from_env: bool,
    pod: Option<Arc<PodMeta>>,
    joined: Arc<Resource>,
}

/// The joined resources of the processes the table caches.
#[derive(Debug)]
pub struct ResourceJoin {
    store: Arc<Store>,
    seen_generation: u64,
    procs: HashMap<u32, Joined>,
}

impl ResourceJoin {
    pub fn new(store: Arc<Store>) -> Self {
        Self {
            seen_generation: store.generation(),
            store,
            procs: HashMap::new(),
        }
    }

    /// A resource just built from procfs: joined with its pod when the process is in a
    /// container or pod (else returned as is, and not tracked).
    pub fn on_built(
        &mut self,
        base: Arc<Resource>,
        service_from_env: bool,
        container: &ContainerInfo,
    ) -> Arc<Resource> {
        if container.is_empty() {
            return base;
        }
        let pod = pod_of(&self.store, container);
        let joined = joined(&base, service_from_env, pod.as_deref(), container);
        self.procs.insert(
            base.pid,
            Joined {
                base,
                container: container.clone(),
                service_from_env,
                pod,
                joined: Arc::clone(&joined),
            },
        );
        joined
    }

    /// The resource to use now for a cached process.
    pub fn current(&mut self, pid: u32, cached: &Arc<Resource>) -> Arc<Resource> {
        if self.procs.is_empty() {
            return Arc::clone(cached);
        }
        let generation = self.store.generation();
        if generation != self.seen_generation {
            self.seen_generation = generation;
            self.rejoin_all();
        }
        match self.procs.get(&pid) {
            Some(j) if Arc::ptr_eq(&j.base, cached) => Arc::clone(&j.joined),
            _ => Arc::clone(cached),
        }
    }

    pub fn forget(&mut self, pid: u32) {
        self.procs.remove(&pid);
    }

    fn rejoin_all(&mut self) {
        for j in self.procs.values_mut() {
            let pod = pod_of(&self.store, &j.container);
            if pod == j.pod {
                continue;
            }
            j.joined = joined(&j.base, j.service_from_env, pod.as_deref(), &j.container);
            j.pod = pod;
        }
    }
}

fn pod_of(store: &Store, container: &ContainerInfo) -> Option<Arc<PodMeta>> {
    store.pod_of(container.id.as_deref(), container.pod_uid.as_deref())
}

fn joined(
    base: &Arc<Resource>,
    service_from_env: bool,
    pod: Option<&PodMeta>,
    container: &ContainerInfo,
) -> Arc<Resource> {
    match pod {
        Some(p) => Arc::new(join(base, service_from_env, p, container.id.as_deref())),
        None => Arc::clone(base),
    }
}

/// The process's resource with its pod's attributes. What the process's environment (and the
/// agent's own `OTEL_RESOURCE_ATTRIBUTES`) set stays; `service.name` becomes the pod's unless
/// the environment named it.
pub fn join(
    base: &Resource,
    service_from_env: bool,
    pod: &PodMeta,
    container_id: Option<&str>,
) -> Resource {
    let mut attrs = base.attributes.clone();
    if !service_from_env {
        for (k, v) in &mut attrs {
            if k == "service.name" {
                *v = AttrValue::from(pod.service.name.clone());
            }
        }
    }
    let container_name = container_id.and_then(|id| pod.container_name(id));
    let mut add = |key: &str, value: &str| {
        if !attrs.iter().any(|(k, _)| k == key) {
            attrs.push((key.to_owned(), value.into()));
        }
    };
    add("service.namespace", &pod.service.namespace);
    if let Some(v) = &pod.service.version {
        add("service.version", v);
    }
    add("k8s.namespace.name", &pod.namespace);
    add("k8s.pod.name", &pod.name);
    add("k8s.pod.uid", &pod.uid);
    if let Some(id) = container_id {
        add("container.id", id);
    }
    if let Some(c) = container_name {
        add("k8s.container.name", c);
        // The conventions' instance id for a pod's container.
        add(
            "service.instance.id",
            &format!("{}.{}.{c}", pod.namespace, pod.name),
        );
    }
    if let Some(node) = &pod.node {
        add("k8s.node.name", node);
    }
    for (k, v) in pod.owner.attributes() {
        add(k, v);
    }
    for (k, v) in &pod.annotation_attributes {
        add(k, v);
    }
    Resource {
        pid: base.pid,
        attributes: attrs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::kubernetes::store::tests::pod;

    fn base(pid: u32, container: Option<&str>, service: &str) -> Arc<Resource> {
        let mut attributes: Vec<(String, AttrValue)> = vec![
            ("service.name".into(), service.into()),
            ("process.pid".into(), i64::from(pid).into()),
            ("host.name".into(), "node-1".into()),
        ];
        if let Some(c) = container {
            attributes.push(("container.id".into(), c.into()));
        }
        Arc::new(Resource { pid, attributes })
    }

    fn in_container(id: &str) -> ContainerInfo {
        ContainerInfo {
            id: Some(id.into()),
            pod_uid: None,
        }
    }

    fn get<'a>(r: &'a Resource, key: &str) -> Option<&'a str> {
        r.attributes.iter().find_map(|(k, v)| match v {
            AttrValue::Str(s) if k == key => Some(&**s),
            _ => None,
        })
    }

    #[test]
    fn joined_attributes() {
        let p = pod("checkout-6d5f7c9b8-x", "u1", "c1", "10.1.0.5");
        let r = join(&base(7, Some("c1"), "python3"), false, &p, Some("c1"));
        for (k, v) in [
            ("service.name", "checkout"),
            ("service.namespace", "shop"),
            ("service.version", "1.4"),
            ("k8s.namespace.name", "shop"),
            ("k8s.pod.name", "checkout-6d5f7c9b8-x"),
            ("k8s.pod.uid", "u1"),
            ("k8s.container.name", "app"),
            ("k8s.node.name", "node-1"),
            ("k8s.replicaset.name", "checkout-6d5f7c9b8"),
            ("k8s.deployment.name", "checkout"),
            ("container.id", "c1"),
            ("service.instance.id", "shop.checkout-6d5f7c9b8-x.app"),
            ("team", "payments"),
            ("host.name", "node-1"),
        ] {
            assert_eq!(get(&r, k), Some(v), "{k}");
        }
        // The environment's service.name stays.
        let r = join(&base(7, Some("c1"), "from-env"), true, &p, Some("c1"));
        assert_eq!(r.service_name(), "from-env");
        // No key twice.
        let mut keys: Vec<&str> = r.attributes.iter().map(|(k, _)| k.as_str()).collect();
        let n = keys.len();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(n, keys.len());
    }

    #[test]
    fn a_process_seen_before_its_pod_gets_it_later() {
        let store = Arc::new(Store::default());
        let mut j = ResourceJoin::new(Arc::clone(&store));
        let b = base(7, Some("c1"), "python3");
        let first = j.on_built(Arc::clone(&b), false, &in_container("c1"));
        assert_eq!(first.service_name(), "python3");
        assert!(Arc::ptr_eq(&j.current(7, &b), &first));
        store.apply_pod(pod("checkout-6d5f7c9b8-x", "u1", "c1", "10.1.0.5"));
        let later = j.current(7, &b);
        assert_eq!(later.service_name(), "checkout");
        // Unchanged pod: the same joined resource (exporters group spans by it).
        store.apply_pod(pod("other", "u2", "c2", "10.1.0.6"));
        assert!(Arc::ptr_eq(&j.current(7, &b), &later));
        // The pod goes: back to what procfs said.
        store.delete_pod("u1");
        assert_eq!(j.current(7, &b).service_name(), "python3");
        // Host processes are not tracked.
        let host = base(8, None, "nginx");
        assert!(Arc::ptr_eq(
            &j.on_built(Arc::clone(&host), false, &ContainerInfo::default()),
            &host
        ));
        // A process known by its pod UID only (no container id in its cgroup).
        let uid_only = ContainerInfo {
            id: None,
            pod_uid: Some("u2".into()),
        };
        let r = j.on_built(base(9, None, "sh"), false, &uid_only);
        assert_eq!(r.service_name(), "checkout");
        assert_eq!(get(&r, "k8s.pod.name"), Some("other"));
        assert_eq!(get(&r, "k8s.container.name"), None);
        assert!(Arc::ptr_eq(&j.current(8, &host), &host));
        j.forget(7);
        assert!(Arc::ptr_eq(&j.current(7, &b), &b));
    }
}
