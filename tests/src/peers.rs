//! Peers that need building or credentials: a self-signed certificate (openssl) and the
//! grpc-go peer (tests/servers/grpcpeer, built once per test binary).
use std::{path::PathBuf, process::Command, sync::OnceLock};

use crate::{TempDir, workspace_root};

/// A self-signed certificate for `localhost` and 127.0.0.1 (subject alternative names, as Go
/// requires), made with the openssl command line.
pub struct Certs {
    pub dir: TempDir,
}

impl Certs {
    pub fn new(tag: &str) -> Self {
        let dir = TempDir::new(tag);
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=127.0.0.1"])
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            .arg("-keyout")
            .arg(dir.path().join("key.pem"))
            .arg("-out")
            .arg(dir.path().join("cert.pem"))
            .output()
            .expect("running openssl (install it: `cargo xtask setup --test-deps`)");
        assert!(
            out.status.success(),
            "openssl req failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir }
    }
    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }
}

/// The grpc-go peer binary (`grpcpeer server|client <port> ...`, see its main.go), built by
/// tests/servers/grpcpeer/build.sh under target/test-peers the first time a test asks (the Go
/// build cache, target/test-peers/gocache, is shared: later builds take a second, not ~15).
pub fn grpcpeer() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = workspace_root()
            .join("target/test-peers")
            .join(format!("grpcpeer-{}", std::process::id()));
        std::fs::create_dir_all(&out).unwrap();
        let res = Command::new(workspace_root().join("tests/servers/grpcpeer/build.sh"))
            .arg(&out)
            .env(
                "GOCACHE",
                workspace_root().join("target/test-peers/gocache"),
            )
            .output()
            .expect("running tests/servers/grpcpeer/build.sh");
        assert!(
            res.status.success(),
            "building the grpc-go peer failed (its packages come with `cargo xtask setup \
             --test-deps`): {}",
            String::from_utf8_lossy(&res.stderr)
        );
        out.join("grpcpeer")
    })
    .clone()
}
