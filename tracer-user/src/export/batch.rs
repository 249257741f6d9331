//! The bounded queue, the batching export task, retries and counters.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::config::{ExportArgs, ExportConfig, Target};
use super::console;
use super::otlp_wire::TraceEncoder;
use super::retry::{INITIAL_BACKOFF, Jitter, MAX_BACKOFF, WarnThrottle};
use super::transport::{ExportError, GrpcTransport, HttpTransport};
use crate::span::Span;

/// Export counters, shared with whoever reports them. All monotonic except `queue_len`.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Spans accepted into the queue.
    pub spans_enqueued: AtomicU64,
    /// Spans delivered (console written, or accepted by the OTLP receiver).
    pub spans_exported: AtomicU64,
    /// Spans dropped because the queue was full (the exporter is behind or failing).
    pub spans_dropped_queue_full: AtomicU64,
    /// Spans offered after shutdown began.
    pub spans_dropped_closed: AtomicU64,
    /// Spans dropped because their export failed for good: non-retryable error, retries
    /// exhausted, rejected by the receiver (partial success), or shutdown deadline reached.
    pub spans_failed: AtomicU64,
    /// Export attempts (OTLP requests, console writes), retries included.
    pub export_requests: AtomicU64,
    /// Failed attempts.
    pub export_errors: AtomicU64,
    /// Gauge: spans currently queued.
    pub queue_len: AtomicU64,
}

/// A plain copy of [`ExportStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub spans_enqueued: u64,
    pub spans_exported: u64,
    pub spans_dropped_queue_full: u64,
    pub spans_dropped_closed: u64,
    pub spans_failed: u64,
    pub export_requests: u64,
    pub export_errors: u64,
    pub queue_len: u64,
}

impl ExportStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            spans_enqueued: self.spans_enqueued.load(Relaxed),
            spans_exported: self.spans_exported.load(Relaxed),
            spans_dropped_queue_full: self.spans_dropped_queue_full.load(Relaxed),
            spans_dropped_closed: self.spans_dropped_closed.load(Relaxed),
            spans_failed: self.spans_failed.load(Relaxed),
            export_requests: self.export_requests.load(Relaxed),
            export_errors: self.export_errors.load(Relaxed),
            queue_len: self.queue_len.load(Relaxed),
        }
    }
}

/// The capture side's handle: cheap to clone, never blocks.
#[derive(Clone, Debug)]
pub struct SpanSender {
    tx: mpsc::Sender<Span>,
    stats: Arc<ExportStats>,
}

impl SpanSender {
    /// A sender and its queue's receiving end, with no export task: for replaying the
    /// pipeline (the benchmark takes the queued spans and encodes them as an exporter does).
    pub fn queue(capacity: usize, stats: Arc<ExportStats>) -> (Self, mpsc::Receiver<Span>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Self { tx, stats }, rx)
    }

    /// Queues a finished span for export. Returns false (and counts the drop) when the queue
    /// is full or the exporter is shutting down.
    pub fn send(&self, span: Span) -> bool {
        // Count before the span becomes visible to the task, so queue_len never underflows.
        self.stats.queue_len.fetch_add(1, Relaxed);
        match self.tx.try_send(span) {
            Ok(()) => {
                self.stats.spans_enqueued.fetch_add(1, Relaxed);
                true
            }
            Err(e) => {
                self.stats.queue_len.fetch_sub(1, Relaxed);
                let counter = match e {
                    mpsc::error::TrySendError::Full(_) => &self.stats.spans_dropped_queue_full,
                    mpsc::error::TrySendError::Closed(_) => &self.stats.spans_dropped_closed,
                };
                counter.fetch_add(1, Relaxed);
                false
            }
        }
    }
}

/// Owns the export task.
#[derive(Debug)]
pub struct ExportHandle {
    task: JoinHandle<()>,
    shutdown: Arc<watch::Sender<Option<Instant>>>,
    flush_timeout: Duration,
    description: String,
}

impl ExportHandle {
    /// Where spans go, for a startup log line (`console`, `OTLP/gRPC http://...`).
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Stops accepting spans, exports what is queued, and returns within about the
    /// configured `--otlp-timeout` (spans not exported by then are counted as failed).
    pub async fn shutdown(mut self) {
        let deadline = Instant::now() + self.flush_timeout;
        self.shutdown.send_replace(Some(deadline));
        // The task honours the deadline by itself; this is a last resort (e.g. a stdout
        // that blocks forever).
        let grace = deadline + Duration::from_millis(500);
        if tokio::time::timeout_at(grace, &mut self.task)
            .await
            .is_err()
        {
            tracing::warn!("span export did not finish its final flush in time; abandoning it");
            self.task.abort();
        }
    }

    /// Waits for the task to end by itself (after every [`SpanSender`] is dropped).
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

/// Starts the export pipeline described by `args` on the current tokio runtime.
pub fn spawn(
    args: &ExportArgs,
    stats: Arc<ExportStats>,
) -> anyhow::Result<(SpanSender, ExportHandle)> {
    spawn_with_config(args.resolve()?, stats)
}

/// [`spawn`] with an already resolved configuration. Must be called inside a tokio runtime.
pub fn spawn_with_config(
    cfg: ExportConfig,
    stats: Arc<ExportStats>,
) -> anyhow::Result<(SpanSender, ExportHandle)> {
    let (backend, description) = match &cfg.target {
        Target::Console => (
            Backend::Console(String::new()),
            "console (stdout)".to_owned(),
        ),
        Target::None => (Backend::None, "none (spans discarded)".to_owned()),
        Target::Grpc(url) => (
            Backend::Grpc(GrpcTransport::new(url, &cfg)?),
            format!("OTLP/gRPC {url}"),
        ),
        Target::Http(url) => (
            Backend::Http(HttpTransport::new(url, &cfg)?),
            format!("OTLP/HTTP {url}"),
        ),
    };
    let (tx, rx) = mpsc::channel(cfg.max_queue_size.max(1));
    let (shutdown_tx, shutdown_rx) = watch::channel(None);
    let shutdown_tx = Arc::new(shutdown_tx);
    let flush_timeout = cfg.timeout;
    let worker = Worker {
        rx,
        backend,
        stats: stats.clone(),
        shutdown: shutdown_rx,
        _shutdown_tx: shutdown_tx.clone(),
        healthy: true,
        failures_while_unhealthy: 0,
        warnings: WarnThrottle::default(),
        jitter: Jitter::new(),
        description: description.clone(),
        encoder: TraceEncoder::new(),
        cfg,
    };
    let task = tokio::spawn(worker.run());
    Ok((
        SpanSender { tx, stats },
        ExportHandle {
            task,
            shutdown: shutdown_tx,
            flush_timeout,
            description,
        },
    ))
}

enum Backend {
    /// The reusable line buffer.
    Console(String),
    None,
    Grpc(GrpcTransport),
    Http(HttpTransport),
}

struct Worker {
    rx: mpsc::Receiver<Span>,
    backend: Backend,
    stats: Arc<ExportStats>,
    /// Some(deadline) once shutdown began.
    shutdown: watch::Receiver<Option<Instant>>,
    /// Keeps the watch channel open even if the handle is dropped.
    _shutdown_tx: Arc<watch::Sender<Option<Instant>>>,
    cfg: ExportConfig,
    healthy: bool,
    failures_while_unhealthy: u64,
    warnings: WarnThrottle,
    jitter: Jitter,
    description: String,
    encoder: TraceEncoder,
}

impl Worker {
    fn shutdown_deadline(&self) -> Option<Instant> {
        *self.shutdown.borrow()
    }

    /// Receives up to `limit - batch.len()` spans into `batch`; false when the queue is
    /// closed and empty.
    async fn recv_into(rx: &mut mpsc::Receiver<Span>, batch: &mut Vec<Span>, limit: usize) -> bool {
        match limit.saturating_sub(batch.len()) {
            0 => true,
            n => rx.recv_many(batch, n).await > 0,
        }
    }

    fn dequeued(&self, n: usize) {
        self.stats.queue_len.fetch_sub(n as u64, Relaxed);
    }

    async fn run(mut self) {
        let max = self.cfg.max_batch_size.max(1);
        let mut batch: Vec<Span> = Vec::with_capacity(max);
        'main: while self.shutdown_deadline().is_none() {
            // Wait for the first span of a batch.
            let got = tokio::select! {
                biased;
                _ = self.shutdown.changed() => break 'main,
                got = Self::recv_into(&mut self.rx, &mut batch, max) => got,
            };
            if !got {
                break;
            }
            // Fill it until full or the schedule delay has passed.
            let fill_deadline = Instant::now() + self.cfg.schedule_delay;
            let mut stop = false;
            while batch.len() < max {
                tokio::select! {
                    biased;
                    _ = self.shutdown.changed() => { stop = true; break }
                    got = Self::recv_into(&mut self.rx, &mut batch, max) => {
                        if !got { stop = true; break }
                    }
                    _ = tokio::time::sleep_until(fill_deadline) => break,
                }
            }
            self.dequeued(batch.len());
            // The last batch before shutdown gets the flush budget, not a full retry budget.
            let budget = if stop {
                self.cfg.timeout
            } else {
                self.cfg.export_timeout
            };
            self.export(&mut batch, Instant::now() + budget).await;
            if stop {
                break;
            }
        }

        // Final flush: take what is queued, export it until the deadline.
        self.rx.close();
        let deadline = self
            .shutdown_deadline()
            .unwrap_or_else(|| Instant::now() + self.cfg.timeout);
        loop {
            let before = batch.len();
            while batch.len() < max {
                match self.rx.try_recv() {
                    Ok(s) => batch.push(s),
                    Err(_) => break,
                }
            }
            self.dequeued(batch.len() - before);
            if batch.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                self.stats
                    .spans_failed
                    .fetch_add(batch.len() as u64, Relaxed);
                batch.clear();
                continue;
            }
            self.export(&mut batch, deadline).await;
        }
        let s = self.stats.snapshot();
        tracing::debug!(?s, "span export stopped");
    }

    /// Exports `batch` (left empty), retrying transient failures until `deadline` (or the
    /// shutdown deadline, whichever is first).
    async fn export(&mut self, batch: &mut Vec<Span>, deadline: Instant) {
        let n = batch.len() as u64;
        if n == 0 {
            return;
        }
        /// Encoded once per batch; a retry sends the same bytes.
        enum Payload {
            Grpc(bytes::Bytes),
            Http(bytes::Bytes),
        }
        let payload = match &mut self.backend {
            Backend::None => {
                batch.clear();
                self.stats.spans_exported.fetch_add(n, Relaxed);
                return;
            }
            Backend::Console(buf) => {
                self.stats.export_requests.fetch_add(1, Relaxed);
                let (buf2, r) = console::write_batch(std::mem::take(buf), batch).await;
                *buf = buf2;
                batch.clear();
                match r {
                    Ok(()) => {
                        self.stats.spans_exported.fetch_add(n, Relaxed);
                    }
                    Err(e) => {
                        self.stats.export_errors.fetch_add(1, Relaxed);
                        self.stats.spans_failed.fetch_add(n, Relaxed);
                        self.warnings.warn(&format!("writing spans to stdout: {e}"));
                    }
                }
                return;
            }
            Backend::Grpc(_) => Payload::Grpc(self.encoder.encode_to_vec(batch).into()),
            Backend::Http(h) => Payload::Http(h.encode(self.encoder.encode_to_vec(batch))),
        };
        batch.clear();

        let mut backoff = INITIAL_BACKOFF;
        loop {
            let now = Instant::now();
            let dl = self.effective_deadline(deadline);
            if now >= dl {
                self.give_up(n, "deadline reached");
                return;
            }
            let attempt_timeout = self.cfg.timeout.min(dl - now);
            self.stats.export_requests.fetch_add(1, Relaxed);
            let r = match (&mut self.backend, &payload) {
                (Backend::Grpc(g), Payload::Grpc(body)) => {
                    g.send(body.clone(), attempt_timeout).await
                }
                (Backend::Http(h), Payload::Http(body)) => {
                    h.send(body.clone(), attempt_timeout).await
                }
                _ => Err(ExportError {
                    retryable: false,
                    retry_after: None,
                    message: "internal: payload/backend mismatch".into(),
                }),
            };
            match r {
                Ok(sent) => {
                    let rejected = sent.rejected.min(n);
                    self.stats.spans_exported.fetch_add(n - rejected, Relaxed);
                    if rejected > 0 {
                        self.stats.spans_failed.fetch_add(rejected, Relaxed);
                        let msg = format!(
                            "{}: receiver rejected {rejected} of {n} spans: {}",
                            self.description, sent.message
                        );
                        self.warnings.warn(&msg);
                    }
                    if !self.healthy {
                        tracing::info!(
                            "span export to {} recovered after {} failed attempts",
                            self.description,
                            self.failures_while_unhealthy
                        );
                        self.healthy = true;
                        self.failures_while_unhealthy = 0;
                    }
                    return;
                }
                Err(e) => {
                    self.stats.export_errors.fetch_add(1, Relaxed);
                    if !e.retryable {
                        self.stats.spans_failed.fetch_add(n, Relaxed);
                        let msg = format!(
                            "{}: export failed, {n} spans dropped: {e}",
                            self.description
                        );
                        self.warnings.warn(&msg);
                        return;
                    }
                    if self.healthy {
                        tracing::warn!(
                            "span export to {} failing: {e} (retrying; further failures are \
                             not logged until it recovers)",
                            self.description
                        );
                        self.healthy = false;
                    } else {
                        tracing::debug!("span export to {} failed: {e}", self.description);
                    }
                    self.failures_while_unhealthy += 1;
                    let wait = self
                        .jitter
                        .apply(backoff)
                        .max(e.retry_after.unwrap_or_default());
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    let wake = Instant::now() + wait;
                    // Sleep, unless the (possibly shortened by shutdown) deadline comes first.
                    loop {
                        if wake >= self.effective_deadline(deadline) {
                            self.give_up(n, "retries exhausted");
                            return;
                        }
                        tokio::select! {
                            _ = tokio::time::sleep_until(wake) => break,
                            _ = self.shutdown.changed() => {}
                        }
                    }
                }
            }
        }
    }

    fn effective_deadline(&self, deadline: Instant) -> Instant {
        match self.shutdown_deadline() {
            Some(s) => s.min(deadline),
            None => deadline,
        }
    }

    fn give_up(&mut self, n: u64, why: &str) {
        self.stats.spans_failed.fetch_add(n, Relaxed);
        tracing::debug!("{}: {why}, {n} spans dropped", self.description);
    }
}
