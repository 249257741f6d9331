#!/usr/bin/env python3
"""Writes the http1 and http2 targets' seeds made from real captured byte streams (the parser
tests' recordings), in each target's op encoding, one op per call and at most 255 bytes each:

    http1: [op: bit 0 = 0 ingress (client to server) / 1 egress] [len] [bytes]
    http2: [start: 0] then [op: bit 0 = 0 egress (client to server) / 1 ingress] [len] [bytes]

Usage: python3 fuzz/seeds/from_captures.py   (rewrites fuzz/seeds/{http1,http2}/capture-*)
"""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEEDS = os.path.join(ROOT, "fuzz", "seeds")


def ops(calls, to_server_bit):
    out = bytearray()
    for to_server, data in calls:
        bit = to_server_bit if to_server else 1 - to_server_bit
        for i in range(0, len(data), 255):
            part = data[i : i + 255]
            out += bytes([bit, len(part)]) + part
    return bytes(out)


def http1_calls(path):
    """The records of a .stream file: '> n\\n' bytes '\\n' (client to server) or '< n\\n'."""
    data, calls, p = open(path, "rb").read(), [], 0
    while p < len(data):
        nl = data.index(b"\n", p)
        kind, n = data[p : p + 1], int(data[p + 2 : nl])
        calls.append((kind == b">", data[nl + 1 : nl + 1 + n]))
        p = nl + 1 + n + 1
    return calls


def write(target, name, content):
    os.makedirs(os.path.join(SEEDS, target), exist_ok=True)
    with open(os.path.join(SEEDS, target, "capture-" + name), "wb") as f:
        f.write(content)


http1_dir = os.path.join(ROOT, "tracer-protocol", "tests", "data", "http1")
for f in sorted(os.listdir(http1_dir)):
    if f.endswith(".stream"):
        write("http1", f[: -len(".stream")], ops(http1_calls(os.path.join(http1_dir, f)), 0))

# The HTTP/2 captures hold each direction whole: the client's bytes first, then the server's,
# cut into calls of at most 255 bytes by `ops`.
h2_dir = os.path.join(ROOT, "tracer-protocol", "src", "http2", "testdata")
for f in sorted(os.listdir(h2_dir)):
    if f.endswith(".c2s"):
        base = f[: -len(".c2s")]
        c2s = open(os.path.join(h2_dir, f), "rb").read()
        s2c = open(os.path.join(h2_dir, base + ".s2c"), "rb").read()
        write("http2", base, b"\0" + ops([(True, c2s), (False, s2c)], 0))
