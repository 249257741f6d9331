//! Which container (and Kubernetes pod) a process runs in, from its `/proc/PID/cgroup`.
//!
//! Container runtimes name each container's cgroup after the container's 64-hex id, and the
//! kubelet names each pod's cgroup after the pod's UID. The shapes recognised (cgroup v1
//! `N:controllers:/path` lines and v2 `0::/path` lines, hybrid layouts too):
//!
//! | runtime / driver | path component |
//! |---|---|
//! | containerd (CRI), systemd driver | `cri-containerd-<id>.scope` |
//! | CRI-O, systemd / cgroupfs | `crio-<id>.scope` / `crio-<id>` (`crio-conmon-<id>` is its monitor: not the container) |
//! | Docker, systemd / cgroupfs | `docker-<id>.scope` / `/docker/<id>` |
//! | podman, systemd / cgroupfs | `libpod-<id>.scope` / `/libpod_parent/libpod-<id>` (`libpod-conmon-<id>` skipped) |
//! | containerd, Kubernetes cgroupfs, ECS, `ctr` namespaces | a bare `<id>` (`/kubepods/burstable/pod<uid>/<id>`, `/k8s.io/<id>`) |
//! | systemd `slice:prefix:name` paths | `…slice:cri-containerd:<id>` |
//!
//! The innermost component that names a container wins (a container nested in another one,
//! e.g. a kind node, reports the inner one). The pod UID comes from a `pod<uid>` component
//! under `kubepods` (cgroupfs driver) or a `kubepods[-<qos>]-pod<uid>.slice` one (systemd
//! driver, which writes `_` for the UID's `-`: turned back). Paths relative to the reader's
//! cgroup namespace (`/../../kubepods…`) are read the same way.
//!
//! [`parse_cgroup`] is a pure function of the file's bytes: bounded (at most
//! [`MAX_CGROUP_LINES`] lines of at most [`MAX_CGROUP_LINE_BYTES`] each are looked at), and it
//! never panics, whatever the input.

/// Lines of `/proc/PID/cgroup` looked at, at most (cgroup v1 has one per hierarchy: about 13).
pub const MAX_CGROUP_LINES: usize = 64;
/// Longer lines are ignored (a cgroup path is at most `PATH_MAX`).
pub const MAX_CGROUP_LINE_BYTES: usize = 4096;
/// Bytes of `/proc/PID/cgroup` worth reading.
pub const MAX_CGROUP_BYTES: usize = MAX_CGROUP_LINES * 256;

/// Length of a container id (runc, crun: a 64-hex SHA-256).
const CONTAINER_ID_LEN: usize = 64;

/// The container (and pod) a process belongs to, as its cgroup paths say.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ContainerInfo {
    /// The full container id (64 lowercase hex digits), as `docker inspect`, `podman inspect`
    /// and the Kubernetes pod status (`containerID` after `<runtime>://`) show it.
    pub id: Option<String>,
    /// The Kubernetes pod UID (`metadata.uid`, with `-`), when the container runs in a pod.
    pub pod_uid: Option<String>,
}

impl ContainerInfo {
    /// Neither a container nor a pod: a host process.
    pub fn is_empty(&self) -> bool {
        self.id.is_none() && self.pod_uid.is_none()
    }
}

/// Parses the text of `/proc/PID/cgroup`. The container id and pod UID come from the first
/// line that names a container; without one, the pod UID from the first line that names a pod.
pub fn parse_cgroup(text: &[u8]) -> ContainerInfo {
    let mut pod_only = None;
    for line in text.split(|b| *b == b'\n').take(MAX_CGROUP_LINES) {
        if line.len() > MAX_CGROUP_LINE_BYTES {
            continue;
        }
        // `hierarchy-id:controllers:path`; the path itself may contain ':'.
        let mut fields = line.splitn(3, |b| *b == b':');
        let (Some(_), Some(_), Some(path)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let pod_uid = pod_uid_of_path(path);
        if let Some(id) = container_id_of_path(path) {
            return ContainerInfo {
                id: Some(id),
                pod_uid,
            };
        }
        if pod_only.is_none() {
            pod_only = pod_uid;
        }
    }
    ContainerInfo {
        id: None,
        pod_uid: pod_only,
    }
}

/// The innermost container id a cgroup path names.
fn container_id_of_path(path: &[u8]) -> Option<String> {
    path.rsplit(|b| *b == b'/')
        .find_map(container_id_of_component)
}

/// Runtime prefixes of a container's own cgroup (systemd scope or cgroupfs directory).
const RUNTIME_PREFIXES: &[&[u8]] = &[b"cri-containerd-", b"crio-", b"docker-", b"libpod-"];

fn container_id_of_component(component: &[u8]) -> Option<String> {
    let name = component.strip_suffix(b".scope").unwrap_or(component);
    // systemd's `slice:prefix:name` form puts the id after the last ':'.
    let name = match name.iter().rposition(|b| *b == b':') {
        Some(colon) => &name[colon + 1..],
        None => name,
    };
    let id = RUNTIME_PREFIXES
        .iter()
        .find_map(|p| name.strip_prefix(*p))
        .unwrap_or(name);
    // `crio-conmon-<id>` / `libpod-conmon-<id>`: the runtime's monitor fails here ("conmon-" is
    // not hex), as it should.
    is_container_id(id).then(|| ascii(id))
}

fn is_container_id(s: &[u8]) -> bool {
    s.len() == CONTAINER_ID_LEN && s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The pod UID a cgroup path names (the kubelet's pod cgroup), `-`-separated.
fn pod_uid_of_path(path: &[u8]) -> Option<String> {
    let mut under_kubepods = false;
    for component in path.split(|b| *b == b'/') {
        // systemd driver: `kubepods-pod<uid>.slice`, `kubepods-<qos>-pod<uid>.slice` (possibly
        // followed by `:prefix:name`).
        let head = component.split(|b| *b == b':').next().unwrap_or(component);
        if let Some(slice) = head
            .strip_prefix(b"kubepods-")
            .and_then(|s| s.strip_suffix(b".slice"))
        {
            let uid = [&b"besteffort-"[..], b"burstable-", b"guaranteed-"]
                .iter()
                .find_map(|qos| slice.strip_prefix(*qos))
                .unwrap_or(slice);
            if let Some(uid) = uid.strip_prefix(b"pod").and_then(pod_uid) {
                return Some(uid);
            }
        }
        // cgroupfs driver: `/kubepods/[<qos>/]pod<uid>/`.
        if under_kubepods && let Some(uid) = component.strip_prefix(b"pod").and_then(pod_uid) {
            return Some(uid);
        }
        if component.starts_with(b"kubepods") {
            under_kubepods = true;
        }
    }
    None
}

/// A pod UID: a UUID with `-` (cgroupfs) or `_` (systemd) separators, returned with `-`; or
/// the 32-hex hash the kubelet gives static (manifest) pods.
fn pod_uid(s: &[u8]) -> Option<String> {
    let hex = |b: &u8| b.is_ascii_hexdigit() && !b.is_ascii_uppercase();
    match s.len() {
        32 if s.iter().all(hex) => Some(ascii(s)),
        36 => {
            // One separator throughout: `-` (cgroupfs) or `_` (systemd), never a mix.
            let sep = s[8];
            let uuid_shaped = matches!(sep, b'-' | b'_')
                && s.iter().enumerate().all(|(i, b)| match i {
                    8 | 13 | 18 | 23 => *b == sep,
                    _ => hex(b),
                });
            uuid_shaped.then(|| {
                s.iter()
                    .map(|b| if *b == b'_' { '-' } else { char::from(*b) })
                    .collect()
            })
        }
        _ => None,
    }
}

/// Bytes already checked to be ASCII hex (and separators).
fn ascii(s: &[u8]) -> String {
    s.iter().map(|b| char::from(*b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "076fe917390d823e7882b64d95110bcbcc14641d2e764b32791bc1145d53e4f4";

    fn info(id: Option<&str>, pod: Option<&str>) -> ContainerInfo {
        ContainerInfo {
            id: id.map(Into::into),
            pod_uid: pod.map(Into::into),
        }
    }

    /// `/proc/PID/cgroup` texts of the shapes real systems print (the first is this machine's,
    /// the others as peers' tests and bug reports quote them) and what they name.
    #[test]
    fn real_shapes() {
        let cases: &[(&str, &str, ContainerInfo)] = &[
            (
                "podman 4.3, cgroupfs manager, hybrid layout (this project's test machine)",
                "9:name=systemd:/libpod_parent/libpod-076fe917390d823e7882b64d95110bcbcc14641d2e764b32791bc1145d53e4f4\n\
                 8:pids:/libpod_parent/libpod-076fe917390d823e7882b64d95110bcbcc14641d2e764b32791bc1145d53e4f4\n\
                 1:cpu:/libpod_parent/libpod-076fe917390d823e7882b64d95110bcbcc14641d2e764b32791bc1145d53e4f4\n\
                 0::/libpod_parent/libpod-076fe917390d823e7882b64d95110bcbcc14641d2e764b32791bc1145d53e4f4\n",
                info(Some(ID), None),
            ),
            (
                "podman, systemd manager, cgroup v2 (a systemd-mode container's payload cgroup)",
                "0::/machine.slice/libpod-076fe917390d823e7882b64d95110bcbcc14641d2e764b32791bc1145d53e4f4.scope/container\n",
                info(Some(ID), None),
            ),
            (
                "a podman pod's container, systemd manager (the pod's slice is not a container)",
                "0::/machine.slice/machine-libpod_pod_9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d.slice/libpod-076fe917390d823e7882b64d95110bcbcc14641d2e764b32791bc1145d53e4f4.scope/container\n",
                info(Some(ID), None),
            ),
            (
                "containerd CRI, systemd driver, cgroup v2",
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0b7632a2_a56e_4278_987a_22de18008dbe.slice/cri-containerd-d52db56a9c80d536a91354c0951c061187ca46249e64865a12703003d8f42366.scope\n",
                info(
                    Some("d52db56a9c80d536a91354c0951c061187ca46249e64865a12703003d8f42366"),
                    Some("0b7632a2-a56e-4278-987a-22de18008dbe"),
                ),
            ),
            (
                "containerd CRI, systemd driver, guaranteed QoS (no QoS slice)",
                "0::/kubepods.slice/kubepods-podd80f4a0e_576f_47a8_a0cf_69dc23dc1980.slice/cri-containerd-605439acbd4fb18c145069289094b17f17e0cfa938f78012d4960bc797305f22.scope\n",
                info(
                    Some("605439acbd4fb18c145069289094b17f17e0cfa938f78012d4960bc797305f22"),
                    Some("d80f4a0e-576f-47a8-a0cf-69dc23dc1980"),
                ),
            ),
            (
                "containerd CRI, cgroupfs driver, cgroup v1",
                "11:devices:/kubepods/besteffort/pod74c13223-5a00-11e9-b385-42010a80018d/34dc0b5e626f2c5c4c5170e34b10e7654ce36f0fcd532739f4445baabea03376\n\
                 4:cpu,cpuacct:/kubepods/besteffort/pod74c13223-5a00-11e9-b385-42010a80018d/34dc0b5e626f2c5c4c5170e34b10e7654ce36f0fcd532739f4445baabea03376\n\
                 1:name=systemd:/kubepods/besteffort/pod74c13223-5a00-11e9-b385-42010a80018d/34dc0b5e626f2c5c4c5170e34b10e7654ce36f0fcd532739f4445baabea03376\n",
                info(
                    Some("34dc0b5e626f2c5c4c5170e34b10e7654ce36f0fcd532739f4445baabea03376"),
                    Some("74c13223-5a00-11e9-b385-42010a80018d"),
                ),
            ),
            (
                "cgroupfs driver, guaranteed QoS, cgroup v2",
                "0::/kubepods/pod12345678-1234-1234-1234-123456789abc/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n",
                info(
                    Some("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"),
                    Some("12345678-1234-1234-1234-123456789abc"),
                ),
            ),
            (
                "CRI-O, systemd driver",
                "1:name=systemd:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod90d81341_92de_11e7_8cf2_507b9d4141fa.slice/crio-2227daf62df6694645fee5df53c1f91271546a9560e8600a525690ae252b7f63.scope\n",
                info(
                    Some("2227daf62df6694645fee5df53c1f91271546a9560e8600a525690ae252b7f63"),
                    Some("90d81341-92de-11e7-8cf2-507b9d4141fa"),
                ),
            ),
            (
                "CRI-O, cgroupfs driver",
                "0::/kubepods/besteffort/pod63b3ebfc-2890-11e9-8154-16bf8ef8d9dc/crio-73bfe475650de66df8e2affdc98d440dcbe84f8df83b6f75a68a82eb7026136a\n",
                info(
                    Some("73bfe475650de66df8e2affdc98d440dcbe84f8df83b6f75a68a82eb7026136a"),
                    Some("63b3ebfc-2890-11e9-8154-16bf8ef8d9dc"),
                ),
            ),
            (
                "CRI-O's conmon (the container's monitor, outside it): pod only",
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0b7632a2_a56e_4278_987a_22de18008dbe.slice/crio-conmon-0bc5eac79e3ae7a0c2651f14722aa10fa333eb2325c2ca97da33aa284cda81b0.scope\n",
                info(None, Some("0b7632a2-a56e-4278-987a-22de18008dbe")),
            ),
            (
                "podman's conmon",
                "0::/machine.slice/libpod-conmon-076fe917390d823e7882b64d95110bcbcc14641d2e764b32791bc1145d53e4f4.scope\n",
                info(None, None),
            ),
            (
                "Docker, systemd driver (CentOS), cgroup v1",
                "10:devices:/system.slice/docker-9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d.scope\n\
                 2:cpuacct,cpu:/system.slice/docker-9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d.scope\n\
                 1:name=systemd:/system.slice/docker-9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d.scope\n",
                info(
                    Some("9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d"),
                    None,
                ),
            ),
            (
                "Docker, cgroupfs driver, hybrid: the v2 line names the daemon only",
                "12:devices:/docker/051e2ee0bce99116029a13df4a9e943137f19f957f38ac02d6bad96f9b700f76\n\
                 5:rdma:/\n\
                 1:name=systemd:/docker/051e2ee0bce99116029a13df4a9e943137f19f957f38ac02d6bad96f9b700f76\n\
                 0::/system.slice/docker.service\n",
                info(
                    Some("051e2ee0bce99116029a13df4a9e943137f19f957f38ac02d6bad96f9b700f76"),
                    None,
                ),
            ),
            (
                "Docker, systemd driver, cgroup v2",
                "0::/system.slice/docker-cde7c2bab394630a42d73dc610b9c57415dced996106665d427f6d0566594411.scope\n",
                info(
                    Some("cde7c2bab394630a42d73dc610b9c57415dced996106665d427f6d0566594411"),
                    None,
                ),
            ),
            (
                "containerd, ctr in the k8s.io namespace",
                "0::/k8s.io/7951fb549ab99e0722a949b6c121634e1f3a36b5bacbe5392991e3b12251e6b8\n",
                info(
                    Some("7951fb549ab99e0722a949b6c121634e1f3a36b5bacbe5392991e3b12251e6b8"),
                    None,
                ),
            ),
            (
                "Amazon ECS",
                "3:cpuacct:/ecs/eb9d3d0c-8936-42d7-80d8-f82b2f1a629e/7e9139716d9e5d762d22f9f877b87d1be8b1449ac912c025a984750c5dbff157\n",
                info(
                    Some("7e9139716d9e5d762d22f9f877b87d1be8b1449ac912c025a984750c5dbff157"),
                    None,
                ),
            ),
            (
                "systemd slice:prefix:name form, static pod (32-hex UID)",
                "0::/kubepods-burstable-podbd12dd3393227d950605a2444b13c27a.slice:cri-containerd:d52db56a9c80d536a91354c0951c061187ca46249e64865a12703003d8f42366\n",
                info(
                    Some("d52db56a9c80d536a91354c0951c061187ca46249e64865a12703003d8f42366"),
                    Some("bd12dd3393227d950605a2444b13c27a"),
                ),
            ),
            (
                "kind / minikube: a pod's container inside the node's Docker container",
                "0::/system.slice/docker-9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d.scope/kubepods/besteffort/pode9b90526-f47d-11e8-b2a5-080027b9f4fb/15aa6e53b09a40c78558c6c31e36c88a15aa6e53b09a40c78558c6c31e36c88a\n",
                info(
                    Some("15aa6e53b09a40c78558c6c31e36c88a15aa6e53b09a40c78558c6c31e36c88a"),
                    Some("e9b90526-f47d-11e8-b2a5-080027b9f4fb"),
                ),
            ),
            (
                "relative to the reader's cgroup namespace (agent in a pod, cgroup v2)",
                "0::/../../kubepods-besteffort-pod729d2f46_480d_4796_a76c_e227e2671d31.slice/cri-containerd-605439acbd4fb18c145069289094b17f17e0cfa938f78012d4960bc797305f22.scope\n",
                info(
                    Some("605439acbd4fb18c145069289094b17f17e0cfa938f78012d4960bc797305f22"),
                    Some("729d2f46-480d-4796-a76c-e227e2671d31"),
                ),
            ),
            (
                "a host process: systemd session, hybrid layout",
                "12:devices:/user.slice\n\
                 6:pids:/user.slice/user-1000.slice/session-2.scope\n\
                 1:name=systemd:/user.slice/user-1000.slice/session-2.scope\n\
                 0::/user.slice/user-1000.slice/session-2.scope\n",
                info(None, None),
            ),
            (
                "a host process: a system service, cgroup v2",
                "0::/system.slice/nginx.service\n",
                info(None, None),
            ),
            ("the root cgroup", "0::/\n", info(None, None)),
        ];
        for (what, text, expected) in cases {
            assert_eq!(parse_cgroup(text.as_bytes()), *expected, "{what}");
        }
    }

    #[test]
    fn near_misses_are_not_ids() {
        for text in [
            // Too short, too long, upper case, not hex.
            "0::/docker/051e2ee0bce99116029a13df4a9e943137f19f957f38ac02d6bad96f9b700f7\n",
            "0::/docker/051e2ee0bce99116029a13df4a9e943137f19f957f38ac02d6bad96f9b700f766\n",
            "0::/docker/051E2EE0BCE99116029A13DF4A9E943137F19F957F38AC02D6BAD96F9B700F76\n",
            "0::/docker/051e2ee0bce99116029a13df4a9e943137f19f957f38ac02d6bad96f9b700fzz\n",
            // Not a runtime prefix.
            "0::/system.slice/rkt-051e2ee0bce99116029a13df4a9e943137f19f957f38ac02d6bad96f9b700f76.scope\n",
            // A pod-looking component outside kubepods, a slice that is not a pod's.
            "0::/pod12345678-1234-1234-1234-123456789abc/x\n",
            "0::/kubepods.slice/kubepods-burstable.slice\n",
            "0::/kubepods/burstable/pod1234\n",
            // Malformed lines.
            "no colons at all\n",
            "0:/docker/051e2ee0bce99116029a13df4a9e943137f19f957f38ac02d6bad96f9b700f76\n",
            "",
            "\n\n\n",
        ] {
            assert_eq!(
                parse_cgroup(text.as_bytes()),
                ContainerInfo::default(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn bounded_and_total() {
        // A line longer than the bound is ignored, the next one read.
        let long = format!("1:x:/{}/docker/{ID}\n0::/docker/{ID}\n", "a".repeat(5000));
        assert_eq!(parse_cgroup(long.as_bytes()).id.as_deref(), Some(ID));
        let only_long = format!("0::/{}/docker/{ID}\n", "a".repeat(5000));
        assert_eq!(parse_cgroup(only_long.as_bytes()), ContainerInfo::default());
        // Lines past the bound are not looked at.
        let many = format!("{}0::/docker/{ID}\n", "1:x:/\n".repeat(MAX_CGROUP_LINES));
        assert_eq!(parse_cgroup(many.as_bytes()), ContainerInfo::default());
        // No trailing newline, CR, NUL, invalid UTF-8: no panic.
        assert_eq!(
            parse_cgroup(format!("0::/docker/{ID}").as_bytes())
                .id
                .as_deref(),
            Some(ID)
        );
        for junk in [
            &b"\xff\xfe:\x00:/\xff/docker-\xff.scope"[..],
            b":::",
            b"::/",
            b"0::",
        ] {
            assert_eq!(parse_cgroup(junk), ContainerInfo::default());
        }
        // Every prefix of a real text parses.
        let real = format!(
            "0::/kubepods.slice/kubepods-pod0b7632a2_a56e_4278_987a_22de18008dbe.slice/cri-containerd-{ID}.scope\n"
        );
        for end in 0..=real.len() {
            let _ = parse_cgroup(&real.as_bytes()[..end]);
        }
        assert!(ContainerInfo::default().is_empty());
        assert!(!parse_cgroup(real.as_bytes()).is_empty());
    }

    #[test]
    fn live_self_is_parsed_without_error() {
        // Whatever cgroup this test runs in, reading and parsing it works.
        let text = std::fs::read("/proc/self/cgroup").unwrap();
        let _ = parse_cgroup(&text);
    }
}
