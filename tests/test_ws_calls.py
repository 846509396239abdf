"""Calls over the native WebSocket leg, end to end with the real engines, in real time."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os

import numpy as np
import pytest

from inzwa_voice.api.keys import CALLS
from inzwa_voice.engines.runtime import Engines
from inzwa_voice.simulator.caller import Refused
from inzwa_voice.simulator.ws import WsCaller
from tests.conftest import Server, ServerFactory, english_server, speak, transcript

QUESTION = "Hello. Where is the nearest clinic?"


def ws_url(server: Server) -> str:
    return server.url.replace("http", "ws") + "/v1/ws"


async def call(server: Server, *, dtx: bool = False, **start: object) -> WsCaller:
    caller = WsCaller(server.http, ws_url(server), dtx=dtx)
    await caller.connect(**start)
    return caller


async def raw_start(server: Server, start: dict[str, object]) -> asyncio.StreamWriter:
    """A WebSocket client by hand: the upgrade and one masked text frame, then nothing; the
    caller of this decides how the connection dies."""
    host, port = "127.0.0.1", int(server.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection(host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /v1/ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    payload = json.dumps(start).encode()
    assert len(payload) < 126  # one byte of length
    mask = os.urandom(4)
    writer.write(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    await writer.drain()
    return writer


async def active_calls(server: Server) -> int:
    async with server.http.get(server.url + "/health") as resp:
        return int((await resp.json())["active_calls"])


async def greeted(caller: WsCaller) -> None:
    await caller.wait_for("tts.end")
    caller.clear_bot_audio()


async def test_a_spoken_question_gets_a_spoken_answer(make_server: ServerFactory, engines: Engines) -> None:
    server = await english_server(make_server)
    caller = await call(server)
    try:
        await greeted(caller)
        caller.say(await speak(engines, QUESTION))
        final = await caller.wait_for("asr.final")
        assert "clinic" in final["text"].lower()
        await caller.wait_for("tts.start")
        metrics = await caller.wait_for("turn.metrics")
        assert metrics["id"] == final["id"]
        assert {"endpoint", "asr_final", "first_frame_sent"} <= set(metrics["latency_ms"])
        answer = caller.bot_audio()
        assert len(answer) > 16000 // 2
        assert await transcript(engines, answer, 16000)
        assert caller.events("llm.partial")
    finally:
        await caller.hang_up()


async def paused_question(engines: Engines, sentences: list[str], pauses_ms: list[int]) -> tuple[np.ndarray, int]:
    """The sentences spoken by the packaged voice with the silence between them ``pauses_ms``
    long (the voice's own trailing and leading silence counted in); and where the last sentence's
    voice ends, in ms from the start."""
    parts: list[np.ndarray] = []
    for k, sentence in enumerate(sentences):
        pcm = await speak(engines, sentence)
        voiced = np.nonzero(np.abs(pcm.astype(np.int32)) > 500)[0]
        pcm = pcm[voiced[0] : voiced[-1] + 1]
        parts.append(pcm)
        if k < len(pauses_ms):
            parts.append(np.zeros(16 * pauses_ms[k], dtype=np.int16))
    audio = np.concatenate(parts)
    return np.concatenate([audio, np.zeros(16000, dtype=np.int16)]), len(audio) // 16


async def test_a_paused_three_sentence_question_is_answered_once_after_its_last_sentence(
    make_server: ServerFactory, engines: Engines
) -> None:
    server = await english_server(make_server)
    caller = await call(server)
    question, voice_ends_ms = await paused_question(
        engines, ["Hello.", "I need some help please.", "Where is the nearest clinic?"], [440, 500]
    )
    try:
        await greeted(caller)
        start = caller.say(question)
        final = await caller.wait_for("asr.final")
        assert "help" in final["text"].lower() and "clinic" in final["text"].lower()
        metrics = await caller.wait_for("turn.metrics", timeout=90)
        assert metrics["id"] == final["id"]
        # One decode per stretch (the pauses split it in three), none of the whole question again.
        assert 1 <= metrics["runs"]["asr"] <= 3
        # Answered once, and nothing of it while the caller was still asking.
        answers = [e["id"] for ms, e in caller.timeline.events if ms >= start and e["type"] == "tts.start"]
        assert answers == [final["id"]]
        # (From one paced lead on: the greeting's last frames may still arrive as the caller starts.)
        assert not caller.timeline.bot_spoke_during(start + 100, start + voice_ends_ms)
        assert len(caller.events("asr.final")) == 1
    finally:
        await caller.hang_up()


async def test_barge_in_stops_the_bot_within_300_ms_of_media_time(make_server: ServerFactory, engines: Engines) -> None:
    server = await english_server(make_server)
    caller = await call(server)
    interruption = await speak(engines, "Stop, stop. I have another question.")
    try:
        await caller.heard(400)  # the caller hears 400 ms of the greeting, then talks over it
        started = caller.say(interruption)
        barge = await caller.wait_for("barge_in")
        after = caller.timeline.audio_ms_after(started, caller.rate)
        assert after <= 300 + 60, f"{after:.0f} ms of bot audio after the caller started speaking"
        assert barge["heard"] != ""
    finally:
        await caller.hang_up()


async def test_a_caller_who_stops_sending_still_gets_an_answer(make_server: ServerFactory, engines: Engines) -> None:
    """After the question the client sends nothing at all: no trailing silence, no end_turn
    (DTX, a muted microphone, a stalled network). The gateway's clock ends the turn."""
    server = await english_server(make_server)
    caller = await call(server, dtx=True)
    try:
        await greeted(caller)
        caller.say(await speak(engines, QUESTION))
        final = await caller.wait_for("asr.final")
        assert "clinic" in final["text"].lower()
        answer = await caller.wait_for("tts.start")
        assert answer["id"] == final["id"]
        assert (await caller.wait_for("tts.end"))["id"] == final["id"]
        assert await transcript(engines, caller.bot_audio(), 16000)
    finally:
        await caller.hang_up()


async def test_a_client_gone_right_after_start_frees_its_slot(make_server: ServerFactory) -> None:
    """The client sends ``start`` and drops the connection at once, before ``session.started``
    can reach it: its call still ends and is recorded, and its place is free again."""
    server = await english_server(make_server, max_sessions=1)
    with server.app[CALLS].watch() as recorded:
        writer = await raw_start(server, {"type": "start", "codec": "pcm16", "sample_rate": 16000})
        async with asyncio.timeout(30):
            while (started := await recorded.get()).kind != "start":
                pass
            writer.transport.abort()  # the call is starting: gone, with no closing handshake
            while (event := await recorded.get()).kind != "end" or event.call_id != started.call_id:
                pass
    assert event.data["disposition"] == "caller_hangup"
    assert await active_calls(server) == 0
    async with server.http.get(f"{server.v1}/admin/calls/{started.call_id}") as resp:
        assert resp.status == 200
        assert (await resp.json())["disposition"] == "caller_hangup"
    # The only place is free: the next caller is taken.
    caller = await call(server)
    await caller.hang_up()


async def test_dtmf_must_be_one_keypad_digit(make_server: ServerFactory) -> None:
    server = await english_server(make_server)
    caller = await call(server)
    try:
        for digit in ["", "0123", "*#", "A", 5, None]:
            await caller.send_json({"type": "dtmf", "digit": digit})
            error = await caller.wait_for("error")
            assert (error["code"], error["recoverable"]) == ("bad_dtmf", True), digit
        await caller.send_json({"type": "dtmf", "digit": "#"})
        assert (await caller.wait_for("dtmf"))["digit"] == "#"
        assert [e["digit"] for e in caller.events("dtmf")] == ["#"]
    finally:
        await caller.hang_up()


async def test_dtmf_zero_asks_for_a_human(make_server: ServerFactory) -> None:
    server = await english_server(make_server)
    caller = await call(server)
    try:
        await caller.send_json({"type": "dtmf", "digit": "0"})
        transfer = await caller.wait_for("transfer")
        assert transfer["reason"] == "dtmf"
    finally:
        await caller.hang_up()


async def test_bad_messages_beside_a_healthy_call(make_server: ServerFactory, engines: Engines) -> None:
    server = await english_server(make_server)
    healthy = await call(server)
    try:
        # Recoverable: the call goes on.
        bad = await call(server)
        await bad.send_raw("{not json")
        assert (await bad.wait_for("error"))["recoverable"] is True
        await bad.send_json({"type": "dance"})
        assert (await bad.wait_for("error"))["code"] == "unknown_type"
        # Fatal: odd-length PCM closes with 4400.
        await bad.send_raw(b"\x01\x02\x03")
        assert await bad.wait_closed() == 4400
        # Binary before start.
        ws = await server.http.ws_connect(server.url.replace("http", "ws") + "/v1/ws")
        await ws.send_bytes(b"\x00\x00" * 160)
        msg = await ws.receive_json()
        assert msg["code"] == "not_started"
        await ws.receive()
        assert ws.close_code == 4400
        # A 10 MB frame is refused by size.
        huge = await call(server)
        with contextlib.suppress(ConnectionError):  # the server may reset before the send ends
            await huge.send_raw(b"\x00" * (10 * 1024 * 1024))
        assert await huge.wait_closed() in (1009, 1006)  # "message too big", or the reset seen first
        # The healthy call still hears and answers.
        healthy.say(await speak(engines, QUESTION))
        assert "clinic" in (await healthy.wait_for("asr.final"))["text"].lower()
    finally:
        await healthy.hang_up()


async def test_calls_beyond_the_limit_are_refused(make_server: ServerFactory) -> None:
    server = await english_server(make_server, max_sessions=2)
    first, second = await call(server), await call(server)
    try:
        third = WsCaller(server.http, server.url.replace("http", "ws") + "/v1/ws")
        with pytest.raises(Refused) as refused:
            await third.connect()
        assert refused.value.close_code == 1013
        assert refused.value.busy_text == server.app[CALLS].default_profile().busy_message
        assert third.events("error")[0]["code"] == "overloaded"
    finally:
        await first.hang_up()
        await second.hang_up()


async def test_four_concurrent_calls_are_isolated(make_server: ServerFactory, engines: Engines) -> None:
    server = await english_server(make_server)
    questions = [
        "Where is the clinic?",
        "I need help with my rent.",
        "My phone was stolen yesterday.",
        "Can I speak to a counsellor?",
    ]
    keywords = ["clinic", "rent", "phone", "counsel"]
    callers = [await call(server) for _ in questions]
    try:
        for caller, question in zip(callers, questions, strict=True):
            caller.say(await speak(engines, question))
        finals = await asyncio.gather(*(c.wait_for("asr.final", timeout=120) for c in callers))
        for final, keyword in zip(finals, keywords, strict=True):
            assert keyword in final["text"].lower(), final["text"]
        assert len({f["id"] for f in finals}) == 4
    finally:
        for caller in callers:
            await caller.hang_up()


async def test_an_interrupted_answer_is_recorded_cut_at_what_was_played(
    make_server: ServerFactory, engines: Engines
) -> None:
    server = await english_server(make_server)
    caller = await call(server)
    call_id = caller.events("session.started")[0]["call_id"]
    try:
        await greeted(caller)
        caller.say(await speak(engines, "Tell me everything about the clinic and its opening hours."))
        answer = await caller.wait_for("tts.start")
        await caller.heard(300)
        caller.say(await speak(engines, "No, wait."))
        barge = await caller.wait_for("barge_in")
        assert barge["id"] == answer["id"]
        async with server.http.get(f"{server.v1}/admin/calls/{call_id}") as resp:
            record = await resp.json()
        turn = record["turns"][0]
        assert turn["barged_in"] is True
        assert turn["reply_text"] == barge["heard"]
        assert len(turn["reply_text"]) < len(turn["reply_full"])
        assert turn["reply_full"].startswith(turn["reply_text"].split(" ")[0])
        assert "clinic" in turn["caller_text"].lower()
        assert any(e["kind"] == "barge_in" for e in record["events"])
    finally:
        await caller.hang_up()


async def test_idle_caller_is_reprompted_then_the_call_ends(make_server: ServerFactory) -> None:
    server = await english_server(make_server)
    caller = await call(server, dialled="+100")  # the dialplan gives this line a 1.5 s idle timeout
    assert await caller.wait_closed() == 1000
    await caller.hang_up()
    kinds = [e["type"] for _, e in caller.timeline.events if e["type"] in ("tts.start", "tts.end", "call.end")]
    # greeting, re-prompt, goodbye; then the call ends as idle
    assert kinds == ["tts.start", "tts.end"] * 3 + ["call.end"]
    assert caller.events("call.end")[0]["reason"] == "idle_timeout"
    async with server.http.get(f"{server.v1}/admin/calls?active=false") as resp:
        calls = (await resp.json())["data"]
    assert calls[0]["disposition"] == "idle_timeout"


async def test_an_operator_can_hang_up_a_live_call(make_server: ServerFactory) -> None:
    server = await english_server(make_server)
    caller = await call(server)
    call_id = caller.events("session.started")[0]["call_id"]
    async with server.http.post(f"{server.v1}/admin/calls/{call_id}/hangup?goodbye=false") as resp:
        assert resp.status == 200
    assert await caller.wait_closed() == 1000
    assert caller.events("call.end")[0]["reason"] == "admin_hangup"
    async with server.http.post(f"{server.v1}/admin/calls/{call_id}/hangup") as resp:
        assert resp.status == 404
    await caller.hang_up()


async def test_a_cough_does_not_interrupt_the_bot(make_server: ServerFactory, engines: Engines) -> None:
    server = await english_server(make_server)
    caller = await call(server)
    cough = (await speak(engines, "Hello there, how are you?"))[1600:2880]  # 80 ms of voice
    try:
        await caller.heard(300)
        caller.say(cough)
        await caller.wait_for("tts.end")  # the greeting plays to its end
        assert caller.events("barge_in") == []
    finally:
        await caller.hang_up()
