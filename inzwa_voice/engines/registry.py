"""The engines of one process: loaded once at start-up, shared by every call and request.

Besides holding the engines, this is where their blocking calls meet the event loop: each
model call runs in the bounded inference executor and is timed into the metrics, so no route
or call session touches a model directly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inzwa_voice.aio import iterate_in_thread
from inzwa_voice.config import Settings
from inzwa_voice.engines import models
from inzwa_voice.engines.asr.whisper import WhisperASR
from inzwa_voice.engines.base import LLM, PCM16, ChatMessage, Float32, GenerationDefaults, ModelInfo, Transcript
from inzwa_voice.engines.llm.llamacpp import LlamaCppLLM
from inzwa_voice.engines.llm.remote import OpenAICompatibleLLM
from inzwa_voice.engines.tts.piper import OPENAI_VOICE_NAMES, PiperTTS, VoiceSpec
from inzwa_voice.engines.vad.silero import SileroVAD
from inzwa_voice.media.resample import Resampler
from inzwa_voice.telemetry import Metrics

log = logging.getLogger(__name__)


def _default_voices() -> list[VoiceSpec]:
    model, config = models.piper_joe()
    return [
        VoiceSpec("joe", model, config, "en", "en-us", "US English, male (Piper joe medium)", OPENAI_VOICE_NAMES),
        VoiceSpec("joe-sn", model, config, "sn", "sw", "Shona text read by the joe voice (espeak-ng sw)"),
    ]


def _file_info(id: str, kind: str, path: str, sha256: str | None, caps: list[str]) -> ModelInfo:
    p = Path(path)
    size = sum(f.stat().st_size for f in p.iterdir() if f.is_file()) if p.is_dir() else p.stat().st_size
    return ModelInfo(id=id, kind=kind, path=path, size_bytes=size, sha256=sha256, capabilities=caps)  # type: ignore[arg-type]


@dataclass
class Engines:
    settings: Settings
    executor: ThreadPoolExecutor
    metrics: Metrics
    vad: SileroVAD
    asr: WhisperASR
    llm: LLM
    tts: PiperTTS
    catalog: list[ModelInfo]
    load_seconds: float
    loaded_at: int
    asr_in_flight: int = 0  # decodes running now; partial transcripts yield to them

    @classmethod
    def load(cls, settings: Settings, metrics: Metrics) -> Engines:
        """Load every engine (blocking: call it before serving or in an executor)."""
        started = time.perf_counter()
        executor = ThreadPoolExecutor(settings.inference_workers, thread_name_prefix="inference")
        data_dir = settings.data_dir
        catalog: list[ModelInfo] = []

        vad_path = settings.vad_model_path or models.silero_onnx()
        vad = SileroVAD(vad_path)
        catalog.append(_file_info("silero-vad", "vad", str(vad_path), None, ["vad"]))

        asr_dir = settings.asr_model_path or models.whisper_base_dir(data_dir)
        asr = WhisperASR(
            asr_dir,
            device=settings.asr_device,
            compute_type=settings.asr_compute_type,
            threads=settings.asr_threads,
            workers=max(1, settings.inference_workers // 2),
            language=settings.language,
            beam_size=settings.asr_beam_size,
            max_new_tokens=settings.asr_max_new_tokens,
            initial_prompt=settings.asr_initial_prompt,
            hotwords=settings.asr_hotwords,
        )
        asr_sha = models.verified_digest(asr_dir / "model.bin")
        catalog.append(_file_info("whisper-base", "asr", str(asr_dir), asr_sha, ["transcription", "sn", "en"]))

        llm: LLM
        defaults = GenerationDefaults(
            max_tokens=settings.llm_max_tokens,
            temperature=settings.llm_temperature,
            system_prompt=settings.llm_system_prompt,
            token_timeout_s=settings.llm_token_timeout_s,
            timeout_s=settings.llm_timeout_s,
        )
        if settings.llm_engine == "llama-cpp":
            if settings.llm_model_path:
                gguf, gguf_sha = settings.llm_model_path, None
            else:
                gguf, gguf_sha = models.gemma_gguf(data_dir)
            llm = LlamaCppLLM(
                gguf,
                executor,
                n_ctx=settings.llm_context,
                threads=settings.llm_threads,
                defaults=defaults,
            )
            catalog.append(_file_info(llm.name, "llm", str(gguf), gguf_sha, ["chat", "completion"]))
        else:
            llm = OpenAICompatibleLLM(
                settings.llm_base_url,
                model=settings.llm_remote_model,
                api_key=settings.llm_api_key,
                connect_retries=settings.llm_connect_retries,
                defaults=defaults,
            )
            catalog.append(
                ModelInfo(
                    id=settings.llm_remote_model,
                    kind="llm",
                    path=settings.llm_base_url,
                    size_bytes=0,
                    sha256=None,
                    capabilities=["chat", "remote"],
                )
            )

        specs = _default_voices()
        tts = PiperTTS(specs, threads=settings.tts_threads)
        for spec in specs[:1]:
            catalog.append(_file_info(spec.model_path.stem, "tts", str(spec.model_path), None, ["speech"]))

        elapsed = time.perf_counter() - started
        return cls(settings, executor, metrics, vad, asr, llm, tts, catalog, elapsed, int(time.time()))

    # --- ASR ---
    async def transcribe(self, audio: Float32, *, language: str | None = None, prompt: str | None = None) -> Transcript:
        started = time.perf_counter()
        self.asr_in_flight += 1
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                self.executor, lambda: self.asr.transcribe(audio, language=language, prompt=prompt)
            )
        finally:
            self.asr_in_flight -= 1
        elapsed = time.perf_counter() - started
        self.metrics.inference_seconds.labels("asr", "transcribe").observe(elapsed)
        seconds = len(audio) / self.asr.sample_rate
        if seconds > 0:
            self.metrics.rtf.labels("asr").observe(elapsed / seconds)
        return result

    # --- TTS ---
    async def synthesize(
        self, text: str, *, voice: str, speed: float = 1.0, sample_rate: int | None = None
    ) -> AsyncGenerator[PCM16, None]:
        """Stream PCM16 sentence by sentence, resampled to ``sample_rate`` when given."""
        info = self.tts.resolve(voice)
        out_rate = sample_rate or info.sample_rate
        metrics = self.metrics

        def factory(stop: object) -> Iterator[PCM16]:
            resampler = Resampler(info.sample_rate, out_rate)
            started = time.perf_counter()
            for chunk in self.tts.synthesize(text, voice=info.id, speed=speed):
                elapsed = time.perf_counter() - started
                metrics.inference_seconds.labels("tts", "sentence").observe(elapsed)
                if len(chunk):
                    metrics.rtf.labels("tts").observe(elapsed / (len(chunk) / info.sample_rate))
                yield resampler.process(chunk)
                started = time.perf_counter()
            tail = resampler.flush()
            if len(tail):
                yield tail

        async for pcm in iterate_in_thread(self.executor, factory):
            yield pcm

    # --- LLM ---
    async def generate(
        self,
        messages: list[ChatMessage],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        stop: list[str] | None = None,
    ) -> AsyncGenerator[str, None]:
        """The LLM's stream with metrics: first-token time, tokens, and how each generation ended."""
        started = time.perf_counter()
        outcome = "completed"
        first = True
        source = self.llm.stream(messages, max_tokens=max_tokens, temperature=temperature, stop=stop)
        self.metrics.llm_active.inc()
        try:
            async for piece in source:
                if first:
                    self.metrics.llm_ttft.observe(time.perf_counter() - started)
                    first = False
                self.metrics.llm_tokens.inc()
                yield piece
        except TimeoutError:
            outcome = "timeout"
            raise
        except (GeneratorExit, asyncio.CancelledError):
            outcome = "cancelled"
            raise
        except Exception:
            outcome = "error"
            raise
        finally:
            await source.aclose()
            self.metrics.llm_active.dec()
            self.metrics.llm_generations.labels(outcome).inc()
            self.metrics.inference_seconds.labels("llm", "generate").observe(time.perf_counter() - started)

    def warmup(self) -> None:
        """One tiny inference per local engine, so the first caller does not pay for lazy init."""
        started = time.perf_counter()
        stream = self.vad.stream()
        stream.probability(np.zeros(stream.frame_samples, dtype=np.float32))
        self.asr.transcribe(np.zeros(self.asr.sample_rate, dtype=np.float32), language="en", max_new_tokens=8)
        for voice in self.tts.voices():
            for _ in self.tts.synthesize("Hello.", voice=voice.id):
                pass
        if isinstance(self.llm, LlamaCppLLM):
            self.llm.warm()
        log.info("engines warmed up", extra={"seconds": round(time.perf_counter() - started, 3)})

    async def close(self) -> None:
        await self.llm.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
