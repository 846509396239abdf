"""Stateful sample-rate conversion with libsoxr, one :class:`Resampler` per direction per call.

A stream is resampled chunk by chunk with the filter state carried across chunks, so frame
boundaries leave no clicks and a 20 ms frame is never decimated by dropping samples.

Why soxr's variable-rate engine (``vr=True``): in its default (fixed-rate) engine libsoxr
filters in large FFT blocks and holds output back until a block is full. Measured with 20 ms
chunks, that buffering delays audio by up to ~115 ms (8k->16k, HQ or MQ) or 37 ms (48k->16k),
and output arrives in bursts. The variable-rate engine streams steadily, lagging at most 30 ms
(8k->16k), 15 ms (16k->8k), 12.5 ms (48k->16k) or 15 ms (16k->48k). Its passband is flat
(within 0.01 dB) to 0.9 x the lower Nyquist frequency (3.6 kHz at 8 kHz, above the 3.4 kHz
telephone band) and aliases are rejected by over 100 dB. The price is CPU: 10-40 µs per 20 ms
frame instead of 3-5 µs (``loadtest/bench_media.py``), small beside a codec. With a fixed
ratio this engine ignores the quality preset (HQ and MQ give identical output), so none is
exposed.

Why float32 inside: with int16 input and output libsoxr adds TPDF dither, so the same audio
resampled twice, or in different chunk sizes, gives different samples. Converting at the edges
(with rounding and clipping) makes the output deterministic and independent of chunking.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import soxr
from numpy.typing import NDArray

from inzwa_voice.media.framing import pcm16_to_float

_SCALE: Final = 32768.0
_NO_SAMPLES: Final = np.zeros(0, dtype=np.float32)


def _to_int16(samples: NDArray[np.float32]) -> NDArray[np.int16]:
    scaled = np.rint(samples * np.float32(_SCALE))
    clipped: NDArray[np.int16] = np.clip(scaled, -32768, 32767).astype(np.int16)
    return clipped


class Resampler:
    """Resamples one mono int16 stream from ``in_rate`` to ``out_rate``.

    :meth:`process` returns whatever output is ready (its length varies around
    ``len(samples) * out_rate / in_rate`` while the filter fills); :meth:`flush` returns the
    tail at the end of a stream and makes the resampler ready for a new one. Equal rates pass
    samples through untouched.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError("sample rates must be positive")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = (
            soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", vr=True) if in_rate != out_rate else None
        )

    def process(self, samples: NDArray[np.int16]) -> NDArray[np.int16]:
        """Feed a chunk of any length; return the output that is ready now."""
        if self._stream is None:
            return samples
        return _to_int16(self._stream.resample_chunk(pcm16_to_float(samples)))

    def flush(self) -> NDArray[np.int16]:
        """End the stream: return the samples still inside the filter, then start afresh."""
        if self._stream is None:
            return np.zeros(0, dtype=np.int16)
        tail = self._stream.resample_chunk(_NO_SAMPLES, last=True)
        self._stream.clear()
        return _to_int16(tail)

    def reset(self) -> None:
        """Drop the buffered samples (barge-in: what was queued must not be heard)."""
        if self._stream is not None:
            self._stream.clear()
