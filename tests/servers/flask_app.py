"""A Flask application for the proxy tests (tests/tests/proxy.rs), served by gunicorn:
`python3 -m gunicorn --chdir tests/servers flask_app:app`. Every path answers with the
`traceparent` the request arrived with (or `-`), after PROXY_APP_DELAY seconds (default 0.1)
so that concurrent requests overlap in the proxy in front of it.
"""
import os
import time

from flask import Flask, request

app = Flask(__name__)
DELAY = float(os.environ.get("PROXY_APP_DELAY", "0.1"))


@app.route("/", defaults={"path": ""})
@app.route("/<path:path>")
def answer(path):
    time.sleep(DELAY)
    return request.headers.get("traceparent", "-") + "\n"
