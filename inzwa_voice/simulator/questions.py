"""What simulated callers ask: questions of several sentences, with the pauses people leave.

Callers do not ask in one breath: "Hello. I need some help please. What time does the clinic
open tomorrow?" comes with a pause of a few tenths of a second after each sentence, and each
pause is a moment at which a gateway may wrongly decide that the caller has finished, or start
work that the caller's next sentence throws away. So a question is built from its sentences,
each spoken by the gateway's own TTS voice and trimmed to its voiced part, joined by silences
drawn from ``PAUSE_S``. The draw is seeded, so a run can be repeated with the same pauses (the
VITS voice samples its own noise, so the speech itself differs a little from run to run).

Some questions are ones the knowledge base answers (authored, pre-synthesized: the fast path)
and some are ones it does not (they go to the LLM); the benchmark reports them apart. A caller's
own recordings (``--wav``) can stand in for the authored questions.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import aiohttp
import numpy as np

from inzwa_voice.core import PCM16
from inzwa_voice.media.wavfile import read_wav

PAUSE_S = (0.3, 0.6)
"""The silence inserted between two sentences of a question is drawn uniformly from this range."""
VOICED_DB = -40.0
"""A 10 ms window is voiced when its level is within this many dB of the loudest window's."""
SILENT_RMS = 16.0
"""...and above this absolute level (of 32767), so a silent recording has no voice at all."""

QuestionKind = Literal["knowledge", "llm", "wav"]


@dataclass(frozen=True)
class Script:
    """An authored question: its sentences, and whether the knowledge base answers it
    (``knowledge``) or nothing in it does, so the LLM answers (``llm``)."""

    kind: QuestionKind
    sentences: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


QUESTIONS = (
    Script("knowledge", ("Hello.", "I need some help please.", "What time does the clinic open tomorrow?")),
    Script("llm", ("Hello.", "My landlord wants me out of my house.", "Can you help me with the rent?")),
    Script("knowledge", ("Hi there.", "I have a question.", "Where can I get tested for HIV?")),
    Script("llm", ("Good morning.", "I lost my identity card last week.", "How do I get a new one?")),
    Script("knowledge", ("Good afternoon.", "We have no food at home.", "How do I register for food aid?")),
    Script("llm", ("Hello.", "My phone was stolen yesterday.", "Should I tell the police?")),
)
"""Knowledge and LLM questions alternate, so each call of two or more questions asks both kinds
(and never two unmatched ones in a row, which the gateway answers with its menu instead)."""


@dataclass(frozen=True)
class Question:
    """A question as the caller speaks it: ``audio`` at ``rate`` starts and ends with voice."""

    kind: QuestionKind
    text: str
    audio: PCM16
    rate: int
    sentences: int | None  # None for a recording: how many it holds is not known
    pauses_ms: tuple[float, ...]  # the silences inserted between its sentences

    @property
    def duration_ms(self) -> int:
        return len(self.audio) * 1000 // self.rate


def voiced_span(pcm: PCM16, rate: int) -> tuple[int, int]:
    """The samples ``[start, end)`` from the first to the last voiced 10 ms window; (0, 0) when
    nothing is voiced."""
    window = max(1, rate // 100)
    count = -(-len(pcm) // window)  # the last window may be short
    if count == 0:
        return 0, 0
    padded = np.zeros(count * window, dtype=np.float64)
    padded[: len(pcm)] = pcm
    rms = np.sqrt((padded.reshape(count, window) ** 2).mean(axis=1))
    threshold = max(SILENT_RMS, float(rms.max()) * 10 ** (VOICED_DB / 20))
    voiced = np.flatnonzero(rms > threshold)
    if len(voiced) == 0:
        return 0, 0
    return int(voiced[0]) * window, min(len(pcm), (int(voiced[-1]) + 1) * window)


def trim(pcm: PCM16, rate: int) -> PCM16:
    """The voiced part of ``pcm``: what a TTS voice or a recording adds around the speech would
    otherwise lengthen the pauses and move the end of the question."""
    start, end = voiced_span(pcm, rate)
    return pcm[start:end]


def join(sentences: Sequence[PCM16], rate: int, rng: random.Random) -> tuple[PCM16, tuple[float, ...]]:
    """The sentences trimmed and joined by silences drawn from ``PAUSE_S``; returns the audio and
    the pauses in milliseconds."""
    parts: list[PCM16] = []
    pauses_ms: list[float] = []
    for index, sentence in enumerate(sentences):
        if index:
            samples = round(rng.uniform(*PAUSE_S) * rate)
            parts.append(np.zeros(samples, dtype=np.int16))
            pauses_ms.append(samples * 1000 / rate)
        parts.append(trim(sentence, rate))
    return np.concatenate(parts), tuple(pauses_ms)


def build(scripts: Iterable[Script], speech: Mapping[str, PCM16], rate: int, seed: int) -> list[Question]:
    """The questions of ``scripts``, each sentence's audio taken from ``speech``; the same seed
    gives the same pauses."""
    rng = random.Random(seed)
    questions = []
    for script in scripts:
        audio, pauses = join([speech[s] for s in script.sentences], rate, rng)
        questions.append(Question(script.kind, script.text, audio, rate, len(script.sentences), pauses))
    return questions


async def tts(http: aiohttp.ClientSession, base_url: str, text: str, rate: int, voice: str) -> PCM16:
    """``text`` spoken by the gateway's ``/v1/tts`` at ``rate``."""
    body = {"text": text, "voice": voice, "format": "pcm", "sample_rate": rate}
    async with http.post(base_url + "/v1/tts", json=body) as resp:
        resp.raise_for_status()
        return np.frombuffer(await resp.read(), dtype="<i2").copy()


async def synthesize(
    http: aiohttp.ClientSession, base_url: str, scripts: Sequence[Script], rate: int, voice: str, seed: int
) -> list[Question]:
    """The authored questions, each sentence spoken once by the gateway's TTS voice."""
    speech: dict[str, PCM16] = {}
    for script in scripts:
        for sentence in script.sentences:
            if sentence not in speech:
                speech[sentence] = await tts(http, base_url, sentence, rate, voice)
    return build(scripts, speech, rate, seed)


def from_wav(path: Path, rate: int) -> Question:
    """A caller's own recording (16-bit WAV, any rate, mono or not) as a question at ``rate``:
    resampled, mixed to mono, trimmed to its voiced part; its own pauses are kept."""
    audio = trim(read_wav(path, rate), rate)
    if not len(audio):
        raise ValueError(f"{path}: no speech in it")
    return Question("wav", path.name, audio, rate, None, ())


def wav_paths(values: Iterable[str]) -> list[Path]:
    """``--wav`` values, each a file or a comma-separated list of files."""
    return [Path(part) for value in values for part in value.split(",") if part]
