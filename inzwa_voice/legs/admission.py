"""The one way every leg admits a call: start it, refuse it the leg's way, hang it up on exit.

A slot is taken only inside this context, and given back by its ``finally`` whatever ends the
leg's loop (the caller's hang-up, a transport error, a cancelled handler), so no leg can leak a
session by failing between starting a call and serving it.

A call refused because the cores are full hears the profile's authored busy message first,
where the leg's media already flows before admission (WebSocket, AudioSocket, a Twilio stream
that got past its webhook); SIP refuses before answering (503 with Retry-After, so a proxy tries
another gateway) and WebRTC before its media is negotiated (503 to the offer), with the words
in the refusal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Final

from inzwa_voice.conversation.ports import Call, CallRejected, CallStarter, Leg
from inzwa_voice.core import FRAME_MS, CallInfo, LegKind

log = logging.getLogger(__name__)

MEDIA_BEFORE_ADMISSION: Final[frozenset[LegKind]] = frozenset({"ws", "audiosocket", "twilio"})
"""Legs that can play audio to a caller they have not admitted."""
PLAYOUT_GRACE_S: Final = 2.0
"""Beyond the busy message's own length, how long its playout may take before the refusal."""


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
        spoke = bool(exc.say) and leg.kind in MEDIA_BEFORE_ADMISSION
        if spoke:
            await say_busy(leg, exc)
        await refuse(exc)
        if spoke:
            await leg.close(exc.code)  # its output ran for the busy message: stop it
        yield None
        return
    try:
        yield call
    finally:
        await call.hangup("caller_hangup")


async def say_busy(leg: Leg, refusal: CallRejected) -> None:
    """Tell the client (legs with events) and play the refusal's busy message to the caller,
    until it was heard (bounded: a caller gone meanwhile only ends it sooner)."""
    with contextlib.suppress(ConnectionError):
        await leg.send_event({"type": "busy", "code": refusal.code, "text": refusal.say})
    try:
        async with asyncio.timeout(len(refusal.frames) * FRAME_MS / 1000 + PLAYOUT_GRACE_S):
            position = 0
            for frame in refusal.frames:
                position = await leg.play(frame)
            await leg.wait_for_playout(position)
    except (TimeoutError, ConnectionError) as exc:
        log.info("the busy message was not heard to the end", extra={"leg": leg.kind, "error": repr(exc)})
