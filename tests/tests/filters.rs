//! Privileged: the optional target set (pids, cgroups) is applied in the kernel.
use std::{path::PathBuf, time::Duration};

use serde_json::Value;
use tracer_tests::*;

const WAIT: Duration = Duration::from_secs(20);

/// A cgroup v2 directory made for the test, removed (after its processes left) on drop.
struct Cgroup(PathBuf);

impl Cgroup {
    fn new(name: &str) -> Self {
        let mount = tracer::capture::cgroup::cgroup2_mount().expect("cgroup v2 is mounted");
        let dir = mount.join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn add(&self, pid: u32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Move whatever still runs in it back to the parent, then remove it.
        let parent = self.0.parent().unwrap().join("cgroup.procs");
        for pid in std::fs::read_to_string(self.0.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
        {
            let _ = std::fs::write(&parent, pid);
        }
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn server_paths(spans: &[Value], pid: u32) -> Vec<String> {
    spans
        .iter()
        .filter(|s| {
            s.kind() == "SPAN_KIND_SERVER" && s.res("process.pid").as_i64() == Some(pid as i64)
        })
        .map(|s| s.attr_str("url.path").to_owned())
        .collect()
}

/// Two servers, requests to both; only the targeted one is traced, and nothing else (the
/// curl clients are outside the target set).
fn only_the_target_is_traced(target_args: impl Fn(&Proc, &Proc) -> (Vec<String>, Option<Cgroup>)) {
    let (inside, port_in) = test_http_server().unwrap();
    let (outside, port_out) = test_http_server().unwrap();
    let (args, _cgroup) = target_args(&inside, &outside);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sc = Scenario::with_args(&args).start().unwrap();
    curl(&[
        "-o",
        "/dev/null",
        &format!("http://127.0.0.1:{port_out}/outside"),
    ])
    .unwrap();
    curl(&[
        "-o",
        "/dev/null",
        &format!("http://127.0.0.1:{port_in}/inside"),
    ])
    .unwrap();
    sc.wait_spans(1, WAIT, |s| s.attr_str("url.path") == "/inside");
    std::thread::sleep(Duration::from_millis(500));
    let spans = sc.stop().unwrap().spans_where(|s| {
        let port = s.attr_i64("network.peer.port");
        port == port_in as i64
            || port == port_out as i64
            || [inside.pid(), outside.pid()]
                .iter()
                .any(|p| s.res("process.pid").as_i64() == Some(*p as i64))
    });
    assert_eq!(
        server_paths(&spans, inside.pid()),
        vec!["/inside"],
        "{spans:#?}"
    );
    assert_eq!(spans.len(), 1, "nothing outside the target set: {spans:#?}");
}

#[test]
fn pid_filter() {
    require_root();
    only_the_target_is_traced(|inside, _| (vec!["--pid".into(), inside.pid().to_string()], None));
}

#[test]
fn cgroup_filter() {
    require_root();
    only_the_target_is_traced(|inside, _| {
        let cg = Cgroup::new("tracer-test");
        cg.add(inside.pid());
        (
            vec!["--cgroup".into(), cg.0.display().to_string()],
            Some(cg),
        )
    });
}
