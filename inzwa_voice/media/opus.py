"""Opus for WebRTC legs: one stateful encoder and one decoder per call direction.

Both wrap libopus through PyAV (which bundles it). Opus carries state from packet to packet
(prediction, bandwidth decisions, the decoder's concealment history), so a call keeps its own
instances for its whole life and never shares them.

Defaults are chosen for one voice on a phone call:

* ``bitrate=24_000`` (VBR): the bot's audio is 16 kHz speech, so nothing above 8 kHz is worth
  coding; RFC 7587 recommends 16-20 kbit/s for wideband speech, and 24 kbit/s adds margin for
  background noise. Any value in 6-510 kbit/s may be set.
* ``application="voip"``: libopus tunes its mode decisions and pre-processing for speech
  intelligibility rather than music fidelity.
* ``complexity=10`` (libopus's default, best quality). It sets the CPU cost: measured on the
  2-core CI machine at 24 kbit/s, one 20 ms frame takes ~180 µs at 10, ~125 µs at 5 and ~60 µs
  at 0 with "voip" (~70/60/27 µs with "lowdelay", which codes speech less well at low rates).
* 20 ms frames, the WebRTC and pipeline frame size: one input frame gives one packet at once
  (the encoder buffers nothing). Decoded audio lags the input by about 6.5 ms (312 samples at
  48 kHz), the encoder's look-ahead.

The decoder always outputs 48 kHz: FFmpeg's libopus wrapper decodes at the Opus reference rate
whatever rate is asked for, so legs resample to the pipeline rate with
:class:`~inzwa_voice.media.resample.Resampler`. A lost packet (``decode(None)``) is concealed
by libopus's packet-loss concealment, driven by a packet that holds only the previous packet's
TOC byte, which RFC 6716 decoders treat as "frame missing".
"""

from __future__ import annotations

from typing import Final, Literal

import av
import av.error
import numpy as np
from numpy.typing import NDArray

OPUS_RATES: Final = (8000, 12000, 16000, 24000, 48000)
DECODE_RATE: Final = 48000

Application = Literal["voip", "audio", "lowdelay"]


def _layout(channels: int) -> Literal["mono", "stereo"]:
    if channels == 1:
        return "mono"
    if channels == 2:
        return "stereo"
    raise ValueError(f"Opus legs carry 1 or 2 channels, not {channels}")


class OpusEncoder:
    """int16 frames in, one Opus packet out per frame.

    A frame is ``frame_samples`` samples per channel: shape ``(frame_samples,)`` for mono,
    ``(frame_samples, 2)`` for stereo.
    """

    def __init__(
        self,
        sample_rate: int = 48000,
        channels: int = 1,
        *,
        bitrate: int = 24_000,
        frame_ms: Literal[10, 20, 40, 60] = 20,
        application: Application = "voip",
        complexity: int = 10,
    ) -> None:
        if sample_rate not in OPUS_RATES:
            raise ValueError(f"Opus encodes at {OPUS_RATES} Hz, not {sample_rate}")
        if not 6_000 <= bitrate <= 510_000:
            raise ValueError(f"Opus bitrate must be 6000-510000 bit/s, not {bitrate}")
        if not 0 <= complexity <= 10:
            raise ValueError(f"Opus complexity must be 0-10, not {complexity}")
        self.sample_rate = sample_rate
        self.channels = channels
        self.bitrate = bitrate
        self.frame_samples = sample_rate * frame_ms // 1000
        self._layout = _layout(channels)
        codec = av.CodecContext.create("libopus", "w")
        codec.sample_rate = sample_rate
        codec.layout = self._layout
        codec.format = "s16"
        codec.bit_rate = bitrate
        codec.options = {
            "application": application,
            "frame_duration": str(frame_ms),
            "compression_level": str(complexity),  # FFmpeg's name for the Opus complexity
        }
        codec.open()
        self._codec = codec

    def encode(self, samples: NDArray[np.int16]) -> bytes:
        """Encode exactly one frame and return its packet."""
        expected = (self.frame_samples,) if self.channels == 1 else (self.frame_samples, 2)
        if samples.shape != expected:
            raise ValueError(f"expected one frame of shape {expected}, got {samples.shape}")
        interleaved = np.ascontiguousarray(samples, dtype=np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(interleaved, format="s16", layout=self._layout)
        frame.sample_rate = self.sample_rate
        packets = self._codec.encode(frame)
        if len(packets) != 1:
            raise RuntimeError(f"libopus returned {len(packets)} packets for one frame")
        return bytes(packets[0])


class OpusDecoder:
    """Opus packets in, 48 kHz int16 out; ``None`` for a lost packet gives concealment audio.

    Output is ``(n,)`` for mono and ``(n, 2)`` for stereo; a stereo stream decoded with
    ``channels=1`` is down-mixed by libopus, which is what a WebRTC leg wants (browsers
    announce ``opus/48000/2`` even for a mono microphone).
    """

    def __init__(self, channels: int = 1, *, frame_ms: int = 20) -> None:
        self.channels = channels
        self.sample_rate = DECODE_RATE
        self._silence_samples = DECODE_RATE * frame_ms // 1000
        self._toc: bytes | None = None
        codec = av.CodecContext.create("libopus", "r")
        codec.sample_rate = DECODE_RATE
        codec.layout = _layout(channels)
        codec.format = "s16"
        codec.open()
        self._codec = codec

    def decode(self, packet: bytes | None) -> NDArray[np.int16]:
        """Decode one packet; ``None`` conceals one lost packet.

        Concealment extrapolates the previous audio for the previous packet's duration; before
        any packet arrived there is nothing to extrapolate and it returns ``frame_ms`` of
        silence. A corrupt packet raises ValueError; the caller may conceal it with ``None``.
        """
        if packet is None:
            if self._toc is None:
                return self._shape(np.zeros(self._silence_samples * self.channels, dtype=np.int16))
            packet = self._toc
        elif not packet:
            # An empty AVPacket would put FFmpeg's decoder into draining mode for good.
            raise ValueError("empty Opus packet")
        else:
            # Code 0 (one frame) with the same configuration and stereo flag: "frame missing".
            self._toc = bytes([packet[0] & 0xFC])
        try:
            frames = self._codec.decode(av.Packet(packet))
        except av.error.FFmpegError as exc:
            raise ValueError(f"invalid Opus packet: {exc}") from exc
        pcm = [frame.to_ndarray().reshape(-1).astype(np.int16, copy=False) for frame in frames]
        return self._shape(np.concatenate(pcm) if pcm else np.zeros(0, dtype=np.int16))

    def _shape(self, interleaved: NDArray[np.int16]) -> NDArray[np.int16]:
        return interleaved if self.channels == 1 else interleaved.reshape(-1, self.channels)
