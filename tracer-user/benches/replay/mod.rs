//! What the replay benchmarks share: the recorded event stream, the assembler it is replayed
//! through, and the exporters' encoding of what comes out.
use std::hint::black_box;

use tracer::{
    agent::read_recording,
    assemble::SpanAssembler,
    capture::events::{Event, decode},
    conn::TableLimits,
    export::TraceEncoder,
    process::ProcessTable,
    span::Span,
    trace::{Clock, SpanOptions},
};
use tracer_common::EventHeader;

/// Written by `tracer --record-events` during `cargo xtask bench --record`.
pub const RECORDING: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/data/events.bin");
/// The OTLP exporters' default batch size (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`).
pub const BATCH: usize = 512;
/// Offset of `EventHeader::pid` in every record.
const PID_OFFSET: usize = std::mem::offset_of!(EventHeader, pid);

/// The recording's records, as recorded.
pub fn recorded() -> Vec<Vec<u8>> {
    let bytes = std::fs::read(RECORDING).unwrap_or_else(|e| {
        panic!("{RECORDING}: {e} (record one with `cargo xtask bench --record`)")
    });
    read_recording(&bytes)
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect()
}

/// The records with data and close events attributed to `pid` (a live process: resource
/// look-ups then hit the cache, as in the agent).
pub fn with_pid(records: &[Vec<u8>], pid: u32) -> Vec<Vec<u8>> {
    records
        .iter()
        .map(|r| {
            let mut r = r.clone();
            if matches!(decode(&r), Some(Event::Data { .. } | Event::Close(_))) {
                r[PID_OFFSET..PID_OFFSET + 4].copy_from_slice(&pid.to_ne_bytes());
            }
            r
        })
        .collect()
}

/// The span assembler with the agent's default options.
pub fn assembler() -> SpanAssembler {
    SpanAssembler::new(
        ProcessTable::new(None, vec![]),
        Clock::measure(),
        SpanOptions::default(),
        TableLimits::default(),
    )
}

/// An exporter's encoder and its reused output buffer.
#[derive(Default)]
pub struct Encoding {
    encoder: TraceEncoder,
    buf: Vec<u8>,
}

impl Encoding {
    /// Encodes `batch` (left empty) as one OTLP request, as an exporter does; its size in
    /// bytes.
    pub fn encode(&mut self, batch: &mut Vec<Span>) -> usize {
        self.buf.clear();
        self.encoder.encode(batch, &mut self.buf);
        batch.clear();
        black_box(&self.buf).len()
    }
}
