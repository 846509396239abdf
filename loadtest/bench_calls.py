"""Call benchmark: a real gateway process, simulated callers at several concurrencies, JSON out.

For each leg and concurrency: turn latency (caller's last voiced frame → first bot audio, in
the caller's media time) p50/p95, the gateway's stage split, and — in a second round with
barge-in — how much bot audio still arrived after the caller started talking over it. The
gateway's CPU seconds (per round and per call) and peak RSS come from the gateway's /metrics.
The rounds start once the gateway's /health says its authored answers are synthesized
(``prompts_ready_s``: how long that took after the port opened).

    .venv/bin/python loadtest/bench_calls.py [--legs ws,twilio] [--calls 1,4,10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from inzwa_voice.simulator.process import gateway_process, prompts_ready
from inzwa_voice.simulator.run import simulate

ENGLISH_DIALPLAN = Path(__file__).resolve().parents[1] / "tests" / "dialplans" / "english.yaml"


async def run(legs: list[str], concurrencies: list[int]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    records = tempfile.mkdtemp(prefix="inzwa-bench-")
    env = {
        "INZWA_LANGUAGE": "en",
        "INZWA_DIALPLAN_PATH": str(ENGLISH_DIALPLAN),
        "INZWA_DB_PATH": os.path.join(records, "calls.db"),
    }
    with gateway_process(env) as (url, process):
        # Steady state: calls start once the authored answers are synthesized (a load balancer
        # would hold calls back until /health says so); how long that takes is reported too.
        results["prompts_ready_s"] = prompts_ready(url, process)
        for leg in legs:
            for n in concurrencies:
                answer = await simulate(url, leg=leg, calls=n)
                barge = await simulate(url, leg=leg, calls=n, barge_in_after_ms=600)
                answer["barge_in_stop_ms"] = barge["barge_in_stop_ms"]
                answer["errors"] += barge["errors"]
                results[f"{leg}_{n}"] = answer
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--legs", default="ws", help="comma-separated legs")
    parser.add_argument("--calls", default="1,4,10", help="comma-separated concurrencies")
    args = parser.parse_args()
    legs = args.legs.split(",")
    calls = [int(n) for n in args.calls.split(",")]
    print(json.dumps(asyncio.run(run(legs, calls)), indent=2))


if __name__ == "__main__":
    main()
