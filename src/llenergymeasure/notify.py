"""Webhook notifications: the reference tool's payload, POSTed as JSON, with a hard deadline.

A notification never fails a campaign and never holds it up beyond its deadline (:data:`TIMEOUT_S`, 10 s):
everything from name resolution to the last byte of the answer happens within it. Per-operation
socket timeouts are not enough for that (an endpoint that sends its answer one byte at a time never trips a read
timeout), so the request runs on a worker thread that the caller waits for until the deadline, and a watchdog
closes the connection at the deadline so the worker ends too. Redirects are not followed (a 3xx is reported), at
most 64 KiB of the answer are read, and a refused connection is retried once if time remains. Only the standard
library is used: the same code runs inside stock engine images.

The URL may carry credentials (``https://user:token@host/...``, ``?token=...``): they are sent (userinfo as HTTP
Basic authentication) but never logged or stored; :func:`redact_url` is what gets printed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import socket
import threading
import time
import urllib.parse
import urllib.request

from .paths import utc_now_iso
from .redaction import redact_url, url_secrets

log = logging.getLogger(__name__)
TIMEOUT_S = 10.0
MAX_ANSWER_BYTES = 64 * 1024
REFUSED_RETRY_PAUSE_S = 0.5


def payload(event_type: str, campaign_id: str | None, experiment_id: str | None, data: dict) -> dict:
    return {
        "event_type": event_type,
        "experiment_id": experiment_id,
        "campaign_id": campaign_id,
        "timestamp": utc_now_iso(),
        "data": data,
    }


class _Attempt:
    """One POST on a worker thread; :meth:`abort` closes its connection from the waiting thread."""

    def __init__(self, url: str, body: bytes, deadline: float) -> None:
        self.url, self.body, self.deadline = url, body, deadline
        self.conn = None
        self.result: dict | None = None
        self.lock = threading.Lock()
        self.aborted = False

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline reached")
        return left

    def run(self) -> None:
        try:
            self.result = self._post()
        except BaseException as exc:  # noqa: BLE001 - reported by the waiting thread, never raised
            self.result = {"sent": False, "status": None, "error": _describe(exc)}

    def _connection(self):
        import http.client

        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"unsupported URL scheme {parts.scheme!r} (http or https)")
        host, port = parts.hostname, parts.port
        if not host:
            raise ValueError("the URL names no host")
        proxy = None if urllib.request.proxy_bypass(host) else urllib.request.getproxies().get(parts.scheme)
        target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, "")) or "/"
        headers = {"Content-Type": "application/json", "Connection": "close", "User-Agent": "llenergymeasure"}
        if parts.username is not None:
            user = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "")
            headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        timeout = self.remaining()
        if proxy:
            p = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            if parts.scheme == "https":  # CONNECT through the proxy, TLS with the endpoint
                import ssl

                conn = http.client.HTTPSConnection(
                    p.hostname, p.port or 80, timeout=timeout, context=ssl.create_default_context()
                )
                conn.set_tunnel(host, port or 443)
            else:  # a plain-HTTP proxy takes the absolute URL
                conn = http.client.HTTPConnection(p.hostname, p.port or 80, timeout=timeout)
                target = urllib.parse.urlunsplit(
                    ("http", parts.netloc.rsplit("@", 1)[-1], parts.path or "/", parts.query, "")
                )
        elif parts.scheme == "https":
            import ssl

            conn = http.client.HTTPSConnection(host, port or 443, timeout=timeout, context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(host, port or 80, timeout=timeout)
        return conn, target, headers

    def _post(self) -> dict:
        refused = 0
        while True:
            conn, target, headers = self._connection()
            with self.lock:
                if self.aborted:
                    raise TimeoutError("deadline reached")
                self.conn = conn
            try:
                conn.connect()
            except ConnectionRefusedError:
                conn.close()
                refused += 1
                if refused > 1 or self.remaining() < 2 * REFUSED_RETRY_PAUSE_S:
                    raise
                time.sleep(REFUSED_RETRY_PAUSE_S)
                continue
            break
        conn.sock.settimeout(self.remaining())
        conn.request("POST", target, body=self.body, headers=headers)
        conn.sock.settimeout(self.remaining())
        response = conn.getresponse()
        status = response.status
        # Read a little of the answer (an endpoint may explain an error in it), never all of it.
        detail = response.read(MAX_ANSWER_BYTES) if status >= 400 else b""
        conn.close()
        if 200 <= status < 300:
            return {"sent": True, "status": status, "error": None}
        if 300 <= status < 400:
            return {"sent": False, "status": status, "error": f"HTTP {status}: redirect not followed"}
        text = detail.decode("utf-8", "replace").strip().splitlines()
        return {"sent": False, "status": status, "error": f"HTTP {status}" + (f": {text[0][:200]}" if text else "")}

    def abort(self) -> None:
        with self.lock:
            self.aborted = True
            conn = self.conn
        if conn is not None:
            try:
                if conn.sock is not None:
                    conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            with contextlib.suppress(Exception):  # closing from another thread may race with the worker
                conn.close()


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def post(url: str, body: dict, timeout: float = TIMEOUT_S) -> dict:
    """POST ``body`` as JSON within ``timeout`` seconds in all; return {"sent", "status", "error"}. Never raises."""
    try:
        data = json.dumps(body, allow_nan=False, default=str).encode("utf-8")
        attempt = _Attempt(url, data, time.monotonic() + timeout)
        worker = threading.Thread(target=attempt.run, name="lem-webhook", daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            attempt.abort()
            worker.join(0.5)
            result = {"sent": False, "status": None, "error": f"no complete answer within the {timeout:g} s deadline"}
        else:
            result = attempt.result or {"sent": False, "status": None, "error": "no result"}
    except Exception as exc:  # noqa: BLE001 - a notification must never break a measurement
        result = {"sent": False, "status": None, "error": _describe(exc)}
    if not result["sent"]:
        error = result["error"]
        for secret in url_secrets(url):
            error = error.replace(secret, "***")
        result["error"] = error
        log.warning("webhook %s: not delivered (%s)", redact_url(url), error)
    return result


def notify(settings: dict | None, event_type: str, campaign_id, experiment_id, data: dict) -> dict | None:
    """Send one event if a webhook is configured and this kind of event is enabled; None when not sent."""
    settings = settings or {}
    url = settings.get("webhook_url")
    if not url:
        return None
    gate = "on_failure" if "fail" in event_type else "on_complete"
    if not settings.get(gate, True):
        return None
    body = payload(event_type, campaign_id, experiment_id, data)
    return {"payload": body, **post(url, body)}
