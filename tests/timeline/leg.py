"""A fake leg that plays bot audio at the virtual clock and keeps a timeline of everything.

It implements ``conversation.ports.Leg`` the way a paced leg behaves: a small bounded queue
(``play`` waits while it is full), one frame on the line at a time, each frame played 20 ms
after the one before it (a frame counts as played when its 20 ms are over: the caller heard
it whole), ``interrupt`` dropping the frame on the line and everything queued. No task runs it:
the frame on the line is a timer, so a leg left open leaks nothing. Once the leg is closed or
the caller hung up, ``play`` raises ``PacerClosed``, as a paced leg's does; events sent after
that are still recorded, so a test sees what a session sent too late.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from inzwa_voice.core import FRAME_MS, FRAME_SAMPLES, PCM16, LegKind
from inzwa_voice.media.pacer import PacerClosed
from inzwa_voice.media.playout import Playout

_FRAME_S = FRAME_MS / 1000


@dataclass(frozen=True)
class Sent:
    at: float
    event: dict[str, object]

    @property
    def type(self) -> str:
        return str(self.event.get("type"))


@dataclass(frozen=True)
class Played:
    start: float
    end: float
    frame: PCM16

    @property
    def silent(self) -> bool:
        return not self.frame.any()


@dataclass(frozen=True)
class Interrupted:
    at: float
    played: int  # the position played when it came
    dropped: int  # frames on the line or queued that will never play


@dataclass(frozen=True)
class Transferred:
    at: float
    target: str
    accepted: bool
    answered: float  # when the transport said whether it took the call


@dataclass(frozen=True)
class Closed:
    at: float
    reason: str


@dataclass(frozen=True)
class HungUp:
    """The caller hung up: the transport is gone before the call is told."""

    at: float


Entry = Sent | Played | Interrupted | Transferred | Closed | HungUp


class FakeLeg:
    def __init__(
        self,
        kind: LegKind = "ws",
        *,
        max_queued_frames: int = 10,
        transfer_accepted: bool = True,
        transfer_s: float = 0.0,
    ) -> None:
        if max_queued_frames < 1:
            raise ValueError("max_queued_frames must be at least 1")
        self.kind = kind
        self.playout = Playout()
        self.timeline: list[Entry] = []
        self.closed: str | None = None  # the reason, once closed
        self.gone = False  # the transport is gone (closed, or the caller hung up)
        self._max_queued = max_queued_frames
        self._transfer = (transfer_accepted, transfer_s)
        self._queue: deque[PCM16] = deque()  # the head is the frame on the line
        self._line: asyncio.TimerHandle | None = None
        self._spurt = (0.0, 0)  # (start of the first frame of this talk spurt, frames since)
        self._generation = 0  # bumped by every drop, so a producer waiting for room knows
        self._room: list[asyncio.Future[None]] = []

    # --- the Leg protocol ---
    @property
    def played_frames(self) -> int:
        return self.playout.played

    async def play(self, frame: PCM16) -> int:
        if frame.dtype != np.int16 or frame.shape != (FRAME_SAMPLES,):
            raise ValueError(f"a leg plays {FRAME_SAMPLES}-sample int16 frames, got {frame.dtype} {frame.shape}")
        self._check_open()
        position = self.playout.queue()
        generation = self._generation
        while len(self._queue) >= self._max_queued:
            room: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._room.append(room)
            await room
            self._check_open()
            if generation != self._generation:
                return position  # interrupted while waiting: this frame will never play
        self._queue.append(frame.copy())
        if self._line is None:
            self._spurt = (asyncio.get_running_loop().time(), 0)
            self._put_on_line()
        return position

    def interrupt(self) -> int:
        dropped = self._drop()
        self.timeline.append(Interrupted(self._now(), self.playout.played, dropped))
        return self.playout.played

    async def wait_for_playout(self, position: int) -> bool:
        return await self.playout.wait_for(position)

    async def send_event(self, event: dict[str, object]) -> None:
        # A real leg sends JSON: what does not survive a round trip is a bug worth failing on.
        self.timeline.append(Sent(self._now(), json.loads(json.dumps(event))))

    async def transfer(self, target: str) -> bool:
        asked = self._now()
        accepted, delay = self._transfer
        await asyncio.sleep(delay)
        self.timeline.append(Transferred(asked, target, accepted, self._now()))
        return accepted

    async def close(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason
            self._go(Closed(self._now(), reason))

    # --- the far end ---
    def hang_up(self) -> None:
        """The caller is gone: nothing more plays (the scripted caller tells the call next)."""
        if not self.gone:
            self._go(HungUp(self._now()))

    # --- what the timeline says ---
    @property
    def played(self) -> list[Played]:
        return [e for e in self.timeline if isinstance(e, Played)]

    @property
    def interrupts(self) -> list[Interrupted]:
        return [e for e in self.timeline if isinstance(e, Interrupted)]

    def events(self, type: str | None = None) -> list[Sent]:
        """Events sent, in order; only those of ``type`` when given."""
        return [e for e in self.timeline if isinstance(e, Sent) and type in (None, e.type)]

    def event_types(self) -> list[str]:
        return [e.type for e in self.events()]

    def first_audio_after(self, t: float) -> float | None:
        """When the first non-silent bot frame that started at or after ``t`` started playing."""
        return next((p.start for p in self.played if p.start >= t and not p.silent), None)

    def audio_ms(self, start: float = 0.0, end: float = math.inf) -> int:
        """Milliseconds of non-silent bot audio whose frames started playing in [start, end)."""
        return FRAME_MS * sum(1 for p in self.played if start <= p.start < end and not p.silent)

    def audio(self, start: float = 0.0, end: float = math.inf) -> PCM16:
        """The bot audio the caller heard, frames that started playing in [start, end), joined."""
        frames = [p.frame for p in self.played if start <= p.start < end]
        return np.concatenate(frames) if frames else np.zeros(0, np.int16)

    def describe(self) -> str:
        """The timeline as text, runs of played frames folded into one line: for failure messages."""
        lines: list[str] = []
        run: list[Played] = []
        for entry in [*self.timeline, None]:
            if isinstance(entry, Played):
                run.append(entry)
                continue
            if run:
                lines.append(f"{run[0].start:9.3f}-{run[-1].end:.3f} played {len(run)} frames")
                run = []
            if entry is not None:
                what = entry.event if isinstance(entry, Sent) else entry
                lines.append(f"{entry.at:9.3f} {what}")
        return "\n".join(lines)

    # --- playing ---
    def _put_on_line(self) -> None:
        epoch, k = self._spurt
        self._line = asyncio.get_running_loop().call_at(epoch + (k + 1) * _FRAME_S, self._frame_played)

    def _frame_played(self) -> None:
        epoch, k = self._spurt
        frame = self._queue.popleft()
        self.timeline.append(Played(epoch + k * _FRAME_S, epoch + (k + 1) * _FRAME_S, frame))
        self.playout.advance()
        self._spurt = (epoch, k + 1)
        self._line = None
        if self._queue:
            self._put_on_line()
        self._make_room()

    def _drop(self) -> int:
        """Drop the frame on the line and everything queued; returns how many frames that was."""
        dropped = len(self._queue)
        if self._line is not None:
            self._line.cancel()
            self._line = None
        self._queue.clear()
        self._generation += 1
        self.playout.interrupt()
        self._make_room()
        return dropped

    def _go(self, entry: Closed | HungUp) -> None:
        self.gone = True
        self._drop()
        self.timeline.append(entry)

    def _make_room(self) -> None:
        for room in self._room:
            if not room.done():
                room.set_result(None)
        self._room = []

    def _check_open(self) -> None:
        if self.gone:
            raise PacerClosed(f"the leg is gone ({self.closed or 'caller hung up'})")

    def _now(self) -> float:
        return asyncio.get_running_loop().time()
