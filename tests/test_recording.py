"""Call recording: a two-channel WAV written as the call goes, the record that names it, the
admin route that serves it, and retention that deletes it. The pieces are checked alone (the
file after every chunk, a disk that falls behind, the bot channel across a barge-in), then a
real call on the WebSocket leg with the real engines."""

from __future__ import annotations

import asyncio
import io
import os
import threading
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inzwa_voice.api.admin_calls import STORE
from inzwa_voice.api.keys import CALLS
from inzwa_voice.conversation.recording import Recordings
from inzwa_voice.core import FRAME_SAMPLES, PCM16, PIPELINE_RATE, LegKind
from inzwa_voice.dialplan import Dialplan, DialplanError
from inzwa_voice.engines.runtime import Engines
from inzwa_voice.media.playout import Playout
from inzwa_voice.media.recording import CHUNK_FRAMES, MAX_BACKLOG, TwoChannelWav
from inzwa_voice.simulator.ws import WsCaller
from inzwa_voice.store import CallStore, purge_periodically
from tests.conftest import ServerFactory, speak, transcript

ROOT = Path(__file__).resolve().parent
RECORDING_DIALPLAN = ROOT / "dialplans" / "recording.yaml"
QUESTION = "Hello. Where is the nearest clinic?"
API_KEY, ADMIN_KEY = "api-key-for-calls", "admin-key-for-records"
DAY = 86400.0


def frame(value: int) -> PCM16:
    return np.full(FRAME_SAMPLES, value, dtype=np.int16)


def read_wav(data: bytes) -> PCM16:
    """The samples of a 16 kHz two-channel 16-bit WAV, shape (n, 2); its header must say so."""
    with wave.open(io.BytesIO(data)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, PIPELINE_RATE)
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    return samples.reshape(-1, 2)


def per_frame(samples: PCM16, channel: int) -> list[int]:
    """The value of each 20 ms frame of a channel made of constant frames."""
    frames = samples[:, channel].reshape(-1, FRAME_SAMPLES)
    assert (frames == frames[:, :1]).all()
    return [int(v) for v in frames[:, 0]]


async def settled(executor: ThreadPoolExecutor) -> None:
    """Once every job handed to the one-worker ``executor`` before now has run."""
    await asyncio.wrap_future(executor.submit(lambda: None))


async def test_the_file_is_a_valid_wav_after_every_chunk_and_when_closed(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "call.wav"
    with ThreadPoolExecutor(1) as executor:
        wav = TwoChannelWav(path, executor)
        await wav.open()
        assert read_wav(path.read_bytes()).shape == (0, 2)  # a call that dies at once leaves a valid file
        for i in range(CHUNK_FRAMES + 5):
            wav.write(frame(i), frame(-i))
        await settled(executor)
        # A gateway killed now leaves a WAV of the first chunk; the last 5 frames were in memory.
        assert len(read_wav(path.read_bytes())) == CHUNK_FRAMES * FRAME_SAMPLES
        await wav.close()
    samples = read_wav(path.read_bytes())
    assert per_frame(samples, 0) == list(range(CHUNK_FRAMES + 5))
    assert per_frame(samples, 1) == [-i for i in range(CHUNK_FRAMES + 5)]
    assert wav.duration_s == pytest.approx((CHUNK_FRAMES + 5) * 0.02)


async def test_a_disk_that_falls_behind_costs_audio_not_memory(tmp_path: Path) -> None:
    drops: list[None] = []
    disk = threading.Event()
    with ThreadPoolExecutor(1) as executor:
        wav = TwoChannelWav(tmp_path / "call.wav", executor, on_drop=lambda: drops.append(None))
        await wav.open()
        stalled = executor.submit(disk.wait)  # the writer thread is stuck on a slow disk
        for _ in range((MAX_BACKLOG + 3) * CHUNK_FRAMES):
            wav.write(frame(1), frame(2))
        assert wav.frames_dropped == 3 * CHUNK_FRAMES and len(drops) == 3  # not queued without end
        disk.set()
        stalled.result(timeout=10)
        await wav.close()
    assert len(read_wav((tmp_path / "call.wav").read_bytes())) == MAX_BACKLOG * CHUNK_FRAMES * FRAME_SAMPLES
    assert wav.frames_written == MAX_BACKLOG * CHUNK_FRAMES


class PlayedLeg:
    """A leg whose test says when its frames reach the caller (``playout.advance``)."""

    kind: LegKind = "ws"

    def __init__(self) -> None:
        self.playout = Playout()

    @property
    def played_frames(self) -> int:
        return self.playout.played

    async def play(self, frame: PCM16) -> int:
        return self.playout.queue()

    def interrupt(self) -> int:
        return self.playout.interrupt()

    async def wait_for_playout(self, position: int) -> bool:
        return await self.playout.wait_for(position)

    async def send_event(self, event: dict[str, object]) -> None:
        pass

    async def transfer(self, target: str) -> bool:
        return False

    async def close(self, reason: str) -> None:
        pass


async def test_the_bot_channel_holds_what_played_in_step_and_a_barge_in_cuts_it(tmp_path: Path) -> None:
    recordings = Recordings(tmp_path)
    errors: list[str] = []
    recording = recordings.for_call("a" * 32, on_error=errors.append)
    assert await recording.open()
    leg = PlayedLeg()
    bot = recording.leg(leg)
    for value in range(1, 7):  # a reply of six frames queued ahead of real time
        await bot.play(frame(value))
    recording.hear(frame(-1))  # nothing played yet: silence on the bot's side
    leg.playout.advance(2)  # two frames reach the caller in one report (as Twilio's marks do)
    for value in (-2, -3, -4):
        recording.hear(frame(value))  # one bot frame a tick, then silence: the channels stay in step
    leg.playout.advance(1)
    assert bot.interrupt() == 3  # the caller barged in: frames 4 to 6 never play
    await bot.play(frame(10))  # the next reply
    leg.playout.advance(1)
    for value in (-5, -6):
        recording.hear(frame(value))
    await bot.play(frame(11))
    leg.playout.advance(1)  # played after the last tick: closing keeps it
    duration = await recording.close()
    recordings.close()

    samples = read_wav(recording.path.read_bytes())
    assert per_frame(samples, 0) == [-1, -2, -3, -4, -5, -6, 0]
    assert per_frame(samples, 1) == [0, 1, 2, 0, 3, 10, 11]
    assert duration == pytest.approx(7 * 0.02)
    assert recording.path == tmp_path / f"{'a' * 32}.wav" and errors == []


async def test_a_folder_it_cannot_write_leaves_the_call_unrecorded_and_counted(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    recordings = Recordings(tmp_path / "file" / "recordings")
    errors: list[str] = []
    recording = recordings.for_call("b" * 32, on_error=errors.append)
    assert not await recording.open()
    recording.hear(frame(1))  # the call goes on; nothing is kept
    assert await recording.close() is None
    recordings.close()
    assert errors == ["recording"]


async def test_a_writer_stopped_under_a_live_call_never_breaks_its_end(tmp_path: Path) -> None:
    recordings = Recordings(tmp_path)
    errors: list[str] = []
    recording = recordings.for_call("e" * 32, on_error=errors.append)
    assert await recording.open()
    recordings.close()  # the gateway stopping while a call is still ending
    for _ in range(CHUNK_FRAMES + 1):
        recording.hear(frame(1))  # a full chunk with nowhere to go: dropped, counted
    assert await recording.close() == 0.0  # the frame left over is dropped too, and the end logged
    assert errors == ["recording_dropped", "recording_dropped", "recording"]
    assert read_wav(recording.path.read_bytes()).shape == (0, 2)  # still a valid file


def test_a_recorded_profile_must_say_its_consent_words(tmp_path: Path) -> None:
    path = tmp_path / "dialplan.yaml"
    path.write_text("profiles:\n  p:\n    language: en\n    voice: joe\n    recording: true\ndefault: p\n")
    with pytest.raises(DialplanError, match=r"dialplan.yaml:5:\d+: .*recording_consent"):
        Dialplan.load(path)
    profiles = Dialplan.load(RECORDING_DIALPLAN).profiles
    assert profiles["recorded"].opening == "This call is recorded. Hello, you have reached the helpline."
    assert profiles["unrecorded"].opening == "Hello, you have reached the helpline."  # off: no notice


async def test_retention_sweeps_old_recordings_no_record_names(tmp_path: Path) -> None:
    """Another gateway may have purged the records of this gateway's calls: the folder is swept
    too, for recordings (and only recordings) last written before the cut-off."""
    folder = tmp_path / "recordings"
    folder.mkdir()
    now = time.time()
    old, new, other = folder / f"{'c' * 32}.wav", folder / f"{'d' * 32}.wav", folder / "greeting.wav"
    for path, age in ((old, 10 * DAY), (new, DAY), (other, 10 * DAY)):
        path.write_bytes(b"RIFF")
        os.utime(path, (now - age, now - age))
    store = await CallStore.open(tmp_path / "calls.db")

    class Stop(Exception):
        pass

    async def stop(seconds: float) -> None:
        raise Stop

    try:
        with pytest.raises(Stop):
            await purge_periodically(store, 7, sleep=stop, clock=lambda: now, recordings=folder)
    finally:
        await store.close()
    assert not old.exists() and new.exists() and other.exists()


async def admin(server: Any, path: str, *, key: str = ADMIN_KEY, status: int = 200) -> Any:
    async with server.http.get(server.v1 + "/admin" + path, headers={"Authorization": f"Bearer {key}"}) as resp:
        assert resp.status == status, await resp.text()
        return await (resp.json() if resp.content_type == "application/json" else resp.read())


async def test_a_recorded_call_holds_both_sides_grows_as_it_goes_and_retention_deletes_it(
    make_server: ServerFactory, engines: Engines, tmp_path: Path
) -> None:
    folder = tmp_path / "recordings"
    server = await make_server(
        language="en",
        tts_voice="joe",
        dialplan_path=RECORDING_DIALPLAN,
        recordings_dir=folder,
        api_keys=[API_KEY],
        admin_keys=[ADMIN_KEY],
    )
    caller = WsCaller(server.http, server.url.replace("http", "ws") + "/v1/ws")
    call_id = (await caller.connect(auth=API_KEY))["call_id"]
    path = folder / f"{call_id}.wav"
    try:
        # The record names the file from the start; its length is known when the call ends.
        assert (await admin(server, f"/calls/{call_id}"))["recording"] == {"path": str(path), "duration_s": None}
        await caller.wait_for("tts.end")  # the notice and the greeting have played
        after_greeting = path.stat().st_size
        question = await speak(engines, QUESTION)
        caller.say(question)
        assert "clinic" in (await caller.wait_for("asr.final"))["text"].lower()
        await caller.wait_for("tts.end")  # the answer has played
        after_answer = path.stat().st_size
        assert 44 < after_greeting < after_answer  # written as the call goes, not at its end
    finally:
        with server.app[CALLS].watch() as recorded:
            await caller.hang_up()
            async with asyncio.timeout(30):  # "end" is announced once the record is complete
                while (event := await recorded.get()).kind != "end" or event.call_id != call_id:
                    pass

    record = await admin(server, f"/calls/{call_id}")
    await admin(server, f"/calls/{call_id}/recording", key="wrong", status=401)
    await admin(server, f"/calls/{call_id}/recording", key=API_KEY, status=403)  # records need an admin key
    served = await admin(server, f"/calls/{call_id}/recording")
    assert served == path.read_bytes()
    samples = read_wav(served)
    assert record["recording"]["duration_s"] == pytest.approx(len(samples) / PIPELINE_RATE)
    caller_side, bot_side = samples[:, 0], samples[:, 1]

    assert "clinic" in (await transcript(engines, caller_side, PIPELINE_RATE)).lower()
    heard = (await transcript(engines, bot_side, PIPELINE_RATE)).lower()
    assert all(word in heard for word in ("recorded", "reached", "clinic")), heard  # notice, greeting, answer
    # Nothing of the bot leaks into the caller's channel, and the two are in step: the notice
    # and greeting come before the caller spoke, the answer after.
    spoke = np.flatnonzero(caller_side)
    assert len(spoke) <= len(question)
    assert np.abs(bot_side[: spoke[0]]).max() > 1000
    assert np.abs(bot_side[spoke[-1] :]).max() > 1000

    # A line whose profile does not record writes nothing and says so.
    unrecorded = WsCaller(server.http, server.url.replace("http", "ws") + "/v1/ws")
    other_id = (await unrecorded.connect(auth=API_KEY, dialled="+200"))["call_id"]
    await unrecorded.hang_up()
    assert (await admin(server, f"/calls/{other_id}"))["recording"] is None
    missing = await admin(server, f"/calls/{other_id}/recording", status=404)
    assert missing["error"]["code"] == "recording_not_found"
    assert [p.name for p in folder.iterdir()] == [path.name]

    class Stop(Exception):
        pass

    async def stop(seconds: float) -> None:
        raise Stop

    with pytest.raises(Stop):  # retention, a day later with one day kept
        await purge_periodically(server.app[STORE], 1, sleep=stop, clock=lambda: time.time() + 2 * DAY)
    assert not path.exists()
    gone = await admin(server, f"/calls/{call_id}/recording", status=404)
    assert gone["error"]["code"] == "call_not_found"
