"""Speech encoders round-trip through the upload decoder; the decoder refuses what is not audio."""

from __future__ import annotations

import io
import time
import wave
from typing import Literal

import av
import numpy as np
import pytest
from numpy.typing import NDArray

from inzwa_voice.media.audiofile import (
    RESPONSE_FORMATS,
    AudioDecodeError,
    ResponseFormat,
    content_type,
    decode_audio,
    decode_pcm16,
    open_encoder,
)

TONE_HZ = 300.0
ODD_CHUNK = 777  # not a multiple of any codec's frame size
ASR_RATE = 16000


def tone(seconds: float, rate: int, *, channels: int = 1) -> NDArray[np.int16]:
    """A 300 Hz sine at about -10 dBFS, shaped (samples,) or (samples, channels)."""
    t = np.arange(round(seconds * rate)) / rate
    mono = (np.sin(2 * np.pi * TONE_HZ * t) * 10000).astype(np.int16)
    return mono if channels == 1 else np.repeat(mono[:, None], channels, axis=1)


def encode_in_chunks(fmt: ResponseFormat, samples: NDArray[np.int16], rate: int) -> list[bytes]:
    """Every ``encode`` output in order, then ``finish``'s, as an HTTP handler would write them."""
    encoder = open_encoder(fmt, rate)
    parts = [encoder.encode(samples[i : i + ODD_CHUNK]) for i in range(0, samples.size, ODD_CHUNK)]
    return [*parts, encoder.finish()]


def decode(fmt: ResponseFormat, data: bytes, rate: int) -> NDArray[np.float32]:
    if fmt == "pcm":
        return decode_pcm16(data, rate, max_seconds=10)
    return decode_audio(data, max_seconds=10)


def dominant_hz(samples: NDArray[np.float32], rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.argmax(spectrum) * rate / samples.size)


def wav_file(samples: NDArray[np.int16], rate: int) -> bytes:
    """A regular, sized WAV as a client would upload it."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1 if samples.ndim == 1 else samples.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return out.getvalue()


@pytest.mark.parametrize("rate", [24000, 22050])
@pytest.mark.parametrize("fmt", RESPONSE_FORMATS)
def test_round_trip_keeps_duration_and_pitch(fmt: ResponseFormat, rate: int) -> None:
    decoded = decode(fmt, b"".join(encode_in_chunks(fmt, tone(1.5, rate), rate)), rate)

    # mp3 and aac decode ~60-80 ms long: encoder delay and padding with no header to trim them.
    assert decoded.size / ASR_RATE == pytest.approx(1.5, abs=0.1)
    assert dominant_hz(decoded, ASR_RATE) == pytest.approx(TONE_HZ, abs=10)


@pytest.mark.parametrize(
    ("fmt", "first_call"),
    # opus: the first call yields the Ogg header pages; audio pages follow every ~100 ms.
    [("pcm", 0), ("opus", 0), ("mp3", 2), ("aac", 2), ("flac", 2)],
)
def test_bytes_flow_while_encoding(fmt: ResponseFormat, first_call: int) -> None:
    parts = encode_in_chunks(fmt, tone(1.5, 24000), 24000)

    assert next(i for i, part in enumerate(parts) if part) == first_call
    streamed = sum(len(part) for part in parts[:-1])
    assert streamed / sum(len(part) for part in parts) > 0.8, "most bytes must come before finish()"


def test_wav_reads_with_stdlib_wave_and_pyav() -> None:
    samples = tone(1.5, 24000)
    parts = encode_in_chunks("wav", samples, 24000)
    assert not any(parts[:-1]), "a WAV comes whole from finish(), its header holding the length"
    data = parts[-1]

    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 24000)
        assert w.getnframes() == samples.size  # the header's sizes are the true ones
        frames = w.readframes(w.getnframes())
    np.testing.assert_array_equal(np.frombuffer(frames, "<i2"), samples)

    with av.open(io.BytesIO(data), "r") as container:
        pyav = np.concatenate([frame.to_ndarray().ravel() for frame in container.decode(audio=0)])
    np.testing.assert_array_equal(pyav, samples)


def test_wav_without_samples_is_a_bare_header() -> None:
    header = open_encoder("wav", 24000).finish()

    assert len(header) == 44
    with pytest.raises(AudioDecodeError, match="no samples"):
        decode_audio(header, max_seconds=10)


def test_content_types() -> None:
    assert {fmt: content_type(fmt) for fmt in RESPONSE_FORMATS} == {
        "mp3": "audio/mpeg",
        "opus": "audio/ogg",
        "aac": "audio/aac",
        "flac": "audio/flac",
        "wav": "audio/wav",
        "pcm": "audio/pcm",
    }


def test_encoder_rejects_unknown_format_and_non_int16() -> None:
    with pytest.raises(ValueError, match="unknown audio format"):
        open_encoder("ogg", 24000)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mono int16"):
        open_encoder("mp3", 24000).encode(np.zeros(10, np.float32))


def pyav_file(container_format: str, codec: Literal["aac", "libopus"], samples: NDArray[np.int16], rate: int) -> bytes:
    """Containers the speech encoders do not produce but clients upload (m4a, webm)."""
    out = io.BytesIO()
    with av.open(out, "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return out.getvalue()


@pytest.mark.parametrize(("container_format", "codec"), [("ipod", "aac"), ("webm", "libopus")])
def test_decodes_m4a_and_webm(container_format: str, codec: Literal["aac", "libopus"]) -> None:
    decoded = decode_audio(pyav_file(container_format, codec, tone(1.5, 48000), 48000), max_seconds=10)

    assert decoded.size / ASR_RATE == pytest.approx(1.5, abs=0.1)
    assert dominant_hz(decoded, ASR_RATE) == pytest.approx(TONE_HZ, abs=10)


def test_downmixes_and_resamples_8k_stereo_wav() -> None:
    decoded = decode_audio(wav_file(tone(1.0, 8000, channels=2), 8000), max_seconds=10)

    assert decoded.dtype == np.float32
    assert decoded.size == pytest.approx(ASR_RATE, abs=2)
    assert dominant_hz(decoded, ASR_RATE) == pytest.approx(TONE_HZ, abs=10)
    # Two equal channels average to the same level (a -3 dB sum would read ~0.43).
    assert float(np.abs(decoded).max()) == pytest.approx(10000 / 32768, rel=0.05)


@pytest.mark.parametrize(
    "data",
    [
        np.random.default_rng(7).integers(0, 256, 8192, dtype=np.uint8).tobytes(),
        b"",
        b"Meeting notes\nThe helpline opens at eight.\n" * 50,
        b"1\n00:00:01,000 --> 00:00:02,000\nMhoro\n\n",
        b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n",
    ],
    ids=["random-bytes", "empty", "text", "subtitles", "playlist"],
)
def test_rejects_what_is_not_audio(data: bytes) -> None:
    with pytest.raises(AudioDecodeError):
        decode_audio(data, max_seconds=10)


@pytest.mark.parametrize("fmt", ["mp3", "aac", "opus", "flac"])
def test_keeps_the_intact_part_of_a_damaged_upload(fmt: ResponseFormat) -> None:
    data = bytearray(b"".join(encode_in_chunks(fmt, tone(3.0, 24000), 24000)))
    cut = len(data) // 3
    data[cut:] = np.random.default_rng(1).integers(0, 256, len(data) - cut, dtype=np.uint8).tobytes()

    decoded = decode_audio(bytes(data), max_seconds=10)

    assert 0.8 < decoded.size / ASR_RATE < 1.5
    assert dominant_hz(decoded, ASR_RATE) == pytest.approx(TONE_HZ, abs=10)


def test_rejects_a_long_upload_without_decoding_all_of_it() -> None:
    data = wav_file(tone(10.0, 48000), 48000)

    started = time.perf_counter()
    with pytest.raises(AudioDecodeError, match="longer than the limit of 2 seconds"):
        decode_audio(data, max_seconds=2)
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize(
    ("data", "rate", "message"),
    [
        (b"\x00" * 3, 16000, "odd number of bytes"),
        (b"\x00" * 4, 7999, "outside 8000..48000"),
        (b"\x00" * 4, 48001, "outside 8000..48000"),
        (b"", 16000, "empty"),
        (b"\x00" * 16000 * 2 * 3, 16000, "longer than the limit"),
    ],
)
def test_decode_pcm16_rejects(data: bytes, rate: int, message: str) -> None:
    with pytest.raises(AudioDecodeError, match=message):
        decode_pcm16(data, rate, max_seconds=2)


def test_decode_pcm16_resamples_8k() -> None:
    decoded = decode_pcm16(tone(1.0, 8000).tobytes(), 8000, max_seconds=2)

    assert decoded.dtype == np.float32
    assert decoded.size == ASR_RATE
    assert dominant_hz(decoded, ASR_RATE) == pytest.approx(TONE_HZ, abs=10)
