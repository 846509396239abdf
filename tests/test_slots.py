"""No leaked slots: every handshake has a deadline, and HTTP bounds what one address may hold.

A call's place (a session, an AudioSocket connection waiting for its UUID, one of pjsua2's four
SIP calls) must come back within ``handshake_timeout_s`` when the far end opens and goes quiet:
a WebSocket or Twilio stream without ``start``, an AudioSocket connection without its UUID, an
INVITE whose 200 OK is never acknowledged (a real SIPp caller). On HTTP, a connection that never
finishes its headers is closed after ``http_header_timeout_s``, and one address may have at
most ``max_connections_per_address`` requests in flight. Each test waits on the wire or on the
gateway's own counters, bounded well under the old fixed deadlines (10 s; pjsip's 32 s).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from inzwa_voice.api.keys import CALLS
from inzwa_voice.engines.runtime import Engines
from inzwa_voice.legs.audiosocket import AUDIOSOCKET, MAX_PENDING, ErrorCode, Frame, Kind, read_frame
from inzwa_voice.legs.sip import SIP
from inzwa_voice.simulator.audiosocket import AudioSocketCaller
from tests.conftest import Server, ServerFactory, english_server
from tests.test_sip import Records, sip_server, sipp

DEADLINE_S = 0.5
# Well under the fixed deadlines these settings replaced, well over DEADLINE_S on a busy machine.
MARGIN_S = 6.0


def http_port(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def counted(engines: Engines, leg: str, code: str) -> float:
    labels = {"leg": leg, "code": code}
    return engines.metrics.registry.get_sample_value("inzwa_call_errors_total", labels) or 0.0


# ----- call handshakes -----


@pytest.mark.parametrize(("path", "leg"), [("/v1/ws", "ws"), ("/v1/twilio/media", "twilio")])
async def test_a_stream_that_never_starts_is_closed_at_the_deadline(
    make_server: ServerFactory, engines: Engines, path: str, leg: str
) -> None:
    server = await make_server(handshake_timeout_s=DEADLINE_S)
    before = counted(engines, leg, "start_timeout")
    async with server.http.ws_connect(server.url.replace("http", "ws", 1) + path) as ws:
        async with asyncio.timeout(MARGIN_S):
            while (msg := await ws.receive()).type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                assert msg.json()["code"] == "start_timeout"  # the native leg says why first
    assert ws.close_code == 4400
    assert counted(engines, leg, "start_timeout") == before + 1
    assert not server.app[CALLS].sessions


async def test_audiosocket_peers_without_a_uuid_give_their_places_back(make_server: ServerFactory) -> None:
    """Every place for connections awaiting their UUID is taken; one more is refused with the
    error frame (and a clean close, not a reset); at the deadline each gets its own error frame
    and the places are free, so a real call is taken."""
    server = await english_server(make_server, handshake_timeout_s=DEADLINE_S)
    audiosocket = server.app[AUDIOSOCKET]
    assert audiosocket.port is not None
    silent = [await asyncio.open_connection("127.0.0.1", audiosocket.port) for _ in range(MAX_PENDING)]
    try:
        # Accepted in order: by the time this one is, the others hold every place.
        reader, writer = await asyncio.open_connection("127.0.0.1", audiosocket.port)
        async with asyncio.timeout(MARGIN_S):
            assert await read_frame(reader) == Frame(Kind.ERROR, bytes([ErrorCode.UNAVAILABLE]))
            assert await reader.read() == b""  # EOF: closed, not reset
        writer.close()
        async with asyncio.timeout(MARGIN_S):
            for silent_reader, _ in silent:
                assert await read_frame(silent_reader) == Frame(Kind.ERROR, bytes([ErrorCode.PROTOCOL]))
                assert await silent_reader.read() == b""  # closed after its place was given back
        assert audiosocket.pending == 0
    finally:
        for _, silent_writer in silent:
            silent_writer.close()
    caller = AudioSocketCaller("127.0.0.1", audiosocket.port)
    try:
        await caller.connect()
        await caller.heard(20)
        assert len(server.app[CALLS].sessions) == 1
    finally:
        await caller.hang_up()


async def test_an_invite_never_acknowledged_frees_its_sip_slot_at_the_deadline(
    make_server: ServerFactory, engines: Engines, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await sip_server(make_server, handshake_timeout_s=DEADLINE_S)
    records = Records(server, monkeypatch)
    sip = server.app[SIP]
    slots_free = asyncio.Event()
    ended = sip.ended

    def note_ended(key: int, status: int, reason: str) -> None:
        ended(key, status, reason)
        if sip.calls_in_progress == 0:
            slots_free.set()

    monkeypatch.setattr(sip, "ended", note_ended)
    before = counted(engines, "sip", "ack_timeout")
    # SIPp answers the gateway's BYE and exits; pjsip alone would wait 32 s for the ACK.
    async with asyncio.timeout(MARGIN_S + 4):
        result = await sipp(server, "uac_no_ack.xml", tmp_path)
        await records.until(lambda: bool(records.ends()))
        await slots_free.wait()
    assert result.returncode == 0, result.errors
    assert [disposition for _, disposition in records.ends()] == ["error"]
    assert counted(engines, "sip", "ack_timeout") == before + 1
    assert not server.app[CALLS].sessions


# ----- HTTP -----


async def test_a_connection_that_never_finishes_its_headers_is_closed(make_server: ServerFactory) -> None:
    server = await make_server(http_header_timeout_s=DEADLINE_S)
    reader, writer = await asyncio.open_connection("127.0.0.1", http_port(server))
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # ... and never the rest
        await writer.drain()
        async with asyncio.timeout(MARGIN_S):
            assert await reader.read() == b""  # closed by the gateway, with no answer
    finally:
        writer.close()
    # A whole request on a fresh connection is answered as ever.
    async with server.http.get(server.url + "/health") as resp:
        assert resp.status == 200


async def test_one_address_holds_at_most_its_cap_of_requests(make_server: ServerFactory) -> None:
    server = await make_server(max_connections_per_address=2, handshake_timeout_s=30)
    url = server.url.replace("http", "ws", 1) + "/v1/ws"
    # Two WebSocket upgrades waiting for their start: two requests in flight from 127.0.0.1.
    first = await server.http.ws_connect(url)
    second = await server.http.ws_connect(url)
    try:
        async with aiohttp.ClientSession() as other, other.get(server.url + "/health") as resp:
            assert resp.status == 429
            error = (await resp.json())["error"]
            assert (error["type"], error["code"]) == ("overloaded_error", "too_many_connections")
            assert resp.headers["Retry-After"] == "1"
        await first.close()
        async with aiohttp.ClientSession() as other:
            async with asyncio.timeout(MARGIN_S):
                while True:  # the first upgrade's handler ends just after its close
                    async with other.get(server.url + "/health") as resp:
                        if resp.status == 200:
                            break
    finally:
        await first.close()
        await second.close()


async def test_the_header_deadline_does_not_end_a_call(make_server: ServerFactory) -> None:
    """An upgraded connection is a request in progress: the header deadline never closes it."""
    server = await english_server(make_server, http_header_timeout_s=DEADLINE_S)
    async with server.http.ws_connect(server.url.replace("http", "ws", 1) + "/v1/ws") as ws:
        await ws.send_json({"type": "start", "codec": "pcm16", "sample_rate": 16000})
        assert (await ws.receive_json(timeout=30))["type"] == "session.started"
        # The greeting plays in real time, for seconds: well past the header deadline when it ends.
        async with asyncio.timeout(60):
            while (msg := await ws.receive()).type != aiohttp.WSMsgType.TEXT or msg.json()["type"] != "tts.end":
                assert msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), msg
            await ws.send_json({"type": "dtmf", "digit": "12"})
            while (msg := await ws.receive()).type != aiohttp.WSMsgType.TEXT or msg.json()["type"] != "error":
                assert msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), msg
        assert msg.json()["code"] == "bad_dtmf"
        await ws.send_json({"type": "stop"})
