"""What a round of calls cost the gateway, read from its ``/metrics`` before and after the round.

Per turn: ASR decodes and LLM runs (a gateway that re-decodes the whole utterance at every pause
shows many more decodes than the question has sentences), apart from them the LLM's read-aheads
of a conversation while its caller listens, and the prompt tokens the LLM read, found in its
context or restored from a saved state, the gateway process's CPU seconds,
and, where the gateway has an inference scheduler that exports it, the time work waited in its
queue per priority. The mean of each stage of the turn latency comes from the gateway's own
histogram, so legs without events (Twilio, AudioSocket) get a stage split too.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

RUNS = "inzwa_inference_runs_total"  # the scheduler's runs, by engine and outcome, where it has one
ENGINE_CALLS = "inzwa_engine_inference_seconds_count"  # every model call, by engine and op
LLM_GENERATIONS = "inzwa_llm_generations_total"
QUEUE_WAIT = "inzwa_inference_queue_seconds"  # histogram by engine and priority, where exported
STAGES = "inzwa_turn_latency_seconds"
CPU = "process_cpu_seconds_total"
PEAK_RSS = "inzwa_process_peak_rss_bytes"
PROMPT_TOKENS = "inzwa_llm_prompt_tokens_total"  # by how: read, reused, restored
BACKGROUND = "background"  # the scheduler's priority of read-aheads

Labels = dict[str, str]


@dataclass(frozen=True)
class Scrape:
    """One reading of ``/metrics``: each sample name's (labels, value) pairs."""

    samples: dict[str, list[tuple[Labels, float]]] = field(default_factory=dict)

    def has(self, name: str) -> bool:
        return name in self.samples

    def total(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels``."""
        return sum(v for have, v in self.samples.get(name, []) if labels.items() <= have.items())

    def by(self, name: str, label: str, **labels: str) -> dict[str, float]:
        """The samples of ``name`` (matching ``labels``) summed per value of ``label``."""
        out: dict[str, float] = {}
        for have, value in self.samples.get(name, []):
            if labels.items() <= have.items() and label in have:
                out[have[label]] = out.get(have[label], 0.0) + value
        return out


def parse(text: str) -> Scrape:
    samples: dict[str, list[tuple[Labels, float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return Scrape(samples)


async def scrape(http: aiohttp.ClientSession, base_url: str) -> Scrape:
    async with http.get(base_url + "/metrics") as resp:
        resp.raise_for_status()
        return parse(await resp.text())


def delta(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    """How much the samples of ``name`` matching ``labels`` grew in between."""
    return after.total(name, **labels) - before.total(name, **labels)


def model_runs(before: Scrape, after: Scrape, engine: str) -> float:
    """How many times ``engine`` ran in between: the scheduler's ``ran`` outcome where the
    gateway has it (work dropped before it started is not a run), else every model call."""
    if after.has(RUNS):
        ran = delta(before, after, RUNS, engine=engine, outcome="ran")
        return ran - delta(before, after, RUNS, engine=engine, outcome="ran", priority=BACKGROUND)
    if engine == "llm":
        return delta(before, after, LLM_GENERATIONS)
    return delta(before, after, ENGINE_CALLS, engine=engine)


def runs_by_priority(before: Scrape, after: Scrape) -> dict[str, dict[str, dict[str, int]]] | None:
    """The scheduler's runs per engine, priority and outcome (ran, dropped); None without one."""
    if not after.has(RUNS):
        return None
    counts: dict[str, dict[str, dict[str, int]]] = {}
    old = {tuple(sorted(labels.items())): value for labels, value in before.samples.get(RUNS, [])}
    for labels, value in sorted(after.samples[RUNS], key=lambda sample: sorted(sample[0].items())):
        grown = round(value - old.get(tuple(sorted(labels.items())), 0.0))
        engine, priority = labels.get("engine", "?"), labels.get("priority", "all")
        counts.setdefault(engine, {}).setdefault(priority, {})[labels.get("outcome", "?")] = grown
    return counts


def prompt_tokens(before: Scrape, after: Scrape, turns: int) -> dict[str, float] | None:
    """The LLM's prompt tokens per turn by how it got them; None where the gateway does not say."""
    if not after.has(PROMPT_TOKENS):
        return None
    old = before.by(PROMPT_TOKENS, "how")
    grown = {how: n - old.get(how, 0.0) for how, n in after.by(PROMPT_TOKENS, "how").items()}
    return {how: round(n / max(turns, 1), 1) for how, n in sorted(grown.items())}


def _quantile_ms(buckets: dict[str, float], q: float) -> float | None:
    """The upper bound, in ms, of the histogram bucket holding quantile ``q`` (cumulative
    ``le`` -> count); None when there is nothing or it is beyond the last finite bound."""
    ordered = sorted((float(le), count) for le, count in buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    for bound, count in ordered:
        if count >= q * ordered[-1][1]:
            return None if math.isinf(bound) else round(bound * 1000, 1)
    return None


@dataclass(frozen=True)
class Spread:
    """Observations of a histogram between two scrapes: how many, their mean, and the upper
    bound of the bucket that holds their 95th percentile (None: beyond the last bound)."""

    n: int
    mean_ms: float
    p95_ms: float | None


def spread(before: Scrape, after: Scrape, name: str, **labels: str) -> Spread | None:
    count = delta(before, after, name + "_count", **labels)
    if count <= 0:
        return None
    mean_ms = round(delta(before, after, name + "_sum", **labels) / count * 1000, 1)
    old = before.by(name + "_bucket", "le", **labels)
    buckets = {le: n - old.get(le, 0.0) for le, n in after.by(name + "_bucket", "le", **labels).items()}
    return Spread(round(count), mean_ms, _quantile_ms(buckets, 0.95))


def queue_wait(before: Scrape, after: Scrape) -> dict[str, dict[str, Any] | None] | None:
    """Per priority: how long work waited for a model; None when the gateway does not say."""
    if not after.has(QUEUE_WAIT + "_count"):
        return None
    waits = {
        p: spread(before, after, QUEUE_WAIT, priority=p) for p in sorted(after.by(QUEUE_WAIT + "_count", "priority"))
    }
    return {p: None if w is None else asdict(w) for p, w in waits.items()}


def stage_means(before: Scrape, after: Scrape) -> dict[str, float]:
    """The mean of each turn-latency stage over the turns finished in between, in ms."""
    stages = {
        stage: spread(before, after, STAGES, stage=stage) for stage in sorted(after.by(STAGES + "_count", "stage"))
    }
    return {stage: s.mean_ms for stage, s in stages.items() if s is not None}


def round_cost(before: Scrape, after: Scrape, turns: int) -> dict[str, Any]:
    """What the gateway spent on a round of ``turns`` questions."""
    per_turn = max(turns, 1)
    cpu = delta(before, after, CPU)
    return {
        "asr_decodes_per_turn": round(model_runs(before, after, "asr") / per_turn, 2),
        # Without the scheduler's counter, a decode whose waiter was cancelled (a speculative
        # decode thrown away) still ran to its end but is not counted: a lower bound.
        "runs_counted_from": RUNS if after.has(RUNS) else "finished model calls (lower bound)",
        "llm_runs_per_turn": round(model_runs(before, after, "llm") / per_turn, 2),
        "llm_read_aheads_per_turn": round(
            delta(before, after, RUNS, engine="llm", outcome="ran", priority=BACKGROUND) / per_turn, 2
        ),
        "llm_prompt_tokens_per_turn": prompt_tokens(before, after, turns),
        "cpu_s_per_turn": round(cpu / per_turn, 2),
        "cpu_s": round(cpu, 1),
        "peak_rss_mb": round(after.total(PEAK_RSS) / 2**20, 1),
        "queue_wait_ms": queue_wait(before, after),
        "runs_by_priority": runs_by_priority(before, after),
        "stages_mean_ms": stage_means(before, after),
    }
