"""The calls of one process: admission, routing to a profile, prompt audio, call records.

Every leg starts a call through ``CallManager.start`` (the ``CallStarter`` ``app.py`` hands the
legs); the manager refuses calls beyond what the cores can answer (:mod:`.capacity`, never more
than ``max_sessions``) with the profile's authored busy message, picks the profile from the
dialplan, and gives each call a recorder that writes its record as the call goes.
Fixed prompts are synthesized once per voice and text and shared by every call
(:class:`~inzwa_voice.conversation.prompts.PromptAudio`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from inzwa_voice.config import Settings
from inzwa_voice.conversation.brain import GROUNDED_LANGUAGES, Brain, Knowledge
from inzwa_voice.conversation.capacity import Capacity, CapacityLimits
from inzwa_voice.conversation.ports import CallRejected, Leg
from inzwa_voice.conversation.prompts import Preparation, PromptAudio
from inzwa_voice.conversation.recording import Recordings
from inzwa_voice.conversation.session import CallSession
from inzwa_voice.conversation.turns import TurnSettings
from inzwa_voice.core import CallInfo, Profile
from inzwa_voice.dialplan import Dialplan
from inzwa_voice.engines.base import Inference
from inzwa_voice.knowledge.base import Entry, KnowledgeBase
from inzwa_voice.knowledge.loader import DEFAULT_KNOWLEDGE, load_intents, load_knowledge
from inzwa_voice.safety import Safety
from inzwa_voice.store import DISPOSITIONS, CallStore, TurnRecord
from inzwa_voice.telemetry import Metrics

log = logging.getLogger(__name__)

__all__ = ["CallEvent", "CallManager", "CallRecords", "CallRejected"]


@dataclass(frozen=True)
class CallEvent:
    """Something recorded about a call: ``kind`` is an event kind (dtmf, transfer, barge_in …),
    ``start``, ``turn`` or ``end``."""

    call_id: str
    kind: str
    data: dict[str, object]


class CallRecords:
    """The recorder every call of this process writes through: the store (when open), metrics
    and a bounded feed for watchers. A failed write is logged and counted; it never ends or
    stalls the call."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.store: CallStore | None = None
        self._watchers: list[asyncio.Queue[CallEvent]] = []

    @contextlib.contextmanager
    def watch(self) -> Iterator[asyncio.Queue[CallEvent]]:
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

    async def _write(self, call_id: str, leg: str, what: str, write: Awaitable[None]) -> None:
        try:
            await write
        except Exception:
            log.exception("call record write failed", extra={"call_id": call_id, "what": what})
            self.metrics.call_errors.labels(leg, "record_write").inc()

    async def start(self, call_id: str, info: CallInfo, profile: str, started_at: float) -> None:
        self._notify(call_id, "start", {"leg": info.leg, "profile": profile})
        if self.store is not None:
            await self._write(call_id, info.leg, "start", self.store.start_call(call_id, info, profile, started_at))

    async def turn(self, call_id: str, info: CallInfo, record: TurnRecord, *, first: bool) -> None:
        data: dict[str, object] = {
            "index": record.index,
            "outcome": record.outcome,
            "barged_in": record.barged_in,
            "caller_text": record.caller_text,
            "reply_text": record.reply_text,
        }
        self._notify(call_id, "turn", data)
        if self.store is not None:
            write = self.store.add_turn(call_id, record) if first else self.store.update_turn(call_id, record)
            await self._write(call_id, info.leg, "turn", write)

    async def event(self, call_id: str, kind: str, data: dict[str, object]) -> None:
        self._notify(call_id, kind, data)
        if self.store is not None:
            # The leg is not known here; the store's failures are rare enough to count unlabelled.
            await self._write(call_id, "unknown", kind, self.store.add_event(call_id, kind, data, time.time()))

    async def recording(self, call_id: str, info: CallInfo, path: Path, duration_s: float | None) -> None:
        self._notify(call_id, "recording", {"path": str(path), "duration_s": duration_s})
        if self.store is not None:
            await self._write(call_id, info.leg, "recording", self.store.set_recording(call_id, path, duration_s))

    async def end(self, call_id: str, info: CallInfo, disposition: str) -> None:
        if disposition not in DISPOSITIONS:
            log.warning("unknown disposition recorded as error", extra={"disposition": disposition})
            disposition = "error"
        if self.store is not None:
            await self._write(call_id, info.leg, "end", self.store.end_call(call_id, disposition, time.time()))
        self._notify(call_id, "end", {"disposition": disposition})


_ALWAYS = {"en": "every day, at any time", "sn": "mazuva ese, nguva dzose"}
"""``{office_hours}`` for a dialplan without office hours: people are always there."""


@functools.cache
def _intents() -> tuple[Entry, ...]:
    """The packaged intents, read once per process."""
    return load_intents()


class CallManager:
    """Starts calls for every leg; implements :class:`~inzwa_voice.conversation.ports.CallStarter`."""

    def __init__(
        self,
        settings: Settings,
        inference: Inference,
        safety: Safety,
        *,
        dialplan: Dialplan | None = None,
        voices: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.inference = inference
        self.safety = safety
        self.metrics: Metrics = inference.metrics
        # The voice a call switches to with its language (the profile's own voice otherwise).
        self.voices: Mapping[str, str] = voices or {"en": settings.tts_voice, "sn": "joe-sn"}
        self.records = CallRecords(self.metrics)
        self.prompts = PromptAudio.of(inference)
        self.brain = Brain(inference, safety, _intents())
        self.dialplan = dialplan
        self.knowledge = self.load_knowledge(dialplan)
        self.intent_words = self._intent_words(dialplan)
        self.sessions: dict[str, CallSession] = {}
        self._preparing: set[asyncio.Task[None]] = set()
        self.preparation = Preparation()
        self.draining = False
        self.recordings = Recordings(settings.recordings_dir)
        self.capacity = Capacity(
            CapacityLimits(
                slots=settings.slots,
                max_sessions=settings.max_sessions,
                turn_interval_s=settings.capacity_turn_interval_s,
                answer_within_s=settings.capacity_answer_within_s,
                turn_cost_s=settings.capacity_turn_cost_s,
            )
        )
        self._export_capacity()
        self._turns = TurnSettings(
            threshold=settings.vad_threshold,
            off_threshold=max(0.05, settings.vad_threshold - 0.15),
            start_ms=settings.turn_start_ms,
            prefetch_ms=settings.turn_prefetch_ms,
            endpoint_ms=settings.turn_endpoint_ms,
            question_endpoint_ms=min(settings.turn_question_endpoint_ms, settings.turn_endpoint_ms),
            max_utterance_ms=int(settings.turn_max_utterance_s * 1000),
        )

    @property
    def store(self) -> CallStore | None:
        return self.records.store

    @store.setter
    def store(self, store: CallStore | None) -> None:
        self.records.store = store

    def watch(self) -> contextlib.AbstractContextManager[asyncio.Queue[CallEvent]]:
        """A feed of everything recorded from now on, for operators' tooling and for tests that
        wait for what a leg cannot show on its wire (a transfer on Twilio, a hang-up handled
        after the socket closed). Bounded: a watcher that stops reading loses the oldest."""
        return self.records.watch()

    def load_knowledge(self, dialplan: Dialplan | None) -> dict[str, Knowledge]:
        """Every knowledge base the dialplan's profiles name, loaded and checked (a broken one
        raises ``KnowledgeError`` with its file and line)."""
        loaded: dict[str, Knowledge] = {}
        if dialplan is None:
            return loaded
        for profile in dialplan.profiles.values():
            name = profile.knowledge
            if name is None or name in loaded:
                continue
            path = DEFAULT_KNOWLEDGE if name == "helpline" else dialplan.path.parent / Path(name)
            base = load_knowledge(path, intents=self.brain.intents)
            placeholders = self._placeholders(dialplan, base.languages)
            loaded[name] = Knowledge(base, self.brain.matcher(base.entries), placeholders)
        return loaded

    def _placeholders(self, dialplan: Dialplan, languages: Iterable[str]) -> dict[str, dict[str, str]]:
        """What fills ``{office_hours}`` and ``{helpline_number}`` in authored words, by language."""
        hours = dialplan.default.hours
        return {
            language: {
                "office_hours": hours.describe(language) if hours is not None else _ALWAYS.get(language, ""),
                "helpline_number": self.settings.helpline_number,
            }
            for language in languages
        }

    def _intent_words(self, dialplan: Dialplan | None) -> Knowledge | None:
        """The packaged intents' words with the dialplan's placeholders, for calls whose profile
        has no knowledge base: such a call still says them where nothing may be improvised (``0``
        after hours: when people are in). None without a dialplan: it has no office hours."""
        if dialplan is None:
            return None
        languages = tuple(dict.fromkeys(language for e in self.brain.intents for language in e.answers))
        base = KnowledgeBase(path="intents", entries=(), languages=languages, texts={})
        return Knowledge(base, self.brain.matcher(()), self._placeholders(dialplan, languages))

    def knowledge_for(self, profile: Profile) -> Knowledge | None:
        return None if profile.knowledge is None else self.knowledge.get(profile.knowledge)

    def apply(self, dialplan: Dialplan, knowledge: dict[str, Knowledge]) -> None:
        """Take a new dialplan and its knowledge bases (``load_knowledge``) for the calls that
        start from now on; calls already up keep what they started with."""
        self.dialplan, self.knowledge = dialplan, knowledge
        self.intent_words = self._intent_words(dialplan)

    def default_profile(self) -> Profile:
        """The profile of a call no dialplan rule matches (``/v1/chat`` answers as it)."""
        if self.dialplan is not None:
            return self.dialplan.default.profile
        return self.profile_for(CallInfo(leg="ws"))

    def profile_for(self, info: CallInfo) -> Profile:
        if self.dialplan is not None:
            return self.dialplan.route(info)
        voice = self.settings.tts_voice if self.settings.language == "en" else "joe-sn"
        return Profile(language=self.settings.language, voice=voice)

    def profiles(self) -> list[Profile]:
        """Every profile a call may get."""
        if self.dialplan is None:
            return [self.profile_for(CallInfo(leg="ws"))]
        return list(self.dialplan.profiles.values())

    def prompt_texts(self) -> list[tuple[str, str]]:
        """Every ``(text, voice)`` a call may say ready-made: each profile's fixed texts, then
        every knowledge answer. The fixed texts come first: every call says its greeting, few
        ask any one question."""
        texts = [
            (text, p.voice)
            for p in self.profiles()
            for text in (p.opening, p.busy_message, p.hold_prompt, p.reprompt, p.goodbye, p.apology)
        ]
        for knowledge in self.knowledge.values():
            base = knowledge.base
            for language in base.languages:
                voice = self.voices.get(language)
                if voice is None:
                    continue
                for name in ("fallback", "menu", "dont_know", "refusal"):
                    texts.append((knowledge.text(name, language), voice))
                for entry in (*base.entries, *self.brain.intents):
                    for open_now in (True, False):
                        texts.append((knowledge.answer(entry, language, open_now=open_now), voice))
        return list(dict.fromkeys(t for t in texts if t[0]))

    def _export_capacity(self) -> None:
        """The admission limits as gauges read at each scrape, so an operator sees how close the
        gateway is to refusing callers (and a dashboard why it did)."""
        capacity, metrics = self.capacity, self.metrics
        metrics.capacity_calls.set_function(lambda: capacity.call_limit)
        metrics.capacity_questions.set_function(lambda: capacity.turn_limit)
        metrics.questions_in_flight.set_function(lambda: capacity.in_flight)
        metrics.turn_cost.set_function(lambda: capacity.cost_s)

    def prepare_soon(self) -> asyncio.Task[None]:
        """Synthesize ``prompt_texts`` in the background (at start-up, after a reload), so no
        caller waits for a greeting or an authored answer and a burst of calls does not
        synthesize one text once each; ``preparation`` says how far it is."""
        texts = self.prompt_texts()
        self.preparation = Preparation(total=len(texts))
        task = asyncio.ensure_future(self._prepare(texts))
        self._preparing.add(task)
        task.add_done_callback(self._preparing.discard)
        return task

    async def _prepare(self, texts: list[tuple[str, str]]) -> None:
        await asyncio.gather(self.prompts.prepare(texts, self.preparation), self._prime_model())

    def _model_profile(self) -> Profile:
        """The profile whose callers' questions the model most likely answers: the default
        route's if the model answers its language, else the first such profile (the packaged
        dialplan's default line is Shona, which the model never answers, and its English line
        is), else the default's."""
        default = self.profile_for(CallInfo(leg="ws"))
        if default.language in GROUNDED_LANGUAGES or self.dialplan is None:
            return default
        answered = (p for p in self.dialplan.profiles.values() if p.language in GROUNDED_LANGUAGES)
        return next(answered, default)

    async def _prime_model(self) -> None:
        """Leave the grounded prompt start (the system prompt, the rules and the worked
        examples: some 350 tokens, 1.7-2.5 s on two cores; with a knowledge base given whole,
        its answers too: 750 tokens) of the profile the model answers for in its cache, so the
        first caller whose question goes to the model reads only the facts (if any) and the
        question."""
        profile = self._model_profile()
        try:
            start = await self.brain.prompt_start(
                [], profile=profile, language=profile.language, knowledge=self.knowledge_for(profile)
            )
            if start is not None:
                await self.inference.prime(start.messages)
        except Exception as exc:  # the model failed to read it: the calls will say so, not this
            log.warning("the model could not be primed", extra={"error": str(exc)[:200]})

    async def prepared(self) -> Preparation:
        """Once the background synthesis started so far has finished."""
        await asyncio.gather(*self._preparing, return_exceptions=True)
        return self.preparation

    def refusal(self, info: CallInfo, profile: Profile | None = None) -> CallRejected | None:
        """Why a call would be refused now (draining, or beyond capacity), with the profile's
        busy message; None: it would be admitted."""
        if self.draining:
            return CallRejected("draining", "the gateway is shutting down and takes no new calls")
        reason = self.capacity.refusal(len(self.sessions))
        if reason is None:
            return None
        profile = profile or self.profile_for(info)
        say = profile.busy_message
        return CallRejected(
            "overloaded",
            reason,
            say=say,
            frames=(self.prompts.ready(say, profile.voice) or []) if say else [],
            transfer_target=profile.transfer_target,
        )

    async def start(self, leg: Leg, info: CallInfo, profile: Profile | None = None) -> CallSession:
        """Admit a call or raise ``CallRejected``; the session is running when this returns."""
        profile = profile or self.profile_for(info)
        refused = self.refusal(info, profile)
        if refused is not None:
            self.metrics.calls_rejected.labels(info.leg, refused.code).inc()
            raise refused
        session = CallSession(
            call_id=uuid.uuid4().hex,
            leg=leg,
            info=info,
            profile=profile,
            inference=self.inference,
            brain=self.brain,
            knowledge=self.knowledge_for(profile),
            intent_words=self.intent_words,
            voices=self.voices,
            recorder=self.records,
            prompts=self.prompts,
            turn_settings=self._turns,
            on_end=self._ended,
            capacity=self.capacity,
            recordings=self.recordings,
        )
        self.sessions[session.id] = session
        self.metrics.active_calls.labels(info.leg).inc()
        # One line at the start and one at the end of every call, whatever its leg (here and in
        # ``_ended``), both with the call's trace id: the pair an operator greps a call by.
        # ``external_id`` is the platform's id (SIP Call-ID, Twilio CallSid, AudioSocket UUID);
        # the caller's number is not logged.
        with session.traced():
            log.info(
                "call started",
                extra={
                    "call_id": session.id,
                    "leg": info.leg,
                    "profile": profile.name,
                    "external_id": info.external_id,
                    "dialled": info.dialled,
                },
            )
        try:
            await session.start()
        except BaseException:
            await session.end("error")
            raise
        return session

    def _ended(self, session: CallSession, disposition: str) -> None:
        if self.sessions.pop(session.id, None) is None:
            return
        self.metrics.active_calls.labels(session.info.leg).dec()
        disposition = disposition if disposition in DISPOSITIONS else "error"
        self.metrics.calls.labels(session.info.leg, disposition).inc()
        log.info(
            "call ended",
            extra={
                "call_id": session.id,
                "leg": session.info.leg,
                "profile": session.profile.name,
                "disposition": disposition,
                "turns": session.turns,
                "duration_s": round(time.time() - session.started_at, 3),
            },
        )

    def stopping(self) -> None:
        """The gateway begins to stop: no new calls from now on; the legs drain theirs next."""
        self.draining = True
        log.info("gateway stopping", extra={"active_calls": len(self.sessions)})

    async def shutdown(self) -> None:
        """End every call still up (after the legs' drains), as ``shutdown``."""
        self.draining = True
        live = list(self.sessions.values())
        for session in live:
            await session.end("shutdown")
        log.info("calls drained", extra={"ended_at_shutdown": len(live)})
        self.recordings.close()
