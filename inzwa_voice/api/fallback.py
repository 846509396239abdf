"""What the chat routes answer when the LLM cannot: an authored text, or a clear 503, never a 500.

A remote LLM (``INZWA_LLM_ENGINE=openai``) can be down while the gateway is up. A call then
speaks its profile's apology; ``/v1/chat`` answers from the same brain, so it returns that
apology too, as a ``fallback`` answer. The OpenAI-compatible route has no authored text to
give: it answers 503 ``llm_unavailable``. Only a failure before the first piece falls back;
once text has gone out, the stream's own error event says the answer broke off.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing

from inzwa_voice.conversation.brain import Answer, Source
from inzwa_voice.engines.base import LLMUnavailableError
from inzwa_voice.errors import ApiError

log = logging.getLogger(__name__)


def llm_unavailable(exc: BaseException) -> ApiError:
    return ApiError(
        f"the language model cannot answer now: {exc or type(exc).__name__}",
        status=503,
        type="api_error",
        code="llm_unavailable",
        headers={"Retry-After": "10"},
    )


async def or_apology(answer: Answer, pieces: AsyncGenerator[str, None], apology: str) -> AsyncGenerator[str, None]:
    """``pieces``, or ``apology`` (and ``answer.source`` ``fallback``/``llm_unavailable``) when
    the LLM fails or times out before its first piece; a 503 when there is no apology."""
    started = False
    async with aclosing(pieces):
        try:
            async for piece in pieces:
                started = True
                yield piece
        except (LLMUnavailableError, TimeoutError) as exc:
            if started:
                raise
            if not apology:
                raise llm_unavailable(exc) from None
            log.warning("the LLM cannot answer; the authored apology answers instead", extra={"error": str(exc)})
            answer.source = Source("fallback", "llm_unavailable")
            yield apology
