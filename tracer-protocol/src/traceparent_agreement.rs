//! The kernel and the agent read an incoming `traceparent` with two parsers: the kernel's
//! (`tracer_common::propagation`, branch-free for the verifier) decides the trace of the
//! requests a serving thread sends, the agent's (`tracer_protocol::trace_context`, the agent's `trace::context`) the trace of the
//! SERVER span. A header one accepts and the other refuses, or reads differently, splits the
//! trace in two, so both must agree on every input: valid headers, every one-byte mutation,
//! case, lengths 54..=60, every version and flags byte, zero ids, whitespace, random bytes.
//!
//! Two differences are known and accepted, and checked to be exactly that:
//! - a version above 00: the agent reads its first four fields as version 00's, as W3C
//!   suggests (a "SHOULD"); the kernel refuses it (no version above 00 exists yet);
//! - more than [`KERNEL_MAX_OWS`] spaces or tabs around the value: the kernel refuses it.
//!
//! Built for the unit tests below (a seeded generator: every run checks the same cases, and a
//! failure names the inputs) and for the `traceparent` fuzz target (`--cfg fuzzing`), which
//! feeds [`disagreement`] arbitrary bytes.
use crate::trace_context::parse_traceparent as agent_parse;
use tracer_common::propagation::{TRACEPARENT_VALUE_LEN, parse_traceparent as kernel_parse};

/// What the kernel makes of the header line `traceparent:<raw>\r\n`. This is the framing of
/// `incoming_traceparent` (tracer-ebpf/src/context.rs; keep the two in step): at most
/// [`KERNEL_MAX_OWS`] spaces or tabs, 55 bytes, at most as many spaces or tabs, the line's end;
/// then the shared parser decides.
fn kernel(raw: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    let line = [raw, b"\r\n"].concat();
    let ows = |i: usize| matches!(line.get(i), Some(b' ' | b'\t'));
    let mut v = 0;
    while v < KERNEL_MAX_OWS && ows(v) {
        v += 1;
    }
    let mut end = v + TRACEPARENT_VALUE_LEN;
    let mut k = 0;
    while k < KERNEL_MAX_OWS && ows(end) {
        end += 1;
        k += 1;
    }
    if line.get(end) != Some(&b'\r') {
        return None;
    }
    kernel_parse(line[v..v + TRACEPARENT_VALUE_LEN].try_into().ok()?)
}

/// Spaces and tabs the kernel skips around the value (a bounded loop for the verifier).
const KERNEL_MAX_OWS: usize = 4;

/// What the agent makes of the same header (httparse hands it the value as text).
fn agent(raw: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    let tp = agent_parse(std::str::from_utf8(raw).ok()?)?;
    Some((tp.trace_id, tp.parent_id, tp.flags))
}

/// How the two parsers read the header value `raw` differently, beyond the known
/// differences; `None` when they agree.
pub fn disagreement(raw: &[u8]) -> Option<String> {
    let (k, a) = (kernel(raw), agent(raw));
    (k != a && !known_difference(raw, k)).then(|| {
        format!(
            "  {:?}\n    kernel: {}\n    agent:  {}",
            String::from_utf8_lossy(raw),
            show(k),
            show(a)
        )
    })
}

/// One of the differences the module docs list: the kernel refuses what the agent accepts.
fn known_difference(raw: &[u8], kernel: Option<([u8; 16], [u8; 8], u8)>) -> bool {
    let Some(tp) = std::str::from_utf8(raw).ok().and_then(agent_parse) else {
        return false;
    };
    let is_ows = |c: &&u8| matches!(c, b' ' | b'\t');
    let leading = raw.iter().take_while(is_ows).count();
    let trailing = raw.iter().rev().take_while(is_ows).count();
    kernel.is_none() && (tp.version != 0 || leading > KERNEL_MAX_OWS || trailing > KERNEL_MAX_OWS)
}

fn show(r: Option<([u8; 16], [u8; 8], u8)>) -> String {
    match r {
        None => "refused".into(),
        Some((t, s, f)) => format!("trace {} parent {} flags {f:02x}", hex(&t), hex(&s)),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks every input, then fails naming the first disagreements (input, both readings).
    fn assert_agree(inputs: impl IntoIterator<Item = Vec<u8>>) {
        let mut checked = 0usize;
        let mut disagreements = Vec::new();
        for raw in inputs {
            checked += 1;
            disagreements.extend(disagreement(&raw));
        }
        assert!(
            disagreements.is_empty(),
            "{} of {checked} inputs read differently, e.g.:\n{}",
            disagreements.len(),
            disagreements[..disagreements.len().min(8)].join("\n")
        );
    }

    /// SplitMix64: small, seeded, good enough to spread inputs.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn byte(&mut self) -> u8 {
            self.next() as u8
        }

        fn pick<T: Copy>(&mut self, from: &[T]) -> T {
            from[self.below(from.len())]
        }

        /// An id of `N` bytes: usually random, sometimes all zero or with one byte set.
        fn id<const N: usize>(&mut self) -> [u8; N] {
            let mut id = [0u8; N];
            match self.below(8) {
                0 => {}
                1 => id[self.below(N)] = self.byte() | 1,
                _ => id.iter_mut().for_each(|b| *b = self.byte()),
            }
            id
        }
    }

    fn header(version: u8, trace: &[u8; 16], span: &[u8; 8], flags: u8) -> Vec<u8> {
        format!("{version:02x}-{}-{}-{flags:02x}", hex(trace), hex(span)).into_bytes()
    }

    /// A random header: version 00 mostly, any version sometimes; any ids and flags.
    fn random_header(rng: &mut Rng) -> Vec<u8> {
        let version = if rng.below(4) == 0 { rng.byte() } else { 0 };
        let any = rng.byte();
        let flags = rng.pick(&[0x00, 0x01, 0x02, 0x03, any]);
        header(version, &rng.id(), &rng.id(), flags)
    }

    /// The W3C example, and a few random valid headers, as mutation bases.
    fn bases(rng: &mut Rng) -> Vec<Vec<u8>> {
        let mut bases = vec![b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_vec()];
        bases.extend((0..4).map(|_| {
            let trace: [u8; 16] = std::array::from_fn(|_| rng.byte() | 0x11);
            let span: [u8; 8] = std::array::from_fn(|_| rng.byte() | 0x11);
            header(0, &trace, &span, 1)
        }));
        bases
    }

    #[test]
    fn valid_and_random_headers_agree() {
        let mut rng = Rng(1);
        assert_agree((0..20_000).map(|_| random_header(&mut rng)));
    }

    #[test]
    fn every_one_byte_mutation_agrees() {
        let mut rng = Rng(2);
        let inputs = bases(&mut rng).into_iter().flat_map(|base| {
            (0..base.len()).flat_map(move |i| {
                let base = base.clone();
                // CR and LF cannot be inside a header value.
                (0..=255u8)
                    .filter(|c| !matches!(c, b'\r' | b'\n'))
                    .map(move |c| {
                        let mut v = base.clone();
                        v[i] = c;
                        v
                    })
            })
        });
        assert_agree(inputs);
    }

    #[test]
    fn case_changes_agree() {
        let mut rng = Rng(3);
        let mut inputs = Vec::new();
        for base in bases(&mut rng) {
            inputs.push(base.to_ascii_uppercase());
            for i in 0..base.len() {
                let mut v = base.clone();
                v[i] = v[i].to_ascii_uppercase();
                inputs.push(v);
            }
        }
        assert_agree(inputs);
    }

    #[test]
    fn lengths_54_to_60_agree() {
        let mut rng = Rng(4);
        let tails: &[u8] = b"-- \t0af-xZ.,;";
        let mut inputs = Vec::new();
        for _ in 0..4_000 {
            let mut v = random_header(&mut rng);
            if rng.below(8) == 0 {
                v.truncate(54);
            } else {
                for _ in 0..rng.below(6) {
                    v.push(rng.pick(tails));
                }
            }
            inputs.push(v);
        }
        assert_agree(inputs);
    }

    #[test]
    fn every_version_and_flags_byte_agrees() {
        let mut rng = Rng(5);
        let (trace, span) = (rng.id::<16>().map(|b| b | 1), rng.id::<8>().map(|b| b | 1));
        let mut inputs = Vec::new();
        for b in 0..=255u8 {
            inputs.push(header(b, &trace, &span, 1));
            // Fields after the flags, as a future version may add.
            inputs.push([header(b, &trace, &span, 1), b"-0102".to_vec()].concat());
            inputs.push(header(0, &trace, &span, b));
            inputs.push(header(1, &trace, &span, b));
        }
        assert_agree(inputs);
    }

    #[test]
    fn zero_ids_agree() {
        let (trace, span) = ([0xab; 16], [0xcd; 8]);
        assert_agree([
            header(0, &[0; 16], &span, 1),
            header(0, &trace, &[0; 8], 1),
            header(0, &[0; 16], &[0; 8], 1),
            header(0xff, &trace, &span, 1),
            header(0, &trace, &span, 1),
        ]);
    }

    #[test]
    fn whitespace_around_the_value_agrees() {
        let mut rng = Rng(6);
        let mut inputs = Vec::new();
        for _ in 0..2_000 {
            let ows = |rng: &mut Rng| -> Vec<u8> {
                (0..rng.below(KERNEL_MAX_OWS + 1))
                    .map(|_| rng.pick(b" \t"))
                    .collect()
            };
            let (lead, trail) = (ows(&mut rng), ows(&mut rng));
            inputs.push([lead, random_header(&mut rng), trail].concat());
        }
        assert_agree(inputs);
    }

    #[test]
    fn random_bytes_agree() {
        let mut rng = Rng(7);
        let alphabet: &[u8] = b"0123456789abcdefABCDEF-- \tgx";
        let mut inputs = Vec::new();
        for _ in 0..20_000 {
            let len = 54 + rng.below(7);
            let mut v: Vec<u8> = (0..len).map(|_| rng.pick(alphabet)).collect();
            // Mostly dashes where a header has them, so more inputs get past the first checks.
            for i in [2, 35, 52] {
                if rng.below(8) != 0 && i < v.len() {
                    v[i] = b'-';
                }
            }
            inputs.push(v);
        }
        assert_agree(inputs);
    }
}
