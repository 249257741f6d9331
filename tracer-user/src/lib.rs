//! The tracer agent: loads the kernel programs, follows connections, parses HTTP, builds spans
//! and exports them. The modules follow the data flow:
//!
//! `capture` (kernel programs, ring buffer) → `conn` (connection table, reassembly) →
//! `protocol` (HTTP parsers, request/response pairing) → `trace` (spans) → `export`.
//! `process` supplies per-process resource attributes; `cli` the command line.

pub mod agent;
pub mod assemble;
pub mod capture;
pub mod cli;
pub mod conn;
pub mod export;
pub mod process;
pub mod protocol;
pub mod text;
pub mod trace;
