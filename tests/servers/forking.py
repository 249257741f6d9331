#!/usr/bin/env python3
"""Pre-fork style server for the tests: the parent accepts, forks a child per connection,
and closes its copy of the socket while the child is between reading the request and
writing the response (the order that once lost the connection's span). Prints READY."""
import os
import socket
import sys

port = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen(16)
print("READY", flush=True)
while True:
    conn, _ = s.accept()
    read_done_r, read_done_w = os.pipe()
    closed_r, closed_w = os.pipe()
    if os.fork() == 0:
        s.close()
        req = b""
        while b"\r\n\r\n" not in req:
            req += conn.recv(4096)
        os.write(read_done_w, b"x")
        os.read(closed_r, 1)  # the parent has closed its copy
        body = b"forked"
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        conn.close()
        os._exit(0)
    os.read(read_done_r, 1)
    conn.close()
    os.write(closed_w, b"x")
    for fd in (read_done_r, read_done_w, closed_r, closed_w):
        os.close(fd)
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass
