"""Hypothesis strategies for the fuzz tests: seed mutations and inputs that look almost right.

Random bytes rarely get past a parser's first check; these build inputs from the pieces each
protocol is made of (Twilio's event names, SDP lines, URI schemes, YAML tags), so most examples
reach the code behind the first check.
"""

from __future__ import annotations

import json
import random

from hypothesis import strategies as st

# ----- generic -----

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)


def json_values(keys: st.SearchStrategy[str]) -> st.SearchStrategy[object]:
    """Nested JSON whose object keys are mostly ``keys`` (the names a parser looks for)."""
    return st.recursive(
        JSON_SCALARS,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys | st.text(max_size=8), inner, max_size=5),
        max_leaves=12,
    )


def mutate(data: bytes, seeds: list[bytes], rng: random.Random) -> bytes:
    """``data`` with a few byte-level edits: flips, inserts, deletes, truncation, splices of
    another seed. Plain ``random`` so the network smoke test garbles its messages the same way."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.choice(("flip", "insert", "delete", "truncate", "splice"))
        at = rng.randint(0, len(out))
        if op == "flip" and at < len(out):
            out[at] = rng.randrange(256)
        elif op == "insert":
            out[at:at] = rng.randbytes(rng.randint(0, 16))
        elif op == "delete":
            del out[at : at + rng.randint(1, 64)]
        elif op == "truncate":
            del out[at:]
        elif op == "splice" and seeds:
            other = rng.choice(seeds)
            start = rng.randint(0, len(other))
            out[at:at] = other[start : start + rng.randint(1, 256)]
    return bytes(out)


def mutated(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    """A seed input with a few edits (:func:`mutate`), drawn by Hypothesis."""
    return st.builds(mutate, st.sampled_from(seeds) if seeds else st.just(b""), st.just(seeds), st.randoms())


# ----- Twilio and the native WebSocket -----

TWILIO_KEYS = st.sampled_from(
    [
        "event",
        "streamSid",
        "start",
        "media",
        "dtmf",
        "mark",
        "stop",
        "payload",
        "digit",
        "name",
        "mediaFormat",
        "encoding",
        "sampleRate",
        "channels",
        "customParameters",
        "callSid",
        "accountSid",
    ]
)
TWILIO_EVENTS = st.sampled_from(["connected", "start", "media", "dtmf", "mark", "stop", "clear", ""])
BASE64ISH = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=%\x00 ", max_size=24)


@st.composite
def twilio_messages(draw: st.DrawFn) -> str:
    """A Media Streams message: a known event, its section with odd contents, maybe wrong types."""
    message = draw(st.dictionaries(TWILIO_KEYS, json_values(TWILIO_KEYS), max_size=4))
    message["event"] = draw(TWILIO_EVENTS | JSON_SCALARS)
    if draw(st.booleans()):
        message["streamSid"] = draw(st.sampled_from(["MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX", "MZ-other", ""]))
    section = draw(st.sampled_from(["start", "media", "dtmf", "mark", "stop"]))
    message[section] = {
        "payload": draw(BASE64ISH),
        "digit": draw(st.text(max_size=3) | JSON_SCALARS),
        "name": draw(st.text(max_size=8) | JSON_SCALARS),
        "streamSid": draw(st.text(max_size=8)),
        "mediaFormat": draw(
            st.fixed_dictionaries(
                {
                    "encoding": st.sampled_from(["audio/x-mulaw", "audio/l16"]),
                    "sampleRate": st.sampled_from([8000, 8000.0, "8000"]),
                    "channels": st.sampled_from([1, 2, True]),
                }
            )
            | JSON_SCALARS
        ),
        "customParameters": draw(st.dictionaries(st.text(max_size=70), JSON_SCALARS, max_size=40) | JSON_SCALARS),
    }
    return json.dumps(message)


WS_KEYS = st.sampled_from(["type", "codec", "sample_rate", "caller", "dialled", "session_id", "auth", "digit"])


@st.composite
def ws_messages(draw: st.DrawFn) -> str:
    """A native WebSocket control message: a known type with odd fields, or not JSON at all."""
    kind = draw(st.sampled_from(["start", "stop", "dtmf", "end_turn", "hello", ""]) | JSON_SCALARS)
    fields = draw(st.dictionaries(WS_KEYS, json_values(WS_KEYS), max_size=4))
    fields["type"] = kind
    if kind == "dtmf":
        fields["digit"] = draw(st.sampled_from(["", "0123", "*#", "5", "٣", "\x00"]) | JSON_SCALARS)
    if kind == "start":
        fields["sample_rate"] = draw(st.sampled_from([8000, 16000.0, 16000.5, "16000", True, -1, 10**20]))
    text = json.dumps(fields)
    return draw(st.just(text) | st.sampled_from(["[]", "{", "null", "1e999", '"x"', "[" * 5000]) | st.text(max_size=30))


# ----- SDP and SIP -----

SDP_LINES = st.sampled_from(
    [
        "v=0",
        "o=- 1 1 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "c=IN IP4 0.0.0.0",
        "m=audio 4000 RTP/AVP 0 8 9 101",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "m=audio ",
        "m=audio",
        "m=video 0 RTP/AVP 96",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "a=rtpmap:111 opus/48000/2",
        "a=rtpmap:111 OPUS/",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:9 G722/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=rtpmap:",
        "a=rtpmap:x",
        "a=fmtp:101 0-16",
        "a=fmtp:*",
        "a=rtcp-fb:* nack",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:0123456789abcdefghijkl",
        "a=fingerprint:sha-256 AB:CD",
        "a=setup:actpass",
        "a=setup:",
        "a=mid:0",
        "a=rtcp-mux",
        "a=",
        "=",
        "",
        "x",
    ]
)


@st.composite
def sdp_texts(draw: st.DrawFn) -> str:
    """SDP assembled from real and broken lines, joined by CRLF, LF or CR."""
    lines = draw(st.lists(SDP_LINES | st.text(max_size=20), max_size=25))
    return draw(st.sampled_from(["\r\n", "\n", "\r"])).join(lines)


URI_PARTS = st.sampled_from(
    [
        "sip:",
        "sips:",
        "tel:",
        "SIP:",
        "<",
        ">",
        '"',
        "@",
        ";",
        ":",
        "%",
        "%2",
        "%zz",
        "+263",
        "user",
        "host",
        ";tag=x",
        " ",
    ]
)
SIP_HEADERS = st.lists(URI_PARTS | st.text(max_size=6), max_size=14).map("".join)

# ----- YAML -----

YAML_PIECES = st.sampled_from(
    [
        "profiles:\n",
        "  p:\n",
        "    language: sn\n",
        "    voice: joe\n",
        "default: p\n",
        "rules:\n",
        "  - match: {dialled: ['+263*']}\n",
        "    profile: p\n",
        "hours: always\n",
        "hours:\n  timezone: Africa/Harare\n  open: {mon-fri: '08:00-17:00'}\n  after_hours_profile: p\n",
        "languages: [sw]\n",
        "entries:\n",
        "  - id: a\n",
        "    questions: {en: [hi]}\n",
        "    answers: {en: hello}\n",
        "texts: {en: {clarify: '{topic}?'}}\n",
        "menu: {'1': a}\n",
        "x: !!float x\n",
        "x: !!timestamp 2020-99-99\n",
        "x: !!python/object:os.system {}\n",
        "x: !!binary '%%'\n",
        "x: !!int 0xZZ\n",
        "x: &a [*a]\n",
        "x: *nowhere\n",
        "<<: {a: 1}\n",
        "? [a, b]\n: c\n",
        "x: '\x01'\n",
        "---\n",
        "...\n",
        "%YAML 1.1\n",
        "\t",
        "[" * 200,
        "{",
        "x: 1e999\n",
        "x: .nan\n",
        "\ufeff",
    ]
)
YAML_TEXTS = st.lists(YAML_PIECES | st.text(max_size=10), max_size=16).map("".join)
