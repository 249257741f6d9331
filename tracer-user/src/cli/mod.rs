//! The `tracer` command line. Options follow the OpenTelemetry SDK environment variables
//! where one exists; every option can also be given as a flag.
use std::time::Duration;

use clap::Parser;
use tracer_common::{KernelOffsets, MAX_CAPTURE};

use crate::{
    capture::{CaptureOptions, DEFAULT_MAX_CONNECTIONS, InjectMode, features::Features},
    conn::TableLimits,
    export::{ExportArgs, MetricsExportArgs},
    pipeline::{MetricsArgs, redact::SpanDataArgs, sample::SamplingArgs},
    process::kubernetes::KubeArgs,
    ui::{UiArgs, top::TopArgs},
};

/// eBPF-based distributed tracer: sees every HTTP request on this node, in any language,
/// without code changes, and exports the spans as OpenTelemetry (OTLP).
///
/// With no OTLP endpoint configured, each finished request is printed as one line on stdout.
/// Needs root (or CAP_BPF + CAP_PERFMON + CAP_SYS_ADMIN) and a kernel ≥ 5.8 with BTF.
#[derive(Debug, Parser)]
#[command(name = "tracer", version, about, long_about = None, after_help = AFTER_HELP)]
pub struct Cli {
    /// Trace only these processes (repeat or comma-separate). Default: every process.
    #[arg(
        long = "pid",
        value_name = "PID",
        value_delimiter = ',',
        env = "TRACER_PIDS"
    )]
    pub pids: Vec<u32>,

    /// Trace only connections whose local or remote port is one of these (repeat or
    /// comma-separate). Default: every port.
    #[arg(
        long = "port",
        value_name = "PORT",
        value_delimiter = ',',
        env = "TRACER_PORTS"
    )]
    pub ports: Vec<u16>,

    /// Trace only processes in this cgroup v2 (a path under the cgroup v2 mount, or relative to
    /// it; cgroups below it at start-up are included). Repeat for several.
    #[arg(
        long = "cgroup",
        value_name = "PATH",
        env = "TRACER_CGROUPS",
        value_delimiter = ','
    )]
    pub cgroups: Vec<std::path::PathBuf>,

    /// Bytes of payload copied per read/write (enough for request and response headers;
    /// bodies are skipped, not copied). At most 4096.
    #[arg(long, value_name = "BYTES", default_value_t = MAX_CAPTURE as u32, env = "TRACER_CAPTURE_BYTES",
          value_parser = clap::value_parser!(u32).range(64..=MAX_CAPTURE as i64))]
    pub capture_bytes: u32,

    /// Size of the kernel-to-agent ring buffer in bytes (rounded up to a power of two). Larger
    /// absorbs longer bursts; when it is full events are dropped and counted.
    #[arg(long, value_name = "BYTES", default_value_t = 8 << 20, env = "TRACER_RING_BUFFER_BYTES")]
    pub ring_buffer_bytes: u32,

    /// Keep query string values in `url.query`/`url.full` (by default each value is replaced
    /// with REDACTED: queries often carry tokens).
    #[arg(long, env = "TRACER_KEEP_QUERY_VALUES")]
    pub keep_query_values: bool,

    /// How the agent's threads compete for CPU with the traced services. `low`: SCHED_BATCH
    /// at nice 10, so on a busy node the services run first and the agent catches up when
    /// they pause (events wait in the ring buffer meanwhile; what overflows it is counted as
    /// `ringbuf_full`). `normal`: like any other process.
    #[arg(long, value_enum, default_value_t = CpuPriority::Normal, env = "TRACER_CPU_PRIORITY")]
    pub cpu_priority: CpuPriority,

    /// Seconds without traffic after which a connection with nothing in flight is forgotten
    /// (keep-alive connections come back on their next request).
    #[arg(long, value_name = "SECONDS", default_value_t = 30, env = "TRACER_IDLE_TIMEOUT",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout: u64,

    /// Seconds without traffic after which a connection with a request or response in flight
    /// is given up (its partial message is dropped and counted).
    #[arg(long, value_name = "SECONDS", default_value_t = 120, env = "TRACER_STALLED_TIMEOUT",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub stalled_timeout: u64,

    /// Connections tracked at once (both ends of a same-node connection count as two). Sizes
    /// the agent's connection table and the kernel maps of connections and threads to match;
    /// beyond it, new connections are not traced (counted as `conns_refused_full`). A tracked
    /// connection costs the agent about 2 KiB while idle; each unit of the budget costs the
    /// kernel about 0.33 KiB of locked memory, allocated at load.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS, env = "TRACER_MAX_CONNECTIONS",
          value_parser = clap::value_parser!(u32).range(1024..=(1 << 22)))]
    pub max_connections: u32,

    /// Seconds between the agent's own counter reports in the log (0: only at exit).
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 60,
        env = "TRACER_STATS_INTERVAL"
    )]
    pub stats_interval: u64,

    /// Log filter for the agent's own logs on stderr (tracing's env-filter syntax, e.g.
    /// `info`, `debug`, `tracer=debug`; `info,tracer::kernel=debug` adds the kernel programs'
    /// diagnostics). Default: `RUST_LOG` when it is set, else `info`.
    #[arg(long, value_name = "FILTER", env = "TRACER_LOG")]
    pub log: Option<String>,

    /// Insert `traceparent` into outgoing plaintext HTTP/1.x requests that carry no trace
    /// context (one header line after the request line, naming the CLIENT span), so the next
    /// service, traced by this agent on another node or instrumented with an OpenTelemetry
    /// SDK, continues the trace. `auto`: only on connections whose socket is non-blocking
    /// (event loops, sockets with timeouts: Go, node, nginx, curl, Python with a timeout);
    /// `all`: every client connection; `off`: requests leave byte-identical. Injection puts
    /// the chosen client sockets into a BPF sockmap, whose kernel receive path can fail a
    /// *blocking* recv with EAGAIN (measured on 6.18, see README): `auto` keeps blocking
    /// sockets out of it. Spans are still linked from incoming headers, threads and same-node
    /// connections without injection.
    #[arg(
        long,
        value_enum,
        value_name = "MODE",
        default_value = "auto",
        env = "TRACER_INJECT_TRACEPARENT"
    )]
    pub inject_traceparent: InjectMode,

    /// Link a SERVER span to the same-node CLIENT span that dialled a Service virtual IP
    /// (kube-proxy DNAT, masquerading): a server request without a caller asks the kernel's
    /// connection tracking (netlink, needs CAP_NET_ADMIN) once per connection how its client
    /// addressed it. `off`: no lookups.
    #[arg(
        long,
        value_name = "on|off",
        default_value = "on",
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new(),
        env = "TRACER_NAT_LOOKUP"
    )]
    pub nat_lookup: bool,

    /// The node's cgroup v2 root, where injection attaches its sock_ops program (default: the
    /// cgroup v2 mount this process sees). In a container with its own cgroup namespace, mount
    /// the host's /sys/fs/cgroup and name it here, or only the container's own sockets are seen.
    #[arg(long, value_name = "PATH", env = "TRACER_CGROUP_ROOT")]
    pub cgroup_root: Option<std::path::PathBuf>,

    /// Also write every raw kernel event to FILE (for replay by `cargo xtask bench` and for
    /// bug reports). The file grows without bound: use for short captures only.
    #[arg(long, value_name = "FILE")]
    pub record_events: Option<std::path::PathBuf>,

    #[command(flatten)]
    pub export: ExportArgs,

    #[command(flatten)]
    pub kubernetes: KubeArgs,

    #[command(flatten)]
    pub sampling: SamplingArgs,

    #[command(flatten)]
    pub span_data: SpanDataArgs,

    #[command(flatten)]
    pub metrics: MetricsArgs,

    #[command(flatten)]
    pub metrics_export: MetricsExportArgs,

    #[command(flatten)]
    pub ui: UiArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// See `--cpu-priority`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum CpuPriority {
    #[default]
    Normal,
    Low,
}

impl CpuPriority {
    /// Applies to the calling thread and the threads it starts afterwards (Linux keeps the
    /// policy and nice value per thread): call before any other thread exists.
    pub fn apply(self) -> std::io::Result<()> {
        if self == Self::Normal {
            return Ok(());
        }
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: plain system calls on this thread (0), with a valid parameter block.
        unsafe {
            if libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setpriority(libc::PRIO_PROCESS, 0, 10) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// With no command, `tracer` runs the agent.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// A terminal view of a running agent's node-local view (its --ui-listen address): routes
    /// by p99, the slowest recent requests, a trace's waterfall. Needs no privileges.
    Top(TopArgs),
}

const AFTER_HELP: &str = "\
Examples:
  tracer                                          print every HTTP request on this node
  tracer --port 8080                              only connections to or from port 8080
  OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4317 tracer      export over OTLP/gRPC
  tracer --otlp-endpoint http://localhost:4318 --otlp-protocol http/protobuf
  tracer top                                      the running agent's view, in the terminal

The node-local view of recent requests and traces: http://127.0.0.1:9400/ (--ui-listen).

Stops cleanly (flushing spans, detaching every program) on SIGINT or SIGTERM.";

impl Cli {
    /// The log filter in force: `--log` / `TRACER_LOG`, else `RUST_LOG`, else `info`
    /// (without the Kubernetes client's own lines: one per failed request; the watcher
    /// reports an outage once).
    pub fn log_filter(&self) -> String {
        self.log
            .clone()
            .or_else(|| std::env::var("RUST_LOG").ok())
            .unwrap_or_else(|| "info,kube_client=off,kube_runtime=off".to_owned())
    }

    /// What to capture: the command line's choices, with what was found out before the agent
    /// started (kernel struct offsets and features; `None`: found out during load) and the
    /// key of the server span ids the kernel derives (shared with the span assembler).
    pub fn capture_options(
        &self,
        offsets: Option<KernelOffsets>,
        features: Option<Features>,
        ctx_key: u64,
    ) -> anyhow::Result<CaptureOptions> {
        let mut cgroups = Vec::new();
        for path in &self.cgroups {
            cgroups.extend(crate::capture::cgroup::cgroup_ids(path)?);
        }
        Ok(CaptureOptions {
            capture_limit: self.capture_bytes,
            ring_bytes: self.ring_buffer_bytes,
            pids: self.pids.clone(),
            ports: self.ports.clone(),
            cgroups,
            offsets,
            inject: self.inject_traceparent,
            cgroup_root: self.cgroup_root.clone(),
            ctx_key,
            head_rule: self.sampling.options().head.rule(),
            features,
            max_connections: self.max_connections,
        })
    }

    pub fn table_limits(&self) -> TableLimits {
        TableLimits {
            idle_timeout_ns: self.idle_timeout.saturating_mul(1_000_000_000),
            stalled_timeout_ns: self.stalled_timeout.saturating_mul(1_000_000_000),
            max_conns: self.max_connections as usize,
        }
    }

    pub fn stats_interval(&self) -> Option<Duration> {
        (self.stats_interval > 0).then(|| Duration::from_secs(self.stats_interval))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn low_cpu_priority_is_batch_at_nice_10_for_the_thread_and_its_children() {
        let cli = Cli::try_parse_from(["tracer", "--cpu-priority", "low"]).unwrap();
        // On a thread of its own: the policy is per thread, the test process keeps its own.
        let (policy, nice, child) = std::thread::spawn(move || {
            cli.cpu_priority.apply().unwrap();
            // SAFETY: queries of this thread's own scheduling, no pointers.
            let read = || unsafe {
                (
                    libc::sched_getscheduler(0),
                    libc::getpriority(libc::PRIO_PROCESS, 0),
                )
            };
            let (policy, nice) = read();
            let child = std::thread::spawn(read).join().unwrap();
            (policy, nice, child)
        })
        .join()
        .unwrap();
        assert_eq!((policy, nice), (libc::SCHED_BATCH, 10));
        assert_eq!(
            child,
            (libc::SCHED_BATCH, 10),
            "a thread started later inherits it"
        );
        // SAFETY: as above.
        let here = unsafe { libc::sched_getscheduler(0) };
        assert_eq!(here, libc::SCHED_OTHER);
        assert_eq!(
            Cli::try_parse_from(["tracer"]).unwrap().cpu_priority,
            CpuPriority::Normal
        );
    }

    #[test]
    fn filters_parse() {
        let cli = Cli::try_parse_from(["tracer", "--port", "80,443", "--pid", "1"]).unwrap();
        assert_eq!(cli.ports, vec![80, 443]);
        assert_eq!(cli.pids, vec![1]);
        assert!(Cli::try_parse_from(["tracer", "--capture-bytes", "1000000"]).is_err());
    }

    #[test]
    fn capture_options_come_from_the_command_line_and_the_start_up_facts() {
        let cli = Cli::try_parse_from([
            "tracer",
            "--inject-traceparent",
            "all",
            "--capture-bytes",
            "512",
        ])
        .unwrap();
        let offsets = KernelOffsets {
            task_files: 8,
            ..Default::default()
        };
        let opts = cli.capture_options(Some(offsets), None, 99).unwrap();
        assert_eq!(opts.inject, InjectMode::All);
        assert_eq!(opts.capture_limit, 512);
        assert_eq!((opts.offsets, opts.ctx_key), (Some(offsets), 99));
        assert!(opts.features.is_none());
    }

    #[test]
    fn one_connection_budget_sizes_the_table_and_the_kernel_maps() {
        let cli = Cli::try_parse_from(["tracer"]).unwrap();
        assert_eq!(
            cli.table_limits().max_conns,
            DEFAULT_MAX_CONNECTIONS as usize
        );
        let cli = Cli::try_parse_from(["tracer", "--max-connections", "200000"]).unwrap();
        assert_eq!(cli.table_limits().max_conns, 200_000);
        assert_eq!(
            cli.capture_options(None, None, 0).unwrap().max_connections,
            200_000
        );
        assert!(Cli::try_parse_from(["tracer", "--max-connections", "10"]).is_err());
    }
}
