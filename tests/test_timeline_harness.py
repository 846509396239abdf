"""The scripted-timeline harness itself: virtual time, the fake engines, the fake leg, the caller.

The caller drives a small ``Call`` here that runs the real ``TurnDetector`` on the fake VAD, so
the frame counts below are the ones a real session sees for the same script.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np
import pytest

from inzwa_voice.conversation.ports import Call, Leg
from inzwa_voice.conversation.turns import TurnDetector, TurnEvent, TurnSettings
from inzwa_voice.core import FRAME_SAMPLES, PCM16, CallInfo, Profile
from inzwa_voice.engines.base import ChatMessage, Inference
from inzwa_voice.media.pacer import PacerClosed
from tests.timeline import (
    Caller,
    Closed,
    Decode,
    FakeASR,
    FakeInference,
    FakeLeg,
    FakeLLM,
    FakeTTS,
    Generate,
    HungUp,
    Phrasebook,
    Synth,
    TimelineError,
    dtmf,
    end_turn,
    hang_up,
    now,
    pause,
    run_virtual,
    settle,
    speak,
    stop_sending,
    wait_until,
)

TONE = np.full(FRAME_SAMPLES, 1000, np.int16)


@dataclass
class TurnCall:
    """A ``Call`` that only listens: the real turn detector on the fake VAD, every event timed."""

    detector: TurnDetector
    id: str = "probe"
    info: CallInfo = field(default_factory=lambda: CallInfo(leg="ws"))
    profile: Profile = field(default_factory=Profile)
    turns: list[tuple[int, TurnEvent, float]] = field(default_factory=list)
    digits: list[tuple[str, float]] = field(default_factory=list)
    ended: str | None = None

    @property
    def active(self) -> bool:
        return self.ended is None

    def feed(self, frame: PCM16) -> None:
        self._note(self.detector.push(frame))

    def end_turn(self) -> None:
        self._note(self.detector.force_endpoint())

    def dtmf(self, digit: str) -> None:
        self.digits.append((digit, now()))

    async def record_event(self, kind: str, data: dict[str, object]) -> None:
        raise AssertionError("the caller records nothing")

    async def hangup(self, reason: str = "caller_hangup") -> None:
        self.ended = reason

    async def end(self, disposition: str, *, say_goodbye: bool = False) -> None:
        self.ended = disposition

    def _note(self, events: list[TurnEvent]) -> None:
        self.turns.extend((self.detector.frames, event, round(now(), 6)) for event in events)


def probe() -> tuple[Phrasebook, TurnCall, FakeLeg, Caller]:
    words = Phrasebook()
    engines = FakeInference(FakeASR(words))
    call = TurnCall(TurnDetector(engines.vad.stream(), TurnSettings()))
    leg = FakeLeg()
    return words, call, leg, Caller(call, leg, words)


def ms(t: float | None) -> int | None:
    """A virtual time in whole milliseconds, so timelines compare exactly."""
    return None if t is None else round(t * 1000)


def audio_of(words: Phrasebook, *parts: tuple[str | None, int]) -> np.ndarray:
    """Float32 audio as the ASR gets it: (text or None for silence, frames) in order."""
    frames = [words.frame(t) if t else np.zeros(FRAME_SAMPLES, np.int16) for t, n in parts for _ in range(n)]
    return (np.concatenate(frames) / 32768).astype(np.float32)


# --- virtual time ---


def test_an_hour_of_virtual_sleep_costs_no_real_time() -> None:
    async def main() -> float:
        await asyncio.sleep(3600)
        return now()

    started = time.monotonic()
    assert run_virtual(main, limit_s=4000) == 3600
    assert time.monotonic() - started < 60  # a real hour's sleep could never pass this


def test_timeouts_and_timers_fire_in_virtual_time() -> None:
    async def main() -> list[tuple[str, float]]:
        seen: list[tuple[str, float]] = []
        loop = asyncio.get_running_loop()
        loop.call_later(1.0, lambda: seen.append(("call_later", now())))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(2.5):
                await asyncio.sleep(10)
        seen.append(("timeout", now()))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(loop.create_future(), 0.75)
        seen.append(("wait_for", now()))
        return seen

    assert run_virtual(main, limit_s=60) == [("call_later", 1.0), ("timeout", 2.5), ("wait_for", 3.25)]


def test_settle_lets_every_task_react_without_time_passing() -> None:
    async def main() -> None:
        reacted: list[float] = []

        async def react() -> None:
            for _ in range(5):
                await asyncio.sleep(0)
            reacted.append(now())

        task = asyncio.create_task(react())
        await settle()
        assert reacted == [0.0] and task.done()

    run_virtual(main, limit_s=1)


def test_a_hung_call_fails_at_the_limit_naming_what_waits() -> None:
    async def stuck_forever() -> None:
        await asyncio.sleep(3600)

    async def main() -> None:
        await asyncio.create_task(stuck_forever(), name="stuck")

    with pytest.raises(TimelineError, match=r"(?s)limit_s=30s.*stuck: stuck_forever .* > sleep"):
        run_virtual(main, limit_s=30)


def test_a_deadlock_and_a_livelock_fail_clearly() -> None:
    async def deadlock() -> None:
        await asyncio.get_running_loop().create_future()

    async def livelock() -> None:
        loop = asyncio.get_running_loop()

        def spin() -> None:
            loop.call_soon(spin)

        spin()
        await loop.create_future()

    with pytest.raises(TimelineError, match="deadlock"):
        run_virtual(deadlock, limit_s=30)
    with pytest.raises(TimelineError, match="livelock"):
        run_virtual(livelock, limit_s=30, max_spins=1000)


def test_tasks_left_running_fail_the_test_and_are_cancelled() -> None:
    cancelled: list[float] = []

    async def lingering() -> None:
        try:
            await asyncio.sleep(100)
        finally:
            cancelled.append(now())

    async def main() -> None:
        task = asyncio.create_task(lingering(), name="lingering")
        await asyncio.sleep(1)
        assert not task.done()

    with pytest.raises(TimelineError, match="lingering"):
        run_virtual(main, limit_s=30)
    assert cancelled == [1.0]


def test_what_main_raises_reaches_the_test() -> None:
    async def main() -> None:
        await asyncio.sleep(1)
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        run_virtual(main, limit_s=30)


# --- the fake leg ---


def test_the_leg_plays_a_frame_every_20_ms_and_play_waits_while_its_queue_is_full() -> None:
    async def main() -> None:
        fake = FakeLeg(max_queued_frames=4)
        leg: Leg = fake
        returned: list[float] = []
        positions = []
        for _ in range(10):
            positions.append(await leg.play(TONE))
            returned.append(now())
        assert positions == list(range(1, 11))
        # four frames fit at once; each later one waits for the line to take one
        assert returned == pytest.approx([0.0] * 4 + [0.02 * k for k in range(1, 7)])
        assert await leg.wait_for_playout(positions[-1])
        assert now() == pytest.approx(0.2)
        assert leg.played_frames == 10
        assert [p.start for p in fake.played] == pytest.approx([0.02 * k for k in range(10)])
        assert fake.audio_ms() == 200 and fake.audio_ms(0.05, 0.11) == 60
        assert len(fake.audio(0.09)) == 5 * FRAME_SAMPLES

    run_virtual(main, limit_s=10)


def test_interrupt_drops_the_frame_on_the_line_and_everything_queued() -> None:
    async def main() -> None:
        leg = FakeLeg()
        last = 0
        for _ in range(8):
            last = await leg.play(TONE)
        waiting = asyncio.create_task(leg.wait_for_playout(last))
        await asyncio.sleep(0.05)  # frames 1 and 2 played, frame 3 is on the line
        assert leg.interrupt() == 2
        assert await waiting is False
        assert leg.interrupts[0].dropped == 6 and leg.interrupts[0].at == pytest.approx(0.05)
        await asyncio.sleep(1)
        assert leg.played_frames == 2
        # the next frame is a new talk spurt: it starts when it is queued, not on the old grid
        position = await leg.play(np.zeros(FRAME_SAMPLES, np.int16))
        assert position == 3 and await leg.wait_for_playout(position)
        assert leg.played[-1].start == pytest.approx(1.05) and leg.played[-1].silent
        assert leg.first_audio_after(0.03) is None and leg.first_audio_after(0.0) == 0.0

    run_virtual(main, limit_s=10)


def test_a_producer_waiting_for_room_is_dropped_by_an_interrupt() -> None:
    async def main() -> None:
        leg = FakeLeg(max_queued_frames=1)
        await leg.play(TONE)
        blocked = asyncio.create_task(leg.play(TONE))
        await settle()
        leg.interrupt()
        position = await blocked
        assert not await leg.wait_for_playout(position)
        await asyncio.sleep(1)
        assert leg.played == []

    run_virtual(main, limit_s=10)


def test_the_leg_records_events_transfers_and_its_end() -> None:
    async def main() -> None:
        leg = FakeLeg(transfer_accepted=False, transfer_s=0.5)
        await leg.send_event({"type": "asr.final", "text": "mhoro"})
        await asyncio.sleep(1)
        await leg.send_event({"type": "tts.start"})
        assert await leg.transfer("sip:desk@example.org") is False
        await leg.play(TONE)
        await leg.close("completed")
        await leg.close("again")
        with pytest.raises(PacerClosed):
            await leg.play(TONE)
        with pytest.raises(TypeError):
            await leg.send_event({"type": "bad", "value": object()})
        with pytest.raises(ValueError, match="320-sample int16"):
            await FakeLeg().play(np.zeros(160, np.int16))

        assert leg.event_types() == ["asr.final", "tts.start"]
        assert [(e.at, e.event) for e in leg.events("tts.start")] == [(1.0, {"type": "tts.start"})]
        transfer = leg.timeline[2]
        assert (transfer.at, transfer.answered) == (1.0, 1.5)  # type: ignore[union-attr]
        assert leg.timeline[-1] == Closed(1.5, "completed") and leg.played == []
        story = leg.describe()
        assert "asr.final" in story and "sip:desk@example.org" in story and "completed" in story

    run_virtual(main, limit_s=10)


# --- the fake engines ---


def test_the_asr_hears_the_callers_words_with_scripted_latency() -> None:
    async def main() -> None:
        words = Phrasebook()
        asr = FakeASR(words, Decode(latency_s=0.1, rtf=0.5), Decode(text="scripted"), default=Decode(latency_s=0.2))
        question = audio_of(words, (None, 10), ("kiriniki", 30), (None, 20), ("iri kupi", 25), (None, 5))
        heard = await asr.transcribe(question, language="sn")
        assert (heard.text, heard.language, heard.duration_s) == ("kiriniki iri kupi", "sn", 1.8)
        assert (await asr.transcribe(question)).text == "scripted"
        assert (await asr.transcribe(audio_of(words, (None, 50)))).text == ""
        calls = [(ms(c.started), ms(c.ended), ms(c.audio_s), c.outcome) for c in asr.calls]
        assert calls == [(0, 1000, 1800, "done"), (1000, 1300, 1800, "done"), (1300, 1500, 1000, "done")]
        with pytest.raises(ValueError, match="float32"):
            await asr.transcribe(np.zeros(320, np.int16))

    run_virtual(main, limit_s=10)


def test_a_stalled_decode_holds_until_cancelled_and_a_failing_one_raises() -> None:
    async def main() -> None:
        words = Phrasebook()
        fake = FakeInference(
            FakeASR(words, Decode(stall=True), Decode(latency_s=0.4, fail=RuntimeError("decoder broke")))
        )
        engines: Inference = fake
        audio = audio_of(words, ("mhoro", 10))
        decode = asyncio.create_task(engines.transcribe(audio))
        await asyncio.sleep(5)
        assert fake.asr.busy and not decode.done()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1):
                await decode
        assert not fake.asr.busy
        with pytest.raises(RuntimeError, match="decoder broke"):
            await engines.transcribe(audio)
        assert [(c.ended, c.outcome) for c in fake.asr.calls] == [(6.0, "cancelled"), (6.4, "failed")]

    run_virtual(main, limit_s=60)


def test_the_llm_streams_its_script_and_records_how_each_generation_ended() -> None:
    async def main() -> None:
        llm = FakeLLM(
            Generate("Kiriniki inovhura na8.", first_token_s=0.5, per_token_s=0.1),
            "Ndatenda zvikuru.",
            Generate("", stall=True),
            Generate("Ndine", fail=RuntimeError("llm broke")),
        )
        asked = [ChatMessage("user", "kiriniki inovhura rini")]
        pieces = [(ms(now()), p) async for p in llm.generate(asked, max_tokens=64)]
        assert pieces == [(500, "Kiriniki"), (600, " inovhura"), (700, " na8.")]

        stream = llm.generate(asked)
        assert await anext(stream) == "Ndatenda"
        await stream.aclose()

        with pytest.raises(TimeoutError):
            async with asyncio.timeout(10):
                async for _ in llm.generate(asked):
                    pass
        with pytest.raises(RuntimeError, match="llm broke"):
            async for _ in llm.generate(asked, max_tokens=8):
                pass
        assert [p async for p in llm.generate(asked, max_tokens=1)] == ["Ndizvo."]  # the default

        outcomes = [(c.outcome, c.text) for c in llm.calls]
        assert outcomes == [
            ("done", "Kiriniki inovhura na8."),
            ("closed", "Ndatenda"),
            ("cancelled", ""),
            ("failed", "Ndine"),
            ("done", "Ndizvo."),
        ]
        assert llm.calls[0].messages == asked and llm.calls[0].max_tokens == 64
        assert llm.calls[2].ended == pytest.approx(llm.calls[2].started + 10)

    run_virtual(main, limit_s=60)


def test_the_tts_speaks_60_ms_a_character_sentence_by_sentence() -> None:
    async def main() -> None:
        tts = FakeTTS(Synth(first_audio_s=0.1, rtf=0.5), Synth(fail=RuntimeError("voice broke")))
        engines = FakeInference(FakeASR(Phrasebook()), tts=tts)
        text = "Mhoro. Ndingakubatsirei?"
        chunks = [(now(), c) async for c in engines.synthesize(text, voice="joe-sn")]
        assert [len(c) for _, c in chunks] == [7 * 960, 17 * 960]  # "Mhoro. " and the rest
        assert [t for t, _ in chunks] == pytest.approx([0.1, 0.1 + 0.5 * 17 * 0.06])
        assert all(np.abs(c).min() > 0 for _, c in chunks)  # never silent
        with pytest.raises(RuntimeError, match="voice broke"):
            async for _ in engines.synthesize("Ndapota mirai.", voice="joe-sn"):
                pass
        assert [(c.outcome, c.voice) for c in tts.calls] == [("done", "joe-sn"), ("failed", "joe-sn")]

    run_virtual(main, limit_s=10)


def test_the_tts_waveform_tells_which_words_the_leg_played() -> None:
    async def main() -> None:
        tts = FakeTTS()
        leg = FakeLeg()
        audio = [c async for c in tts.synthesize("Mhoro. Ndingakubatsirei?", voice="joe-sn")]
        audio += [c async for c in tts.synthesize("Ndapota mirai.", voice="joe-sn")]
        pcm = np.concatenate(audio)
        pcm = np.concatenate([pcm, np.zeros((-len(pcm)) % FRAME_SAMPLES, np.int16)])
        frames = pcm.reshape(-1, FRAME_SAMPLES)
        playing = asyncio.create_task(_play_all(leg, frames))
        await asyncio.sleep(25 * 0.02 + 0.005)  # 25 frames: 8000 samples, 8.3 characters
        playing.cancel()  # the bot stops its reply and cuts what is queued
        leg.interrupt()
        with pytest.raises(asyncio.CancelledError):
            await playing
        assert tts.heard(leg.audio()) == ["Mhoro. N", ""]

    run_virtual(main, limit_s=10)


async def _play_all(leg: FakeLeg, frames: np.ndarray) -> None:
    for frame in frames:
        await leg.play(frame)


# --- the scripted caller and the real turn detector ---


def test_the_turn_detector_on_the_fake_vad_sees_a_scripted_question() -> None:
    async def main() -> list[tuple[int, TurnEvent, float]]:
        _, call, _, caller = probe()
        assert await caller.run([pause(640), speak(1200, "kiriniki"), pause(1000)])
        assert len(caller.fed) == 32 + 60 + 50 and caller.last_voiced_at == pytest.approx(1.84)
        return call.turns

    # 640 ms of silence is exactly 20 windows of 512 samples, so speech starts on a window edge:
    # four loud windows (128 ms >= 120 ms) end in frame 32 + 7. The last window holding speech
    # is read at frame 93 and its verdict holds through frame 94; silence from frame 95 reaches
    # 300 ms (prefetch) at frame 109 and 700 ms (endpoint) at frame 129.
    assert run_virtual(main, limit_s=10) == [
        (39, TurnEvent.SPEECH_START, 0.78),
        (109, TurnEvent.PREFETCH, 2.18),
        (129, TurnEvent.ENDPOINT, 2.58),
    ]


def test_a_pause_inside_the_question_prefetches_then_resumes_and_the_asr_hears_both_halves() -> None:
    async def main() -> None:
        words, call, _, caller = probe()
        await caller.run([pause(640), speak(1200, "kiriniki"), pause(400), speak(900, "iri kupi"), pause(1000)])
        assert [e for _, e, _ in call.turns] == [
            TurnEvent.SPEECH_START,
            TurnEvent.PREFETCH,
            TurnEvent.RESUMED,
            TurnEvent.PREFETCH,
            TurnEvent.ENDPOINT,
        ]
        utterance = (call.detector.take_stretch() / 32768).astype(np.float32)
        assert (await FakeASR(words, default=Decode(latency_s=0)).transcribe(utterance)).text == "kiriniki iri kupi"

    run_virtual(main, limit_s=10)


def test_a_caller_who_stops_sending_feeds_nothing_and_keys_reach_the_call() -> None:
    async def main() -> None:
        _, call, _, caller = probe()
        await caller.run([speak(200), stop_sending(2000), dtmf("5"), pause(100), end_turn()])
        assert [f.at for f in caller.fed] == pytest.approx(
            [0.02 * k for k in range(1, 11)] + [2.22, 2.24, 2.26, 2.28, 2.3]
        )
        assert [(digit, ms(at)) for digit, at in call.digits] == [("5", 2200)]
        # nothing came for 2 s, so the turn never ended on its own: the client ended it
        assert [e for _, e, _ in call.turns] == [TurnEvent.SPEECH_START, TurnEvent.PREFETCH, TurnEvent.ENDPOINT]
        with pytest.raises(ValueError, match="keypad"):
            dtmf("x")
        with pytest.raises(ValueError, match="multiple of 20"):
            speak(30)

    run_virtual(main, limit_s=10)


def test_a_caller_waits_for_the_bot_then_hangs_up_and_stops_when_the_call_ends() -> None:
    async def main() -> None:
        _, call, leg, caller = probe()

        async def bot() -> None:
            await asyncio.sleep(1.01)  # off the caller's frame grid: no tie to order
            for _ in range(50):
                await leg.play(TONE)

        speaking = asyncio.create_task(bot())
        assert not await caller.run([wait_until(lambda: leg.audio_ms() >= 100), hang_up(), pause(1000)])
        assert now() == pytest.approx(1.12) and call.ended == "caller_hangup"
        assert isinstance(leg.timeline[-1], HungUp) and leg.played_frames == 5
        with pytest.raises(PacerClosed):
            await speaking

        _, call, leg, caller = probe()
        await leg.close("goodbye")
        assert not await caller.run([speak(400)]) and caller.fed == []
        with pytest.raises(TimelineError, match="waited 100 ms"):
            await Caller(TurnCall(call.detector), FakeLeg(), Phrasebook()).run([wait_until(lambda: False, max_ms=100)])

    run_virtual(main, limit_s=10)


def test_the_fakes_are_the_protocols() -> None:
    words = Phrasebook()
    engines: Inference = FakeInference(FakeASR(words))
    leg: Leg = FakeLeg("twilio")
    call: Call = TurnCall(TurnDetector(engines.vad.stream(), TurnSettings()))
    assert (leg.kind, call.active, engines.metrics) == ("twilio", True, engines.metrics)
