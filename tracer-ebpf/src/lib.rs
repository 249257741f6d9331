#![no_std]
// Lets tracer-user build-depend on this crate so cargo rebuilds the embedded object.
