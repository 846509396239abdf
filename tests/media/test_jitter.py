"""The jitter buffer against scripted arrivals: reorder, duplicates, wrap, loss, lateness."""

from __future__ import annotations

import pytest

from inzwa_voice.media.jitter import JitterBuffer, JitterStats


def push_all(buffer: JitterBuffer[str], seqs: list[int]) -> list[bool]:
    return [buffer.push(seq, seq * 160, f"p{seq}") for seq in seqs]


def pop_seqs(buffer: JitterBuffer[str], turns: int) -> list[int | None]:
    out: list[int | None] = []
    for _ in range(turns):
        packet = buffer.pop()
        out.append(None if packet is None else packet.seq)
    return out


def test_waits_for_depth_then_plays_in_order() -> None:
    buffer: JitterBuffer[str] = JitterBuffer(depth=3)
    assert buffer.pop() is None  # nothing yet
    push_all(buffer, [10, 11])
    assert buffer.pop() is None  # filling: 2 of 3
    push_all(buffer, [12])
    packet = buffer.pop()
    assert packet is not None
    assert (packet.seq, packet.timestamp, packet.payload) == (10, 1600, "p10")
    assert pop_seqs(buffer, 2) == [11, 12]
    assert buffer.stats == JitterStats(received=3)


def test_reordered_packets_are_played_in_sequence() -> None:
    buffer: JitterBuffer[str] = JitterBuffer(depth=3)
    push_all(buffer, [1, 3, 2, 5, 4, 6])
    assert pop_seqs(buffer, 6) == [1, 2, 3, 4, 5, 6]
    assert buffer.stats.reordered == 2
    assert buffer.stats.lost == 0


def test_first_packets_out_of_order_move_the_start_back() -> None:
    buffer: JitterBuffer[str] = JitterBuffer(depth=3)
    push_all(buffer, [101, 100, 102])
    assert pop_seqs(buffer, 3) == [100, 101, 102]


def test_duplicates_are_dropped_whether_held_or_played() -> None:
    buffer: JitterBuffer[str] = JitterBuffer(depth=2)
    assert push_all(buffer, [1, 2, 2]) == [True, True, False]
    assert pop_seqs(buffer, 1) == [1]
    assert push_all(buffer, [1, 3]) == [False, True]
    assert pop_seqs(buffer, 2) == [2, 3]
    assert buffer.stats.duplicate == 2
    assert buffer.stats.late == 0


def test_sequence_wraps_from_65535_to_0() -> None:
    buffer: JitterBuffer[str] = JitterBuffer(depth=3)
    push_all(buffer, [65533, 65535, 65534, 1, 0, 2])
    assert pop_seqs(buffer, 6) == [65533, 65534, 65535, 0, 1, 2]
    assert buffer.stats.lost == buffer.stats.late == 0
    assert buffer.stats.reordered == 2


def test_a_missing_packet_is_a_gap_and_late_arrival_is_dropped() -> None:
    buffer: JitterBuffer[str] = JitterBuffer(depth=3)
    push_all(buffer, [1, 2, 4, 5, 6])
    assert pop_seqs(buffer, 3) == [1, 2, None]  # 3's turn: the leg conceals it
    assert buffer.push(3, 480, "p3") is False  # too late now
    assert pop_seqs(buffer, 3) == [4, 5, 6]
    assert (buffer.stats.lost, buffer.stats.late) == (1, 1)


def test_packets_reordered_within_the_depth_are_not_lost() -> None:
    """Seq 3 overtaken by two others still plays in its place with depth 3."""
    buffer: JitterBuffer[str] = JitterBuffer(depth=3)
    played: list[int | None] = []
    for seq in [1, 2, 4, 5, 3, 6, 7, 8]:  # one arrival per frame period
        buffer.push(seq, seq * 160, f"p{seq}")
        played += pop_seqs(buffer, 1)
    assert [p for p in played if p is not None] == [1, 2, 3, 4, 5, 6]
    assert buffer.stats.lost == 0


def test_underrun_refills_instead_of_counting_losses() -> None:
    """A sender that pauses (DTX, a stalled network) is not 'losing' packets."""
    buffer: JitterBuffer[str] = JitterBuffer(depth=2)
    push_all(buffer, [1, 2])
    assert pop_seqs(buffer, 2) == [1, 2]
    assert pop_seqs(buffer, 50) == [None] * 50
    push_all(buffer, [3])
    assert pop_seqs(buffer, 1) == [None]  # refilling to depth
    push_all(buffer, [4])
    assert pop_seqs(buffer, 2) == [3, 4]
    assert buffer.stats.lost == 0
    assert buffer.stats.underruns == 1


def test_overfull_buffer_drops_the_oldest() -> None:
    buffer: JitterBuffer[str] = JitterBuffer(depth=3, max_packets=5)
    push_all(buffer, list(range(1, 11)))  # nobody popped: the consumer stalled
    assert len(buffer) == 5
    assert buffer.stats.overflow == 5
    assert pop_seqs(buffer, 5) == [6, 7, 8, 9, 10]


def test_a_burst_loss_skips_ahead() -> None:
    buffer: JitterBuffer[str] = JitterBuffer(depth=2, max_packets=8)
    push_all(buffer, [1, 2])
    assert pop_seqs(buffer, 1) == [1]
    push_all(buffer, [40, 41])  # 3-39 never come
    assert len(buffer) == 2
    assert buffer.stats.overflow == 1  # packet 2 had to go to keep the window bounded
    assert buffer.stats.lost == 31  # 3 .. 33: the window now holds 34 .. 41
    assert pop_seqs(buffer, 9) == [None] * 6 + [40, 41, None]
    assert buffer.stats.lost == 37


def test_sequence_restart_resynchronises() -> None:
    buffer: JitterBuffer[str] = JitterBuffer(depth=2)
    push_all(buffer, [1000, 1001])
    assert pop_seqs(buffer, 2) == [1000, 1001]
    # The sender restarts its numbering: one stray packet is dropped, two in a row resync.
    assert push_all(buffer, [20000, 20001, 20002]) == [False, True, True]
    assert pop_seqs(buffer, 2) == [20001, 20002]
    assert buffer.stats.resyncs == 1


def test_one_stray_packet_does_not_resync() -> None:
    buffer: JitterBuffer[str] = JitterBuffer(depth=2)
    push_all(buffer, [1000, 1001, 50000, 1002])
    assert pop_seqs(buffer, 3) == [1000, 1001, 1002]
    assert buffer.stats.resyncs == 0
    assert buffer.stats.late == 1


def test_scripted_timeline_counts_every_event_once() -> None:
    buffer: JitterBuffer[str] = JitterBuffer(depth=2)
    script: list[tuple[list[int], list[int | None]]] = [
        ([1], [None]),  # filling
        ([2], [1]),
        ([2], [2]),  # duplicate of a held packet
        ([4], [None]),  # 3 is lost
        ([3], [4]),  # ... and arrives too late
        ([5], [5]),
        ([5], [None]),  # duplicate of a played packet; then the buffer runs dry
        ([7, 6], [6, 7]),  # reordered
    ]
    for arrivals, expected in script:
        push_all(buffer, arrivals)
        assert pop_seqs(buffer, len(expected)) == expected
    assert buffer.stats == JitterStats(
        received=9, reordered=1, duplicate=2, late=1, lost=1, overflow=0, underruns=1, resyncs=0
    )


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        JitterBuffer(depth=0)
    with pytest.raises(ValueError):
        JitterBuffer(depth=4, max_packets=3)
    with pytest.raises(ValueError):
        JitterBuffer[str]().push(65536, 0, "")
