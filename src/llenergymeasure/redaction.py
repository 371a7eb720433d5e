"""Secrets never reach results, logs, reports or the console: a webhook URL's userinfo and query values, and the
Hugging Face token. URLs are printed through :func:`redact_url`; every log handler of a job carries a
:class:`SecretFilter` that replaces any secret value that still turns up in a message or traceback (a library's
error message quoting a URL, say) by ``***``."""

from __future__ import annotations

import logging
import os
import urllib.parse

#: Environment variables whose values are credentials.
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_API_TOKEN")


def redact_url(url: str | None) -> str | None:
    """The URL with its userinfo and every query value replaced by ``***``: safe to print."""
    if not url:
        return url
    try:
        parts = urllib.parse.urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = "***@" + netloc.rsplit("@", 1)[1]
        query = "&".join(
            f"{k}=***" if sep else k for pair in parts.query.split("&") if pair for k, sep, _ in [pair.partition("=")]
        )
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    except ValueError:
        return "<URL not shown>"


def url_secrets(url: str | None) -> list[str]:
    """The parts of a URL that may be secret (user, password, query values), raw and percent-decoded."""
    if not url:
        return []
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return [url]
    found = [parts.username, parts.password] + [pair.partition("=")[2] for pair in parts.query.split("&")]
    found += [urllib.parse.unquote(v) for v in found if v]
    return [s for s in found if s and len(s) >= 3]


def secrets(notifications: dict | None = None, environ=None) -> list[str]:
    """Every secret value known to this process, longest first (so that a value inside another is not left half)."""
    environ = os.environ if environ is None else environ
    found = url_secrets((notifications or {}).get("webhook_url"))
    found += [environ[k] for k in SECRET_ENV if len(environ.get(k) or "") >= 3]
    return sorted(set(found), key=len, reverse=True)


def scrub(text: str, values: list[str]) -> str:
    for value in values:
        if value in text:
            text = text.replace(value, "***")
    return text


class SecretFilter(logging.Filter):
    """Replaces secret values in a record's message and traceback before any handler formats it."""

    def __init__(self, values: list[str]) -> None:
        super().__init__()
        self.values = values

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.values:
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record: logging reports it itself
            return True
        clean = scrub(message, self.values)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text, self.values)
            record.exc_info = None
        return True
