"""Loading the engines the settings name: the one module that knows the implementations.

One table per engine kind maps the value of its ``*_engine`` setting to the implementation's
``load(settings, executor)``, which builds the engine from its own settings and says what it
loaded for the model catalog. Adding an engine is one new module with such a ``load`` and one
line in its table (and the new value in that setting's ``Literal`` in ``config.py``). Everything
else (calls, routes, the conversation) sees only ``engines.runtime.Engines`` and the protocols.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TypeVar

from inzwa_voice.config import Settings
from inzwa_voice.engines.asr import whisper
from inzwa_voice.engines.base import ASR, LLM, TTS, VAD, Embedder, ModelInfo
from inzwa_voice.engines.embedding import minilm
from inzwa_voice.engines.llm import llamacpp, remote
from inzwa_voice.engines.runtime import Engines
from inzwa_voice.engines.tts import piper
from inzwa_voice.engines.vad import silero
from inzwa_voice.telemetry import Metrics

log = logging.getLogger(__name__)

E = TypeVar("E")
Loader = Callable[[Settings, Executor], tuple[E, ModelInfo]]

VAD_ENGINES: Mapping[str, Loader[VAD]] = {"silero": silero.load}
ASR_ENGINES: Mapping[str, Loader[ASR]] = {"whisper": whisper.load}
LLM_ENGINES: Mapping[str, Loader[LLM]] = {"llama-cpp": llamacpp.load, "openai": remote.load}
TTS_ENGINES: Mapping[str, Loader[TTS]] = {"piper": piper.load}
EMBEDDING_ENGINES: Mapping[str, Loader[Embedder]] = {"minilm": minilm.load}  # and "none": no embedder


def _pick(kind: str, table: Mapping[str, Loader[E]], name: str) -> Loader[E]:
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"{kind}_engine {name!r} is not one of {', '.join(table)}") from None


def load_embedder(settings: Settings, executor: Executor) -> tuple[Embedder, ModelInfo] | None:
    """The sentence embedder the settings name, or None for ``embedding_engine = "none"``
    (``inzwa-voice eval knowledge`` loads this one alone)."""
    if settings.embedding_engine == "none":
        return None
    return _pick("embedding", EMBEDDING_ENGINES, settings.embedding_engine)(settings, executor)


def load_engines(settings: Settings, metrics: Metrics) -> Engines:
    """Load every engine (blocking: call it before serving, or in an executor)."""
    started = time.perf_counter()
    load_vad = _pick("vad", VAD_ENGINES, settings.vad_engine)
    load_asr = _pick("asr", ASR_ENGINES, settings.asr_engine)
    load_llm = _pick("llm", LLM_ENGINES, settings.llm_engine)
    load_tts = _pick("tts", TTS_ENGINES, settings.tts_engine)
    executor = ThreadPoolExecutor(settings.inference_workers, thread_name_prefix="inference")
    vad, vad_info = load_vad(settings, executor)
    asr, asr_info = load_asr(settings, executor)
    llm, llm_info = load_llm(settings, executor)
    tts, tts_info = load_tts(settings, executor)
    embedding = load_embedder(settings, executor)
    catalog = [vad_info, asr_info, llm_info, tts_info, *([embedding[1]] if embedding else [])]
    log.info(
        "engines loaded", extra={"seconds": round(time.perf_counter() - started, 2), "models": [m.id for m in catalog]}
    )
    local_llm = settings.llm_engine != "openai"  # a remote server's generations cost these cores nothing
    return Engines(
        executor,
        metrics,
        vad,
        asr,
        llm,
        tts,
        catalog,
        embedder=embedding[0] if embedding else None,
        slots=settings.slots,
        local_llm=local_llm,
        max_tokens=settings.llm_max_tokens,
    )
