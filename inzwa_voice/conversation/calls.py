"""The calls of one process: admission, routing to a profile, prompt audio, call records.

Every leg starts a call through ``CallManager.start``; the manager refuses calls beyond
``max_sessions`` with a clear reason, picks the profile from the dialplan, and writes the call
record as the call goes. Fixed prompts (greeting, hold, re-prompt, goodbye) are synthesized once
per voice and text and reused by every call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Iterator
from contextlib import aclosing
from dataclasses import dataclass

from inzwa_voice.config import Settings
from inzwa_voice.conversation.profile import Profile
from inzwa_voice.conversation.session import LATENCY_STAGES, CallSession, Turn
from inzwa_voice.conversation.turns import TurnSettings
from inzwa_voice.dialplan import Dialplan
from inzwa_voice.engines.base import PCM16
from inzwa_voice.engines.registry import Engines
from inzwa_voice.legs.base import CallInfo, Leg
from inzwa_voice.media.framing import FRAME_SAMPLES, Framer
from inzwa_voice.safety import Safety
from inzwa_voice.store import DISPOSITIONS, CallStore, TurnRecord
from inzwa_voice.telemetry import Metrics

log = logging.getLogger(__name__)

_PROMPT_CACHE = 64


class CallRejected(Exception):
    """The gateway will not take this call now; ``code`` says why (``overloaded``, ``draining``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class CallEvent:
    """Something recorded about a call: ``kind`` is an event kind (dtmf, transfer, barge_in …),
    ``turn`` or ``end``."""

    call_id: str
    kind: str
    data: dict[str, object]


class CallManager:
    def __init__(
        self,
        settings: Settings,
        engines: Engines,
        safety: Safety,
        *,
        dialplan: Dialplan | None = None,
        store: CallStore | None = None,
    ) -> None:
        self.settings = settings
        self.engines = engines
        self.safety = safety
        self.metrics: Metrics = engines.metrics
        self.dialplan = dialplan
        self.store = store
        self.sessions: dict[str, CallSession] = {}
        self.draining = False
        self._watchers: list[asyncio.Queue[CallEvent]] = []
        self._prompts: OrderedDict[tuple[str, str], list[PCM16]] = OrderedDict()
        self._turns = TurnSettings(
            threshold=settings.vad_threshold,
            off_threshold=max(0.05, settings.vad_threshold - 0.15),
            start_ms=settings.turn_start_ms,
            prefetch_ms=settings.turn_prefetch_ms,
            endpoint_ms=settings.turn_endpoint_ms,
            max_utterance_ms=int(settings.turn_max_utterance_s * 1000),
        )

    def profile_for(self, info: CallInfo) -> Profile:
        if self.dialplan is not None:
            return self.dialplan.route(info)
        voice = self.settings.tts_voice if self.settings.language == "en" else "joe-sn"
        return Profile(language=self.settings.language, voice=voice)

    async def start(self, leg: Leg, info: CallInfo, profile: Profile | None = None) -> CallSession:
        """Admit a call or raise ``CallRejected``; the session is running when this returns."""
        if self.draining:
            self.metrics.calls_rejected.labels(info.leg, "draining").inc()
            raise CallRejected("draining", "the gateway is shutting down and takes no new calls")
        if len(self.sessions) >= self.settings.max_sessions:
            self.metrics.calls_rejected.labels(info.leg, "overloaded").inc()
            raise CallRejected(
                "overloaded", f"the gateway is at its limit of {self.settings.max_sessions} concurrent calls"
            )
        session = CallSession(self, uuid.uuid4().hex, leg, info, profile or self.profile_for(info), self._turns)
        self.sessions[session.id] = session
        self.metrics.active_calls.labels(info.leg).inc()
        await session.start()
        return session

    async def prompt_frames(self, text: str, voice: str) -> list[PCM16]:
        key = (voice, text)
        frames = self._prompts.get(key)
        if frames is None:
            framer = Framer(FRAME_SAMPLES)
            frames = []
            stream = self.engines.synthesize(text, voice=voice, sample_rate=16000)
            async with aclosing(stream):
                async for pcm in stream:
                    frames.extend(framer.push(pcm))
            frames.extend(framer.flush(pad=True))
            self._prompts[key] = frames
            if len(self._prompts) > _PROMPT_CACHE:
                self._prompts.popitem(last=False)
        self._prompts.move_to_end(key)
        return frames

    @contextlib.contextmanager
    def watch(self) -> Iterator[asyncio.Queue[CallEvent]]:
        """A feed of everything recorded from now on, for operators' tooling and for tests that
        wait for what a leg cannot show on its wire (a transfer on Twilio, a hang-up handled
        after the socket closed). Bounded: a watcher that stops reading loses the oldest."""
        queue: asyncio.Queue[CallEvent] = asyncio.Queue(maxsize=1000)
        self._watchers.append(queue)
        try:
            yield queue
        finally:
            self._watchers.remove(queue)

    def _notify(self, call_id: str, kind: str, data: dict[str, object]) -> None:
        for queue in self._watchers:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(CallEvent(call_id, kind, data))

    # ----- call records and metrics -----
    async def _write(self, session: CallSession, what: str, write: Awaitable[None]) -> None:
        """A failed record write is logged and counted; it never ends or stalls the call."""
        try:
            await write
        except Exception:
            log.exception("call record write failed", extra={"call_id": session.id, "what": what})
            self.metrics.call_errors.labels(session.info.leg, "record_write").inc()

    async def record_start(self, session: CallSession) -> None:
        if self.store is not None:
            write = self.store.start_call(session.id, session.info, session.profile.name, session.started_at)
            await self._write(session, "start", write)

    async def record_event(self, session: CallSession, kind: str, data: dict[str, object]) -> None:
        self._notify(session.id, kind, data)
        if self.store is not None:
            await self._write(session, kind, self.store.add_event(session.id, kind, data, time.time()))

    async def record_turn(self, session: CallSession, turn: Turn, *, barged_in: bool, heard: str | None) -> None:
        self.metrics.turns.labels(session.info.leg).inc()
        self._notify(session.id, "turn", {"index": turn.index, "barged_in": barged_in, "caller_text": turn.caller_text})
        for stage in LATENCY_STAGES:
            if stage in turn.marks:
                self.metrics.turn_latency.labels(stage).observe(turn.marks[stage] / 1000)
        if self.store is None:
            return
        full = " ".join(turn.phrases)
        record = self.store.add_turn(
            session.id,
            TurnRecord(
                index=turn.index,
                caller_text=turn.caller_text or "",
                reply_text=full if heard is None else heard,
                reply_full=full,
                barged_in=barged_in,
                language=session.profile.language,
                safety=None if turn.info.action == "allow" else turn.info.category or turn.info.action,
                latency_ms=dict(turn.marks),
                started_at=turn.started_at,
                ended_at=time.time(),
            ),
        )
        await self._write(session, "turn", record)
        if barged_in:
            await self.record_event(session, "barge_in", {"turn": turn.index, "heard": heard or ""})

    async def record_end(self, session: CallSession, disposition: str) -> None:
        if disposition not in DISPOSITIONS:
            log.warning("unknown disposition recorded as error", extra={"disposition": disposition})
            disposition = "error"
        self.sessions.pop(session.id, None)
        self.metrics.active_calls.labels(session.info.leg).dec()
        self.metrics.calls.labels(session.info.leg, disposition).inc()
        if self.store is not None:
            await self._write(session, "end", self.store.end_call(session.id, disposition, time.time()))
        self._notify(session.id, "end", {"disposition": disposition})

    async def shutdown(self) -> None:
        self.draining = True
        for session in list(self.sessions.values()):
            await session.end("shutdown")
