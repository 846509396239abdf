"""The embedded LLM: llama.cpp through llama-cpp-python, streaming token by token.

One ``Llama`` context serves the whole process, so generations are serialised by a lock; each
runs in a worker thread and checks the stop event between tokens, which is how a barge-in or a
client disconnect stops the model within one token.

Two ways to prompt, picked per model:

* ``chat``: an instruction-tuned model (the packaged Qwen2.5 0.5B Instruct) is prompted through
  the chat template its GGUF carries, rendered by llama-cpp-python's own ``Jinja2ChatFormatter``
  exactly as its ``create_chat_completion`` does. The engine renders and tokenizes the prompt
  itself so it can drop the oldest turns until the prompt fits the context, and so an
  assistant prefill continues inside the assistant's turn.
* ``transcript``: a base model (the packaged Gemma 3 270M) continues a helpline transcript
  (``prompt.render``).

The KV cache: llama-cpp-python keeps the previous prompt's evaluated tokens and re-evaluates
only what follows the longest common prefix. Every prompt starts with its system part, which
changes only with the profile (see ``grounding.grounded_messages``), then the conversation so
far. ``prime`` reads a prompt start while nobody waits for it (the conversation primes each
call's next turn while the caller listens to the answer, and its model profile's system part at
start-up) and saves its KV state (``states.SavedStates``); a prompt that shares a longer start
with a saved state than with the context gets that state back, so a turn reads only its facts
and question even when other calls used the context in between. ``warm`` only pages the weights
in.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import threading
from collections.abc import AsyncGenerator, Callable, Generator, Iterator, Mapping
from concurrent.futures import Executor
from contextlib import aclosing, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import llama_cpp
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from inzwa_voice.aio import iterate_in_thread, with_deadlines
from inzwa_voice.config import Settings
from inzwa_voice.engines import models
from inzwa_voice.engines.base import DEFAULT_GENERATION, PROMPT_READ, ChatMessage, GenerationDefaults, ModelInfo
from inzwa_voice.engines.llm import generation_defaults, prompt
from inzwa_voice.engines.llm.states import SavedStates

PromptFormat = Literal["chat", "transcript"]


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF that ships inside packages: where it is assembled from, and how it is prompted."""

    locate: Callable[[Path], tuple[Path, str]]  # data_dir -> (verified GGUF, its SHA256)
    prompt_format: PromptFormat


# The values of ``Settings.llm_model``; a test keeps the two in step.
PACKAGED: Mapping[str, PackagedModel] = {
    "qwen2.5-0.5b-instruct": PackagedModel(models.qwen_instruct_gguf, "chat"),
    "gemma3-270m": PackagedModel(models.gemma_gguf, "transcript"),
}


PREFILL_CHUNK = 64
"""Prompt tokens evaluated between two looks at whether the generation is still wanted."""
PRIME_CHUNK = 16
"""The same for ``prime``, which nobody waits for: a decode or an answer that wants the cores
gets them within 16 tokens (about 80 ms on two cores), at some cost in reading speed."""
RESTORE_GAIN = 16
"""A saved state is put back only when it spares reading more than this many tokens."""


class PromptTooLongError(ValueError):
    pass


_native_log = logging.getLogger("llama_cpp")
# ggml_log_level (ggml.h): 3 WARN, 4 ERROR; 1 DEBUG and 2 INFO are chatter about tensors and
# buffers, which an operator needs only when debugging; 5 continues the line before. (The table in
# llama-cpp-python's own callback is an older enum's: it printed every WARN raw to stderr.)
_NATIVE_LEVELS = {3: logging.WARNING, 4: logging.ERROR}
_NATIVE_CONTINUES = 5


class _NativeLog:
    """llama.cpp's own log, which it writes raw to stderr in pieces, as whole lines through
    ``logging`` (so they are JSON like every other line): errors and warnings at their level,
    the rest at DEBUG."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pieces: list[str] = []
        self._level = logging.DEBUG
        # Kept here: llama.cpp holds only a pointer to the ctypes callback.
        self.callback = llama_cpp.llama_log_callback(self._piece)

    def _piece(self, level: int, text: bytes | None, _user_data: ctypes.c_void_p) -> None:
        with self._lock:
            if level != _NATIVE_CONTINUES:
                self._level = _NATIVE_LEVELS.get(level, logging.DEBUG)
            self._pieces.append((text or b"").decode("utf-8", "replace"))
            if not self._pieces[-1].endswith("\n"):
                return
            line, level_now = "".join(self._pieces).strip(), self._level
            self._pieces.clear()
        if line:
            _native_log.log(level_now, line)


_NATIVE = _NativeLog()
llama_cpp.llama_log_set(_NATIVE.callback, ctypes.c_void_p(0))


@dataclass(frozen=True)
class _Prompt:
    tokens: list[int]
    stop: list[str]


class LlamaCppLLM:
    def __init__(
        self,
        model_path: Path,
        executor: Executor,
        *,
        name: str | None = None,
        prompt_format: PromptFormat | Literal["auto"] = "auto",
        n_ctx: int = 2048,
        threads: int = 2,
        defaults: GenerationDefaults = DEFAULT_GENERATION,
        saved_states_bytes: int = 0,
    ) -> None:
        self.name = name or model_path.stem
        self._llm = Llama(
            model_path=str(model_path),
            n_ctx=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        template = self._llm.metadata.get("tokenizer.chat_template")
        if prompt_format == "auto":
            prompt_format = "chat" if template else "transcript"
        self._chat: Jinja2ChatFormatter | None = None
        self._eos = self._token_text(self._llm.token_eos())
        if prompt_format == "chat":
            if not template:
                self._llm.close()
                raise models.ModelError(f"{model_path} carries no chat template: prompt it as a transcript")
            self._chat = Jinja2ChatFormatter(
                template=template, eos_token=self._eos, bos_token=self._token_text(self._llm.token_bos())
            )
        self.prompt_format: PromptFormat = prompt_format
        self._lock = threading.Lock()
        self._executor = executor
        self._n_ctx = n_ctx
        self._defaults = defaults
        self._states = SavedStates(saved_states_bytes) if saved_states_bytes > 0 else None
        self.prompt_use: dict[str, int] = {"read": 0, "reused": 0, "restored": 0}
        """Prompt tokens so far: evaluated, found in the context, taken from a saved state."""

    def _token_text(self, token: int) -> str:
        return "" if token < 0 else self._llm.detokenize([token], special=True).decode("utf-8", "replace")

    def _render_chat(self, chat: Jinja2ChatFormatter, messages: list[ChatMessage]) -> _Prompt:
        """The chat template's prompt: one system message first (the request's, else the default)."""
        system = "\n\n".join(m.content.strip() for m in messages if m.role == "system") or self._defaults.system_prompt
        turns = [m for m in messages if m.role != "system"]
        prefill = turns.pop().content if turns and turns[-1].role == "assistant" else ""
        rendered = [{"role": "system", "content": system}] if system else []
        rendered += [{"role": m.role, "content": m.content} for m in turns]
        text = chat(messages=rendered).prompt + prefill  # type: ignore[arg-type]
        # The template writes its own special tokens (as llama-cpp-python's chat handler assumes).
        return _Prompt(self._llm.tokenize(text.encode(), add_bos=False, special=True), [self._eos])

    def _render(self, messages: list[ChatMessage]) -> _Prompt:
        if self._chat is not None:
            return self._render_chat(self._chat, messages)
        text = prompt.render(messages, self._defaults.system_prompt)
        return _Prompt(self._llm.tokenize(text.encode(), add_bos=True), list(prompt.STOP_SEQUENCES))

    def _fit(self, messages: list[ChatMessage], max_tokens: int) -> _Prompt:
        """Render the prompt, dropping the oldest turns until it leaves room for the answer."""
        turns = sum(1 for m in messages if m.role != "system")
        for keep in range(max(turns, 1), 0, -1):
            rendered = self._render(prompt.trim_history(messages, keep))
            if len(rendered.tokens) + max_tokens <= self._n_ctx:
                return rendered
        raise PromptTooLongError(f"the last message does not fit the {self._n_ctx}-token context")

    def _generate(
        self,
        messages: list[ChatMessage],
        max_tokens: int,
        temperature: float,
        stop: list[str],
    ) -> Generator[str, None, None]:
        with self._lock:
            rendered = self._fit(messages, max_tokens)
            try:
                yield from self._prefill(rendered.tokens)
                for chunk in self._llm.create_completion(
                    rendered.tokens,
                    max_tokens=max_tokens,
                    temperature=temperature,
                    stop=rendered.stop + stop,
                    stream=True,
                ):
                    piece = str(chunk["choices"][0]["text"])  # type: ignore[index]
                    if piece:
                        yield piece
            except GeneratorExit:
                # Stopped part way: it may have given way to a more urgent generation and be
                # asked again to go on (``engines.turn_taking``), so what it read and wrote is kept.
                self._save()
                raise

    def _prefill(self, tokens: list[int], chunk: int = PREFILL_CHUNK) -> Iterator[str]:
        """Evaluate the prompt past the cached prefix (in the context, or in the saved state
        that shares the most of it) ``chunk`` tokens at a time, with an empty piece
        (``base.PROMPT_READ``) after each chunk.

        llama.cpp evaluates a prompt in one uninterruptible call, and a grounded prompt's new
        part (facts, history, question: 100-200 tokens) takes 1-2 s on two cores. In one call,
        a speculative answer begun at a pause held the model, and the scheduler's slot, that
        long: the caller's next stretch, or another caller's final transcript, waited behind it,
        and a dropped one could not stop. Each chunk is a step the reader asked for, so between
        chunks the slot goes to more urgent work and a dropped generation ends. The last token
        is left for ``create_completion``, which finds the rest cached and samples after it.
        """
        llm = self._llm
        cached = Llama.longest_token_prefix(llm.input_ids[: llm.n_tokens].tolist(), tokens)
        restored = self._restore(tokens, cached)
        cached = max(cached, restored)
        # ``eval`` drops the KV cache past this. Never the whole prompt: its last token is always
        # evaluated again, else a prompt found whole in the cache (a repeated question, whose
        # earlier answer followed it) would be sampled from the logits of that answer's last token.
        llm.n_tokens = min(llm.n_tokens, cached, len(tokens) - 1)
        kept = llm.n_tokens
        self.prompt_use["restored" if restored else "reused"] += kept
        for start in range(kept, len(tokens) - 1, chunk):
            llm.eval(tokens[start : min(start + chunk, len(tokens) - 1)])
            self.prompt_use["read"] += llm.n_tokens - start
            yield PROMPT_READ

    def _save(self) -> None:
        """Keep the context's KV state for the tokens it holds (``states.SavedStates``)."""
        if self._states is not None and self._llm.n_tokens > 0:
            self._states.save(self._llm.ctx, self._llm.input_ids[: self._llm.n_tokens].tolist())

    def _restore(self, tokens: list[int], cached: int) -> int:
        """Put back the saved state sharing the longest start with ``tokens`` if it spares
        reading more than ``RESTORE_GAIN`` tokens beyond the ``cached`` ones; how many it shares
        (0: none put back)."""
        if self._states is None:
            return 0
        shared, state = self._states.best(tokens)
        if state is None or shared <= cached + RESTORE_GAIN:
            return 0
        llm = self._llm
        if not SavedStates.restore(llm.ctx, state):
            llm.reset()  # type: ignore[no-untyped-call]  # llama.cpp cleared the sequence
            return 0
        llm.input_ids[: len(state.tokens)] = state.tokens
        llm.n_tokens = len(state.tokens)
        return shared

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
        stops = list(stop or [])

        def factory(stop_event: threading.Event) -> Iterator[str]:
            with closing(self._generate(messages, limit, temp, stops)) as pieces:
                for piece in pieces:
                    if stop_event.is_set():
                        return
                    yield piece

        # Nothing read ahead: the scheduler hands the cores to more urgent work between tokens
        # (and between chunks of the prompt), and a generation running ahead of its reader
        # would keep them.
        source = iterate_in_thread(self._executor, factory, on_demand=True)
        limited = with_deadlines(source, item_timeout=d.token_timeout_s, total_timeout=d.timeout_s)
        async with aclosing(limited):
            async for piece in limited:
                yield piece

    async def prime(self, messages: list[ChatMessage]) -> AsyncGenerator[str, None]:
        """Read the prompt ``messages`` make, ``PRIME_CHUNK`` tokens a step (``PROMPT_READ``
        after each), and save its KV state: a later prompt that starts the same way reads only
        what follows, whatever ran in between. Stopped part way, what was read stays in the
        context (and is not saved)."""

        def factory(stop_event: threading.Event) -> Iterator[str]:
            with self._lock:
                rendered = self._fit(messages, self._defaults.max_tokens)
                for piece in self._prefill(rendered.tokens, PRIME_CHUNK):
                    if stop_event.is_set():
                        return
                    yield piece
                self._save()

        source = iterate_in_thread(self._executor, factory, on_demand=True)
        async with aclosing(source):
            async for piece in source:
                yield piece

    def count_tokens(self, text: str) -> int:
        """How many tokens ``text`` is to this model (benchmarks count generated tokens with it)."""
        return len(self._llm.tokenize(text.encode(), add_bos=False))

    def prompt_tokens(self, messages: list[ChatMessage], max_tokens: int | None = None) -> list[int]:
        """The tokens the model would be prompted with for ``messages`` (after fitting the context)."""
        return self._fit(messages, max_tokens or self._defaults.max_tokens).tokens

    def reset_cache(self) -> None:
        """Forget the evaluated prompt and the saved states, so the next prompt is evaluated
        from its first token."""
        with self._lock:
            self._llm.reset()  # type: ignore[no-untyped-call]
            if self._states is not None:
                self._states = SavedStates(self._states.limit_bytes)

    def warm(self) -> None:
        """Page the weights in with one token of a short prompt. What the KV cache should hold is
        the conversation's to say: it primes it with its default profile's grounded system part,
        which is not the one ``llm_system_prompt`` would give (that one a profile never uses)."""
        warmup = [ChatMessage("user", "Hello?")]
        with self._lock:
            rendered = self._render(warmup)
            for _ in self._llm.create_completion(rendered.tokens, max_tokens=1, stream=True):
                pass

    async def close(self) -> None:
        """Free the model once no thread is using it: a stopped stream's thread may still be
        evaluating its last token, and freeing the model under it corrupts the heap."""

        def free() -> None:
            with self._lock:
                self._llm.close()

        await asyncio.to_thread(free)


def _operator_model(path: Path) -> Path:
    if not path.is_file():
        problem = "is a folder" if path.is_dir() else "does not exist"
        raise models.ModelError(f"INZWA_LLM_MODEL_PATH={path}: {problem}; point it at a GGUF model file")
    return path


def load(settings: Settings, executor: Executor) -> tuple[LlamaCppLLM, ModelInfo]:
    """``llm_engine = "llama-cpp"``: the packaged ``llm_model``, or the GGUF at ``llm_model_path``."""
    name: str | None
    if settings.llm_model_path:
        gguf, digest, name = _operator_model(settings.llm_model_path), None, None
        fmt: PromptFormat | Literal["auto"] = settings.llm_prompt_format
    else:
        packaged = PACKAGED[settings.llm_model]
        (gguf, digest), name = packaged.locate(settings.data_dir), settings.llm_model
        fmt = packaged.prompt_format if settings.llm_prompt_format == "auto" else settings.llm_prompt_format
    try:
        llm = LlamaCppLLM(
            gguf,
            executor,
            name=name,
            prompt_format=fmt,
            n_ctx=settings.llm_context,
            threads=settings.llm_threads or settings.run_threads,
            defaults=generation_defaults(settings),
            saved_states_bytes=settings.llm_saved_states_mb * 1024 * 1024,
        )
    except models.ModelError as exc:
        raise models.ModelError(f"INZWA_LLM_PROMPT_FORMAT={fmt}: {exc}") from None
    except ValueError as exc:  # llama-cpp-python's "Failed to load model from file"
        setting = f"INZWA_LLM_MODEL_PATH={gguf}" if settings.llm_model_path else f"INZWA_LLM_MODEL={name} ({gguf})"
        raise models.ModelError(f"{setting}: llama.cpp cannot load it as a GGUF model: {exc}") from exc
    capabilities = ["chat", "completion", "chat-template" if llm.prompt_format == "chat" else "transcript"]
    return llm, models.file_info(llm.name, "llm", gguf, digest, capabilities)
