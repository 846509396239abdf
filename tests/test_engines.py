"""The engines themselves: packaged models, VAD, ASR languages, LLM streaming, the remote LLM,
and how settings pick them."""

from __future__ import annotations

import asyncio
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import get_args

import numpy as np
import pytest

from inzwa_voice.api.keys import CALLS
from inzwa_voice.config import Settings
from inzwa_voice.engines import loading, models
from inzwa_voice.engines.asr import whisper
from inzwa_voice.engines.base import ChatMessage, Float32, Inference, ModelInfo, Transcript
from inzwa_voice.engines.llm import prompt
from inzwa_voice.engines.llm.remote import OpenAICompatibleLLM, RemoteLLMError
from inzwa_voice.engines.runtime import Engines
from inzwa_voice.telemetry import Metrics
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


@pytest.mark.parametrize("sentence", ["Hello.", "Good morning.", "I need some help please."])
async def test_a_short_stretch_is_heard_once_not_repeated_into_the_silence(engines: Engines, sentence: str) -> None:
    """A one-sentence stretch is decoded in a window of its own size; Whisper, seeing the window
    end soon after the words, repeated them ("Hello. Hello. Hello.") until silence was added
    after the speech and segments placed past the audio's end were dropped."""
    pcm = await speak(engines, sentence)
    voiced = np.flatnonzero(np.abs(pcm) > 300)
    audio = pcm[max(0, voiced[0] - 800) : voiced[-1] + 800].astype(np.float32) / np.float32(32768)
    heard = await engines.transcribe(audio, language="en")
    assert re.findall(r"\w+", heard.text.lower()) == re.findall(r"\w+", sentence.lower())
    assert [s.start_ms for s in heard.segments] == [0]
    assert heard.segments[0].end_ms <= round(len(audio) / 16)


@pytest.mark.parametrize(
    ("heard", "kept"),
    [
        ("Should I tell the police? Should I tell the police? Should", "Should I tell the police?"),
        ("Where can I get tested? where can I get tested?", "Where can I get tested?"),
        ("Hello. I need help. Hello.", "Hello. I need help. Hello."),  # said again, but not in a row
        ("Mhoro, ndinoda rubatsiro nhasi.", "Mhoro, ndinoda rubatsiro nhasi."),
        ("I need", "I need"),
    ],
)
def test_whispers_loop_is_cut_and_what_was_said_is_kept(heard: str, kept: str) -> None:
    assert whisper.unrepeated(heard) == kept


async def test_long_audio_is_still_decoded_in_thirty_second_windows(engines: Engines) -> None:
    """REST transcriptions longer than a stretch keep faster-whisper's windows and timestamps."""
    pcm = await speak(engines, "What time does the clinic open tomorrow?")
    gap = np.zeros(16000 * 18, np.int16)  # past SHORT_MAX_S
    audio = np.concatenate([pcm, gap, pcm]).astype(np.float32) / np.float32(32768)
    heard = await engines.transcribe(audio, language="en")
    assert heard.text.lower().count("clinic") == 2
    assert heard.segments[-1].start_ms > 18000


async def test_llm_streams_pieces(engines: Engines) -> None:
    engines.llm.reset_cache()  # type: ignore[attr-defined]  # the whole prompt is read, in steps
    pieces = [p async for p in engines.generate([ChatMessage("user", "Hello, is anyone there?")], max_tokens=24)]
    assert len(pieces) > 1
    assert "".join(pieces).strip()
    assert all(pieces)  # the prompt's reading steps are not text, and not passed on


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


@pytest.mark.parametrize(
    ("setting", "table"),
    [
        ("vad_engine", loading.VAD_ENGINES),
        ("asr_engine", loading.ASR_ENGINES),
        ("llm_engine", loading.LLM_ENGINES),
        ("tts_engine", loading.TTS_ENGINES),
    ],
)
def test_every_engine_setting_value_has_an_implementation(setting: str, table: dict[str, object]) -> None:
    assert set(get_args(Settings.model_fields[setting].annotation)) == set(table)


def test_an_unknown_engine_name_fails_before_anything_loads(settings: Settings) -> None:
    with pytest.raises(ValueError, match="llm_engine 'gpt-9' is not one of llama-cpp, openai"):
        loading.load_engines(settings.model_copy(update={"llm_engine": "gpt-9"}), Metrics())


async def test_the_llm_engine_setting_picks_the_remote_engine(
    make_server: ServerFactory, engines: Engines, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kinds this test does not vary reuse the session's loaded engines instead of loading again.
    def loaded_already(engine: object, kind: str) -> object:
        info = next(m for m in engines.catalog if m.kind == kind)
        return lambda settings, executor: (engine, info)

    for table, engine, kind in (
        (loading.VAD_ENGINES, engines.vad, "vad"),
        (loading.ASR_ENGINES, engines.asr, "asr"),
        (loading.TTS_ENGINES, engines.tts, "tts"),
    ):
        for name in table:
            monkeypatch.setitem(table, name, loaded_already(engine, kind))
    upstream = await make_server()
    remote = settings.model_copy(
        update={"llm_engine": "openai", "llm_base_url": upstream.v1, "llm_remote_model": "upstream-model"}
    )

    def completed() -> float:
        return engines.metrics.registry.get_sample_value("inzwa_llm_generations_total", {"outcome": "completed"}) or 0

    await upstream.app[CALLS].prepared()  # its start-up generation (priming the model) is done
    served = completed()
    loaded = loading.load_engines(remote, Metrics())
    try:
        assert loaded.llm.name == "upstream-model"
        assert [m.capabilities for m in loaded.catalog if m.kind == "llm"] == [["chat", "remote"]]
        loaded.llm.warm()  # a remote server keeps its own model warm: nothing to do, no error
        pieces = [p async for p in loaded.generate([ChatMessage("user", "Hello, who are you?")], max_tokens=16)]
    finally:
        await loaded.close()
    assert "".join(pieces).strip()
    # The upstream gateway's embedded model wrote the answer: its metrics counted the generation.
    assert completed() == served + 1


class GatedASR:
    """A blocking ASR that decodes only when the test lets it, to watch the scheduler meanwhile."""

    sample_rate = 16000

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.decodes = 0

    def transcribe(
        self,
        audio: Float32,
        *,
        language: str | None = None,
        prompt: str | None = None,
        max_new_tokens: int | None = None,
    ) -> Transcript:
        self.decodes += 1
        self.started.set()
        self.release.wait(timeout=30)
        return Transcript(text="done", segments=[], language=language or "en", duration_s=len(audio) / 16000)


async def test_a_cancelled_decode_keeps_its_slot_until_its_thread_returns_and_queued_ones_drop(
    engines: Engines,
) -> None:
    asr = GatedASR()
    with ThreadPoolExecutor(4) as executor:
        gated = Engines(executor, Metrics(), engines.vad, asr, engines.llm, engines.tts, [])
        calls: Inference = gated  # the conversation's view of the engines (checked by mypy)
        audio = np.zeros(16000, np.float32)
        first = asyncio.ensure_future(calls.transcribe(audio, language="en"))
        await asyncio.get_running_loop().run_in_executor(None, asr.started.wait, 30)
        first.cancel()  # the decode cannot stop: its slot stays taken
        queued = asyncio.ensure_future(calls.transcribe(audio, language="en"))
        second = asyncio.ensure_future(calls.transcribe(audio, language="en"))
        for _ in range(3):  # both reach the scheduler's queue
            await asyncio.sleep(0)
        assert asr.decodes == 1 and not (queued.done() or second.done())
        queued.cancel()  # no longer needed before it started: it never runs
        asr.release.set()
        assert (await second).text == "done"
        assert asr.decodes == 2 and gated.scheduler.idle
        runs = gated.metrics.inference_runs
        assert runs.labels("asr", "rest", "ran")._value.get() == 2
        assert runs.labels("asr", "rest", "dropped")._value.get() == 1


def test_a_loader_describes_what_it_loaded(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"12345")
    (folder / "b.json").write_bytes(b"{}")
    info = models.file_info("m", "asr", folder, None, ["transcription"])
    assert info == ModelInfo("m", "asr", str(folder), 7, None, ["transcription"])
