"""Where a call's bot audio stands: frames queued towards the caller and frames played.

Every leg's output keeps one :class:`Playout`. The conversation asks it three things, the way
livekit-agents' ``AudioOutput`` does: ``queue`` a frame (its position comes back), ``interrupt``
(barge-in: nothing queued will play; the frames actually played come back) and
``wait_for(position)`` (the frame at ``position`` played, or was interrupted). Positions count
pipeline frames from the start of the call; after an interrupt the next frame follows the last
one played, so "played" is always a prefix of what was queued.

What counts as played is the leg's to say: a paced leg when it hands the frame to the wire,
WebRTC when aiortc pulls it, SIP when the conference bridge takes it, Twilio when it echoes a
mark sent after it. A leg may only ever report less than the truth, never more.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Playout:
    def __init__(self) -> None:
        self.queued = 0
        self.played = 0
        self._waiters: list[tuple[int, asyncio.Future[bool]]] = []

    def queue(self, frames: int = 1) -> int:
        """Count ``frames`` more as queued; returns the position after them."""
        self.queued += frames
        return self.queued

    def advance(self, frames: int = 1) -> None:
        """``frames`` more reached the caller."""
        self.advance_to(self.played + frames)

    def advance_to(self, position: int) -> None:
        """Everything before ``position`` reached the caller (capped at what was queued)."""
        position = min(position, self.queued)
        if position <= self.played:
            return
        self.played = position
        self._settle(lambda at: at <= position, True)

    def interrupt(self) -> int:
        """Nothing queued will play: positions beyond ``played`` are void. Returns ``played``."""
        self.queued = self.played
        self._settle(lambda at: True, False)
        return self.played

    async def wait_for(self, position: int) -> bool:
        """True once the frame before ``position`` played; False if it was interrupted first."""
        if position <= self.played:
            return True
        if position > self.queued:
            return False
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.append((position, future))
        return await future

    def _settle(self, due: Callable[[int], bool], result: bool) -> None:
        keep = []
        for at, future in self._waiters:
            if due(at):
                if not future.done():
                    future.set_result(result)
            else:
                keep.append((at, future))
        self._waiters = keep
