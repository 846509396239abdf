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
import json
import logging
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from inzwa_voice.api.keys import CALLS, SETTINGS
from inzwa_voice.conversation.calls import CallRejected
from inzwa_voice.conversation.session import CallSession
from inzwa_voice.legs.base import CLOSE_PROTOCOL, CallInfo, LegKind, ProtocolError
from inzwa_voice.legs.paced import CallerAudio, OutputLeg, PacedOutput
from inzwa_voice.media.framing import bytes_to_pcm16, pcm16_to_bytes

log = logging.getLogger(__name__)

SAMPLE_RATES = (8000, 16000, 24000, 48000)
MAX_MESSAGE_BYTES = 64 * 1024
START_TIMEOUT_S = 10.0

# Close codes beyond RFC 6455's: 4400 protocol violation (legs.base), 4401 authentication failed.
CLOSE_AUTH = 4401


class WebSocketLeg(OutputLeg):
    kind: LegKind = "ws"
    _out: PacedOutput

    def __init__(self, ws: web.WebSocketResponse, sample_rate: int) -> None:
        self._ws = ws
        self._out = PacedOutput(self._send_audio, pcm16_to_bytes, self._marked, out_rate=sample_rate)
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


def _parse_start(data: dict[str, Any], request: web.Request) -> tuple[CallInfo, int]:
    settings = request.app[SETTINGS]
    if settings.api_keys:
        presented = str(data.get("auth") or "")
        if not any(presented and hmac.compare_digest(presented.encode(), k.encode()) for k in settings.api_keys):
            raise ProtocolError("unauthorized", "start.auth is missing or not a valid API key", CLOSE_AUTH)
    if data.get("codec", "pcm16") != "pcm16":
        raise ProtocolError("unsupported_codec", "codec must be 'pcm16'")
    rate = data.get("sample_rate", 16000)
    if rate not in SAMPLE_RATES:
        raise ProtocolError("unsupported_sample_rate", f"sample_rate must be one of {SAMPLE_RATES}")
    info = CallInfo(
        leg="ws",
        caller=str(data.get("caller", ""))[:64],
        dialled=str(data.get("dialled", ""))[:64],
        external_id=str(data.get("session_id", ""))[:128],
    )
    return info, int(rate)


async def _receive_start(ws: web.WebSocketResponse, request: web.Request) -> tuple[CallInfo, int]:
    try:
        msg = await ws.receive(timeout=START_TIMEOUT_S)
    except TimeoutError:
        raise ProtocolError("start_timeout", f"no start message within {START_TIMEOUT_S:.0f} s") from None
    if msg.type == WSMsgType.BINARY:
        raise ProtocolError("not_started", "binary audio before the start message")
    if msg.type != WSMsgType.TEXT:
        raise ProtocolError("not_started", "the connection closed before the start message")
    data = _json(msg.data)
    if data is None or data.get("type") != "start":
        raise ProtocolError("not_started", "the first message must be {'type': 'start', ...}")
    return _parse_start(data, request)


def _json(text: str) -> dict[str, Any] | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


async def _error(ws: web.WebSocketResponse, code: str, message: str, recoverable: bool) -> None:
    if not ws.closed:
        with contextlib.suppress(ConnectionError):
            await ws.send_json({"type": "error", "code": code, "message": message, "recoverable": recoverable})


async def websocket_call(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=MAX_MESSAGE_BYTES)
    await ws.prepare(request)
    calls = request.app[CALLS]
    try:
        info, rate = await _receive_start(ws, request)
        leg = WebSocketLeg(ws, rate)
        session = await calls.start(leg, info)
    except ProtocolError as exc:
        calls.metrics.call_errors.labels("ws", exc.code).inc()
        await _error(ws, exc.code, str(exc), False)
        await ws.close(code=exc.close_code, message=exc.code.encode())
        return ws
    except CallRejected as exc:
        await _error(ws, exc.code, str(exc), False)
        await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=exc.code.encode())
        return ws
    leg.session = session
    await ws.send_json({"type": "session.started", "call_id": session.id, "profile": session.profile.name})
    try:
        await _serve(ws, session, rate)
    finally:
        await session.hangup("caller_hangup")
    return ws


async def _serve(ws: web.WebSocketResponse, session: CallSession, rate: int) -> None:
    """Read the client's messages until it stops, hangs up, breaks the protocol or the call ends."""
    audio = CallerAudio(session.feed, rate)
    metrics = session.manager.metrics
    async for msg in ws:
        if msg.type == WSMsgType.BINARY:
            try:
                pcm = bytes_to_pcm16(msg.data)
            except ValueError:
                metrics.call_errors.labels("ws", "odd_length").inc()
                await _error(ws, "odd_length", "PCM16 frames must have an even number of bytes", False)
                await ws.close(code=CLOSE_PROTOCOL, message=b"odd_length")
                return
            audio.push(pcm)
        elif msg.type == WSMsgType.TEXT:
            data = _json(msg.data)
            kind = data.get("type") if data else None
            if data is None:
                metrics.call_errors.labels("ws", "invalid_json").inc()
                await _error(ws, "invalid_json", "control messages must be JSON objects", True)
            elif kind == "stop":
                await session.end("caller_hangup")
                return
            elif kind == "dtmf" and isinstance(data.get("digit"), str) and data["digit"] in "0123456789*#":
                session.dtmf(data["digit"])
            elif kind == "end_turn":
                audio.flush()
                session.end_turn()
            else:
                metrics.call_errors.labels("ws", "unknown_type").inc()
                await _error(ws, "unknown_type", f"unknown message type {str(kind)[:40]!r}", True)
        elif msg.type == WSMsgType.ERROR:
            log.info("websocket error", extra={"call_id": session.id, "error": str(ws.exception())})
            return


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/ws", websocket_call)
