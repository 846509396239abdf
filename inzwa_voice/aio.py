"""Bridges from blocking model code to asyncio.

Model calls (CTranslate2, onnxruntime, llama.cpp) release the GIL, so they run in worker
threads while the event loop keeps serving media. A blocking *generator* (TTS sentences, LLM
tokens) is drained by one worker into a bounded queue; the consumer can stop it at any item,
which is what barge-in and client disconnects need.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


class Cancelled(Exception):
    """Raised inside the worker thread when the consumer went away."""


async def iterate_in_thread(
    executor: concurrent.futures.Executor,
    factory: Callable[[threading.Event], Iterator[T]],
    *,
    maxsize: int = 4,
    on_demand: bool = False,
) -> AsyncGenerator[T, None]:
    """Run ``factory(stop_event)`` in ``executor`` and yield its items on the loop.

    The generator gets the stop event so it can also stop between its own inner steps. When
    the consumer stops early (``aclose``, cancellation, an exception), the event is set, the
    queue is drained so a blocked producer wakes, and the generator is closed in its thread.
    The queue bound gives back-pressure: a slow consumer pauses the model. ``on_demand``: no
    item is produced before the consumer asks for it, so the model computes only while its
    consumer waits (and holds the scheduler's slot for it), never ahead.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=0 if on_demand else maxsize)
    stop = threading.Event()
    wanted = threading.Semaphore(0)

    def wait_wanted() -> None:
        while not wanted.acquire(timeout=0.1):
            if stop.is_set():
                raise Cancelled()
        if stop.is_set():  # woken by the consumer leaving: no further step
            raise Cancelled()

    def put(item: object) -> None:
        handover = queue.put(item)
        try:
            fut = asyncio.run_coroutine_threadsafe(handover, loop)
        except RuntimeError:  # the loop is closed: nobody will read this
            handover.close()
            raise Cancelled() from None
        while True:
            try:
                fut.result(timeout=0.1)
                return
            except concurrent.futures.TimeoutError:
                if stop.is_set() or loop.is_closed():
                    fut.cancel()
                    if loop.is_closed():  # it never ran, and nothing will run it now
                        handover.close()
                    raise Cancelled() from None

    def work() -> None:
        gen = factory(stop)
        try:
            try:
                while True:
                    if on_demand:
                        wait_wanted()
                    try:
                        item = next(gen)
                    except StopIteration:
                        break
                    if stop.is_set():
                        return
                    put(item)
            except Cancelled:
                return
            except BaseException as exc:
                if not stop.is_set():
                    put(exc)
                return
            finally:
                close = getattr(gen, "close", None)
                if close is not None:
                    close()
            put(_DONE)
        except Cancelled:
            pass  # the consumer left while we were handing over the last item

    loop.run_in_executor(executor, work)
    try:
        while True:
            if on_demand:
                wanted.release()
            item = await queue.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        # The producer notices the stop event within one item or one put timeout, or at once
        # when it waits to be asked (``on_demand``: woken here, so a generation that gave way
        # lets the model go now); it is not awaited, so a barge-in never waits for the model
        # step in flight.
        wanted.release()
        while not queue.empty():
            queue.get_nowait()


class StreamTimeout(TimeoutError):
    """A stream produced no item within its per-item limit, or ran past its total limit."""


async def with_deadlines(
    source: AsyncGenerator[T, None], *, item_timeout: float, total_timeout: float
) -> AsyncGenerator[T, None]:
    """Re-yield ``source`` but give up when one item or the whole stream takes too long.

    The source is closed on every exit path so a model generation behind it stops too.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + total_timeout
    try:
        while True:
            budget = min(item_timeout, deadline - loop.time())
            if budget <= 0:
                raise StreamTimeout(f"stream exceeded its {total_timeout:.1f} s limit")
            try:
                async with asyncio.timeout(budget):
                    item = await anext(source)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise StreamTimeout(f"no output within {budget:.1f} s") from None
            yield item
    finally:
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()
