"""Operator-edited YAML, read so that every mistake is reported at its ``file:line:column``.

The dialplan and the knowledge base are written by helpline staff, not programmers, and read
once at start-up (and on reload): a mistake must stop the load with the place to fix and what
is expected there, never surface as a traceback or as a strange call at night.

So a file is composed into PyYAML's node tree, which keeps each value's position, instead of
being loaded into plain dicts, and each value is converted on its own with the safe constructor
when the reader asks for it as a given type. Only YAML's plain types are accepted (strings,
numbers, booleans, null, and anchors and aliases of them): an explicit tag such as
``!!python/object:...`` or ``!custom``, a malformed ``!!float x``, a merge key, text that is not
UTF-8 and nesting too deep for the parser are each a positioned error too.

A format's reader subclasses ``YamlReader`` and sets ``error_type`` to its own exception.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import ClassVar, Protocol

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

T = typing.TypeVar("T")

MAX_DEPTH = 32
"""Deepest nesting of lists and mappings a file may have; PyYAML composes recursively, so a file
of ten thousand ``[`` would otherwise end in a RecursionError."""

_YAML = "tag:yaml.org,2002:"
STR_TAG, NULL_TAG, MAP_TAG, SEQ_TAG = _YAML + "str", _YAML + "null", _YAML + "map", _YAML + "seq"
SCALAR_TAGS = frozenset(_YAML + t for t in ("str", "int", "float", "bool", "null", "timestamp"))
"""The tags a scalar may have: what plain YAML resolves to, or the same tags written out."""

TYPE_NAMES: dict[type, str] = {str: "a string", float: "a number", int: "an integer", bool: "true or false"}
NODE_NAMES: dict[type, str] = {MappingNode: "a mapping", SequenceNode: "a list"}


class Mark(Protocol):
    """Where a node or an event starts (PyYAML's pure-Python and libyaml marks both have these)."""

    line: int
    column: int


class YamlReader:
    """Reads one file's node tree; every fault raises ``error_type`` with ``file:line:column``."""

    error_type: ClassVar[type[Exception]] = ValueError
    # Added to "must be a string, not ..." errors: how to make YAML read a value as text.
    string_hint: ClassVar[str] = " (put it in quotes to make it text)"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._construct = SafeConstructor()
        self._text = ""  # the composed document, to tell a tag written out from a resolved one

    # --- the file -------------------------------------------------------------------------------

    def read(self, what: str, max_bytes: int | None = None) -> str:
        """The file's text; refuses a file that cannot be read, is over ``max_bytes`` or is not UTF-8."""
        try:
            with self.path.open("rb") as file:
                data = file.read() if max_bytes is None else file.read(max_bytes + 1)
        except OSError as exc:
            raise self.error_type(f"{self.path}: cannot read the {what}: {exc}") from None
        if max_bytes is not None and len(data) > max_bytes:
            raise self.error_type(
                f"{self.path}: the {what} is over {max_bytes} bytes ({max_bytes // 1024} KiB); split it or shorten it"
            )
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
            raise self.error_type(
                f"{self.path}:{line}:{column}: cannot read the {what}: it is not UTF-8 text "
                f"(byte 0x{data[exc.start]:02x}); save the file as UTF-8"
            ) from None

    def compose(self, text: str, what: str) -> Node:
        """The document's root node; refuses YAML syntax errors, deep nesting and an empty file."""
        self._text = text
        try:
            self._check_depth(text)
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            message = f"YAML syntax error: {exc.problem or exc.context}"
            if exc.problem and exc.context and exc.context_mark and mark and exc.context_mark.line != mark.line:
                message += f" ({exc.context} at line {exc.context_mark.line + 1})"
            raise self.error_at(mark, message) from None
        except yaml.reader.ReaderError as exc:
            line = text.count("\n", 0, exc.position) + 1
            column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
            char = chr(exc.character) if isinstance(exc.character, int) else exc.character
            raise self.error_type(
                f"{self.path}:{line}:{column}: character {char!r} is not allowed in YAML "
                "(control characters must be removed)"
            ) from None
        except yaml.YAMLError as exc:
            raise self.error_type(f"{self.path}: YAML error: {exc}") from None
        if root is None:
            raise self.error_type(f"{self.path}:1:1: the {what} is empty")
        return root

    def _check_depth(self, text: str) -> None:
        # The parser is iterative (a stack of states), the composer recursive: walk the events first.
        depth = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise self.error_at(event.start_mark, f"lists and mappings nested over {MAX_DEPTH} deep")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1

    # --- nodes ----------------------------------------------------------------------------------

    def mapping(
        self, node: Node, what: str, allowed: tuple[str, ...] | None, required: tuple[str, ...] = ()
    ) -> dict[str, Node]:
        """A mapping's values by key, in file order; ``allowed`` None allows any string key."""
        if not isinstance(node, MappingNode):
            raise self.error(node, f"{what} must be a mapping")
        self.check_tag(node, MAP_TAG, what)
        out: dict[str, Node] = {}
        for key_node, value_node in node.value:
            key = self.scalar(key_node, f"a key in {what}", str)
            if allowed is not None and key not in allowed:
                raise self.error(key_node, f"unknown key {key!r} in {what}; expected one of {', '.join(allowed)}")
            if key in out:
                raise self.error(key_node, f"duplicate key {key!r} in {what}")
            out[key] = value_node
        missing = [key for key in required if key not in out]
        if missing:
            raise self.error(node, f"{what} is missing {', '.join(repr(k) for k in missing)}")
        return out

    def items(self, node: Node, what: str) -> list[Node]:
        """A sequence's nodes; a single scalar counts as a list of one."""
        if isinstance(node, ScalarNode) and not self.is_null(node):
            return [node]
        if not isinstance(node, SequenceNode) or not node.value:
            raise self.error(node, f"{what} must be a value or a non-empty list")
        self.check_tag(node, SEQ_TAG, what)
        return list(node.value)

    def scalar(self, node: Node, what: str, kind: type[T]) -> T:
        """The node's value as ``kind``; ints pass for floats, but bools pass only for bools."""
        if not isinstance(node, ScalarNode):
            self.check_tag(node, MAP_TAG if isinstance(node, MappingNode) else SEQ_TAG, what)
        value = self.construct(node, what) if isinstance(node, ScalarNode) else None
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
            return value
        if self.is_null(node):
            got = "empty"
        else:
            got = repr(node.value) if isinstance(node, ScalarNode) else NODE_NAMES[type(node)]
        hint = self.string_hint if kind is str and isinstance(node, ScalarNode) and got != "empty" else ""
        raise self.error(node, f"{what} must be {TYPE_NAMES.get(kind, kind.__name__)}, not {got}{hint}")

    def construct(self, node: ScalarNode, what: str) -> object:
        """A scalar's plain value; explicit foreign tags and values their tag cannot hold are errors."""
        if node.tag == _YAML + "merge":
            raise self.error(node, f"{what}: merge keys ('<<') are not supported; write the values out")
        self.check_tag(node, None, what)
        try:
            return self._construct.construct_object(node, deep=True)
        except (ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError):
            tag = node.tag.removeprefix(_YAML)
            if self._text.startswith("!", node.start_mark.index):
                fix = f"remove the '!!{tag}' tag"
            else:  # resolved from its looks, as 2020-99-99 is read as a date
                fix = "put it in quotes to make it text"
            raise self.error(node, f"{what}: {node.value!r} is not a valid {tag}; {fix}") from None

    def check_tag(self, node: Node, expected: str | None, what: str) -> None:
        """Refuse a tag other than ``expected`` (or, for a scalar, one of ``SCALAR_TAGS``)."""
        if node.tag == expected or (expected is None and node.tag in SCALAR_TAGS):
            return
        tag = "!!" + node.tag.removeprefix(_YAML) if node.tag.startswith(_YAML) else node.tag
        raise self.error(node, f"{what}: the YAML tag {tag!r} is not allowed; write a plain value without a tag")

    @staticmethod
    def is_null(node: Node) -> bool:
        return isinstance(node, ScalarNode) and node.tag == NULL_TAG

    def error(self, node: Node, message: str) -> Exception:
        return self.error_at(node.start_mark, message)

    def error_at(self, mark: Mark | None, message: str) -> Exception:
        where = f"{self.path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(self.path)
        return self.error_type(f"{where}: {message}")
