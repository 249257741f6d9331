//! Trace context in the kernel: which request a thread is serving, and the `traceparent`
//! inserted into the requests it sends.
//!
//! - A request arriving on a server connection (its first bytes are a request line) makes its
//!   thread "serving": the kernel records the request's trace (from a valid incoming
//!   `traceparent`, else derived) and its SERVER span id, both derived exactly as the agent
//!   will derive them ([`tracer_common::propagation::server_ids`]).
//! - A request written on a client connection gets a fresh CLIENT span id, in the serving
//!   request's trace (or a new one), decided at syscall entry; the sk_msg program, which runs
//!   inside that same syscall, inserts the header after the request line. The data event of
//!   the call reports the ids, so the agent's CLIENT span is the one the callee names.
//!
//! - A request that forwards the `traceparent` its process received (a proxy: nginx, HAProxy,
//!   any thread, event loops too) is rewritten in place: its parent-id field becomes a fresh
//!   CLIENT span id, trace id and flags stay. Same length, so no byte is inserted. Received
//!   headers are kept per process in `RECEIVED`, with the SERVER span that received them.
//! - Forwarded B3 likewise (`b3: {trace}-{span}[-{sampling}[-{parent}]]`, or `X-B3-TraceId`
//!   with `X-B3-SpanId` and maybe `X-B3-ParentSpanId`): its span id becomes the CLIENT span's
//!   id and its parent span id, when present, the receiving SERVER span's (the new span's
//!   parent, as B3 defines it); trace id and sampling stay.
//!
//! Only requests whose whole head is in the call's first buffer (and within [`SCAN_MAX`]
//! bytes) are touched, never one that carries B3 context or a `traceparent` of its own (only
//! forwarded ones are rewritten), and never a write on a connection whose previous injected
//! request has not been answered (pipelining, or a body that happens to start like a
//! request).
use aya_ebpf::{
    bindings::{BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, sk_action::SK_PASS},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_msg_pull_data,
        bpf_probe_read_kernel, bpf_probe_read_kernel_buf, bpf_probe_read_user_buf,
    },
    macros::{sk_msg, sock_ops, tracepoint},
    programs::{SkMsgContext, SockOpsContext, TracePointContext},
};
use tracer_common::{
    ConnState, CtxState, InjectStat, Protocol, Role, SpanCtx, TailCall,
    propagation::{
        SPAN_ID_HEX_LEN, TRACEPARENT_LINE_LEN, TRACEPARENT_PARENT_AT, TRACEPARENT_VALUE_LEN,
        parse_b3_single_with, parse_b3_span_id_with, parse_b3_trace_id_with,
        parse_traceparent_with, server_ids, span_id_hex, traceparent_line,
    },
};

use crate::maps::{
    B3_TWICE, CONNS, ForwardKey, HEX_TABLE, INFLIGHT, INJECT_DONE, INJECT_PENDING, PROGS,
    PendingSyscall, REWRITE_PENDING, SCAN, SCAN_CHUNK, SCAN_MAX, SCRATCH, SOCKS, ScanBuf,
    TARGET_PORTS, THREAD_CTX, THREAD_FOREIGN, THREAD_RESPONDED, THREAD_SERVING, ThreadCtx, config,
    count_inject, offsets, received_by, remember_received,
};
use tracer_common::config::INJECT_ALL;

const MASK: usize = SCAN_MAX - 1;

/// Reads byte `i` (masked into the buffer) of a scan source.
#[inline(always)]
fn at(buf: *const u8, i: usize) -> u8 {
    // SAFETY: callers pass buffers of at least 2 × SCAN_MAX bytes; the index is masked.
    unsafe { *buf.add(i & MASK) }
}

/// Whether the bytes start with a request line: `TOKEN SP` then `/`, `*` or an absolute URI.
#[inline(always)]
fn starts_request(buf: *const u8, n: usize) -> bool {
    if n < 16 {
        return false;
    }
    // The HTTP/2 client preface (`PRI * HTTP/2.0`) looks like a request line: never touch it.
    if at(buf, 0) == b'P' && at(buf, 1) == b'R' && at(buf, 2) == b'I' && at(buf, 3) == b' ' {
        return false;
    }
    let mut i = 0;
    while i < 8 {
        let c = at(buf, i);
        if c == b' ' {
            let t = at(buf, i + 1);
            return i >= 3 && (t == b'/' || t == b'*' || t == b'h');
        }
        if !c.is_ascii_uppercase() {
            return false;
        }
        i += 1;
    }
    false
}

/// Little-endian u64 of 8 bytes at `i` (masked into the buffer; unaligned loads are fine on
/// map memory).
#[inline(always)]
fn at64(buf: *const u8, i: usize) -> u64 {
    // SAFETY: as `at`, 8 bytes past a masked index stay inside the 2 × SCAN_MAX buffer.
    unsafe { core::ptr::read_unaligned(buf.add(i & MASK) as *const u64) }
}

#[inline(always)]
fn at16(buf: *const u8, i: usize) -> u16 {
    // SAFETY: as `at64`.
    unsafe { core::ptr::read_unaligned(buf.add(i & MASK) as *const u16) }
}

const fn le(name: &[u8]) -> u64 {
    let mut v = 0u64;
    let mut k = 0;
    while k < name.len() && k < 8 {
        v |= (name[k] as u64) << (8 * k);
        k += 1;
    }
    v
}

/// Every byte of the header names looked for has bit 0x20 set: OR-ing it in lower-cases.
const LOWER: u64 = 0x2020_2020_2020_2020;
const TRACEPAR: u64 = le(b"tracepar");
const ENT_COLON: u64 = le(b"ent:");
const B3_COLON: u64 = le(b"b3:");
const X_B3_DASH: u64 = le(b"x-b3-");
const X_B3_SPA: u64 = le(b"x-b3-spa");
const NID_COLON: u64 = le(b"nid:");
const X_B3_TRA: u64 = le(b"x-b3-tra");
const CEID_COLON: u64 = le(b"ceid:");
const X_B3_PAR: u64 = le(b"x-b3-par");
const ENTSPANI: u64 = le(b"entspani");
const D_COLON: u16 = u16::from_le_bytes(*b"d:");
const CRLF: u16 = u16::from_le_bytes(*b"\r\n");

/// Records where a B3 header's value starts, or that the header came twice.
#[inline(always)]
fn note(slot: &mut u16, value_at: usize) {
    *slot = if *slot == 0 {
        value_at as u16
    } else {
        B3_TWICE
    };
}

/// Whether any of the 8 bytes of `w` is `\r`: the exact zero-byte test on `w ^ CR`.
#[inline(always)]
fn has_cr(w: u64) -> bool {
    const CR: u64 = 0x0d0d_0d0d_0d0d_0d0d;
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let x = w ^ CR;
    x.wrapping_sub(ONES) & !x & HIGHS != 0
}

/// One run of the scan: [`SCAN_CHUNK`] steps from the cursor, looking for the end of the
/// request line, the end of the head, and `traceparent`/B3 header names. A step skips 8 bytes
/// without a `\r` at once, else looks at one position, so a run covers up to 8 × SCAN_CHUNK
/// bytes. The cursor lives in map memory, not in a local: every path through a step then
/// leaves the verifier the same state, and it prunes them. Returns whether the scan is over
/// (head end found, or no more bytes).
#[inline(always)]
fn scan_chunk(res: *mut ScanBuf) -> bool {
    // SAFETY: `res` is this CPU's SCAN value.
    unsafe {
        let buf = (*res).data.as_ptr();
        let n = (*res).len as usize;
        let n = if n > SCAN_MAX { SCAN_MAX } else { n };
        let mut j = 0usize;
        while j < SCAN_CHUNK {
            j += 1;
            let i = (*res).cursor as usize & MASK;
            if i + 4 > n {
                return true;
            }
            if !has_cr(at64(buf, i)) {
                (*res).cursor = (i + 8) as u32;
                continue;
            }
            (*res).cursor = (i + 1) as u32;
            if at16(buf, i) == CRLF {
                let s = i + 2;
                if at16(buf, s) == CRLF {
                    (*res).head_end = (s + 2) as u32;
                    return true;
                }
                let w = at64(buf, s) | LOWER;
                let x = at64(buf, s + 8) | LOWER;
                if (*res).line_end == 0 {
                    (*res).line_end = s as u32;
                }
                if w == TRACEPAR && (x & 0xffff_ffff) == ENT_COLON && s + 12 <= n {
                    (*res).traceparent_at = (s + 12) as u32;
                }
                if (w & 0xff_ffff) == B3_COLON {
                    (*res).foreign = 1;
                    note(&mut (*res).b3_at, s + 3);
                } else if (w & 0xff_ffff_ffff) == X_B3_DASH {
                    (*res).foreign = 1;
                    if w == X_B3_SPA && (x & 0xffff_ffff) == NID_COLON {
                        note(&mut (*res).b3_span_at, s + 12);
                    } else if w == X_B3_TRA && (x & 0xff_ffff_ffff) == CEID_COLON {
                        note(&mut (*res).b3_trace_at, s + 13);
                    } else if w == X_B3_PAR
                        && x == ENTSPANI
                        && (at16(buf, s + 16) | 0x2020) == D_COLON
                    {
                        note(&mut (*res).b3_parent_at, s + 18);
                    }
                }
            }
        }
        ((*res).cursor as usize) + 4 > n
    }
}

/// Chained by tail calls: scans a chunk, then itself again or the finishing program.
#[tracepoint]
pub fn http_scan(ctx: TracePointContext) -> u32 {
    let Some(res) = SCAN.get_ptr_mut(0) else {
        return 0;
    };
    let done = scan_chunk(res);
    let next = if done {
        // SAFETY: this CPU's SCAN slot, valid for the run; no other program runs on this CPU
        // meanwhile.
        unsafe { (*res).finish }
    } else {
        TailCall::Scan.index()
    };
    // SAFETY: `ctx` is this program's context; a tail call that happens does not return, one
    // that fails returns here, and nothing after it needs to run either way.
    unsafe { PROGS.tail_call(&ctx, next) };
    0
}

/// Starts a scan of `SCAN.data[..len]` (already filled) that ends in program `finish`.
#[inline(always)]
fn start_scan(ctx: &TracePointContext, res: *mut ScanBuf, len: usize, finish: u32) {
    // SAFETY: `res` is this CPU's SCAN slot, valid for the run; the tail call is the last
    // thing done (it does not return when it happens).
    unsafe {
        (*res).len = len as u32;
        (*res).cursor = 0;
        (*res).line_end = 0;
        (*res).head_end = 0;
        (*res).traceparent_at = 0;
        (*res).foreign = 0;
        (*res).b3_at = 0;
        (*res).b3_trace_at = 0;
        (*res).b3_span_at = 0;
        (*res).b3_parent_at = 0;
        (*res).finish = finish;
        PROGS.tail_call(ctx, TailCall::Scan.index());
    }
}

/// Spaces and tabs skipped on either side of a header value (a bounded loop for the verifier).
const MAX_OWS: usize = 4;

#[inline(always)]
fn is_ows(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

/// The `traceparent` at `value_at` (after the colon), when valid: a value of exactly
/// [`TRACEPARENT_VALUE_LEN`] bytes between optional whitespace and the line's end, and where
/// the value starts. The agent's parser must read every header alike
/// (tracer-user/tests/traceparent_agreement.rs models this framing: keep the two in step).
/// A `traceparent`'s trace id, parent id and flags.
type TraceparentIds = ([u8; 16], [u8; 8], u8);

#[inline(always)]
fn traceparent_value(buf: *const u8, n: usize, value_at: usize) -> Option<(usize, TraceparentIds)> {
    let v = skip_ows(buf, n, value_at);
    if !line_ends(buf, n, v + TRACEPARENT_VALUE_LEN) {
        return None;
    }
    let table = HEX_TABLE.get(0)?;
    Some((v, parse_traceparent_with(table, |k| at(buf, v + k))?))
}

/// Where a header value starts: after at most [`MAX_OWS`] spaces or tabs from `from`.
#[inline(always)]
fn skip_ows(buf: *const u8, n: usize, from: usize) -> usize {
    let mut v = from;
    let mut k = 0;
    while k < MAX_OWS && v < n && is_ows(at(buf, v)) {
        v += 1;
        k += 1;
    }
    v
}

/// Whether a value ending at `end` is followed only by at most [`MAX_OWS`] spaces or tabs and
/// the line's end (within the `n` bytes scanned).
#[inline(always)]
fn line_ends(buf: *const u8, n: usize, end: usize) -> bool {
    let mut end = end;
    let mut k = 0;
    while k < MAX_OWS && end < n && is_ows(at(buf, end)) {
        end += 1;
        k += 1;
    }
    end < n && at(buf, end) == b'\r'
}

/// A B3 context in a scanned head, read as the agent reads it (`trace_context::extract`:
/// the single `b3` header when valid, else `X-B3-TraceId` with `X-B3-SpanId`): its ids, and
/// where its span id and parent span id fields are in the buffer (0: no parent field).
struct B3Context {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    /// Sampled unless the single header says `0`. The multi headers' `X-B3-Sampled` and
    /// `X-B3-Flags` are not read here: the agent takes a forwarded request's decision from
    /// its own parse of the header.
    flags: u8,
    span_at: usize,
    parent_at: usize,
}

/// The B3 context of the head scanned into `res`, if it has a valid one.
#[inline(always)]
fn b3_context(buf: *const u8, n: usize, res: *const ScanBuf) -> Option<B3Context> {
    let table = HEX_TABLE.get(0)?;
    // SAFETY: this CPU's SCAN slot, valid for the run; read at once.
    let (single, trace_at, span_at, parent_at) = unsafe {
        (
            (*res).b3_at,
            (*res).b3_trace_at,
            (*res).b3_span_at,
            (*res).b3_parent_at,
        )
    };
    if single != 0 && single != B3_TWICE {
        let v = skip_ows(buf, n, single as usize);
        if let Some(b) = parse_b3_single_with(table, |k| at(buf, v + k))
            && line_ends(buf, n, v + b.len)
        {
            return Some(B3Context {
                trace_id: b.trace_id,
                span_id: b.span_id,
                flags: b.flags,
                span_at: v + b.span_at,
                parent_at: if b.parent_at == 0 { 0 } else { v + b.parent_at },
            });
        }
    }
    if trace_at == 0 || span_at == 0 || trace_at == B3_TWICE || span_at == B3_TWICE {
        return None;
    }
    let tv = skip_ows(buf, n, trace_at as usize);
    let (trace_id, trace_len) = parse_b3_trace_id_with(table, &|k| at(buf, tv + k))?;
    let sv = skip_ows(buf, n, span_at as usize);
    let span_id = parse_b3_span_id_with(table, &|k| at(buf, sv + k), 0)?;
    if !line_ends(buf, n, tv + trace_len) || !line_ends(buf, n, sv + SPAN_ID_HEX_LEN) {
        return None;
    }
    let mut pv = 0;
    if parent_at != 0 {
        if parent_at == B3_TWICE {
            return None;
        }
        pv = skip_ows(buf, n, parent_at as usize);
        parse_b3_span_id_with(table, &|k| at(buf, pv + k), 0)?;
        if !line_ends(buf, n, pv + SPAN_ID_HEX_LEN) {
            return None;
        }
    }
    Some(B3Context {
        trace_id,
        span_id,
        flags: 1,
        span_at: sv,
        parent_at: pv,
    })
}

/// Tail call target of the ingress exits: the data event just emitted (still in this CPU's
/// SCRATCH) came in on a server connection. If it starts a request, scan its head.
#[tracepoint]
pub fn http_server_ctx(ctx: TracePointContext) -> u32 {
    let (Some(scratch), Some(res)) = (SCRATCH.get_ptr_mut(0), SCAN.get_ptr_mut(0)) else {
        return 0;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: this CPU's SCRATCH and SCAN slots, filled by the program that tail-called us
    // and valid for the run; the kernel-to-map copy is bounded by both buffers (n ≤ SCAN_MAX).
    unsafe {
        let h = &(*scratch).header;
        if h.header.pid != (pid_tgid >> 32) as u32 || h.header.tid != pid_tgid as u32 {
            return 0;
        }
        let n = h.captured_len as usize;
        let n = if n > SCAN_MAX { SCAN_MAX } else { n };
        if !starts_request((*scratch).data.as_ptr(), n) {
            return 0;
        }
        if bpf_probe_read_kernel_buf((*scratch).data.as_ptr(), &mut (&mut (*res).data)[..n])
            .is_err()
        {
            return 0;
        }
        (*res).pid_tgid = pid_tgid;
        (*res).conn_id = h.conn_id;
        (*res).position = h.position;
        start_scan(&ctx, res, n, TailCall::ServerFinish.index());
    }
    0
}

/// End of a server request's scan: its thread now serves it, in the trace of its valid
/// `traceparent` or in the derived one.
#[tracepoint]
pub fn http_server_finish(_ctx: TracePointContext) -> u32 {
    let Some(res) = SCAN.get_ptr_mut(0) else {
        return 0;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: this CPU's SCAN slot, filled by the chain that tail-called us, valid for the run.
    let (conn_id, position, n, tp_at, foreign) = unsafe {
        if (*res).pid_tgid != pid_tgid {
            return 0;
        }
        (
            (*res).conn_id,
            (*res).position,
            (*res).len as usize,
            (*res).traceparent_at,
            (*res).foreign,
        )
    };
    // SAFETY: as above.
    let data = unsafe { (*res).data.as_ptr() };
    let (mut trace_id, span_id) = server_ids(config().ctx_key, conn_id, position);
    let mut parent_flags = None;
    // The context received, as (trace id, the caller's span id), for requests forwarding it.
    let mut received = None;
    if tp_at != 0
        && let Some((_, (t, p, f))) = traceparent_value(data, n, tp_at as usize)
    {
        trace_id = t;
        parent_flags = Some(f);
        received = Some((t, p));
    }
    let adopted = parent_flags.is_some();
    // B3 is not followed here (the thread is `THREAD_FOREIGN`), only remembered.
    if !adopted
        && foreign != 0
        && let Some(b) = b3_context(data, n, res)
    {
        received = Some((b.trace_id, b.span_id));
    }
    // The head sampler's decision, as the agent takes it (`tracer_common::sampling`): the
    // requests this one causes carry it downstream.
    let flags = config().head_rule().flags(&trace_id, parent_flags);
    if let Some((received_trace, parent_id)) = received {
        let key = ForwardKey {
            tgid: (pid_tgid >> 32) as u32,
            _pad: 0,
            trace_id: received_trace,
            parent_id,
        };
        remember_received(&key, span_id);
    }
    let mut multiplexed = 0;
    let prev = THREAD_CTX.get_ptr_mut(pid_tgid);
    if let Some(prev) = prev {
        // SAFETY: this thread's entry, which only this thread writes; valid for the run.
        unsafe {
            multiplexed = (*prev).multiplexed;
            if (*prev).state == THREAD_SERVING && (*prev).conn_id != conn_id {
                multiplexed = 1;
            }
        }
    }
    let state = if foreign != 0 && !adopted {
        THREAD_FOREIGN
    } else {
        THREAD_SERVING
    };
    let t = ThreadCtx {
        trace_id,
        span_id,
        conn_id,
        flags,
        state,
        multiplexed,
        _pad: [0; 5],
    };
    match prev {
        // In place: a lookup, where an insert also takes a bucket lock and an LRU node.
        // SAFETY: as above.
        Some(prev) => unsafe { *prev = t },
        None => {
            let _ = THREAD_CTX.insert(pid_tgid, t, 0);
        }
    }
    count_inject(InjectStat::ServerRequests);
    0
}

/// After an ingress call's event: record the request it may start (separate program).
#[inline(always)]
pub fn after_ingress(ctx: &TracePointContext, conn: *const ConnState) {
    // SAFETY: a CONNS value, which the kernel keeps alive for this run.
    let (role, protocol) = unsafe { ((*conn).role, (*conn).protocol) };
    if config().inject != 0 && role == Role::Server as u8 && protocol == Protocol::Http1 as u8 {
        // SAFETY: `ctx` is this program's context, and the caller's last step: nothing after
        // it needs to run whether the tail call happens or not.
        unsafe { PROGS.tail_call(ctx, TailCall::ServerCtx.index()) };
    }
}

/// At the entry of a write on a tracked connection. Server side: the thread's response
/// starts. Client side: maybe a request to inject into; the decision is a chain of separate
/// programs (tail calls: on success they do not return here).
#[inline(always)]
pub fn before_egress(ctx: &TracePointContext, pid_tgid: u64, conn: &ConnState) {
    if config().inject == 0 {
        return;
    }
    if conn.role == Role::Server as u8 {
        if let Some(t) = THREAD_CTX.get_ptr_mut(pid_tgid) {
            // SAFETY: this thread's THREAD_CTX value, which only this thread writes; valid for
            // the run.
            unsafe {
                if (*t).conn_id == conn.conn_id && (*t).state == THREAD_SERVING {
                    (*t).state = THREAD_RESPONDED;
                }
            }
        }
        return;
    }
    let p = conn.protocol;
    if conn.role == Role::Client as u8
        && (p == Protocol::Unknown as u8 || p == Protocol::Http1 as u8)
    {
        // SAFETY: as in `after_ingress`: the caller's last step.
        unsafe { PROGS.tail_call(ctx, TailCall::ClientCtx.index()) };
    }
}

#[inline(always)]
fn random_bytes<const N: usize>(out: &mut [u8; N]) {
    let mut i = 0;
    while i + 4 <= N {
        // SAFETY: a helper without arguments.
        let r = unsafe { bpf_get_prandom_u32() }.to_ne_bytes();
        out[i] = r[0];
        out[i + 1] = r[1];
        out[i + 2] = r[2];
        out[i + 3] = r[3];
        i += 4;
    }
    out[0] |= 1;
}

/// Tail call target of the egress entries on client connections: if the call's first
/// buffer starts a request, scan its head (the decision is `http_client_finish`).
#[tracepoint]
pub fn http_client_ctx(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (Some(inflight), Some(res)) = (INFLIGHT.get_ptr_mut(pid_tgid), SCAN.get_ptr_mut(0)) else {
        return 0;
    };
    // SAFETY: this thread's INFLIGHT entry (only this thread writes it) and this CPU's SCAN
    // slot, both valid for the run; the user copy is bounded by the buffer (n ≤ SCAN_MAX) and
    // may fail, not fault; the CONNS value is read at once.
    unsafe {
        let len = (*inflight).scan_len as usize;
        let n = if len > SCAN_MAX { SCAN_MAX } else { len };
        if n < 16 {
            return 0;
        }
        let src = (*inflight).scan_src;
        if bpf_probe_read_user_buf(src as *const u8, &mut (&mut (*res).data)[..n]).is_err() {
            return 0;
        }
        if !starts_request((*res).data.as_ptr(), n) {
            return 0;
        }
        if let Some(conn) = CONNS.get((*inflight).sk)
            && conn.awaiting_response != 0
        {
            count_inject(InjectStat::Pipelined);
            diag!(
                "conn {}: no traceparent: an injected request still awaits its response",
                conn.conn_id
            );
            return 0;
        }
        (*res).pid_tgid = pid_tgid;
        start_scan(&ctx, res, n, TailCall::ClientFinish.index());
    }
    0
}

/// End of an outgoing request's scan: whether (and with which ids) the sk_msg program
/// inserts `traceparent` into this call's bytes.
#[tracepoint]
pub fn http_client_finish(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (Some(inflight), Some(res)) = (INFLIGHT.get_ptr_mut(pid_tgid), SCAN.get_ptr_mut(0)) else {
        return 0;
    };
    // SAFETY: this thread's INFLIGHT entry (only this thread writes it) and this CPU's SCAN
    // slot, both valid for the run; the THREAD_CTX value is this thread's, read at once.
    unsafe {
        if (*res).pid_tgid != pid_tgid {
            return 0;
        }
        if (*res).foreign != 0 && (*res).traceparent_at == 0 {
            b3_rewrite_decision(pid_tgid, inflight, res);
            return 0;
        }
        if (*res).foreign != 0 {
            count_inject(InjectStat::HasContext);
            diag!(
                "pid {}: no traceparent: the request carries both W3C and B3 context",
                pid_tgid >> 32
            );
            return 0;
        }
        if (*res).traceparent_at != 0 {
            rewrite_decision(pid_tgid, inflight, res);
            return 0;
        }
        let line_end = (*res).line_end;
        if (*res).head_end == 0 || line_end < 16 || line_end > (*res).len {
            count_inject(InjectStat::HeadIncomplete);
            diag!(
                "pid {}: no traceparent: the request head is not whole in the call's first {} bytes",
                pid_tgid >> 32,
                (*res).len
            );
            return 0;
        }
        let mut ctx = SpanCtx {
            state: CtxState::Injected as u8,
            ..SpanCtx::default()
        };
        random_bytes(&mut ctx.span_id);
        match THREAD_CTX.get(pid_tgid) {
            Some(t) if t.state == THREAD_FOREIGN => {
                count_inject(InjectStat::HasContext);
                diag!(
                    "pid {}: no traceparent: the request being served carried B3 context",
                    pid_tgid >> 32
                );
                return 0;
            }
            Some(t) if t.state == THREAD_SERVING && t.multiplexed == 0 => {
                ctx.trace_id = t.trace_id;
                ctx.parent_id = t.span_id;
                ctx.flags = t.flags;
            }
            _ => {
                // A new trace: the head sampler decides its flag from the trace id alone.
                random_bytes(&mut ctx.trace_id);
                ctx.flags = config().head_rule().flags(&ctx.trace_id, None);
            }
        }
        (*inflight).ctx = ctx;
        (*inflight).inject_at = line_end as u16;
        (*inflight).inject_state = INJECT_PENDING;
    }
    0
}

/// An outgoing request that carries a `traceparent`: when it is one its process received
/// (forwarded), the sk_msg program overwrites its parent-id with a new CLIENT span's id, the
/// received SERVER span's child. Any other header is the application's own: left alone.
#[inline(always)]
fn rewrite_decision(pid_tgid: u64, inflight: *mut PendingSyscall, res: *mut ScanBuf) {
    // SAFETY: as in `http_client_finish`, which passes its pointers on; the RECEIVED value is
    // read at once.
    unsafe {
        // Not clamped here (as in `http_server_finish`): a clamp lets the compiler prove the
        // reads' indices small and drop their masks, which older verifiers (5.10, 6.1) cannot
        // follow ("unbounded memory access").
        let n = (*res).len as usize;
        let data = (*res).data.as_ptr();
        let Some((v, (trace_id, parent_id, flags))) =
            traceparent_value(data, n, (*res).traceparent_at as usize)
        else {
            count_inject(InjectStat::HasContext);
            return;
        };
        let key = ForwardKey {
            tgid: (pid_tgid >> 32) as u32,
            _pad: 0,
            trace_id,
            parent_id,
        };
        let Some(server_span) = received_by(&key) else {
            count_inject(InjectStat::HasContext);
            diag!(
                "pid {}: no traceparent: the request carries trace context",
                pid_tgid >> 32
            );
            return;
        };
        let field = v + TRACEPARENT_PARENT_AT;
        if (*res).head_end == 0 || field + SPAN_ID_HEX_LEN + 1 > n {
            count_inject(InjectStat::HeadIncomplete);
            diag!(
                "pid {}: forwarded traceparent left alone: the request head is not whole in the call's first {} bytes",
                pid_tgid >> 32,
                n
            );
            return;
        }
        let mut ctx = SpanCtx {
            trace_id,
            parent_id: server_span,
            flags,
            state: CtxState::Rewritten as u8,
            ..SpanCtx::default()
        };
        random_bytes(&mut ctx.span_id);
        (*inflight).ctx = ctx;
        (*inflight).inject_at = field as u16;
        (*inflight).rewrite_parent_at = 0;
        (*inflight).inject_state = REWRITE_PENDING;
    }
}

/// An outgoing request that carries B3 context (and no `traceparent`): when it is the context
/// its process received (forwarded), the sk_msg program overwrites its span id with a new
/// CLIENT span's id and its parent span id, if the context has one, with the receiving SERVER
/// span's id: the new span's parent, as B3 defines the field. Same length, trace id and
/// sampling kept. A head with both the single and the multi headers is left alone (one could
/// not be rewritten without the other).
#[inline(always)]
fn b3_rewrite_decision(pid_tgid: u64, inflight: *mut PendingSyscall, res: *mut ScanBuf) {
    // SAFETY: as in `rewrite_decision`.
    unsafe {
        let n = (*res).len as usize;
        let data = (*res).data.as_ptr();
        let both = (*res).b3_at != 0 && ((*res).b3_span_at != 0 || (*res).b3_trace_at != 0);
        let found = if both { None } else { b3_context(data, n, res) };
        let Some(b) = found else {
            count_inject(InjectStat::HasContext);
            diag!(
                "pid {}: no traceparent: the request carries B3 context",
                pid_tgid >> 32
            );
            return;
        };
        let key = ForwardKey {
            tgid: (pid_tgid >> 32) as u32,
            _pad: 0,
            trace_id: b.trace_id,
            parent_id: b.span_id,
        };
        let Some(server_span) = received_by(&key) else {
            count_inject(InjectStat::HasContext);
            diag!(
                "pid {}: no traceparent: the request carries B3 context of its own",
                pid_tgid >> 32
            );
            return;
        };
        if (*res).head_end == 0 {
            count_inject(InjectStat::HeadIncomplete);
            diag!(
                "pid {}: forwarded B3 left alone: the request head is not whole in the call's first {} bytes",
                pid_tgid >> 32,
                n
            );
            return;
        }
        let mut ctx = SpanCtx {
            trace_id: b.trace_id,
            parent_id: server_span,
            flags: b.flags,
            state: CtxState::Rewritten as u8,
            ..SpanCtx::default()
        };
        random_bytes(&mut ctx.span_id);
        (*inflight).ctx = ctx;
        (*inflight).inject_at = b.span_at as u16;
        (*inflight).rewrite_parent_at = b.parent_at as u16;
        (*inflight).inject_state = REWRITE_PENDING;
    }
}

/// Overwrites a forwarded context's fields with the decided ids: the 16-hex field at
/// `inject_at` (`traceparent`'s parent-id, B3's span id) with the CLIENT span id, and B3's
/// parent span id at `rewrite_parent_at`, if any, with the SERVER span id. A parent field
/// that cannot be written leaves a well-formed header naming the CLIENT span (counted as
/// failed too).
///
/// # Safety
/// `inflight` is this thread's INFLIGHT value, valid for the run.
#[inline(always)]
unsafe fn rewrite_forwarded(ctx: &SkMsgContext, inflight: *mut PendingSyscall) {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: per the contract.
    let (at, parent_at, span_id, parent_id) = unsafe {
        (
            (*inflight).inject_at as u32,
            (*inflight).rewrite_parent_at as u32,
            (*inflight).ctx.span_id,
            (*inflight).ctx.parent_id,
        )
    };
    if !overwrite_id(ctx, at, &span_id) {
        count_inject(InjectStat::Failed);
        diag!(
            "pid {}: forwarded context left alone: the message differs from the bytes scanned",
            pid_tgid >> 32
        );
        return;
    }
    // SAFETY: per the contract.
    unsafe { (*inflight).inject_state = INJECT_DONE };
    count_inject(InjectStat::Rewritten);
    if parent_at != 0 && !overwrite_id(ctx, parent_at, &parent_id) {
        count_inject(InjectStat::Failed);
        diag!(
            "pid {}: forwarded B3 parent span id left alone",
            pid_tgid >> 32
        );
    }
}

/// Writes the 16 hex digits of `id` over those at byte `at` of the message, once they are
/// there as scanned: 16 lower-case hex digits between a separator (`-`, `:` or whitespace)
/// and a separator or the line's end.
#[inline(always)]
fn overwrite_id(ctx: &SkMsgContext, at: u32, id: &[u8; 8]) -> bool {
    let len = SPAN_ID_HEX_LEN as u32;
    if at < 1 || at + len + 1 > ctx.size() || (at + len) as usize > SCAN_MAX {
        return false;
    }
    let Some(table) = HEX_TABLE.get(0) else {
        return false;
    };
    // SAFETY: message bytes are read and written only between `data` and `data_end`, after
    // checking that the range pulled in is that long.
    unsafe {
        if bpf_msg_pull_data(ctx.msg, at - 1, at + len + 1, 0) != 0 {
            return false;
        }
        let (d, e) = (ctx.data(), ctx.data_end());
        if d + SPAN_ID_HEX_LEN + 2 > e {
            return false;
        }
        let before = *(d as *const u8);
        let after = *((d + SPAN_ID_HEX_LEN + 1) as *const u8);
        if !(before == b'-' || before == b':' || is_ows(before))
            || !(after == b'-' || after == b'\r' || is_ows(after))
        {
            return false;
        }
        let dst = (d + 1) as *mut u8;
        let mut bad = 0;
        let mut i = 0;
        while i < SPAN_ID_HEX_LEN {
            bad |= table[*dst.add(i) as usize] >> 4;
            i += 1;
        }
        if bad != 0 {
            return false;
        }
        let mut hex = [0u8; SPAN_ID_HEX_LEN];
        span_id_hex(id, &mut hex);
        let mut i = 0;
        while i < SPAN_ID_HEX_LEN {
            *dst.add(i) = hex[i];
            i += 1;
        }
    }
    true
}

/// Whether the socket's file is non-blocking: sock->sk_socket->file->f_flags & O_NONBLOCK.
/// Sockets in a sockmap get the kernel's sockmap receive path, which can fail a blocking recv
/// with EAGAIN; applications with non-blocking sockets retry on EAGAIN by contract.
#[inline(always)]
fn nonblocking(ctx: &SockOpsContext) -> bool {
    const O_NONBLOCK: u32 = 0o4000;
    // SAFETY: `ctx.ops` is this program's context, which the verifier lets it read; kernel
    // memory is read only through bpf_probe_read_kernel (errors yield false). The socket
    // pointer is copied out of the context through the stack so that it becomes a plain number
    // the offsets can be added to.
    unsafe {
        let sk_ptr = (*ctx.ops).__bindgen_anon_2.sk;
        if sk_ptr.is_null() {
            return false;
        }
        let slot = sk_ptr;
        let Ok(sk) = bpf_probe_read_kernel(&slot as *const _ as *const u64) else {
            return false;
        };
        let off = offsets();
        let Ok(socket) = bpf_probe_read_kernel((sk + off.sk_socket as u64) as *const u64) else {
            return false;
        };
        let Ok(file) = bpf_probe_read_kernel((socket + off.socket_file as u64) as *const u64)
        else {
            return false;
        };
        if file == 0 {
            return false;
        }
        let Ok(flags) = bpf_probe_read_kernel((file + off.file_flags as u64) as *const u32) else {
            return false;
        };
        flags & O_NONBLOCK != 0
    }
}

/// Established client connections join `SOCKS`, so the sk_msg program sees what they send.
#[sock_ops]
pub fn tracer_sock_ops(ctx: SockOpsContext) -> u32 {
    if ctx.op() != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        return 0;
    }
    if config().filter_ports != 0 {
        let remote = (u32::from_be(ctx.remote_port()) & 0xffff) as u16;
        let local = ctx.local_port() as u16;
        // SAFETY: only whether the keys exist is used, never the values.
        if unsafe { TARGET_PORTS.get(remote) }.is_none()
            // SAFETY: as above.
            && unsafe { TARGET_PORTS.get(local) }.is_none()
        {
            return 0;
        }
    }
    if config().inject != INJECT_ALL && !nonblocking(&ctx) {
        diag!(
            "client socket to port {}: no traceparent: blocking (--inject-traceparent all includes it)",
            (u32::from_be(ctx.remote_port()) & 0xffff) as u16
        );
        return 0;
    }
    // SAFETY: `ctx.ops` is this program's `bpf_sock_ops` context, what the helper expects.
    let mut cookie = unsafe { bpf_get_socket_cookie(ctx.ops as *mut _) };
    // SAFETY: the context is valid for the run and nothing else holds a reference to it.
    let _ = SOCKS.update(&mut cookie, unsafe { &mut *ctx.ops }, 0);
    0
}

/// Runs inside the sender's send call: inserts the header the entry program decided on, once
/// per call (later verdicts of the same call, for the rest of a large write, pass untouched).
#[sk_msg]
pub fn tracer_sk_msg(ctx: SkMsgContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(inflight) = INFLIGHT.get_ptr_mut(pid_tgid) else {
        return SK_PASS;
    };
    // SAFETY: this thread's INFLIGHT entry (the send call's entry program wrote it; only this
    // thread writes it), valid for the run. `msg` is the program's context. Message bytes are
    // read and written only between `data` and `data_end` after checking that the range
    // pulled in is that long, as the verifier also demands.
    unsafe {
        let state = (*inflight).inject_state;
        if state != INJECT_PENDING && state != REWRITE_PENDING {
            return SK_PASS;
        }
        let msg = ctx.msg;
        let remote = u16::from_be(((*msg).remote_port >> 16) as u16);
        let local = (*msg).local_port as u16;
        if remote != (*inflight).remote_port || local != (*inflight).local_port {
            return SK_PASS;
        }
        // Decided once: whatever happens below, the rest of the call passes untouched.
        (*inflight).inject_state = 0;
        if state == REWRITE_PENDING {
            rewrite_forwarded(&ctx, inflight);
            return SK_PASS;
        }
        let at = (*inflight).inject_at as u32;
        if at < 16 || at > ctx.size() || at as usize > SCAN_MAX {
            count_inject(InjectStat::Failed);
            diag!(
                "pid {}: no traceparent: insertion point {} outside the message",
                pid_tgid >> 32,
                at
            );
            return SK_PASS;
        }
        // The bytes before the insertion point must be the request line's CRLF.
        if bpf_msg_pull_data(msg, at - 2, at, 0) != 0 {
            count_inject(InjectStat::Failed);
            return SK_PASS;
        }
        let (d, e) = (ctx.data(), ctx.data_end());
        if d + 2 > e || *(d as *const u8) != b'\r' || *((d + 1) as *const u8) != b'\n' {
            count_inject(InjectStat::Failed);
            diag!(
                "pid {}: no traceparent: the message differs from the bytes scanned",
                pid_tgid >> 32
            );
            return SK_PASS;
        }
        let len = TRACEPARENT_LINE_LEN as u32;
        if ctx.push_data(at, len, 0).is_err() {
            count_inject(InjectStat::Failed);
            diag!(
                "pid {}: no traceparent: the kernel did not grow the message",
                pid_tgid >> 32
            );
            return SK_PASS;
        }
        // From here the message holds `len` unwritten bytes: remove them on any failure.
        let (d, e) = if bpf_msg_pull_data(msg, at, at + len, 0) == 0 {
            (ctx.data(), ctx.data_end())
        } else {
            (0, 0)
        };
        if d == 0 || d + TRACEPARENT_LINE_LEN > e {
            let _ = ctx.pop_data(at, len, 0);
            count_inject(InjectStat::Failed);
            return SK_PASS;
        }
        let mut line = [0u8; TRACEPARENT_LINE_LEN];
        traceparent_line(&(*inflight).ctx, &mut line);
        let dst = d as *mut u8;
        let mut i = 0;
        while i < TRACEPARENT_LINE_LEN {
            *dst.add(i) = line[i];
            i += 1;
        }
        // The insertion left the message in three scatterlist elements (before, the header,
        // after), and the sockmap's send path (tcp_bpf_push) sends each element as a segment
        // of its own: three segments for one request, a partial read for the server and more
        // ACKs. A message that fits a page is copied back into one element; a failure (no
        // memory) only costs those segments.
        let size = ctx.size();
        if size <= LINEARIZE_MAX {
            let _ = bpf_msg_pull_data(msg, 0, size, 0);
        }
        (*inflight).inject_state = INJECT_DONE;
        count_inject(InjectStat::Injected);
    }
    SK_PASS
}

/// The largest injected message copied back into one scatterlist element (one page).
const LINEARIZE_MAX: u32 = 4096;
