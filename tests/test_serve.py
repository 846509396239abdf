"""``inzwa-voice serve`` as a new user runs it: a real process answering /health and the OpenAI client."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

import pytest
from openai import OpenAI

from inzwa_voice.simulator.process import gateway_process


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {"INZWA_API_KEYS": "sk-serve", "INZWA_DB_PATH": str(tmp_path_factory.mktemp("serve") / "calls.db")}
    with gateway_process(env) as (url, _):
        yield url


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
