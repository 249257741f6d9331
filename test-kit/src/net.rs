//! Loopback ports and raw TCP servers inside the calling process.
use std::{
    io::Read,
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
    thread,
    time::Duration,
};

use anyhow::{Context, Result};

use crate::wait::wait_for;

/// A port nobody listens on right now (the OS picks it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a loopback port")
        .port()
}

/// Waits until something accepts connections on 127.0.0.1:`port`.
pub fn wait_port(port: u16, timeout: Duration) -> Result<()> {
    wait_for(timeout, || TcpStream::connect(("127.0.0.1", port)).ok())
        .map(|_| ())
        .with_context(|| format!("nothing listens on port {port} after {timeout:?}"))
}

/// A raw TCP server in this process (traced like any other process): each accepted
/// connection is handed to `handler` on its own thread. Returns the port.
pub fn raw_server(handler: fn(TcpStream)) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            thread::spawn(move || handler(conn));
        }
    });
    port
}

/// Reads from `s` until the bytes contain the end of a request head (or EOF/error).
pub fn read_head(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

/// Closes with a reset (SO_LINGER 0) instead of a FIN.
pub fn reset(s: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a correctly sized value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        );
    }
    drop(s);
}
