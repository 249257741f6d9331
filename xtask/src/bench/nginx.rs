//! The benchmark's nginx: a tiny `return 200` that keeps connections alive for the whole run.
use std::process::Command;

use anyhow::{Context, Result, ensure};
use test_kit::{Proc, TempDir, free_port, start_nginx};

use crate::util::step;

/// A private nginx (the test kit's: own prefix, one worker) on a free loopback port.
pub(super) struct Nginx {
    pub(super) port: u16,
    _proc: Proc,
}

impl Nginx {
    /// `extra`: also serve `/big` (64 KiB file), `/missing` (404) and accept uploads, for the
    /// recording.
    /// `tls`: HTTPS with a self-signed certificate made by the openssl command line.
    pub(super) fn start(dir: &TempDir, extra: bool, tls: bool) -> Result<Self> {
        let d = dir.path().join("nginx");
        std::fs::create_dir_all(d.join("www"))?;
        let port = free_port();
        let ssl = if tls {
            let (cert, key) = (d.join("cert.pem"), d.join("key.pem"));
            let out = Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                ])
                .args(["-subj", "/CN=127.0.0.1", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .output()
                .context("running openssl")?;
            ensure!(
                out.status.success(),
                "openssl req: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            format!(
                " ssl;\n        ssl_certificate {};\n        ssl_certificate_key {}",
                cert.display(),
                key.display()
            )
        } else {
            String::new()
        };
        let extra_locations = if extra {
            std::fs::write(d.join("www/big"), vec![b'x'; 64 * 1024])?;
            format!(
                "location = /big {{ default_type application/octet-stream; root {www}; }}\n        \
                 location /missing {{ return 404 \"not here\\n\"; }}\n        \
                 location /upload {{ client_max_body_size 1m; return 201 \"stored\\n\"; }}",
                www = d.join("www").display()
            )
        } else {
            String::new()
        };
        step(format!(
            "nginx on 127.0.0.1:{port}{}, configured in {}",
            if tls { " (TLS)" } else { "" },
            d.display()
        ));
        // wrk and oha keep their connections for the whole round.
        let http = "keepalive_requests 1000000;\n    keepalive_timeout 120s;";
        let server = format!(
            "listen 127.0.0.1:{port}{ssl};\n        {extra_locations}\n        \
             location / {{ return 200 \"ok\"; }}"
        );
        let proc = start_nginx(&d, port, http, &server)?;
        Ok(Self { port, _proc: proc })
    }
}
