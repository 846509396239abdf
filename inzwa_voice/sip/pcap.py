"""Turn a WAV file into an RTP capture that SIPp plays as a caller's voice.

SIPp's ``<exec play_pcap_audio="file.pcap"/>`` replays the UDP payloads of a libpcap file with
their original timing, rewriting the addresses and ports to the call's. So a test can speak any
sentence our own TTS makes, instead of the one recording SIPp ships:

    python -m inzwa_voice.sip.pcap question.wav question.pcap --codec pcmu

The file is written with ``struct`` alone: the classic libpcap format (microsecond timestamps,
Ethernet link type, as SIPp's own ``dtmf_2833_*.pcap`` files are), and per 20 ms frame one
Ethernet + IPv4 + UDP + RTP packet whose payload is G.711 (RFC 3551: PCMU payload type 0, PCMA
8, 8 kHz, 160 samples a packet). Addresses and ports are placeholders that SIPp replaces, and
timestamps start at zero, so the same audio always gives the same bytes.
"""

from __future__ import annotations

import argparse
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final, Literal

import numpy as np
from numpy.typing import NDArray

from inzwa_voice.media.g711 import alaw_encode, ulaw_encode
from inzwa_voice.media.wavfile import read_wav

Codec = Literal["pcmu", "pcma"]

RATE: Final = 8000
FRAME_SAMPLES: Final = 160
"""20 ms at 8 kHz: one RTP packet."""
PAYLOAD_TYPES: Final[dict[str, int]] = {"pcmu": 0, "pcma": 8}
_ENCODERS: Final[dict[str, Callable[[NDArray[np.int16]], bytes]]] = {"pcmu": ulaw_encode, "pcma": alaw_encode}

PCAP_HEADER: Final = struct.Struct("<IHHiIII")
RECORD_HEADER: Final = struct.Struct("<IIII")
_PCAP_MAGIC: Final = 0xA1B2C3D4  # microsecond timestamps
_LINKTYPE_ETHERNET: Final = 1
_SNAPLEN: Final = 65535

_ETHERNET: Final = bytes(12) + b"\x08\x00"  # zero MAC addresses, EtherType IPv4
_IPV4: Final = struct.Struct(">BBHHHBBH4s4s")
_UDP: Final = struct.Struct(">HHHH")
_RTP: Final = struct.Struct(">BBHII")

SOURCE: Final = ("127.0.0.1", 16000)
DESTINATION: Final = ("127.0.0.1", 6000)
SSRC: Final = 0x1A2B3C4D


def _ipv4_checksum(header: bytes) -> int:
    total: int = sum(struct.unpack(f">{len(header) // 2}H", header))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _address(host: str) -> bytes:
    return bytes(int(part) for part in host.split("."))


def packet(payload: bytes, *, seq: int, timestamp: int, payload_type: int, marker: bool = False) -> bytes:
    """One Ethernet frame carrying one RTP packet (RFC 3550 header, no CSRC, no extension)."""
    rtp = _RTP.pack(0x80, payload_type | (0x80 if marker else 0), seq & 0xFFFF, timestamp & 0xFFFFFFFF, SSRC) + payload
    udp = _UDP.pack(SOURCE[1], DESTINATION[1], _UDP.size + len(rtp), 0) + rtp  # checksum 0: none (IPv4)
    # Version 4, 20-byte header, don't fragment, TTL 64, protocol UDP; the checksum goes in last.
    ip = _IPV4.pack(0x45, 0, _IPV4.size + len(udp), 0, 0x4000, 64, 17, 0, _address(SOURCE[0]), _address(DESTINATION[0]))
    ip = ip[:10] + struct.pack(">H", _ipv4_checksum(ip)) + ip[12:]
    return _ETHERNET + ip + udp


def rtp_frames(samples: NDArray[np.int16], codec: Codec) -> Iterator[bytes]:
    """The 8 kHz audio as one Ethernet frame per 20 ms, the last one padded with silence."""
    encode = _ENCODERS[codec]
    padded = np.concatenate((samples, np.zeros(-len(samples) % FRAME_SAMPLES, dtype=np.int16)))
    for index, start in enumerate(range(0, len(padded), FRAME_SAMPLES)):
        payload = encode(padded[start : start + FRAME_SAMPLES])
        yield packet(
            payload,
            seq=index,
            timestamp=index * FRAME_SAMPLES,
            payload_type=PAYLOAD_TYPES[codec],
            marker=index == 0,  # the start of a talkspurt
        )


def write_pcap(path: Path, samples: NDArray[np.int16], codec: Codec) -> int:
    """Write 8 kHz int16 ``samples`` as an RTP pcap; returns the number of packets."""
    if samples.dtype != np.int16 or samples.ndim != 1:
        raise ValueError("write_pcap takes mono int16 samples at 8 kHz")
    count = 0
    with path.open("wb") as out:
        out.write(PCAP_HEADER.pack(_PCAP_MAGIC, 2, 4, 0, 0, _SNAPLEN, _LINKTYPE_ETHERNET))
        for count, frame in enumerate(rtp_frames(samples, codec), start=1):
            micros = (count - 1) * FRAME_SAMPLES * 1_000_000 // RATE
            out.write(RECORD_HEADER.pack(micros // 1_000_000, micros % 1_000_000, len(frame), len(frame)))
            out.write(frame)
    return count


def wav_to_pcap(wav: Path, pcap: Path, codec: Codec) -> int:
    """Any 16-bit PCM WAV (mixed to mono, resampled to 8 kHz) as an RTP pcap."""
    return write_pcap(pcap, read_wav(wav, RATE), codec)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m inzwa_voice.sip.pcap", description=__doc__.splitlines()[0])
    parser.add_argument("wav", type=Path, help="16-bit PCM WAV, any rate, mono or stereo")
    parser.add_argument("pcap", type=Path, help="the RTP capture to write")
    parser.add_argument("--codec", choices=sorted(PAYLOAD_TYPES), default="pcmu", help="G.711 law (default pcmu)")
    args = parser.parse_args(argv)
    count = wav_to_pcap(args.wav, args.pcap, args.codec)
    print(f"{args.pcap}: {count} RTP packets, {count * 20 / 1000:.2f} s of {args.codec.upper()}")


if __name__ == "__main__":
    main()
