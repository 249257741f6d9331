//! Child processes that are always cleaned up, and waiting helpers: the shared `test-kit`
//! crate's, which `cargo xtask bench` uses too.
pub use test_kit::{
    Proc, TempDir, curl, free_port, loaded_program_ids, nginx, program_ids_of, python_http_server,
    raw_server, read_head, reset, tracer_bin, wait_for, wait_port, workspace_root,
};
