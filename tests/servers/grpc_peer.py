#!/usr/bin/env python3
"""gRPC (Python grpcio, plaintext h2c) peer for the HTTP/2 tests, without generated code:
methods take and return raw bytes.

  grpc_peer.py server <port>   demo.Greeter/SayHello (unary, echoes), demo.Greeter/Missing
                               (fails NOT_FOUND), demo.Greeter/Count (server streaming, 3
                               replies). Prints READY <port>.
  grpc_peer.py client <port>   on one channel: 3 × SayHello, 1 × Missing, 1 × Count; prints
                               one line per call and DONE.
"""
import sys
from concurrent import futures

import grpc

SERVICE = "demo.Greeter"


def say_hello(request, context):
    return b"hello " + request


def missing(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "no such greeting")


def count(request, context):
    for i in range(3):
        yield b"%d" % i


def server(port):
    handlers = {
        "SayHello": grpc.unary_unary_rpc_method_handler(say_hello),
        "Missing": grpc.unary_unary_rpc_method_handler(missing),
        "Count": grpc.unary_stream_rpc_method_handler(count),
    }
    s = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    s.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    s.add_insecure_port(f"127.0.0.1:{port}")
    s.start()
    print(f"READY {port}", flush=True)
    s.wait_for_termination()


def client(port):
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        hello = ch.unary_unary(f"/{SERVICE}/SayHello")
        for i in range(3):
            print("SayHello", hello(b"n%d" % i, timeout=10), flush=True)
        try:
            ch.unary_unary(f"/{SERVICE}/Missing")(b"x", timeout=10)
        except grpc.RpcError as e:
            print("Missing", e.code(), flush=True)
        print("Count", list(ch.unary_stream(f"/{SERVICE}/Count")(b"", timeout=10)), flush=True)
    print("DONE", flush=True)


if __name__ == "__main__":
    {"server": server, "client": client}[sys.argv[1]](int(sys.argv[2]))
