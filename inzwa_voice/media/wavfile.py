"""Reading a WAV file as pipeline-ready PCM16, for tools (the call simulator, the pcap maker).

Only the standard library's ``wave`` and soxr: the tools that read a caller's question from disk
must not pay for importing PyAV.
"""

from __future__ import annotations

import wave
from pathlib import Path

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
