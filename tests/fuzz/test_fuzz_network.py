"""Garbage on every leg of a live gateway: it keeps serving, and a real call still works after.

Each leg gets what a broken or hostile peer sends: bytes that are not HTTP, mutated Twilio and
native WebSocket messages inside live calls, AudioSocket streams of mutated frames, mutated
webhook forms and offers, and malformed SIP datagrams at the SIP port. The inputs are the seed
corpus (``fuzz/corpus/``) mutated with a fixed seed, so a failure reproduces. Nothing may log
an error; afterwards ``/health`` answers, the SIP stack answers an OPTIONS, and a spoken
question over the WebSocket gets its answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import uuid
from pathlib import Path

import aiohttp
import pytest

from inzwa_voice.api.keys import CALLS
from inzwa_voice.conversation.calls import CallEvent
from inzwa_voice.engines.runtime import Engines
from inzwa_voice.legs.audiosocket import AUDIOSOCKET
from inzwa_voice.legs.base import ProtocolError
from inzwa_voice.legs.sip import SIP
from inzwa_voice.legs.websocket import parse_control
from inzwa_voice.simulator.audiosocket import AudioSocketCaller
from inzwa_voice.simulator.caller import Caller
from inzwa_voice.simulator.twilio import TwilioCaller
from inzwa_voice.simulator.ws import WsCaller
from tests.conftest import Server, ServerFactory, english_server, speak
from tests.fuzz.strategies import mutate
from tests.fuzz.targets import TARGETS
from tests.test_sip import sipp

pytestmark = pytest.mark.slow
PJSIP_LOG = "inzwa_voice.sip.pjsua"
ROUNDS = 100
"""Garbled messages per leg: enough to pass every parser's branches, a few seconds in all."""


def garble(target: str, rng: random.Random) -> bytes:
    seeds = TARGETS[target].seeds()
    return mutate(rng.choice(seeds), seeds, rng)


def refused_control(rng: random.Random) -> str:
    """A garbled control message the parser refuses: one it reads (a mutated ``stop``, or
    DTMF 0 for a human) would end the call it is meant to leave alone."""
    while True:
        message = garble("ws_control", rng).decode("utf-8", "replace")
        try:
            parse_control(message)
        except ProtocolError:
            return message


def ws_base(server: Server) -> str:
    return server.url.replace("http", "ws")


async def raw_http(server: Server, rng: random.Random) -> None:
    """Bytes that are not HTTP at all, and half a request: each connection closes, nothing else."""
    port = int(server.url.rsplit(":", 1)[1])
    for data in [rng.randbytes(rng.randint(1, 400)) for _ in range(10)] + [
        b"GET /health HTTP/1.1\r\nHost: x\r\n\0\r\n"
    ]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(data)
        writer.write_eof()
        async with asyncio.timeout(15):
            await reader.read()  # whatever the answer is, the server ends the connection
        writer.close()


async def http_garbage(server: Server, rng: random.Random) -> None:
    """Mutated Twilio webhook forms and WebRTC offers: a 4xx or a TwiML answer, never a 5xx.
    The offers start with the seeds: ``regression-*`` ones once got a 500 from aiortc."""
    headers = {"Content-Type": "application/json"}
    for seed in TARGETS["webrtc_offer"].seeds():
        async with server.http.post(server.v1 + "/webrtc/offer", data=seed[1:], headers=headers) as resp:
            assert resp.status < 500, await resp.text()
    for _ in range(ROUNDS):
        form = garble("twilio_webhook", rng)
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        async with server.http.post(server.v1 + "/twilio/voice", data=form, headers=headers) as resp:
            assert resp.status < 500, await resp.text()
        offer = garble("webrtc_offer", rng)[1:]
        headers = {"Content-Type": "application/json"}
        async with server.http.post(server.v1 + "/webrtc/offer", data=offer, headers=headers) as resp:
            assert resp.status < 500, await resp.text()


async def ws_garbage(server: Server, rng: random.Random) -> None:
    """A live native call gets mutated control messages and audio; then one that breaks the
    protocol before ``start``."""
    caller = WsCaller(server.http, ws_base(server) + "/v1/ws")
    await caller.connect()
    try:
        for _ in range(ROUNDS):
            await caller.send_raw(refused_control(rng))
            await caller.send_raw(rng.randbytes(2 * rng.randint(0, 400)))
        assert not caller.closed.is_set()
    finally:
        await caller.hang_up()
    async with server.http.ws_connect(ws_base(server) + "/v1/ws") as ws:
        await ws.send_bytes(rng.randbytes(321))
        async with asyncio.timeout(15):
            while (await ws.receive()).type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                pass
        assert ws.close_code == 4400


async def twilio_garbage(server: Server, rng: random.Random) -> None:
    """A live Twilio stream gets mutated Twilio messages and binary frames, which it drops."""
    caller = TwilioCaller(server.http, ws_base(server) + "/v1/twilio/media")
    await caller.connect()
    try:
        for _ in range(ROUNDS):
            await caller.send_raw(garble("twilio_message", rng)[1:].decode("utf-8", "replace"))
            await caller.send_raw(rng.randbytes(rng.randint(1, 300)))
        assert not caller.closed.is_set()
    finally:
        await caller.hang_up()


async def audiosocket_garbage(server: Server, rng: random.Random) -> None:
    """Connections that send mutated AudioSocket streams: each ends, with an error frame or not."""
    port = server.app[AUDIOSOCKET].port
    assert port is not None
    for _ in range(ROUNDS // 4):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(garble("audiosocket_stream", rng))
        writer.write_eof()
        async with asyncio.timeout(15):
            await reader.read()
        writer.close()


SIP_REQUESTS = [
    "OPTIONS sip:gw@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{tag}\r\n"
    "From: <sip:fuzz@127.0.0.1>;tag={tag}\r\nTo: <sip:gw@127.0.0.1>\r\nCall-ID: {tag}@fuzz\r\nCSeq: 1 OPTIONS\r\n"
    "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
    "INVITE sip:+100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{tag}\r\n"
    'From: "Fuzz" <sip:+263771@127.0.0.1>;tag={tag}\r\nTo: <sip:+100@127.0.0.1>\r\nCall-ID: {tag}@fuzz\r\n'
    "CSeq: 1 INVITE\r\nContact: <sip:fuzz@127.0.0.1:{port}>\r\nMax-Forwards: 70\r\nContent-Type: application/sdp\r\n"
    "Content-Length: 999999\r\n\r\nv=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 9 RTP/AVP 0 8 9\r\n",
    "BYE sip:gw@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP [::1\r\nCSeq: -1 BYE\r\nCall-ID: \r\n\r\n",
    "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{tag}\r\nCSeq: 99999999999999 INVITE\r\n\r\n",
]


async def ended(feed: asyncio.Queue[CallEvent]) -> None:
    """Until the next call's end is recorded."""
    async with asyncio.timeout(30):
        while (await feed.get()).kind != "end":
            pass


class _Sip(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.responses: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.responses.put_nowait(data)


async def sip_garbage(server: Server, rng: random.Random) -> None:
    """Malformed datagrams at the SIP port, then an OPTIONS that must still be answered."""
    sip_port = server.app[SIP].port
    assert sip_port is not None
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(_Sip, local_addr=("127.0.0.1", 0), family=socket.AF_INET)
    try:
        port = transport.get_extra_info("sockname")[1]
        requests = [r.format(port=port, tag=uuid.uuid4().hex).encode() for r in SIP_REQUESTS]
        for _ in range(ROUNDS * 5):
            transport.sendto(mutate(rng.choice(requests), requests, rng), ("127.0.0.1", sip_port))
        transport.sendto(rng.randbytes(1400), ("127.0.0.1", sip_port))
        tag = uuid.uuid4().hex
        options = SIP_REQUESTS[0].format(port=port, tag=tag).encode()
        async with asyncio.timeout(30):
            while True:  # resent every 0.5 s as a SIP client does over UDP (timer A): the garbage
                transport.sendto(options, ("127.0.0.1", sip_port))  # may have filled the socket's buffer
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        while tag.encode() not in (answer := await protocol.responses.get()):
                            pass
                        break
        assert answer.startswith(b"SIP/2.0 200"), answer[:80]
    finally:
        transport.close()


async def test_garbage_on_every_leg_leaves_the_gateway_serving(
    make_server: ServerFactory, engines: Engines, caplog: pytest.LogCaptureFixture
) -> None:
    # Every garbled webhook and offer counts as a call attempt from 127.0.0.1: no rate limit here.
    server = await english_server(make_server, sip_enabled=True, sip_port=0, call_rate_limit_per_minute=0)
    rng = random.Random(20261207)
    caplog.set_level(logging.WARNING)
    for attack in (raw_http, http_garbage, ws_garbage, twilio_garbage, audiosocket_garbage, sip_garbage):
        await attack(server, rng)
    # The gateway's own loggers, where an exception a handler did not expect is logged. Not the
    # libraries' judgement of a peer's bytes: aiohttp's server logs every connection that is not
    # HTTP at ERROR, and pjsip's log (inzwa_voice.sip.pjsua) its "Error processing packet".
    errors = [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.name.startswith("inzwa_voice") and r.name != PJSIP_LOG
    ]
    assert not errors

    async with server.http.get(server.url + "/health") as resp:
        assert resp.status == 200
    caller = WsCaller(server.http, ws_base(server) + "/v1/ws")
    await caller.connect()
    try:
        await caller.wait_for("tts.end")
        caller.say(await speak(engines, "Hello. Where is the nearest clinic?"))
        final = await caller.wait_for("asr.final")
        assert "clinic" in final["text"].lower()
        await caller.wait_for("tts.start")
    finally:
        with contextlib.suppress(ConnectionError):
            await caller.hang_up()


async def test_a_hang_up_during_the_greeting_logs_no_error(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """The caller hangs up while the greeting plays, on each leg: an ordinary end, not an error."""
    server = await english_server(make_server, sip_enabled=True, sip_port=0)
    caplog.set_level(logging.WARNING)
    port = server.app[AUDIOSOCKET].port
    assert port is not None

    def callers() -> list[Caller]:
        return [
            WsCaller(server.http, ws_base(server) + "/v1/ws"),
            TwilioCaller(server.http, ws_base(server) + "/v1/twilio/media"),
            AudioSocketCaller("127.0.0.1", port),
        ]

    # At once (the greeting may still be being synthesized), then once it is heard.
    with server.app[CALLS].watch() as feed:
        for index, caller in enumerate([*callers(), *callers()]):
            await caller.connect()
            if index >= 3:
                await caller.heard(200)
            await caller.hang_up()
            await ended(feed)
        # SIPp's caller says BYE 3 s after its ACK, while the greeting (about 4 s) plays.
        assert (await sipp(server, "uac_basic.xml", tmp_path)).returncode == 0
        await ended(feed)
    errors = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors
