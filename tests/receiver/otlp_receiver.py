#!/usr/bin/env python3
"""A minimal OTLP trace and metrics receiver for end-to-end tests, independent of the tracer's
code.

Listens on OTLP/gRPC and OTLP/HTTP (protobuf, POST /v1/traces and /v1/metrics, gzip
supported), prints
``READY grpc=<port> http=<port>`` on stdout once both listen, and appends every received span
as one JSON line to ``--out`` (flushed per request):

    {"transport": "grpc", "resource": {...}, "scope": {"name": .., "version": ..},
     "trace_id": "<32 hex>", "span_id": "<16 hex>", "parent_span_id": "<16 hex or empty>",
     "trace_state": "", "flags": 1, "name": "GET", "kind": "SPAN_KIND_SERVER",
     "start_time_unix_nano": 1700000000000000000, "end_time_unix_nano": ...,
     "attributes": {"http.request.method": "GET", "http.response.status_code": 200, ...},
     "status": {"code": "STATUS_CODE_UNSET", "message": ""},
     "headers": {"user-agent": "...", ...}}

and, with ``--metrics-out``, every received metric data point as one JSON line there:

    {"transport": "grpc", "resource": {...}, "scope": {...}, "name": "tracer.events",
     "description": "...", "unit": "{event}", "type": "sum" | "gauge" | "histogram",
     "temporality": "AGGREGATION_TEMPORALITY_CUMULATIVE", "monotonic": true,
     "attributes": {...}, "start_time_unix_nano": .., "time_unix_nano": ..,
     "value": 5,                                             # sum, gauge
     "count": 3, "sum": 0.2, "bucket_counts": [..], "explicit_bounds": [..],  # histogram
     "exemplars": [{"trace_id": "<32 hex>", "span_id": "<16 hex>", "value": 0.1,
                    "time_unix_nano": ..}]}

Fault injection: ``--fail-first N`` answers UNAVAILABLE (gRPC) / 503 (HTTP) to the first N
export requests (counted across both transports); ``--hang`` accepts connections on both
ports and never answers anything.

Needs: pip install opentelemetry-proto grpcio protobuf
"""

import argparse
import gzip
import json
import signal
import socket
import sys
import threading
import zlib
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2


def any_value(v):
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind)  # string_value, bool_value, int_value, double_value


def attrs(kvs):
    return {kv.key: any_value(kv.value) for kv in kvs}


def span_records(req, transport, headers):
    for rs in req.resource_spans:
        resource = attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            scope = {"name": ss.scope.name, "version": ss.scope.version}
            for s in ss.spans:
                yield {
                    "transport": transport,
                    "resource": resource,
                    "scope": scope,
                    "trace_id": s.trace_id.hex(),
                    "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex(),
                    "trace_state": s.trace_state,
                    "flags": s.flags,
                    "name": s.name,
                    "kind": trace_pb2.Span.SpanKind.Name(s.kind),
                    "start_time_unix_nano": int(s.start_time_unix_nano),
                    "end_time_unix_nano": int(s.end_time_unix_nano),
                    "attributes": attrs(s.attributes),
                    "status": {
                        "code": trace_pb2.Status.StatusCode.Name(s.status.code),
                        "message": s.status.message,
                    },
                    "events": [
                        {
                            "name": e.name,
                            "time_unix_nano": int(e.time_unix_nano),
                            "attributes": attrs(e.attributes),
                        }
                        for e in s.events
                    ],
                    "dropped_events_count": s.dropped_events_count,
                    "links": len(s.links),
                    "headers": headers,
                }


def number(p):
    kind = p.WhichOneof("value")
    return getattr(p, kind) if kind else None


def exemplars(p):
    return [
        {
            "trace_id": e.trace_id.hex(),
            "span_id": e.span_id.hex(),
            "value": number(e),
            "time_unix_nano": int(e.time_unix_nano),
        }
        for e in p.exemplars
    ]


def metric_records(req, transport):
    for rm in req.resource_metrics:
        resource = attrs(rm.resource.attributes)
        for sm in rm.scope_metrics:
            scope = {"name": sm.scope.name, "version": sm.scope.version}
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                data = getattr(m, kind)
                common = {
                    "transport": transport,
                    "resource": resource,
                    "scope": scope,
                    "name": m.name,
                    "description": m.description,
                    "unit": m.unit,
                    "type": kind,
                    "temporality": metrics_pb2.AggregationTemporality.Name(data.aggregation_temporality)
                    if hasattr(data, "aggregation_temporality") else None,
                    "monotonic": data.is_monotonic if kind == "sum" else None,
                }
                for p in data.data_points:
                    rec = dict(common)
                    rec.update({
                        "attributes": attrs(p.attributes),
                        "start_time_unix_nano": int(p.start_time_unix_nano),
                        "time_unix_nano": int(p.time_unix_nano),
                        "exemplars": exemplars(p),
                    })
                    if kind == "histogram":
                        rec.update({
                            "count": int(p.count),
                            "sum": p.sum,
                            "bucket_counts": [int(c) for c in p.bucket_counts],
                            "explicit_bounds": list(p.explicit_bounds),
                        })
                    else:
                        rec["value"] = number(p)
                    yield rec


class Sink:
    """Request counting (for --fail-first) and the output files."""

    def __init__(self, path, metrics_path, fail_first):
        self.lock = threading.Lock()
        self.out = open(path, "a", encoding="utf-8")
        self.metrics_out = open(metrics_path, "a", encoding="utf-8") if metrics_path else None
        self.fail_left = fail_first
        self.requests = 0

    def should_fail(self):
        with self.lock:
            self.requests += 1
            if self.fail_left > 0:
                self.fail_left -= 1
                return True
            return False

    def write(self, req, transport, headers):
        lines = [json.dumps(r, separators=(",", ":")) + "\n" for r in span_records(req, transport, headers)]
        with self.lock:
            self.out.writelines(lines)
            self.out.flush()
        log(f"{transport}: {len(lines)} spans")

    def write_metrics(self, req, transport):
        lines = [json.dumps(r, separators=(",", ":")) + "\n" for r in metric_records(req, transport)]
        if self.metrics_out is None:
            return
        with self.lock:
            self.metrics_out.writelines(lines)
            self.metrics_out.flush()
        log(f"{transport}: {len(lines)} metric points")


def log(msg):
    print(f"otlp_receiver: {msg}", file=sys.stderr, flush=True)


class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, sink):
        self.sink = sink

    def Export(self, request, context):
        if self.sink.should_fail():
            log("grpc: failing request (--fail-first)")
            context.abort(grpc.StatusCode.UNAVAILABLE, "fail-first")
        headers = {k: v for k, v in context.invocation_metadata() if not k.endswith("-bin")}
        self.sink.write(request, "grpc", headers)
        return trace_service_pb2.ExportTraceServiceResponse()


class MetricsService(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, sink):
        self.sink = sink

    def Export(self, request, context):
        if self.sink.should_fail():
            log("grpc: failing metrics request (--fail-first)")
            context.abort(grpc.StatusCode.UNAVAILABLE, "fail-first")
        self.sink.write_metrics(request, "grpc")
        return metrics_service_pb2.ExportMetricsServiceResponse()


# Request and response types per HTTP path.
HTTP_SIGNALS = {
    "/v1/traces": (trace_service_pb2.ExportTraceServiceRequest, trace_service_pb2.ExportTraceServiceResponse),
    "/v1/metrics": (metrics_service_pb2.ExportMetricsServiceRequest,
                    metrics_service_pb2.ExportMetricsServiceResponse),
}


def make_http_handler(sink):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as exporters pool connections

        def reply(self, code, body=b"", ctype="text/plain"):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            path = self.path.split("?")[0]
            if path not in HTTP_SIGNALS:
                return self.reply(404, b"not found")
            request_type, response_type = HTTP_SIGNALS[path]
            if sink.should_fail():
                log("http: failing request (--fail-first)")
                return self.reply(503, b"fail-first")
            encoding = (self.headers.get("Content-Encoding") or "").lower()
            try:
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                elif encoding not in ("", "identity"):
                    return self.reply(415, b"unsupported content-encoding")
                if "protobuf" not in (self.headers.get("Content-Type") or ""):
                    return self.reply(415, b"only application/x-protobuf")
                req = request_type()
                req.ParseFromString(body)
            except Exception as e:  # malformed body: tell the client, keep serving
                return self.reply(400, f"bad request: {e}".encode())
            if path == "/v1/metrics":
                sink.write_metrics(req, "http")
            else:
                headers = {k.lower(): v for k, v in self.headers.items()}
                sink.write(req, "http", headers)
            resp = response_type().SerializeToString()
            self.reply(200, resp, "application/x-protobuf")

        def log_message(self, fmt, *args):
            pass

    return Handler


def hang_listener(host, port):
    """Accepts connections and never answers. Returns the bound port."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(128)
    held = []

    def loop():
        while True:
            try:
                conn, _ = s.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=loop, daemon=True).start()
    return s.getsockname()[1]


def wait_for(stop):
    # Short waits so the main thread gets to run signal handlers.
    while not stop.wait(0.2):
        pass


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    ap.add_argument("--grpc-port", type=int, default=0, help="OTLP/gRPC port (0 = pick a free one)")
    ap.add_argument("--http-port", type=int, default=0, help="OTLP/HTTP port (0 = pick a free one)")
    ap.add_argument("--out", required=True, help="append one JSON line per received span here")
    ap.add_argument("--metrics-out", help="append one JSON line per received metric data point here")
    ap.add_argument("--fail-first", type=int, default=0, metavar="N",
                    help="answer UNAVAILABLE / 503 to the first N export requests")
    ap.add_argument("--hang", action="store_true", help="accept connections and never answer")
    args = ap.parse_args()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    if args.hang:
        grpc_port = hang_listener(args.host, args.grpc_port)
        http_port = hang_listener(args.host, args.http_port)
        open(args.out, "a").close()
        print(f"READY grpc={grpc_port} http={http_port}", flush=True)
        wait_for(stop)
        return

    sink = Sink(args.out, args.metrics_out, args.fail_first)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                         options=[("grpc.max_receive_message_length", 64 << 20)])
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(sink), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(MetricsService(sink), server)
    grpc_port = server.add_insecure_port(f"{args.host}:{args.grpc_port}")
    if grpc_port == 0:
        sys.exit(f"cannot listen on {args.host}:{args.grpc_port} (gRPC)")
    server.start()

    httpd = ThreadingHTTPServer((args.host, args.http_port), make_http_handler(sink))
    httpd.daemon_threads = True
    http_port = httpd.server_address[1]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    print(f"READY grpc={grpc_port} http={http_port}", flush=True)
    wait_for(stop)
    httpd.shutdown()
    server.stop(grace=1).wait()
    sink.out.close()
    if sink.metrics_out:
        sink.metrics_out.close()


if __name__ == "__main__":
    main()
