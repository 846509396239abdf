"""Exact 20 ms frames out of audio that arrives in arbitrary chunks.

Transports and engines deliver audio in whatever sizes suit them (a 160-byte Twilio payload, a
TTS sentence, a resampler's uneven output); VAD, the pacer and every codec want fixed frames.
:class:`Framer` is the one place that re-cuts a stream, so no stage has to think about
remainders. The wire format of PCM16 is little-endian everywhere we meet it (WAV, AudioSocket,
the native WebSocket), so the byte helpers say so explicitly instead of trusting the host.

The frame constants are the core's (one definition of a frame for every layer), re-exported
here for the media code that cuts frames.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from numpy.typing import NDArray

from inzwa_voice.core import FRAME_BYTES, FRAME_MS, FRAME_SAMPLES, PIPELINE_RATE

__all__ = [
    "FRAME_BYTES",
    "FRAME_MS",
    "FRAME_SAMPLES",
    "PIPELINE_RATE",
    "Framer",
    "bytes_to_pcm16",
    "pcm16_to_bytes",
    "pcm16_to_float",
]

_EMPTY: Final = np.zeros(0, dtype=np.int16)


def bytes_to_pcm16(data: bytes | bytearray | memoryview) -> NDArray[np.int16]:
    """Little-endian PCM16 bytes to int16 samples, without copying on little-endian hosts.

    The result may be a read-only view of ``data``. An odd length means the peer broke the
    framing (or a buffer was split mid-sample), which must not be papered over: ValueError.
    """
    if len(data) % 2:
        raise ValueError(f"PCM16 needs an even number of bytes, got {len(data)}")
    return np.frombuffer(data, dtype="<i2").astype(np.int16, copy=False)


def pcm16_to_bytes(samples: NDArray[np.int16]) -> bytes:
    """int16 samples to little-endian PCM16 bytes."""
    return samples.astype("<i2", copy=False).tobytes()


def pcm16_to_float(samples: NDArray[np.int16]) -> NDArray[np.float32]:
    """int16 samples as float32 in [-1, 1), the scale the VAD, ASR and resampler take."""
    return samples.astype(np.float32) / np.float32(32768.0)


class Framer:
    """Cuts a stream of int16 samples into frames of exactly ``frame_samples``.

    Frames are returned as soon as they are complete; fewer than ``frame_samples`` samples wait
    for the next :meth:`push`. Returned frames never share memory with the input, so callers
    may keep or modify them.
    """

    def __init__(self, frame_samples: int = FRAME_SAMPLES) -> None:
        if frame_samples <= 0:
            raise ValueError("frame_samples must be positive")
        self.frame_samples = frame_samples
        self._pending = _EMPTY

    @property
    def pending(self) -> int:
        """Samples held back until the next frame is complete."""
        return len(self._pending)

    def push(self, samples: NDArray[np.int16]) -> list[NDArray[np.int16]]:
        """Add samples; return every frame they complete (possibly none)."""
        data = np.concatenate((self._pending, samples.astype(np.int16, copy=False)))
        whole = len(data) - len(data) % self.frame_samples
        self._pending = data[whole:].copy()
        return list(data[:whole].reshape(-1, self.frame_samples))

    def flush(self, pad: bool = True) -> list[NDArray[np.int16]]:
        """Return the held-back tail and start empty again.

        With ``pad`` the tail is completed with silence into one full frame, which is what a
        leg sends at the end of an utterance; without it the short tail is returned as is. An
        empty tail gives an empty list either way.
        """
        tail, self._pending = self._pending, _EMPTY
        if not len(tail):
            return []
        if pad:
            tail = np.concatenate((tail, np.zeros(self.frame_samples - len(tail), dtype=np.int16)))
        return [tail]
