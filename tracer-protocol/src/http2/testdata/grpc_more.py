# grpcio client and server for the replay capture: unary, client streaming, bidi streaming,
# and a call cancelled by its deadline (the server handler outlives it).
import grpc, sys, time
from concurrent import futures
def unary(req, ctx): return b"pong:" + req
def slow(req, ctx):
    time.sleep(0.5); return b"late"
def collect(it, ctx): return b"|".join(it)
def bidi(it, ctx):
    for m in it: yield m.upper()
h = grpc.method_handlers_generic_handler("demo.More", {
    "Unary": grpc.unary_unary_rpc_method_handler(unary),
    "Slow": grpc.unary_unary_rpc_method_handler(slow),
    "Collect": grpc.stream_unary_rpc_method_handler(collect),
    "Bidi": grpc.stream_stream_rpc_method_handler(bidi)})
if sys.argv[1] == "server":
    srv = grpc.server(futures.ThreadPoolExecutor(4)); srv.add_generic_rpc_handlers((h,))
    srv.add_insecure_port("127.0.0.1:" + sys.argv[2]); srv.start(); time.sleep(30)
else:
    ch = grpc.insecure_channel("127.0.0.1:" + sys.argv[2])
    print(ch.unary_unary("/demo.More/Unary")(b"a", timeout=5))
    print(ch.stream_unary("/demo.More/Collect")(iter([b"x", b"yy", b"zzz"]), timeout=5))
    print(list(ch.stream_stream("/demo.More/Bidi")(iter([b"m1", b"m2"]), timeout=5)))
    try: ch.unary_unary("/demo.More/Slow")(b"s", timeout=0.1)
    except grpc.RpcError as e: print(e.code())
    time.sleep(0.7)
    print(ch.unary_unary("/demo.More/Unary")(b"b", timeout=5))
    ch.close()
