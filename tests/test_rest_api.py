"""The seed REST API end to end with the real packaged models."""

from __future__ import annotations

import base64
import io
import json
import wave

import numpy as np
import pytest

from inzwa_voice.engines.runtime import Engines
from tests.conftest import Server, ServerFactory, speak

SENTENCE = "Please call me back tomorrow morning."


def words(text: str) -> set[str]:
    return {w.strip(".,!?").lower() for w in text.split()}


async def test_tts_then_asr_round_trip_returns_the_sentence(server: Server) -> None:
    async with server.http.post(
        server.v1 + "/tts", json={"text": SENTENCE, "voice": "joe", "format": "wav", "sample_rate": 16000}
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "audio/wav"
        audio = await resp.read()
    with wave.open(io.BytesIO(audio)) as wav:
        assert wav.getframerate() == 16000
    async with server.http.post(
        server.v1 + "/asr", json={"audio_base64": base64.b64encode(audio).decode(), "language": "en"}
    ) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    assert words(body["text"]) >= {"call", "me", "back", "tomorrow", "morning"}
    assert body["segments"] and body["segments"][0]["start_ms"] >= 0
    assert body["segments"][-1]["end_ms"] > body["segments"][0]["start_ms"]


async def test_asr_accepts_raw_pcm16_at_8khz(server: Server, engines: Engines) -> None:
    pcm = await speak(engines, SENTENCE, rate=8000)
    payload = {
        "audio_base64": base64.b64encode(pcm.tobytes()).decode(),
        "sample_rate": 8000,
        "language": "en",
    }
    async with server.http.post(server.v1 + "/asr", json=payload) as resp:
        assert resp.status == 200, await resp.text()
        assert {"tomorrow", "morning"} <= words((await resp.json())["text"])


@pytest.mark.parametrize("fmt", ["wav", "pcm", "opus"])
async def test_tts_formats_stream_speech(server: Server, fmt: str) -> None:
    async with server.http.post(server.v1 + "/tts", json={"text": SENTENCE, "format": fmt, "voice": "joe"}) as resp:
        assert resp.status == 200
        chunks = [chunk async for chunk in resp.content.iter_any()]
    data = b"".join(chunks)
    if fmt == "pcm":
        samples = np.frombuffer(data, dtype="<i2")
        assert 1.0 < len(samples) / 22050 < 5.0
        assert np.abs(samples).max() > 3000
    elif fmt == "opus":
        assert data.startswith(b"OggS")
    else:
        assert data.startswith(b"RIFF")


async def test_shona_voice_speaks(server: Server) -> None:
    async with server.http.post(
        server.v1 + "/tts",
        json={"text": "Mhoro, ndingakubatsirei nhasi?", "voice": "joe-sn", "format": "pcm"},
    ) as resp:
        assert resp.status == 200
        samples = np.frombuffer(await resp.read(), dtype="<i2")
    assert len(samples) > 22050 // 2
    assert np.abs(samples).max() > 3000


async def test_chat_streams_tokens_in_order_and_ends(server: Server) -> None:
    payload = {"messages": [{"role": "user", "content": "Where can I find a clinic?"}], "stream": True}
    async with server.http.post(server.v1 + "/chat", json=payload) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = [line.decode().strip() async for line in resp.content if line.strip()]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    done = json.loads(events[-2][6:])
    assert done["done"] is True
    tokens = [json.loads(e[6:])["token"] for e in events[:-2]]
    assert tokens and "".join(tokens).strip()


async def test_chat_crisis_bypasses_the_model_with_the_helpline_number(make_server, engines: Engines) -> None:
    server = await make_server(helpline_number="0800 555 123")
    before = engines.metrics.llm_generations.labels("completed")._value.get()
    payload = {"messages": [{"role": "user", "content": "I want to kill myself"}], "language": "en"}
    async with server.http.post(server.v1 + "/chat", json=payload) as resp:
        body = await resp.json()
    assert "0800 555 123" in body["message"]["content"]
    assert body["safety"]["action"] == "crisis" and body["safety"]["transfer"] is True
    assert engines.metrics.llm_generations.labels("completed")._value.get() == before


async def test_health_metrics_models_and_voices(server: Server) -> None:
    async with server.http.get(server.url + "/health") as resp:
        health = await resp.json()
    assert health["status"] == "ok" and health["active_calls"] == 0
    async with server.http.get(server.url + "/metrics") as resp:
        text = await resp.text()
    assert "inzwa_http_requests_total" in text and "inzwa_engine_rtf_bucket" in text
    async with server.http.get(server.v1 + "/models") as resp:
        models = {m["kind"]: m for m in (await resp.json())["data"]}
    assert set(models) == {"vad", "asr", "llm", "tts", "embedding"}
    assert models["asr"]["sha256"] and models["llm"]["sha256"] and models["llm"]["size_bytes"] > 100_000_000
    async with server.http.get(server.v1 + "/voices") as resp:
        voices = {v["id"]: v for v in (await resp.json())["data"]}
    assert voices["joe-sn"]["language"] == "sn" and "alloy" in voices["joe"]["aliases"]


async def test_health_lists_every_leg_and_says_which_are_off(make_server: ServerFactory) -> None:
    server = await make_server(audiosocket_enabled=False)  # and SIP is off in tests (conftest)
    async with server.http.get(server.url + "/health") as resp:
        legs = (await resp.json())["legs"]
    assert set(legs) == {"ws", "twilio", "audiosocket", "sip", "webrtc"}
    assert legs["ws"] == {"enabled": True, "path": "/v1/ws"}
    assert legs["twilio"]["enabled"] is True and legs["twilio"]["media"] == "/v1/twilio/media"
    assert legs["webrtc"] == {"enabled": True, "offer": "/v1/webrtc/offer", "peers": 0, "max_peers": 20}
    assert legs["audiosocket"] == {"enabled": False, "port": None}
    assert legs["sip"] == {"enabled": False, "port": None, "registration": None}
    default = await make_server()
    async with default.http.get(default.url + "/health") as resp:
        audiosocket = (await resp.json())["legs"]["audiosocket"]
    assert audiosocket["enabled"] is True and audiosocket["port"] > 0


async def test_admin_warmup(server: Server) -> None:
    async with server.http.post(server.v1 + "/admin/warmup") as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "ok"


async def test_raw_pcm_that_starts_like_an_mpeg_frame_is_still_pcm(server: Server, engines: Engines) -> None:
    pcm = await speak(engines, SENTENCE, rate=16000)
    lookalike = np.concatenate([np.array([-31 * 256 - 1], dtype=np.int16), pcm])  # first bytes: FF E0
    assert lookalike.tobytes()[:2] == b"\xff\xe0"
    payload = {"audio_base64": base64.b64encode(lookalike.tobytes()).decode(), "sample_rate": 16000, "language": "en"}
    async with server.http.post(server.v1 + "/asr", json=payload) as resp:
        assert resp.status == 200, await resp.text()
        assert {"tomorrow", "morning"} <= words((await resp.json())["text"])
