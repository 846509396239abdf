"""The WebRTC leg: ``POST /v1/webrtc/token`` and ``POST /v1/webrtc/offer``, one aiortc peer per call.

Signalling is one HTTP round trip, with no trickle ICE either way: the page posts an offer that
already holds its candidates, and the answer comes back once our ICE gathering has completed,
so it holds ours. What an offer must hold, the answer's shape, the ICE servers and every
refusal's wording live in :mod:`~inzwa_voice.legs.webrtc_signalling` (plain values, tested
against literal SDP); this module keeps what needs aiortc: the peer, the tracks, the data
channel. ICE uses ``RTCConfiguration(iceServers=[])`` unless ``webrtc_ice_servers`` names
STUN/TURN servers. Our host candidates are this machine's interface addresses (aioice leaves
loopback out), or ``webrtc_host_addresses``.

Media. Only Opus is negotiated (every browser offers it), so both directions are 48 kHz frames
of 960 samples. The page's microphone is decoded by aiortc and resampled to the pipeline's
16 kHz frames (:class:`CallerAudio`). The bot speaks on :class:`BotAudioTrack`: aiortc's RTP
sender pulls one 20 ms frame per ``recv()``, and ``recv()`` returns it at its deadline, so the
sender's pull is the pacer. A frame counts as played (its playout advances) when it is pulled:
nothing reports playback from the far side. A barge-in drops everything not yet pulled. When the
page's microphone goes quiet or its track ends, nothing more arrives: the call's own clock fills
the gap, so the caller's turn still ends.

Events. The page opens a data channel labelled ``events`` before its offer; over it the server
sends the same JSON events as the native WebSocket leg (``api/websocket.md``), and the page
may send ``{"type": "dtmf", "digit"}`` and ``{"type": "stop"}``. Events raised before the
channel opens (``session.started``, the greeting's) are held, boundedly, and sent when it does.

Lifecycle and errors. The offer is checked before any peer exists where it can be (body, token,
peer limit, SDP), and every later refusal closes the peer it made: 400 ``invalid_sdp``,
``no_audio``, ``no_common_codec``; 401 ``missing_token``, ``invalid_token``,
``expired_token`` (only with keys configured: a token from ``/v1/webrtc/token`` or, for the
built-in widget, ``/widget/token``, in ``Authorization: Bearer`` (checked before the body is
read) or the body's ``token``); 413 for a body over ``MAX_OFFER_BYTES``; 503 ``too_many_peers`` beyond
``webrtc_max_peers``, or the call manager's ``overloaded``/``draining``. The call is admitted
in a task that lives as long as it (the HTTP request ends with the answer): it holds the one
admission path open until the peer connection closes or fails, the peer has not connected
within ``CONNECT_TIMEOUT_S``, or the call ends at the gateway (which closes the peer), and then
hangs the call up whatever happened. Messages the call survives are answered with ``error``
events (``recoverable: true``) and counted in ``inzwa_call_errors``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Final

import aioice.ice
import numpy as np
from aiohttp import web
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.exceptions import InvalidStateError, OperationError
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from inzwa_voice.config import Settings
from inzwa_voice.conversation.ports import Call, CallRejected, CallStarter
from inzwa_voice.core import DTMF_DIGITS, FRAME_MS, PCM16, PIPELINE_RATE, CallInfo, LegKind
from inzwa_voice.errors import ApiError
from inzwa_voice.legs import webrtc_signalling as signalling
from inzwa_voice.legs.admission import admitted
from inzwa_voice.legs.base import json_object
from inzwa_voice.legs.bodies import read_bounded
from inzwa_voice.legs.paced import CallerAudio, OutputLeg
from inzwa_voice.legs.webrtc_tokens import CallTokens
from inzwa_voice.media.playout import Playout
from inzwa_voice.media.resample import Resampler
from inzwa_voice.telemetry import Metrics

log = logging.getLogger(__name__)

MAX_OFFER_BYTES: Final = signalling.MAX_SDP_CHARS + 16 * 1024
"""An offer's body: its SDP (at most ``MAX_SDP_CHARS``) and a few short fields, JSON-escaped."""

OPUS_RATE: Final = 48000
OPUS_FRAME_SAMPLES: Final = OPUS_RATE * FRAME_MS // 1000
"""960: one 20 ms frame at 48 kHz, the frame aiortc's Opus codec takes and gives."""
_TIME_BASE: Final = Fraction(1, OPUS_RATE)
_NO_SAMPLES: Final = np.zeros(0, dtype=np.int16)

CONNECT_TIMEOUT_S: Final = 30.0
"""An answered peer that has not connected by then (ICE failed quietly) ends its call."""
CHANNEL_CLOSE_TIMEOUT_S: Final = 1.0
"""How long closing waits for the events channel to deliver ``call.end`` before the peer goes."""
MAX_QUEUED_FRAMES: Final = 50
"""1 s of bot audio waiting to be pulled; ``play`` waits beyond it, so TTS feels back-pressure."""
MAX_LATE_S: Final = 0.1
"""A ``recv()`` this late (the loop stalled) restarts the clock instead of bursting to catch up."""
MAX_HELD_EVENTS: Final = 256
"""Events held until the events channel opens; later ones are dropped."""


class BotAudioTrack(MediaStreamTrack):
    """The bot's voice: 16 kHz pipeline frames in through ``play``, 48 kHz frames out by ``recv``.

    ``playout`` advances by one for every pipeline frame the RTP sender pulls; ``flush`` drops
    the queue. Once the track has stopped (the peer closed), nothing queued will ever play.
    """

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.playout = Playout()
        self._resampler = Resampler(PIPELINE_RATE, OPUS_RATE)
        self._queue: deque[PCM16] = deque()  # pipeline frames, already resampled to 48 kHz
        self._space = asyncio.Event()
        self._pending = _NO_SAMPLES  # samples pulled from the queue that the next frame sends
        self._generation = 0  # bumped by flush: a producer that waited across it drops its frame
        self._pts = 0
        self._epoch: float | None = None

    async def play(self, frame: PCM16) -> None:
        generation = self._generation
        while len(self._queue) >= MAX_QUEUED_FRAMES and self.readyState == "live":
            self._space.clear()
            await self._space.wait()
        if self.readyState != "live":
            self.playout.interrupt()
        elif generation == self._generation:
            self._queue.append(self._resampler.process(frame))

    def flush(self) -> None:
        self._queue.clear()
        self._pending = _NO_SAMPLES
        self._resampler.reset()
        self._generation += 1
        self._space.set()

    def stop(self) -> None:
        super().stop()
        self.flush()
        self.playout.interrupt()

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self._wait_for_deadline()
        while len(self._pending) < OPUS_FRAME_SAMPLES and self._queue:
            self._pending = np.concatenate((self._pending, self._queue.popleft()))
            self.playout.advance()
        self._space.set()
        # A talk spurt's last frame is completed with silence: its tail must not wait for the next.
        samples = np.zeros(OPUS_FRAME_SAMPLES, dtype=np.int16)
        taken = self._pending[:OPUS_FRAME_SAMPLES]
        samples[: len(taken)] = taken
        self._pending = self._pending[OPUS_FRAME_SAMPLES:]
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = OPUS_RATE
        frame.time_base = _TIME_BASE
        frame.pts = self._pts
        self._pts += OPUS_FRAME_SAMPLES
        return frame

    async def _wait_for_deadline(self) -> None:
        """Frame ``k`` is due at ``epoch + k * 20 ms``: deadlines from the epoch never drift."""
        loop = asyncio.get_running_loop()
        offset = self._pts / OPUS_RATE
        if self._epoch is None or loop.time() - (self._epoch + offset) > MAX_LATE_S:
            self._epoch = loop.time() - offset
        else:
            await asyncio.sleep(self._epoch + offset - loop.time())


def downmix(frame: AudioFrame) -> PCM16:
    """aiortc's Opus decoder gives packed s16 stereo; the pipeline wants mono."""
    channels = len(frame.layout.channels)
    samples = frame.to_ndarray().reshape(-1, channels)
    if channels == 1:
        return samples[:, 0].astype(np.int16)
    mixed: PCM16 = (samples.astype(np.int32).sum(axis=1) // channels).astype(np.int16)
    return mixed


class WebRTCLeg(OutputLeg):
    """One call's peer connection as a :class:`~inzwa_voice.conversation.ports.Leg`."""

    kind: LegKind = "webrtc"
    _out: BotAudioTrack

    def __init__(self, pc: RTCPeerConnection, metrics: Metrics, forget: Callable[[WebRTCLeg], None]) -> None:
        self.pc = pc
        self.track = self._out = BotAudioTrack()
        self.call: Call | None = None
        self._metrics = metrics
        self._forget = forget
        self._channel: RTCDataChannel | None = None
        self._held: list[str] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._life: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._gone = asyncio.Event()
        self._closed = False
        pc.on("datachannel", self._on_datachannel)
        pc.on("connectionstatechange", self._on_connection_state)

    # ----- Leg (audio: OutputLeg over the track) -----
    async def send_event(self, event: dict[str, object]) -> None:
        self._emit(event)

    async def close(self, reason: str) -> None:
        """Cancel the leg's tasks, let ``call.end`` reach the page, close the peer; idempotent.

        The call's own task is not waited for: it may be the one hanging the call up, which is
        what closes the leg. It sees ``_gone`` and leaves the admitted block by itself.
        """
        if self._closed:
            return
        self._closed = True
        self._connected.set()
        self._gone.set()
        current = asyncio.current_task()
        others = [task for task in self._tasks if task is not current]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        self.track.stop()
        await self._close_channel()
        try:
            await self.pc.close()
        except Exception:  # aiortc cannot close a peer whose offer it failed to answer (fuzzing found it)
            log.info("webrtc peer close failed", exc_info=True)
        self._forget(self)
        log.info("webrtc peer closed", extra={"call_id": self.call.id if self.call else None, "reason": reason})

    async def _close_channel(self) -> None:
        """A graceful channel close resets its stream only after the data queued before it."""
        channel = self._channel
        if channel is None or channel.readyState != "open" or self.pc.connectionState != "connected":
            return
        closed = asyncio.Event()
        channel.on("close", closed.set)
        channel.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CHANNEL_CLOSE_TIMEOUT_S):
                await closed.wait()

    # ----- the call -----
    async def admit(self, calls: CallStarter, info: CallInfo, inbound: MediaStreamTrack | None) -> Call:
        """Start the call in the task that will serve it; returns once it runs, or raises the
        offer's refusal (503) with the peer already closed."""
        admission: asyncio.Future[Call] = asyncio.get_running_loop().create_future()
        self._life = asyncio.ensure_future(self._live(calls, info, inbound, admission))
        return await admission

    async def _live(
        self, calls: CallStarter, info: CallInfo, inbound: MediaStreamTrack | None, admission: asyncio.Future[Call]
    ) -> None:
        async def refuse(exc: CallRejected) -> None:
            await self.close(exc.code)
            admission.set_exception(signalling.call_refused(exc))

        try:
            async with admitted(calls, self, info, refuse) as call:
                if call is None:
                    return
                self.call = call
                admission.set_result(call)
                self._emit({"type": "session.started", "call_id": call.id, "profile": call.profile.name})
                if inbound is not None:
                    self._spawn(self._receive(inbound, call))
                await self._watch(call)
        except Exception as exc:
            if admission.done():
                log.exception("webrtc call failed", extra={"call_id": self.call.id if self.call else None})
            else:
                admission.set_exception(exc)
        finally:
            admission.cancel()  # a no-op once admitted or refused

    async def end(self, reason: str) -> None:
        """Shutdown: end the call (a peer still negotiating is closed) and wait for its task."""
        if self.call is not None:
            await self.call.end(reason)
        await self.close(reason)
        if self._life is not None:
            await self._life

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _receive(self, track: MediaStreamTrack, call: Call) -> None:
        audio = CallerAudio(call.feed, OPUS_RATE)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return  # the peer connection closed: _watch ends the call
            assert isinstance(frame, AudioFrame)
            audio.push(downmix(frame))

    async def _watch(self, call: Call) -> None:
        """Return once the peer is gone; a peer that never connects ends its call as an error."""
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await self._connected.wait()
        except TimeoutError:
            self._error_count("connect_timeout")
            await call.hangup("error")
            return
        await self._gone.wait()

    def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        if state == "failed":
            self._error_count("connection_failed")
        if state in ("connected", "failed", "closed"):
            self._connected.set()
        if state in ("failed", "closed"):
            self._gone.set()

    def _error_count(self, code: str) -> None:
        self._metrics.call_errors.labels("webrtc", code).inc()

    # ----- events -----
    def _emit(self, event: dict[str, object]) -> None:
        text = json.dumps(event)
        channel = self._channel
        if channel is not None and channel.readyState == "open":
            with contextlib.suppress(InvalidStateError):
                channel.send(text)
        elif channel is None and len(self._held) < MAX_HELD_EVENTS:
            self._held.append(text)

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label != "events" or self._channel is not None:
            return
        self._channel = channel
        channel.on("message", self._on_message)
        held, self._held = self._held, []
        for text in held:
            channel.send(text)

    def _on_message(self, message: str | bytes) -> None:
        call = self.call
        if call is None or not call.active:
            return
        data = json_object(message) if isinstance(message, str) else None
        kind = data.get("type") if data is not None else None
        if data is None:
            self._recoverable("invalid_json", "messages must be JSON objects in text")
        elif kind == "stop":
            self._spawn(call.end("caller_hangup"))
        elif kind == "dtmf":
            digit = data.get("digit")
            if isinstance(digit, str) and digit in DTMF_DIGITS:
                call.dtmf(digit)
            else:
                self._recoverable("bad_dtmf", "dtmf.digit must be one of 0-9, * and #")
        else:
            self._recoverable("unknown_type", f"unknown message {str(kind)[:40]!r}")

    def _recoverable(self, code: str, message: str) -> None:
        self._error_count(code)
        self._emit({"type": "error", "code": code, "message": message, "recoverable": True})


# ----- signalling -----


@dataclass
class WebRTCState:
    """What the leg keeps per app: how to admit calls, the ICE configuration, the token signer,
    and the live peers (``peers``: one :class:`WebRTCLeg` per peer connection not yet closed)."""

    settings: Settings
    calls: CallStarter
    configuration: RTCConfiguration
    tokens: CallTokens
    peers: set[WebRTCLeg] = field(default_factory=set)


WEBRTC = web.AppKey("webrtc", WebRTCState)
_OPUS = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType.lower() == "audio/opus"]


def ice_configuration(settings: Settings) -> RTCConfiguration:
    servers = [RTCIceServer(s.urls, s.username, s.credential) for s in signalling.ice_servers(settings)]
    return RTCConfiguration(iceServers=servers)


async def _answer(leg: WebRTCLeg, offer: str) -> tuple[RTCSessionDescription, MediaStreamTrack | None]:
    """Negotiate: Opus on the offer's first audio m-line, every other m-line inactive. What the
    text could not tell (:func:`signalling.check_offer` passed it) aiortc may still refuse."""
    transceiver = leg.pc.addTransceiver(leg.track, direction="sendrecv")
    transceiver.setCodecPreferences(_OPUS)
    try:
        await leg.pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
    except OperationError as exc:
        raise signalling.sdp_error("no_common_codec", f"no codec in common: {exc}") from None
    except Exception as exc:  # the offer is all it reads: its parser's asserts, KeyErrors, ValueErrors
        raise signalling.sdp_error("invalid_sdp", f"the offer cannot be applied: {exc!r}") from None
    for other in leg.pc.getTransceivers():
        if other is not transceiver:
            other.direction = "inactive"
    try:
        answer = await leg.pc.createAnswer()
    except Exception as exc:  # an offer aiortc took but cannot answer (fuzzing found some)
        raise signalling.sdp_error("invalid_sdp", f"the offer cannot be answered: {exc!r}") from None
    await leg.pc.setLocalDescription(answer)  # returns once ICE gathering is complete
    return leg.pc.localDescription, transceiver.receiver.track


async def token(request: web.Request) -> web.Response:
    tokens = request.app[WEBRTC].tokens
    return web.json_response({"token": tokens.issue(), "expires_in": tokens.ttl_s})


async def widget_token(request: web.Request) -> web.Response:
    """``POST /widget/token``: a short-lived call token for the built-in widget, without a key.

    The page a browser loads cannot hold a key, so with keys on the widget would have no way to
    call; this route gives it what ``/v1/webrtc/token`` gives a key holder, for
    ``widget_token_ttl_s`` only, and the middleware limits it per client address
    (``widget_tokens_per_minute``; 0 closes it).
    """
    state = request.app[WEBRTC]
    ttl_s = state.settings.widget_token_ttl_s
    return web.json_response({"token": state.tokens.issue(ttl_s=ttl_s), "expires_in": ttl_s})


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else None


async def offer(request: web.Request) -> web.Response:
    state = request.app[WEBRTC]
    try:
        # A call token in the Authorization header is checked before the body is read; one in
        # the body (older pages) only after a read bounded to what an offer can hold.
        header_token = _bearer(request)
        if _keys_on(state.settings) and header_token is not None:
            signalling.check_token(state.tokens, header_token)
        body = signalling.parse_offer(request.content_type, await read_bounded(request, MAX_OFFER_BYTES))
        return await _start_call(state, body, header_token)
    except ApiError as exc:
        if exc.status < 500:
            state.calls.metrics.call_errors.labels("webrtc", str(exc.code)).inc()
        raise


def _keys_on(settings: Settings) -> bool:
    return bool(settings.api_keys or settings.admin_keys)


async def _start_call(state: WebRTCState, body: signalling.OfferRequest, header_token: str | None) -> web.Response:
    """Admit the offer or raise ``ApiError``; no peer outlives a refusal."""
    settings, calls = state.settings, state.calls
    if _keys_on(settings) and header_token is None:
        signalling.check_token(state.tokens, body.token)
    if len(state.peers) >= settings.webrtc_max_peers:
        calls.metrics.calls_rejected.labels("webrtc", "too_many_peers").inc()
        raise signalling.too_many_peers(settings.webrtc_max_peers)
    signalling.check_offer(body.sdp)
    leg = WebRTCLeg(RTCPeerConnection(state.configuration), calls.metrics, state.peers.discard)
    state.peers.add(leg)
    try:
        answer, inbound = await _answer(leg, body.sdp)
        call = await leg.admit(calls, CallInfo(leg="webrtc", caller=body.caller, dialled=body.dialled), inbound)
    except BaseException:
        await leg.close("refused")
        raise
    return web.json_response(signalling.answer_body(answer.sdp, call.id))


# The widget is embedded on the helpline's own site and calls the gateway from that origin. Any
# origin may: these routes are authorised by a bearer key or a call token, never by cookies.
CORS_PATHS = ("/v1/webrtc/token", "/v1/webrtc/offer", "/widget/token")
_CORS = {"Access-Control-Allow-Origin": "*"}


async def preflight(request: web.Request) -> web.Response:
    headers = {
        **_CORS,
        "Access-Control-Allow-Methods": "POST",
        "Access-Control-Allow-Headers": "Content-Type, Authorization",
        "Access-Control-Max-Age": "600",
    }
    return web.Response(status=204, headers=headers)


async def allow_any_origin(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: error responses from the middleware get the header too."""
    if request.path in CORS_PATHS:
        response.headers.update(_CORS)


def restrict_host_candidates(addresses: list[str]) -> None:
    """Offer ICE host candidates only on ``addresses`` (none: every non-loopback interface).

    aioice gathers every non-loopback interface and has no option to choose; a multi-homed
    gateway pins its public interface here, and tests pin 127.0.0.1 so media never leaves
    loopback. aioice looks the function up on its module at each gathering, so replacing it
    there is the one seam it offers.
    """
    host_addresses = signalling.pinned_host_addresses(addresses)
    if host_addresses is not None:
        aioice.ice.get_host_addresses = host_addresses


def setup(app: web.Application, calls: CallStarter, settings: Settings) -> None:
    """Add the routes and keep the leg's state on the app under :data:`WEBRTC`.

    At shutdown every peer still open goes: calls end as ``shutdown`` (closing their peers),
    and a peer still negotiating is closed outright.
    """
    restrict_host_candidates(settings.webrtc_host_addresses)
    app[WEBRTC] = WebRTCState(
        settings,
        calls,
        ice_configuration(settings),
        CallTokens(settings.webrtc_token_secret, settings.webrtc_token_ttl_s),
    )
    app.router.add_post("/v1/webrtc/token", token)
    app.router.add_post("/v1/webrtc/offer", offer)
    app.router.add_post("/widget/token", widget_token)
    for path in CORS_PATHS:
        app.router.add_route("OPTIONS", path, preflight)
    app.on_response_prepare.append(allow_any_origin)

    async def close_peers(app: web.Application) -> None:
        for leg in list(app[WEBRTC].peers):
            await leg.end("shutdown")

    app.on_shutdown.append(close_peers)
