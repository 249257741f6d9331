//! The contract between the kernel programs and the agent: fixed-layout (`#[repr(C)]`) events,
//! maps' keys and values, the names of the maps the agent reaches, the tail-call table, the
//! start-up configuration handed to the programs, and the small pure functions both sides need
//! (protocol classification). Everything here is unit-tested on the host.
#![cfg_attr(not(test), no_std)]

pub mod classify;
pub mod config;
pub mod event;
pub mod names;
pub mod propagation;
pub mod sampling;
pub mod tail_call;

pub use classify::{Protocol, classify};
pub use config::{Config, KernelOffsets};
pub use event::*;
pub use propagation::{CtxState, InjectStat, SpanCtx};
pub use tail_call::TailCall;
