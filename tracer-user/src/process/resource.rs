//! A process's OpenTelemetry resource from what procfs said and its environment, with the
//! precedence between the process's own attributes, the agent's and what the tracer detects
//! (see the module doc of `process`).
use super::otel_env::{parse_environ, parse_resource_attributes};
use super::proc_info::ProcInfo;
use crate::span::{AttrValue, Resource, truncate_value};

/// `process.command_line` is cut to this many bytes (at a character boundary).
pub const MAX_COMMAND_LINE_BYTES: usize = 1024;
/// `service.name` when nothing better is known.
pub const UNKNOWN_SERVICE: &str = "unknown_service";
/// `telemetry.sdk.name`.
pub const SDK_NAME: &str = "tracer";

/// Keys the tracer sets from what it observes; environment values never replace them.
const OBSERVED_KEYS: &[&str] = &[
    "process.pid",
    "process.executable.name",
    "process.executable.path",
    "process.command_line",
    "container.id",
    "telemetry.sdk.name",
    "telemetry.sdk.version",
];

/// Arguments joined by spaces, lossy UTF-8, at most [`MAX_COMMAND_LINE_BYTES`].
fn command_line(cmdline: &[u8]) -> String {
    let trimmed = match cmdline.iter().rposition(|b| *b != 0) {
        Some(last) => &cmdline[..=last],
        None => return String::new(),
    };
    let joined: Vec<u8> = trimmed
        .iter()
        .map(|b| if *b == 0 { b' ' } else { *b })
        .collect();
    let s = String::from_utf8_lossy(&joined);
    truncate_value(&s, MAX_COMMAND_LINE_BYTES).to_owned()
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn non_empty(s: &str) -> Option<&str> {
    let s = s.trim();
    (!s.is_empty()).then_some(s)
}

pub(super) fn build_resource(
    pid: u32,
    info: &ProcInfo,
    host_name: Option<&str>,
    extra: &[(String, String)],
) -> Resource {
    let env = parse_environ(&info.environ);
    let own = env
        .resource_attributes
        .as_deref()
        .and_then(parse_resource_attributes)
        .unwrap_or_default();

    let exe_name = info.exe.as_deref().map(basename).and_then(non_empty);
    let executable_name = exe_name.or_else(|| info.comm.as_deref().and_then(non_empty));
    let service = env
        .service_name
        .as_deref()
        .and_then(non_empty)
        .or_else(|| {
            own.iter()
                .find(|(k, _)| k == "service.name")
                .and_then(|(_, v)| non_empty(v))
        })
        .or(executable_name)
        .unwrap_or(UNKNOWN_SERVICE);

    let mut attrs: Vec<(String, AttrValue)> = Vec::with_capacity(10 + own.len() + extra.len());
    attrs.push(("service.name".into(), service.into()));
    attrs.push(("process.pid".into(), i64::from(pid).into()));
    if let Some(name) = executable_name {
        attrs.push(("process.executable.name".into(), name.into()));
    }
    if let Some(path) = info.exe.as_deref().and_then(non_empty) {
        attrs.push(("process.executable.path".into(), path.into()));
    }
    let cmd = command_line(&info.cmdline);
    if !cmd.is_empty() {
        attrs.push(("process.command_line".into(), cmd.into()));
    }
    if let Some(id) = &info.container.id {
        attrs.push(("container.id".into(), id.as_str().into()));
    }
    add_common(&mut attrs, &own, host_name, extra);
    Resource {
        pid,
        attributes: attrs,
    }
}

pub(super) fn minimal_resource(
    pid: u32,
    host_name: Option<&str>,
    extra: &[(String, String)],
) -> Resource {
    let mut attrs: Vec<(String, AttrValue)> = vec![
        ("service.name".into(), UNKNOWN_SERVICE.into()),
        ("process.pid".into(), i64::from(pid).into()),
    ];
    add_common(&mut attrs, &[], host_name, extra);
    Resource {
        pid,
        attributes: attrs,
    }
}

/// `host.name`, `telemetry.sdk.*`, then the process's own attributes and the agent's, with
/// the precedence the module documents.
fn add_common(
    attrs: &mut Vec<(String, AttrValue)>,
    own: &[(String, String)],
    host_name: Option<&str>,
    extra: &[(String, String)],
) {
    attrs.push(("telemetry.sdk.name".into(), SDK_NAME.into()));
    attrs.push((
        "telemetry.sdk.version".into(),
        env!("CARGO_PKG_VERSION").into(),
    ));
    // `service.name` was decided already (the agent's own never applies).
    let from_env = own.iter().chain(extra).filter(|(k, _)| k != "service.name");
    let mut host_set = false;
    for (k, v) in from_env {
        if OBSERVED_KEYS.contains(&k.as_str()) || attrs.iter().any(|(ak, _)| ak == k) {
            continue;
        }
        if k == "host.name" {
            host_set = true;
        }
        attrs.push((k.clone(), v.as_str().into()));
    }
    if !host_set && let Some(h) = host_name {
        attrs.push(("host.name".into(), h.into()));
    }
}

/// This machine's hostname (UTS namespace of the agent).
pub(super) fn system_host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|s| s.trim().to_owned());
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::test_support::{attr, info, keys, s};

    #[test]
    fn command_line_join_and_bound() {
        assert_eq!(
            command_line(b"python3\0-m\0http.server\0"),
            "python3 -m http.server"
        );
        assert_eq!(
            command_line(b"nginx: master process\0\0"),
            "nginx: master process"
        );
        assert_eq!(command_line(b""), "");
        assert_eq!(command_line(b"\0\0"), "");
        assert_eq!(command_line(b"a\0\0b"), "a  b");
        let long = "é".repeat(MAX_COMMAND_LINE_BYTES);
        let cut = command_line(long.as_bytes());
        assert!(cut.len() <= MAX_COMMAND_LINE_BYTES && cut.len() >= MAX_COMMAND_LINE_BYTES - 1);
        assert_eq!(command_line(b"x\xffy"), "x\u{fffd}y");
    }

    // ---- building ----

    #[test]
    fn service_name_from_otel_service_name() {
        let i = info(
            Some("/usr/bin/python3.11"),
            Some("python3"),
            b"python3\0app.py\0",
            b"OTEL_SERVICE_NAME=checkout\0OTEL_RESOURCE_ATTRIBUTES=service.name=other,team=pay\0",
        );
        let r = build_resource(7, &i, Some("node-1"), &[]);
        assert_eq!(r.service_name(), "checkout");
        assert_eq!(r.pid, 7);
        assert_eq!(attr(&r, "process.pid"), Some(&AttrValue::Int(7)));
        assert_eq!(
            s(&r, "process.executable.name").as_deref(),
            Some("python3.11")
        );
        assert_eq!(
            s(&r, "process.executable.path").as_deref(),
            Some("/usr/bin/python3.11")
        );
        assert_eq!(
            s(&r, "process.command_line").as_deref(),
            Some("python3 app.py")
        );
        assert_eq!(s(&r, "host.name").as_deref(), Some("node-1"));
        assert_eq!(s(&r, "telemetry.sdk.name").as_deref(), Some("tracer"));
        assert_eq!(
            s(&r, "telemetry.sdk.version").as_deref(),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(s(&r, "team").as_deref(), Some("pay"));
        // service.name appears once.
        assert_eq!(keys(&r).iter().filter(|k| **k == "service.name").count(), 1);
    }

    #[test]
    fn service_name_from_resource_attributes() {
        let i = info(
            Some("/app/server"),
            None,
            b"",
            b"OTEL_RESOURCE_ATTRIBUTES=deployment.environment=prod, service.name=cart%20svc\0",
        );
        let r = build_resource(1, &i, None, &[]);
        assert_eq!(r.service_name(), "cart svc");
        assert_eq!(s(&r, "deployment.environment").as_deref(), Some("prod"));
        assert_eq!(attr(&r, "process.command_line"), None);
        assert_eq!(attr(&r, "host.name"), None);
        // An empty OTEL_SERVICE_NAME does not count.
        let i = info(
            Some("/app/server"),
            None,
            b"",
            b"OTEL_SERVICE_NAME= \0OTEL_RESOURCE_ATTRIBUTES=service.name=x\0",
        );
        assert_eq!(build_resource(1, &i, None, &[]).service_name(), "x");
    }

    #[test]
    fn service_name_from_executable() {
        let r = build_resource(
            1,
            &info(
                Some("/usr/bin/curl"),
                Some("curl"),
                b"curl\0-s\0",
                b"PATH=/bin\0",
            ),
            None,
            &[],
        );
        assert_eq!(r.service_name(), "curl");
        let r = build_resource(
            1,
            &info(Some("/opt/app/bin/my-svc"), Some("my-svc"), b"", b""),
            None,
            &[],
        );
        assert_eq!(r.service_name(), "my-svc");
        // Unreadable exe: comm.
        let r = build_resource(1, &info(None, Some("kworker/0:1"), b"", b""), None, &[]);
        assert_eq!(r.service_name(), "kworker/0:1");
        assert_eq!(
            s(&r, "process.executable.name").as_deref(),
            Some("kworker/0:1")
        );
        assert_eq!(attr(&r, "process.executable.path"), None);
        // Nothing at all.
        let r = build_resource(1, &info(None, None, b"", b""), None, &[]);
        assert_eq!(r.service_name(), UNKNOWN_SERVICE);
        // Invalid OTEL_RESOURCE_ATTRIBUTES: discarded whole, exe name used.
        let i = info(
            Some("/bin/app"),
            None,
            b"",
            b"OTEL_RESOURCE_ATTRIBUTES=service.name=x,bad\0",
        );
        let r = build_resource(1, &i, None, &[]);
        assert_eq!(r.service_name(), "app");
        assert_eq!(attr(&r, "bad"), None);
    }

    #[test]
    fn precedence_of_attributes() {
        let extra = vec![
            ("deployment.environment".to_owned(), "agent-env".to_owned()),
            ("k8s.cluster.name".to_owned(), "c1".to_owned()),
            ("service.name".to_owned(), "the-agent".to_owned()),
            ("host.name".to_owned(), "agent-host".to_owned()),
            ("process.pid".to_owned(), "1".to_owned()),
        ];
        let i = info(
            Some("/bin/app"),
            None,
            b"",
            b"OTEL_RESOURCE_ATTRIBUTES=deployment.environment=proc-env,process.pid=99,telemetry.sdk.name=otel\0",
        );
        let r = build_resource(5, &i, Some("detected"), &extra);
        // The agent's service.name is ignored.
        assert_eq!(r.service_name(), "app");
        // Process beats agent; agent beats detection; observed keys are fixed.
        assert_eq!(s(&r, "deployment.environment").as_deref(), Some("proc-env"));
        assert_eq!(s(&r, "k8s.cluster.name").as_deref(), Some("c1"));
        assert_eq!(s(&r, "host.name").as_deref(), Some("agent-host"));
        assert_eq!(attr(&r, "process.pid"), Some(&AttrValue::Int(5)));
        assert_eq!(s(&r, "telemetry.sdk.name").as_deref(), Some("tracer"));
        // No duplicate keys.
        let mut k = keys(&r);
        let n = k.len();
        k.sort_unstable();
        k.dedup();
        assert_eq!(k.len(), n);

        // The process's own host.name wins over the agent's.
        let i = info(
            Some("/bin/app"),
            None,
            b"",
            b"OTEL_RESOURCE_ATTRIBUTES=host.name=pod-7\0",
        );
        assert_eq!(
            s(
                &build_resource(5, &i, Some("detected"), &extra),
                "host.name"
            )
            .as_deref(),
            Some("pod-7")
        );
    }

    #[test]
    fn container_id_of_a_containerised_process() {
        let id = "076fe917390d823e7882b64d95110bcbcc14641d2e764b32791bc1145d53e4f4";
        let mut i = info(
            Some("/usr/bin/python3.11"),
            Some("python3"),
            b"python3\0-m\0http.server\0",
            b"OTEL_SERVICE_NAME=shop\0OTEL_RESOURCE_ATTRIBUTES=container.id=forged,team=a\0",
        );
        i.container.id = Some(id.into());
        i.container.pod_uid = Some("0b7632a2-a56e-4278-987a-22de18008dbe".into());
        let r = build_resource(9, &i, Some("node-1"), &[]);
        // The container's own OTEL_SERVICE_NAME names it; the id observed is never overridden.
        assert_eq!(r.service_name(), "shop");
        assert_eq!(s(&r, "container.id").as_deref(), Some(id));
        assert_eq!(keys(&r).iter().filter(|k| **k == "container.id").count(), 1);
        assert_eq!(s(&r, "team").as_deref(), Some("a"));
        // Without OTEL_SERVICE_NAME: the executable's name, as for a host process.
        i.environ.clear();
        let r = build_resource(9, &i, None, &[]);
        assert_eq!(r.service_name(), "python3.11");
        assert_eq!(s(&r, "container.id").as_deref(), Some(id));
        // A host process has none.
        let r = build_resource(9, &info(Some("/bin/app"), None, b"", b""), None, &[]);
        assert_eq!(attr(&r, "container.id"), None);
    }

    #[test]
    fn minimal_resource_shape() {
        let extra = vec![
            ("service.name".to_owned(), "agent".to_owned()),
            ("a".to_owned(), "b".to_owned()),
        ];
        let r = minimal_resource(123, Some("h"), &extra);
        assert_eq!(r.service_name(), UNKNOWN_SERVICE);
        assert_eq!(attr(&r, "process.pid"), Some(&AttrValue::Int(123)));
        assert_eq!(s(&r, "host.name").as_deref(), Some("h"));
        assert_eq!(s(&r, "a").as_deref(), Some("b"));
    }
}
