"""Calls over the WebRTC leg: two aiortc peers in one process (the gateway's and a simulated
page's), real engines, real time. Bad offers must get a clear 4xx and leave no peer behind.

The leg's admission path is also tested on its own, with the leg's routes in an app of their
own and a scripted call starter (:class:`ScriptedCalls`): a refusal closes the peer it made,
and the call is hung up when the page goes, whatever the conversation does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aioice.ice
import numpy as np
import pytest
import yaml
from aiohttp import ClientSession, web
from aiortc import RTCConfiguration, RTCPeerConnection

from inzwa_voice.api.keys import CALLS
from inzwa_voice.api.middleware import error_middleware
from inzwa_voice.config import load_settings
from inzwa_voice.conversation.ports import CallRejected
from inzwa_voice.engines.runtime import Engines
from inzwa_voice.legs import webrtc
from inzwa_voice.legs.webrtc import WEBRTC, WebRTCLeg
from inzwa_voice.legs.webrtc_tokens import CallTokens
from inzwa_voice.simulator.webrtc import OfferRefused, WebRTCCaller
from inzwa_voice.telemetry import Metrics
from tests.conftest import Server, ServerFactory, english_server, speak, transcript
from tests.scripted_calls import ScriptedCalls
from tests.test_openapi import SPEC_PATH, check

QUESTION = "Hello. Where is the nearest clinic?"
SECRET = "a-secret-shared-by-gateways"
SPEC = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
# Barge-in margin over 300 ms (measured: 320 ms): aiortc's receive jitter buffers hold ~4 frames each way.
MARGIN_MS = 100


async def call(server: Server, **start: Any) -> WebRTCCaller:
    caller = WebRTCCaller(server.http, server.url)
    await caller.connect(**start)
    return caller


def peers(server: Server) -> int:
    return len(server.app[WEBRTC].peers)


async def client_offer(*, audio: bool = True) -> str:
    """A real aiortc offer like a page's: the events channel, and the microphone unless not."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.createDataChannel("events")
        if audio:
            pc.addTransceiver("audio", direction="sendrecv")
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await pc.close()


def with_only_a_fake_codec(offer: str) -> str:
    """The offer with its audio codecs (Opus, PCMU, PCMA) replaced by one nobody implements."""
    lines: list[str] = []
    for line in offer.splitlines():
        if line.startswith("m=audio"):
            line = " ".join([*line.split()[:3], "100"])
        elif line.startswith(("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:")):
            if not any(kept.startswith("a=rtpmap:100") for kept in lines):
                lines.append("a=rtpmap:100 x-fake/48000/2")
            continue
        lines.append(line)
    return "\r\n".join(lines) + "\r\n"


async def refused(server: Server, body: dict[str, Any], status: int, code: str) -> None:
    """The offer gets ``status`` in the documented error shape, and leaves no peer or call."""
    async with server.http.post(server.v1 + "/webrtc/offer", json=body) as resp:
        assert resp.status == status, await resp.text()
        [error] = await check(SPEC, "POST", "/v1/webrtc/offer", resp)
    assert error["error"]["code"] == code, error
    assert peers(server) == 0 and not server.app[CALLS].sessions


async def test_a_spoken_question_gets_a_transcript_and_a_spoken_answer(
    make_server: ServerFactory, engines: Engines
) -> None:
    server = await english_server(make_server)
    caller = await call(server)
    try:
        await caller.wait_for("tts.end")
        caller.clear_bot_audio()
        caller.say(await speak(engines, QUESTION, rate=48000))
        final = await caller.wait_for("asr.final")
        assert "clinic" in final["text"].lower()
        metrics = await caller.wait_for("turn.metrics")
        assert metrics["id"] == final["id"]
        answer = caller.bot_audio()
        assert len(answer) > 48000 // 2
        assert await transcript(engines, answer, 48000)
        assert caller.events("llm.partial")
    finally:
        await caller.hang_up()


async def test_barge_in_stops_the_bot_within_300_ms_of_media_time(make_server: ServerFactory, engines: Engines) -> None:
    server = await english_server(make_server)
    caller = await call(server)
    interruption = await speak(engines, "Stop, stop. I have another question.", rate=48000)
    try:
        await caller.heard(400)  # the caller hears 400 ms of the greeting, then talks over it
        started = caller.say(interruption)
        barge = await caller.wait_for("barge_in")
        after = caller.timeline.audio_ms_after(started, caller.rate)
        assert after <= 300 + MARGIN_MS, f"{after:.0f} ms of bot audio after the caller started speaking"
        assert barge["heard"] != ""
    finally:
        await caller.hang_up()


async def test_the_call_ends_with_the_peer_or_on_stop(make_server: ServerFactory) -> None:
    server = await english_server(make_server)
    calls = server.app[CALLS]
    # The page's peer connection closes (a closed tab): the call ends and the gateway's peer goes.
    closing = await call(server)
    assert closing.call_id is not None
    session = calls.sessions[closing.call_id]
    await closing.hang_up()
    async with asyncio.timeout(30):
        await session.wait_closed()
    assert session.disposition == "caller_hangup" and peers(server) == 0
    # The page says stop: the gateway ends the call, tells the page, and closes the peer itself.
    stopping = await call(server)
    await stopping.send_json({"type": "stop"})
    assert (await stopping.wait_for("call.end"))["reason"] == "caller_hangup"
    async with asyncio.timeout(30):
        await stopping.wait_closed()
    assert stopping.pc.connectionState == "closed"
    await stopping.hang_up()
    assert not calls.sessions and peers(server) == 0


async def test_dtmf_and_bad_messages_over_the_events_channel(make_server: ServerFactory) -> None:
    server = await english_server(make_server)
    caller = await call(server)
    try:
        await caller.send_json({"type": "dance"})
        error = await caller.wait_for("error")
        assert error["code"] == "unknown_type" and error["recoverable"] is True
        await caller.send_json({"type": "dtmf", "digit": "00"})
        assert (await caller.wait_for("error"))["code"] == "bad_dtmf"
        await caller.send_json({"type": "dtmf", "digit": "0"})
        assert (await caller.wait_for("transfer"))["reason"] == "dtmf"
    finally:
        await caller.hang_up()


async def test_bad_offers_get_a_clear_400_and_leave_no_peer(make_server: ServerFactory) -> None:
    server = await english_server(make_server)
    offer = await client_offer()
    await refused(server, {"sdp": "hello", "type": "offer"}, 400, "invalid_sdp")
    await refused(server, {"sdp": offer.replace("a=ice-ufrag", "a=x-ufrag"), "type": "offer"}, 400, "invalid_sdp")
    await refused(server, {"sdp": await client_offer(audio=False), "type": "offer"}, 400, "no_audio")
    await refused(server, {"sdp": with_only_a_fake_codec(offer), "type": "offer"}, 400, "no_common_codec")
    await refused(server, {"sdp": offer, "type": "answer"}, 400, "invalid_value")


async def test_peers_beyond_the_limit_are_refused(make_server: ServerFactory) -> None:
    server = await english_server(make_server, webrtc_max_peers=1)
    first = await call(server)
    second = WebRTCCaller(server.http, server.url)
    try:
        with pytest.raises(OfferRefused) as refusal:
            await second.connect()
        assert refusal.value.status == 503
        assert refusal.value.error["type"] == "overloaded_error" and refusal.value.error["code"] == "too_many_peers"
        assert peers(server) == 1 and len(server.app[CALLS].sessions) == 1
    finally:
        await first.hang_up()


async def test_with_api_keys_an_offer_needs_a_valid_call_token(make_server: ServerFactory) -> None:
    server = await english_server(make_server, api_keys=["key-1"], webrtc_token_secret=SECRET)
    async with server.http.post(server.v1 + "/webrtc/token") as resp:
        assert resp.status == 401  # the token route wants the API key, as every other route
    offer = {"sdp": await client_offer(), "type": "offer"}
    await refused(server, offer, 401, "missing_token")
    expired = CallTokens(SECRET, 300).issue(now=time.time() - 301)
    await refused(server, {**offer, "token": expired}, 401, "expired_token")
    forged = CallTokens("another-gateways-secret", 300).issue()
    await refused(server, {**offer, "token": forged}, 401, "invalid_token")
    caller = WebRTCCaller(server.http, server.url, api_key="key-1")
    started = await caller.connect()  # asks the token route with its key, then offers
    assert started["call_id"] == caller.call_id
    await caller.hang_up()


async def test_a_caller_whose_track_ends_after_the_question_still_gets_an_answer(
    make_server: ServerFactory, engines: Engines
) -> None:
    """The page's microphone track ends right after the question (unplugged, muted by the
    browser): no more RTP arrives, not even silence. The call's clock must end the turn."""
    server = await english_server(make_server)
    caller = await call(server)
    try:
        await caller.wait_for("tts.end")
        final = asyncio.ensure_future(caller.wait_for("asr.final"))
        metrics = asyncio.ensure_future(caller.wait_for("turn.metrics"))
        caller.say(await speak(engines, QUESTION, rate=48000))
        await caller.said()
        caller.end_microphone()
        assert "clinic" in (await final)["text"].lower()
        assert (await metrics)["id"] == (await final)["id"]
        assert caller.events("llm.partial"), "the answer came over the events channel"
        assert caller.pc.connectionState == "connected", "the call went on without the microphone"
    finally:
        await caller.hang_up()


async def test_bot_audio_is_pulled_in_real_time_and_its_playout_follows_the_pull() -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    leg = WebRTCLeg(pc, Metrics(), lambda leg: None)
    try:
        tone = np.full(320, 1000, dtype=np.int16)
        assert [await leg.play(tone) for _ in range(10)] == list(range(1, 11))
        end = asyncio.ensure_future(leg.wait_for_playout(10))
        frame = await leg.track.recv()
        assert (frame.sample_rate, frame.samples) == (48000, 960)
        started = time.monotonic()
        for _ in range(3):
            await leg.track.recv()
        assert time.monotonic() - started >= 0.055  # three more frames take three frame times
        played = leg.played_frames
        assert played in (4, 5)  # 5 when the resampler's delay left the first frame short
        assert await leg.wait_for_playout(played) and not end.done()
        assert leg.interrupt() == played  # barge-in: nothing queued will be pulled
        assert await end is False
        silent = await leg.track.recv()
        assert leg.played_frames == played and not silent.to_ndarray().any()
        assert await leg.play(tone) == played + 1  # the next frame follows the last one played
        await leg.track.recv()
        assert leg.played_frames == played + 1
        # Once the track has stopped (the peer closed), a frame played never plays.
        leg.track.stop()
        assert await leg.wait_for_playout(await leg.play(tone)) is False
    finally:
        await pc.close()


# ----- the admission path, with a scripted call starter -----


@pytest.fixture
async def leg_server() -> AsyncIterator[Callable[[ScriptedCalls], Awaitable[Server]]]:
    """The WebRTC leg's routes alone, in an app on loopback, admitting through ``calls``."""
    runners: list[web.AppRunner] = []
    http = ClientSession()

    async def start(calls: ScriptedCalls) -> Server:
        app = web.Application(middlewares=[error_middleware(calls.metrics)])
        webrtc.setup(app, calls, load_settings(_env_file=None, webrtc_host_addresses=["127.0.0.1"]))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return Server(f"http://127.0.0.1:{runner.addresses[0][1]}", app, http)

    yield start
    await http.close()
    for runner in runners:
        await runner.cleanup()


async def test_a_refused_call_gets_503_and_its_peer_is_closed(
    leg_server: Callable[[ScriptedCalls], Awaitable[Server]],
) -> None:
    calls = ScriptedCalls(CallRejected("overloaded", "the gateway is at its limit of 1 concurrent calls"))
    server = await leg_server(calls)
    caller = WebRTCCaller(server.http, server.url)
    with pytest.raises(OfferRefused) as refusal:
        await caller.connect(caller="+263771234567")
    assert refusal.value.status == 503
    error = refusal.value.error
    assert (error["type"], error["code"]) == ("overloaded_error", "overloaded") and "limit" in error["message"]
    assert peers(server) == 0, "the peer made for the offer is closed before the answer"


async def test_the_call_is_admitted_driven_and_hung_up_when_the_page_goes(
    leg_server: Callable[[ScriptedCalls], Awaitable[Server]],
) -> None:
    calls = ScriptedCalls()
    server = await leg_server(calls)
    caller = WebRTCCaller(server.http, server.url)
    started = await caller.connect(caller="+263771234567", dialled="helpline")
    (scripted,) = calls.started
    assert started == {"type": "session.started", "call_id": "scripted-call", "profile": "scripted"}
    assert (scripted.info.leg, scripted.info.caller, scripted.info.dialled) == ("webrtc", "+263771234567", "helpline")
    await caller.send_json({"type": "dtmf", "digit": "#"})
    await caller.send_json({"type": "dance"})
    assert (await caller.wait_for("error"))["code"] == "unknown_type"
    assert scripted.digits == ["#"], "messages are handled in order: the digit came before the error"
    await caller.hang_up()  # the tab closes: nothing tells the gateway but the peer connection
    async with asyncio.timeout(30):
        await scripted.over.wait()
    assert scripted.endings == ["caller_hangup"]
    assert peers(server) == 0


async def test_media_stays_on_loopback_and_widgets_may_call_from_any_origin(make_server: ServerFactory) -> None:
    server = await make_server()  # the test settings pin ICE host candidates to 127.0.0.1
    assert aioice.ice.get_host_addresses(True, True) == ["127.0.0.1"]
    async with server.http.options(
        server.v1 + "/webrtc/offer",
        headers={"Origin": "https://helpline.example", "Access-Control-Request-Method": "POST"},
    ) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
    async with server.http.post(server.v1 + "/webrtc/offer", json={"sdp": "nonsense", "type": "offer"}) as resp:
        assert resp.status == 400
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
