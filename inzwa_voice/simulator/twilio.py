"""A stand-in for Twilio's cloud: a caller over a Media Stream (``GET /v1/twilio/media``).

Twilio's cloud cannot run here, so this caller speaks its wire protocol exactly, as documented
at https://www.twilio.com/docs/voice/media-streams/websocket-messages and pinned by
``tests/golden/twilio/from_twilio.json``: ``connected``, ``start``, a ``media`` message every
20 ms (the caller's audio as base64 μ-law at 8 kHz, silence included), ``dtmf`` and ``stop``.
With an auth token it first asks the voice webhook for its TwiML, as Twilio does, signs the
upgrade with ``X-Twilio-Signature`` and sends the TwiML's ``<Parameter>``s (the per-call stream
token among them) back in ``start``.

Like Twilio, it plays what the gateway sends from a playout buffer in real time, echoes each
``mark`` once the audio sent before it has played, and on ``clear`` drops the buffer and echoes
every pending mark at once. The playout clock is the caller's media clock: one 20 ms frame of
the buffer plays each time the caller sends one, and audio becomes playable
``playout_delay_ms`` after it arrived (Twilio's jitter buffer, whose depth is not documented:
tests choose it). Bot audio goes to ``on_audio`` when it is received (an upper bound of what
the caller hears); our ``mark`` and ``clear`` messages are reported through ``on_event`` as
``{"type": "mark", "name"}`` and ``{"type": "clear", "played_ms"}`` (the bot audio played
before the clear dropped the rest), and anything Twilio would reject as ``{"type":
"violation", "message"}``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import uuid
from collections import deque
from typing import Any
from xml.etree import ElementTree

import aiohttp

from inzwa_voice.core import PCM16
from inzwa_voice.legs.twilio import MEDIA_PATH, VOICE_PATH
from inzwa_voice.legs.twilio_protocol import MEDIA_FORMAT, SAMPLE_RATE, signature
from inzwa_voice.media.g711 import ulaw_decode, ulaw_encode
from inzwa_voice.simulator.caller import FRAME_MS, Caller


def _sid(prefix: str) -> str:
    return prefix + uuid.uuid4().hex


def connected_message() -> dict[str, Any]:
    return {"event": "connected", "protocol": "Call", "version": "1.0.0"}


def start_message(
    sequence: int, stream_sid: str, account_sid: str, call_sid: str, parameters: dict[str, str]
) -> dict[str, Any]:
    return {
        "event": "start",
        "sequenceNumber": str(sequence),
        "start": {
            "accountSid": account_sid,
            "streamSid": stream_sid,
            "callSid": call_sid,
            "tracks": ["inbound"],
            "mediaFormat": dict(MEDIA_FORMAT),
            "customParameters": parameters,
        },
        "streamSid": stream_sid,
    }


def media_message(sequence: int, stream_sid: str, chunk: int, timestamp_ms: int, audio: bytes) -> dict[str, Any]:
    return {
        "event": "media",
        "sequenceNumber": str(sequence),
        "media": {
            "track": "inbound",
            "chunk": str(chunk),
            "timestamp": str(timestamp_ms),
            "payload": base64.b64encode(audio).decode(),
        },
        "streamSid": stream_sid,
    }


def dtmf_message(sequence: int, stream_sid: str, digit: str) -> dict[str, Any]:
    return {
        "event": "dtmf",
        "streamSid": stream_sid,
        "sequenceNumber": str(sequence),
        "dtmf": {"track": "inbound_track", "digit": digit},
    }


def mark_message(sequence: int, stream_sid: str, name: str) -> dict[str, Any]:
    return {"event": "mark", "sequenceNumber": str(sequence), "streamSid": stream_sid, "mark": {"name": name}}


def stop_message(sequence: int, stream_sid: str, account_sid: str, call_sid: str) -> dict[str, Any]:
    return {
        "event": "stop",
        "sequenceNumber": str(sequence),
        "stop": {"accountSid": account_sid, "callSid": call_sid},
        "streamSid": stream_sid,
    }


def _payload(media: Any) -> bytes | None:
    """The audio of a ``media`` body, or None where Twilio would reject it."""
    payload = media.get("payload") if isinstance(media, dict) else None
    try:
        return base64.b64decode(payload, validate=True) if isinstance(payload, str) else None
    except ValueError:  # binascii.Error
        return None


class TwilioCaller(Caller):
    """One call as Twilio places it; ``url`` is the gateway's ``ws://.../v1/twilio/media``."""

    barge_in_event = "clear"
    stage_metrics = False

    def __init__(
        self,
        http: aiohttp.ClientSession,
        url: str,
        *,
        caller: str = "+263771000001",
        dialled: str = "",
        auth_token: str | None = None,
        playout_delay_ms: int = 0,
    ) -> None:
        super().__init__(SAMPLE_RATE)
        self._http = http
        self._url = url
        self._auth_token = auth_token
        self.parameters = {"from": caller, "to": dialled}
        self.stream_sid = _sid("MZ")
        self.call_sid = _sid("CA")
        self.account_sid = _sid("AC")
        self.close_code: int | None = None
        self.last: dict[str, dict[str, Any]] = {}
        """The last message of each event the gateway sent (golden tests compare their shape)."""
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._sequence = 0
        self._delay_frames = playout_delay_ms // FRAME_MS
        self._received = 0  # bot samples received since the call began
        self._arrivals: deque[tuple[int, int]] = deque()  # (caller frame it plays from, samples received)
        self._playable = 0  # of which out of the jitter buffer
        self._played = 0  # of which played (or dropped by a clear)
        self._marks: deque[tuple[int, str]] = deque()  # (samples received before it, name)

    @property
    def external_id(self) -> str:
        return self.call_sid

    async def connect(self, **parameters: str) -> dict[str, Any]:
        """Open the stream and start the caller's audio; returns the ``start`` message sent.

        ``parameters`` become custom parameters beside ``from``, ``to`` and ``callSid``. A
        refused upgrade raises ``aiohttp.WSServerHandshakeError`` (403 for a bad signature).
        """
        headers = {"X-Twilio-Signature": signature(self._auth_token, self._url, ())} if self._auth_token else {}
        twiml = await self._twiml_parameters(self._auth_token) if self._auth_token else {}
        self._ws = await self._http.ws_connect(self._url, headers=headers)
        self._reader = asyncio.ensure_future(self._read())
        await self.send_json(connected_message())
        start = start_message(
            self._next(),
            self.stream_sid,
            self.account_sid,
            self.call_sid,
            {**self.parameters, "callSid": self.call_sid, **twiml, **parameters},
        )
        await self.send_json(start)
        self.start_sending()
        return start

    async def _twiml_parameters(self, auth_token: str) -> dict[str, str]:
        """The ``<Parameter>``s of the voice webhook's TwiML for this call, signed like Twilio's
        request; none when the webhook refuses (the stream then goes without its token)."""
        url = "http" + self._url.removeprefix("ws").removesuffix(MEDIA_PATH) + VOICE_PATH
        form = {"CallSid": self.call_sid, "AccountSid": self.account_sid}
        form |= {"From": self.parameters["from"], "To": self.parameters["to"]}
        headers = {"X-Twilio-Signature": signature(auth_token, url, form.items())}
        async with self._http.post(url, data=form, headers=headers) as resp:
            if resp.status != 200:
                return {}
            stream = ElementTree.fromstring(await resp.text()).find("./Connect/Stream")
        parameters = stream.iter("Parameter") if stream is not None else ()
        return {p.get("name", ""): p.get("value", "") for p in parameters}

    def _next(self) -> int:
        self._sequence += 1
        return self._sequence

    async def send_json(self, message: dict[str, Any]) -> None:
        await self.send_raw(json.dumps(message))

    async def send_raw(self, data: bytes | str) -> None:
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(ConnectionError):
                await (self._ws.send_bytes(data) if isinstance(data, bytes) else self._ws.send_str(data))

    async def send_frame(self, frame: PCM16) -> None:
        await self._play_out(len(frame))
        chunk = self.sent_frames + 1
        await self.send_json(media_message(self._next(), self.stream_sid, chunk, self.media_ms, ulaw_encode(frame)))

    async def dtmf(self, digit: str) -> None:
        await self.send_json(dtmf_message(self._next(), self.stream_sid, digit))

    async def _play_out(self, samples: int) -> None:
        """One tick of the playout clock: play ``samples``, echo the marks whose audio has played."""
        while self._arrivals and self._arrivals[0][0] <= self.sent_frames:
            self._playable = self._arrivals.popleft()[1]
        self._played = min(self._playable, self._played + samples)
        while self._marks and self._marks[0][0] <= self._played:
            await self.send_json(mark_message(self._next(), self.stream_sid, self._marks.popleft()[1]))

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            try:
                message = json.loads(msg.data) if msg.type == aiohttp.WSMsgType.TEXT else None
            except ValueError:
                message = None
            if isinstance(message, dict):
                await self._receive(message)
            else:
                self.on_event({"type": "violation", "message": repr(msg.data)[:200]})
        self.close_code = self._ws.close_code
        self.closed.set()

    async def _receive(self, message: dict[str, Any]) -> None:
        event = message.get("event")
        self.last[str(event)] = message
        body = message.get(str(event))
        if message.get("streamSid") != self.stream_sid or event not in ("media", "mark", "clear"):
            self.on_event({"type": "violation", "message": message})
        elif event == "media" and (audio := _payload(body)) is not None:
            self._received += len(audio)
            self._arrivals.append((self.sent_frames + self._delay_frames, self._received))
            self.on_audio(ulaw_decode(audio))
        elif event == "mark" and isinstance(body, dict) and isinstance(body.get("name"), str):
            self._marks.append((self._received, body["name"]))
            self.on_event({"type": "mark", "name": body["name"]})
        elif event == "clear":
            self.on_event({"type": "clear", "played_ms": self._played * 1000 // self.rate})
            self._arrivals.clear()
            self._played = self._playable = self._received
            await self._play_out(0)
        else:
            self.on_event({"type": "violation", "message": message})

    async def greeting_done(self) -> None:
        """Media Streams carry no events: the greeting is done when the bot falls silent."""
        await self.bot_quiet()

    async def hang_up(self) -> None:
        """Like Twilio when the caller hangs up: ``stop``, then close the socket."""
        await self.stop_sending()
        if self._ws is None:
            return
        await self.send_json(stop_message(self._next(), self.stream_sid, self.account_sid, self.call_sid))
        await self._ws.close()
        if self._reader is not None:
            await self._reader
        self.close_code = self._ws.close_code  # the reader stopped before the closing handshake ended

    async def wait_closed(self) -> int | None:
        await self.closed.wait()
        if self._reader is not None:
            await self._reader
        return self.close_code


def twilio_caller(http: aiohttp.ClientSession, base_url: str, health: dict[str, Any]) -> Caller:
    """The ``simulator.run`` factory: a Twilio caller for the gateway at ``base_url``."""
    return TwilioCaller(http, base_url.replace("http", "ws", 1) + MEDIA_PATH)
