"""A call starter and a call that only note what a leg drives, for testing a leg's admission,
wire protocol and playout without a session or engines (the real ones are tested end to end)."""

from __future__ import annotations

import asyncio

import numpy as np

from inzwa_voice.conversation.ports import CallRejected, Leg
from inzwa_voice.core import CallInfo, Profile
from inzwa_voice.telemetry import Metrics


class ScriptedCall:
    """A :class:`~inzwa_voice.conversation.ports.Call` that counts frames and notes digits and
    endings; ending closes the leg, as a call's end does."""

    def __init__(self, leg: Leg, info: CallInfo) -> None:
        self.id = "scripted-call"
        self.info = info
        self.profile = Profile(name="scripted")
        self.leg = leg
        self.frames = 0
        self.digits: list[str] = []
        self.endings: list[str] = []
        self.over = asyncio.Event()

    @property
    def active(self) -> bool:
        return not self.endings

    def feed(self, frame: np.ndarray) -> None:
        self.frames += 1

    def end_turn(self) -> None:
        pass

    def dtmf(self, digit: str) -> None:
        self.digits.append(digit)

    async def record_event(self, kind: str, data: dict[str, object]) -> None:
        pass

    async def hangup(self, reason: str = "caller_hangup") -> None:
        await self.end(reason)

    async def end(self, disposition: str, *, say_goodbye: bool = False) -> None:
        self.endings.append(disposition)
        if len(self.endings) == 1:
            await self.leg.close(disposition)
            self.over.set()


class ScriptedCalls:
    """A :class:`~inzwa_voice.conversation.ports.CallStarter` that refuses with ``refusal`` or
    starts a :class:`ScriptedCall`."""

    def __init__(self, refusal: CallRejected | None = None) -> None:
        self.metrics = Metrics()
        self.draining = False
        self._refused = refusal
        self.started: list[ScriptedCall] = []
        self._admitted = asyncio.Event()

    async def start(self, leg: Leg, info: CallInfo) -> ScriptedCall:
        if self._refused is not None:
            raise self._refused
        call = ScriptedCall(leg, info)
        self.started.append(call)
        self._admitted.set()
        return call

    def refusal(self, info: CallInfo) -> CallRejected | None:
        return self._refused

    async def first(self) -> ScriptedCall:
        """The first call admitted, once there is one."""
        await self._admitted.wait()
        return self.started[0]
