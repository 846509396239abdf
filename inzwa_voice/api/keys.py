"""Typed keys for what the app shares with its handlers, and the in-flight gate."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from aiohttp import web

from inzwa_voice.config import Settings
from inzwa_voice.conversation.calls import CallManager
from inzwa_voice.engines.runtime import Engines
from inzwa_voice.errors import ApiError
from inzwa_voice.safety import Safety
from inzwa_voice.telemetry import Metrics


class Gate:
    """Caps model-bound requests in flight; beyond it a request is refused at once (503).

    On two cores a queue of model work only grows latency for everyone, so the gateway says
    "try again" instead of letting requests pile up behind the models.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    @contextlib.contextmanager
    def enter(self) -> Iterator[None]:
        if self.in_flight >= self.limit:
            raise ApiError(
                f"the gateway is busy ({self.limit} requests in flight); retry shortly",
                status=503,
                type="overloaded_error",
                code="overloaded",
                headers={"Retry-After": "1"},
            )
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1


SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
ENGINES = web.AppKey("engines", Engines)
SAFETY = web.AppKey("safety", Safety)
GATE = web.AppKey("gate", Gate)
CALLS = web.AppKey("calls", CallManager)
