//! Per-process OpenTelemetry resources, read from procfs and cached by pid.
//!
//! For a pid, [`ProcessTable::resource`] reads `/proc/PID/{exe,comm,cmdline,environ}` once
//! (through the `procfs` crate, with bounded reads) and builds:
//!
//! - `service.name`: the process's `OTEL_SERVICE_NAME`, else `service.name` from its
//!   `OTEL_RESOURCE_ATTRIBUTES`, else the executable's name (basename of `/proc/PID/exe`,
//!   falling back to `comm`), else `unknown_service`.
//! - `process.pid`, `process.executable.name` (exe basename, else `comm`),
//!   `process.executable.path`, `process.command_line` (arguments joined by spaces, at most
//!   [`MAX_COMMAND_LINE_BYTES`]), `host.name`, `telemetry.sdk.name=tracer`,
//!   `telemetry.sdk.version` (this crate's version).
//! - `container.id` for a process in a container (from `/proc/PID/cgroup`, see `container`;
//!   [`ProcessTable::container`] also gives the pod UID). A containerised process's
//!   environment and executable are its own, as seen from the host (see `proc_info`), so the
//!   container's `OTEL_SERVICE_NAME` names it.
//! - Every other `OTEL_RESOURCE_ATTRIBUTES` entry of the process, then the agent's own
//!   (`extra`) entries.
//!
//! Precedence: for any key, the process's own environment wins over the agent's `extra`,
//! which wins over what the tracer detected (`host.name`). The keys the tracer observes about
//! the process itself (`process.pid`, `process.executable.*`, `process.command_line`,
//! `container.id`, `telemetry.sdk.*`) are never overridden. `service.name` from `extra` is ignored: the
//! agent's own service name must not rename the processes it traces.
//!
//! `OTEL_RESOURCE_ATTRIBUTES` is parsed as the OTel spec says ([`crate::key_value_list`]):
//! `k=v` pairs separated by commas, surrounding spaces trimmed, keys and values
//! percent-decoded; on any error (an entry without `=`, an empty key, a malformed `%` escape)
//! the whole variable is discarded. Only the first [`MAX_ENVIRON_BYTES`] of a process's
//! environment are read.
//!
//! A pid whose `/proc` entry is gone (the process exited before the first look-up) gets a
//! minimal resource (`service.name=unknown_service`, `process.pid`, plus `host.name`,
//! `telemetry.sdk.*` and `extra`) that is not cached, and is counted in
//! [`ProcessStats::exited`]. Unreadable parts of a live process (permissions, kernel
//! threads, zombies) are simply left out.
//!
//! The parts: `table` (the pid cache), `proc_info` (procfs reads), `container` (container id
//! and pod UID from cgroup paths), `otel_env` (the process's OTel variables), `resource`
//! (building a resource, with the precedence above).

mod container;
mod otel_env;
mod proc_info;
mod resource;
mod table;
#[cfg(test)]
mod test_support;

pub use container::{
    ContainerInfo, MAX_CGROUP_BYTES, MAX_CGROUP_LINE_BYTES, MAX_CGROUP_LINES, parse_cgroup,
};
pub use otel_env::{parse_resource_attributes, resource_attributes_from_env};
pub use proc_info::MAX_ENVIRON_BYTES;
pub use resource::{MAX_COMMAND_LINE_BYTES, SDK_NAME, UNKNOWN_SERVICE};
pub use table::{DEFAULT_MAX_ENTRIES, ProcessStats, ProcessTable};
