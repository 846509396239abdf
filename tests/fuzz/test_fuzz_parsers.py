"""Property: every parser of outside input gives a clean result or one of its documented errors.

Each target of ``tests/fuzz/targets.py`` gets random bytes, mutations of its seed corpus
(``fuzz/corpus/<target>/``) and inputs built from its protocol's own pieces. The example count
is the ``ci`` profile's (tests/conftest.py); ``HYPOTHESIS_PROFILE=long`` runs many more, and
``make fuzz`` runs the same targets coverage-guided.
"""

from __future__ import annotations

import functools
import json
import struct
from urllib.parse import urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inzwa_voice.errors import ApiError
from inzwa_voice.legs import twilio_protocol, webrtc_signalling
from inzwa_voice.legs.base import ProtocolError
from inzwa_voice.media.audiofile import decode_audio
from tests.fuzz import strategies
from tests.fuzz.targets import CORPUS, STREAM_SID, TARGETS
from tests.test_webrtc_signalling import BROWSER_OFFER

NAMES = sorted(TARGETS)


@functools.cache
def _seeds(name: str) -> list[bytes]:
    return TARGETS[name].seeds()


def test_every_target_has_seeds_that_parse_or_refuse_cleanly() -> None:
    for name in NAMES:
        assert _seeds(name), f"fuzz/corpus/{name}/ is empty: run fuzz/seeds.py"
        for seed in _seeds(name):
            TARGETS[name].check(seed)


def test_what_fuzzing_found_stays_fixed() -> None:
    """Each once crashed (a 500, or the whole process): now a clean result or a clean refusal."""
    corpus = CORPUS / "audio_file"
    # An ID3 tag whose frame id is not UTF-8: PyAV raised UnicodeDecodeError opening it.
    assert decode_audio((corpus / "regression-id3-not-utf8.mp3").read_bytes(), max_seconds=5).size
    # An ADTS header bit flipped to 44 channels, then mono frames: numpy crashed on PyAV's frame.
    assert decode_audio((corpus / "regression-aac-channels-change.aac").read_bytes(), max_seconds=5).size
    # An offer without a direction: aiortc's createAnswer raised ValueError, a 500.
    without_direction = BROWSER_OFFER.replace("a=sendrecv\r\n", "")
    with pytest.raises(ApiError, match="sendrecv") as refused:
        webrtc_signalling.check_offer(without_direction)
    assert refused.value.code == "invalid_sdp"


@pytest.mark.parametrize("name", NAMES)
@given(data=st.binary(max_size=1024))
def test_random_bytes(name: str, data: bytes) -> None:
    TARGETS[name].check(data)


@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_mutated_seeds(name: str, data: st.DataObject) -> None:
    TARGETS[name].check(data.draw(strategies.mutated(_seeds(name))))


@given(message=strategies.twilio_messages(), started=st.booleans())
def test_twilio_messages(message: str, started: bool) -> None:
    try:
        twilio_protocol.parse(message, STREAM_SID if started else None)
    except ProtocolError as exc:
        assert exc.code and str(exc)


@given(form=st.dictionaries(st.sampled_from(["From", "To", "CallSid", "Digits"]), st.text(max_size=80), max_size=4))
def test_twilio_webhook_forms(form: dict[str, str]) -> None:
    TARGETS["twilio_webhook"].check(urlencode(form).encode())


@given(message=strategies.ws_messages(), keys=st.booleans())
def test_ws_messages(message: str, keys: bool) -> None:
    TARGETS["ws_start"].check(bytes([keys]) + message.encode())
    TARGETS["ws_control"].check(message.encode())


FRAME_KINDS = st.sampled_from([0x00, 0x01, 0x03, 0x10, 0xFF]) | st.integers(0, 255)


@given(
    frames=st.lists(
        st.tuples(
            FRAME_KINDS,
            st.integers(0, 0xFFFF) | st.sampled_from([0, 1, 2, 16, 320, 8000, 8001]),
            st.binary(max_size=400),
        ),
        max_size=8,
    )
)
def test_audiosocket_frames(frames: list[tuple[int, int, bytes]]) -> None:
    """Headers whose declared length may or may not match what follows."""
    stream = b"".join(struct.pack(">BH", kind, length) + payload for kind, length, payload in frames)
    TARGETS["audiosocket_stream"].check(stream)


@given(local=strategies.sdp_texts(), offer=strategies.sdp_texts())
def test_sdp_offers(local: str, offer: str) -> None:
    TARGETS["sip_sdp"].check(f"{local}\0{offer}".encode())
    TARGETS["webrtc_sdp"].check(offer.encode())


@given(sdp=strategies.sdp_texts(), extra=strategies.json_values(st.sampled_from(["sdp", "type", "token", "caller"])))
def test_webrtc_offer_bodies(sdp: str, extra: object) -> None:
    body = {"sdp": sdp, "type": "offer", "extra": extra}
    TARGETS["webrtc_offer"].check(b"\1" + json.dumps(body).encode())


@given(header=strategies.SIP_HEADERS)
def test_sip_headers(header: str) -> None:
    TARGETS["sip_uri"].check(header.encode())


@given(token=st.from_regex(r"v[0-9]\.[0-9²٣ ]{0,14}\.[A-Za-z0-9_=-]{0,44}", fullmatch=True) | st.text(max_size=40))
def test_call_tokens(token: str) -> None:
    TARGETS["call_token"].check(token.encode())


@given(document=strategies.YAML_TEXTS)
def test_dialplan_and_knowledge_files(document: str) -> None:
    TARGETS["dialplan_file"].check(document.encode())
    TARGETS["knowledge_file"].check(document.encode())
