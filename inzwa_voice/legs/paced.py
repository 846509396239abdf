"""Audio plumbing the legs share: the caller's audio in, paced bot audio out.

``CallerAudio`` turns whatever a transport delivers (any rate, any chunk size) into the exact
20 ms 16 kHz frames the session takes. ``PacedOutput`` serves every leg whose transport cannot
report playback and that paces its own audio (WebSocket, AudioSocket): a frame counts as played
when the pacer hands it to the wire. ``OutputLeg`` gives any leg the Leg's playout methods over
its output object, whether that is a ``PacedOutput``, the WebRTC track aiortc pulls from, or
pjsua2's media port: each keeps a :class:`~inzwa_voice.media.playout.Playout`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from inzwa_voice.conversation.ports import Call
from inzwa_voice.core import FRAME_SAMPLES, PCM16, PIPELINE_RATE
from inzwa_voice.legs.handoffs import record_transfer
from inzwa_voice.media.framing import Framer
from inzwa_voice.media.pacer import Pacer
from inzwa_voice.media.playout import Playout
from inzwa_voice.media.resample import Resampler


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
    """Bot audio encoded and sent at real time; a frame counts as played once it is sent."""

    def __init__(
        self,
        send: Callable[[bytes], Awaitable[None]],
        encode: Callable[[PCM16], bytes],
        *,
        out_rate: int = PIPELINE_RATE,
        lead_frames: int = 3,
    ) -> None:
        self._encode = encode
        self._resampler = Resampler(PIPELINE_RATE, out_rate)
        self.playout = Playout()
        self._pacer: Pacer[bytes] = Pacer(send, lead_frames=lead_frames, on_sent=lambda _: self.playout.advance())

    async def play(self, frame: PCM16) -> None:
        await self._pacer.enqueue(self._encode(self._resampler.process(frame)))

    def flush(self) -> None:
        self._resampler.reset()
        self._pacer.flush()

    async def close(self) -> None:
        await self._pacer.close()


class LegOutput(Protocol):
    """Where a leg's bot audio goes, and what it knows of its playback."""

    playout: Playout

    async def play(self, frame: PCM16) -> None:
        """Queue one frame; the output advances ``playout`` as frames reach the caller."""
        ...

    def flush(self) -> None:
        """Drop every frame not yet sent."""
        ...


class OutputLeg:
    """The Leg's playout methods over the leg's output object ``_out``."""

    _out: LegOutput
    call: Call | None = None
    """The call this leg carries, once admitted: where a transfer's outcome is recorded."""

    @property
    def played_frames(self) -> int:
        return self._out.playout.played

    async def play(self, frame: PCM16) -> int:
        # Counted before it is handed over: the output may send it before ``play`` returns.
        position = self._out.playout.queue()
        await self._out.play(frame)
        return position

    def interrupt(self) -> int:
        self._out.flush()
        return self._out.playout.interrupt()

    async def wait_for_playout(self, position: int) -> bool:
        return await self._out.playout.wait_for(position)

    async def transfer(self, target: str) -> bool:
        """A transport that cannot move its call (WebSocket, WebRTC): the ``transfer`` event
        gives the client the target to offer (the widget shows it as a link), and the caller
        stays with the bot until they hang up."""
        await record_transfer(self.call, target, ok=False, reason="offered to the client; the call stays with the bot")
        return False
