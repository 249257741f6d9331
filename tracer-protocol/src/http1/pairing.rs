//! Pairing requests with responses, and what a loss does to it ("never a wrong span").
//!
//! Requests wait in a FIFO (bounded by
//! [`Limits::max_pending_requests`](super::Limits::max_pending_requests); requests beyond it are
//! remembered only as a count, so FIFO pairing stays right). A response head takes the oldest
//! waiting request. 1xx interim responses are skipped. `101 Switching Protocols` and a 2xx answer
//! to `CONNECT` emit their exchange and stop all parsing on the connection (see
//! [`Http1Conn::upgrades`]).
//!
//! # Losses
//!
//! Uncaptured tails of a chunk inside a body of known remaining length are skipped (the exchange
//! stays complete). Gaps reported with [`Http1Conn::on_gap`] inside such a body are skipped too but
//! mark the exchange incomplete. Anywhere else (in a head, in chunked framing, between messages)
//! the direction loses sync: a head in progress is dropped (`dropped_messages`), a body in
//! progress is marked incomplete, and the direction waits for a chunk that *starts* with a message
//! start of the kind it carries (`METHOD ` or `HTTP/1.x `).
//!
//! A loss of sync can hide message boundaries, so pairing becomes uncertain:
//! * On a connection where pipelining was ever observed (a request seen while an earlier one was
//!   still unanswered), any loss of sync abandons the connection: waiting requests are counted as
//!   dropped and nothing more is parsed (FIFO order cannot be re-established safely).
//! * Otherwise the client is assumed to wait for each response before its next request, and
//!   (until a clean pairing) the parser only pairs what timing proves possible: a response cannot
//!   answer a request that started after it (`start` of a request: read exit for a received one,
//!   write entry for a sent one; of a response: write entry for a sent one, read exit for a
//!   received one). A new request ends a response whose framing was lost (it is emitted,
//!   `incomplete`). Older requests still waiting when a new one arrives are dropped as "response
//!   lost" only if the response side lost sync and was active after them; otherwise the
//!   connection is taken to pipeline. A request after which requests were lost is not paired with
//!   a response that follows a response-side loss (both are dropped).
//!
//! Residual risk, by design of the above: a client that first pipelines right after a
//! response-side loss (so pipelining was never observed) can be mis-paired.
//!
//! Every response checks that timing rule, also in sync, as a guard against mis-ordered input.

use std::collections::VecDeque;

use super::body::{Body, Chunked};
use super::head::{BodyHeaders, Framing, Method};
use super::{ChunkInfo, Http1Conn, Owner, Phase, Started};
use crate::{Direction, HttpExchange, RequestHead, ResponseHead, SpanCtx};

/// A request waiting for its response.
#[derive(Debug)]
pub(super) struct PendingRequest {
    pub(super) seq: u64,
    pub(super) dir: Direction,
    pub(super) head: RequestHead,
    method: Method,
    /// Request start (also the ordering time, see the module docs).
    pub(super) start_ns: u64,
    pub(super) tid: u32,
    pub(super) body_size: u64,
    pub(super) incomplete: bool,
    /// Requests may have been lost (request-side loss of sync) after this one.
    loss_after: bool,
    pub(super) head_position: u64,
    pub(super) injected: Option<SpanCtx>,
}

/// An entry of the FIFO of requests waiting for a response.
#[derive(Debug)]
pub(super) enum QueueEntry {
    Waiting(PendingRequest),
    /// Requests over the pending limit: their responses are skipped in order.
    OverLimit(u64),
}

/// A request paired with its response, whose body is being received (or whose framing was
/// lost).
#[derive(Debug)]
pub(super) struct PairedResponse {
    pub(super) req: PendingRequest,
    pub(super) resp: ResponseHead,
    pub(super) body_size: u64,
    pub(super) end_ns: u64,
    pub(super) incomplete: bool,
    /// The response's end cannot be found from its framing any more.
    pub(super) framing_lost: bool,
}

impl Http1Conn {
    /// A request head of `dir` whose first byte came with `first`.
    pub(super) fn on_request(
        &mut self,
        dir: Direction,
        head: RequestHead,
        method: Method,
        body: BodyHeaders,
        first: ChunkInfo,
        out: &mut Vec<HttpExchange>,
    ) {
        self.req_dir = Some(dir);
        let d = dir.index();
        let start_ns = match dir {
            Direction::Ingress => first.ts_exit,
            Direction::Egress => first.ts_enter,
        };
        // A response whose framing was lost ends, at the latest, when the next request starts.
        if self.paired.as_ref().is_some_and(|f| f.framing_lost)
            && let Some(f) = self.paired.take()
        {
            Self::emit(f, out);
        }
        let older_waiting = self
            .queue
            .iter()
            .any(|s| matches!(s, QueueEntry::Waiting(_)));
        if older_waiting || self.paired.is_some() {
            // Either the client pipelines, or the response side lost the older requests'
            // responses. The latter only if the response side lost sync and was active after
            // the newest older request (a non-pipelining client waits for the response).
            let resp_exit = self.dirs[dir.opposite().index()].last_exit;
            let newest_older = self
                .queue
                .iter()
                .rev()
                .find_map(|s| match s {
                    QueueEntry::Waiting(r) => Some(r.start_ns),
                    QueueEntry::OverLimit(_) => None,
                })
                .unwrap_or(0);
            if !self.pipelined
                && self.resp_desynced
                && self.paired.is_none()
                && resp_exit >= newest_older
                && resp_exit <= start_ns
            {
                for entry in self.queue.drain(..) {
                    if let QueueEntry::Waiting(_) = entry {
                        self.stats.dropped_messages += 1;
                    }
                }
            } else {
                self.pipelined = true;
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.started.push(Started {
            seq,
            tid: first.tid,
            start_ns,
            head_position: first.position,
            direction: dir,
            injected: first.ctx.filter(|_| dir == Direction::Egress),
        });
        let pending = PendingRequest {
            seq,
            dir,
            head,
            method,
            start_ns,
            tid: first.tid,
            body_size: 0,
            incomplete: false,
            loss_after: false,
            head_position: first.position,
            injected: first.ctx.filter(|_| dir == Direction::Egress),
        };
        let cap = (self.limits.max_pending_requests as usize).max(1);
        let owner = if self.queue.len() < cap {
            self.queue.push_back(QueueEntry::Waiting(pending));
            Owner::Request(seq)
        } else {
            self.stats.dropped_messages += 1;
            match self.queue.back_mut() {
                Some(QueueEntry::OverLimit(n)) => *n = n.saturating_add(1),
                _ => self.queue.push_back(QueueEntry::OverLimit(1)),
            }
            Owner::Discard
        };
        self.dirs[d].owner = owner;
        self.dirs[d].phase = match body.request_framing() {
            Framing::None | Framing::UntilClose => Phase::Start,
            Framing::Length(n) => Phase::Body(Body::Length(n)),
            Framing::Chunked => Phase::Body(Body::Chunked(Chunked::Size)),
            Framing::Invalid => {
                self.lose(dir, out);
                return;
            }
        };
        if self.dirs[d].phase == Phase::Start {
            self.dirs[d].owner = Owner::Discard;
        }
    }

    /// A response head of `dir` (status from 100) whose first byte came with `first` and
    /// last with `last`.
    pub(super) fn on_response(
        &mut self,
        dir: Direction,
        head: ResponseHead,
        body: BodyHeaders,
        first: ChunkInfo,
        last: ChunkInfo,
        out: &mut Vec<HttpExchange>,
    ) {
        if self.req_dir.is_none() {
            self.req_dir = Some(dir.opposite());
        }
        let d = dir.index();
        // A held response (framing lost) ended before this one.
        if let Some(mut f) = self.paired.take() {
            f.incomplete = true;
            Self::emit(f, out);
        }
        let status = head.status;
        if (100..200).contains(&status) && status != 101 {
            // Interim (100 Continue, 103 Early Hints): not paired; the final response follows.
            self.dirs[d].phase = Phase::Start;
            self.dirs[d].owner = Owner::Discard;
            return;
        }
        let resp_start = match dir {
            Direction::Egress => first.ts_enter,
            Direction::Ingress => first.ts_exit,
        };
        let req = self.pair(resp_start, first.other_unseen > 0);
        let method = req.as_ref().map_or(Method::Other, |q| q.method);
        if status == 101 || (method == Method::Connect && (200..300).contains(&status)) {
            if let Some(req) = req {
                let incomplete = req.incomplete;
                Self::emit(
                    PairedResponse {
                        req,
                        resp: head,
                        body_size: 0,
                        end_ns: last.ts_exit,
                        incomplete,
                        framing_lost: false,
                    },
                    out,
                );
            }
            self.upgrades += 1;
            self.stop();
            return;
        }
        let framing = body.response_framing(method, status);
        self.dirs[d].owner = match req {
            Some(req) => {
                self.paired.set(PairedResponse {
                    req,
                    resp: head,
                    body_size: 0,
                    end_ns: last.ts_exit,
                    incomplete: false,
                    framing_lost: false,
                });
                Owner::Response
            }
            None => Owner::Discard,
        };
        match framing {
            Framing::None => self.finish_message(dir, last.ts_exit, false, out),
            Framing::Length(n) => self.dirs[d].phase = Phase::Body(Body::Length(n)),
            Framing::Chunked => self.dirs[d].phase = Phase::Body(Body::Chunked(Chunked::Size)),
            Framing::UntilClose => self.dirs[d].phase = Phase::Body(Body::UntilClose),
            Framing::Invalid => self.lose(dir, out),
        }
    }

    /// The request a final response starting at `resp_start` answers, if it can be told.
    /// `requests_unseen`: the kernel had moved request bytes the parser was not given.
    fn pair(&mut self, resp_start: u64, requests_unseen: bool) -> Option<PendingRequest> {
        match self.queue.front_mut() {
            None => {
                self.stats.unmatched_responses += 1;
                self.suspect = true;
                None
            }
            Some(QueueEntry::OverLimit(n)) => {
                // The answer to a request over the pending limit (already counted).
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.queue.pop_front();
                }
                None
            }
            Some(QueueEntry::Waiting(r)) => {
                if r.start_ns > resp_start {
                    // Started before the oldest waiting request: answers a request not seen.
                    self.stats.unmatched_responses += 1;
                    self.suspect = true;
                    return None;
                }
                // After a response-side loss this response may answer a later request: one
                // already known lost, or one whose bytes were never delivered (its loss only
                // shows when a later request arrives).
                let ambiguous = (r.loss_after || requests_unseen) && self.resp_desynced;
                let Some(QueueEntry::Waiting(r)) = self.queue.pop_front() else {
                    return None;
                };
                if ambiguous {
                    // Requests were lost after this one and responses may have been lost too:
                    // this response may answer either.
                    self.stats.dropped_messages += 1;
                    self.stats.unmatched_responses += 1;
                    return None;
                }
                self.resp_desynced = false;
                if self.queue.is_empty() {
                    self.suspect = false;
                }
                Some(r)
            }
        }
    }

    /// `dir` lost sync: the message in progress is incomplete, the direction waits for a chunk
    /// that starts a message, and pairing becomes cautious (or the connection is abandoned when
    /// it pipelines).
    pub(super) fn lose(&mut self, dir: Direction, out: &mut Vec<HttpExchange>) {
        let d = dir.index();
        self.dirs[d].release_buf();
        self.dirs[d].phase = Phase::Resync;
        self.mark_incomplete(d);
        match self.dirs[d].owner {
            Owner::Response => {
                if let Some(f) = self.paired.as_mut() {
                    f.framing_lost = true;
                }
            }
            Owner::Request(_) | Owner::Discard => {}
        }
        self.dirs[d].owner = Owner::Discard;
        self.pairing_loss(dir, out);
    }

    pub(super) fn pairing_loss(&mut self, dir: Direction, out: &mut Vec<HttpExchange>) {
        if self.pipelined {
            self.abandon(out);
            return;
        }
        self.suspect = true;
        if self.req_dir == Some(dir) {
            if let Some(QueueEntry::Waiting(r)) = self.queue.back_mut() {
                r.loss_after = true;
            }
        } else {
            self.resp_desynced = true;
        }
    }

    /// Pairing can no longer be trusted: emit what is already paired, drop the rest, stop.
    fn abandon(&mut self, out: &mut Vec<HttpExchange>) {
        if let Some(mut f) = self.paired.take() {
            f.incomplete = true;
            Self::emit(f, out);
        }
        self.stop();
    }

    /// Stop parsing this connection (tunnel, upgrade, abandon); requests still waiting are
    /// counted as dropped.
    fn stop(&mut self) {
        for entry in self.queue.drain(..) {
            if let QueueEntry::Waiting(_) = entry {
                self.stats.dropped_messages += 1;
            }
        }
        self.queue = VecDeque::new();
        for d in &mut self.dirs {
            d.free_buf();
            d.phase = Phase::Resync;
            d.owner = Owner::Discard;
        }
        self.stopped = true;
    }

    /// The waiting or paired request numbered `seq`.
    pub(super) fn req_mut(&mut self, seq: u64) -> Option<&mut PendingRequest> {
        let in_queue = self.queue.iter_mut().rev().find_map(|s| match s {
            QueueEntry::Waiting(r) if r.seq == seq => Some(r),
            _ => None,
        });
        match in_queue {
            Some(r) => Some(r),
            None => self
                .paired
                .as_mut()
                .map(|f| &mut f.req)
                .filter(|r| r.seq == seq),
        }
    }

    pub(super) fn emit(f: PairedResponse, out: &mut Vec<HttpExchange>) {
        out.push(HttpExchange {
            request_direction: f.req.dir,
            request: f.req.head,
            response: Some(f.resp),
            start_ns: f.req.start_ns,
            end_ns: f.end_ns.max(f.req.start_ns),
            request_body_size: f.req.body_size,
            response_body_size: f.body_size,
            tid: f.req.tid,
            seq: f.req.seq,
            incomplete: f.incomplete || f.req.incomplete,
            head_position: f.req.head_position,
            injected: f.req.injected,
            messages: Vec::new(),
            messages_dropped: 0,
        });
    }
}
