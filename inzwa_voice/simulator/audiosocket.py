"""A caller over the AudioSocket leg, standing in for Asterisk (which cannot run here).

It speaks the wire protocol as Asterisk's ``AudioSocket()`` application does: connect, send the
call UUID, then a 320-byte audio frame every 20 ms for the whole call, DTMF digits as they are
pressed, and a hangup frame at the end. Frames are built and parsed with the leg's own codec,
whose bytes the golden tests pin, so the two sides cannot drift apart unnoticed.

AudioSocket carries no events, so the caller reports what the wire shows: ``hangup`` and
``error`` frames become events, and the end of the greeting (or of any bot turn) is the moment
bot audio has flowed and then stopped for ``caller.QUIET_S``: the leg paces its audio in real
time, so a pause in frames is a pause in speech.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from typing import Any

import numpy as np

from inzwa_voice.core import PCM16
from inzwa_voice.legs.audiosocket import (
    HANGUP_FRAME,
    SAMPLE_RATE,
    Kind,
    encode_frame,
    read_frame,
)
from inzwa_voice.legs.base import ProtocolError
from inzwa_voice.media.framing import pcm16_to_bytes
from inzwa_voice.simulator.caller import Caller


class AudioSocketCaller(Caller):
    barge_in_event = None  # AudioSocket carries no events: a barge-in shows as the bot going quiet
    stage_metrics = False

    def __init__(self, host: str, port: int) -> None:
        super().__init__(SAMPLE_RATE)
        self._address = (host, port)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._receiver: asyncio.Task[None] | None = None
        self.uuid = uuid.uuid4()
        self.frame_sizes: Counter[int] = Counter()
        """Audio payload sizes received from the gateway, and how often each came."""

    @property
    def external_id(self) -> str:
        return str(self.uuid)

    async def connect(self, **start: Any) -> dict[str, Any]:
        """Connect and send the UUID (``uuid=`` to choose it), as Asterisk does on answer.

        The protocol has no reply to wait for: the returned ``connected`` event is local. A
        refused call shows up as an ``error`` event and :attr:`closed`.
        """
        if "uuid" in start:
            self.uuid = uuid.UUID(str(start["uuid"]))
        self._reader, self._writer = await asyncio.open_connection(*self._address)
        await self.send_raw(encode_frame(Kind.UUID, self.uuid.bytes))
        self._receiver = asyncio.ensure_future(self._receive())
        self.start_sending()
        return {"type": "connected", "uuid": str(self.uuid)}

    async def send_raw(self, data: bytes) -> None:
        """Bytes as they are, for frames the codec would refuse to build."""
        if self._writer is None or self._writer.is_closing():
            return
        self._writer.write(data)
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()

    async def send_frame(self, frame: PCM16) -> None:
        await self.send_raw(encode_frame(Kind.AUDIO, pcm16_to_bytes(frame)))

    async def send_dtmf(self, digit: str) -> None:
        await self.send_raw(encode_frame(Kind.DTMF, digit.encode("ascii")))

    async def _receive(self) -> None:
        assert self._reader is not None
        try:
            while True:
                frame = await read_frame(self._reader)
                if frame.kind == Kind.AUDIO:
                    self.frame_sizes[len(frame.payload)] += 1
                    self.on_audio(np.frombuffer(frame.payload, dtype="<i2").astype(np.int16))
                elif frame.kind == Kind.HANGUP:
                    self.on_event({"type": "hangup"})
                    return
                elif frame.kind == Kind.ERROR:
                    self.on_event({"type": "error", "code": frame.payload[0] if frame.payload else None})
                    return
        except ProtocolError as exc:
            self.on_event({"type": "error", "code": None, "message": str(exc)})
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # closed without a hangup frame, which the protocol allows
        finally:
            self.closed.set()

    async def greeting_done(self) -> None:
        await self.bot_quiet()

    async def hang_up(self) -> None:
        await self.stop_sending()
        await self.send_raw(HANGUP_FRAME)
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Wait until the gateway hung up, refused the call or closed the connection."""
        await self.closed.wait()
        if self._receiver is not None:
            await self._receiver
