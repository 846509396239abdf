"""Call recording: the caller on the left channel, the bot on the right, in step on the media clock.

A profile with ``recording: true`` gets a :class:`CallRecording` (``Recordings.for_call``). The
session's inbound loop ticks it once per 20 ms of media time (``hear``: the caller's frame as
decoded at the pipeline rate, or the silence that stands in when the client sends nothing), and
each tick writes one stereo frame: the caller's frame on the left and, on the right, the next bot
frame the caller has been played, or silence. So both channels always hold the same number of
frames, and a pause on either side is silence in the file, not a shift of the other side.

The bot side is what actually went out, not what was produced: the session hands its responder
``leg(leg)``, a wrapper that keeps each queued frame until the leg reports it played (sent by a
paced leg, pulled by WebRTC, echoed by Twilio). A barge-in drops the frames that never played,
so the recording ends the reply where the caller cut it off. Played frames wait in a short
queue for their tick; a leg reports them in bursts at most (Twilio's marks every 200 ms).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

import numpy as np

from inzwa_voice.conversation.ports import Leg
from inzwa_voice.core import FRAME_MS, FRAME_SAMPLES, PCM16, LegKind
from inzwa_voice.media.recording import TwoChannelWav
from inzwa_voice.store import recording_name

log = logging.getLogger(__name__)

_SILENCE: Final = np.zeros(FRAME_SAMPLES, dtype=np.int16)
MAX_UNPLAYED: Final = 500
"""Bot frames queued and not yet reported played (10 s): a leg whose peer never confirms
playback (Twilio marks never echoed) costs precision, never memory: the oldest count as played."""
MAX_LAG: Final = 250
"""Played bot frames waiting for their tick (5 s); beyond it the oldest are dropped."""


class Recordings:
    """Where this process writes recordings, and the one thread that writes them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        # One worker: a file's chunks must land in order; all calls share it (writes are small).
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="recording-writer")

    def for_call(self, call_id: str, *, on_error: Callable[[str], None]) -> CallRecording:
        """A recording for this call; ``on_error`` counts its failures (``recording``: no file,
        ``recording_dropped``: audio lost because the disk fell behind)."""
        path = self.directory / recording_name(call_id)
        return CallRecording(
            TwoChannelWav(path, self._executor, on_drop=lambda: on_error("recording_dropped")), on_error
        )

    def close(self) -> None:
        """After the calls have ended (their recordings closed): stop the writer thread."""
        self._executor.shutdown(wait=True)


class CallRecording:
    """One call's recording; ``open`` it, tick it with ``hear``, ``close`` it at the end."""

    def __init__(self, file: TwoChannelWav, on_error: Callable[[str], None]) -> None:
        self._file = file
        self._on_error = on_error
        self._open = False
        self._leg: Leg | None = None
        self._unplayed: deque[tuple[int, PCM16]] = deque()  # (position after it, frame), in order
        self._played: deque[PCM16] = deque()
        self.interrupts = 0  # barge-ins so far: a frame queued across one has no slot

    @property
    def path(self) -> Path:
        return self._file.path

    @property
    def duration_s(self) -> float:
        return self._file.duration_s

    async def open(self) -> bool:
        """Create the file; False if it cannot be (logged, counted): the call goes on unrecorded."""
        try:
            await self._file.open()
        except (OSError, RuntimeError) as exc:  # RuntimeError: the gateway is shutting down
            log.error("call recording could not start", extra={"path": str(self.path), "error": str(exc)})
            self._on_error("recording")
            return False
        self._open = True
        return True

    def leg(self, leg: Leg) -> Leg:
        """``leg`` as the responder should play through it: every frame it plays is recorded once played."""
        self._leg = leg
        return _RecordedLeg(leg, self)

    def hear(self, frame: PCM16) -> None:
        """One tick of the media clock: the caller's frame, and the bot's frame played by now."""
        if not self._open:
            return
        self._collect()
        self._file.write(frame, self._played.popleft() if self._played else _SILENCE)

    async def close(self) -> float | None:
        """The call ended: write the bot audio that played after the last tick, finish the file;
        returns the recording's duration in seconds (None: there is no file)."""
        if not self._open:
            return None
        self._open = False
        self._collect()
        while self._played:
            self._file.write(_SILENCE, self._played.popleft())
        self._unplayed.clear()
        try:
            await self._file.close()
        except (OSError, RuntimeError) as exc:  # the call's end goes on: what is on disk stays
            log.error("call recording could not be finished", extra={"path": str(self.path), "error": str(exc)})
            self._on_error("recording")
        if self._file.frames_dropped:
            log.warning(
                "call recording lost audio: the disk fell behind",
                extra={"path": str(self.path), "dropped_s": self._file.frames_dropped * FRAME_MS / 1000},
            )
        return self._file.duration_s

    # --- what the wrapped leg reports -------------------------------------------------------------

    def queued(self, position: int, frame: PCM16, interrupts: int) -> None:
        """The leg took ``frame`` at ``position``; ``interrupts`` is the count from before it did."""
        if not self._open or interrupts != self.interrupts:
            return  # not recording, or an interrupt came while the leg took the frame: its slot is void
        self._unplayed.append((position, frame))
        while len(self._unplayed) > MAX_UNPLAYED:
            self._keep(self._unplayed.popleft()[1])

    def interrupted(self, played: int) -> None:
        """A barge-in: the first ``played`` frames reached the caller, the rest never will."""
        self._collect(played)
        self._unplayed.clear()
        self.interrupts += 1

    def _collect(self, played: int | None = None) -> None:
        """Move the frames the leg has played into the queue the ticks take from."""
        if played is None:
            played = self._leg.played_frames if self._leg is not None else 0
        while self._unplayed and self._unplayed[0][0] <= played:
            self._keep(self._unplayed.popleft()[1])

    def _keep(self, frame: PCM16) -> None:
        self._played.append(frame)
        if len(self._played) > MAX_LAG:
            self._played.popleft()


class _RecordedLeg:
    """A :class:`~inzwa_voice.conversation.ports.Leg` that tells its recording what it plays."""

    def __init__(self, leg: Leg, recording: CallRecording) -> None:
        self._leg = leg
        self._recording = recording
        self.kind: LegKind = leg.kind

    @property
    def played_frames(self) -> int:
        return self._leg.played_frames

    async def play(self, frame: PCM16) -> int:
        interrupts = self._recording.interrupts
        position = await self._leg.play(frame)
        self._recording.queued(position, frame, interrupts)
        return position

    def interrupt(self) -> int:
        played = self._leg.interrupt()
        self._recording.interrupted(played)
        return played

    async def wait_for_playout(self, position: int) -> bool:
        return await self._leg.wait_for_playout(position)

    async def send_event(self, event: dict[str, object]) -> None:
        await self._leg.send_event(event)

    async def transfer(self, target: str) -> bool:
        return await self._leg.transfer(target)

    async def close(self, reason: str) -> None:
        await self._leg.close(reason)
