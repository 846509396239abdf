"""Turning a model's token stream into checked, speakable phrases.

The output filter can only judge whole phrases ("kill" + "yourself" arrive as separate tokens),
so tokens are buffered up to a phrase end; the buffer is capped so a model that never punctuates
still reaches the caller in pieces and memory stays bounded. Phrases keep their trailing
whitespace, so the yielded chunks concatenate back into the text.

A base model also writes things no caller should hear: markup, and the other side of the
dialogue ("User: ..."). The role labels and turn tokens are the prompt format's, not content
policy, which is why they live here and not in the data files.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable

MAX_PHRASE_CHARS = 160
# The first phrase of an answer may also end at a comma once it is this long: the caller hears
# the answer begin a sentence sooner, which is most of the perceived latency. 12 lets the
# grounded model's usual opening ("I don't know that, ...", "I'm sorry to hear that, ...") be
# spoken while it writes the rest: 4-6 tokens instead of a whole sentence's 12-15 (some 0.3 s on
# two cores); "Yes, " still waits for more.
FIRST_CLAUSE_CHARS = 12
# Later phrases end at a comma only once they are this long: a phrase is the unit the TTS speaks
# and a barge-in cuts, so a long sentence is better heard (and cut) in clauses.
CLAUSE_CHARS = 48
# A model that writes slowly without punctuation still reaches the caller: after this long
# since a phrase began, it is cut at the last space.
PHRASE_TIME_CAP_S = 2.0

# A phrase ends at sentence punctuation (plus closing quotes) followed by whitespace, or at a
# newline. The whitespace run belongs to the phrase, so the end is only known once the next
# visible character arrives; "3.5" and "e.g." never end a phrase.
_PHRASE_END = re.compile(r"(?:[.!?;:…]+[\"'”’)\]]*\s+|\n\s*)(?=\S)")
_LAST_SPACE = re.compile(r"\s+(?=\S*\Z)")
_CLAUSE_END = re.compile(r",\s+(?=\S)")

Decided = Callable[[str], bool]
"""Whether the whole words so far of a phrase already decide it, whatever follows (a model answer
that has lost its footing: ``conversation.fact_check``)."""

# A label starting a line or sentence means the model began writing another speaker's turn; chat
# template tokens mean the same wherever they appear.
_ROLE_TAG = re.compile(
    r"(?:\A|(?<=[\n.!?]))[\s*_#>-]*(?P<role>user|assistant|system|human|model|caller|agent|ai)\s*:"
    r"|<\|?/?(?:start_of_turn|end_of_turn|im_start|im_end|endoftext|eos)\|?>|</s>",
    re.IGNORECASE,
)
# HTML-like tags, markdown emphasis, headings and code fences, and control characters: a TTS
# reads them out or chokes on them.
_MARKUP = re.compile(r"</?[a-z][^<>\n]{0,200}>|[*_`#~]|[\x00-\x08\x0b-\x1f\x7f]", re.IGNORECASE)


class PhraseSplitter:
    """Accumulates tokens and hands out complete phrases of at most ``cap`` characters.

    This is the gateway's one phrase splitter: REST answers stream in its phrases, and calls
    synthesize and account for exactly these phrases.
    """

    def __init__(
        self, cap: int = MAX_PHRASE_CHARS, first_clause: int = FIRST_CLAUSE_CHARS, clause: int = CLAUSE_CHARS
    ) -> None:
        self._cap = cap
        self._first_clause = first_clause
        self._clause = clause
        self._buffer = ""
        self._first = True
        self._judged = 0  # how much of the buffer ``decided`` has seen

    def feed(self, token: str, overdue: bool = False, decided: Decided | None = None) -> list[str]:
        """Add ``token``; return the phrases it completed, in order.

        ``overdue``: the current phrase has waited past the time cap, so it ends at its last space.
        ``decided``: the phrase also ends at its last space once this says its whole words so far
        decide it: a phrase that will not be spoken is not waited for to its end.
        """
        self._buffer += token
        phrases: list[str] = []
        while (end := self._phrase_end()) is not None:
            phrases.append(self._buffer[:end])
            self._buffer = self._buffer[end:]
            self._first, self._judged = False, 0
        space = _LAST_SPACE.search(self._buffer)
        if space is not None and space.start() > 0 and (overdue or self._decides(decided, space.end())):
            phrases.append(self._buffer[: space.end()])
            self._buffer = self._buffer[space.end() :]
            self._first, self._judged = False, 0
        return phrases

    def _decides(self, decided: Decided | None, words_end: int) -> bool:
        """Asked once per whole word: a word is whole once the whitespace after it has come."""
        if decided is None or words_end == self._judged:
            return False
        self._judged = words_end
        return decided(self._buffer[:words_end])

    @property
    def pending(self) -> bool:
        return bool(self._buffer)

    def flush(self) -> str:
        """The unfinished rest, at the end of the stream."""
        rest, self._buffer = self._buffer, ""
        return rest

    def _phrase_end(self) -> int | None:
        match = _PHRASE_END.search(self._buffer)
        if match is not None and match.end() <= self._cap:
            return match.end()
        clause = _CLAUSE_END.search(self._buffer, self._first_clause if self._first else self._clause)
        if clause is not None and clause.end() <= self._cap:
            return clause.end()
        if len(self._buffer) <= self._cap:
            return None
        # Too long without an end: cut after the last whitespace in the window, or mid-word when
        # the window holds a single word.
        space = _LAST_SPACE.search(self._buffer, 0, self._cap)
        return space.end() if space is not None and space.start() > 0 else self._cap


async def phrases(
    tokens: AsyncIterator[str],
    time_cap: float = PHRASE_TIME_CAP_S,
    clock: Callable[[], float] = time.monotonic,
    decided: Decided | None = None,
) -> AsyncGenerator[str, None]:
    """Phrases of ``tokens``, a phrase also ending at the word that ``decided`` it
    (``PhraseSplitter.feed``); closing this generator closes ``tokens`` too, stopping the model."""
    splitter = PhraseSplitter()
    started: float | None = None  # when the phrase now buffering began
    try:
        async for token in tokens:
            now = clock()
            started = now if started is None else started
            for phrase in splitter.feed(token, overdue=now - started >= time_cap, decided=decided):
                yield phrase
                started = now if splitter.pending else None
        if rest := splitter.flush():
            yield rest
    finally:
        aclose = getattr(tokens, "aclose", None)
        if aclose is not None:
            await aclose()


def cut_role_tag(phrase: str) -> tuple[str, str | None]:
    """Split ``phrase`` before a leaked role tag: ``(text before it, role)``; role is None if none."""
    match = _ROLE_TAG.search(phrase)
    if match is None:
        return phrase, None
    return phrase[: match.start()], (match.group("role") or "turn_token").lower()


def strip_markup(text: str) -> str:
    return _MARKUP.sub("", text)
