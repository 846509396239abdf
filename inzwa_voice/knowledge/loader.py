"""Reading a knowledge base file and the built-in intents, every value checked with its line.

A knowledge base is YAML that helpline staff edit (``data/helpline.yaml`` is the commented
reference and the sample); the built-in intents (``data/intents.yaml``) have the same entry
shape. Both are read at start-up and on reload, and refused whole at the first mistake with a
``KnowledgeError`` naming ``file:line:column``, what is wrong and what is expected there: a typo
must never turn into a wrong answer on a call.

Everything read is bounded: the file (``MAX_FILE_BYTES``), the example questions of an entry
(``MAX_QUESTIONS``), every text (``MAX_TEXT_CHARS``) and the nesting of the YAML.
"""

from __future__ import annotations

import re
import string
import typing
from collections.abc import Sequence
from pathlib import Path

from yaml.nodes import MappingNode, Node, ScalarNode

from inzwa_voice.knowledge.base import PLACEHOLDERS, TEXT_NAMES, Action, Entry, KnowledgeBase
from inzwa_voice.yamlfile import YamlReader

DATA = Path(__file__).resolve().parent / "data"
DEFAULT_KNOWLEDGE = DATA / "helpline.yaml"
"""The sample knowledge base of a Shona helpline (SAMPLE content: an operator replaces it)."""
INTENTS_PATH = DATA / "intents.yaml"
"""The built-in intents: a person, repeat, language, goodbye, menu, yes and no."""

MAX_FILE_BYTES = 1024 * 1024
MAX_QUESTIONS = 200
"""Example questions one entry may have, all its languages together."""
MAX_TEXT_CHARS = 2000
"""Longest question, answer, topic or text; an answer is spoken, so a long one is a mistake."""
ACTIONS: tuple[str, ...] = typing.get_args(Action)
MENU_DIGITS = "0123456789*#"

_TOP_KEYS = ("languages", "texts", "menu", "entries")
_INTENT_TOP_KEYS = ("languages", "entries")
_ENTRY_KEYS = ("id", "topic", "questions", "answers", "answers_closed", "action", "target_language")
_ID = re.compile(r"[a-z][a-z0-9_]{0,63}")
_LANGUAGE = re.compile(r"[a-z]{2,3}")
_PUNCTUATION = re.compile(r"[^\w\s]")


INTENTS_NAME = "intents.yaml"


def _normal(question: str) -> str:
    """A question as the duplicate check compares it: case, punctuation and spacing ignored."""
    return " ".join(_PUNCTUATION.sub(" ", question.casefold()).split())


class KnowledgeError(ValueError):
    """An invalid knowledge base or intents file; the message starts with ``file:line:column``."""


def load_knowledge(
    path: Path | str, *, min_questions: int = 1, intents: Sequence[Entry] | None = None
) -> KnowledgeBase:
    """Read and check a knowledge base file; raises ``KnowledgeError`` naming the file and line.

    ``min_questions`` is the fewest example questions an entry needs in each language (the
    sample file has at least 5, which a test checks; operators' small files may have fewer).
    ``intents`` are the intents matched alongside the file (by default ``load_intents()``): a
    keypad menu may name them, an entry may not reuse an intent's id, and an example question
    may not be one of an intent's.
    """
    if min_questions < 1:
        raise ValueError("min_questions must be at least 1")
    reader = _Reader(Path(path), min_questions)
    intents = load_intents() if intents is None else intents
    for intent in intents:
        for questions in intent.questions.values():
            for question in questions:
                reader.seen_questions.setdefault(
                    _normal(question), (f"intent {intent.id!r}", intent.line, INTENTS_NAME)
                )
    return reader.knowledge(reader.read("knowledge base", MAX_FILE_BYTES), frozenset(i.id for i in intents))


def load_intents(path: Path | str = INTENTS_PATH, *, min_questions: int = 1) -> tuple[Entry, ...]:
    """The intents in ``path`` (by default the packaged ``intents.yaml``), checked like a knowledge base."""
    if min_questions < 1:
        raise ValueError("min_questions must be at least 1")
    reader = _Reader(Path(path), min_questions)
    return reader.intents(reader.read("intents file", MAX_FILE_BYTES))


class _Reader(YamlReader):
    """Turns the YAML node tree into entries, raising ``KnowledgeError`` at the first fault."""

    error_type = KnowledgeError
    string_hint = " (put text that YAML reads as something else in quotes: 'yes', 'no', '10', '08:00')"

    def __init__(self, path: Path, min_questions: int) -> None:
        super().__init__(path)
        self.min_questions = min_questions
        self.languages: tuple[str, ...] = ()
        # Normalized example question -> (entry or intent, line, file name or "" for this file):
        # one question in two entries would make the match a coin toss.
        self.seen_questions: dict[str, tuple[str, int, str]] = {}

    # --- the documents --------------------------------------------------------------------------

    def knowledge(self, text: str, intent_ids: frozenset[str]) -> KnowledgeBase:
        root = self.compose(text, "knowledge base")
        top = self.mapping(root, "the knowledge base", _TOP_KEYS, required=("languages", "texts", "entries"))
        self.languages = self.language_list(top["languages"])
        texts = self.texts(top["texts"])
        entries = self.entries(top["entries"], answers_required=True, reserved=intent_ids)
        menu = self.menu(top["menu"], {e.id for e in entries}, intent_ids) if "menu" in top else {}
        return KnowledgeBase(str(self.path), entries, self.languages, texts, menu)

    def intents(self, text: str) -> tuple[Entry, ...]:
        root = self.compose(text, "intents file")
        top = self.mapping(root, "the intents file", _INTENT_TOP_KEYS, required=_INTENT_TOP_KEYS)
        self.languages = self.language_list(top["languages"])
        return self.entries(top["entries"], answers_required=False, reserved=frozenset())

    # --- sections -------------------------------------------------------------------------------

    def language_list(self, node: Node) -> tuple[str, ...]:
        codes: list[str] = []
        for item in self.items(node, "languages"):
            code = self.scalar(item, "languages", str)
            if not _LANGUAGE.fullmatch(code):
                raise self.error(item, f"language {code!r} must be a lower-case Whisper code such as 'sn' or 'en'")
            if code in codes:
                raise self.error(item, f"language {code!r} is listed twice")
            codes.append(code)
        return tuple(codes)

    def texts(self, node: Node) -> dict[str, dict[str, str]]:
        by_language = self.language_keys(node, "texts", required=True)
        out: dict[str, dict[str, str]] = {}
        for language, body in by_language.items():
            fields = self.mapping(body, f"texts.{language}", TEXT_NAMES, required=TEXT_NAMES)
            out[language] = {}
            for name, value in fields.items():
                allowed = (*PLACEHOLDERS, "topic") if name == "clarify" else PLACEHOLDERS
                text = self.text(value, f"texts.{language}.{name}", allowed)
                if name == "clarify" and "{topic}" not in text:
                    raise self.error(value, f"texts.{language}.clarify must contain {{topic}}, the topic it asks about")
                out[language][name] = text
        return out

    def menu(self, node: Node, entry_ids: set[str], intent_ids: frozenset[str]) -> dict[str, str]:
        if not isinstance(node, MappingNode):
            raise self.error(node, "menu must be a mapping of keypad digits to entry ids, intents or language:<code>")
        self.check_tag(node, "tag:yaml.org,2002:map", "menu")
        out: dict[str, str] = {}
        for key_node, value_node in node.value:
            digit = self.digit(key_node)
            if digit in out:
                raise self.error(key_node, f"menu: digit {digit!r} is given twice")
            target = self.scalar(value_node, f"menu {digit!r}", str)
            language = target.removeprefix("language:") if target.startswith("language:") else None
            if language is not None and language not in self.languages:
                raise self.error(
                    value_node,
                    f"menu {digit!r}: {target!r} names a language the file does not have "
                    f"(languages: {', '.join(self.languages)})",
                )
            if language is None and target not in entry_ids and target not in intent_ids:
                raise self.error(
                    value_node,
                    f"menu {digit!r}: unknown target {target!r}; expected an entry id of this file, "
                    f"an intent ({', '.join(sorted(intent_ids)) or 'none'}) or language:<code>",
                )
            out[digit] = target
        return out

    def digit(self, node: Node) -> str:
        # Unquoted 0-9 are YAML integers; '*' and '#' must be quoted (YAML reads them as an alias
        # and a comment).
        value = self.construct(node, "a menu digit") if isinstance(node, ScalarNode) else None
        text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else None
        if text is None or len(text) != 1 or text not in MENU_DIGITS:
            got = repr(node.value) if isinstance(node, ScalarNode) else "a list or mapping"
            raise self.error(node, f"menu: {got} is not a keypad digit; expected one of 0-9, '*' or '#' (quoted)")
        return text

    def entries(self, node: Node, *, answers_required: bool, reserved: frozenset[str]) -> tuple[Entry, ...]:
        if isinstance(node, ScalarNode) and not self.is_null(node):
            raise self.error(node, "entries must be a list of entries (mappings with id, questions, answers)")
        out: list[Entry] = []
        lines: dict[str, int] = {}
        for item in self.items(node, "entries"):
            entry = self.entry(item, answers_required, reserved)
            if entry.id in lines:
                raise self.error(item, f"duplicate id {entry.id!r}; the first is at line {lines[entry.id]}")
            lines[entry.id] = entry.line
            out.append(entry)
        return tuple(out)

    def entry(self, node: Node, answers_required: bool, reserved: frozenset[str]) -> Entry:
        required = ("id", "questions", "answers") if answers_required else ("id", "questions")
        fields = self.mapping(node, "an entry", None, required=("id",))
        entry_id = self.scalar(fields["id"], "id", str)
        if not _ID.fullmatch(entry_id):
            raise self.error(
                fields["id"], f"id {entry_id!r} must be 1-64 lower-case letters, digits or '_', starting with a letter"
            )
        if entry_id in reserved:
            raise self.error(fields["id"], f"id {entry_id!r} is a built-in intent; give the entry another id")
        where = f"entry {entry_id!r}"
        for key_node, _ in typing.cast(MappingNode, node).value:  # keys are strings: mapping() checked them
            if key_node.value not in _ENTRY_KEYS:
                raise self.error(
                    key_node, f"unknown key {key_node.value!r} in {where}; expected one of {', '.join(_ENTRY_KEYS)}"
                )
        missing = [key for key in required if key not in fields]
        if missing:
            raise self.error(node, f"{where} is missing {', '.join(repr(k) for k in missing)}")
        action = self.action(fields["action"], where) if "action" in fields else None
        target = self.target_language(fields.get("target_language"), action, node, where)
        line = node.start_mark.line + 1
        return Entry(
            id=entry_id,
            questions=self.questions(fields["questions"], where),
            answers=self.answers(fields["answers"], f"{where}: answers") if "answers" in fields else {},
            action=action,
            answers_closed=(
                self.answers(fields["answers_closed"], f"{where}: answers_closed") if "answers_closed" in fields else {}
            ),
            target_language=target,
            topics=self.topics(fields["topic"], where) if "topic" in fields else {},
            line=line,
        )

    # --- entry fields ---------------------------------------------------------------------------

    def questions(self, node: Node, where: str) -> dict[str, tuple[str, ...]]:
        by_language = self.language_keys(node, f"{where}: questions", required=True)
        total = 0
        out: dict[str, tuple[str, ...]] = {}
        for language, body in by_language.items():
            what = f"{where}: questions.{language}"
            items = self.items(body, what)
            if total + len(items) > MAX_QUESTIONS:
                raise self.error(
                    items[MAX_QUESTIONS - total],
                    f"{where} has over {MAX_QUESTIONS} example questions (this is one too many); keep the most typical",
                )
            total += len(items)
            if len(items) < self.min_questions:
                raise self.error(
                    body,
                    f"{what} has {len(items)} example question{'s' if len(items) != 1 else ''}; "
                    f"at least {self.min_questions} are needed, phrased the ways callers ask",
                )
            texts = []
            for item in items:
                text = self.text(item, what, None)
                key = _normal(text)
                if key in self.seen_questions:
                    other, other_line, other_file = self.seen_questions[key]
                    same = "this entry" if other == where else other
                    place = f"{other_file} line {other_line}" if other_file else f"line {other_line}"
                    raise self.error(
                        item,
                        f"{what}: {text!r} is also an example of {same} ({place}); "
                        "each question may appear once, in one entry",
                    )
                self.seen_questions[key] = (where, item.start_mark.line + 1, "")
                texts.append(text)
            out[language] = tuple(texts)
        return out

    def answers(self, node: Node, what: str) -> dict[str, str]:
        by_language = self.language_keys(node, what, required=True)
        return {lang: self.text(body, f"{what}.{lang}", PLACEHOLDERS) for lang, body in by_language.items()}

    def topics(self, node: Node, where: str) -> dict[str, str]:
        by_language = self.language_keys(node, f"{where}: topic", required=False)
        return {lang: self.text(body, f"{where}: topic.{lang}", ()) for lang, body in by_language.items()}

    def action(self, node: Node, where: str) -> Action:
        action = self.scalar(node, f"{where}: action", str)
        if action not in ACTIONS:
            raise self.error(node, f"{where}: unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
        return typing.cast(Action, action)

    def target_language(self, node: Node | None, action: Action | None, entry: Node, where: str) -> str | None:
        if node is None:
            if action == "language":
                raise self.error(entry, f"{where} has action language but no target_language (one of the languages)")
            return None
        if action != "language":
            raise self.error(node, f"{where}: target_language is only for action: language")
        code = self.scalar(node, f"{where}: target_language", str)
        if code not in self.languages:
            raise self.error(
                node,
                f"{where}: target_language {code!r} is not one of the file's languages ({', '.join(self.languages)})",
            )
        return code

    # --- values ---------------------------------------------------------------------------------

    def language_keys(self, node: Node, what: str, *, required: bool) -> dict[str, Node]:
        """A mapping keyed by the file's languages; ``required``: every language must be there."""
        if not isinstance(node, MappingNode):
            raise self.error(node, f"{what} must be a mapping of language ({', '.join(self.languages)}) to text")
        fields = self.mapping(node, what, self.languages)
        missing = [lang for lang in self.languages if lang not in fields]
        if required and missing:
            raise self.error(
                node,
                f"{what} has no {', '.join(repr(m) for m in missing)}; every language of the file "
                f"({', '.join(self.languages)}) is needed",
            )
        return fields

    def text(self, node: Node, what: str, placeholders: tuple[str, ...] | None) -> str:
        """A non-empty, bounded string; ``placeholders`` None: braces are plain text."""
        text = self.scalar(node, what, str).strip()
        if not text:
            raise self.error(node, f"{what} must not be empty")
        if len(text) > MAX_TEXT_CHARS:
            raise self.error(node, f"{what} is {len(text)} characters; at most {MAX_TEXT_CHARS} are allowed")
        if placeholders is not None:
            self.check_placeholders(node, what, text, placeholders)
        return text

    def check_placeholders(self, node: Node, what: str, text: str, allowed: tuple[str, ...]) -> None:
        names = ", ".join("{" + name + "}" for name in allowed) or "none here"
        try:
            fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(text) if name is not None]
        except ValueError:
            raise self.error(
                node,
                f"{what}: unbalanced '{{' or '}}'; placeholders are {names}, "
                "and a literal brace is written twice: '{{' or '}}'",
            ) from None
        for name, spec, conv in fields:
            if name not in allowed or spec or conv:
                shown = "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
                raise self.error(node, f"{what}: unknown placeholder {shown}; allowed: {names}")
