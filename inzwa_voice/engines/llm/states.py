"""Saved KV states of llama.cpp's one context, so each conversation keeps its read prompt.

One context serves every call, and it holds one prompt: the last one read. With three callers
taking turns, each turn found the context holding another call's conversation, and read its own
again from the end of the shared system part (200 tokens and more, 1-1.3 s on two cores, on the
caller's clock). A conversation's prompt start is read while the caller listens to the answer
(``LlamaCppLLM.prime``) and its KV cells are saved here: about 12 KB a token for the packaged
0.5B model, 3-4 ms to save and 1 ms to restore 450 tokens, against 2 s to read them again.

States are found by their tokens, not by call: a prompt gets the state that shares the longest
start with it. Bounded by bytes, least recently used first out; a state that a newer one holds
all but its last few tokens of (the same conversation, primed again a turn later) is dropped.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass

import llama_cpp
from llama_cpp import Llama

SUPERSEDED_TAIL = 32
"""A saved state whose tokens a newer one shares all but at most this many of is superseded: the
tail is the empty question a priming prompt ends with, and the newer one goes further."""


@dataclass(frozen=True)
class SavedState:
    tokens: tuple[int, ...]  # the token ids the KV cells hold, in order
    data: bytes  # ``llama_state_seq_get_data`` of sequence 0


class SavedStates:
    """KV states of sequence 0 of one llama.cpp context, at most ``limit_bytes`` of them, least
    recently used first. Not thread-safe: the engine uses it under its own lock."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self._states: list[SavedState] = []  # least recently used first

    def __len__(self) -> int:
        return len(self._states)

    @property
    def total_bytes(self) -> int:
        return sum(len(state.data) for state in self._states)

    def save(self, ctx: llama_cpp.llama_context_p, tokens: Sequence[int]) -> bool:
        """Save what the context holds for ``tokens`` (the tokens it has evaluated); False when
        it does not fit the limit."""
        size = int(llama_cpp.llama_state_seq_get_size(ctx, 0))
        if size > self.limit_bytes:
            return False
        buffer = (ctypes.c_uint8 * size)()
        written = int(llama_cpp.llama_state_seq_get_data(ctx, buffer, size, 0))
        return written > 0 and self.add(tokens, bytes(buffer)[:written])

    def add(self, tokens: Sequence[int], data: bytes) -> bool:
        """Keep ``data``, the state of ``tokens``, dropping what it supersedes and then the least
        recently used beyond the limit; False when it alone is over the limit."""
        if not tokens or len(data) > self.limit_bytes:
            return False
        state = SavedState(tuple(tokens), data)
        self._states = [
            old
            for old in self._states
            if Llama.longest_token_prefix(old.tokens, state.tokens) < len(old.tokens) - SUPERSEDED_TAIL
        ]
        self._states.append(state)
        while self.total_bytes > self.limit_bytes:
            del self._states[0]
        return True

    def best(self, tokens: Sequence[int]) -> tuple[int, SavedState | None]:
        """The saved state sharing the longest start with ``tokens``, and how many it shares."""
        shared, found = max(
            ((Llama.longest_token_prefix(state.tokens, tokens), state) for state in self._states),
            key=lambda pair: pair[0],
            default=(0, None),
        )
        if found is None or shared == 0:
            return 0, None
        self._states.remove(found)
        self._states.append(found)  # used now
        return shared, found

    @staticmethod
    def restore(ctx: llama_cpp.llama_context_p, state: SavedState) -> bool:
        """Put ``state`` back in sequence 0 (replacing what it held); False if llama.cpp refused."""
        buffer = (ctypes.c_uint8 * len(state.data)).from_buffer_copy(state.data)
        return int(llama_cpp.llama_state_seq_set_data(ctx, buffer, len(state.data), 0)) > 0
