"""Any OpenAI-compatible chat server (vLLM, llama.cpp's server, another gateway) over HTTP.

This is the GPU path: the gateway streams ``/chat/completions`` with ``stream: true`` and
relays content deltas. Connection failures are retried with a short back-off before the first
byte; once tokens flow, a failure ends the answer (a retry would repeat words already spoken).

A server that cannot be reached or answers with an error raises
:class:`~inzwa_voice.engines.base.LLMUnavailableError`, so a call speaks its apology and
``/v1/chat`` its authored fallback; :meth:`OpenAICompatibleLLM.problem` tells ``/health`` why
the gateway is ``degraded`` (the last failure, or a probe of ``/models``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator
from concurrent.futures import Executor
from contextlib import aclosing

import aiohttp

from inzwa_voice.aio import with_deadlines
from inzwa_voice.config import Settings
from inzwa_voice.engines.base import (
    DEFAULT_GENERATION,
    ChatMessage,
    GenerationDefaults,
    LLMUnavailableError,
    ModelInfo,
)
from inzwa_voice.engines.llm import generation_defaults

PROBE_EVERY_S = 10.0
"""``/health`` may be polled every second: the server is asked at most this often."""
PROBE_TIMEOUT_S = 3.0


class RemoteLLMError(LLMUnavailableError):
    pass


class OpenAICompatibleLLM:
    def __init__(
        self,
        base_url: str,
        *,
        model: str,
        api_key: str | None = None,
        connect_retries: int = 2,
        defaults: GenerationDefaults = DEFAULT_GENERATION,
    ) -> None:
        self.name = model
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._model = model
        self._defaults = defaults
        self._retries = connect_retries
        self._session: aiohttp.ClientSession | None = None
        self._models_url = base_url.rstrip("/") + "/models"
        self._problem: str | None = None
        self.prompt_use: dict[str, int] = {}  # the server counts its own
        self._checked_at = float("-inf")

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=self._defaults.token_timeout_s)
            )
        return self._session

    def _note(self, problem: str | None) -> None:
        """What the last request or probe found: ``problem`` tells ``/health`` until the next."""
        self._problem, self._checked_at = problem, time.monotonic()

    async def _open(self, body: dict[str, object]) -> aiohttp.ClientResponse:
        try:
            response = await self._connect(body)
        except RemoteLLMError as exc:
            self._note(str(exc))
            raise
        self._note(None)
        return response

    async def _connect(self, body: dict[str, object]) -> aiohttp.ClientResponse:
        delay = 0.2
        for attempt in range(self._retries + 1):
            try:
                response = await self._client().post(self._url, json=body, headers=self._headers)
            except aiohttp.ClientConnectionError as exc:
                if attempt == self._retries:
                    raise RemoteLLMError(f"cannot reach the LLM server at {self._url}: {exc}") from exc
                await asyncio.sleep(delay)
                delay *= 2
                continue
            if response.status != 200:
                detail = (await response.text())[:300]
                response.release()
                raise RemoteLLMError(f"LLM server answered {response.status}: {detail}")
            return response
        raise AssertionError("unreachable")

    async def problem(self) -> str | None:
        """Why the server cannot answer now, or None: the last generation's outcome, or a GET of
        its ``/models`` when nothing was asked for ``PROBE_EVERY_S``."""
        if time.monotonic() - self._checked_at < PROBE_EVERY_S:
            return self._problem
        timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
        try:
            async with self._client().get(self._models_url, headers=self._headers, timeout=timeout) as response:
                # 404: a server without a model list still serves completions.
                ok = response.status < 400 or response.status == 404
                self._note(None if ok else f"the LLM server at {self._models_url} answered {response.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._note(f"cannot reach the LLM server at {self._models_url}: {exc or type(exc).__name__}")
        return self._problem

    async def _deltas(self, body: dict[str, object]) -> AsyncGenerator[str, None]:
        response = await self._open(body)
        try:
            async for raw in response.content:
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                try:
                    choice = json.loads(data)["choices"][0]
                except (ValueError, KeyError, IndexError) as exc:
                    raise RemoteLLMError(f"malformed stream chunk from the LLM server: {data[:200]}") from exc
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    yield piece
        finally:
            response.close()

    async def stream(
        self,
        messages: list[ChatMessage],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        stop: list[str] | None = None,
    ) -> AsyncGenerator[str, None]:
        d = self._defaults
        if not any(m.role == "system" for m in messages) and d.system_prompt:
            messages = [ChatMessage("system", d.system_prompt), *messages]
        body: dict[str, object] = {
            "model": self._model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": True,
            "max_tokens": max_tokens or d.max_tokens,
            "temperature": d.temperature if temperature is None else temperature,
        }
        if stop:
            body["stop"] = stop
        limited = with_deadlines(self._deltas(body), item_timeout=d.token_timeout_s, total_timeout=d.timeout_s)
        async with aclosing(limited):
            async for piece in limited:
                yield piece

    async def prime(self, messages: list[ChatMessage]) -> AsyncGenerator[str, None]:
        """Nothing: the server keeps its own prefix cache (vLLM's automatic prefix caching),
        and reading ahead there would cost a request a turn."""
        return
        yield  # an async generator that yields nothing

    def warm(self) -> None:
        """Nothing to page in here: the server keeps its own model loaded."""

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def load(settings: Settings, executor: Executor) -> tuple[OpenAICompatibleLLM, ModelInfo]:
    """``llm_engine = "openai"``: generation on the server at ``llm_base_url`` (vLLM on a GPU)."""
    llm = OpenAICompatibleLLM(
        settings.llm_base_url,
        model=settings.llm_remote_model,
        api_key=settings.llm_api_key,
        connect_retries=settings.llm_connect_retries,
        defaults=generation_defaults(settings),
    )
    info = ModelInfo(
        id=settings.llm_remote_model,
        kind="llm",
        path=settings.llm_base_url,
        size_bytes=0,
        sha256=None,
        capabilities=["chat", "remote"],
    )
    return llm, info
