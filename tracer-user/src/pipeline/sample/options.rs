//! The sampling options of the command line (flattened into `Cli`). The head sampler follows
//! the OpenTelemetry SDK variables (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`).
use super::{
    AttributeMatch, DEFAULT_DECISION_CACHE, DEFAULT_MAX_BYTES, DEFAULT_MAX_TRACES, HeadSampler,
    Policies, SamplerKind, SamplingOptions,
};

const HEADING: &str = "Sampling";

// A `//` comment: clap would turn a doc comment into the command's `about`.
#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = HEADING)]
pub struct SamplingArgs {
    /// Head sampler (decided from the trace id alone, the same on every node and in the
    /// kernel's injected `traceparent`): `always_on` exports every span and passes an upstream
    /// sampled flag on unchanged; `traceidratio` keeps the ratio of traces whose trace id passes
    /// the threshold test (OpenTelemetry consistent probability sampling, `ot=th:` in
    /// `tracestate`); `parentbased_*` follow the incoming sampled flag (W3C or B3) and decide
    /// new traces as named.
    #[arg(
        long,
        value_enum,
        value_name = "SAMPLER",
        default_value = "always_on",
        env = "OTEL_TRACES_SAMPLER",
        ignore_case = true
    )]
    pub traces_sampler: SamplerKind,

    /// The ratio of the `*traceidratio` samplers, in [0, 1].
    #[arg(long, value_name = "RATIO", default_value_t = 1.0, env = "OTEL_TRACES_SAMPLER_ARG",
          value_parser = parse_ratio)]
    pub traces_sampler_arg: f64,

    /// Keep every trace with an error span (status Error: 5xx on servers, 4xx/5xx on clients).
    /// Default: on whenever the head sampler can drop traces.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true",
          env = "TRACER_SAMPLING_KEEP_ERRORS")]
    pub sampling_keep_errors: Option<bool>,

    /// Keep every trace with a span slower than this (e.g. `500ms`, `2s`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_ns,
          env = "TRACER_SAMPLING_KEEP_SLOWER_THAN")]
    pub sampling_keep_slower_than: Option<u64>,

    /// Keep every trace with a span whose attribute KEY has VALUE (e.g.
    /// `http.request.header.x-tier=gold`). Repeatable.
    #[arg(long, value_name = "KEY=VALUE")]
    pub sampling_keep_attribute: Vec<AttributeMatch>,

    /// How long the spans of an unsampled trace are held for a tail policy to match.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration_ns,
          env = "TRACER_SAMPLING_DECISION_WAIT")]
    pub sampling_decision_wait: u64,

    /// At most this many traces held; beyond, the oldest is decided early (overflow, counted).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_TRACES,
          env = "TRACER_SAMPLING_MAX_TRACES")]
    pub sampling_max_traces: usize,

    /// At most this many bytes of spans held (estimated); beyond, as --sampling-max-traces.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_BYTES,
          env = "TRACER_SAMPLING_MAX_BYTES")]
    pub sampling_max_bytes: usize,

    /// Decisions remembered for spans arriving after their trace's decision.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_DECISION_CACHE,
          env = "TRACER_SAMPLING_DECISION_CACHE")]
    pub sampling_decision_cache: usize,
}

impl SamplingArgs {
    pub fn options(&self) -> SamplingOptions {
        let head = HeadSampler::new(self.traces_sampler, self.traces_sampler_arg);
        SamplingOptions {
            head,
            policies: Policies {
                keep_errors: self.sampling_keep_errors.unwrap_or(head.can_drop()),
                keep_slower_than_ns: self.sampling_keep_slower_than,
                keep_attributes: self.sampling_keep_attribute.clone(),
            },
            decision_wait_ns: self.sampling_decision_wait,
            max_traces: self.sampling_max_traces,
            max_bytes: self.sampling_max_bytes,
            decision_cache: self.sampling_decision_cache,
        }
    }
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("`{s}`: a ratio between 0 and 1")),
    }
}

/// `250ms`, `2s`, `1.5s`, `1m` (a plain number is seconds) → nanoseconds.
pub fn parse_duration_ns(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let scale = match unit.trim() {
        "" | "s" => 1e9,
        "ms" => 1e6,
        "us" | "µs" => 1e3,
        "ns" => 1.0,
        "m" | "min" => 60e9,
        _ => return Err(format!("`{s}`: a duration such as 500ms, 2s or 1m")),
    };
    match num.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok((v * scale) as u64),
        _ => Err(format!("`{s}`: a duration such as 500ms, 2s or 1m")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        s: SamplingArgs,
    }

    fn parse(args: &[&str]) -> Result<SamplingOptions, clap::Error> {
        let mut all = vec!["t"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).map(|c| c.s.options())
    }

    #[test]
    fn defaults_keep_everything_without_tail() {
        let o = parse(&[]).unwrap();
        assert_eq!(o.head.kind, SamplerKind::AlwaysOn);
        assert!(!o.policies.keep_errors, "head at 100 %: no tail policy");
        assert_eq!(o.decision_wait_ns, 2_000_000_000);
    }

    #[test]
    fn a_ratio_turns_error_keeping_on() {
        let o = parse(&[
            "--traces-sampler",
            "parentbased_traceidratio",
            "--traces-sampler-arg",
            "0.1",
            "--sampling-keep-slower-than",
            "250ms",
            "--sampling-keep-attribute",
            "a=b",
        ])
        .unwrap();
        assert_eq!(o.head.kind, SamplerKind::ParentbasedTraceIdRatio);
        assert!(o.policies.keep_errors);
        assert_eq!(o.policies.keep_slower_than_ns, Some(250_000_000));
        assert_eq!(o.policies.keep_attributes.len(), 1);
        let o = parse(&[
            "--traces-sampler",
            "traceidratio",
            "--sampling-keep-errors",
            "false",
        ])
        .unwrap();
        assert!(!o.policies.keep_errors);
        assert!(parse(&["--traces-sampler-arg", "1.5"]).is_err());
        assert!(parse(&["--traces-sampler", "sometimes"]).is_err());
        assert!(parse(&["--sampling-decision-wait", "soon"]).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ns("1.5s"), Ok(1_500_000_000));
        assert_eq!(parse_duration_ns("20ms"), Ok(20_000_000));
        assert_eq!(parse_duration_ns("3"), Ok(3_000_000_000));
        assert_eq!(parse_duration_ns("1m"), Ok(60_000_000_000));
        assert!(parse_duration_ns("-1s").is_err());
        assert!(parse_duration_ns("5 parsecs").is_err());
    }
}
