"""The small protocols every engine implements, and the values they exchange.

Engines are loaded once per process and shared by all calls and requests, so each protocol is
blocking and thread-safe: callers run them in the inference executor (see ``engines.runtime``),
never on the event loop. The LLM is the exception: it streams asynchronously because generation
must be cancellable token by token.

Importing this module loads no model library: the conversation, the legs and the API type
against these protocols, and only ``engines.loading`` knows the implementations.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from inzwa_voice.core import PCM16, Float32
from inzwa_voice.telemetry import Metrics

__all__ = ["PCM16", "Float32"]  # re-exported: engines speak the core's audio types

Role = Literal["system", "user", "assistant"]

# OpenAI's voice names, accepted by /v1/audio/speech: a TTS engine gives them to its default
# English voice as aliases, so the unmodified ``openai`` client can name a voice.
OPENAI_VOICE_NAMES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer")


class UnknownVoiceError(KeyError):
    """``TTS.resolve`` was given a name that is neither a voice id nor an alias."""


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True)
class GenerationDefaults:
    """What every LLM engine applies when a request does not say: the bounds of a generation."""

    max_tokens: int = 160
    temperature: float = 0.3
    system_prompt: str = ""
    token_timeout_s: float = 10.0  # longest wait for the next piece
    timeout_s: float = 60.0  # longest whole generation


DEFAULT_GENERATION = GenerationDefaults()


@dataclass(frozen=True)
class Segment:
    text: str
    start_ms: int
    end_ms: int


@dataclass(frozen=True)
class Transcript:
    text: str
    segments: list[Segment]
    language: str
    duration_s: float


@dataclass(frozen=True)
class VoiceInfo:
    """A voice the TTS can speak: a model plus the language its text is phonemized in."""

    id: str
    language: str
    sample_rate: int
    model: str
    description: str = ""
    aliases: tuple[str, ...] = ()


ModelKind = Literal["vad", "asr", "llm", "tts", "embedding"]


@dataclass(frozen=True)
class ModelInfo:
    """One entry of the model catalog served at ``GET /v1/models``."""

    id: str
    kind: ModelKind
    path: str
    size_bytes: int
    sha256: str | None
    capabilities: list[str] = field(default_factory=list)
    owned_by: str = "inzwa-voice"


class VADStream(Protocol):
    """Per-call VAD state (Silero is recurrent, so each call needs its own)."""

    frame_samples: int

    def probability(self, frame: Float32) -> float:
        """Speech probability of exactly ``frame_samples`` samples at 16 kHz."""
        ...

    def reset(self) -> None: ...


class VAD(Protocol):
    def stream(self) -> VADStream: ...


class ASR(Protocol):
    sample_rate: int

    def transcribe(
        self,
        audio: Float32,
        *,
        language: str | None = None,
        prompt: str | None = None,
        max_new_tokens: int | None = None,
    ) -> Transcript:
        """Transcribe mono float32 audio at ``sample_rate``."""
        ...


PROMPT_READ = ""
"""Yielded by ``LLM.stream`` after each part of the prompt it has read, before any token: a step
at which the scheduler may give the cores to more urgent work, or the reader stop. Not text:
``Inference.generate`` never passes it on."""


class LLM(Protocol):
    name: str

    def stream(
        self,
        messages: list[ChatMessage],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        stop: list[str] | None = None,
    ) -> AsyncGenerator[str, None]:
        """Yield text pieces as generated; closing the iterator stops generation. A local engine
        may also yield ``PROMPT_READ`` while it reads a long prompt (see that constant)."""
        ...

    def prime(self, messages: list[ChatMessage]) -> AsyncGenerator[str, None]:
        """Read the prompt ``messages`` make and keep it, so a later prompt that starts the same
        way reads only what follows; yields ``PROMPT_READ`` after each part it reads, and
        closing it stops the reading. A remote engine reads nothing (its server keeps its own
        prefix cache)."""
        ...

    @property
    def prompt_use(self) -> Mapping[str, int]:
        """Prompt tokens so far, by how the engine got them (a remote engine's server counts its own)."""
        ...

    def warm(self) -> None:
        """Page the model in before the first caller (blocking); a remote engine does nothing."""
        ...

    async def close(self) -> None: ...


class LLMUnavailableError(RuntimeError):
    """The LLM cannot answer now (its server is down or refuses): what uses it falls back to
    an authored answer (a call's apology, ``/v1/chat``'s) instead of failing the request."""


@runtime_checkable
class Probed(Protocol):
    """An engine that can be unavailable while the gateway runs (a remote server): ``/health``
    reports it ``degraded`` with the reason."""

    async def problem(self) -> str | None:
        """Why the engine cannot serve now, or None when it can."""
        ...


class TTS(Protocol):
    def voices(self) -> list[VoiceInfo]: ...

    def resolve(self, voice: str) -> VoiceInfo:
        """The voice with this id or alias; raise :class:`UnknownVoiceError` otherwise."""
        ...

    def synthesize(self, text: str, *, voice: str, speed: float = 1.0) -> Iterator[PCM16]:
        """Yield one PCM16 chunk per sentence at the voice's native sample rate."""
        ...


class Embedder(Protocol):
    """Sentences to vectors, for matching a caller's words to the knowledge base by meaning."""

    name: str
    dimensions: int

    def embed(self, texts: Sequence[str]) -> Float32:
        """float32 ``[len(texts), dimensions]``, each row of length 1 (a blank text's: zeros), so
        a dot product is the cosine. The same text always gets the same vector."""
        ...


class Inference(Protocol):
    """The engines as calls and routes use them: asynchronous, bounded and shared by every call.

    ``engines.runtime.Engines`` runs the blocking engines above in the inference executor, each
    run once the inference scheduler (``engines.scheduler``) grants it a slot, most urgent first:
    a call says how urgent its work is with ``Urgency.context()``. The conversation's scripted
    tests run fakes with scripted latencies in virtual time, through the same scheduler.
    """

    metrics: Metrics
    vad: VAD

    async def transcribe(
        self, audio: Float32, *, language: str | None = None, prompt: str | None = None
    ) -> Transcript: ...

    def synthesize(
        self, text: str, *, voice: str, speed: float = 1.0, sample_rate: int | None = None
    ) -> AsyncGenerator[PCM16, None]:
        """Stream PCM16 phrase by phrase, resampled to ``sample_rate`` when given."""
        ...

    def generate(
        self,
        messages: list[ChatMessage],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        stop: list[str] | None = None,
    ) -> AsyncGenerator[str, None]:
        """The LLM's text pieces; closing the generator stops generation."""
        ...

    async def prime(self, messages: list[ChatMessage]) -> None:
        """Read the prompt ``messages`` make into the model's cache while nobody waits for it
        (at the urgency of the caller's context, and giving way to any other generation), so the
        next generation that starts the same way reads only what follows."""
        ...

    @property
    def embedder(self) -> Embedder | None:
        """The sentence embedder, or None when the settings turn it off. Blocking: for vectors
        built once when a knowledge base loads (before serving, or in a thread)."""
        ...

    async def embed(self, texts: Sequence[str]) -> Float32:
        """``embedder.embed`` for a caller's turn, off the event loop; only when ``embedder`` is set."""
        ...
