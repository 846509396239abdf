"""The contracts between the conversation and the legs that carry calls.

A leg never imports the session, the call manager or an engine: ``app.py`` hands it a
:class:`CallStarter`, the leg starts a :class:`Call` with itself as the :class:`Leg`, feeds the
call the caller's frames and control events, and plays what the call gives it. Both sides are
small protocols, so a new leg is one file that speaks its wire format and these few methods.

Outbound audio is a playout handle (the model is livekit-agents' ``AudioOutput``): ``play``
queues one frame and returns its position, ``interrupt`` drops everything not yet played and
returns the frames that were, and ``wait_for_playout(position)`` resolves once the frame before
``position`` reached the caller (True) or was interrupted (False).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from inzwa_voice.core import PCM16, CallInfo, LegKind, Profile
from inzwa_voice.telemetry import Metrics


class CallRejected(Exception):
    """The gateway will not take this call now; ``code`` says why (``overloaded``, ``draining``).

    ``say`` is the profile's authored busy message, and ``frames`` its audio when ready-made:
    legs that can play before refusing play it, the others carry the words (Twilio's ``<Say>``).
    ``transfer_target`` is where the profile hands callers to people, if anywhere."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        say: str = "",
        frames: Sequence[PCM16] = (),
        transfer_target: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.say = say
        self.frames = frames
        self.transfer_target = transfer_target


class Leg(Protocol):
    """What the conversation needs of a transport: 20 ms 16 kHz frames out, events, hang-up."""

    kind: LegKind

    @property
    def played_frames(self) -> int:
        """Bot frames that have reached the caller so far (the position played)."""
        ...

    async def play(self, frame: PCM16) -> int:
        """Queue one frame for real-time sending (waits while the queue is full); returns the
        position after it, for ``wait_for_playout``."""
        ...

    def interrupt(self) -> int:
        """Barge-in: drop every frame not yet played (Twilio also sends ``clear``); returns the
        frames played."""
        ...

    async def wait_for_playout(self, position: int) -> bool:
        """True once everything before ``position`` played; False if it was interrupted."""
        ...

    async def send_event(self, event: dict[str, object]) -> None:
        """A JSON event for legs that carry them (native WebSocket, WebRTC data channel)."""
        ...

    async def transfer(self, target: str) -> bool:
        """Hand the caller to ``target``; True once the transport confirms it took the call."""
        ...

    async def close(self, reason: str) -> None:
        """Hang up from our side; idempotent."""
        ...


class Call(Protocol):
    """One running call, as its leg drives it. Every method returns at once or nearly: a leg's
    receive loop never waits on a model, a socket of another call or the database."""

    id: str
    info: CallInfo
    profile: Profile

    @property
    def active(self) -> bool: ...

    def feed(self, frame: PCM16) -> None:
        """One inbound 20 ms frame at 16 kHz."""
        ...

    def end_turn(self) -> None:
        """The client says the caller finished speaking (push-to-talk)."""
        ...

    def dtmf(self, digit: str) -> None: ...

    async def record_event(self, kind: str, data: dict[str, object]) -> None:
        """Add an event the leg saw (an RTP summary, a transfer's outcome) to the call record."""
        ...

    async def hangup(self, reason: str = "caller_hangup") -> None:
        """The far end is gone: end the call without a goodbye."""
        ...

    async def end(self, disposition: str, *, say_goodbye: bool = False) -> None:
        """End the call from our side (the caller's ``stop``, a drain)."""
        ...


class CallStarter(Protocol):
    """How a leg admits a call; ``app.py`` hands every leg the same one."""

    metrics: Metrics
    draining: bool

    async def start(self, leg: Leg, info: CallInfo) -> Call:
        """Start the call (it is running when this returns) or raise :class:`CallRejected`."""
        ...

    def refusal(self, info: CallInfo) -> CallRejected | None:
        """The refusal ``start`` would raise for this call now, or None: for legs that answer
        before any media flows (Twilio's voice webhook says the busy message in TwiML)."""
        ...
