"""Run simulated calls against a gateway and summarise them as JSON.

Each call: connect over a leg, wait for the greeting to finish, then ask its questions one after
the other (several sentences with natural pauses, from ``questions``), each once the answer to
the one before has finished playing; optionally talk over the first answer instead (the barge-in
round), hang up. Latency is measured where the caller is, in media time: from the caller's last
voiced frame to the first bot audio frame that arrives after it. A question is unanswered when
no answer starts within the turn timeout after it; bot audio, or the start of an answer, that
reaches the caller before its last sentence has ended is a reply spoken into a pause. The first
bot audio may be the hold prompt; where the leg carries events, the answer's own start is
reported too. Stage splits and answer sources come from the gateway's ``turn.metrics`` events
where the leg carries events (the native WebSocket, WebRTC), else from its call record
(``records``); what the round cost the gateway comes from its ``/metrics``.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from inzwa_voice.engines.base import PCM16
from inzwa_voice.simulator.audiosocket import AudioSocketCaller
from inzwa_voice.simulator.caller import FRAME_MS, Caller, Refused
from inzwa_voice.simulator.gateway_metrics import PEAK_RSS, round_cost, scrape
from inzwa_voice.simulator.questions import QUESTIONS, Question, QuestionKind, from_wav, synthesize, tts
from inzwa_voice.simulator.records import CallRecord
from inzwa_voice.simulator.twilio import twilio_caller
from inzwa_voice.simulator.webrtc import webrtc_caller
from inzwa_voice.simulator.ws import WsCaller

INTERRUPTION = "Wait, stop. I have another question."
TURN_TIMEOUT_S = 30.0
"""A question with no answer started this long after its last word is unanswered, and its call
ends there (what the gateway does next is no longer a measurement): the questions it had still
to ask count as unanswered too, as do those of a call that failed before asking them."""
ANSWER_PLAY_LIMIT_S = 90.0
"""The longest an answer may take to play to its end before the call gives up."""
ANSWER_QUIET_S = 1.5
"""Legs without events: the answer has ended when the bot has been silent this long (longer than
a gap between two phrases of an answer the LLM is still writing)."""
THINK_MS = 500
"""Silence before each question: a caller does not start the instant the bot stops."""

# A caller for the gateway at a base URL, given an HTTP session and the gateway's /health.
CallerFactory = Callable[[aiohttp.ClientSession, str, dict[str, Any]], Caller]


def ws_caller(http: aiohttp.ClientSession, base_url: str, health: dict[str, Any]) -> Caller:
    return WsCaller(http, base_url.replace("http", "ws", 1) + "/v1/ws")


def audiosocket_caller(http: aiohttp.ClientSession, base_url: str, health: dict[str, Any]) -> Caller:
    host = urllib.parse.urlsplit(base_url).hostname or "127.0.0.1"
    return AudioSocketCaller(host, int(health["legs"]["audiosocket"]["port"]))


LEGS: dict[str, CallerFactory] = {
    "ws": ws_caller,
    "twilio": twilio_caller,
    "audiosocket": audiosocket_caller,
    "webrtc": webrtc_caller,
}


@dataclass
class Turn:
    """One question asked and what came of it."""

    kind: QuestionKind
    sentences: int | None
    latency_ms: float | None = None  # to the first bot audio; None: unanswered
    answer_ms: float | None = None  # to the answer's start (not a hold prompt), on legs with events
    stages: dict[str, float] = field(default_factory=dict)
    source: str | None = None  # where the answer came from
    runs: dict[str, int] = field(default_factory=dict)  # model runs the gateway says the turn cost
    into_pause: bool = False


@dataclass
class CallResult:
    turns: list[Turn] = field(default_factory=list)
    barge_in_stop_ms: float | None = None
    error: str | None = None


def first_audio_after(caller: Caller, media_ms: int) -> float | None:
    arrivals = [r.media_ms for r in caller.timeline.audio if r.media_ms >= media_ms and r.samples]
    return float(min(arrivals) - media_ms) if arrivals else None


def _is_answer(event: dict[str, Any]) -> bool:
    return "source" in event  # the start of an answer; the hold prompt has no source


async def ask(caller: Caller, question: Question, turn: Turn, timeout_s: float) -> tuple[int, dict[str, Any] | None]:
    """Say ``question`` and wait until its answer starts; returns the media time the question
    ended at and, on legs with events, the answer's ``tts.start``."""
    caller.say(np.zeros(caller.rate * THINK_MS // 1000, dtype=np.int16))
    start = caller.say(question.audio)
    end = start + question.duration_ms
    started = None
    try:
        async with asyncio.timeout((end - caller.media_ms) / 1000 + timeout_s):
            if caller.stage_metrics:
                started = await caller.event_after(end, "tts.start", _is_answer, timeout=None)
            await caller.heard_after(end, FRAME_MS, timeout=None)
    finally:
        turn.into_pause = caller.timeline.bot_spoke_during(start, min(end, caller.media_ms))
    turn.latency_ms = first_audio_after(caller, end)
    if started is not None:
        turn.answer_ms = float(caller.timeline.received_at(started) - end)
    return end, started


async def answer_played(
    caller: Caller, end: int, started: dict[str, Any] | None, turn: Turn, record: CallRecord | None
) -> None:
    """Wait until the answer has played to its end; note its stage split and source."""
    if started is not None:
        answer = await caller.event_after(
            end, "turn.metrics", lambda e: e.get("id") == started.get("id"), timeout=ANSWER_PLAY_LIMIT_S
        )
    else:
        await caller.bot_quiet(timeout=ANSWER_PLAY_LIMIT_S, quiet_s=ANSWER_QUIET_S)
        found = await record.answered(ANSWER_PLAY_LIMIT_S) if record is not None else None
        if found is None:
            return
        answer = found
        await caller.bot_quiet(timeout=ANSWER_PLAY_LIMIT_S, quiet_s=ANSWER_QUIET_S)  # an answer after a hold prompt
    turn.stages = dict(answer.get("latency_ms") or {})
    turn.runs = {str(engine): int(n) for engine, n in (answer.get("runs") or {}).items()}
    source = answer.get("source")
    turn.source = str(source["kind"]) if isinstance(source, dict) else None


async def one_call(
    http: aiohttp.ClientSession,
    base_url: str,
    health: dict[str, Any],
    factory: CallerFactory,
    questions: Sequence[Question],
    interruption: PCM16 | None,
    barge_in_after_ms: int,
    turn_timeout_s: float = TURN_TIMEOUT_S,
) -> CallResult:
    """One call asking ``questions`` in turn; with an ``interruption``, only the first, talked
    over once ``barge_in_after_ms`` of its answer has arrived."""
    result = CallResult()
    caller = factory(http, base_url, health)
    record = None if caller.external_id is None else CallRecord(http, base_url, caller.external_id)
    step = "connect"
    try:
        await caller.connect()
        step = "greeting"
        await caller.greeting_done()
        for number, question in enumerate(questions[:1] if interruption is not None else questions, 1):
            step = f"question {number} ({question.kind})"
            turn = Turn(question.kind, question.sentences)
            result.turns.append(turn)
            try:
                end, started = await ask(caller, question, turn, turn_timeout_s)
            except TimeoutError:
                result.error = f"{step}: unanswered after {turn_timeout_s:g} s"
                break
            step += ", answer"
            if interruption is None:
                await answer_played(caller, end, started, turn, record)
                continue
            step = "barge-in"
            await caller.heard_after(end, barge_in_after_ms, timeout=ANSWER_PLAY_LIMIT_S)
            barge_start = caller.say(interruption)
            if caller.barge_in_event is None:
                await caller.bot_quiet(timeout=30)
            else:
                await caller.event_after(barge_start, caller.barge_in_event, timeout=30)
            result.barge_in_stop_ms = caller.timeline.audio_ms_after(barge_start, caller.rate)
    except (TimeoutError, aiohttp.ClientError, ConnectionError, Refused) as exc:
        result.error = f"{step}: {type(exc).__name__} {exc}".strip()
    finally:
        await caller.hang_up()
    return result


def percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50": round(statistics.median(ordered), 1), "p95": round(p95, 1), "n": len(ordered)}


def turns_summary(turns: list[Turn]) -> dict[str, Any]:
    answered = [t.latency_ms for t in turns if t.latency_ms is not None]
    return {
        "turns": len(turns),
        "unanswered": len(turns) - len(answered),
        "voice_to_voice_ms": percentiles(answered),
        "answer_start_ms": percentiles([t.answer_ms for t in turns if t.answer_ms is not None]),
        "runs_per_turn": _runs(turns),
        "replies_into_pauses": sum(t.into_pause for t in turns),
    }


def _runs(turns: list[Turn]) -> dict[str, dict[str, float]] | None:
    """Mean and most model runs per turn, by engine, as the gateway counted each turn (its
    ``turn.metrics`` events say so where it does); None where it does not."""
    counted = [t.runs for t in turns if t.runs]
    if not counted:
        return None
    engines = sorted({engine for runs in counted for engine in runs})
    per_engine = {engine: [runs.get(engine, 0) for runs in counted] for engine in engines}
    return {e: {"mean": round(statistics.mean(v), 2), "max": max(v), "n": len(v)} for e, v in per_engine.items()}


def summarise(results: list[CallResult], questions_per_call: int) -> dict[str, Any]:
    turns = [turn for result in results for turn in result.turns]
    asked = len(results) * questions_per_call  # a call that ended early leaves its later questions unasked
    stages: dict[str, list[float]] = {}
    for turn in turns:
        for stage, ms in turn.stages.items():
            stages.setdefault(stage, []).append(ms)
    sentences = [t.sentences for t in turns if t.sentences is not None]
    summary = turns_summary(turns)
    summary["unanswered"] += asked - len(turns)
    return {
        "calls": len(results),
        "questions_per_call": questions_per_call,
        **summary,
        "by_question": {
            kind: turns_summary([t for t in turns if t.kind == kind]) for kind in sorted({t.kind for t in turns})
        },
        "sentences_per_turn": round(statistics.mean(sentences), 2) if sentences else None,
        "answer_sources": dict(Counter(t.source for t in turns if t.source is not None)) or None,
        "stages_ms": {stage: percentiles(values) for stage, values in sorted(stages.items())},
        "barge_in_stop_ms": percentiles([r.barge_in_stop_ms for r in results if r.barge_in_stop_ms is not None]),
        "errors": [r.error for r in results if r.error],
    }


async def gateway_usage(http: aiohttp.ClientSession, base_url: str) -> dict[str, float]:
    """The gateway's own CPU seconds and peak RSS, from its /metrics."""
    metrics = await scrape(http, base_url)
    return {
        "cpu_s": metrics.total("process_cpu_seconds_total"),
        "peak_rss_mb": round(metrics.total(PEAK_RSS) / 2**20, 1),
    }


def describe(questions: Sequence[Question]) -> list[dict[str, Any]]:
    """The questions asked, for the JSON beside the results."""
    return [
        {"kind": q.kind, "text": q.text, "duration_ms": q.duration_ms, "pauses_ms": [round(p) for p in q.pauses_ms]}
        for q in questions
    ]


async def simulate(
    base_url: str,
    *,
    leg: str = "ws",
    calls: int = 1,
    questions_per_call: int = 2,
    barge_in_after_ms: int | None = None,
    wavs: Sequence[Path] = (),
    voice: str = "joe",
    seed: int = 0,
    turn_timeout_s: float = TURN_TIMEOUT_S,
) -> dict[str, Any]:
    """Run ``calls`` concurrent calls over ``leg`` and return the JSON summary. Call ``i`` asks
    ``questions_per_call`` questions from the list (``QUESTIONS``, or ``wavs``), starting at
    ``i * questions_per_call``; in the barge-in round (``barge_in_after_ms``) it asks one."""
    factory = LEGS[leg]
    async with aiohttp.ClientSession() as http:
        async with http.get(base_url + "/health") as resp:
            health = await resp.json()
        rate = factory(http, base_url, health).rate
        if wavs:
            questions = [from_wav(path, rate) for path in wavs]
        else:
            questions = await synthesize(http, base_url, QUESTIONS, rate, voice, seed)
        interruption = await tts(http, base_url, INTERRUPTION, rate, voice) if barge_in_after_ms else None
        per_call = 1 if interruption is not None else questions_per_call
        before = await scrape(http, base_url)
        started = time.perf_counter()
        results = await asyncio.gather(
            *(
                one_call(
                    http,
                    base_url,
                    health,
                    factory,
                    [questions[(i * per_call + j) % len(questions)] for j in range(per_call)],
                    interruption,
                    barge_in_after_ms or 0,
                    turn_timeout_s,
                )
                for i in range(calls)
            )
        )
        wall_s = round(time.perf_counter() - started, 1)
        after = await scrape(http, base_url)
    summary = summarise(list(results), per_call)
    summary.update(
        {
            "leg": leg,
            "wall_s": wall_s,
            "gateway": round_cost(before, after, summary["turns"]),
            "questions": describe(questions),
        }
    )
    return summary
