"""The embedded LLM: llama.cpp through llama-cpp-python, streaming token by token.

One ``Llama`` context serves the whole process, so generations are serialised by a lock; each
runs in a worker thread and checks the stop event between tokens, which is how a barge-in or a
client disconnect stops the model within one token.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncGenerator, Iterator
from concurrent.futures import Executor
from contextlib import aclosing
from pathlib import Path

from llama_cpp import Llama

from inzwa_voice.aio import iterate_in_thread, with_deadlines
from inzwa_voice.engines.base import DEFAULT_GENERATION, ChatMessage, GenerationDefaults
from inzwa_voice.engines.llm import prompt


class PromptTooLongError(ValueError):
    pass


class LlamaCppLLM:
    def __init__(
        self,
        model_path: Path,
        executor: Executor,
        *,
        n_ctx: int = 2048,
        threads: int = 2,
        defaults: GenerationDefaults = DEFAULT_GENERATION,
    ) -> None:
        self.name = model_path.stem
        self._llm = Llama(
            model_path=str(model_path),
            n_ctx=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        self._lock = threading.Lock()
        self._executor = executor
        self._n_ctx = n_ctx
        self._defaults = defaults

    def _fit(self, messages: list[ChatMessage], max_tokens: int) -> str:
        """Render the prompt, dropping the oldest turns until it leaves room for the answer."""
        turns = sum(1 for m in messages if m.role != "system")
        for keep in range(turns, 0, -1):
            text = prompt.render(prompt.trim_history(messages, keep), self._defaults.system_prompt)
            if len(self._llm.tokenize(text.encode(), add_bos=True)) + max_tokens <= self._n_ctx:
                return text
        raise PromptTooLongError(f"the last message does not fit the {self._n_ctx}-token context")

    def _generate(
        self, messages: list[ChatMessage], max_tokens: int, temperature: float, stop: list[str]
    ) -> Iterator[str]:
        with self._lock:
            text = self._fit(messages, max_tokens)
            for chunk in self._llm.create_completion(
                text, max_tokens=max_tokens, temperature=temperature, stop=stop, stream=True
            ):
                piece = str(chunk["choices"][0]["text"])  # type: ignore[index]
                if piece:
                    yield piece

    async def stream(
        self,
        messages: list[ChatMessage],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        stop: list[str] | None = None,
    ) -> AsyncGenerator[str, None]:
        d = self._defaults
        limit = max_tokens or d.max_tokens
        temp = d.temperature if temperature is None else temperature
        stops = prompt.STOP_SEQUENCES + (stop or [])

        def factory(stop_event: threading.Event) -> Iterator[str]:
            for piece in self._generate(messages, limit, temp, stops):
                if stop_event.is_set():
                    return
                yield piece

        source = iterate_in_thread(self._executor, factory)
        limited = with_deadlines(source, item_timeout=d.token_timeout_s, total_timeout=d.timeout_s)
        async with aclosing(limited):
            async for piece in limited:
                yield piece

    def warm(self) -> None:
        """Evaluate a short prompt once so weights are paged in before the first caller."""
        with self._lock:
            self._llm.create_completion("Hello", max_tokens=1)

    async def close(self) -> None:
        self._llm.close()
