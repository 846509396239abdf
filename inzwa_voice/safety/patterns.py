"""Pattern lists: phrases and regexes grouped by category and language, compiled once at load.

Every language's entries are matched against every text, whatever language the call declared:
callers switch between Shona and English mid-sentence ("ndoda ku kill myself"), so the declared
language only chooses the wording of the reply, never which patterns apply.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from inzwa_voice.safety.datafiles import LANGUAGES, SafetyDataError, read_mapping

ANY_LANGUAGE = "any"
"""Key for entries that belong to no language (phone numbers, URLs)."""

PATTERN_LANGUAGES = (*LANGUAGES, ANY_LANGUAGE)

_CATEGORY = re.compile(r"[a-z][a-z0-9_]*")
_APOSTROPHES = str.maketrans(dict.fromkeys("’‘ʼ`´", "'"))
_WORD_SPLIT = re.compile(r"[^\w']+")
# Between the words of a phrase: any run of spaces and punctuation ("kill -- myself").
_GAP = r"[\W_]+"


def normalize(text: str) -> str:
    """Fold case, compatibility forms and curly apostrophes, so each entry needs one spelling."""
    return unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).casefold()


@dataclass(frozen=True)
class Pattern:
    category: str
    language: str
    regex: re.Pattern[str]


@dataclass(frozen=True)
class PatternSet:
    """Compiled entries in file order; categories earlier in the file win."""

    patterns: tuple[Pattern, ...]

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.category for p in self.patterns))

    def match(self, text: str) -> str | None:
        """The category of the first entry found in ``text``, or None."""
        folded = normalize(text)
        for pattern in self.patterns:
            if pattern.regex.search(folded):
                return pattern.category
        return None


def load_patterns(path: Path) -> PatternSet:
    """Load ``{category: {language: [entry, ...]}}``; an entry is a phrase or ``{regex: ...}``."""
    patterns: list[Pattern] = []
    for category, by_language in read_mapping(path).items():
        if not isinstance(category, str) or not _CATEGORY.fullmatch(category):
            raise SafetyDataError(f"{path}: category {category!r}: use lower_case letters, digits, _")
        if not isinstance(by_language, dict) or not by_language:
            raise SafetyDataError(f"{path}: {category}: expected a mapping of language to entries")
        for language, entries in by_language.items():
            where = f"{path}: {category}.{language}"
            if language not in PATTERN_LANGUAGES:
                expected = ", ".join(PATTERN_LANGUAGES)
                raise SafetyDataError(f"{where}: unknown language {language!r} (expected {expected})")
            if not isinstance(entries, list) or not entries:
                raise SafetyDataError(f"{where}: expected a non-empty list of entries")
            for index, entry in enumerate(entries):
                patterns.append(Pattern(category, language, _compile(entry, f"{where}[{index}]")))
    return PatternSet(tuple(patterns))


def _compile(entry: object, where: str) -> re.Pattern[str]:
    if isinstance(entry, str):
        source, expression = entry, _phrase_expression(entry, where)
    elif isinstance(entry, dict) and set(entry) == {"regex"} and isinstance(entry["regex"], str):
        source = expression = entry["regex"]
    else:
        raise SafetyDataError(f"{where}: expected a phrase or {{regex: '...'}}, got {entry!r}")
    try:
        compiled = re.compile(expression, re.IGNORECASE)
    except re.error as exc:
        raise SafetyDataError(f"{where}: bad regex {source!r}: {exc}") from exc
    if compiled.search("") is not None:
        raise SafetyDataError(f"{where}: {source!r} matches empty text, so it would match everything")
    return compiled


def _phrase_expression(phrase: str, where: str) -> str:
    """Whole words in order, any gap of spaces or punctuation between them, apostrophes optional."""
    words = [word.strip("'") for word in _WORD_SPLIT.split(normalize(phrase)) if word.strip("'")]
    if not words:
        raise SafetyDataError(f"{where}: phrase {phrase!r} has no words")
    body = _GAP.join(re.escape(word).replace("'", "'?") for word in words)
    return rf"(?<!\w){body}(?!\w)"
