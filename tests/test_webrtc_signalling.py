"""WebRTC signalling without a peer: the offer body, the SDP checks, ICE settings, the answer.

The offers are literal SDP, golden-style: a browser's offer as Chromium writes it (audio with
Opus first, then the ``events`` data channel), and that offer with one thing wrong at a time.
Every refusal is the 4xx a page gets from ``POST /v1/webrtc/offer``, in the shared error shape.
"""

from __future__ import annotations

import json
import time

import pytest

from inzwa_voice.config import load_settings
from inzwa_voice.conversation.ports import CallRejected
from inzwa_voice.errors import ApiError
from inzwa_voice.legs import webrtc_signalling as signalling
from inzwa_voice.legs.webrtc_tokens import CallTokens

FINGERPRINT = (
    "a=fingerprint:sha-256 "
    "6B:8B:5D:EA:59:04:20:23:29:C8:87:1C:CC:87:32:BE:DD:8C:66:A5:8E:50:55:EA:8C:D3:B6:5C:09:5E:D6:BC"
)
BROWSER_OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "a=extmap-allow-mixed",
        "a=msid-semantic: WMS 5y1y4zHnE3uQkxJtNkR8bFUTX5eAcZxTYgF6",
        "m=audio 50312 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
        "c=IN IP4 192.0.2.10",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=candidate:3349512283 1 udp 2122260223 192.0.2.10 50312 typ host generation 0 network-id 1",
        "a=ice-ufrag:Fk3T",
        "a=ice-pwd:q7zVMnxOq1uh8zUp2m3AC0yN",
        "a=ice-options:trickle",
        FINGERPRINT,
        "a=setup:actpass",
        "a=mid:0",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        "a=sendrecv",
        "a=msid:5y1y4zHnE3uQkxJtNkR8bFUTX5eAcZxTYgF6 0b3a2f36-63b5-4a6c-9e57-b7f3f1a3c2de",
        "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2",
        "a=rtcp-fb:111 transport-cc",
        "a=fmtp:111 minptime=10;useinbandfec=1",
        "a=rtpmap:63 red/48000/2",
        "a=fmtp:63 111/111",
        "a=rtpmap:9 G722/8000",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:13 CN/8000",
        "a=rtpmap:110 telephone-event/48000",
        "a=rtpmap:126 telephone-event/8000",
        "a=ssrc:1840536741 cname:u6K2nKn3ylHmZ8xP",
        "m=application 50313 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 192.0.2.10",
        "a=candidate:3349512283 1 udp 2122260223 192.0.2.10 50313 typ host generation 0 network-id 1",
        "a=ice-ufrag:Fk3T",
        "a=ice-pwd:q7zVMnxOq1uh8zUp2m3AC0yN",
        "a=ice-options:trickle",
        FINGERPRINT,
        "a=setup:actpass",
        "a=mid:1",
        "a=sctp-port:5000",
        "a=max-message-size:262144",
        "",
    ]
)

# The same page without its microphone: only the events channel.
NO_AUDIO_OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 4611731400430051337 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "a=ice-ufrag:Fk3T",
        "a=ice-pwd:q7zVMnxOq1uh8zUp2m3AC0yN",
        FINGERPRINT,
        "a=setup:actpass",
        "m=application 50313 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 192.0.2.10",
        "a=mid:0",
        "a=sctp-port:5000",
        "",
    ]
)

# A SIP phone's offer: audio, but G.711 only and no DTLS or ICE at all.
SIP_PHONE_OFFER = "v=0\r\no=- 1 1 IN IP4 192.0.2.20\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 8\r\n"


def without(offer: str, prefix: str | tuple[str, ...]) -> str:
    return "".join(line for line in offer.splitlines(keepends=True) if not line.startswith(prefix))


def refusal(offer: str) -> ApiError:
    with pytest.raises(ApiError) as raised:
        signalling.check_offer(offer)
    error = raised.value
    assert (error.status, error.type, error.param) == (400, "invalid_request_error", "sdp")
    return error


def test_a_browser_offer_passes_and_so_do_session_level_attributes() -> None:
    signalling.check_offer(BROWSER_OFFER)
    signalling.check_offer(BROWSER_OFFER.replace("\r\n", "\n"))  # bare newlines are SDP too
    # ICE credentials, fingerprint and role may be given once for all sections.
    shared = ("a=ice-ufrag", "a=ice-pwd", "a=fingerprint", "a=setup")
    once = [line for line in BROWSER_OFFER.split("\r\n") if line.startswith(shared)][: len(shared)]
    moved = without(BROWSER_OFFER, shared).replace("t=0 0\r\n", "t=0 0\r\n" + "\r\n".join(once) + "\r\n")
    signalling.check_offer(moved)
    # No candidates at all: the page is reached through peer-reflexive ones.
    signalling.check_offer(without(BROWSER_OFFER, "a=candidate"))


@pytest.mark.parametrize(
    ("offer", "message"),
    [
        ("", "must start with v=0"),
        ("hello", "must start with v=0"),
        ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n", "no media descriptions"),
        (BROWSER_OFFER.replace("a=mid:0", "a=mid:0\r\nnot sdp at all"), "sdp line 18 is not of the form"),
        (BROWSER_OFFER.replace("m=audio 50312", "m=audio port"), "not an m-line"),
        ("v=0\r\nm=audio 9\r\n", "not an m-line"),
        (BROWSER_OFFER.replace("a=ice-ufrag", "a=x-ufrag"), "m-line 1 (audio) lacks a=ice-ufrag"),
        (without(BROWSER_OFFER, "a=fingerprint"), "lacks a=fingerprint"),
        (without(BROWSER_OFFER, "a=rtcp-mux"), "m-line 1 (audio) lacks a=rtcp-mux"),
        (BROWSER_OFFER.replace("a=mid:1", "a=x-mid:1"), "m-line 2 (application) lacks a=mid"),
        (without(BROWSER_OFFER, "a=setup"), "lacks a=setup"),
        (BROWSER_OFFER.replace("a=setup:actpass", "a=setup:whenever"), "a=setup must be actpass"),
        (SIP_PHONE_OFFER, "lacks a=ice-ufrag, a=ice-pwd, a=fingerprint, a=setup, a=mid, a=rtcp-mux"),
    ],
)
def test_text_that_cannot_be_a_webrtc_offer_is_invalid_sdp(offer: str, message: str) -> None:
    error = refusal(offer)
    assert error.code == "invalid_sdp"
    assert message in error.message


def test_an_offer_without_audio_or_without_opus_is_refused_by_name() -> None:
    error = refusal(NO_AUDIO_OFFER)
    assert error.code == "no_audio" and "microphone" in error.message
    # Opus gone from the audio m-line (G.722, PCMU, PCMA are left): nothing we can speak.
    no_opus = without(BROWSER_OFFER, "a=rtpmap:111").replace(" 111 63 ", " 63 ")
    assert refusal(no_opus).code == "no_common_codec"
    # Opus mapped to a payload type the m-line does not list is not offered either.
    assert refusal(BROWSER_OFFER.replace(" 111 63 ", " 63 ")).code == "no_common_codec"
    # Nor is Opus at another clock rate.
    assert refusal(BROWSER_OFFER.replace("opus/48000/2", "opus/16000/1")).code == "no_common_codec"
    # The name is matched without regard to case, as SDP says.
    signalling.check_offer(BROWSER_OFFER.replace("opus/48000/2", "OPUS/48000/2"))


def test_the_offer_body_is_parsed_with_a_clear_error_for_each_mistake() -> None:
    body = {"sdp": BROWSER_OFFER, "type": "offer", "caller": "web", "token": "t"}
    parsed = signalling.parse_offer("application/json", json.dumps(body).encode())
    assert (parsed.sdp, parsed.type, parsed.caller, parsed.dialled, parsed.token) == (
        BROWSER_OFFER,
        "offer",
        "web",
        "",
        "t",
    )

    def error(content_type: str, raw: bytes) -> tuple[int, str | None, str | None]:
        with pytest.raises(ApiError) as raised:
            signalling.parse_offer(content_type, raw)
        return raised.value.status, raised.value.code, raised.value.param

    assert error("text/plain", b"{}") == (415, "unsupported_media_type", None)
    assert error("application/json", b"{not json") == (400, "invalid_json", None)
    assert error("application/json", b'["sdp"]') == (400, "invalid_json", None)
    assert error("application/json", b"\xff\xfe") == (400, "invalid_json", None)
    assert error("application/json", json.dumps({**body, "type": "answer"}).encode()) == (400, "invalid_value", "type")
    assert error("application/json", json.dumps({"type": "offer"}).encode()) == (400, "invalid_value", "sdp")
    huge = {**body, "sdp": "v=0\r\n" + "a=x\r\n" * signalling.MAX_SDP_CHARS}
    assert error("application/json", json.dumps(huge).encode()) == (400, "invalid_value", "sdp")
    assert error("application/json", json.dumps({**body, "caller": "9" * 65}).encode()) == (
        400,
        "invalid_value",
        "caller",
    )


def test_the_answer_and_every_refusal_have_the_documented_shape() -> None:
    assert signalling.answer_body("v=0\r\n", "abc") == {"sdp": "v=0\r\n", "type": "answer", "call_id": "abc"}

    busy = signalling.too_many_peers(20)
    assert (busy.status, busy.type, busy.code, busy.headers) == (
        503,
        "overloaded_error",
        "too_many_peers",
        {"Retry-After": "1"},
    )
    assert "20" in busy.message
    draining = signalling.call_refused(CallRejected("draining", "the gateway is shutting down"))
    assert (draining.status, draining.type, draining.code) == (503, "overloaded_error", "draining")
    assert draining.message == "the gateway is shutting down" and draining.headers == {"Retry-After": "1"}

    tokens = CallTokens("a-secret-shared-by-gateways", 300)
    signalling.check_token(tokens, tokens.issue())
    cases = {
        None: "missing_token",
        "v1.x.y": "invalid_token",
        CallTokens("another-gateways-secret", 300).issue(): "invalid_token",
        tokens.issue(now=time.time() - 301): "expired_token",
    }
    for token, code in cases.items():
        with pytest.raises(ApiError) as raised:
            signalling.check_token(tokens, token)
        assert (raised.value.status, raised.value.type, raised.value.param, raised.value.code) == (
            401,
            "authentication_error",
            "token",
            code,
        )


def test_ice_servers_come_from_settings_only() -> None:
    assert signalling.ice_servers(load_settings(_env_file=None)) == []  # never a public STUN server by default
    settings = load_settings(
        _env_file=None,
        webrtc_ice_servers="stun:stun.example.org:3478,turn:turn.example.org:3478?transport=udp",
        webrtc_turn_username="helpline",
        webrtc_turn_credential="s3cret",
    )
    assert signalling.ice_servers(settings) == [
        signalling.IceServer("stun:stun.example.org:3478"),
        signalling.IceServer("turn:turn.example.org:3478?transport=udp", "helpline", "s3cret"),
    ]


def test_host_candidates_can_be_pinned_to_chosen_addresses() -> None:
    assert signalling.pinned_host_addresses([]) is None  # aioice gathers every interface
    pinned = signalling.pinned_host_addresses(["127.0.0.1", " ::1 ", "192.0.2.7"])
    assert pinned is not None
    assert pinned(use_ipv4=True, use_ipv6=True) == ["127.0.0.1", "::1", "192.0.2.7"]
    assert pinned(use_ipv4=True, use_ipv6=False) == ["127.0.0.1", "192.0.2.7"]
    assert pinned(use_ipv4=False, use_ipv6=True) == ["::1"]
    with pytest.raises(ValueError):
        signalling.pinned_host_addresses(["127.0.0.300"])
