"""Blocking generators drained into asyncio: with ``on_demand`` the model computes an item only
while its reader waits for it (the scheduler's slot is held for exactly that step)."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

from inzwa_voice.aio import iterate_in_thread


def counting(produced: list[int], done: threading.Event) -> Callable[[threading.Event], Iterator[int]]:
    def factory(stop: threading.Event) -> Iterator[int]:
        try:
            for i in range(5):
                produced.append(i)
                yield i
        finally:
            done.set()

    return factory


async def test_on_demand_produces_nothing_ahead_of_its_reader() -> None:
    produced: list[int] = []
    done = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        source = iterate_in_thread(pool, counting(produced, done), on_demand=True)
        assert await anext(source) == 0
        assert await anext(source) == 1
        await source.aclose()  # the worker was parked before its next step, and now ends
        await asyncio.get_running_loop().run_in_executor(pool, done.wait)  # once it has
    assert produced == [0, 1]


async def test_a_read_ahead_source_runs_on_without_its_reader() -> None:
    produced: list[int] = []
    done = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        source = iterate_in_thread(pool, counting(produced, done), maxsize=8)
        assert await anext(source) == 0
        await asyncio.get_running_loop().run_in_executor(pool, done.wait)  # it finished alone
        await source.aclose()
    assert produced == [0, 1, 2, 3, 4]


def test_a_producer_whose_loop_closed_stops_without_a_stray_coroutine() -> None:
    """A model step that ends after its event loop closed (a gateway stopped mid-answer, its
    reader never closed) has nobody to hand its item to: the worker stops there instead of
    waiting for ever, and leaves no coroutine never awaited."""
    step = threading.Event()
    finished = threading.Event()
    unraisable: list[str] = []

    def factory(stop: threading.Event) -> Iterator[int]:
        try:
            yield 0
            step.wait()  # the model step in flight while the loop closes
            yield 1
        finally:
            finished.set()

    def note(args: sys.UnraisableHookArgs) -> None:
        unraisable.append(str(args.exc_value))

    with ThreadPoolExecutor(1) as pool, warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # "never awaited" becomes unraisable
        previous, sys.unraisablehook = sys.unraisablehook, note
        loop = asyncio.new_event_loop()
        try:
            source = iterate_in_thread(pool, factory, maxsize=1)
            assert loop.run_until_complete(anext(source)) == 0
            loop.close()  # without finalizing the reader: its stop event is never set
            step.set()
            assert finished.wait(10)
            gc.collect()
        finally:
            sys.unraisablehook = previous
    assert unraisable == []
