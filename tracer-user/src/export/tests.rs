//! Pipeline and transport tests against in-process endpoints (all on 127.0.0.1).
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use tokio::sync::mpsc;

use super::otlp::tests::{resource, span};
use super::*;

fn cfg(target: Target) -> ExportConfig {
    ExportConfig {
        target,
        headers: vec![("x-api-key".into(), "s3cr3t".into())],
        timeout: Duration::from_secs(5),
        compression: Compression::None,
        max_queue_size: 64,
        schedule_delay: Duration::from_millis(10),
        max_batch_size: 16,
        export_timeout: Duration::from_secs(5),
    }
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Accepts connections and never answers; returns its port.
async fn hanging_endpoint() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    port
}

// ---- queue ----

#[tokio::test]
async fn queue_full_drops_and_counts() {
    let stats = Arc::new(ExportStats::default());
    let mut c = cfg(Target::None);
    c.max_queue_size = 4;
    let (tx, handle) = spawn_with_config(c, stats.clone()).unwrap();
    let r = resource(1, "a");
    // The current-thread runtime does not run the export task until we yield.
    let accepted = (0..10).filter(|i| tx.send(span(&r, *i))).count();
    assert_eq!(accepted, 4);
    let s = stats.snapshot();
    assert_eq!(s.spans_enqueued, 4);
    assert_eq!(s.spans_dropped_queue_full, 6);
    assert_eq!(s.queue_len, 4);
    handle.shutdown().await;
    let s = stats.snapshot();
    assert_eq!(s.spans_exported, 4);
    assert_eq!(s.queue_len, 0);
    assert!(!tx.send(span(&r, 1)), "closed after shutdown");
    assert_eq!(stats.snapshot().spans_dropped_closed, 1);
}

#[tokio::test]
async fn batches_by_size_and_flushes_on_close() {
    let stats = Arc::new(ExportStats::default());
    let (tx, handle) = spawn_with_config(cfg(Target::None), stats.clone()).unwrap();
    let r = resource(1, "a");
    for i in 0..40 {
        assert!(tx.send(span(&r, i)));
    }
    drop(tx);
    tokio::time::timeout(Duration::from_secs(5), handle.join())
        .await
        .unwrap();
    let s = stats.snapshot();
    assert_eq!(
        (s.spans_enqueued, s.spans_exported, s.queue_len),
        (40, 40, 0)
    );
}

// ---- failures ----

async fn run_failing(c: ExportConfig, n: u8) -> (StatsSnapshot, Duration) {
    let stats = Arc::new(ExportStats::default());
    let t0 = Instant::now();
    let (tx, handle) = spawn_with_config(c, stats.clone()).unwrap();
    let r = resource(1, "a");
    for i in 0..n {
        assert!(tx.send(span(&r, i)));
    }
    drop(tx);
    tokio::time::timeout(Duration::from_secs(20), handle.join())
        .await
        .expect("export task must end by itself");
    (stats.snapshot(), t0.elapsed())
}

#[tokio::test]
async fn dead_endpoint_fails_fast_and_counts() {
    for target in [
        Target::Grpc(format!("http://127.0.0.1:{}", closed_port())),
        Target::Http(format!("http://127.0.0.1:{}/v1/traces", closed_port())),
    ] {
        let mut c = cfg(target.clone());
        // A refused connection must not wait for the 5 s request timeout: several attempts
        // fit in the retry budget (generous: the machine may be busy with other tests).
        c.export_timeout = Duration::from_millis(3000);
        let (s, elapsed) = run_failing(c, 3).await;
        assert_eq!(s.spans_failed, 3, "{target:?} {s:?}");
        assert_eq!(s.spans_exported, 0);
        assert!(s.export_requests >= 2, "{target:?} retried: {s:?}");
        assert_eq!(s.export_errors, s.export_requests);
        assert!(
            elapsed < Duration::from_secs(8),
            "{target:?} took {elapsed:?}"
        );
    }
}

#[tokio::test]
async fn hanging_endpoint_times_out() {
    for target in [
        Target::Grpc(format!("http://127.0.0.1:{}", hanging_endpoint().await)),
        Target::Http(format!(
            "http://127.0.0.1:{}/v1/traces",
            hanging_endpoint().await
        )),
    ] {
        let mut c = cfg(target.clone());
        c.timeout = Duration::from_millis(300);
        c.export_timeout = Duration::from_millis(1000);
        let (s, elapsed) = run_failing(c, 2).await;
        assert_eq!(s.spans_failed, 2, "{target:?} {s:?}");
        assert!(s.export_errors >= 1, "{s:?}");
        assert!(
            elapsed < Duration::from_secs(8),
            "{target:?} took {elapsed:?}"
        );
    }
}

#[tokio::test]
async fn shutdown_is_bounded_while_endpoint_hangs() {
    let port = hanging_endpoint().await;
    let stats = Arc::new(ExportStats::default());
    let mut c = cfg(Target::Http(format!("http://127.0.0.1:{port}/v1/traces")));
    c.timeout = Duration::from_millis(400);
    c.export_timeout = Duration::from_secs(600);
    let (tx, handle) = spawn_with_config(c, stats.clone()).unwrap();
    let r = resource(1, "a");
    for i in 0..20 {
        tx.send(span(&r, i));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t0 = Instant::now();
    handle.shutdown().await;
    let elapsed = t0.elapsed();
    assert!(
        elapsed < Duration::from_millis(1500),
        "shutdown took {elapsed:?}"
    );
    let s = stats.snapshot();
    assert_eq!(s.spans_failed, 20, "{s:?}");
    assert_eq!(s.queue_len, 0);
}

// ---- OTLP/gRPC round trip ----

struct MockTrace {
    tx: mpsc::UnboundedSender<(tonic::metadata::MetadataMap, ExportTraceServiceRequest)>,
    fail_first: usize,
    calls: AtomicUsize,
    reject: i64,
}

#[tonic::async_trait]
impl TraceService for MockTrace {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.fail_first {
            return Err(tonic::Status::unavailable("warming up"));
        }
        let md = request.metadata().clone();
        let _ = self.tx.send((md, request.into_inner()));
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: (self.reject > 0).then(|| ExportTracePartialSuccess {
                rejected_spans: self.reject,
                error_message: "too old".into(),
            }),
        }))
    }
}

type Received = mpsc::UnboundedReceiver<(tonic::metadata::MetadataMap, ExportTraceServiceRequest)>;

async fn grpc_server(fail_first: usize, reject: i64) -> (u16, Received) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    let svc = TraceServiceServer::new(MockTrace {
        tx,
        fail_first,
        calls: AtomicUsize::new(0),
        reject,
    })
    .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    (port, rx)
}

fn check_request(req: &ExportTraceServiceRequest) {
    assert_eq!(req.resource_spans.len(), 2);
    let names: Vec<_> = req
        .resource_spans
        .iter()
        .map(|rs| {
            let attrs = &rs.resource.as_ref().unwrap().attributes;
            match attrs[0].value.as_ref().unwrap().value.as_ref().unwrap() {
                Value::StringValue(s) => s.clone(),
                v => panic!("{v:?}"),
            }
        })
        .collect();
    assert_eq!(names, ["curl", "nginx"]);
    let spans = &req.resource_spans[0].scope_spans[0].spans;
    assert_eq!(spans.len(), 2);
    assert_eq!(spans[0].trace_id, vec![1; 16]);
    assert_eq!(spans[1].span_id, vec![3; 8]);
    assert_eq!(
        req.resource_spans[0].scope_spans[0]
            .scope
            .as_ref()
            .unwrap()
            .name,
        "tracer"
    );
}

async fn send_three(c: ExportConfig) -> (Arc<ExportStats>, ExportHandle) {
    let stats = Arc::new(ExportStats::default());
    let mut c = c;
    c.schedule_delay = Duration::from_millis(100);
    let (tx, handle) = spawn_with_config(c, stats.clone()).unwrap();
    let (a, b) = (resource(10, "curl"), resource(20, "nginx"));
    for s in [span(&a, 1), span(&b, 2), span(&a, 3)] {
        assert!(tx.send(s));
    }
    (stats, handle)
}

#[tokio::test]
async fn grpc_round_trip() {
    for compression in [Compression::None, Compression::Gzip] {
        let (port, mut rx) = grpc_server(0, 0).await;
        let mut c = cfg(Target::Grpc(format!("http://127.0.0.1:{port}")));
        c.compression = compression;
        let (stats, handle) = send_three(c).await;
        let (md, req) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(md.get("x-api-key").unwrap(), "s3cr3t");
        assert!(
            md.get("user-agent")
                .unwrap()
                .to_str()
                .unwrap()
                .contains("tracer/")
        );
        if compression == Compression::Gzip {
            assert_eq!(md.get("grpc-encoding").unwrap(), "gzip");
        }
        check_request(&req);
        handle.shutdown().await;
        let s = stats.snapshot();
        assert_eq!(
            (s.spans_exported, s.spans_failed, s.export_errors),
            (3, 0, 0),
            "{s:?}"
        );
    }
}

#[tokio::test]
async fn grpc_retries_unavailable_and_counts_partial_success() {
    let (port, mut rx) = grpc_server(2, 1).await;
    let (stats, handle) = send_three(cfg(Target::Grpc(format!("http://127.0.0.1:{port}")))).await;
    let (_, req) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    check_request(&req);
    handle.shutdown().await;
    let s = stats.snapshot();
    assert_eq!(s.export_requests, 3, "{s:?}");
    assert_eq!(s.export_errors, 2, "{s:?}");
    assert_eq!((s.spans_exported, s.spans_failed), (2, 1), "{s:?}");
}

// ---- OTLP/HTTP round trip ----

struct HttpRequest {
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HttpRequest {
    fn header(&self, k: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(h, _)| h == k)
            .map(|(_, v)| v.as_str())
    }
}

/// A tiny blocking HTTP/1.1 server: answers the i-th request with `statuses[i]` (200 after
/// the list) and reports every request.
fn http_server(statuses: Vec<u16>) -> (u16, std::sync::mpsc::Receiver<HttpRequest>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    let count = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { break };
            let (tx, count, statuses) = (tx.clone(), count.clone(), statuses.clone());
            std::thread::spawn(move || {
                let mut w = conn.try_clone().unwrap();
                let mut r = BufReader::new(conn);
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split(' ').nth(1).unwrap_or("").to_owned();
                    let mut headers = Vec::new();
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
                        }
                    }
                    let len: usize = headers
                        .iter()
                        .find(|(k, _)| k == "content-length")
                        .and_then(|(_, v)| v.parse().ok())
                        .unwrap_or(0);
                    let mut body = vec![0; len];
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                    let i = count.fetch_add(1, Ordering::SeqCst);
                    let status = statuses.get(i).copied().unwrap_or(200);
                    let _ = tx.send(HttpRequest {
                        path,
                        headers,
                        body,
                    });
                    let resp_body = if status == 200 {
                        ExportTraceServiceResponse::default().encode_to_vec()
                    } else {
                        b"nope".to_vec()
                    };
                    let head = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: {}\r\ncontent-length: {}\r\n\r\n",
                        if status == 200 {
                            "application/x-protobuf"
                        } else {
                            "text/plain"
                        },
                        resp_body.len()
                    );
                    if w.write_all(head.as_bytes())
                        .and_then(|()| w.write_all(&resp_body))
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (port, rx)
}

fn recv_http(rx: &std::sync::mpsc::Receiver<HttpRequest>) -> HttpRequest {
    rx.recv_timeout(Duration::from_secs(5)).expect("a request")
}

#[tokio::test]
async fn http_round_trip() {
    for compression in [Compression::None, Compression::Gzip] {
        let (port, rx) = http_server(vec![]);
        let mut c = cfg(Target::Http(format!("http://127.0.0.1:{port}/v1/traces")));
        c.compression = compression;
        let (stats, handle) = send_three(c).await;
        handle.shutdown().await;
        let req = recv_http(&rx);
        assert_eq!(req.path, "/v1/traces");
        assert_eq!(req.header("content-type"), Some("application/x-protobuf"));
        assert_eq!(req.header("x-api-key"), Some("s3cr3t"));
        let body = if compression == Compression::Gzip {
            assert_eq!(req.header("content-encoding"), Some("gzip"));
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&req.body[..])
                .read_to_end(&mut out)
                .unwrap();
            out
        } else {
            assert_eq!(req.header("content-encoding"), None);
            req.body
        };
        check_request(&ExportTraceServiceRequest::decode(&body[..]).unwrap());
        let s = stats.snapshot();
        assert_eq!(
            (s.spans_exported, s.spans_failed, s.export_requests),
            (3, 0, 1),
            "{s:?}"
        );
    }
}

#[tokio::test]
async fn http_retries_503_and_drops_on_400() {
    let (port, rx) = http_server(vec![503, 429]);
    let (stats, handle) = send_three(cfg(Target::Http(format!(
        "http://127.0.0.1:{port}/v1/traces"
    ))))
    .await;
    handle.shutdown().await;
    for _ in 0..3 {
        recv_http(&rx);
    }
    let s = stats.snapshot();
    assert_eq!((s.export_requests, s.export_errors), (3, 2), "{s:?}");
    assert_eq!((s.spans_exported, s.spans_failed), (3, 0), "{s:?}");

    let (port, _rx) = http_server(vec![400, 400]);
    let (stats, handle) = send_three(cfg(Target::Http(format!(
        "http://127.0.0.1:{port}/v1/traces"
    ))))
    .await;
    handle.shutdown().await;
    let s = stats.snapshot();
    assert_eq!(
        (s.export_requests, s.export_errors),
        (1, 1),
        "not retried: {s:?}"
    );
    assert_eq!((s.spans_exported, s.spans_failed), (0, 3), "{s:?}");
}

#[tokio::test]
async fn https_endpoints_use_tls() {
    // A plain-text server behind an https:// URL: the TLS handshake fails, cleanly.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
        }
    });
    for target in [
        Target::Grpc(format!("https://127.0.0.1:{port}")),
        Target::Http(format!("https://127.0.0.1:{port}/v1/traces")),
    ] {
        let mut c = cfg(target.clone());
        c.timeout = Duration::from_millis(500);
        c.export_timeout = Duration::from_millis(300);
        let (s, _) = run_failing(c, 1).await;
        assert_eq!(
            (s.spans_failed, s.spans_exported),
            (1, 0),
            "{target:?} {s:?}"
        );
        assert!(s.export_errors >= 1);
    }
}
