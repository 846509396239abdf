"""One inference scheduler in front of the models, shared by every call and the REST API.

On two cores, ASR, LLM and TTS each want both cores: run at once, they slow each other down
(in calls a decode took 1.73 s that alone takes 1.1 s) and the most urgent one, the decode a
caller waits for, finishes last. So every model run takes a *slot* first: at most ``slots`` run
at once, each model using ``cores / slots`` threads, and a free slot goes to the most urgent
work waiting, by :class:`Priority`, then by engine (TTS, the shortest and the one a caller
hears, before ASR before the LLM), then first come first served.

How work holds a slot:

* An ASR decode holds one for its whole run: CTranslate2 cannot be paused. A decode whose
  caller cancelled it keeps its slot until its thread finishes, so the cores are never
  oversubscribed; a decode still queued when cancelled never starts (counted ``dropped``).
* A stream (the LLM token by token, the TTS sentence by sentence) holds a slot per step and
  gives it back between steps, so a committed turn's decode or first phrase gets in within
  one token or one sentence, and a consumer that stops reading (its reply is waiting for the
  endpoint, or for its own TTS) holds nothing. A reader that reads on competes for the next
  step with the work waiting, by urgency: less urgent work does not slip in between two of
  its steps. A stream is one run however many steps it takes.
* ``exclusive`` streams of one engine do not interleave: llama.cpp has one context per process,
  so a second generation waits for the first to end instead of holding a slot it cannot use.
* A stream that ``gives_way`` ends at its next step, raising :class:`GaveWay`, when a more
  urgent run of its engine waits: an exclusive one would otherwise keep that run waiting until
  it had finished. Reading a conversation into the model's cache ahead of its next turn simply
  stops; a generation takes up again where it stopped once its turn comes back
  (``engines.turn_taking``).

Urgency travels with the work, not the call site: a call sets an :class:`Urgency` on the tasks
of a turn (``Urgency.context()``) and raises it as the work becomes needed (a stretch decoded
while the caller goes on becomes the final transcript at the endpoint); work without one (REST
requests) runs at ``Priority.REST``. Urgency is read when a slot is granted, so raising it
reorders work already queued. VAD and barge-in never come here: they run inline, per frame.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import enum
import itertools
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from inzwa_voice.telemetry import Metrics

T = TypeVar("T")


class Priority(enum.IntEnum):
    """How soon work is needed; lower runs first."""

    FINAL = 0  # a committed turn's transcript: the caller has finished and waits
    FIRST_PHRASE = 1  # a committed reply until its first phrase is ready; fixed prompts
    SPECULATIVE = 2  # stretches decoded while the caller goes on; speculative replies; later phrases
    REST = 3  # REST requests, and any work no call claimed
    BACKGROUND = 4  # work for a later turn: a call's conversation read into the model's cache

    @property
    def label(self) -> str:
        return self.name.lower()


_ENGINE_ORDER = {"tts": 0, "asr": 1, "llm": 2}


class GaveWay(Exception):
    """A stream that ``gives_way`` ended before its source did: more urgent work wanted its engine."""


@dataclass(eq=False)
class Urgency:
    """The priority of one piece of a call's work, raised as it becomes needed, and the model
    runs it cost (``runs["asr"]``: decodes, ``runs["llm"]``: generations); share ``runs``
    between the urgencies of one turn to count the turn."""

    priority: Priority
    runs: Counter[str] = field(default_factory=Counter)

    def context(self) -> contextvars.Context:
        """A copy of the current context in which model work runs at this urgency."""
        context = contextvars.copy_context()
        context.run(_URGENCY.set, self)
        return context


_URGENCY: contextvars.ContextVar[Urgency | None] = contextvars.ContextVar("inzwa_urgency", default=None)


def current_urgency() -> Urgency:
    """The urgency of the running task's work; a fresh ``REST`` one when no call set one."""
    return _URGENCY.get() or Urgency(Priority.REST)


@dataclass(eq=False)
class _Run:
    engine: str
    urgency: Urgency
    seq: int
    exclusive: bool = False
    granted: asyncio.Future[None] | None = None

    def key(self) -> tuple[int, int, int]:
        return (self.urgency.priority, _ENGINE_ORDER.get(self.engine, len(_ENGINE_ORDER)), self.seq)


class Scheduler:
    """Slots for model runs, granted by urgency. Pure asyncio: blocking runs go to an executor."""

    def __init__(self, slots: int, metrics: Metrics) -> None:
        if slots < 1:
            raise ValueError("a scheduler needs at least one slot")
        self.slots = slots
        self._free = slots
        self._metrics = metrics
        self._waiting: list[_Run] = []
        self._owners: dict[str, _Run] = {}  # engine -> the exclusive stream using it
        self._seq = itertools.count()

    @property
    def idle(self) -> bool:
        """Nothing runs and nothing waits."""
        return self._free == self.slots and not self._waiting

    # ----- the three ways to run -----
    @asynccontextmanager
    async def slot(self, engine: str) -> AsyncIterator[None]:
        """Hold a slot for one asyncio run of ``engine`` at the current urgency."""
        run = self._run(engine)
        await self._admit(run)
        try:
            yield
        finally:
            self._release()

    async def run_blocking(self, engine: str, executor: concurrent.futures.Executor, fn: Callable[[], T]) -> T:
        """``fn()`` in ``executor`` once a slot is free; cancelled while running, it keeps its
        slot until its thread returns (a model call cannot be stopped half way)."""
        run = self._run(engine)
        await self._admit(run)
        try:
            job = executor.submit(fn)
        except BaseException:
            self._release()
            raise
        loop = asyncio.get_running_loop()

        def done(_: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed first: nothing waits
                loop.call_soon_threadsafe(self._release)

        job.add_done_callback(done)
        return await asyncio.wrap_future(job)

    async def stream(
        self, engine: str, source: AsyncGenerator[T, None], *, exclusive: bool = False, gives_way: bool = False
    ) -> AsyncGenerator[T, None]:
        """``source``'s items, each produced while holding a slot (see the module's docstring)."""
        run = self._run(engine, exclusive=exclusive)
        first = True
        try:
            async with aclosing(source):
                while True:
                    if first:
                        await self._admit(run)
                        first = False
                    else:
                        if gives_way and self._wanted(run):
                            self._metrics.inference_runs.labels(engine, run.urgency.priority.label, "gave_way").inc()
                            raise GaveWay(engine)
                        await self._acquire(run)
                    try:
                        item = await anext(source)
                    except StopAsyncIteration:
                        self._release()
                        return
                    except BaseException:
                        self._release()
                        raise
                    self._pass_on()
                    yield item
        finally:
            if self._owners.get(engine) is run:
                del self._owners[engine]
                self._grant()

    # ----- slots -----
    def _run(self, engine: str, *, exclusive: bool = False) -> _Run:
        return _Run(engine, current_urgency(), next(self._seq), exclusive)

    async def _admit(self, run: _Run) -> None:
        """The run's first slot: its queue wait and whether it ran or was dropped are counted."""
        loop = asyncio.get_running_loop()
        queued_at = loop.time()
        try:
            await self._acquire(run)
        except asyncio.CancelledError:
            self._metrics.inference_runs.labels(run.engine, run.urgency.priority.label, "dropped").inc()
            raise
        label = run.urgency.priority.label
        self._metrics.inference_queue.labels(run.engine, label).observe(loop.time() - queued_at)
        self._metrics.inference_runs.labels(run.engine, label, "ran").inc()
        run.urgency.runs[run.engine] += 1

    async def _acquire(self, run: _Run) -> None:
        if self._free > 0 and not self._waiting and self._grantable(run):
            self._take(run)
            return
        run.granted = asyncio.get_running_loop().create_future()
        self._waiting.append(run)
        self._grant()
        try:
            await run.granted
        except asyncio.CancelledError:
            if run in self._waiting:
                self._waiting.remove(run)
            elif run.granted.done() and not run.granted.cancelled():
                self._release()  # granted as it was cancelled: pass the slot on
            raise
        finally:
            run.granted = None

    def _wanted(self, run: _Run) -> bool:
        """A more urgent run of ``run``'s engine waits."""
        priority = run.urgency.priority
        return any(other.engine == run.engine and other.urgency.priority < priority for other in self._waiting)

    def _grantable(self, run: _Run) -> bool:
        owner = self._owners.get(run.engine)
        return not run.exclusive or owner is None or owner is run

    def _take(self, run: _Run) -> None:
        self._free -= 1
        if run.exclusive:
            self._owners[run.engine] = run

    def _release(self) -> None:
        self._free += 1
        self._grant()

    def _pass_on(self) -> None:
        """Free a stream's slot between two of its steps, granting it once the loop turns: a
        reader reading on asks for the next step before that, and then competes with the
        waiting work by urgency, so another call's stretch decode cannot take the slot from a
        committed answer in mid-phrase (and hold it for a whole decode). A reader that stops
        reading leaves it to the waiting work at the loop's next turn."""
        self._free += 1
        asyncio.get_running_loop().call_soon(self._grant)

    def _grant(self) -> None:
        while self._free > 0:
            ready = [run for run in self._waiting if self._grantable(run)]
            if not ready:
                return
            run = min(ready, key=_Run.key)
            self._waiting.remove(run)
            assert run.granted is not None
            if run.granted.cancelled():  # its task is being cancelled and has not run yet
                continue
            self._take(run)
            run.granted.set_result(None)
