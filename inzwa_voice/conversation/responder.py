"""The bot's side of a call: one reply at a time, each an object with an explicit state.

A reply to the caller starts ``speculative`` when the turn detector sees a short pause: the
caller's words so far (the turn's :class:`Utterance`, decoded stretch by stretch) are awaited,
the safe reply is generated and its first phrases synthesized, but nothing plays. The endpoint
``commit``s it and its phrases play in order; speech before the endpoint ``drop``s it (the
stretches already decoded stay with the turn). Once audio is queued it is ``playing``; it ends
``played`` (the leg confirmed the last frame), ``interrupted`` (a barge-in: the caller heard
only part of it), ``dropped`` or ``failed`` (a stage broke or timed out: the caller hears the
profile's authored apology, never silence). Fixed prompts (greeting, re-prompt, goodbye) are replies too, without
a caller turn, so barge-in and playout work the same for them.

Three tasks per answer keep the stages from waiting on each other: the transcription (its own
task, so a hang-up can still keep the caller's words), the producer (brain → phrases → TTS),
and the player (waits for the commit, then queues each phrase's frames on the leg). Whatever a
reply tells the client or the record goes through the call's :class:`Outbox`, in order.

Every model run of a reply goes through the inference scheduler at the reply's urgency:
speculative while the caller may go on, ``FIRST_PHRASE`` from the commit until its first phrase
is ready (so another call's speculation or a REST request never delays it), then speculative
again (the later phrases have the first one's playout to be ready in).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import enum
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from inzwa_voice.conversation.brain import Answer, Dialog, PromptStart, Source
from inzwa_voice.conversation.capacity import Capacity, Turn
from inzwa_voice.conversation.memory import Memory
from inzwa_voice.conversation.outbox import Outbox
from inzwa_voice.conversation.ports import Leg
from inzwa_voice.conversation.prompts import PromptAudio, synthesize_frames
from inzwa_voice.conversation.recorder import Recorder
from inzwa_voice.conversation.reply import ReplyInfo
from inzwa_voice.conversation.utterance import STAGE_TIMEOUT_S, Utterance, retrieved
from inzwa_voice.core import FRAME_MS, PCM16, CallInfo, Profile
from inzwa_voice.engines.base import ChatMessage, Inference
from inzwa_voice.engines.scheduler import Priority, Urgency
from inzwa_voice.store import Outcome, TurnRecord
from inzwa_voice.tracing import CallTrace, TracedTurn

log = logging.getLogger(__name__)
T = TypeVar("T")

LATENCY_STAGES = ("endpoint", "asr_final", "llm_first_token", "first_phrase", "tts_first_audio", "first_frame_sent")
PLAYOUT_GRACE_S = 5.0
"""A leg that never confirms playback costs the audio still queued plus this, never the call."""
KEEP_WORDS_S = 5.0
"""At a hang-up, how long a decode under way may still finish so the caller's words are kept."""
HOLD_GRACE_S = 1.0
"""How much longer the hold prompt waits when the model's first token is in but no phrase yet."""
_HELD_PHRASES = 16  # phrases produced ahead of playback (before the endpoint, or while it plays)


class ReplyState(enum.Enum):
    SPECULATIVE = "speculative"
    COMMITTED = "committed"
    PLAYING = "playing"
    PLAYED = "played"
    INTERRUPTED = "interrupted"
    DROPPED = "dropped"
    FAILED = "failed"


_FINAL = frozenset({ReplyState.PLAYED, ReplyState.INTERRUPTED, ReplyState.DROPPED, ReplyState.FAILED})


@dataclass(eq=False)
class Phrase:
    text: str
    frames: list[PCM16]
    start: int | None = None  # leg position of its first frame, once queued
    end: int | None = None  # leg position after its last frame queued so far


@dataclass(eq=False)
class Reply:
    """One reply: an answer to the caller's utterance, or a fixed prompt (``utterance`` None)."""

    id: str
    index: int
    utterance: Utterance | None = None
    urgency: Urgency = field(default_factory=lambda: Urgency(Priority.FIRST_PHRASE))
    last_voiced_at: float = 0.0  # loop time of the caller's last voiced frame
    state: ReplyState = ReplyState.SPECULATIVE
    stage: str = "asr"
    caller_text: str | None = None
    announced: bool = False  # the caller's words are in memory, the record and the client's events
    phrases: list[Phrase] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)
    info: ReplyInfo = field(default_factory=ReplyInfo)
    answer: Answer | None = None
    dialog: Dialog = field(default_factory=Dialog)  # the conversation's state as this reply leaves it
    error: str | None = None
    committed: asyncio.Event = field(default_factory=asyncio.Event)
    started_at: float = field(default_factory=time.time)
    generated_at: float | None = None  # loop time of the model's last phrase
    transcription: asyncio.Task[str] | None = None
    turn: Turn | None = None  # in flight on the cores' capacity from the commit to the first audio
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    queue: asyncio.Queue[Phrase | None] = field(default_factory=lambda: asyncio.Queue(_HELD_PHRASES))

    @property
    def source(self) -> Source | None:
        """Where the answer came from (a grounded answer may turn into the authored fallback)."""
        return None if self.answer is None else self.answer.source

    @property
    def is_prompt(self) -> bool:
        return self.utterance is None

    @property
    def full_text(self) -> str:
        return " ".join(p.text.strip() for p in self.phrases if p.text.strip())

    @property
    def queued_any(self) -> bool:
        return any(p.start is not None for p in self.phrases)

    @property
    def end_position(self) -> int:
        return max((p.end for p in self.phrases if p.end is not None), default=0)

    def mark(self, stage: str, at: float) -> None:
        if stage not in self.marks and self.last_voiced_at:
            self.marks[stage] = round((at - self.last_voiced_at) * 1000, 1)

    def heard(self, played: int) -> str:
        """What the caller heard by leg position ``played``: whole phrases played, and the share
        of the words of the phrase in flight that matches the share of its frames played."""
        heard = []
        for phrase in self.phrases:
            if phrase.start is None or phrase.end is None or played <= phrase.start:
                break
            if played >= phrase.end and phrase.end - phrase.start >= len(phrase.frames):
                heard.append(phrase.text.strip())
                continue
            words = phrase.text.split()
            share = (played - phrase.start) / max(1, len(phrase.frames))
            heard.append(" ".join(words[: int(len(words) * min(1.0, share))]))
            break
        return " ".join(h for h in heard if h)


class Responder:
    def __init__(
        self,
        *,
        call_id: str,
        info: CallInfo,
        profile: Callable[[], Profile],
        leg: Leg,
        inference: Inference,
        decide: Callable[[str, Dialog, list[ChatMessage], tuple[str, ...]], Awaitable[Answer]],
        prompt_start: Callable[[list[ChatMessage], str, tuple[str, ...]], Awaitable[PromptStart | None]],
        voice_for: Callable[[str], str],
        memory: Memory,
        outbox: Outbox,
        recorder: Recorder,
        trace: CallTrace,
        prompts: PromptAudio,
        on_quiet: Callable[[], None],
        on_played: Callable[[Reply], None],
        capacity: Capacity | None = None,
    ) -> None:
        self._call_id = call_id
        self._capacity = capacity
        self._info = info
        self._profile = profile
        self._leg = leg
        self._inference = inference
        self._decide = decide
        self._prompt_start = prompt_start
        self._voice_for = voice_for
        self._memory = memory
        self._outbox = outbox
        self._recorder = recorder
        self._trace = trace
        self._prompts = prompts
        self._on_quiet = on_quiet
        self._on_played = on_played
        self.dialog = Dialog()  # as the caller has heard it: a dropped speculation leaves it alone
        self._metrics = inference.metrics
        self._speaking = asyncio.Lock()  # one reply's frames at a time on the leg
        self._queued = 0  # leg position after the last frame queued
        self._index = 0
        self.turns = 0  # caller turns recorded (a reply's index also counts dropped speculations)
        self.current: Reply | None = None  # committed, playing
        self.speculative: Reply | None = None
        self._utterance: Utterance | None = None  # the caller's turn in progress (and one they went on with)
        self._reading_ahead: asyncio.Task[None] | None = None

    # ----- what the session asks -----
    @property
    def busy(self) -> bool:
        """The bot is speaking or about to: caller speech now is a barge-in."""
        return self.current is not None or self._leg.played_frames < self._queued

    @property
    def hearing(self) -> bool:
        """Some of the caller's words are heard (stretches decoding or decoded) and not yet answered."""
        return self._utterance is not None and self._utterance.stretches > 0

    def hear(self, stretch: PCM16) -> None:
        """A stretch of the caller's speech closed at a pause: its decode starts now."""
        self._open_utterance().add(stretch)

    def speculate(self, last_voiced_at: float, *, answer: bool = True) -> Reply:
        """Start answering the caller's words so far before the endpoint; nothing plays until
        ``commit``. ``answer=False`` only keeps them (the call is ending: recorded, not answered)."""
        self.drop()
        utterance = self._open_utterance()
        reply = self._new_reply(utterance=utterance, last_voiced_at=last_voiced_at)
        reply.urgency = Urgency(Priority.SPECULATIVE, runs=utterance.urgency.runs)  # one count per turn
        reply.dialog = copy.copy(self.dialog)
        # Not a logged task: a failed decode is the producer's to report.
        reply.transcription = asyncio.get_running_loop().create_task(
            self._transcribe(reply), context=reply.urgency.context()
        )
        reply.transcription.add_done_callback(retrieved)
        if answer:
            reply.tasks += [self._spawn(self._produce(reply), reply), self._spawn(self._play(reply), reply)]
        self.speculative = reply
        return reply

    def heard_question(self) -> bool:
        """The caller's words so far are decoded and end in a question mark: asked, and waiting.
        Only a question mark: a sentence ending in a full stop is as often "Hello." before the
        question as the end of the turn."""
        reply = self.speculative
        task = None if reply is None else reply.transcription
        if task is None or not task.done() or task.cancelled() or task.exception() is not None:
            return False
        return task.result().rstrip().endswith("?")

    def drop(self) -> None:
        """The caller went on speaking: the speculative answer is void; the stretches decoded stay."""
        reply, self.speculative = self.speculative, None
        if reply is not None:
            self._stop(reply, ReplyState.DROPPED, keep_transcription=False)

    def went_on(self) -> None:
        """The caller went on after a pause: drop the speculation, and read their words so far
        into the model while they speak (once decoded: see ``_partial``)."""
        self.drop()
        utterance = self._utterance
        if utterance is not None and utterance.decoded:
            self._read_ahead(utterance)

    def commit(self, last_voiced_at: float, at: float) -> Reply:
        """The caller finished: the speculative reply (or a new one for their words) plays."""
        reply = self.speculative if self.speculative is not None else self.speculate(last_voiced_at)
        self.speculative = None
        self._utterance = None  # the next words are the next turn's
        assert reply.utterance is not None
        reply.utterance.commit()
        if not reply.phrases:
            reply.urgency.priority = Priority.FIRST_PHRASE
        reply.state = ReplyState.COMMITTED
        reply.mark("endpoint", at)
        if self._capacity is not None:
            reply.turn = self._capacity.committed()
        self.dialog = reply.dialog
        self.current = reply
        reply.committed.set()
        self._announce(reply)
        reply.tasks.append(self._spawn(self._hold_prompt(reply), reply))
        return reply

    def say_answer(self, answer: Answer) -> Reply:
        """Speak an answer that needs no caller words (a keypad choice) now, as the current reply."""
        reply = self._new_reply()
        reply.answer, reply.info = answer, answer.info
        reply.state = ReplyState.COMMITTED
        reply.committed.set()
        self.current = reply
        reply.tasks.append(self._spawn(self._speak_answer(reply, answer), reply))
        return reply

    async def _speak_answer(self, reply: Reply, answer: Answer) -> None:
        voice = self._profile().voice if answer.language is None else self._voice_for(answer.language)
        await self._prompt(reply, answer.text or "", voice=voice)
        self._on_played(reply)

    def say(self, text: str, *, arm_idle: bool = True) -> Reply:
        """Speak a fixed prompt now, as the current reply."""
        reply = self._new_reply()
        reply.state = ReplyState.COMMITTED
        reply.committed.set()
        self.current = reply
        reply.tasks.append(self._spawn(self._prompt(reply, text, arm_idle), reply))
        return reply

    def interrupt(self, *, barge_in: bool) -> None:
        """Stop the bot now: cancel the reply, drop queued audio, remember only what was heard."""
        reply, self.current = self.current, None
        played = self._leg.interrupt()
        self._queued = played
        if reply is None:
            return
        if reply.utterance is not None and reply.caller_text is None and not reply.queued_any:
            # Not yet understood and nothing said: the caller was not done. Their stretches
            # (decoded or decoding) begin the next utterance instead of being answered, or lost.
            if self._utterance is None:
                self._utterance = reply.utterance
                reply.utterance.reopen()
            self._stop(reply, ReplyState.DROPPED, keep_transcription=False)
            return
        heard = reply.heard(played)
        self._stop(reply, ReplyState.INTERRUPTED, keep_transcription=False)
        if not barge_in:
            return
        self._memory.add("assistant", heard)
        self._metrics.barge_ins.labels(self._info.leg).inc()
        if not reply.is_prompt and reply.announced:
            self._record_turn(reply, "interrupted", reply_text=heard, barged_in=True)
            self._record_event("barge_in", {"turn": reply.index, "heard": heard})
        self._outbox.event({"type": "barge_in", "id": reply.id, "heard": heard})

    async def wait(self, reply: Reply) -> None:
        """Until ``reply`` reached a final state."""
        while reply.tasks:
            await asyncio.wait(reply.tasks)
            reply.tasks = [t for t in reply.tasks if not t.done()]

    async def close(self) -> None:
        """The call is ending: keep what the caller said and what they heard of the reply."""
        played = self._leg.played_frames
        pending = [r for r in (self.current, self.speculative) if r is not None and not r.is_prompt]
        for reply in (self.current, self.speculative):
            if reply is not None:
                if reply.turn is not None:
                    reply.turn.done()
                for task in reply.tasks:
                    task.cancel()
        for reply in pending:
            if reply.caller_text is None and reply.transcription is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    async with asyncio.timeout(KEEP_WORDS_S):
                        await asyncio.shield(reply.transcription)
            if not reply.caller_text:
                continue
            unanswered = reply.state is ReplyState.SPECULATIVE or not reply.queued_any
            reply.committed.set()
            self._announce(reply)
            self._record_turn(reply, "unanswered" if unanswered else "hangup", reply_text=reply.heard(played))
        for reply in (self.current, self.speculative):
            if reply is not None and reply.transcription is not None:
                reply.transcription.cancel()
        for utterance in {r.utterance for r in pending} | {self._utterance}:
            if utterance is not None:
                utterance.cancel()
        self.current = self.speculative = self._utterance = None
        if self._reading_ahead is not None:
            self._reading_ahead.cancel()

    # ----- stages -----
    async def _transcribe(self, reply: Reply) -> str:
        assert reply.utterance is not None
        text = await reply.utterance.text()
        reply.mark("asr_final", _now())
        reply.caller_text = text.strip()
        self._announce(reply)
        return reply.caller_text

    async def _produce(self, reply: Reply) -> None:
        """The caller's words → the safe reply's phrases → their frames, into ``reply.queue``."""
        try:
            assert reply.transcription is not None
            text = await asyncio.shield(reply.transcription)
            if not text:
                await reply.committed.wait()
                self._finish(reply, ReplyState.DROPPED)  # noise, not words: nothing to answer
                return
            reply.stage = "llm"
            profile = self._profile()
            history = self._memory.messages
            if reply.announced and history and history[-1].role == "user":
                history = history[:-1]  # the question itself, remembered at the endpoint
            assert reply.utterance is not None
            answer = await self._decide(text, reply.dialog, history, reply.utterance.facts)
            reply.answer, reply.info = answer, answer.info
            voice = profile.voice if answer.language is None else self._voice_for(answer.language)
            if answer.text is not None:
                reply.mark("first_phrase", _now())
                async with asyncio.timeout(STAGE_TIMEOUT_S):
                    frames = await self._prompts.frames(answer.text, voice)  # authored: ready-made
                reply.mark("tts_first_audio", _now())
                await self._hand_over(reply, Phrase(answer.text, frames))
            elif answer.phrases is not None:
                await self._stream(reply, answer.phrases, voice)
            await reply.queue.put(None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._fail(reply, exc)

    async def _stream(self, reply: Reply, phrases: AsyncGenerator[str, None], voice: str) -> None:
        """The model's phrases, each synthesized as it comes (the model waits meanwhile), or
        ready-made where a phrase is an authored text (the "I don't know" said in its stead)."""
        async with aclosing(phrases):
            while True:
                reply.stage = "llm"
                async with asyncio.timeout(STAGE_TIMEOUT_S):
                    phrase_text = await anext(phrases, None)
                if phrase_text is None:
                    reply.generated_at = _now()
                    return
                if not phrase_text.strip():
                    continue
                if reply.info.first_token_at is not None:
                    reply.mark("llm_first_token", reply.info.first_token_at)
                reply.mark("first_phrase", _now())
                reply.stage = "tts"
                text = phrase_text.strip()
                frames = self._prompts.ready(text, voice)
                if frames is None:
                    async with asyncio.timeout(STAGE_TIMEOUT_S):
                        frames = await synthesize_frames(self._inference, text, voice)
                reply.mark("tts_first_audio", _now())
                await self._hand_over(reply, Phrase(text, frames))

    @staticmethod
    async def _hand_over(reply: Reply, phrase: Phrase) -> None:
        reply.phrases.append(phrase)
        if reply.urgency.priority is Priority.FIRST_PHRASE:
            reply.urgency.priority = Priority.SPECULATIVE  # the next phrases have this one's playout
        await reply.queue.put(phrase)

    async def _play(self, reply: Reply) -> None:
        """Queue the reply's phrases on the leg once it is committed, then wait for the last one
        to be played; what the answer asks the call to do (transfer, goodbye, a new language)
        happens once it has been heard."""
        await reply.committed.wait()
        while (phrase := await reply.queue.get()) is not None:
            await self._queue_phrase(reply, phrase)
        if reply.state in _FINAL:
            return
        reply.stage = "playout"
        await self._played(reply)
        self._memory.add("assistant", reply.full_text)
        self._finish(reply, ReplyState.PLAYED)
        self._read_ahead()
        self._on_played(reply)

    async def _prompt(self, reply: Reply, text: str, arm_idle: bool = True, voice: str | None = None) -> None:
        try:
            async with asyncio.timeout(STAGE_TIMEOUT_S):
                phrase = Phrase(text, await self._prompts.frames(text, voice or self._profile().voice))
        except Exception:
            log.exception("a prompt could not be synthesized", extra={"call_id": self._call_id})
            self._finish(reply, ReplyState.FAILED, arm_idle=arm_idle)
            return
        reply.phrases.append(phrase)
        await self._queue_phrase(reply, phrase)
        await self._played(reply)
        self._memory.add("assistant", text)
        self._finish(reply, ReplyState.PLAYED, arm_idle=arm_idle)
        self._read_ahead()

    async def _hold_prompt(self, reply: Reply) -> None:
        """A slow answer: say the hold prompt once, so the caller knows someone is there. At
        once when more turns are ahead of this one than the cores answer in time (the queue is
        too deep), else after ``hold_after_s`` without an answer."""
        profile = self._profile()
        if not profile.hold_prompt:
            return
        behind = reply.turn is not None and reply.turn.behind
        await asyncio.sleep(0 if behind else profile.hold_after_s)
        if not behind and reply.info.first_token_at is not None and not reply.phrases:
            # The model is already answering: its first phrase is a few tokens away, and a hold
            # prompt begun now would keep that answer waiting until the prompt has been said.
            await asyncio.sleep(HOLD_GRACE_S)
        if self.current is not reply or reply.phrases or reply.state in _FINAL:
            return
        frames = await self._prompts.frames(profile.hold_prompt, profile.voice)
        async with self._speaking:
            if self.current is reply and not reply.queued_any:
                self._outbox.event({"type": "hold", "id": reply.id, "text": profile.hold_prompt})
                for frame in frames:
                    self._queued = await self._leg.play(frame)

    async def _fail(self, reply: Reply, exc: Exception) -> None:
        """A stage broke: once the caller has finished, apologise (authored), record it, go on."""
        reply.error = f"{type(exc).__name__}: {exc}"[:200] if str(exc) else type(exc).__name__
        log.warning(
            "reply failed", extra={"call_id": self._call_id, "turn": reply.index, "stage": reply.stage}, exc_info=exc
        )
        self._metrics.call_errors.labels(self._info.leg, f"{reply.stage}_failed").inc()
        await reply.committed.wait()
        if reply.caller_text is None:
            reply.caller_text = ""
        self._announce(reply, force=True)
        self._record_event("reply_failed", {"turn": reply.index, "stage": reply.stage, "error": reply.error})
        reply.state = ReplyState.FAILED
        apology = self._profile().apology
        with contextlib.suppress(Exception):
            await reply.queue.put(None)  # the player stops after what it has
        if apology:
            try:
                async with asyncio.timeout(STAGE_TIMEOUT_S):
                    phrase = Phrase(apology, await self._prompts.frames(apology, self._profile().voice))
                reply.phrases.append(phrase)
                await self._queue_phrase(reply, phrase)
                await self._played(reply)
            except Exception:
                log.exception("the apology could not be spoken", extra={"call_id": self._call_id})
        self._memory.add("assistant", reply.heard(self._leg.played_frames))
        self._finish(reply, ReplyState.FAILED)

    def _read_ahead(self, utterance: Utterance | None = None) -> None:
        """Read into the model now, at background urgency, what the caller's next model answer
        will start with, so that it reads only what comes after: the conversation so far once
        the bot has said its piece and the caller listens (a call's history is 100-500 tokens,
        half a second to two seconds on two cores, which the caller would otherwise wait for);
        and, while the caller goes on after a pause, also ``utterance``'s words so far with the
        facts they find (some 100 tokens), which the turn keeps while they stay close, so the
        answer reads only the last sentence."""
        if self._reading_ahead is not None:
            self._reading_ahead.cancel()
        task = asyncio.get_running_loop().create_task(
            self._read(utterance), context=Urgency(Priority.BACKGROUND).context()
        )
        task.add_done_callback(self._read_ahead_done)
        self._reading_ahead = task

    async def _read(self, utterance: Utterance | None) -> None:
        question, kept = ("", ()) if utterance is None else (utterance.decoded, utterance.facts)
        start = await self._prompt_start(self._memory.messages, question, kept)
        if start is None:
            return
        if utterance is not None:
            utterance.facts = start.facts
        await self._inference.prime(start.messages)

    def _read_ahead_done(self, task: asyncio.Task[None]) -> None:
        if self._reading_ahead is task:
            self._reading_ahead = None
        if not task.cancelled() and task.exception() is not None:
            log.warning(
                "reading the conversation ahead failed", exc_info=task.exception(), extra={"call_id": self._call_id}
            )

    # ----- output -----
    async def _queue_phrase(self, reply: Reply, phrase: Phrase) -> None:
        async with self._speaking:
            first = not reply.queued_any
            for frame in phrase.frames:
                position = await self._leg.play(frame)
                self._queued = position
                if phrase.start is None:
                    phrase.start = position - 1
                    self._outbox.event({"type": "llm.partial", "id": reply.id, "text": phrase.text})
                    if first:
                        if reply.turn is not None:
                            reply.turn.answered()
                        self._outbox.event({"type": "tts.start", "id": reply.id, **_source(reply)})
                        reply.mark("first_frame_sent", _now())
                        if reply.state is ReplyState.COMMITTED:
                            reply.state = ReplyState.PLAYING
                phrase.end = position

    async def _played(self, reply: Reply) -> None:
        end = reply.end_position
        queued_s = max(0, self._queued - self._leg.played_frames) * FRAME_MS / 1000
        try:
            async with asyncio.timeout(queued_s + PLAYOUT_GRACE_S):
                await self._leg.wait_for_playout(end)
        except TimeoutError:
            log.warning("the leg did not confirm playback", extra={"call_id": self._call_id, "turn": reply.index})
            self._metrics.call_errors.labels(self._info.leg, "playout_timeout").inc()

    # ----- bookkeeping -----
    def _new_reply(self, *, utterance: Utterance | None = None, last_voiced_at: float = 0.0) -> Reply:
        self._index += 1
        return Reply(uuid.uuid4().hex[:12], self._index, utterance=utterance, last_voiced_at=last_voiced_at)

    def _open_utterance(self) -> Utterance:
        if self._utterance is None:
            language = self._profile().language
            utterance = Utterance(self._inference, language, lambda text: self._partial(utterance, text))
            self._utterance = utterance
        return self._utterance

    def _partial(self, utterance: Utterance, text: str) -> None:
        """A stretch decoded while the caller's turn is still open: what they said so far. If
        they have gone on speaking, it is read into the model (a speculation still waiting for
        it reads it itself)."""
        if utterance is self._utterance and text:
            self._outbox.event({"type": "asr.partial", "text": text})
            if self.speculative is None:
                self._read_ahead(utterance)

    def _announce(self, reply: Reply, *, force: bool = False) -> None:
        """Once committed and understood: the caller's words go to memory, the record and the
        client, before anything of the answer."""
        if reply.announced or not reply.committed.is_set() or reply.caller_text is None:
            return
        if not reply.caller_text and not force:
            return
        reply.announced = True
        self.turns += 1
        self._memory.add("user", reply.caller_text)
        self._record_turn(reply, "answering", reply_text="", first=True)
        if reply.caller_text:
            self._outbox.event({"type": "asr.final", "id": reply.id, "text": reply.caller_text})

    def _finish(self, reply: Reply, state: ReplyState, *, arm_idle: bool = True) -> None:
        reply.state = state
        if reply.turn is not None:
            reply.turn.done()
        if self.current is reply:
            self.current = None
        current = asyncio.current_task()
        for task in reply.tasks:  # what is left of it: the hold prompt's timer
            if task is not current:
                task.cancel()
        if not reply.is_prompt and reply.announced:
            text = reply.heard(self._leg.played_frames) if state is ReplyState.FAILED else reply.full_text
            self._record_turn(reply, "failed" if state is ReplyState.FAILED else "played", reply_text=text)
            for stage in LATENCY_STAGES:
                if stage in reply.marks:
                    self._metrics.turn_latency.labels(self._info.leg, stage).observe(reply.marks[stage] / 1000)
        if reply.queued_any:
            self._outbox.event({"type": "tts.end", "id": reply.id, **_source(reply)})
        if reply.announced:
            runs = {engine: reply.urgency.runs[engine] for engine in ("asr", "llm")}
            self._outbox.event(
                {
                    "type": "turn.metrics",
                    "id": reply.id,
                    "latency_ms": dict(reply.marks),
                    "runs": runs,
                    **_source(reply),
                }
            )
        if arm_idle:
            self._on_quiet()

    def _stop(self, reply: Reply, state: ReplyState, *, keep_transcription: bool) -> None:
        reply.state = state
        if reply.turn is not None:
            reply.turn.done()
        current = asyncio.current_task()
        for task in reply.tasks:
            if task is not current:
                task.cancel()
        if reply.transcription is not None and not keep_transcription:
            reply.transcription.cancel()

    def _record_turn(
        self, reply: Reply, outcome: Outcome, *, reply_text: str, barged_in: bool = False, first: bool = False
    ) -> None:
        if outcome != "answering":
            self._metrics.turns.labels(self._info.leg).inc()
            self._trace_turn(reply, outcome, barged_in=barged_in)
        record = TurnRecord(
            index=reply.index,
            caller_text=reply.caller_text or "",
            reply_text=reply_text,
            reply_full=reply.full_text,
            barged_in=barged_in,
            language=self._profile().language,
            safety=None if reply.info.action == "allow" else reply.info.category or reply.info.action,
            latency_ms=dict(reply.marks),
            started_at=reply.started_at,
            ended_at=time.time(),
            outcome=outcome,
            source=None if reply.source is None else reply.source.public(),
        )
        self._outbox.write(lambda: self._recorder.turn(self._call_id, self._info, record, first=first))

    def _trace_turn(self, reply: Reply, outcome: Outcome, *, barged_in: bool) -> None:
        """The turn has ended: its spans, from the reply's marks (nothing when tracing is off)."""
        if not self._trace.recording:
            return
        wall = time.time() - _now()  # loop time to wall-clock time
        self._trace.turn(
            TracedTurn(
                index=reply.index,
                outcome=outcome,
                started_at=reply.started_at,
                last_voiced_at=reply.last_voiced_at + wall,
                marks=reply.marks,
                source=None if reply.source is None else reply.source.public(),
                language=self._profile().language,
                barged_in=barged_in,
                error=reply.error,
                asr_decodes=reply.urgency.runs["asr"],
                llm_tokens=reply.info.tokens,
                generated_at=None if reply.generated_at is None else reply.generated_at + wall,
                phrases=len(reply.phrases),
            )
        )

    def _record_event(self, kind: str, data: dict[str, object]) -> None:
        self._outbox.write(lambda: self._recorder.event(self._call_id, kind, data))

    def _spawn(self, coro: Coroutine[Any, Any, T], reply: Reply) -> asyncio.Task[T]:
        """A task of ``reply``: its model runs go to the scheduler at the reply's urgency."""
        task = asyncio.get_running_loop().create_task(coro, context=reply.urgency.context())
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("reply task failed", exc_info=task.exception(), extra={"call_id": self._call_id})


def _source(reply: Reply) -> dict[str, object]:
    """The ``source`` of an answer's events (prompts have none)."""
    return {} if reply.source is None else {"source": reply.source.public()}


def _now() -> float:
    return asyncio.get_running_loop().time()
