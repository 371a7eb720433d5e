"""Webhook notifications: the reference tool's payload, POSTed as JSON with a 10 s timeout.

A notification never fails or stalls a campaign: every error is caught, logged and reported in the return value.
httpx is used where installed; inside stock engine images without it, the standard library sends the same POST.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request

from .energy.baseline import utc_now_iso

log = logging.getLogger(__name__)
TIMEOUT_S = 10.0


def payload(event_type: str, campaign_id: str | None, experiment_id: str | None, data: dict) -> dict:
    return {
        "event_type": event_type,
        "experiment_id": experiment_id,
        "campaign_id": campaign_id,
        "timestamp": utc_now_iso(),
        "data": data,
    }


def post(url: str, body: dict, timeout: float = TIMEOUT_S) -> dict:
    """POST ``body``; return {"sent": bool, "status": int|None, "error": str|None}. Never raises."""
    try:
        try:
            import httpx
        except ImportError:
            httpx = None
        if httpx is not None:
            response = httpx.post(url, json=body, timeout=timeout, follow_redirects=True)
            status = response.status_code
        else:
            req = urllib.request.Request(
                url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
            )
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - user-configured URL
                status = resp.status
        ok = 200 <= status < 300
        if not ok:
            log.warning("webhook %s answered HTTP %s", url, status)
        return {"sent": ok, "status": status, "error": None if ok else f"HTTP {status}"}
    except Exception as exc:  # noqa: BLE001 - a notification must never break a measurement
        log.warning("webhook %s failed: %s", url, exc)
        return {"sent": False, "status": None, "error": f"{type(exc).__name__}: {exc}"}


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
