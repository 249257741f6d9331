//! Another "node" on this machine: a network namespace joined to the host by a veth pair, so
//! a process inside reaches the host (and is reached) over a real interface with its own
//! addresses. Removed on drop (deleting the namespace deletes the veth pair too).
use std::process::{Command, Output};

/// A network namespace with address [`Node::inside`], its host side [`Node::host`] (one /24).
pub struct Node {
    name: String,
    host: String,
    inside: String,
}

/// Runs `ip` with `args`; panics with its stderr on failure.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert_ok(&format!("ip {args:?}"), &out);
}

fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Node {
    /// A namespace named after `tag` (a letter or two, distinct per test binary and test) and
    /// this process, in `10.<octet + pid % 100>.<pid % 250>.0/24`: `.1` on the host side, `.2`
    /// inside. Interface names stay within the kernel's 15 bytes.
    pub fn create(tag: &str, octet: u8) -> Self {
        let pid = std::process::id();
        let net = format!("10.{}.{}", u32::from(octet) + pid % 100, pid % 250);
        let node = Self {
            name: format!("tr{tag}{pid}"),
            host: format!("{net}.1"),
            inside: format!("{net}.2"),
        };
        let (veth_host, veth_ns) = (format!("tr{tag}h{pid}"), format!("tr{tag}n{pid}"));
        // A namespace left by a killed run of the same pid.
        let _ = Command::new("ip")
            .args(["netns", "del", &node.name])
            .output();
        ip(&["netns", "add", &node.name]);
        ip(&[
            "link", "add", &veth_host, "type", "veth", "peer", "name", &veth_ns,
        ]);
        ip(&["link", "set", &veth_ns, "netns", &node.name]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", node.host),
            "dev",
            &veth_host,
        ]);
        ip(&["link", "set", &veth_host, "up"]);
        let n = node.name.as_str();
        let inside = format!("{}/24", node.inside);
        ip(&["-n", n, "addr", "add", &inside, "dev", &veth_ns]);
        ip(&["-n", n, "link", "set", &veth_ns, "up"]);
        ip(&["-n", n, "link", "set", "lo", "up"]);
        node
    }

    /// The namespace's name (`ip netns exec <name> …`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host side's address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The address inside the namespace.
    pub fn inside(&self) -> &str {
        &self.inside
    }

    /// `program` run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Connections to port `dialled` inside are redirected to `listening` (iptables
    /// REDIRECT): the two ends then see different addresses, so no address link is possible.
    pub fn redirect(&self, dialled: u16, listening: u16) {
        let out = self
            .command("iptables")
            .args(["-t", "nat", "-A", "PREROUTING", "-p", "tcp"])
            .args(["--dport", &dialled.to_string()])
            .args(["-j", "REDIRECT", "--to-ports", &listening.to_string()])
            .output()
            .unwrap();
        assert_ok("iptables REDIRECT", &out);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
