"""Fake engines for ``engines.base.Inference``: scripted texts and latencies in virtual time.

Each fake records every call with the virtual times it started and ended, so a test asserts
what the conversation asked of the engines and when, not only what the caller heard. Each takes
a script of steps, one per call in order, then a default step for every later call; a step can
also fail (raise its exception) or stall (wait until cancelled), which is how a test makes a
stage time out.

The caller's words travel as tones: a :class:`Phrasebook` gives each text its own frequency, the
scripted caller speaks that tone and the fake ASR hears the texts back from the tones in the
audio it is given. So a speculative decode of half a question returns only the half that was
said, with no per-call script. Bot audio is a square wave whose level names the TTS call that
made it, so :meth:`FakeTTS.heard` tells from the frames a leg played which words reached the
caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
from collections.abc import AsyncGenerator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from inzwa_voice.core import FRAME_SAMPLES, PCM16, PIPELINE_RATE, Float32
from inzwa_voice.engines.base import DEFAULT_GENERATION, PROMPT_READ, VAD, ChatMessage, Embedder, Segment, Transcript
from inzwa_voice.engines.scheduler import Scheduler
from inzwa_voice.engines.turn_taking import read_ahead, taking_turns
from inzwa_voice.telemetry import Metrics
from tests.timeline.clock import now

Outcome = Literal["running", "done", "failed", "closed", "cancelled"]

# Tone frequencies are whole multiples of 50 Hz, so every 20 ms frame holds whole cycles: each
# frame of a phrase is identical and any 320-sample window puts the tone in one FFT bin.
_FIRST_BIN, _BIN_STEP, _LAST_BIN = 8, 2, 150  # 400 Hz, 100 Hz apart, up to 7.5 kHz


class Phrasebook:
    """Which tone says which words: the scripted caller speaks them and the fake ASR hears them."""

    def __init__(self, level: float = 0.25) -> None:
        self.level = level
        self._bins: dict[str, int] = {}
        self._texts: dict[int, str] = {}
        self._frames: dict[str, PCM16] = {}

    def frame(self, text: str) -> PCM16:
        """One 20 ms frame of the tone that says ``text``."""
        if text not in self._frames:
            bin_ = _FIRST_BIN + _BIN_STEP * len(self._bins)
            if bin_ > _LAST_BIN:
                raise ValueError(f"a phrasebook tells at most {len(self._bins)} texts apart")
            self._bins[text], self._texts[bin_] = bin_, text
            t = np.arange(FRAME_SAMPLES) / PIPELINE_RATE
            tone = self.level * np.sin(2 * np.pi * bin_ * (PIPELINE_RATE / FRAME_SAMPLES) * t)
            self._frames[text] = np.round(tone * 32767).astype(np.int16)
        return self._frames[text]

    def heard(self, audio: Float32) -> str:
        """The texts spoken in ``audio``, in order: each stretch of one tone is its text once."""
        windows = len(audio) // FRAME_SAMPLES
        texts: list[str] = []
        previous: str | None = None
        for k in range(windows):
            window = audio[k * FRAME_SAMPLES : (k + 1) * FRAME_SAMPLES]
            text = None
            if float(np.sqrt(np.mean(np.square(window)))) >= self.level / 4:
                text = self._texts.get(int(np.argmax(np.abs(np.fft.rfft(window)))))
            if text is not None and text != previous:
                texts.append(text)
            previous = text
        return " ".join(texts)


class FakeVADStream:
    """Speech probability 1.0 for a window at least ``threshold_rms`` loud, else 0.0."""

    frame_samples = 512  # Silero's window at 16 kHz: the TurnDetector counts in these

    def __init__(self, threshold_rms: float) -> None:
        self._threshold = threshold_rms

    def probability(self, frame: Float32) -> float:
        if frame.shape != (self.frame_samples,):
            raise ValueError(f"VAD window must be {self.frame_samples} samples, got shape {frame.shape}")
        return 1.0 if float(np.sqrt(np.mean(np.square(frame)))) >= self._threshold else 0.0

    def reset(self) -> None:
        """Nothing to forget: the verdict depends on the window alone."""


class FakeVAD:
    def __init__(self, threshold_rms: float = 0.01) -> None:
        self.threshold_rms = threshold_rms

    def stream(self) -> FakeVADStream:
        return FakeVADStream(self.threshold_rms)


@dataclass(frozen=True)
class Decode:
    """How the fake ASR answers one ``transcribe``: after ``latency_s`` plus ``rtf`` seconds per
    second of audio, the ``text`` (None: what the phrasebook hears in the audio), or ``fail``
    raised, or never (``stall``: until cancelled)."""

    latency_s: float = 0.3
    rtf: float = 0.0
    text: str | None = None
    fail: Exception | None = None
    stall: bool = False


@dataclass
class ASRCall:
    started: float
    audio_s: float
    language: str | None
    prompt: str | None
    ended: float | None = None
    text: str | None = None  # what it returned
    outcome: Outcome = "running"


async def _forever() -> None:
    """A stalled stage: waits until cancelled, like a model that never answers."""
    await asyncio.get_running_loop().create_future()


class FakeASR:
    sample_rate = PIPELINE_RATE

    def __init__(self, words: Phrasebook, *script: Decode, default: Decode = Decode()) -> None:
        self.words = words
        self._script = list(script)
        self._default = default
        self.calls: list[ASRCall] = []

    @property
    def busy(self) -> bool:
        return any(call.outcome == "running" for call in self.calls)

    async def transcribe(self, audio: Float32, *, language: str | None = None, prompt: str | None = None) -> Transcript:
        if audio.dtype != np.float32 or audio.ndim != 1:
            raise ValueError(f"ASR takes mono float32 audio, got {audio.dtype} with shape {audio.shape}")
        step = self._script.pop(0) if self._script else self._default
        seconds = len(audio) / self.sample_rate
        call = ASRCall(started=now(), audio_s=seconds, language=language, prompt=prompt)
        self.calls.append(call)
        with _tracking(call):
            await asyncio.sleep(step.latency_s + step.rtf * seconds)
            if step.stall:
                await _forever()
            if step.fail is not None:
                raise step.fail
            text = self.words.heard(audio) if step.text is None else step.text
            call.text = text
        segments = [Segment(text, 0, round(seconds * 1000))] if text else []
        return Transcript(text=text, segments=segments, language=language or "sn", duration_s=seconds)


@dataclass(frozen=True)
class Generate:
    """One LLM reply: ``text`` in word pieces, the first after ``first_token_s`` and each next
    after ``per_token_s``; then ``fail`` raised, or a wait until cancelled (``stall``). An empty
    text with ``stall`` is an LLM that never yields a token."""

    text: str
    first_token_s: float = 0.2
    per_token_s: float = 0.03
    fail: Exception | None = None
    stall: bool = False


@dataclass
class LLMCall:
    started: float  # when ``generate`` was called
    messages: list[ChatMessage]
    max_tokens: int | None
    temperature: float | None
    stop: list[str] | None
    pieces: list[tuple[float, str]] = field(default_factory=list)  # (time yielded, piece)
    ended: float | None = None
    outcome: Outcome = "running"

    @property
    def text(self) -> str:
        """What the LLM gave so far."""
        return "".join(piece for _, piece in self.pieces)


@dataclass
class PrimeCall:
    """One read-ahead of a prompt start: when it began and ended, and how (``done``: read to the
    end; ``closed``: it gave way or its call ended)."""

    started: float
    messages: list[ChatMessage]
    steps: int = 0
    ended: float | None = None
    outcome: Outcome = "running"


class FakeLLM:
    name = "fake"

    def __init__(
        self,
        *script: Generate | str,
        default: Generate | str = "Ndizvo.",
        prime_steps: int = 4,
        prime_step_s: float = 0.05,
    ) -> None:
        self._script = [_generation(step) for step in script]
        self._default = _generation(default)
        self.calls: list[LLMCall] = []
        self.primes: list[PrimeCall] = []
        self._given: list[Generate] = []  # what each call was scripted to give
        self._prime_steps = prime_steps
        self._prime_step_s = prime_step_s

    async def prime(self, messages: list[ChatMessage]) -> AsyncGenerator[str, None]:
        """Reads ``prime_steps`` parts of the prompt, ``prime_step_s`` each, yielding
        ``PROMPT_READ`` after each (as the llama.cpp engine does)."""
        call = PrimeCall(now(), list(messages))
        self.primes.append(call)
        with _tracking(call):
            for _ in range(self._prime_steps):
                await asyncio.sleep(self._prime_step_s)
                call.steps += 1
                yield PROMPT_READ

    def generate(
        self,
        messages: list[ChatMessage],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        stop: list[str] | None = None,
    ) -> AsyncGenerator[str, None]:
        step = self._going_on(messages)
        if step is None:
            step = self._script.pop(0) if self._script else self._default
        call = LLMCall(now(), list(messages), max_tokens, temperature, stop)
        self.calls.append(call)
        self._given.append(step)
        return self._stream(step, call)

    def _going_on(self, messages: list[ChatMessage]) -> Generate | None:
        """Asked to go on with an answer it had begun (the assistant's last message is the start
        of one it was giving): the rest of that answer, each piece ``per_token_s`` apart."""
        written = messages[-1].content if messages and messages[-1].role == "assistant" else ""
        begun = next((g for g in reversed(self._given) if written and g.text.startswith(written)), None)
        if begun is None:
            return None
        return dataclasses.replace(begun, text=begun.text[len(written) :], first_token_s=begun.per_token_s)

    async def _stream(self, step: Generate, call: LLMCall) -> AsyncGenerator[str, None]:
        pieces = re.findall(r"\s*\S+", step.text)
        if call.max_tokens is not None:
            pieces = pieces[: call.max_tokens]
        with _tracking(call):
            for i, piece in enumerate(pieces):
                await asyncio.sleep(step.per_token_s if i else step.first_token_s)
                call.pieces.append((now(), piece))
                yield piece
            if step.stall:
                await _forever()
            if step.fail is not None:
                raise step.fail


class _Tracked(Protocol):
    outcome: Outcome
    ended: float | None


@contextlib.contextmanager
def _tracking(call: _Tracked) -> Iterator[None]:
    """How a fake's streaming call ended, and when: done, closed by its consumer, cancelled or
    failed (a test asserts that a dropped reply closed its stream, not merely stopped reading)."""
    try:
        yield
        call.outcome = "done"
    except GeneratorExit:
        call.outcome = "closed"
        raise
    except asyncio.CancelledError:
        call.outcome = "cancelled"
        raise
    except Exception:
        call.outcome = "failed"
        raise
    finally:
        call.ended = now()


def _generation(step: Generate | str) -> Generate:
    return Generate(step) if isinstance(step, str) else step


@dataclass(frozen=True)
class Synth:
    """How the fake TTS speaks one text: the first sentence's audio after ``first_audio_s``,
    each next one after ``rtf`` seconds per second of its audio; or ``fail`` raised, or a wait
    until cancelled (``stall``), in place of the first audio."""

    first_audio_s: float = 0.05
    rtf: float = 0.05
    fail: Exception | None = None
    stall: bool = False


@dataclass
class TTSCall:
    index: int
    text: str
    voice: str
    speed: float
    sample_rate: int
    started: float
    chunks: list[tuple[float, int]] = field(default_factory=list)  # (time yielded, samples)
    ended: float | None = None
    outcome: Outcome = "running"


# Bot audio: a 400 Hz square wave (at 16 kHz) whose level names the TTS call that made it.
_BASE_LEVEL, _LEVEL_STEP, _HALF_PERIOD = 1000, 50, 20
_MAX_CALLS = (32767 - _BASE_LEVEL) // _LEVEL_STEP


class FakeTTS:
    def __init__(self, *script: Synth, default: Synth = Synth(), ms_per_char: float = 60.0) -> None:
        self._script = list(script)
        self._default = default
        self.ms_per_char = ms_per_char
        self.calls: list[TTSCall] = []

    def synthesize(
        self, text: str, *, voice: str, speed: float = 1.0, sample_rate: int | None = None
    ) -> AsyncGenerator[PCM16, None]:
        if len(self.calls) >= _MAX_CALLS:
            raise ValueError(f"the fake TTS tells at most {_MAX_CALLS} calls apart")
        step = self._script.pop(0) if self._script else self._default
        call = TTSCall(len(self.calls), text, voice, speed, sample_rate or PIPELINE_RATE, now())
        self.calls.append(call)
        return self._stream(step, call)

    async def _stream(self, step: Synth, call: TTSCall) -> AsyncGenerator[PCM16, None]:
        # One chunk per sentence, each keeping its trailing space, so the chunks cover the text.
        sentences = re.findall(r"[^.!?]*[.!?]+\s*|[^.!?]+$", call.text)
        per_char = self.ms_per_char / 1000 * call.sample_rate / call.speed
        level = _BASE_LEVEL + _LEVEL_STEP * call.index
        done = 0.0  # characters of audio made so far, in samples
        with _tracking(call):
            for i, sentence in enumerate(sentences):
                start, end = round(done), round(done + len(sentence) * per_char)
                done += len(sentence) * per_char
                if i == 0:
                    await asyncio.sleep(step.first_audio_s)
                    if step.stall:
                        await _forever()
                    if step.fail is not None:
                        raise step.fail
                else:
                    await asyncio.sleep(step.rtf * (end - start) / call.sample_rate)
                n = np.arange(start, end)
                chunk = np.where((n // _HALF_PERIOD) % 2 == 0, level, -level).astype(np.int16)
                call.chunks.append((now(), len(chunk)))
                yield chunk

    def heard(self, audio: PCM16) -> list[str]:
        """For each call, in order, the part of its text that ``audio`` (16 kHz frames a leg
        played) carries: samples of that call's level, counted in characters."""
        levels = np.abs(audio[audio != 0].astype(np.int32))
        index = np.round((levels - _BASE_LEVEL) / _LEVEL_STEP).astype(np.int64)
        counts = np.bincount(index[(index >= 0) & (index < len(self.calls))], minlength=len(self.calls))
        per_char = self.ms_per_char / 1000 * PIPELINE_RATE
        return [call.text[: int(counts[call.index] * call.speed / per_char + 1e-6)] for call in self.calls]


class FakeInference:
    """``engines.base.Inference`` over the fakes above, with a real ``Metrics`` and the real
    inference scheduler in front of them, as ``engines.runtime.Engines`` has: ``slots`` model
    runs at once (by default more than any test starts, so only a test that asks for few slots
    sees work wait for one)."""

    def __init__(
        self,
        asr: FakeASR,
        *,
        llm: FakeLLM | None = None,
        tts: FakeTTS | None = None,
        vad: FakeVAD | None = None,
        slots: int = 64,
    ) -> None:
        self.metrics = Metrics()
        self.scheduler = Scheduler(slots, self.metrics)
        self.asr = asr
        self.llm = llm or FakeLLM()
        self.tts = tts or FakeTTS()
        self.vad: VAD = vad or FakeVAD()

    async def transcribe(self, audio: Float32, *, language: str | None = None, prompt: str | None = None) -> Transcript:
        async with self.scheduler.slot("asr"):
            return await self.asr.transcribe(audio, language=language, prompt=prompt)

    def synthesize(
        self, text: str, *, voice: str, speed: float = 1.0, sample_rate: int | None = None
    ) -> AsyncGenerator[PCM16, None]:
        return self.scheduler.stream(
            "tts", self.tts.synthesize(text, voice=voice, speed=speed, sample_rate=sample_rate)
        )

    def generate(
        self,
        messages: list[ChatMessage],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        stop: list[str] | None = None,
    ) -> AsyncGenerator[str, None]:
        def start(prompt: list[ChatMessage], limit: int) -> AsyncGenerator[str, None]:
            return self.llm.generate(prompt, max_tokens=limit, temperature=temperature, stop=stop)

        return taking_turns(self.scheduler, start, messages, max_tokens or DEFAULT_GENERATION.max_tokens)

    async def prime(self, messages: list[ChatMessage]) -> None:
        await read_ahead(self.scheduler, self.llm.prime(messages))

    @property
    def embedder(self) -> Embedder | None:
        return None  # scripted calls match by words alone

    async def embed(self, texts: Sequence[str]) -> Float32:
        raise AssertionError("the scripted engines have no embedder")
