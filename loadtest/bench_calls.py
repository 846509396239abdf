"""Call benchmark: a real gateway process, simulated callers at several concurrencies, JSON out.

Callers ask the way people do: questions of three sentences with a pause of 0.3-0.6 s between
them (each sentence spoken by the gateway's TTS voice, the pauses drawn with ``--seed``), some
that the knowledge base answers (authored, pre-synthesized: the fast path) and some that go to
the LLM, on the English line (``tests/dialplans/english.yaml``); ``--wav`` asks the caller's
own recordings instead. Every call asks ``--questions`` of them in turn, each once the answer to
the one before has played.

For each leg and concurrency, one JSON object: per turn, voice-to-voice latency (caller's last
voiced frame -> first bot audio, in the caller's media time) p50/p95, for all questions and per
kind, and where the leg carries events the answer's own start (the first audio may be the hold
prompt); unanswered questions (no answer within ``--turn-timeout-s``, or never asked because
their call had failed); replies spoken into pauses (bot audio or an answer's start that reached
the caller before its last sentence ended: must be 0); the gateway's stage split (from its
events, or its call record on legs without events, and the mean of each stage from its
/metrics); from the gateway's /metrics over the round, ASR decodes, LLM runs (read-aheads apart),
the LLM's prompt tokens by how it got them, and CPU seconds
per turn and, where the gateway exports it, queue wait per priority (null where it does not).
A second round talks over the first answer after 600 ms: how much bot audio still arrived
(barge-in stop). The rounds start once the gateway's /health says its authored answers are
synthesized (``prompts_ready_s``: how long that took after the port opened).

    .venv/bin/python loadtest/bench_calls.py [--legs ws,twilio] [--calls 1,3,10] [--questions 2]
        [--seed 0] [--turn-timeout-s 30] [--wav FILE[,FILE...]]...
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from inzwa_voice.simulator.process import gateway_process, prompts_ready
from inzwa_voice.simulator.questions import PAUSE_S, wav_paths
from inzwa_voice.simulator.run import TURN_TIMEOUT_S, simulate

ENGLISH_DIALPLAN = Path(__file__).resolve().parents[1] / "tests" / "dialplans" / "english.yaml"
BARGE_IN_AFTER_MS = 600
ADMIT_ALL_INTERVAL_S = 120.0
"""Admission assumes a question per caller this often: ten callers fit under it on two cores."""


async def run(args: argparse.Namespace) -> dict[str, Any]:
    legs = args.legs.split(",")
    concurrencies = [int(n) for n in args.calls.split(",")]
    wavs = wav_paths(args.wav)
    results: dict[str, Any] = {
        "parameters": {
            "legs": legs,
            "calls": concurrencies,
            "questions_per_call": args.questions,
            "turn_timeout_s": args.turn_timeout_s,
            "barge_in_after_ms": BARGE_IN_AFTER_MS,
            "dialplan": "tests/dialplans/english.yaml",
            "seed": args.seed,
            "pause_s": list(PAUSE_S),
            "cpus": os.cpu_count(),
            "capacity_turn_interval_s": ADMIT_ALL_INTERVAL_S,
        }
    }
    records = tempfile.mkdtemp(prefix="inzwa-bench-")
    env = {
        "INZWA_LANGUAGE": "en",
        "INZWA_DIALPLAN_PATH": str(ENGLISH_DIALPLAN),
        "INZWA_DB_PATH": os.path.join(records, "calls.db"),
        # Every caller of a round is admitted, so the latency of ten at once is measured rather
        # than the admission that would turn some away (loadtest/bench_overload.py measures that).
        "INZWA_CAPACITY_TURN_INTERVAL_S": str(ADMIT_ALL_INTERVAL_S),
    }
    with gateway_process(env) as (url, process):
        # Steady state: calls start once the authored answers are synthesized (a load balancer
        # would hold calls back until /health says so); how long that takes is reported too.
        results["prompts_ready_s"] = prompts_ready(url, process)
        for leg in legs:
            for n in concurrencies:
                calls = functools.partial(
                    simulate, url, leg=leg, calls=n, wavs=wavs, seed=args.seed, turn_timeout_s=args.turn_timeout_s
                )
                answer = await calls(questions_per_call=args.questions)
                barge = await calls(barge_in_after_ms=BARGE_IN_AFTER_MS)
                # The questions (their pauses and lengths) are the same in every round: shown once.
                results["parameters"].setdefault("questions", answer.pop("questions"))
                answer["barge_in_stop_ms"] = barge["barge_in_stop_ms"]
                answer["barge_in_round"] = {
                    key: barge[key] for key in ("turns", "unanswered", "replies_into_pauses", "errors")
                }
                results[f"{leg}_{n}"] = answer
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--legs", default="ws,twilio", help="comma-separated legs")
    parser.add_argument("--calls", default="1,3,10", help="comma-separated concurrencies")
    parser.add_argument("--questions", type=int, default=2, help="questions each call asks (at least 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pauses between sentences")
    parser.add_argument(
        "--turn-timeout-s", type=float, default=TURN_TIMEOUT_S, help="a question's answer must start within this"
    )
    parser.add_argument(
        "--wav", action="append", default=[], help="ask this 16-bit WAV recording instead (repeatable, or a comma list)"
    )
    args = parser.parse_args()
    if args.questions < 2:
        parser.error("--questions: each call asks at least 2, so more than one turn per call is measured")
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
