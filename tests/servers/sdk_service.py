#!/usr/bin/env python3
"""A Python service instrumented with the OpenTelemetry SDK (not by the agent), exporting its
own spans over OTLP/gRPC to OTEL_EXPORTER_OTLP_ENDPOINT.

  sdk_service.py server <port>          HTTP server: each request gets a SERVER span whose
                                        parent is the extracted W3C context; prints READY.
  sdk_service.py client <url> w3c|b3|b3multi
                                        one GET inside a CLIENT span whose context the SDK
                                        injects; prints "TRACE <trace id> SPAN <span id>".
"""
import http.client
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.propagators.b3 import B3MultiFormat, B3SingleFormat
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

NAME = "sdk-service"
provider = TracerProvider(resource=Resource.create({"service.name": NAME}))
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(insecure=True)))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer(NAME)
W3C = TraceContextTextMapPropagator()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        ctx = W3C.extract(carrier={k.lower(): v for k, v in self.headers.items()})
        with tracer.start_as_current_span(
            "sdk-handle " + self.path, context=ctx, kind=trace.SpanKind.SERVER
        ):
            body = b"sdk ok\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)


def client(url, fmt):
    u = urllib.parse.urlsplit(url)
    propagator = {"w3c": W3C, "b3": B3SingleFormat(), "b3multi": B3MultiFormat()}[fmt]
    with tracer.start_as_current_span("sdk-call", kind=trace.SpanKind.CLIENT) as span:
        headers = {}
        propagator.inject(headers)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        conn.request("GET", u.path, headers=headers)
        resp = conn.getresponse()
        resp.read()
        conn.close()
        c = span.get_span_context()
        print(f"TRACE {c.trace_id:032x} SPAN {c.span_id:016x} STATUS {resp.status}", flush=True)
    provider.shutdown()


def main():
    if sys.argv[1] == "server":
        port = int(sys.argv[2])
        srv = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        print(f"READY {port}", flush=True)
        srv.serve_forever()
    else:
        client(sys.argv[2], sys.argv[3])


if __name__ == "__main__":
    main()
