"""Opus round trips through real libopus: tone fidelity, packetisation, loss concealment."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from inzwa_voice.media.opus import OpusDecoder, OpusEncoder

RATE = 48000
FRAME = 960


def tone(freq: float = 440.0, seconds: float = 1.0, rate: int = RATE) -> NDArray[np.int16]:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def encode_all(encoder: OpusEncoder, samples: NDArray[np.int16]) -> list[bytes]:
    return [encoder.encode(frame) for frame in samples.reshape(-1, encoder.frame_samples)]


def snr_db(reference: NDArray[np.float64], decoded: NDArray[np.float64]) -> float:
    return float(10 * np.log10(np.sum(reference**2) / np.sum((reference - decoded) ** 2)))


def best_alignment(reference: NDArray[np.int16], decoded: NDArray[np.int16], lags: range) -> tuple[int, float]:
    """The lag (codec delay) that best aligns ``decoded`` with ``reference``, and its SNR."""
    ref = reference[4800:-1920].astype(np.float64)
    out = decoded.astype(np.float64)

    def snr_at(lag: int) -> float:
        return snr_db(ref, out[4800 + lag : len(out) - 1920 + lag])

    lag = max(lags, key=snr_at)
    return lag, snr_at(lag)


def test_tone_survives_the_round_trip() -> None:
    source = tone()
    packets = encode_all(OpusEncoder(), source)
    assert len(packets) == 50
    assert all(isinstance(p, bytes) and p for p in packets)
    assert 12_000 < sum(map(len, packets)) * 8 < 48_000  # about the 24 kbit/s default

    decoder = OpusDecoder()
    decoded = np.concatenate([decoder.decode(p) for p in packets])
    assert decoded.dtype == np.int16
    assert decoded.shape == (RATE,)

    steady = decoded[4800:].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(steady * np.hanning(len(steady))))
    peak = np.fft.rfftfreq(len(steady), 1 / RATE)[np.argmax(spectrum)]
    assert abs(peak - 440) <= 5

    # Search one period of the tone around the nominal 312-sample look-ahead.
    lag, snr = best_alignment(source, decoded, range(260, 370))
    aligned = decoded[4800 + lag : RATE - 1920 + lag].astype(np.float64)
    assert np.corrcoef(source[4800:-1920], aligned)[0, 1] > 0.98
    assert snr > 15


def test_codec_delay_is_the_lookahead() -> None:
    t = np.arange(RATE) / RATE
    chirp = (8000 * np.sin(2 * np.pi * (200 + 1500 * t) * t)).astype(np.int16)
    decoder = OpusDecoder()
    decoded = np.concatenate([decoder.decode(p) for p in encode_all(OpusEncoder(), chirp)])
    lag, snr = best_alignment(chirp, decoded, range(0, 960))
    assert 300 <= lag <= 320  # 6.5 ms
    assert snr > 10


def test_lost_packet_is_concealed() -> None:
    """``decode(None)`` runs libopus PLC: a frame that continues the tone, not silence."""
    source = tone()
    packets = encode_all(OpusEncoder(), source)
    decoder = OpusDecoder()
    frames = [decoder.decode(None if i == 25 else p) for i, p in enumerate(packets)]
    assert all(len(f) == FRAME for f in frames)
    rms = [float(np.sqrt(np.mean(f.astype(np.float64) ** 2))) for f in frames]
    tone_rms = 0.5 * 32767 / np.sqrt(2)
    assert 0.25 * tone_rms < rms[25] < 2 * tone_rms
    assert all(0.8 * tone_rms < r < 1.2 * tone_rms for r in rms[27:])


def test_loss_before_any_packet_is_silence() -> None:
    assert np.array_equal(OpusDecoder().decode(None), np.zeros(FRAME, dtype=np.int16))
    assert OpusDecoder(2, frame_ms=10).decode(None).shape == (480, 2)


def test_16khz_and_stereo() -> None:
    encoder = OpusEncoder(16000, channels=2)
    assert encoder.frame_samples == 320
    mono = tone(seconds=0.02, rate=16000)
    packet = encoder.encode(np.stack([mono, mono], axis=1))
    assert OpusDecoder(channels=2).decode(packet).shape == (FRAME, 2)
    # A stereo stream decoded as mono is down-mixed (what a WebRTC leg does).
    assert OpusDecoder(channels=1).decode(packet).shape == (FRAME,)


def test_bitrate_is_configurable() -> None:
    source = tone()
    low = sum(map(len, encode_all(OpusEncoder(bitrate=12_000), source)))
    high = sum(map(len, encode_all(OpusEncoder(bitrate=64_000), source)))
    assert low * 8 < 20_000 < 48_000 < high * 8


def test_bad_input_is_a_clear_error() -> None:
    encoder = OpusEncoder()
    with pytest.raises(ValueError, match="shape"):
        encoder.encode(np.zeros(FRAME - 1, dtype=np.int16))
    with pytest.raises(ValueError):
        OpusEncoder(44100)
    with pytest.raises(ValueError):
        OpusEncoder(bitrate=1000)
    with pytest.raises(ValueError):
        OpusEncoder(complexity=11)
    with pytest.raises(ValueError):
        OpusDecoder(channels=3)

    decoder = OpusDecoder()
    packet = encoder.encode(tone(seconds=0.02))
    for bad in (b"", b"\xff\xff\xff"):
        with pytest.raises(ValueError, match="Opus packet"):
            decoder.decode(bad)
    assert len(decoder.decode(packet)) == FRAME  # the decoder survives bad packets
