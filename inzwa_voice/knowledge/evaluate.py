"""``inzwa-voice eval knowledge FILE [--kb PATH]``: how well callers' questions find their answers.

FILE holds questions phrased differently from the knowledge base's examples, each with the id it
should reach (an entry of the knowledge base or an intent) or none (out of scope), in YAML::

    asr_variants: questions_asr.yaml     # optional: the Shona questions as ASR heard them
    covered:
      hours:
        sn: [Munovhara nguva dzipi manheru?, ...]
        en: [When do you close in the evening?, ...]
    out_of_scope:
      en: [Tell me a joke., ...]

or as JSONL, one ``{"text": ..., "language": ..., "expected": id or null, "asr": false}`` a line.
The ASR variants file (written by ``loadtest/noise_questions.py``) is YAML with ``variants:``, a
list of ``{expected, language, source, text}``.

It prints JSON: top-1 accuracy per language (text and ASR-noised apart), per expected id, the
confusions, the fallback rate (unsure or nothing), the wrong confident rate (a confident answer
with the wrong id, or any confident answer to an out-of-scope question), and the time per answer.
Every question is also put in one half of a fixed split (``tune`` when crc32 of its text, or of
its source for an ASR variant, is even; ``test`` otherwise), reported apart: thresholds and
weights are chosen on ``tune`` and checked on ``test``.

With ``embed`` (the CLI passes the configured sentence embedder, ``INZWA_EMBEDDING_ENGINE``),
the matchers are built with example vectors and each question's vector is computed where a
call would compute it; its time counts in the time per answer, the examples' in ``build_ms``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from inzwa_voice.knowledge.base import Entry, KnowledgeBase
from inzwa_voice.knowledge.match import Embed, Matcher, MatchParams, Understanding, understand

MAX_QUESTIONS = 20000


class QuestionsError(ValueError):
    """The questions file is unreadable or malformed."""


@dataclass(frozen=True)
class Question:
    text: str
    language: str
    expected: str | None  # None: out of scope, nothing should answer it confidently
    asr: bool = False  # the text is what ASR heard of ``source``
    source: str = ""

    @property
    def split(self) -> str:
        key = self.source or self.text
        return "tune" if zlib.crc32(key.encode("utf-8")) % 2 == 0 else "test"

    @property
    def group(self) -> str:
        return self.language + ("_asr" if self.asr else "")


# --- reading questions --------------------------------------------------------------------------


def _strings(value: object, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise QuestionsError(f"{where} must be a list of non-empty strings")
    return [v.strip() for v in value]


def _by_language(value: object, where: str, expected: str | None) -> list[Question]:
    if not isinstance(value, dict):
        raise QuestionsError(f"{where} must map a language code to a list of questions")
    out: list[Question] = []
    for language, texts in value.items():
        out.extend(Question(t, str(language), expected) for t in _strings(texts, f"{where}.{language}"))
    return out


def _variants(path: Path) -> list[Question]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise QuestionsError(f"{path}: cannot read: {exc}") from exc
    items = data.get("variants") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise QuestionsError(f"{path}: expected a mapping with 'variants:', a list")
    out = []
    for n, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("source"), str) or "text" not in item:
            raise QuestionsError(f"{path}: variant {n + 1} needs 'source' and 'text'")
        expected = item.get("expected")
        out.append(Question(str(item["text"] or ""), str(item.get("language", "sn")), expected, True, item["source"]))
    return out


def load_questions(path: Path | str, *, variants: bool = True) -> list[Question]:
    """The questions of a YAML or JSONL file (and, with ``variants``, those of the ASR variants
    file a YAML one names)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise QuestionsError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    questions: list[Question] = []
    if path.suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise QuestionsError(f"{path}:{number}: not JSON: {exc.msg}") from exc
            if not isinstance(item, dict) or not isinstance(item.get("text"), str):
                raise QuestionsError(f"{path}:{number}: expected an object with 'text'")
            questions.append(
                Question(
                    item["text"],
                    str(item.get("language", "sn")),
                    item.get("expected"),
                    bool(item.get("asr", False)),
                    str(item.get("source", "")),
                )
            )
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise QuestionsError(f"{path}: not YAML: {exc}") from exc
        if not isinstance(data, dict) or "covered" not in data:
            raise QuestionsError(f"{path}: expected a mapping with 'covered:' (and optionally 'out_of_scope:')")
        covered = data["covered"]
        if not isinstance(covered, dict):
            raise QuestionsError(f"{path}: covered must map an expected id to its questions by language")
        for expected, by_language in covered.items():
            questions.extend(_by_language(by_language, f"covered.{expected}", str(expected)))
        if data.get("out_of_scope") is not None:
            questions.extend(_by_language(data["out_of_scope"], "out_of_scope", None))
        if variants and data.get("asr_variants"):
            questions.extend(_variants(path.parent / str(data["asr_variants"])))
    if len(questions) > MAX_QUESTIONS:
        raise QuestionsError(f"{path}: {len(questions)} questions; at most {MAX_QUESTIONS}")
    return questions


# --- scoring ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    question: Question
    understanding: Understanding
    seconds: float

    @property
    def got(self) -> str | None:
        return self.understanding.id

    @property
    def top1(self) -> bool:
        return self.got == self.question.expected

    @property
    def wrong_confident(self) -> bool:
        return self.understanding.confident and self.got != self.question.expected


def _rate(count: int, total: int) -> float:
    return round(count / total, 4) if total else 0.0


def _summary(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    covered = [o for o in outcomes if o.question.expected is not None]
    scope = [o for o in outcomes if o.question.expected is None]
    out: dict[str, Any] = {"questions": len(outcomes)}
    if covered:
        out.update(
            covered=len(covered),
            top1=_rate(sum(o.top1 for o in covered), len(covered)),
            confident_correct=_rate(sum(o.top1 and o.understanding.confident for o in covered), len(covered)),
            wrong_confident=_rate(sum(o.wrong_confident for o in covered), len(covered)),
            fallback=_rate(sum(not o.understanding.confident for o in covered), len(covered)),
        )
    if scope:
        kinds = Counter(o.understanding.kind for o in scope)
        out["out_of_scope"] = {
            "questions": len(scope),
            "confident": _rate(kinds["intent"] + kinds["entry"], len(scope)),
            "unsure": _rate(kinds["unsure"], len(scope)),
            "nothing": _rate(kinds["nothing"], len(scope)),
        }
    out["wrong_confident_all"] = _rate(sum(o.wrong_confident for o in outcomes), len(outcomes))
    return out


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_questions(
    questions: Iterable[Question],
    knowledge: Matcher,
    intents: Matcher,
    *,
    entry_over_intent: float = 0.0,
    embed: Embed | None = None,
) -> list[Outcome]:
    outcomes = []
    for question in questions:
        started = time.perf_counter()
        language = question.language
        wanted = embed is not None and (knowledge.wants_vector(language) or intents.wants_vector(language))
        vector = embed([question.text])[0] if embed is not None and wanted else None
        result = understand(
            question.text, language, knowledge, intents, entry_over_intent=entry_over_intent, vector=vector
        )
        outcomes.append(Outcome(question, result, time.perf_counter() - started))
    return outcomes


def report(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """The JSON-ready figures for a list of outcomes."""
    groups: dict[str, list[Outcome]] = defaultdict(list)
    per_id: dict[str, dict[str, list[Outcome]]] = defaultdict(lambda: defaultdict(list))
    for o in outcomes:
        groups[o.question.group].append(o)
        if o.question.expected is not None:
            per_id[o.question.expected][o.question.group].append(o)
    confusion = Counter(
        (o.question.expected or "none", o.got or "none", o.understanding.kind)
        for o in outcomes
        if (o.question.expected is not None and not o.top1) or o.wrong_confident
    )
    times = [o.seconds * 1000 for o in outcomes]
    covered_text = [o for o in outcomes if o.question.expected is not None]
    return {
        "questions": len(outcomes),
        "by_language": {g: _summary(v) for g, v in sorted(groups.items())},
        "overall": _summary(outcomes),
        "wrong_confident": _rate(sum(o.wrong_confident for o in outcomes), len(outcomes)),
        "fallback_rate_covered": _rate(sum(not o.understanding.confident for o in covered_text), len(covered_text)),
        "splits": {
            split: {g: _summary([o for o in v if o.question.split == split]) for g, v in sorted(groups.items())}
            for split in ("tune", "test")
        },
        "per_id": {
            i: {g: {"n": len(v), "top1": _rate(sum(o.top1 for o in v), len(v))} for g, v in sorted(by.items())}
            for i, by in sorted(per_id.items())
        },
        "confusion": [
            {"expected": e, "got": g, "kind": k, "count": c}
            for (e, g, k), c in sorted(confusion.items(), key=lambda item: (-item[1], item[0]))
        ],
        "misses": [
            {
                "group": o.question.group,
                "text": o.question.text,
                **({"source": o.question.source} if o.question.asr else {}),
                "expected": o.question.expected,
                "got": o.got,
                "kind": o.understanding.kind,
                "score": o.understanding.match.score if o.understanding.match else 0.0,
            }
            for o in outcomes
            if o.wrong_confident or (o.question.expected is not None and not o.top1)
        ],
        "ms_per_answer": {
            "p50": round(_percentile(times, 0.5), 3),
            "p95": round(_percentile(times, 0.95), 3),
            "max": round(max(times, default=0.0), 3),
        },
    }


def evaluate(
    kb: KnowledgeBase,
    intents: Sequence[Entry],
    questions_path: Path | str,
    *,
    params: MatchParams | None = None,
    intent_params: MatchParams | None = None,
    entry_over_intent: float = 0.0,
    embed: Embed | None = None,
) -> dict[str, Any]:
    """Run every question of ``questions_path`` through ``understand`` with matchers built from
    ``kb`` and ``intents`` (and ``embed``, when given); the figures as a JSON-ready dict (see the
    module's docstring)."""
    questions = load_questions(questions_path)
    known = {e.id for e in kb.entries} | {e.id for e in intents}
    unknown = sorted({q.expected for q in questions if q.expected is not None and q.expected not in known})
    if unknown:
        raise QuestionsError(f"{questions_path}: expected ids not in the knowledge base or intents: {unknown}")
    started = time.perf_counter()
    knowledge = Matcher(kb.entries, params, embed=embed)
    intent_matcher = Matcher(intents, intent_params or params, embed=embed)
    build_ms = (time.perf_counter() - started) * 1000
    outcomes = run_questions(questions, knowledge, intent_matcher, entry_over_intent=entry_over_intent, embed=embed)
    result = report(outcomes)
    result["knowledge_base"] = kb.path
    result["entries"] = len(kb.entries)
    result["intents"] = len(intents)
    result["build_ms"] = round(build_ms, 2)
    result["params"] = {
        "threshold": knowledge.params.threshold,
        "margin": knowledge.params.margin,
        "floor": knowledge.params.floor,
        "word_weight": knowledge.params.word_weight,
        "ngram_sizes": list(knowledge.params.ngram_sizes),
        "entry_over_intent": entry_over_intent,
        "meaning": (
            {
                "weight": knowledge.params.meaning_weight,
                "centroid": knowledge.params.meaning_centroid,
                "threshold": knowledge.params.meaning_threshold,
                "margin": knowledge.params.meaning_margin,
                "languages": list(knowledge.params.meaning_languages),
            }
            if embed is not None
            else None
        ),
    }
    return result


def main(argv: list[str], *, embed: Embed | None = None) -> int:
    """``inzwa-voice eval knowledge FILE [--kb PATH]``; prints the JSON report. Exit 2 on a bad
    file. ``embed``: the sentence embedder English matching uses (None: lexical only)."""
    from inzwa_voice.knowledge.loader import DEFAULT_KNOWLEDGE, KnowledgeError, load_intents, load_knowledge

    parser = argparse.ArgumentParser(
        prog="inzwa-voice eval knowledge", description="Measure matching on a file of questions with expected ids."
    )
    parser.add_argument("file", type=Path, help="questions (YAML or JSONL) with expected ids")
    parser.add_argument("--kb", type=Path, default=DEFAULT_KNOWLEDGE, help="knowledge base file (default: the sample)")
    args = parser.parse_args(argv)
    try:
        kb = load_knowledge(args.kb)
        result = evaluate(kb, load_intents(), args.file, embed=embed)
    except (KnowledgeError, QuestionsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
