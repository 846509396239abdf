"""The SIP leg end to end: SIPp calls the gateway's pjsua2 endpoint on loopback, real engines.

Every call is a SIPp scenario from ``sip/sipp`` run as a subprocess (bounded by ``-timeout``
and killed in ``finally``) against a gateway listening on a free port. A test waits on SIPp's
exit, on what the gateway writes to its call records (:class:`Records`) or on the media it
receives, never on a sleep. The caller's speech comes from the packaged TTS, turned into an RTP
pcap by ``inzwa_voice.sip.pcap``; the bot's answer is captured by :class:`RtpPhone`, an RTP
endpoint of the test's own, and transcribed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import socket
import struct
import wave
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from aiohttp import web

from inzwa_voice.api.keys import CALLS
from inzwa_voice.app import build_app
from inzwa_voice.config import Settings
from inzwa_voice.conversation.session import CallSession
from inzwa_voice.core import FRAME_SAMPLES
from inzwa_voice.engines.runtime import Engines
from inzwa_voice.legs.audiosocket import AudioSocketServer
from inzwa_voice.legs.paced import OutputLeg
from inzwa_voice.legs.sip import SIP, SIP_DTMF_DIGITS, SipLeg, SipServer
from inzwa_voice.media.g711 import ulaw_decode, ulaw_encode
from inzwa_voice.simulator.process import free_ports
from inzwa_voice.sip.endpoint import EndpointConfig, SipEndpoint
from inzwa_voice.sip.media import MediaPipe
from inzwa_voice.sip.pcap import wav_to_pcap
from inzwa_voice.sip.sdp import best_codec, narrow_answer
from inzwa_voice.sip.uri import refer_uri, request_uri, uri_user
from inzwa_voice.store import TurnRecord
from tests.conftest import Server, ServerFactory, english_server, speak, transcript


@pytest.fixture(autouse=True, scope="module")
def sipp_installed() -> None:
    """SIPp is a real peer these tests need; `make test` installs it (Debian's sip-tester)."""
    assert shutil.which("sipp") is not None, "SIPp is missing: run `make test` (it installs sip-tester)"


SCENARIOS = Path(__file__).resolve().parents[1] / "sip" / "sipp"
DTMF_PCAPS = Path("/usr/share/sip-tester")
QUESTION = "Hello. Where is the nearest clinic?"
CALLER = "+263771234567"
SERVICE = "helpline"  # no rule matches it: the English dialplan's default profile answers
SIPP_TIMEOUT_S = 60


# ----- SDP and URI helpers -----

# The answer pjsua2 builds for an incoming offer, before negotiation: every codec we take.
LOCAL_SDP = "\r\n".join(
    [
        "v=0",
        "o=- 4004235099 4004235099 IN IP4 127.0.0.1",
        "s=pjmedia",
        "b=AS:84",
        "t=0 0",
        "a=X-nat:0",
        "m=audio 4000 RTP/AVP 9 0 8 120",
        "c=IN IP4 127.0.0.1",
        "b=TIAS:64000",
        "a=rtcp:4001 IN IP4 127.0.0.1",
        "a=sendrecv",
        "a=rtpmap:9 G722/8000",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:120 telephone-event/8000",
        "a=fmtp:120 0-16",
        "a=ssrc:1716448938 cname:7c57aeb24e6cace8",
        "",
    ]
)


def offer(formats: str, *extra: str) -> str:
    return "\r\n".join(
        ["v=0", "o=sipp 1 1 IN IP4 127.0.0.1", "s=-", "t=0 0", f"m=audio 6000 RTP/AVP {formats}", *extra]
    )


def test_the_answer_keeps_our_best_codec_the_offer_has() -> None:
    # The caller lists PCMU first; G.722 is ours to prefer.
    narrowed = narrow_answer(LOCAL_SDP, offer("0 9 101", "a=rtpmap:101 telephone-event/8000"))
    assert narrowed is not None
    lines = narrowed.split("\r\n")
    assert "m=audio 4000 RTP/AVP 9 120" in lines
    assert "a=rtpmap:0 PCMU/8000" not in lines and "a=rtpmap:8 PCMA/8000" not in lines
    assert "a=fmtp:120 0-16" in lines and "a=rtcp:4001 IN IP4 127.0.0.1" in lines and lines[-1] == ""
    # A dynamic payload type for G.722 is found by its rtpmap; PCMA alone gives PCMA.
    assert best_codec(offer("96 0", "a=rtpmap:96 G722/8000")) == "G722"
    narrowed = narrow_answer(LOCAL_SDP, offer("8"))
    assert narrowed is not None and "m=audio 4000 RTP/AVP 8 120" in narrowed.split("\r\n")
    # Nothing in common (GSM only), or no audio at all: left to pjsua2, which answers 488.
    assert narrow_answer(LOCAL_SDP, offer("3")) is None
    assert narrow_answer(LOCAL_SDP, "v=0\r\nm=video 6000 RTP/AVP 96\r\n") is None


def test_numbers_are_read_from_headers_and_targets_become_uris() -> None:
    assert uri_user('"Ann" <sip:+263771234567@10.0.0.1;user=phone>;tag=abc') == "+263771234567"
    assert uri_user("sip:alice:secret@example.org;transport=tcp") == "alice"
    assert uri_user("<sips:%2B26377@h>") == "+26377"
    assert uri_user("<tel:+263242123456;phone-context=zw>") == "+263242123456"
    assert uri_user("<sip:example.org>") == "" and uri_user("garbage") == ""
    assert uri_user("<sip:" + "9" * 500 + "@h>") == "9" * 64
    assert request_uri("INVITE sip:+100@127.0.0.1:5060 SIP/2.0\r\nVia: x\r\n") == "sip:+100@127.0.0.1:5060"
    assert request_uri("garbage") == ""
    assert refer_uri("+263242123456") == "tel:+263242123456"
    assert refer_uri("sip:counsellor@127.0.0.1:5070") == "sip:counsellor@127.0.0.1:5070"


# ----- the media pipe -----


class PipeLeg(OutputLeg):
    """The Leg's playout methods over a bare pipe: no call, no endpoint around it."""

    def __init__(self, pipe: MediaPipe) -> None:
        self._out = pipe


async def test_a_frame_counts_as_played_when_the_bridge_takes_it() -> None:
    pipe = MediaPipe(asyncio.get_running_loop(), capacity=3)
    leg = PipeLeg(pipe)
    frames = [np.full(FRAME_SAMPLES, n, dtype=np.int16) for n in range(1, 8)]
    assert [await leg.play(frame) for frame in frames[:3]] == [1, 2, 3]
    assert leg.played_frames == 0
    # The clock thread takes a frame; the playout advances on the loop once it hears so.
    assert await asyncio.to_thread(pipe.requested) == frames[0].astype("<i2").tobytes()
    assert await leg.wait_for_playout(1) and leg.played_frames == 1
    # The queue is full: the next frame waits for the bridge to take one.
    fourth = asyncio.ensure_future(leg.play(frames[3]))
    await asyncio.to_thread(pipe.requested)
    assert await fourth == 4 and await leg.wait_for_playout(2)
    # Barge-in. A frame the bridge took just before it is reported after it, once a new frame
    # is queued: it must not count as that frame having played.
    end = asyncio.ensure_future(leg.wait_for_playout(4))
    assert pipe.requested() is not None
    assert leg.interrupt() == 2
    assert await leg.play(frames[4]) == 3
    assert await end is False  # the stale report has been handled by now, before this resumes
    assert leg.played_frames == 2
    assert pipe.requested() == frames[4].astype("<i2").tobytes()
    assert await leg.wait_for_playout(3) and leg.played_frames == 3
    assert pipe.requested() is None  # nothing queued: the bridge sends silence
    # The call is gone: a play waiting for room returns, and nothing queued will ever play.
    assert [await leg.play(frame) for frame in frames[:3]] == [4, 5, 6]
    waiting = asyncio.ensure_future(leg.play(frames[6]))
    await asyncio.sleep(0)
    pipe.close()
    assert not await leg.wait_for_playout(await waiting)
    assert leg.played_frames == 3 and pipe.requested() is None


def test_sip_takes_the_keypad_digits_and_a_to_d() -> None:
    assert frozenset("0123456789*#ABCD") == SIP_DTMF_DIGITS


# ----- running SIPp -----


_runs = itertools.count(1)


@dataclass
class Sipp:
    returncode: int
    messages: str
    errors: str

    def responses(self) -> list[str]:
        """Status lines SIPp received or sent, in order, without the provisional 100 Trying."""
        lines = (line.strip() for line in self.messages.splitlines())
        return [line for line in lines if line.startswith("SIP/2.0 ") and line != "SIP/2.0 100 Trying"]


async def sipp(
    server: Server,
    scenario: str,
    workdir: Path,
    *,
    calls: int = 1,
    transport: str = "u1",
    codecs: str = "0",
    **keys: str,
) -> Sipp:
    """Run one SIPp scenario to its end against the server; the process never outlives this."""
    port = server.app[SIP].port
    assert port is not None, "the SIP endpoint is not listening"
    name = f"{Path(scenario).stem}-{next(_runs)}"
    messages, errors = workdir / f"{name}.messages.log", workdir / f"{name}.errors.log"
    args = ["-sf", str(SCENARIOS / scenario), f"127.0.0.1:{port}", "-i", "127.0.0.1", "-t", transport]
    args += ["-p", str(free_ports(1)), "-mp", str(free_ports(4)), "-s", SERVICE]
    args += ["-m", str(calls), "-l", str(calls), "-nostdin", "-timeout", f"{SIPP_TIMEOUT_S}s", "-timeout_error"]
    args += ["-trace_err", "-error_file", str(errors), "-trace_msg", "-message_file", str(messages)]
    args += ["-cid_str", "inzwa-test-%u-%p@%s"]
    for key, value in {"caller": CALLER, "codecs": codecs, **keys}.items():
        args += ["-key", key, value]
    process = await asyncio.create_subprocess_exec(
        "sipp", *args, cwd=workdir, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL
    )
    try:
        async with asyncio.timeout(SIPP_TIMEOUT_S + 15):
            returncode = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return Sipp(returncode, _text(messages), _text(errors))


def _text(path: Path) -> str:
    """A SIPp log, or "" when SIPp wrote none (it writes the error log only on errors)."""
    return path.read_text(errors="replace") if path.exists() else ""


@contextlib.asynccontextmanager
async def running(call: Coroutine[Any, Any, Sipp]) -> AsyncIterator[asyncio.Task[Sipp]]:
    """A SIPp run in the background while the test drives the call; always awaited to its end."""
    task = asyncio.ensure_future(call)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# ----- what the gateway records -----


class Records:
    """What one gateway records, kept in order, with a way to wait for it.

    The call record writes are the moments the tests look at: a call's start, each write of a
    turn (first at the endpoint as ``answering``, again once its answer has played), an event
    when it happens, the end once the call is over. pjsua2's own refusals (486, 488, 400) are
    noted too: pjsua2 reports them just after the response went out, so a test waits for the
    note before it reads the metric.
    """

    def __init__(self, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
        self.items: list[tuple[str, str, Any]] = []  # (what, call id, the write's arguments)
        self._changed = asyncio.Event()
        recorder, sip = server.app[CALLS].records, server.app[SIP]
        for what in ("start", "turn", "event", "end"):
            monkeypatch.setattr(recorder, what, self._recording(what, getattr(recorder, what)))
        rejected = sip.rejected

        def note_rejected(status: int, reason: str) -> None:
            rejected(status, reason)
            self._note("rejected", "", status)

        monkeypatch.setattr(sip, "rejected", note_rejected)

    def _note(self, what: str, call_id: str, data: Any) -> None:
        self.items.append((what, call_id, data))
        self._changed.set()

    def _recording(self, what: str, write: Callable[..., Any]) -> Callable[..., Any]:
        async def record(call_id: str, *args: Any, **kwargs: Any) -> None:
            await write(call_id, *args, **kwargs)
            self._note(what, call_id, args)

        return record

    def of(self, what: str) -> list[tuple[str, Any]]:
        return [(call_id, data) for kind, call_id, data in self.items if kind == what]

    def played_turns(self) -> list[tuple[str, TurnRecord]]:
        """(call id, turn) for each turn whose answer has played to its end."""
        turns = [(call_id, turn) for call_id, (_, turn) in self.of("turn")]
        return [(call_id, turn) for call_id, turn in turns if turn.outcome == "played"]

    def ends(self) -> list[tuple[str, str]]:
        """(call id, disposition) of each call that ended."""
        return [(call_id, disposition) for call_id, (_, disposition) in self.of("end")]

    def refusals(self) -> list[int]:
        return [status for _, status in self.of("rejected")]

    async def until(self, check: Callable[[], bool], timeout_s: float = 90) -> None:
        async with asyncio.timeout(timeout_s):
            while not check():
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """SIPp's working directory: the pcaps it plays (speech.pcap, dtmf.pcap) and its logs."""
    return tmp_path


async def sip_server(make_server: ServerFactory, **overrides: object) -> Server:
    return await english_server(make_server, sip_enabled=True, sip_port=0, **overrides)


async def call_record(server: Server, call_id: str) -> dict[str, Any]:
    async with server.http.get(f"{server.v1}/admin/calls/{call_id}") as resp:
        assert resp.status == 200
        record: dict[str, Any] = await resp.json()
        return record


def rejected(engines: Engines, reason: str) -> float:
    labels = {"leg": "sip", "reason": reason}
    return engines.metrics.registry.get_sample_value("inzwa_calls_rejected_total", labels) or 0.0


def write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.astype("<i2").tobytes())
    return path


def silence_pcap(workdir: Path, seconds: float = 1.0) -> None:
    wav = write_wav(workdir / "silence.wav", np.zeros(int(8000 * seconds), dtype=np.int16), 8000)
    wav_to_pcap(wav, workdir / "speech.pcap", "pcmu")


def sip_sessions(server: Server) -> list[CallSession]:
    return [s for s in server.app[CALLS].sessions.values() if s.info.leg == "sip"]


# ----- calls -----


async def test_dtmf_and_hold_over_tcp_then_the_caller_hangs_up(
    make_server: ServerFactory, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await sip_server(make_server)
    records = Records(server, monkeypatch)
    shutil.copy(DTMF_PCAPS / "dtmf_2833_5.pcap", workdir / "dtmf.pcap")
    # PCMU is offered first and G.722 last: the gateway answers with G.722 all the same.
    result = await sipp(server, "uac_dtmf.xml", workdir, transport="t1", codecs="0 8 9", info_digit="7")
    assert result.returncode == 0, result.errors
    assert result.responses()[:2] == ["SIP/2.0 180 Ringing", "SIP/2.0 200 OK"]
    answer = result.messages.split("SIP/2.0 200 OK", 1)[1].splitlines()
    media = next(line for line in answer if line.startswith("m=audio"))
    assert media.split()[3:] == ["9", "101"], media  # G.722, and telephone-event for the digits
    await records.until(lambda: bool(records.ends()))
    (call_id, disposition), *_ = records.ends()
    assert disposition == "caller_hangup"
    record = await call_record(server, call_id)
    assert record["leg"] == "sip" and record["caller"] == CALLER and record["dialled"] == SERVICE
    assert record["external_id"].startswith("inzwa-test-")
    digits = [e["data"]["digit"] for e in record["events"] if e["kind"] == "dtmf"]
    assert digits == ["5", "7"], "the RFC 4733 digit after unhold, then the SIP INFO one"


async def test_a_calls_pjsua2_objects_kept_past_the_endpoint_own_nothing(
    make_server: ServerFactory, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy of a call (or of its bridge port) that outlives the endpoint, as a logged
    traceback or a reference cycle would keep it, must own no C++ object: freed later on the
    loop's thread, a pjsua2 destructor aborts the process (pjlib does not know that thread, and
    a port's destructor asserts once the library is gone). So here they are kept, the endpoint
    stops, and they are freed on this thread."""
    server = await sip_server(make_server)
    endpoint = server.app[SIP].endpoint
    records = Records(server, monkeypatch)
    kept: list[Any] = []
    incoming = endpoint.incoming

    def keep(account: Any, prm: Any) -> None:  # on the pjsua2 worker
        incoming(account, prm)
        kept.extend(endpoint._calls.values())

    monkeypatch.setattr(endpoint, "incoming", keep)
    shutil.copy(DTMF_PCAPS / "dtmf_2833_5.pcap", workdir / "dtmf.pcap")
    result = await sipp(server, "uac_dtmf.xml", workdir, info_digit="7")  # media, hold and unhold
    assert result.returncode == 0, result.errors
    await records.until(lambda: bool(records.ends()))
    for session in sip_sessions(server):  # recorded as ended; its last steps follow the record
        async with asyncio.timeout(10):
            await session.wait_closed()
    await server.app[SIP].stop()
    (call,) = set(kept)
    assert call.port is not None, "the call had media, so a bridge port"
    assert not call.thisown and not call.port.thisown
    kept.clear()
    del call  # freed here, on the loop's thread, after the library's end: nothing runs


async def test_the_call_store_is_open_for_as_long_as_any_leg_listens(
    settings: Settings, engines: Engines, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call that reaches the gateway as it starts, or ends as its endpoint stops (a CANCEL
    racing the shutdown, a call hung up by the endpoint's teardown), is written to the store: so
    the store opens before SIP and AudioSocket listen and closes only after they stopped."""
    overrides = {"db_path": tmp_path / "calls.db", "audiosocket_port": 0, "sip_enabled": True, "sip_port": 0}
    app = build_app(settings.model_copy(update=overrides), engines)
    seen: list[str] = []

    def watched(cls: type, name: str) -> None:
        original = getattr(cls, name)

        async def check(self: object, *args: Any) -> None:
            store = app[CALLS].store
            assert store is not None, f"{cls.__name__}.{name} before the call store opened"
            assert await store.get_call("no-such-call") is None  # raises once the store is closed
            seen.append(f"{cls.__name__}.{name}")
            await original(self, *args)

        monkeypatch.setattr(cls, name, check)

    for cls in (SipServer, AudioSocketServer):
        for name in ("start", "stop"):
            watched(cls, name)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await runner.cleanup()
    assert sorted(seen) == ["AudioSocketServer.start", "AudioSocketServer.stop", "SipServer.start", "SipServer.stop"]


async def test_a_spoken_question_is_heard_and_the_gateway_hangs_up(
    make_server: ServerFactory, engines: Engines, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await sip_server(make_server)
    records = Records(server, monkeypatch)
    question = await speak(engines, QUESTION, rate=8000)
    pause = np.zeros(8000, dtype=np.int16)  # a second of silence after it: the caller waits
    wav_to_pcap(
        write_wav(workdir / "question.wav", np.concatenate((question, pause)), 8000), workdir / "speech.pcap", "pcmu"
    )
    async with running(sipp(server, "uac_speech.xml", workdir)) as caller:
        await records.until(lambda: bool(records.played_turns()))
        (call_id, turn), *_ = records.played_turns()
        assert "clinic" in (turn.caller_text or "").lower()
        session = server.app[CALLS].sessions[call_id]
        assert isinstance(session.leg, SipLeg) and session.leg.played_frames > 50, "the answer went out as RTP"
        async with server.http.post(f"{server.v1}/admin/calls/{call_id}/hangup?goodbye=false") as resp:
            assert resp.status == 200
        result = await caller  # SIPp only ends well after the gateway's BYE
    assert result.returncode == 0, result.errors
    assert result.responses()[:2] == ["SIP/2.0 180 Ringing", "SIP/2.0 200 OK"]
    record = await call_record(server, call_id)
    assert record["disposition"] == "admin_hangup" and record["profile"] == "english"
    assert "clinic" in record["turns"][0]["caller_text"].lower()


def rtp_packet(seq: int, ssrc: int, pcm: np.ndarray) -> bytes:
    """One PCMU packet of 20 ms."""
    return struct.pack(">BBHII", 0x80, 0, seq & 0xFFFF, (seq * 160) & 0xFFFFFFFF, ssrc) + ulaw_encode(pcm)


def frames_of(speech: np.ndarray) -> list[np.ndarray]:
    return [speech[i : i + 160] for i in range(0, len(speech) - 159, 160)]


class RtpPhone(asyncio.DatagramProtocol):
    """The caller's phone, as far as media goes: PCMU RTP from one port, both ways.

    It learns the gateway's RTP address from the first packet the gateway sends (pjsua2 sends
    as soon as the call is up), then speaks every 20 ms from the port the SDP offer gave, like
    a phone: the question, then silence. Everything the gateway sends after the question is
    kept as the bot's answer.
    """

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.gateway: tuple[str, int] | None = None
        self.heard_gateway = asyncio.Event()
        self.answer: list[bytes] = []
        self.sent = 0
        self._listening = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.gateway is None:
            self.gateway = addr
            self.heard_gateway.set()
        if self._listening and len(data) > 12 and data[1] & 0x7F == 0:
            self.answer.append(data[12:])

    async def speak(self, speech: np.ndarray, stop: asyncio.Event, intruder: Intruder) -> None:
        """Speak, with the intruder sending a packet of its own after each of the phone's while
        the question lasts, from its 25th on: the gateway has heard the phone by then."""
        await self.heard_gateway.wait()
        assert self.transport is not None and self.gateway is not None
        loop = asyncio.get_running_loop()
        frames = frames_of(speech)
        silence = np.zeros(160, dtype=np.int16)
        started, seq = loop.time(), 0
        while not stop.is_set():
            frame = frames[seq] if seq < len(frames) else silence
            self._listening = seq >= len(frames)
            self.transport.sendto(rtp_packet(seq, 0x5EED, frame), self.gateway)
            self.sent += 1
            if 25 <= seq < len(frames):
                intruder.send(self.gateway)
            seq += 1
            await asyncio.sleep(max(0.0, started + seq * 0.02 - loop.time()))  # a phone's 20 ms clock


class Intruder(asyncio.DatagramProtocol):
    """RTP nobody negotiated: a stream of other speech, from another port, to the call's RTP
    port, as a stale call or a scanner sends it. It counts what the gateway sends it."""

    def __init__(self, speech: np.ndarray) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.frames = frames_of(speech)
        self.sent = 0
        self.heard = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.heard += 1

    def send(self, gateway: tuple[str, int]) -> None:
        assert self.transport is not None
        frame = self.frames[self.sent % len(self.frames)]
        self.transport.sendto(rtp_packet(20_000 + self.sent, 0xBAD, frame), gateway)
        self.sent += 1


async def test_the_answer_comes_back_as_rtp_speech_and_rtp_from_elsewhere_is_dropped(
    make_server: ServerFactory, engines: Engines, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await sip_server(make_server)
    records = Records(server, monkeypatch)
    question = await speak(engines, QUESTION, rate=8000)
    other = await speak(engines, "Bananas and pancakes for breakfast, every single day of the week.", rate=8000)
    loop = asyncio.get_running_loop()
    transport, phone = await loop.create_datagram_endpoint(RtpPhone, local_addr=("127.0.0.1", 0))
    stray, intruder = await loop.create_datagram_endpoint(lambda: Intruder(other), local_addr=("127.0.0.1", 0))
    stop = asyncio.Event()
    speaking = asyncio.ensure_future(phone.speak(question, stop, intruder))
    rtp_port = str(transport.get_extra_info("sockname")[1])
    try:
        async with running(sipp(server, "uac_external_media.xml", workdir, rtp_port=rtp_port)) as caller:
            await records.until(lambda: bool(records.played_turns()))
            (call_id, turn), *_ = records.played_turns()
            stop.set()
            async with server.http.post(f"{server.v1}/admin/calls/{call_id}/hangup?goodbye=false") as resp:
                assert resp.status == 200
            result = await caller
            await records.until(lambda: any(data[0] == "rtp" for _, data in records.of("event")))
    finally:
        stop.set()
        await speaking
        transport.close()
        stray.close()
    assert result.returncode == 0, result.errors
    # The intruder's packets were dropped: the caller's question came through whole, none of
    # the other speech did, and the gateway kept sending to the phone alone.
    assert "clinic" in (turn.caller_text or "").lower()
    assert "banana" not in (turn.caller_text or "").lower()
    assert intruder.sent > 50 and intruder.heard == 0
    answer = ulaw_decode(b"".join(phone.answer))
    assert len(answer) > 8000 and np.abs(answer).max() > 2000, "a second or more of audible answer"
    assert await transcript(engines, answer, 8000), "the answer's RTP decodes to speech"
    # The call's RTP counts are the phone's packets alone: the intruder's never reached the stream.
    (stats,) = [data for _, (kind, data) in records.of("event") if kind == "rtp"]
    assert stats["codec"] == "PCMU" and stats["rx_lost"] == 0 and stats["rx_discarded"] == 0, stats
    assert phone.sent - 5 <= stats["rx_packets"] <= phone.sent and stats["tx_packets"] > 100, (stats, phone.sent)
    events = [e for e in (await call_record(server, call_id))["events"] if e["kind"] == "rtp"]
    assert [e["data"] for e in events] == [stats]
    received = engines.metrics.registry.get_sample_value(
        "inzwa_sip_rtp_packets_total", {"direction": "rx", "outcome": "received"}
    )
    assert received is not None and received >= stats["rx_packets"]


async def test_dtmf_zero_transfers_the_caller_by_refer(
    make_server: ServerFactory, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await sip_server(make_server)
    records = Records(server, monkeypatch)
    shutil.copy(DTMF_PCAPS / "dtmf_2833_0.pcap", workdir / "dtmf.pcap")
    result = await sipp(server, "uac_refer.xml", workdir)
    assert result.returncode == 0, result.errors  # REFER accepted, NOTIFY 200 answered, then our BYE
    refer_to = [line for line in result.messages.splitlines() if line.startswith("Refer-To:")]
    assert refer_to and "sip:counsellor@127.0.0.1:5070" in refer_to[0]
    await records.until(lambda: bool(records.ends()))
    (call_id, disposition), *_ = records.ends()
    assert disposition == "transferred"
    events = {e["kind"]: e["data"] for e in (await call_record(server, call_id))["events"]}
    assert events["transfer"] == {"reason": "dtmf", "target": "sip:counsellor@127.0.0.1:5070"}
    assert events["transfer_result"] == {
        "target": "sip:counsellor@127.0.0.1:5070",
        "ok": True,
        "status": 200,
        "reason": "OK",
    }


async def test_cancel_while_the_session_starts(
    make_server: ServerFactory, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await sip_server(make_server)
    manager, sip = server.app[CALLS], server.app[SIP]
    records = Records(server, monkeypatch)
    # Hold the session's start until the CANCEL has ended the call, so the caller gives up in
    # the middle of admission: the race a slow start would lose.
    cancelled = asyncio.Event()
    ended, start_session = sip.ended, manager.start

    def note_end(key: int, status: int, reason: str) -> None:
        ended(key, status, reason)
        cancelled.set()

    async def start_after_cancel(*args: Any, **kwargs: Any) -> CallSession:
        await cancelled.wait()
        return await start_session(*args, **kwargs)

    monkeypatch.setattr(sip, "ended", note_end)
    monkeypatch.setattr(manager, "start", start_after_cancel)
    result = await sipp(server, "uac_cancel.xml", workdir)
    assert result.returncode == 0, result.errors
    assert result.responses() == ["SIP/2.0 180 Ringing", "SIP/2.0 200 OK", "SIP/2.0 487 Request Terminated"]
    await records.until(lambda: bool(records.ends()))
    assert [disposition for _, disposition in records.ends()] == ["caller_hangup"]
    for session in sip_sessions(server):  # recorded as ended; its last steps follow the record
        async with asyncio.timeout(10):
            await session.wait_closed()
    assert not sip_sessions(server)


async def test_a_fifth_call_is_busy(
    make_server: ServerFactory, engines: Engines, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await sip_server(make_server)
    records = Records(server, monkeypatch)
    silence_pcap(workdir)
    busy = rejected(engines, "capacity")
    async with running(sipp(server, "uac_speech.xml", workdir, calls=4)) as four:
        await records.until(lambda: len(records.of("start")) == 4)
        refused = await sipp(server, "uac_refused.xml", workdir)
        assert refused.returncode == 0, refused.errors
        assert refused.responses() == ["SIP/2.0 486 Busy Here"]
        await records.until(lambda: records.refusals() == [486])
        assert rejected(engines, "capacity") == busy + 1
        # pjsua2 keeps global state: a second endpoint in this process is refused at start.
        with pytest.raises(RuntimeError, match="one SIP endpoint per process"):
            await SipEndpoint(server.app[SIP], EndpointConfig(port=0)).start()
        for session in sip_sessions(server):
            await session.end("admin_hangup")
        result = await four
    assert result.returncode == 0, result.errors


async def test_a_drain_refuses_new_calls_then_hangs_up_live_ones(
    make_server: ServerFactory, engines: Engines, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await sip_server(make_server)
    records = Records(server, monkeypatch)
    silence_pcap(workdir)
    draining = rejected(engines, "draining")
    async with running(sipp(server, "uac_speech.xml", workdir)) as live:
        await records.until(lambda: bool(records.of("start")))
        drain = asyncio.ensure_future(server.app[SIP].drain(2.0))
        refused = await sipp(server, "uac_refused.xml", workdir)
        assert refused.returncode == 0, refused.errors
        assert refused.responses()[-1] == "SIP/2.0 503 Service Unavailable"
        assert "Retry-After: 60" in refused.messages
        assert rejected(engines, "draining") == draining + 1
        await drain  # the live call had its 2 s; then the gateway hung up
        result = await live
    assert result.returncode == 0, result.errors
    assert [disposition for _, disposition in records.ends()] == ["shutdown"]


def exchange_udp(port: int, datagrams: list[bytes]) -> str:
    """Send datagrams in order from one socket; return the first reply's status line."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(10)
        own = str(sock.getsockname()[1]).encode()
        for datagram in datagrams:
            sock.sendto(datagram.replace(b"OWN_PORT", own), ("127.0.0.1", port))
        return sock.recv(65535).split(b"\r\n", 1)[0].decode()


INVITE = (
    b"INVITE sip:helpline@127.0.0.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:OWN_PORT;branch=z9hG4bK-bad-%d\r\n"
    b"From: <sip:intruder@127.0.0.1>;tag=bad\r\n"
    b"To: <sip:helpline@127.0.0.1>\r\n"
    b"Call-ID: bad-%d@127.0.0.1\r\n"
    b"CSeq: %s INVITE\r\n"
    b"Contact: <sip:intruder@127.0.0.1:OWN_PORT>\r\n"
    b"Max-Forwards: 70\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: %d\r\n\r\n%s"
)


async def test_bad_input_gets_an_error_or_is_dropped_and_calls_go_on(
    make_server: ServerFactory, engines: Engines, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await sip_server(make_server)
    records = Records(server, monkeypatch)
    port = server.app[SIP].port
    assert port is not None
    invalid, codec = rejected(engines, "invalid"), rejected(engines, "codec")
    garbage = b"\x00\xff\x13 not SIP at all \r\n\r\n"
    bad_cseq = INVITE % (1, 1, b"one", 0, b"")  # a syntax error: pjsip drops it
    bad_sdp = INVITE % (2, 2, b"1", 11, b"v=0\r\nhello")
    # Replies come in order: the first one answers the last datagram, so the two before it got none.
    status = await asyncio.to_thread(exchange_udp, port, [garbage, bad_cseq, bad_sdp])
    assert status == "SIP/2.0 400 Bad SDP"
    await records.until(lambda: records.refusals() == [400])
    assert rejected(engines, "invalid") == invalid + 1
    # An offer of GSM only: no codec in common.
    refused = await sipp(server, "uac_refused.xml", workdir, codecs="3")
    assert refused.returncode == 0, refused.errors
    assert refused.responses() == ["SIP/2.0 488 Not Acceptable Here"]
    await records.until(lambda: records.refusals() == [400, 488])
    assert rejected(engines, "codec") == codec + 1
    # The gateway still answers a good call, to the end.
    shutil.copy(DTMF_PCAPS / "dtmf_2833_1.pcap", workdir / "dtmf.pcap")
    result = await sipp(server, "uac_dtmf.xml", workdir, info_digit="2")
    assert result.returncode == 0, result.errors
