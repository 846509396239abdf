"""Virtual time: an event loop whose clock jumps to the next timer whenever nothing is ready.

A call's orchestration is timers and awaits (a 700 ms endpoint, a 2.5 s hold prompt, a 12 s idle
re-prompt, 20 ms frames), so on a loop that never waits for real a whole call runs in
milliseconds while ``loop.time()``, ``asyncio.sleep``, ``call_later`` and ``asyncio.timeout`` all
agree on one clock that starts at 0.0. The loop is an ordinary ``SelectorEventLoop`` whose
selector never blocks: asked to wait ``timeout`` seconds for I/O, it advances the clock by
``timeout`` instead, so the loop's own timer logic decides what runs next.

What virtual time cannot do, it reports instead of hanging: virtual time passing ``limit_s`` (a
hung call), nothing ready and no timer left (a deadlock, or a thread the loop would wait for),
and ready callbacks forever at one instant (a livelock). Code under test must read time from
``loop.time()``, never ``time.monotonic()``, which keeps running at the real rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

# Cancelled tasks get this much virtual time to finish their cleanup after a failure.
_CLEANUP_S = 60.0


class TimelineError(AssertionError):
    """The timeline cannot go on: it hung, deadlocked, livelocked or left tasks running."""


class _VirtualSelector(selectors.DefaultSelector):
    """Polls real file descriptors without blocking and turns every wait into a jump in time."""

    def __init__(self, limit_s: float, max_spins: int) -> None:
        super().__init__()
        self.now = 0.0
        self.limit_s = limit_s
        self.max_spins = max_spins
        self._spins = 0
        self.idle_waiters: list[asyncio.Future[None]] = []

    def rearm(self, limit_s: float) -> None:
        """A new bound on virtual time and a fresh count of spins, for cleanup after a failure."""
        self.limit_s, self._spins = limit_s, 0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)  # the loop's self-pipe; nothing else is registered
        if ready:
            return ready
        if timeout == 0:
            self._spins += 1
            if self._spins > self.max_spins:
                raise TimelineError(
                    f"livelock: {self.max_spins} loop iterations at t={self.now:.3f}s without time passing"
                )
            return []
        self._spins = 0
        if self.idle_waiters:
            # Nothing is ready: whoever waits in ``settle`` runs now, before time moves on.
            for waiter in self.idle_waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self.idle_waiters = []
            return []
        if timeout is None:
            raise TimelineError(
                f"deadlock at t={self.now:.3f}s: every task waits and no timer is left "
                "(a future nobody resolves, or a thread, which virtual time does not run)"
            )
        if self.now + timeout > self.limit_s:
            raise TimelineError(f"hung: virtual time would pass limit_s={self.limit_s:g}s (now t={self.now:.3f}s)")
        self.now += timeout
        return []


class VirtualLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time (see the module docstring); use it through :func:`run_virtual`."""

    def __init__(self, *, limit_s: float, max_spins: int) -> None:
        self._virtual = _VirtualSelector(limit_s, max_spins)
        super().__init__(self._virtual)

    def time(self) -> float:
        return self._virtual.now


def now() -> float:
    """The running loop's time: virtual seconds since the timeline started."""
    return asyncio.get_running_loop().time()


async def settle() -> None:
    """Return once nothing else is ready at this instant, without letting virtual time pass.

    After ``call.feed(frame)`` or ``leg.interrupt()``, ``await settle()`` lets every task react
    to it before the test looks, with no sleep to guess how long that takes.
    """
    loop = asyncio.get_running_loop()
    if not isinstance(loop, VirtualLoop):
        raise RuntimeError("settle() needs a virtual loop: run the test body with run_virtual()")
    waiter: asyncio.Future[None] = loop.create_future()
    loop._virtual.idle_waiters.append(waiter)
    await waiter


def run_virtual(main: Callable[[], Awaitable[T]], *, limit_s: float, max_spins: int = 100_000) -> T:
    """Run ``main()`` on a fresh virtual loop and return its result.

    Fails with :class:`TimelineError` when virtual time would pass ``limit_s``, when every task
    waits on something that never comes, after ``max_spins`` loop iterations at one instant, or
    when ``main`` returns while tasks it started are still waiting (a call must stop what it
    starts). Whatever is left is cancelled and the loop is closed before this returns.
    """
    loop = VirtualLoop(limit_s=limit_s, max_spins=max_spins)

    async def body() -> T:
        return await main()

    try:
        main_task = loop.create_task(body(), name="timeline-main")
        try:
            result = loop.run_until_complete(main_task)
        except TimelineError as exc:
            if main_task.done():
                raise  # main's own failure: its traceback says where
            raise TimelineError(f"{exc}\n{_describe(_pending(loop))}") from None
        loop.run_until_complete(settle())  # tasks cancelled at the very end finish now
        leftover = _pending(loop)
        if leftover:
            raise TimelineError(f"main returned with tasks still running:\n{_describe(leftover)}")
        return result
    finally:
        try:
            _clean_up(loop)
        finally:
            loop.close()


def _pending(loop: asyncio.AbstractEventLoop) -> list[asyncio.Task[object]]:
    return [task for task in asyncio.all_tasks(loop) if not task.done()]


def _describe(tasks: list[asyncio.Task[object]]) -> str:
    """Each task with the chain of awaits it is stuck in, outermost first."""
    lines = []
    for task in tasks:
        links = []
        awaiting: object = task.get_coro()
        while (frame := getattr(awaiting, "cr_frame", None) or getattr(awaiting, "ag_frame", None)) is not None:
            links.append(f"{frame.f_code.co_name} ({Path(frame.f_code.co_filename).name}:{frame.f_lineno})")
            awaiting = getattr(awaiting, "cr_await", None) or getattr(awaiting, "ag_await", None)
        lines.append(f"  {task.get_name()}: {' > '.join(links) or 'not started'}")
    return "\n".join(lines)


def _clean_up(loop: VirtualLoop) -> None:
    """Cancel what is left and close open async generators, within a short bound of virtual time."""
    tasks = _pending(loop)
    for task in tasks:
        task.cancel()
    loop._virtual.rearm(loop.time() + _CLEANUP_S)
    # What will not stop even when cancelled is abandoned: the loop is closed regardless.
    with contextlib.suppress(TimelineError):
        if tasks:
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
