"""The Twilio leg: ``POST /v1/twilio/voice`` (TwiML), ``GET /v1/twilio/media`` (Media Streams)
and ``POST /v1/twilio/action`` (what follows the stream).

When a call reaches a Twilio number, Twilio posts the voice webhook; we answer with TwiML
``<Connect><Stream>``, which makes Twilio open a bidirectional Media Stream to
``/v1/twilio/media``. The caller's and the dialled number ride along as ``<Parameter>``s,
because a Stream URL may carry no query string. Over the stream Twilio sends JSON text
messages: ``connected``, ``start`` (stream and call ids, custom parameters, media format),
``media`` (base64 μ-law at 8 kHz, 20 ms each), ``dtmf``, ``mark`` and ``stop``; we send
``media``, ``mark`` and ``clear``. Every message is parsed and built by
:mod:`~inzwa_voice.legs.twilio_protocol`, which ``tests/golden/twilio/`` pins; this module is
the routes, the socket, the pacing and the playout.

Playback. Twilio plays what we send from its own buffer, as fast as it arrives, so the leg paces
audio in real time (:class:`~inzwa_voice.media.pacer.Pacer`) and only a small lead ever waits
there. Only Twilio knows what has played: it echoes a ``mark`` once the audio sent before it
has played. So the leg sends marks of its own every ``MARK_EVERY_FRAMES`` frames and whenever
its queue runs dry, each standing for the playout position of the frames sent before it, and an
echo advances the leg's :class:`~inzwa_voice.media.playout.Playout` to that position; the
conversation only ever sees positions (``play`` → position, ``wait_for_playout``), never marks.
A barge-in ``interrupt()`` drops our queue and sends ``clear``, which empties Twilio's. After a
``clear`` Twilio echoes every pending mark at once although its audio never played, so
``interrupt()`` voids the marks not yet echoed first: cleared audio never counts as heard. The
price is that audio which did play in the last moments before a barge-in but was not yet
acknowledged (at most a mark interval plus a round trip) counts as unheard; the assistant's
memory errs towards less, never more.

Transfer. A Media Stream cannot move its call, so the voice webhook's TwiML is
``<Connect action="…/v1/twilio/action">``: when the gateway closes the stream, Twilio posts the
action URL for the call's next TwiML. A transfer (DTMF 0, a request for a person, a crisis)
leaves the target in a bounded, expiring book under the call's CallSid, records a
``transfer_result`` and ends the call as ``transferred``; the action then answers ``<Dial>`` to
the target. Any other end of the stream is answered ``<Hangup/>``. The ``<Dial>``'s own action
is the same URL: once the dial is over Twilio posts its ``DialCallStatus`` there, which becomes
the call's last ``transfer_result`` (``ok`` when a person answered, ``reason`` ``dial <status>``).

Authentication. With ``twilio_auth_token`` set, every route requires ``X-Twilio-Signature``:
base64(HMAC-SHA1(auth token, URL + each POST parameter's name and value, sorted by name)). A
request without the header is refused before its body is read, and a form is read only up to
``MAX_FORM_BYTES`` (64 KiB). The WebSocket upgrade is signed over its URL alone and is refused
with 403 before upgrading; since that URL is the same for every call, the voice webhook's TwiML
also carries a per-call token (``<Parameter name="token">``, HMAC of the CallSid and an expiry,
:func:`~inzwa_voice.legs.twilio_protocol.stream_token`), which the ``start`` message must bring
back for its own CallSid, once (else close 4401 ``invalid_stream_token``). The URL is the one
Twilio used: ``twilio_public_url`` + the request path, or, without it, the request's own URL
with ``X-Forwarded-Proto`` / ``X-Forwarded-Host`` from a TLS-terminating proxy.

Errors. Twilio has no channel for our errors, so every problem is logged and counted in
``inzwa_call_errors{leg="twilio", code}`` and never touches another call. Once the call has
started, bad messages are dropped and the call goes on: ``invalid_json`` (binary, or not a
JSON object), ``unknown_event``, ``wrong_stream`` (another ``streamSid``), ``bad_payload``
(media without a non-empty base64 payload), ``bad_dtmf``, ``unknown_mark`` (an echo of a mark
we never sent) and ``duplicate_start``. Before it starts there is no call to protect, and
anything but ``connected`` then ``start`` is fatal. Close codes:

* 1000: the call ended (the caller's ``stop``, or our hang-up; the reason is the disposition);
* 1009: a message over 64 KiB (``message_too_big``; any other transport failure ends the call
  as ``transport_error``);
* 1013: the gateway is at its call limit or draining (``overloaded``, ``draining``);
* 4400: the stream broke the protocol before the call started: ``not_started`` (another event
  first, or closed first), ``start_timeout`` (no ``start`` within ``handshake_timeout_s``), ``bad_start`` (no
  ``start`` object or ``streamSid``), ``unsupported_media_format`` (not μ-law 8 kHz mono).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from typing import Final
from urllib.parse import parse_qsl

from aiohttp import WSCloseCode, WSMsgType, web

from inzwa_voice.config import Settings
from inzwa_voice.conversation.ports import Call, CallRejected, CallStarter
from inzwa_voice.core import PCM16, PIPELINE_RATE, CallInfo, LegKind
from inzwa_voice.errors import ApiError
from inzwa_voice.legs import twilio_protocol as protocol
from inzwa_voice.legs.admission import admitted
from inzwa_voice.legs.base import ProtocolError
from inzwa_voice.legs.bodies import read_bounded
from inzwa_voice.legs.handoffs import Handoffs, hand_off, record_transfer
from inzwa_voice.legs.paced import CallerAudio
from inzwa_voice.legs.twilio_protocol import SAMPLE_RATE
from inzwa_voice.media.g711 import ulaw_decode, ulaw_encode
from inzwa_voice.media.pacer import Pacer
from inzwa_voice.media.playout import Playout
from inzwa_voice.media.resample import Resampler

log = logging.getLogger(__name__)

VOICE_PATH: Final = "/v1/twilio/voice"
MEDIA_PATH: Final = "/v1/twilio/media"
ACTION_PATH: Final = "/v1/twilio/action"
DIAL_ANSWERED: Final = frozenset({"completed", "answered"})
"""``DialCallStatus`` values of a ``<Dial>`` that reached a person."""
MAX_MESSAGE_BYTES: Final = 64 * 1024
MAX_FORM_BYTES: Final = 64 * 1024
"""Twilio's webhook forms are a few KiB: a bigger body is refused before the signature check
needs it parsed."""
STREAM_TOKEN_TTL_S: Final = 300
"""How long the TwiML's per-call stream token stays valid: Twilio connects the stream at once."""
MAX_USED_STREAM_TOKENS: Final = 10_000
CLOSE_AUTH: Final = 4401
HEARTBEAT_S: Final = 30.0
LEAD_FRAMES: Final = 3
"""Frames sent ahead of real time: Twilio starts playing with something buffered."""
MARK_EVERY_FRAMES: Final = 10
"""Our own marks, every 200 ms of audio: the resolution of ``played_frames``."""
MARK_PREFIX: Final = "inzwa-"
MAX_PENDING_MARKS: Final = 512
"""Marks awaiting their echo; beyond it the oldest are forgotten (a peer that never echoes
costs precision, never memory)."""


class TwilioLeg:
    """One Media Stream as a :class:`~inzwa_voice.conversation.ports.Leg`."""

    kind: LegKind = "twilio"

    def __init__(
        self, ws: web.WebSocketResponse, stream_sid: str, call_sid: str = "", handoffs: Handoffs | None = None
    ) -> None:
        self._ws = ws
        self.stream_sid = stream_sid
        self.call_sid = call_sid
        self.call: Call | None = None
        self._handoffs = handoffs
        self.playout = Playout()
        self._resampler = Resampler(PIPELINE_RATE, SAMPLE_RATE)
        self._pacer: Pacer[str] = Pacer(self._send_frame, lead_frames=LEAD_FRAMES)
        # Our marks sent and not echoed yet: the playout position each acknowledges, or None
        # once an interrupt voided it.
        self._marks: dict[str, int | None] = {}
        self._mark_count = 0
        self._since_mark = 0
        self._sent = 0  # playout position after the last frame sent that no interrupt voided
        self._interrupts = 0
        self._clearing: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def played_frames(self) -> int:
        return self.playout.played

    async def play(self, frame: PCM16) -> int:
        # Counted before it is handed over: the pacer may send it before ``enqueue`` returns.
        position = self.playout.queue()
        audio = ulaw_encode(self._resampler.process(frame))
        # No samples out (a resampler still filling): the frame keeps its slot, but Twilio gets
        # no empty media message.
        await self._pacer.enqueue(protocol.media_message(self.stream_sid, audio) if audio else "")
        return position

    def interrupt(self) -> int:
        self._pacer.flush()
        self._resampler.reset()
        self._interrupts += 1
        for name in self._marks:
            self._marks[name] = None
        played = self.playout.interrupt()
        self._sent = played
        self._since_mark = 0
        if not self._closed:
            self._clearing = asyncio.ensure_future(self._clear(self._clearing))
        return played

    async def wait_for_playout(self, position: int) -> bool:
        return await self.playout.wait_for(position)

    def echoed(self, name: str) -> bool:
        """Twilio echoed mark ``name``: what was sent before it played. False if it is not ours."""
        if name not in self._marks:
            return False
        position = self._marks.pop(name)
        if position is not None:
            self.playout.advance_to(position)
        return True

    async def send_event(self, event: dict[str, object]) -> None:
        """Media Streams carry no events of ours: Twilio would reject them (error 31924)."""

    async def transfer(self, target: str) -> bool:
        """Leave ``target`` for the ``<Connect action>`` request under the CallSid; True, so the
        call ends and the closed stream makes Twilio ask. Without a CallSid (or a book) the
        action could not find it: the caller stays with the bot."""
        return await hand_off(
            self._handoffs,
            None if self._closed else self.call_sid,
            self.call,
            target,
            how="the stream ends and Twilio dials the target",
            why_not="no CallSid, or the stream is over",
        )

    async def close(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        await self._pacer.close()
        if self._clearing is not None:
            await asyncio.wait({self._clearing}, timeout=1.0)  # a barge-in's clear still goes out
        await self._ws.close(code=WSCloseCode.OK, message=reason.encode()[:120])

    async def _send_frame(self, message: str) -> None:
        interrupts = self._interrupts
        # Counted before the write: an interrupt while it is under way must find it counted.
        self._sent += 1
        self._since_mark += 1
        if message and not await self._send(message, interrupts):
            return
        if self._since_mark >= MARK_EVERY_FRAMES or not self._pacer.queued:
            await self._send_mark(interrupts)

    async def _send_mark(self, interrupts: int) -> None:
        self._mark_count += 1
        name = f"{MARK_PREFIX}{self._mark_count}"
        self._marks[name] = self._sent
        while len(self._marks) > MAX_PENDING_MARKS:
            del self._marks[next(iter(self._marks))]
        self._since_mark = 0
        await self._send(protocol.mark_message(self.stream_sid, name), interrupts)

    async def _clear(self, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.wait({previous})
        with contextlib.suppress(ConnectionError):
            await self._write(protocol.clear_message(self.stream_sid))

    async def _send(self, message: str, interrupts: int) -> bool:
        """Write ``message`` unless an interrupt came since it was due; True when written.

        ``interrupt()`` is synchronous and leaves its ``clear`` to a task: nothing may overtake
        it, and a frame that was on its way when the interrupt came must not follow it out.
        """
        while self._clearing is not None and not self._clearing.done():
            await asyncio.wait({self._clearing})
        if interrupts != self._interrupts:
            return False
        await self._write(message)
        return True

    async def _write(self, message: str) -> None:
        if not self._ws.closed:
            await self._ws.send_str(message)


class TwilioRoutes:
    """The two routes, with what they need from ``app.py``."""

    def __init__(self, calls: CallStarter, settings: Settings) -> None:
        self.calls = calls
        self.settings = settings
        self.handoffs = Handoffs()
        self._used_stream_tokens: OrderedDict[str, None] = OrderedDict()

    def _public_base(self, request: web.Request, *, websocket: bool) -> str:
        """Scheme, host and any path prefix under which Twilio reaches this gateway."""
        configured = self.settings.twilio_public_url
        if configured:
            base = configured.rstrip("/")
        else:
            proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip() or request.scheme
            host = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip() or request.host
            base = f"{proto}://{host}"
        if websocket and base.startswith("http"):
            base = "ws" + base[4:]  # http -> ws, https -> wss
        return base

    def _authenticate(self, request: web.Request, *, websocket: bool, params: dict[str, str] | None = None) -> None:
        """Raise 403 unless ``X-Twilio-Signature`` signs this request with our auth token."""
        token = self.settings.twilio_auth_token
        if not token:
            return
        url = self._public_base(request, websocket=websocket) + request.raw_path
        presented = request.headers.get("X-Twilio-Signature", "")
        if not (presented and protocol.signature_matches(presented, token, url, (params or {}).items())):
            raise self._refused(request, "invalid_signature")

    def _refused(self, request: web.Request, code: str) -> ApiError:
        self.calls.metrics.call_errors.labels("twilio", code).inc()
        log.warning("twilio signature mismatch", extra={"path": request.path, "remote": request.remote})
        return ApiError(
            "X-Twilio-Signature is missing or does not sign this request",
            status=403,
            type="authentication_error",
            code=code,
        )

    async def _signed_form(self, request: web.Request) -> dict[str, str]:
        """The webhook's form, once it can be signed: no signature header, no body read."""
        if self.settings.twilio_auth_token and not request.headers.get("X-Twilio-Signature"):
            raise self._refused(request, "invalid_signature")
        fields = await self._form(request)
        self._authenticate(request, websocket=False, params=fields)
        return fields

    async def voice_webhook(self, request: web.Request) -> web.Response:
        fields = await self._signed_form(request)
        busy = self._busy(fields)
        if busy is not None:
            return busy
        stream_url = self._public_base(request, websocket=True) + MEDIA_PATH
        action_url = self._public_base(request, websocket=False) + ACTION_PATH
        parameters = protocol.stream_parameters(fields)
        auth_token = self.settings.twilio_auth_token
        if auth_token:
            expires = int(time.time()) + STREAM_TOKEN_TTL_S
            token = protocol.stream_token(auth_token, parameters["callSid"], expires)
            parameters[protocol.STREAM_TOKEN_PARAMETER] = token
        return web.Response(text=protocol.twiml(stream_url, parameters, action_url), content_type="text/xml")

    def _busy(self, fields: dict[str, str]) -> web.Response | None:
        """Beyond capacity: TwiML that says the profile's busy message and hangs up (or dials
        the profile's people), instead of a stream the gateway would refuse."""
        info = CallInfo(leg="twilio", caller=fields.get("From", ""), dialled=fields.get("To", ""))
        refused = self.calls.refusal(info)
        if refused is None:
            return None
        self.calls.metrics.calls_rejected.labels("twilio", refused.code).inc()
        log.info("twilio call refused", extra={"reason": refused.code, "call_sid": fields.get("CallSid", "")[:64]})
        return web.Response(text=protocol.busy_twiml(refused.say, refused.transfer_target), content_type="text/xml")

    def _check_stream_token(self, start: protocol.Start) -> None:
        """With an auth token, ``start`` must bring back the token the webhook issued for its
        CallSid, unexpired and not used before (Twilio opens one stream per ``<Stream>``)."""
        auth_token = self.settings.twilio_auth_token
        if not auth_token:
            return
        token = start.info.params.get(protocol.STREAM_TOKEN_PARAMETER, "")
        call_sid = start.info.external_id
        if not protocol.stream_token_valid(token, auth_token, call_sid, time.time()) or (
            token in self._used_stream_tokens
        ):
            raise ProtocolError("invalid_stream_token", "start has no valid per-call token for its CallSid", CLOSE_AUTH)
        self._used_stream_tokens[token] = None
        while len(self._used_stream_tokens) > MAX_USED_STREAM_TOKENS:
            self._used_stream_tokens.popitem(last=False)

    async def connect_action(self, request: web.Request) -> web.Response:
        """The stream ended: ``<Dial>`` to the target if the call asked for a transfer, else
        ``<Hangup/>``. The ``<Dial>`` posts back here once it is over, with ``DialCallStatus``:
        that outcome goes into the call's record, and Twilio is told to hang up."""
        fields = await self._signed_form(request)
        call_sid = fields.get("CallSid", "")
        target = self.handoffs.get(call_sid) if call_sid else None
        status = fields.get("DialCallStatus")
        if status is not None:
            await self._dial_over(call_sid, target, status[:32], _seconds(fields.get("DialCallDuration")))
            return web.Response(text=protocol.hangup_twiml(), content_type="text/xml")
        log.info("twilio connect action", extra={"call_sid": call_sid[:64], "transfer_target": target})
        action_url = self._public_base(request, websocket=False) + ACTION_PATH
        text = protocol.dial_twiml(target, action_url) if target else protocol.hangup_twiml()
        return web.Response(text=text, content_type="text/xml")

    async def _dial_over(self, call_sid: str, target: str | None, status: str, talk_s: int | None) -> None:
        """Twilio's ``<Dial>`` ended: ``completed`` (or ``answered``) when a person took the
        caller, for ``DialCallDuration`` seconds; ``busy``, ``no-answer``, ``failed`` or
        ``canceled`` when nobody did."""
        extra = {"call_sid": call_sid[:64], "transfer_target": target, "status": status, "talk_s": talk_s}
        log.info("twilio dial over", extra=extra)
        call = self.handoffs.call(call_sid) if call_sid else None
        if target is not None:
            await record_transfer(call, target, ok=status in DIAL_ANSWERED, reason=f"dial {status}", talk_s=talk_s)

    @staticmethod
    async def _form(request: web.Request) -> dict[str, str]:
        if request.content_type != "application/x-www-form-urlencoded":
            raise ApiError(
                "Twilio posts webhooks as application/x-www-form-urlencoded",
                status=415,
                code="unsupported_media_type",
            )
        body = await read_bounded(request, MAX_FORM_BYTES)
        try:
            return dict(parse_qsl(body.decode(), keep_blank_values=True))
        except UnicodeDecodeError:
            raise ApiError("the form is not UTF-8", code="invalid_form") from None

    async def media_stream(self, request: web.Request) -> web.WebSocketResponse:
        self._authenticate(request, websocket=True)
        ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=MAX_MESSAGE_BYTES)
        await ws.prepare(request)
        try:
            start = await _receive_start(ws, self.settings.handshake_timeout_s)
            self._check_stream_token(start)
        except ProtocolError as exc:
            self.calls.metrics.call_errors.labels("twilio", exc.code).inc()
            log.warning("twilio stream refused", extra={"code": exc.code, "error": str(exc)})
            await ws.close(code=exc.close_code, message=exc.code.encode())
            return ws

        async def refuse(exc: CallRejected) -> None:
            log.info("twilio call refused", extra={"reason": exc.code, "call_sid": start.info.external_id})
            await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=exc.code.encode())

        leg = TwilioLeg(ws, start.stream_sid, start.info.external_id, self.handoffs)
        async with admitted(self.calls, leg, start.info, refuse) as call:
            if call is not None:
                leg.call = call
                await self._serve(ws, leg, call)
        return ws

    async def _serve(self, ws: web.WebSocketResponse, leg: TwilioLeg, call: Call) -> None:
        """Read Twilio's messages until the stream stops or closes, or the call ends."""
        caller_audio = CallerAudio(call.feed, SAMPLE_RATE)
        errors = self.calls.metrics.call_errors

        def dropped(code: str, detail: str) -> None:
            errors.labels("twilio", code).inc()
            log.info("twilio message dropped", extra={"call_id": call.id, "code": code, "detail": detail})

        async for msg in ws:
            if msg.type == WSMsgType.ERROR:
                too_big = ws.close_code == WSCloseCode.MESSAGE_TOO_BIG
                errors.labels("twilio", "message_too_big" if too_big else "transport_error").inc()
                log.info("twilio stream error", extra={"call_id": call.id, "error": str(ws.exception() or msg.data)})
                return
            try:
                message = protocol.parse(msg.data, leg.stream_sid)
            except ProtocolError as exc:
                dropped(exc.code, str(exc))
                continue
            if isinstance(message, protocol.Media):
                caller_audio.push(ulaw_decode(message.audio))
            elif isinstance(message, protocol.Dtmf):
                call.dtmf(message.digit)
            elif isinstance(message, protocol.Mark):
                if not leg.echoed(message.name):
                    dropped("unknown_mark", message.name[:64])
            elif isinstance(message, protocol.Stop):
                await call.hangup("caller_hangup")
                return


async def _receive_start(ws: web.WebSocketResponse, timeout_s: float) -> protocol.Start:
    """Skip ``connected``, parse ``start``; anything else first breaks the protocol."""
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                msg = await ws.receive()
                what = f"a {msg.type.name.lower()} message"
                message: protocol.Inbound | None = None
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    try:
                        message = protocol.parse(msg.data)
                    except ProtocolError as exc:
                        if exc.code in ("bad_start", "unsupported_media_format"):
                            raise
                        what = f"a message with {exc.code}"
                if isinstance(message, protocol.Start):
                    return message
                if not isinstance(message, protocol.Connected):
                    if message is not None:
                        what = f"event {type(message).__name__.lower()!r}"
                    raise ProtocolError("not_started", f"{what} came before start")
    except TimeoutError:
        raise ProtocolError("start_timeout", f"no start message within {timeout_s:g} s") from None


def add_routes(app: web.Application, calls: CallStarter, settings: Settings) -> None:
    routes = TwilioRoutes(calls, settings)
    app.router.add_post(VOICE_PATH, routes.voice_webhook)
    app.router.add_get(MEDIA_PATH, routes.media_stream)
    app.router.add_post(ACTION_PATH, routes.connect_action)


def _seconds(value: str | None) -> int | None:
    """A whole number of seconds from a Twilio form field; None when absent or not one."""
    if value is None or not (value.isascii() and value.isdigit()) or len(value) > 9:  # "²" is a digit too
        return None
    return int(value)
