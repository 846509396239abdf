"""The engines themselves: packaged models, VAD, ASR languages, LLM streaming, the remote LLM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inzwa_voice.engines import models
from inzwa_voice.engines.base import ChatMessage
from inzwa_voice.engines.llm import prompt
from inzwa_voice.engines.llm.remote import OpenAICompatibleLLM, RemoteLLMError
from inzwa_voice.engines.registry import Engines
from tests.conftest import ServerFactory, speak


def test_assembly_verifies_the_digest_and_records_it(tmp_path: Path) -> None:
    parts = [tmp_path / "a", tmp_path / "b"]
    parts[0].write_bytes(b"hello ")
    parts[1].write_bytes(b"world")
    good = "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"  # sha256("hello world")
    target = models.assemble(parts, tmp_path / "joined", good)
    assert target.read_bytes() == b"hello world"
    assert models.verified_digest(target) == good
    target.write_bytes(b"tampered!!!")
    assert models.verified_digest(target) is None
    with pytest.raises(models.ModelError, match="does not match"):
        models.assemble(parts, tmp_path / "other", "0" * 64)
    assert not (tmp_path / "other").exists()


def test_packaged_models_are_verified(engines: Engines) -> None:
    kinds = {m.kind: m for m in engines.catalog}
    assert kinds["asr"].sha256 == models.WHISPER_BASE_SHA256
    assert kinds["llm"].sha256 and len(kinds["llm"].sha256) == 64


async def test_vad_tells_speech_from_silence(engines: Engines) -> None:
    speech = (await speak(engines, "Hello, I need some help please.")).astype(np.float32) / np.float32(32768)
    stream = engines.vad.stream()
    n = stream.frame_samples
    probs = [stream.probability(speech[i : i + n]) for i in range(0, len(speech) - n, n)]
    stream.reset()
    silence = [stream.probability(np.zeros(n, np.float32)) for _ in range(20)]
    assert max(probs) > 0.8
    assert max(silence) < 0.1


async def test_asr_serves_shona_and_english(engines: Engines) -> None:
    pcm = await speak(engines, "Mhoro, ndinoda rubatsiro nhasi.", voice="joe-sn")
    audio = pcm.astype(np.float32) / np.float32(32768)
    shona = await engines.transcribe(audio, language="sn")
    assert shona.language == "sn"
    assert shona.text.strip()
    assert len(shona.text) < 200  # the token cap keeps Shona decoding from looping


async def test_llm_streams_pieces(engines: Engines) -> None:
    pieces = [p async for p in engines.generate([ChatMessage("user", "Hello, is anyone there?")], max_tokens=24)]
    assert len(pieces) > 1
    assert "".join(pieces).strip()


def test_prompt_is_a_transcript_ending_with_the_helper_label() -> None:
    text = prompt.render(
        [
            ChatMessage("system", "Be brief."),
            ChatMessage("user", "Hi  there"),
            ChatMessage("assistant", "Hello."),
            ChatMessage("user", "Help me"),
        ],
        "default system",
    )
    assert text.startswith("Below is a phone call to a helpline. Be brief.")
    assert "default system" not in text
    assert text.endswith("Caller: Hi there\nHelper: Hello.\nCaller: Help me\nHelper:")
    history = [ChatMessage("user", str(i)) for i in range(10)]
    assert prompt.trim_history([ChatMessage("system", "s"), *history], 2) == [
        ChatMessage("system", "s"),
        *history[-2:],
    ]


async def test_remote_engine_streams_from_an_openai_compatible_server(make_server: ServerFactory) -> None:
    upstream = await make_server()
    llm = OpenAICompatibleLLM(upstream.v1, model="default", connect_retries=0)
    try:
        pieces = [p async for p in llm.stream([ChatMessage("user", "Hello, who are you?")], max_tokens=24)]
    finally:
        await llm.close()
    assert pieces and "".join(pieces).strip()


async def test_remote_engine_reports_an_unreachable_server() -> None:
    llm = OpenAICompatibleLLM("http://127.0.0.1:9/v1", model="x", connect_retries=1)
    try:
        with pytest.raises(RemoteLLMError, match="cannot reach"):
            [p async for p in llm.stream([ChatMessage("user", "hi")])]
    finally:
        await llm.close()
