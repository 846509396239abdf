"""G.711 against the ITU-T G.191 reference values, and against ``audioop`` where it exists."""

from __future__ import annotations

import hashlib
import importlib
import warnings
from types import ModuleType

import numpy as np
import pytest

from inzwa_voice.media.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode


def _load_audioop() -> ModuleType | None:
    """The stdlib reference, deprecated since 3.11 and removed in 3.13."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return importlib.import_module("audioop")
        except ImportError:
            return None


audioop = _load_audioop()

ALL_SAMPLES = np.arange(65536, dtype=np.uint16).view(np.int16)
ALL_CODES = bytes(range(256))

# Edge cases: zero and its neighbours (sign handling), segment boundaries, clipping.
SAMPLES = np.array(
    [0, 1, -1, 2, -2, 3, 4, -4, -5, 8, -8, 100, -100, 1000, -1000, 8158, -8159, 32123, 32124,
     -32124, -32125, 32767, -32768],
    dtype=np.int16,
)  # fmt: skip
ULAW = bytes.fromhex("ffff7fff7ffffe7f7efe7ef273ce4e9f1f808000008000")
ALAW = bytes.fromhex("d5d555d555d5d55555d555d353fa7a8a0aaaaa2a2aaa2a")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_ulaw_golden_vectors() -> None:
    assert ulaw_encode(SAMPLES) == ULAW
    codes = bytes([0x00, 0x0F, 0x70, 0x7E, 0x7F, 0x80, 0xF0, 0xFE, 0xFF])
    assert ulaw_decode(codes).tolist() == [-32124, -16764, -120, -8, 0, 32124, 120, 8, 0]


def test_alaw_golden_vectors() -> None:
    assert alaw_encode(SAMPLES) == ALAW
    codes = bytes([0x00, 0x2A, 0x55, 0x54, 0x80, 0xAA, 0xD5, 0xD4, 0xFF])
    assert alaw_decode(codes).tolist() == [-5504, -32256, -8, -24, 5504, 32256, 8, 24, 848]


def test_whole_tables_are_pinned() -> None:
    """Every one of the 65536 samples and 256 codes, pinned by digest (no audioop needed)."""
    assert sha256(ulaw_encode(ALL_SAMPLES)) == ("455d3ccb989aea3ed20d8783a99859635739069ad7ffab3bfc61f36feb6de709")
    assert sha256(alaw_encode(ALL_SAMPLES)) == ("f77c76aa923ee25617453f87514828a12896227f82ff383bf3bb53d6ac7c2a0f")
    assert sha256(ulaw_decode(ALL_CODES).astype("<i2").tobytes()) == (
        "3dab54339e520bb2c924826e3b72a917a2b612e9fd12fc867500f1d983a75827"
    )
    assert sha256(alaw_decode(ALL_CODES).astype("<i2").tobytes()) == (
        "e04788d110e58ff8c70c93b8480190d973e3b67876b6119abbaec766cc75c174"
    )


@pytest.mark.skipif(audioop is None, reason="audioop was removed in Python 3.13")
def test_matches_audioop() -> None:
    assert audioop is not None
    pcm = ALL_SAMPLES.tobytes()
    assert alaw_encode(ALL_SAMPLES) == audioop.lin2alaw(pcm, 2)
    assert alaw_decode(ALL_CODES).tobytes() == audioop.alaw2lin(ALL_CODES, 2)
    assert ulaw_decode(ALL_CODES).tobytes() == audioop.ulaw2lin(ALL_CODES, 2)
    # audioop's μ-law (Sun's code) takes -(x >> 2) as the magnitude of a negative sample where
    # G.191 takes ~x >> 2: it codes x as G.191 codes x - 4. Non-negative samples agree.
    reference = np.frombuffer(audioop.lin2ulaw(pcm, 2), dtype=np.uint8)
    negative = ALL_SAMPLES < 0
    ours = np.frombuffer(ulaw_encode(ALL_SAMPLES), dtype=np.uint8)
    assert np.array_equal(ours[~negative], reference[~negative])
    shifted = np.maximum(ALL_SAMPLES[negative].astype(np.int32) - 4, -32768).astype(np.int16)
    assert np.array_equal(np.frombuffer(ulaw_encode(shifted), dtype=np.uint8), reference[negative])


def test_ulaw_codes_round_trip() -> None:
    """decode -> encode is the identity, except negative zero (0x7F), which becomes 0xFF."""
    again = ulaw_encode(ulaw_decode(ALL_CODES))
    expected = bytearray(ALL_CODES)
    expected[0x7F] = 0xFF
    assert again == bytes(expected)


def test_alaw_codes_round_trip() -> None:
    assert alaw_encode(alaw_decode(ALL_CODES)) == ALL_CODES


@pytest.mark.parametrize(("encode", "decode"), [(ulaw_encode, ulaw_decode), (alaw_encode, alaw_decode)])
def test_quantisation_error_is_bounded(encode, decode) -> None:
    """Within half of the largest step (512), and within 3.2 % once past the linear segments."""
    samples = ALL_SAMPLES.astype(np.int32)
    error = np.abs(decode(encode(ALL_SAMPLES)).astype(np.int32) - samples)
    unclipped = np.abs(samples) <= 32124  # μ-law's largest level; beyond it the codec clips
    loud = np.abs(samples) > 4096
    assert error[unclipped].max() <= 512
    assert np.all(error[loud] <= 0.032 * np.abs(samples[loud]))


def test_accepts_any_buffer_and_rejects_other_dtypes() -> None:
    assert ulaw_decode(bytearray(b"\xff\x80")).tolist() == [0, 32124]
    assert alaw_decode(memoryview(b"\xd5")).tolist() == [8]
    assert ulaw_encode(np.zeros(0, dtype=np.int16)) == b""
    strided = np.arange(10, dtype=np.int16)[::2]
    assert ulaw_encode(strided) == ulaw_encode(strided.copy())
    with pytest.raises(TypeError):
        ulaw_encode(np.zeros(4, dtype=np.float32))
