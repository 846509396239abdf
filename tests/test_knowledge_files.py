"""The knowledge base format: the sample helpline and the built-in intents load, and every mistake an
operator can make in a knowledge file is refused with its file and line.

Each file in ``tests/knowledge/`` holds one mistake and says on its first line where the loader must
report it: ``# expect: line N: <part of the message>`` (and ``# min_questions: 5`` or
``# loader: intents`` when it is read that way). These tests need no engine.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from inzwa_voice.knowledge.base import PLACEHOLDERS, TEXT_NAMES, Entry, KnowledgeBase
from inzwa_voice.knowledge.loader import (
    DEFAULT_KNOWLEDGE,
    INTENTS_PATH,
    MAX_FILE_BYTES,
    KnowledgeError,
    load_intents,
    load_knowledge,
)

FIXTURES = Path(__file__).resolve().parent / "knowledge"
BROKEN = sorted(p for p in FIXTURES.glob("*.yaml") if p.name != "valid_small.yaml")
REQUIRED_IDS = (
    "hours",
    "counsellor",
    "hiv_testing",
    "clinic",
    "food_support",
    "gbv",
    "medical_emergency",
    "cost",
    "privacy",
    "languages",
)
INTENT_IDS = ("human", "repeat", "language_en", "language_sn", "goodbye", "menu", "yes", "no")


@pytest.fixture(scope="module")
def sample() -> KnowledgeBase:
    return load_knowledge(DEFAULT_KNOWLEDGE, min_questions=5)


@pytest.fixture(scope="module")
def intents() -> tuple[Entry, ...]:
    return load_intents(min_questions=8)


# --- the sample knowledge base --------------------------------------------------------------------


def test_the_sample_is_marked_as_sample_content() -> None:
    head = DEFAULT_KNOWLEDGE.read_text(encoding="utf-8")[:600]
    assert "SAMPLE CONTENT" in head and "must" in head and "replace" in head


def test_the_sample_has_every_required_entry_in_both_languages(sample: KnowledgeBase) -> None:
    assert sample.languages == ("sn", "en")
    for entry_id in REQUIRED_IDS:
        entry = sample.entry(entry_id)
        assert entry is not None, entry_id
        for language in ("sn", "en"):
            assert len(entry.questions[language]) >= 5, (entry_id, language)
            assert entry.answers[language], (entry_id, language)
            assert entry.topics.get(language), (entry_id, language)


def test_the_sample_answers_are_short_enough_to_speak(sample: KnowledgeBase) -> None:
    for entry in sample.entries:
        for text in [*entry.answers.values(), *entry.answers_closed.values()]:
            sentences = [s for s in re.split(r"(?<=[.!?])\s+", text) if s]
            assert 1 <= len(sentences) <= 3, (entry.id, text)
            assert len(text) <= 400, (entry.id, text)


def test_the_counsellor_entry_transfers_and_says_when_to_call_back(sample: KnowledgeBase) -> None:
    counsellor = sample.entry("counsellor")
    assert counsellor is not None and counsellor.action == "transfer"
    for language in ("sn", "en"):
        assert "{office_hours}" in counsellor.answers_closed[language]
    hours = sample.entry("hours")
    assert hours is not None and all("{office_hours}" in a for a in hours.answers.values())


def test_invented_numbers_and_places_are_obviously_samples(sample: KnowledgeBase) -> None:
    texts = [t for e in sample.entries for t in [*e.answers.values(), *e.answers_closed.values()]]
    texts += [t for by_name in sample.texts.values() for t in by_name.values()]
    for text in texts:
        for number in re.findall(r"\+?\d[\d ]{5,}\d", text):  # a phone number: only the sample one
            assert number == "0800 000 000", text
        assert "Sample Clinic" in text or "Clinic" not in text, text


def test_the_sample_texts_and_menu(sample: KnowledgeBase, intents: tuple[Entry, ...]) -> None:
    for language in sample.languages:
        assert set(sample.texts[language]) == set(TEXT_NAMES)
        assert "{topic}" in sample.text("clarify", language)
    assert sample.menu["0"] == "human" and sample.menu["9"] == "language:en" and sample.menu["*"] == "menu"
    intent_ids = {i.id for i in intents}
    for digit, target in sample.menu.items():
        assert target.startswith("language:") or sample.entry(target) or target in intent_ids, digit
    # The menu read out names every digit, but the one that switches to the language it is read in.
    for language in sample.languages:
        spoken = sample.text("menu", language)
        for digit, target in sample.menu.items():
            if digit.isdigit() and target != f"language:{language}":
                assert re.search(rf"\b{digit}\b", spoken), (language, digit)


def test_the_sample_uses_only_known_placeholders(sample: KnowledgeBase) -> None:
    for entry in sample.entries:
        for text in [*entry.answers.values(), *entry.answers_closed.values()]:
            filled = text.format(**dict.fromkeys(PLACEHOLDERS, "X"))
            assert "{" not in filled and "}" not in filled


# --- the built-in intents -------------------------------------------------------------------------


def test_the_intents_load_with_eight_phrasings_per_language(intents: tuple[Entry, ...]) -> None:
    by_id = {i.id: i for i in intents}
    assert tuple(by_id) == INTENT_IDS
    for intent in intents:
        for language in ("sn", "en"):
            assert len(intent.questions[language]) >= 8, (intent.id, language)
    assert by_id["human"].action == "transfer"
    assert (by_id["language_en"].action, by_id["language_en"].target_language) == ("language", "en")
    assert (by_id["language_sn"].action, by_id["language_sn"].target_language) == ("language", "sn")
    assert by_id["goodbye"].answers["sn"] and by_id["goodbye"].answers["en"]
    assert by_id["repeat"].answers == {}
    assert {by_id[i].action for i in ("repeat", "goodbye", "menu", "yes", "no")} == {
        "repeat",
        "goodbye",
        "menu",
        "yes",
        "no",
    }


def test_the_intents_include_the_short_answers_callers_give(intents: tuple[Entry, ...]) -> None:
    def phrasings(intent_id: str) -> set[str]:
        intent = next(i for i in intents if i.id == intent_id)
        return {q.casefold().rstrip(".?!") for qs in intent.questions.values() for q in qs}

    assert {"hongu", "ehe", "yes", "yes please"} <= phrasings("yes")
    assert {"kwete", "aiwa", "no", "no thanks"} <= phrasings("no")
    assert {"dzokorora", "taura zvakare", "pardon"} <= phrasings("repeat")


def test_load_intents_reads_the_packaged_file_by_default() -> None:
    assert load_intents() == load_intents(INTENTS_PATH)


# --- small files and the minimum number of examples -----------------------------------------------


def test_a_small_operator_file_loads_with_the_default_minimum() -> None:
    kb = load_knowledge(FIXTURES / "valid_small.yaml")
    (entry,) = kb.entries
    assert entry.id == "hours" and entry.questions == {"sn": ("Munovhura riini?",), "en": ("When do you open?",)}
    assert entry.answers["en"] == "We open {office_hours}." and entry.line > 1
    assert kb.menu == {"1": "hours"} and kb.path == str(FIXTURES / "valid_small.yaml")
    with pytest.raises(KnowledgeError, match=r"valid_small\.yaml:\d+:\d+: .*at least 5"):
        load_knowledge(FIXTURES / "valid_small.yaml", min_questions=5)
    with pytest.raises(ValueError, match="min_questions"):
        load_knowledge(FIXTURES / "valid_small.yaml", min_questions=0)


# --- every mistake is refused at its line ---------------------------------------------------------


def _expectation(path: Path) -> tuple[int, str, dict[str, str]]:
    header = path.read_bytes().decode("ascii", errors="replace").splitlines()
    found = re.fullmatch(r"# expect: line (\d+): (.+)", header[0])
    assert found, f"{path.name}: the first line must be '# expect: line N: message'"
    options = {}
    for line in header[1:3]:
        option = re.fullmatch(r"# (\w+): (\S+)", line)
        if option:
            options[option.group(1)] = option.group(2)
    return int(found.group(1)), found.group(2), options


@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_a_broken_file_is_refused_with_its_file_and_line(path: Path) -> None:
    line, message, options = _expectation(path)
    with pytest.raises(KnowledgeError) as caught:
        if options.get("loader") == "intents":
            load_intents(path)
        else:
            load_knowledge(path, min_questions=int(options.get("min_questions", "1")))
    error = str(caught.value)
    assert error.startswith(f"{path}:{line}:"), error
    assert message in error, error


def test_a_python_object_tag_is_a_knowledge_error_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    text = (FIXTURES / "valid_small.yaml").read_text(encoding="utf-8")
    text = text.replace("en: We open {office_hours}.", f"en: !!python/object/apply:os.system ['touch {marker}']")
    path = tmp_path / "evil.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(KnowledgeError, match=r"evil\.yaml:\d+:\d+: .*YAML tag '!!python/object/apply:os\.system'"):
        load_knowledge(path)
    assert not marker.exists()


def test_a_file_over_one_mib_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"# padding\n" * (MAX_FILE_BYTES // 10 + 1))
    with pytest.raises(KnowledgeError, match=r"big\.yaml: the knowledge base is over 1048576 bytes"):
        load_knowledge(path)


def test_deep_nesting_is_refused_at_its_line_not_a_recursion_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("languages: [sn]\nentries:\n" + "  [\n" * 5000 + "  ]\n" * 5000, encoding="utf-8")
    with pytest.raises(KnowledgeError, match=r"deep\.yaml:34:3: lists and mappings nested over 32 deep"):
        load_knowledge(path)


def test_a_missing_file_is_refused_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(KnowledgeError, match=r"missing\.yaml: cannot read the knowledge base"):
        load_knowledge(tmp_path / "missing.yaml")


def test_every_error_class_has_a_fixture() -> None:
    names = {p.stem for p in BROKEN}
    for needed in (
        "unknown_entry_key",
        "missing_answer_language",
        "too_few_questions",
        "duplicate_id",
        "menu_unknown_target",
        "menu_bad_digit",
        "unknown_placeholder",
        "unknown_action",
        "empty_answer",
        "wrong_type_list",
        "not_utf8",
        "python_tag",
        "float_tag",
        "text_too_long",
        "too_many_questions",
    ):
        assert needed in names, needed
