//! Privileged end-to-end: Kubernetes metadata. No real kube-apiserver can be installed here,
//! so the agent watches a FAKE API server (tests/fake_kube/fake_kube.py: a pod List and watch
//! streams shaped as the real API's, its Pod objects validated against the official schemas
//! with kubernetes-validate). Everything else is real: the agent, its eBPF programs, the
//! servers, curl, the OTLP receiver.
use std::{
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::Command,
    time::Duration,
};

use serde_json::{Value, json};
use test_kit::{Container, base_image};
use tracer_tests::*;

const WAIT: Duration = Duration::from_secs(20);
const NODE: &str = "node-1";
const TOKEN: &str = "fake-token";
/// Each container of the podman test maps its own libssl, and every agent running meanwhile
/// attaches TLS probes to all of them: detaching them all at exit takes a while.
const STOP_WITHIN: Duration = Duration::from_secs(90);

/// The fake API server and a kubeconfig naming it (plain http, a bearer token).
struct FakeKube {
    proc: Proc,
    port: u16,
    dir: TempDir,
}

impl FakeKube {
    fn start() -> Self {
        let script = workspace_root().join("tests/fake_kube/fake_kube.py");
        let proc = Proc::spawn(
            "fake kube-apiserver",
            Command::new("python3").arg(script).args(["--token", TOKEN]),
        )
        .unwrap();
        let line = proc
            .wait_line("listening on http://127.0.0.1:", Duration::from_secs(20))
            .unwrap();
        let port = line.rsplit(':').next().unwrap().trim().parse().unwrap();
        let dir = TempDir::new("fake-kube");
        std::fs::write(
            dir.path().join("kubeconfig"),
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
                 clusters: [{{name: fake, cluster: {{server: \"http://127.0.0.1:{port}\"}}}}]\n\
                 users: [{{name: agent, user: {{token: {TOKEN}}}}}]\n\
                 contexts: [{{name: fake, context: {{cluster: fake, user: agent}}}}]\n"
            ),
        )
        .unwrap();
        Self { proc, port, dir }
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// The agent's setup: Kubernetes on, from the fake's kubeconfig, this node's name.
    fn agent(&self, ports: &[u16]) -> Setup {
        Scenario::ports(ports)
            .args(&["--kubernetes", "on", "--node-name", NODE])
            .env("KUBECONFIG", self.kubeconfig().to_str().unwrap())
            .stop_within(STOP_WITHIN)
    }

    /// POSTs to the fake's control API; returns the status code and body.
    fn post(&self, path: &str, body: &Value) -> (u16, String) {
        let body = body.to_string();
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: fake\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let code = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
        (code, body)
    }

    /// Creates or replaces an object; the fake refuses an invalid one (422).
    fn put(&self, kind: &str, obj: &Value) {
        let (code, body) = self.post(&format!("/fake/{kind}"), obj);
        assert_eq!(code, 201, "the fake refused the object: {body}");
    }

    fn stats(&self) -> Value {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "GET /fake/stats HTTP/1.1\r\nHost: fake\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        serde_json::from_str(out.split_once("\r\n\r\n").unwrap().1).unwrap()
    }

    /// Waits until the fake has served `n` watch requests of `kind`.
    fn wait_watches(&self, kind: &str, n: u64) {
        wait_for(WAIT, || {
            (self.stats()["watches"][kind].as_u64() >= Some(n)).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "no {n} {kind} watches: {}\n{}",
                self.stats(),
                self.proc.stderr_tail()
            )
        });
    }
}

/// A Pod of this node as the API server returns it: owned by `owner` (kind, name), running
/// one container `app` with runtime id `container_id`, at `ip`.
fn pod(
    name: &str,
    uid: &str,
    owner: Option<(&str, &str)>,
    labels: Value,
    annotations: Value,
    container_id: &str,
    ip: &str,
) -> Value {
    let owners: Vec<Value> = owner
        .map(|(kind, owner)| {
            json!({"apiVersion": "apps/v1", "kind": kind, "name": owner, "controller": true,
                   "blockOwnerDeletion": true, "uid": "0b6c3f7e-1a2b-4c5d-8e9f-000000000001"})
        })
        .into_iter()
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "uid": uid, "labels": labels,
                     "annotations": annotations, "ownerReferences": owners},
        "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "localhost/test:1"}]},
        "status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "10.0.0.1",
            "containerStatuses": [{
                "name": "app", "ready": true, "restartCount": 0, "started": true,
                "image": "localhost/test:1", "imageID": "",
                "containerID": format!("containerd://{container_id}"),
                "state": {"running": {"startedAt": "2026-12-01T10:00:00Z"}}
            }]
        }
    })
}

fn service(name: &str, cluster_ip: &str, selector: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "selector": selector,
                 "ports": [{"port": 80, "protocol": "TCP"}]}
    })
}

/// `python3 -m http.server` on every address (pod and Service IPs are loopback aliases here).
fn server_on_all_addresses(port: u16, dir: &TempDir) -> Proc {
    let mut p = Proc::spawn(
        "python http.server",
        Command::new("python3")
            .args(["-m", "http.server", "--bind", "0.0.0.0", &port.to_string()])
            .current_dir(dir.path()),
    )
    .unwrap();
    p.wait_listening(port, Duration::from_secs(10)).unwrap();
    p
}

/// The agent's final Kubernetes counters (`final kubernetes stats {...}`; `{}` when none).
fn final_stats(log: &str) -> Value {
    let line = log_line(log, "final kubernetes stats ");
    let json = line
        .split_once("final kubernetes stats ")
        .map_or("{}", |(_, j)| j);
    serde_json::from_str(json).unwrap()
}

/// The fake refuses a Pod that is not shaped as the official schema says.
#[test]
fn the_fake_serves_only_schema_valid_pods() {
    let kube = FakeKube::start();
    let mut bad = pod("p", "u", None, json!({}), json!({}), "c", "10.1.0.5");
    bad["spec"]["containers"] = json!("app");
    let (code, body) = kube.post("/fake/pods", &bad);
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("not a valid Pod"), "{body}");
}

/// CLIENT spans to a pod IP or a Service's cluster IP carry the workload's service name in
/// `service.peer.name`; after a dropped watch connection and a 410 Gone re-list, a pod added
/// later is still learnt.
#[test]
fn client_spans_name_their_kubernetes_peers_through_drops_and_relists() {
    require_root();
    let kube = FakeKube::start();
    kube.put(
        "pods",
        &pod(
            "checkout-6d5f7c9b8-x2x9k",
            "3f1c1c9e-0000-4000-8000-000000000001",
            Some(("ReplicaSet", "checkout-6d5f7c9b8")),
            json!({"pod-template-hash": "6d5f7c9b8", "app": "checkout"}),
            json!({}),
            &"a".repeat(64),
            "127.0.0.5",
        ),
    );
    kube.put(
        "services",
        &service("checkout-svc", "127.0.0.6", json!({"app": "checkout"})),
    );
    kube.put(
        "services",
        &service("remote", "127.0.0.8", json!({"app": "elsewhere"})),
    );
    let dir = TempDir::new("kube-peers");
    let port = free_port();
    let _server = server_on_all_addresses(port, &dir);
    let sc = kube.agent(&[port]).start().unwrap();
    kube.wait_watches("pods", 1);
    kube.wait_watches("services", 1);

    let client_to = |ip: &str| {
        let ip = ip.to_owned();
        move |s: &Value| {
            s.kind() == "SPAN_KIND_CLIENT"
                && s.attr_str("network.peer.address") == ip
                && s.attr_i64("server.port") == i64::from(port)
        }
    };
    // The watches are running; the first list may still be on its way: retry the request.
    let peer_of = |ip: &str| -> String {
        wait_for(WAIT, || {
            curl(&["-o", "/dev/null", &format!("http://{ip}:{port}/")]).unwrap();
            let spans = sc.wait_spans(1, Duration::from_secs(2), client_to(ip));
            spans
                .iter()
                .rev()
                .find_map(|s| s.attr("service.peer.name").as_str().map(str::to_owned))
        })
        .unwrap_or_else(|| {
            panic!(
                "no CLIENT span to {ip} named its peer\n{}",
                summary(&sc.log())
            )
        })
    };
    // The pod's IP: its Deployment's name; the Service's: the pod it selects; a Service
    // selecting no pod of this node: its own name.
    assert_eq!(peer_of("127.0.0.5"), "checkout");
    assert_eq!(peer_of("127.0.0.6"), "checkout");
    assert_eq!(peer_of("127.0.0.8"), "remote");

    // A dropped connection mid-stream, then the history compacted (410 Gone: re-list).
    kube.post("/fake/drop", &json!({}));
    kube.wait_watches("pods", 2);
    kube.post("/fake/expire", &json!({}));
    kube.put(
        "pods",
        &pod(
            "cart-0",
            "3f1c1c9e-0000-4000-8000-000000000002",
            Some(("StatefulSet", "cart")),
            json!({"app.kubernetes.io/name": "cart"}),
            json!({}),
            &"b".repeat(64),
            "127.0.0.7",
        ),
    );
    assert_eq!(peer_of("127.0.0.7"), "cart");
    assert_eq!(peer_of("127.0.0.5"), "checkout");
    // An address that is no pod and no Service: no peer name.
    curl(&["-o", "/dev/null", &format!("http://127.0.0.9:{port}/")]).unwrap();
    sc.wait_spans(1, WAIT, client_to("127.0.0.9"));

    let done = sc.stop().unwrap();
    let unnamed = done.spans_where(client_to("127.0.0.9"));
    assert!(
        unnamed
            .iter()
            .all(|s| s.attr("service.peer.name").is_null()),
        "{unnamed:#?}"
    );
    // SERVER spans are not given a peer name.
    assert!(
        done.spans_where(|s| s.kind() == "SPAN_KIND_SERVER")
            .iter()
            .all(|s| s.attr("service.peer.name").is_null())
    );
    let stats = final_stats(&done.log);
    assert!(stats["kube_relists"].as_u64() >= Some(1), "{stats}");
    assert_eq!(stats["kube_pods"], 2, "{stats}");
    assert_eq!(stats["kube_services"], 2, "{stats}");
    let stats = kube.stats();
    assert!(stats["lists"]["pods"].as_u64() >= Some(2), "{stats}");
    // A 410 is routine (the watcher re-lists): no warning for it, nor for a watch stream the
    // server ended.
    assert!(
        !done
            .log
            .lines()
            .any(|l| l.contains("WARN") && l.contains("Kubernetes")),
        "{}",
        done.summary()
    );
}

/// The API server is down: tracing goes on, one warning (not one per retry), the errors
/// counted.
#[test]
fn an_unreachable_api_server_is_one_warning_and_a_counter() {
    require_root();
    let kube = FakeKube::start();
    let dead_port = free_port();
    std::fs::write(
        kube.kubeconfig(),
        std::fs::read_to_string(kube.kubeconfig())
            .unwrap()
            .replace(&format!(":{}\"", kube.port), &format!(":{dead_port}\"")),
    )
    .unwrap();
    let (server, port) = test_http_server().unwrap();
    let sc = kube.agent(&[port]).start().unwrap();
    // Long enough for several retries of the backoff (800 ms, then doubling).
    std::thread::sleep(Duration::from_secs(4));
    curl(&["-o", "/dev/null", &format!("http://127.0.0.1:{port}/")]).unwrap();
    sc.wait_spans(1, WAIT, |s| {
        s.kind() == "SPAN_KIND_SERVER" && s.res("process.pid").as_i64() == Some(server.pid() as i64)
    });
    let done = sc.stop().unwrap();
    let warnings: Vec<&str> = done
        .log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("Kubernetes"))
        .collect();
    // One per watch (pods, Services).
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    let stats = final_stats(&done.log);
    assert!(stats["kube_watch_errors"].as_u64() > Some(2), "{stats}");
    assert_eq!(stats["kube_pods"], 0);
}

/// Without any cluster (no service-account token, no KUBERNETES_SERVICE_HOST) the agent says
/// so in one info line and is exactly as before: same spans, same resources, same counters.
#[test]
fn without_a_cluster_the_agent_is_as_before() {
    require_root();
    let (server, port) = test_http_server().unwrap();
    let sc = Scenario::ports(&[port])
        .env("KUBERNETES_SERVICE_HOST", "")
        .stop_within(STOP_WITHIN)
        .start()
        .unwrap();
    curl(&["-o", "/dev/null", &format!("http://127.0.0.1:{port}/")]).unwrap();
    sc.wait_spans(1, WAIT, |s| s.kind() == "SPAN_KIND_SERVER");
    sc.wait_spans(1, WAIT, |s| s.kind() == "SPAN_KIND_CLIENT");
    let done = sc.stop().unwrap();
    let kube_lines: Vec<&str> = done
        .log
        .lines()
        .filter(|l| l.to_lowercase().contains("kube"))
        .collect();
    assert_eq!(kube_lines.len(), 1, "{kube_lines:#?}");
    assert!(
        kube_lines[0].contains("INFO") && kube_lines[0].contains("not running in a Kubernetes pod"),
        "{kube_lines:#?}"
    );
    for s in &done.spans {
        let keys: Vec<&String> = s["resource"].as_object().unwrap().keys().collect();
        assert!(keys.iter().all(|k| !k.starts_with("k8s.")), "{keys:?}");
        assert!(s.attr("service.peer.name").is_null());
    }
    let server_span = done
        .spans_where(|s| s.kind() == "SPAN_KIND_SERVER")
        .pop()
        .unwrap();
    assert_eq!(
        server_span.res("process.pid").as_i64(),
        Some(server.pid() as i64)
    );
    assert!(
        server_span
            .res("service.name")
            .as_str()
            .unwrap()
            .starts_with("python3"),
        "{server_span:#}"
    );
    let client = done
        .spans_where(|s| s.kind() == "SPAN_KIND_CLIENT")
        .pop()
        .unwrap();
    assert_eq!(client.res("service.name"), "curl");
    // No kube_* counters.
    let stats = final_stats(&done.log);
    assert!(
        stats
            .as_object()
            .unwrap()
            .keys()
            .all(|k| !k.starts_with("kube")),
        "{stats}"
    );
}

/// The SERVER spans of requests to `port` so far.
fn server_spans(sc: &Scenario, port: u16) -> Vec<Value> {
    sc.receiver()
        .spans()
        .into_iter()
        .filter(|s| s.kind() == "SPAN_KIND_SERVER" && s.attr_i64("server.port") == i64::from(port))
        .collect()
}

/// Requests `port` until a SERVER span whose resource satisfies `pred` arrives; returns it.
fn request_until(sc: &Scenario, port: u16, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    wait_for(WAIT, || {
        curl(&["-o", "/dev/null", &format!("http://127.0.0.1:{port}/")]).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        server_spans(sc, port).into_iter().rev().find(|s| pred(s))
    })
    .unwrap_or_else(|| {
        panic!(
            "no span of port {port} with {what}: {:#?}\n{}",
            server_spans(sc, port).last(),
            summary(&sc.log())
        )
    })
}

/// (pod name, owner, labels, annotations, expected service.name, owner attributes)
type PodCase = (
    &'static str,
    Option<(&'static str, &'static str)>,
    Value,
    Value,
    &'static str,
    Vec<(&'static str, &'static str)>,
);

/// Real containers (podman) in pods the fake API server describes, with the containers' real
/// ids: every span carries the pod, namespace, owner and the `service.name` of each
/// precedence rule; a process seen before its pod gets the metadata on later spans; after a
/// dropped watch and a 410 re-list, a changed label still reaches the spans.
#[test]
fn spans_of_pod_containers_carry_kubernetes_metadata() {
    require_root();
    let image = base_image().unwrap();
    let kube = FakeKube::start();
    let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
    let env_named = [("OTEL_SERVICE_NAME", "from-env")];
    let servers: Vec<Container> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            Container::python_http_server(&image, *port, if i == 0 { &env_named } else { &[] })
                .unwrap()
        })
        .collect();
    let uid = |i: usize| format!("7c0f9d2e-0000-4000-8000-00000000000{i}");
    let instance = "app.kubernetes.io/instance";
    let name = "app.kubernetes.io/name";
    let annotation = "resource.opentelemetry.io/service.name";
    let pods: Vec<PodCase> = vec![
        // 1. The container's own OTEL_SERVICE_NAME.
        (
            "envpod",
            None,
            json!({instance: "i", name: "n"}),
            json!({annotation: "a"}),
            "from-env",
            vec![],
        ),
        // 2. The pod annotation (and other resource annotations become attributes).
        (
            "backup-29412345-abcde",
            Some(("Job", "backup-29412345")),
            json!({instance: "i", name: "n"}),
            json!({annotation: "annotated", "resource.opentelemetry.io/team": "payments",
                   "resource.opentelemetry.io/service.namespace": "retail"}),
            "annotated",
            vec![
                ("k8s.job.name", "backup-29412345"),
                ("k8s.cronjob.name", "backup"),
            ],
        ),
        // 3. app.kubernetes.io/instance, over app.kubernetes.io/name.
        (
            "db-0",
            Some(("StatefulSet", "db")),
            json!({instance: "inst-x", name: "name-x", "app.kubernetes.io/version": "1.4.2"}),
            json!({}),
            "inst-x",
            vec![("k8s.statefulset.name", "db")],
        ),
        // 4. app.kubernetes.io/name.
        (
            "agent-7xk2p",
            Some(("DaemonSet", "agent")),
            json!({name: "name-y"}),
            json!({}),
            "name-y",
            vec![("k8s.daemonset.name", "agent")],
        ),
        // 5. The owner: the Deployment behind the ReplicaSet.
        (
            "checkout-6d5f7c9b8-x2x9k",
            Some(("ReplicaSet", "checkout-6d5f7c9b8")),
            json!({"pod-template-hash": "6d5f7c9b8"}),
            json!({}),
            "checkout",
            vec![
                ("k8s.replicaset.name", "checkout-6d5f7c9b8"),
                ("k8s.deployment.name", "checkout"),
            ],
        ),
        // 6. The pod's name (this one is announced after its process is seen).
        ("lonely", None, json!({}), json!({}), "lonely", vec![]),
    ];
    let pod_json = |i: usize| {
        let (pod_name, owner, labels, annotations, _, _) = &pods[i];
        pod(
            pod_name,
            &uid(i),
            *owner,
            labels.clone(),
            annotations.clone(),
            &servers[i].id,
            &format!("127.0.1.{i}"),
        )
    };
    for i in 0..5 {
        kube.put("pods", &pod_json(i));
    }
    let sc = kube.agent(&ports).start().unwrap();
    kube.wait_watches("pods", 1);

    // 6 first, before its pod exists: the process is in a container, not yet in a pod.
    let before = request_until(&sc, ports[5], "container.id", |s| {
        s.res("container.id").is_string()
    });
    assert_eq!(before.res("container.id"), servers[5].id.as_str());
    assert!(before.res("k8s.pod.name").is_null(), "{before:#}");
    assert_eq!(before.res("service.name"), "python3.11", "{before:#}");
    kube.put("pods", &pod_json(5));

    for (i, (pod_name, _, _, _, service, owner_attrs)) in pods.iter().enumerate() {
        let s = request_until(&sc, ports[i], "k8s.pod.name", |s| {
            s.res("k8s.pod.name").is_string()
        });
        let ctx = format!("pod {pod_name}: {s:#}");
        assert_eq!(s.res("service.name"), *service, "{ctx}");
        assert_eq!(s.res("k8s.pod.name"), *pod_name, "{ctx}");
        assert_eq!(s.res("k8s.pod.uid"), uid(i).as_str(), "{ctx}");
        assert_eq!(s.res("k8s.namespace.name"), "shop", "{ctx}");
        assert_eq!(s.res("k8s.node.name"), NODE, "{ctx}");
        assert_eq!(s.res("k8s.container.name"), "app", "{ctx}");
        assert_eq!(s.res("container.id"), servers[i].id.as_str(), "{ctx}");
        assert_eq!(
            s.res("service.instance.id"),
            format!("shop.{pod_name}.app").as_str(),
            "{ctx}"
        );
        for (k, v) in owner_attrs {
            assert_eq!(s.res(k), *v, "{k} {ctx}");
        }
        let owner_keys = [
            "k8s.replicaset.name",
            "k8s.deployment.name",
            "k8s.statefulset.name",
            "k8s.daemonset.name",
            "k8s.job.name",
            "k8s.cronjob.name",
        ];
        for k in owner_keys
            .iter()
            .filter(|k| !owner_attrs.iter().any(|(ok, _)| ok == *k))
        {
            assert!(s.res(k).is_null(), "{k} {ctx}");
        }
        let namespace = if i == 1 { "retail" } else { "shop" };
        assert_eq!(s.res("service.namespace"), namespace, "{ctx}");
        if i == 1 {
            assert_eq!(s.res("team"), "payments", "{ctx}");
        }
        if i == 2 {
            assert_eq!(s.res("service.version"), "1.4.2", "{ctx}");
        }
    }
    // The span sent before the pod was known is not rewritten.
    assert!(
        server_spans(&sc, ports[5])
            .iter()
            .any(|s| s.res("k8s.pod.name").is_null())
    );

    // A dropped watch connection, then a 410 re-list; a label changed meanwhile arrives.
    kube.post("/fake/drop", &json!({}));
    kube.wait_watches("pods", 2);
    kube.post("/fake/expire", &json!({}));
    let mut changed = pod_json(2);
    changed["metadata"]["labels"][instance] = json!("inst-z");
    kube.put("pods", &changed);
    let s = request_until(&sc, ports[2], "service.name inst-z", |s| {
        s.res("service.name") == "inst-z"
    });
    assert_eq!(s.res("k8s.statefulset.name"), "db");
    let done = sc.stop().unwrap();
    let stats = final_stats(&done.log);
    assert!(stats["kube_relists"].as_u64() >= Some(1), "{stats}");
    assert_eq!(stats["kube_pods"], 6, "{stats}");
    drop(servers);
}
