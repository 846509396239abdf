"""LLM benchmark: the packaged models side by side on grounded helpline answers; prints JSON.

For each model (``INZWA_LLM_MODEL`` values): first-token latency p50/p95, decode tokens/s and
whole-answer time over a set of helpline questions, in each layout (``--layouts``): ``closest``
asks each with 2-4 facts written like the knowledge base's English answers
(``grounding.grounded_messages``), ``briefed`` gives all twelve facts before the conversation and
then asks the question alone (``grounding.briefed_messages``, what the gateway does with a
knowledge base short enough). Grounding quality: an answerable question is correct when its
answer holds every expected key word (any of the spellings listed); an unanswerable one should
say it does not know, and an answer that names a number, time, day, place or phone number that
is not in the facts counts as invented. ``gateway_check``: of the answers that are not the
model's own "I don't know", how many correct and wrong ones a call would speak, and how many
the gateway's check (``conversation.fact_check``) would replace with the authored "I don't know".
Then the KV cache: the same second turn of a call evaluated from a cold cache, after a first
turn of the same call, and after another call with the same system prompt.

    .venv/bin/python loadtest/bench_llm.py [--models qwen2.5-0.5b-instruct,gemma3-270m] [--runs 1]
        [--layouts closest,briefed] [--answers]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from inzwa_voice.config import Settings, load_settings
from inzwa_voice.conversation.brain import FACTS
from inzwa_voice.conversation.fact_check import FactCheck
from inzwa_voice.engines import grounding
from inzwa_voice.engines.base import ChatMessage
from inzwa_voice.engines.llm import llamacpp
from inzwa_voice.safety.stream import PhraseSplitter


@dataclass(frozen=True)
class Case:
    question: str
    facts: list[str]
    expect: list[list[str]] | None  # key words, each a list of accepted spellings; None: not answerable


HOURS = "The helpline answers every day, day and night. Counsellors are in the office Monday to Friday, 8 am to 5 pm."
CLINIC = "The Harare Central clinic opens at 7:30 in the morning and closes at 4 in the afternoon, Monday to Saturday."
HIV = "HIV testing is free at every government clinic. The result is ready in about 20 minutes."
FOOD = "Food parcels are given out at the district social welfare office on Wednesdays. Bring your national ID card."
GBV = "If someone at home hurts you, you can go to the Musasa shelter, which is open day and night."
EMERGENCY = "In a medical emergency, call an ambulance on 994 or go straight to the nearest hospital."
COST = "Calls to this helpline are free from every network, also without airtime."
PRIVACY = "What you say is kept private. Only the counsellor on the call and their supervisor can hear the recording."
LANGUAGES = "This line speaks Shona and English. Say English or Shona at any time to change the language."
COUNSELLOR = "To talk to a counsellor, say counsellor or press 0; a counsellor answers during office hours."
CHILDLINE = "Children can call Childline on 116, free of charge, at any time."
TB = "A cough that lasts more than two weeks should be checked for TB at a clinic; the test is free."

BRIEFING = [HOURS, CLINIC, HIV, FOOD, GBV, EMERGENCY, COST, PRIVACY, LANGUAGES, COUNSELLOR, CHILDLINE, TB]
"""Every fact above: a small helpline's whole knowledge base, for the ``briefed`` layout."""

CASES = [
    # answerable from the facts
    Case("What time does the clinic open in the morning?", [CLINIC, HIV], [["7:30", "seven thirty", "7.30"]]),
    Case("Is the clinic open on Saturday?", [CLINIC, HOURS], [["yes", "saturday", "open"]]),
    Case("How much does an HIV test cost?", [HIV, CLINIC, TB], [["free"]]),
    Case("How long do I wait for my HIV test result?", [HIV, CLINIC], [["20", "twenty"]]),
    Case("Which day can I collect food?", [FOOD, HOURS], [["wednesday"]]),
    Case("What must I bring to get a food parcel?", [FOOD, PRIVACY, COST], [["id"]]),
    Case("My husband beats me, where can I go?", [GBV, COUNSELLOR, EMERGENCY], [["musasa"]]),
    Case("What number do I call for an ambulance?", [EMERGENCY, CLINIC], [["994"]]),
    Case("Do I have to pay for this call?", [COST, HOURS], [["free", "no,", "don't have to", "do not have to"]]),
    Case("Who can hear what I say on this call?", [PRIVACY, COST, LANGUAGES], [["counsellor"], ["supervisor"]]),
    Case("Can I speak English on this line?", [LANGUAGES, HOURS], [["yes", "english"]]),
    Case("When are the counsellors in the office?", [HOURS, COUNSELLOR], [["monday"], ["friday"]]),
    Case("How can I talk to a real person?", [COUNSELLOR, HOURS, PRIVACY], [["counsellor"], ["0", "zero"]]),
    Case("What number can my child call for help?", [CHILDLINE, EMERGENCY, COST], [["116"]]),
    # not answerable from the facts: the answer must not invent a number, time, day or place
    Case("What time does the pharmacy close tonight?", [CLINIC, HIV], None),
    Case("What is the phone number of the police?", [GBV, COUNSELLOR], None),
    Case("Where is the nearest food bank in Bulawayo?", [FOOD, COST], None),
    Case("How much does a doctor's visit cost at a private hospital?", [HIV, TB, EMERGENCY], None),
    Case("Which bus goes to the shelter?", [GBV, PRIVACY], None),
    Case("When is the next vaccination day for babies?", [CLINIC, HIV, TB], None),
    Case("What is the address of the social welfare office?", [FOOD, LANGUAGES], None),
    Case("Can I get a loan for school fees?", [FOOD, COST, HOURS], None),
]

SYSTEM = "You are the voice of a free Shona and English helpline. Be kind and brief."

_DONT_KNOW = re.compile(
    r"\b(don'?t|do not|doesn'?t|does not) (know|say|mention|tell)\b"
    r"|\bnot sure\b|\bno information\b|\bcannot (say|tell)\b",
    re.I,
)
_NUMBERS = "one two three four five six seven eight nine ten eleven twelve fifteen twenty thirty forty fifty hundred"
_DAYS = "monday tuesday wednesday thursday friday saturday sunday"
_MONTHS = "january february march april may june july august september october november december"
_DATE_WORDS = frozenset(" ".join((_NUMBERS, "thousand", _DAYS, _MONTHS, "am pm a.m p.m o'clock noon midnight")).split())


def key_words_found(answer: str, expect: list[list[str]]) -> bool:
    text = answer.lower()

    # A word matches at a word start (so "wednesday" finds "Wednesdays"); a number matches whole.
    def found(word: str) -> bool:
        end = r"(?![\w])" if word[-1].isdigit() else ""
        return re.search(rf"(?<![\w]){re.escape(word.lower())}{end}", text) is not None

    return all(any(found(w) for w in group) for group in expect)


def invented_details(answer: str, facts: list[str], question: str) -> list[str]:
    """Numbers, times, days, months and mid-sentence proper names in ``answer`` found neither in
    the facts nor in the question: what a grounded answer must never make up."""
    known = " ".join([*facts, question]).lower()
    found: list[str] = []
    for word in re.findall(r"\d[\d:.\-]*\d|\d", answer):
        if word not in known:
            found.append(word)
    words = re.findall(r"[A-Za-z][A-Za-z.']*", answer)
    for word in words:
        low = word.lower().strip(".")
        if low in _DATE_WORDS and not re.search(rf"\b{re.escape(low)}\b", known):
            found.append(word)
    for sentence in re.split(r"(?<=[.!?])\s+", answer.strip()):
        for word in re.findall(r"[A-Za-z][A-Za-z']*", sentence)[1:]:
            if word[0].isupper() and word not in ("I", "I'm", "I'll", "I've", "I'd") and word.lower() not in known:
                found.append(word)
    return sorted(set(found))


def checked(text: str, case: Case) -> str | None:
    """What the gateway's check (``FactCheck``, phrase by phrase as a call speaks them) says of
    an answer grounded on the case's closest entries: None if it would be spoken whole, else why
    it would be replaced by the authored "I don't know"."""
    check = FactCheck(case.facts[:FACTS], case.question, BRIEFING)
    splitter = PhraseSplitter()
    for phrase in [*splitter.feed(text), splitter.flush()]:
        if phrase.strip() and (verdict := check.verdict(phrase)) is not None:
            return verdict
    return None


def summary(values: list[float], digits: int = 3) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50": round(statistics.median(ordered), digits), "p95": round(p95, digits), "n": len(values)}


Layout = Callable[[Case], tuple[list[ChatMessage], list[str]]]
LAYOUTS: dict[str, Layout] = {
    # The question's closest entries, with it (each case lists its own).
    "closest": lambda case: (grounding.grounded_messages(case.question, case.facts, [], SYSTEM), case.facts),
    # The whole knowledge base, before the conversation.
    "briefed": lambda case: (grounding.briefed_messages(case.question, BRIEFING, [], SYSTEM), BRIEFING),
}
"""How the facts are given: the prompt for a case, and the facts it gave."""


@dataclass
class Answer:
    text: str
    first_s: float
    total_s: float
    tokens: int


async def answer(llm: llamacpp.LlamaCppLLM, messages: list[ChatMessage]) -> Answer:
    started = time.perf_counter()
    first = 0.0
    pieces: list[str] = []
    async for piece in llm.stream(messages):
        if not pieces:
            first = time.perf_counter() - started
        pieces.append(piece)
    text = "".join(pieces).strip()
    return Answer(text, first, time.perf_counter() - started, llm.count_tokens(text))


async def bench_model(settings: Settings, runs: int, show: bool, layouts: list[str]) -> dict[str, object]:
    executor = ThreadPoolExecutor(2)
    started = time.perf_counter()
    llm, info = llamacpp.load(settings, executor)
    llm.warm()
    load_s = time.perf_counter() - started
    report: dict[str, object] = {
        "model": info.id,
        "prompt_format": llm.prompt_format,
        "size_bytes": info.size_bytes,
        "load_and_warm_s": round(load_s, 2),
        "layouts": {name: await bench_layout(llm, LAYOUTS[name], runs, show) for name in layouts},
        "kv_cache": await bench_cache(llm),
    }
    await llm.close()
    executor.shutdown()
    return report


async def bench_layout(llm: llamacpp.LlamaCppLLM, layout: Layout, runs: int, show: bool) -> dict[str, object]:
    """Every case ``runs`` times, prompted by ``layout``: latency, and how well it held to the facts."""
    firsts: list[float] = []
    totals: list[float] = []
    rates: list[float] = []
    correct = invented = dont_know = 0
    invented_on_answerable = 0
    answerable = sum(1 for c in CASES if c.expect is not None) * runs
    unanswerable = len(CASES) * runs - answerable
    rows: list[dict[str, object]] = []
    spoken = {"correct": 0, "correct_replaced": 0, "wrong": 0, "wrong_replaced": 0}
    for _ in range(runs):
        for case in CASES:
            messages, facts = layout(case)
            result = await answer(llm, messages)
            replaced = checked(result.text, case)
            said = bool(_DONT_KNOW.search(result.text))
            firsts.append(result.first_s)
            totals.append(result.total_s)
            if result.tokens > 1 and result.total_s > result.first_s:
                rates.append((result.tokens - 1) / (result.total_s - result.first_s))
            made_up = invented_details(result.text, facts, case.question)
            if case.expect is not None:
                ok = key_words_found(result.text, case.expect)
                correct += ok
                invented_on_answerable += bool(made_up)
            else:
                ok = said and not made_up
                invented += bool(made_up)
                dont_know += said
            if not (case.expect is None and said):  # an answer, not the model's own "I don't know"
                spoken[("correct" if ok else "wrong") + ("_replaced" if replaced else "")] += 1
            if show:
                rows.append({"q": case.question, "a": result.text, "ok": ok, "invented": made_up, "replaced": replaced})
    report: dict[str, object] = {
        "first_token_s": summary(firsts),
        "answer_s": summary(totals),
        "decode_tokens_per_s": round(statistics.median(rates), 1) if rates else None,
        "grounding": {
            "answerable": answerable,
            "correct": correct,
            "correct_rate": round(correct / answerable, 3),
            "answerable_with_invented_detail": invented_on_answerable,
            "unanswerable": unanswerable,
            "said_dont_know": dont_know,
            "invented": invented,
            "invented_rate": round(invented / unanswerable, 3),
            "answered_anyway_without_invented_detail": unanswerable - dont_know - invented,
        },
        "gateway_check": spoken,
    }
    if show:
        report["answers"] = rows
    return report


async def bench_cache(llm: llamacpp.LlamaCppLLM, calls: int = 4) -> dict[str, object]:
    """First-token latency of a call's third turn, the same prompt each way: from a cold cache;
    right after the call's second turn (cached: the system part and the first exchange, since
    the previous prompt's facts end the shared prefix); and right after a turn of another call
    with the same system prompt (cached: the system part and its examples)."""
    cold: list[float] = []
    same_call: list[float] = []
    other_call: list[float] = []
    cached: dict[str, list[int]] = {"same_call": [], "other_call": []}
    prompt_tokens: list[int] = []
    for i in range(calls):
        cases, other = CASES[3 * i : 3 * i + 3], CASES[-1 - i]
        history: list[ChatMessage] = []
        turns: list[list[ChatMessage]] = []
        for case in cases:
            turns.append(grounding.grounded_messages(case.question, case.facts, history, SYSTEM))
            reply = await answer(llm, turns[-1])
            history = [*history, ChatMessage("user", case.question), ChatMessage("assistant", reply.text)]
        third = llm.prompt_tokens(turns[2])
        other_turn = grounding.grounded_messages(other.question, other.facts, [], SYSTEM)
        prompt_tokens.append(len(third))
        cached["same_call"].append(common_prefix(llm.prompt_tokens(turns[1]), third))
        cached["other_call"].append(common_prefix(llm.prompt_tokens(other_turn), third))
        await answer(llm, turns[1])  # the call's second turn, then its third
        same_call.append((await answer(llm, turns[2])).first_s)
        await answer(llm, other_turn)  # a turn of another call with the same system prompt, then this one
        other_call.append((await answer(llm, turns[2])).first_s)
        llm.reset_cache()
        cold.append((await answer(llm, turns[2])).first_s)
    return {
        "third_turn_prompt_tokens": round(statistics.median(prompt_tokens)),
        "cold_first_token_s": summary(cold),
        "after_same_call_previous_turn_s": summary(same_call),
        "after_other_call_same_system_s": summary(other_call),
        "cached_prefix_tokens": {k: round(statistics.median(v)) for k, v in cached.items()},
    }


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(llamacpp.PACKAGED), help="comma-separated llm_model values")
    parser.add_argument("--runs", type=int, default=1, help="passes over the question set")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--temperature", type=float, default=None, help="default: the llm_temperature setting")
    parser.add_argument("--answers", action="store_true", help="include every question and answer")
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help="how the facts are given: closest, briefed")
    args = parser.parse_args()
    results = []
    for model in args.models.split(","):
        overrides: dict[str, object] = {"llm_model": model, "llm_threads": args.threads}
        if args.temperature is not None:
            overrides["llm_temperature"] = args.temperature
        settings = load_settings(_env_file=None, **overrides)
        results.append(await bench_model(settings, args.runs, args.answers, args.layouts.split(",")))
    report = {
        "threads": args.threads,
        "temperature": load_settings(_env_file=None).llm_temperature if args.temperature is None else args.temperature,
        "questions": len(CASES),
        "runs": args.runs,
        "models": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
