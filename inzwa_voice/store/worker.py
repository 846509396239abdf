"""The threads that own the database connections, and the connection interface they share.

Commits wait for the disk (SQLite) or the network (PostgreSQL), and neither driver's connection
may be used from two threads at once, so neither may touch the event loop that carries the
audio. A ``Worker`` is one thread that owns one ``Session`` and runs jobs on it in the order they
were made (a turn never lands before its call). Its backlog is bounded: when the database is
slow, callers wait (asynchronously) for room instead of memory growing without end. An awaited
job has finished, and a write in it has been committed.

The same threads serve both backends (rather than psycopg's async connection beside them) so
the ordering, backpressure and cancellation rules are written once and tested once.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from inzwa_voice.store.backend import Session
from inzwa_voice.store.records import StoreError

T = TypeVar("T")


class Worker:
    """One thread that owns one session and runs jobs on it, in the order they came."""

    def __init__(self, name: str, session: Session, backlog: int) -> None:
        self._session = session
        self._jobs: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._room = asyncio.Semaphore(backlog)
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    async def run(self, job: Callable[[Session], T]) -> T:
        """Run ``job`` on the session; once queued it runs even if the caller is cancelled."""
        await self._room.acquire()
        if self._closed:
            self._room.release()
            raise StoreError("the call store is closed")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()
        self._jobs.put(_Job(job, loop, done, self._room))
        return await done

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._jobs.put(None)
        await asyncio.to_thread(self._thread.join)

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            job.execute(self._session)
        self._session.close()


@dataclass
class _Job(Generic[T]):
    fn: Callable[[Session], T]
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[T]
    room: asyncio.Semaphore

    def execute(self, session: Session) -> None:
        """Runs in the worker thread; the outcome is handed to the loop that asked."""
        result: T | None = None
        error: Exception | None = None
        try:
            result = self.fn(session)
        except Exception as exc:
            error = exc
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            self.loop.call_soon_threadsafe(self._settle, result, error)

    def _settle(self, result: T | None, error: Exception | None) -> None:
        self.room.release()
        if self.done.cancelled():
            return
        if error is not None:
            self.done.set_exception(error)
        else:
            self.done.set_result(cast(T, result))
