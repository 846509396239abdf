"""A two-channel WAV file written while the call goes on, in small chunks, never held whole.

Frames arrive in pairs, one per 20 ms of media time (left and right), and are interleaved into a
half-second chunk; a full chunk is handed to a writer thread (the disk may stall, the event loop
must not). The header's two sizes are rewritten after every chunk, so a file whose gateway died
mid-call is a valid WAV of everything up to its last chunk.

Memory per file is one chunk being filled plus at most ``MAX_BACKLOG`` chunks waiting for the
disk; when the disk falls that far behind, further chunks are dropped (``on_drop`` counts them)
rather than buffered without end. The file stays valid, only shorter than the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import BinaryIO, Final

import numpy as np

from inzwa_voice.core import FRAME_MS, FRAME_SAMPLES, PCM16, PIPELINE_RATE
from inzwa_voice.media.wavfile import DATA_SIZE_AT, RIFF_SIZE_AT, WAV_HEADER_BYTES, wav_header, wav_size

log = logging.getLogger(__name__)

CHUNK_FRAMES: Final = 25
"""Frames (of 20 ms) per write: half a second, 32 KB of two-channel 16-bit audio."""
MAX_BACKLOG: Final = 8
"""Chunks that may wait for the disk (4 s of audio) before the next ones are dropped."""
CHANNELS: Final = 2


class TwoChannelWav:
    """One WAV file of 16-bit stereo at the pipeline rate, written through ``executor``.

    The executor must run one job at a time (one worker), so the chunks of a file land in order.
    """

    def __init__(self, path: Path, executor: Executor, *, on_drop: Callable[[], None] | None = None) -> None:
        self.path = path
        self._executor = executor
        self._on_drop = on_drop
        self._chunk = np.zeros((CHUNK_FRAMES * FRAME_SAMPLES, CHANNELS), dtype=np.int16)
        self._filled = 0  # frames in ``_chunk``
        self._pending: deque[Future[None]] = deque()
        self._file: BinaryIO | None = None
        self._data_bytes = 0
        self._failed = False
        self.frames_written = 0  # by the writer thread; read once the writes are awaited
        self.frames_dropped = 0

    @property
    def duration_s(self) -> float:
        """Seconds of audio on disk (once ``close`` returned: in the finished file)."""
        return self.frames_written * FRAME_MS / 1000

    async def open(self) -> None:
        """Create the file (and its folder) with an empty WAV header; raises ``OSError``."""
        await asyncio.wrap_future(self._executor.submit(self._open))

    def write(self, left: PCM16, right: PCM16) -> None:
        """One 20 ms frame of each channel; never blocks."""
        start = self._filled * FRAME_SAMPLES
        self._chunk[start : start + FRAME_SAMPLES, 0] = left
        self._chunk[start : start + FRAME_SAMPLES, 1] = right
        self._filled += 1
        if self._filled == CHUNK_FRAMES:
            self._submit()

    async def close(self) -> None:
        """Write what is left, finish the header and close the file."""
        if self._filled:
            self._submit()
        for future in list(self._pending):
            await asyncio.wrap_future(future)
        self._pending.clear()
        await asyncio.wrap_future(self._executor.submit(self._close))

    def _submit(self) -> None:
        data = self._chunk[: self._filled * FRAME_SAMPLES].tobytes()
        frames, self._filled = self._filled, 0
        while self._pending and self._pending[0].done():
            self._pending.popleft()
        if len(self._pending) < MAX_BACKLOG:
            with contextlib.suppress(RuntimeError):  # the writer has stopped: the gateway is stopping
                self._pending.append(self._executor.submit(self._write, data, frames))
                return
        self.frames_dropped += frames  # the disk is this far behind: drop, never buffer without end
        if self._on_drop is not None:
            self._on_drop()

    # --- in the writer thread -------------------------------------------------------------------

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "wb", buffering=0)  # noqa: SIM115 - closed by ``_close``, chunks later
        try:
            # So even a call that dies at once leaves a valid, empty file.
            file.write(wav_header(PIPELINE_RATE, CHANNELS, 0))
        except OSError:
            file.close()
            raise
        self._file = file

    def _write(self, data: bytes, frames: int) -> None:
        if self._file is None or self._failed:
            return
        try:
            self._file.write(data)
            self._data_bytes += len(data)
            fd = self._file.fileno()
            os.pwrite(fd, wav_size(WAV_HEADER_BYTES - 8 + self._data_bytes), RIFF_SIZE_AT)
            os.pwrite(fd, wav_size(self._data_bytes), DATA_SIZE_AT)
        except OSError as exc:
            self._failed = True  # a full disk: keep what is written, stop trying
            log.error("call recording write failed", extra={"path": str(self.path), "error": str(exc)})
            return
        self.frames_written += frames

    def _close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()
