"""Structured JSON logs, one object per line, carrying the request or call id.

The id travels in a context variable, so every log line written while a request is handled
(engines included) names it without passing it around. Secrets never reach a log: the
Authorization header is not logged, and API keys appear only as a short hash prefix. With
traces on (:mod:`inzwa_voice.tracing`), a line written inside a call carries its ``trace_id`` and
``span_id``, so a log store links it to the call's trace.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import sys
from datetime import UTC, datetime

from opentelemetry import trace

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id.get()
        if rid:
            entry["request_id"] = rid
        span = trace.get_current_span().get_span_context()
        if span.is_valid:  # inside a traced call (tracing on): the line joins its trace
            entry["trace_id"] = trace.format_trace_id(span.trace_id)
            entry["span_id"] = trace.format_span_id(span.span_id)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def iso_time(seconds: float) -> str:
    """ISO 8601 in UTC to the millisecond (``2026-01-31T08:00:00.123Z``): what log stores parse."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


QUIET = (
    "aiohttp.access",
    "aioice",  # ~10 lines per WebRTC call (candidate pairs, consent checks)
    "aiortc",
    "faster_whisper",  # a line per decode
    "httpx",
    "httpcore",
    "libav",
    "psycopg",
    "llama_cpp",  # llama.cpp's own log (engines.llm.llamacpp routes it here)
)
"""Libraries that speak at INFO about every call or request: at WARNING unless the gateway logs at
DEBUG, so an INFO log holds the gateway's own lines and every library's warnings and errors."""


def setup(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    quiet = logging.NOTSET if root.getEffectiveLevel() <= logging.DEBUG else logging.WARNING
    for name in QUIET:
        logging.getLogger(name).setLevel(quiet)


def key_fingerprint(key: str) -> str:
    """A stable, non-reversible label for an API key (for logs and rate-limit buckets)."""
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:10]
