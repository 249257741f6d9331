#!/usr/bin/env python3
"""The node-local view's live list in a real browser, for tests/tests/ui.rs: drives headless
Chromium over the DevTools protocol (--remote-debugging-pipe: NUL-separated JSON on fds 3 and 4;
no websocket library needed) and checks that a request made while the page is open appears
(over the page's Server-Sent Events stream), and that while paused it does not, until resumed.
Usage: browser_live.py <page url> <url A> <url B> (the requests are made with curl).
Prints LIVE OK on success; exits 1 with the list's HTML otherwise.
"""
import json
import os
import subprocess
import sys
import time

page, url_a, url_b = sys.argv[1:4]
to_chrome_r, to_chrome_w = os.pipe()
from_chrome_r, from_chrome_w = os.pipe()

def fds():
    os.dup2(to_chrome_r, 3)
    os.dup2(from_chrome_w, 4)

chrome = subprocess.Popen(
    ["chromium-headless-shell", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "about:blank"],
    preexec_fn=fds, pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
os.close(to_chrome_r); os.close(from_chrome_w)
out = os.fdopen(to_chrome_w, "wb", buffering=0)
inp = os.fdopen(from_chrome_r, "rb", buffering=0)
buf = b""
next_id = 0

def call(method, params=None, session=None):
    global buf, next_id
    next_id += 1
    msg = {"id": next_id, "method": method, "params": params or {}}
    if session: msg["sessionId"] = session
    out.write(json.dumps(msg).encode() + b"\0")
    while True:
        while b"\0" not in buf:
            chunk = inp.read(65536)
            if not chunk: raise SystemExit("chromium closed the pipe")
            buf += chunk
        raw, buf = buf.split(b"\0", 1)
        reply = json.loads(raw)
        if reply.get("id") == next_id:
            if "error" in reply: raise SystemExit(f"{method}: {reply['error']}")
            return reply["result"]

def js(expr):
    r = call("Runtime.evaluate", {"expression": expr, "returnByValue": True}, session)
    return r["result"].get("value")

def wait(expr, what, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if js(expr): return
        time.sleep(0.2)
    print("TIMEOUT", what, js("document.getElementById('live').outerHTML"))
    sys.exit(1)

def shown(path):
    return f"[...document.querySelectorAll('#live-body tr.request')].some(r => r.textContent.includes({json.dumps(path)}))"

try:
    target = call("Target.createTarget", {"url": page})["targetId"]
    session = call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    wait("document.querySelectorAll('#live-body tr.request').length > 0 && document.getElementById('live-state').textContent === 'live'", "the first rows")
    subprocess.run(["curl", "-s", "-o", "/dev/null", url_a], check=True)
    wait(shown(url_a.split("/", 3)[3]), "request A over the stream")
    js("document.getElementById('pause').click()")
    subprocess.run(["curl", "-s", "-o", "/dev/null", url_b], check=True)
    wait("/[1-9][0-9]* new/.test(document.getElementById('live-state').textContent)", "the paused list counting new requests")
    if js(shown(url_b.split("/", 3)[3])):
        print("FAIL request B shown while paused"); sys.exit(1)
    paused = js("document.getElementById('live-state').textContent")
    js("document.getElementById('pause').click()")
    wait(shown(url_b.split("/", 3)[3]), "request B after resuming")
    print("LIVE OK;", "while paused:", paused)
finally:
    chrome.kill()
