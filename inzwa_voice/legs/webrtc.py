"""The WebRTC leg: ``POST /v1/webrtc/token`` and ``POST /v1/webrtc/offer``, one aiortc peer per call.

Signalling is one HTTP round trip, with no trickle ICE either way: the page posts an offer that
already holds its candidates, and the answer comes back once our ICE gathering has completed,
so it holds ours. ICE uses ``RTCConfiguration(iceServers=[])`` unless ``webrtc_ice_servers``
names STUN/TURN servers: aiortc's default would ask a public STUN server on every call. Our
host candidates are this machine's interface addresses (aioice leaves loopback out).

Media. Only Opus is negotiated (every browser offers it), so both directions are 48 kHz frames
of 960 samples. The page's microphone is decoded by aiortc and resampled to the pipeline's
16 kHz frames (:class:`CallerAudio`). The bot speaks on :class:`BotAudioTrack`: aiortc's RTP
sender pulls one 20 ms frame per ``recv()``, and ``recv()`` returns it at its deadline, so the
sender's pull is the pacer. A frame counts as played when it is pulled (nothing reports
playback from the far side), and a barge-in ``flush()`` drops everything not yet pulled.

Events. The page opens a data channel labelled ``events`` before its offer; over it the server
sends the same JSON events as the native WebSocket leg (``api/websocket.md``), and the page
may send ``{"type": "dtmf", "digit"}`` and ``{"type": "stop"}``. Events raised before the
channel opens (``session.started``, the greeting's) are held, boundedly, and sent when it does.

Lifecycle and errors. The offer is checked before any peer exists where it can be (token, peer
limit, SDP shape), and every later refusal closes the peer it made: 400 ``invalid_sdp``,
``no_audio``, ``no_common_codec``; 401 ``missing_token``, ``invalid_token``,
``expired_token`` (only with API keys configured); 503 ``too_many_peers`` beyond
``webrtc_max_peers``, or the call manager's ``overloaded``/``draining``. The call ends when the
peer connection closes or fails, when it has not connected within ``CONNECT_TIMEOUT_S``, on
``stop``, or when the session ends (which closes the peer). Messages the call survives are
answered with ``error`` events (``recoverable: true``) and counted in ``inzwa_call_errors``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Final, Literal

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
    sdp,
)
from aiortc.exceptions import InvalidStateError, OperationError
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame
from pydantic import BaseModel, Field

from inzwa_voice.api.keys import CALLS, SETTINGS
from inzwa_voice.api.schemas import parse_json
from inzwa_voice.config import Settings
from inzwa_voice.conversation.calls import CallRejected
from inzwa_voice.conversation.session import CallSession
from inzwa_voice.engines.base import PCM16
from inzwa_voice.errors import ApiError
from inzwa_voice.legs.base import CallInfo, LegKind
from inzwa_voice.legs.paced import CallerAudio, OutputLeg
from inzwa_voice.legs.webrtc_tokens import CallTokens, TokenError
from inzwa_voice.media.framing import FRAME_MS, PIPELINE_RATE
from inzwa_voice.media.resample import Resampler
from inzwa_voice.telemetry import Metrics

log = logging.getLogger(__name__)

OPUS_RATE: Final = 48000
OPUS_FRAME_SAMPLES: Final = OPUS_RATE * FRAME_MS // 1000
"""960: one 20 ms frame at 48 kHz, the frame aiortc's Opus codec takes and gives."""
_TIME_BASE: Final = Fraction(1, OPUS_RATE)
_NO_SAMPLES: Final = np.zeros(0, dtype=np.int16)

MAX_SDP_CHARS: Final = 64 * 1024
"""A browser's audio offer is a few KiB; this bounds what a client can make us parse."""
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
DTMF_DIGITS: Final = frozenset("0123456789*#")


class BotAudioTrack(MediaStreamTrack):
    """The bot's voice: 16 kHz pipeline frames in through ``play``, 48 kHz frames out by ``recv``.

    ``played_frames`` counts the pipeline frames the RTP sender has pulled; ``mark`` reports
    its name through ``on_mark`` once every frame queued before it was pulled; ``flush`` drops
    the queue (and, since nothing before them will play, releases the pending marks).
    """

    kind = "audio"

    def __init__(self, on_mark: Callable[[str], None]) -> None:
        super().__init__()
        self._on_mark = on_mark
        self._resampler = Resampler(PIPELINE_RATE, OPUS_RATE)
        self._queue: deque[PCM16] = deque()  # pipeline frames, already resampled to 48 kHz
        self._space = asyncio.Event()
        self._pending = _NO_SAMPLES  # samples pulled from the queue that the next frame sends
        self._generation = 0  # bumped by flush: a producer that waited across it drops its frame
        self._enqueued = 0
        self._played = 0
        self._marks: deque[tuple[int, str]] = deque()
        self._pts = 0
        self._epoch: float | None = None

    @property
    def played_frames(self) -> int:
        return self._played

    async def play(self, frame: PCM16) -> None:
        generation = self._generation
        while len(self._queue) >= MAX_QUEUED_FRAMES:
            self._space.clear()
            await self._space.wait()
        if generation == self._generation:
            self._queue.append(self._resampler.process(frame))
            self._enqueued += 1

    def flush(self) -> int:
        dropped = len(self._queue)
        self._queue.clear()
        self._pending = _NO_SAMPLES
        self._resampler.reset()
        self._generation += 1
        self._enqueued = self._played
        self._release_marks(everything=True)
        self._space.set()
        return dropped

    async def mark(self, name: str) -> None:
        self._marks.append((self._enqueued, name))
        self._release_marks()

    def _release_marks(self, *, everything: bool = False) -> None:
        while self._marks and (everything or self._marks[0][0] <= self._played):
            self._on_mark(self._marks.popleft()[1])

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self._wait_for_deadline()
        while len(self._pending) < OPUS_FRAME_SAMPLES and self._queue:
            self._pending = np.concatenate((self._pending, self._queue.popleft()))
            self._played += 1
        self._space.set()
        self._release_marks()
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
    """One call's peer connection as a :class:`~inzwa_voice.legs.base.Leg`."""

    kind: LegKind = "webrtc"

    def __init__(self, pc: RTCPeerConnection, metrics: Metrics, forget: Callable[[WebRTCLeg], None]) -> None:
        self.pc = pc
        self._metrics = metrics
        self._forget = forget
        self.track = BotAudioTrack(self._marked)
        self._out = self.track
        self._channel: RTCDataChannel | None = None
        self._held: list[str] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._connected = asyncio.Event()
        self._gone = asyncio.Event()
        self._closed = False
        pc.on("datachannel", self._on_datachannel)
        pc.on("connectionstatechange", self._on_connection_state)

    # ----- Leg (audio: OutputLeg over the track) -----
    async def send_event(self, event: dict[str, object]) -> None:
        self._emit(event)

    async def close(self, reason: str) -> None:
        """Cancel the leg's tasks, let ``call.end`` reach the page, close the peer; idempotent."""
        if self._closed:
            return
        self._closed = True
        current = asyncio.current_task()
        others = [task for task in self._tasks if task is not current]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        self.track.stop()
        await self._close_channel()
        await self.pc.close()
        self._forget(self)
        log.info("webrtc peer closed", extra={"call_id": self.session.id if self.session else None, "reason": reason})

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
    def start(self, session: CallSession, inbound: MediaStreamTrack | None) -> None:
        """The call is admitted: greet the page, hear the caller, watch the connection."""
        self.session = session
        self._emit({"type": "session.started", "call_id": session.id, "profile": session.profile.name})
        if inbound is not None:
            self._spawn(self._receive(inbound, session))
        self._spawn(self._watch(session))

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _receive(self, track: MediaStreamTrack, session: CallSession) -> None:
        audio = CallerAudio(session.feed, OPUS_RATE)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return  # the peer connection closed: _watch ends the call
            assert isinstance(frame, AudioFrame)
            audio.push(downmix(frame))

    async def _watch(self, session: CallSession) -> None:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await self._connected.wait()
        except TimeoutError:
            self._error_count("connect_timeout")
            await session.hangup("error")
            return
        await self._gone.wait()
        await session.hangup("caller_hangup")

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
        session = self.session
        if session is None or not session.active:
            return
        try:
            data = json.loads(message) if isinstance(message, str) else None
        except ValueError:
            data = None
        if not isinstance(data, dict):
            self._recoverable("invalid_json", "messages must be JSON objects in text")
        elif data.get("type") == "stop":
            self._spawn(session.end("caller_hangup"))
        elif data.get("type") == "dtmf" and isinstance(data.get("digit"), str) and data["digit"] in DTMF_DIGITS:
            session.dtmf(data["digit"])
        else:
            self._recoverable("unknown_type", f"unknown message {str(data.get('type'))[:40]!r}")

    def _recoverable(self, code: str, message: str) -> None:
        self._error_count(code)
        self._emit({"type": "error", "code": code, "message": message, "recoverable": True})


# ----- signalling -----


class OfferRequest(BaseModel):
    sdp: str = Field(max_length=MAX_SDP_CHARS)
    type: Literal["offer"]
    token: str | None = Field(None, max_length=256)
    caller: str = Field("", max_length=64)
    dialled: str = Field("", max_length=64)


@dataclass
class WebRTCState:
    """What the leg keeps per app: the ICE configuration, the token signer, the live peers."""

    configuration: RTCConfiguration
    tokens: CallTokens
    peers: set[WebRTCLeg] = field(default_factory=set)


WEBRTC = web.AppKey("webrtc", WebRTCState)
_OPUS = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType.lower() == "audio/opus"]


def ice_configuration(settings: Settings) -> RTCConfiguration:
    servers = [
        RTCIceServer(urls=url, username=settings.webrtc_turn_username, credential=settings.webrtc_turn_credential)
        if url.startswith("turn")
        else RTCIceServer(urls=url)
        for url in settings.webrtc_ice_servers
    ]
    return RTCConfiguration(iceServers=servers)


def _sdp_error(code: str, message: str) -> ApiError:
    return ApiError(message, status=400, param="sdp", code=code)


def _check_offer(text: str) -> None:
    """Refuse, before a peer exists, an offer that is not SDP or carries no audio."""
    try:
        description = sdp.SessionDescription.parse(text)
    except Exception:  # aiortc's parser raises whatever malformed input trips over
        description = None
    if not text.startswith("v=0") or description is None or not description.media:
        raise _sdp_error("invalid_sdp", "sdp is not an SDP offer with media descriptions")
    if not any(media.kind == "audio" for media in description.media):
        raise _sdp_error("no_audio", "the offer has no audio m-line: the page must send its microphone")


async def _answer(leg: WebRTCLeg, offer: str) -> tuple[RTCSessionDescription, MediaStreamTrack | None]:
    """Negotiate: Opus on the offer's first audio m-line, every other m-line inactive."""
    transceiver = leg.pc.addTransceiver(leg.track, direction="sendrecv")
    transceiver.setCodecPreferences(_OPUS)
    try:
        await leg.pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
    except OperationError as exc:
        raise _sdp_error("no_common_codec", f"no codec in common: the gateway takes Opus 48 kHz ({exc})") from None
    except (ValueError, InvalidStateError) as exc:
        raise _sdp_error("invalid_sdp", f"the offer cannot be applied: {exc}") from None
    for other in leg.pc.getTransceivers():
        if other is not transceiver:
            other.direction = "inactive"
    await leg.pc.setLocalDescription(await leg.pc.createAnswer())  # returns once ICE gathering is complete
    return leg.pc.localDescription, transceiver.receiver.track


async def token(request: web.Request) -> web.Response:
    tokens = request.app[WEBRTC].tokens
    return web.json_response({"token": tokens.issue(), "expires_in": tokens.ttl_s})


async def offer(request: web.Request) -> web.Response:
    body = await parse_json(request, OfferRequest)
    try:
        return await _start_call(request.app, body)
    except ApiError as exc:
        if exc.status < 500:
            request.app[CALLS].metrics.call_errors.labels("webrtc", str(exc.code)).inc()
        raise


async def _start_call(app: web.Application, body: OfferRequest) -> web.Response:
    """Admit the offer or raise ``ApiError``; no peer outlives a refusal."""
    settings, state, calls = app[SETTINGS], app[WEBRTC], app[CALLS]
    if settings.api_keys:
        try:
            state.tokens.check(body.token)
        except TokenError as exc:
            raise ApiError(str(exc), status=401, type="authentication_error", param="token", code=exc.code) from None
    if len(state.peers) >= settings.webrtc_max_peers:
        calls.metrics.calls_rejected.labels("webrtc", "too_many_peers").inc()
        raise ApiError(
            f"the gateway is at its limit of {settings.webrtc_max_peers} WebRTC peers; retry shortly",
            status=503,
            type="overloaded_error",
            code="too_many_peers",
            headers={"Retry-After": "1"},
        )
    _check_offer(body.sdp)
    leg = WebRTCLeg(RTCPeerConnection(state.configuration), calls.metrics, state.peers.discard)
    state.peers.add(leg)
    try:
        answer, inbound = await _answer(leg, body.sdp)
        session = await calls.start(leg, CallInfo(leg="webrtc", caller=body.caller, dialled=body.dialled))
    except CallRejected as exc:
        await leg.close(exc.code)
        raise ApiError(
            str(exc), status=503, type="overloaded_error", code=exc.code, headers={"Retry-After": "1"}
        ) from None
    except BaseException:
        await leg.close("refused")
        raise
    leg.start(session, inbound)
    log.info("webrtc call", extra={"call_id": session.id})
    return web.json_response({"sdp": answer.sdp, "type": answer.type, "call_id": session.id})


# The widget is embedded on the helpline's own site and calls the gateway from that origin. Any
# origin may: these routes are authorised by a bearer key or a call token, never by cookies.
CORS_PATHS = ("/v1/webrtc/token", "/v1/webrtc/offer")
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


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/webrtc/token", token)
    app.router.add_post("/v1/webrtc/offer", offer)
    for path in CORS_PATHS:
        app.router.add_route("OPTIONS", path, preflight)
    app.on_response_prepare.append(allow_any_origin)


def restrict_host_candidates(addresses: list[str]) -> None:
    """Offer ICE host candidates only on ``addresses``.

    aioice gathers every non-loopback interface and has no option to choose; a multi-homed
    gateway pins its public interface here, and tests pin 127.0.0.1 so media never leaves
    loopback. aioice looks the function up on its module at each gathering, so replacing it
    there is the one seam it offers.
    """
    if not addresses:
        return
    pinned = [ipaddress.ip_address(a) for a in addresses]

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [str(a) for a in pinned if (a.version == 4 and use_ipv4) or (a.version == 6 and use_ipv6)]

    aioice.ice.get_host_addresses = host_addresses


def setup(app: web.Application) -> None:
    """Keep the leg's state on the app; call after ``app[SETTINGS]`` is set.

    At shutdown every peer still open goes: calls end as ``shutdown`` (closing their peers),
    and a peer still negotiating is closed outright.
    """
    settings = app[SETTINGS]
    restrict_host_candidates(settings.webrtc_host_addresses)
    app[WEBRTC] = WebRTCState(
        ice_configuration(settings), CallTokens(settings.webrtc_token_secret, settings.webrtc_token_ttl_s)
    )

    async def close_peers(app: web.Application) -> None:
        for leg in list(app[WEBRTC].peers):
            await (leg.session.end("shutdown") if leg.session is not None else leg.close("shutdown"))

    app.on_shutdown.append(close_peers)
