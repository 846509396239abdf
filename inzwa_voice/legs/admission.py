"""The one way every leg admits a call: start it, refuse it the leg's way, hang it up on exit.

A slot is taken only inside this context, and given back by its ``finally`` whatever ends the
leg's loop (the caller's hang-up, a transport error, a cancelled handler), so no leg can leak a
session by failing between starting a call and serving it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from inzwa_voice.conversation.ports import Call, CallRejected, CallStarter, Leg
from inzwa_voice.core import CallInfo


@asynccontextmanager
async def admitted(
    calls: CallStarter,
    leg: Leg,
    info: CallInfo,
    refuse: Callable[[CallRejected], Awaitable[None]],
) -> AsyncIterator[Call | None]:
    """Yield the running call, or None after ``refuse`` has told the far end no (its own way:
    WebSocket 1013, an AudioSocket error frame, SIP 503 with Retry-After, HTTP 503)."""
    try:
        call = await calls.start(leg, info)
    except CallRejected as exc:
        await refuse(exc)
        yield None
        return
    try:
        yield call
    finally:
        await call.hangup("caller_hangup")
