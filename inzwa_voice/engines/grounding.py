"""The prompt of a grounded answer: an instruction-tuned model answering only from the facts
the conversation found in the helpline's knowledge base.

It lives beside the engine protocols, not in an engine: the conversation builds each turn's
messages with it (and reads their stable start into the model's KV cache at start-up), and the
LLM benchmark prompts the model the same way.
"""

from __future__ import annotations

from inzwa_voice.engines.base import ChatMessage

DONT_KNOW = "I don't know that, shall I connect you to a counsellor?"
"""What the model is shown saying when the facts do not hold the answer."""

GROUNDING_RULES = (
    "You answer callers on a phone line. Each question comes with facts from the helpline's knowledge base. "
    "Answer only from those facts, in one or two short sentences that can be spoken aloud, with no lists or "
    "markdown. Never make up a number, time, day, place or phone number. If the facts do not answer the "
    "question, say you do not know and offer a counsellor."
)

QUESTION_TEMPLATE = "Facts:\n{facts}\n\nCaller's question: {question}"
BRIEFED_QUESTION = "Caller's question: {question}"
BRIEFING_ACK = "I will answer only from these facts."
"""What the model is shown saying to a briefing (``briefed_messages``)."""

# Worked exchanges after the rules, two answered from their facts and two that the facts do not
# answer. Measured on the packaged 0.5B instruct model (loadtest/bench_llm.py): the rules alone
# leave it answering nearly everything; a quoted "reply exactly ..." makes it refuse nearly
# everything; these examples keep most answers and some refusals. They hold no day, time or
# number a model could copy into an answer, and being fixed they stay in the cached prefix.
_BIRTH = ("Birth certificates are issued at the registry office in town.", "Bring the baby's clinic card.")
_WATER = ("Boil water from wells before you drink it.",)
GROUNDED_EXAMPLES: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (_BIRTH, "Where do I get a birth certificate?", "You can get it at the registry office in town."),
    (_BIRTH, "How much does a birth certificate cost?", DONT_KNOW),
    (_WATER, "What is the phone number of the water company?", DONT_KNOW),
    (_WATER, "Is the water from the well safe to drink?", "Boil it before you drink it."),
)


def _listed(facts: list[str] | tuple[str, ...]) -> str:
    lines = [f"- {' '.join(fact.split())}" for fact in facts if fact.strip()]
    return "\n".join(lines) if lines else "- (no facts were found for this question)"


def _ask(question: str, facts: list[str] | tuple[str, ...]) -> str:
    return QUESTION_TEMPLATE.format(facts=_listed(facts), question=" ".join(question.split()))


def _conversation(history: list[ChatMessage]) -> list[ChatMessage]:
    """The turns said so far, as they were said: the history's own system message and empty
    turns are left out (each layout puts its own system part first)."""
    return [ChatMessage(m.role, m.content) for m in history if m.role != "system" and m.content.strip()]


def grounded_system(system: str) -> str:
    """The system message of every grounded prompt: the profile's own prompt, then the rules.

    It depends on the profile alone, never on the question or the facts, so the model's KV cache
    keeps its tokens from one turn (and one call) to the next.
    """
    return f"{system.strip()}\n\n{GROUNDING_RULES}" if system.strip() else GROUNDING_RULES


def grounded_messages(question: str, facts: list[str], history: list[ChatMessage], system: str) -> list[ChatMessage]:
    """The messages for an answer grounded on ``facts`` (authored knowledge-base answers).

    Layout, stable first: the system message (``grounded_system``) and the worked examples,
    which change only with the profile; the conversation so far (its user and assistant turns,
    as they were said); then one user message holding this turn's facts and the caller's
    question. Only that last message is new each turn, so llama.cpp's prefix cache covers the
    system part (and, within a call, the history). Pure: no model is needed.
    """
    examples: list[ChatMessage] = []
    for example_facts, example_question, example_answer in GROUNDED_EXAMPLES:
        examples += [
            ChatMessage("user", _ask(example_question, example_facts)),
            ChatMessage("assistant", example_answer),
        ]
    return [
        ChatMessage("system", grounded_system(system)),
        *examples,
        *_conversation(history),
        ChatMessage("user", _ask(question, facts)),
    ]


def briefed_messages(question: str, facts: list[str], history: list[ChatMessage], system: str) -> list[ChatMessage]:
    """The messages for an answer grounded on the whole knowledge base: ``facts`` are all its
    answers, given once, before the conversation, instead of the closest few with each question.

    Layout: the system message; the worked examples' facts as a briefing, acknowledged, and their
    questions and answers; "New call." with ``facts`` as the briefing, acknowledged; the
    conversation so far; this turn's question alone. Everything before the question depends on
    the profile (and the knowledge base) alone, so it is read once and saved for every call, and
    a turn reads only the caller's words: no facts to read again when the caller's last sentence
    finds other entries than their first ones did (0.4-0.8 s on two cores). Pure: no model is
    needed.
    """
    example_facts = tuple(dict.fromkeys(fact for facts_, _, _ in GROUNDED_EXAMPLES for fact in facts_))
    messages = [
        ChatMessage("system", grounded_system(system)),
        ChatMessage("user", f"Facts:\n{_listed(example_facts)}"),
        ChatMessage("assistant", BRIEFING_ACK),
    ]
    for _, example_question, example_answer in GROUNDED_EXAMPLES:
        messages += [
            ChatMessage("user", BRIEFED_QUESTION.format(question=example_question)),
            ChatMessage("assistant", example_answer),
        ]
    messages += [
        ChatMessage("user", f"New call. Facts:\n{_listed(facts)}"),
        ChatMessage("assistant", BRIEFING_ACK),
    ]
    question_alone = ChatMessage("user", BRIEFED_QUESTION.format(question=" ".join(question.split())))
    return [*messages, *_conversation(history), question_alone]
