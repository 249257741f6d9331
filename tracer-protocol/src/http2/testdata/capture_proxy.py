# Tiny TCP proxy: accepts ONE connection on LPORT, forwards to TPORT, logs each direction.
import socket, sys, threading
lport, tport, prefix = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", lport)); ls.listen(1)
c, _ = ls.accept()
s = socket.create_connection(("127.0.0.1", tport))
def pump(a, b, path):
    with open(path, "wb") as f:
        while True:
            d = a.recv(65536)
            if not d:
                break
            f.write(d); f.flush()
            b.sendall(d)
    try: b.shutdown(socket.SHUT_WR)
    except OSError: pass
t1 = threading.Thread(target=pump, args=(c, s, prefix + ".c2s")); t2 = threading.Thread(target=pump, args=(s, c, prefix + ".s2c"))
t1.start(); t2.start(); t1.join(); t2.join()
