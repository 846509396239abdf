"""Turn-taking in media time with the real VAD, and the phrase accounting behind barge-in."""

from __future__ import annotations

import numpy as np

from inzwa_voice.conversation.phrases import heard_text, split_phrases
from inzwa_voice.conversation.turns import FRAME_MS, TurnDetector, TurnEvent, TurnSettings
from inzwa_voice.engines.registry import Engines
from inzwa_voice.media.framing import FRAME_SAMPLES
from tests.conftest import speak


def frames(pcm: np.ndarray) -> list[np.ndarray]:
    pad = (-len(pcm)) % FRAME_SAMPLES
    return list(np.concatenate([pcm, np.zeros(pad, np.int16)]).reshape(-1, FRAME_SAMPLES))


def silence(ms: int) -> list[np.ndarray]:
    return [np.zeros(FRAME_SAMPLES, np.int16)] * (ms // FRAME_MS)


def run(detector: TurnDetector, audio: list[np.ndarray]) -> list[tuple[int, TurnEvent]]:
    return [(detector.frames, e) for f in audio for e in detector.push(f)]


async def test_endpoint_comes_after_the_configured_silence(engines: Engines) -> None:
    speech = frames(await speak(engines, "Where is the nearest clinic?"))
    detector = TurnDetector(engines.vad.stream(), TurnSettings())
    events = run(detector, silence(400) + speech + silence(1000))
    kinds = [e for _, e in events]
    assert kinds == [TurnEvent.SPEECH_START, TurnEvent.PREFETCH, TurnEvent.ENDPOINT]
    prefetch_at, endpoint_at = events[1][0], events[2][0]
    last_voiced = detector.last_voiced_frame
    # 300 ms and 700 ms of silence, give or take the VAD's 32 ms window and hysteresis
    assert 0 <= (prefetch_at - last_voiced) * FRAME_MS - 300 <= 60
    assert 0 <= (endpoint_at - last_voiced) * FRAME_MS - 700 <= 60
    utterance = detector.take_utterance()
    assert len(utterance) >= len(np.concatenate(speech)) * 0.8


async def test_a_pause_shorter_than_the_endpoint_keeps_the_turn_open(engines: Engines) -> None:
    first = frames(await speak(engines, "I have a question."))
    second = frames(await speak(engines, "Where is the clinic?"))
    detector = TurnDetector(engines.vad.stream(), TurnSettings())
    kinds = [e for _, e in run(detector, first + silence(450) + second + silence(1000))]
    assert kinds == [
        TurnEvent.SPEECH_START,
        TurnEvent.PREFETCH,  # the answer is prepared during the pause...
        TurnEvent.RESUMED,  # ...and dropped when the caller goes on
        TurnEvent.PREFETCH,
        TurnEvent.ENDPOINT,
    ]


async def test_a_short_burst_is_not_speech(engines: Engines) -> None:
    speech = frames(await speak(engines, "Hello there, how are you?"))
    cough = speech[5:9]  # 80 ms of voiced sound, under the 120 ms needed to start speech
    detector = TurnDetector(engines.vad.stream(), TurnSettings())
    assert run(detector, silence(200) + cough + silence(600)) == []


def test_phrases_split_long_sentences_at_clauses() -> None:
    text = "Hello there. I can help you with that, but first tell me where you live, and what happened."
    assert split_phrases(text) == [
        "Hello there. I can help you with that,",
        "but first tell me where you live,",
        "and what happened.",
    ]
    assert all(len(p) <= 40 for p in split_phrases("word " * 50, max_chars=40))


def test_heard_text_cuts_inside_the_phrase_being_played() -> None:
    spans = [("One two three four.", 0, 100), ("Five six seven eight.", 100, 200)]
    assert heard_text(spans, 100) == "One two three four."
    assert heard_text(spans, 150) == "One two three four. Five six"
    assert heard_text(spans, 0) == ""
    assert heard_text(spans, 500) == "One two three four. Five six seven eight."
