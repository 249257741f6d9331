//! Privileged end-to-end: same-node links through a Service virtual IP. Two network
//! namespaces are two pods of one node (veth pairs to the host namespace, which routes between
//! them); real iptables rules as kube-proxy installs them DNAT `VIP:port` to the server pod's
//! `podIP:targetPort` (nat PREROUTING for pod-to-Service traffic, nat OUTPUT for the node's
//! own), optionally masquerading. Injection is off, so only the connection's addresses can link
//! curl's CLIENT span to the server's SERVER span: the client's say `VIP:port`, the server's
//! `podIP:targetPort`, and the agent asks the host's conntrack how the client dialled.
use std::{process::Command, time::Duration};

use serde_json::Value;
use tracer_tests::*;

const WAIT: Duration = Duration::from_secs(20);

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A "pod": a network namespace joined to the host by a veth pair, with IPv4 `10.<net>.<b>.2`
/// (host side `.1`) and IPv6 `fd00:<net>:<b>::2` (host side `::1`), its default routes via the
/// host. Removed on drop (with its veth pair).
struct Pod {
    ns: String,
    /// What its server serves: one file per path the tests request.
    www: TempDir,
    host_if: String,
    v4: String,
    host_v4: String,
    v6: String,
    host_v6: String,
}

impl Pod {
    fn create(net: u8) -> Self {
        let pid = std::process::id();
        let b = pid % 250;
        let ns = format!("trd{net}n{pid}");
        let (host_if, pod_if) = (format!("trd{net}h{pid}"), format!("trd{net}p{pid}"));
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        run("ip", &["netns", "add", &ns]);
        let www = TempDir::new("dnat-www");
        for path in PATHS {
            std::fs::write(www.path().join(path), "ok").unwrap();
        }
        let pod = Self {
            ns,
            www,
            host_if,
            v4: format!("10.{net}.{b}.2"),
            host_v4: format!("10.{net}.{b}.1"),
            v6: format!("fd00:{net}:{b}::2"),
            host_v6: format!("fd00:{net}:{b}::1"),
        };
        let ns = pod.ns.as_str();
        run(
            "ip",
            &[
                "link",
                "add",
                &pod.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &pod_if,
            ],
        );
        run("ip", &["link", "set", &pod_if, "netns", ns]);
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", pod.host_v4),
                "dev",
                &pod.host_if,
            ],
        );
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/64", pod.host_v6),
                "dev",
                &pod.host_if,
                "nodad",
            ],
        );
        run("ip", &["link", "set", &pod.host_if, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["-n", ns];
            all.extend_from_slice(args);
            run("ip", &all);
        };
        inside(&["addr", "add", &format!("{}/24", pod.v4), "dev", &pod_if]);
        inside(&[
            "addr",
            "add",
            &format!("{}/64", pod.v6),
            "dev",
            &pod_if,
            "nodad",
        ]);
        inside(&["link", "set", &pod_if, "up"]);
        inside(&["link", "set", "lo", "up"]);
        inside(&["route", "add", "default", "via", &pod.host_v4]);
        // The host forwards between the pods' veths only (not a host-wide ip_forward).
        std::fs::write(
            format!("/proc/sys/net/ipv4/conf/{}/forwarding", pod.host_if),
            "1",
        )
        .unwrap();
        pod
    }

    /// An HTTP server (Python's http.server) in the pod on `addr`:`port`.
    fn serve(&self, addr: &str, port: u16) -> Proc {
        let p = Proc::spawn(
            "pod http server",
            Command::new("ip")
                .args(["netns", "exec", &self.ns, "python3", "-c", POD_SERVER])
                .args([addr, &port.to_string()])
                .arg(self.www.path()),
        )
        .unwrap();
        p.wait_line("READY", Duration::from_secs(10)).unwrap();
        p
    }

    /// curl in the pod; the response must be a 200.
    fn curl(&self, url: &str) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "curl", "-sS", "--max-time", "10"])
            .args(["-o", "/dev/null", "-w", "%{http_code}", url])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "curl {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{url}");
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

/// A rule in the host's nat table (iptables or ip6tables), deleted on drop.
struct NatRule {
    cmd: &'static str,
    rule: Vec<String>,
}

impl NatRule {
    fn add(cmd: &'static str, rule: &[&str]) -> Self {
        let rule: Vec<String> = rule.iter().map(|s| s.to_string()).collect();
        let mut args = vec!["-w", "-t", "nat", "-A"];
        args.extend(rule.iter().map(String::as_str));
        run(cmd, &args);
        Self { cmd, rule }
    }

    /// kube-proxy's Service rule: `-d VIP -p tcp --dport PORT -j DNAT --to-destination POD`.
    fn dnat(cmd: &'static str, chain: &str, vip: &str, port: u16, to: &str) -> Self {
        Self::add(
            cmd,
            &[
                chain,
                "-d",
                vip,
                "-p",
                "tcp",
                "--dport",
                &port.to_string(),
                "-j",
                "DNAT",
                "--to-destination",
                to,
            ],
        )
    }
}

impl Drop for NatRule {
    fn drop(&mut self) {
        let mut args = vec!["-w", "-t", "nat", "-D"];
        args.extend(self.rule.iter().map(String::as_str));
        let _ = Command::new(self.cmd).args(&args).output();
    }
}

/// curl's CLIENT span for `path`.
fn client_span(r: &Receiver, path: &str) -> Value {
    let spans = r.wait_spans(1, WAIT, |s| {
        s.kind() == "SPAN_KIND_CLIENT" && s.attr_str("url.path") == path
    });
    assert_eq!(spans.len(), 1, "{path}: {spans:#?}");
    spans.into_iter().next().unwrap()
}

/// `server` is the child of `client`, linked by address.
fn assert_linked(server: &Value, client: &Value) {
    assert_eq!(
        (server.trace_id(), server.parent_id()),
        (client.trace_id(), client.span_id()),
        "{server:#}\n{client:#}"
    );
    assert_eq!(server.attr_str("tracer.parent.source"), "address");
}

/// Python's http.server on ADDR PORT serving ROOT, without the reverse DNS lookup of its
/// address that `python3 -m http.server --bind` makes (it hangs in a namespace without DNS).
const POD_SERVER: &str = r#"
import functools, http.server, socket, socketserver, sys
addr, port, root = sys.argv[1], int(sys.argv[2]), sys.argv[3]
class Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    def server_bind(self):
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "pod", self.server_address[1]
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=root)
server = Server((addr, port), handler)
print("READY", flush=True)
server.serve_forever()
"#;

/// The paths the tests request (files of the pods' servers).
const PATHS: &[&str] = &["via-service", "masqueraded", "direct", "v6", "unlinked"];

const NO_INJECTION: &[&str] = &["--inject-traceparent", "off"];

/// Pod → Service IP → pod, as kube-proxy's iptables mode routes it (nat PREROUTING on the
/// host); then with masquerading (the server sees the host's address); then directly to the
/// pod IP, which links by address as before, without NAT.
#[test]
fn pod_to_service_ip_links_through_dnat_and_masquerade() {
    require_root();
    let (client, server_pod) = (Pod::create(211), Pod::create(212));
    let (svc_port, port) = (free_port(), free_port());
    let vip = format!("10.213.{}.10", std::process::id() % 250);
    let server = server_pod.serve(&server_pod.v4, port);
    let target = format!("{}:{port}", server_pod.v4);
    let _dnat = NatRule::dnat("iptables", "PREROUTING", &vip, svc_port, &target);
    let sc = Scenario::ports(&[svc_port, port])
        .args(NO_INJECTION)
        .start()
        .unwrap();
    let r = sc.receiver();

    client.curl(&format!("http://{vip}:{svc_port}/via-service"));
    let c = client_span(r, "/via-service");
    assert_eq!(c.attr_str("network.peer.address"), vip, "{c:#}");
    assert_eq!(c.attr_i64("network.peer.port"), svc_port as i64);
    let s = r.one_span("SPAN_KIND_SERVER", "/via-service", server.pid());
    assert_eq!(s.attr_str("client.address"), client.v4, "{s:#}");
    assert_linked(&s, &c);

    // Masquerading (kube-proxy's KUBE-POSTROUTING): the server sees the host's address.
    let masq = NatRule::add(
        "iptables",
        &[
            "POSTROUTING",
            "-s",
            &client.v4,
            "-d",
            &server_pod.v4,
            "-j",
            "MASQUERADE",
        ],
    );
    client.curl(&format!("http://{vip}:{svc_port}/masqueraded"));
    let c = client_span(r, "/masqueraded");
    let s = r.one_span("SPAN_KIND_SERVER", "/masqueraded", server.pid());
    assert_eq!(s.attr_str("client.address"), server_pod.host_v4, "{s:#}");
    assert_linked(&s, &c);
    drop(masq);

    // No NAT: linked by the addresses alone.
    client.curl(&format!("http://{}:{port}/direct", server_pod.v4));
    let c = client_span(r, "/direct");
    let s = r.one_span("SPAN_KIND_SERVER", "/direct", server.pid());
    assert_linked(&s, &c);

    let done = sc.stop().unwrap();
    let n = &done.counters;
    assert_eq!((n.nat_linked, n.address_linked), (2, 3), "{n:?}");
    assert!(n.nat_resolved >= 2, "{n:?}");
    assert_eq!(n.nat_lookup_failed, 0, "{n:?}");
    assert!(
        log_line(&done.log, "NAT lookups through conntrack on").contains("INFO"),
        "{}",
        done.summary()
    );
}

/// The node's own client (host network namespace) to an IPv6 Service IP: nat OUTPUT.
#[test]
fn host_to_ipv6_service_ip_links_through_dnat() {
    require_root();
    let server_pod = Pod::create(214);
    let (svc_port, port) = (free_port(), free_port());
    let vip = format!("fd00:215:{}::10", std::process::id() % 250);
    // The Service range is routed towards the pods (kube-proxy relies on a default route).
    run(
        "ip",
        &["-6", "route", "add", &vip, "dev", &server_pod.host_if],
    );
    let server = server_pod.serve(&server_pod.v6, port);
    let target = format!("[{}]:{port}", server_pod.v6);
    let _dnat = NatRule::dnat("ip6tables", "OUTPUT", &vip, svc_port, &target);
    let sc = Scenario::ports(&[svc_port, port])
        .args(NO_INJECTION)
        .start()
        .unwrap();
    let r = sc.receiver();
    curl(&["-o", "/dev/null", &format!("http://[{vip}]:{svc_port}/v6")]).unwrap();
    let c = client_span(r, "/v6");
    assert_eq!(c.attr_str("network.peer.address"), vip, "{c:#}");
    let s = r.one_span("SPAN_KIND_SERVER", "/v6", server.pid());
    assert_eq!(s.attr_str("client.address"), server_pod.host_v6, "{s:#}");
    assert_linked(&s, &c);
    let n = sc.stop().unwrap().counters;
    assert_eq!(n.nat_linked, 1, "{n:?}");
}

/// The same Service call with `--nat-lookup off`: the link is missing (what the lookups add).
#[test]
fn without_nat_lookups_the_service_ip_call_is_not_linked() {
    require_root();
    let (client, server_pod) = (Pod::create(216), Pod::create(217));
    let (svc_port, port) = (free_port(), free_port());
    let vip = format!("10.218.{}.10", std::process::id() % 250);
    let server = server_pod.serve(&server_pod.v4, port);
    let target = format!("{}:{port}", server_pod.v4);
    let _dnat = NatRule::dnat("iptables", "PREROUTING", &vip, svc_port, &target);
    let sc = Scenario::ports(&[svc_port, port])
        .args(NO_INJECTION)
        .args(&["--nat-lookup", "off"])
        .start()
        .unwrap();
    let r = sc.receiver();
    client.curl(&format!("http://{vip}:{svc_port}/unlinked"));
    let c = client_span(r, "/unlinked");
    let s = r.one_span("SPAN_KIND_SERVER", "/unlinked", server.pid());
    assert_eq!(s.parent_id(), "", "{s:#}");
    assert_ne!(s.trace_id(), c.trace_id());
    assert_eq!(s.attr_str("tracer.parent.source"), "none");
    let n = sc.stop().unwrap().counters;
    assert_eq!((n.nat_lookups, n.address_linked), (0, 0), "{n:?}");
}
