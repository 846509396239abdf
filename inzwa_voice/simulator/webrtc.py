"""A caller over the WebRTC leg: an aiortc peer that does what the web widget does.

It asks ``POST /v1/webrtc/token`` for a call token (with a bearer key when the gateway wants
one), opens the ``events`` data channel, offers its microphone (the caller's paced audio,
48 kHz) with every ICE candidate (``iceServers=[]``), and posts the offer. Bot audio from the
gateway's track is downmixed to mono 48 kHz and stamped with the caller's media clock;
data-channel events go to ``on_event``. The gateway's track never pauses (RTP carries
silence between utterances), so frames of digital silence, as the Opus decoder returns it,
are not bot audio: the timeline holds what the caller could hear, as on the other legs.
Hanging up closes the peer connection, which is how a closed browser tab ends a call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.parse
from fractions import Fraction
from typing import Any

import aiohttp
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from inzwa_voice.core import PCM16
from inzwa_voice.legs.webrtc import OPUS_RATE, downmix, restrict_host_candidates
from inzwa_voice.simulator.caller import Caller

_MAX_QUEUED = 50
SILENCE_PEAK = 16
"""A decoded frame peaking at or below this (-66 dBFS) is silence, not bot audio."""


class OfferRefused(Exception):
    """The gateway answered the token or offer request with an error (the shared JSON shape)."""

    def __init__(self, status: int, error: dict[str, Any]) -> None:
        super().__init__(f"{status} {error.get('code')}: {error.get('message')}")
        self.status = status
        self.error = error


class MicrophoneTrack(MediaStreamTrack):
    """The caller's microphone: frames pushed by the caller's pacing loop, pulled by aiortc.

    ``end()`` ends it the way a page's track ends (a microphone unplugged, a permission
    revoked): what was pushed before still goes out, then the track stops and aiortc sends no
    more RTP, while the peer connection and its data channel stay up.
    """

    kind = "audio"

    def __init__(self, rate: int) -> None:
        super().__init__()
        self._rate = rate
        self._time_base = Fraction(1, rate)
        self._frames: asyncio.Queue[PCM16 | None] = asyncio.Queue(_MAX_QUEUED)  # None: the end
        self._ending = False
        self._pts = 0

    def push(self, frame: PCM16) -> None:
        if not self._ending:
            self._put(frame)

    def end(self) -> None:
        if not self._ending:
            self._ending = True
            self._put(None)

    def _put(self, frame: PCM16 | None) -> None:
        if self._frames.full():  # not connected yet: keep the newest second, as a live line would
            self._frames.get_nowait()
        self._frames.put_nowait(frame)

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        pcm = await self._frames.get()
        if pcm is None:
            self.stop()
            raise MediaStreamError
        frame = AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self._rate
        frame.time_base = self._time_base
        frame.pts = self._pts
        self._pts += len(pcm)
        return frame


class WebRTCCaller(Caller):
    def __init__(self, http: aiohttp.ClientSession, base_url: str, *, api_key: str | None = None) -> None:
        super().__init__(OPUS_RATE)
        self._http = http
        self._base_url = base_url
        self._api_key = api_key
        self._mic = MicrophoneTrack(OPUS_RATE)
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._channel: RTCDataChannel | None = None
        self._reader: asyncio.Task[None] | None = None
        self.call_id: str | None = None

    async def fetch_token(self) -> str:
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        body = await self._post("/v1/webrtc/token", {}, headers)
        return str(body["token"])

    async def _post(self, path: str, payload: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
        async with self._http.post(self._base_url + path, json=payload, headers=headers) as resp:
            body = await resp.json()
            if resp.status != 200:
                raise OfferRefused(resp.status, body["error"])
            return body

    async def connect(self, **start: Any) -> dict[str, Any]:
        """Place the call; returns ``session.started``, or raises ``OfferRefused`` (peer closed)."""
        try:
            return await self._connect(start)
        except BaseException:
            await self.hang_up()
            raise

    async def _connect(self, start: dict[str, Any]) -> dict[str, Any]:
        token = start.pop("token", None) or await self.fetch_token()
        channel = self._channel = self.pc.createDataChannel("events")
        channel.on("message", lambda message: self.on_event(json.loads(message)))
        self.pc.addTransceiver(self._mic, direction="sendrecv")
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_connection_state)
        await self.pc.setLocalDescription(await self.pc.createOffer())  # returns once ICE gathering is done
        offer = {"sdp": self.pc.localDescription.sdp, "type": "offer", "token": token, **start}
        answer = await self._post("/v1/webrtc/offer", offer)
        self.call_id = answer["call_id"]
        started = asyncio.ensure_future(self.wait_for("session.started", timeout=30))
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        event = await started
        self.start_sending()
        return event

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self._reader is None:
            self._reader = asyncio.ensure_future(self._read(track))

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            assert isinstance(frame, AudioFrame)
            pcm = downmix(frame)
            if np.abs(pcm.astype(np.int32)).max() > SILENCE_PEAK:
                self.on_audio(pcm)

    def _on_connection_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            self.closed.set()

    async def send_frame(self, frame: PCM16) -> None:
        self._mic.push(frame)

    def end_microphone(self) -> None:
        """The page's microphone track ends after what was said so far: no more audio is sent,
        not even silence, and the call goes on."""
        self._mic.end()

    async def send_json(self, message: dict[str, Any]) -> None:
        assert self._channel is not None
        self._channel.send(json.dumps(message))

    async def hang_up(self) -> None:
        await self.stop_sending()
        await self.pc.close()
        self._mic.stop()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def wait_closed(self) -> None:
        await self.closed.wait()


def webrtc_caller(http: aiohttp.ClientSession, base_url: str, health: dict[str, Any]) -> Caller:
    """A WebRTC caller; when the gateway is on loopback, the caller's media stays there too."""
    host = urllib.parse.urlsplit(base_url).hostname or ""
    if host.startswith("127.") or host == "::1":
        restrict_host_candidates([host])
    return WebRTCCaller(http, base_url)
