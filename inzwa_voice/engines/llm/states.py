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
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import llama_cpp
import numpy as np

SUPERSEDED_TAIL = 32
"""A saved state whose tokens a newer one shares all but at most this many of is superseded: the
tail is the empty question a priming prompt ends with, and the newer one goes further."""


@dataclass(frozen=True)
class SavedState:
    tokens: np.ndarray  # the token ids the KV cells hold, in order
    data: bytes  # ``llama_state_seq_get_data`` of sequence 0


def shared_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """How many tokens ``a`` and ``b`` share from their start."""
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


class SavedStates:
    """KV states of sequence 0 of one llama.cpp context, at most ``limit_bytes`` of them. Not
    thread-safe: the engine uses it under its own lock."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self._states: OrderedDict[int, SavedState] = OrderedDict()
        self._next = 0
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._states)

    def save(self, ctx: llama_cpp.llama_context_p, tokens: Sequence[int]) -> bool:
        """Save what the context holds for ``tokens`` (the tokens it has evaluated); False when
        it does not fit the limit."""
        size = int(llama_cpp.llama_state_seq_get_size(ctx, 0))
        if not tokens or size > self.limit_bytes:
            return False
        buffer = (ctypes.c_uint8 * size)()
        written = int(llama_cpp.llama_state_seq_get_data(ctx, buffer, size, 0))
        return written > 0 and self.add(tokens, bytes(buffer)[:written])

    def add(self, tokens: Sequence[int], data: bytes) -> bool:
        """Keep ``data``, the state of ``tokens``, dropping what it supersedes and then the least
        recently used beyond the limit; False when it alone is over the limit."""
        if not tokens or len(data) > self.limit_bytes:
            return False
        state = SavedState(np.asarray(tokens, dtype=np.int64).copy(), data)
        for key, old in list(self._states.items()):
            if shared_prefix(old.tokens, state.tokens) >= len(old.tokens) - SUPERSEDED_TAIL:
                self._drop(key)
        self._states[self._next] = state
        self._next += 1
        self.bytes += len(state.data)
        while self.bytes > self.limit_bytes:
            self._drop(next(iter(self._states)))
        return True

    def best(self, tokens: Sequence[int]) -> tuple[int, SavedState | None]:
        """The saved state sharing the longest start with ``tokens``, and how many it shares."""
        wanted = np.asarray(tokens, dtype=np.int64)
        best_shared, best_key = 0, None
        for key, state in self._states.items():
            shared = shared_prefix(state.tokens, wanted)
            if shared > best_shared:
                best_shared, best_key = shared, key
        if best_key is None:
            return 0, None
        self._states.move_to_end(best_key)
        return best_shared, self._states[best_key]

    @staticmethod
    def restore(ctx: llama_cpp.llama_context_p, state: SavedState) -> bool:
        """Put ``state`` back in sequence 0 (replacing what it held); False if llama.cpp refused."""
        buffer = (ctypes.c_uint8 * len(state.data)).from_buffer_copy(state.data)
        return int(llama_cpp.llama_state_seq_set_data(ctx, buffer, len(state.data), 0)) > 0

    def _drop(self, key: int) -> None:
        state = self._states.pop(key)
        self.bytes -= len(state.data)
