//! Privileged: the real programs in the running kernel, real traffic, events observed in
//! userspace. These fail (never skip) when the programs cannot be loaded.
use std::time::{Duration, Instant};

use tracer::capture::{
    Capture, CaptureOptions,
    events::{Event, decode},
};
use tracer_common::{Direction, Protocol, Role};
use tracer_tests::*;

#[test]
fn programs_load_attach_and_report_real_http_traffic() {
    require_root();
    let dir = TempDir::new("kernel");
    std::fs::write(dir.path().join("probe.txt"), "hello from the kernel test\n").unwrap();
    let port = free_port();
    let mut capture = Capture::load(&CaptureOptions {
        ports: vec![port],
        ..Default::default()
    })
    .expect("the kernel programs must load and attach");
    let ids = capture.program_ids();
    assert_eq!(
        ids.len(),
        tracer::capture::TRACEPOINTS.len()
            + tracer_common::TailCall::COUNT
            + tracer::capture::tls::PROGRAMS.len(),
        "one program per tracepoint, the tail-called context programs, and the TLS probes' \
         programs (loaded, attached per file); injection is off in the default options"
    );
    let in_kernel = loaded_program_ids();
    assert!(
        ids.iter().all(|id| in_kernel.contains(id)),
        "kernel lists every program"
    );

    let mut ring = capture.take_ring().unwrap();
    let server = python_http_server(port, dir.path()).unwrap();
    let body = curl(&[&format!("http://127.0.0.1:{port}/probe.txt")]).unwrap();
    assert_eq!(body, "hello from the kernel test\n");

    // Collect until we have seen the request on both ends and the response on both ends.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        while let Some(rec) = ring.next() {
            if let Some(Event::Data { header, payload }) = decode(&rec) {
                seen.push((header, payload.to_vec()));
            }
        }
        let have = |pid_is_server: bool, dir: Direction, prefix: &[u8]| {
            seen.iter().any(|(h, p)| {
                (h.header.pid == server.pid()) == pid_is_server
                    && Direction::from_u8(h.direction) == dir
                    && p.starts_with(prefix)
            })
        };
        if have(true, Direction::Ingress, b"GET /probe.txt HTTP/1.1")
            && have(true, Direction::Egress, b"HTTP/1.0 200")
            && have(false, Direction::Egress, b"GET /probe.txt HTTP/1.1")
            && have(false, Direction::Ingress, b"HTTP/1.0 200")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let server_read = seen
        .iter()
        .find(|(h, p)| h.header.pid == server.pid() && p.starts_with(b"GET /probe.txt"))
        .unwrap_or_else(|| panic!("no server-side request event; saw {} events", seen.len()));
    let h = &server_read.0;
    assert_eq!(
        Role::from_u8(h.role),
        Role::Server,
        "accept(2) marks the server side"
    );
    assert_eq!(Protocol::from_u8(h.protocol), Protocol::Http1);
    assert_eq!(h.addr.local_port, port);
    assert_eq!(&h.addr.local_addr[..4], &[127, 0, 0, 1]);
    assert_eq!(h.position, 0, "first request byte of a new connection");
    assert!(h.ts_enter <= h.header.ts);
    let client_write = seen
        .iter()
        .find(|(h, p)| h.header.pid != server.pid() && p.starts_with(b"GET /probe.txt"))
        .expect("client-side request event");
    assert_eq!(
        Role::from_u8(client_write.0.role),
        Role::Client,
        "connect(2) marks the client"
    );
    assert_eq!(client_write.0.addr.remote_port, port);
    assert!(
        seen.iter().any(|(h, p)| h.header.pid == server.pid()
            && Direction::from_u8(h.direction) == Direction::Egress
            && p.windows(26).any(|w| w == b"hello from the kernel test")),
        "the response body is captured too"
    );

    let drops = capture.drops().unwrap();
    assert_eq!(drops["ringbuf_full"], 0);
    drop(ring);
    drop(capture);
    let after = loaded_program_ids();
    assert!(
        ids.iter().all(|id| !after.contains(id)),
        "dropping the capture unloads everything"
    );
}
