//! Harness for the end-to-end tests: free ports, real servers and clients as child processes,
//! the agent binary, and the OTLP receiver that decodes with the official protobufs.
pub mod procs;
pub mod receiver;

pub use procs::*;
