"""Calls over the Twilio leg, end to end with the real engines, in real time.

Twilio's cloud cannot run here: ``TwilioCaller`` stands in for it, and the golden messages in
``tests/golden/twilio/`` (Twilio's documented examples) pin the protocol both sides speak.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from inzwa_voice.api.keys import CALLS
from inzwa_voice.config import Settings
from inzwa_voice.core import FRAME_SAMPLES
from inzwa_voice.engines.runtime import Engines
from inzwa_voice.legs.twilio import MARK_EVERY_FRAMES, MARK_PREFIX, MEDIA_PATH, VOICE_PATH, TwilioLeg, add_routes
from inzwa_voice.legs.twilio_protocol import signature
from inzwa_voice.simulator import twilio as sim
from inzwa_voice.simulator.twilio import TwilioCaller
from tests.conftest import Server, ServerFactory, english_server, speak, transcript
from tests.scripted_calls import ScriptedCalls

GOLDEN = Path(__file__).parent / "golden" / "twilio"
QUESTION = "Hello. Where is the nearest clinic?"
# Bot audio the caller may still receive after it starts talking: the 300 ms budget, plus the
# pacer's 3-frame lead already on the wire (60 ms), plus the 8 -> 16 kHz resampler's lag on
# the caller's audio (at most 30 ms).
BARGE_IN_MS = 300 + 60 + 30


def golden(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GOLDEN / f"{name}.json").read_text(encoding="utf-8"))
    return data


def shape(value: Any) -> Any:
    """Keys and value types, recursively: what a message must share with its golden example."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    return type(value).__name__


def count(metric: Any) -> float:
    return float(metric._value.get())


def media_url(server: Server) -> str:
    return server.url.replace("http", "ws", 1) + MEDIA_PATH


async def call(server: Server, **options: Any) -> TwilioCaller:
    caller = TwilioCaller(server.http, media_url(server), **options)
    await caller.connect()
    return caller


def test_the_simulator_speaks_twilios_documented_messages() -> None:
    docs = golden("from_twilio")
    start = docs["start"]["start"]
    sid, account, call_sid = start["streamSid"], start["accountSid"], start["callSid"]
    ours = {
        "connected": sim.connected_message(),
        "start": sim.start_message(1, sid, account, call_sid, start["customParameters"]),
        "media": sim.media_message(4, sid, 2, 5, b"\xff" * 160),
        "dtmf": sim.dtmf_message(5, sid, "1"),
        "mark": sim.mark_message(4, sid, "my label"),
        "stop": sim.stop_message(5, sid, account, call_sid),
    }
    assert shape(ours) == shape({event: docs[event] for event in ours})
    ours["media"]["media"]["payload"] = docs["media"]["media"]["payload"]  # the audio differs, nothing else
    assert ours == {event: docs[event] for event in ours}


async def test_voice_webhook_answers_signed_requests_with_connect_stream(make_server: ServerFactory) -> None:
    vector, voice = golden("webhook")["signature"], golden("webhook")["voice"]
    assert signature(vector["auth_token"], vector["url"], vector["params"].items()) == vector["expected"]

    server = await make_server(twilio_auth_token="12345", twilio_public_url=voice["public_url"])
    form = voice["form"]
    signed = {"X-Twilio-Signature": signature("12345", voice["public_url"] + VOICE_PATH, form.items())}
    async with server.http.post(server.url + VOICE_PATH, data=form, headers=signed) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "text/xml"
        # With the auth token on, the stream also carries its per-call token (it has an expiry).
        twiml, token = re.subn(r'<Parameter name="token" value="([^"]+)" />', "", await resp.text())
        assert (twiml, token) == (voice["twiml"], 1)
    for headers, data in [({}, form), (signed, {**form, "From": "+263779999999"})]:
        async with server.http.post(server.url + VOICE_PATH, data=data, headers=headers) as resp:
            assert resp.status == 403
            error = (await resp.json())["error"]
            assert (error["type"], error["code"]) == ("authentication_error", "invalid_signature")
    async with server.http.post(server.url + VOICE_PATH, json=form, headers=signed) as resp:
        assert resp.status == 415

    # Without a public URL the stream URL follows the proxy Twilio reached us through.
    proxied = await make_server()
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "gw.example.org"}
    async with proxied.http.post(proxied.url + VOICE_PATH, data=form, headers=forwarded) as resp:
        assert 'url="wss://gw.example.org/v1/twilio/media"' in await resp.text()


async def test_media_stream_refuses_a_bad_signature_before_upgrading(make_server: ServerFactory) -> None:
    server = await english_server(make_server, twilio_auth_token="12345")
    for token in (None, "54321"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await call(server, auth_token=token)
        assert refused.value.status == 403
    caller = await call(server, auth_token="12345")
    try:
        await caller.heard(200)
    finally:
        await caller.hang_up()


async def test_twilios_documented_messages_make_a_call(make_server: ServerFactory, engines: Engines) -> None:
    server = await make_server()
    docs, ours = golden("from_twilio"), golden("to_twilio")
    errors, calls = engines.metrics.call_errors, engines.metrics.calls
    unknown_marks = count(errors.labels("twilio", "unknown_mark"))
    hangups = count(calls.labels("twilio", "caller_hangup"))
    async with server.http.ws_connect(media_url(server)) as ws:
        for event in ("connected", "start", "media", "dtmf", "mark"):
            await ws.send_json(docs[event])
        # The call is up once the bot speaks; keypad 1 may first clear the greeting for its
        # menu answer, so the first media message is the one to check.
        while (spoken := await ws.receive_json())["event"] != "media":
            assert spoken["event"] in ("clear", "mark"), spoken
        assert shape(spoken) == shape(ours["media"])
        assert spoken["streamSid"] == docs["start"]["streamSid"]
        (session,) = server.app[CALLS].sessions.values()
        assert session.info.external_id == docs["start"]["start"]["callSid"]
        assert session.info.params == docs["start"]["start"]["customParameters"]
        await ws.send_json(docs["stop"])
        while not ws.closed:
            await ws.receive()
        assert ws.close_code == 1000
    assert count(errors.labels("twilio", "unknown_mark")) == unknown_marks + 1  # "my label" is not ours
    assert count(calls.labels("twilio", "caller_hangup")) == hangups + 1


async def test_a_spoken_question_gets_a_spoken_answer(make_server: ServerFactory, engines: Engines) -> None:
    server = await english_server(make_server)
    caller = await call(server)
    try:
        await caller.greeting_done()
        caller.clear_bot_audio()
        with server.app[CALLS].watch() as recorded:
            caller.say(await speak(engines, QUESTION, rate=8000))
            await caller.said()
            await caller.heard(1000)
            await caller.bot_quiet()
            # The turn is recorded as played once Twilio's echoes of our marks say so.
            while (event := await asyncio.wait_for(recorded.get(), 60)).kind != "turn" or (
                event.data["outcome"] != "played"
            ):
                pass
        assert "clinic" in str(event.data["caller_text"]).lower(), event.data  # μ-law 8 kHz in, heard right
        assert event.data["reply_text"]
        assert await transcript(engines, caller.bot_audio(), 8000)
        ours = golden("to_twilio")
        assert shape(caller.last["media"]) == shape(ours["media"])
        assert shape(caller.last["mark"]) == shape(ours["mark"])
        assert not caller.events("violation")
    finally:
        await caller.hang_up()


async def test_barge_in_clears_twilio_within_300_ms(make_server: ServerFactory, engines: Engines) -> None:
    server = await english_server(make_server)
    caller = await call(server, playout_delay_ms=200)
    interruption = await speak(engines, "Stop, stop. I have another question.", rate=8000)
    barge_ins = count(engines.metrics.barge_ins.labels("twilio"))
    try:
        await caller.heard(1000)  # the caller hears a second of the greeting, then talks over it
        (session,) = server.app[CALLS].sessions.values()
        started = caller.say(interruption)
        clear = await caller.wait_for("clear")
        after = caller.timeline.audio_ms_after(started, caller.rate)
        assert after <= BARGE_IN_MS, f"{after:.0f} ms of bot audio after the caller started speaking"
        assert shape(caller.last["clear"]) == shape(golden("to_twilio")["clear"])
        assert count(engines.metrics.barge_ins.labels("twilio")) == barge_ins + 1
        # The 200 ms jitter buffer keeps marks pending when the clear comes: Twilio echoes them at
        # once, and they must not count the cleared audio as heard (a frame of slack: the
        # 16 -> 8 kHz resampler holds back up to 15 ms).
        await caller.said()
        assert 0 < session.leg.played_frames * 20 <= clear["played_ms"] + 20
        assert not caller.events("violation")
    finally:
        await caller.hang_up()


def tone(frames: int) -> list[np.ndarray]:
    t = np.arange(frames * FRAME_SAMPLES) / 16000
    pcm = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    return list(pcm.reshape(frames, FRAME_SAMPLES))


async def test_marks_advance_the_playout_and_a_clear_voids_the_pending_ones(settings: Settings) -> None:
    """The leg alone against the Twilio stand-in: no engines, no session, positions only."""
    calls = ScriptedCalls()
    app = web.Application()
    add_routes(app, calls, settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"ws://127.0.0.1:{runner.addresses[0][1]}{MEDIA_PATH}"
    async with aiohttp.ClientSession() as http:
        caller = TwilioCaller(http, url, playout_delay_ms=100)
        try:
            await caller.connect()
            call = await asyncio.wait_for(calls.first(), 10)
            leg = call.leg
            assert isinstance(leg, TwilioLeg)

            # One second of audio: every position resolves as played once Twilio echoed a mark
            # sent after it, and never sooner than Twilio played it.
            positions = [await leg.play(frame) for frame in tone(50)]
            assert positions == list(range(1, 51))
            assert await asyncio.wait_for(leg.wait_for_playout(positions[-1]), 10) is True
            assert leg.played_frames == 50
            marks = [e["name"] for e in caller.events("mark")]
            assert len(marks) >= 50 // MARK_EVERY_FRAMES and all(m.startswith(MARK_PREFIX) for m in marks)

            # A barge-in in the middle of the next second: what was not acknowledged is void.
            more = [await leg.play(frame) for frame in tone(50)]
            assert await asyncio.wait_for(leg.wait_for_playout(more[10]), 10) is True
            last = asyncio.ensure_future(leg.wait_for_playout(more[-1]))
            played = leg.interrupt()
            assert 61 <= played < 100 and leg.playout.queued == played
            clear = await caller.wait_for("clear")
            assert await last is False
            # Twilio echoes the cleared marks at once; they must not count the cleared audio as
            # heard. One frame after the clear, played is exactly one frame on.
            after = await leg.play(tone(1)[0])
            assert after == played + 1
            assert await asyncio.wait_for(leg.wait_for_playout(after), 10) is True
            assert leg.played_frames == played + 1
            assert played * 20 <= clear["played_ms"] + 20  # the resampler's lag: under a frame
            assert count(calls.metrics.call_errors.labels("twilio", "unknown_mark")) == 0
            assert not caller.events("violation")
            assert call.frames > 0  # the caller's audio reached the call
        finally:
            await caller.hang_up()
            await runner.cleanup()
    assert call.endings[0] == "caller_hangup"


async def test_dtmf_zero_asks_for_a_human(make_server: ServerFactory, engines: Engines) -> None:
    server = await english_server(make_server)
    caller = await call(server)
    transfers = engines.metrics.transfers.labels("twilio", "dtmf")
    before = count(transfers)
    try:
        with server.app[CALLS].watch() as recorded:
            await caller.dtmf("0")
            while (event := await asyncio.wait_for(recorded.get(), 30)).kind != "transfer":
                pass
        assert event.data["reason"] == "dtmf"
        assert count(transfers) == before + 1
    finally:
        await caller.hang_up()


async def test_bad_messages_beside_a_healthy_call(make_server: ServerFactory, engines: Engines) -> None:
    server = await english_server(make_server)
    errors = engines.metrics.call_errors
    healthy = await call(server)
    try:
        # Recoverable: dropped and counted, and the call goes on.
        bad = await call(server)
        codes = ["invalid_json", "unknown_event", "wrong_stream", "bad_payload", "bad_dtmf", "duplicate_start"]
        before = {code: count(errors.labels("twilio", code)) for code in codes}
        media = sim.media_message(99, bad.stream_sid, 1, 0, b"\xff" * 160)
        garbage: list[str | bytes] = [
            "{not json",
            b"\x00\x01",
            json.dumps({"event": "dance", "streamSid": bad.stream_sid}),
        ]
        for raw in garbage:
            await bad.send_raw(raw)
        await bad.send_json({**media, "streamSid": "MZ-another-stream"})
        await bad.send_json({**media, "media": {**media["media"], "payload": "not base64!"}})
        await bad.send_json({**media, "media": {**media["media"], "payload": ""}})
        await bad.send_json(sim.dtmf_message(100, bad.stream_sid, "X"))
        await bad.send_json(sim.start_message(101, bad.stream_sid, "AC1", "CA1", {}))
        bad.clear_bot_audio()
        await bad.heard(200)  # still served after all of that
        await bad.hang_up()
        assert bad.close_code == 1000
        for code in codes:
            assert count(errors.labels("twilio", code)) >= before[code] + 1, code

        # Fatal before the call starts: 4400. Too big: 1009.
        start = sim.start_message(1, "MZ1", "AC1", "CA1", {})
        for first in [media, {**start, "start": {**start["start"], "mediaFormat": {"encoding": "audio/l16"}}}]:
            async with server.http.ws_connect(media_url(server)) as ws:
                await ws.send_json(first)
                await ws.receive()
                assert ws.close_code == 4400
        huge = await call(server)
        await huge.send_raw("x" * (100 * 1024))
        assert await huge.wait_closed() in (1009, 1006)  # "message too big", or the reset seen first

        # The healthy call still hears and answers.
        await healthy.greeting_done()
        healthy.clear_bot_audio()
        healthy.say(await speak(engines, QUESTION, rate=8000))
        await healthy.said()
        await healthy.heard(1000)
        assert await transcript(engines, healthy.bot_audio(), 8000)
    finally:
        await healthy.hang_up()


async def test_calls_beyond_the_limit_are_closed_with_1013(make_server: ServerFactory) -> None:
    server = await english_server(make_server, max_sessions=1)
    first = await call(server)
    try:
        second = await call(server)
        assert await second.wait_closed() == 1013
        await second.stop_sending()
        await first.heard(200)  # the first call is unaffected
    finally:
        await first.hang_up()
