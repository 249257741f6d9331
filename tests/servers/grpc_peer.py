#!/usr/bin/env python3
"""gRPC (Python grpcio, plaintext h2c) peer for the HTTP/2 tests, without generated code: the
messages are those of grpcpeer/demo.proto (one string, field 1), encoded by hand, so this peer
and the grpc-go one (grpcpeer/main.go) talk to each other.

  grpc_peer.py server <port>   demo.Greeter/SayHello (unary, echoes), demo.Greeter/Missing
                               (fails NOT_FOUND), demo.Greeter/Count (server streaming, 3
                               replies). Prints READY <port>.
  grpc_peer.py client <port> [calls]
                               on one channel: calls (default 3) × SayHello, 1 × Missing,
                               1 × Count; prints one line per call and DONE.
  grpc_peer.py session <port>  one channel across a pause: 2 × SayHello, prints PAUSED, waits
                               for SIGUSR1 (the test starts the agent meanwhile), then
                               2 × SayHello, Missing, Count, and DONE.
"""
import signal
import sys
from concurrent import futures

import grpc

SERVICE = "demo.Greeter"


def encode(text):
    """A message whose field 1 (string) is `text` (HelloRequest, HelloReply)."""
    data = text.encode()
    out = bytearray(b"\x0a")
    n = len(data)
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out + data)


def decode(message):
    """Field 1 of a HelloRequest/HelloReply ("" when absent)."""
    if not message or message[0] != 0x0A:
        return ""
    n, shift, i = 0, 0, 1
    while message[i] & 0x80:
        n |= (message[i] & 0x7F) << shift
        shift += 7
        i += 1
    n |= message[i] << shift
    return message[i + 1 : i + 1 + n].decode()


def say_hello(request, context):
    return encode("hello " + decode(request))


def missing(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "no such greeting")


def count(request, context):
    for i in range(3):
        yield encode(str(i))


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


def calls(ch, names):
    """SayHello for each name, then Missing and Count; one line each."""
    hello = ch.unary_unary(f"/{SERVICE}/SayHello")
    for name in names:
        print("SayHello", decode(hello(encode(name), timeout=10)), flush=True)
    try:
        ch.unary_unary(f"/{SERVICE}/Missing")(encode("x"), timeout=10)
    except grpc.RpcError as e:
        print("Missing", e.code(), flush=True)
    replies = ch.unary_stream(f"/{SERVICE}/Count")(b"", timeout=10)
    print("Count", [decode(r) for r in replies], flush=True)


def client(port, n=3):
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        calls(ch, [f"n{i}" for i in range(n)])
    print("DONE", flush=True)


def session(port):
    # Blocked before grpc starts its threads, so that only sigwait takes the signal.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        hello = ch.unary_unary(f"/{SERVICE}/SayHello")
        for i in range(2):
            print("SayHello", decode(hello(encode(f"before{i}"), timeout=10)), flush=True)
        print("PAUSED", flush=True)
        signal.sigwait({signal.SIGUSR1})
        calls(ch, ["after0", "after1"])
    print("DONE", flush=True)


if __name__ == "__main__":
    {"server": server, "client": client, "session": session}[sys.argv[1]](*map(int, sys.argv[2:]))
