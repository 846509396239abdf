"""Real-time pacing of outbound audio: frames leave at the rate they are played, never faster.

TTS produces speech several times faster than real time. A leg that wrote it to the wire as it
came would hand the far end seconds of audio it can no longer take back, and a barge-in could
not stop it. The :class:`Pacer` holds those frames in a bounded queue (so the TTS stage feels
back-pressure) and sends each at its deadline, so a :meth:`Pacer.flush` silences the bot within
a frame or two: only the ``lead_frames`` already sent ahead can still play.

Schedule: the first frame of a talk spurt fixes an epoch ``t0``; frame ``k`` of the spurt is
due at ``t0 + (k - lead_frames) * frame_ms``. So the first ``lead_frames + 1`` frames go at
once (the far end's jitter buffer starts with something to play) and every later frame goes
when its deadline comes. Deadlines are computed from the epoch, never by sleeping one frame
after the previous send, so timer overshoot and slow sends do not accumulate into drift: a late
frame is followed by frames sent sooner, until the schedule is met again. When the queue runs
dry for longer than the far end's buffered lead plus a frame (the TTS paused between
sentences, or the bot finished speaking), the far end has run out of audio; the next frame
starts a new spurt with a new epoch instead of bursting out to "catch up" on silence.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

FrameT = TypeVar("FrameT")


class Clock(Protocol):
    """Monotonic time in seconds and a way to wait for it; injectable so tests run in media time."""

    def now(self) -> float: ...

    async def sleep_until(self, deadline: float) -> None: ...


class MonotonicClock:
    """The real clock: ``time.monotonic`` and ``asyncio.sleep``."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep_until(self, deadline: float) -> None:
        # Always yield, even when late, so a backlog never starves the event loop.
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))


class PacerClosed(RuntimeError):
    """The pacer was closed, or its ``send`` failed (the error is chained as the cause)."""


class Pacer(Generic[FrameT]):
    """Sends enqueued frames through ``send`` at real time (see the module docstring).

    ``on_sent(index)`` is called after each frame was handed to ``send``, with the index that
    :meth:`enqueue` returned for it: the session learns exactly which audio reached the caller,
    so a barge-in can cut the assistant's memory at what was heard. Frames dropped by
    :meth:`flush` are never reported.
    """

    def __init__(
        self,
        send: Callable[[FrameT], Awaitable[None]],
        *,
        frame_ms: float = 20.0,
        lead_frames: int = 3,
        max_queued_frames: int = 50,
        clock: Clock | None = None,
        on_sent: Callable[[int], None] | None = None,
    ) -> None:
        if frame_ms <= 0 or lead_frames < 0 or max_queued_frames < 1:
            raise ValueError("need frame_ms > 0, lead_frames >= 0, max_queued_frames >= 1")
        self._send = send
        self._frame_s = frame_ms / 1000.0
        self._lead = lead_frames
        self._clock: Clock = clock or MonotonicClock()
        self._on_sent = on_sent
        # Items carry the flush generation they were enqueued in, so a producer that was
        # blocked on a full queue when a flush happened cannot slip a stale frame in after it.
        self._queue: asyncio.Queue[tuple[int, int, FrameT]] = asyncio.Queue(max_queued_frames)
        self._generation = 0
        self._next_index = 0
        self._epoch: float | None = None
        self._spurt_frames = 0
        self._holding = False
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._error: BaseException | None = None
        self.frames_sent = 0
        self.frames_dropped = 0

    @property
    def queued(self) -> int:
        """Frames waiting to be sent."""
        return self._queue.qsize() + int(self._holding)

    def start(self) -> None:
        """Start the sending task on the running loop."""
        self._check_open()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="pacer")

    async def enqueue(self, frame: FrameT) -> int:
        """Queue one frame, waiting while the queue is full; return its index."""
        self._check_open()
        self.start()
        index = self._next_index
        self._next_index += 1
        await self._queue.put((self._generation, index, frame))
        return index

    def flush(self) -> int:
        """Drop every frame not yet sent (barge-in) and return how many were dropped.

        A frame already being handed to ``send`` counts as sent. The next frame enqueued
        starts a new talk spurt with a fresh lead.
        """
        self._generation += 1
        dropped = int(self._holding)  # the sending task counts it done when it wakes
        self._holding = False
        while not self._queue.empty():
            self._queue.get_nowait()
            self._queue.task_done()
            dropped += 1
        self._epoch = None
        self.frames_dropped += dropped
        return dropped

    async def drain(self) -> None:
        """Wait until every queued frame was sent (or dropped by a flush)."""
        self._check_open()
        await self._queue.join()
        self._check_open()

    async def close(self) -> None:
        """Stop sending; queued frames are dropped. Safe to call twice, and from ``send``."""
        self._closed = True
        self.flush()
        if self._task is not None:
            self._task.cancel()
            if self._task is not asyncio.current_task():
                # wait() rather than await: a cancellation of our caller must still propagate.
                await asyncio.wait({self._task})

    async def __aenter__(self) -> Pacer[FrameT]:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _check_open(self) -> None:
        if self._error is not None:
            raise PacerClosed("pacer send failed") from self._error
        if self._closed:
            raise PacerClosed("pacer is closed")

    def _deadline(self) -> float:
        """Deadline of the frame about to go, opening a new spurt if the far end ran dry."""
        now = self._clock.now()
        if self._epoch is not None:
            deadline = self._epoch + (self._spurt_frames - self._lead) * self._frame_s
            if now <= deadline + (self._lead + 1) * self._frame_s:
                return deadline
        self._epoch = now
        self._spurt_frames = 0
        return now - self._lead * self._frame_s

    async def _run(self) -> None:
        while True:
            generation, index, frame = await self._queue.get()
            try:
                if generation != self._generation:
                    self.frames_dropped += 1
                    continue
                self._holding = True
                await self._clock.sleep_until(self._deadline())
                if not self._holding:  # flushed while waiting for its deadline
                    continue
                self._holding = False
                self._spurt_frames += 1
                await self._send(frame)
                self.frames_sent += 1
                if self._on_sent is not None:
                    self._on_sent(index)
            except Exception as exc:
                # The transport is gone: stop, and let enqueue and drain report it.
                self._error = exc
                self.flush()
                return
            finally:
                self._queue.task_done()
