"""Engine benchmark: prints one JSON object with the numbers the README quotes.

VAD µs per frame, ASR latency and RTF for 2 s and 5 s clips, LLM time to first token and
tokens per second, TTS time to first audio and RTF, start-up time and peak RSS. Speech comes
from the packaged TTS, so the benchmark needs nothing but the installed gateway.

    .venv/bin/python loadtest/bench_engines.py [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import time

import numpy as np

from inzwa_voice.config import load_settings
from inzwa_voice.engines.base import ChatMessage
from inzwa_voice.engines.loading import load_engines
from inzwa_voice.engines.runtime import Engines
from inzwa_voice.telemetry import Metrics

PROMPTS = [
    "Hello, I need help with my rent, my landlord wants to evict me.",
    "Where is the nearest clinic?",
    "My child is sick and I don't know what to do.",
]
SPEECH = (
    "Good morning. I am calling because my landlord wants to evict me next week, "
    "and I do not know where my family will stay. Can you help me?"
)


def summary(values: list[float], digits: int = 4) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50": round(statistics.median(ordered), digits), "p95": round(p95, digits), "n": len(values)}


def bench_vad(engines: Engines, frames: int = 2000) -> float:
    stream = engines.vad.stream()
    audio = np.random.default_rng(0).normal(0, 0.1, (frames, stream.frame_samples)).astype(np.float32)
    started = time.perf_counter()
    for frame in audio:
        stream.probability(frame)
    return (time.perf_counter() - started) / frames * 1e6


async def bench_asr(engines: Engines, speech: np.ndarray, seconds: float, runs: int) -> dict[str, object]:
    clip = speech[: int(seconds * 16000)].astype(np.float32) / 32768.0
    latencies = []
    for _ in range(runs):
        started = time.perf_counter()
        await engines.transcribe(clip, language="en")
        latencies.append(time.perf_counter() - started)
    return {"latency_s": summary(latencies), "rtf": round(statistics.median(latencies) / seconds, 3)}


async def bench_llm(engines: Engines, runs: int) -> dict[str, object]:
    ttft, rates = [], []
    for i in range(runs):
        started = time.perf_counter()
        first, count = 0.0, 0
        async for _ in engines.generate([ChatMessage("user", PROMPTS[i % len(PROMPTS)])], max_tokens=64):
            count += 1
            if count == 1:
                first = time.perf_counter() - started
        total = time.perf_counter() - started
        ttft.append(first)
        if count > 1:
            rates.append((count - 1) / (total - first))
    return {"ttft_s": summary(ttft), "tokens_per_s": round(statistics.median(rates), 1) if rates else None}


async def bench_tts(engines: Engines, runs: int) -> dict[str, object]:
    first_audio, rtfs = [], []
    for _ in range(runs):
        started = time.perf_counter()
        samples = 0
        async for chunk in engines.synthesize(SPEECH, voice="joe"):
            if not samples:
                first_audio.append(time.perf_counter() - started)
            samples += len(chunk)
        rate = engines.tts.resolve("joe").sample_rate
        rtfs.append((time.perf_counter() - started) / (samples / rate))
    return {"first_audio_s": summary(first_audio), "rtf": round(statistics.median(rtfs), 3)}


async def run(runs: int) -> dict[str, object]:
    settings = load_settings(_env_file=None)
    cpu0 = time.process_time()
    started = time.perf_counter()
    engines = load_engines(settings, Metrics())
    engines.warmup()
    startup = time.perf_counter() - started
    speech = np.concatenate(
        [c async for c in engines.synthesize(SPEECH + " " + SPEECH, voice="joe", sample_rate=16000)]
    )
    result = {
        "startup_s": round(startup, 2),
        "vad_us_per_frame": round(bench_vad(engines), 1),
        "asr_2s": await bench_asr(engines, speech, 2.0, runs),
        "asr_5s": await bench_asr(engines, speech, 5.0, runs),
        "llm": await bench_llm(engines, runs),
        "tts": await bench_tts(engines, runs),
        "cpu_s": round(time.process_time() - cpu0, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    await engines.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.runs)), indent=2))


if __name__ == "__main__":
    main()
