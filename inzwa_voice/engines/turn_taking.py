"""A local LLM shared by every call: generations that take turns instead of queueing whole.

llama.cpp has one context per process, so its generations run one at a time, and each used to
hold it to its end. With three callers asking at once, the third caller's answer waited for
two whole answers (a second and more each on two cores), and a committed answer waited behind
another call's speculative one, which holds the model until its caller's endpoint. Here a
generation gives way at its next token whenever a more urgent one waits (a committed answer's
first phrase is more urgent than another answer's later phrases, or than any speculation):
it stops, its context is saved (``engines.llm.states``), and once its turn comes back it is
asked again with what it wrote as the start of its answer, so it restores the saved state and
goes on from the same token. Its reader sees one unbroken stream; a later phrase is still ready
long before the caller has heard the one before it.

Reading a conversation into the cache ahead of its turn (``prime``) gives way the same way, but
simply stops: nobody waits for it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing

from inzwa_voice.engines.base import PROMPT_READ, ChatMessage
from inzwa_voice.engines.scheduler import GaveWay, Scheduler

Generate = Callable[[list[ChatMessage], int], AsyncGenerator[str, None]]
"""Starts a generation for ``messages`` of at most the given number of tokens."""


def continued(messages: list[ChatMessage], written: str) -> list[ChatMessage]:
    """``messages`` with ``written`` as the start of the assistant's answer (after the prefill
    they may already end with), for the model to go on from."""
    if not written:
        return messages
    if messages and messages[-1].role == "assistant":
        return [*messages[:-1], ChatMessage("assistant", messages[-1].content + written)]
    return [*messages, ChatMessage("assistant", written)]


async def taking_turns(
    scheduler: Scheduler, generate: Generate, messages: list[ChatMessage], max_tokens: int
) -> AsyncGenerator[str, None]:
    """The pieces of one generation of at most ``max_tokens`` through ``scheduler``'s ``llm``
    engine at the current urgency, giving way to more urgent generations and taking up again
    where it stopped (``PROMPT_READ`` included, as ``LLM.stream`` yields it)."""
    written: list[str] = []
    while len(written) < max_tokens:
        source = generate(continued(messages, "".join(written)), max_tokens - len(written))
        try:
            async with aclosing(scheduler.stream("llm", source, exclusive=True, gives_way=True)) as pieces:
                async for piece in pieces:
                    if piece != PROMPT_READ:
                        written.append(piece)
                    yield piece
            return
        except GaveWay:
            continue


async def read_ahead(scheduler: Scheduler, reading: AsyncGenerator[str, None]) -> None:
    """Read ``reading`` (an ``LLM.prime``) through ``scheduler``'s ``llm`` engine at the current
    urgency, stopping where it gives way."""
    with contextlib.suppress(GaveWay):
        async with aclosing(scheduler.stream("llm", reading, exclusive=True, gives_way=True)) as steps:
            async for _ in steps:
                pass
