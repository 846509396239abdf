"""Media-plane micro-benchmark: microseconds per 20 ms frame for each stage, printed as JSON.

    python loadtest/bench_media.py [--seconds 10]

Each stage processes ``seconds`` of a speech-like test signal (a gliding tone plus noise) frame
by frame through the real, stateful objects a call uses; the figure is the best of five runs,
divided by the number of frames (best-of filters out scheduler noise on a shared machine). The
``chain_*`` entry is the whole per-frame media work of a G.711 leg in both directions, and
``pacer_per_frame`` the asyncio cost of pacing one frame (with a clock that never waits).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from collections.abc import Callable
from importlib.metadata import version

import numpy as np
from numpy.typing import NDArray

from inzwa_voice.media.framing import Framer
from inzwa_voice.media.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from inzwa_voice.media.opus import OpusDecoder, OpusEncoder
from inzwa_voice.media.pacer import Pacer
from inzwa_voice.media.resample import Resampler

REPEATS = 5


def speech_like(rate: int, seconds: float) -> NDArray[np.int16]:
    t = np.arange(int(rate * seconds)) / rate
    glide = 6000 * np.sin(2 * np.pi * (150 + 100 * np.sin(2 * np.pi * 0.5 * t)) * t)
    noise = np.random.default_rng(0).standard_normal(len(t)) * 800
    return (glide + noise).astype(np.int16)


def frames_of(samples: NDArray[np.int16], rate: int) -> list[NDArray[np.int16]]:
    return list(samples[: len(samples) - len(samples) % (rate // 50)].reshape(-1, rate // 50))


Step = Callable[[int], object]
"""Processes frame ``i``."""


def us_per_frame(setup: Callable[[], Step], count: int) -> float:
    """Best of ``REPEATS`` runs of ``step(i)`` for i in range(count), fresh state each run."""
    best = float("inf")
    for _ in range(REPEATS):
        step = setup()
        started = time.perf_counter()
        for i in range(count):
            step(i)
        best = min(best, time.perf_counter() - started)
    return round(best / count * 1e6, 2)


class _InstantClock:
    def now(self) -> float:
        return 0.0

    async def sleep_until(self, deadline: float) -> None:
        return None


async def _pace(frames: list[bytes]) -> float:
    """Seconds to pace ``frames`` through a pacer whose clock never waits."""

    async def send(frame: bytes) -> None:
        return None

    started = time.perf_counter()
    async with Pacer(send, clock=_InstantClock(), max_queued_frames=len(frames)) as pacer:
        for frame in frames:
            await pacer.enqueue(frame)
        await pacer.drain()
    return time.perf_counter() - started


def run(seconds: float) -> dict[str, object]:
    pcm8 = frames_of(speech_like(8000, seconds), 8000)
    pcm16 = frames_of(speech_like(16000, seconds), 16000)
    pcm48 = frames_of(speech_like(48000, seconds), 48000)
    ulaw = [ulaw_encode(f) for f in pcm8]
    alaw = [alaw_encode(f) for f in pcm8]
    encoder = OpusEncoder()
    opus = [encoder.encode(f) for f in pcm48]
    n = len(pcm8)

    def stateless(step: Step) -> Callable[[], Step]:
        return lambda: step

    def resampling(rate_in: int, rate_out: int, frames: list[NDArray[np.int16]]) -> Callable[[], Step]:
        def setup() -> Step:
            resampler = Resampler(rate_in, rate_out)
            return lambda i: resampler.process(frames[i])

        return setup

    def opus_encoding() -> Step:
        enc = OpusEncoder()
        return lambda i: enc.encode(pcm48[i])

    def opus_decoding() -> Step:
        dec = OpusDecoder()
        return lambda i: dec.decode(opus[i])

    def ulaw_chain() -> Step:
        up, down = Resampler(8000, 16000), Resampler(16000, 8000)
        return lambda i: ulaw_encode(down.process(up.process(ulaw_decode(ulaw[i]))))

    def framing() -> Step:
        framer = Framer(320)
        return lambda i: framer.push(pcm16[i][:300])

    results: dict[str, float] = {
        "g711_ulaw_encode_8k": us_per_frame(stateless(lambda i: ulaw_encode(pcm8[i])), n),
        "g711_ulaw_decode_8k": us_per_frame(stateless(lambda i: ulaw_decode(ulaw[i])), n),
        "g711_alaw_encode_8k": us_per_frame(stateless(lambda i: alaw_encode(pcm8[i])), n),
        "g711_alaw_decode_8k": us_per_frame(stateless(lambda i: alaw_decode(alaw[i])), n),
        "resample_8k_to_16k": us_per_frame(resampling(8000, 16000, pcm8), n),
        "resample_16k_to_8k": us_per_frame(resampling(16000, 8000, pcm16), n),
        "resample_48k_to_16k": us_per_frame(resampling(48000, 16000, pcm48), n),
        "resample_16k_to_48k": us_per_frame(resampling(16000, 48000, pcm16), n),
        "opus_encode_48k": us_per_frame(opus_encoding, n),
        "opus_decode_48k": us_per_frame(opus_decoding, n),
        "chain_ulaw8k_decode_resample_16k_resample_8k_encode": us_per_frame(ulaw_chain, n),
        "framer_push_16k": us_per_frame(framing, n),
    }
    best_pacing = min(asyncio.run(_pace(ulaw)) for _ in range(REPEATS))
    results["pacer_per_frame"] = round(best_pacing / n * 1e6, 2)
    return {
        "unit": "microseconds per 20 ms frame",
        "frames": n,
        "results": results,
        "machine": {
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "numpy": np.__version__,
            "soxr": version("soxr"),
            "av": version("av"),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0, help="audio per stage and run")
    print(json.dumps(run(parser.parse_args().seconds), indent=2))


if __name__ == "__main__":
    main()
