#!/usr/bin/env python3
"""A FAKE Kubernetes API server for the agent's tests: no real kube-apiserver can be installed
on the test machine. It is not Kubernetes: no etcd, no admission, no controllers, no
discovery; only what the agent's watcher uses, shaped as the real API answers:

- GET /api/v1/pods and /api/v1/services: a List (`fieldSelector=spec.nodeName=<node>` filters
  pods) with the store's resourceVersion;
- the same with `watch=true`: a chunked stream of ADDED/MODIFIED/DELETED events after the
  given resourceVersion, BOOKMARK events when `allowWatchBookmarks=true`, and an ERROR event
  with a 410 Gone Status for a resourceVersion older than the history kept (the client must
  re-list); the stream ends cleanly after `timeoutSeconds`;
- a bearer token is required (as a service-account token would be).

The test drives it through /fake/* (not part of any real API):
- POST /fake/pods, POST /fake/services: create or replace an object (JSON body). Pods are
  validated against the official Kubernetes schemas (PyPI kubernetes-validate, strict), so
  the objects served have the real shape; an invalid one is refused with 422.
- POST /fake/pods/delete, /fake/services/delete: {"namespace": .., "name": ..}.
- POST /fake/expire: forget the event history (as etcd compaction does) and end every open
  watch with ERROR 410.
- POST /fake/drop: cut every open watch connection mid-stream (no final chunk).
- GET /fake/stats: {"lists": {kind: n}, "watches": {kind: n}}.

Usage: fake_kube.py --token TOKEN   (prints `listening on http://127.0.0.1:PORT`)
"""
import argparse
import copy
import json
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import kubernetes_validate

SCHEMA_VERSION = "1.33"
KINDS = {"pods": "Pod", "services": "Service"}


class State:
    def __init__(self):
        self.lock = threading.Condition()
        self.rv = 1000
        self.objects = {k: {} for k in KINDS}  # kind -> (ns, name) -> object
        self.history = []  # (rv, kind, type, object)
        self.oldest_rv = self.rv  # watches from before this are 410 Gone
        self.epoch = 0  # bumped by expire/drop: open watches react
        self.action = None  # "expire" or "drop", for the watches of the current epoch
        self.lists = {k: 0 for k in KINDS}
        self.watches = {k: 0 for k in KINDS}

    def put(self, kind, obj):
        with self.lock:
            meta = obj.setdefault("metadata", {})
            key = (meta.get("namespace", "default"), meta["name"])
            meta.setdefault("namespace", key[0])
            old = self.objects[kind].get(key)
            meta.setdefault("uid", (old or {}).get("metadata", {}).get("uid") or str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            self.rv += 1
            meta["resourceVersion"] = str(self.rv)
            self.objects[kind][key] = obj
            self.history.append((self.rv, kind, "MODIFIED" if old else "ADDED", copy.deepcopy(obj)))
            self.lock.notify_all()

    def delete(self, kind, namespace, name):
        with self.lock:
            obj = self.objects[kind].pop((namespace, name), None)
            if obj is None:
                return False
            self.rv += 1
            obj["metadata"]["resourceVersion"] = str(self.rv)
            self.history.append((self.rv, kind, "DELETED", obj))
            self.lock.notify_all()
            return True

    def interrupt(self, action):
        with self.lock:
            if action == "expire":
                self.history.clear()
                self.oldest_rv = self.rv
            self.epoch += 1
            self.action = action
            self.lock.notify_all()


def selected(obj, selector):
    """Only `spec.nodeName=<x>` (what the agent sends) and `metadata.name=<x>`."""
    for term in filter(None, (selector or "").split(",")):
        field, _, want = term.partition("=")
        value = obj
        for part in field.split("."):
            value = value.get(part, {}) if isinstance(value, dict) else {}
        if value != want:
            return False
    return True


def status(code, reason, message):
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def make_handler(state, token):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            sys.stderr.write("fake-kube: " + (fmt % args) + "\n")

        def send_json(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def body(self):
            n = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(n) or b"{}")

        def do_GET(self):
            url = urlparse(self.path)
            q = {k: v[-1] for k, v in parse_qs(url.query).items()}
            if url.path == "/fake/stats":
                with state.lock:
                    return self.send_json(200, {"lists": state.lists, "watches": state.watches})
            if self.headers.get("Authorization") != f"Bearer {token}":
                return self.send_json(401, status(401, "Unauthorized", "Unauthorized"))
            kind = url.path.removeprefix("/api/v1/")
            if kind not in KINDS:
                return self.send_json(404, status(404, "NotFound", f"{url.path} not served by the fake"))
            selector = q.get("fieldSelector")
            if q.get("watch") in ("true", "1"):
                return self.watch(kind, selector, q)
            with state.lock:
                state.lists[kind] += 1
                items = []
                for obj in state.objects[kind].values():
                    if selected(obj, selector):
                        item = copy.deepcopy(obj)
                        # A List's items carry no kind/apiVersion, as the real API's.
                        item.pop("kind", None)
                        item.pop("apiVersion", None)
                        items.append(item)
                body = {"kind": KINDS[kind] + "List", "apiVersion": "v1",
                        "metadata": {"resourceVersion": str(state.rv)}, "items": items}
            self.send_json(200, body)

        def chunk(self, event):
            data = json.dumps(event).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        def watch(self, kind, selector, q):
            since = int(q.get("resourceVersion") or 0)
            bookmarks = q.get("allowWatchBookmarks") == "true"
            deadline = time.monotonic() + min(int(q.get("timeoutSeconds") or 300), 300)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            with state.lock:
                state.watches[kind] += 1
                epoch = state.epoch
                gone = since < state.oldest_rv
            try:
                if gone:
                    self.chunk({"type": "ERROR", "object": status(
                        410, "Expired", f"too old resource version: {since} ({state.oldest_rv})")})
                    self.wfile.write(b"0\r\n\r\n")
                    return
                last_bookmark = time.monotonic()
                while time.monotonic() < deadline:
                    with state.lock:
                        events = [e for e in state.history if e[0] > since and e[1] == kind]
                        if not events and state.epoch == epoch:
                            state.lock.wait(timeout=0.5)
                            events = [e for e in state.history if e[0] > since and e[1] == kind]
                        action = state.action if state.epoch != epoch else None
                        current = state.rv
                    if action == "drop":
                        # Mid-stream: half a chunk, then the connection is cut.
                        self.wfile.write(b"40\r\n{\"type\":\"MODIFIED\"")
                        self.wfile.flush()
                        self.connection.shutdown(socket.SHUT_RDWR)
                        self.close_connection = True
                        return
                    if action == "expire":
                        self.chunk({"type": "ERROR", "object": status(
                            410, "Expired", "The resourceVersion for the provided watch is too old.")})
                        break
                    for rv, _, typ, obj in events:
                        since = rv
                        if selected(obj, selector):
                            self.chunk({"type": typ, "object": obj})
                    if bookmarks and time.monotonic() - last_bookmark >= 1:
                        last_bookmark = time.monotonic()
                        since = max(since, current)
                        self.chunk({"type": "BOOKMARK", "object": {
                            "kind": KINDS[kind], "apiVersion": "v1",
                            "metadata": {"resourceVersion": str(since)}}})
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def do_POST(self):
            url = urlparse(self.path)
            parts = url.path.strip("/").split("/")
            if parts[:1] != ["fake"]:
                return self.send_json(405, status(405, "MethodNotAllowed", "the fake only serves reads"))
            if parts[1:] in (["expire"], ["drop"]):
                state.interrupt(parts[1])
                return self.send_json(200, {})
            if len(parts) >= 2 and parts[1] in KINDS:
                kind = parts[1]
                obj = self.body()
                if parts[2:] == ["delete"]:
                    found = state.delete(kind, obj["namespace"], obj["name"])
                    return self.send_json(200 if found else 404, {})
                try:
                    kubernetes_validate.validate(obj, SCHEMA_VERSION, strict=True)
                except kubernetes_validate.ValidationError as e:
                    return self.send_json(422, status(422, "Invalid", f"not a valid {KINDS[kind]}: " + str(e).split("\n\n")[0]))
                state.put(kind, obj)
                return self.send_json(201, obj)
            self.send_json(404, status(404, "NotFound", url.path))

    return Handler


def main():
    parser = argparse.ArgumentParser(description="A fake Kubernetes API server for tests.")
    parser.add_argument("--token", required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(State(), args.token))
    server.daemon_threads = True
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
