"""OpenTelemetry traces: a real call over the WebSocket leg, with the real engines, exported over
OTLP/HTTP to a collector that runs in the test and decodes what it receives with the OTLP protobuf
schema; and no exporter at all when no ``OTEL_*`` variable asks for traces."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from inzwa_voice import tracing
from inzwa_voice.api.keys import CALLS
from inzwa_voice.app import build_app
from inzwa_voice.config import Settings
from inzwa_voice.engines.runtime import Engines
from inzwa_voice.logs import JsonFormatter
from inzwa_voice.simulator.ws import WsCaller
from tests.conftest import ENGLISH_DIALPLAN, speak

QUESTION = "Where can I get help with my rent?"


@dataclass
class Collector:
    """An OTLP/HTTP trace receiver: what it was sent, decoded."""

    url: str
    spans: list[Span] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)

    def named(self, name: str) -> list[Span]:
        return [s for s in self.spans if s.name == name]


def attributes(values: Any) -> dict[str, Any]:
    """OTLP key-values as a dict of plain values."""
    out: dict[str, Any] = {}
    for kv in values:
        assert isinstance(kv, KeyValue)
        kind = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, kind) if kind else None
    return out


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    received = Collector("")

    async def traces(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        message = ExportTraceServiceRequest.FromString(await request.read())
        for resource_spans in message.resource_spans:
            received.resources.append(attributes(resource_spans.resource.attributes))
            for scope_spans in resource_spans.scope_spans:
                received.spans.extend(scope_spans.spans)
        reply = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=reply, content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    received.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield received
    await runner.cleanup()


@pytest.fixture
def exporters(monkeypatch: pytest.MonkeyPatch) -> list[OTLPSpanExporter]:
    """Every OTLP exporter the gateway makes, and no OTEL_* from the developer's shell."""
    made: list[OTLPSpanExporter] = []

    class Counted(OTLPSpanExporter):
        def __init__(self) -> None:
            super().__init__()
            made.append(self)

    monkeypatch.setattr(tracing, "OTLPSpanExporter", Counted)
    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    return made


@contextlib.asynccontextmanager
async def gateway(settings: Settings, engines: Engines, tmp_path: Path) -> AsyncIterator[tuple[web.Application, str]]:
    """An English gateway (as ``english_server``) and its WebSocket URL, on a runner of its own: the
    block's end stops it, so a test sees what the app's shutdown flushed."""
    overrides = {
        "language": "en",
        "tts_voice": "joe",
        "dialplan_path": ENGLISH_DIALPLAN,
        "db_path": tmp_path / "calls.db",
        "audiosocket_port": 0,
        "sip_enabled": False,
    }
    app = build_app(settings.model_copy(update=overrides), engines)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield app, f"ws://127.0.0.1:{runner.addresses[0][1]}/v1/ws"
    finally:
        await runner.cleanup()


class JsonLines(logging.Handler):
    """The gateway's JSON log lines, formatted as they are written (in the writer's context)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@contextlib.contextmanager
def json_logs(caplog: pytest.LogCaptureFixture) -> Iterator[JsonLines]:
    caplog.set_level(logging.INFO, logger="inzwa_voice")
    handler = JsonLines()
    logger = logging.getLogger("inzwa_voice")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


async def test_a_call_arrives_as_a_trace_of_its_turns_and_their_stages(
    collector: Collector,
    exporters: list[OTLPSpanExporter],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    settings: Settings,
    engines: Engines,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", collector.url + "/v1/traces")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "inzwa-test")
    # Nothing is exported on the timer during the call: what arrives was flushed at shutdown.
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")
    question = await speak(engines, QUESTION)
    with json_logs(caplog) as logs:
        async with gateway(settings, engines, tmp_path) as (app, url), ClientSession() as http:
            assert len(exporters) == 1
            caller = WsCaller(http, url)
            # The line whose model answers everything: the turn has an LLM stage.
            call_id = str((await caller.connect(dialled="+101"))["call_id"])
            session = app[CALLS].sessions[call_id]
            await caller.wait_for("tts.end")  # the greeting
            caller.say(question)
            await caller.wait_for("asr.final")
            await caller.wait_for("tts.start")  # the answer's first frame has left the gateway
            await caller.hang_up()
            await session.wait_closed()
            assert not collector.spans
    # The gateway has stopped: what it buffered has been exported.
    assert collector.resources and collector.resources[0]["service.name"] == "inzwa-test"

    (call,) = collector.named("call")
    assert call.parent_span_id == b""
    assert call.kind == Span.SpanKind.SPAN_KIND_SERVER
    assert attributes(call.attributes) == {
        "inzwa.call.id": call_id,
        "inzwa.call.leg": "ws",
        "inzwa.call.profile": "model_only",
        "inzwa.call.disposition": "caller_hangup",
        "inzwa.call.turns": 1,
    }
    assert {s.trace_id for s in collector.spans} == {call.trace_id}

    (turn,) = collector.named("turn")
    assert turn.parent_span_id == call.span_id
    turn_attributes = attributes(turn.attributes)
    assert turn_attributes["inzwa.turn.index"] >= 1
    assert turn_attributes["inzwa.turn.outcome"] == "hangup"  # the caller left during the answer
    assert turn_attributes["inzwa.answer.source"] == "llm"
    assert turn_attributes["inzwa.latency_ms.first_frame_sent"] > 0
    assert call.start_time_unix_nano <= turn.start_time_unix_nano <= turn.end_time_unix_nano
    assert turn.end_time_unix_nano <= call.end_time_unix_nano

    stages = {s.name: s for s in collector.spans if s.parent_span_id == turn.span_id}
    assert set(stages) == {"asr", "llm", "tts", "first_frame"}
    for stage in stages.values():
        assert turn.start_time_unix_nano <= stage.start_time_unix_nano <= stage.end_time_unix_nano
        assert stage.end_time_unix_nano <= turn.end_time_unix_nano
    assert attributes(stages["asr"].attributes)["inzwa.asr.decodes"] >= 1
    llm = attributes(stages["llm"].attributes)
    assert llm["inzwa.llm.tokens"] >= 1 and llm["inzwa.llm.first_token_ms"] >= 0
    assert [e.name for e in stages["llm"].events] == ["first_token"]
    # In order: the words, the model's first phrase spoken, then the first frame sent.
    assert stages["asr"].end_time_unix_nano <= stages["llm"].start_time_unix_nano
    assert stages["tts"].end_time_unix_nano <= stages["first_frame"].end_time_unix_nano

    # The call's log lines inside its span carry its trace: its start and end lines at least.
    traced = [line for line in logs.lines if line.get("call_id") == call_id and "trace_id" in line]
    assert {"call started", "call ended"} <= {line["msg"] for line in traced}, [line["msg"] for line in logs.lines]
    assert {line["trace_id"] for line in traced} == {call.trace_id.hex()}
    assert {line["span_id"] for line in traced} == {call.span_id.hex()}


async def test_no_otel_variable_no_exporter_and_calls_are_not_traced(
    exporters: list[OTLPSpanExporter], settings: Settings, engines: Engines, tmp_path: Path
) -> None:
    async with gateway(settings, engines, tmp_path):
        assert not exporters
        assert not tracing.CallTrace("call", "ws", "english").recording
    assert not exporters


@pytest.mark.parametrize(
    ("environ", "wanted"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "inzwa"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_which_variables_turn_traces_on(environ: dict[str, str], wanted: bool) -> None:
    assert tracing.wanted(environ) is wanted
