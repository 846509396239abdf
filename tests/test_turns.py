"""Turn-taking in media time with the real VAD, and the phrase accounting behind barge-in."""

from __future__ import annotations

import numpy as np

from inzwa_voice.conversation.responder import Phrase, Reply
from inzwa_voice.conversation.turns import TurnDetector, TurnEvent, TurnSettings
from inzwa_voice.core import FRAME_MS, FRAME_SAMPLES
from inzwa_voice.engines.runtime import Engines
from inzwa_voice.safety.stream import PhraseSplitter
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
    utterance = detector.take_stretch()  # no pause: one stretch, the whole question
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


def test_later_phrases_split_long_sentences_at_clauses() -> None:
    splitter = PhraseSplitter()
    text = (
        "Hello there. I can help you with that today, but first tell me where you live and what "
        "happened, and then we can go on."
    )
    assert [*splitter.feed(text + " "), splitter.flush()] == [
        "Hello there. ",
        "I can help you with that today, but first tell me where you live and what happened, ",
        "and then we can go on. ",
    ]


def test_heard_text_cuts_inside_the_phrase_being_played() -> None:
    frame = np.zeros(FRAME_SAMPLES, np.int16)
    reply = Reply("r", 1)
    reply.phrases = [
        Phrase("One two three four.", [frame] * 100, start=0, end=100),
        Phrase("Five six seven eight.", [frame] * 100, start=100, end=200),
    ]
    assert reply.heard(100) == "One two three four."
    assert reply.heard(150) == "One two three four. Five six"
    assert reply.heard(0) == ""
    assert reply.heard(500) == "One two three four. Five six seven eight."
    reply.phrases[1].end = 150  # the second phrase is still being queued: only what played counts
    assert reply.heard(150) == "One two three four. Five six"
