"""Run simulated calls against a gateway and summarise them as JSON.

Each call: connect over a leg, wait for the greeting to finish, speak a question (real speech
from the gateway's own TTS, or a WAV file), measure the answer, optionally talk over it, hang
up. Latency is measured where the caller is, in media time: from the caller's last voiced
frame to the first bot audio frame that arrives after it. Stage splits come from the gateway's
``turn.metrics`` events where the leg carries events (the native WebSocket).
"""

from __future__ import annotations

import asyncio
import statistics
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from inzwa_voice.engines.base import PCM16
from inzwa_voice.media.wavfile import read_wav
from inzwa_voice.simulator.audiosocket import AudioSocketCaller
from inzwa_voice.simulator.caller import FRAME_MS, Caller
from inzwa_voice.simulator.twilio import twilio_caller
from inzwa_voice.simulator.webrtc import webrtc_caller
from inzwa_voice.simulator.ws import WsCaller

QUESTIONS = [
    "Hello. Where is the nearest clinic?",
    "I need help with my rent, my landlord wants me out.",
    "Can you tell me when the office opens tomorrow?",
    "My child has a fever. What should I do?",
]
INTERRUPTION = "Wait, stop. I have another question."

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
class CallResult:
    latency_ms: list[float] = field(default_factory=list)
    stages: list[dict[str, float]] = field(default_factory=list)
    barge_in_stop_ms: float | None = None
    error: str | None = None


async def tts(http: aiohttp.ClientSession, base_url: str, text: str, rate: int, voice: str) -> PCM16:
    body = {"text": text, "voice": voice, "format": "pcm", "sample_rate": rate}
    async with http.post(base_url + "/v1/tts", json=body) as resp:
        resp.raise_for_status()
        return np.frombuffer(await resp.read(), dtype="<i2").copy()


def first_audio_after(caller: Caller, media_ms: int) -> float | None:
    arrivals = [r.media_ms for r in caller.timeline.audio if r.media_ms >= media_ms and r.samples]
    return float(min(arrivals) - media_ms) if arrivals else None


async def one_call(
    http: aiohttp.ClientSession,
    base_url: str,
    health: dict[str, Any],
    factory: CallerFactory,
    question: PCM16,
    interruption: PCM16 | None,
    barge_in_after_ms: int,
) -> CallResult:
    result = CallResult()
    caller = factory(http, base_url, health)
    step = "connect"
    try:
        await caller.connect()
        step = "greeting"
        await caller.greeting_done()
        start = caller.say(question)
        end_of_speech = start + len(question) * 1000 // caller.rate
        stages = asyncio.ensure_future(caller.wait_for("turn.metrics", timeout=120)) if caller.stage_metrics else None
        caller.clear_bot_audio()
        step = "answer audio"
        await caller.heard(max(FRAME_MS, barge_in_after_ms if interruption is not None else 500), timeout=120)
        latency = first_audio_after(caller, end_of_speech)
        if latency is not None:
            result.latency_ms.append(latency)
        if interruption is not None:
            step = "barge-in"
            barge_start = caller.say(interruption)
            if caller.barge_in_event is None:
                await caller.bot_quiet(timeout=30)
            else:
                await caller.wait_for(caller.barge_in_event, timeout=30)
            result.barge_in_stop_ms = caller.timeline.audio_ms_after(barge_start, caller.rate)
        elif stages is not None:
            step = "turn metrics"
            result.stages.append(dict((await stages)["latency_ms"]))
        if stages is not None:
            stages.cancel()
    except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
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


def summarise(results: list[CallResult]) -> dict[str, Any]:
    stages: dict[str, list[float]] = {}
    for result in results:
        for marks in result.stages:
            for stage, ms in marks.items():
                stages.setdefault(stage, []).append(ms)
    return {
        "calls": len(results),
        "errors": [r.error for r in results if r.error],
        "turn_latency_ms": percentiles([ms for r in results for ms in r.latency_ms]),
        "stages_ms": {stage: percentiles(values) for stage, values in sorted(stages.items())},
        "barge_in_stop_ms": percentiles([r.barge_in_stop_ms for r in results if r.barge_in_stop_ms is not None]),
    }


async def gateway_usage(http: aiohttp.ClientSession, base_url: str) -> dict[str, float]:
    """The gateway's own CPU seconds and peak RSS, from its /metrics."""
    async with http.get(base_url + "/metrics") as resp:
        text = await resp.text()
    values = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith(("process_cpu_seconds_total ", "inzwa_process_peak_rss_bytes "))
    }
    return {
        "cpu_s": values.get("process_cpu_seconds_total", 0.0),
        "peak_rss_mb": round(values.get("inzwa_process_peak_rss_bytes", 0.0) / 2**20, 1),
    }


async def simulate(
    base_url: str,
    *,
    leg: str = "ws",
    calls: int = 1,
    barge_in_after_ms: int | None = None,
    wav: Path | None = None,
    voice: str = "joe",
) -> dict[str, Any]:
    """Run ``calls`` concurrent calls over ``leg`` and return the JSON summary."""
    factory = LEGS[leg]
    async with aiohttp.ClientSession() as http:
        async with http.get(base_url + "/health") as resp:
            health = await resp.json()
        rate = factory(http, base_url, health).rate
        if wav is not None:
            questions = [read_wav(wav, rate)]
        else:
            questions = [await tts(http, base_url, q, rate, voice) for q in QUESTIONS]
        interruption = await tts(http, base_url, INTERRUPTION, rate, voice) if barge_in_after_ms else None
        before = await gateway_usage(http, base_url)
        started = time.perf_counter()
        results = await asyncio.gather(
            *(
                one_call(
                    http, base_url, health, factory, questions[i % len(questions)], interruption, barge_in_after_ms or 0
                )
                for i in range(calls)
            )
        )
        after = await gateway_usage(http, base_url)
    summary = summarise(list(results))
    cpu = after["cpu_s"] - before["cpu_s"]
    summary.update(
        {
            "leg": leg,
            "wall_s": round(time.perf_counter() - started, 1),
            "gateway": {
                "cpu_s": round(cpu, 1),
                "cpu_s_per_call": round(cpu / calls, 2),
                "peak_rss_mb": after["peak_rss_mb"],
            },
        }
    )
    return summary
