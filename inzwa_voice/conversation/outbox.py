"""One call's side effects, in the order they happened: events to the leg, writes to the record.

The inbound loop decides in microseconds (speech started, the caller finished, a barge-in) but
telling the client and writing the call record take a socket write and a disk commit. So
decisions only append to the outbox, and one task per call carries the items out in order:
``asr.final`` always reaches the client before the bot's words of the same turn, and a turn is
in the record before any event announces it, whatever the tasks that produced them.

Bounded: events beyond ``limit`` waiting items drop the oldest event (counted); record writes
are never dropped (there are a few per turn, and the store itself bounds its backlog).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

Write = Callable[[], Awaitable[None]]


class Outbox:
    def __init__(
        self,
        send: Callable[[dict[str, object]], Awaitable[None]],
        *,
        limit: int = 512,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        self._send = send
        self._limit = limit
        self._on_drop = on_drop
        self._items: deque[tuple[str, Any]] = deque()
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def event(self, event: dict[str, object]) -> None:
        """Send ``event`` to the leg after everything queued before it."""
        if self._closed:
            return
        if len(self._items) >= self._limit:
            self._drop_oldest_event()
        self._put(("event", event))

    def write(self, write: Write) -> None:
        """Run ``write`` (a call-record write) after everything queued before it."""
        if self._closed:
            return
        self._put(("write", write))

    async def flush(self) -> None:
        """Wait until everything queued so far has been carried out."""
        if self._closed or (not self._items and self._task is None):
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._put(("flush", done))
        await asyncio.shield(done)

    async def close(self, timeout_s: float = 5.0) -> None:
        """Carry out what is queued (at most ``timeout_s``), then take nothing more."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self.flush()
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})

    def _put(self, item: tuple[str, Any]) -> None:
        self._items.append(item)
        self._ready.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="outbox")

    def _drop_oldest_event(self) -> None:
        for i, (kind, _) in enumerate(self._items):
            if kind == "event":
                del self._items[i]
                if self._on_drop is not None:
                    self._on_drop()
                return

    async def _run(self) -> None:
        while True:
            while not self._items:
                self._ready.clear()
                await self._ready.wait()
            kind, item = self._items.popleft()
            if kind == "flush":
                if not item.done():
                    item.set_result(None)
                continue
            try:
                await (self._send(item) if kind == "event" else item())
            except Exception:
                # The leg's socket is gone or a write failed (the recorder logs its own): the
                # call goes on, and so do the items behind this one.
                log.debug("outbox item failed", exc_info=True, extra={"kind": kind})
