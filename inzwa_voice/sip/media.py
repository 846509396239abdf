"""One call's audio between pjsua2's media clock and the asyncio loop.

pjsua2 mixes every call through its conference bridge, which ticks every 20 ms on one clock
thread for all calls. Each call gets an :class:`AudioPort` on the bridge, connected both ways
to the call's stream: the bridge hands the port the caller's audio (``onFrameReceived``) and
pulls the bot's audio from it (``onFrameRequested``). Both run on the clock thread, so they
only move bytes: never block, never call pjsua2, never wait for the loop.

The bridge runs at the pipeline's 16 kHz and converts each call's codec rate itself (8 kHz
PCMU/PCMA, 16 kHz G.722) with its resampler, once per direction. The port therefore speaks
20 ms frames of 16 kHz PCM16, exactly the session's frames: resampling in Python as well would
only add a second conversion (and for 8 kHz codecs a third, as the bridge would convert our
8 kHz back to its 16 kHz clock).

Outbound pacing is the bridge's: it pulls one frame per tick, so the bot's audio leaves in real
time by construction. :class:`MediaPipe` holds a bounded queue for it (the call's ``play``
waits while it is full), returns nothing on underrun (the bridge then sends silence), and
advances its :class:`~inzwa_voice.media.playout.Playout` as the bridge takes each frame (on the
loop: the clock thread only posts it there).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import pjsua2 as pj

from inzwa_voice.core import FRAME_BYTES, FRAME_MS, PCM16, PIPELINE_RATE
from inzwa_voice.media.framing import bytes_to_pcm16, pcm16_to_bytes
from inzwa_voice.media.playout import Playout

OUT_FRAMES: Final = 25
"""Bot frames queued ahead of the bridge: 500 ms rides out a busy event loop. Barge-in drops
them all at once (``flush``), so the depth costs no interruption latency."""
SILENCE: Final = bytes(FRAME_BYTES)


def _vector_bytes_slow(vector: Any) -> bytes:
    return bytes(vector)


def _vector_bytes_fast(vector: Any) -> bytes:
    """The bytes of a SWIG ``ByteVector`` (``std::vector<unsigned char>``), read in one copy.

    SWIG converts a vector to Python one element at a time: 0.5 ms per 640-byte frame, every
    20 ms per call, on the clock thread. libstdc++ lays a vector out as three pointers (begin,
    end, end of storage), so the data is read directly from ``begin`` (5 µs). The layout is
    checked once at import against a known vector (:data:`vector_bytes`).
    """
    begin, end = ctypes.cast(int(vector.this), ctypes.POINTER(ctypes.c_void_p))[0:2]
    return ctypes.string_at(begin, end - begin) if begin and end else b""


def _pick_vector_reader() -> Callable[[Any], bytes]:
    probe = bytes(range(256)) * 3
    try:
        fast = _vector_bytes_fast(pj.ByteVector(probe)) == probe
    except (TypeError, ValueError, OSError):
        fast = False
    return _vector_bytes_fast if fast else _vector_bytes_slow


vector_bytes: Final = _pick_vector_reader()


class MediaPipe:
    """The frames of one call, shared by the clock thread and the loop.

    Thread safety rests on ``deque.append``/``popleft``/``clear`` being atomic: the loop appends
    bot frames and clears them on a flush, the clock thread pops them to send, and neither
    waits. Everything else (the playout, the inbound sink) is touched on the loop only; the
    clock thread reaches it through ``call_soon_threadsafe``.

    Each queued frame carries the flush generation it was queued in. A frame the bridge took
    just before a flush is reported after it, when the interrupted playout has already settled
    what was heard: such a report is dropped, so ``playout`` may count one frame less than the
    caller heard, never one more.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int = OUT_FRAMES) -> None:
        self.playout = Playout()
        self._loop = loop
        self._capacity = capacity
        self._out: deque[tuple[int, bytes]] = deque()
        self._sink: Callable[[PCM16], None] | None = None
        self._space = asyncio.Event()
        self._generation = 0
        self._closed = False

    # ----- clock thread -----
    def _post(self, callback: Callable[[Any], None], arg: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed under a port that is going away
            self._loop.call_soon_threadsafe(callback, arg)

    def received(self, data: bytes) -> None:
        self._post(self._deliver, data)

    def requested(self) -> bytes | None:
        """The next bot frame, or None: nothing queued (the bridge sends silence)."""
        try:
            generation, data = self._out.popleft()
        except IndexError:
            return None
        self._post(self._taken, generation)
        return data

    # ----- loop -----
    def connect(self, sink: Callable[[PCM16], None]) -> None:
        """Start delivering the caller's frames to ``sink``."""
        self._sink = sink

    def _deliver(self, data: bytes) -> None:
        if self._sink is not None and not self._closed:
            self._sink(bytes_to_pcm16(data[: len(data) - len(data) % 2]))

    def _taken(self, generation: int) -> None:
        if generation == self._generation:
            self.playout.advance()
        self._space.set()

    async def play(self, frame: PCM16) -> None:
        """Queue one 20 ms 16 kHz frame; waits while the queue is full (the bridge drains it).
        A frame whose queue was flushed while it waited is dropped; once the pipe is closed,
        nothing queued will play."""
        generation = self._generation
        while len(self._out) >= self._capacity and not self._closed:
            self._space.clear()
            await self._space.wait()
        if self._closed:
            self.playout.interrupt()
        elif generation == self._generation:
            self._out.append((generation, pcm16_to_bytes(frame)))

    def flush(self) -> None:
        """Drop every queued frame (barge-in)."""
        self._generation += 1
        self._out.clear()
        self._space.set()

    def close(self) -> None:
        """No more audio either way: queued frames are dropped, waits on the playout end
        (nothing more will play), a waiting ``play`` returns, and later ones queue nothing."""
        self._closed = True
        self.flush()
        self.playout.interrupt()


class AudioPort(pj.AudioMediaPort):  # type: ignore[misc]  # pjsua2 ships no type information
    """A call's port on the conference bridge; create and destroy it on the pjsua2 thread."""

    def __init__(self, pipe: MediaPipe, name: str) -> None:
        super().__init__()
        self._pipe = pipe
        fmt = pj.MediaFormatAudio()
        fmt.init(pj.PJMEDIA_FORMAT_PCM, PIPELINE_RATE, 1, FRAME_MS * 1000, 16)
        self.createPort(name, fmt)

    def onFrameReceived(self, frame: Any) -> None:  # clock thread
        audio = frame.type == pj.PJMEDIA_FRAME_TYPE_AUDIO and frame.size
        self._pipe.received(vector_bytes(frame.buf) if audio else SILENCE)

    def onFrameRequested(self, frame: Any) -> None:  # clock thread
        data = self._pipe.requested()
        if data is not None:
            frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO
            frame.buf = pj.ByteVector(data)
