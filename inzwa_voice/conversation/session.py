"""One call's life: turn-taking in media time, timers, keypad, transfer and the end of the call.

The session owns what lasts as long as the call: the inbound loop (every 20 ms frame through
the VAD and the turn detector, inline, so barge-in never waits behind a model), the idle and
maximum-length timers, DTMF, transfer, the recording (when the profile records), and the end.
What the bot says is the :class:`~inzwa_voice.conversation.responder.Responder`'s; what the
client and the record are told goes through the call's
:class:`~inzwa_voice.conversation.outbox.Outbox`, so the inbound loop never waits on a socket or
the disk.

Media time follows the caller's frames, and the wall clock stands in when they stop: a client
that goes quiet (Opus DTX, a muted microphone, RTP silence suppression, a stalled network, a
file that ended) is heard as silence, so its turn still ends and is answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Final

import numpy as np

from inzwa_voice.conversation.brain import Answer, Brain, Dialog, Knowledge, PromptStart, Source
from inzwa_voice.conversation.capacity import Capacity
from inzwa_voice.conversation.memory import Memory
from inzwa_voice.conversation.outbox import Outbox
from inzwa_voice.conversation.ports import Leg
from inzwa_voice.conversation.prompts import PromptAudio
from inzwa_voice.conversation.recorder import Recorder
from inzwa_voice.conversation.recording import CallRecording, Recordings
from inzwa_voice.conversation.responder import Reply, Responder
from inzwa_voice.conversation.turns import TurnDetector, TurnEvent, TurnSettings
from inzwa_voice.core import DTMF_DIGITS, FRAME_MS, FRAME_SAMPLES, PCM16, CallInfo, Profile
from inzwa_voice.engines.base import ChatMessage, Inference
from inzwa_voice.tracing import CallTrace

log = logging.getLogger(__name__)

_INBOUND_FRAMES: Final = 250  # 5 s of audio; beyond it the oldest frames are dropped
GAP_FILL_S: Final = 0.1
"""No frame for this long: media time catches up with the wall clock in silent frames."""
_SILENCE: Final = np.zeros(FRAME_SAMPLES, dtype=np.int16)
_MIN_KEPT_FRAMES: Final = 10  # a hang-up mid-utterance keeps it if it has 200 ms of audio
GOODBYE_LIMIT_S: Final = 30.0


class CallSession:
    """A running call; implements :class:`~inzwa_voice.conversation.ports.Call`."""

    def __init__(
        self,
        *,
        call_id: str,
        leg: Leg,
        info: CallInfo,
        profile: Profile,
        inference: Inference,
        brain: Brain,
        knowledge: Knowledge | None,
        voices: Mapping[str, str],
        # The packaged intents' words (filled for this dialplan) where the profile has no knowledge
        # base: what the call says when ``0`` finds nobody (after hours).
        intent_words: Knowledge | None = None,
        recorder: Recorder,
        prompts: PromptAudio,
        turn_settings: TurnSettings,
        on_end: Callable[[CallSession, str], None],
        capacity: Capacity | None = None,
        recordings: Recordings | None = None,
    ) -> None:
        self.id = call_id
        self.leg = leg
        self.info = info
        self.profile = profile
        self.started_at = time.time()
        self.disposition: str | None = None
        self.dropped_inbound = 0
        self._metrics = inference.metrics
        self._inference = inference
        self._brain = brain
        self._knowledge = knowledge
        self._intent_words = knowledge or intent_words
        self._voices = voices
        self._recorder = recorder
        self._trace = CallTrace(call_id, info.leg, profile.name, info.external_id)
        self._on_end = on_end
        self._detector = TurnDetector(inference.vad.stream(), turn_settings)
        # Frames, or None: the client's "end of turn" marker, kept in order with the audio.
        self._inbound: asyncio.Queue[PCM16 | None] = asyncio.Queue(_INBOUND_FRAMES)
        self._outbox = Outbox(
            leg.send_event, on_drop=lambda: self._metrics.call_errors.labels(info.leg, "event_dropped").inc()
        )
        # A recorded profile's call: what the caller says and hears goes to disk as it happens.
        self._recording = (
            recordings.for_call(call_id, on_error=lambda kind: self._metrics.call_errors.labels(info.leg, kind).inc())
            if recordings is not None and profile.recording
            else None
        )
        self._responder = Responder(
            call_id=call_id,
            info=info,
            profile=lambda: self.profile,
            leg=leg if self._recording is None else self._recording.leg(leg),
            inference=inference,
            decide=self._decide,
            prompt_start=self._prompt_start,
            voice_for=self._voice_for,
            memory=Memory(profile.system_prompt),
            outbox=self._outbox,
            recorder=recorder,
            trace=self._trace,
            prompts=prompts,
            on_quiet=self._arm_idle,
            on_played=self._act,
            capacity=capacity,
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._idle: asyncio.TimerHandle | None = None
        self._max_length: asyncio.TimerHandle | None = None
        self._reprompted = False
        self._saying_goodbye = False
        self._ending = False
        self._teardown: asyncio.Task[None] | None = None  # held: the loop keeps only weak references
        self._ended = asyncio.Event()

    # ----- the leg's side (Call) -----
    @property
    def active(self) -> bool:
        return not self._ending

    @property
    def turns(self) -> int:
        """Caller turns so far: those in the call record."""
        return self._responder.turns

    def feed(self, frame: PCM16) -> None:
        """Accept one inbound 20 ms frame at 16 kHz; never blocks the leg."""
        if self._ending:
            return
        if len(frame) != FRAME_SAMPLES:
            raise ValueError(f"frames must hold {FRAME_SAMPLES} samples, got {len(frame)}")
        self._enqueue(frame)

    def end_turn(self) -> None:
        """The client says the caller finished (push-to-talk): endpoint after the queued audio."""
        if not self._ending:
            self._enqueue(None)

    def dtmf(self, digit: str) -> None:
        if self._ending or digit not in DTMF_DIGITS:
            return
        self._outbox.write(lambda: self._recorder.event(self.id, "dtmf", {"digit": digit}))
        self._outbox.event({"type": "dtmf", "digit": digit})
        answer = None
        if self._knowledge is not None:
            answer = self._brain.menu(
                digit,
                profile=self.profile,
                language=self.profile.language,
                knowledge=self._knowledge,
                dialog=self._responder.dialog,
            )
        if answer is not None:
            self._cancel_idle()
            self._responder.interrupt(barge_in=False)
            self._responder.say_answer(answer)
        elif digit == "0":
            self._transfer_soon("dtmf")

    async def record_event(self, kind: str, data: dict[str, object]) -> None:
        if self._ending:
            await self._recorder.event(self.id, kind, data)
        else:
            self._outbox.write(lambda: self._recorder.event(self.id, kind, data))

    async def hangup(self, reason: str = "caller_hangup") -> None:
        """The far end hung up."""
        await self.end(reason)

    # ----- life -----
    def traced(self) -> contextlib.AbstractContextManager[None]:
        """The call's span as the current one: a line logged inside carries its trace id."""
        return self._trace.current()

    async def start(self) -> None:
        """Record the call, start listening and greet; the record exists when this returns.
        What starts here (the inbound loop and all it starts, the timers) runs in the call's span."""
        with self.traced():
            self._outbox.write(lambda: self._recorder.start(self.id, self.info, self.profile.name, self.started_at))
            if self._recording is not None:
                await self._start_recording(self._recording)
            await self._outbox.flush()
            self._spawn(self._inbound_loop())
            loop = asyncio.get_running_loop()
            self._max_length = loop.call_later(self.profile.max_call_s, self._end_soon, "max_length")
            if self.profile.opening:  # the greeting, after the recording notice on a recorded call
                self._responder.say(self.profile.opening)

    async def wait_closed(self) -> None:
        await self._ended.wait()

    async def end(self, disposition: str, *, say_goodbye: bool = False) -> None:
        """End the call once: optionally say goodbye, keep what was said, record, hang up.

        Once begun, the teardown runs to its end in a task of its own, even if whoever called
        this is cancelled meanwhile (a leg's handler at shutdown, a client's connection dropped):
        a call left half ended kept its session, its record open and its leg up."""
        if self._ending:
            return
        if say_goodbye and self.profile.goodbye:
            if self._saying_goodbye:
                return
            self._saying_goodbye = True
            self._cancel_idle()
            self._responder.interrupt(barge_in=False)
            goodbye = self._responder.say(self.profile.goodbye, arm_idle=False)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(GOODBYE_LIMIT_S):
                    await self._responder.wait(goodbye)
            if self._ending:  # the caller hung up meanwhile
                return
        self._ending = True
        self.disposition = disposition
        self._teardown = asyncio.ensure_future(self._tear_down(disposition, asyncio.current_task()))
        await asyncio.shield(self._teardown)

    async def _tear_down(self, disposition: str, ending: asyncio.Task[Any] | None) -> None:
        """``end``'s work; ``ending``: the task that called it, which goes on once it is done."""
        for timer in (self._max_length, self._idle):
            if timer is not None:
                timer.cancel()
        for task in list(self._tasks):
            if task is not ending:
                task.cancel()
        if self._detector.in_speech and self._responder.speculative is None:
            # A hang-up mid-sentence: the caller's words still count, the open stretch too.
            stretch = self._detector.take_stretch()
            if len(stretch) >= _MIN_KEPT_FRAMES * FRAME_SAMPLES:
                self._responder.hear(stretch)
            if self._responder.hearing:
                self._responder.speculate(self._last_voiced_at(), answer=False)
        await self._responder.close()
        if self._recording is not None:
            await self._finish_recording(self._recording)
        self._outbox.write(lambda: self._recorder.end(self.id, self.info, disposition))  # before the caller is told
        self._outbox.event({"type": "call.end", "reason": disposition})
        await self._outbox.close()
        with self.traced():  # the call's end is logged with its trace
            self._on_end(self, disposition)
        self._trace.end(disposition, turns=self.turns)
        with contextlib.suppress(Exception):
            await self.leg.close(disposition)
        self._ended.set()

    async def _start_recording(self, recording: CallRecording) -> None:
        if await recording.open():
            self._outbox.write(lambda: self._recorder.recording(self.id, self.info, recording.path, None))

    async def _finish_recording(self, recording: CallRecording) -> None:
        duration = await recording.close()
        if duration is not None:
            self._outbox.write(lambda: self._recorder.recording(self.id, self.info, recording.path, duration))

    def _end_soon(self, disposition: str) -> None:
        self._spawn(self.end(disposition, say_goodbye=True))

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("call task failed", exc_info=task.exception(), extra={"call_id": self.id})

    # ----- inbound audio and turn-taking -----
    def _enqueue(self, frame: PCM16 | None) -> None:
        if self._inbound.full():
            self._inbound.get_nowait()
            self.dropped_inbound += 1
        self._inbound.put_nowait(frame)

    async def _inbound_loop(self) -> None:
        loop = asyncio.get_running_loop()
        epoch = loop.time()
        frames = 0  # media clock: frames heard, the caller's and the silence standing in for them
        frame_s = FRAME_MS / 1000
        while True:
            try:
                async with asyncio.timeout(GAP_FILL_S):
                    frame = await self._inbound.get()
            except TimeoutError:
                behind = int((loop.time() - epoch) / frame_s) - frames
                for _ in range(max(0, behind)):
                    frames += 1
                    self._hear(_SILENCE)
                continue
            if frame is not None:
                frames += 1
            self._hear(frame)

    def _hear(self, frame: PCM16 | None) -> None:
        if frame is not None and self._recording is not None:
            self._recording.hear(frame)
        detector = self._detector
        events = detector.force_endpoint() if frame is None else detector.push(frame)
        if detector.silent_ms >= detector.settings.question_endpoint_ms and self._responder.heard_question():
            events += detector.force_endpoint()
        for event in events:
            self._on_turn_event(event)

    def _on_turn_event(self, event: TurnEvent) -> None:
        responder = self._responder
        if event is TurnEvent.SPEECH_START:
            self._cancel_idle()
            self._reprompted = False
            if responder.busy:
                responder.interrupt(barge_in=True)
        elif event is TurnEvent.PREFETCH:
            responder.hear(self._detector.take_stretch())
            responder.speculate(self._last_voiced_at())
        elif event is TurnEvent.RESUMED:
            responder.went_on()
        elif event is TurnEvent.ENDPOINT:
            responder.commit(self._last_voiced_at(), asyncio.get_running_loop().time())

    def _last_voiced_at(self) -> float:
        """Loop time of the caller's last voiced frame, from the media clock's lag behind it."""
        silent_frames = self._detector.frames - max(0, self._detector.last_voiced_frame)
        return asyncio.get_running_loop().time() - silent_frames * FRAME_MS / 1000

    # ----- what the answers decide -----
    async def _decide(
        self, text: str, dialog: Dialog, history: list[ChatMessage], kept_facts: tuple[str, ...]
    ) -> Answer:
        return await self._brain.answer(
            text,
            profile=self.profile,
            language=self.profile.language,
            knowledge=self._knowledge,
            dialog=dialog,
            history=history,
            kept_facts=kept_facts,
        )

    async def _prompt_start(
        self, history: list[ChatMessage], question: str, kept_facts: tuple[str, ...]
    ) -> PromptStart | None:
        return await self._brain.prompt_start(
            history,
            profile=self.profile,
            language=self.profile.language,
            knowledge=self._knowledge,
            question=question,
            kept_facts=kept_facts,
        )

    def _voice_for(self, language: str) -> str:
        return (
            self.profile.voice if language == self.profile.language else self._voices.get(language, self.profile.voice)
        )

    def _act(self, reply: Reply) -> None:
        """An answer has been heard: do what it said (hand over, say goodbye, change language)."""
        answer = reply.answer
        if answer is None or self._ending:
            return
        if answer.action == "transfer" or answer.info.transfer:
            kind = answer.source.kind
            self._transfer_soon("safety" if kind == "safety" else "dtmf" if reply.is_prompt else "voice")
        elif answer.action == "goodbye":
            self._spawn(self.end("completed"))
        elif answer.action == "language" and answer.language and answer.language != self.profile.language:
            language = answer.language
            self.profile = dataclasses.replace(self.profile, language=language, voice=self._voice_for(language))
            self._outbox.write(lambda: self._recorder.event(self.id, "language", {"language": language}))
            self._outbox.event({"type": "language", "language": language, "voice": self.profile.voice})

    # ----- timers and transfer -----
    def _arm_idle(self) -> None:
        """Called when the bot has finished speaking (played, not sent): the caller's turn."""
        if self._ending or self._saying_goodbye:
            return
        self._cancel_idle()
        self._idle = asyncio.get_running_loop().call_later(self.profile.idle_timeout_s, self._on_idle)

    def _cancel_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def _on_idle(self) -> None:
        self._idle = None
        if self._detector.in_speech or self._responder.current is not None or self._ending:
            return
        if self._reprompted or not self.profile.reprompt:
            self._end_soon("idle_timeout")
            return
        self._reprompted = True
        self._responder.say(self.profile.reprompt)

    def _transfer_soon(self, reason: str) -> None:
        self._spawn(self._transfer(reason))

    async def _transfer(self, reason: str) -> None:
        target = self.profile.transfer_target
        self._metrics.transfers.labels(self.info.leg, reason).inc()
        self._outbox.write(lambda: self._recorder.event(self.id, "transfer", {"reason": reason, "target": target}))
        self._outbox.event({"type": "transfer", "target": target, "reason": reason})
        if not target:
            # After hours: no person to hand over to. The caller hears when people are in (a
            # crisis reply already said where to turn), and the record says why nobody came.
            outcome: dict[str, object] = {"target": None, "ok": False, "status": 0, "reason": "no_target"}
            self._outbox.write(lambda: self._recorder.event(self.id, "transfer_result", outcome))
            human = self._brain.intent("human")
            if reason != "safety" and human is not None and self._intent_words is not None:
                words = self._intent_words.answer(human, self.profile.language, open_now=False)
                self._cancel_idle()
                self._responder.interrupt(barge_in=False)
                self._responder.say_answer(Answer(Source("intent", human.id), words))
            return
        if await self.leg.transfer(target):
            await self.end("transferred")
