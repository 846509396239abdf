"""A scripted timeline for testing a whole call's orchestration in milliseconds.

Turn-taking, barge-in, speculative replies, the hold prompt, the idle re-prompt, transfers and
hang-ups are all about *when*: this harness runs them on virtual time with fake engines and a
fake leg, so a call of a minute runs in milliseconds and every assertion can name a frame or an
instant. The model is livekit-agents' ``tests/test_agent_session.py``; the fakes test only
orchestration, the real engines keep their own end-to-end tests.

The parts, each implementing the project's own protocols and nothing more:

* :func:`run_virtual` (``clock.py``): runs an async test body on a loop whose clock jumps to the
  next timer whenever nothing is ready (``asyncio.sleep(30)`` costs nothing; ``asyncio.timeout``,
  ``call_later`` and ``loop.time()`` agree). It fails clearly on a hung call (virtual time past
  ``limit_s``), a deadlock, a livelock, or tasks left running when the body returns.
  :func:`settle` waits until every task has reacted at the current instant.
* :class:`FakeInference` (``engines.py``): ``engines.base.Inference`` over a :class:`FakeVAD`
  (energy threshold), :class:`FakeASR` (hears the caller's words back from the audio, scripted
  latency, fail, stall), :class:`FakeLLM` (scripted replies, first-token and per-token latency,
  fail, stall; closing the stream is recorded), :class:`FakeTTS` (60 ms of audio per character,
  first-audio latency, a waveform that names the call that made it) and a real ``Metrics``,
  all behind the real inference scheduler (``slots=1`` makes work wait for the cores as on two
  cores). Every call is recorded with its virtual times.
* :class:`FakeLeg` (``leg.py``): ``conversation.ports.Leg`` playing one frame per 20 ms of
  virtual time from a small bounded queue, with a timeline of events sent, frames played,
  interrupts, transfers, close and hang-up, and questions to ask it.
* :class:`Caller` (``caller.py``): feeds a ``conversation.ports.Call`` one frame per 20 ms from a
  script of :func:`speak`, :func:`pause`, :func:`stop_sending`, :func:`wait_until`,
  :func:`dtmf`, :func:`end_turn` and :func:`hang_up`.

A test of a call builds the call through whatever ``CallStarter`` the conversation provides,
handing it the fake engines; everything else speaks only the protocols::

    from inzwa_voice.core import CallInfo
    from tests.timeline import (Caller, FakeASR, FakeInference, FakeLeg, FakeLLM, Phrasebook,
                                pause, run_virtual, speak, wait_until)

    def test_a_question_is_answered_after_its_endpoint() -> None:
        async def main() -> None:
            words = Phrasebook()
            engines = FakeInference(FakeASR(words), llm=FakeLLM("Kiriniki inovhura na8."))
            leg = FakeLeg()
            call = await make_starter(engines).start(leg, CallInfo(leg="ws"))  # the CallStarter under test
            caller = Caller(call, leg, words)
            await caller.run([
                wait_until(lambda: leg.audio_ms() > 0),  # the greeting starts...
                pause(3000),                             # ...and is heard out
                speak(1200, "kiriniki inovhura rini"),
                pause(400),                              # a pause inside the question
                speak(900, "mangwana"),
                pause(2000),
            ])
            assert engines.asr.calls[-1].text == "kiriniki inovhura rini mangwana"
            answered = leg.first_audio_after(caller.last_voiced_at or 0.0)
            assert answered is not None and answered - (caller.last_voiced_at or 0.0) < 1.2
            assert leg.event_types().index("asr.final") < leg.event_types().index("tts.start")
            await call.end("completed")

        run_virtual(main, limit_s=60)

Tests are plain ``def test_...():`` calling :func:`run_virtual` (not ``async def``: the
session-scoped pytest-asyncio loop runs on real time). Code under test must take its time from
``loop.time()``, never ``time.monotonic()``, and run no threads: the fakes are pure asyncio.
"""

from tests.timeline.caller import (
    Caller,
    Fed,
    Step,
    dtmf,
    end_turn,
    hang_up,
    pause,
    speak,
    stop_sending,
    wait_until,
)
from tests.timeline.clock import TimelineError, VirtualLoop, now, run_virtual, settle
from tests.timeline.engines import (
    ASRCall,
    Decode,
    FakeASR,
    FakeInference,
    FakeLLM,
    FakeTTS,
    FakeVAD,
    Generate,
    LLMCall,
    Phrasebook,
    Synth,
    TTSCall,
)
from tests.timeline.leg import Closed, FakeLeg, HungUp, Interrupted, Played, Sent, Transferred

__all__ = [
    "ASRCall",
    "Caller",
    "Closed",
    "Decode",
    "FakeASR",
    "FakeInference",
    "FakeLLM",
    "FakeLeg",
    "FakeTTS",
    "FakeVAD",
    "Fed",
    "Generate",
    "HungUp",
    "Interrupted",
    "LLMCall",
    "Phrasebook",
    "Played",
    "Sent",
    "Step",
    "Synth",
    "TTSCall",
    "TimelineError",
    "Transferred",
    "VirtualLoop",
    "dtmf",
    "end_turn",
    "hang_up",
    "now",
    "pause",
    "run_virtual",
    "settle",
    "speak",
    "stop_sending",
    "wait_until",
]
