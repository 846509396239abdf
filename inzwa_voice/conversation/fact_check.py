"""Does a model answer hold to the facts it was given? One check per answer, phrase by phrase.

The packaged model is small: given the helpline's facts it still states numbers and names they
do not hold ("You should call 999 now" about a stolen phone), copies a fact about something else
("free at government clinics and most hospitals" about rent), or says it does not know. Each of
these is decided by the words themselves: once the words so far decide it, the words after them
cannot undo it. The phrase splitter asks the check at every word (``FactCheck.decided``), so the
authored "I don't know" is said as soon as the answer is lost, not once its sentence is written:
at some 30 ms a token on two cores, "999" decides at the fourth word of a fourteen-word phrase.

Beyond numbers and names, what the model says must be the facts' to say: each word of substance
in an answer must be a word of the facts closest to the question (``_unsupported``). The words
of the caller's question do not count: the model turns them into advice of its own ("Should I
tell the police?" got "You should not tell the police."; "Can you help me with rent?" got "We
can help you with rent. Please contact your landlord and ask for a refund."). Words that carry
no fact (the function words, and those of comfort and of offering a person) are anybody's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from inzwa_voice.engines.grounding import BRIEFING_ACK, GROUNDED_EXAMPLES

Verdict = Literal["dont_know", "ungrounded"]

_NUMBERISH = re.compile(
    r"\d+(?:[:.,]\d+)*|\b(?:zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|"
    r"thirteen|fourteen|fifteen|sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|"
    r"sixty|seventy|eighty|ninety|hundred|thousand|noon|midnight)\b",
    re.IGNORECASE,
)
_ONE_AS_A_WORD = re.compile(
    r"\b(?:a|an|the|this|that|which|any|each|every|no|new|another|other|same|right)\s+one\b", re.IGNORECASE
)
"""The word one standing for a thing ("a new one", "the right one", "no one"): no number stated."""
_SAYS_IT_DOES_NOT_KNOW = re.compile(
    r"\W*(?:(?:(?:i['’]m|i am) sorry\W+(?:but\s+)?)?"
    r"i (?:(?:don['’]?t|do not) know|(?:can['’]?t|cannot|am unable to) (?:assist|help))\b"
    rf"|{re.escape(BRIEFING_ACK.rstrip('.'))})",
    re.IGNORECASE,
)
"""The model saying it does not know, as the worked examples show it, or that it cannot help (its
own refusal, "I'm sorry, but I can't assist with that."), or saying no more than its part of the
briefing (``grounding.briefed_messages``), which it copies now and then: the authored words say
it instead, ready-made, in the helpline's own voice, and offer the counsellor the way the call
understands a "yes" to."""
_CAPITALISED = re.compile(r"(?<![.!?]\s)(?<!^)\b[A-Z][a-z]{2,}\b")
_ALWAYS_FINE = frozenset({"English", "Shona", "Please", "Sorry", "Hello"})
_NO_FACT_WORDS = """
    a an the you your yours i i'm i'll i've we we're we'll our us me my it it's its they them their
    this that these those there here is are was were be been being am do does did done don't doesn't
    not no yes to of in on at for with and or but if so as by from up out about into than then also
    any some more just only very can can't cannot could will would should shall may might must have
    has had get got go what when where which who how why please all each every one other another such
    too again let let's make sure okay ok well now new
    sorry hear heard help talk speak counsellor counsellors connect someone somebody person people like
    want need know understand feel feeling listen thank thanks welcome glad fine good hello hi
    safe alone difficult hard worried scared line helpline information ask say
"""
_NO_FACT = frozenset(_NO_FACT_WORDS.split())
"""Words that state no fact: function words, and those of comfort, of offering a person, and of
asking. Anything else an answer says must be in its facts (``FactCheck``)."""
_STEM = 5
"""Letters two words must share at the start to count as one ("opens" and "open", "Wednesdays"
and "Wednesday", "registered" and "register")."""
_ADVICE_AGAINST = re.compile(r"\b(?:should|must)\s*(?:not|n['’]t)\b|\bnever\b", re.IGNORECASE)
"""Advice against something ("You should not tell the police."): the facts' words, turned
around, unless the facts themselves advise against something."""


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z][a-z']*", text.lower().replace("’", "'"))


def _runs(text: str, n: int) -> set[tuple[str, ...]]:
    """``text``'s runs of ``n`` words in a row."""
    words = re.findall(r"[a-z0-9']+", text.lower())
    return set(zip(*(words[i:] for i in range(n)), strict=False))


_EXAMPLE_TRIGRAMS = frozenset(
    trigram for facts, _, _ in GROUNDED_EXAMPLES for fact in facts for trigram in _runs(fact, 3)
)
"""Three words in a row from the worked examples' made-up facts. The small model copies them into
answers about things alike ("I lost my identity card" got "the registry office in town", a birth
certificate's): words a caller would take for the helpline's, that no entry says."""
COPIED_RUN = 5
"""Words in a row of an entry far from the question that make a phrase a copy of it. Given the
whole knowledge base, the small model answered "can you help me with the rent?" with the HIV
answer's "free at government clinics and most hospitals", and a lost identity card with the
clinic's "the government clinic nearest you": the helpline's words, about something else.
Shorter runs ("you can also get") are anybody's words."""


class FactCheck:
    """The check of one answer: ``facts`` are the entries closest to the question, the only ones
    it may state anything from; ``question`` may lend it numbers and names (the caller's own),
    not advice; ``elsewhere`` is every other fact the model was given. Built once per answer, it
    is asked at every word the model writes."""

    def __init__(self, facts: Sequence[str], question: str = "", elsewhere: Sequence[str] = ()) -> None:
        known = " ".join([*facts, question])
        self._example_runs = _EXAMPLE_TRIGRAMS - _runs(known, 3)
        self._copied_runs = _runs(" ".join(elsewhere), COPIED_RUN) - _runs(known, COPIED_RUN)
        self._numbers = {m.group(0).lower() for m in _NUMBERISH.finditer(known)}
        self._names = set(re.findall(r"[A-Za-z]+", known))
        self._stems = {word[:_STEM] for fact in facts for word in _words(fact)}
        self._advises_against = any(_ADVICE_AGAINST.search(fact) for fact in facts)

    def verdict(self, phrase: str) -> Verdict | None:
        """Why ``phrase`` may not be spoken: the model says it does not know, or says what its
        facts do not hold (``ungrounded``); None if it may."""
        if _SAYS_IT_DOES_NOT_KNOW.match(phrase) is not None:
            return "dont_know"
        return "ungrounded" if self.ungrounded(phrase) else None

    def decided(self, words: str) -> bool:
        """Do ``words``, the whole words so far of a phrase, already decide that it may not be
        spoken, whatever follows? Each rule is about words already there, so they do."""
        return self.verdict(words) is not None

    def ungrounded(self, phrase: str) -> bool:
        """Does ``phrase`` state a number, time, phone number or name that neither the facts nor
        the question has, repeat a worked example's fact, copy ``COPIED_RUN`` words of a fact
        about something else, or say anything of substance its facts do not?"""
        if _runs(phrase, 3) & self._example_runs or _runs(phrase, COPIED_RUN) & self._copied_runs:
            return True
        stated = _ONE_AS_A_WORD.sub(" ", phrase)
        if any(m.group(0).lower() not in self._numbers for m in _NUMBERISH.finditer(stated)):
            return True
        if any(w not in self._names and w not in _ALWAYS_FINE for w in _CAPITALISED.findall(phrase.strip())):
            return True
        return self._unsupported(phrase)

    def _unsupported(self, phrase: str) -> bool:
        if not self._advises_against and _ADVICE_AGAINST.search(phrase):
            return True
        return any(w not in _NO_FACT and w[:_STEM] not in self._stems for w in _words(phrase))
