"""What the gateway answers: the safety layer, the caller's intents, the helpline's authored
knowledge, and the LLM only where nothing matched, grounded on the closest entries.

No packaged model writes or reliably hears Shona, so everything a Shona caller hears comes from
authored text: a confident match speaks its entry; an unsure one asks "do you mean ...?"; no
match offers a person and the keypad menu. An English question nothing covers may go to the
LLM with the knowledge base's answers as its only facts (all of them where they are short
enough, ``BRIEFING_CHARS``, else the closest entries), and a phrase of its answer that says
what the closest of those facts do not (``fact_check``), or the model saying it does not know,
replaces the answer with the authored "I don't know that, shall I connect you to a
counsellor?". The same brain
serves calls and ``POST /v1/chat``.

With a sentence embedder loaded (``INZWA_EMBEDDING_ENGINE``), an English turn is also matched by
meaning: its vector is computed in the inference executor and handed to the matchers, whose
example vectors were made once when the intents and each knowledge base loaded.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncGenerator, Iterable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from inzwa_voice.conversation.fact_check import FactCheck
from inzwa_voice.conversation.reply import ReplyInfo, safe_reply
from inzwa_voice.core import Profile
from inzwa_voice.engines.base import ChatMessage, Inference
from inzwa_voice.engines.grounding import briefed_messages, grounded_messages
from inzwa_voice.knowledge.base import Action, Entry, KnowledgeBase
from inzwa_voice.knowledge.match import Matcher, Vector, understand
from inzwa_voice.safety import Safety

log = logging.getLogger(__name__)

SourceKind = Literal["knowledge", "intent", "safety", "llm", "fallback"]
GROUNDED_LANGUAGES = ("en",)
"""Languages the packaged LLM may answer in (it writes no Shona)."""
MISUNDERSTOOD_BEFORE_MENU = 2
FACTS = 2
"""Knowledge-base answers a model answer is grounded on, the closest first, where the base is too
large to give the model whole (``BRIEFING_CHARS``). Each is 35-55 tokens
of the packaged English answers, read while the caller waits (about 0.3 s each on two cores),
and the questions that reach the model are those no entry matched confidently: two of the
closest, not three, cost the caller less for facts that rarely hold the answer."""
BRIEFING_CHARS = 2400
"""A knowledge base whose English answers together are no longer than this (about 500 tokens of
the packaged model; the packaged sample's are 1,700 characters) is given to the model whole, once,
before the conversation (``grounding.briefed_messages``), instead of its closest ``FACTS`` answers
with each question. Read once and saved for every call, it costs a turn nothing: the turn reads
only the caller's words, where new facts found by the last sentence cost 0.4-0.8 s more on two
cores. On the LLM benchmark's questions (``loadtest/bench_llm.py``) the whole base answered 12
of 14 correctly, the closest two 11. A larger base would crowd the model's context."""
READ_AHEAD_WORDS = 3
"""Fewer words so far than this ("Hello.", "Good morning.") find no facts worth reading ahead:
their closest entries are as good as any, and the next sentence picks others."""
CLARIFY_FLOOR = 0.3
"""An unsure match this close is worth "do you mean ...?"; below it, an English question goes to
the grounded LLM (a Shona one still gets the clarifying question: nothing else can answer it)."""


@dataclass(frozen=True)
class Source:
    """Where an answer came from: shown in the call record, the call's events and ``/v1/chat``."""

    kind: SourceKind
    id: str | None = None

    def public(self) -> dict[str, object]:
        return {"kind": self.kind, "id": self.id}


@dataclass
class Answer:
    """One answer: an authored ``text`` (pre-synthesized, starts at once), or ``phrases`` streamed
    from the LLM; ``action`` is what the call does once it has been heard."""

    source: Source
    text: str | None = None
    phrases: AsyncGenerator[str, None] | None = None
    action: Action | None = None
    language: str | None = None  # for action "language": the call's new language
    info: ReplyInfo = field(default_factory=ReplyInfo)


@dataclass(frozen=True)
class Facts:
    """What a model answer is grounded on: the whole knowledge base's answers, given before the
    conversation (``briefed``: ``BRIEFING_CHARS``), or its entries closest to the question,
    given with it. ``closest``: the entries closest to the question, the only ones whose numbers
    and names an answer may state (``FactCheck``), either way: given the whole base, the small
    model also copies a number from an entry about something else ("72 hours" of the HIV
    answer, into one about a lost identity card), and the check is as strict as it was."""

    texts: tuple[str, ...]
    briefed: bool = False
    closest: tuple[str, ...] = ()


@dataclass(frozen=True)
class PromptStart:
    """A prompt to read into the model ahead, and the facts it holds (a turn's next read and
    its answer keep them while they stay close)."""

    messages: list[ChatMessage]
    facts: tuple[str, ...] = ()


@dataclass
class Dialog:
    """What one conversation remembers between turns, beyond its messages."""

    last_answer: str | None = None
    pending: Entry | Literal["transfer"] | None = None  # what a "yes" confirms
    misunderstood: int = 0


@dataclass(frozen=True)
class Knowledge:
    """A loaded knowledge base with its matcher, and what fills its placeholders."""

    base: KnowledgeBase
    matcher: Matcher
    placeholders: Mapping[str, Mapping[str, str]]  # language -> name -> value
    briefing_chars: int = BRIEFING_CHARS

    def fill(self, text: str, language: str, **extra: str) -> str:
        values = {**self.placeholders.get(language, {}), **extra}
        return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), text)

    def text(self, name: str, language: str, **extra: str) -> str:
        return self.fill(self.base.text(name, language), language, **extra)

    def briefing(self, *, open_now: bool) -> tuple[str, ...] | None:
        """The English answers of every entry that informs (an entry that hands over says what
        the call does, which is no fact), in the base's order, if together they fit
        ``briefing_chars``: the model is given them all (``BRIEFING_CHARS``). None if they do not."""
        facts: list[str] = []
        size = 0
        for entry in self.base.entries:
            if entry.action is None:
                facts.append(self.answer(entry, "en", open_now=open_now))
                size += len(facts[-1])
                if size > self.briefing_chars:
                    return None
        return tuple(facts)

    def answer(self, entry: Entry, language: str, *, open_now: bool) -> str:
        answers = entry.answers_closed if not open_now and entry.answers_closed else entry.answers
        text = answers.get(language) or answers.get(self.base.languages[0]) or next(iter(answers.values()), "")
        return self.fill(text, language)


class Brain:
    def __init__(self, inference: Inference, safety: Safety, intents: tuple[Entry, ...]) -> None:
        self._inference = inference
        self._safety = safety
        self.intents = intents
        self._intents = self.matcher(intents)

    def matcher(self, entries: Iterable[Entry]) -> Matcher:
        """A matcher for ``entries``, with sentence vectors for their English examples when an
        embedder is loaded (blocking: one embedder run per example, at start-up or in a reload's
        thread)."""
        embedder = self._inference.embedder
        return Matcher(entries, embed=embedder.embed if embedder is not None else None)

    async def _vector(self, text: str, language: str, knowledge: Matcher) -> Vector | None:
        """``text``'s sentence vector where the matchers use one for ``language``; a failed
        embedding leaves the turn to lexical matching."""
        if not (knowledge.wants_vector(language) or self._intents.wants_vector(language)):
            return None
        try:
            vectors = await self._inference.embed([text])
        except Exception:
            log.exception("sentence embedding failed; matching this turn by its words only")
            return None
        return np.asarray(vectors[0], dtype=np.float32)

    def intent(self, intent_id: str) -> Entry | None:
        return next((e for e in self.intents if e.id == intent_id), None)

    async def answer(
        self,
        text: str,
        *,
        profile: Profile,
        language: str,
        knowledge: Knowledge | None,
        dialog: Dialog,
        history: list[ChatMessage],
        max_tokens: int | None = None,
        temperature: float | None = None,
        kept_facts: tuple[str, ...] = (),
    ) -> Answer:
        """Decide what to say to ``text``; ``history`` holds the turns before it; ``max_tokens``
        and ``temperature`` bound the LLM when it answers; ``kept_facts``: the facts this turn's
        words so far were read ahead with (``prompt_start``)."""
        limits = (max_tokens, temperature)
        verdict = self._safety.check_input(text, language)
        if verdict.action != "allow":
            info = ReplyInfo(action=verdict.action, category=verdict.category, transfer=verdict.transfer)
            self._inference.metrics.safety_events.labels("input", verdict.category or verdict.action).inc()
            message = verdict.message or self._safety.refusal(language)
            return self._said(
                dialog,
                Answer(Source("safety", verdict.category), message, info=info),
                action="transfer" if verdict.transfer else None,
            )
        if knowledge is None:
            return self._model(
                text, profile, language, history, facts=None, knowledge=None, dialog=dialog, limits=limits
            )
        vector = await self._vector(text, language, knowledge.matcher)
        understood = understand(text, language, knowledge.matcher, self._intents, vector=vector)
        open_now = profile.transfer_target is not None
        if understood.kind == "intent" and understood.match is not None:
            return self._intent(understood.match.entry, profile, language, knowledge, dialog, open_now)
        if understood.kind == "entry" and understood.match is not None:
            entry = understood.match.entry
            dialog.misunderstood, dialog.pending = 0, None
            return self._entry(entry, language, knowledge, dialog, open_now)
        dialog.misunderstood += 1
        if dialog.misunderstood >= MISUNDERSTOOD_BEFORE_MENU:
            dialog.misunderstood, dialog.pending = 0, None
            return self._said(dialog, Answer(Source("fallback", "menu"), knowledge.text("menu", language)))
        closest = understood.match
        if (
            understood.kind == "unsure"
            and closest is not None
            and closest.entry in knowledge.base.entries
            and (closest.score >= CLARIFY_FLOOR or language not in GROUNDED_LANGUAGES)
        ):
            entry = closest.entry
            topic = entry.topics.get(language) or entry.topics.get(knowledge.base.languages[0]) or entry.id
            dialog.pending = entry
            return Answer(Source("fallback", "clarify"), knowledge.text("clarify", language, topic=topic))
        if language in GROUNDED_LANGUAGES:
            briefing = knowledge.briefing(open_now=open_now)
            near = _facts(text, vector, knowledge, open_now=open_now, kept=kept_facts if briefing is None else ())
            facts = Facts(briefing or near, briefed=briefing is not None, closest=near)
            return self._model(
                text, profile, language, history, facts=facts, knowledge=knowledge, dialog=dialog, limits=limits
            )
        dialog.pending = "transfer" if open_now else None
        return Answer(Source("fallback", "fallback"), knowledge.text("fallback", language))

    async def prompt_start(
        self,
        history: list[ChatMessage],
        *,
        profile: Profile,
        language: str,
        knowledge: Knowledge | None,
        question: str = "",
        kept_facts: tuple[str, ...] = (),
    ) -> PromptStart | None:
        """What the model would be prompted with if the caller's words went to it, up to the
        end of ``question``, their words so far: read ahead, it leaves the answer only what the
        caller says after them to read. Without ``question`` (the caller is listening) the facts
        stay empty too (a briefing is the knowledge base's, whatever the question). None where the
        model never answers this language, or for words too few to find facts by."""
        if knowledge is not None and language not in GROUNDED_LANGUAGES:
            return None
        if question and len(question.split()) < READ_AHEAD_WORDS:
            return None
        facts: Facts | None = None
        if knowledge is not None:
            open_now = profile.transfer_target is not None
            briefing = knowledge.briefing(open_now=open_now)
            if briefing is not None or not question:
                facts = Facts(briefing or (), briefed=briefing is not None)
            else:
                vector = await self._vector(question, language, knowledge.matcher)
                facts = Facts(_facts(question, vector, knowledge, open_now=open_now, kept=kept_facts))
        messages = _model_messages(question, facts, history, profile)
        return PromptStart(messages, () if facts is None else facts.texts)

    def menu(
        self, digit: str, *, profile: Profile, language: str, knowledge: Knowledge, dialog: Dialog
    ) -> Answer | None:
        """A keypad choice: the menu's entry, intent or language; None for a digit it lacks."""
        target = knowledge.base.menu.get(digit)
        if target is None:
            return None
        open_now = profile.transfer_target is not None
        if target.startswith("language:"):
            switch = next((i for i in self.intents if i.target_language == target.split(":", 1)[1]), None)
            if switch is not None:
                return self._intent(switch, profile, language, knowledge, dialog, open_now)
        entry = knowledge.base.entry(target)
        if entry is not None:
            return self._entry(entry, language, knowledge, dialog, open_now)
        intent = self.intent(target)
        return None if intent is None else self._intent(intent, profile, language, knowledge, dialog, open_now)

    # ----- the kinds of answer -----
    def _intent(
        self, intent: Entry, profile: Profile, language: str, knowledge: Knowledge, dialog: Dialog, open_now: bool
    ) -> Answer:
        source = Source("intent", intent.id)
        pending, dialog.pending = dialog.pending, None
        if intent.action == "yes" and pending is not None:
            if pending == "transfer":
                return self._intent(self.intent("human") or intent, profile, language, knowledge, dialog, open_now)
            return self._entry(pending, language, knowledge, dialog, open_now)
        if intent.action in ("yes", "no"):
            dialog.misunderstood = 0
            return Answer(source, knowledge.text("fallback", language))
        dialog.misunderstood = 0
        if intent.action == "repeat":
            return Answer(source, dialog.last_answer or knowledge.text("fallback", language))
        if intent.action == "menu":
            return self._said(dialog, Answer(source, knowledge.text("menu", language)))
        if intent.action == "language" and intent.target_language:
            target = intent.target_language
            return self._said(
                dialog,
                Answer(source, knowledge.answer(intent, target, open_now=True), action="language", language=target),
            )
        if intent.action == "transfer":
            action: Action | None = "transfer" if open_now else None
            return self._said(
                dialog, Answer(source, knowledge.answer(intent, language, open_now=open_now)), action=action
            )
        if intent.action == "goodbye":
            return self._said(
                dialog,
                Answer(source, knowledge.answer(intent, language, open_now=True) or profile.goodbye),
                action="goodbye",
            )
        return Answer(source, knowledge.text("fallback", language))

    def _entry(self, entry: Entry, language: str, knowledge: Knowledge, dialog: Dialog, open_now: bool) -> Answer:
        action = entry.action if entry.action != "transfer" or open_now else None
        return self._said(
            dialog,
            Answer(Source("knowledge", entry.id), knowledge.answer(entry, language, open_now=open_now)),
            action=action,
        )

    def _model(
        self,
        text: str,
        profile: Profile,
        language: str,
        history: list[ChatMessage],
        *,
        facts: Facts | None,
        knowledge: Knowledge | None,
        dialog: Dialog,
        limits: tuple[int | None, float | None],
    ) -> Answer:
        info = ReplyInfo()
        messages = _model_messages(text, facts, history, profile)
        max_tokens, temperature = limits
        check = None if knowledge is None or facts is None else FactCheck(facts.closest, text, facts.texts)
        phrases = safe_reply(
            self._inference,
            self._safety,
            messages,
            language=language,
            info=info,
            max_tokens=max_tokens,
            temperature=temperature,
            decided=None if check is None else check.decided,
        )
        answer = Answer(Source("llm", None), info=info)
        if knowledge is not None and check is not None:
            dont_know = knowledge.text("dont_know", language)
            answer.phrases = _grounded(phrases, check, dont_know, answer, dialog)
        else:
            answer.phrases = phrases
        return answer

    @staticmethod
    def _said(dialog: Dialog, answer: Answer, *, action: Action | None = None) -> Answer:
        if action is not None:
            answer.action = action
        if answer.text:
            dialog.last_answer = answer.text
        return answer


def _facts(
    text: str, vector: Vector | None, knowledge: Knowledge, *, open_now: bool, kept: tuple[str, ...]
) -> tuple[str, ...]:
    """The English answers of the ``FACTS`` entries closest to ``text``, starting with as many of
    ``kept`` (the facts this turn's first sentences were read ahead with), in their order, as
    leave out no entry clearly closer than they are, by the matcher's own margin.

    Kept, the prompt read ahead stays a prefix: the model reads only the caller's last sentence
    at the endpoint, not the facts again (0.4-0.8 s on two cores). The questions that reach the
    model match no entry well (their closest score under 0.3) and their closest few often score
    within a few hundredths of each other, so a fresh pick among those is no better for the
    caller; a last sentence that names what they need ("... a bad pain in my chest") makes its
    entry clearly closer, and it comes in. An entry that hands over (a transfer) says what the
    call does, which is no fact."""
    matcher = knowledge.matcher
    scores: dict[str, float] = {}  # closest first: the FACTS + 1 closest, and every kept fact
    unseen = set(kept)
    for entry, score, _ in matcher.ranked(text, "en", vector):
        if entry.action is None:
            fact = knowledge.answer(entry, "en", open_now=open_now)
            scores.setdefault(fact, score)
            unseen.discard(fact)
            if len(scores) > FACTS and not unseen:
                break
    closest = list(scores)
    meaning = vector is not None and matcher.wants_vector("en")
    still: list[str] = []
    for fact in kept:
        if fact not in scores:
            break
        chosen = _first_then_closest([*still, fact], closest)
        left_out = next((other for other in closest if other not in chosen), None)
        if left_out is not None and matcher.clear_of(scores[left_out], scores[fact], meaning=meaning):
            break
        still.append(fact)
    return _first_then_closest(still, closest)


def _first_then_closest(first: list[str], closest: list[str]) -> tuple[str, ...]:
    return tuple([*first, *(fact for fact in closest if fact not in first)][:FACTS])


def _model_messages(text: str, facts: Facts | None, history: list[ChatMessage], profile: Profile) -> list[ChatMessage]:
    """The model's prompt for ``text``: grounded on ``facts`` where a knowledge base is loaded."""
    if facts is None:
        return [ChatMessage("system", profile.system_prompt), *history, ChatMessage("user", text)]
    layout = briefed_messages if facts.briefed else grounded_messages
    return layout(text, list(facts.texts), history, profile.system_prompt)


async def _grounded(
    phrases: AsyncGenerator[str, None], check: FactCheck, dont_know: str, answer: Answer, dialog: Dialog
) -> AsyncGenerator[str, None]:
    """The model's phrases while they hold to the facts; at the first that does not, or that
    says the model does not know, the authored "I don't know" instead (it offers a counsellor,
    and a "yes" to it is heard as one: ``Dialog.pending``), and the model is stopped. The
    phrase splitter ends a phrase at the word that decides it (``FactCheck.decided``), so the
    authored words come as soon as the answer is lost."""
    spoken: list[str] = []
    async with aclosing(phrases):
        async for phrase in phrases:
            verdict = check.verdict(phrase)
            if verdict is not None:
                answer.source = Source("fallback", verdict)
                dialog.pending = "transfer"
                yield dont_know
                spoken.append(dont_know)
                break
            spoken.append(phrase)
            yield phrase
    dialog.last_answer = " ".join(p.strip() for p in spoken) or dialog.last_answer
