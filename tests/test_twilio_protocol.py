"""Twilio's Media Streams protocol, message by message, against Twilio's documented examples.

No socket and no call: :mod:`inzwa_voice.legs.twilio_protocol` is pure, so every inbound golden
message is parsed, every outbound one is built and compared whole, and each protocol error the
leg counts is raised by name.
"""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest

from inzwa_voice.core import DTMF_DIGITS, CallInfo
from inzwa_voice.legs import twilio_protocol as protocol
from inzwa_voice.legs.base import ProtocolError

GOLDEN = Path(__file__).parent / "golden" / "twilio"


def golden(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GOLDEN / f"{name}.json").read_text(encoding="utf-8"))
    return data


FROM_TWILIO = golden("from_twilio")
TO_TWILIO = golden("to_twilio")
SID = FROM_TWILIO["start"]["streamSid"]


def text(message: dict[str, Any]) -> str:
    return json.dumps(message)


def refused(data: str | bytes, stream_sid: str | None = SID) -> str:
    with pytest.raises(ProtocolError) as caught:
        protocol.parse(data, stream_sid)
    return caught.value.code


# ----- inbound: every documented message parses -----


def test_connected_and_start_parse_before_the_stream_started() -> None:
    assert protocol.parse(text(FROM_TWILIO["connected"])) == protocol.Connected()
    start = protocol.parse(text(FROM_TWILIO["start"]))
    body = FROM_TWILIO["start"]["start"]
    assert start == protocol.Start(
        stream_sid=body["streamSid"],
        info=CallInfo(leg="twilio", external_id=body["callSid"], params=body["customParameters"]),
        account_sid=body["accountSid"],
    )


def test_start_carries_the_caller_and_the_number_dialled_from_our_parameters() -> None:
    message = copy.deepcopy(FROM_TWILIO["start"])
    message["start"]["customParameters"] = {"from": "+263771234567", "to": "+263800123456", "callSid": "CA1"}
    start = protocol.parse(text(message))
    assert isinstance(start, protocol.Start)
    assert (start.info.caller, start.info.dialled) == ("+263771234567", "+263800123456")
    assert start.info.external_id == message["start"]["callSid"]  # start.callSid wins over the parameter
    # Parameters are bounded: how many, and how long each name and value.
    message["start"]["customParameters"] = {f"p{i}" * 40: "v" * 300 for i in range(50)} | {"n": 7}
    start = protocol.parse(text(message))
    assert isinstance(start, protocol.Start)
    assert len(start.info.params) == protocol.MAX_PARAMETERS
    assert all(len(name) <= 64 and len(value) <= 256 for name, value in start.info.params.items())


def test_media_dtmf_mark_and_stop_parse_on_the_started_stream() -> None:
    media = protocol.parse(text(FROM_TWILIO["media"]), SID)
    assert media == protocol.Media(base64.b64decode(FROM_TWILIO["media"]["media"]["payload"]))
    assert protocol.parse(text(FROM_TWILIO["dtmf"]), SID) == protocol.Dtmf("1")
    assert protocol.parse(text(FROM_TWILIO["mark"]), SID) == protocol.Mark("my label")
    stop = protocol.parse(text(FROM_TWILIO["stop"]), SID)
    assert stop == protocol.Stop(call_sid=FROM_TWILIO["stop"]["stop"]["callSid"])


def test_every_keypad_digit_is_accepted() -> None:
    for digit in DTMF_DIGITS:
        message = copy.deepcopy(FROM_TWILIO["dtmf"])
        message["dtmf"]["digit"] = digit
        assert protocol.parse(text(message), SID) == protocol.Dtmf(digit)


# ----- inbound: every error the leg counts, by name -----


def with_body(event: str, **body: Any) -> str:
    message = copy.deepcopy(FROM_TWILIO[event])
    message[event] = {**message[event], **body} if body else message[event]
    return text(message)


def test_what_is_not_a_json_object_in_a_text_frame_is_invalid_json() -> None:
    garbage: list[str | bytes] = ["{not json", "[1, 2]", "42", '"media"', "[" * 65536, b'{"event": "media"}', b"\xff"]
    for data in garbage:
        assert refused(data) == "invalid_json", data


def test_unknown_events_and_events_out_of_place() -> None:
    assert refused(text({"event": "dance", "streamSid": SID})) == "unknown_event"
    assert refused(text({"streamSid": SID})) == "unknown_event"
    assert refused(text({"event": ["media"], "streamSid": SID})) == "unknown_event"
    assert refused(text(FROM_TWILIO["connected"])) == "unknown_event"  # connected after start
    assert refused(text(FROM_TWILIO["start"])) == "duplicate_start"


def test_another_streams_messages_are_wrong_stream() -> None:
    for event in ("media", "dtmf", "mark", "stop"):
        message = {**FROM_TWILIO[event], "streamSid": "MZ-another-stream"}
        assert refused(text(message)) == "wrong_stream", event
        assert refused(text({key: v for key, v in FROM_TWILIO[event].items() if key != "streamSid"})) == "wrong_stream"


def test_media_without_non_empty_base64_audio_is_bad_payload() -> None:
    for payload in ["", "not base64!", "no+JhoaJjpz", "é", None, 42]:
        assert refused(with_body("media", payload=payload)) == "bad_payload", payload
    assert refused(text({**FROM_TWILIO["media"], "media": "no+JhoaJjpzS"})) == "bad_payload"


def test_dtmf_must_be_exactly_one_keypad_digit() -> None:
    for digit in ["", "X", "A", "0123", "11", None, 1]:
        assert refused(with_body("dtmf", digit=digit)) == "bad_dtmf", digit


def test_a_mark_without_a_name_is_unknown() -> None:
    assert refused(with_body("mark", name=None)) == "unknown_mark"
    assert refused(text({**FROM_TWILIO["mark"], "mark": "my label"})) == "unknown_mark"


def test_a_start_without_a_stream_or_in_another_format_is_refused() -> None:
    start = FROM_TWILIO["start"]
    assert refused(text({**start, "start": "yes"}), None) == "bad_start"
    no_sid = {**start, "streamSid": None, "start": {**start["start"], "streamSid": ""}}
    assert refused(text(no_sid), None) == "bad_start"
    for media_format in [None, {"encoding": "audio/l16"}, {**protocol.MEDIA_FORMAT, "sampleRate": 16000}]:
        message = {**start, "start": {**start["start"], "mediaFormat": media_format}}
        assert refused(text(message), None) == "unsupported_media_format", media_format


def test_before_the_start_other_events_parse_and_the_leg_decides() -> None:
    # Without a stream there is no sid to check: the leg refuses anything but connected/start.
    assert isinstance(protocol.parse(text(FROM_TWILIO["media"])), protocol.Media)
    assert isinstance(protocol.parse(text(FROM_TWILIO["stop"])), protocol.Stop)


# ----- outbound: every documented message is built exactly -----


def test_outbound_messages_are_the_documented_ones() -> None:
    sid = TO_TWILIO["media"]["streamSid"]
    audio = base64.b64decode(TO_TWILIO["media"]["media"]["payload"])
    assert json.loads(protocol.media_message(sid, audio)) == TO_TWILIO["media"]
    assert json.loads(protocol.mark_message(sid, "my label")) == TO_TWILIO["mark"]
    assert json.loads(protocol.clear_message(sid)) == TO_TWILIO["clear"]


def test_our_media_parses_back_as_the_same_audio() -> None:
    audio = bytes(range(256)) * 2
    built = json.loads(protocol.media_message(SID, audio))
    inbound = {**FROM_TWILIO["media"], "media": {**FROM_TWILIO["media"]["media"], **built["media"]}}
    assert protocol.parse(text(inbound), SID) == protocol.Media(audio)


# ----- HTTP: signature and TwiML -----


def test_the_signature_matches_twilios_worked_example() -> None:
    vector = golden("webhook")["signature"]
    params = vector["params"].items()
    assert protocol.signature(vector["auth_token"], vector["url"], params) == vector["expected"]
    assert protocol.signature_matches(vector["expected"], vector["auth_token"], vector["url"], params)
    assert not protocol.signature_matches(vector["expected"], "54321", vector["url"], params)
    assert not protocol.signature_matches("", vector["auth_token"], vector["url"], params)


def test_the_voice_webhook_is_answered_with_connect_stream() -> None:
    voice = golden("webhook")["voice"]
    parameters = protocol.stream_parameters(voice["form"])
    assert parameters == {"from": "+263771234567", "to": "+263800123456", "callSid": voice["form"]["CallSid"]}
    action = "https://voice.example.org/v1/twilio/action"
    assert protocol.twiml("wss://voice.example.org/v1/twilio/media", parameters, action) == voice["twiml"]
    assert protocol.stream_parameters({"From": "x" * 100}) == {"from": "x" * 64, "to": "", "callSid": ""}


def test_the_connect_action_dials_a_transfer_target_or_hangs_up() -> None:
    answers = golden("webhook")["connect_action"]
    for case in ("dial_sip", "dial_number"):
        assert protocol.dial_twiml(answers[case]["target"]) == answers[case]["twiml"]
    assert protocol.hangup_twiml() == answers["hangup"]
    # Text that XML cannot hold never reaches the TwiML.
    assert "<Number>+263242700000</Number>" in protocol.dial_twiml("+263242\x00700000")
