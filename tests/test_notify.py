"""Webhook payloads and failure isolation, against a real HTTP server on localhost."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from conftest import Hook
from llenergymeasure.notify import notify, post


@pytest.fixture
def hook():
    h = Hook()
    yield h
    h.close()


def test_payload_shape(hook):
    sent = notify(
        {"webhook_url": hook.url, "on_complete": True},
        "complete",
        "c1d2e3f4",
        "exp-1",
        {"config_name": "a", "cycle": 0},
    )
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
        assert time.monotonic() - t0 < 1.5
        assert r["sent"] is False and r["status"] is None and r["error"]
    finally:
        h.close()


class RawServer:
    """A TCP endpoint that answers every connection with ``respond(conn)``: for endpoints no HTTP server library
    would write (one byte at a time, endless bodies, redirect loops)."""

    def __init__(self, respond, port: int = 0):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.respond = respond
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn):
        try:
            conn.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            self.request = data
            self.respond(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.sock.close()


def trickle(text: bytes, pause: float):
    def respond(conn):
        for i in range(len(text)):
            conn.sendall(text[i : i + 1])
            time.sleep(pause)

    return respond


def endless_body(status: int):
    def respond(conn):
        conn.sendall(f"HTTP/1.1 {status} X\r\nContent-Length: 10000000000\r\n\r\n".encode())
        block = b"x" * 65536
        for _ in range(20000):  # 1.3 GB if anyone read it all
            conn.sendall(block)

    return respond


@pytest.mark.parametrize(
    "respond",
    [
        trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0.3),  # the status line, a byte at a time
        trickle(b"HTTP/1.1 500 Oops\r\nContent-Length: 200\r\n\r\n" + b"e" * 200, 0.02),  # a slow error body
    ],
    ids=["slow-headers", "slow-body"],
)
def test_the_deadline_covers_the_whole_exchange(respond):
    """Per-read timeouts never trip when bytes keep coming; the deadline is for connect + send + receive."""
    server = RawServer(respond)
    try:
        t0 = time.monotonic()
        r = post(f"http://127.0.0.1:{server.port}/hook", {"x": 1}, timeout=1.0)
        elapsed = time.monotonic() - t0
        assert elapsed < 1.6, elapsed
        assert r["sent"] is False and "deadline" in r["error"]
    finally:
        server.close()


def test_redirects_are_not_followed():
    def loop(conn):
        conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: /hook\r\nContent-Length: 0\r\n\r\n")

    server = RawServer(loop)
    try:
        t0 = time.monotonic()
        r = post(f"http://127.0.0.1:{server.port}/hook", {"x": 1}, timeout=5)
        assert time.monotonic() - t0 < 1.0 and server.connections == 1
        assert r == {"sent": False, "status": 302, "error": "HTTP 302: redirect not followed"}
    finally:
        server.close()


@pytest.mark.parametrize("status", [200, 500])
def test_a_huge_answer_is_not_read(status):
    server = RawServer(endless_body(status))
    try:
        t0 = time.monotonic()
        r = post(f"http://127.0.0.1:{server.port}/hook", {"x": 1}, timeout=5)
        assert time.monotonic() - t0 < 2.0
        assert r["status"] == status and r["sent"] is (status == 200)
    finally:
        server.close()


def test_a_refused_connection_is_retried_once_within_the_deadline():
    with socket.socket() as s:  # a free port, nobody listening yet
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    r = post(f"http://127.0.0.1:{port}/", {"x": 1}, timeout=3)
    elapsed = time.monotonic() - t0
    assert r["sent"] is False and "ConnectionRefused" in r["error"]
    assert 0.4 < elapsed < 1.5  # one retry after a short pause, not a loop until the deadline

    ok = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
    late: dict = {}

    def start_late():  # an endpoint that comes up during the pause is reached by the retry
        time.sleep(0.2)
        late["server"] = RawServer(lambda conn: conn.sendall(ok), port)

    starter = threading.Thread(target=start_late)
    starter.start()
    try:
        r = post(f"http://127.0.0.1:{port}/hook", {"x": 1}, timeout=3)
        assert r == {"sent": True, "status": 204, "error": None}
    finally:
        starter.join()
        late["server"].close()


@pytest.mark.parametrize("url", ["not a url", "ftp://example.org/x", "http://", "http://[::1"])
def test_a_notification_never_raises(url):
    r = post(url, {"x": object()}, timeout=1)
    assert r["sent"] is False and r["error"]


def test_credentials_are_sent_but_never_logged(caplog):
    import base64
    import logging

    from llenergymeasure.redaction import redact_url

    server = RawServer(lambda conn: conn.sendall(b"HTTP/1.1 401 No\r\nContent-Length: 0\r\n\r\n"))
    url = f"http://bob:s3cret%21pw@127.0.0.1:{server.port}/hook?token=t0k3n&team=x"
    try:
        with caplog.at_level(logging.WARNING):
            r = post(url, {"x": 1})
    finally:
        server.close()
    assert r["status"] == 401
    assert b"Authorization: Basic " + base64.b64encode(b"bob:s3cret!pw") in server.request
    assert b"token=t0k3n" in server.request  # the query is part of the request, as the user wrote it
    text = caplog.text + json.dumps(r)
    assert "127.0.0.1" in caplog.text and not any(s in text for s in ("bob", "s3cret", "t0k3n"))
    assert redact_url(url) == f"http://***@127.0.0.1:{server.port}/hook?token=***&team=***"


def test_secret_values_never_reach_a_job_log(tmp_path, monkeypatch, capsys):
    """Whatever a library puts in a message or a traceback, a job's log and console lines carry no secret."""
    import logging

    from llenergymeasure.jobs import logging_to

    monkeypatch.setenv("HF_TOKEN", "hf_abcdefSECRET")
    path = tmp_path / "job.log"
    with logging_to(str(path), "verbose", {"webhook_url": "https://u:pw-123@hooks.example.org/x?key=k3y-456"}):
        log = logging.getLogger("llenergymeasure.test")
        log.info("token %s and url %s", "hf_abcdefSECRET", "https://u:pw-123@hooks.example.org/x?key=k3y-456")
        try:
            raise RuntimeError("401 for https://hooks.example.org/x?key=k3y-456 with hf_abcdefSECRET")
        except RuntimeError:
            log.exception("request failed")
    text = path.read_text() + capsys.readouterr().err
    assert "request failed" in text and "RuntimeError: 401 for" in text and "***" in text
    assert not any(s in text for s in ("hf_abcdefSECRET", "pw-123", "k3y-456"))
