"""A whole call's orchestration on a scripted, virtual-time timeline (``tests/timeline``).

Fake engines with scripted latencies, a fake leg that plays 20 ms per frame of virtual time and
a scripted caller: each test is a minute of call in milliseconds, and asserts event order,
frame positions and what the record holds. The real engines have their own end-to-end tests.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable

import pytest

from inzwa_voice.config import load_settings
from inzwa_voice.conversation.calls import CallEvent, CallManager
from inzwa_voice.conversation.fact_check import FactCheck
from inzwa_voice.conversation.prompts import Preparation, PromptAudio
from inzwa_voice.conversation.session import CallSession
from inzwa_voice.core import CallInfo, Profile
from inzwa_voice.dialplan import DEFAULT_DIALPLAN, Dialplan
from inzwa_voice.engines.base import ChatMessage
from inzwa_voice.safety import Safety, SafetyConfig
from tests.timeline import (
    Caller,
    Decode,
    FakeASR,
    FakeInference,
    FakeLeg,
    FakeLLM,
    Generate,
    Phrasebook,
    Step,
    Transferred,
    dtmf,
    hang_up,
    pause,
    run_virtual,
    speak,
    stop_sending,
    wait_until,
)

PROFILE = Profile(
    name="test",
    language="en",
    voice="joe",
    greeting="Hello, how can I help?",
    hold_prompt="Please hold on.",
    reprompt="Are you still there?",
    goodbye="Goodbye.",
    apology="Sorry, please say that again.",
    transfer_target="sip:counsellor@127.0.0.1:5070",
    idle_timeout_s=6.0,
    hold_after_s=2.5,
)
ANSWER = "The clinic opens at eight in the morning."


class Call:
    """One scripted call: the fakes, the manager under test, the running session, its record."""

    def __init__(self, engines: FakeInference, words: Phrasebook, leg: FakeLeg, dialplan: Dialplan | None) -> None:
        self.engines, self.words, self.leg = engines, words, leg
        self.manager = CallManager(
            load_settings(_env_file=None),
            engines,
            Safety.load(config=SafetyConfig(helpline_number="0800 000 000")),
            dialplan=dialplan,
        )
        self.recorded: list[CallEvent] = []
        self.feed: asyncio.Queue[CallEvent] = asyncio.Queue()
        self.session: CallSession
        self.caller: Caller

    async def start(self, profile: Profile = PROFILE) -> None:
        self.session = await self.manager.start(self.leg, CallInfo(leg="ws"), profile)
        self.caller = Caller(self.session, self.leg, self.words)

    def record(self, kind: str) -> list[dict[str, object]]:
        """What the call record got of ``kind`` so far."""
        while not self.feed.empty():
            self.recorded.append(self.feed.get_nowait())
        return [e.data for e in self.recorded if e.kind == kind]


def scripted(
    body: Callable[[Call], Awaitable[None]],
    *,
    llm: FakeLLM | None = None,
    asr: tuple[Decode, ...] = (),
    leg: FakeLeg | None = None,
    profile: Profile = PROFILE,
    dialplan: Dialplan | None = None,
) -> None:
    """Run ``body`` on a call of its own in virtual time; the call is ended afterwards."""

    async def main() -> None:
        words = Phrasebook()
        engines = FakeInference(FakeASR(words, *asr), llm=llm or FakeLLM(ANSWER))
        call = Call(engines, words, leg or FakeLeg(), dialplan)
        with call.manager.watch() as call.feed:
            await call.start(profile)
            await body(call)
            await call.session.end("completed")

    run_virtual(main, limit_s=600)


def greeted(leg: FakeLeg) -> Callable[[], bool]:
    return lambda: "tts.end" in leg.event_types()


def answer_heard(leg: FakeLeg, ms: int) -> Callable[[], bool]:
    """The answer after the greeting has been playing for ``ms``."""

    def heard() -> bool:
        starts = leg.events("tts.start")
        return len(starts) >= 2 and leg.audio_ms(starts[-1].at) >= ms

    return heard


def test_a_paused_question_is_answered_once_after_its_last_sentence() -> None:
    async def body(call: Call) -> None:
        leg = call.leg
        await call.caller.run(
            [
                wait_until(greeted(leg)),
                speak(1200, "hello"),
                pause(460),  # long enough to think ahead, too short to be the end of the turn
                speak(900, "where is the clinic"),
                pause(3000),
            ]
        )
        last_voiced = call.caller.last_voiced_at
        assert last_voiced is not None
        (final,) = leg.events("asr.final")
        assert final.event["text"] == "hello where is the clinic"
        # Each stretch decoded once, the second with the first's words as its prompt; one answer.
        decodes = [(c.text, c.prompt, c.outcome) for c in call.engines.asr.calls]
        assert decodes == [("hello", None, "done"), ("where is the clinic", "hello", "done")]
        (answered,) = call.engines.llm.calls
        assert answered.outcome == "done"
        starts = leg.events("tts.start")
        assert len(starts) == 2  # the greeting, then the one answer
        assert starts[1].at > last_voiced
        spoken = leg.first_audio_after(last_voiced)
        assert spoken is not None and 0.7 <= spoken - last_voiced < 1.5
        types = leg.event_types()
        assert (
            types.index("asr.final")
            < types.index("llm.partial", types.index("tts.end"))
            < types.index("tts.start", types.index("tts.end"))
        )

    scripted(body)


def test_a_question_mark_ends_the_turn_sooner_and_a_full_stop_does_not() -> None:
    """The words so far end in "?": the turn ends at 0.5 s of silence, not 0.7 s. A sentence
    ending in "." followed by a 0.6 s pause is not the end: no reply goes into that pause."""

    async def body(call: Call) -> None:
        leg = call.leg
        await call.caller.run(
            [
                wait_until(greeted(leg)),
                speak(800, "hello."),
                pause(600),
                speak(900, "where is the clinic?"),
                pause(5000),
            ]
        )
        last_voiced = call.caller.last_voiced_at
        assert last_voiced is not None
        (final,) = leg.events("asr.final")
        assert final.event["text"] == "hello. where is the clinic?"
        starts = leg.events("tts.start")
        assert len(starts) == 2 and starts[1].at > last_voiced  # the greeting, then one answer
        (metrics,) = leg.events("turn.metrics")
        latency = metrics.event["latency_ms"]
        assert isinstance(latency, dict) and 480 <= latency["endpoint"] <= 560

    scripted(body, asr=(Decode(latency_s=0.1), Decode(latency_s=0.1)))


def test_each_stretch_of_a_three_sentence_question_is_decoded_once_with_the_earlier_words_as_prompt() -> None:
    async def body(call: Call) -> None:
        leg = call.leg
        await call.caller.run(
            [
                wait_until(greeted(leg)),
                speak(1000, "hello"),
                pause(440),
                speak(900, "i need help"),
                pause(500),
                speak(1200, "when does the clinic open"),
                pause(5000),
            ]
        )
        last_voiced = call.caller.last_voiced_at
        assert last_voiced is not None
        decodes = call.engines.asr.calls
        assert [(c.text, c.prompt) for c in decodes] == [
            ("hello", None),
            ("i need help", "hello"),
            ("when does the clinic open", "hello i need help"),
        ]
        # A stretch is its speech, not the pause before it: a pre-roll and the 300 ms of silence
        # that closed it at most.
        assert [round(c.audio_s, 2) for c in decodes] == [1.52, 1.34, 1.7]
        # The last stretch's decode started at the pause, before the endpoint.
        assert decodes[-1].started - last_voiced == pytest.approx(0.3, abs=0.05)
        (final,) = leg.events("asr.final")
        assert final.event["text"] == "hello i need help when does the clinic open"
        partials = [e.event["text"] for e in leg.events("asr.partial")]
        assert partials[:2] == ["hello", "hello i need help"]  # the stretches, no decode of their own
        (metrics,) = leg.events("turn.metrics")
        assert metrics.event["runs"] == {"asr": 3, "llm": 1}
        # Answered once, after the last sentence, never into a pause.
        starts = leg.events("tts.start")
        assert len(starts) == 2 and starts[1].at - last_voiced >= 0.7

    scripted(body)


def test_stretches_that_close_while_a_decode_is_running_are_decoded_together_in_the_next() -> None:
    async def body(call: Call) -> None:
        await call.caller.run(
            [
                wait_until(greeted(call.leg)),
                speak(1000, "hello"),
                pause(440),
                speak(900, "i need help"),
                pause(500),
                speak(1200, "when does the clinic open"),
                pause(8000),
            ]
        )
        # The first stretch's decode was still running (the cores busy) when the other two
        # closed: they waited for it and went into one decode, with its words as the prompt.
        decodes = call.engines.asr.calls
        assert [(c.text, c.prompt) for c in decodes] == [
            ("hello", None),
            ("i need help when does the clinic open", "hello"),
        ]
        ended = decodes[0].ended
        assert ended is not None and decodes[1].started >= ended
        (final,) = call.leg.events("asr.final")
        assert final.event["text"] == "hello i need help when does the clinic open"
        (metrics,) = call.leg.events("turn.metrics")
        assert metrics.event["runs"] == {"asr": 2, "llm": 1}

    scripted(body, asr=(Decode(latency_s=3.5), Decode(latency_s=0.3)))


def test_a_caller_who_goes_on_keeps_the_stretches_decoded_and_only_the_speculative_answer_is_dropped() -> None:
    async def body(call: Call) -> None:
        leg = call.leg
        await call.caller.run(
            [
                wait_until(greeted(leg)),
                speak(1000, "hello"),
                pause(640),  # the answer is being thought of when the caller goes on
                speak(900, "where is the clinic"),
                pause(5000),
            ]
        )
        asr, llm = call.engines.asr.calls, call.engines.llm.calls
        assert [(c.text, c.outcome) for c in asr] == [("hello", "done"), ("where is the clinic", "done")]
        assert [(c.outcome, c.text) for c in llm] == [("cancelled", ""), ("done", ANSWER)]
        assert len(leg.events("tts.start")) == 2  # the greeting, then the one answer
        (metrics,) = leg.events("turn.metrics")
        assert metrics.event["runs"] == {"asr": 2, "llm": 2}

    scripted(
        body,
        asr=(Decode(latency_s=0.05), Decode(latency_s=0.05)),
        llm=FakeLLM(Generate(ANSWER, first_token_s=0.5), default=ANSWER),
    )


LONG_ANSWER = "The clinic opens at eight. It closes at five. It is shut on Sundays and on public holidays."


async def two_calls(engines: FakeInference, words: Phrasebook) -> tuple[Call, Call]:
    """Two calls started on one manager, so they share its engines (and llama.cpp's one context)."""
    first, second = Call(engines, words, FakeLeg(), None), Call(engines, words, FakeLeg(), None)
    second.manager = first.manager
    await first.start()
    await second.start()
    return first, second


def test_on_one_slot_a_callers_stretch_gets_in_between_another_calls_tokens_and_stale_work_is_dropped() -> None:
    async def main() -> None:
        words = Phrasebook()
        llm = FakeLLM(Generate(LONG_ANSWER, per_token_s=0.1), default=ANSWER)
        engines = FakeInference(FakeASR(words, Decode(), Decode(latency_s=0.1)), llm=llm, slots=1)
        first, second = await two_calls(engines, words)
        asking = first.caller.run([wait_until(greeted(first.leg)), speak(800, "when does it open"), pause(8000)])
        going_on = second.caller.run(
            [
                wait_until(greeted(first.leg)),
                wait_until(lambda: bool(llm.calls and llm.calls[0].pieces)),  # the first call's answer is generating
                speak(1000, "hello"),
                pause(640),  # decoded, and an answer asked for, before the caller goes on
                speak(800, "where is the clinic"),
                pause(6000),
            ]
        )
        await asyncio.gather(asking, going_on)
        generating = llm.calls[0]
        assert generating.outcome == "done" and generating.ended is not None
        stretches = [c for c in engines.asr.calls if c.text in ("hello", "where is the clinic")]
        assert len(stretches) == 2 and stretches[0].ended is not None
        assert stretches[0].ended < generating.ended, "the stretch did not wait for the whole answer"
        # The second caller's speculative answer was queued behind the first call's generation
        # (one llama.cpp context) and dropped when they went on: it never ran.
        dropped = engines.metrics.registry.get_sample_value(
            "inzwa_inference_runs_total", {"engine": "llm", "priority": "speculative", "outcome": "dropped"}
        )
        assert dropped == 1
        assert [e.event["text"] for e in second.leg.events("asr.final")] == ["hello where is the clinic"]
        assert len(second.leg.events("tts.start")) == 2
        for call in (first, second):
            await call.session.end("completed")

    run_virtual(main, limit_s=600)


def test_a_committed_answer_does_not_wait_for_another_calls_later_phrases_which_go_on_after_it() -> None:
    async def main() -> None:
        words = Phrasebook()
        llm = FakeLLM(Generate(LONG_ANSWER, per_token_s=0.1), default=ANSWER)
        engines = FakeInference(FakeASR(words, Decode(latency_s=0.1), Decode(latency_s=0.1)), llm=llm)
        first, second = await two_calls(engines, words)
        asking = first.caller.run([wait_until(greeted(first.leg)), speak(800, "when does it open"), pause(8000)])
        asking_after = second.caller.run(
            [
                wait_until(greeted(second.leg)),
                wait_until(lambda: bool(first.leg.events("llm.partial"))),  # the first answer is playing
                speak(800, "where is the clinic"),
                pause(6000),
            ]
        )
        await asyncio.gather(asking, asking_after)
        began, answered, went_on = llm.calls
        # The first answer stopped after its first phrase, when the second caller had asked ...
        assert began.outcome == "closed" and began.text.startswith("The clinic opens at eight. ")
        assert LONG_ANSWER.startswith(began.text) and began.text != LONG_ANSWER
        # ... whose answer came at once, not after the whole first one ...
        assert answered.text == ANSWER and answered.outcome == "done"
        assert answered.ended is not None and answered.ended <= went_on.pieces[0][0]
        # ... and the first one went on from where it stopped, heard whole.
        assert went_on.messages[-1] == ChatMessage("assistant", began.text)
        assert began.text + went_on.text == LONG_ANSWER
        _greeting, *phrases = [str(e.event["text"]) for e in first.leg.events("llm.partial")]
        assert " ".join(phrases) == LONG_ANSWER
        gave_way = engines.metrics.registry.get_sample_value(
            "inzwa_inference_runs_total", {"engine": "llm", "priority": "speculative", "outcome": "gave_way"}
        )
        assert gave_way == 1
        for call in (first, second):
            await call.session.end("completed")

    run_virtual(main, limit_s=600)


def test_while_the_caller_listens_the_conversation_is_read_ahead_and_never_holds_up_an_answer() -> None:
    llm = FakeLLM(ANSWER, prime_steps=100, prime_step_s=0.05)  # reading ahead would take 5 s

    async def body(call: Call) -> None:
        leg = call.leg
        await call.caller.run([wait_until(greeted(leg)), speak(1000, "where is the clinic"), pause(6000)])
        after_greeting, after_answer = llm.primes
        # Read once the greeting had been played: the prompt the caller's first words would get.
        greeting_end = leg.events("tts.end")[0].at
        assert after_greeting.started >= greeting_end
        assert after_greeting.messages[-2:] == [
            ChatMessage("assistant", PROFILE.greeting),
            ChatMessage("user", ""),
        ]
        # The answer did not wait for it: it stopped within one step of the answer asking.
        (answered,) = llm.calls
        assert after_greeting.outcome == "closed" and after_greeting.steps < 100
        assert after_greeting.ended is not None and after_greeting.ended <= answered.started + 0.05
        first_token_at = answered.pieces[0][0]
        assert first_token_at - answered.started <= 0.2 + 0.05  # its first token's latency, and one step
        # Read again once the answer had been heard, with the turn in it.
        answer_end = leg.events("tts.end")[-1].at
        assert after_answer.started >= answer_end
        assert after_answer.messages[-3:] == [
            ChatMessage("user", "where is the clinic"),
            ChatMessage("assistant", ANSWER),
            ChatMessage("user", ""),
        ]

    scripted(body, llm=llm)


def test_the_transcript_comes_before_the_answer_even_when_the_answer_is_ready_first() -> None:
    """Fast engines: the reply is decoded, generated and synthesized during the 300→700 ms of
    endpoint silence, before the caller's turn is over."""

    async def body(call: Call) -> None:
        await call.caller.run([wait_until(greeted(call.leg)), speak(1000, "where is the clinic"), pause(2000)])
        answer = [e for e in call.leg.timeline if getattr(e, "type", None) in ("asr.final", "llm.partial")][-2:]
        assert [e.type for e in answer] == ["asr.final", "llm.partial"]  # type: ignore[union-attr]
        (turn,) = [t for t in call.record("turn") if t["outcome"] == "answering"]
        assert turn["caller_text"] == "where is the clinic"

    scripted(body, asr=(Decode(latency_s=0.05),), llm=FakeLLM(Generate(ANSWER, first_token_s=0.02, per_token_s=0.01)))


def test_barge_in_mid_phrase_stops_the_bot_and_remembers_what_was_heard() -> None:
    LONG_ANSWER = "The clinic opens at eight in the morning and closes at five in the evening every weekday."

    async def body(call: Call) -> None:
        leg = call.leg
        await call.caller.run(
            [
                wait_until(greeted(leg)),
                speak(1000, "when does the clinic open"),
                wait_until(answer_heard(leg, 1500)),
            ]
        )
        talked_at = asyncio.get_running_loop().time()
        await call.caller.run([speak(800, "stop"), pause(2000)])
        (barge,) = leg.events("barge_in")
        heard = str(barge.event["heard"]).split()
        assert heard and heard == LONG_ANSWER.split()[: len(heard)] and len(heard) < len(LONG_ANSWER.split())
        assert leg.audio_ms(talked_at + 0.3, talked_at + 1.4) == 0, "the bot stops within 300 ms of the voice"
        interrupted = [t for t in call.record("turn") if t["outcome"] == "interrupted"]
        assert len(interrupted) == 1 and interrupted[0]["reply_text"] == barge.event["heard"]
        assert interrupted[0]["barged_in"] is True

    scripted(body, llm=FakeLLM(LONG_ANSWER, default=ANSWER))


def test_a_slow_answer_is_preceded_by_the_hold_prompt_once() -> None:
    async def body(call: Call) -> None:
        leg = call.leg
        await call.caller.run([wait_until(greeted(leg)), speak(1000, "where is the clinic"), pause(8000)])
        last_voiced = call.caller.last_voiced_at
        assert last_voiced is not None
        first_audio = leg.first_audio_after(last_voiced)
        answer_start = leg.events("tts.start")[-1].at
        # The hold prompt plays 2.5 s after the endpoint (0.7 s of silence), then the answer.
        assert first_audio is not None and 3.0 <= first_audio - last_voiced <= 3.4
        assert answer_start - last_voiced > 4.0
        assert len(leg.events("tts.start")) == 2  # the hold prompt is no turn of its own

    scripted(body, llm=FakeLLM(Generate(ANSWER, first_token_s=4.0)))


def test_no_hold_prompt_when_the_model_is_already_answering_at_hold_time() -> None:
    """Tokens are coming when the hold prompt is due: its phrase is near, and the hold prompt
    would only make it wait behind it; the answer is the first thing the caller hears."""

    async def body(call: Call) -> None:
        leg = call.leg
        await call.caller.run([wait_until(greeted(leg)), speak(1000, "where is the clinic"), pause(8000)])
        last_voiced = call.caller.last_voiced_at
        assert last_voiced is not None
        answer_start = leg.events("tts.start")[-1].at
        assert leg.events("hold") == []
        assert leg.first_audio_after(last_voiced) == pytest.approx(answer_start, abs=0.05)
        assert 3.2 <= answer_start - last_voiced <= 4.2  # endpoint 0.7 + first token 2.0 + phrase

    # The first token 2.0 s after the endpoint, the phrase's last word about 1.5 s later.
    scripted(body, llm=FakeLLM(Generate(ANSWER, first_token_s=2.0, per_token_s=0.15)))


def test_silence_brings_the_reprompt_then_the_goodbye_then_the_end() -> None:
    async def body(call: Call) -> None:
        ended = await call.caller.run([wait_until(greeted(call.leg)), pause(30_000)])
        assert ended is False  # the call ended during the silence
        texts = [e.event["text"] for e in call.leg.events("llm.partial")]
        assert texts == [PROFILE.greeting, PROFILE.reprompt, PROFILE.goodbye]
        assert call.session.disposition == "idle_timeout" and call.leg.closed == "idle_timeout"
        # Counted from when the prompts were played, not sent.
        ends = [e.at for e in call.leg.events("tts.end")]
        reprompt_start = call.leg.events("tts.start")[1].at
        assert abs(reprompt_start - ends[0] - PROFILE.idle_timeout_s) < 0.1

    scripted(body)


def test_keypad_zero_transfers_to_the_profile_target() -> None:
    async def body(call: Call) -> None:
        await call.caller.run([wait_until(greeted(call.leg)), dtmf("0"), pause(500)])
        (transferred,) = [e for e in call.leg.timeline if isinstance(e, Transferred)]
        assert transferred.target == PROFILE.transfer_target and transferred.accepted
        assert call.session.disposition == "transferred"
        (event,) = call.leg.events("transfer")
        assert event.event["reason"] == "dtmf"

    scripted(body)


def test_a_refused_transfer_keeps_the_caller_with_the_bot() -> None:
    async def body(call: Call) -> None:
        await call.caller.run([wait_until(greeted(call.leg)), dtmf("0"), speak(1000, "hello"), pause(3000)])
        assert call.session.active
        assert call.leg.events("asr.final")[-1].event["text"] == "hello"

    scripted(body, leg=FakeLeg(transfer_accepted=False))


def test_a_hang_up_during_the_answer_keeps_the_caller_s_words_and_what_they_heard() -> None:
    async def body(call: Call) -> None:
        leg = call.leg
        await call.caller.run(
            [
                wait_until(greeted(leg)),
                speak(1000, "i need help with rent"),
                wait_until(answer_heard(leg, 600)),
                hang_up(),
            ]
        )
        turns = call.record("turn")
        assert [t["outcome"] for t in turns] == ["answering", "hangup"]
        assert all(t["caller_text"] == "i need help with rent" for t in turns)
        heard = str(turns[1]["reply_text"]).split()
        assert heard and heard == ANSWER.split()[: len(heard)] and len(heard) < len(ANSWER.split())
        assert call.session.disposition == "caller_hangup"

    scripted(body)


def test_a_hang_up_before_the_transcript_is_ready_still_keeps_the_words() -> None:
    async def body(call: Call) -> None:
        await call.caller.run([wait_until(greeted(call.leg)), speak(1000, "i need help"), pause(800), hang_up()])
        turns = call.record("turn")
        assert [(t["outcome"], t["caller_text"]) for t in turns][-1] == ("unanswered", "i need help")

    scripted(body, asr=(Decode(latency_s=3.0),))


class SlowToHangUp(FakeLeg):
    """A leg whose hang-up waits until the test lets it finish."""

    def __init__(self) -> None:
        super().__init__()
        self.hanging_up, self.let_go = asyncio.Event(), asyncio.Event()

    async def close(self, reason: str) -> None:
        self.hanging_up.set()
        await self.let_go.wait()
        await super().close(reason)


def test_a_call_ends_whole_though_whoever_ended_it_is_cancelled_meanwhile() -> None:
    """A leg's handler cancelled at shutdown, or a dropped connection's task, while the call it
    ended is still being torn down: the teardown goes on, and the call's end is whole."""
    leg = SlowToHangUp()

    async def body(call: Call) -> None:
        await call.caller.run([wait_until(greeted(leg)), speak(1000, "where is the clinic"), pause(300)])
        ending = asyncio.ensure_future(call.session.end("caller_hangup"))
        await leg.hanging_up.wait()
        ending.cancel()
        leg.let_go.set()
        await call.session.wait_closed()
        assert ending.cancelled() and leg.closed == "caller_hangup"
        assert call.session.id not in call.manager.sessions
        assert call.record("end")[-1]["disposition"] == "caller_hangup"

    scripted(body, leg=leg)


def test_a_caller_who_stops_sending_is_still_answered() -> None:
    """DTX, a muted microphone, a stalled network: no frames at all after the question."""

    async def body(call: Call) -> None:
        leg = call.leg
        await call.caller.run([wait_until(greeted(leg)), speak(1000, "where is the clinic"), stop_sending(4000)])
        (final,) = leg.events("asr.final")
        assert final.event["text"] == "where is the clinic"
        assert leg.events("llm.partial")[-1].event["text"] == ANSWER

    scripted(body)


def test_a_model_that_gives_no_token_ends_in_the_apology_and_the_call_goes_on() -> None:
    async def body(call: Call) -> None:
        leg = call.leg
        await call.caller.run([wait_until(greeted(leg)), speak(1000, "where is the clinic"), pause(25_000)])
        texts = [e.event["text"] for e in leg.events("llm.partial")]
        assert texts[:3] == [PROFILE.greeting, PROFILE.apology, PROFILE.reprompt], texts
        (failure,) = call.record("reply_failed")
        assert failure["stage"] == "llm"
        assert [t["outcome"] for t in call.record("turn")] == ["answering", "failed"]
        assert call.engines.llm.calls[0].outcome in ("closed", "cancelled")

    scripted(body, llm=FakeLLM(Generate("", stall=True), default=ANSWER))


def test_a_failed_decode_ends_in_the_apology_too() -> None:
    async def body(call: Call) -> None:
        await call.caller.run([wait_until(greeted(call.leg)), speak(1000, "hello"), pause(4000)])
        assert [e.event["text"] for e in call.leg.events("llm.partial")][-1] == PROFILE.apology
        (failure,) = call.record("reply_failed")
        assert failure["stage"] == "asr"

    scripted(body, asr=(Decode(fail=RuntimeError("decoder broke")),) * 3)


def test_a_caller_who_goes_on_before_being_understood_is_heard_as_one_turn() -> None:
    """The endpoint came, the decode was slow, and the caller spoke again before it ended: the
    first part is not answered alone, it joins the next utterance."""

    async def body(call: Call) -> None:
        leg = call.leg
        await call.caller.run(
            [wait_until(greeted(leg)), speak(800, "hello"), pause(900), speak(800, "where is the clinic"), pause(4000)]
        )
        finals = [e.event["text"] for e in leg.events("asr.final")]
        assert finals == ["hello where is the clinic"]
        assert not leg.events("barge_in")

    scripted(body, asr=(Decode(latency_s=1.0), Decode(latency_s=0.1)))


# ----- the helpline's knowledge (the packaged sample, through the test dialplan) -----

DIALPLAN = Dialplan.load(DEFAULT_DIALPLAN)  # the sample helpline's office hours
HELPLINE = dataclasses.replace(PROFILE, knowledge="helpline")


def facts_in(messages: list[ChatMessage]) -> list[str]:
    """The facts a grounded prompt gives for its question: the knowledge base's briefing (the
    message saying "New call."), or else those listed with the question (its last message)."""
    told = next((m.content for m in messages if m.content.startswith("New call. ")), messages[-1].content)
    heading, *facts = told.removeprefix("New call. ").split("\n\n")[0].splitlines()
    assert heading == "Facts:"
    return [fact.removeprefix("- ") for fact in facts]


def briefing(call: Call) -> list[str]:
    """The packaged helpline's answers, which it gives the model whole (``BRIEFING_CHARS``)."""
    knowledge = call.manager.knowledge_for(HELPLINE)
    assert knowledge is not None
    facts = knowledge.briefing(open_now=True)
    assert facts is not None
    return list(facts)


def test_a_covered_question_gets_the_authored_answer_without_the_model() -> None:
    async def body(call: Call) -> None:
        await call.caller.run([wait_until(greeted(call.leg)), speak(1000, "what time do you open"), pause(8000)])
        (start,) = [e for e in call.leg.events("tts.start") if "source" in e.event]
        assert start.event["source"] == {"kind": "knowledge", "id": "hours"}
        spoken = call.leg.events("llm.partial")[-1].event["text"]
        assert "Monday to Friday, from 08:00 to 17:00" in str(spoken)
        assert not call.engines.llm.calls
        (turn,) = [t for t in call.record("turn") if t["outcome"] == "played"]
        assert turn["caller_text"] == "what time do you open"

    scripted(body, dialplan=DIALPLAN, profile=HELPLINE)


DONT_KNOW_SPOKEN = "I'm sorry, I don't know that. Shall I connect you to a counsellor?"


def ungrounded_answer(question: str, answer: str, check: Callable[[Call, list[str]], None]) -> None:
    """A call whose caller asks ``question``, which the model answers with ``answer``; ``check``
    gets the call and what it spoke, after its facts were checked to be the knowledge base's."""

    async def body(call: Call) -> None:
        await call.caller.run([wait_until(greeted(call.leg)), speak(1000, question), pause(8000)])
        (asked,) = call.engines.llm.calls
        facts = facts_in(asked.messages)
        assert facts == briefing(call)  # grounded on the whole knowledge base
        assert not any("connecting you" in fact for fact in facts)  # a handover is no fact
        check(call, [str(e.event["text"]) for e in call.leg.events("llm.partial")])

    scripted(body, llm=FakeLLM(answer), dialplan=DIALPLAN, profile=HELPLINE)


def test_the_model_never_speaks_a_number_or_name_it_was_not_given() -> None:
    def check(call: Call, spoken: list[str]) -> None:
        assert not any("Paris" in t or "6:30" in t for t in spoken)
        assert spoken[-1] == DONT_KNOW_SPOKEN
        (asked,) = call.engines.llm.calls
        assert asked.outcome in ("closed", "cancelled")  # the model was stopped
        (end,) = [e for e in call.leg.events("tts.end") if "source" in e.event]
        assert end.event["source"] == {"kind": "fallback", "id": "ungrounded"}

    made_up = "The capital of France is Paris, and the clinic there opens at 6:30."
    ungrounded_answer("what is the capital of france", made_up, check)


@pytest.mark.parametrize(
    ("answer", "written", "source"),
    [
        (
            "You should call 112 now and report it to the police, or go to the station in town.",
            "You should call 112 now",
            "ungrounded",
        ),
        ("I'm sorry, but I can't assist with that request today.", "I'm sorry, but I can't assist with", "dont_know"),
        ("You should not tell the police about it, it will not help.", "You should not tell", "ungrounded"),
    ],
)
def test_the_authored_i_do_not_know_comes_at_the_word_that_loses_the_answer(
    answer: str, written: str, source: str
) -> None:
    """The model is stopped at the word that decides its phrase will not be spoken (the next
    one shows the word whole), not at the phrase's end: the caller hears the authored words
    that many tokens sooner."""

    def check(call: Call, spoken: list[str]) -> None:
        (asked,) = call.engines.llm.calls
        assert asked.text == written and asked.outcome in ("closed", "cancelled")
        assert spoken[-1] == DONT_KNOW_SPOKEN and not any(written in t for t in spoken)
        (end,) = [e for e in call.leg.events("tts.end") if "source" in e.event]
        assert end.event["source"] == {"kind": "fallback", "id": source}

    ungrounded_answer("my phone was stolen yesterday should i tell the police", answer, check)


def test_the_model_never_passes_off_a_worked_example_s_fact_as_the_helpline_s() -> None:
    def check(call: Call, spoken: list[str]) -> None:
        (asked,) = call.engines.llm.calls
        assert not any("registry" in fact for fact in facts_in(asked.messages))
        assert not any("registry" in t for t in spoken) and spoken[-1] == DONT_KNOW_SPOKEN

    copied = "You can get it at the registry office in town."
    ungrounded_answer("i lost my identity card how do i get a new one", copied, check)
    # Where the helpline's own facts say it, it is theirs to say.
    assert not FactCheck(["Identity cards are replaced at the registry office in town."]).ungrounded(copied)


@pytest.mark.parametrize(
    "answer",
    [
        "I don't know that, shall I connect you to a counsellor?",
        "I'm sorry, but I can't assist with that. Rent is paid monthly.",  # its own refusal
        "I will answer only from these facts. Rent is paid monthly.",  # its part of the briefing, copied
    ],
)
def test_the_model_saying_it_does_not_know_is_said_in_the_authored_words_and_a_yes_gets_a_person(answer: str) -> None:
    async def body(call: Call) -> None:
        leg = call.leg
        await call.caller.run([wait_until(greeted(leg)), speak(1000, "what is the capital of france"), pause(8000)])
        (asked,) = call.engines.llm.calls
        assert asked.outcome in ("closed", "cancelled")  # stopped at its first phrase
        spoken = [str(e.event["text"]) for e in leg.events("llm.partial")]
        assert spoken[-1] == DONT_KNOW_SPOKEN
        (end,) = [e for e in leg.events("tts.end") if "source" in e.event]
        assert end.event["source"] == {"kind": "fallback", "id": "dont_know"}
        # Its audio was ready-made: the only speech synthesized in the call is what was prepared.
        assert DONT_KNOW_SPOKEN in [c.text for c in call.engines.tts.calls]
        assert [c.text for c in call.engines.tts.calls].count(DONT_KNOW_SPOKEN) == 1
        await call.caller.run([speak(600, "yes"), pause(8000)])
        (transferred,) = [e for e in leg.timeline if isinstance(e, Transferred)]
        assert transferred.target == HELPLINE.transfer_target

    scripted(body, llm=FakeLLM(answer), dialplan=DIALPLAN, profile=HELPLINE)


def test_a_knowledge_base_short_enough_is_given_whole_before_the_conversation() -> None:
    """A turn's prompt is the conversation read so far with the caller's words after it: the
    facts never follow the question, so no turn reads them again."""

    async def body(call: Call) -> None:
        leg, llm = call.leg, call.engines.llm
        await call.caller.run([wait_until(greeted(leg)), speak(1000, "what is the capital of france"), pause(8000)])
        await call.caller.run([speak(1000, "what time do you open"), pause(8000)])  # the knowledge base's
        await call.caller.run([speak(1000, "my neighbour plays loud music at night"), pause(8000)])
        first, second = [c.messages for c in llm.calls]
        assert facts_in(first) == facts_in(second) == briefing(call)
        assert second[: len(first) - 1] == first[:-1]  # the first turn's prompt starts the second's
        assert first[-1].content == "Caller's question: what is the capital of france"
        assert second[-1].content == "Caller's question: my neighbour plays loud music at night"

    scripted(body, dialplan=DIALPLAN, profile=HELPLINE)


def test_given_the_whole_knowledge_base_the_model_states_a_number_only_from_entries_close_to_the_question() -> None:
    def check(call: Call, spoken: list[str]) -> None:
        (asked,) = call.engines.llm.calls
        hiv = next(fact for fact in briefing(call) if "72 hours" in fact)
        assert hiv in facts_in(asked.messages)  # the model was given it, for questions about HIV
        assert not any("72" in t for t in spoken) and spoken[-1] == DONT_KNOW_SPOKEN

    ungrounded_answer("how do i renew my drivers licence", "Go to the office within 72 hours.", check)


def test_a_phrase_copying_an_entry_about_something_else_is_no_answer() -> None:
    """Given the whole knowledge base, the model must not answer with an entry far from the
    question (``sources`` are the closest ones, ``elsewhere`` every fact it was given)."""
    hiv = "HIV testing is free at government clinics and most hospitals, and you get the result the same day."
    food = "To get food support, go to your nearest Social Welfare office to be registered."
    rent = "can you help me with the rent"
    check = FactCheck([food], rent, [hiv, food])
    assert check.ungrounded("Rent is free at government clinics and most hospitals.")
    assert not check.ungrounded("Go to your nearest Social Welfare office.")
    assert not check.ungrounded("Your nearest Social Welfare office can register you.")
    assert not FactCheck([hiv], "is the test free", [hiv, food]).ungrounded(
        "HIV testing is free at government clinics."
    )


def test_an_answer_says_nothing_of_substance_that_its_facts_do_not() -> None:
    """The caller's words are no facts: the small model turns them into advice and promises of
    its own (these answers are what it said in the call benchmark). Comfort and the offer of a
    person state nothing, and are the model's to give."""
    food = "To get food support, go to your nearest Social Welfare office to be registered."
    emergency = "In an emergency call 999 now, or go to the nearest hospital. Do not leave them alone."
    check = FactCheck([food, emergency], "My landlord wants me out of my house. Can you help me with rent?")
    assert check.ungrounded("We can help you with rent. Please contact your landlord and ask for a refund.")
    assert check.ungrounded("You can rent your house at the government office.")
    assert not check.ungrounded("I'm sorry to hear that. Would you like to talk to a counsellor?")
    assert not check.ungrounded("Please go to your nearest Social Welfare office to register.")
    police = FactCheck([emergency], "My phone was stolen yesterday. Should I tell the police?")
    assert police.ungrounded("You should not tell the police.")
    assert police.ungrounded("Tell the police.")
    # Advice against is the facts' own where they advise against something.
    pin = "Never share your PIN with anyone, not even someone who says they are from the bank."
    assert not FactCheck([pin], "should i tell someone my pin").ungrounded("You should never share your PIN.")


def test_the_word_one_standing_for_a_thing_states_no_number() -> None:
    privacy = "What you say is kept private: we share it with nobody."
    check = FactCheck(["A lost identity card is replaced at the registry office.", privacy])
    assert not check.ungrounded("You can get a new one at the registry office.")
    assert not check.ungrounded("No one will share what you say.")
    assert check.ungrounded("Only one person can get a new card.")
    assert check.ungrounded("Press one for the registry office.")


def test_while_the_caller_goes_on_their_words_so_far_are_read_ahead_and_the_answer_keeps_their_facts() -> None:
    async def body(call: Call) -> None:
        leg, llm = call.leg, call.engines.llm
        await call.caller.run(
            [
                wait_until(greeted(leg)),
                speak(1200, "my phone was stolen yesterday"),
                pause(460),
                speak(1000, "should i tell the police"),
                pause(8000),
            ]
        )
        first, second = call.engines.asr.calls
        resumed_at = first.started + 0.46 - 0.3  # the decode starts 300 ms into the pause
        (ahead,) = [p for p in llm.primes if p.messages[-1].content.endswith("stolen yesterday")]
        assert resumed_at <= ahead.started < second.started  # read while the caller spoke on
        assert facts_in(ahead.messages) == briefing(call)
        # The answer's prompt is the one read ahead, with the caller's last sentence after it.
        (answered,) = [c for c in llm.calls if c.outcome == "done"]
        assert answered.messages[:-1] == ahead.messages[:-1]
        assert answered.messages[-1].content == ahead.messages[-1].content + " should i tell the police"

    scripted(body, dialplan=DIALPLAN, profile=HELPLINE, asr=(Decode(latency_s=0.1), Decode(latency_s=0.1)))


def test_facts_read_ahead_are_kept_unless_an_entry_they_leave_out_is_clearly_closer() -> None:
    async def body(call: Call) -> None:
        brain, packaged = call.manager.brain, call.manager.knowledge_for(HELPLINE)
        assert packaged is not None
        knowledge = dataclasses.replace(packaged, briefing_chars=0)  # a base too large to give whole
        history: list[ChatMessage] = []
        await call.caller.run([wait_until(greeted(call.leg))])  # the call's own work done first
        margin = knowledge.matcher.params.margin  # the scripted engines have no embedder: words alone

        async def facts(question: str, kept: tuple[str, ...] = ()) -> tuple[str, ...]:
            start = await brain.prompt_start(
                history, profile=HELPLINE, language="en", knowledge=knowledge, question=question, kept_facts=kept
            )
            assert start is not None
            return start.facts

        def ranked(question: str) -> list[tuple[str, float]]:
            """The informative entries' answers closest to ``question``, with their scores."""
            entries = knowledge.matcher.ranked(question, "en")
            return [(knowledge.answer(e, "en", open_now=True), score) for e, score, _ in entries if e.action is None]

        # Kept, in their order, though neither is the closest: it is not clearly closer.
        chest = "i have a bad pain in my chest what do i do"
        (first, top), (second, _), (third, low) = ranked(chest)[:3]
        assert top - low < margin and await facts(chest, (second, third)) == (second, third)
        # ... as far as they are: the rest are the closest others.
        assert await facts(chest, (second, "Nothing the knowledge base says.")) == (second, first)
        # An entry clearly closer than a kept one takes its place: "who can I talk to" finds one
        # far closer than the clinic's, which the first sentence had found.
        so_far = await facts("i need food for my children")
        whole = "i need food for my children who can i talk to"
        closest = ranked(whole)
        clinic = next(fact for fact in so_far if fact.startswith("Our partner clinic"))
        assert closest[0][1] - dict(closest)[clinic] >= margin
        assert await facts(whole, so_far) == (so_far[0], closest[0][0]) != so_far
        # ... and none is kept once the question is about something else.
        cost = await facts("how much does this call cost")
        assert cost[0] not in so_far and await facts("how much does this call cost", so_far) == cost
        # The caller listening: the conversation alone, no facts.
        assert await facts("") == ()
        # A greeting finds no facts worth reading.
        assert (
            await brain.prompt_start(history, profile=HELPLINE, language="en", knowledge=knowledge, question="hi there")
            is None
        )

    scripted(body, dialplan=DIALPLAN, profile=HELPLINE)


def test_asking_for_a_person_by_voice_transfers() -> None:
    async def body(call: Call) -> None:
        await call.caller.run(
            [wait_until(greeted(call.leg)), speak(1000, "can I talk to a real person please"), pause(8000)]
        )
        (transferred,) = [e for e in call.leg.timeline if isinstance(e, Transferred)]
        assert transferred.target == HELPLINE.transfer_target
        (event,) = call.leg.events("transfer")
        assert event.event["reason"] == "voice"
        assert call.session.disposition == "transferred"
        spoken = call.leg.events("llm.partial")[-1]
        assert spoken.at < transferred.at  # told first, then handed over

    scripted(body, dialplan=DIALPLAN, profile=HELPLINE)


def test_after_hours_asking_for_a_person_says_when_people_are_in() -> None:
    closed = dataclasses.replace(HELPLINE, transfer_target=None)

    async def body(call: Call) -> None:
        await call.caller.run([wait_until(greeted(call.leg)), speak(1000, "I want to talk to a person"), pause(9000)])
        assert not [e for e in call.leg.timeline if isinstance(e, Transferred)]
        spoken = str(call.leg.events("llm.partial")[-1].event["text"])
        assert "Monday to Friday" in spoken and call.session.active

    scripted(body, dialplan=DIALPLAN, profile=closed)


def test_after_hours_zero_without_a_knowledge_base_still_says_when_people_are_in() -> None:
    """The model answers everything on this profile, but the words after ``0`` with nobody in are
    authored (the packaged intent's, with the dialplan's hours), never silence or improvised."""
    closed = dataclasses.replace(PROFILE, transfer_target=None, knowledge=None)

    async def body(call: Call) -> None:
        await call.caller.run([wait_until(greeted(call.leg)), dtmf("0"), pause(9000)])
        (transfer,) = call.leg.events("transfer")
        assert transfer.event["target"] is None
        (start,) = [e for e in call.leg.events("tts.start") if "source" in e.event]
        assert start.event["source"] == {"kind": "intent", "id": "human"}
        spoken = str(call.leg.events("llm.partial")[-1].event["text"])
        assert spoken.startswith("Our staff are not in right now") and "Monday to Friday" in spoken
        assert not call.engines.llm.calls
        assert call.record("transfer_result")[-1]["reason"] == "no_target"
        assert call.session.active

    scripted(body, dialplan=DIALPLAN, profile=closed)


def test_the_keypad_menu_answers_and_a_spoken_switch_changes_the_language_and_voice() -> None:
    async def body(call: Call) -> None:
        leg = call.leg
        await call.caller.run([wait_until(greeted(leg)), dtmf("1"), pause(9000)])
        (start,) = [e for e in leg.events("tts.start") if "source" in e.event]
        assert start.event["source"] == {"kind": "knowledge", "id": "hours"}
        await call.caller.run([speak(1000, "Shona please"), pause(9000)])
        (switched,) = leg.events("language")
        assert switched.event == {"type": "language", "language": "sn", "voice": "joe-sn"}
        assert call.session.profile.language == "sn" and call.session.profile.voice == "joe-sn"
        await call.caller.run([speak(1000, "munovhura nguva dzipi"), pause(9000)])
        synthesized = call.engines.tts.calls[-1]
        assert synthesized.voice == "joe-sn" and "Muvhuro" in synthesized.text  # the Shona hours answer

    scripted(body, dialplan=DIALPLAN, profile=HELPLINE)


def test_two_misunderstood_turns_bring_the_keypad_menu() -> None:
    async def body(call: Call) -> None:
        leg = call.leg
        script: list[Step] = [wait_until(greeted(leg))]
        for _ in range(2):
            script += [speak(1000, "blue green yellow"), pause(12_000)]
        await call.caller.run(script)
        texts = [str(e.event["text"]) for e in leg.events("llm.partial")]
        assert texts[-1].startswith("Press 1 for our opening hours")

    scripted(body, llm=FakeLLM(default="I am not sure."), dialplan=DIALPLAN, profile=HELPLINE)


def test_texts_prepared_ahead_stay_cached_even_beyond_the_caches_limit() -> None:
    async def main() -> None:
        engines = FakeInference(FakeASR(Phrasebook()))
        prompts = PromptAudio(engines, limit=2)
        texts = [(f"Answer {n}.", "joe") for n in range(5)]
        progress = Preparation(total=len(texts))
        await prompts.prepare(texts, progress)
        assert progress.ready and progress.failed == 0
        for text, voice in texts:  # the first ones were not evicted by the last
            await prompts.frames(text, voice)
        assert len(engines.tts.calls) == len(texts)

    run_virtual(main, limit_s=60)
