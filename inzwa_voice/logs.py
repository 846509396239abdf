"""Structured JSON logs, one object per line, carrying the request or call id.

The id travels in a context variable, so every log line written while a request is handled
(engines included) names it without passing it around. Secrets never reach a log: the
Authorization header is not logged, and API keys appear only as a short hash prefix.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import sys
import time

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": round(time.time(), 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id.get()
        if rid:
            entry["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def key_fingerprint(key: str) -> str:
    """A stable, non-reversible label for an API key (for logs and rate-limit buckets)."""
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:10]
