#!/usr/bin/env python3
"""Vectored-I/O HTTP peers for the syscall-coverage tests.

server PORT FAMILY   serve forever: read requests with recvmsg, answer with sendmsg (the head
                     and the body in separate iovecs). FAMILY is 4 or 6. Prints READY.
client PORT FAMILY N send N keep-alive requests with os.writev (request line and headers in
                     separate iovecs) and read the responses with os.readv; prints OK.
"""
import os
import socket
import sys
import threading


def handle(conn):
    buf = b""
    while True:
        while b"\r\n\r\n" not in buf:
            data, _, _, _ = conn.recvmsg(65536)
            if not data:
                conn.close()
                return
            buf += data
        head, buf = buf.split(b"\r\n\r\n", 1)
        path = head.split(b" ")[1]
        code = int(path.rsplit(b"/", 1)[1]) if path.startswith(b"/status/") else 200
        body = b"vectored " + path
        resp_head = b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n" % (code, len(body))
        conn.sendmsg([resp_head, body])


def server(port, family):
    fam = socket.AF_INET6 if family == "6" else socket.AF_INET
    host = "::1" if family == "6" else "127.0.0.1"
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(64)
    print("READY", flush=True)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def client(port, family, n):
    fam = socket.AF_INET6 if family == "6" else socket.AF_INET
    host = "::1" if family == "6" else "127.0.0.1"
    s = socket.create_connection((host, port)) if fam == socket.AF_INET else socket.socket(fam)
    if fam == socket.AF_INET6:
        s.connect((host, port))
    fd = s.fileno()
    for i in range(n):
        code = 200 + i
        os.writev(fd, [b"GET /status/%d HTTP/1.1\r\n" % code, b"Host: v\r\nUser-Agent: vectored\r\n\r\n"])
        got = b""
        while b"\r\n\r\n" not in got or not got.endswith(b"/status/%d" % code):
            head = bytearray(16)
            rest = bytearray(4096)
            n_read = os.readv(fd, [head, rest])
            assert n_read > 0
            got += bytes((head + rest)[:n_read])
    print("OK", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(int(sys.argv[2]), sys.argv[3])
    else:
        client(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
