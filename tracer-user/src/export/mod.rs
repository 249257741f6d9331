//! Span export: the console exporter (default, no backend needed) or OTLP over gRPC or
//! HTTP/protobuf, configured like the OpenTelemetry SDKs (`OTEL_EXPORTER_OTLP_*`, `OTEL_BSP_*`).
//!
//! ```text
//! capture path ── SpanSender::send (try_send, never blocks) ──▶ bounded queue
//!     ──▶ export task: batch (size or delay) ─▶ console | OTLP/gRPC | OTLP/HTTP
//!                      retry transient failures with backoff, bounded in time
//! ```
//!
//! Memory is bounded whatever the endpoint does: the queue holds at most
//! `--bsp-max-queue-size` spans (more are dropped and counted), the task holds one batch,
//! every request has a timeout, and one batch's retries stop after `--bsp-export-timeout`.
//!
//! Use: `let (tx, handle) = export::spawn(&args.export, stats.clone())?;` inside the tokio
//! runtime, `tx.send(span)` from anywhere (clone it freely), and at exit
//! `handle.shutdown().await` (final flush, bounded by `--otlp-timeout`).
//!
//! Metrics go out beside spans: `prometheus` serves `GET /metrics`, `otlp_metrics` pushes
//! them over the same transports (`metrics_config`: `OTEL_METRICS_EXPORTER`, ...).

mod batch;
mod config;
mod console;
mod metrics_config;
mod otlp;
pub mod otlp_metrics;
mod otlp_wire;
pub mod prometheus;
mod retry;
mod transport;

pub use batch::{ExportHandle, ExportStats, SpanSender, StatsSnapshot, spawn, spawn_with_config};
pub use config::{Compression, ExportArgs, ExportConfig, ExporterKind, Protocol, Target};
pub use metrics_config::{
    MetricsConfig, MetricsExportArgs, MetricsExporterKind, OtlpMetricsConfig, PrometheusAddr,
};
pub use otlp::{SCOPE_NAME, SCOPE_VERSION, export_request};
pub use otlp_wire::TraceEncoder;

#[cfg(test)]
mod tests;
