"""One call: turn-taking, the streaming reply, barge-in, prompts, timers and the call record.

The session is a set of asyncio tasks joined by bounded queues: the inbound task runs the VAD
inline on every 20 ms frame (so barge-in never waits behind a model), partial and final ASR,
the LLM and the TTS run in the inference executor, and a single output lock keeps prompt audio
and answer audio from interleaving on the leg. Everything the session starts is cancelled when
the call ends.

A reply is speculative until the endpoint: at the prefetch point the session already decodes
the utterance, asks the LLM and synthesizes the first phrase, holding the frames back; the
endpoint releases them, and speech before it drops the whole attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from inzwa_voice.conversation.memory import Memory
from inzwa_voice.conversation.phrases import heard_text, split_phrases
from inzwa_voice.conversation.profile import Profile
from inzwa_voice.conversation.reply import ReplyInfo, safe_reply
from inzwa_voice.conversation.turns import FRAME_MS, TurnDetector, TurnEvent, TurnSettings
from inzwa_voice.engines.base import PCM16
from inzwa_voice.legs.base import CallInfo, Leg
from inzwa_voice.media.framing import FRAME_SAMPLES, Framer

if TYPE_CHECKING:
    from inzwa_voice.conversation.calls import CallManager

log = logging.getLogger(__name__)

LATENCY_STAGES = ("endpoint", "asr_final", "llm_first_token", "first_phrase", "tts_first_audio", "first_frame_sent")
_INBOUND_FRAMES = 250  # 5 s of audio; beyond it the oldest frames are dropped
_PENDING_FRAMES = 500  # 10 s of speculative answer audio held before the endpoint
_PARTIAL_EVERY_FRAMES = 50  # re-decode the growing utterance every second of voiced speech
_STAGE_TIMEOUT_S = 15.0


@dataclass
class Turn:
    """One bot turn: an answer to an utterance, or a fixed prompt (greeting, hold, goodbye)."""

    id: str
    kind: str  # "answer" | "prompt"
    index: int
    last_voiced_at: float = 0.0
    committed: asyncio.Event = field(default_factory=asyncio.Event)
    played: asyncio.Event = field(default_factory=asyncio.Event)
    caller_text: str | None = None
    user_added: bool = False
    phrases: list[str] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)  # each phrase's frames, known before it plays
    starts: dict[int, int] = field(default_factory=dict)  # phrase -> leg frame index of its first frame
    pending: list[tuple[int, PCM16]] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)
    info: ReplyInfo = field(default_factory=ReplyInfo)
    task: asyncio.Task[None] | None = None
    started_at: float = field(default_factory=time.time)
    frames_played: int = 0

    def mark(self, stage: str, at: float | None = None) -> None:
        if stage not in self.marks and self.last_voiced_at:
            moment = time.perf_counter() if at is None else at
            self.marks[stage] = round((moment - self.last_voiced_at) * 1000, 1)

    def heard(self, played_frames: int) -> str:
        spans = [(self.phrases[i], start, start + self.lengths[i]) for i, start in sorted(self.starts.items())]
        return heard_text(spans, played_frames)


class CallSession:
    def __init__(
        self,
        manager: CallManager,
        call_id: str,
        leg: Leg,
        info: CallInfo,
        profile: Profile,
        turn_settings: TurnSettings,
    ) -> None:
        self.manager = manager
        self.id = call_id
        self.leg = leg
        self.info = info
        self.profile = profile
        engines = manager.engines
        self._detector = TurnDetector(engines.vad.stream(), turn_settings)
        self._memory = Memory(profile.system_prompt)
        # Frames, or None: the client's "end of turn" marker, kept in order with the audio.
        self._inbound: asyncio.Queue[PCM16 | None] = asyncio.Queue(_INBOUND_FRAMES)
        self._out_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._current: Turn | None = None
        self._speculative: Turn | None = None
        self._queued_frames = 0
        self._turn_index = 0
        self._partial_task: asyncio.Task[None] | None = None
        self._frames_since_partial = 0
        self._idle_handle: asyncio.TimerHandle | None = None
        self._reprompted = False
        self._ended = asyncio.Event()
        self._ending = False
        self.started_at = time.time()
        self.disposition: str | None = None
        self.dropped_inbound = 0

    # ----- leg -> session -----
    def feed(self, frame: PCM16) -> None:
        """Accept one inbound 20 ms frame at 16 kHz; never blocks the leg."""
        if self._ending:
            return
        if len(frame) != FRAME_SAMPLES:
            raise ValueError(f"frames must hold {FRAME_SAMPLES} samples, got {len(frame)}")
        if self._inbound.full():
            self._inbound.get_nowait()
            self.dropped_inbound += 1
        self._inbound.put_nowait(frame)

    def end_turn(self) -> None:
        """The client says the caller finished (push-to-talk): endpoint after the queued audio."""
        if not self._ending:
            if self._inbound.full():
                self._inbound.get_nowait()
            self._inbound.put_nowait(None)

    def dtmf(self, digit: str) -> None:
        self._spawn(self._on_dtmf(digit))

    def marked(self, name: str) -> None:
        turn = self._current
        if turn is not None and name == f"turn-{turn.id}":
            turn.played.set()

    async def hangup(self, reason: str = "caller_hangup") -> None:
        """The far end hung up."""
        await self.end(reason, say_goodbye=False)

    # ----- lifecycle -----
    async def start(self) -> None:
        self._spawn(self._inbound_loop())
        loop = asyncio.get_running_loop()
        self._max_length = loop.call_later(self.profile.max_call_s, self._end_soon, "max_length")
        await self.manager.record_start(self)
        if self.profile.greeting:
            self._start_prompt(self.profile.greeting)

    async def wait_closed(self) -> None:
        await self._ended.wait()

    @property
    def active(self) -> bool:
        return not self._ending

    def _end_soon(self, disposition: str) -> None:
        self._spawn(self.end(disposition, say_goodbye=True))

    async def end(self, disposition: str, *, say_goodbye: bool = False) -> None:
        """End the call once: optionally say goodbye, stop every task, close the leg, record."""
        if self._ending:
            return
        if say_goodbye and self.profile.goodbye:
            await self._interrupt(record=False)
            goodbye = self._start_prompt(self.profile.goodbye, arm_idle=False).task
            assert goodbye is not None
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(30):
                    await asyncio.shield(goodbye)  # played to its end, tts.end included
        self._ending = True
        self.disposition = disposition
        self._max_length.cancel()
        self._cancel_idle()
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        await self.manager.record_end(self, disposition)  # recorded before the caller is told
        with contextlib.suppress(Exception):
            await self.leg.send_event({"type": "call.end", "reason": disposition})
        with contextlib.suppress(Exception):
            await self.leg.close(disposition)
        self._ended.set()

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("call task failed", exc_info=task.exception(), extra={"call_id": self.id})

    # ----- inbound audio and turn-taking -----
    async def _inbound_loop(self) -> None:
        while True:
            frame = await self._inbound.get()
            events = self._detector.force_endpoint() if frame is None else self._detector.push(frame)
            for event in events:
                await self._on_turn_event(event)
            # Partials only while the caller is audibly speaking: during the endpoint silence
            # the cores belong to the final decode and the speculative answer.
            if self._detector.in_speech and self._detector.voiced:
                self._frames_since_partial += 1
                if self._frames_since_partial >= _PARTIAL_EVERY_FRAMES:
                    self._frames_since_partial = 0
                    self._maybe_partial()

    async def _on_turn_event(self, event: TurnEvent) -> None:
        if event is TurnEvent.SPEECH_START:
            self._cancel_idle()
            self._reprompted = False
            if self._reply_active():
                await self._interrupt(record=True)
        elif event is TurnEvent.PREFETCH:
            if self._partial_task is not None:
                self._partial_task.cancel()  # stale now, and it would delay the final decode
            self._start_answer(self._detector.utterance())
        elif event is TurnEvent.RESUMED:
            self._drop_speculation()
        elif event is TurnEvent.ENDPOINT:
            audio = self._detector.take_utterance()
            if self._speculative is None:
                self._start_answer(audio)
            self._commit()

    def _maybe_partial(self) -> None:
        # Partials are a courtesy; final transcripts are the answer's critical path. A decode
        # already running (this call's or another's) means the cores are taken: skip this one.
        if self.manager.engines.asr_in_flight:
            return
        self._partial_task = self._spawn(self._partial(self._detector.utterance()))

    async def _partial(self, audio: PCM16) -> None:
        result = await self.manager.engines.transcribe(_to_float(audio), language=self.profile.language)
        if result.text and self._detector.in_speech:
            await self.leg.send_event({"type": "asr.partial", "text": result.text})

    # ----- answers -----
    def _start_answer(self, audio: PCM16) -> None:
        self._drop_speculation()
        self._turn_index += 1
        turn = Turn(id=uuid.uuid4().hex[:12], kind="answer", index=self._turn_index)
        turn.last_voiced_at = self._last_voiced_wall()
        turn.task = self._spawn(self._answer(turn, audio))
        self._speculative = turn

    def _last_voiced_wall(self) -> float:
        """Wall time of the caller's last voiced frame, from the media clock's lag behind it."""
        silent_frames = self._detector.frames - max(0, self._detector.last_voiced_frame)
        return time.perf_counter() - silent_frames * FRAME_MS / 1000

    def _drop_speculation(self) -> None:
        turn, self._speculative = self._speculative, None
        if turn is not None and turn.task is not None:
            turn.task.cancel()

    def _commit(self) -> None:
        turn, self._speculative = self._speculative, None
        if turn is None:
            return
        turn.mark("endpoint")
        self._current = turn
        turn.committed.set()
        self._add_user(turn)
        self._spawn(self._hold_prompt(turn))

    def _add_user(self, turn: Turn) -> None:
        if turn.committed.is_set() and turn.caller_text and not turn.user_added:
            turn.user_added = True
            self._memory.add("user", turn.caller_text)
            self._spawn(self.leg.send_event({"type": "asr.final", "id": turn.id, "text": turn.caller_text}))

    async def _answer(self, turn: Turn, audio: PCM16) -> None:
        engines = self.manager.engines
        async with asyncio.timeout(_STAGE_TIMEOUT_S):
            result = await engines.transcribe(_to_float(audio), language=self.profile.language)
        turn.mark("asr_final")
        turn.caller_text = result.text.strip()
        if not turn.caller_text:
            await turn.committed.wait()
            await self._finish_turn(turn)  # noise, not words: nothing to answer
            return
        self._add_user(turn)
        pending_user = None if turn.user_added else turn.caller_text
        replies = safe_reply(
            engines,
            self.manager.safety,
            self._memory.prompt(pending_user),
            language=self.profile.language,
            info=turn.info,
        )
        async with aclosing(replies):
            async for text in replies:
                turn.mark("llm_first_token", turn.info.first_token_at)
                turn.mark("first_phrase")
                for phrase in split_phrases(text):
                    await self._speak(turn, phrase)
        await self._complete(turn)
        if turn.info.transfer:
            await self._request_transfer("safety")

    async def _speak(self, turn: Turn, phrase: str) -> None:
        """Synthesize one phrase and hand its frames to the leg (held until the endpoint).

        The phrase is synthesized whole before it plays (at RTF ~0.03 that costs a few tens of
        milliseconds) so its length is known: a barge-in then cuts its words in proportion.
        """
        framer = Framer(FRAME_SAMPLES)
        frames: list[PCM16] = []
        stream = self.manager.engines.synthesize(phrase, voice=self.profile.voice, sample_rate=16000)
        async with aclosing(stream):
            async for pcm in stream:
                turn.mark("tts_first_audio")
                frames.extend(framer.push(pcm))
        frames.extend(framer.flush(pad=True))
        index = self._add_phrase(turn, phrase, len(frames))
        for frame in frames:
            await self._emit(turn, index, frame)

    @staticmethod
    def _add_phrase(turn: Turn, phrase: str, length: int) -> int:
        turn.phrases.append(phrase)
        turn.lengths.append(length)
        return len(turn.phrases) - 1

    async def _emit(self, turn: Turn, phrase: int, frame: PCM16) -> None:
        if not turn.committed.is_set():
            turn.pending.append((phrase, frame))
            if len(turn.pending) < _PENDING_FRAMES:
                return
            await turn.committed.wait()
        async with self._out_lock:
            for held_phrase, held in turn.pending:
                await self._play(turn, held_phrase, held)
            turn.pending.clear()
            await self._play(turn, phrase, frame)

    async def _play(self, turn: Turn, phrase: int, frame: PCM16) -> None:
        if phrase not in turn.starts:
            turn.starts[phrase] = self._queued_frames
            await self.leg.send_event({"type": "llm.partial", "id": turn.id, "text": turn.phrases[phrase]})
            if phrase == 0:
                await self.leg.send_event({"type": "tts.start", "id": turn.id})
        await self.leg.play(frame)
        self._queued_frames += 1
        turn.frames_played += 1
        turn.mark("first_frame_sent")

    async def _complete(self, turn: Turn) -> None:
        """Flush held frames, wait until the leg has played the turn, then remember it."""
        await turn.committed.wait()
        async with self._out_lock:
            for phrase, frame in turn.pending:
                await self._play(turn, phrase, frame)
            turn.pending.clear()
        await self._played(turn)
        self._memory.add("assistant", " ".join(turn.phrases))
        await self._finish_turn(turn)
        await self.leg.send_event({"type": "tts.end", "id": turn.id})

    async def _played(self, turn: Turn) -> None:
        """Wait for the leg to report the turn played; a far end that never acknowledges its
        marks costs at most the audio still queued plus a few seconds, never the call."""
        await self.leg.mark(f"turn-{turn.id}")
        queued_s = max(0, self._queued_frames - self.leg.played_frames) * FRAME_MS / 1000
        try:
            async with asyncio.timeout(queued_s + 5.0):
                await turn.played.wait()
        except TimeoutError:
            log.warning("the leg did not confirm playback", extra={"call_id": self.id, "turn": turn.id})
            self.manager.metrics.call_errors.labels(self.info.leg, "mark_timeout").inc()

    async def _finish_turn(self, turn: Turn, *, barged_in: bool = False, heard: str | None = None) -> None:
        """Record the turn (before any event announces it, so a client can read it back)."""
        if self._current is turn:
            self._current = None
        if not barged_in and not self._ending:
            self._arm_idle()
        if turn.kind == "answer":
            await self.manager.record_turn(self, turn, barged_in=barged_in, heard=heard)
            if turn.marks:
                await self.leg.send_event({"type": "turn.metrics", "id": turn.id, "latency_ms": turn.marks})

    async def _hold_prompt(self, turn: Turn) -> None:
        """If the answer is slow, say the hold prompt once so the caller knows we are there."""
        await asyncio.sleep(self.profile.hold_after_s)
        if self._current is turn and turn.frames_played == 0 and not turn.pending and self.profile.hold_prompt:
            frames = await self.manager.prompt_frames(self.profile.hold_prompt, self.profile.voice)
            async with self._out_lock:
                if turn.frames_played == 0:
                    for frame in frames:
                        await self.leg.play(frame)
                        self._queued_frames += 1

    # ----- prompts -----
    def _start_prompt(self, text: str, *, arm_idle: bool = True) -> Turn:
        self._turn_index += 1
        turn = Turn(id=uuid.uuid4().hex[:12], kind="prompt", index=self._turn_index)
        turn.committed.set()
        self._current = turn
        turn.task = self._spawn(self._prompt(turn, text, arm_idle))
        return turn

    async def _prompt(self, turn: Turn, text: str, arm_idle: bool) -> None:
        frames = await self.manager.prompt_frames(text, self.profile.voice)
        self._add_phrase(turn, text, len(frames))
        async with self._out_lock:
            for frame in frames:
                await self._play(turn, 0, frame)
        await self._played(turn)
        await self.leg.send_event({"type": "tts.end", "id": turn.id})
        self._memory.add("assistant", text)
        if self._current is turn:
            self._current = None
        if arm_idle and not self._ending:
            self._arm_idle()

    # ----- barge-in -----
    def _reply_active(self) -> bool:
        current = self._current
        playing = self.leg.played_frames < self._queued_frames
        return playing or (current is not None and current.committed.is_set())

    async def _interrupt(self, *, record: bool) -> None:
        """Stop the bot now: cancel the reply, drop queued audio, remember only what was heard."""
        turn, self._current = self._current, None
        if turn is not None and turn.task is not None:
            turn.task.cancel()
        self.leg.flush()
        played = self.leg.played_frames
        self._queued_frames = played
        if turn is None or not record:
            return
        heard = turn.heard(played)
        self._memory.add("assistant", heard)
        self.manager.metrics.barge_ins.labels(self.info.leg).inc()
        await self._finish_turn(turn, barged_in=True, heard=heard)
        await self.leg.send_event({"type": "barge_in", "id": turn.id, "heard": heard})

    # ----- timers, DTMF, transfer -----
    def _arm_idle(self) -> None:
        self._cancel_idle()
        loop = asyncio.get_running_loop()
        self._idle_handle = loop.call_later(self.profile.idle_timeout_s, self._on_idle)

    def _cancel_idle(self) -> None:
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None

    def _on_idle(self) -> None:
        self._idle_handle = None
        if self._detector.in_speech or self._current is not None or self._ending:
            return
        if self._reprompted or not self.profile.reprompt:
            self._end_soon("idle_timeout")
            return
        self._reprompted = True
        self._start_prompt(self.profile.reprompt)

    async def _on_dtmf(self, digit: str) -> None:
        await self.manager.record_event(self, "dtmf", {"digit": digit})
        await self.leg.send_event({"type": "dtmf", "digit": digit})
        if digit == "0":
            await self._request_transfer("dtmf")

    async def _request_transfer(self, reason: str) -> None:
        target = self.profile.transfer_target
        self.manager.metrics.transfers.labels(self.info.leg, reason).inc()
        await self.manager.record_event(self, "transfer", {"reason": reason, "target": target})
        await self.leg.send_event({"type": "transfer", "target": target, "reason": reason})
        transfer: Callable[[str], Awaitable[bool]] | None = getattr(self.leg, "transfer", None)
        if target and transfer is not None and await transfer(target):
            await self.end("transferred")


def _to_float(audio: PCM16) -> Any:
    return audio.astype(np.float32) / np.float32(32768.0)
