//! The tracer agent: loads the kernel programs, follows connections, parses HTTP, builds spans
//! and exports them. The modules follow the data flow:
//!
//! `capture` (kernel programs, ring buffer) → `conn` (connection table, reassembly) →
//! `protocol` (HTTP parsers, request/response pairing) → `trace` (spans) → `pipeline` (stages
//! every finished span passes: redaction, ..., sinks) → `export`.
//! `span` is the span model `trace`, `process` and `export` share, `metric` the metric model
//! producers and exporters share; `process` supplies
//! per-process resource attributes; `cli` the command line; `key_value_list` parses the
//! `key=value` lists of the OTel SDK variables; `ui` the node-local view (page, API, `tracer top`).

pub mod agent;
pub mod agent_counters;
pub mod assemble;
pub mod capture;
pub mod cli;
pub mod conn;
pub mod export;
pub mod key_value_list;
pub mod memory;
pub mod metric;
pub mod pipeline;
pub mod process;
pub use tracer_protocol as protocol;
pub mod span;
pub mod trace;
pub mod ui;
