#!/usr/bin/env python3
"""A tiny HTTP service with known latencies and errors, for the metrics tests.

    red_service.py PORT [--downstream PORT]

Routes (HTTP/1.1, keep-alive):
  GET /fast            200 at once
  GET /slow            200 after 300 ms
  GET /fail            500 at once
  GET /fanout          calls GET /leaf on 127.0.0.1:<downstream> three times, one after the
                       other, from the serving thread, then 200
  GET /leaf            200 at once
  GET /anything/else   200 at once (the cardinality test's unparameterisable paths)

Prints READY once listening. The service's name comes from OTEL_SERVICE_NAME, as for any
process the agent traces.
"""

import argparse
import http.client
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def make_handler(downstream):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Head and body are two writes: without TCP_NODELAY each keep-alive request waits
        # for the client's delayed ACK (40 ms).
        disable_nagle_algorithm = True

        def reply(self, code, body=b"ok"):
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            path = self.path.split("?")[0]
            if path == "/slow":
                time.sleep(0.3)
                return self.reply(200)
            if path == "/fail":
                return self.reply(500, b"boom")
            if path == "/fanout":
                for _ in range(3):
                    conn = http.client.HTTPConnection("127.0.0.1", downstream, timeout=5)
                    conn.request("GET", "/leaf")
                    conn.getresponse().read()
                    conn.close()
                return self.reply(200)
            return self.reply(200)

        def log_message(self, fmt, *args):
            pass

    return Handler


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("--downstream", type=int, default=0)
    args = ap.parse_args()
    httpd = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(args.downstream))
    httpd.daemon_threads = True
    print("READY", flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
