"""A scripted caller: 20 ms frames into a ``Call`` on the virtual clock, as a leg would feed them.

A script is a list of steps, ``[speak(1200, "kiriniki iri kupi"), pause(400), speak(900),
pause(1000)]``, run in order on one frame clock: each frame is fed when its 20 ms are over (so
after ``speak(1200)`` from t=0 the last loud frame arrives at t=1.2), one ``feed`` per 20 ms.
``stop_sending`` is the client that stalls (no frames at all), ``wait_until`` keeps sending
silence until something happened (the bot started speaking), ``hang_up`` is the far end going
away: the leg stops playing, then the call is told. When the call ends under it (the leg was
closed, or the call is no longer active) the caller stops, as a real client would.

Between two ``run`` calls no frames flow: time the test spends elsewhere is a stall.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from inzwa_voice.conversation.ports import Call
from inzwa_voice.core import DTMF_DIGITS, FRAME_MS, FRAME_SAMPLES, PCM16
from tests.timeline.clock import TimelineError, now
from tests.timeline.engines import Phrasebook
from tests.timeline.leg import FakeLeg

_SILENCE: PCM16 = np.zeros(FRAME_SAMPLES, np.int16)
DEFAULT_WORDS = "ndinoda rubatsiro"  # "I need help"


def _frames(ms: int) -> int:
    if ms <= 0 or ms % FRAME_MS:
        raise ValueError(f"a duration must be a positive multiple of {FRAME_MS} ms, got {ms}")
    return ms // FRAME_MS


@dataclass(frozen=True)
class Speak:
    ms: int
    text: str


@dataclass(frozen=True)
class Pause:
    ms: int


@dataclass(frozen=True)
class StopSending:
    ms: int


@dataclass(frozen=True)
class WaitUntil:
    condition: Callable[[], bool]
    max_ms: int


@dataclass(frozen=True)
class Dtmf:
    digit: str


@dataclass(frozen=True)
class EndTurn:
    pass


@dataclass(frozen=True)
class HangUp:
    pass


Step = Speak | Pause | StopSending | WaitUntil | Dtmf | EndTurn | HangUp


def speak(ms: int, text: str = DEFAULT_WORDS) -> Speak:
    """``ms`` of loud frames: the phrasebook's tone for ``text``."""
    _frames(ms)
    return Speak(ms, text)


def pause(ms: int) -> Pause:
    """``ms`` of silent frames: the caller is quiet, the line is not."""
    _frames(ms)
    return Pause(ms)


def stop_sending(ms: int) -> StopSending:
    """``ms`` with no frames at all: DTX, a muted microphone, a stalled network."""
    _frames(ms)
    return StopSending(ms)


def wait_until(condition: Callable[[], bool], *, max_ms: int = 30_000) -> WaitUntil:
    """Silent frames until ``condition()`` holds (checked before each frame); after ``max_ms``
    without it the timeline fails."""
    _frames(max_ms)
    return WaitUntil(condition, max_ms)


def dtmf(digit: str) -> Dtmf:
    if digit not in DTMF_DIGITS:
        raise ValueError(f"not a keypad digit: {digit!r}")
    return Dtmf(digit)


def end_turn() -> EndTurn:
    """The client's push-to-talk release."""
    return EndTurn()


def hang_up() -> HangUp:
    return HangUp()


@dataclass(frozen=True)
class Fed:
    at: float
    text: str | None  # None: a silent frame


class Caller:
    def __init__(self, call: Call, leg: FakeLeg, words: Phrasebook) -> None:
        self.call = call
        self.leg = leg
        self.words = words
        self.fed: list[Fed] = []
        # The frame clock: the caller has sent (or skipped) audio up to epoch + k frames.
        self._epoch = 0.0
        self._k = 0

    @property
    def last_voiced_at(self) -> float | None:
        """When the last loud frame was fed: where turn latency is counted from."""
        return next((f.at for f in reversed(self.fed) if f.text is not None), None)

    @property
    def ended(self) -> bool:
        """The call is over for this caller: nothing more is sent."""
        return self.leg.gone or not self.call.active

    async def run(self, script: Iterable[Step]) -> bool:
        """Run the steps in order; False if the call ended before the script did."""
        if self._clock(self._k) < now() - 1e-9:
            self._epoch, self._k = now(), 0
        for step in script:
            if self.ended:
                return False
            match step:
                case Speak(ms, text):
                    if not await self._send(self.words.frame(text), text, _frames(ms)):
                        return False
                case Pause(ms):
                    if not await self._send(_SILENCE, None, _frames(ms)):
                        return False
                case StopSending(ms):
                    self._k += _frames(ms)
                    await asyncio.sleep(max(0.0, self._clock(self._k) - now()))
                case WaitUntil(condition, max_ms):
                    waited = 0
                    while not condition():
                        if waited == max_ms:
                            raise TimelineError(f"waited {max_ms} ms of silence for {condition!r}")
                        if not await self._send(_SILENCE, None, 1):
                            return False
                        waited += FRAME_MS
                case Dtmf(digit):
                    self.call.dtmf(digit)
                case EndTurn():
                    self.call.end_turn()
                case HangUp():
                    self.leg.hang_up()
                    await self.call.hangup("caller_hangup")
        return True

    def _clock(self, k: int) -> float:
        return self._epoch + k * FRAME_MS / 1000

    async def _send(self, frame: PCM16, text: str | None, count: int) -> bool:
        for _ in range(count):
            self._k += 1
            await asyncio.sleep(max(0.0, self._clock(self._k) - now()))
            if self.ended:
                return False
            self.call.feed(frame)
            self.fed.append(Fed(now(), text))
        return True
