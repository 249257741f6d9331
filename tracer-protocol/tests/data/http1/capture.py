#!/usr/bin/env python3
"""Records real HTTP/1.x byte streams for the http1 parser tests.

Runs an upstream server (Python's http.server: its stock file handler as HTTP/1.0, and a small
HTTP/1.1 handler for chunked, POST, 100-continue, HEAD), a recording TCP proxy in front of it,
and curl through the proxy. Each proxied connection is written to <name>.stream as records, in
the order the proxy saw them:

    "> <n>\\n" <n bytes> "\\n"   client to server (one recv)
    "< <n>\\n" <n bytes> "\\n"   server to client (one recv)

Usage: python3 capture.py   (rewrites the *.stream files next to this script)
"""
import http.server
import os
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading

HERE = os.path.dirname(os.path.abspath(__file__))


class H11(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_GET(self):
        if self.path.startswith("/chunked"):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Trailer", "X-Checksum")
            self.end_headers()
            for i, part in enumerate([b"hello ", b"chunked " * 50, b"world\n"]):
                ext = b";ext=%d" % i if i == 1 else b""
                self.wfile.write(b"%x%s\r\n%s\r\n" % (len(part), ext, part))
                self.wfile.flush()
            self.wfile.write(b"0\r\nX-Checksum: abc\r\n\r\n")
        elif self.path.startswith("/nocontent"):
            self.send_response(204)
            self.end_headers()
        else:
            body = b"x" * 1000
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    def do_HEAD(self):
        self.do_GET()

    def do_POST(self):
        te = self.headers.get("Transfer-Encoding", "")
        got = 0
        if "chunked" in te.lower():
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                got += len(self.rfile.read(size))
                self.rfile.readline()
        else:
            got = len(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        body = b"received %d\n" % got
        self.send_response(201)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class H10Close(http.server.BaseHTTPRequestHandler):
    """HTTP/1.0, body delimited by the close (no Content-Length)."""

    protocol_version = "HTTP/1.0"

    def log_message(self, *a):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        for _ in range(3):
            self.wfile.write(b"close-delimited line\n" * 20)
            self.wfile.flush()


class Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


def serve(handler, **kw):
    class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        allow_reuse_address = True

    if kw:
        import functools

        handler = functools.partial(handler, **kw)
    s = S(("127.0.0.1", 0), handler)
    threading.Thread(target=s.serve_forever, daemon=True).start()
    return s.server_address[1]


def proxy(upstream_port, out_path):
    """Accepts one connection, forwards it to upstream, records both directions."""
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    port = ls.getsockname()[1]
    lock = threading.Lock()
    records = []

    def run():
        c, _ = ls.accept()
        u = socket.create_connection(("127.0.0.1", upstream_port))

        def pump(src, dst, tag):
            while True:
                try:
                    b = src.recv(65536)
                except OSError:
                    b = b""
                if not b:
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    return
                with lock:
                    records.append((tag, b))
                    dst.sendall(b)

        t1 = threading.Thread(target=pump, args=(c, u, b">"))
        t2 = threading.Thread(target=pump, args=(u, c, b"<"))
        t1.start()
        t2.start()
        t1.join()
        t2.join()
        with open(out_path, "wb") as f:
            for tag, b in records:
                f.write(tag + b" %d\n" % len(b) + b + b"\n")
        c.close()
        u.close()

    th = threading.Thread(target=run)
    th.start()
    return port, th


def curl(name, upstream, args):
    port, th = proxy(upstream, os.path.join(HERE, name + ".stream"))
    base = "http://127.0.0.1:%d" % port
    argv = ["curl", "-sS", "-v", "-o", "/dev/null"]
    for a in args:
        argv.append(a.replace("BASE", base))
    r = subprocess.run(argv, capture_output=True)
    if r.returncode != 0:
        sys.stderr.write(r.stderr.decode(errors="replace"))
    th.join(timeout=10)


def main():
    h11 = serve(H11)
    h10 = serve(H10Close)
    docroot = tempfile.mkdtemp()
    with open(os.path.join(docroot, "index.txt"), "wb") as f:
        f.write(b"0123456789abcdef\n" * 300)
    files = serve(Files, directory=docroot)
    # keep-alive: GET, HEAD, chunked, 204, POST, chunked POST, 100-continue POST, on one connection.
    body = os.path.join(docroot, "upload.bin")
    with open(body, "wb") as f:
        f.write(b"u" * 3000)
    curl(
        "keepalive",
        h11,
        [
            "BASE/a?x=1", "-H", "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "--next", "-o", "/dev/null", "-I", "BASE/head",
            "--next", "-o", "/dev/null", "BASE/chunked",
            "--next", "-o", "/dev/null", "BASE/nocontent",
            "--next", "-o", "/dev/null", "--data-binary", "@" + body, "BASE/post",
            "--next", "-o", "/dev/null", "-H", "Transfer-Encoding: chunked", "--data-binary", "@" + body, "BASE/chunkedpost",
            "--next", "-o", "/dev/null", "-H", "Expect: 100-continue", "--data-binary", "@" + body, "BASE/expect",
        ],
    )
    curl("http10_close", h10, ["BASE/stream"])
    curl("files", files, ["BASE/index.txt"])
    curl("files_404", files, ["BASE/missing"])


if __name__ == "__main__":
    main()
