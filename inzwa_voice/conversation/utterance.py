"""The caller's words of one turn, decoded stretch by stretch as the pauses close them.

Decoding the whole utterance again at every pause wasted the cores: a three-sentence question
cost a decode at each pause and a last one of everything at the endpoint. Instead each stretch
of speech the turn detector closes (at ``PREFETCH``) is decoded once, as soon as it closes,
while the caller may go on, with the earlier stretches' text as Whisper's prompt; the
transcript is the stretches joined. So when the endpoint comes only the last stretch is still
being decoded, and it started at the pause. A caller who resumes keeps every stretch decoded.

One decode of a turn runs at a time: stretches that close while the one before is still being
decoded (the cores are busy with other calls) wait and are decoded together, in one run, when
it ends. Every Whisper run pays a fixed pass over a 30-second window (about 0.4 s on two cores)
whatever the length of its audio, so under load a turn costs fewer, longer decodes instead of
one per stretch, and alone it still costs one per stretch, each as soon as it closes.

Decodes run at ``Priority.SPECULATIVE`` until the turn is committed, then at ``FINAL``; the
urgency's ``runs`` count what the turn cost (shared with its replies).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np

from inzwa_voice.core import PCM16
from inzwa_voice.engines.base import Inference
from inzwa_voice.engines.scheduler import Priority, Urgency
from inzwa_voice.media.framing import pcm16_to_float

STAGE_TIMEOUT_S = 10.0
"""Longest wait for one stage, a slot's wait included: a stretch's decode, the next phrase from
the model, one phrase's speech."""


class Utterance:
    def __init__(self, inference: Inference, language: str, on_text: Callable[[str], None]) -> None:
        self._inference = inference
        self._language = language
        self._on_text = on_text
        self.urgency = Urgency(Priority.SPECULATIVE)
        self.stretches = 0
        self.decoded = ""  # the stretches decoded so far, joined
        self.facts: tuple[str, ...] = ()  # what its words so far were read into the model with
        self._decodes: list[asyncio.Task[str]] = []
        self._closed: list[PCM16] = []  # stretches the next decode takes when it starts
        self._next: asyncio.Task[str] | None = None  # that decode, waiting for the one before

    def add(self, audio: PCM16) -> None:
        """A stretch closed: decode it now, or with the next decode if one is still running."""
        self.stretches += 1
        self._closed.append(audio)
        if self._next is None:
            before = self._decodes[-1] if self._decodes else None
            decode = asyncio.get_running_loop().create_task(self._decode(before), context=self.urgency.context())
            decode.add_done_callback(retrieved)
            self._decodes.append(decode)
            self._next = decode

    async def text(self) -> str:
        """The stretches added so far, joined, once decoded; cancelling this leaves them running."""
        if not self._decodes:
            return ""
        return await asyncio.shield(self._decodes[-1])

    def commit(self) -> None:
        """The caller finished: what is left to decode is what they wait for."""
        self.urgency.priority = Priority.FINAL

    def reopen(self) -> None:
        """The caller went on after all (a barge-in before the answer): back to speculative."""
        self.urgency.priority = Priority.SPECULATIVE

    def cancel(self) -> None:
        for decode in self._decodes:
            decode.cancel()

    async def _decode(self, before: asyncio.Task[str] | None) -> str:
        try:
            previous = "" if before is None else await asyncio.shield(before)
        finally:
            # From here on a closing stretch needs a decode of its own: this one takes what
            # closed so far (or, failed or cancelled, nothing).
            if self._next is asyncio.current_task():
                self._next = None
        audio, self._closed = np.concatenate(self._closed), []
        async with asyncio.timeout(STAGE_TIMEOUT_S):
            result = await self._inference.transcribe(
                pcm16_to_float(audio), language=self._language, prompt=previous or None
            )
        text = " ".join(t for t in (previous, result.text.strip()) if t)
        self.decoded = text
        self._on_text(text)
        return text


def retrieved(task: asyncio.Task[Any]) -> None:
    """A done-callback for a decode whose failure is reported by whatever waits for it, if
    anything does (a stretch's by its reply, a dropped reply's transcription by nobody): it is
    marked retrieved, so asyncio does not log it as never seen."""
    if not task.cancelled():
        task.exception()
