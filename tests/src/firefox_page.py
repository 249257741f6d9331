#!/usr/bin/env python3
"""A page in Firefox, for tests/tests/ui.rs: starts firefox-esr headless with a throwaway
profile, drives it over WebDriver BiDi (built into Firefox: --remote-debugging-port; the
websocket client is the few lines below, Python's stdlib only), opens the page, waits until a
JavaScript condition holds (the page's fetches done and drawn), takes a screenshot and prints
the document's HTML.
Usage: firefox_page.py <page url> <ready condition (JS)> <screenshot.png>
Exits 1 with the reason (Firefox did not start, the condition never held) otherwise.
"""
import base64
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

page, ready, screenshot = sys.argv[1:4]
START = 30  # seconds for Firefox to listen
READY = 20  # seconds for the page to draw
WIDTH, HEIGHT = 1480, 1250
# Nothing fetched from elsewhere: no update, telemetry or experiment traffic during the test.
PREFS = {
    "app.update.disabledForTesting": True,
    "browser.shell.checkDefaultBrowser": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "messaging-system.rsexperimentloader.enabled": False,
    "services.settings.server": "data:,",
}


class WebSocket:
    """A client websocket (RFC 6455) carrying text frames: enough for BiDi's JSON messages."""

    GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def __init__(self, host, port, path):
        self.sock = socket.create_connection((host, port), timeout=READY)
        key = base64.b64encode(os.urandom(16))
        self.sock.sendall(
            b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
            % (path.encode(), host.encode(), port, key))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise SystemExit("firefox closed the websocket during the handshake")
            head += chunk
        head, self.buf = head.split(b"\r\n\r\n", 1)
        accept = base64.b64encode(hashlib.sha1(key + self.GUID).digest())
        if not head.startswith(b"HTTP/1.1 101") or accept not in head:
            raise SystemExit(f"websocket handshake refused: {head.decode(errors='replace')}")

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise SystemExit("firefox closed the websocket")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _send(self, opcode, payload):
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
        else:
            head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
        mask = os.urandom(4)  # a client masks every frame
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def send(self, text):
        self._send(0x1, text.encode())

    def recv(self):
        message = b""
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(self._read(2), "big")
            elif n == 127:
                n = int.from_bytes(self._read(8), "big")
            payload = self._read(n)  # a server never masks
            opcode = b0 & 0x0F
            if opcode == 0x8:
                raise SystemExit("firefox closed the websocket")
            if opcode == 0x9:
                self._send(0xA, payload)
                continue
            message += payload
            if b0 & 0x80 and opcode in (0x0, 0x1):
                return message.decode()


class Bidi:
    def __init__(self, ws):
        self.ws, self.next_id = ws, 0

    def call(self, method, params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:  # events (no "id") are not subscribed to, but skip any
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self.next_id:
                if reply.get("type") == "error":
                    raise SystemExit(f"{method}: {reply.get('error')}: {reply.get('message')}")
                return reply["result"]


def start_firefox(profile):
    with open(os.path.join(profile, "user.js"), "w") as f:
        for k, v in PREFS.items():
            f.write(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n")
    log = open(os.path.join(profile, "firefox.log"), "w+")
    try:
        firefox = subprocess.Popen(
            ["firefox-esr", "--headless", "--no-remote", "--profile", profile,
             "--remote-debugging-port", "0", "about:blank"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "MOZ_CRASHREPORTER_DISABLE": "1"})
    except FileNotFoundError:
        raise SystemExit("firefox-esr is not installed (cargo xtask setup --test-deps)")
    deadline = time.time() + START
    while time.time() < deadline:
        log.seek(0)
        said = log.read()
        m = re.search(r"WebDriver BiDi listening on ws://([0-9.]+):([0-9]+)", said)
        if m:
            return firefox, m.group(1), int(m.group(2))
        if firefox.poll() is not None:
            raise SystemExit(f"firefox-esr exited ({firefox.returncode}) before listening:\n{said}")
        time.sleep(0.2)
    firefox.kill()
    raise SystemExit(f"firefox-esr did not listen for WebDriver BiDi within {START} s:\n{said}")


profile = tempfile.mkdtemp(prefix="tracer-firefox-")
firefox = None
try:
    firefox, host, port = start_firefox(profile)
    bidi = Bidi(WebSocket(host, port, "/session"))
    bidi.call("session.new", {"capabilities": {}})
    context = bidi.call("browsingContext.getTree", {})["contexts"][0]["context"]
    bidi.call("browsingContext.setViewport",
              {"context": context, "viewport": {"width": WIDTH, "height": HEIGHT}})
    bidi.call("browsingContext.navigate", {"context": context, "url": page, "wait": "complete"})

    def js(expression):
        r = bidi.call("script.evaluate", {"expression": expression, "target": {"context": context},
                                          "awaitPromise": False})
        if r["type"] != "success":
            raise SystemExit(f"{expression}: {r.get('exceptionDetails')}")
        return r["result"].get("value")

    deadline = time.time() + READY
    while not js(f"Boolean({ready})"):
        if time.time() > deadline:
            print(js("document.documentElement.outerHTML"))
            raise SystemExit(f"the page never got ready within {READY} s: {ready}")
        time.sleep(0.2)
    shot = bidi.call("browsingContext.captureScreenshot", {"context": context})["data"]
    with open(screenshot, "wb") as f:
        f.write(base64.b64decode(shot))
    print(js("document.documentElement.outerHTML"))
    print("firefox:", js("navigator.userAgent"), file=sys.stderr)
    bidi.call("session.end", {})
finally:
    if firefox:
        firefox.kill()
        firefox.wait()
    shutil.rmtree(profile, ignore_errors=True)
