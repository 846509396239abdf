"""A reorder and jitter buffer for legs that receive RTP-like packets over an unreliable network.

Packets carry a 16-bit sequence number that wraps at 65535; they may arrive late, twice, out of
order or not at all. The leg pushes them as they come and pops once per frame period: the
buffer hands out packets in sequence order, ``depth`` frames behind the newest, so a packet
that is overtaken by up to ``depth`` others is still played in its place. Where a packet is
still missing when its turn comes, :meth:`JitterBuffer.pop` returns ``None`` so the leg can
conceal the gap (Opus PLC, or silence for G.711); a packet that turns up after that is dropped
as late. Playout follows sequence numbers only; timestamps are carried through for the caller.

Sequence numbers are unwrapped into an unbounded count the way RFC 3550 (appendix A.1) does:
the nearest value to the newest one seen. A packet more than ``MAX_MISORDER`` behind or
``MAX_DROPOUT`` ahead is suspect; a second one that follows it means the sender restarted its
numbering (a re-INVITE, a new SSRC), and the buffer resynchronises instead of dropping the rest
of the call as late.

The buffer is bounded: it only holds packets within ``max_packets`` of the next one to play.
A packet beyond that pushes the window forward, dropping the oldest held packets (counted as
``overflow``) and the gaps before them (counted as ``lost``). That also limits the latency a
stalled consumer can build up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Generic, TypeVar

PayloadT = TypeVar("PayloadT")

MAX_MISORDER: Final = 100
MAX_DROPOUT: Final = 3000
_SEQ_MOD: Final = 1 << 16
_HISTORY: Final = 64  # played slots remembered to tell duplicates from late packets


@dataclass(frozen=True, slots=True)
class Packet(Generic[PayloadT]):
    """One received packet: wire sequence number, media timestamp, payload."""

    seq: int
    timestamp: int
    payload: PayloadT


@dataclass(slots=True)
class JitterStats:
    """What the buffer saw and did.

    A pushed packet counts in ``received`` and in at most one of ``reordered`` (kept),
    ``duplicate`` or ``late`` (both dropped).
    """

    received: int = 0
    reordered: int = 0  # accepted although a later packet had already arrived
    duplicate: int = 0  # already held or already played: dropped
    late: int = 0  # its turn had passed (it was concealed): dropped
    lost: int = 0  # turns handed out as gaps (``pop`` returned None for a missing packet)
    overflow: int = 0  # held packets dropped to keep the buffer bounded
    underruns: int = 0  # the buffer ran empty and started filling again
    resyncs: int = 0  # the sender restarted its sequence numbers


class JitterBuffer(Generic[PayloadT]):
    """Reorders packets and releases them ``depth`` frames behind the newest one."""

    def __init__(self, depth: int = 3, max_packets: int = 16) -> None:
        if depth < 1 or max_packets < depth:
            raise ValueError("need 1 <= depth <= max_packets")
        self.depth = depth
        self.max_packets = max_packets
        self.stats = JitterStats()
        self._start()

    def _start(self) -> None:
        self._held: dict[int, Packet[PayloadT]] = {}
        self._fresh = True  # no packet yet since creation or the last resync
        self._next = 0  # unwrapped sequence number of the next turn
        self._highest = 0  # newest unwrapped sequence number seen
        self._playing = False  # False while (re)filling up to ``depth``
        self._started = False  # a first turn was handed out: earlier packets are late
        self._played_mask = 0  # bit i: turn ``_next - 1 - i`` played a real packet
        self._suspect: int | None = None

    def __len__(self) -> int:
        return len(self._held)

    def push(self, seq: int, timestamp: int, payload: PayloadT) -> bool:
        """Offer one packet; return whether it was kept for playout."""
        if not 0 <= seq < _SEQ_MOD:
            raise ValueError(f"sequence number {seq} is not 16-bit")
        self.stats.received += 1
        packet = Packet(seq, timestamp, payload)
        if self._fresh:
            self._begin(packet)
            return True
        ext = self._highest + ((seq - self._highest + _SEQ_MOD // 2) % _SEQ_MOD) - _SEQ_MOD // 2
        if not self._next - MAX_MISORDER <= ext < self._next + MAX_DROPOUT:
            return self._far_off(packet)
        self._suspect = None
        if ext < self._next:
            if self._started or self._highest - ext >= self.max_packets:
                self._count_stale(ext)
                return False
            self._next = ext  # still filling: an earlier packet moves the start back
        if ext in self._held:
            self.stats.duplicate += 1
            return False
        if ext >= self._next + self.max_packets:
            self._skip_to(ext - self.max_packets + 1)
        if ext < self._highest:
            self.stats.reordered += 1
        self._highest = max(self._highest, ext)
        self._held[ext] = packet
        return True

    def pop(self) -> Packet[PayloadT] | None:
        """The packet whose turn it is, or None: a gap to conceal, or nothing buffered yet."""
        if self._fresh:
            return None
        if not self._playing:
            if len(self._held) < self.depth:
                return None
            self._playing = self._started = True
        if not self._held:
            # Sender paused or the network stalled: wait for ``depth`` packets again rather
            # than counting every silent turn as a loss.
            self._playing = False
            self.stats.underruns += 1
            return None
        packet = self._held.pop(self._next, None)
        self._advance(1, played=packet is not None)
        if packet is None:
            self.stats.lost += 1
        return packet

    def _begin(self, packet: Packet[PayloadT]) -> None:
        self._fresh = False
        self._next = self._highest = packet.seq
        self._held[packet.seq] = packet

    def _advance(self, turns: int, *, played: bool = False) -> None:
        self._next += turns
        self._played_mask = ((self._played_mask << turns) | int(played)) & ((1 << _HISTORY) - 1)

    def _count_stale(self, ext: int) -> None:
        """Classify a packet whose turn has passed: played already (duplicate) or late."""
        age = self._next - 1 - ext
        if age < _HISTORY and self._played_mask >> age & 1:
            self.stats.duplicate += 1
        else:
            self.stats.late += 1

    def _skip_to(self, new_next: int) -> None:
        """Move the window forward: held packets before ``new_next`` overflow, gaps are lost."""
        dropped = [ext for ext in self._held if ext < new_next]
        for ext in dropped:
            del self._held[ext]
        self.stats.overflow += len(dropped)
        self.stats.lost += new_next - self._next - len(dropped)
        self._advance(new_next - self._next)

    def _far_off(self, packet: Packet[PayloadT]) -> bool:
        """A packet far from the stream: drop it, unless it confirms a sequence restart."""
        if self._suspect is not None and packet.seq == (self._suspect + 1) % _SEQ_MOD:
            self.stats.resyncs += 1
            self._start()
            self._begin(packet)
            return True
        self._suspect = packet.seq
        self.stats.late += 1
        return False
