"""The call simulator's questions and its judgement of a turn, without a gateway.

Questions are built from stand-in sentences (tones, padded with silence the way a TTS voice pads
its speech), so the pauses between sentences can be measured exactly. The turns are judged
against a scripted line: a stand-in gateway that ends a turn after a fixed silence and answers
with the events the WebSocket leg sends, run on the timeline harness's virtual time, so a call
of several questions runs in milliseconds and its counts are exact.
"""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Any, cast

import aiohttp
import numpy as np
import pytest

from inzwa_voice.core import PCM16
from inzwa_voice.simulator import run
from inzwa_voice.simulator.caller import FRAME_MS, Caller, Received, Timeline
from inzwa_voice.simulator.gateway_metrics import parse, round_cost
from inzwa_voice.simulator.questions import (
    PAUSE_S,
    QUESTIONS,
    Question,
    Script,
    build,
    from_wav,
    voiced_span,
    wav_paths,
)
from tests.timeline import run_virtual

RATE = 8000


def tone(ms: int, rate: int = RATE, hz: float = 440.0, pad_ms: int = 0) -> PCM16:
    """``ms`` of a tone with ``pad_ms`` of silence either side (as a TTS voice pads speech)."""
    t = np.arange(ms * rate // 1000) / rate
    voiced = (8000 * np.sin(2 * np.pi * hz * t)).astype(np.int16)
    pad = np.zeros(pad_ms * rate // 1000, dtype=np.int16)
    return np.concatenate([pad, voiced, pad])


def speech_for(scripts: tuple[Script, ...]) -> dict[str, PCM16]:
    """For each sentence, a noise with no zero sample in it, as long as the sentence is (30 ms
    a letter), padded with 150 ms of silence either side."""
    rng = np.random.default_rng(0)
    speech = {}
    for sentence in sorted({s for script in scripts for s in script.sentences}):
        voice = rng.integers(1000, 8000, 30 * len(sentence) * RATE // 1000) * rng.choice(
            [-1, 1], 30 * len(sentence) * RATE // 1000
        )
        pad = np.zeros(150 * RATE // 1000, dtype=np.int16)
        speech[sentence] = np.concatenate([pad, voice.astype(np.int16), pad])
    return speech


def silences(audio: PCM16) -> list[int]:
    """The lengths, in samples, of the runs of exact zeros inside ``audio``."""
    zero = np.concatenate([[False], audio == 0, [False]])
    edges = np.flatnonzero(np.diff(zero.astype(np.int8)))
    return [int(end - start) for start, end in zip(edges[::2], edges[1::2], strict=True)]


# ----- building questions -----


def test_sentences_are_joined_by_pauses_of_0_3_to_0_6_s_and_nothing_else() -> None:
    questions = build(QUESTIONS, speech_for(QUESTIONS), RATE, seed=0)
    pauses = [p for q in questions for p in q.pauses_ms]
    assert len(pauses) == sum(len(s.sentences) - 1 for s in QUESTIONS)
    assert all(PAUSE_S[0] * 1000 <= p <= PAUSE_S[1] * 1000 for p in pauses)
    assert max(pauses) - min(pauses) > 100  # drawn, not one fixed length
    for question in questions:
        # The voice's padding is trimmed: the question starts and ends with voice, and the only
        # silences in it are the inserted pauses.
        assert voiced_span(question.audio, RATE) == (0, len(question.audio))
        assert [n * 1000 / RATE for n in silences(question.audio)] == list(question.pauses_ms)


def test_the_same_seed_gives_the_same_pauses() -> None:
    speech = speech_for(QUESTIONS)
    first, again = build(QUESTIONS, speech, RATE, seed=3), build(QUESTIONS, speech, RATE, seed=3)
    other = build(QUESTIONS, speech, RATE, seed=4)
    assert [q.pauses_ms for q in first] == [q.pauses_ms for q in again]
    assert all(np.array_equal(a.audio, b.audio) for a, b in zip(first, again, strict=True))
    assert [q.pauses_ms for q in first] != [q.pauses_ms for q in other]


def test_the_questions_include_both_kinds_and_never_two_for_the_llm_in_a_row() -> None:
    kinds = [q.kind for q in QUESTIONS]
    assert {"knowledge", "llm"} <= set(kinds)
    assert all(len(q.sentences) >= 2 for q in QUESTIONS)
    assert all(not (a == b == "llm") for a, b in zip(kinds, kinds[1:] + kinds[:1], strict=True))


def write_wav(path: Path, audio: np.ndarray[Any, Any], rate: int) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(audio.shape[1])
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(audio.astype("<i2").tobytes())


def test_a_recording_is_mixed_to_mono_resampled_and_trimmed(tmp_path: Path) -> None:
    left = tone(1000, rate=44100, hz=500.0, pad_ms=300)
    write_wav(tmp_path / "q.wav", np.stack([left, left], axis=1), 44100)
    question = from_wav(tmp_path / "q.wav", RATE)
    assert question.kind == "wav" and question.rate == RATE and question.sentences is None
    assert abs(question.duration_ms - 1000) <= 20  # the 300 ms either side is gone
    spectrum = np.abs(np.fft.rfft(question.audio.astype(np.float64)))
    assert np.fft.rfftfreq(len(question.audio), 1 / RATE)[int(np.argmax(spectrum))] == pytest.approx(500, abs=5)


def test_a_silent_recording_is_refused(tmp_path: Path) -> None:
    write_wav(tmp_path / "silent.wav", np.zeros((8000, 1), dtype=np.int16), RATE)
    with pytest.raises(ValueError, match="no speech"):
        from_wav(tmp_path / "silent.wav", RATE)


def test_wav_options_take_files_and_comma_lists() -> None:
    assert wav_paths(["a.wav", "b.wav,c.wav", ""]) == [Path("a.wav"), Path("b.wav"), Path("c.wav")]


# ----- replies spoken into pauses -----


def test_bot_audio_or_an_answer_start_inside_the_question_is_a_reply_into_a_pause() -> None:
    timeline = Timeline(
        audio=[Received(900, 160), Received(2400, 0), Received(5000, 160)],
        events=[(100, {"type": "tts.start"}), (2000, {"type": "asr.partial"}), (4800, {"type": "tts.start"})],
    )
    assert not timeline.bot_spoke_during(1000, 4000)  # greeting before, answer after, no sample inside
    timeline.events.append((3000, {"type": "tts.start", "id": "early"}))
    assert timeline.bot_spoke_during(1000, 4000)
    assert not timeline.bot_spoke_during(1000, 3000)  # up to, not including, the end of the question
    timeline.audio.append(Received(1500, 160))
    assert timeline.bot_spoke_during(1000, 2000)


class ScriptedLine(Caller):
    """A caller whose line is a stand-in gateway: it answers after ``endpoint_ms`` of silence
    that follows speech, with ``reply_ms`` of audio framed by the WebSocket leg's events
    (``tts.start``, ``tts.end``, ``turn.metrics``; the greeting has no source), and stops for
    a barge-in when the caller speaks over it."""

    def __init__(self, endpoint_ms: int, reply_ms: int = 400) -> None:
        super().__init__(RATE)
        self.endpoint_ms, self.reply_frames = endpoint_ms, reply_ms // FRAME_MS
        self.replies = 0
        self._silent_ms: int | None = None  # since the caller's last voice; None: nothing to answer
        self._left = 0  # frames of the current reply still to send
        self._source: dict[str, Any] = {}

    async def connect(self, **start: Any) -> dict[str, Any]:
        self.start_sending()
        self._reply({})  # the greeting
        return {"type": "session.started"}

    def _reply(self, source: dict[str, Any]) -> None:
        self.replies += 1
        self._left, self._source = self.reply_frames, source
        self.on_event({"type": "tts.start", "id": str(self.replies), **source})

    def _end_reply(self) -> None:
        self._left = 0
        self.on_event({"type": "tts.end", "id": str(self.replies), **self._source})
        if self._source:
            metrics = {"type": "turn.metrics", "id": str(self.replies), "latency_ms": {"endpoint": self.endpoint_ms}}
            self.on_event({**metrics, "runs": {"asr": 1, "llm": 0}, **self._source})

    async def send_frame(self, frame: PCM16) -> None:
        if frame.any():
            if self._left:
                self.on_event({"type": "barge_in", "id": str(self.replies)})
                self._end_reply()
            self._silent_ms = 0
        elif self._silent_ms is not None:
            self._silent_ms += FRAME_MS
            if self._silent_ms >= self.endpoint_ms:
                self._silent_ms = None
                self._reply({"source": {"kind": "knowledge", "id": "clinic"}})
        if self._left:
            self.on_audio(np.full(self.frame_samples, 100, dtype=np.int16))
            self._left -= 1
            if not self._left:
                self._end_reply()

    async def hang_up(self) -> None:
        await self.stop_sending()


def call(line: ScriptedLine, questions: list[Question]) -> run.CallResult:
    async def main() -> run.CallResult:
        http = cast(aiohttp.ClientSession, None)  # the scripted line needs no HTTP
        return await run.one_call(http, "", {}, lambda *_: line, questions, None, 0, turn_timeout_s=5)

    return run_virtual(main, limit_s=120)


def paused_questions() -> list[Question]:
    scripts = QUESTIONS[:2]
    return build(scripts, {s: tone(400) for q in scripts for s in q.sentences}, RATE, seed=1)


def test_a_gateway_that_ends_the_turn_inside_a_pause_is_caught() -> None:
    questions = paused_questions()
    line = ScriptedLine(endpoint_ms=200)  # shorter than every pause
    result = call(line, questions)
    assert result.error is None
    assert [t.into_pause for t in result.turns] == [True, True]
    assert line.replies == 1 + sum(len(q.pauses_ms) + 1 for q in questions)  # greeting, every pause, the end
    summary = run.summarise([result], questions_per_call=2)
    assert summary["replies_into_pauses"] == 2
    assert summary["by_question"]["knowledge"]["replies_into_pauses"] == 1
    assert summary["by_question"]["llm"]["replies_into_pauses"] == 1


def test_a_gateway_that_waits_out_the_pauses_answers_each_question_once_after_it() -> None:
    questions = paused_questions()
    line = ScriptedLine(endpoint_ms=700)  # longer than every pause
    result = call(line, questions)
    assert result.error is None
    assert line.replies == 1 + len(questions)
    assert [t.into_pause for t in result.turns] == [False, False]
    for turn in result.turns:
        # Measured in the caller's media time, from the end of its last sentence.
        assert turn.latency_ms is not None and 700 - FRAME_MS <= turn.latency_ms <= 700 + 2 * FRAME_MS
        assert turn.answer_ms == turn.latency_ms  # no hold prompt before this answer
        assert turn.stages == {"endpoint": 700.0} and turn.source == "knowledge"
    summary = run.summarise([result], questions_per_call=2)
    assert (summary["turns"], summary["unanswered"], summary["replies_into_pauses"]) == (2, 0, 0)
    assert summary["sentences_per_turn"] == 3
    assert summary["answer_sources"] == {"knowledge": 2}
    assert summary["runs_per_turn"] == {"asr": {"mean": 1, "max": 1, "n": 2}, "llm": {"mean": 0, "max": 0, "n": 2}}


def test_a_question_never_answered_ends_the_call_and_counts_as_unanswered() -> None:
    questions = paused_questions()
    line = ScriptedLine(endpoint_ms=60_000)  # never within the turn timeout
    result = call(line, questions)
    assert result.error is not None and "unanswered" in result.error
    assert [t.latency_ms for t in result.turns] == [None]
    summary = run.summarise([result], questions_per_call=2)
    assert (summary["turns"], summary["unanswered"], summary["voice_to_voice_ms"]) == (1, 2, None)


# ----- what a round cost the gateway -----

BEFORE = """\
process_cpu_seconds_total 10.0
inzwa_engine_inference_seconds_count{engine="asr",op="transcribe"} 4.0
inzwa_llm_generations_total{outcome="done"} 1.0
"""
AFTER = """\
process_cpu_seconds_total 16.0
inzwa_engine_inference_seconds_count{engine="asr",op="transcribe"} 12.0
inzwa_llm_generations_total{outcome="done"} 3.0
inzwa_llm_generations_total{outcome="cancelled"} 1.0
"""
QUEUED = """\
# TYPE inzwa_inference_runs_total counter
inzwa_inference_runs_total{engine="asr",priority="final",outcome="ran"} 2.0
inzwa_inference_runs_total{engine="asr",priority="partial",outcome="ran"} 5.0
inzwa_inference_runs_total{engine="asr",priority="partial",outcome="dropped"} 2.0
inzwa_inference_runs_total{engine="llm",priority="first_phrase",outcome="ran"} 2.0
inzwa_inference_runs_total{engine="llm",priority="background",outcome="ran"} 3.0
inzwa_inference_runs_total{engine="llm",priority="background",outcome="gave_way"} 1.0
# TYPE inzwa_llm_prompt_tokens_total counter
inzwa_llm_prompt_tokens_total{how="read"} 240.0
inzwa_llm_prompt_tokens_total{how="restored"} 900.0
# TYPE inzwa_inference_queue_seconds histogram
inzwa_inference_queue_seconds_bucket{engine="asr",priority="final",le="0.01"} 2.0
inzwa_inference_queue_seconds_bucket{engine="asr",priority="final",le="0.1"} 3.0
inzwa_inference_queue_seconds_bucket{engine="asr",priority="final",le="+Inf"} 3.0
inzwa_inference_queue_seconds_count{engine="asr",priority="final"} 3.0
inzwa_inference_queue_seconds_sum{engine="asr",priority="final"} 0.09
inzwa_inference_queue_seconds_bucket{engine="asr",priority="partial",le="0.01"} 0.0
inzwa_inference_queue_seconds_bucket{engine="asr",priority="partial",le="0.1"} 0.0
inzwa_inference_queue_seconds_bucket{engine="asr",priority="partial",le="+Inf"} 0.0
inzwa_inference_queue_seconds_count{engine="asr",priority="partial"} 0.0
inzwa_inference_queue_seconds_sum{engine="asr",priority="partial"} 0.0
"""


def test_per_turn_costs_come_from_the_metrics_the_gateway_has() -> None:
    cost = round_cost(parse(BEFORE), parse(AFTER), turns=4)
    assert (cost["asr_decodes_per_turn"], cost["llm_runs_per_turn"], cost["cpu_s_per_turn"]) == (2.0, 0.75, 1.5)
    assert cost["queue_wait_ms"] is None and cost["runs_by_priority"] is None  # no scheduler: said so
    assert cost["llm_prompt_tokens_per_turn"] is None


def test_a_scheduler_s_runs_and_queue_waits_are_used_when_exported() -> None:
    cost = round_cost(parse(BEFORE), parse(AFTER + QUEUED), turns=2)
    # Dropped work is no run, and a read-ahead while the caller listens is no run of the turn.
    assert (cost["asr_decodes_per_turn"], cost["llm_runs_per_turn"]) == (3.5, 1.0)
    assert cost["llm_read_aheads_per_turn"] == 1.5
    assert cost["llm_prompt_tokens_per_turn"] == {"read": 120.0, "restored": 450.0}
    assert cost["runs_by_priority"] == {
        "asr": {"final": {"ran": 2}, "partial": {"dropped": 2, "ran": 5}},
        "llm": {"background": {"gave_way": 1, "ran": 3}, "first_phrase": {"ran": 2}},
    }
    assert cost["queue_wait_ms"] == {"final": {"n": 3, "mean_ms": 30.0, "p95_ms": 100.0}, "partial": None}
