"""A burst of callers who all call at once and ask at once: what overload sounds like to them.

Every caller connects in the same instant and, once greeted, asks one question. Each ends in one
of four ways, told apart from what the caller heard and saw (the native WebSocket's events):

* **refused**: the gateway closed the call before admitting it; ``busy_text`` is the authored
  busy message it sent first (the ``busy`` event), ``busy_audio_ms`` how much of it was heard;
* **answered**: its answer started (``tts.start`` with a source) and was played;
* **held**: the authored hold prompt came before the answer (the ``hold`` event);
* **silent**: admitted, asked, and no bot audio at all within the turn timeout: the one outcome
  graceful overload must never give.

Latency is voice-to-voice in the caller's media time, as in :mod:`.run` (whose ``ask`` and
``answer_played`` every caller here uses).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from inzwa_voice.simulator.caller import FRAME_MS, Refused
from inzwa_voice.simulator.questions import Question
from inzwa_voice.simulator.run import Turn, answer_played, ask, first_audio_after, percentiles
from inzwa_voice.simulator.ws import WsCaller

GREETING_TIMEOUT_S = 30.0


@dataclass
class BurstCall:
    refused: bool = False
    busy_text: str | None = None
    busy_audio_ms: float = 0.0
    close_code: int | None = None
    greeted: bool = False
    asked: bool = False
    held: bool = False
    answered: bool = False
    apologised: bool = False  # the answer failed and the authored apology was said instead
    greeting_ms: float | None = None  # from dialling to the greeting's first audio (wall clock)
    latency_ms: float | None = None  # to the first bot audio after the question (hold included)
    answer_ms: float | None = None  # to the answer's own start
    error: str | None = None

    @property
    def silent(self) -> bool:
        """Admitted and asked, and nothing heard back."""
        return self.asked and self.latency_ms is None


async def burst_call(
    http: aiohttp.ClientSession, ws_url: str, question: Question, turn_timeout_s: float, apology: str | None = None
) -> BurstCall:
    """One caller of the burst: connect, be greeted, ask ``question``, hear what comes back."""
    result = BurstCall()
    caller = WsCaller(http, ws_url)
    loop = asyncio.get_running_loop()
    dialled = loop.time()
    try:
        try:
            await caller.connect()
        except Refused as refused:
            result.refused = True
            result.busy_text, result.busy_audio_ms = refused.busy_text, refused.busy_audio_ms
            result.close_code = refused.close_code
            return result
        await caller.heard(FRAME_MS, timeout=GREETING_TIMEOUT_S)
        result.greeting_ms = round((loop.time() - dialled) * 1000, 1)
        await caller.wait_for("tts.end", timeout=GREETING_TIMEOUT_S)
        result.greeted = True
        turn = Turn(question.kind, question.sentences)
        result.asked = True
        started = None
        try:
            end, started = await ask(caller, question, turn, turn_timeout_s)
            await answer_played(caller, end, started, turn, None)
        except TimeoutError:
            result.error = f"no answer within {turn_timeout_s:g} s"
        asked_until = caller.timeline.first_voiced_ms[-1] + question.duration_ms
        result.latency_ms, result.answer_ms = first_audio_after(caller, asked_until), turn.answer_ms
        result.held = bool(caller.events("hold"))
        said = [str(e.get("text")) for e in caller.events("llm.partial")]
        result.apologised = apology is not None and apology in said
        result.answered = started is not None and not result.apologised
    except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
        result.error = f"{type(exc).__name__} {exc}".strip()
    finally:
        await caller.hang_up()
    return result


async def burst(
    ws_url: str, questions: Sequence[Question], calls: int, turn_timeout_s: float, apology: str | None = None
) -> list[BurstCall]:
    """``calls`` callers at once, caller ``i`` asking ``questions[i % len(questions)]``."""
    async with aiohttp.ClientSession() as http:
        return list(
            await asyncio.gather(
                *(
                    burst_call(http, ws_url, questions[i % len(questions)], turn_timeout_s, apology)
                    for i in range(calls)
                )
            )
        )


def summarise_burst(results: Sequence[BurstCall]) -> dict[str, Any]:
    admitted = [r for r in results if not r.refused]
    return {
        "callers": len(results),
        "admitted": len(admitted),
        "greeted": sum(r.greeted for r in admitted),
        "answered": sum(r.answered for r in admitted),
        "told_to_hold": sum(r.held for r in admitted),
        "apologised": sum(r.apologised for r in admitted),
        "refused": len(results) - len(admitted),
        "refused_with_busy_message": sum(r.busy_text is not None for r in results if r.refused),
        "silent": sum(r.silent for r in admitted),
        "greeting_ms": percentiles([r.greeting_ms for r in admitted if r.greeting_ms is not None]),
        "voice_to_voice_ms": percentiles([r.latency_ms for r in admitted if r.latency_ms is not None]),
        "answer_start_ms": percentiles([r.answer_ms for r in admitted if r.answer_ms is not None]),
        "errors": [r.error for r in results if r.error],
    }
