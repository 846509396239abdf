"""Overload benchmark: bursts of speaking callers who all call at once, JSON out.

For each burst size, a fresh gateway process on the English line (``tests/dialplans/english.yaml``,
default capacity settings), once its authored prompts are synthesized (as a load balancer would
wait for ``/health`` ``prompts.ready``); then that many WebSocket callers dial in the same
instant and, once greeted, each asks one three-sentence question of the call benchmark
(``inzwa_voice.simulator.questions``: knowledge and LLM questions alternate, pauses drawn with
``--seed``). What each caller heard (``inzwa_voice.simulator.burst``): greeted, answered, told
to hold, given the apology, refused with the busy message, or left in silence (must be 0); the
greeting's first audio after dialling (wall clock, at the caller); voice-to-voice latency to the
first bot audio after the question (the hold prompt counts) and to the answer's own start, in
the caller's media time, p50/p95.

    .venv/bin/python loadtest/bench_overload.py [--calls 10,20] [--seed 0] [--turn-timeout-s 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

from inzwa_voice.dialplan import Dialplan
from inzwa_voice.simulator.burst import burst, summarise_burst
from inzwa_voice.simulator.process import gateway_process, prompts_ready
from inzwa_voice.simulator.questions import QUESTIONS, synthesize

ENGLISH_DIALPLAN = Path(__file__).resolve().parents[1] / "tests" / "dialplans" / "english.yaml"
APOLOGY = Dialplan.load(ENGLISH_DIALPLAN).default.profile.apology


async def one_burst(url: str, calls: int, seed: int, turn_timeout_s: float) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        questions = await synthesize(http, url, QUESTIONS, 16000, "joe", seed)
    results = await burst(url.replace("http", "ws", 1) + "/v1/ws", questions, calls, turn_timeout_s, APOLOGY)
    return summarise_burst(results)


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [int(n) for n in args.calls.split(",")]
    results: dict[str, Any] = {
        "parameters": {
            "calls": sizes,
            "leg": "ws",
            "questions_per_call": 1,
            "turn_timeout_s": args.turn_timeout_s,
            "dialplan": "tests/dialplans/english.yaml",
            "seed": args.seed,
            "cpus": os.cpu_count(),
        }
    }
    for calls in sizes:
        records = tempfile.mkdtemp(prefix="inzwa-bench-overload-")
        env = {
            "INZWA_LANGUAGE": "en",
            "INZWA_DIALPLAN_PATH": str(ENGLISH_DIALPLAN),
            "INZWA_DB_PATH": os.path.join(records, "calls.db"),
        }
        with gateway_process(env) as (url, process):
            ready_s = prompts_ready(url, process)
            summary = asyncio.run(one_burst(url, calls, args.seed, args.turn_timeout_s))
        results[f"burst_{calls}"] = {"prompts_ready_s": ready_s, **summary}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default="10,20", help="comma-separated burst sizes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pauses between sentences")
    parser.add_argument("--turn-timeout-s", type=float, default=60.0, help="a question's answer must start within this")
    args = parser.parse_args()
    print(json.dumps(run(args), indent=2))


if __name__ == "__main__":
    main()
