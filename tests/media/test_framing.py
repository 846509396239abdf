"""Framer and the PCM16 byte helpers."""

from __future__ import annotations

import numpy as np
import pytest

from inzwa_voice.media.framing import (
    FRAME_BYTES,
    FRAME_SAMPLES,
    Framer,
    bytes_to_pcm16,
    pcm16_to_bytes,
)


def test_pipeline_frame_constants() -> None:
    assert (FRAME_SAMPLES, FRAME_BYTES) == (320, 640)


def test_arbitrary_chunks_become_exact_frames() -> None:
    stream = np.arange(1000, dtype=np.int16)
    framer = Framer(320)
    frames = []
    for start, stop in [(0, 100), (100, 101), (101, 700), (700, 1000)]:
        frames += framer.push(stream[start:stop])
    assert [len(f) for f in frames] == [320, 320, 320]
    assert np.array_equal(np.concatenate(frames), stream[:960])
    assert framer.pending == 40

    tail = framer.flush()
    assert len(tail) == 1 and len(tail[0]) == 320
    assert np.array_equal(tail[0][:40], stream[960:]) and not tail[0][40:].any()
    assert framer.pending == 0 and framer.flush() == []


def test_short_push_returns_nothing_and_flush_without_padding() -> None:
    framer = Framer(160)
    assert framer.push(np.ones(100, dtype=np.int16)) == []
    (tail,) = framer.flush(pad=False)
    assert len(tail) == 100


def test_frames_do_not_share_memory_with_the_input() -> None:
    source = np.zeros(640, dtype=np.int16)
    framer = Framer(320)
    frames = framer.push(source[:500])
    source[:] = 7
    frames[0][:] = 9
    assert not framer.flush()[0][:180].any()
    assert not np.shares_memory(frames[0], source)


def test_frame_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Framer(0)


def test_pcm16_bytes_are_little_endian() -> None:
    samples = bytes_to_pcm16(b"\x01\x00\xff\xff\x00\x80")
    assert samples.dtype == np.int16
    assert samples.tolist() == [1, -1, -32768]
    assert pcm16_to_bytes(samples) == b"\x01\x00\xff\xff\x00\x80"
    assert pcm16_to_bytes(np.array([258], dtype=">i2")) == b"\x02\x01"


def test_odd_byte_count_is_rejected() -> None:
    with pytest.raises(ValueError, match="even"):
        bytes_to_pcm16(b"\x00\x01\x02")
    assert len(bytes_to_pcm16(bytearray(FRAME_BYTES))) == FRAME_SAMPLES
