#!/usr/bin/env python3
"""HTTP/1.1 echo server for the injection tests: answers each request with the exact bytes it
received for it (head, blank line and body), so a client can compare what arrived with what it
sent. Keep-alive and pipelining are supported; bodies need Content-Length.
Usage: echo.py <port> [bind address, default 127.0.0.1]. Prints READY <port> when listening.
"""
import socket
import sys
import threading


def serve(conn):
    buf = b""
    with conn:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            buf += data
            while b"\r\n\r\n" in buf:
                head, rest = buf.split(b"\r\n\r\n", 1)
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                if len(rest) < length:
                    break
                echoed = head + b"\r\n\r\n" + rest[:length]
                buf = rest[length:]
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(echoed)
                    + echoed
                )


def main():
    port = int(sys.argv[1])
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1", port))
    srv.listen(64)
    print(f"READY {port}", flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
