//! Rebuild when bpf-linker changes (it is not a cargo dependency), and link without
//! `--bpf-expand-memcpy-in-order`.
use which::which;

fn main() {
    // bpf-linker passes LLVM `--bpf-expand-memcpy-in-order` by default, which also sets the
    // BPF backend's store limits for memset/memmove to zero: every zeroed struct or moved
    // array became a BPF-to-BPF call into a byte-at-a-time loop (compiler-builtins' memset).
    // Without it LLVM lowers small constant-size ones to word stores (README, "Kernel matrix":
    // what it changed for the verifier).
    println!("cargo:rustc-link-arg=--disable-expand-memcpy-in-order");
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
