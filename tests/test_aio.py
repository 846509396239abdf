"""Blocking generators drained into asyncio: with ``on_demand`` the model computes an item only
while its reader waits for it (the scheduler's slot is held for exactly that step)."""

from __future__ import annotations

import asyncio
import threading
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
