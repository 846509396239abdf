"""Matching a caller's words (as ASR heard them) to an entry or an intent, and the evaluation."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from inzwa_voice.config import Settings
from inzwa_voice.engines import loading
from inzwa_voice.knowledge.base import Entry
from inzwa_voice.knowledge.evaluate import QuestionsError, evaluate, load_questions, main
from inzwa_voice.knowledge.loader import DEFAULT_KNOWLEDGE, load_intents, load_knowledge
from inzwa_voice.knowledge.match import Embed, Matcher, MatchParams, fold, normalize, stem, understand

QUESTIONS = Path(__file__).parent / "knowledge_eval" / "questions.yaml"


def entry(entry_id: str, sn: tuple[str, ...] = (), en: tuple[str, ...] = (), **kw: object) -> Entry:
    questions = {k: v for k, v in (("sn", sn), ("en", en)) if v}
    return Entry(entry_id, questions, {"sn": entry_id, "en": entry_id}, **kw)  # type: ignore[arg-type]


ENTRIES = (
    entry(
        "clinic",
        sn=("Kiriniki inovhura nguva ngani mangwana?", "Kiriniki iri pedyo iri kupi?"),
        en=("What time does the clinic open tomorrow?", "Where is the nearest clinic?"),
    ),
    entry(
        "food_support",
        sn=("Ndingawana kupi rubatsiro rwechikafu?", "Vana vangu vane nzara."),
        en=("Where can I get food assistance?", "My children are hungry."),
    ),
    entry(
        "cost",
        sn=("Kufona kunhare iyi kunobhadharwa here?",),
        en=("Is this call free?", "How much does it cost to call?"),
    ),
    entry(
        "counsellor",
        sn=("Ndinoda kutaura nemupi wemazano.",),
        en=("Can I speak to a counsellor?", "I need counselling."),
        action="transfer",
    ),
)
INTENTS = (
    entry(
        "human",
        sn=("Ndinoda kutaura nemunhu.", "Ndipei munhu chaiye."),
        en=("I want to talk to a person.", "Can I talk to a real person please?"),
        action="transfer",
    ),
    entry("yes", sn=("Hongu.", "Ehe."), en=("Yes.", "Yes please."), action="yes"),
    entry("no", sn=("Kwete.", "Aiwa."), en=("No.", "No thanks."), action="no"),
)


# --- spelling ---


def test_normalize_drops_case_punctuation_diacritics_and_apostrophes() -> None:
    assert normalize("  Mhoroi!  Ndingawana  KUPI, rubatsiro?? ") == "mhoroi ndingawana kupi rubatsiro"
    assert normalize("Ng'ombe") == "ngombe"
    assert normalize("Don’t") == "dont"
    assert normalize("Café crème") == "cafe creme"
    assert normalize("...!?") == ""


def test_fold_spells_whisper_confusions_alike() -> None:
    # r/l, breathy vh/bh/mh, the labials, doubled letters and c/k meet in one spelling.
    assert fold("Kiriniki") == fold("Kilinikki")
    assert fold("inovhura") == fold("inobura") == fold("inopura")
    assert fold("Mhuri") == fold("muri")
    assert fold("Clinic") == fold("klinik")
    assert fold("chikafu") == "chikabu"  # "ch" stays: it is its own Shona sound
    assert fold("Hofisi yenyu") == "hobisi yenyu"  # spaces are kept for the word view


def test_stem_cuts_english_suffixes_only_from_long_words() -> None:
    assert stem("recorded") == stem("recording") == stem("records") == "record"
    assert stem("is") == "is"
    assert stem("kiriniki") == "kiriniki"


# --- the matcher ---


def test_character_ngrams_survive_whisper_misspelling_shona() -> None:
    # The n-gram view alone (no words, no alignment, no entry centroid): Whisper base's reading
    # of the synthesized question still finds the clinic.
    ngrams_only = MatchParams(word_weight=0.0, align_weight=0.0, centroid_weight=0.0)
    heard = "Ki ni ki inafuangubangani man guayah"
    ranked = Matcher(ENTRIES, ngrams_only).ranked(heard, "sn")
    assert ranked[0][0].id == "clinic"
    assert ranked[0][2] == "Kiriniki inovhura nguva ngani mangwana?"
    # and so does the full matcher
    match = Matcher(ENTRIES).match(heard, "sn")
    assert match is not None and match.id == "clinic"


def test_exact_example_is_confident_with_calibrated_score() -> None:
    match = Matcher(ENTRIES).match("Where is the nearest clinic?", "en")
    assert match is not None
    assert match.id == "clinic" and match.confident
    assert 0.0 < match.score <= 1.0
    assert match.runner_up is not None and match.runner_up.id != "clinic"
    assert match.score - match.runner_up_score >= MatchParams().margin


def test_threshold_makes_a_good_match_unsure() -> None:
    strict = Matcher(ENTRIES, MatchParams(threshold=0.99))
    match = strict.match("Where is the nearest clinic please?", "en")
    assert match is not None and match.id == "clinic" and not match.confident


def test_margin_makes_a_tie_unsure() -> None:
    twins = (
        entry("a", en=("Clinic hours on Monday?",)),
        entry("b", en=("Clinic hours on Tuesday?",)),
    )
    match = Matcher(twins).match("What are the clinic hours?", "en")
    assert match is not None and match.id == "a"  # a tie goes to the first entry
    assert match.score >= MatchParams().threshold
    assert not match.confident  # but it is not clear of "b"
    relaxed = Matcher(twins, MatchParams(margin=0.0)).match("What are the clinic hours?", "en")
    assert relaxed is not None and relaxed.confident


def test_unrelated_or_empty_text_is_no_confident_match() -> None:
    matcher = Matcher(ENTRIES)
    for text in ("", "  ?! ", "a", "Tell me a joke about football."):
        match = matcher.match(text, "en")
        assert match is None or not match.confident, text


def test_matching_is_deterministic() -> None:
    one = Matcher(ENTRIES).ranked("Ndingawana kupi chikafu?", "sn")
    two = Matcher(ENTRIES).ranked("Ndingawana kupi chikafu?", "sn")
    assert [(e.id, s) for e, s, _ in one] == [(e.id, s) for e, s, _ in two]


def test_an_empty_matcher_matches_nothing() -> None:
    assert Matcher(()).match("Hello", "en") is None


# --- intents and entries together ---


def test_understand_prefers_a_confident_intent_over_an_entry() -> None:
    knowledge, intents = Matcher(ENTRIES), Matcher(INTENTS)
    result = understand("Can I talk to a real person please?", "en", knowledge, intents)
    assert result.kind == "intent" and result.id == "human"
    assert result.confident and result.intent is not None
    shona = understand("Ndinoda kutaura nemunhu chaiye.", "sn", knowledge, intents)
    assert shona.kind == "intent" and shona.id == "human"


def test_understand_gives_the_entry_when_it_is_the_topic() -> None:
    knowledge, intents = Matcher(ENTRIES), Matcher(INTENTS)
    result = understand("Yes, how much does it cost to call?", "en", knowledge, intents)
    assert result.kind == "entry" and result.id == "cost"


def test_understand_short_answers_are_intents() -> None:
    knowledge, intents = Matcher(ENTRIES), Matcher(INTENTS)
    assert understand("Hongu.", "sn", knowledge, intents).id == "yes"
    assert understand("Aiwa", "sn", knowledge, intents).id == "no"


def test_understand_unsure_and_nothing() -> None:
    knowledge, intents = Matcher(ENTRIES), Matcher(INTENTS)
    nothing = understand("", "en", knowledge, intents)
    assert nothing.kind == "nothing" and nothing.id is None and not nothing.confident
    unsure = understand("Where is the clinic?", "en", Matcher(ENTRIES, MatchParams(threshold=0.99)), intents)
    assert unsure.kind == "unsure" and unsure.id == "clinic" and not unsure.confident


# --- meaning: English sentence vectors from the packaged embedder ---


@pytest.fixture(scope="module")
def embed(settings: Settings) -> Embed:
    """The real embedder's ``embed`` (the conversation layer hands the matchers the same)."""
    with ThreadPoolExecutor(1) as executor:
        loaded = loading.load_embedder(settings, executor)
    assert loaded is not None
    return loaded[0].embed


def test_meaning_finds_a_paraphrase_the_words_miss(embed: Embed) -> None:
    question = "I'm starving, is there anything to eat?"  # no word in common with the food examples
    words = understand(question, "en", Matcher(ENTRIES), Matcher(INTENTS))
    assert words.id != "food_support" and not words.confident
    vector = embed([question])[0]
    meaning = understand(question, "en", Matcher(ENTRIES, embed=embed), Matcher(INTENTS, embed=embed), vector=vector)
    assert meaning.kind == "entry" and meaning.id == "food_support"
    assert meaning.match is not None and meaning.match.meaning


def test_the_sample_knowledge_base_answers_what_only_meaning_finds(embed: Embed) -> None:
    kb, intents = load_knowledge(DEFAULT_KNOWLEDGE), load_intents()
    words = Matcher(kb.entries), Matcher(intents)
    meaning = Matcher(kb.entries, embed=embed), Matcher(intents, embed=embed)
    for question, expected in (("Is this phone call being recorded?", "privacy"), ("See you later.", "goodbye")):
        assert understand(question, "en", *words).id != expected
        result = understand(question, "en", *meaning, vector=embed([question])[0])
        assert result.id == expected, question
    recorded = "Is this phone call being recorded?"
    assert understand(recorded, "en", *meaning, vector=embed([recorded])[0]).kind == "entry"


def test_meaning_is_for_english_calls_of_matchers_built_with_vectors(embed: Embed) -> None:
    shona = "Ndingawana kupi chikafu?"
    matcher = Matcher(ENTRIES, embed=embed)
    assert matcher.wants_vector("en") and not matcher.wants_vector("sn")
    vector = embed([shona])[0]
    # a Shona call: the vector changes nothing (the embedder knows no Shona)
    assert matcher.ranked(shona, "sn", vector) == Matcher(ENTRIES).ranked(shona, "sn")
    # a matcher built without an embedder ignores a vector
    plain = Matcher(ENTRIES)
    question = "I'm starving, is there anything to eat?"
    assert not plain.wants_vector("en")
    assert plain.ranked(question, "en", embed([question])[0]) == plain.ranked(question, "en")
    # an exact English example stays confident, with the stricter bar of a score with meaning
    match = matcher.match("Where is the nearest clinic?", "en", embed(["Where is the nearest clinic?"])[0])
    assert match is not None and match.id == "clinic" and match.confident and match.meaning
    assert match.score >= MatchParams().meaning_threshold


def test_an_unrelated_question_stays_unconfident_with_meaning(embed: Embed) -> None:
    knowledge, intents = Matcher(ENTRIES, embed=embed), Matcher(INTENTS, embed=embed)
    for text in ("Tell me a joke about football.", "Who won the election?"):
        result = understand(text, "en", knowledge, intents, vector=embed([text])[0])
        assert not result.confident, text
    blank = understand("", "en", knowledge, intents, vector=np.zeros(384, dtype=np.float32))
    assert blank.kind == "nothing"


# --- the evaluation set and the eval command ---


def test_question_set_covers_every_entry_and_intent_with_new_phrasings() -> None:
    kb = load_knowledge(DEFAULT_KNOWLEDGE)
    intents = load_intents()
    questions = load_questions(QUESTIONS)
    examples = {normalize(q) for e in (*kb.entries, *intents) for qs in e.questions.values() for q in qs}
    copies = [q.text for q in questions if not q.asr and normalize(q.text) in examples]
    assert not copies, f"evaluation questions copied from the examples: {copies}"
    for item in (*kb.entries, *intents):
        for language in ("sn", "en"):
            count = sum(1 for q in questions if q.expected == item.id and q.language == language and not q.asr)
            assert count >= 4, (item.id, language, count)
    assert sum(1 for q in questions if q.expected is None and not q.asr) >= 20
    # every Shona question has its ASR variant, made from the current text
    sources = {q.source for q in questions if q.asr}
    assert {q.text for q in questions if q.language == "sn" and not q.asr} == sources


def test_evaluate_on_the_shipped_set_holds_the_floor() -> None:
    # The stable floor, below the measured figures (see the README); targets are not asserted.
    result = evaluate(load_knowledge(DEFAULT_KNOWLEDGE), load_intents(), QUESTIONS)
    by = result["by_language"]
    assert by["en"]["top1"] >= 0.80
    assert by["sn"]["top1"] >= 0.85
    assert by["sn_asr"]["top1"] >= 0.40
    assert result["wrong_confident"] <= 0.03
    assert set(result["splits"]) == {"tune", "test"}
    assert "hours" in result["per_id"] and "human" in result["per_id"]
    assert {"p50", "p95"} <= set(result["ms_per_answer"])


def test_evaluate_with_meaning_lifts_english_and_leaves_shona_alone(embed: Embed) -> None:
    # Stable floors below the measured figures (see the README); targets are not asserted.
    kb, intents = load_knowledge(DEFAULT_KNOWLEDGE), load_intents()
    words = evaluate(kb, intents, QUESTIONS)
    meaning = evaluate(kb, intents, QUESTIONS, embed=embed)
    en = meaning["by_language"]["en"]
    assert en["top1"] >= 0.93 and en["top1"] > words["by_language"]["en"]["top1"]
    assert en["confident_correct"] > words["by_language"]["en"]["confident_correct"]
    assert meaning["wrong_confident"] <= 0.02
    for group in ("sn", "sn_asr"):
        assert meaning["by_language"][group] == words["by_language"][group]
    assert meaning["params"]["meaning"]["languages"] == ["en"] and words["params"]["meaning"] is None


def test_main_prints_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    lines = [
        {"text": "Kiriniki iri kupi?", "language": "sn", "expected": "clinic"},
        {"text": "Tell me a joke.", "language": "en", "expected": None},
        {"text": "Ki ni ki iri kupi", "language": "sn", "expected": "clinic", "asr": True, "source": "x"},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    assert main([str(path), "--kb", str(DEFAULT_KNOWLEDGE)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["questions"] == 3
    assert set(report["by_language"]) == {"sn", "en", "sn_asr"}


def test_main_refuses_a_bad_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("covered:\n  no_such_id:\n    en:\n      - Hello there\n", encoding="utf-8")
    assert main([str(bad)]) == 2
    assert "no_such_id" in capsys.readouterr().err
    bad.write_text("just: text\n", encoding="utf-8")
    with pytest.raises(QuestionsError):
        load_questions(bad)
