"""Audio plumbing the legs share: the caller's audio in, paced bot audio out.

``CallerAudio`` turns whatever a transport delivers (any rate, any chunk size) into the exact
20 ms 16 kHz frames the session takes. ``PacedOutput`` serves every leg whose transport cannot
report playback and that paces its own audio (WebSocket, AudioSocket): a frame counts as played
when the pacer hands it to the wire, and a mark fires once every frame queued before it has gone
out. ``OutputLeg`` gives any leg the Leg's audio methods over its output object, whether that is
a ``PacedOutput``, the WebRTC track aiortc pulls from, or pjsua2's media port.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from inzwa_voice.engines.base import PCM16
from inzwa_voice.media.framing import FRAME_SAMPLES, PIPELINE_RATE, Framer
from inzwa_voice.media.pacer import Pacer
from inzwa_voice.media.resample import Resampler

if TYPE_CHECKING:
    from inzwa_voice.conversation.session import CallSession


class CallerAudio:
    """The caller's audio at the wire rate, resampled and framed into ``feed``."""

    def __init__(self, feed: Callable[[PCM16], None], rate: int) -> None:
        self._feed = feed
        self._resampler = Resampler(rate, PIPELINE_RATE)
        self._framer = Framer(FRAME_SAMPLES)

    def push(self, pcm: PCM16) -> None:
        for frame in self._framer.push(self._resampler.process(pcm)):
            self._feed(frame)

    def flush(self) -> None:
        """Deliver the partial frame held back (padded), e.g. before an explicit end of turn."""
        for frame in self._framer.flush(pad=True):
            self._feed(frame)


class PacedOutput:
    def __init__(
        self,
        send: Callable[[bytes], Awaitable[None]],
        encode: Callable[[PCM16], bytes],
        on_mark: Callable[[str], None],
        *,
        out_rate: int = 16000,
        lead_frames: int = 3,
    ) -> None:
        self._encode = encode
        self._on_mark = on_mark
        self._resampler = Resampler(16000, out_rate)
        self._marks: deque[tuple[int, str]] = deque()
        self._last_index = -1
        self._pacer: Pacer[bytes] = Pacer(send, lead_frames=lead_frames, on_sent=self._sent)

    @property
    def played_frames(self) -> int:
        return self._pacer.frames_sent

    async def play(self, frame: PCM16) -> None:
        self._last_index = await self._pacer.enqueue(self._encode(self._resampler.process(frame)))

    def flush(self) -> int:
        self._resampler.reset()
        for _, name in self._marks:
            self._on_mark(name)  # nothing before them will play: they are as done as they get
        self._marks.clear()
        return self._pacer.flush()

    async def mark(self, name: str) -> None:
        if self._pacer.queued == 0:
            self._on_mark(name)
        else:
            self._marks.append((self._last_index, name))

    def _sent(self, index: int) -> None:
        while self._marks and self._marks[0][0] <= index:
            self._on_mark(self._marks.popleft()[1])

    async def close(self) -> None:
        await self._pacer.close()


class LegOutput(Protocol):
    """Where a leg's bot audio goes, and what it knows of its playback."""

    @property
    def played_frames(self) -> int: ...

    async def play(self, frame: PCM16) -> None: ...

    def flush(self) -> int: ...

    async def mark(self, name: str) -> None: ...


class OutputLeg:
    """The Leg's audio methods, delegated to the leg's output object ``_out``."""

    session: CallSession | None = None
    _out: LegOutput

    @property
    def played_frames(self) -> int:
        return self._out.played_frames

    def _marked(self, name: str) -> None:
        if self.session is not None:
            self.session.marked(name)

    async def play(self, frame: PCM16) -> None:
        await self._out.play(frame)

    def flush(self) -> int:
        return self._out.flush()

    async def mark(self, name: str) -> None:
        await self._out.mark(name)
