"""What a knowledge base holds, independent of how it is written down or matched."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Action = Literal["transfer", "repeat", "language", "goodbye", "menu", "yes", "no"]
"""What an entry or intent makes the call do besides speaking: ``transfer`` to a person,
``repeat`` the last answer, switch ``language``, say ``goodbye`` and hang up, speak the keypad
``menu``, or answer a confirmation (``yes``/``no``)."""

TEXT_NAMES = ("fallback", "clarify", "refusal", "menu", "dont_know")
"""The authored texts a knowledge base has in each of its languages (see ``KnowledgeBase.texts``)."""

PLACEHOLDERS = ("office_hours", "helpline_number")
"""What an answer or text may hold in braces, filled at run time: ``{office_hours}`` with the
dialplan's office hours (a phrase that follows a verb: "Monday to Friday, 8 am to 5 pm") and
``{helpline_number}`` with the deployment's human number (``INZWA_HELPLINE_NUMBER``). The
``clarify`` text also holds ``{topic}``, the unsure entry's topic in the call's language."""


@dataclass(frozen=True)
class Entry:
    """One thing the helpline can answer or do.

    ``questions`` are example questions per language code (``sn``, ``en``), ``answers`` the
    authored answer per language; answers may hold ``{placeholders}`` that the gateway fills at
    run time (``{office_hours}``, ``{helpline_number}``). ``answers_closed`` replaces ``answers``
    while the office is closed (e.g. the counsellor entry says when to call back instead of
    transferring). ``topics`` is a short name of the entry per language, spoken in the clarifying
    question ("Do you mean {topic}?"); it may be missing for a language. ``line`` is where the
    entry starts in its file, for error messages.
    """

    id: str
    questions: dict[str, tuple[str, ...]]
    answers: dict[str, str]
    action: Action | None = None
    answers_closed: dict[str, str] = field(default_factory=dict)
    target_language: str | None = None  # for action "language": the language it switches to
    topics: dict[str, str] = field(default_factory=dict)
    line: int = 0


@dataclass(frozen=True)
class KnowledgeBase:
    """A profile's entries and the fixed texts the gateway speaks around them."""

    path: str
    entries: tuple[Entry, ...]
    languages: tuple[str, ...]
    # Authored texts per language: ``fallback`` (nothing matched: ask again or offer a person),
    # ``clarify`` (an unsure match: "did you mean ...?", with {topic}), ``refusal`` (off-topic),
    # ``menu`` (the keypad menu read out), ``dont_know`` (the LLM's answer was not grounded).
    texts: dict[str, dict[str, str]]
    # Keypad menu: digit -> entry id, intent id, or "language:<code>".
    menu: dict[str, str] = field(default_factory=dict)

    def entry(self, entry_id: str) -> Entry | None:
        return next((e for e in self.entries if e.id == entry_id), None)

    def text(self, name: str, language: str) -> str:
        """The authored text ``name`` (one of ``TEXT_NAMES``) in ``language``, still with its
        placeholders; a language the file lacks gets the file's first language."""
        return self.texts.get(language, self.texts[self.languages[0]])[name]
