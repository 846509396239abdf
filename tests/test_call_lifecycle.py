"""A call's life as a caller lives it, end to end with the real engines over the WebSocket leg:
words kept when the caller hangs up mid-answer, the transcript before the answer, an apology
(not silence) when the answer fails, and the call going on after it."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from inzwa_voice.engines.base import GenerationDefaults
from inzwa_voice.engines.llm.remote import OpenAICompatibleLLM
from inzwa_voice.engines.runtime import Engines
from inzwa_voice.simulator.ws import WsCaller
from tests.conftest import Server, ServerFactory, english_server, speak, transcript

QUESTION = "Hello. I cannot pay my rent this month. Where can I get help?"
APOLOGY = "I'm sorry, I could not answer that just now. Please say it again."


async def call(server: Server, **start: object) -> tuple[WsCaller, str]:
    caller = WsCaller(server.http, server.url.replace("http", "ws") + "/v1/ws")
    started = await caller.connect(**start)
    return caller, str(started["call_id"])


async def record(server: Server, call_id: str) -> dict[str, Any]:
    """The call's record once the call has ended (the end is recorded before the leg closes)."""
    async with server.http.get(f"{server.v1}/admin/calls/{call_id}") as response:
        assert response.status == 200
        return dict(await response.json())


def event_types(caller: WsCaller) -> list[str]:
    return [str(e.get("type")) for _, e in caller.timeline.events]


async def test_a_caller_who_hangs_up_during_the_answer_keeps_their_words(
    make_server: ServerFactory, engines: Engines
) -> None:
    server = await english_server(make_server)
    caller, call_id = await call(server)
    await caller.wait_for("tts.end")
    caller.say(await speak(engines, QUESTION))
    final = await caller.wait_for("asr.final")
    await caller.wait_for("tts.start")
    await caller.hang_up()
    types = event_types(caller)
    answer = types[types.index("tts.end") + 1 :]  # after the greeting
    assert answer.index("asr.final") < answer.index("llm.partial") < answer.index("tts.start")

    recorded = await record(server, call_id)
    assert recorded["disposition"] == "caller_hangup"
    (turn,) = recorded["turns"]
    assert turn["caller_text"] == final["text"] and "rent" in turn["caller_text"].lower()
    assert turn["outcome"] == "hangup"
    heard, produced = turn["reply_text"].split(), turn["reply_full"].split()
    assert produced and heard == produced[: len(heard)], "what was heard is a prefix of the reply"


async def test_a_caller_who_hangs_up_mid_sentence_keeps_their_words(
    make_server: ServerFactory, engines: Engines
) -> None:
    server = await english_server(make_server)
    caller, call_id = await call(server)
    await caller.wait_for("tts.end")
    caller.say(await speak(engines, "I need to talk about my children"))
    await caller.said()
    await caller.hang_up()  # at once: no pause long enough for an endpoint
    (turn,) = (await record(server, call_id))["turns"]
    assert "children" in turn["caller_text"].lower()
    assert (turn["outcome"], turn["reply_text"]) == ("unanswered", "")


@pytest.fixture
async def stalled_llm() -> AsyncIterator[str]:
    """An OpenAI-compatible server that accepts a chat request and never sends a token."""
    requests = 0

    async def chat(request: web.Request) -> web.StreamResponse:
        nonlocal requests
        requests += 1
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await asyncio.Event().wait()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    await runner.cleanup()


async def test_a_failed_answer_ends_in_the_apology_and_the_call_goes_on(
    make_server: ServerFactory, engines: Engines, stalled_llm: str
) -> None:
    llm = OpenAICompatibleLLM(stalled_llm, model="stalled", defaults=GenerationDefaults(token_timeout_s=1.0))
    stalled = dataclasses.replace(engines, llm=llm)
    server = await english_server(make_server, with_engines=stalled)
    try:
        # The line with a 1.5 s idle timeout and no knowledge base: the model answers everything.
        caller, call_id = await call(server, dialled="+101")
        await caller.wait_for("tts.end")
        caller.clear_bot_audio()
        caller.say(await speak(engines, QUESTION))
        await caller.wait_for("asr.final")
        apology = await caller.wait_for("llm.partial")
        assert apology["text"] == APOLOGY
        # The call goes on: the idle timer is armed again, so silence brings the re-prompt.
        reprompt = await caller.wait_for("llm.partial", timeout=30)
        assert reprompt["text"] == "Are you still there?"
        assert "sorry" in (await transcript(engines, caller.bot_audio(), caller.rate)).lower()
        await caller.hang_up()
    finally:
        await llm.close()
    recorded = await record(server, call_id)
    (turn,) = recorded["turns"]
    assert turn["outcome"] == "failed" and turn["reply_text"] == APOLOGY
    (failure,) = [e["data"] for e in recorded["events"] if e["kind"] == "reply_failed"]
    assert failure["stage"] == "llm" and failure["turn"] == turn["index"]
