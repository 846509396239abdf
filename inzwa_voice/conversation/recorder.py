"""How a call writes its record: the small protocol the session talks to.

The session knows nothing of SQLite, metrics or who watches: ``CallManager`` hands each call a
recorder that writes to the store, counts, and feeds the watchers; the scripted-timeline tests
hand it one that keeps everything in a list. A turn is written twice: when the caller's words
are known at the endpoint (``first``, outcome ``answering``), and again when its reply ended
(played, interrupted, failed, or cut by a hang-up), so a call that ends mid-answer still holds
what the caller said and what they heard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from inzwa_voice.core import CallInfo
from inzwa_voice.store import TurnRecord


class Recorder(Protocol):
    async def start(self, call_id: str, info: CallInfo, profile: str, started_at: float) -> None: ...

    async def turn(self, call_id: str, info: CallInfo, record: TurnRecord, *, first: bool) -> None: ...

    async def event(self, call_id: str, kind: str, data: dict[str, object]) -> None: ...

    async def end(self, call_id: str, info: CallInfo, disposition: str) -> None: ...

    async def recording(self, call_id: str, info: CallInfo, path: Path, duration_s: float | None) -> None:
        """Where the call's recording is: at the start (no duration yet), and at the end."""
        ...
