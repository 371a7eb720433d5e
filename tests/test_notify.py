"""Webhook payloads and failure isolation, against a real HTTP server on localhost."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from llenergymeasure.notify import notify, post


class Hook:
    def __init__(self, status=200, delay=0.0):
        self.received = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.received.append(json.loads(body))
                time.sleep(delay)
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    h = Hook()
    yield h
    h.close()


def test_payload_shape(hook):
    sent = notify({"webhook_url": hook.url, "on_complete": True}, "complete", "c1d2e3f4", "exp-1", {"config_name": "a", "cycle": 0})
    assert sent["sent"] is True and sent["status"] == 200
    body = hook.received[0]
    assert set(body) == {"event_type", "experiment_id", "campaign_id", "timestamp", "data"}
    assert body["event_type"] == "complete" and body["campaign_id"] == "c1d2e3f4" and body["data"]["cycle"] == 0
    assert body["timestamp"].endswith("Z")


def test_gates(hook):
    assert notify({"webhook_url": hook.url, "on_complete": False}, "complete", "c", "e", {}) is None
    assert notify({"webhook_url": hook.url, "on_failure": False}, "failure", "c", "e", {}) is None
    assert notify({"webhook_url": None}, "complete", "c", "e", {}) is None
    assert hook.received == []


def test_failing_endpoint_never_raises():
    h = Hook(status=500)
    try:
        assert post(h.url, {"x": 1}) == {"sent": False, "status": 500, "error": "HTTP 500"}
    finally:
        h.close()
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = post(f"http://127.0.0.1:{port}/", {"x": 1})
    assert r["sent"] is False and r["status"] is None and r["error"]


def test_slow_endpoint_is_cut_at_the_timeout():
    h = Hook(delay=3.0)
    try:
        t0 = time.monotonic()
        r = post(h.url, {"x": 1}, timeout=0.5)
        assert time.monotonic() - t0 < 2.5
        assert r["sent"] is False and "Timeout" in r["error"]
    finally:
        h.close()
