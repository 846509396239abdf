"""The native WebSocket leg: ``GET /v1/ws`` (protocol in ``api/websocket.md``).

The client sends a JSON ``start``, then binary PCM16 mono frames at its sample rate, and JSON
control messages; the server answers with JSON events and binary PCM16 audio paced in real
time. Protocol errors the call can survive are reported as ``error`` events with
``recoverable: true``; the others close the socket with a 44xx code, and never affect another
call.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
from dataclasses import dataclass
from typing import Any, Final, Literal

from aiohttp import WSCloseCode, WSMsgType, web

from inzwa_voice.config import Settings
from inzwa_voice.conversation.ports import Call, CallRejected, CallStarter
from inzwa_voice.core import DTMF_DIGITS, PIPELINE_RATE, CallInfo, LegKind
from inzwa_voice.legs.admission import admitted
from inzwa_voice.legs.base import CLOSE_PROTOCOL, ProtocolError, json_object
from inzwa_voice.legs.paced import CallerAudio, OutputLeg, PacedOutput
from inzwa_voice.media.framing import bytes_to_pcm16, pcm16_to_bytes

log = logging.getLogger(__name__)

PATH: Final = "/v1/ws"
SAMPLE_RATES: Final = (8000, 16000, 24000, 48000)
MAX_MESSAGE_BYTES: Final = 64 * 1024
HEARTBEAT_S: Final = 30.0

# Close codes beyond RFC 6455's: 4400 protocol violation (legs.base), 4401 authentication failed.
CLOSE_AUTH: Final = 4401


class WebSocketLeg(OutputLeg):
    kind: LegKind = "ws"
    _out: PacedOutput

    def __init__(self, ws: web.WebSocketResponse, sample_rate: int) -> None:
        self._ws = ws
        self._out = PacedOutput(self._send_audio, pcm16_to_bytes, out_rate=sample_rate)
        self._closed = False

    async def _send_audio(self, data: bytes) -> None:
        if not self._ws.closed:
            await self._ws.send_bytes(data)

    async def send_event(self, event: dict[str, object]) -> None:
        if not self._ws.closed:
            with contextlib.suppress(ConnectionError):
                await self._ws.send_json(event)

    async def close(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        await self._out.close()
        await self._ws.close(code=WSCloseCode.OK, message=reason.encode()[:120])


def parse_start(data: dict[str, Any], settings: Settings) -> tuple[CallInfo, int]:
    """The call and the client's sample rate from its ``start`` message."""
    keys = settings.api_keys + settings.admin_keys  # starting a call is an API key's right, and an admin's
    if keys:
        presented = str(data.get("auth") or "")
        if not any(presented and hmac.compare_digest(presented.encode(), k.encode()) for k in keys):
            raise ProtocolError("unauthorized", "start.auth is missing or not a valid API key", CLOSE_AUTH)
    if data.get("codec", "pcm16") != "pcm16":
        raise ProtocolError("unsupported_codec", "codec must be 'pcm16'")
    rate = data.get("sample_rate", PIPELINE_RATE)
    if rate not in SAMPLE_RATES:
        raise ProtocolError("unsupported_sample_rate", f"sample_rate must be one of {SAMPLE_RATES}")
    info = CallInfo(
        leg="ws",
        caller=str(data.get("caller", ""))[:64],
        dialled=str(data.get("dialled", ""))[:64],
        external_id=str(data.get("session_id", ""))[:128],
    )
    return info, int(rate)


@dataclass(frozen=True, slots=True)
class Control:
    """A control message after ``start``: hang up, a keypad digit, or "my turn is over"."""

    kind: Literal["stop", "dtmf", "end_turn"]
    digit: str = ""


def parse_control(text: str) -> Control:
    """One control message; a :class:`ProtocolError` the call survives (an ``error`` event with
    ``recoverable: true``): ``invalid_json``, ``bad_dtmf`` (not one keypad digit) or ``unknown_type``."""
    data = json_object(text)
    if data is None:
        raise ProtocolError("invalid_json", "control messages must be JSON objects")
    kind = data.get("type")
    if kind == "dtmf":
        digit = data.get("digit")
        if not (isinstance(digit, str) and digit in DTMF_DIGITS):
            raise ProtocolError("bad_dtmf", "dtmf.digit must be one keypad digit: 0-9, * or #")
        return Control("dtmf", digit)
    if kind == "stop" or kind == "end_turn":
        return Control(kind)
    raise ProtocolError("unknown_type", f"unknown message type {str(kind)[:40]!r}")


async def _receive_start(ws: web.WebSocketResponse, settings: Settings) -> tuple[CallInfo, int]:
    deadline = settings.handshake_timeout_s
    try:
        msg = await ws.receive(timeout=deadline)
    except TimeoutError:
        raise ProtocolError("start_timeout", f"no start message within {deadline:g} s") from None
    if msg.type == WSMsgType.BINARY:
        raise ProtocolError("not_started", "binary audio before the start message")
    if msg.type != WSMsgType.TEXT:
        raise ProtocolError("not_started", "the connection closed before the start message")
    data = json_object(msg.data)
    if data is None or data.get("type") != "start":
        raise ProtocolError("not_started", "the first message must be {'type': 'start', ...}")
    return parse_start(data, settings)


async def _error(ws: web.WebSocketResponse, code: str, message: str, recoverable: bool) -> None:
    if not ws.closed:
        with contextlib.suppress(ConnectionError):
            await ws.send_json({"type": "error", "code": code, "message": message, "recoverable": recoverable})


class WebSocketRoutes:
    """``GET /v1/ws``, with what it needs from ``app.py``."""

    def __init__(self, calls: CallStarter, settings: Settings) -> None:
        self.calls = calls
        self.settings = settings

    async def call(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=MAX_MESSAGE_BYTES)
        await ws.prepare(request)
        try:
            info, rate = await _receive_start(ws, self.settings)
        except ProtocolError as exc:
            self.calls.metrics.call_errors.labels("ws", exc.code).inc()
            await _error(ws, exc.code, str(exc), False)
            await ws.close(code=exc.close_code, message=exc.code.encode())
            return ws

        async def refuse(exc: CallRejected) -> None:
            await _error(ws, exc.code, str(exc), False)
            await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=exc.code.encode())

        leg = WebSocketLeg(ws, rate)
        async with admitted(self.calls, leg, info, refuse) as call:
            if call is not None:
                leg.call = call
                # Inside the admitted block: a client gone before it hears this still frees its slot.
                await leg.send_event({"type": "session.started", "call_id": call.id, "profile": call.profile.name})
                await self._serve(ws, call, rate)
        return ws

    async def _serve(self, ws: web.WebSocketResponse, call: Call, rate: int) -> None:
        """Read the client's messages until it stops, hangs up, breaks the protocol or the call ends."""
        audio = CallerAudio(call.feed, rate)
        errors = self.calls.metrics.call_errors

        async def recoverable(code: str, message: str) -> None:
            errors.labels("ws", code).inc()
            await _error(ws, code, message, True)

        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                try:
                    pcm = bytes_to_pcm16(msg.data)
                except ValueError:
                    errors.labels("ws", "odd_length").inc()
                    await _error(ws, "odd_length", "PCM16 frames must have an even number of bytes", False)
                    await ws.close(code=CLOSE_PROTOCOL, message=b"odd_length")
                    return
                audio.push(pcm)
            elif msg.type == WSMsgType.TEXT:
                try:
                    control = parse_control(msg.data)
                except ProtocolError as exc:
                    await recoverable(exc.code, str(exc))
                    continue
                if control.kind == "stop":
                    await call.end("caller_hangup")
                    return
                if control.kind == "dtmf":
                    call.dtmf(control.digit)
                else:
                    audio.flush()
                    call.end_turn()
            elif msg.type == WSMsgType.ERROR:
                log.info("websocket error", extra={"call_id": call.id, "error": str(ws.exception())})
                return


def add_routes(app: web.Application, calls: CallStarter, settings: Settings) -> None:
    app.router.add_get(PATH, WebSocketRoutes(calls, settings).call)
