//! One end-to-end scenario: an OTLP receiver (unless the test exports elsewhere), the agent
//! exporting to it and tracing what the test selects (usually the ports of the servers it
//! started). [`Scenario::stop`] stops the agent and returns what a test asserts on: every span
//! the receiver got and the agent's final counters, typed.
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::{Agent, Counters, Receiver, summary};

/// A running scenario: the agent, and the receiver it exports to.
pub struct Scenario {
    pub agent: Agent,
    receiver: Option<Receiver>,
    stop_within: Duration,
}

/// How a scenario starts; see [`Scenario::ports`] and [`Scenario::with_args`].
#[must_use]
pub struct Setup {
    args: Vec<String>,
    env: Vec<(String, String)>,
    export: Export,
    stop_within: Duration,
}

enum Export {
    /// To a receiver of the scenario (started with these arguments), over OTLP/gRPC or HTTP.
    Receiver { args: Vec<String>, http: bool },
    /// To a receiver the test started already (its address was needed before the agent's start).
    Started(Receiver),
    /// To an endpoint the test owns (or a dead one).
    Endpoint(String),
    /// Nowhere (`OTEL_TRACES_EXPORTER=none`).
    Nothing,
}

/// What a stopped scenario leaves for the assertions.
pub struct Outcome {
    /// Every span the receiver got (none when the scenario had no receiver).
    pub spans: Vec<Value>,
    /// The agent's final counters.
    pub counters: Counters,
    /// The agent's whole log (stderr).
    pub log: String,
}

impl Scenario {
    /// The agent traces `port` only, exporting over OTLP/gRPC to a new receiver.
    pub fn port(port: u16) -> Result<Self> {
        Self::ports(&[port]).start()
    }

    /// The agent traces `ports` only (plus whatever [`Setup::args`] adds).
    pub fn ports(ports: &[u16]) -> Setup {
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        Self::with_args(&["--port", &ports.join(",")])
    }

    /// The agent runs with `args` as its only filter (e.g. `--pid N`).
    pub fn with_args(args: &[&str]) -> Setup {
        Setup {
            args: args.iter().map(|a| a.to_string()).collect(),
            env: Vec::new(),
            export: Export::Receiver {
                args: Vec::new(),
                http: false,
            },
            stop_within: Duration::from_secs(20),
        }
    }

    /// The scenario's receiver; panics for a scenario that exports elsewhere.
    pub fn receiver(&self) -> &Receiver {
        self.receiver
            .as_ref()
            .expect("this scenario exports to an endpoint of the test, not to a receiver")
    }

    /// Waits until `pred` holds for at least `n` received spans; returns all that match.
    pub fn wait_spans(
        &self,
        n: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        self.receiver().wait_spans(n, timeout, pred)
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        self.agent.proc.stderr().join("\n")
    }

    /// Stops the agent (SIGTERM; it must exit successfully: final flush included), then reads
    /// its final counters and every span the receiver got.
    pub fn stop(self) -> Result<Outcome> {
        let log = self.agent.stop_within(self.stop_within)?;
        let counters = Counters::final_in(&log).with_context(|| summary(&log))?;
        // The agent exits after its exporter's shutdown: everything it delivered is written.
        let spans = self.receiver.map(|r| r.spans()).unwrap_or_default();
        Ok(Outcome {
            spans,
            counters,
            log,
        })
    }
}

impl Setup {
    /// More agent arguments.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// An environment variable for the agent (after, so over, the scenario's own).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Export over OTLP/HTTP (protobuf) instead of gRPC.
    pub fn otlp_http(mut self) -> Self {
        if let Export::Receiver { http, .. } = &mut self.export {
            *http = true;
        }
        self
    }

    /// Arguments for the receiver (tests/receiver/otlp_receiver.py), e.g. `--hang`.
    pub fn receiver_args(mut self, args: &[&str]) -> Self {
        if let Export::Receiver { args: a, .. } = &mut self.export {
            a.extend(args.iter().map(|s| s.to_string()));
        }
        self
    }

    /// Export over OTLP/gRPC to `receiver`, started by the test (e.g. because a peer of the
    /// test exports to it too and has to run before the agent).
    pub fn with_receiver(mut self, receiver: Receiver) -> Self {
        self.export = Export::Started(receiver);
        self
    }

    /// Export to `endpoint` (OTLP/gRPC): no receiver of the scenario.
    pub fn export_to(mut self, endpoint: &str) -> Self {
        self.export = Export::Endpoint(endpoint.to_owned());
        self
    }

    /// Export nothing (`OTEL_TRACES_EXPORTER=none`): no receiver.
    pub fn no_export(mut self) -> Self {
        self.export = Export::Nothing;
        self
    }

    /// How long [`Scenario::stop`] waits for the agent to exit (default 20 s).
    pub fn stop_within(mut self, timeout: Duration) -> Self {
        self.stop_within = timeout;
        self
    }

    /// Starts the receiver, then the agent (it returns once the agent's programs are attached).
    pub fn start(self) -> Result<Scenario> {
        let mut env: Vec<(String, String)> = Vec::new();
        let mut set = |k: &str, v: &str| env.push((k.to_owned(), v.to_owned()));
        let receiver = match self.export {
            Export::Receiver { args, http } => {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let r = Receiver::start(&args)?;
                if http {
                    set("OTEL_EXPORTER_OTLP_ENDPOINT", &r.http_endpoint());
                    set("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf");
                } else {
                    set("OTEL_EXPORTER_OTLP_ENDPOINT", &r.grpc_endpoint());
                    set("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc");
                }
                Some(r)
            }
            Export::Started(r) => {
                set("OTEL_EXPORTER_OTLP_ENDPOINT", &r.grpc_endpoint());
                set("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc");
                Some(r)
            }
            Export::Endpoint(endpoint) => {
                set("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint);
                set("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc");
                None
            }
            Export::Nothing => {
                set("OTEL_TRACES_EXPORTER", "none");
                None
            }
        };
        // Batches leave every 100 ms: a test waits for its spans, not for the batch timer.
        set("OTEL_BSP_SCHEDULE_DELAY", "100");
        env.extend(self.env);
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Ok(Scenario {
            agent: Agent::start(&args, &env)?,
            receiver,
            stop_within: self.stop_within,
        })
    }
}

impl Outcome {
    /// The spans for which `pred` holds.
    pub fn spans_where(&self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.spans.iter().filter(|s| pred(s)).cloned().collect()
    }

    /// The lines of the agent's log worth reading when an assertion fails.
    pub fn summary(&self) -> String {
        summary(&self.log)
    }
}
