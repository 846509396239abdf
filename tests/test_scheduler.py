"""The inference scheduler's rules, in virtual time: who gets a free slot, what a stream holds,
what is dropped, and what the metrics say."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Coroutine
from typing import Any, TypeVar

import pytest

from inzwa_voice.engines.scheduler import GaveWay, Priority, Scheduler, Urgency, current_urgency
from inzwa_voice.telemetry import Metrics
from tests.timeline import now, run_virtual, settle

T = TypeVar("T")


def runs(metrics: Metrics, engine: str, priority: str, outcome: str) -> float:
    value = metrics.registry.get_sample_value(
        "inzwa_inference_runs_total", {"engine": engine, "priority": priority, "outcome": outcome}
    )
    return value or 0.0


def queued_s(metrics: Metrics, engine: str, priority: str) -> float:
    value = metrics.registry.get_sample_value(
        "inzwa_inference_queue_seconds_sum", {"engine": engine, "priority": priority}
    )
    return value or 0.0


class Log:
    """Which run started and ended when, in virtual time."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str]] = []

    async def work(self, scheduler: Scheduler, engine: str, name: str, seconds: float) -> None:
        async with scheduler.slot(engine):
            self.events.append((now(), f"{name} start"))
            await asyncio.sleep(seconds)
            self.events.append((now(), f"{name} end"))

    def started(self) -> list[str]:
        return [e.removesuffix(" start") for _, e in self.events if e.endswith(" start")]


def at(urgency: Urgency, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """Run ``coro`` as work of that urgency, as a call's task would."""
    return asyncio.get_running_loop().create_task(coro, context=urgency.context())


def test_a_free_slot_goes_to_the_most_urgent_work_then_tts_before_asr_before_the_llm() -> None:
    async def main() -> None:
        metrics = Metrics()
        scheduler, log = Scheduler(1, metrics), Log()
        busy = at(Urgency(Priority.REST), log.work(scheduler, "asr", "rest request", 1.0))
        await settle()
        waiting = [
            at(Urgency(Priority.SPECULATIVE), log.work(scheduler, "llm", "speculative llm", 0.1)),
            at(Urgency(Priority.REST), log.work(scheduler, "asr", "second rest request", 0.1)),
            at(Urgency(Priority.FIRST_PHRASE), log.work(scheduler, "llm", "first phrase llm", 0.1)),
            at(Urgency(Priority.FIRST_PHRASE), log.work(scheduler, "tts", "first phrase tts", 0.1)),
            at(Urgency(Priority.FINAL), log.work(scheduler, "asr", "final decode", 0.1)),
        ]
        await asyncio.gather(busy, *waiting)
        assert log.started() == [
            "rest request",  # already running: nothing is pre-empted
            "final decode",
            "first phrase tts",
            "first phrase llm",
            "speculative llm",
            "second rest request",
        ]
        assert scheduler.idle
        assert queued_s(metrics, "asr", "final") == pytest.approx(1.0)
        assert queued_s(metrics, "asr", "rest") == pytest.approx(1.4)
        assert runs(metrics, "asr", "rest", "ran") == 2 and runs(metrics, "llm", "first_phrase", "ran") == 1

    run_virtual(main, limit_s=10)


def test_raising_the_urgency_of_queued_work_moves_it_ahead() -> None:
    async def main() -> None:
        scheduler, log = Scheduler(1, Metrics()), Log()
        busy = at(Urgency(Priority.REST), log.work(scheduler, "asr", "running", 1.0))
        await settle()
        other = at(Urgency(Priority.SPECULATIVE), log.work(scheduler, "asr", "another call's stretch", 0.1))
        stretch = Urgency(Priority.SPECULATIVE)
        last = at(stretch, log.work(scheduler, "asr", "last stretch", 0.1))
        await asyncio.sleep(0.5)
        stretch.priority = Priority.FINAL  # the endpoint: the caller waits for this one now
        await asyncio.gather(busy, other, last)
        assert log.started() == ["running", "last stretch", "another call's stretch"]
        assert stretch.runs == {"asr": 1}

    run_virtual(main, limit_s=10)


def test_work_cancelled_while_queued_never_starts_and_counts_as_dropped() -> None:
    async def main() -> None:
        metrics = Metrics()
        scheduler, log = Scheduler(1, metrics), Log()
        busy = at(Urgency(Priority.FINAL), log.work(scheduler, "asr", "final", 1.0))
        await settle()
        speculative = at(Urgency(Priority.SPECULATIVE), log.work(scheduler, "llm", "speculative", 0.1))
        await asyncio.sleep(0.5)
        speculative.cancel()  # the caller went on
        await busy
        assert log.started() == ["final"] and scheduler.idle
        assert runs(metrics, "llm", "speculative", "dropped") == 1
        assert runs(metrics, "llm", "speculative", "ran") == 0

    run_virtual(main, limit_s=10)


async def tokens(log: Log, name: str, count: int, seconds: float) -> AsyncGenerator[str, None]:
    for k in range(count):
        await asyncio.sleep(seconds)
        log.events.append((now(), f"{name} {k}"))
        yield f"{name} {k}"


async def generate(scheduler: Scheduler, log: Log, name: str, steps: int, *, gives_way: bool = False) -> None:
    """A generation of ``steps`` tokens through the scheduler, as the LLM's are (exclusive);
    one that ``gives_way`` stops there."""
    with contextlib.suppress(GaveWay):
        async for _ in scheduler.stream("llm", tokens(log, name, steps, 0.1), exclusive=True, gives_way=gives_way):
            pass


def test_a_stream_holds_a_slot_per_step_so_a_final_decode_gets_in_between_tokens() -> None:
    async def main() -> None:
        metrics = Metrics()
        scheduler, log = Scheduler(1, metrics), Log()

        async def generate() -> list[str]:
            return [piece async for piece in scheduler.stream("llm", tokens(log, "token", 5, 0.1), exclusive=True)]

        generation = at(Urgency(Priority.SPECULATIVE), generate())
        await asyncio.sleep(0.15)
        decode = at(Urgency(Priority.FINAL), log.work(scheduler, "asr", "decode", 0.5))
        assert await generation == [f"token {k}" for k in range(5)]
        await decode
        # The decode waited for the token in progress only, then the tokens went on.
        assert [e for _, e in log.events] == [
            "token 0",
            "token 1",
            "decode start",
            "decode end",
            "token 2",
            "token 3",
            "token 4",
        ]
        assert [t for t, e in log.events if e in ("decode start", "token 2")] == pytest.approx([0.2, 0.8])
        assert runs(metrics, "llm", "speculative", "ran") == 1, "a stream is one run however many steps"

    run_virtual(main, limit_s=10)


def test_a_stream_read_on_keeps_its_slot_from_less_urgent_work_waiting() -> None:
    async def main() -> None:
        scheduler, log = Scheduler(1, Metrics()), Log()

        answer = at(Urgency(Priority.FIRST_PHRASE), generate(scheduler, log, "answer", 4))
        await asyncio.sleep(0.15)
        stretch = at(Urgency(Priority.SPECULATIVE), log.work(scheduler, "asr", "stretch", 0.5))
        await asyncio.gather(answer, stretch)
        # The slot is free between two tokens, but the answer's reader asks for the next one at
        # once: another call's stretch, less urgent, waits for the answer's end, not for one token.
        answer_then_stretch = [*(f"answer {k}" for k in range(4)), "stretch start", "stretch end"]
        assert [e for _, e in log.events] == answer_then_stretch
        assert [t for t, e in log.events if e == "answer 3"] == pytest.approx([0.4])

    run_virtual(main, limit_s=10)


def test_a_stream_whose_reader_pauses_holds_no_slot() -> None:
    async def main() -> None:
        scheduler, log = Scheduler(1, Metrics()), Log()
        stream = scheduler.stream("tts", tokens(log, "sentence", 3, 0.1))
        assert await anext(stream) == "sentence 0"
        # The reader waits on something else (its own LLM, the endpoint): others run meanwhile.
        await log.work(scheduler, "llm", "llm", 0.5)
        assert [piece async for piece in stream] == ["sentence 1", "sentence 2"]
        assert scheduler.idle

    run_virtual(main, limit_s=10)


def test_exclusive_streams_of_one_engine_do_not_interleave() -> None:
    async def main() -> None:
        scheduler, log = Scheduler(2, Metrics()), Log()

        first = at(Urgency(Priority.SPECULATIVE), generate(scheduler, log, "first", 2))
        await settle()
        second = at(Urgency(Priority.FIRST_PHRASE), generate(scheduler, log, "second", 2))
        decode = at(Urgency(Priority.SPECULATIVE), log.work(scheduler, "asr", "decode", 0.05))
        await asyncio.gather(first, second, decode)
        # One llama.cpp context: the second generation waits for the first to end, while the
        # other slot serves a decode at once.
        assert [e for _, e in log.events] == [
            "decode start",
            "decode end",
            "first 0",
            "first 1",
            "second 0",
            "second 1",
        ]

    run_virtual(main, limit_s=10)


def test_a_read_ahead_gives_way_to_a_more_urgent_generation_at_its_next_step() -> None:
    async def main() -> None:
        metrics = Metrics()
        scheduler, log = Scheduler(1, metrics), Log()

        read_ahead = at(Urgency(Priority.BACKGROUND), generate(scheduler, log, "read", 10, gives_way=True))
        await asyncio.sleep(0.25)
        answer = at(Urgency(Priority.FIRST_PHRASE), generate(scheduler, log, "answer", 2))
        await asyncio.gather(read_ahead, answer)
        # Exclusive, it would have kept the answer waiting for its ten steps; it ends at its
        # next step instead, and the answer starts once the step under way is done.
        assert [e for _, e in log.events] == ["read 0", "read 1", "read 2", "answer 0", "answer 1"]
        assert [t for t, e in log.events if e == "answer 0"] == pytest.approx([0.4])
        assert runs(metrics, "llm", "background", "gave_way") == 1

        # Another read-ahead, or anything of another engine, does not stop it.
        log.events.clear()
        reads = [at(Urgency(Priority.BACKGROUND), generate(scheduler, log, "first", 3, gives_way=True))]
        await asyncio.sleep(0.05)
        reads.append(at(Urgency(Priority.BACKGROUND), generate(scheduler, log, "second", 1, gives_way=True)))
        await asyncio.gather(*reads, at(Urgency(Priority.FINAL), log.work(scheduler, "asr", "decode", 0.05)))
        order = ["first 0", "decode start", "decode end", "first 1", "first 2", "second 0"]
        assert [e for _, e in log.events] == order
        assert runs(metrics, "llm", "background", "gave_way") == 1

    run_virtual(main, limit_s=10)


def test_work_without_a_call_runs_as_a_rest_request() -> None:
    assert current_urgency().priority is Priority.REST
    with pytest.raises(ValueError, match="at least one slot"):
        Scheduler(0, Metrics())


def test_a_slot_freed_as_the_most_urgent_waiter_is_cancelled_goes_to_the_next() -> None:
    async def main() -> None:
        metrics = Metrics()
        scheduler, log, done = Scheduler(1, metrics), Log(), asyncio.Event()

        async def hold() -> None:
            async with scheduler.slot("asr"):
                await done.wait()

        busy = at(Urgency(Priority.REST), hold())
        await settle()
        urgent = at(Urgency(Priority.FINAL), log.work(scheduler, "asr", "urgent", 0.1))
        later = at(Urgency(Priority.SPECULATIVE), log.work(scheduler, "asr", "later", 0.1))
        await settle()
        done.set()  # the slot is freed first...
        urgent.cancel()  # ...and its most urgent waiter cancelled before either has run
        await asyncio.gather(busy, later)
        assert urgent.cancelled() and log.started() == ["later"] and scheduler.idle
        assert runs(metrics, "asr", "final", "dropped") == 1

    run_virtual(main, limit_s=10)
