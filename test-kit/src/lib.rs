//! What the end-to-end tests and `cargo xtask bench` both need to drive real programs: child
//! processes that are stopped on every path and whose output is collected line by line, free
//! ports and waiting for them, scratch directories, a private nginx, the common clients, and
//! podman containers from an image built from Debian packages.
pub mod container;
pub mod net;
pub mod nginx;
pub mod peers;
pub mod proc;
pub mod temp;
pub mod wait;
pub mod workspace;

#[cfg(feature = "bpf")]
pub mod bpf;

pub use container::{BASE_PACKAGES, Container, base_image, image};
pub use net::{free_port, raw_server, read_head, reset, wait_port};
pub use nginx::{nginx, start_nginx, start_nginx_sized};
pub use peers::{curl, python_http_server};
pub use proc::{Proc, describe, run_bounded};
pub use temp::TempDir;
pub use wait::wait_for;
pub use workspace::{tracer_bin, workspace_root};

#[cfg(feature = "bpf")]
pub use bpf::{loaded_program_ids, program_ids_of};
