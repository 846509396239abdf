"""The Twilio leg: ``POST /v1/twilio/voice`` (TwiML) and ``GET /v1/twilio/media`` (Media Streams).

When a call reaches a Twilio number, Twilio posts the voice webhook; we answer with TwiML
``<Connect><Stream>``, which makes Twilio open a bidirectional Media Stream to
``/v1/twilio/media``. The caller's and the dialled number ride along as ``<Parameter>``s,
because a Stream URL may carry no query string. Over the stream Twilio sends JSON text
messages: ``connected``, ``start`` (stream and call ids, custom parameters, media format),
``media`` (base64 μ-law at 8 kHz, 20 ms each), ``dtmf``, ``mark`` and ``stop``; we send
``media``, ``mark`` and ``clear``. The messages are pinned by ``tests/golden/twilio/``, taken
from https://www.twilio.com/docs/voice/media-streams/websocket-messages.

Playback. Twilio plays what we send from its own buffer, as fast as it arrives, so the leg paces
audio in real time (:class:`~inzwa_voice.media.pacer.Pacer`) and only a small lead ever waits
there. A barge-in ``flush()`` drops our queue and sends ``clear``, which empties Twilio's.
Only Twilio knows what has played: it echoes a ``mark`` once the audio sent before it has
played. So the leg sends marks of its own every ``MARK_EVERY_FRAMES`` frames and whenever its
queue runs dry, and ``played_frames`` counts the frames those echoes acknowledge; a session's
mark is reported to the session only when Twilio echoes it. After a ``clear`` Twilio echoes
every pending mark at once although its audio never played, so ``flush()`` voids the pending
marks first: cleared audio never counts as heard. The price is that audio which did play in
the last moments before a barge-in but was not yet acknowledged (at most a mark interval plus
a round trip) counts as unheard; the assistant's memory errs towards less, never more.

Authentication. With ``twilio_auth_token`` set, both routes require ``X-Twilio-Signature``:
base64(HMAC-SHA1(auth token, URL + each POST parameter's name and value, sorted by name)). The
WebSocket upgrade is signed over its URL alone and is refused with 403 before upgrading. The
URL is the one Twilio used: ``twilio_public_url`` + the request path, or, without it, the
request's own URL with ``X-Forwarded-Proto`` / ``X-Forwarded-Host`` from a TLS-terminating
proxy.

Errors. Twilio has no channel for our errors, so every problem is logged and counted in
``inzwa_call_errors{leg="twilio", code}`` and never touches another call. Once the call has
started, bad messages are dropped and the call goes on: ``invalid_json`` (binary, or not a
JSON object), ``unknown_event``, ``wrong_stream`` (another ``streamSid``), ``bad_payload``
(media without a non-empty base64 payload; μ-law is one byte a sample, so any length is
audio), ``bad_dtmf``, ``unknown_mark`` (an echo of a mark we never sent) and
``duplicate_start``. Before it starts there is no call to protect, and anything but
``connected`` then ``start`` is fatal. Close codes:

* 1000: the call ended (the caller's ``stop``, or our hang-up; the reason is the disposition);
* 1009: a message over 64 KiB (``message_too_big``; any other transport failure ends the call
  as ``transport_error``);
* 1013: the gateway is at its call limit or draining (``overloaded``, ``draining``);
* 4400: the stream broke the protocol before the call started: ``not_started`` (another event
  first, or closed first), ``start_timeout`` (no ``start`` within 10 s), ``bad_start`` (no
  ``start`` object or ``streamSid``), ``unsupported_media_format`` (not μ-law 8 kHz mono).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final
from xml.etree import ElementTree

from aiohttp import WSCloseCode, WSMessage, WSMsgType, web

from inzwa_voice.api.keys import CALLS, METRICS, SETTINGS
from inzwa_voice.conversation.calls import CallRejected
from inzwa_voice.conversation.session import CallSession
from inzwa_voice.engines.base import PCM16
from inzwa_voice.errors import ApiError
from inzwa_voice.legs.base import CallInfo, LegKind, ProtocolError
from inzwa_voice.legs.paced import CallerAudio
from inzwa_voice.media.framing import PIPELINE_RATE
from inzwa_voice.media.g711 import ulaw_decode, ulaw_encode
from inzwa_voice.media.pacer import Pacer
from inzwa_voice.media.resample import Resampler

log = logging.getLogger(__name__)

VOICE_PATH: Final = "/v1/twilio/voice"
MEDIA_PATH: Final = "/v1/twilio/media"
SAMPLE_RATE: Final = 8000
MEDIA_FORMAT: Final = {"encoding": "audio/x-mulaw", "sampleRate": SAMPLE_RATE, "channels": 1}
"""The only format of a Media Stream (``start.mediaFormat``)."""
MAX_MESSAGE_BYTES: Final = 64 * 1024
START_TIMEOUT_S: Final = 10.0
HEARTBEAT_S: Final = 30.0
LEAD_FRAMES: Final = 3
"""Frames sent ahead of real time: Twilio starts playing with something buffered."""
MARK_EVERY_FRAMES: Final = 10
"""Our own marks, every 200 ms of audio: the resolution of ``played_frames``."""
MARK_PREFIX: Final = "inzwa-"
DTMF_DIGITS: Final = frozenset("0123456789*#")
MAX_PARAMETERS: Final = 32
"""Custom parameters kept from ``start`` (each name cut to 64 characters, value to 256)."""


def signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """``X-Twilio-Signature`` of a request to ``url`` with POST ``params`` (none for a WebSocket).

    Twilio's helper libraries sort the distinct names, then each name's distinct values.
    """
    data = url + "".join(name + value for name, value in sorted(set(params)))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def twiml(stream_url: str, parameters: dict[str, str]) -> str:
    """``<Connect><Stream>``: Twilio streams the call to ``stream_url`` until the socket closes."""
    response = ElementTree.Element("Response")
    stream = ElementTree.SubElement(ElementTree.SubElement(response, "Connect"), "Stream", url=stream_url)
    for name, value in parameters.items():
        ElementTree.SubElement(stream, "Parameter", name=name, value=value)
    return '<?xml version="1.0" encoding="UTF-8"?>' + ElementTree.tostring(response, encoding="unicode")


def _public_base(request: web.Request, *, websocket: bool) -> str:
    """Scheme, host and any path prefix under which Twilio reaches this gateway."""
    configured = request.app[SETTINGS].twilio_public_url
    if configured:
        base = configured.rstrip("/")
    else:
        proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip() or request.scheme
        host = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip() or request.host
        base = f"{proto}://{host}"
    if websocket and base.startswith("http"):
        base = "ws" + base[4:]  # http -> ws, https -> wss
    return base


def _authenticate(request: web.Request, *, websocket: bool, params: Iterable[tuple[str, str]] = ()) -> None:
    """Raise 403 unless ``X-Twilio-Signature`` signs this request with our auth token."""
    token = request.app[SETTINGS].twilio_auth_token
    if not token:
        return
    url = _public_base(request, websocket=websocket) + request.raw_path
    presented = request.headers.get("X-Twilio-Signature", "").encode()
    if not hmac.compare_digest(presented, signature(token, url, params).encode()):
        request.app[METRICS].call_errors.labels("twilio", "invalid_signature").inc()
        log.warning("twilio signature mismatch", extra={"path": request.path, "remote": request.remote})
        raise ApiError(
            "X-Twilio-Signature is missing or does not sign this request",
            status=403,
            type="authentication_error",
            code="invalid_signature",
        )


async def voice_webhook(request: web.Request) -> web.Response:
    if request.content_type != "application/x-www-form-urlencoded":
        raise ApiError(
            "Twilio posts webhooks as application/x-www-form-urlencoded",
            status=415,
            code="unsupported_media_type",
        )
    form = await request.post()
    fields = {name: value for name, value in form.items() if isinstance(value, str)}
    _authenticate(request, websocket=False, params=fields.items())
    parameters = {
        "from": fields.get("From", "")[:64],
        "to": fields.get("To", "")[:64],
        "callSid": fields.get("CallSid", "")[:64],
    }
    stream_url = _public_base(request, websocket=True) + MEDIA_PATH
    return web.Response(text=twiml(stream_url, parameters), content_type="text/xml")


@dataclass
class _Frame:
    seq: int
    payload: str  # base64 μ-law


@dataclass
class _Mark:
    heard: int | None  # played_frames once Twilio echoes it; None once a clear voided it
    session_name: str | None  # the session's own mark, or None for ours


class TwilioLeg:
    kind: LegKind = "twilio"

    def __init__(self, ws: web.WebSocketResponse, stream_sid: str) -> None:
        self._ws = ws
        self.stream_sid = stream_sid
        self.session: CallSession | None = None
        self._resampler = Resampler(PIPELINE_RATE, SAMPLE_RATE)
        self._pacer: Pacer[_Frame] = Pacer(self._send_frame, lead_frames=LEAD_FRAMES)
        self._last_seq = -1  # the last frame handed to the pacer
        self._waiting: deque[tuple[int, str]] = deque()  # session marks behind queued frames
        self._marks: dict[str, _Mark] = {}  # sent to Twilio, not echoed yet
        self._mark_count = 0
        self._since_mark = 0
        self._sent = 0  # frames sent that a clear has not made uncertain
        self._acknowledged = 0
        self._clearing: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def played_frames(self) -> int:
        return self._acknowledged

    async def play(self, frame: PCM16) -> None:
        payload = base64.b64encode(ulaw_encode(self._resampler.process(frame))).decode()
        self._last_seq += 1
        await self._pacer.enqueue(_Frame(self._last_seq, payload))

    def flush(self) -> int:
        dropped = self._pacer.flush()
        self._resampler.reset()
        for mark in self._marks.values():
            mark.heard = None
        self._sent = self._acknowledged
        self._since_mark = 0
        # The session's marks behind the dropped frames follow the clear, so Twilio echoes them at once.
        messages = [{"event": "clear", "streamSid": self.stream_sid}]
        messages += [self._mark_message(name, heard=False) for _, name in self._waiting]
        self._waiting.clear()
        if not self._closed:
            self._clearing = asyncio.ensure_future(self._clear(self._clearing, messages))
        return dropped

    async def mark(self, name: str) -> None:
        if self._pacer.queued:
            self._waiting.append((self._last_seq, name))
        else:
            await self._send(self._mark_message(name))

    def echoed(self, name: str) -> bool:
        """Twilio echoed mark ``name``; False when it is none of ours."""
        mark = self._marks.pop(name, None)
        if mark is None:
            return False
        if mark.heard is not None:
            self._acknowledged = max(self._acknowledged, mark.heard)
        if mark.session_name is not None and self.session is not None:
            self.session.marked(mark.session_name)
        return True

    async def send_event(self, event: dict[str, object]) -> None:
        """Media Streams carry no events of ours: Twilio would reject them (error 31924)."""

    async def close(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        await self._pacer.close()
        await self._ws.close(code=WSCloseCode.OK, message=reason.encode()[:120])

    async def _send_frame(self, frame: _Frame) -> None:
        # Counted before the write: a flush while it is under way must find it counted.
        self._sent += 1
        self._since_mark += 1
        await self._send({"event": "media", "streamSid": self.stream_sid, "media": {"payload": frame.payload}})
        session_marks = False
        while self._waiting and self._waiting[0][0] <= frame.seq:
            session_marks = True
            await self._send(self._mark_message(self._waiting.popleft()[1]))
        if not session_marks and (self._since_mark >= MARK_EVERY_FRAMES or not self._pacer.queued):
            await self._send(self._mark_message(None))

    def _mark_message(self, session_name: str | None, *, heard: bool = True) -> dict[str, Any]:
        """A new mark after the frames sent so far; ``heard=False`` when a clear dropped them."""
        self._mark_count += 1
        name = f"{MARK_PREFIX}{self._mark_count}"
        self._marks[name] = _Mark(self._sent if heard else None, session_name)
        self._since_mark = 0
        return {"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}}

    async def _clear(self, previous: asyncio.Task[None] | None, messages: list[dict[str, Any]]) -> None:
        if previous is not None:
            await asyncio.wait({previous})
        with contextlib.suppress(ConnectionError):
            for message in messages:
                await self._write(message)

    async def _send(self, message: dict[str, Any]) -> None:
        # flush() is synchronous and leaves its clear to a task: nothing may overtake it.
        if self._clearing is not None and not self._clearing.done():
            await asyncio.wait({self._clearing})
        await self._write(message)

    async def _write(self, message: dict[str, Any]) -> None:
        if not self._ws.closed:
            await self._ws.send_str(json.dumps(message))


@dataclass(frozen=True)
class _Start:
    stream_sid: str
    info: CallInfo


def _json_object(msg: WSMessage) -> dict[str, Any] | None:
    if msg.type != WSMsgType.TEXT:
        return None
    try:
        data = json.loads(msg.data)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _parse_start(data: dict[str, Any]) -> _Start:
    start = data.get("start")
    if not isinstance(start, dict):
        raise ProtocolError("bad_start", "the start message has no start object")
    stream_sid = start.get("streamSid") or data.get("streamSid")
    if not isinstance(stream_sid, str) or not stream_sid:
        raise ProtocolError("bad_start", "the start message has no streamSid")
    media_format = start.get("mediaFormat")
    if not isinstance(media_format, dict) or any(media_format.get(k) != v for k, v in MEDIA_FORMAT.items()):
        raise ProtocolError("unsupported_media_format", f"mediaFormat must be {MEDIA_FORMAT}")
    custom = start.get("customParameters")
    params: dict[str, str] = {}
    for name, value in custom.items() if isinstance(custom, dict) else ():
        if isinstance(value, str) and len(params) < MAX_PARAMETERS:
            params[str(name)[:64]] = value[:256]
    call_sid = start.get("callSid")
    info = CallInfo(
        leg="twilio",
        caller=params.get("from", "")[:64],
        dialled=params.get("to", "")[:64],
        external_id=(call_sid if isinstance(call_sid, str) else params.get("callSid", ""))[:64],
        params=params,
    )
    return _Start(stream_sid, info)


async def _receive_start(ws: web.WebSocketResponse) -> _Start:
    """Skip ``connected``, parse ``start``; anything else first breaks the protocol."""
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            while True:
                msg = await ws.receive()
                data = _json_object(msg)
                event = data.get("event") if data else None
                if event == "start" and data is not None:
                    return _parse_start(data)
                if event != "connected":
                    what = f"event {str(event)[:40]!r}" if data else f"a {msg.type.name.lower()} message"
                    raise ProtocolError("not_started", f"{what} came before start")
    except TimeoutError:
        raise ProtocolError("start_timeout", f"no start message within {START_TIMEOUT_S:.0f} s") from None


async def media_stream(request: web.Request) -> web.WebSocketResponse:
    _authenticate(request, websocket=True)
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=MAX_MESSAGE_BYTES)
    await ws.prepare(request)
    calls = request.app[CALLS]
    try:
        start = await _receive_start(ws)
    except ProtocolError as exc:
        calls.metrics.call_errors.labels("twilio", exc.code).inc()
        log.warning("twilio stream refused", extra={"code": exc.code, "error": str(exc)})
        await ws.close(code=exc.close_code, message=exc.code.encode())
        return ws
    leg = TwilioLeg(ws, start.stream_sid)
    try:
        session = await calls.start(leg, start.info)
    except CallRejected as exc:
        await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=exc.code.encode())
        return ws
    leg.session = session
    try:
        await _serve(ws, leg, session)
    finally:
        await session.hangup("caller_hangup")
    return ws


async def _serve(ws: web.WebSocketResponse, leg: TwilioLeg, session: CallSession) -> None:
    """Read Twilio's messages until the stream stops or closes, or the call ends."""
    caller_audio = CallerAudio(session.feed, SAMPLE_RATE)
    errors = session.manager.metrics.call_errors

    def dropped(code: str, detail: str) -> None:
        errors.labels("twilio", code).inc()
        log.info("twilio message dropped", extra={"call_id": session.id, "code": code, "detail": detail})

    async for msg in ws:
        if msg.type == WSMsgType.ERROR:
            too_big = ws.close_code == WSCloseCode.MESSAGE_TOO_BIG
            errors.labels("twilio", "message_too_big" if too_big else "transport_error").inc()
            log.info("twilio stream error", extra={"call_id": session.id, "error": str(ws.exception() or msg.data)})
            return
        data = _json_object(msg)
        if data is None:
            dropped("invalid_json", "messages must be JSON objects in text frames")
            continue
        event = data.get("event")
        if event not in ("media", "dtmf", "mark", "stop", "start"):
            dropped("unknown_event", str(event)[:40])
        elif event == "start":
            dropped("duplicate_start", "a stream starts once")
        elif data.get("streamSid") != leg.stream_sid:
            dropped("wrong_stream", str(data.get("streamSid"))[:64])
        elif event == "media":
            audio = _media_payload(data)
            if audio is None:
                dropped("bad_payload", "media.payload must be non-empty base64")
                continue
            caller_audio.push(ulaw_decode(audio))
        elif event == "dtmf":
            digit = _field(data, "dtmf", "digit")
            if digit is None or digit not in DTMF_DIGITS:
                dropped("bad_dtmf", str(digit)[:8])
                continue
            session.dtmf(digit)
        elif event == "mark":
            name = _field(data, "mark", "name")
            if name is None or not leg.echoed(name):
                dropped("unknown_mark", str(name)[:64])
        else:  # stop
            await session.hangup("caller_hangup")
            return


def _field(data: dict[str, Any], outer: str, inner: str) -> str | None:
    section = data.get(outer)
    value = section.get(inner) if isinstance(section, dict) else None
    return value if isinstance(value, str) else None


def _media_payload(data: dict[str, Any]) -> bytes | None:
    payload = _field(data, "media", "payload")
    if not payload:
        return None
    try:
        return base64.b64decode(payload, validate=True) or None
    except ValueError:  # binascii.Error: not base64
        return None


def add_routes(app: web.Application) -> None:
    app.router.add_post(VOICE_PATH, voice_webhook)
    app.router.add_get(MEDIA_PATH, media_stream)
