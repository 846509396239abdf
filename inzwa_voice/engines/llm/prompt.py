"""Chat messages rendered as a completion prompt for a base (not chat-tuned) model.

The packaged Gemma 3 270M is a base model: it continues text. A helpline transcript with
speaker labels is the text it continues best, and the labels double as stop sequences, so the
model stops when it starts writing the caller's next line.
"""

from __future__ import annotations

from inzwa_voice.engines.base import ChatMessage

USER_LABEL = "Caller"
ASSISTANT_LABEL = "Helper"
STOP_SEQUENCES = [f"\n{USER_LABEL}:", f"\n{ASSISTANT_LABEL}:", f"{USER_LABEL}:", "\n\n"]
_LABELS = {"user": USER_LABEL, "assistant": ASSISTANT_LABEL}

# Two example exchanges teach a base model the register of the call; without them the 270M
# model mostly echoes the caller's words back.
EXAMPLES = [
    ChatMessage("user", "I feel lonely and I don't know who to talk to."),
    ChatMessage("assistant", "I'm sorry you feel alone. I'm here to listen, can you tell me what has been happening?"),
    ChatMessage("user", "Where can I get food for my children?"),
    ChatMessage("assistant", "You can ask at the nearest social welfare office, they run a food support programme."),
]


def render(messages: list[ChatMessage], default_system: str) -> str:
    """The transcript prompt, ending with the assistant's label for the model to continue.

    When the last message is the assistant's, it is a prefill (as OpenAI-compatible servers
    allow): the prompt ends inside that line and the model continues it.
    """
    system = " ".join(m.content.strip() for m in messages if m.role == "system") or default_system
    lines = [f"Below is a phone call to a helpline. {system.strip()}", ""]
    for message in EXAMPLES + messages:
        if message.role == "system":
            continue
        text = " ".join(message.content.split())
        lines.append(f"{_LABELS[message.role]}: {text}")
    if messages and messages[-1].role == "assistant":
        return "\n".join(lines)  # a prefilled answer: the model continues it
    lines.append(f"{ASSISTANT_LABEL}:")
    return "\n".join(lines)


def trim_history(messages: list[ChatMessage], keep_last: int) -> list[ChatMessage]:
    """Keep the system messages and the last ``keep_last`` turns, so prompts fit the context."""
    system = [m for m in messages if m.role == "system"]
    turns = [m for m in messages if m.role != "system"]
    return system + turns[-keep_last:]
