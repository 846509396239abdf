"""Audio files for the REST APIs: streaming speech encoders and a decoder for uploads.

``POST /v1/audio/speech`` answers in OpenAI's ``response_format`` values. Every encoder but
``wav``'s is incremental: :meth:`AudioEncoder.encode` returns the bytes that are ready *now*, so
the handler can write them to the client while the TTS engine is still speaking, and
:meth:`AudioEncoder.finish` flushes the codec and writes any trailer (a WAV header must hold the
length, so that file comes whole from ``finish``).

Bitrates are for one mono voice. "First bytes" was measured at 24 kHz input fed in 100-sample
chunks:

======  ================  =======================  =================================================
format  container, codec  bitrate                  first bytes, then
======  ================  =======================  =================================================
pcm     none, s16le       rate x 16 bit            first ``encode``; every call
wav     RIFF, PCM s16le   rate x 16 bit            the whole file at ``finish`` (sizes in the header)
mp3     MP3, LAME         64 kbit/s CBR            after ~75 ms of input; every 576-sample frame
aac     ADTS, AAC-LC      64 kbit/s                after ~90 ms; every 1024-sample frame
opus    Ogg, libopus      32 kbit/s VBR + 6 % Ogg  header at once; audio after ~200 ms, then /100 ms
flac    FLAC              lossless                 header + first frame after ~100 ms; every frame
======  ================  =======================  =================================================

The compressed formats go through PyAV into a write-only sink that PyAV sees as non-seekable,
so muxers never try to go back and patch headers (which a streamed HTTP body cannot do either):
the MP3 Xing/LAME header is turned off and the FLAC STREAMINFO keeps "total samples unknown".
Each codec runs at the input rate when it supports it; otherwise PyAV resamples to the nearest
rate above (22050 Hz Piper voices become 24 kHz Opus).

Uploads are decoded by :func:`decode_audio` (any of wav, mp3, ogg/opus, flac, aac/m4a, webm) or
:func:`decode_pcm16` (raw PCM16), both to mono float32 at the ASR rate, resampled with soxr.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Final, Literal, Protocol, get_args

import av
import numpy as np
import soxr
from numpy.typing import NDArray

from inzwa_voice.media.wavfile import wav_header

ResponseFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
RESPONSE_FORMATS: Final[tuple[ResponseFormat, ...]] = get_args(ResponseFormat)

_CONTENT_TYPES: Final[Mapping[ResponseFormat, str]] = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}

_PCM16_RATES: Final = range(8000, 48001)
MAX_CHANNELS: Final = 8
"""Most channels an upload may have (7.1); frames with more are skipped as damaged."""

# Demuxers an upload may be read with. Without this list ffmpeg would also accept playlists
# (HLS, concat) that make it open other files or URLs, and subtitle or image formats.
_UPLOAD_DEMUXERS: Final = "wav,mp3,ogg,flac,aac,mov,matroska"


class AudioDecodeError(ValueError):
    """The uploaded bytes are not usable audio; the message is safe to show to the client."""


def content_type(fmt: ResponseFormat) -> str:
    """The ``Content-Type`` of a speech response in ``fmt``."""
    return _CONTENT_TYPES[fmt]


class AudioEncoder(Protocol):
    """Turns mono int16 PCM into an encoded byte stream, chunk by chunk."""

    def encode(self, samples: NDArray[np.int16]) -> bytes:
        """Feed samples; return the encoded bytes that are ready now (possibly ``b""``)."""
        ...

    def finish(self) -> bytes:
        """Flush the codec and return the remaining bytes, trailer included."""
        ...


def open_encoder(fmt: ResponseFormat, sample_rate: int) -> AudioEncoder:
    """An encoder for ``fmt`` fed with mono int16 PCM at ``sample_rate``."""
    if fmt == "pcm":
        return _RawEncoder()
    if fmt == "wav":
        return _WavEncoder(sample_rate)
    if fmt in _CODECS:
        return _ContainerEncoder(_CODECS[fmt], sample_rate)
    raise ValueError(f"unknown audio format {fmt!r}; expected one of {', '.join(RESPONSE_FORMATS)}")


def _pcm16(samples: NDArray[np.int16]) -> NDArray[np.int16]:
    """Reject what would otherwise be silently mis-encoded (floats, stereo arrays)."""
    if samples.dtype != np.int16 or samples.ndim != 1:
        raise ValueError(f"expected mono int16 samples, got {samples.dtype} with shape {samples.shape}")
    return samples


# --- raw PCM and WAV -------------------------------------------------------------------------

# A WAV header states the length of the audio, which a stream cannot know when it starts. The
# streaming convention (0xFFFFFFFF sizes, as ffmpeg leaves on non-seekable output) is read by
# ffmpeg and libsndfile as "to the end", but Python's ``wave`` takes it at its word: 2**31 - 1
# frames, a day of audio for one sentence, and so do players that show a duration. So a WAV is
# sent whole, with its true sizes; ``pcm`` is the same samples without a header, as they come.


class _RawEncoder:
    """``pcm``: PCM16 little-endian as it comes, no header."""

    def encode(self, samples: NDArray[np.int16]) -> bytes:
        return _pcm16(samples).astype("<i2", copy=False).tobytes()

    def finish(self) -> bytes:
        return b""


class _WavEncoder:
    """``wav``: the samples are kept until ``finish``, which returns the whole file."""

    def __init__(self, sample_rate: int) -> None:
        self._sample_rate = sample_rate
        self._data = bytearray()

    def encode(self, samples: NDArray[np.int16]) -> bytes:
        self._data += _pcm16(samples).astype("<i2", copy=False).tobytes()
        return b""

    def finish(self) -> bytes:
        """The header with the true sizes, then the samples (a bare header if none came)."""
        out = wav_header(self._sample_rate, 1, len(self._data)) + self._data
        self._data = bytearray()
        return out


# --- compressed formats through PyAV ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _CodecSpec:
    """How one response format is produced by ffmpeg."""

    container: str
    codec: Literal["libmp3lame", "aac", "libopus", "flac"]
    bit_rate: int | None
    muxer_options: Mapping[str, str] = field(default_factory=dict)


# 64 kbit/s MP3 at 22-24 kHz and 64 kbit/s AAC-LC are clean for one voice; Opus reaches that
# quality for speech well below 32 kbit/s. FLAC is lossless.
_CODECS: Final[Mapping[ResponseFormat, _CodecSpec]] = {
    # No Xing/LAME header: it is a placeholder that can only be filled in by seeking back.
    "mp3": _CodecSpec("mp3", "libmp3lame", 64_000, {"write_xing": "0"}),
    "aac": _CodecSpec("adts", "aac", 64_000),
    # The Ogg muxer holds packets until a page spans page_duration (default 1 s); 100 ms pages
    # keep the stream near real time for ~6 % more bytes.
    "opus": _CodecSpec("ogg", "libopus", 32_000, {"page_duration": "100000"}),
    # The 8 KiB of header padding only helps a muxer that can seek back to grow the metadata.
    "flac": _CodecSpec("flac", "flac", None, {"metadata_header_padding": "0"}),
}


def _codec_rate(codec: str, sample_rate: int) -> int:
    """The input rate when the codec takes it, else the nearest supported rate above it.

    Opus, MP3 and AAC each take a fixed list of rates (22050 Hz is not an Opus rate, for
    example); PyAV's encoder resamples to the rate chosen here.
    """
    supported = av.Codec(codec, "w").audio_rates
    if not supported or sample_rate in supported:
        return sample_rate
    higher = [rate for rate in supported if rate > sample_rate]
    return min(higher) if higher else max(supported)


class _Drain:
    """A write-only file for PyAV whose bytes are taken out as soon as they are written.

    Having no ``seek``/``tell`` makes PyAV open it as non-seekable, which is the truth for an
    HTTP body.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def write(self, data: bytes) -> int:
        self._buffer += data
        return len(data)

    def take(self) -> bytes:
        out = bytes(self._buffer)
        self._buffer.clear()
        return out


class _ContainerEncoder:
    """One codec in one container, written through PyAV: ``mp3``, ``aac``, ``opus``, ``flac``.

    ``flush_packets`` makes the muxer hand each packet to :class:`_Drain` at once instead of
    filling a 32 KiB I/O buffer first. PyAV's ``encode`` converts the int16 frames to the
    codec's sample format and rate and cuts them into the codec's frame size, carrying the
    remainder to the next call, so callers may pass chunks of any length.
    """

    def __init__(self, spec: _CodecSpec, sample_rate: int) -> None:
        self._sample_rate = sample_rate
        self._next_pts = 0
        self._sink = _Drain()
        self._container = av.open(
            self._sink,
            "w",
            format=spec.container,
            container_options={"flush_packets": "1", **spec.muxer_options},
        )
        self._stream = self._container.add_stream(spec.codec, rate=_codec_rate(spec.codec, sample_rate), layout="mono")
        if spec.bit_rate is not None:
            self._stream.bit_rate = spec.bit_rate

    def encode(self, samples: NDArray[np.int16]) -> bytes:
        if samples.size:
            self._container.mux(self._stream.encode(self._frame(_pcm16(samples))))
        return self._sink.take()

    def finish(self) -> bytes:
        self._container.mux(self._stream.encode(None))
        self._container.close()
        return self._sink.take()

    def _frame(self, samples: NDArray[np.int16]) -> av.AudioFrame:
        """Timestamps count input samples, so the muxer sees a gapless stream."""
        planes = np.ascontiguousarray(samples).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(planes, format="s16", layout="mono")
        frame.sample_rate = self._sample_rate
        frame.time_base = Fraction(1, self._sample_rate)
        frame.pts = self._next_pts
        self._next_pts += samples.size
        return frame


# --- decoding uploads ------------------------------------------------------------------------


def decode_audio(data: bytes, *, target_rate: int = 16000, max_seconds: float) -> NDArray[np.float32]:
    """Decode an uploaded audio file to mono float32 at ``target_rate``.

    Decoding stops at the first frame past ``max_seconds``, so a long upload costs no more than
    the limit, whatever its header claims. Channels are averaged (not summed with ffmpeg's
    -3 dB matrix, which can exceed full scale when the channels agree).
    """
    if not data:
        raise AudioDecodeError("the audio file is empty")
    try:
        # Tags (ID3, Vorbis comments) are not read, but opening decodes them: "replace" keeps a
        # tag that is not UTF-8 from failing the upload.
        container = av.open(
            io.BytesIO(data), "r", options={"format_whitelist": _UPLOAD_DEMUXERS}, metadata_errors="replace"
        )
    except av.FFmpegError as exc:
        raise AudioDecodeError("the file is not a supported audio format") from exc
    with container:
        if not container.streams.audio:
            raise AudioDecodeError("the file has no audio stream")
        try:
            samples = _decode_mono(container, target_rate, max_seconds)
        except av.FFmpegError as exc:
            raise AudioDecodeError(f"the audio data is corrupt: {exc}") from exc
    if not samples.size:
        raise AudioDecodeError("the audio file contains no samples")
    return samples


def _decode_mono(container: av.container.InputContainer, target_rate: int, max_seconds: float) -> NDArray[np.float32]:
    """Decode the first audio stream and resample it on the fly, keeping only output-rate audio."""
    to_float = av.AudioResampler(format="fltp")  # keeps channels and rate; planar for the mean
    stream: soxr.ResampleStream | None = None
    seconds = 0.0
    chunks: list[NDArray[np.float32]] = []
    for decoded in _audio_frames(container):
        for frame in to_float.resample(decoded):
            seconds += frame.samples / frame.sample_rate
            _check_duration(seconds, max_seconds)
            if stream is None:
                stream = soxr.ResampleStream(frame.sample_rate, target_rate, 1, dtype="float32")
            if len(frame.planes) != frame.layout.nb_channels:  # to_ndarray would read past the frame
                raise AudioDecodeError("the audio data is corrupt: its channels do not match its layout")
            mono = frame.to_ndarray().mean(axis=0, dtype=np.float32)
            chunks.append(stream.resample_chunk(mono))
    if stream is not None:
        chunks.append(stream.resample_chunk(np.zeros(0, np.float32), last=True))
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


def _audio_frames(container: av.container.InputContainer) -> Iterator[av.AudioFrame]:
    """The first audio stream's frames, skipping packets the codec rejects and frames unlike the
    first (another rate, layout or sample format) or with more than ``MAX_CHANNELS``.

    ffmpeg's own CLI does the same, so one damaged frame in a long voice note costs that frame,
    not the upload. (The FLAC and Opus decoders already conceal such damage; MP3 and AAC raise.)
    """
    first: tuple[int, str, str] | None = None
    for packet in container.demux(container.streams.audio[0]):
        try:
            frames = packet.decode()
        except av.InvalidDataError:
            continue
        for frame in frames:
            # A frame whose rate, layout or format differs from the first is damage too (a
            # flipped header bit): resampled, PyAV can hand back a frame that crashes numpy.
            shape = (frame.sample_rate, frame.layout.name, frame.format.name)
            if 1 <= frame.layout.nb_channels <= MAX_CHANNELS and (first := first or shape) == shape:
                yield frame


def decode_pcm16(data: bytes, sample_rate: int, *, target_rate: int = 16000, max_seconds: float) -> NDArray[np.float32]:
    """Decode raw mono little-endian PCM16 to float32 at ``target_rate``."""
    if sample_rate not in _PCM16_RATES:
        raise AudioDecodeError(f"sample rate {sample_rate} is outside 8000..48000 Hz")
    if len(data) % 2:
        raise AudioDecodeError("PCM16 data has an odd number of bytes")
    if not data:
        raise AudioDecodeError("the audio data is empty")
    _check_duration(len(data) / 2 / sample_rate, max_seconds)
    samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    return np.asarray(soxr.resample(samples, sample_rate, target_rate), dtype=np.float32)


def _check_duration(seconds: float, max_seconds: float) -> None:
    if seconds > max_seconds:
        raise AudioDecodeError(f"the audio is longer than the limit of {max_seconds:g} seconds")
