#!/usr/bin/env python3
"""Threaded HTTP/1.1 proxy for the propagation tests: each request is answered after the
handler thread itself makes one `http.client` request to the backend (same thread, no header
forwarding). Usage: proxy.py <port> <backend port>. Prints READY <port> when listening.
"""
import http.client
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BACKEND = int(sys.argv[2])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        conn = http.client.HTTPConnection("127.0.0.1", BACKEND, timeout=10)
        conn.request("GET", "/backend" + self.path)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        body = b"proxied %d %d\n" % (resp.status, len(data))
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main():
    port = int(sys.argv[1])
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print("READY", port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
