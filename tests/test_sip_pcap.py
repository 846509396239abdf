"""The WAV -> RTP pcap tool SIPp plays callers' speech from: golden bytes, and a parse back.

The file is read back here with a parser of its own (libpcap, Ethernet, IPv4, UDP, RTP as the
RFCs lay them out), so the tool and the test cannot share a mistake; SIPp playing the file is
proven by the SIP call tests.
"""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import numpy as np
import pytest

from inzwa_voice.media.g711 import alaw_decode, ulaw_decode
from inzwa_voice.sip import pcap

# One RTP packet of 160 μ-law silence bytes, sequence 0, timestamp 0, marker set: Ethernet
# (zero MACs, IPv4), IPv4 (length 200, DF, TTL 64, UDP, checksum 0x3c23, 127.0.0.1 both ways),
# UDP (16000 -> 6000, length 180, no checksum), RTP (v2, M + PT 0, SSRC 0x1a2b3c4d).
GOLDEN_HEADERS = bytes.fromhex(
    "000000000000 000000000000 0800"
    "4500 00c8 0000 4000 4011 3c23 7f000001 7f000001"
    "3e80 1770 00b4 0000"
    "8080 0000 00000000 1a2b3c4d"
)


def test_one_packet_byte_for_byte() -> None:
    frame = pcap.packet(b"\xff" * 160, seq=0, timestamp=0, payload_type=0, marker=True)
    assert frame == GOLDEN_HEADERS + b"\xff" * 160


def parse(path: Path) -> tuple[int, list[tuple[int, int, bytes]]]:
    """(link type, [(microseconds, rtp second byte, rtp packet)]) with every layer checked."""
    data = path.read_bytes()
    magic, major, minor, _, _, snaplen, linktype = struct.unpack_from("<IHHiIII", data)
    assert (magic, major, minor, snaplen) == (0xA1B2C3D4, 2, 4, 65535)
    offset, records = 24, []
    while offset < len(data):
        seconds, micros, included, original = struct.unpack_from("<IIII", data, offset)
        frame = data[offset + 16 : offset + 16 + included]
        offset += 16 + included
        assert included == original == len(frame)
        assert frame[12:14] == b"\x08\x00"
        ip = frame[14:34]
        assert ip[0] == 0x45 and ip[9] == 17 and struct.unpack(">H", ip[2:4])[0] == len(frame) - 14
        words = sum(struct.unpack(">10H", ip))
        assert (words & 0xFFFF) + (words >> 16) == 0xFFFF, "the IPv4 header checksum must verify"
        udp_length = struct.unpack(">H", frame[38:40])[0]
        assert udp_length == len(frame) - 34
        rtp = frame[42:]
        assert rtp[0] == 0x80  # version 2, no padding, extension or CSRC
        records.append((seconds * 1_000_000 + micros, rtp[1], rtp))
    return linktype, records


@pytest.mark.parametrize(("codec", "payload_type", "decode"), [("pcmu", 0, ulaw_decode), ("pcma", 8, alaw_decode)])
def test_audio_round_trips_through_the_pcap(tmp_path: Path, codec: pcap.Codec, payload_type: int, decode) -> None:
    t = np.arange(4100) / 8000  # 512.5 ms: the last packet is padded with silence
    tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    path = tmp_path / "tone.pcap"
    assert pcap.write_pcap(path, tone, codec) == 26
    linktype, records = parse(path)
    assert linktype == 1
    assert [at for at, _, _ in records] == [i * 20_000 for i in range(26)]
    assert [marker_pt for _, marker_pt, _ in records] == [0x80 | payload_type] + [payload_type] * 25
    headers = [struct.unpack(">HII", rtp[2:12]) for _, _, rtp in records]
    assert headers == [(i, i * 160, 0x1A2B3C4D) for i in range(26)]
    audio = decode(b"".join(rtp[12:] for _, _, rtp in records))
    assert len(audio) == 26 * 160 and np.abs(audio[4100:]).max() <= 8  # silence (A-law has no exact 0)
    noise = audio[:4100].astype(np.float64) - tone
    snr = 10 * np.log10(np.mean(tone.astype(np.float64) ** 2) / np.mean(noise**2))
    assert snr > 30, f"G.711 should keep a tone at ~38 dB SNR, got {snr:.1f}"


def test_the_command_line_takes_any_wav(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Stereo at 16 kHz: mixed to mono and resampled to the 8 kHz G.711 needs.
    wav = tmp_path / "question.wav"
    with wave.open(str(wav), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(np.full(2 * 16000, 1000, dtype="<i2").tobytes())  # 1 s
    target = tmp_path / "question.pcap"
    pcap.main([str(wav), str(target), "--codec", "pcma"])
    assert "50 RTP packets" in capsys.readouterr().out
    _, records = parse(target)
    assert len(records) == 50 and {pt & 0x7F for _, pt, _ in records} == {8}
    middle = alaw_decode(records[25][2][12:])
    assert abs(int(middle.mean()) - 1000) < 50
