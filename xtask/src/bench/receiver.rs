//! A counting OTLP/gRPC receiver, in this process on its own small runtime: the traced
//! rounds export to it, and a round's spans are the counts after it minus those before. Its
//! thread runs at SCHED_IDLE (a backend elsewhere, not part of the measured node).
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use anyhow::Result;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
};
use serde_json::{Value as Json, json};

use crate::util::step;

/// OTLP span kinds.
pub(super) const KIND_SERVER: i32 = 2;
pub(super) const KIND_CLIENT: i32 = 3;

/// Spans received by (service.name, kind), and by (kind, `rpc.grpc.status_code`) for gRPC.
#[derive(Clone, Default)]
pub(super) struct Counts(BTreeMap<(String, i32), u64>, BTreeMap<(i32, i64), u64>);

impl Counts {
    pub(super) fn since(&self, before: &Counts) -> Spans {
        let mut by = BTreeMap::new();
        for (k, v) in &self.0 {
            let d = v - before.0.get(k).copied().unwrap_or(0);
            if d > 0 {
                by.insert(k.clone(), d);
            }
        }
        let mut grpc_status = BTreeMap::new();
        for (k, v) in &self.1 {
            let d = v - before.1.get(k).copied().unwrap_or(0);
            if d > 0 {
                grpc_status.insert(*k, d);
            }
        }
        let kind = |want| {
            by.iter()
                .filter(|((_, k), _)| *k == want)
                .map(|(_, v)| v)
                .sum()
        };
        Spans {
            server: kind(KIND_SERVER),
            client: kind(KIND_CLIENT),
            by,
            grpc_status,
        }
    }
}

pub(super) struct Spans {
    pub(super) server: u64,
    pub(super) client: u64,
    by: BTreeMap<(String, i32), u64>,
    grpc_status: BTreeMap<(i32, i64), u64>,
}

impl Spans {
    /// Spans of `kind` whose `rpc.grpc.status_code` is `code` (`None`: any code).
    pub(super) fn grpc(&self, kind: i32, code: Option<i64>) -> u64 {
        self.grpc_status
            .iter()
            .filter(|((k, c), _)| *k == kind && code.is_none_or(|want| *c == want))
            .map(|(_, v)| v)
            .sum()
    }

    pub(super) fn by_service_kind(&self) -> Json {
        let kind = |k: i32| match k {
            KIND_SERVER => "server".to_owned(),
            KIND_CLIENT => "client".to_owned(),
            k => format!("kind{k}"),
        };
        self.by
            .iter()
            .map(|((s, k), v)| (format!("{s}/{}", kind(*k)), json!(v)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

struct Counter(Arc<Mutex<Counts>>);

#[tonic::async_trait]
impl TraceService for Counter {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        let mut counts = self.0.lock().unwrap();
        for rs in &request.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| "?".to_owned());
            for ss in &rs.scope_spans {
                for span in &ss.spans {
                    *counts.0.entry((service.clone(), span.kind)).or_default() += 1;
                    let grpc_status = span
                        .attributes
                        .iter()
                        .find(|a| a.key == "rpc.grpc.status_code")
                        .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                            Value::IntValue(v) => Some(*v),
                            _ => None,
                        });
                    if let Some(code) = grpc_status {
                        *counts.1.entry((span.kind, code)).or_default() += 1;
                    }
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

pub(super) struct Receiver {
    pub(super) port: u16,
    counts: Arc<Mutex<Counts>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Receiver {
    pub(super) fn start() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-receiver")
            // The receiver stands in for a backend on another machine: on this small one it
            // takes only idle CPU, so decoding the batches is not charged to the traced
            // service's latency (at normal priority it added about 2 ms to the p99 at 5k
            // req/s). What it cannot take in time backs up into the agent's export queue,
            // where drops are counted.
            .on_thread_start(|| {
                let p = libc::sched_param { sched_priority: 0 };
                // SAFETY: `p` is a valid sched_param; 0 is the calling thread.
                if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &p) } != 0 {
                    eprintln!(
                        "xtask: the OTLP receiver stays at normal priority (SCHED_IDLE: {})",
                        std::io::Error::last_os_error()
                    );
                }
            })
            .enable_all()
            .build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let port = listener.local_addr()?.port();
        let counts = Arc::new(Mutex::new(Counts::default()));
        let service = TraceServiceServer::new(Counter(counts.clone()));
        runtime.spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        step(format!("counting OTLP/gRPC receiver on 127.0.0.1:{port}"));
        Ok(Self {
            port,
            counts,
            runtime: Some(runtime),
        })
    }

    pub(super) fn counts(&self) -> Counts {
        self.counts.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
