"""Every parser of outside input as one fuzz target: bytes in, a clean result or a documented error out.

A target reads one input the way the gateway would get it (a WebSocket text frame, a form body,
a TCP stream, a file) and calls the parser. Each names the exception types its parser
documents; anything else escaping is a bug. The same table drives the property tests
(``tests/fuzz/test_fuzz_*.py``, bounded, in ``make test``) and the coverage-guided campaigns
(``fuzz/run.py`` under atheris, ``make fuzz``), whose seed inputs live in ``fuzz/corpus/<name>/``.

Targets also check what a clean result promises (TwiML that parses as XML, user parts no longer
than the dialplan reads, 4xx statuses), so a wrong answer is found as well as a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl
from xml.etree import ElementTree

from inzwa_voice.config import Settings, load_settings
from inzwa_voice.core import DTMF_DIGITS
from inzwa_voice.dialplan import Dialplan, DialplanError
from inzwa_voice.errors import ApiError
from inzwa_voice.knowledge.base import Entry
from inzwa_voice.knowledge.loader import KnowledgeError, load_intents, load_knowledge
from inzwa_voice.legs import audiosocket, twilio_protocol, webrtc_signalling
from inzwa_voice.legs.base import ProtocolError, json_object
from inzwa_voice.legs.webrtc_tokens import CallTokens, TokenError
from inzwa_voice.legs.websocket import parse_control, parse_start
from inzwa_voice.media.audiofile import AudioDecodeError, decode_audio, decode_pcm16
from inzwa_voice.sip import sdp, uri

CORPUS = Path(__file__).resolve().parents[2] / "fuzz" / "corpus"
STREAM_SID = "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"
TOKEN_SECRET = "fuzzing-secret-0123456789"
TOKEN_NOW = 1_700_000_000.0


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], object]
    errors: tuple[type[BaseException], ...]
    """What the parser documents; a target with none must never raise."""

    def check(self, data: bytes) -> None:
        """Run one input: a documented error is a clean refusal, anything else propagates."""
        with contextlib.suppress(*self.errors):
            self.run(data)

    def seeds(self) -> list[bytes]:
        """The checked-in seed inputs of this target (``fuzz/corpus/<name>/``)."""
        folder = CORPUS / self.name
        return [path.read_bytes() for path in sorted(folder.iterdir())] if folder.is_dir() else []


def text(data: bytes) -> str:
    """Bytes as the text a WebSocket frame or HTTP body would decode to."""
    return data.decode("utf-8", "replace")


@functools.cache
def _settings(with_keys: bool) -> Settings:
    return load_settings(_env_file=None, api_keys=["k-1"] if with_keys else [])


@functools.cache
def _intents() -> tuple[Entry, ...]:
    return load_intents()


@functools.cache
def _scratch() -> Path:
    """A file the YAML targets write their input to (the loaders read paths, as at start-up)."""
    return Path(tempfile.mkdtemp(prefix="inzwa-fuzz-")) / f"input-{os.getpid()}.yaml"


@functools.cache
def _loop() -> asyncio.AbstractEventLoop:
    return asyncio.new_event_loop()


# ----- legs -----


def twilio_message(data: bytes) -> None:
    """One Media Streams text frame, before (first byte even) or after ``start``."""
    started = STREAM_SID if data[:1] and data[0] % 2 else None
    message = twilio_protocol.parse(text(data[1:]), started)
    if isinstance(message, twilio_protocol.Media):
        assert message.audio
    elif isinstance(message, twilio_protocol.Dtmf):
        assert len(message.digit) == 1
    elif isinstance(message, twilio_protocol.Start):
        assert message.stream_sid and len(message.info.caller) <= 64 and len(message.info.dialled) <= 64


def twilio_webhook(data: bytes) -> None:
    """The voice webhook's form: the TwiML answer (and a transfer's) must be well-formed XML."""
    form = dict(parse_qsl(text(data), keep_blank_values=True))
    parameters = twilio_protocol.stream_parameters(form)
    ElementTree.fromstring(twilio_protocol.twiml("wss://gw.example/v1/twilio/media", parameters, "https://gw/a"))
    ElementTree.fromstring(twilio_protocol.dial_twiml(form.get("To", "")))
    pairs = list(form.items())
    assert twilio_protocol.signature_matches(
        twilio_protocol.signature("t", "https://gw/v", pairs), "t", "https://gw/v", pairs
    )


def audiosocket_stream(data: bytes) -> None:
    """A whole TCP stream from a peer, read frame by frame until it ends or breaks the protocol."""

    async def read_all() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        while True:
            frame = await audiosocket.read_frame(reader)
            if frame.kind == audiosocket.Kind.AUDIO:
                assert len(frame.payload) % 2 == 0 and 2 <= len(frame.payload) <= audiosocket.MAX_AUDIO_BYTES

    _loop().run_until_complete(read_all())


def ws_start(data: bytes) -> None:
    """The native WebSocket's first message, with keys off (first byte even) or on."""
    message = json_object(text(data[1:]))
    if message is not None:
        _, rate = parse_start(message, _settings(bool(data[:1] and data[0] % 2)))
        assert rate in (8000, 16000, 24000, 48000)


def ws_control(data: bytes) -> None:
    """A native WebSocket text frame during a call."""
    control = parse_control(text(data))
    assert control.kind != "dtmf" or control.digit in DTMF_DIGITS


def webrtc_offer(data: bytes) -> None:
    """``POST /v1/webrtc/offer``: the body, then its SDP; every refusal is a 4xx."""
    content_type = "application/json" if not data[:1] or data[0] % 4 else "text/plain"
    try:
        offer = webrtc_signalling.parse_offer(content_type, data[1:])
        webrtc_signalling.check_offer(offer.sdp)
    except ApiError as exc:
        assert 400 <= exc.status < 500 and exc.message
        raise


def webrtc_sdp(data: bytes) -> None:
    """The SDP text alone, the part of an offer a page can make arbitrarily long and odd."""
    webrtc_signalling.check_offer(text(data))


def call_token(data: bytes) -> None:
    CallTokens(TOKEN_SECRET, 300).check(text(data), now=TOKEN_NOW)


# ----- SIP -----


def sip_sdp(data: bytes) -> None:
    """An SIP offer's SDP against our answer (the two halves split at the first NUL byte)."""
    local, _, offer = text(data).partition("\0")
    chosen = sdp.best_codec(offer)
    assert chosen is None or chosen in sdp.PREFERENCE
    narrowed = sdp.narrow_answer(local, offer)
    assert narrowed is None or isinstance(narrowed, str)


def sip_uri(data: bytes) -> None:
    """Header values and request lines as a phone may write them."""
    value = text(data)
    assert len(uri.uri_user(value)) <= uri.MAX_USER
    uri.request_uri(value)
    uri.refer_uri(value)


# ----- files -----


def dialplan_file(data: bytes) -> None:
    path = _scratch()
    path.write_bytes(data)
    Dialplan.load(path)


def knowledge_file(data: bytes) -> None:
    path = _scratch()
    path.write_bytes(data)
    load_knowledge(path, intents=_intents())


def audio_file(data: bytes) -> None:
    """An uploaded audio file (``/v1/audio/transcriptions``, ``/v1/asr``)."""
    samples = decode_audio(data, max_seconds=5.0)
    assert samples.size and samples.dtype.name == "float32"


def pcm16(data: bytes) -> None:
    """Raw PCM16 with a sample rate from the first two bytes (in range or not)."""
    rate = int.from_bytes(data[:2], "little") * 2
    decode_pcm16(data[2:], rate, max_seconds=5.0)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("twilio_message", twilio_message, (ProtocolError,)),
        Target("twilio_webhook", twilio_webhook, ()),
        Target("audiosocket_stream", audiosocket_stream, (ProtocolError, asyncio.IncompleteReadError)),
        Target("ws_start", ws_start, (ProtocolError,)),
        Target("ws_control", ws_control, (ProtocolError,)),
        Target("webrtc_offer", webrtc_offer, (ApiError,)),
        Target("webrtc_sdp", webrtc_sdp, (ApiError,)),
        Target("call_token", call_token, (TokenError,)),
        Target("sip_sdp", sip_sdp, ()),
        Target("sip_uri", sip_uri, ()),
        Target("dialplan_file", dialplan_file, (DialplanError,)),
        Target("knowledge_file", knowledge_file, (KnowledgeError,)),
        Target("audio_file", audio_file, (AudioDecodeError,)),
        Target("pcm16", pcm16, (AudioDecodeError,)),
    )
}
