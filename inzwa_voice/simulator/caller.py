"""A simulated caller: speaks real audio into a leg in real time and records what comes back.

Like a phone, the caller sends a 20 ms frame every 20 ms for the whole call (silence between
utterances), so the gateway's VAD and endpointing see exactly what a live line delivers. Time
is the caller's media clock: frames sent so far. Everything received is stamped with it, so
tests assert barge-in in media time (bot audio received after the caller's first voiced
frame) rather than wall-clock time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inzwa_voice.engines.base import PCM16

FRAME_MS = 20
QUIET_S = 0.4  # no bot audio for this long after some: the bot has stopped talking


class Refused(Exception):
    """The gateway refused the call: what the caller was told (the ``busy`` event's authored
    words and the bot audio before the refusal, on legs that carry them) and the close code."""

    def __init__(self, close_code: int | None, busy_text: str | None, busy_audio_ms: float) -> None:
        super().__init__(f"refused (close code {close_code}): {busy_text or 'no busy message'}")
        self.close_code = close_code
        self.busy_text = busy_text
        self.busy_audio_ms = busy_audio_ms


@dataclass
class Received:
    media_ms: int
    samples: int


@dataclass
class Timeline:
    """What the caller heard and saw, on its media clock."""

    audio: list[Received] = field(default_factory=list)
    events: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    first_voiced_ms: list[int] = field(default_factory=list)  # media time each utterance started

    def audio_ms_after(self, media_ms: int, rate: int) -> float:
        """Milliseconds of bot audio received at or after caller media time ``media_ms``."""
        return sum(r.samples for r in self.audio if r.media_ms >= media_ms) * 1000 / rate

    def received_at(self, event: dict[str, Any]) -> int:
        """The media time ``event`` (this very object) was received at."""
        return next(media_ms for media_ms, seen in self.events if seen is event)

    def bot_spoke_during(self, start_ms: int, end_ms: int) -> bool:
        """Whether bot audio, or the start of an answer (``tts.start``), reached the caller in
        ``[start_ms, end_ms)``: while it was still asking, it must hear nothing, however long
        it pauses between its sentences."""
        return any(start_ms <= r.media_ms < end_ms and r.samples for r in self.audio) or any(
            start_ms <= media_ms < end_ms and event.get("type") == "tts.start" for media_ms, event in self.events
        )


@dataclass
class _AudioWaiter:
    """Someone waiting for ``needed`` samples of bot audio received at or after ``after_ms``."""

    after_ms: int
    needed: int
    seen: int
    future: asyncio.Future[None]


# Someone waiting for an event: which one (media time received, event), the future, and whether
# it is a ``wait_for`` (which reads the events in order).
_EventWaiter = tuple[Callable[[int, dict[str, Any]], bool], asyncio.Future[dict[str, Any]], bool]


class Caller:
    """The transport-independent half: pacing the caller's audio and keeping the timeline."""

    # How the leg shows that the bot stopped for a barge-in, and whether it reports the
    # gateway's per-stage turn latency (only legs that carry events do).
    barge_in_event: str | None = "barge_in"
    stage_metrics = True

    @property
    def external_id(self) -> str | None:
        """The id the gateway records the call under as the transport's own (``external_id``
        in ``/v1/admin/calls``), for legs whose wire carries no events; None elsewhere."""
        return None

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.frame_samples = rate * FRAME_MS // 1000
        self.timeline = Timeline()
        self.sent_frames = 0
        self._script: deque[PCM16] = deque()
        self._bot_audio: list[PCM16] = []
        self._bot_samples = 0  # in _bot_audio
        self._event_waiters: list[_EventWaiter] = []
        self._events_read = 0  # timeline.events up to here have been read by wait_for
        self._sender: asyncio.Task[None] | None = None
        self._audio_waiters: list[_AudioWaiter] = []
        self._quiet = asyncio.Event()
        self._quiet_timer: asyncio.TimerHandle | None = None
        self._bot_spoke_at = 0.0  # loop time of the last bot audio
        self._idle = asyncio.Event()
        self._started = 0.0
        self.closed = asyncio.Event()

    @property
    def media_ms(self) -> int:
        return self.sent_frames * FRAME_MS

    async def connect(self, **start: Any) -> dict[str, Any]:
        """Open the call and start sending audio; returns the leg's first event."""
        raise NotImplementedError

    async def send_frame(self, frame: PCM16) -> None:
        raise NotImplementedError

    async def hang_up(self) -> None:
        raise NotImplementedError

    async def greeting_done(self) -> None:
        """Wait until the greeting has played (legs without events override this)."""
        await self.wait_for("tts.end")

    def start_sending(self) -> None:
        self._started = _now()
        self._sender = asyncio.ensure_future(self._send_loop())

    async def _send_loop(self) -> None:
        silence = np.zeros(self.frame_samples, dtype=np.int16)
        while not self.closed.is_set():
            if self._script:
                frame = self._script.popleft()
            else:
                frame = silence
                self._idle.set()
            await self.send_frame(frame)
            self.sent_frames += 1
            deadline = self._started + self.sent_frames * FRAME_MS / 1000
            await asyncio.sleep(max(0.0, deadline - _now()))

    def say(self, pcm: PCM16) -> int:
        """Queue speech after what is already queued; returns the media time it will start at."""
        start = self.media_ms + len(self._script) * FRAME_MS
        self.timeline.first_voiced_ms.append(start)
        pad = (-len(pcm)) % self.frame_samples
        padded = np.concatenate([pcm, np.zeros(pad, dtype=np.int16)])
        self._script.extend(padded.reshape(-1, self.frame_samples))
        self._idle.clear()
        return start

    async def said(self) -> None:
        """Wait until everything queued has been sent."""
        await self._idle.wait()

    def on_audio(self, pcm: PCM16) -> None:
        self.timeline.audio.append(Received(self.media_ms, len(pcm)))
        self._bot_audio.append(pcm)
        self._bot_samples += len(pcm)
        if len(pcm):
            self._bot_spoke()
        for waiter in list(self._audio_waiters):
            if self.media_ms >= waiter.after_ms:
                waiter.seen += len(pcm)
            if waiter.seen >= waiter.needed and not waiter.future.done():
                waiter.future.set_result(None)

    def _bot_spoke(self) -> None:
        self._bot_spoke_at = _now()
        self._quiet.clear()
        if self._quiet_timer is not None:
            self._quiet_timer.cancel()
        self._quiet_timer = asyncio.get_running_loop().call_later(QUIET_S, self._quiet.set)

    async def bot_quiet(self, timeout: float = 60.0, quiet_s: float = QUIET_S) -> None:
        """Wait until bot audio has flowed and then stopped for ``quiet_s`` (for legs without
        events, this is how a caller knows the bot finished or stopped for a barge-in; a
        longer ``quiet_s`` does not mistake a gap between two phrases for the end)."""
        async with asyncio.timeout(timeout):
            while True:
                await self._quiet.wait()
                left = quiet_s - (_now() - self._bot_spoke_at)
                if left <= 0:
                    return
                await asyncio.sleep(left)  # then look again: more audio may have come

    async def heard(self, ms: int, timeout: float = 60.0) -> None:
        """Wait until ``ms`` of bot audio has arrived since the last ``clear_bot_audio``."""
        await self._wait_audio(_AudioWaiter(-1, ms * self.rate // 1000, self._bot_samples, self._future()), timeout)

    async def heard_after(self, media_ms: int, ms: int, timeout: float | None = 60.0) -> None:
        """Wait until ``ms`` of bot audio has arrived at or after caller media time ``media_ms``
        (the answer to what the caller finished saying then, not a reply into its pauses)."""
        seen = sum(r.samples for r in self.timeline.audio if r.media_ms >= media_ms)
        await self._wait_audio(_AudioWaiter(media_ms, ms * self.rate // 1000, seen, self._future()), timeout)

    async def _wait_audio(self, waiter: _AudioWaiter, timeout: float | None) -> None:
        if waiter.seen >= waiter.needed:
            return
        self._audio_waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter.future
        finally:
            self._audio_waiters.remove(waiter)

    @staticmethod
    def _future() -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    def on_event(self, event: dict[str, Any]) -> None:
        self.timeline.events.append((self.media_ms, event))
        for waiter in list(self._event_waiters):
            match, future, ordered = waiter
            if not future.done() and match(self.media_ms, event):
                future.set_result(event)
                self._event_waiters.remove(waiter)
                if ordered:
                    self._events_read = len(self.timeline.events)

    async def _wait_event(self, waiter: _EventWaiter, timeout: float | None) -> dict[str, Any]:
        self._event_waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                return await waiter[1]
        finally:
            if waiter in self._event_waiters:
                self._event_waiters.remove(waiter)

    async def wait_for(self, kind: str, timeout: float = 60.0) -> dict[str, Any]:
        """The first event of ``kind`` after the last one a ``wait_for`` returned: the client's
        events are read in order, so one that came in the same burst as the event waited for
        before (a ready answer's ``tts.start`` right behind its ``asr.final``) is not missed."""
        for index in range(self._events_read, len(self.timeline.events)):
            event = self.timeline.events[index][1]
            if event.get("type") == kind:
                self._events_read = index + 1
                return event
        return await self._wait_event((lambda _, event: event.get("type") == kind, self._future(), True), timeout)

    async def event_after(
        self,
        media_ms: int,
        kind: str,
        where: Callable[[dict[str, Any]], bool] = lambda _: True,
        timeout: float | None = 60.0,
    ) -> dict[str, Any]:
        """The first event of ``kind`` (and ``where``) received at or after caller media time
        ``media_ms``, whether or not a ``wait_for`` read past it; ``wait_for``'s place stays."""

        def match(received_ms: int, event: dict[str, Any]) -> bool:
            return received_ms >= media_ms and event.get("type") == kind and where(event)

        for received_ms, event in self.timeline.events:
            if match(received_ms, event):
                return event
        return await self._wait_event((match, self._future(), False), timeout)

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [e for _, e in self.timeline.events if e.get("type") == kind]

    def bot_audio(self) -> PCM16:
        return np.concatenate(self._bot_audio) if self._bot_audio else np.zeros(0, dtype=np.int16)

    def clear_bot_audio(self) -> None:
        self._bot_audio.clear()
        self._bot_samples = 0

    async def stop_sending(self) -> None:
        self.closed.set()
        if self._quiet_timer is not None:
            self._quiet_timer.cancel()
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender


def _now() -> float:
    """The event loop's clock (monotonic; virtual in the simulator's own tests)."""
    return asyncio.get_running_loop().time()
