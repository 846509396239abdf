"""API keys, rate limits, request ids and settings validation."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from inzwa_voice.config import ENV_PREFIX, SECRET_SETTINGS, Settings, SettingsError, load_settings
from inzwa_voice.legs.webrtc_tokens import CallTokens, TokenError
from tests.conftest import ServerFactory
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
        name: ["***1 set***"] if name == "api_keys" else "***" for name in SECRET_SETTINGS
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
