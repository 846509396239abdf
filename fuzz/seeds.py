"""Writes the seed corpus, ``fuzz/corpus/<target>/``, from the project's own golden inputs.

Seeds are valid inputs (Twilio's documented messages, a browser's offer, the shipped dialplan
and knowledge base, audio in every upload format): a coverage-guided fuzzer mutates them into
the deep paths that random bytes never reach. The corpus is checked in; run this again after
a parser learns a new kind of input: ``.venv/bin/python fuzz/seeds.py``. It leaves the other
files alone: ``regression-*`` are inputs fuzzing found that once crashed a parser, kept so every
run (and ``tests/fuzz``) tries them again.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from urllib.parse import urlencode

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inzwa_voice.dialplan import DEFAULT_DIALPLAN  # noqa: E402
from inzwa_voice.knowledge.loader import INTENTS_PATH  # noqa: E402
from inzwa_voice.legs.audiosocket import HANGUP_FRAME, Kind, encode_audio, encode_frame  # noqa: E402
from inzwa_voice.legs.webrtc_tokens import CallTokens  # noqa: E402
from inzwa_voice.media.audiofile import RESPONSE_FORMATS, open_encoder  # noqa: E402
from tests.fuzz.targets import CORPUS, STREAM_SID, TARGETS, TOKEN_NOW, TOKEN_SECRET  # noqa: E402
from tests.test_sip import offer  # noqa: E402
from tests.test_webrtc_signalling import BROWSER_OFFER, SIP_PHONE_OFFER  # noqa: E402

GOLDEN = ROOT / "tests" / "golden" / "twilio"
PJSUA_ANSWER = "\r\n".join(
    [
        "v=0",
        "o=- 3900000000 3900000001 IN IP4 127.0.0.1",
        "s=pjmedia",
        "t=0 0",
        "m=audio 4000 RTP/AVP 9 0 8 101",
        "c=IN IP4 127.0.0.1",
        "a=rtpmap:9 G722/8000",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        "a=sendrecv",
        "",
    ]
)


def _tone(rate: int, seconds: float = 0.3) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)


def _audio_files() -> dict[str, bytes]:
    files = {}
    for fmt in RESPONSE_FORMATS:
        if fmt == "pcm":
            continue
        encoder = open_encoder(fmt, 16000)
        files[f"tone.{fmt}"] = encoder.encode(_tone(16000)) + encoder.finish()
    return files


def seeds() -> dict[str, dict[str, bytes]]:
    messages = json.loads((GOLDEN / "from_twilio.json").read_text())
    webhook = json.loads((GOLDEN / "webhook.json").read_text())
    call = uuid.UUID(int=0x1234).bytes
    tokens = CallTokens(TOKEN_SECRET, 300)
    return {
        "twilio_message": {
            name: (b"\0" if name in ("connected", "start") else b"\1") + json.dumps(message).encode()
            for name, message in messages.items()
            if not name.startswith("_")
        },
        "twilio_webhook": {
            "signature_example": urlencode(webhook["signature"]["params"]).encode(),
            "call": urlencode({"CallSid": "CA1", "From": "+263771234567", "To": "+263242700000"}).encode(),
        },
        "audiosocket_stream": {
            "call": encode_frame(Kind.UUID, call)
            + encode_audio(bytes(640))
            + encode_frame(Kind.DTMF, b"5")
            + HANGUP_FRAME,
            "error": encode_frame(Kind.UUID, call) + encode_frame(Kind.ERROR, b"\x01"),
        },
        "ws_start": {
            "start": b"\0" + json.dumps({"type": "start", "sample_rate": 16000, "caller": "+2637"}).encode(),
            "start_auth": b"\1" + json.dumps({"type": "start", "codec": "pcm16", "auth": "k-1"}).encode(),
        },
        "ws_control": {
            "stop": b'{"type": "stop"}',
            "dtmf": b'{"type": "dtmf", "digit": "#"}',
            "end_turn": b'{"type": "end_turn"}',
        },
        "webrtc_offer": {
            "browser": b"\1" + json.dumps({"sdp": BROWSER_OFFER, "type": "offer", "token": "v1.1.x"}).encode(),
        },
        "webrtc_sdp": {"browser": BROWSER_OFFER.encode()},
        "call_token": {
            "valid": tokens.issue(now=TOKEN_NOW).encode(),
            "expired": tokens.issue(now=TOKEN_NOW - 3600).encode(),
        },
        "sip_sdp": {
            "phone": (PJSUA_ANSWER + "\0" + SIP_PHONE_OFFER).encode(),
            "g722": (PJSUA_ANSWER + "\0" + offer("0 9 101", "a=rtpmap:101 telephone-event/8000")).encode(),
        },
        "sip_uri": {
            "from": b'"Ann" <sip:+263771234567@pbx.example;user=phone>;tag=a1b2',
            "tel": b"<tel:+263771234567;phone-context=+263>",
            "request": f"INVITE sip:+100@gw SIP/2.0\r\nCall-ID: {STREAM_SID}\r\n".encode(),
        },
        "dialplan_file": {
            "default.yaml": DEFAULT_DIALPLAN.read_bytes(),
            "english.yaml": (ROOT / "tests" / "dialplans" / "english.yaml").read_bytes(),
        },
        "knowledge_file": {
            "helpline.yaml": (ROOT / "inzwa_voice" / "knowledge" / "data" / "helpline.yaml").read_bytes(),
            "intents.yaml": Path(INTENTS_PATH).read_bytes(),
        },
        "audio_file": _audio_files(),
        "pcm16": {"8k": (4000).to_bytes(2, "little") + _tone(8000, 0.1).tobytes()},
    }


def main() -> None:
    written = seeds()
    assert set(written) == set(TARGETS), set(TARGETS) ^ set(written)
    for target, files in written.items():
        folder = CORPUS / target
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
        print(f"{target}: {len(files)} seeds")


if __name__ == "__main__":
    main()
