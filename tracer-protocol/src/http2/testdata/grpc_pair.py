import grpc, sys, time
from concurrent import futures
def unary(req, ctx): return b"pong:" + req
def fail(req, ctx): ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
def stream(req, ctx):
    for i in range(3): yield b"item%d" % i
h = grpc.method_handlers_generic_handler("demo.Echo", {
    "Unary": grpc.unary_unary_rpc_method_handler(unary),
    "Fail": grpc.unary_unary_rpc_method_handler(fail),
    "Stream": grpc.unary_stream_rpc_method_handler(stream)})
if sys.argv[1] == "server":
    srv = grpc.server(futures.ThreadPoolExecutor(4)); srv.add_generic_rpc_handlers((h,))
    srv.add_insecure_port("127.0.0.1:" + sys.argv[2]); srv.start(); time.sleep(30)
else:
    ch = grpc.insecure_channel("127.0.0.1:" + sys.argv[2])
    u = ch.unary_unary("/demo.Echo/Unary")
    print(u(b"ping1", timeout=5)); print(u(b"ping2", timeout=5))
    try: ch.unary_unary("/demo.Echo/Fail")(b"x", timeout=5)
    except grpc.RpcError as e: print(e.code())
    print(list(ch.unary_stream("/demo.Echo/Stream")(b"s", timeout=5)))
    ch.close()
