"""How many calls and turns the cores can serve, measured from the turns they answer.

A session count alone admitted 20 speaking callers on two cores and then answered six of them,
the rest in silence. What the cores serve is turns, not calls: a turn is *in flight* from the
caller's endpoint until its answer (or the authored apology) starts, and what a turn costs the
cores is measured whenever turns contend for them: with ``n`` turns in flight at its endpoint
on ``slots`` inference slots, a turn that costs ``c`` slot-seconds waits about
``n * c / slots``, so its wait gives ``c``. (A turn with nothing ahead of it says little: its
answer may have been prepared during the caller's pauses, so it keeps the estimate as it is.)
An average of those costs gives:

* ``turn_limit``: turns in flight the cores answer within ``answer_within_s``. A turn
  committed with that many ahead of it cannot be served in time: its caller is told to hold at
  once, not after ``hold_after_s`` of silence.
* ``call_limit``: calls the cores keep answering when each caller asks a question every
  ``turn_interval_s`` (speaking, then listening to the answer), never more than
  ``max_sessions``. A call beyond it, or any new call while ``turn_limit`` turns are already in
  flight (the cores are behind now), hears the profile's busy message and is refused the way
  its leg expects.

Before any turn is measured the cost is ``turn_cost_s``, a prior from this stack on two cores (a
decode of about a second, the first phrase of an answer about another).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass

_SMOOTHING = 0.2  # weight of the newest turn in the average cost
_FLOOR = 0.25  # a measured cost below this share of the prior is taken as this share
_CEILING_S = 60.0


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


@dataclass(frozen=True)
class CapacityLimits:
    """The settings capacity is computed from (``INZWA_CAPACITY_*``)."""

    slots: int
    max_sessions: int
    turn_interval_s: float = 15.0
    answer_within_s: float = 6.0
    turn_cost_s: float = 2.0


class Capacity:
    """Turns in flight and the measured cost of a turn; admission and hold decisions from them."""

    def __init__(self, limits: CapacityLimits, clock: Callable[[], float] = _loop_time) -> None:
        self.limits = limits
        self.cost_s = limits.turn_cost_s
        self.in_flight = 0
        self.measured = 0  # turns whose cost was measured
        self._clock = clock

    @property
    def turn_limit(self) -> int:
        """Turns in flight the cores answer within ``answer_within_s``."""
        limits = self.limits
        return max(limits.slots, math.floor(limits.slots * limits.answer_within_s / self.cost_s))

    @property
    def call_limit(self) -> int:
        """Calls the cores keep answering, each asking every ``turn_interval_s``."""
        limits = self.limits
        served = max(limits.slots, math.floor(limits.slots * limits.turn_interval_s / self.cost_s))
        return min(limits.max_sessions, served)

    def as_dict(self) -> dict[str, object]:
        """The limits now and what they rest on (``/health``)."""
        return {
            "calls": self.call_limit,
            "questions": self.turn_limit,
            "questions_in_flight": self.in_flight,
            "turn_cost_s": round(self.cost_s, 3),
            "measured_turns": self.measured,
        }

    def refusal(self, calls: int) -> str | None:
        """Why a new call must be refused with ``calls`` already up, or None to admit it."""
        if calls >= self.call_limit:
            return f"the gateway is serving as many calls as its cores can answer ({self.call_limit})"
        if self.in_flight >= self.turn_limit:
            return f"the gateway's cores are behind: {self.in_flight} questions are waiting for an answer"
        return None

    def committed(self) -> Turn:
        """A caller finished speaking: their turn is in flight until ``Turn.answered``/``done``."""
        turn = Turn(self, ahead=self.in_flight, at=self._clock())
        self.in_flight += 1
        return turn

    def _measure(self, turn: Turn, now: float) -> None:
        if turn.ahead == 0:
            return
        cost = (now - turn.at) * self.limits.slots / (turn.ahead + 1)
        cost = min(max(cost, _FLOOR * self.limits.turn_cost_s), _CEILING_S)
        self.cost_s += _SMOOTHING * (cost - self.cost_s)
        self.measured += 1


class Turn:
    """One turn in flight, released once (answered, failed, dropped or hung up)."""

    def __init__(self, capacity: Capacity, *, ahead: int, at: float) -> None:
        self._capacity = capacity
        self.ahead = ahead
        self.at = at
        self.open = True

    @property
    def behind(self) -> bool:
        """More turns were ahead of it than the cores answer in time: hold at once."""
        return self.ahead >= self._capacity.turn_limit

    def answered(self) -> None:
        """Its answer (or the apology) started: the wait is measured and the turn released."""
        if self.open:
            self._capacity._measure(self, self._capacity._clock())
        self.done()

    def done(self) -> None:
        """Released without a measurement (dropped, interrupted, the call ended)."""
        if self.open:
            self.open = False
            self._capacity.in_flight -= 1
