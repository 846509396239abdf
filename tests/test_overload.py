"""Graceful overload: admission from what the cores can answer, the authored busy and hold words,
and prompts synthesized once for every caller who waits for them.

The capacity arithmetic and the shared prompt synthesis run on virtual time with fakes; a burst
of twenty callers over the native WebSocket runs with the real engines, and asserts what each
caller heard, never how fast.
"""

from __future__ import annotations

import asyncio
from xml.etree import ElementTree

import pytest

from inzwa_voice.api.keys import CALLS
from inzwa_voice.config import load_settings
from inzwa_voice.conversation.calls import CallManager
from inzwa_voice.conversation.capacity import Capacity, CapacityLimits
from inzwa_voice.conversation.ports import CallRejected
from inzwa_voice.conversation.prompts import PromptAudio
from inzwa_voice.core import CallInfo
from inzwa_voice.dialplan import DEFAULT_DIALPLAN, Dialplan
from inzwa_voice.engines.grounding import grounded_system
from inzwa_voice.engines.runtime import Engines
from inzwa_voice.engines.scheduler import Priority, Urgency
from inzwa_voice.legs.audiosocket import ErrorCode
from inzwa_voice.safety import Safety, SafetyConfig
from inzwa_voice.simulator.audiosocket import AudioSocketCaller
from inzwa_voice.simulator.burst import burst
from inzwa_voice.simulator.questions import Script, synthesize
from tests.conftest import ServerFactory, english_server, transcript
from tests.test_audiosocket import port_of
from tests.test_conversation import PROFILE, Call, greeted, scripted
from tests.test_ws_calls import active_calls
from tests.timeline import (
    FakeASR,
    FakeInference,
    FakeLeg,
    FakeLLM,
    FakeTTS,
    Generate,
    Phrasebook,
    Synth,
    pause,
    run_virtual,
    settle,
    speak,
    wait_until,
)
from tests.timeline.clock import now


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


# ----- capacity -----
def test_limits_follow_the_measured_cost_of_a_turn() -> None:
    clock = Clock()
    capacity = Capacity(CapacityLimits(slots=1, max_sessions=50, turn_interval_s=15, answer_within_s=6), clock)
    assert (capacity.turn_limit, capacity.call_limit) == (3, 7)  # the prior: 2 slot-seconds a turn
    first, second = capacity.committed(), capacity.committed()
    assert capacity.in_flight == 2 and second.ahead == 1
    clock.t = 0.5
    first.answered()  # nothing was ahead of it: its wait says nothing of the cores
    assert capacity.cost_s == 2.0
    clock.t = 10.0
    second.answered()  # 10 s for two turns on one slot: 5 s each
    assert capacity.cost_s == pytest.approx(2.0 + 0.2 * (5.0 - 2.0))
    assert capacity.in_flight == 0 and capacity.turn_limit == 2 and capacity.call_limit == 5
    second.done()  # released once only
    assert capacity.in_flight == 0


def test_new_calls_are_refused_beyond_the_calls_or_while_the_turns_in_flight_are_too_many() -> None:
    capacity = Capacity(CapacityLimits(slots=2, max_sessions=6, turn_interval_s=15, answer_within_s=6), Clock())
    assert capacity.call_limit == 6  # 15 calls' worth of cores, but never beyond max_sessions
    assert capacity.refusal(5) is None and capacity.refusal(6) is not None
    turns = [capacity.committed() for _ in range(capacity.turn_limit)]
    assert turns[-1].behind is False and capacity.committed().behind is True
    assert capacity.refusal(0) is not None  # the cores are behind now: no new caller
    for turn in turns:
        turn.done()
    assert capacity.in_flight == 1 and capacity.refusal(0) is None  # the one left is within the limit


def manager(engines: FakeInference) -> CallManager:
    return CallManager(
        load_settings(_env_file=None, inference_slots=1),
        engines,
        Safety.load(config=SafetyConfig(helpline_number="0800 000 000")),
    )


def test_a_refused_call_carries_the_profiles_busy_message_and_its_ready_audio() -> None:
    async def main() -> None:
        calls = manager(FakeInference(FakeASR(Phrasebook())))
        profile = calls.profile_for(CallInfo(leg="ws"))
        turns = [calls.capacity.committed() for _ in range(calls.capacity.turn_limit)]
        refused = calls.refusal(CallInfo(leg="ws"))
        assert refused is not None and refused.say == profile.busy_message and not refused.frames
        frames = await calls.prompts.frames(profile.busy_message, profile.voice)
        with pytest.raises(CallRejected) as raised:
            await calls.start(FakeLeg(), CallInfo(leg="ws"))
        assert raised.value.code == "overloaded" and list(raised.value.frames) == frames
        for turn in turns:
            turn.done()
        assert calls.refusal(CallInfo(leg="ws")) is None

    run_virtual(main, limit_s=60)


def test_a_question_with_too_many_ahead_hears_the_hold_prompt_at_once() -> None:
    async def body(call: Call) -> None:
        leg = call.leg
        capacity = call.manager.capacity
        others = [capacity.committed() for _ in range(capacity.turn_limit)]  # other calls' turns
        await call.caller.run([wait_until(greeted(leg)), speak(1000, "where is the clinic"), pause(8000)])
        last_voiced = call.caller.last_voiced_at
        assert last_voiced is not None
        first_audio = leg.first_audio_after(last_voiced)
        hold = leg.events("hold")
        assert [e.event["text"] for e in hold] == [PROFILE.hold_prompt]
        # At the endpoint (0.7 s of silence), not after hold_after_s (2.5 s) more.
        assert first_audio is not None and first_audio - last_voiced < 1.0
        assert leg.events("tts.start")[-1].at - last_voiced > 4.0  # then the slow answer
        for turn in others:
            turn.done()
        assert capacity.in_flight == 0  # the answered turn released its own

    scripted(body, llm=FakeLLM(Generate("The clinic opens at eight.", first_token_s=4.0)))


# ----- prompts synthesized once, shared -----
def test_concurrent_waiters_share_one_synthesis_and_a_cancelled_one_leaves_it_cached() -> None:
    async def main() -> None:
        engines = FakeInference(FakeASR(Phrasebook()), tts=FakeTTS(Synth(first_audio_s=0.5)))
        prompts = PromptAudio(engines)
        first = asyncio.ensure_future(prompts.frames("Hello, how can I help?", "joe"))
        await settle()
        first.cancel()  # the first caller hangs up while its greeting is synthesized
        others = [asyncio.ensure_future(prompts.frames("Hello, how can I help?", "joe")) for _ in range(5)]
        results = await asyncio.gather(*others)
        assert first.cancelled() and all(r is results[0] for r in results) and results[0]
        assert len(engines.tts.calls) == 1 and engines.tts.calls[0].outcome == "done"
        assert prompts.ready("Hello, how can I help?", "joe") is results[0]
        assert await prompts.frames("Hello, how can I help?", "joe") is results[0]
        assert len(engines.tts.calls) == 1

    run_virtual(main, limit_s=60)


def test_a_failed_synthesis_is_not_cached() -> None:
    async def main() -> None:
        engines = FakeInference(FakeASR(Phrasebook()), tts=FakeTTS(Synth(fail=RuntimeError("no voice"))))
        prompts = PromptAudio(engines)
        with pytest.raises(RuntimeError):
            await prompts.frames("Please hold on.", "joe")
        assert prompts.ready("Please hold on.", "joe") is None
        assert await prompts.frames("Please hold on.", "joe")  # tried again, and it works now
        assert len(engines.tts.calls) == 2

    run_virtual(main, limit_s=60)


def test_a_prompt_prepared_in_the_background_becomes_as_urgent_as_the_caller_waiting_for_it() -> None:
    async def main() -> None:
        engines = FakeInference(FakeASR(Phrasebook()), slots=1)
        prompts = PromptAudio(engines)
        loop = asyncio.get_running_loop()
        release = asyncio.Event()
        granted: dict[str, float] = {}

        async def hold_the_slot() -> None:
            async with engines.scheduler.slot("asr"):
                await release.wait()

        async def speculative_work() -> None:
            async with engines.scheduler.slot("llm"):
                granted["speculative"] = now()

        busy = loop.create_task(hold_the_slot())
        await settle()
        prepared = loop.create_task(prompts.frames("Hello, how can I help?", "joe"))  # start-up: REST
        speculation = loop.create_task(speculative_work(), context=Urgency(Priority.SPECULATIVE).context())
        await settle()
        # Someone waits for it without hurry, then their caller needs it now (as at an endpoint).
        reply = Urgency(Priority.REST)
        greeting = loop.create_task(prompts.frames("Hello, how can I help?", "joe"), context=reply.context())
        await settle()
        reply.priority = Priority.FIRST_PHRASE
        release.set()
        await asyncio.gather(busy, prepared, speculation, greeting)
        first_audio = engines.tts.calls[0].chunks[0][0]
        assert first_audio <= granted["speculative"]  # the greeting's synthesis went first

    run_virtual(main, limit_s=60)


# ----- the real engines: a burst of twenty callers -----
async def test_health_and_metrics_show_how_close_the_gateway_is_to_refusing(make_server: ServerFactory) -> None:
    server = await make_server(inference_slots=1, capacity_turn_interval_s=8.0)
    capacity = server.app[CALLS].capacity
    turns = [capacity.committed() for _ in range(capacity.turn_limit)]
    try:
        async with server.http.get(server.url + "/health") as resp:
            health = await resp.json()
        assert health["capacity"] == {
            "calls": 4,
            "questions": 3,
            "questions_in_flight": 3,
            "turn_cost_s": 2.0,
            "measured_turns": 0,
        }
        store = server.app[CALLS].store
        assert store is not None and health["instance"] == store.instance
        async with server.http.get(server.url + "/metrics") as resp:
            text = await resp.text()
        for line in ("inzwa_capacity_calls 4.0", "inzwa_capacity_questions 3.0", "inzwa_questions_in_flight 3.0"):
            assert line in text.splitlines(), line
    finally:
        for turn in turns:
            turn.done()
    async with server.http.get(server.url + "/metrics") as resp:
        assert "inzwa_questions_in_flight 0.0" in (await resp.text()).splitlines()


async def test_a_burst_of_twenty_callers_is_answered_told_to_hold_or_refused_with_the_busy_message(
    make_server: ServerFactory,
) -> None:
    # One inference slot, as on two cores, and callers who ask every 8 s: four calls' worth.
    server = await english_server(make_server, inference_slots=1, capacity_turn_interval_s=8.0)
    calls = server.app[CALLS]
    profile = calls.default_profile()
    for text in (profile.greeting, profile.busy_message, profile.hold_prompt, profile.apology):
        await calls.prompts.frames(text, profile.voice)
    limit = calls.capacity.call_limit
    assert limit == 4
    question = Script("knowledge", ("Where can I get tested for HIV?",))
    questions = await synthesize(server.http, server.url, [question], 16000, "joe", 0)
    ws_url = server.url.replace("http", "ws") + "/v1/ws"

    results = await burst(ws_url, questions, 20, turn_timeout_s=60, apology=profile.apology)

    admitted = [r for r in results if not r.refused]
    refused = [r for r in results if r.refused]
    assert len(admitted) == limit and len(refused) == 20 - limit
    for caller in refused:  # heard the authored words, then the WebSocket's "try again later"
        assert caller.busy_text == profile.busy_message and caller.close_code == 1013
        assert caller.busy_audio_ms > 1000
    for caller in admitted:
        assert caller.greeted and caller.error is None, caller
        assert not caller.silent and (caller.answered or caller.held or caller.apologised), caller
    assert any(caller.answered for caller in admitted)
    assert calls.capacity.in_flight == 0


async def test_twilio_beyond_capacity_says_the_busy_message_and_dials_the_people(make_server: ServerFactory) -> None:
    server = await english_server(make_server)
    calls = server.app[CALLS]
    profile = calls.default_profile()
    turns = [calls.capacity.committed() for _ in range(calls.capacity.turn_limit)]
    form = {"CallSid": "CA" + "0" * 32, "From": "+263771234567", "To": "+263242700000"}
    async with server.http.post(server.v1 + "/twilio/voice", data=form) as resp:
        busy = ElementTree.fromstring(await resp.text())
    assert busy.findtext("Say") == profile.busy_message
    assert busy.findtext("Dial/Sip") == profile.transfer_target and busy.find("Connect") is None
    for turn in turns:
        turn.done()
    async with server.http.post(server.v1 + "/twilio/voice", data=form) as resp:
        assert ElementTree.fromstring(await resp.text()).find("Connect/Stream") is not None


async def test_audiosocket_beyond_capacity_hears_the_busy_message_then_the_error_frame(
    make_server: ServerFactory, engines: Engines
) -> None:
    server = await english_server(make_server)
    calls = server.app[CALLS]
    profile = calls.default_profile()
    await calls.prompts.frames(profile.busy_message, profile.voice)
    turns = [calls.capacity.committed() for _ in range(calls.capacity.turn_limit)]  # the cores are behind
    caller = AudioSocketCaller("127.0.0.1", port_of(server))
    try:
        await caller.connect()
        await asyncio.wait_for(caller.wait_closed(), 30)
        assert caller.events("error") == [{"type": "error", "code": ErrorCode.UNAVAILABLE}]
        heard = (await transcript(engines, caller.bot_audio(), 8000)).lower()
        assert "callers" in heard or "call again" in heard, heard
        assert await active_calls(server) == 0
    finally:
        await caller.hang_up()
        for turn in turns:
            turn.done()


def test_the_model_is_primed_for_the_profile_whose_questions_it_answers() -> None:
    """The packaged dialplan's default line is Shona, which the model never answers: its cache
    is primed with the English line's system prompt, which it does."""
    dialplan = Dialplan.load(DEFAULT_DIALPLAN)
    english = dialplan.profiles["english_helpline"]
    assert dialplan.default.profile.language == "sn" and english.language == "en"

    async def main() -> None:
        llm = FakeLLM()
        calls = CallManager(
            load_settings(_env_file=None, inference_slots=1),
            FakeInference(FakeASR(Phrasebook()), llm=llm),
            Safety.load(config=SafetyConfig(helpline_number="0800 000 000")),
            dialplan=dialplan,
        )
        await calls.prepare_soon()
        (primed,) = llm.primes
        assert primed.outcome == "done" and not llm.calls  # read, not answered
        assert primed.messages[0].content == grounded_system(english.system_prompt)
        # ... with its knowledge base, given whole: the first caller's turn reads only their words.
        knowledge = calls.knowledge_for(english)
        assert knowledge is not None
        briefing = knowledge.briefing(open_now=english.transfer_target is not None)
        assert briefing is not None and all(fact in primed.messages[-3].content for fact in briefing)

    run_virtual(main, limit_s=600)
