"""The Asterisk AudioSocket leg: golden frames, and calls end to end with the real engines.

Asterisk cannot run here, so ``AudioSocketCaller`` stands in for it, speaking the exact wire
protocol; the golden tests pin that protocol's bytes (values from the Asterisk and
CyCoreSystems/audiosocket documentation), so the gateway and the stand-in cannot agree on a
mistake. Malformed input is written as raw bytes.
"""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest

from inzwa_voice.api.keys import CALLS
from inzwa_voice.engines.runtime import Engines
from inzwa_voice.legs.audiosocket import (
    AUDIOSOCKET,
    HANGUP_FRAME,
    AudioSocketServer,
    ErrorCode,
    Frame,
    Kind,
    encode_audio,
    encode_frame,
    error_frame,
    read_frame,
)
from inzwa_voice.legs.base import ProtocolError
from inzwa_voice.simulator.audiosocket import AudioSocketCaller
from tests.conftest import Server, ServerFactory, english_server, speak, transcript

QUESTION = "Hello. Where is the nearest clinic?"
# The UUID of the protocol documentation's examples.
DOC_UUID = uuid.UUID("40325ec2-5efd-4bd3-805f-53576e581d13")
# A few samples whose little-endian bytes are easy to check by eye.
SAMPLES = np.array([0, 1, -1, 256, -32768, 32767], dtype=np.int16)
SAMPLE_BYTES = bytes.fromhex("0000 0100 ffff 0001 0080 ff7f")


def metric(engines: Engines, name: str, **labels: str) -> float:
    return engines.metrics.registry.get_sample_value(name, {"leg": "audiosocket", **labels}) or 0.0


def errors(engines: Engines, code: str) -> float:
    return metric(engines, "inzwa_call_errors_total", code=code)


def port_of(server: Server) -> int:
    port = server.app[AUDIOSOCKET].port
    assert port is not None, "the AudioSocket server is not listening"
    return port


async def call(server: Server) -> AudioSocketCaller:
    caller = AudioSocketCaller("127.0.0.1", port_of(server))
    await caller.connect()
    return caller


async def exchange(port: int, data: bytes) -> list[Frame]:
    """Send raw bytes and end our side, then every frame the gateway sends until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    frames: list[Frame] = []
    try:
        writer.write(data)
        writer.write_eof()
        async with asyncio.timeout(30):
            while True:
                frames.append(await read_frame(reader))
    except asyncio.IncompleteReadError as exc:
        assert exc.partial == b"", "the gateway closed in the middle of a frame"
    finally:
        writer.close()
    return frames


# ----- the codec -----


def test_frames_are_built_byte_for_byte() -> None:
    assert HANGUP_FRAME == b"\x00\x00\x00"
    assert encode_frame(Kind.UUID, DOC_UUID.bytes) == bytes.fromhex("010010 40325ec25efd4bd3805f53576e581d13")
    assert encode_frame(Kind.DTMF, b"5") == b"\x03\x00\x015"
    assert encode_frame(Kind.AUDIO, SAMPLE_BYTES) == b"\x10\x00\x0c" + SAMPLE_BYTES
    assert error_frame(ErrorCode.UNAVAILABLE) == b"\xff\x00\x01\x20"
    # Outbound audio is cut into 20 ms frames: 320 bytes each at 8 kHz.
    frames = encode_audio(bytes(740))
    assert frames == b"\x10\x01\x40" + bytes(320) + b"\x10\x01\x40" + bytes(320) + b"\x10\x00\x64" + bytes(100)
    with pytest.raises(ValueError):
        encode_frame(Kind.AUDIO, bytes(65536))


async def parse(data: bytes) -> list[Frame]:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames = []
    while not reader.at_eof():
        frames.append(await read_frame(reader))
    return frames


async def test_frames_are_parsed_and_bad_lengths_refused() -> None:
    # What Asterisk sends on a call: the UUID, audio, a digit, and a hangup; plus a kind we do
    # not know (a newer Asterisk), which must parse so it can be skipped.
    stream = (
        bytes.fromhex("010010 40325ec25efd4bd3805f53576e581d13")
        + b"\x10\x00\x0c"
        + SAMPLE_BYTES
        + b"\x03\x00\x01#"
        + b"\x42\x00\x03abc"
        + b"\x00\x00\x00"
    )
    frames = await parse(stream)
    assert frames == [
        Frame(Kind.UUID, DOC_UUID.bytes),
        Frame(Kind.AUDIO, SAMPLE_BYTES),
        Frame(Kind.DTMF, b"#"),
        Frame(0x42, b"abc"),
        Frame(Kind.HANGUP),
    ]
    assert np.array_equal(np.frombuffer(frames[1].payload, dtype="<i2"), SAMPLES)

    for bad, code in [
        (b"\x10\xff\xff", "bad_length"),  # 64 KiB of "audio": refused before it is read
        (b"\x10\x00\x03abc", "odd_length"),
        (b"\x01\x00\x04abcd", "bad_length"),  # a UUID is 16 bytes
        (b"\x03\x00\x0212", "bad_length"),
        (b"\x00\x00\x01x", "bad_length"),
    ]:
        with pytest.raises(ProtocolError) as caught:
            await parse(bad)
        assert caught.value.code == code, bad
    # A connection that drops mid-frame reports the bytes it did get.
    with pytest.raises(asyncio.IncompleteReadError) as dropped:
        await parse(b"\x10\x01\x40" + bytes(100))
    assert len(dropped.value.partial) == 103


# ----- calls -----


async def test_a_spoken_question_gets_a_spoken_answer(make_server: ServerFactory, engines: Engines) -> None:
    server = await english_server(make_server)
    caller = await call(server)
    try:
        await caller.greeting_done()
        caller.clear_bot_audio()
        caller.say(await speak(engines, QUESTION, rate=8000))
        await caller.heard(500)
        await caller.bot_quiet()
        assert await transcript(engines, caller.bot_audio(), 8000)
        assert set(caller.frame_sizes) == {320}, "every audio frame to Asterisk is exactly 20 ms"
    finally:
        await caller.hang_up()


# The budget counts from the first frame of the interruption, but the synthesized clip opens
# with ~65 ms of silence that no VAD can hear; the margin covers it (the WebSocket test's too).
BARGE_IN_MARGIN_MS = 60


async def test_barge_in_stops_the_bot_within_300_ms_of_media_time(make_server: ServerFactory, engines: Engines) -> None:
    server = await english_server(make_server)
    caller = await call(server)
    interruption = await speak(engines, "Stop, stop. I have another question.", rate=8000)
    barge_ins = metric(engines, "inzwa_barge_ins_total")
    try:
        await caller.heard(400)  # the caller hears 400 ms of the greeting, then talks over it
        started = caller.say(interruption)
        await caller.bot_quiet()
        after = caller.timeline.audio_ms_after(started, caller.rate)
        assert after <= 300 + BARGE_IN_MARGIN_MS, f"{after:.0f} ms of bot audio after the caller started speaking"
        # The bot went quiet because it was interrupted, not because the greeting ended.
        assert metric(engines, "inzwa_barge_ins_total") == barge_ins + 1
    finally:
        await caller.hang_up()


async def test_dtmf_zero_asks_for_a_human_and_the_gateway_hangs_up(
    make_server: ServerFactory, engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await english_server(make_server)
    before = metric(engines, "inzwa_transfers_total", reason="dtmf")
    caller = await call(server)
    try:
        await caller.heard(20)  # the call is up
        # AudioSocket has no event to tell the caller: the gateway's record feed is where to look.
        with server.app[CALLS].watch() as recorded:
            await caller.send_dtmf("0")
            async with asyncio.timeout(30):
                while (await recorded.get()).kind != "transfer":
                    pass
        assert metric(engines, "inzwa_transfers_total", reason="dtmf") == before + 1
        # The transfer ends the call on our side: Asterisk gets a hangup frame and the socket
        # closes, so its dialplan goes on (tests/test_transfer.py follows it to the target).
        await asyncio.wait_for(caller.wait_closed(), 10)
        assert caller.events("hangup") == [{"type": "hangup"}]
    finally:
        await caller.hang_up()


async def test_bad_input_beside_a_healthy_call(make_server: ServerFactory, engines: Engines) -> None:
    server = await english_server(make_server)
    port = port_of(server)
    healthy = await call(server)
    start = encode_frame(Kind.UUID, uuid.uuid4().bytes)
    protocol_error = Frame(Kind.ERROR, bytes([ErrorCode.PROTOCOL]))
    try:
        await healthy.greeting_done()
        healthy.clear_bot_audio()

        counted = errors(engines, "bad_length")
        frames = await exchange(port, start + b"\x10\xff\xff" + bytes(64))  # a length that lies
        assert frames[-1] == protocol_error and errors(engines, "bad_length") == counted + 1
        assert all(f.kind == Kind.AUDIO for f in frames[:-1])  # greeting audio may come first

        counted = errors(engines, "odd_length")
        frames = await exchange(port, start + b"\x10\x00\x03abc")
        assert frames[-1] == protocol_error and errors(engines, "odd_length") == counted + 1

        counted = errors(engines, "not_started")
        assert await exchange(port, encode_frame(Kind.AUDIO, bytes(320))) == [protocol_error]
        assert errors(engines, "not_started") == counted + 1

        # Dropped mid-frame: the call ends as a hangup, without an answer on a dead line.
        counted = errors(engines, "truncated")
        frames = await exchange(port, start + b"\x10\x01\x40" + bytes(100))
        assert {f.kind for f in frames} <= {Kind.AUDIO} and errors(engines, "truncated") == counted + 1

        # An unknown kind is skipped and counted; the call goes on until the caller hangs up.
        counted = errors(engines, "unknown_kind")
        frames = await exchange(
            port, start + encode_frame(0x42, b"abc") + encode_frame(Kind.AUDIO, bytes(320)) + HANGUP_FRAME
        )
        assert {f.kind for f in frames} <= {Kind.AUDIO} and errors(engines, "unknown_kind") == counted + 1

        # A digit no phone menu here uses (AudioSocket can carry A-D) is counted and skipped.
        counted = errors(engines, "bad_dtmf")
        frames = await exchange(port, start + encode_frame(Kind.DTMF, b"A") + HANGUP_FRAME)
        assert {f.kind for f in frames} <= {Kind.AUDIO} and errors(engines, "bad_dtmf") == counted + 1

        # The healthy call still hears and answers.
        healthy.say(await speak(engines, QUESTION, rate=8000))
        await healthy.heard(500)
        assert not healthy.closed.is_set()
    finally:
        await healthy.hang_up()


async def test_calls_beyond_the_limit_get_an_error_frame(make_server: ServerFactory) -> None:
    server = await english_server(make_server, max_sessions=1)
    first = await call(server)
    second = AudioSocketCaller("127.0.0.1", port_of(server))
    try:
        await first.heard(20)  # the first call holds the only place
        await second.connect()
        await asyncio.wait_for(second.wait_closed(), 30)  # after the busy message, when it is ready
        assert second.events("error") == [{"type": "error", "code": ErrorCode.UNAVAILABLE}]
        assert not first.closed.is_set()
    finally:
        await second.hang_up()
        await first.hang_up()


async def test_silent_peers_time_out_and_stop_ends_live_calls(make_server: ServerFactory, engines: Engines) -> None:
    server = await english_server(make_server)
    # A server of our own, with timeouts short enough to wait for.
    short = AudioSocketServer(server.app[CALLS], start_timeout_s=0.3, idle_timeout_s=0.5)
    await short.start("127.0.0.1", 0)
    assert short.port is not None
    live = AudioSocketCaller("127.0.0.1", short.port)
    try:
        # No UUID in time: an error frame.
        counted = errors(engines, "start_timeout")
        reader, writer = await asyncio.open_connection("127.0.0.1", short.port)
        async with asyncio.timeout(10):
            assert await read_frame(reader) == Frame(Kind.ERROR, bytes([ErrorCode.PROTOCOL]))
        writer.close()
        assert errors(engines, "start_timeout") == counted + 1

        # A UUID, then nothing: the gateway hangs up.
        counted = errors(engines, "read_timeout")
        reader, writer = await asyncio.open_connection("127.0.0.1", short.port)
        writer.write(encode_frame(Kind.UUID, uuid.uuid4().bytes))
        async with asyncio.timeout(10):
            while (frame := await read_frame(reader)).kind == Kind.AUDIO:
                pass
        assert frame == Frame(Kind.HANGUP)
        writer.close()
        assert errors(engines, "read_timeout") == counted + 1

        # Stopping the server (app shutdown) hangs up the calls it carries.
        await live.connect()
        await live.heard(20)
        await short.stop()
        await asyncio.wait_for(live.wait_closed(), 10)
        assert live.events("hangup") == [{"type": "hangup"}]
    finally:
        await live.hang_up()
        await short.stop()
