"""Transfers waiting for the platform that carries the call to ask where the caller goes.

Twilio and Asterisk cannot be told to move a call over the stream the gateway holds: the
gateway ends the stream, and the platform then asks over HTTP what comes next (Twilio fetches
``<Connect action>``; the Asterisk dialplan runs ``CURL()``). Between the two the target waits
here, keyed by the platform's id for the call (Twilio's CallSid, the AudioSocket UUID). The
question comes within seconds or not at all, so entries expire, and the book is bounded: a
platform that never asks costs no memory.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from inzwa_voice.conversation.ports import Call

log = logging.getLogger(__name__)

MAX_WAITING: Final = 1024
TTL_S: Final = 300.0


class Handoffs:
    """A bounded, expiring map from a platform's call id to the transfer target (and the call,
    whose record takes what the platform later says of the transfer)."""

    def __init__(
        self, *, max_waiting: int = MAX_WAITING, ttl_s: float = TTL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max = max_waiting
        self._ttl = ttl_s
        self._clock = clock
        self._waiting: OrderedDict[str, tuple[float, str, Call | None]] = OrderedDict()

    def put(self, key: str, target: str, call: Call | None = None) -> None:
        """Remember that call ``key`` is to go to ``target``; the oldest go beyond the bound."""
        self._expire()
        self._waiting.pop(key, None)
        self._waiting[key] = (self._clock() + self._ttl, target, call)
        while len(self._waiting) > self._max:
            self._waiting.popitem(last=False)

    def get(self, key: str) -> str | None:
        """The target waiting for ``key``; None if none (or it expired). Asking again gets the
        same answer (a platform may retry), until the entry expires."""
        self._expire()
        entry = self._waiting.get(key)
        return None if entry is None else entry[1]

    def call(self, key: str) -> Call | None:
        """The call booked under ``key`` (ended by now), to record how its transfer went."""
        self._expire()
        entry = self._waiting.get(key)
        return None if entry is None else entry[2]

    def __len__(self) -> int:
        self._expire()
        return len(self._waiting)

    def _expire(self) -> None:
        now = self._clock()
        while self._waiting:
            key, (deadline, _, _) = next(iter(self._waiting.items()))
            if deadline > now:
                return
            del self._waiting[key]


async def hand_off(
    book: Handoffs | None, key: str | None, call: Call | None, target: str, *, how: str, why_not: str
) -> bool:
    """A leg whose platform asks for the target after the stream ends (Twilio, AudioSocket):
    leave ``target`` in ``book`` under the platform's ``key`` for the call and record ``how`` it
    goes on; True, so the call ends and the platform asks. Without a book or a key (no id, or
    the call is already over) nothing could find it: recorded with ``why_not``, and False."""
    if book is None or not key:
        await record_transfer(call, target, ok=False, reason=why_not)
        return False
    book.put(key, target, call)
    await record_transfer(call, target, ok=True, reason=how)
    return True


async def record_transfer(call: Call | None, target: str, *, ok: bool, reason: str, talk_s: int | None = None) -> None:
    """A transfer's outcome in the call record (``transfer_result``, shaped as SIP's): ``ok``
    when the platform takes the caller on, ``reason`` how or why not, ``talk_s`` how long the
    caller then talked with the person, where the platform says."""
    outcome: dict[str, object] = {"target": target, "ok": ok, "status": 0, "reason": reason}
    if talk_s is not None:
        outcome["talk_s"] = talk_s
    if call is not None:
        log.info("transfer", extra={"call_id": call.id, **outcome})
        await call.record_event("transfer_result", outcome)
