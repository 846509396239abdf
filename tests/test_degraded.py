"""A remote LLM that does not answer: the gateway says it is degraded and answers anyway.

With ``INZWA_LLM_ENGINE=openai`` pointed at a server that is down, ``/health`` says
``degraded`` and why, ``/v1/chat`` returns the profile's authored apology as a ``fallback``
answer, the OpenAI-compatible route a 503 in the error shape, and a caller hears the apology:
never a 500, never dead air.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import AsyncIterator

import pytest

from inzwa_voice.engines.llm.remote import OpenAICompatibleLLM
from inzwa_voice.engines.runtime import Engines
from inzwa_voice.simulator.process import free_port
from inzwa_voice.simulator.ws import WsCaller
from tests.conftest import Server, ServerFactory, english_server, speak

APOLOGY = "I'm sorry, I could not answer that just now. Please say it again."  # tests/dialplans/english.yaml
MODEL_ONLY = "model_only"  # its profile has no knowledge base: every question goes to the LLM
QUESTION = [{"role": "user", "content": "Write me a short poem about the sea."}]


@pytest.fixture
async def dead_llm_engines(engines: Engines) -> AsyncIterator[Engines]:
    """The session's engines with the LLM on a server nobody listens at."""
    llm = OpenAICompatibleLLM(f"http://127.0.0.1:{free_port()}/v1", model="remote", connect_retries=0)
    yield dataclasses.replace(engines, llm=llm, local_llm=False)
    await llm.close()


async def dead_llm_server(make_server: ServerFactory, engines: Engines) -> Server:
    return await english_server(make_server, with_engines=engines)


async def test_health_says_degraded_and_why(
    make_server: ServerFactory, dead_llm_engines: Engines, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    server = await dead_llm_server(make_server, dead_llm_engines)
    (startup,) = [r for r in caplog.records if r.getMessage() == "gateway degraded"]
    assert "cannot reach the LLM server" in startup.__dict__["reason"]
    async with server.http.get(server.url + "/health") as resp:
        assert resp.status == 200
        health = await resp.json()
    assert health["status"] == "degraded"
    (reason,) = health["reasons"]
    assert reason.startswith("llm: cannot reach the LLM server at http://127.0.0.1:")


async def test_health_is_ok_with_the_local_llm(server: Server) -> None:
    async with server.http.get(server.url + "/health") as resp:
        health = await resp.json()
    assert health["status"] == "ok" and health["reasons"] == []


@pytest.mark.parametrize("stream", [False, True])
async def test_chat_answers_with_the_authored_apology(
    make_server: ServerFactory, dead_llm_engines: Engines, stream: bool
) -> None:
    server = await dead_llm_server(make_server, dead_llm_engines)
    body = {"messages": QUESTION, "profile": MODEL_ONLY, "stream": stream}
    async with server.http.post(server.v1 + "/chat", json=body) as resp:
        assert resp.status == 200, await resp.text()
        if stream:
            lines = [line.decode().strip() async for line in resp.content if line.strip()]
            events = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
            assert lines[-1] == "data: [DONE]"
            assert "".join(e["token"] for e in events if "token" in e) == APOLOGY
            done = events[-1]
        else:
            done = await resp.json()
            assert done["message"]["content"] == APOLOGY
    assert done["source"] == {"kind": "fallback", "id": "llm_unavailable"}


async def test_chat_completions_is_a_503_not_a_500(make_server: ServerFactory, dead_llm_engines: Engines) -> None:
    server = await dead_llm_server(make_server, dead_llm_engines)
    async with server.http.post(server.v1 + "/chat/completions", json={"messages": QUESTION}) as resp:
        assert resp.status == 503, await resp.text()
        error = (await resp.json())["error"]
    assert error["code"] == "llm_unavailable" and error["type"] == "api_error"
    assert "cannot reach the LLM server" in error["message"]
    assert int(resp.headers["Retry-After"]) > 0


async def test_a_caller_hears_the_apology(make_server: ServerFactory, dead_llm_engines: Engines) -> None:
    server = await dead_llm_server(make_server, dead_llm_engines)
    caller = WsCaller(server.http, server.url.replace("http", "ws") + "/v1/ws")
    await caller.connect(dialled="+101")  # the model_only line
    try:
        await caller.wait_for("tts.end")
        caller.clear_bot_audio()
        caller.say(await speak(dead_llm_engines, "Please write me a short poem about the sea."))
        await caller.wait_for("asr.final")
        await caller.wait_for("tts.start")
        await caller.heard(500)
        spoken = [e.get("text") for e in caller.events("llm.partial")]
        assert APOLOGY in spoken, spoken
    finally:
        await caller.hang_up()
