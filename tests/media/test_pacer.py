"""The outbound pacer in media time (a fake clock), plus one check against the real clock."""

from __future__ import annotations

import asyncio
import time

import pytest

from inzwa_voice.media.pacer import Pacer, PacerClosed

MS = 0.001


class FakeClock:
    """Media time: with ``auto`` a sleep jumps the clock to its deadline instead of waiting.

    Without ``auto`` sleepers wait until the test calls :meth:`advance`.
    """

    def __init__(self, *, auto: bool = True) -> None:
        self.t = 0.0
        self.auto = auto
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self.t

    async def sleep_until(self, deadline: float) -> None:
        if self.auto or deadline <= self.t:
            self.t = max(self.t, deadline)
            await asyncio.sleep(0)
            return
        future = asyncio.get_running_loop().create_future()
        self._sleepers.append((deadline, future))
        await future

    def advance(self, seconds: float) -> None:
        self.t += seconds
        for deadline, future in [s for s in self._sleepers if s[0] <= self.t]:
            self._sleepers.remove((deadline, future))
            future.set_result(None)


class Recorder:
    """A ``send`` that notes the media time of each frame."""

    def __init__(self, clock: FakeClock, send_cost: float = 0.0) -> None:
        self.clock = clock
        self.send_cost = send_cost
        self.frames: list[int] = []
        self.times: list[float] = []

    async def __call__(self, frame: int) -> None:
        self.times.append(round(self.clock.now() / MS, 6))
        self.frames.append(frame)
        self.clock.t += self.send_cost


async def test_lead_frames_go_at_once_then_real_time() -> None:
    clock = FakeClock()
    sent = Recorder(clock)
    async with Pacer(sent, lead_frames=3, clock=clock) as pacer:
        for frame in range(10):
            await pacer.enqueue(frame)
        await pacer.drain()
    assert sent.frames == list(range(10))
    assert sent.times == [0, 0, 0, 0, 20, 40, 60, 80, 100, 120]
    assert pacer.frames_sent == 10


async def test_slow_sends_do_not_accumulate_drift() -> None:
    clock = FakeClock()
    sent = Recorder(clock, send_cost=7 * MS)
    async with Pacer(sent, lead_frames=0, clock=clock) as pacer:
        for frame in range(6):
            await pacer.enqueue(frame)
        await pacer.drain()
    # sleep(20 ms) after each send would give 0, 27, 54, ...; the schedule holds the grid.
    assert sent.times == [0, 20, 40, 60, 80, 100]


async def test_a_stall_is_caught_up_on_the_original_grid() -> None:
    clock = FakeClock()
    sent = Recorder(clock)

    async def stalling_send(frame: int) -> None:
        await sent(frame)
        if frame == 5:
            clock.t += 50 * MS  # e.g. the event loop was blocked

    async with Pacer(stalling_send, lead_frames=3, clock=clock) as pacer:
        for frame in range(12):
            await pacer.enqueue(frame)
        await pacer.drain()
    # Frames 6 and 7 (due at 60 and 80 ms) go as soon as the stall ends; 8 is on time again.
    assert sent.times == [0, 0, 0, 0, 20, 40, 90, 90, 100, 120, 140, 160]


async def test_silence_longer_than_the_lead_starts_a_new_spurt() -> None:
    clock = FakeClock()
    sent = Recorder(clock)
    async with Pacer(sent, lead_frames=2, clock=clock) as pacer:
        for frame in range(4):
            await pacer.enqueue(frame)
        await pacer.drain()
        clock.advance(1.0)  # the bot finished a sentence; TTS pauses
        for frame in range(4, 8):
            await pacer.enqueue(frame)
        await pacer.drain()
    assert sent.times == [0, 0, 0, 20, 1020, 1020, 1020, 1040]


async def test_a_short_producer_gap_uses_up_the_lead_instead() -> None:
    clock = FakeClock()
    sent = Recorder(clock)
    async with Pacer(sent, lead_frames=2, clock=clock) as pacer:
        for frame in range(4):
            await pacer.enqueue(frame)
        await pacer.drain()
        clock.advance(50 * MS)  # frame 4 was due at 40 ms; the far end still has 40 ms queued
        for frame in range(4, 8):
            await pacer.enqueue(frame)
        await pacer.drain()
    assert sent.times == [0, 0, 0, 20, 70, 70, 80, 100]


async def test_flush_drops_everything_queued_at_once() -> None:
    clock = FakeClock()
    sent: list[tuple[int, float]] = []
    heard: list[int] = []
    dropped: list[int] = []

    async def send(frame: int) -> None:
        sent.append((frame, clock.now()))
        if frame == 9:  # the caller starts talking while frame 9 goes out
            dropped.append(pacer.flush())

    pacer = Pacer(send, lead_frames=3, max_queued_frames=100, clock=clock, on_sent=heard.append)
    indices = [await pacer.enqueue(frame) for frame in range(50)]
    await pacer.drain()
    assert indices == list(range(50))
    assert dropped == [40]
    assert heard == list(range(10))  # exactly what reached the caller
    assert (pacer.frames_sent, pacer.frames_dropped, pacer.queued) == (10, 40, 0)
    assert clock.now() == pytest.approx(120 * MS)  # no media time spent on dropped frames

    # The answer to the interruption starts a fresh spurt with its lead, without waiting.
    clock.advance(5 * MS)
    for frame in range(100, 105):
        await pacer.enqueue(frame)
    await pacer.drain()
    await pacer.close()
    assert [(f, round(t / MS)) for f, t in sent[10:]] == [
        (100, 125), (101, 125), (102, 125), (103, 125), (104, 145)
    ]  # fmt: skip
    assert heard[10:] == list(range(50, 55))


async def test_flush_while_waiting_for_a_deadline() -> None:
    clock = FakeClock(auto=False)
    sent: list[int] = []
    lead_done = asyncio.Event()

    async def send(frame: int) -> None:
        sent.append(frame)

    def on_sent(index: int) -> None:
        if index == 3:
            lead_done.set()

    async with Pacer(send, lead_frames=3, clock=clock, on_sent=on_sent) as pacer:
        for frame in range(10):
            await pacer.enqueue(frame)
        await lead_done.wait()  # frames 0-3 went at once; frame 4 waits for 20 ms
        assert pacer.queued == 6
        assert pacer.flush() == 6
        clock.advance(1.0)
        await pacer.drain()
    assert sent == [0, 1, 2, 3]


async def test_enqueue_waits_while_the_queue_is_full() -> None:
    clock = FakeClock()
    gate = asyncio.Event()
    sending = asyncio.Event()
    sent: list[int] = []

    async def send(frame: int) -> None:
        sending.set()
        await gate.wait()
        sent.append(frame)

    async with Pacer(send, max_queued_frames=2, clock=clock) as pacer:
        await pacer.enqueue(0)
        await sending.wait()  # frame 0 is in send; the queue is empty again
        await pacer.enqueue(1)
        await pacer.enqueue(2)
        blocked = asyncio.create_task(pacer.enqueue(3))
        await asyncio.sleep(0)
        assert not blocked.done() and pacer.queued == 2

        # A frame whose enqueue was waiting when a flush came belongs to the cut utterance.
        assert pacer.flush() == 2
        await blocked
        gate.set()
        await pacer.drain()
    assert sent == [0]
    assert pacer.frames_dropped == 3


async def test_send_failure_is_reported_and_stops_the_pacer() -> None:
    async def send(frame: int) -> None:
        if frame == 2:
            raise ConnectionResetError("peer gone")

    pacer = Pacer(send, clock=FakeClock())
    for frame in range(5):
        await pacer.enqueue(frame)
    with pytest.raises(PacerClosed) as failure:
        await pacer.drain()
    assert isinstance(failure.value.__cause__, ConnectionResetError)
    with pytest.raises(PacerClosed):
        await pacer.enqueue(5)
    assert (pacer.frames_sent, pacer.frames_dropped) == (2, 2)
    await pacer.close()


async def test_closed_pacer_refuses_frames() -> None:
    pacer: Pacer[bytes] = Pacer(_discard, clock=FakeClock())
    await pacer.enqueue(b"x")
    await pacer.close()
    await pacer.close()
    with pytest.raises(PacerClosed):
        await pacer.enqueue(b"y")


async def test_send_may_close_the_pacer() -> None:
    """A transport that sees the hang-up inside ``send`` closes the pacer from there."""
    sent: list[int] = []
    hung_up = asyncio.Event()

    async def send(frame: int) -> None:
        sent.append(frame)
        if frame == 1:
            await pacer.close()
            hung_up.set()

    pacer = Pacer(send, clock=FakeClock())
    for frame in range(5):
        await pacer.enqueue(frame)
    await hung_up.wait()
    await pacer.close()  # idempotent; waits for the sending task to end
    assert sent == [0, 1]
    assert (pacer.frames_sent, pacer.frames_dropped) == (2, 3)


async def _discard(frame: bytes) -> None:
    return None


def test_bad_settings() -> None:
    with pytest.raises(ValueError):
        Pacer(_discard, frame_ms=0)


async def test_real_clock_sends_at_real_time_not_all_at_once() -> None:
    """Real time: never ahead of the schedule, whatever the machine's speed.

    Only lower bounds are asserted (a frame is never sent before its deadline), which hold on
    any machine: a loaded one may send late, never early.
    """
    frame_s, lead, count = 10 * MS, 3, 20
    stamps: list[float] = []
    lead_sent = asyncio.Event()

    async def send(frame: int) -> None:
        stamps.append(time.monotonic())

    def on_sent(index: int) -> None:
        if index == lead:
            lead_sent.set()

    pacer = Pacer(send, frame_ms=frame_s / MS, lead_frames=lead, on_sent=on_sent)
    async with pacer:
        for frame in range(count):
            await pacer.enqueue(frame)
        await lead_sent.wait()
        due = int((time.monotonic() - stamps[0]) / frame_s)  # frames whose time has come
        assert lead + 1 <= pacer.frames_sent <= lead + 1 + due
        await pacer.drain()
    for k, stamp in enumerate(stamps):
        assert stamp - stamps[0] >= (k - lead) * frame_s - 1 * MS
