"""One safe assistant reply: the safety layer's checks wrapped around the LLM stream.

Every text the gateway answers with, over REST or on a call, comes from ``safe_reply``: a
crisis bypasses the model and gives the fixed safe message, blocked input gets a refusal, and
model output reaches the user only phrase by phrase after the post filter has passed it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass

from inzwa_voice.engines.base import ChatMessage, Inference
from inzwa_voice.safety import Safety
from inzwa_voice.safety.stream import Decided


@dataclass
class ReplyInfo:
    """What happened while replying, for the response, the call record and metrics."""

    action: str = "allow"
    category: str | None = None
    transfer: bool = False
    blocked_category: str | None = None
    tokens: int = 0
    first_token_at: float | None = None  # loop time of the model's first token

    def public(self) -> dict[str, object]:
        """The part a REST client sees (``safety`` in ``/v1/chat`` responses)."""
        return {
            "action": self.action,
            "category": self.category,
            "transfer": self.transfer,
            "blocked_category": self.blocked_category,
            "tokens": self.tokens,
        }


async def safe_reply(
    engines: Inference,
    safety: Safety,
    messages: list[ChatMessage],
    *,
    language: str,
    info: ReplyInfo,
    max_tokens: int | None = None,
    temperature: float | None = None,
    stop: list[str] | None = None,
    decided: Decided | None = None,
) -> AsyncGenerator[str, None]:
    """The safe reply to ``messages``, phrase by phrase; ``decided`` lets a phrase end at the word
    that decides it will not be spoken (``safety.stream.PhraseSplitter.feed``)."""
    last_user = next((m.content for m in reversed(messages) if m.role == "user"), "")
    verdict = safety.check_input(last_user, language)
    metrics = engines.metrics
    if verdict.action != "allow":
        info.action, info.category, info.transfer = verdict.action, verdict.category, verdict.transfer
        metrics.safety_events.labels("input", verdict.category or verdict.action).inc()
        yield verdict.message or safety.refusal(language)
        return

    def on_event(kind: str, category: str) -> None:
        info.action, info.blocked_category = "filtered", category
        metrics.safety_events.labels("output", category).inc()

    async def counted() -> AsyncGenerator[str, None]:
        generation = engines.generate(messages, max_tokens=max_tokens, temperature=temperature, stop=stop)
        async with aclosing(generation):
            async for token in generation:
                info.tokens += 1
                if info.first_token_at is None:
                    info.first_token_at = asyncio.get_running_loop().time()
                yield token

    tokens = counted()
    # aclosing: when the listener hangs up, closing this reply closes the filter, which closes
    # the generation, which stops the model thread (async-for alone would leave them to the GC).
    async with aclosing(safety.filter_stream(tokens, language, on_event=on_event, decided=decided)) as phrases:
        async for phrase in phrases:
            yield phrase
