"""G.711 μ-law and A-law with numpy lookup tables.

The tables are built once from the ITU-T G.191 reference code (``ulaw_compress``,
``alaw_compress`` and their ``expand`` twins in the STL's ``g711.c``), so every sample is coded
exactly as the standard's reference software codes it. Encoding indexes a 65536-entry table
with the uint16 view of each sample and decoding a 256-entry table: one numpy gather per frame,
with no per-sample Python and no dependency on ``audioop`` (deprecated, removed in 3.13).

A-law matches ``audioop`` bit for bit. μ-law differs from ``audioop`` for some negative
samples: ``audioop`` (the Sun reference code) takes the magnitude of a negative sample as
``-(x >> 2)`` where G.191 uses the one's complement ``~x >> 2``, so ``audioop`` codes ``x`` as
G.191 codes ``x - 4``. G.191 is symmetric (``-1`` is coded as negative zero, ``0x7F``); both
decode identically.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from numpy.typing import NDArray

_ALL_SAMPLES: Final = np.arange(65536, dtype=np.uint16).view(np.int16).astype(np.int32)
_ALL_CODES: Final = np.arange(256, dtype=np.int32)


def _bit_length(values: NDArray[np.int32]) -> NDArray[np.int32]:
    """``int.bit_length`` for non-negative arrays (values below 2**16)."""
    powers = 1 << np.arange(17, dtype=np.int32)
    return np.searchsorted(powers, values, side="right").astype(np.int32)


def _ulaw_compress(x: NDArray[np.int32]) -> NDArray[np.uint8]:
    magnitude = np.where(x < 0, ~x, x) >> 2
    biased = np.minimum(magnitude + 33, 0x1FFF)
    segment = _bit_length(biased >> 6) + 1
    mantissa = 0x0F - ((biased >> segment) & 0x0F)
    code = ((8 - segment) << 4) | mantissa
    signed: NDArray[np.uint8] = np.where(x >= 0, code | 0x80, code).astype(np.uint8)
    return signed


def _ulaw_expand(code: NDArray[np.int32]) -> NDArray[np.int16]:
    inverted = ~code
    exponent = (inverted >> 4) & 0x07
    mantissa = inverted & 0x0F
    step = 4 << (exponent + 1)
    magnitude = (0x80 << exponent) + step * mantissa + step // 2 - 4 * 33
    return np.where(code < 0x80, -magnitude, magnitude).astype(np.int16)


def _alaw_compress(x: NDArray[np.int32]) -> NDArray[np.uint8]:
    magnitude = np.where(x < 0, ~x, x) >> 4
    exponent = np.maximum(_bit_length(magnitude) - 4, 0)
    mantissa = np.where(exponent > 0, (magnitude >> np.maximum(exponent - 1, 0)) - 16, magnitude)
    code = (exponent << 4) + mantissa
    return (np.where(x >= 0, code | 0x80, code) ^ 0x55).astype(np.uint8)


def _alaw_expand(code: NDArray[np.int32]) -> NDArray[np.int16]:
    folded = (code ^ 0x55) & 0x7F
    exponent = folded >> 4
    mantissa = folded & 0x0F
    mantissa = np.where(exponent > 0, mantissa + 16, mantissa)
    magnitude = ((mantissa << 4) + 8) << np.maximum(exponent - 1, 0)
    signed: NDArray[np.int16] = np.where(code > 0x7F, magnitude, -magnitude).astype(np.int16)
    return signed


_ULAW_ENCODE: Final = _ulaw_compress(_ALL_SAMPLES)
_ULAW_DECODE: Final = _ulaw_expand(_ALL_CODES)
_ALAW_ENCODE: Final = _alaw_compress(_ALL_SAMPLES)
_ALAW_DECODE: Final = _alaw_expand(_ALL_CODES)


def _encode(table: NDArray[np.uint8], samples: NDArray[np.int16]) -> bytes:
    if samples.dtype != np.int16:
        raise TypeError(f"G.711 encodes int16 samples, got {samples.dtype}")
    return table[samples.view(np.uint16)].tobytes()


def _decode(table: NDArray[np.int16], data: bytes | bytearray | memoryview) -> NDArray[np.int16]:
    return table[np.frombuffer(data, dtype=np.uint8)]


def ulaw_encode(samples: NDArray[np.int16]) -> bytes:
    """Encode int16 PCM to μ-law bytes, one byte per sample."""
    return _encode(_ULAW_ENCODE, samples)


def ulaw_decode(data: bytes | bytearray | memoryview) -> NDArray[np.int16]:
    """Decode μ-law bytes to a new int16 array."""
    return _decode(_ULAW_DECODE, data)


def alaw_encode(samples: NDArray[np.int16]) -> bytes:
    """Encode int16 PCM to A-law bytes, one byte per sample."""
    return _encode(_ALAW_ENCODE, samples)


def alaw_decode(data: bytes | bytearray | memoryview) -> NDArray[np.int16]:
    """Decode A-law bytes to a new int16 array."""
    return _decode(_ALAW_DECODE, data)
