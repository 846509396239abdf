"""The engines of one process as calls and routes use them: asynchronous, timed and shared.

``Engines`` holds one engine per kind, typed by its protocol in ``engines.base``, so nothing that
uses them knows which implementation ``engines.loading`` picked. It is also where their blocking
calls meet the event loop: each model call waits for a slot of the inference scheduler
(``engines.scheduler``: the most urgent work first, as many runs at once as the cores allow),
runs in the inference executor and is timed into the metrics, so no route or call session
touches a model directly. Importing this module loads no model library.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass, field

import numpy as np

from inzwa_voice.aio import iterate_in_thread
from inzwa_voice.engines.base import (
    ASR,
    DEFAULT_GENERATION,
    LLM,
    PCM16,
    PROMPT_READ,
    TTS,
    VAD,
    ChatMessage,
    Embedder,
    Float32,
    ModelInfo,
    Transcript,
)
from inzwa_voice.engines.scheduler import Scheduler, current_urgency
from inzwa_voice.engines.turn_taking import read_ahead, taking_turns
from inzwa_voice.media.resample import Resampler
from inzwa_voice.telemetry import Metrics

log = logging.getLogger(__name__)


@dataclass
class Engines:
    """The loaded engines; implements ``engines.base.Inference``."""

    executor: ThreadPoolExecutor
    metrics: Metrics
    vad: VAD
    asr: ASR
    llm: LLM
    tts: TTS
    catalog: list[ModelInfo]
    embedder: Embedder | None = None  # None: matching is lexical only (``INZWA_EMBEDDING_ENGINE=none``)
    loaded_at: int = field(default_factory=lambda: int(time.time()))  # ``created`` in GET /v1/models
    slots: int = 1  # model runs at once
    local_llm: bool = True  # the LLM runs on these cores, one generation at a time (llama.cpp)
    max_tokens: int = DEFAULT_GENERATION.max_tokens  # a generation's bound when a request sets none
    scheduler: Scheduler = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.scheduler = Scheduler(self.slots, self.metrics)
        self.metrics.prompt_use.source = lambda: self.llm.prompt_use

    # --- ASR ---
    async def transcribe(self, audio: Float32, *, language: str | None = None, prompt: str | None = None) -> Transcript:
        def decode() -> tuple[Transcript, float]:
            started = time.perf_counter()
            return self.asr.transcribe(audio, language=language, prompt=prompt), time.perf_counter() - started

        result, elapsed = await self.scheduler.run_blocking("asr", self.executor, decode)
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

        # One sentence read ahead at most, so the slot given back between sentences frees the cores.
        source = self.scheduler.stream("tts", iterate_in_thread(self.executor, factory, maxsize=1))
        async with aclosing(source):
            async for pcm in source:
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
        source: AsyncGenerator[str, None]
        if self.local_llm:

            def start(prompt: list[ChatMessage], limit: int) -> AsyncGenerator[str, None]:
                return self.llm.stream(prompt, max_tokens=limit, temperature=temperature, stop=stop)

            source = taking_turns(self.scheduler, start, messages, max_tokens or self.max_tokens)
        else:  # a remote server's generation costs these cores nothing: no slot, but the turn counts it
            source = self.llm.stream(messages, max_tokens=max_tokens, temperature=temperature, stop=stop)
            current_urgency().runs["llm"] += 1
        self.metrics.llm_active.inc()
        try:
            async for piece in source:
                if piece == PROMPT_READ:
                    continue
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
            # Counted before the model is released: the next generation may start (and end) the
            # moment ``aclose`` frees it, and how this one ended must be on record by then.
            self.metrics.llm_active.dec()
            self.metrics.llm_generations.labels(outcome).inc()
            self.metrics.inference_seconds.labels("llm", "generate").observe(time.perf_counter() - started)
            await source.aclose()

    async def prime(self, messages: list[ChatMessage]) -> None:
        """``LLM.prime`` through the scheduler, giving way to any more urgent generation. Not
        for a remote server, whose own prefix cache keeps what it read."""
        if self.local_llm:
            await read_ahead(self.scheduler, self.llm.prime(messages))

    # --- sentence embeddings ---
    async def embed(self, texts: Sequence[str]) -> Float32:
        """The embedder's vectors, computed in the inference executor and timed. It takes no
        scheduler slot: a few milliseconds on one thread, on a caller's critical path, must not
        queue behind a decode or a generation."""
        if self.embedder is None:
            raise RuntimeError("no embedding engine is loaded (INZWA_EMBEDDING_ENGINE=none)")
        embedder = self.embedder
        started = time.perf_counter()
        vectors = await asyncio.get_running_loop().run_in_executor(self.executor, embedder.embed, list(texts))
        self.metrics.inference_seconds.labels("embedding", "embed").observe(time.perf_counter() - started)
        return vectors

    def warmup(self) -> None:
        """One tiny inference per engine (blocking), so the first caller does not pay for lazy init."""
        started = time.perf_counter()
        stream = self.vad.stream()
        stream.probability(np.zeros(stream.frame_samples, dtype=np.float32))
        self.asr.transcribe(np.zeros(self.asr.sample_rate, dtype=np.float32), language="en", max_new_tokens=8)
        for voice in self.tts.voices():
            for _ in self.tts.synthesize("Hello.", voice=voice.id):
                pass
        self.llm.warm()
        if self.embedder is not None:
            self.embedder.embed(["Hello."])
        log.info("engines warmed up", extra={"seconds": round(time.perf_counter() - started, 3)})

    async def close(self) -> None:
        await self.llm.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
