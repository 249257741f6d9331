# Tiny TCP proxy: accepts ONE connection on LPORT, forwards to TPORT, and logs every recv in
# arrival order to PREFIX.log as records: [direction: 0 client->server, 1 server->client]
# [length: u32 big-endian] [bytes]. Replaying the records gives real chunk boundaries and order.
import socket, struct, sys, threading
lport, tport, prefix = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", lport)); ls.listen(1)
c, _ = ls.accept()
s = socket.create_connection(("127.0.0.1", tport))
lock = threading.Lock()
log = open(prefix + ".log", "wb")
def pump(a, b, d):
    while True:
        data = a.recv(65536)
        if not data:
            break
        with lock:
            log.write(struct.pack(">BI", d, len(data)) + data); log.flush()
            b.sendall(data)
    try: b.shutdown(socket.SHUT_WR)
    except OSError: pass
t1 = threading.Thread(target=pump, args=(c, s, 0)); t2 = threading.Thread(target=pump, args=(s, c, 1))
t1.start(); t2.start(); t1.join(); t2.join()
