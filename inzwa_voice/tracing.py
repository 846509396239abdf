"""OpenTelemetry traces of calls: one span per call, a child per caller turn, and the turn's
stages under it (the final ASR decode, the LLM, the first phrase's TTS, the leg's first frame).

Off unless the standard ``OTEL_*`` variables ask for it (an OTLP endpoint, or
``OTEL_TRACES_EXPORTER=otlp``): then no provider, exporter or span is ever made, and a call's
trace is an object whose methods return at once. On, spans go through a ``BatchSpanProcessor``
to the OTLP/HTTP exporter, which reads its endpoint, headers and timeout from ``OTEL_*`` too, as
the SDK reads ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_TRACES_SAMPLER``;
what is still buffered is exported when the app stops.

A turn's spans are written once the turn has ended, from the times its reply marked as it went
(the marks the turn latency metrics and the call record are made of), so the inbound loop and
the stages do no tracing work while the caller waits, and a turn's spans tell the same story as
its ``turn.metrics``. The call's span is a live one, current in the call's tasks, so log lines
written inside a call carry its trace id (see :mod:`inzwa_voice.logs`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from inzwa_voice import __version__

_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_DEFAULT_SERVICE = "inzwa-voice"

Attributes = dict[str, str | int | float | bool]

_provider: TracerProvider | None = None
_tracer: Tracer | None = None


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` asks for traces: an OTLP endpoint or ``OTEL_TRACES_EXPORTER=otlp``,
    unless ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return exporter == "otlp" or any(environ.get(name, "").strip() for name in _ENDPOINTS)


def start(environ: Mapping[str, str] = os.environ) -> TracerProvider | None:
    """Start exporting calls' traces if ``environ`` asks for it; the provider to ``stop``, or
    None: tracing is off, or another app of this process already traces (it stops it)."""
    global _provider, _tracer
    if _provider is not None or not wanted(environ):
        return None
    resource = Resource.create({SERVICE_VERSION: __version__})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: _DEFAULT_SERVICE}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _provider, _tracer = provider, provider.get_tracer("inzwa_voice", __version__)
    return provider


async def stop(provider: TracerProvider) -> None:
    """Export the spans still buffered, then stop. In a thread: the export is a blocking HTTP
    request, and the collector may be served by this very event loop (tests)."""
    global _provider, _tracer
    if _provider is provider:
        _provider = _tracer = None
    await asyncio.to_thread(provider.shutdown)


@dataclass(frozen=True)
class TracedTurn:
    """What one caller turn's spans are made of. Times are wall-clock seconds (``time.time()``);
    ``marks`` are the reply's latency marks, in ms after the caller's last voiced frame."""

    index: int
    outcome: str
    started_at: float  # the reply began: the final transcript was asked for
    last_voiced_at: float
    marks: Mapping[str, float]
    source: Mapping[str, object] | None = None
    language: str = ""
    barged_in: bool = False
    error: str | None = None
    asr_decodes: int = 0
    llm_tokens: int = 0
    generated_at: float | None = None  # the model's last phrase (None: no model, or it was cut)
    phrases: int = 0


class CallTrace:
    """One call's span, and its turns' spans under it; inert when tracing is off."""

    def __init__(self, call_id: str, leg: str, profile: str, external_id: str = "") -> None:
        self._tracer = _tracer
        self._span: Span | None = None
        if self._tracer is not None:
            attributes = {"inzwa.call.id": call_id, "inzwa.call.leg": leg, "inzwa.call.profile": profile}
            if external_id:
                attributes["inzwa.call.external_id"] = external_id
            self._span = self._tracer.start_span("call", kind=SpanKind.SERVER, attributes=attributes)

    @property
    def recording(self) -> bool:
        return self._span is not None

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        """The call's span as the current one: tasks started inside inherit it, and log lines
        written there carry its ids."""
        if self._span is None:
            yield
            return
        with trace.use_span(self._span, end_on_exit=False):
            yield

    def turn(self, turn: TracedTurn) -> None:
        """Write a turn that has ended, with its stages, under the call."""
        if self._tracer is None or self._span is None:
            return
        tracer, ended = self._tracer, time.time()
        marks = {stage: turn.last_voiced_at + ms / 1000 for stage, ms in turn.marks.items()}
        attributes: Attributes = {
            "inzwa.turn.index": turn.index,
            "inzwa.turn.outcome": turn.outcome,
            "inzwa.turn.language": turn.language,
            "inzwa.turn.barged_in": turn.barged_in,
        }
        if turn.source is not None:
            attributes["inzwa.answer.source"] = str(turn.source.get("kind"))
            if turn.source.get("id") is not None:
                attributes["inzwa.answer.id"] = str(turn.source["id"])
        attributes.update({f"inzwa.latency_ms.{stage}": ms for stage, ms in turn.marks.items()})
        begin = min(turn.started_at, turn.last_voiced_at) if turn.last_voiced_at else turn.started_at
        span = tracer.start_span(
            "turn", trace.set_span_in_context(self._span), attributes=attributes, start_time=_ns(begin)
        )
        if turn.error is not None:
            span.set_status(Status(StatusCode.ERROR, turn.error))
        under = trace.set_span_in_context(span)

        def stage(name: str, start: float, end: float, attrs: Attributes, first: float | None = None) -> None:
            """A stage's span; ``first``: when its first token came, as an event."""
            child = tracer.start_span(name, under, attributes=attrs, start_time=_ns(start))
            if first is not None:
                child.add_event("first_token", timestamp=_ns(first))
            child.end(end_time=_ns(max(start, end)))

        asr_final = marks.get("asr_final")
        if asr_final is not None:
            stage("asr", turn.started_at, asr_final, {"inzwa.asr.decodes": turn.asr_decodes})
        first_token = marks.get("llm_first_token")
        if asr_final is not None and (first_token is not None or turn.llm_tokens):
            llm: Attributes = {"inzwa.llm.tokens": turn.llm_tokens}
            if first_token is not None:
                llm["inzwa.llm.first_token_ms"] = round((first_token - asr_final) * 1000, 1)
            done = turn.generated_at if turn.generated_at is not None else ended
            stage("llm", asr_final, done, llm, first=first_token)
        if "first_phrase" in marks and "tts_first_audio" in marks:
            stage("tts", marks["first_phrase"], marks["tts_first_audio"], {"inzwa.tts.phrases": turn.phrases})
        if "first_frame_sent" in marks:
            ready = max(marks.get("tts_first_audio", turn.started_at), marks.get("endpoint", turn.started_at))
            stage("first_frame", ready, marks["first_frame_sent"], {})
        span.end(end_time=_ns(ended))

    def end(self, disposition: str, *, turns: int) -> None:
        """The call is over: its span ends with how it ended."""
        if self._span is None:
            return
        self._span.set_attributes({"inzwa.call.disposition": disposition, "inzwa.call.turns": turns})
        if disposition == "error":
            self._span.set_status(Status(StatusCode.ERROR))
        self._span.end()
        self._span = None


def _ns(at: float) -> int:
    return int(at * 1e9)
