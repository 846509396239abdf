"""Conversation memory: what the caller said and what the caller actually heard.

The assistant's words enter memory only when they were played, whole or cut at a barge-in, so
the model never believes it said something the caller did not hear.
"""

from __future__ import annotations

from inzwa_voice.engines.base import ChatMessage


class Memory:
    def __init__(self, system_prompt: str, max_turns: int = 12) -> None:
        self.system_prompt = system_prompt
        self.max_turns = max_turns
        self._messages: list[ChatMessage] = []

    def add(self, role: str, text: str) -> None:
        text = text.strip()
        if not text or role not in ("user", "assistant"):
            return
        self._messages.append(ChatMessage(role, text))  # type: ignore[arg-type]
        del self._messages[: -2 * self.max_turns]

    def prompt(self, pending_user: str | None = None) -> list[ChatMessage]:
        """System prompt, remembered turns, and the caller's turn not yet committed."""
        messages = [ChatMessage("system", self.system_prompt), *self._messages]
        if pending_user:
            messages.append(ChatMessage("user", pending_user))
        return messages

    @property
    def messages(self) -> list[ChatMessage]:
        return list(self._messages)
