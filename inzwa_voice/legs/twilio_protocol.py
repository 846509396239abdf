"""Twilio's Media Streams protocol as pure functions: no sockets, no session, no event loop.

Everything Twilio and the gateway say to each other is here, so it is tested message by message
against Twilio's documented examples (``tests/golden/twilio/``, from
https://www.twilio.com/docs/voice/media-streams/websocket-messages) without a call:

* the request signature (``X-Twilio-Signature``), the TwiML that answers the voice webhook and
  the TwiML that answers ``<Connect action>`` when the stream ends (``<Dial>`` or ``<Hangup/>``);
* :func:`parse`: one inbound WebSocket message to a typed value (:class:`Connected`,
  :class:`Start`, :class:`Media`, :class:`Dtmf`, :class:`Mark`, :class:`Stop`), or a
  :class:`~inzwa_voice.legs.base.ProtocolError` whose ``code`` names what is wrong;
* :func:`media_message`, :func:`mark_message`, :func:`clear_message`: what we send.

The leg (:mod:`inzwa_voice.legs.twilio`) keeps the routes, the socket, the pacing and the
playout. The model is pipecat's ``serializers/twilio.py``: a provider's wire format as plain
serialize and deserialize, apart from the transport that carries it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from xml.etree import ElementTree

from inzwa_voice.core import DTMF_DIGITS, CallInfo
from inzwa_voice.legs.base import ProtocolError, json_object

SAMPLE_RATE: Final = 8000
MEDIA_FORMAT: Final = {"encoding": "audio/x-mulaw", "sampleRate": SAMPLE_RATE, "channels": 1}
"""The only format of a Media Stream (``start.mediaFormat``)."""
MAX_PARAMETERS: Final = 32
"""Custom parameters kept from ``start`` (each name cut to 64 characters, value to 256)."""
INBOUND_EVENTS: Final = frozenset({"connected", "start", "media", "dtmf", "mark", "stop"})


# ----- HTTP: the signature and the voice webhook's answer -----


def signature(auth_token: str, url: str, params: Iterable[tuple[str, str]] = ()) -> str:
    """``X-Twilio-Signature`` of a request to ``url`` with POST ``params`` (none for a WebSocket).

    base64(HMAC-SHA1(auth token, URL + each parameter's name and value)); Twilio's helper
    libraries sort the distinct names, then each name's distinct values.
    """
    data = url + "".join(name + value for name, value in sorted(set(params)))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def signature_matches(presented: str, auth_token: str, url: str, params: Iterable[tuple[str, str]] = ()) -> bool:
    """Whether ``presented`` signs this request, compared in constant time."""
    return hmac.compare_digest(presented.encode(), signature(auth_token, url, params).encode())


STREAM_TOKEN_PARAMETER: Final = "token"
"""The ``<Parameter>`` that carries a stream's per-call token back in ``start.customParameters``."""


def stream_token(auth_token: str, call_sid: str, expires: int) -> str:
    """A per-call token for the media stream: ``<expiry>.<HMAC-SHA256(auth token, CallSid, expiry)>``.

    Twilio signs the stream's WebSocket upgrade over its URL alone, which is the same for every
    call, so that signature proves only that Twilio once called. The token rides in the TwiML's
    ``<Parameter>``s, which only the signed webhook's answer carries, and comes back in the
    ``start`` message, bound to that call's CallSid and an expiry.
    """
    data = f"inzwa-stream.{call_sid}.{expires}".encode()
    digest = hmac.new(auth_token.encode(), data, hashlib.sha256).digest()
    return f"{expires}.{base64.urlsafe_b64encode(digest).rstrip(b'=').decode()}"


def stream_token_valid(token: str, auth_token: str, call_sid: str, now: float) -> bool:
    """Whether ``token`` was issued for ``call_sid`` with this auth token and has not expired."""
    expires, _, _ = token.partition(".")
    if not (expires.isascii() and expires.isdigit()) or len(expires) > 12 or int(expires) < now:
        return False
    return hmac.compare_digest(token.encode(), stream_token(auth_token, call_sid, int(expires)).encode())


# Characters XML 1.0 cannot hold at all, not even escaped (``&#1;`` is ill-formed too), and the
# other control characters, which no number or sid has: ElementTree would copy them into the
# TwiML as they are, and Twilio could not parse the answer.
_NOT_XML_TEXT = re.compile("[^\x20-\x7e\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def stream_parameters(form: Mapping[str, str]) -> dict[str, str]:
    """The ``<Parameter>``s a stream carries from the voice webhook's form: the caller, the
    number dialled and the call's sid (a Stream URL may carry no query string)."""
    return {
        name: _NOT_XML_TEXT.sub("", form.get(field, ""))[:64]
        for name, field in (("from", "From"), ("to", "To"), ("callSid", "CallSid"))
    }


def twiml(stream_url: str, parameters: Mapping[str, str], action_url: str) -> str:
    """``<Connect action><Stream>``: Twilio streams the call to ``stream_url`` until the socket
    closes, then posts ``action_url`` for what comes next (a transfer's ``<Dial>``)."""
    response = ElementTree.Element("Response")
    connect = ElementTree.SubElement(response, "Connect", action=action_url)
    stream = ElementTree.SubElement(connect, "Stream", url=stream_url)
    for name, value in parameters.items():
        ElementTree.SubElement(stream, "Parameter", name=name, value=value)
    return _document(response)


def dial_twiml(target: str, action_url: str | None = None) -> str:
    """``<Dial>`` to a transfer target: ``<Sip>`` for a ``sip:`` URI, else ``<Number>``. With
    ``action_url``, Twilio posts how the dial went (``DialCallStatus``) there once it is over."""
    response = ElementTree.Element("Response")
    _dial(response, target, action_url)
    return _document(response)


def _dial(response: ElementTree.Element, target: str, action_url: str | None = None) -> None:
    noun = "Sip" if target.lower().startswith("sip:") else "Number"
    dial = ElementTree.SubElement(response, "Dial", {"action": action_url} if action_url else {})
    ElementTree.SubElement(dial, noun).text = _NOT_XML_TEXT.sub("", target)


def busy_twiml(say: str, target: str | None) -> str:
    """A call refused before its stream: ``<Say>`` the busy message, then ``<Dial>`` the
    transfer target (people may take it) or ``<Hangup/>``."""
    response = ElementTree.Element("Response")
    if say:
        ElementTree.SubElement(response, "Say").text = _NOT_XML_TEXT.sub("", say)
    if target:
        _dial(response, target)
    else:
        ElementTree.SubElement(response, "Hangup")
    return _document(response)


def hangup_twiml() -> str:
    """``<Hangup/>``: the stream ended without a transfer, so the call ends."""
    response = ElementTree.Element("Response")
    ElementTree.SubElement(response, "Hangup")
    return _document(response)


def _document(response: ElementTree.Element) -> str:
    return '<?xml version="1.0" encoding="UTF-8"?>' + ElementTree.tostring(response, encoding="unicode")


# ----- inbound: what Twilio sends over the stream -----


@dataclass(frozen=True, slots=True)
class Connected:
    """The first message: the socket is up, the stream not yet started."""


@dataclass(frozen=True, slots=True)
class Start:
    stream_sid: str
    info: CallInfo
    account_sid: str = ""


@dataclass(frozen=True, slots=True)
class Media:
    audio: bytes
    """μ-law at 8 kHz, one byte a sample (20 ms is 160 bytes)."""


@dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str


@dataclass(frozen=True, slots=True)
class Mark:
    """Twilio's echo of a mark we sent: the audio sent before it has played (or was cleared)."""

    name: str


@dataclass(frozen=True, slots=True)
class Stop:
    """The stream is over: the caller hung up, or the call left the ``<Connect>``."""

    call_sid: str = ""


Inbound = Connected | Start | Media | Dtmf | Mark | Stop


def parse(data: str | bytes, stream_sid: str | None = None) -> Inbound:
    """One message from Twilio as a typed value.

    ``stream_sid`` is the started stream's sid, or None before ``start``. Before it, any known
    event parses (the leg decides that only ``connected`` and ``start`` may come first); after
    it, another ``start`` or another stream's sid is an error. Errors are
    :class:`ProtocolError` with these codes:

    * ``invalid_json``: a binary frame (Twilio sends text only), or text that is not a JSON object;
    * ``unknown_event``: no ``event``, one Twilio does not send, or ``connected`` after ``start``;
    * ``duplicate_start``, ``wrong_stream`` (another ``streamSid``): after ``start`` only;
    * ``bad_start``: no ``start`` object or no ``streamSid``; ``unsupported_media_format``: not
      μ-law 8 kHz mono;
    * ``bad_payload``: media without a non-empty base64 payload (μ-law is one byte a sample, so
      any length is audio); ``bad_dtmf``: not one keypad digit; ``unknown_mark``: a mark
      without a name.
    """
    message = json_object(data) if isinstance(data, str) else None
    if message is None:
        raise ProtocolError("invalid_json", "messages must be JSON objects in text frames")
    event = message.get("event")
    if not isinstance(event, str) or event not in INBOUND_EVENTS:
        raise ProtocolError("unknown_event", f"unknown event {str(event)[:40]!r}")
    if stream_sid is None:
        if event == "connected":
            return Connected()
        if event == "start":
            return _start(message)
    elif event in ("connected", "start"):
        code = "duplicate_start" if event == "start" else "unknown_event"
        raise ProtocolError(code, f"{event!r} after the stream started")
    elif message.get("streamSid") != stream_sid:
        raise ProtocolError("wrong_stream", f"streamSid {str(message.get('streamSid'))[:64]!r} is another stream's")
    if event == "media":
        return Media(_payload(message))
    if event == "dtmf":
        digit = _field(message, "dtmf", "digit")
        if digit is None or digit not in DTMF_DIGITS:
            raise ProtocolError("bad_dtmf", f"dtmf.digit {str(digit)[:8]!r} is not a keypad digit")
        return Dtmf(digit)
    if event == "mark":
        name = _field(message, "mark", "name")
        if name is None:
            raise ProtocolError("unknown_mark", "mark.name must be a string")
        return Mark(name)
    stop = message.get("stop")
    call_sid = stop.get("callSid") if isinstance(stop, dict) else None
    return Stop(call_sid if isinstance(call_sid, str) else "")


def _start(message: dict[str, Any]) -> Start:
    start = message.get("start")
    if not isinstance(start, dict):
        raise ProtocolError("bad_start", "the start message has no start object")
    stream_sid = start.get("streamSid") or message.get("streamSid")
    if not isinstance(stream_sid, str) or not stream_sid:
        raise ProtocolError("bad_start", "the start message has no streamSid")
    media_format = start.get("mediaFormat")
    if not isinstance(media_format, dict) or any(media_format.get(k) != v for k, v in MEDIA_FORMAT.items()):
        raise ProtocolError("unsupported_media_format", f"mediaFormat must be {MEDIA_FORMAT}")
    custom = start.get("customParameters")
    params: dict[str, str] = {}
    for name, value in custom.items() if isinstance(custom, dict) else ():
        if isinstance(value, str) and len(params) < MAX_PARAMETERS:
            params[str(name)[:64]] = value[:256]
    call_sid = start.get("callSid")
    account_sid = start.get("accountSid")
    info = CallInfo(
        leg="twilio",
        caller=params.get("from", "")[:64],
        dialled=params.get("to", "")[:64],
        external_id=(call_sid if isinstance(call_sid, str) else params.get("callSid", ""))[:64],
        params=params,
    )
    return Start(stream_sid, info, account_sid[:64] if isinstance(account_sid, str) else "")


def _field(message: dict[str, Any], outer: str, inner: str) -> str | None:
    section = message.get(outer)
    value = section.get(inner) if isinstance(section, dict) else None
    return value if isinstance(value, str) else None


def _payload(message: dict[str, Any]) -> bytes:
    payload = _field(message, "media", "payload")
    try:
        audio = base64.b64decode(payload, validate=True) if payload else b""
    except ValueError:  # binascii.Error, or a payload that is not even ASCII
        audio = b""
    if not audio:
        raise ProtocolError("bad_payload", "media.payload must be non-empty base64")
    return audio


# ----- outbound: what we send over the stream -----


def media_message(stream_sid: str, audio: bytes) -> str:
    """Bot audio (μ-law at 8 kHz) for Twilio to play after what it already has."""
    payload = base64.b64encode(audio).decode()
    return _text({"event": "media", "streamSid": stream_sid, "media": {"payload": payload}})


def mark_message(stream_sid: str, name: str) -> str:
    """Twilio echoes ``name`` back once the audio sent before it has played, or at once after a
    ``clear`` (which is why an echo alone does not prove the audio played)."""
    return _text({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


def clear_message(stream_sid: str) -> str:
    """Drop the audio Twilio holds and has not played yet (barge-in)."""
    return _text({"event": "clear", "streamSid": stream_sid})


def _text(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))
