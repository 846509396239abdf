"""The Asterisk AudioSocket leg: a TCP server that Asterisk's ``AudioSocket()`` connects to.

Wire protocol (Asterisk ``res_audiosocket``, CyCoreSystems/audiosocket): every frame is a
1-byte kind, a 2-byte big-endian payload length and the payload. Asterisk opens the connection
and must send its call UUID first (16 bytes, binary); after that it sends 20 ms of signed linear
16-bit little-endian mono audio at 8 kHz every 20 ms (320 bytes), DTMF digits (one ASCII byte)
and, when the caller hangs up, a hangup frame or simply a closed socket. We answer with audio
frames of the same shape, a hangup frame when the call ends on our side, and an error frame
(one code byte, :class:`ErrorCode`) when we refuse or abort the call.

Asterisk does not pace what it receives: it writes each frame to the channel the moment it
arrives. So the leg paces outbound audio itself (:class:`PacedOutput`), and cuts it into exact
20 ms frames because the resampler's output per frame varies by a few samples.

The protocol has no authentication and no call metadata beyond the UUID: bind it to an address
only Asterisk can reach. Every connection is bounded: a UUID within ``start_timeout_s``
(``handshake_timeout_s``; else the error frame ``PROTOCOL``, then the socket closes), a frame
within ``idle_timeout_s`` (Asterisk sends audio every 20 ms, silence included, so a quiet socket
is a dead one), payload lengths checked per kind before anything is read, a cap on connections
still waiting for their UUID, and a write timeout so a peer that stops reading is dropped.
A broken connection ends its own call and nothing else.

Transfer. The protocol has no signalling, so a transfer (DTMF 0, a request for a person, a
crisis) leaves the target under the call's UUID in a bounded, expiring book, records a
``transfer_result`` and ends the call as ``transferred``: the gateway sends its hangup frame,
``AudioSocket()`` returns, and the dialplan asks ``GET /v1/audiosocket/{uuid}/transfer`` with
``CURL()`` and dials what it gets (an empty answer: no transfer). An HTTP lookup rather than a
channel variable set over AMI, because it needs no AMI account, no connection the gateway
must hold open to every Asterisk, and no race between the variable and the socket's end: the
target is written before the hangup frame goes out. ``sip/asterisk/extensions.conf`` shows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from aiohttp import web

from inzwa_voice.config import Settings
from inzwa_voice.conversation.ports import Call, CallRejected, CallStarter
from inzwa_voice.core import DTMF_DIGITS, FRAME_MS, PCM16, CallInfo, LegKind
from inzwa_voice.errors import ApiError
from inzwa_voice.legs.admission import admitted
from inzwa_voice.legs.base import ProtocolError
from inzwa_voice.legs.handoffs import Handoffs, hand_off
from inzwa_voice.legs.paced import CallerAudio, OutputLeg, PacedOutput
from inzwa_voice.media.framing import Framer, bytes_to_pcm16, pcm16_to_bytes

log = logging.getLogger(__name__)

SAMPLE_RATE: Final = 8000
"""AudioSocket audio (kind 0x10) is always 8 kHz."""
WIRE_FRAME_SAMPLES: Final = SAMPLE_RATE * FRAME_MS // 1000
WIRE_FRAME_BYTES: Final = WIRE_FRAME_SAMPLES * 2
"""320 bytes: the 20 ms audio frame Asterisk sends and expects."""
MAX_AUDIO_BYTES: Final = 8000
"""Longest audio payload accepted: 500 ms, 25 times what Asterisk sends."""
HEADER: Final = struct.Struct(">BH")

START_TIMEOUT_S: Final = 10.0
IDLE_TIMEOUT_S: Final = 30.0
WRITE_TIMEOUT_S: Final = 5.0
MAX_PENDING: Final = 32
TRANSFER_PATH: Final = "/v1/audiosocket/{uuid}/transfer"
"""Connections that have not yet sent their UUID; beyond it new ones are refused at once."""


class Kind(IntEnum):
    HANGUP = 0x00
    UUID = 0x01
    DTMF = 0x03
    AUDIO = 0x10
    ERROR = 0xFF


class ErrorCode(IntEnum):
    """The code byte of the error frames we send; the spec leaves codes to each application.

    Kept clear of Asterisk's own codes (bit flags 0x01, 0x02, 0x04) so a log on either side
    says which end failed.
    """

    PROTOCOL = 0x10
    """The peer broke the protocol: no UUID first, a length that does not fit the kind."""
    UNAVAILABLE = 0x20
    """The gateway takes no call now (at its session limit, or shutting down): try another."""


# Allowed payload lengths per kind, checked before the payload is read. Unknown kinds are read
# (at most 65535 bytes, the header's limit) and skipped, so a newer peer does not break the call.
_LENGTHS: Final[dict[int, tuple[int, int]]] = {
    Kind.HANGUP: (0, 0),
    Kind.UUID: (16, 16),
    Kind.DTMF: (1, 1),
    Kind.AUDIO: (2, MAX_AUDIO_BYTES),
    Kind.ERROR: (0, 1),
}


@dataclass(frozen=True, slots=True)
class Frame:
    kind: int
    payload: bytes = b""


def encode_frame(kind: int, payload: bytes = b"") -> bytes:
    if len(payload) > 0xFFFF:
        raise ValueError(f"an AudioSocket payload holds at most 65535 bytes, got {len(payload)}")
    return HEADER.pack(kind, len(payload)) + payload


def encode_audio(data: bytes) -> bytes:
    """PCM16 bytes as consecutive 20 ms audio frames (the last one shorter if ``data`` is)."""
    step = WIRE_FRAME_BYTES
    return b"".join(encode_frame(Kind.AUDIO, data[i : i + step]) for i in range(0, len(data), step))


HANGUP_FRAME: Final = encode_frame(Kind.HANGUP)


def error_frame(code: ErrorCode) -> bytes:
    return encode_frame(Kind.ERROR, bytes([code]))


async def read_frame(reader: asyncio.StreamReader) -> Frame:
    """Read one frame, checking its length against its kind before reading the payload.

    Raises ``asyncio.IncompleteReadError`` when the stream ends (``partial`` is empty at a frame
    boundary: a clean close) and :class:`ProtocolError` for a length the kind does not allow.
    """
    header = await reader.readexactly(HEADER.size)
    kind, length = HEADER.unpack(header)
    low, high = _LENGTHS.get(kind, (0, 0xFFFF))
    if not low <= length <= high:
        raise ProtocolError("bad_length", f"a kind 0x{kind:02x} frame cannot carry {length} bytes")
    if kind == Kind.AUDIO and length % 2:
        raise ProtocolError("odd_length", f"PCM16 audio needs an even number of bytes, got {length}")
    try:
        payload = await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise asyncio.IncompleteReadError(header + exc.partial, HEADER.size + length) from None
    return Frame(kind, payload)


class AudioSocketLeg(OutputLeg):
    """One AudioSocket connection as a :class:`~inzwa_voice.conversation.ports.Leg`."""

    kind: LegKind = "audiosocket"
    _out: PacedOutput

    def __init__(
        self, writer: asyncio.StreamWriter, on_error: Callable[[str], None], handoffs: Handoffs | None = None
    ) -> None:
        self._writer = writer
        self._on_error = on_error
        self._handoffs = handoffs
        self.uuid: uuid.UUID | None = None
        self._framer = Framer(WIRE_FRAME_SAMPLES)
        self._out = PacedOutput(self._send_audio, self._encode, out_rate=SAMPLE_RATE)
        self._closed = False
        self._final_sent = False  # a hangup or error frame went out, or the peer already hung up

    def _encode(self, samples: PCM16) -> bytes:
        """Whole 20 ms wire frames only; the remainder waits for the next pipeline frame."""
        return b"".join(pcm16_to_bytes(frame) for frame in self._framer.push(samples))

    async def _send_audio(self, data: bytes) -> None:
        """A frame of the bot's audio, unless the call is over on the wire: nothing may follow a
        hangup or error frame, though the pacer still has audio queued until the call closes."""
        if data and not self._final_sent:
            await self._write(encode_audio(data))

    async def _write(self, data: bytes) -> None:
        """Write and wait for the socket; a peer that stops reading is cut off, ending its call."""
        if self._writer.is_closing():
            return
        self._writer.write(data)
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # lands as the drain completes, and the pacer's task would then never stop.
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                await self._writer.drain()
        except TimeoutError:
            self._on_error("write_timeout")
            self._writer.transport.abort()  # the read loop sees the connection drop
            raise

    def interrupt(self) -> int:
        self._framer.flush(pad=False)  # a partial frame of the interrupted reply must not play
        return super().interrupt()

    async def send_event(self, event: dict[str, object]) -> None:
        """AudioSocket carries no events: audio, DTMF and hangup are all there is."""

    async def transfer(self, target: str) -> bool:
        """Leave ``target`` for the dialplan's lookup under the UUID; True, so the call ends and
        ``AudioSocket()`` returns to the dialplan. A peer already gone cannot be moved."""
        return await hand_off(
            self._handoffs,
            None if self.uuid is None or self._final_sent else str(self.uuid),
            self.call,
            target,
            how="the socket ends and the dialplan dials the target",
            why_not="the call is already over",
        )

    def peer_hung_up(self) -> None:
        """The peer said goodbye (hangup frame or closed socket): no hangup frame back."""
        self._final_sent = True

    async def fail(self, code: ErrorCode) -> None:
        """Send an error frame instead of the hangup frame that ``close`` would send."""
        await self._final(error_frame(code))

    async def _final(self, frame: bytes) -> None:
        if not self._final_sent:
            self._final_sent = True
            with contextlib.suppress(ConnectionError, TimeoutError):
                await self._write(frame)

    async def close(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        await self._out.close()
        await self._final(HANGUP_FRAME)
        self._writer.close()
        with contextlib.suppress(ConnectionError, TimeoutError):
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                await self._writer.wait_closed()


class AudioSocketServer:
    """Accepts AudioSocket connections and runs one call per connection."""

    def __init__(
        self,
        calls: CallStarter,
        *,
        start_timeout_s: float = START_TIMEOUT_S,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.calls = calls
        self.start_timeout_s = start_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_pending = max_pending
        self.port: int | None = None
        """The bound port once started (the one chosen by the OS when asked for port 0)."""
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[object]] = set()
        self._pending = 0
        self.handoffs = Handoffs()

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._accept, host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("audiosocket listening", extra={"host": host, "port": self.port})

    async def stop(self) -> None:
        """Stop listening and end every connection; their calls hang up with ``shutdown``."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    @property
    def pending(self) -> int:
        """Connections still waiting for their UUID (at most ``max_pending``)."""
        return self._pending

    def _error(self, code: str) -> None:
        self.calls.metrics.call_errors.labels("audiosocket", code).inc()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        leg = AudioSocketLeg(writer, self._error, self.handoffs)
        try:
            call_uuid = await self._read_uuid(reader, leg)
            if call_uuid is not None:
                await self._run_call(reader, leg, call_uuid)
        finally:
            self._connections.discard(task)
            await leg.close("closed")

    async def _read_uuid(self, reader: asyncio.StreamReader, leg: AudioSocketLeg) -> uuid.UUID | None:
        """The call's UUID, the first frame; None when the connection ends before it."""
        if self._pending >= self.max_pending:
            self._error("too_many_pending")
            await leg.fail(ErrorCode.UNAVAILABLE)
            return None
        self._pending += 1
        try:
            async with asyncio.timeout(self.start_timeout_s):
                first = await read_frame(reader)
            if first.kind == Kind.HANGUP:
                leg.peer_hung_up()
                return None
            if first.kind != Kind.UUID:
                raise ProtocolError("not_started", f"the first frame must be the UUID, got kind 0x{first.kind:02x}")
        except TimeoutError:
            self._error("start_timeout")
            await leg.fail(ErrorCode.PROTOCOL)
            return None
        except ProtocolError as exc:
            self._error(exc.code)
            await leg.fail(ErrorCode.PROTOCOL)
            return None
        except (asyncio.IncompleteReadError, ConnectionError):
            leg.peer_hung_up()
            return None
        finally:
            self._pending -= 1
        return uuid.UUID(bytes=first.payload)

    async def _run_call(self, reader: asyncio.StreamReader, leg: AudioSocketLeg, call_uuid: uuid.UUID) -> None:
        """Admit the call and feed it until the connection ends; refused: an error frame."""

        async def refuse(exc: CallRejected) -> None:
            log.info("audiosocket call refused", extra={"uuid": str(call_uuid), "reason": exc.code})
            await leg.fail(ErrorCode.UNAVAILABLE)

        info = CallInfo(leg="audiosocket", external_id=str(call_uuid))
        async with admitted(self.calls, leg, info, refuse) as call:
            if call is None:
                return
            leg.uuid, leg.call = call_uuid, call
            disposition = "error"
            try:
                disposition = await self._receive(reader, leg, call)
            except asyncio.CancelledError:
                disposition = "shutdown"
                raise
            finally:
                await call.hangup(disposition)  # before admitted's own hang-up, with the real reason

    async def _receive(self, reader: asyncio.StreamReader, leg: AudioSocketLeg, call: Call) -> str:
        """Feed the peer's frames to the call until it ends; returns the disposition."""
        caller_audio = CallerAudio(call.feed, SAMPLE_RATE)
        unknown: set[int] = set()
        while True:
            try:
                async with asyncio.timeout(self.idle_timeout_s):
                    frame = await read_frame(reader)
            except TimeoutError:
                self._error("read_timeout")
                return "error"  # the call's close sends the hangup frame
            except ProtocolError as exc:
                self._error(exc.code)
                await leg.fail(ErrorCode.PROTOCOL)
                return "error"
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    self._error("truncated")
                leg.peer_hung_up()
                return "caller_hangup"
            except ConnectionError:
                leg.peer_hung_up()
                return "caller_hangup"
            if frame.kind == Kind.AUDIO:
                caller_audio.push(bytes_to_pcm16(frame.payload))
            elif frame.kind == Kind.DTMF:
                digit = chr(frame.payload[0])
                if digit in DTMF_DIGITS:
                    call.dtmf(digit)
                else:
                    self._error("bad_dtmf")
            elif frame.kind == Kind.HANGUP:
                leg.peer_hung_up()
                return "caller_hangup"
            elif frame.kind == Kind.ERROR:
                self._error("peer_error")
                log.info("audiosocket peer error", extra={"call_id": call.id, "error": frame.payload.hex()})
                leg.peer_hung_up()
                return "error"
            elif frame.kind == Kind.UUID:
                self._error("repeated_uuid")
            else:
                self._error("unknown_kind")
                if frame.kind not in unknown:  # e.g. 0x11+ audio from a Dial(...c(slin16)): say so once
                    unknown.add(frame.kind)
                    log.warning("audiosocket frame kind skipped", extra={"call_id": call.id, "kind": frame.kind})


AUDIOSOCKET = web.AppKey("audiosocket", AudioSocketServer)


async def transfer_lookup(request: web.Request) -> web.Response:
    """``GET /v1/audiosocket/{uuid}/transfer``: the target a call ended for, as plain text for
    the dialplan's ``CURL()``; empty when the call asked for no transfer (or it expired)."""
    try:
        call_uuid = uuid.UUID(request.match_info["uuid"])
    except ValueError:
        raise ApiError("the path must name an AudioSocket UUID", status=400, code="invalid_uuid") from None
    target = request.app[AUDIOSOCKET].handoffs.get(str(call_uuid))
    return web.Response(text=target or "", content_type="text/plain")


def setup(app: web.Application, calls: CallStarter, settings: Settings) -> None:
    """Serve AudioSocket beside the HTTP app.

    The server object is stored under :data:`AUDIOSOCKET` at once (its ``port`` is set when it
    listens; ``/health`` reads it), because an aiohttp app must not gain keys after it started.
    Start-up fails if the port is taken: a gateway that silently lacks its Asterisk leg is worse
    than one that stops.
    """
    server = AudioSocketServer(calls, start_timeout_s=settings.handshake_timeout_s)
    app[AUDIOSOCKET] = server
    app.router.add_get(TRANSFER_PATH, transfer_lookup)
    if not settings.audiosocket_enabled:
        return

    async def listening(app: web.Application) -> AsyncIterator[None]:
        await server.start(settings.audiosocket_host, settings.audiosocket_port)
        yield
        await server.stop()

    app.cleanup_ctx.append(listening)
