"""WAV files: reading one as pipeline-ready PCM16, for tools (the call simulator, the pcap maker),
and the header of one being written (a ``wav`` speech response, a call recording).

Only the standard library and soxr: the tools that read a caller's question from disk, and the
recorder, must not pay for importing PyAV.
"""

from __future__ import annotations

import struct
import wave
from pathlib import Path
from typing import Final

import numpy as np
import soxr

from inzwa_voice.core import PCM16


def read_wav(path: Path, rate: int) -> PCM16:
    """A 16-bit PCM WAV file, mixed to mono and resampled to ``rate``."""
    with wave.open(str(path)) as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV files are supported")
        audio = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, wav.getnchannels())
        mono = audio.mean(axis=1).astype(np.float32)
        resampled = soxr.resample(mono, wav.getframerate(), rate)
    return np.asarray(np.clip(resampled, -32768, 32767), dtype=np.int16)


WAV_HEADER_BYTES: Final = 44
RIFF_SIZE_AT: Final = 4
"""Where the header holds the size of the rest of the file ..."""
DATA_SIZE_AT: Final = 40
"""... and the size of the audio: both rewritten in place by a writer that grows the file."""


def wav_size(value: int) -> bytes:
    """A header size field; past 4 GiB (18 hours of a two-channel call) it stays at its maximum,
    as players expect."""
    return struct.pack("<I", min(value, 0xFFFFFFFF))


def wav_header(sample_rate: int, channels: int, data_bytes: int) -> bytes:
    """The 44-byte RIFF/WAVE header of ``data_bytes`` of 16-bit PCM."""
    block = channels * 2  # bytes per sample frame
    fmt = struct.pack("<HHIIHH", 1, channels, sample_rate, sample_rate * block, block, 16)  # 1: PCM
    return (
        b"RIFF"
        + wav_size(WAV_HEADER_BYTES - 8 + data_bytes)
        + b"WAVEfmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + wav_size(data_bytes)
    )
