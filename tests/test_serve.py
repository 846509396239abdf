"""``inzwa-voice serve`` as a new user runs it: a real process answering /health and the OpenAI client."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "INZWA_PORT": str(port), "INZWA_HOST": "127.0.0.1", "INZWA_API_KEYS": "sk-serve"}
    cli = Path(sys.executable).with_name("inzwa-voice")
    proc = subprocess.Popen([str(cli), "serve"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # the gateway logs one JSON line when the port is open
            if line.startswith("{") and json.loads(line).get("msg") == "gateway ready":
                break
        else:
            raise AssertionError(f"gateway exited with {proc.wait()} before it was ready")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_answers_health(gateway: str) -> None:
    with urllib.request.urlopen(gateway + "/health", timeout=10) as resp:
        health = json.load(resp)
    assert health["status"] == "ok"
    assert health["engines"]["llm"]


def test_serve_answers_the_openai_client(gateway: str) -> None:
    client = OpenAI(base_url=gateway + "/v1", api_key="sk-serve", max_retries=0)
    models = client.models.list()
    assert {m.id for m in models.data} >= {"whisper-base", "silero-vad"}
    reply = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "Hello"}], max_tokens=16
    )
    assert reply.choices[0].message.content
