"""WebRTC benchmark: N concurrent aiortc client peers against a real gateway process, JSON out.

For each concurrency N, three rounds against one ``inzwa-voice serve``:

* media: N calls connected, greeting over, then ``--idle-s`` seconds of the callers' silence
  both ways. The gateway's CPU over that window above its CPU with no call (measured first),
  per call, is the WebRTC media plane alone: SRTP, Opus decode and encode, resampling, pacing
  and the per-frame VAD (no model runs). In percent of one core.
* answer: each caller asks a question; turn latency (caller's last voiced frame → first bot
  audio, in its media time) p50/p95, the gateway's stage split, and its CPU seconds per call
  for the whole call, models included (``gateway.cpu_s_per_call``).
* barge-in: each caller talks over the answer; bot audio that still arrived after it began.

The client peers run in this process and their CPU is reported apart: on a 2-core machine they
compete with the gateway for the same cores.

    .venv/bin/python loadtest/bench_webrtc.py [--calls 1,4] [--idle-s 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from inzwa_voice.simulator.process import gateway_process
from inzwa_voice.simulator.run import gateway_usage, simulate
from inzwa_voice.simulator.webrtc import WebRTCCaller

ENGLISH_DIALPLAN = Path(__file__).resolve().parents[1] / "tests" / "dialplans" / "english.yaml"


def own_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


async def media_round(url: str, calls: int, idle_s: float) -> dict[str, float]:
    """Cores the gateway and the clients use while ``calls`` connected calls are silent."""
    async with aiohttp.ClientSession() as http:
        callers = [WebRTCCaller(http, url) for _ in range(calls)]
        try:
            await asyncio.gather(*(caller.connect() for caller in callers))
            await asyncio.gather(*(caller.greeting_done() for caller in callers))
            gateway, clients, wall = (await gateway_usage(http, url))["cpu_s"], own_cpu_s(), time.monotonic()
            await asyncio.sleep(idle_s)
            gateway = (await gateway_usage(http, url))["cpu_s"] - gateway
            clients, wall = own_cpu_s() - clients, time.monotonic() - wall
        finally:
            await asyncio.gather(*(caller.hang_up() for caller in callers))
    return {"gateway": gateway / wall, "clients": clients / wall}


async def run(concurrencies: list[int], idle_s: float) -> dict[str, Any]:
    env = {
        "INZWA_LANGUAGE": "en",
        "INZWA_DIALPLAN_PATH": str(ENGLISH_DIALPLAN),
        "INZWA_DB_PATH": os.path.join(tempfile.mkdtemp(prefix="inzwa-bench-"), "calls.db"),
        "INZWA_WEBRTC_MAX_PEERS": str(max(20, *concurrencies)),
    }
    with gateway_process(env) as (url, _):
        idle = (await media_round(url, 0, idle_s))["gateway"]  # what the gateway costs with no call
        results: dict[str, Any] = {"gateway_idle_core_pct": round(100 * idle, 2)}
        for n in concurrencies:
            media = await media_round(url, n, idle_s)
            answer = await simulate(url, leg="webrtc", calls=n)
            barge = await simulate(url, leg="webrtc", calls=n, barge_in_after_ms=600)
            answer["barge_in_stop_ms"] = barge["barge_in_stop_ms"]
            answer["errors"] += barge["errors"]
            answer["media"] = {
                "gateway_core_pct_per_call": round(100 * (media["gateway"] - idle) / n, 2),
                "clients_core_pct_per_call": round(100 * media["clients"] / n, 2),
            }
            results[f"webrtc_{n}"] = answer
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default="1,4", help="comma-separated concurrencies")
    parser.add_argument("--idle-s", type=float, default=20.0, help="length of the media-only window")
    args = parser.parse_args()
    calls = [int(n) for n in args.calls.split(",")]
    print(json.dumps(asyncio.run(run(calls, args.idle_s)), indent=2))


if __name__ == "__main__":
    main()
