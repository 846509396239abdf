"""Turn-taking in media time: VAD gating, speech start, the early 'prefetch' point, the endpoint.

Everything here counts 20 ms frames, never wall-clock time, so a test that feeds audio faster
than real time sees exactly the decisions a live call would. The detector is deliberately
cheap (one Silero window per 32 ms, run inline) so it never waits behind ASR, LLM or TTS.

Why three points after speech: a natural question has 0.4–0.5 s pauses between sentences, so
the endpoint waits ``endpoint_ms`` (700 ms) of silence; but at ``prefetch_ms`` (300 ms) the
stretch of speech since the previous pause is closed (``take_stretch``): the session decodes it
at once, while the caller may go on, and starts the LLM speculatively on the stretches so far,
so the answer is ready when the endpoint fires and only the speculation is dropped if the
caller goes on. Each stretch is decoded once. When the words so far end in a question mark the
session ends the turn sooner (``question_endpoint_ms``): a caller who has asked is waiting.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from inzwa_voice.core import FRAME_MS, PCM16
from inzwa_voice.engines.base import VADStream
from inzwa_voice.media.framing import pcm16_to_float

__all__ = ["FRAME_MS", "TurnDetector", "TurnEvent", "TurnSettings"]


class TurnEvent(enum.Enum):
    SPEECH_START = "speech_start"  # enough voiced audio to be speech (also the barge-in trigger)
    PREFETCH = "prefetch"  # a short silence: decode and think speculatively
    RESUMED = "resumed"  # speech again after a prefetch: drop the speculation, keep the stretches
    ENDPOINT = "endpoint"  # a long silence: the caller's turn is over


@dataclass(frozen=True)
class TurnSettings:
    threshold: float = 0.5  # speech probability that counts as voiced
    off_threshold: float = 0.35  # below this a window counts as silent (hysteresis)
    start_ms: int = 120  # voiced audio before speech starts: a cough or click is shorter
    prefetch_ms: int = 300
    endpoint_ms: int = 700
    question_endpoint_ms: int = 500  # once the words so far end in a question mark (see the session)
    max_utterance_ms: int = 30_000  # a longer turn is cut here, so buffers stay bounded
    pre_roll_ms: int = 200  # audio kept from before speech start, so first syllables survive


class TurnDetector:
    """Feeds 20 ms frames through the VAD and reports turn events in media time."""

    def __init__(self, vad: VADStream, settings: TurnSettings) -> None:
        self._vad = vad
        self.settings = settings
        self._window = np.zeros(0, dtype=np.float32)
        self._voiced_ms = 0
        self._silent_ms = 0
        self._in_speech = False
        self._prefetched = False
        self._utterance: list[PCM16] = []
        self._stretch_start = 0  # frame of the utterance where the open stretch begins
        self._taken_in_pause = False  # a stretch was taken since the caller last spoke
        self._pre_roll: list[PCM16] = []
        self.frames = 0  # media clock: frames seen since the call started
        self.last_voiced_frame = -1
        self.voiced = False  # the latest window's verdict

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    @property
    def silent_ms(self) -> int:
        """Silence since the caller's last voiced frame, within a turn."""
        return self._silent_ms if self._in_speech else 0

    def take_stretch(self) -> PCM16:
        """The stretch of speech since the previous one was taken (from the utterance's start),
        with a pre-roll before speech that resumed after a pause; the next stretch starts here."""
        frames = self._utterance[self._stretch_start :]
        self._stretch_start, self._taken_in_pause = len(self._utterance), True
        return np.concatenate(frames) if frames else np.zeros(0, dtype=np.int16)

    def push(self, frame: PCM16) -> list[TurnEvent]:
        self.frames += 1
        self._window = np.concatenate([self._window, pcm16_to_float(frame)])
        n = self._vad.frame_samples
        window_ms = n * 1000 // 16000
        while len(self._window) >= n:
            prob = self._vad.probability(self._window[:n])
            self._window = self._window[n:]
            if prob >= self.settings.threshold:
                self.voiced = True
                # Speech start counts windows that are themselves loud, not the hysteresis
                # hold after them: an 80 ms cough makes two such windows, speech keeps making them.
                self._voiced_ms += window_ms
            elif prob < self.settings.off_threshold:
                self.voiced = False
                self._voiced_ms = 0
        if self.voiced:
            self.last_voiced_frame = self.frames
        return self._advance(frame)

    def _advance(self, frame: PCM16) -> list[TurnEvent]:
        s = self.settings
        events: list[TurnEvent] = []
        if not self._in_speech:
            self._pre_roll.append(frame)
            if len(self._pre_roll) * FRAME_MS > s.pre_roll_ms + s.start_ms:
                self._pre_roll.pop(0)
            if self._voiced_ms >= s.start_ms:
                self._in_speech, self._silent_ms, self._prefetched = True, 0, False
                self._utterance, self._stretch_start, self._taken_in_pause = list(self._pre_roll), 0, False
                self._pre_roll = []
                events.append(TurnEvent.SPEECH_START)
            return events
        self._utterance.append(frame)
        if self.voiced:
            if self._prefetched:
                events.append(TurnEvent.RESUMED)
            if self._taken_in_pause:
                # The next stretch leaves out the pause's silence, all but a pre-roll.
                resumed_at = len(self._utterance) - 1 - s.pre_roll_ms // FRAME_MS
                self._stretch_start = max(self._stretch_start, resumed_at)
                self._taken_in_pause = False
            self._silent_ms, self._prefetched = 0, False
        else:
            self._silent_ms += FRAME_MS
        if not self._prefetched and self._silent_ms >= s.prefetch_ms:
            self._prefetched = True
            events.append(TurnEvent.PREFETCH)
        too_long = len(self._utterance) * FRAME_MS >= s.max_utterance_ms
        if self._silent_ms >= s.endpoint_ms or too_long:
            if not self._prefetched:
                events.append(TurnEvent.PREFETCH)
            events.append(TurnEvent.ENDPOINT)
            self._in_speech, self._voiced_ms, self._prefetched = False, 0, False
        return events

    def force_endpoint(self) -> list[TurnEvent]:
        """End the caller's turn now (the client said so), if one is in progress."""
        if not self._in_speech:
            return []
        events = [] if self._prefetched else [TurnEvent.PREFETCH]
        self._in_speech, self._voiced_ms, self._prefetched = False, 0, False
        return [*events, TurnEvent.ENDPOINT]
