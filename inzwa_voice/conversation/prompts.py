"""Fixed texts as ready-made frames: greetings, hold, re-prompt, goodbye, apology.

Every call of a profile says the same few texts, so each (voice, text) is synthesized once and
its frames are reused by every call. Concurrent callers of the same text share one synthesis
(a burst of calls must not synthesize one greeting fifty times), and a synthesis is not tied to
the call that asked first: if that caller hangs up, the others still get their audio, and the
frames stay cached. A synthesis runs as urgently as the most urgent of those waiting for it,
read live as their urgency rises: the texts prepared at start-up wait behind the calls' work,
but a greeting a caller waits for, or an authored answer whose caller has just finished
speaking, goes ahead of speculation and REST requests.
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
from inzwa_voice.engines.scheduler import Priority, Urgency, current_urgency
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
        self._frames: OrderedDict[tuple[str, str], _Synthesis] = OrderedDict()

    async def frames(self, text: str, voice: str) -> list[PCM16]:
        """The frames of ``text`` in ``voice``: cached, or the one synthesis under way (run at
        least as urgently as this caller's work), or a new one if none ran or the last failed.
        Cancelling this wait leaves the synthesis running and its frames cached."""
        key = (voice, text)
        synthesis = self._frames.get(key)
        if synthesis is None or synthesis.failed:
            urgency = _Waiters()
            task = asyncio.get_running_loop().create_task(
                synthesize_frames(self._inference, text, voice), context=urgency.context()
            )
            synthesis = self._frames[key] = _Synthesis(task, urgency)
            while len(self._frames) > self._limit:
                self._frames.popitem(last=False)
        self._frames.move_to_end(key)
        if synthesis.task.done():
            return synthesis.task.result()
        waiter = current_urgency()
        synthesis.urgency.waiting.append(waiter)
        try:
            return await asyncio.shield(synthesis.task)
        finally:
            synthesis.urgency.waiting.remove(waiter)

    def ready(self, text: str, voice: str) -> list[PCM16] | None:
        """The frames if already synthesized, without waiting (a refusal does not wait for audio)."""
        synthesis = self._frames.get((voice, text))
        if synthesis is None or not synthesis.task.done() or synthesis.failed:
            return None
        return synthesis.task.result()

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


class _Waiters(Urgency):
    """The urgency of a synthesis: the most urgent of its waiters', read when the scheduler
    grants a slot (a reply's rises at its caller's endpoint); ``REST`` once none waits."""

    def __init__(self) -> None:
        super().__init__(Priority.REST)
        self.waiting: list[Urgency] = []

    @property
    def priority(self) -> Priority:
        return min((u.priority for u in self.waiting), default=Priority.REST)

    @priority.setter
    def priority(self, value: Priority) -> None:
        """Set by the base class only: the waiters decide."""


@dataclass(eq=False)
class _Synthesis:
    task: asyncio.Task[list[PCM16]]
    urgency: _Waiters

    @property
    def failed(self) -> bool:
        """Cancelled (the process is shutting down) or broken: the next caller tries again."""
        task = self.task
        return task.done() and (task.cancelled() or task.exception() is not None)


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
