"""API keys and their scopes, rate limits, authentication before bodies, request ids, settings
validation, and secrets that are never printed."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from inzwa_voice.api.keys import CALLS
from inzwa_voice.config import ENV_PREFIX, SECRET_SETTINGS, Settings, SettingsError, load_settings
from inzwa_voice.legs.twilio_protocol import signature as twilio_signature
from inzwa_voice.legs.webrtc_tokens import CallTokens, TokenError
from inzwa_voice.simulator import twilio as twilio_sim
from inzwa_voice.simulator.process import free_port, free_ports
from tests.conftest import Server, ServerFactory
from tests.test_bad_input import assert_error

KEY = "sk-test-0123456789"


async def test_api_keys_guard_v1_but_not_health(make_server: ServerFactory) -> None:
    server = await make_server(api_keys=[KEY, "sk-other"])
    async with server.http.get(server.v1 + "/voices") as resp:
        error = await assert_error(resp, 401)
    assert error["type"] == "authentication_error"
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    async with server.http.get(server.v1 + "/voices", headers={"Authorization": "Bearer wrong"}) as resp:
        await assert_error(resp, 401)
    async with server.http.get(server.v1 + "/voices", headers={"Authorization": f"Bearer {KEY}"}) as resp:
        assert resp.status == 200
    for path in ("/health", "/metrics", "/openapi.json"):
        async with server.http.get(server.url + path) as resp:
            assert resp.status == 200, path


async def test_rate_limit_headers_and_429(make_server: ServerFactory) -> None:
    server = await make_server(api_keys=[KEY, "sk-other"], rate_limit_per_minute=3)
    auth = {"Authorization": f"Bearer {KEY}"}
    remaining = []
    for _ in range(3):
        async with server.http.get(server.v1 + "/voices", headers=auth) as resp:
            assert resp.status == 200
            assert resp.headers["X-RateLimit-Limit"] == "3"
            remaining.append(int(resp.headers["X-RateLimit-Remaining"]))
    assert remaining == [2, 1, 0]
    async with server.http.get(server.v1 + "/voices", headers=auth) as resp:
        error = await assert_error(resp, 429)
    assert error["type"] == "overloaded_error" and int(resp.headers["Retry-After"]) >= 1
    # Buckets are per key: another key is not affected.
    async with server.http.get(server.v1 + "/voices", headers={"Authorization": "Bearer sk-other"}) as resp:
        assert resp.status == 200
    # Streaming responses carry the headers too.
    payload = {"messages": [{"role": "user", "content": "Hi"}], "stream": True}
    async with server.http.post(
        server.v1 + "/chat", json=payload, headers={"Authorization": "Bearer sk-other"}
    ) as resp:
        assert resp.headers["X-RateLimit-Remaining"] == "1"
        await resp.read()


async def test_request_id_is_echoed_or_made(make_server: ServerFactory) -> None:
    server = await make_server()
    async with server.http.get(server.url + "/health", headers={"X-Request-ID": "abc-123"}) as resp:
        assert resp.headers["X-Request-ID"] == "abc-123"
    async with server.http.get(server.url + "/health") as resp:
        assert len(resp.headers["X-Request-ID"]) == 32


def test_invalid_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INZWA_PORT", "eighty")
    with pytest.raises(SettingsError, match="INZWA_PORT"):
        load_settings(_env_file=None)
    monkeypatch.setenv("INZWA_PORT", "8080")
    monkeypatch.setenv("INZWA_LLM_ENGINE", "gpt")
    with pytest.raises(SettingsError, match="INZWA_LLM_ENGINE"):
        load_settings(_env_file=None)


def test_api_keys_parse_from_a_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INZWA_API_KEYS", "a-key, b-key")
    assert load_settings(_env_file=None).api_keys == ["a-key", "b-key"]


def test_serve_refuses_invalid_settings_at_start_up() -> None:
    env = {**os.environ, "INZWA_MAX_SESSIONS": "-5"}
    done = subprocess.run(
        [sys.executable, "-m", "inzwa_voice.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "INZWA_MAX_SESSIONS" in done.stderr


def marker(name: str) -> str:
    return f"marker-{name}-5f3a9c"  # unique per setting, and long enough for every secret's bounds


def test_check_config_shows_no_secret(tmp_path: Path) -> None:
    env = {**os.environ, **{ENV_PREFIX + name.upper(): marker(name) for name in SECRET_SETTINGS}}
    done = subprocess.run(
        [sys.executable, "-m", "inzwa_voice.cli", "check-config"],
        env=env,
        cwd=tmp_path,  # no developer's .env
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert "marker" not in output
    shown = json.loads(done.stdout)
    assert {name: shown[name] for name in SECRET_SETTINGS} == {
        name: ["***1 set***"] if name in ("api_keys", "admin_keys") else "***" for name in SECRET_SETTINGS
    }


def test_every_setting_that_looks_secret_is_kept_secret() -> None:
    looks_secret = re.compile(r"(^|_)(keys?|token|secret|password|credential)$")
    for name, field in Settings.model_fields.items():
        if looks_secret.search(name) or "SecretStr" in str(field.annotation):
            assert name in SECRET_SETTINGS, name


def test_an_invalid_secret_is_not_repeated_in_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INZWA_WEBRTC_TOKEN_SECRET", "short-secret")  # under its 16 characters
    with pytest.raises(SettingsError, match="INZWA_WEBRTC_TOKEN_SECRET") as caught:
        load_settings(_env_file=None)
    assert "short-secret" not in str(caught.value)


@pytest.mark.parametrize("token", ["v1.\N{SUPERSCRIPT TWO}.x", "v1.\N{ARABIC-INDIC DIGIT ONE}.x", "v1..x", "v1.-5.x"])
async def test_a_malformed_call_token_is_a_401(make_server: ServerFactory, token: str) -> None:
    server = await make_server(api_keys=[KEY])
    offer = {"sdp": "v=0\r\n", "type": "offer", "token": token}
    async with server.http.post(server.v1 + "/webrtc/offer", json=offer) as resp:
        error = await assert_error(resp, 401, "token")
    assert error["code"] == "invalid_token"
    with pytest.raises(TokenError, match="malformed"):
        CallTokens(None, 300).check(token)


# ----- key scopes -----

ADMIN = "sk-admin-0123456789"
METRICS_KEY = "sk-metrics-0123456789"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_an_api_key_opens_the_engines_and_tokens_but_not_the_admin_routes(make_server: ServerFactory) -> None:
    server = await make_server(api_keys=[KEY], admin_keys=[ADMIN])
    for key in (KEY, ADMIN):  # an admin key opens everything an API key does
        async with server.http.get(server.v1 + "/voices", headers=bearer(key)) as resp:
            assert resp.status == 200
        async with server.http.post(server.v1 + "/webrtc/token", headers=bearer(key)) as resp:
            assert resp.status == 200
    admin_routes = [
        ("GET", "/admin/calls"),
        ("GET", "/admin/calls/c1"),
        ("POST", "/admin/calls/c1/hangup"),
        ("POST", "/admin/reload"),
        ("POST", "/admin/warmup"),
    ]
    for method, path in admin_routes:
        async with server.http.request(method, server.v1 + path, headers=bearer(KEY)) as resp:
            error = await assert_error(resp, 403)
        assert (error["type"], error["code"]) == ("authentication_error", "admin_key_required"), path
        async with server.http.request(method, server.v1 + path) as resp:
            await assert_error(resp, 401)
    async with server.http.get(server.v1 + "/admin/calls", headers=bearer(ADMIN)) as resp:
        assert resp.status == 200
    async with server.http.get(server.v1 + "/admin/calls/c1", headers=bearer(ADMIN)) as resp:
        await assert_error(resp, 404)  # opened, and then simply not found


async def test_with_api_keys_only_no_key_opens_the_admin_routes(make_server: ServerFactory) -> None:
    server = await make_server(api_keys=[KEY])
    async with server.http.get(server.v1 + "/admin/calls", headers=bearer(KEY)) as resp:
        assert (await assert_error(resp, 403))["code"] == "admin_key_required"
    # Admin keys alone turn keys on for every route.
    server = await make_server(admin_keys=[ADMIN])
    async with server.http.get(server.v1 + "/voices") as resp:
        await assert_error(resp, 401)
    async with server.http.get(server.v1 + "/voices", headers=bearer(ADMIN)) as resp:
        assert resp.status == 200


async def test_metrics_can_have_a_key_of_their_own(make_server: ServerFactory) -> None:
    server = await make_server(api_keys=[KEY], admin_keys=[ADMIN], metrics_key=METRICS_KEY)
    for headers in ({}, bearer(KEY)):
        async with server.http.get(server.url + "/metrics", headers=headers) as resp:
            error = await assert_error(resp, 401)
        assert error["code"] == "invalid_metrics_key"
    for key in (METRICS_KEY, ADMIN):
        async with server.http.get(server.url + "/metrics", headers=bearer(key)) as resp:
            assert resp.status == 200 and "inzwa_" in await resp.text()
    async with server.http.get(server.url + "/health") as resp:
        assert resp.status == 200
    async with server.http.get(server.v1 + "/voices", headers=bearer(METRICS_KEY)) as resp:
        await assert_error(resp, 401)  # the metrics key opens nothing else


# ----- the widget's own tokens, and rate limits on every route that starts a call -----


async def test_the_widget_gets_short_lived_tokens_without_a_key(make_server: ServerFactory) -> None:
    server = await make_server(api_keys=[KEY], widget_tokens_per_minute=2, widget_token_ttl_s=30)
    for _ in range(2):
        async with server.http.post(server.url + "/widget/token") as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
        assert body["expires_in"] == 30
        expires = int(body["token"].split(".")[1])
        assert expires <= time.time() + 31
        # The token opens an offer (this one is refused for its SDP, past the token check).
        offer = {"sdp": "v=0\r\n", "type": "offer"}
        async with server.http.post(server.v1 + "/webrtc/offer", json=offer, headers=bearer(body["token"])) as resp:
            assert (await assert_error(resp, 400, "sdp"))["code"] == "invalid_sdp"
    async with server.http.post(server.url + "/widget/token") as resp:
        error = await assert_error(resp, 429)
    assert error["code"] == "rate_limit_exceeded" and int(resp.headers["Retry-After"]) >= 1
    closed = await make_server(api_keys=[KEY], widget_tokens_per_minute=0)
    async with closed.http.post(closed.url + "/widget/token") as resp:
        await assert_error(resp, 404)


async def test_every_route_that_starts_a_call_is_rate_limited_per_address(make_server: ServerFactory) -> None:
    server = await make_server(call_rate_limit_per_minute=2)
    form = {"CallSid": "CA1", "From": "+263771234567", "To": "+263800123456"}
    for _ in range(2):
        async with server.http.post(server.v1 + "/twilio/voice", data=form) as resp:
            assert resp.status == 200
            assert resp.headers["X-RateLimit-Limit"] == "2"
    # The same address's bucket is empty for every call route.
    async with server.http.post(server.v1 + "/twilio/voice", data=form) as resp:
        await assert_error(resp, 429)
    async with server.http.post(server.v1 + "/webrtc/offer", json={"sdp": "v=0\r\n", "type": "offer"}) as resp:
        await assert_error(resp, 429)
    for path in ("/ws", "/twilio/media"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await server.http.ws_connect(server.url.replace("http", "ws", 1) + "/v1" + path)
        assert refused.value.status == 429
    async with server.http.get(server.url + "/health") as resp:
        assert resp.status == 200  # other routes are not calls


# ----- authentication before any body is read -----


async def raw_post(server: Server, path: str, headers: dict[str, str], declared: int) -> bytes:
    """POST with a Content-Length of ``declared`` bytes and send only a few: the answer must come
    without the gateway waiting for (or reading) the rest."""
    port = int(server.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {declared}\r\n{head}\r\n".encode()
        )
        writer.write(b"x" * 1024)
        await writer.drain()
        async with asyncio.timeout(10):
            return await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()


BIG = 24 * 1024 * 1024


async def test_call_routes_authenticate_before_reading_a_body(make_server: ServerFactory) -> None:
    server = await make_server(api_keys=[KEY], twilio_auth_token="twilio-token-123")
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    head = await raw_post(server, "/v1/twilio/voice", form, BIG)
    assert head.startswith(b"HTTP/1.1 403"), head  # no signature: refused before the body
    signed = {**form, "X-Twilio-Signature": "c2lnbmF0dXJl"}
    head = await raw_post(server, "/v1/twilio/voice", signed, BIG)
    assert head.startswith(b"HTTP/1.1 413"), head  # a signature, but a body no webhook has
    offer = {"Content-Type": "application/json"}
    head = await raw_post(server, "/v1/webrtc/offer", {**offer, **bearer("v1.1.forged")}, BIG)
    assert head.startswith(b"HTTP/1.1 401"), head  # the header's token is checked first
    head = await raw_post(server, "/v1/webrtc/offer", offer, BIG)
    assert head.startswith(b"HTTP/1.1 413"), head  # a token in the body: read only up to an offer's size
    head = await raw_post(server, "/v1/asr", {"Content-Type": "audio/wav"}, BIG)
    assert head.startswith(b"HTTP/1.1 401"), head  # the engine APIs check the key first too


async def test_a_twilio_stream_needs_its_own_calls_token(make_server: ServerFactory) -> None:
    """The upgrade's signature covers the URL only, the same for every call: the ``start`` must
    also bring back the per-call token the signed webhook gave for its CallSid, once."""
    secret = "twilio-token-123"
    server = await make_server(twilio_auth_token=secret)
    voice_url, media_url = server.v1 + "/twilio/voice", server.url.replace("http", "ws", 1) + "/v1/twilio/media"

    async def webhook_token(call_sid: str) -> str:
        form = {"CallSid": call_sid, "From": "+263771234567", "To": "+263800123456"}
        headers = {"X-Twilio-Signature": twilio_signature(secret, voice_url, form.items())}
        async with server.http.post(voice_url, data=form, headers=headers) as resp:
            twiml = await resp.text()
        token = re.search(r'<Parameter name="token" value="([^"]+)"', twiml)
        assert token is not None, twiml
        return token.group(1)

    async def stream(call_sid: str, token: str) -> int | None:
        """The close code the stream gets, or None once a call started on it."""
        headers = {"X-Twilio-Signature": twilio_signature(secret, media_url, ())}
        async with server.http.ws_connect(media_url, headers=headers) as ws:
            parameters = {"from": "+263771234567", "callSid": call_sid, "token": token}
            await ws.send_json(twilio_sim.connected_message())
            await ws.send_json(twilio_sim.start_message(1, "MZ1", "AC1", call_sid, parameters))
            async with asyncio.timeout(30):
                msg = await ws.receive()
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                return ws.close_code
            assert server.app[CALLS].sessions  # the greeting is playing
            await ws.send_json(twilio_sim.stop_message(2, "MZ1", "AC1", call_sid))
            return None

    first = await webhook_token("CA" + "1" * 32)
    assert await stream("CA" + "2" * 32, first) == 4401  # another call's token
    assert await stream("CA" + "1" * 32, "") == 4401  # none
    assert await stream("CA" + "1" * 32, first) is None  # its own
    assert await stream("CA" + "1" * 32, first) == 4401  # once


# ----- warnings and secrets -----


async def test_an_open_admin_api_on_a_public_address_is_warned_about(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="inzwa_voice.http"):
        await make_server(host="0.0.0.0")
    assert any(r.levelno == logging.WARNING and "ADMIN API OPEN" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="inzwa_voice.http"):
        await make_server(host="127.0.0.1")
        await make_server(host="0.0.0.0", admin_keys=[ADMIN])
    assert not any("ADMIN API OPEN" in r.getMessage() for r in caplog.records)


def secret_values() -> dict[str, str]:
    """A value for every secret setting, each containing its own marker, valid for its setting."""
    values = {name: marker(name) for name in SECRET_SETTINGS}
    values["db_url"] = f"postgresql://inzwa:{marker('db_url')}@127.0.0.1:1/inzwa"
    return values


async def test_no_secret_is_in_an_error_response_or_a_log(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    values = secret_values()
    overrides: dict[str, object] = {**values, "api_keys": [values["api_keys"]], "admin_keys": [values["admin_keys"]]}
    overrides["db_url"] = None  # a server of its own below needs a database; db_url's turn is at start-up
    overrides["sip_password"] = None
    with caplog.at_level(logging.DEBUG):
        server = await make_server(**overrides)
        seen: list[str] = []
        requests = [
            ("GET", "/v1/voices", {}),
            ("GET", "/v1/voices", bearer("wrong")),
            ("GET", "/v1/admin/calls", bearer(values["api_keys"])),
            ("GET", "/metrics", {}),
            ("POST", "/v1/twilio/voice", {}),
            ("POST", "/v1/webrtc/offer", bearer("v1.1.x")),
            ("GET", "/v1/nowhere", bearer(values["admin_keys"])),
            ("POST", "/v1/tts", bearer(values["admin_keys"])),
        ]
        for method, path, headers in requests:
            async with server.http.request(method, server.url + path, headers=headers) as resp:
                assert resp.status >= 400, path
                seen.append(await resp.text() + str(resp.headers))
    seen += [record.getMessage() + str(record.__dict__) for record in caplog.records]
    assert not [text for text in seen if "marker-" in text]


def start_up_env(**update: str) -> dict[str, str]:
    """``serve``'s environment with every secret set (DEBUG logs, SIP registering with nobody)."""
    env = {**os.environ, **{ENV_PREFIX + name.upper(): value for name, value in secret_values().items()}}
    env |= {"INZWA_LOG_LEVEL": "DEBUG", "INZWA_WARMUP": "false", "INZWA_PORT": str(free_port())}
    env |= {"INZWA_SIP_PORT": "0", "INZWA_AUDIOSOCKET_PORT": "0", "INZWA_SIP_USERNAME": "inzwa"}
    env |= {"INZWA_SIP_REGISTRAR": f"sip:127.0.0.1:{free_ports(1)}"}
    return env | update


def test_no_secret_is_printed_when_start_up_fails(tmp_path: Path) -> None:
    """``serve`` with every secret set, until it stops at the unreachable database (before any
    leg listens): everything it printed on the way (engines, the store's failure) is checked."""
    done = subprocess.run(
        [sys.executable, "-m", "inzwa_voice.cli", "serve"],
        env=start_up_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-2000:]  # the database at port 1 cannot be reached
    assert "127.0.0.1:1" in output, output[-2000:]  # the failure names where, not with what password
    assert "marker-" not in output
    # Said in one line, as a configuration fault is, not as a traceback.
    assert done.returncode == 2 and "Traceback" not in output, output[-2000:]
    said = "cannot start: cannot reach the call store at INZWA_DB_URL=postgresql://"
    assert any(line.startswith(said) for line in done.stderr.splitlines()), output[-2000:]


async def test_no_secret_is_printed_by_a_gateway_that_starts(tmp_path: Path) -> None:
    """``serve`` with every secret but the database's set (its own SQLite), until SIP registers
    with a registrar that never answers: everything it printed on the way is checked."""
    env = start_up_env()
    del env[ENV_PREFIX + "DB_URL"]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "inzwa_voice.cli",
        "serve",
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(300):
            while not any("sip registering" in line for line in lines):
                line = (await process.stdout.readline()).decode(errors="replace")
                assert line, "".join(lines)[-2000:]  # it stopped before SIP registered
                lines.append(line)
    finally:
        if process.returncode is None:
            process.terminate()
        rest, _ = await process.communicate()
    output = "".join(lines) + rest.decode(errors="replace")
    assert "gateway stopped" in output, output[-2000:]
    assert "marker-" not in output
