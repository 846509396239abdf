"""WebRTC signalling as plain values: the offer request, its checks, the answer, ICE settings.

Everything here is decided from text and settings alone, with no peer connection and no call,
so a bad offer is refused before aiortc builds anything, and every refusal is pinned by tests
against literal SDP (``tests/test_webrtc_signalling.py``). The leg (``legs/webrtc.py``) keeps
the aiortc peer, the bot's audio track, the data channel and the routes; it calls this module
to read the request and to word its refusals, all in the shared JSON error shape.

What an offer must hold (RFC 8829, JSEP; aiortc applies the same rules later, some of them
by failing with an exception no caller should see):

* SDP lines (``v=0`` first, every line ``<letter>=<value>``) with media descriptions;
  otherwise ``invalid_sdp``;
* for every media section: ICE credentials (``ice-ufrag``, ``ice-pwd``), a DTLS
  ``fingerprint`` and ``setup`` role, a ``mid``; RTP sections also ``rtcp-mux``
  (session-level attributes count for every section) and their own direction
  (``sendrecv``, ``sendonly``, ``recvonly`` or ``inactive``); otherwise ``invalid_sdp``;
* an audio m-line (the caller's microphone), otherwise ``no_audio``; the first one carries
  the call, and must offer Opus at 48 kHz, the one codec the gateway speaks, otherwise
  ``no_common_codec``.

ICE candidates are not required: without trickle ICE the page sends what it gathered, and a
page with none is still reached through peer-reflexive candidates once it checks ours.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol

from pydantic import BaseModel, Field, ValidationError

from inzwa_voice.config import Settings
from inzwa_voice.conversation.ports import CallRejected
from inzwa_voice.errors import ApiError
from inzwa_voice.legs.base import json_object
from inzwa_voice.legs.webrtc_tokens import CallTokens, TokenError

MAX_SDP_CHARS: Final = 64 * 1024
"""A browser's audio offer is a few KiB; this bounds what a client can make us parse."""
RETRY_AFTER_S: Final = "1"
"""A refused offer may come again at once: peers and calls free up within seconds."""
_DTLS_ROLES: Final = frozenset({"actpass", "active", "passive"})
_RTP_KINDS: Final = frozenset({"audio", "video"})
_DIRECTIONS: Final = ("sendrecv", "sendonly", "recvonly", "inactive")
_M_LINE: Final = re.compile(r"([^ ]+) [0-9]+ [A-Z/]+ (.+)")
"""An m-line's value as aiortc reads it: one space apart, a plain port, an upper-case proto."""


class OfferRequest(BaseModel):
    """``POST /v1/webrtc/offer``'s body (``api/openapi.yaml``)."""

    sdp: str = Field(max_length=MAX_SDP_CHARS)
    type: Literal["offer"]
    token: str | None = Field(None, max_length=256)
    caller: str = Field("", max_length=64)
    dialled: str = Field("", max_length=64)


def parse_offer(content_type: str, body: bytes) -> OfferRequest:
    """The request body as an :class:`OfferRequest`, or the 4xx that says what is wrong with it
    (415 ``unsupported_media_type``, 400 ``invalid_json`` or ``invalid_value``)."""
    if content_type != "application/json":
        raise ApiError(
            f"expected Content-Type application/json, got {content_type or 'none'}",
            status=415,
            code="unsupported_media_type",
        )
    data = json_object(body)
    if data is None:
        raise ApiError("the body must be a JSON object", code="invalid_json")
    try:
        return OfferRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        message = f"{param}: {first['msg']}" if param else first["msg"]
        raise ApiError(message, param=param, code="invalid_value") from None


# ----- SDP -----


@dataclass
class MediaSection:
    """One m-line and the attributes under it (name → values; a flag's value is "")."""

    kind: str
    formats: list[str]
    attributes: dict[str, list[str]] = field(default_factory=dict)

    def attribute(self, name: str, session: dict[str, list[str]]) -> str | None:
        """The attribute's first value here, else at session level (where JSEP allows either)."""
        values = self.attributes.get(name) or session.get(name)
        return values[0] if values else None

    def has_opus(self) -> bool:
        """Whether one of the m-line's formats is mapped to Opus at 48 kHz (``opus/48000/2``)."""
        for rtpmap in self.attributes.get("rtpmap", []):
            payload, _, encoding = rtpmap.partition(" ")
            name, _, rest = encoding.partition("/")
            if payload in self.formats and name.lower() == "opus" and rest.split("/")[0] == "48000":
                return True
        return False


def sdp_error(code: str, message: str) -> ApiError:
    """A 400 about the offer's SDP (``param: sdp``)."""
    return ApiError(message, status=400, param="sdp", code=code)


def _parse(text: str) -> tuple[dict[str, list[str]], list[MediaSection]]:
    """Session attributes and media sections, or ``invalid_sdp`` for text that is not SDP."""
    lines = [line for line in text.replace("\r\n", "\n").split("\n") if line]
    if not lines or lines[0] != "v=0":
        raise sdp_error("invalid_sdp", "sdp is not an SDP offer: it must start with v=0")
    session: dict[str, list[str]] = {}
    media: list[MediaSection] = []
    for number, line in enumerate(lines, 1):
        kind, equals, value = line[:1], line[1:2], line[2:]
        if not ("a" <= kind <= "z" and equals == "="):
            raise sdp_error("invalid_sdp", f"sdp line {number} is not of the form <letter>=<value>")
        if kind == "m":
            m_line = _M_LINE.fullmatch(value)
            if m_line is None:
                raise sdp_error("invalid_sdp", f"sdp line {number} is not an m-line: m=<media> <port> <proto> <fmt>")
            media.append(MediaSection(m_line[1], m_line[2].split()))
        elif kind == "a":
            name, _, attribute = value.partition(":")
            attributes = media[-1].attributes if media else session
            attributes.setdefault(name, []).append(attribute)
    return session, media


def check_offer(text: str) -> None:
    """Refuse an offer that cannot make a call (see the module docstring); None if it can."""
    session, media = _parse(text)
    if not media:
        raise sdp_error("invalid_sdp", "sdp has no media descriptions")
    for index, section in enumerate(media):
        missing = [
            name
            for name in ("ice-ufrag", "ice-pwd", "fingerprint", "setup", "mid")
            if not section.attribute(name, session)
        ]
        if section.kind in _RTP_KINDS and section.attribute("rtcp-mux", session) is None:
            missing.append("rtcp-mux")
        # aiortc reads the direction of a media section only, and fails on one without it.
        if section.kind in _RTP_KINDS and not any(d in section.attributes for d in _DIRECTIONS):
            missing.append("sendrecv (or sendonly, recvonly, inactive)")
        if missing:
            raise sdp_error("invalid_sdp", f"m-line {index + 1} ({section.kind}) lacks a={', a='.join(missing)}")
        if section.attribute("setup", session) not in _DTLS_ROLES:
            raise sdp_error("invalid_sdp", f"m-line {index + 1}: a=setup must be actpass, active or passive")
    audio = next((section for section in media if section.kind == "audio"), None)
    if audio is None:
        raise sdp_error("no_audio", "the offer has no audio m-line: the page must send its microphone")
    if not audio.has_opus():
        raise sdp_error("no_common_codec", "no codec in common: the gateway takes Opus 48 kHz (opus/48000/2)")


def answer_body(sdp: str, call_id: str) -> dict[str, str]:
    """The 200 response: our SDP answer (it holds our candidates) and the call's id."""
    return {"sdp": sdp, "type": "answer", "call_id": call_id}


# ----- admission -----


def check_token(tokens: CallTokens, token: str | None) -> None:
    """401 unless ``token`` is a live call token of ours (asked only with API keys configured)."""
    try:
        tokens.check(token)
    except TokenError as exc:
        raise ApiError(str(exc), status=401, type="authentication_error", param="token", code=exc.code) from None


def too_many_peers(limit: int) -> ApiError:
    return ApiError(
        f"the gateway is at its limit of {limit} WebRTC peers; retry shortly",
        status=503,
        type="overloaded_error",
        code="too_many_peers",
        headers={"Retry-After": RETRY_AFTER_S},
    )


def call_refused(exc: CallRejected) -> ApiError:
    """The call manager's refusal (``overloaded``, ``draining``) as the offer's 503."""
    return ApiError(
        str(exc), status=503, type="overloaded_error", code=exc.code, headers={"Retry-After": RETRY_AFTER_S}
    )


# ----- ICE -----


@dataclass(frozen=True)
class IceServer:
    """A STUN or TURN server as ``RTCIceServer`` takes it; credentials only for TURN."""

    urls: str
    username: str | None = None
    credential: str | None = None


def ice_servers(settings: Settings) -> list[IceServer]:
    """The configured STUN/TURN servers; none unless ``webrtc_ice_servers`` names some, since
    aiortc's own default asks a public STUN server on every call."""
    return [
        IceServer(url, settings.webrtc_turn_username, settings.webrtc_turn_credential)
        if url.startswith("turn")
        else IceServer(url)
        for url in settings.webrtc_ice_servers
    ]


class HostAddresses(Protocol):
    """aioice's ``get_host_addresses``, which it calls with keywords."""

    def __call__(self, use_ipv4: bool, use_ipv6: bool) -> list[str]: ...


def pinned_host_addresses(addresses: list[str]) -> HostAddresses | None:
    """A replacement for aioice's ``get_host_addresses(use_ipv4, use_ipv6)`` that offers only
    ``addresses``, or None for an empty list (gather on every interface). A typo in an address
    raises ValueError here, at start-up."""
    if not addresses:
        return None
    pinned = [ipaddress.ip_address(address.strip()) for address in addresses]

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [str(a) for a in pinned if (a.version == 4 and use_ipv4) or (a.version == 6 and use_ipv6)]

    return host_addresses
