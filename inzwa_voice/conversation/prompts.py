"""Fixed texts as ready-made frames: greetings, hold, re-prompt, goodbye, apology.

Every call of a profile says the same few texts, so each (voice, text) is synthesized once and
its frames are reused by every call. Concurrent callers of the same text share one synthesis
(a burst of calls must not synthesize one greeting fifty times), and a synthesis is not tied to
the call that asked first: if that caller hangs up, the others still get their audio.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from contextlib import aclosing
from dataclasses import dataclass
from typing import ClassVar

from inzwa_voice.core import FRAME_SAMPLES, PCM16, PIPELINE_RATE
from inzwa_voice.engines.base import Inference
from inzwa_voice.media.framing import Framer

log = logging.getLogger(__name__)


async def synthesize_frames(inference: Inference, text: str, voice: str) -> list[PCM16]:
    """``text`` in ``voice`` as whole 20 ms pipeline frames (the last one padded)."""
    framer = Framer(FRAME_SAMPLES)
    frames: list[PCM16] = []
    stream = inference.synthesize(text, voice=voice, sample_rate=PIPELINE_RATE)
    async with aclosing(stream):
        async for pcm in stream:
            frames.extend(framer.push(pcm))
    frames.extend(framer.flush(pad=True))
    return frames


class PromptAudio:
    """Ready-made frames per (voice, text). ``PromptAudio.of(inference)`` is the one cache of an
    engines object, shared by every gateway app that runs on it."""

    # By identity: engines are loaded once per process and live as long as it does.
    _shared: ClassVar[dict[int, PromptAudio]] = {}

    @classmethod
    def of(cls, inference: Inference) -> PromptAudio:
        cache = cls._shared.get(id(inference))
        if cache is None or cache._inference is not inference:
            cache = cls._shared[id(inference)] = cls(inference)
        return cache

    def __init__(self, inference: Inference, limit: int = 256) -> None:
        self._inference = inference
        self._limit = self._spare = limit
        self._frames: OrderedDict[tuple[str, str], asyncio.Task[list[PCM16]]] = OrderedDict()

    async def frames(self, text: str, voice: str) -> list[PCM16]:
        key = (voice, text)
        task = self._frames.get(key)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = asyncio.ensure_future(synthesize_frames(self._inference, text, voice))
            self._frames[key] = task
            while len(self._frames) > self._limit:
                self._frames.popitem(last=False)
        self._frames.move_to_end(key)
        return await asyncio.shield(task)

    async def prepare(self, texts: list[tuple[str, str]], progress: Preparation) -> None:
        """Synthesize ``(text, voice)`` pairs ahead of the first call that needs them, in order
        and one at a time: a knowledge base holds dozens of answers, and synthesizing them all at
        once would hold every inference worker while the first calls arrive. A text that fails
        is logged and left for the call that needs it to try again. The cache grows to hold
        them all, with its usual room beside them: a knowledge base larger than the cache must
        not evict its own first answers (or the greetings) while the last are synthesized."""
        self._limit = max(self._limit, len(texts) + self._spare)
        for text, voice in texts:
            try:
                await self.frames(text, voice)
            except Exception:
                progress.failed += 1
                log.exception("a prompt could not be synthesized ahead", extra={"voice": voice})
            progress.done += 1


@dataclass
class Preparation:
    """How far the ahead-of-time synthesis is: ``/health`` reports it, and a load balancer or a
    benchmark can wait for ``ready`` before sending calls (until then an authored answer may
    wait for its own synthesis)."""

    total: int = 0
    done: int = 0
    failed: int = 0

    @property
    def ready(self) -> bool:
        return self.done >= self.total
