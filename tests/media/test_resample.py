"""Stateful resampling: frequency kept, chunking irrelevant, low and steady latency."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from inzwa_voice.media.resample import Resampler


def sine(freq: float, rate: int, seconds: float = 1.0) -> NDArray[np.int16]:
    t = np.arange(int(rate * seconds)) / rate
    return (10000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def in_frames(resampler: Resampler, samples: NDArray[np.int16], frame: int) -> list[NDArray[np.int16]]:
    return [resampler.process(samples[i : i + frame]) for i in range(0, len(samples), frame)]


def dominant_hz(samples: NDArray[np.int16], rate: int) -> float:
    x = samples.astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


def amplitude(samples: NDArray[np.int16], freq: float, rate: int) -> float:
    """Least-squares amplitude of ``freq`` in ``samples``: insensitive to phase and delay."""
    t = np.arange(len(samples)) / rate
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], axis=1)
    coef = np.linalg.lstsq(basis, samples.astype(np.float64), rcond=None)[0]
    return float(np.hypot(*coef))


def test_up_and_down_keeps_the_tone() -> None:
    source = sine(440, 8000)
    up, down = Resampler(8000, 16000), Resampler(16000, 8000)
    wide = np.concatenate([*in_frames(up, source, 160), up.flush()])
    back = np.concatenate([*(down.process(f) for f in wide.reshape(-1, 320)), down.flush()])
    assert len(wide) == 16000 and len(back) == 8000
    assert dominant_hz(wide[4000:], 16000) == pytest.approx(440, abs=2)
    assert dominant_hz(back[2000:], 8000) == pytest.approx(440, abs=2)
    assert amplitude(back[2000:-400], 440, 8000) == pytest.approx(10000, rel=0.01)


def test_removes_what_the_lower_rate_cannot_carry() -> None:
    """Resampled, not decimated: 5 kHz at 16 kHz must not alias to 3 kHz at 8 kHz."""
    resampler = Resampler(16000, 8000)
    out = np.concatenate(in_frames(resampler, sine(5000, 16000), 320))[1000:]
    assert amplitude(out, 3000, 8000) < 10  # over 60 dB down from 10000
    passband = np.concatenate(in_frames(Resampler(16000, 8000), sine(3400, 16000), 320))[1000:]
    assert amplitude(passband, 3400, 8000) == pytest.approx(10000, rel=0.01)


def test_chunking_does_not_change_the_output() -> None:
    rng = np.random.default_rng(7)
    source = (rng.standard_normal(16000) * 3000).astype(np.int16)
    whole = Resampler(16000, 48000)
    expected = np.concatenate([whole.process(source), whole.flush()])

    chunked = Resampler(16000, 48000)
    pieces, start = [], 0
    for size in [1, 7, 13, 320, 333, 999, 2] * 100:
        pieces.append(chunked.process(source[start : start + size]))
        start += size
        if start >= len(source):
            break
    pieces.append(chunked.flush())
    assert np.array_equal(np.concatenate(pieces), expected)


def test_output_length_follows_the_ratio_with_bounded_lag() -> None:
    """Per 20 ms input frame the output trails the input by at most 30 ms, and never bursts."""
    for in_rate, out_rate, max_lag_ms in [(8000, 16000, 30), (16000, 8000, 15), (48000, 16000, 12.5)]:
        resampler = Resampler(in_rate, out_rate)
        frame = in_rate // 50
        produced = 0
        for n, chunk in enumerate(in_frames(resampler, sine(300, in_rate, 2.0), frame), start=1):
            produced += len(chunk)
            lag = n * frame * out_rate // in_rate - produced  # in output samples
            assert 0 <= lag <= max_lag_ms * out_rate / 1000
        assert produced + len(resampler.flush()) == 2 * out_rate


def test_tts_rate_conversion() -> None:
    resampler = Resampler(22050, 16000)
    out = [*in_frames(resampler, sine(440, 22050), 441), resampler.flush()]
    assert sum(map(len, out)) == 16000


def test_flush_makes_it_ready_for_a_new_stream() -> None:
    resampler = Resampler(8000, 16000)
    source = sine(440, 8000, 0.5)
    first = np.concatenate([resampler.process(source), resampler.flush()])
    second = np.concatenate([resampler.process(source), resampler.flush()])
    assert np.array_equal(first, second)


def test_reset_drops_buffered_audio() -> None:
    resampler = Resampler(8000, 16000)
    resampler.process(sine(440, 8000, 0.1))
    resampler.reset()
    silence = np.zeros(800, dtype=np.int16)
    out = np.concatenate([resampler.process(silence), resampler.flush()])
    assert len(out) == 1600 and not out.any()


def test_equal_rates_pass_through() -> None:
    resampler = Resampler(16000, 16000)
    frame = sine(440, 16000, 0.02)
    assert resampler.process(frame) is frame
    assert len(resampler.flush()) == 0


def test_loud_input_clips_instead_of_wrapping() -> None:
    """A full-scale square overshoots (Gibbs) by ~27 %: it must clip, not wrap around."""
    square = np.tile(np.array([32767] * 20 + [-32768] * 20, dtype=np.int16), 200)
    out = np.concatenate(in_frames(Resampler(8000, 16000), square, 160)).astype(np.int32)
    assert np.count_nonzero(out == 32767) > 1000
    assert np.abs(np.diff(out)).max() < 40000  # a wrapped sample would jump by ~65000


def test_rejects_bad_rates() -> None:
    with pytest.raises(ValueError):
        Resampler(0, 16000)
