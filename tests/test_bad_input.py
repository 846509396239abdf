"""Bad input gets a 4xx in the shared error shape, and the server answers the next request."""

from __future__ import annotations

import base64
import io
import os
import wave
from pathlib import Path
from xml.etree import ElementTree

import aiohttp
import pytest
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

from inzwa_voice.api.keys import SETTINGS
from inzwa_voice.dialplan import Dialplan, DialplanError
from inzwa_voice.media.audiofile import decode_audio
from tests.conftest import Server

SENTENCE = "The clinic opens at eight in the morning."
ERROR_TYPES = {"invalid_request_error", "authentication_error", "overloaded_error", "not_found_error"}


async def assert_error(resp: aiohttp.ClientResponse, status: int, param: str | None = None) -> dict[str, object]:
    assert resp.status == status, await resp.text()
    assert resp.headers["Content-Type"].startswith("application/json")
    body = await resp.json()
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] in ERROR_TYPES and error["message"]
    if param is not None:
        assert error["param"] == param
    return error


async def assert_still_serving(server: Server) -> None:
    async with server.http.get(server.url + "/health") as resp:
        assert resp.status == 200


CASES = [
    ("/tts", {"text": ""}, "text"),
    ("/tts", {"text": "a" * 5000}, "text"),
    ("/tts", {"text": "hello", "voice": "nobody"}, "voice"),
    ("/tts", {"text": "hello", "speed": 10}, "speed"),
    ("/tts", {"text": "hello", "format": "midi"}, "format"),
    ("/tts", {"text": "hello", "sample_rate": 0}, "sample_rate"),
    ("/audio/speech", {"input": "a" * 5000, "voice": "alloy"}, "input"),
    ("/audio/speech", {"input": "hello", "voice": "nobody"}, "voice"),
    ("/audio/speech", {"input": "hello", "voice": "alloy", "speed": 10}, "speed"),
    ("/asr", {"audio_base64": "%%%not base64%%%"}, "audio_base64"),
    ("/asr", {"audio_base64": base64.b64encode(b"this is plain text, not audio").decode()}, "audio_base64"),
    ("/asr", {"audio_base64": base64.b64encode(os.urandom(3001)).decode()}, "audio_base64"),
    ("/asr", {"audio_base64": "AAAA", "sample_rate": 0}, "sample_rate"),
    ("/asr", {"audio_base64": "AAAA", "sample_rate": 1_000_000}, "sample_rate"),
    ("/asr", {"audio_base64": "AAAA", "language": "xx"}, "language"),
    ("/chat", {"messages": []}, "messages"),
    ("/chat", {"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
    ("/chat", {"messages": [{"role": "user", "content": "a" * 5000}]}, "messages.0.content"),
    ("/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "temperature": 9}, "temperature"),
]


@pytest.mark.parametrize(("path", "body", "param"), CASES)
async def test_invalid_bodies_get_a_clear_400(server: Server, path: str, body: dict[str, object], param: str) -> None:
    async with server.http.post(server.v1 + path, json=body) as resp:
        await assert_error(resp, 400, param)
    await assert_still_serving(server)


@pytest.mark.parametrize("path", ["/tts", "/asr", "/chat", "/audio/speech", "/chat/completions"])
async def test_malformed_json(server: Server, path: str) -> None:
    headers = {"Content-Type": "application/json"}
    async with server.http.post(server.v1 + path, data=b'{"text": "unterminated', headers=headers) as resp:
        error = await assert_error(resp, 400)
    assert error["code"] == "invalid_json"
    async with server.http.post(server.v1 + path, data=b"[1, 2]", headers=headers) as resp:
        await assert_error(resp, 400)
    await assert_still_serving(server)


@pytest.mark.parametrize("path", ["/tts", "/asr", "/chat", "/audio/speech", "/chat/completions"])
async def test_wrong_content_type(server: Server, path: str) -> None:
    async with server.http.post(server.v1 + path, data=b"text=hello", headers={"Content-Type": "text/plain"}) as resp:
        await assert_error(resp, 415)


async def test_transcription_rejects_non_audio_and_missing_file(server: Server) -> None:
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("file", b"hello, I am a text file", filename="notes.txt", content_type="text/plain")
    form.add_field("model", "whisper-1")
    async with server.http.post(server.v1 + "/audio/transcriptions", data=form) as resp:
        await assert_error(resp, 400, "file")
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("model", "whisper-1")
    async with server.http.post(server.v1 + "/audio/transcriptions", data=form) as resp:
        await assert_error(resp, 400, "file")
    async with server.http.post(server.v1 + "/audio/transcriptions", json={"file": "x"}) as resp:
        await assert_error(resp, 415)


async def test_a_200_mb_upload_is_refused_without_harm(server: Server) -> None:
    block = b"\0" * (1 << 20)

    async def body():  # 200 MiB, streamed so the test itself stays small
        for _ in range(200):
            yield block

    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("file", body(), filename="huge.wav", content_type="audio/wav")
    try:
        async with server.http.post(server.v1 + "/audio/transcriptions", data=form) as resp:
            await assert_error(resp, 413)
    except aiohttp.ClientOSError:
        # The server may close the connection before the client finishes sending; the
        # refusal is then proven by the next request being served and nothing retained.
        pass
    async with server.http.post(server.v1 + "/asr", data=block * 30, headers={"Content-Type": "application/json"}) as r:
        await assert_error(r, 413)
    await assert_still_serving(server)


async def test_unknown_route_and_method(server: Server) -> None:
    async with server.http.get(server.v1 + "/nothing-here") as resp:
        await assert_error(resp, 404)
    async with server.http.get(server.v1 + "/tts") as resp:
        await assert_error(resp, 405)


MULTIPART_PART = (
    b'--b0undary\r\nContent-Disposition: form-data; name="%s"; filename="a.wav"\r\n\r\nRIFF\r\n--b0undary--\r\n'
)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data", MULTIPART_PART % b"file"),
        ("multipart/form-data; boundary=", MULTIPART_PART % b"file"),
        ("multipart/form-data; boundary=b0undary", MULTIPART_PART % b"fi\x01le"),
        ("multipart/form-data; boundary=b0undary", MULTIPART_PART % b"fi\x7fle"),
    ],
    ids=["no-boundary", "empty-boundary", "control-in-name", "del-in-name"],
)
async def test_malformed_multipart_gets_a_400(server: Server, content_type: str, body: bytes) -> None:
    headers = {"Content-Type": content_type}
    async with server.http.post(server.v1 + "/audio/transcriptions", data=body, headers=headers) as resp:
        error = await assert_error(resp, 400)
    assert error["code"] == "invalid_form"
    await assert_still_serving(server)


EMOJI = "\N{GRINNING FACE}" * 4000  # inside max_text_chars, far over the LLM's context in tokens


@pytest.mark.parametrize("path", ["/chat", "/chat/completions"])
@pytest.mark.parametrize("stream", [False, True])
async def test_a_message_over_the_context_gets_a_400_naming_the_limit(server: Server, path: str, stream: bool) -> None:
    settings = server.app[SETTINGS]
    assert len(EMOJI) <= settings.max_text_chars
    body = {"messages": [{"role": "user", "content": EMOJI}], "stream": stream}
    async with server.http.post(server.v1 + path, json=body) as resp:
        error = await assert_error(resp, 400, "messages.0.content")
    assert error["type"] == "invalid_request_error" and error["code"] == "context_length_exceeded"
    assert f"{settings.llm_context}-token" in str(error["message"])
    await assert_still_serving(server)


@pytest.mark.parametrize(("path", "field"), [("/tts", "text"), ("/audio/speech", "input")])
@pytest.mark.parametrize("text", ["hello\u0000world", "hello\x1bworld", "hello\u0085world", "bell\x07"])
async def test_control_characters_in_speech_text_get_a_400_before_any_audio(
    server: Server, path: str, field: str, text: str
) -> None:
    async with server.http.post(server.v1 + path, json={field: text, "voice": "alloy"}) as resp:
        error = await assert_error(resp, 400, field)
    assert error["code"] == "invalid_text"
    # Newlines and tabs are text, not control: they are spoken as pauses.
    async with server.http.post(server.v1 + path, json={field: "Hello,\r\n\tworld.", "voice": "alloy"}) as resp:
        assert resp.status == 200
        assert len(await resp.read()) > 1000


async def test_a_redirect_is_counted_as_what_it_is(server: Server) -> None:
    async def served(status: str) -> float:
        async with server.http.get(server.url + "/metrics") as resp:
            text = await resp.text()
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "inzwa_http_requests"
            for sample in family.samples
            if sample.name.endswith("_total") and sample.labels["status"] == status
        )

    before = {status: await served(status) for status in ("308", "500")}
    async with server.http.get(server.url + "/widget", allow_redirects=False) as resp:
        assert resp.status == 308 and resp.headers["Location"] == "/widget/"
    assert await served("308") == before["308"] + 1
    assert await served("500") == before["500"]


async def test_405_says_which_methods_are_allowed(server: Server) -> None:
    async with server.http.get(server.v1 + "/tts") as resp:
        await assert_error(resp, 405)
        assert resp.headers["Allow"] == "POST"
    async with server.http.delete(server.v1 + "/models") as resp:
        await assert_error(resp, 405)
        assert set(resp.headers["Allow"].split(",")) >= {"GET"}


async def test_a_wav_answer_states_its_true_length(server: Server, tmp_path: Path) -> None:
    """Python's ``wave`` believes the header: a streamed 0xFFFFFFFF size read as a day of audio."""
    client = AsyncOpenAI(base_url=server.v1, api_key="unused", max_retries=0)
    speech = await client.audio.speech.create(model="tts-1", voice="alloy", input=SENTENCE, response_format="wav")
    speech.write_to_file(tmp_path / "speech.wav")
    async with server.http.post(server.v1 + "/tts", json={"text": SENTENCE, "format": "wav"}) as resp:
        assert resp.status == 200 and resp.content_length is not None
        tts = await resp.read()
    for data in ((tmp_path / "speech.wav").read_bytes(), tts):
        with wave.open(io.BytesIO(data)) as wav:
            seconds = wav.getnframes() / wav.getframerate()
            assert 1.5 < seconds < 5.0, seconds
            assert len(wav.readframes(wav.getnframes())) == len(data) - 44
        assert 1.5 < len(decode_audio(data, max_seconds=60)) / 16000 < 5.0


async def test_twiml_is_well_formed_whatever_the_caller_id_holds(server: Server) -> None:
    form = {"From": "\x01+263 77<1>\x00&\x1b\x85", "To": "+263\ufffe800\x7f", "CallSid": 'CA"1\x08'}
    async with server.http.post(server.url + "/v1/twilio/voice", data=form) as resp:
        assert resp.status == 200 and resp.content_type == "text/xml"
        twiml = ElementTree.fromstring(await resp.read())  # raises on ill-formed XML
    parameters = {p.get("name"): p.get("value") for p in twiml.iter("Parameter")}
    assert parameters == {"from": "+263 77<1>&", "to": "+263800", "callSid": 'CA"1'}


TAGGED_DIALPLANS = [
    ("float-tag", "profiles:\n  a:\n    idle_timeout_s: !!float x\ndefault: a\n", 3, "'x' is not a valid float"),
    ("timestamp-tag", "profiles:\n  a:\n    greeting: !!timestamp 2020-99-99\ndefault: a\n", 3, "remove the"),
    (
        "date-like",
        "profiles: {a: {}}\ndefault: a\nrules:\n  - match: {dialled: 2020-99-99}\n    profile: a\n",
        4,
        "quotes",
    ),
    ("python-object", "profiles:\n  a: !!python/object:os.system {}\ndefault: a\n", 2, "'!!python/object:os.system'"),
    (
        "python-scalar",
        "profiles:\n  a:\n    greeting: !!python/object/apply:os.system x\ndefault: a\n",
        3,
        "not allowed",
    ),
    ("python-name", "profiles: {a: {}}\ndefault: !!python/name:os.system\n", 2, "not allowed"),
    ("custom-tag", "profiles: {a: {}}\ndefault: a\nlanguages: !langs [en]\n", 3, "'!langs' is not allowed"),
]


@pytest.mark.parametrize(
    ("text", "line", "message"), [t[1:] for t in TAGGED_DIALPLANS], ids=[t[0] for t in TAGGED_DIALPLANS]
)
def test_tags_in_a_dialplan_are_a_file_line_error(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DialplanError) as caught:
        Dialplan.load(path)
    assert str(caught.value).startswith(f"{path}:{line}:"), caught.value
    assert message in str(caught.value)
