"""Bad input gets a 4xx in the shared error shape, and the server answers the next request."""

from __future__ import annotations

import base64
import os

import aiohttp
import pytest

from tests.conftest import Server

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
