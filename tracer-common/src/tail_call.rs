//! The tail-call table: the programs reached through the `PROGS` program array, each at a
//! fixed index. Separate programs so that the verifier checks each one on its own.

/// A tail-called program; its discriminant is its index in `PROGS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TailCall {
    /// An ingress call on a server connection may start a request: look at its head.
    ServerCtx = 0,
    /// An egress call on a client connection may start a request: look at its head.
    ClientCtx = 1,
    /// Scans a chunk of a request head, then itself again or the scan's finishing program.
    Scan = 2,
    /// A server request's scan is done: its thread now serves it.
    ServerFinish = 3,
    /// An outgoing request's scan is done: decide the `traceparent` injection.
    ClientFinish = 4,
}

impl TailCall {
    /// Entries of `PROGS`.
    pub const COUNT: usize = 5;

    /// Every program, in index order.
    pub const ALL: [Self; Self::COUNT] = [
        Self::ServerCtx,
        Self::ClientCtx,
        Self::Scan,
        Self::ServerFinish,
        Self::ClientFinish,
    ];

    /// Index in `PROGS`.
    #[inline(always)]
    pub const fn index(self) -> u32 {
        self as u32
    }

    /// The program's name in the kernel object (its function in `tracer-ebpf`).
    pub const fn program(self) -> &'static str {
        match self {
            Self::ServerCtx => "http_server_ctx",
            Self::ClientCtx => "http_client_ctx",
            Self::Scan => "http_scan",
            Self::ServerFinish => "http_server_finish",
            Self::ClientFinish => "http_client_finish",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TailCall;

    #[test]
    fn the_table_lists_each_program_once_at_its_index() {
        for (i, call) in TailCall::ALL.iter().enumerate() {
            assert_eq!(call.index() as usize, i, "{call:?}");
            let later = &TailCall::ALL[i + 1..];
            assert!(
                later.iter().all(|c| c.program() != call.program()),
                "{} twice",
                call.program()
            );
        }
    }
}
