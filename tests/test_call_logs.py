"""What an operator reads of a call: one log line when it starts and one when it ends, whatever
its leg, and a line when the gateway stops; the turn latency split by leg; the build it runs.

Real calls with the real engines, on the WebSocket and Twilio legs (the lines come from the one
place every leg starts and ends a call through, ``CallManager``).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from inzwa_voice import __version__
from inzwa_voice.api.keys import CALLS
from inzwa_voice.app import build_app
from inzwa_voice.config import Settings
from inzwa_voice.engines.runtime import Engines
from inzwa_voice.legs.twilio import MEDIA_PATH
from inzwa_voice.logs import JsonFormatter
from inzwa_voice.simulator.twilio import TwilioCaller
from inzwa_voice.simulator.ws import WsCaller
from tests.conftest import ServerFactory, english_server, speak

QUESTION = "Hello. Where is the nearest clinic?"
CALLS_LOGGER = "inzwa_voice.conversation.calls"


def lines(caplog: pytest.LogCaptureFixture, msg: str, **fields: object) -> list[dict[str, Any]]:
    """The captured records with this message and these fields, as the JSON the gateway writes."""
    found = []
    for record in caplog.records:
        if record.name == CALLS_LOGGER and record.getMessage() == msg:
            entry: dict[str, Any] = json.loads(JsonFormatter().format(record))
            if fields.items() <= entry.items():
                found.append(entry)
    return found


def latency_count(engines: Engines, leg: str, stage: str) -> float:
    value = engines.metrics.registry.get_sample_value("inzwa_turn_latency_seconds_count", {"leg": leg, "stage": stage})
    return value or 0.0


async def test_a_websocket_call_logs_its_start_and_its_end_with_its_turns(
    make_server: ServerFactory, engines: Engines, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=CALLS_LOGGER)
    server = await english_server(make_server)
    answered = latency_count(engines, "ws", "first_frame_sent")
    caller = WsCaller(server.http, server.url.replace("http", "ws") + "/v1/ws")
    started = await caller.connect()
    call_id = started["call_id"]
    session = server.app[CALLS].sessions[call_id]
    try:
        await caller.wait_for("tts.end")  # the greeting
        caller.say(await speak(engines, QUESTION))
        await caller.wait_for("asr.final")
        await caller.wait_for("turn.metrics", timeout=90)
        assert lines(caplog, "call started", call_id=call_id), "no start line while the call is up"
        assert not lines(caplog, "call ended", call_id=call_id)
    finally:
        await caller.hang_up()
    await session.wait_closed()

    (start,) = lines(caplog, "call started", call_id=call_id)
    assert start["leg"] == "ws"
    assert start["profile"] == "english"
    assert start["level"] == "INFO"
    (end,) = lines(caplog, "call ended", call_id=call_id)
    assert (end["leg"], end["profile"], end["disposition"], end["turns"]) == ("ws", "english", "caller_hangup", 1)
    assert end["duration_s"] > 0
    # The turn's latency is counted under its leg.
    assert latency_count(engines, "ws", "first_frame_sent") == answered + 1


async def test_a_twilio_call_logs_its_start_and_its_end(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=CALLS_LOGGER)
    server = await english_server(make_server)
    caller = TwilioCaller(server.http, server.url.replace("http", "ws", 1) + MEDIA_PATH)
    await caller.connect()
    try:
        await caller.greeting_done()
        (session,) = server.app[CALLS].sessions.values()
    finally:
        await caller.hang_up()
    await session.wait_closed()

    (start,) = lines(caplog, "call started", call_id=session.id)
    assert (start["leg"], start["profile"], start["external_id"]) == ("twilio", "english", caller.call_sid)
    (end,) = lines(caplog, "call ended", call_id=session.id)
    assert (end["leg"], end["disposition"], end["turns"]) == ("twilio", "caller_hangup", 0)
    assert end["duration_s"] > 0


async def test_shutdown_logs_that_the_gateway_stops_and_its_calls_are_ended(
    settings: Settings, engines: Engines, tmp_path_factory: pytest.TempPathFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=CALLS_LOGGER)
    overrides = {"db_path": tmp_path_factory.mktemp("stop") / "calls.db", "audiosocket_port": 0, "sip_enabled": False}
    app = build_app(settings.model_copy(update=overrides), engines)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    async with aiohttp.ClientSession() as http:
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            caller = WsCaller(http, f"ws://127.0.0.1:{runner.addresses[0][1]}/v1/ws")
            call_id = (await caller.connect())["call_id"]
        finally:
            await runner.cleanup()  # with the call up: what SIGTERM does to a serving gateway
        await caller.wait_closed()

    (stopping,) = lines(caplog, "gateway stopping")
    assert stopping["active_calls"] == 1
    (end,) = lines(caplog, "call ended", call_id=call_id)
    assert end["disposition"] == "shutdown"
    (drained,) = lines(caplog, "calls drained")
    assert drained["ended_at_shutdown"] == 1
    order = [r.getMessage() for r in caplog.records if r.name == CALLS_LOGGER]
    assert order.index("gateway stopping") < order.index("call ended") < order.index("calls drained")


def test_the_metrics_say_which_build_runs(engines: Engines) -> None:
    samples = [
        s for family in engines.metrics.registry.collect() if family.name == "inzwa_build_info" for s in family.samples
    ]
    (sample,) = samples
    assert sample.value == 1
    assert sample.labels["version"] == __version__
    assert sample.labels["python"].startswith("3.11")
