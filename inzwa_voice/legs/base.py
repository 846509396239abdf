"""The contract between a transport leg and the call session.

A leg owns its wire protocol, codec, sample rate and the real-time pacing of outbound audio.
Towards the session it speaks one language: 20 ms frames of PCM16 mono at 16 kHz both ways,
plus control events. The session never knows which transport carries the call, so SIP and
WebRTC plug into the same session as the WebSocket, Twilio and AudioSocket legs.

Inbound (leg → session): ``CallSession.feed(frame)``, ``.dtmf(digit)``, ``.hangup(reason)``.
Outbound (session → leg): the ``Leg`` protocol below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from inzwa_voice.engines.base import PCM16

LegKind = Literal["ws", "twilio", "audiosocket", "sip", "webrtc"]

# WebSocket close code for a broken protocol (RFC 6455 leaves 4000-4999 to applications).
CLOSE_PROTOCOL = 4400


class ProtocolError(Exception):
    """The far end broke its wire protocol; ``code`` labels the error event and the metric,
    ``close_code`` is what a WebSocket leg closes with."""

    def __init__(self, code: str, message: str, close_code: int = CLOSE_PROTOCOL) -> None:
        super().__init__(message)
        self.code = code
        self.close_code = close_code


@dataclass(frozen=True)
class CallInfo:
    """Who is calling whom over what: the dialplan matches on these."""

    leg: LegKind
    caller: str = ""
    dialled: str = ""
    external_id: str = ""
    params: dict[str, str] = field(default_factory=dict)


class Leg(Protocol):
    kind: LegKind

    @property
    def played_frames(self) -> int:
        """Bot frames that have reached the caller so far (sent, or acknowledged where the
        transport can tell, e.g. Twilio marks); the session cuts memory at this point."""
        ...

    async def play(self, frame: PCM16) -> None:
        """Queue one 20 ms 16 kHz frame for real-time sending; waits while the queue is full."""
        ...

    def flush(self) -> int:
        """Barge-in: drop every queued outbound frame now (Twilio also sends ``clear``)."""
        ...

    async def mark(self, name: str) -> None:
        """Report ``name`` back through ``CallSession.marked`` once what is queued has played."""
        ...

    async def send_event(self, event: dict[str, object]) -> None:
        """A JSON event for legs that carry them (native WebSocket, WebRTC data channel)."""
        ...

    async def close(self, reason: str) -> None:
        """Hang up from our side; idempotent."""
        ...
