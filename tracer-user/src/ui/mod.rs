//! The node-local view: what this node's requests and traces look like now, in a browser (a
//! page served by the agent) and in a terminal (`tracer top`), with nothing else to install and
//! nothing leaving the node.
//!
//! `store` keeps recent traces and per-route windows, fed by the pipeline's recent-traces stage
//! (`pipeline::recent`); `api` answers the page and `tracer top` from it over HTTP (read-only,
//! its own thread, so a slow reader never runs on the agent's event loop); `service_map` reads
//! the service-graph metrics; `critical_path` marks a trace's critical path; `top` is the
//! terminal client.
pub mod api;
pub mod critical_path;
pub mod service_map;
pub mod store;
pub mod top;
pub mod window;

use std::{
    net::{SocketAddr, TcpListener},
    sync::Arc,
    thread::JoinHandle,
};

use anyhow::{Context, Result, bail};
use tokio::sync::oneshot;

use crate::metric::MetricSources;

pub use store::{RecentStore, StoreLimits};

/// Where the view listens when `--ui-listen` is not given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9400";
/// Live events a client may have waiting before it is dropped.
const LIVE_QUEUE: usize = 1024;

/// The view's command-line options.
#[derive(Debug, clap::Args)]
pub struct UiArgs {
    /// Address of the node-local view (web page, JSON API, `tracer top`), or `off`. Default:
    /// 127.0.0.1:9400 (if that port is taken, the agent warns and runs without the view; an
    /// address given explicitly must be free). No authentication: a non-loopback address
    /// also needs --ui-allow-remote (in Kubernetes, use `kubectl port-forward` instead).
    #[arg(long, value_name = "ADDR|off", env = "TRACER_UI_LISTEN")]
    pub ui_listen: Option<String>,

    /// Allow --ui-listen on a non-loopback address (anyone who can reach it sees this
    /// node's requests).
    #[arg(long, env = "TRACER_UI_ALLOW_REMOTE")]
    pub ui_allow_remote: bool,

    /// Spans the view's store of recent traces keeps (the oldest traces go first).
    #[arg(long, value_name = "N", default_value_t = StoreLimits::default().max_spans,
          env = "TRACER_UI_MAX_SPANS")]
    pub ui_max_spans: usize,

    /// Bytes (estimated) the store of recent traces may use.
    #[arg(long, value_name = "BYTES", default_value_t = StoreLimits::default().max_bytes,
          env = "TRACER_UI_MAX_BYTES")]
    pub ui_max_bytes: usize,

    /// New traces per second the view's store keeps besides every failed one and every one
    /// slower than its route's p99 (the rest are counted as not kept; the routes table and the
    /// service map still count every request); 0 keeps every trace.
    #[arg(long, value_name = "N", default_value_t = StoreLimits::default().max_new_traces_per_sec,
          env = "TRACER_UI_MAX_NEW_TRACES")]
    pub ui_max_new_traces: u32,
}

impl UiArgs {
    pub fn limits(&self) -> StoreLimits {
        StoreLimits {
            max_spans: self.ui_max_spans,
            max_bytes: self.ui_max_bytes,
            max_new_traces_per_sec: self.ui_max_new_traces,
            ..StoreLimits::default()
        }
    }

    /// The address to bind, `None` for `off`; refuses a non-loopback one without
    /// --ui-allow-remote.
    pub fn address(&self) -> Result<Option<SocketAddr>> {
        let given = self.ui_listen.as_deref().unwrap_or(DEFAULT_LISTEN).trim();
        if given.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let addr: SocketAddr = given.parse().with_context(|| {
            format!(
                "--ui-listen {given:?}: not an IP address with a port (e.g. 127.0.0.1:9400) or off"
            )
        })?;
        if !addr.ip().is_loopback() && !self.ui_allow_remote {
            bail!(
                "--ui-listen {addr}: not a loopback address; the view has no authentication, so \
                 this needs --ui-allow-remote (or reach it with `kubectl port-forward`)"
            );
        }
        Ok(Some(addr))
    }
}

/// The running view: its HTTP server's thread.
pub struct UiServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Binds the view's address (before the agent loads anything, so a taken address fails fast)
/// and starts serving `store` from its own thread. `Ok(None)`: the view is off.
pub fn start(
    args: &UiArgs,
    store: Arc<RecentStore>,
    metric_sources: MetricSources,
) -> Result<Option<UiServer>> {
    let Some(addr) = args.address()? else {
        return Ok(None);
    };
    let listener = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && args.ui_listen.is_none() => {
            tracing::warn!(
                "node-local view off: its default address {addr} is in use (another agent?); \
                 give it one with --ui-listen ADDR"
            );
            return Ok(None);
        }
        Err(e) => bail!("--ui-listen {addr}: cannot listen: {e}"),
    };
    if !addr.ip().is_loopback() {
        tracing::warn!(
            "node-local view on {addr}, a non-loopback address, without authentication: anyone \
             who can reach it sees this node's requests"
        );
    }
    listener
        .set_nonblocking(true)
        .context("node-local view: setting the listener non-blocking")?;
    let addr = listener.local_addr().unwrap_or(addr);
    let state = Arc::new(api::UiState {
        store,
        service_map: service_map::MetricServiceMap::new(metric_sources),
        live_queue: LIVE_QUEUE,
    });
    let (stop, stopped) = oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("tracer-ui".into())
        .spawn(move || serve(listener, state, stopped))
        .context("node-local view: starting its thread")?;
    Ok(Some(UiServer {
        addr,
        stop: Some(stop),
        thread: Some(thread),
    }))
}

fn serve(listener: TcpListener, state: Arc<api::UiState>, stopped: oneshot::Receiver<()>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("node-local view: cannot start its runtime: {e}");
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("node-local view: {e}");
                return;
            }
        };
        // Stopping drops the open connections (live streams never end by themselves).
        tokio::select! {
            r = axum::serve(listener, api::router(state)) => {
                if let Err(e) = r {
                    tracing::error!("node-local view stopped: {e}");
                }
            }
            _ = stopped => {}
        }
    });
}

impl UiServer {
    /// The page's address, as the agent prints it.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for UiServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests;
