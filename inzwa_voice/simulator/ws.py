"""A caller over the native WebSocket leg (``GET /v1/ws``).

By default it sends a frame every 20 ms for the whole call, silence included, like a phone. With
``dtx=True`` it sends only frames that carry sound, like a client with discontinuous
transmission, a muted microphone or a stalled network: after the caller's last word the gateway
hears nothing more, and must end the turn on its own clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import aiohttp
import numpy as np

from inzwa_voice.core import PCM16
from inzwa_voice.simulator.caller import Caller, Refused


class WsCaller(Caller):
    def __init__(self, http: aiohttp.ClientSession, url: str, *, rate: int = 16000, dtx: bool = False) -> None:
        super().__init__(rate)
        self.dtx = dtx
        self._http = http
        self._url = url
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self.close_code: int | None = None

    async def connect(self, **start: Any) -> dict[str, Any]:
        """Open the call; returns ``session.started``, or raises :class:`Refused` when the
        gateway closes the socket instead (after its busy message)."""
        self._ws = await self._http.ws_connect(self._url)
        await self._ws.send_json({"type": "start", "codec": "pcm16", "sample_rate": self.rate, **start})
        self._reader = asyncio.ensure_future(self._read())
        started = asyncio.ensure_future(self.wait_for("session.started", timeout=30))
        closed = asyncio.ensure_future(self.closed.wait())
        try:
            await asyncio.wait({started, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
        if not started.done():
            started.cancel()
            await asyncio.gather(started, self._reader, return_exceptions=True)
            busy = self.events("busy")
            text = str(busy[0]["text"]) if busy else None
            raise Refused(self.close_code, text, self.timeline.audio_ms_after(0, self.rate))
        self.start_sending()
        return started.result()

    async def send_frame(self, frame: PCM16) -> None:
        if self.dtx and not frame.any():
            return  # nothing to hear, so nothing sent (the media clock still runs)
        if self._ws is not None and not self._ws.closed:
            await self._ws.send_bytes(frame.astype("<i2").tobytes())

    async def send_json(self, message: dict[str, Any]) -> None:
        assert self._ws is not None
        await self._ws.send_json(message)

    async def send_raw(self, data: bytes | str) -> None:
        assert self._ws is not None
        await (self._ws.send_bytes(data) if isinstance(data, bytes) else self._ws.send_str(data))

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                self.on_audio(np.frombuffer(msg.data, dtype="<i2"))
            elif msg.type == aiohttp.WSMsgType.TEXT:
                self.on_event(json.loads(msg.data))
        self.close_code = self._ws.close_code
        self.closed.set()

    async def hang_up(self) -> None:
        await self.stop_sending()
        if self._ws is not None:
            with contextlib.suppress(ConnectionError):
                await self._ws.send_json({"type": "stop"})
            await self._ws.close()
        if self._reader is not None:
            await self._reader

    async def wait_closed(self) -> int | None:
        await self.closed.wait()
        if self._reader is not None:
            await self._reader
        return self.close_code
