#!/usr/bin/env python3
"""HTTP/1.1 test server (threaded, keep-alive) for the end-to-end tests.

Routes:
  GET  /status/<code>        empty response with that status
  GET  /bytes/<n>            n bytes, Content-Length
  GET  /chunked/<n>          n bytes, Transfer-Encoding: chunked (8 KiB chunks)
  GET  /close/<n>            HTTP/1.0-style: n bytes, no length, ended by closing the connection
  GET  /headers              echoes the request head (as received) in the body
  POST /upload               reads the body (Content-Length or chunked), answers its size and sha256
  anything else              200 "ok"
Prints READY <port> when listening. With CERT and KEY file arguments after the port, serves
HTTPS (Python's ssl module, i.e. the system's libssl).
"""
import hashlib
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send_body(self, code, body, ctype="text/plain"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts[0] == "status" and len(parts) > 1:
            code = int(parts[1])
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif parts[0] == "bytes" and len(parts) > 1:
            self.send_body(200, b"x" * int(parts[1]))
        elif parts[0] == "chunked" and len(parts) > 1:
            n = int(parts[1])
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while n > 0:
                k = min(n, 8192)
                self.wfile.write(b"%x\r\n" % k + b"y" * k + b"\r\n")
                n -= k
            self.wfile.write(b"0\r\n\r\n")
        elif parts[0] == "close" and len(parts) > 1:
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"z" * int(parts[1]))
            self.close_connection = True
        elif parts[0] == "headers":
            head = self.requestline + "\r\n" + str(self.headers)
            self.send_body(200, head.encode())
        else:
            self.send_body(200, b"ok")

    def do_POST(self):
        h = hashlib.sha256()
        size = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                line = self.rfile.readline()
                n = int(line.split(b";")[0], 16)
                if n == 0:
                    self.rfile.readline()
                    break
                data = self.rfile.read(n)
                self.rfile.readline()
                h.update(data)
                size += n
        else:
            remaining = int(self.headers.get("Content-Length", "0"))
            while remaining > 0:
                data = self.rfile.read(min(remaining, 65536))
                if not data:
                    break
                h.update(data)
                size += len(data)
                remaining -= len(data)
        self.send_body(200, f"{size} {h.hexdigest()}".encode())


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    if len(sys.argv) > 3:
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(sys.argv[2], sys.argv[3])
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(f"READY {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
