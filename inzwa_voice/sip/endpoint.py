"""The pjsua2 endpoint on its own thread: SIP transports, calls, and the commands asyncio sends.

pjsua2 keeps global state (one endpoint per process) and its objects must be used from threads
pjlib knows. So one worker thread owns it all:

* The worker creates the library (pjlib registers the creating thread, so no
  ``libRegisterThread`` is needed) and polls SIP itself (``threadCnt = 0``): ``onIncomingCall``,
  ``onCallState``, ``onCallMediaState``, ``onCallSdpCreated``, ``onCallTransferStatus``,
  ``onStreamDestroyed`` and ``onRejectedIncomingCall`` all run on it, as do the commands the
  loop queues (answer, hang up, transfer). It is the only thread that calls pjsua2.
* pjmedia's clock thread calls every call's :class:`~inzwa_voice.sip.media.AudioPort` each
  20 ms, and its media I/O thread reports RFC 4733 digits (``onDtmfDigit``): those callbacks
  only hand data over.
* The asyncio loop runs sessions and legs and never calls pjsua2. Every callback reaches it
  with ``loop.call_soon_threadsafe`` and never waits for it; commands come back as futures.

SWIG destroys a pjsua2 object's C++ side, whose destructor calls pjsua2, when its Python object
goes. So the Call, its AudioPort, the account and the endpoint live in this module's dict and
attributes for as long as pjsua2 uses them, and their C++ sides are destroyed explicitly, on the
worker thread (:func:`_destroy`): a call after pjsua2 reported it DISCONNECTED (at the next turn
of the worker loop, not inside its own callback), everything else at shutdown. Dropping the
reference is not enough: a Python proxy can outlive it (a logged exception's traceback holds
its frame's ``self``; a reference cycle waits for the collector) and then goes on whatever
thread frees it. A pjsua2 destructor run on a thread pjlib does not know, or a port's run after
``libDestroy``, fails an assertion in pjlib, which aborts the whole process. The log writer is
the exception: ``libDestroy`` deletes the writer it was given, so it is handed over
(``__disown__``: pjsua2 keeps it alive and frees it); were Python to own it too, it would be
deleted twice, and the heap corrupted.

Capacity: this pjsua2 build is compiled with ``PJSUA_MAX_CALLS`` = 4; a larger ``maxCalls`` is
silently clamped (measured: with 8, the fifth INVITE is refused). pjsua2 answers that INVITE
with ``486 Busy Here`` itself, before any callback, and reports it through
``onRejectedIncomingCall``, as it does an offer with no codec in common (``488``).

Source allow-list: an INVITE whose source address is outside ``allowed_sources`` gets
``403 Forbidden`` here, on the worker, before the loop hears of it: no session, no ringing, no
media. It is checked on the packet's source address, not on Via or From, which the sender
writes itself.

Trunk registration: with ``registration`` set, the one account registers its AOR
(``sip:USERNAME@registrar host``) with the registrar, answers its digest challenge, and pjsua2
refreshes the binding before it expires and retries after a failure on its own. The account
still takes every INVITE that reaches us, registered or not. Its state
(:class:`RegistrationState`) reaches the loop through ``Listener.registration``. The password
goes to pjsua2 only: it is kept out of ``repr`` and never logged. At shutdown the binding is
left to expire (``libDestroy`` with ``NO_NETWORK`` sends no un-REGISTER), like a crash would.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import dataclasses
import functools
import ipaddress
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, ParamSpec, Protocol, TypeVar

import pjsua2 as pj

from inzwa_voice.media.framing import FRAME_MS, PIPELINE_RATE
from inzwa_voice.sip.media import AudioPort, MediaPipe
from inzwa_voice.sip.sdp import CODEC_PRIORITIES, narrow_answer
from inzwa_voice.sip.uri import request_uri

log = logging.getLogger(__name__)
pjlog = logging.getLogger("inzwa_voice.sip.pjsua")

MAX_CALLS: Final = 4
"""Calls one process answers: the build's ``PJSUA_MAX_CALLS``."""
POLL_MS: Final = 10
"""Longest wait for SIP events before the worker looks at its command queue again."""
HANGUP_WAIT_S: Final = 2.0
"""At shutdown, how long the worker lets pjsua2 hang calls up before destroying it."""
RESAMPLE_QUALITY: Final = 6
"""pjmedia quality 5-10 selects libresample's large filter for the bridge's rate conversion."""
USER_AGENT: Final = "Inzwa-Voice"

_PJ_LEVELS: Final = {0: logging.CRITICAL, 1: logging.ERROR, 2: logging.WARNING, 3: logging.INFO}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class Registration:
    """A trunk registration: who we are to the registrar, and how long a binding lasts."""

    registrar: str
    """Registrar URI, e.g. ``sip:trunk.example.net:5060``; its host is the AOR's domain."""
    username: str
    password: str = field(repr=False)
    """Digest password: handed to pjsua2 only, kept out of ``repr`` so no log shows it."""
    realm: str = "*"
    """Digest realm the credentials are for; ``*`` answers any realm's challenge."""
    expires_s: int = 300
    """Binding lifetime asked for; pjsua2 refreshes it before it runs out."""

    @property
    def aor(self) -> str:
        """The address of record we register: ``sip:USERNAME@HOST`` of the registrar (its port
        and parameters are where to send REGISTER, not part of who we are)."""
        host = self.registrar.split(":", 1)[1].split(";", 1)[0]
        if not host.startswith("["):  # [v6]:port keeps its brackets and port
            host = host.rsplit(":", 1)[0]
        return f"sip:{self.username}@{host}"


@dataclass(frozen=True)
class RegistrationState:
    """The last word on our registration, as pjsua2 reported it."""

    registered: bool
    last_status_code: int | None
    """The registrar's last final answer (200, 401, 403...), or a pjsip code (408, 503) when it
    could not be reached; None before the first REGISTER is answered."""
    expires: int
    """Seconds the binding has left by the registrar's answer; 0 when not registered."""
    reason: str = ""

    def as_dict(self) -> dict[str, object]:
        return {
            "registered": self.registered,
            "last_status_code": self.last_status_code,
            "expires": self.expires,
            "reason": self.reason,
        }


def parse_sources(sources: Iterable[str]) -> tuple[Network, ...]:
    """IPs or CIDRs as networks; a bare address is a /32 (/128). Raises ValueError on a typo, so
    a misspelt allow-list stops start-up instead of letting everybody (or nobody) in."""
    return tuple(ipaddress.ip_network(source.strip(), strict=False) for source in sources if source.strip())


def source_allowed(source: str, allowed: tuple[Network, ...]) -> bool:
    """Whether a packet's ``HOST:PORT`` (``[V6]:PORT``) source is in ``allowed``; empty allows all."""
    if not allowed:
        return True
    if source.startswith("["):
        host = source[1:].split("]", 1)[0]
    elif source.count(":") == 1:
        host = source.rsplit(":", 1)[0]
    else:
        host = source
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in allowed)


@dataclass(frozen=True)
class EndpointConfig:
    host: str = "127.0.0.1"
    """Address the SIP transports and RTP bind, and the one SDP announces."""
    port: int = 5060
    """SIP port for UDP and TCP alike; 0 lets the OS pick (UDP first, then TCP takes the same)."""
    rtp_port: int = 4000
    """First RTP port; each call takes the next free even port and the one above it."""
    log_level: int = 2
    """pjlib verbosity (1 errors ... 5 packets); messages go to the ``inzwa_voice.sip.pjsua`` logger."""
    allowed_sources: tuple[Network, ...] = ()
    """Networks an INVITE may come from (see :func:`parse_sources`); empty: anyone."""
    registration: Registration | None = None
    """Register with a trunk's registrar; None: no registration."""


@dataclass(frozen=True)
class IncomingCall:
    """What the INVITE said, as text; the leg turns it into a ``CallInfo``."""

    request_uri: str
    from_header: str
    call_id: str
    source: str


@dataclass(frozen=True)
class RtpStats:
    """One media stream's RTP as pjmedia counted it, read as the stream ends (at hang-up, or
    when a re-INVITE replaces it). ``rx_lost`` are sequence gaps; ``rx_discarded`` are packets
    the stream refused: out of sequence, duplicated or malformed. Packets from an address other
    than the caller's are dropped before the stream counts anything (see ``legs.sip``)."""

    codec: str
    rx_packets: int
    rx_lost: int
    rx_discarded: int
    rx_jitter_ms: float
    """Mean interarrival jitter (RFC 3550) of what was received."""
    tx_packets: int

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


class Listener(Protocol):
    """The loop side of the endpoint; every method runs on the asyncio loop."""

    def incoming(self, key: int, call: IncomingCall, pipe: MediaPipe) -> None: ...

    def ended(self, key: int, status: int, reason: str) -> None: ...

    def confirmed(self, key: int) -> None: ...

    def dtmf(self, key: int, digit: str) -> None: ...

    def transfer_status(self, key: int, status: int, reason: str, final: bool) -> None: ...

    def rejected(self, status: int, reason: str) -> None: ...

    def media_stats(self, key: int, stats: RtpStats) -> None: ...

    def forbidden(self, source: str) -> None: ...

    def registration(self, state: RegistrationState) -> None: ...


class EndpointClosed(RuntimeError):
    """A command came after the endpoint stopped."""


def _destroy(obj: Any) -> None:
    """Destroy a pjsua2 object's C++ side now, on this thread (the worker), once. Its Python
    proxy no longer owns it, so wherever and whenever the proxy is freed, nothing runs."""
    if obj is not None and obj.thisown:
        type(obj).__swig_destroy__(obj)


def _guarded(method: Callable[P, None]) -> Callable[P, None]:
    """pjsua2 callbacks must not raise: a Python exception inside a SWIG director call
    escapes into pjsua2's C++ callback. Log it and carry on."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            method(*args, **kwargs)
        except Exception:
            log.exception("pjsua2 callback failed", extra={"callback": method.__name__})

    return wrapper


class _LogWriter(pj.LogWriter):  # type: ignore[misc]  # pjsua2 ships no type information
    @_guarded
    def write(self, entry: Any) -> None:  # any pjlib thread
        pjlog.log(_PJ_LEVELS.get(entry.level, logging.DEBUG), entry.msg.rstrip())


class _Library(pj.Endpoint):  # type: ignore[misc]
    def __init__(self, owner: SipEndpoint) -> None:
        super().__init__()
        self._owner = owner

    @_guarded
    def onRejectedIncomingCall(self, prm: Any) -> None:  # worker
        self._owner.notify(self._owner.listener.rejected, prm.statusCode, prm.reason)


class _Account(pj.Account):  # type: ignore[misc]
    def __init__(self, owner: SipEndpoint) -> None:
        super().__init__()
        self._owner = owner

    @_guarded
    def onIncomingCall(self, prm: Any) -> None:  # worker
        self._owner.incoming(self, prm)

    @_guarded
    def onRegState(self, prm: Any) -> None:  # worker: every REGISTER's final answer, or its failure
        info = self.getInfo()
        active = bool(info.regIsActive)
        state = RegistrationState(
            registered=active,
            last_status_code=int(prm.code) or None,
            expires=int(info.regExpiresSec) if active else 0,
            reason=str(prm.reason),
        )
        self._owner.registration_changed(state)


class _Call(pj.Call):  # type: ignore[misc]
    def __init__(self, owner: SipEndpoint, account: _Account, call_id: int, key: int, pipe: MediaPipe) -> None:
        super().__init__(account, call_id)
        self._owner = owner
        self.key = key
        self.pipe = pipe
        self.port: AudioPort | None = None

    def release(self) -> None:
        """Destroy the port (off the bridge) and the call (worker thread, library running)."""
        _destroy(self.port)
        _destroy(self)

    @_guarded
    def onCallState(self, prm: Any) -> None:  # worker
        info = self.getInfo()
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED:  # the caller's ACK came
            self._owner.notify(self._owner.listener.confirmed, self.key)
        elif info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self._owner.ended(self, info.lastStatusCode, info.lastReason)

    @_guarded
    def onCallSdpCreated(self, prm: Any) -> None:  # worker, before an offer is answered
        if prm.remSdp.wholeSdp:
            narrowed = narrow_answer(prm.sdp.wholeSdp, prm.remSdp.wholeSdp)
            if narrowed is not None:
                prm.sdp.wholeSdp = narrowed

    @_guarded
    def onCallMediaState(self, prm: Any) -> None:  # worker, after every (re-)negotiation
        """Connect the call's audio to its port both ways. A re-INVITE (hold, unhold) may give
        the stream a new bridge slot, so this runs every time; connecting is idempotent."""
        info = self.getInfo()
        live = (pj.PJSUA_CALL_MEDIA_ACTIVE, pj.PJSUA_CALL_MEDIA_REMOTE_HOLD)
        for index, media in enumerate(info.media):
            if media.type != pj.PJMEDIA_TYPE_AUDIO or media.status not in live:
                continue
            if self.port is None:
                self.port = AudioPort(self.pipe, f"inzwa-{self.key}")
            audio = self.getAudioMedia(index)
            audio.startTransmit(self.port)
            self.port.startTransmit(audio)
            codec = self.getStreamInfo(index).codecName
            held = media.status == pj.PJSUA_CALL_MEDIA_REMOTE_HOLD
            log.info("sip media", extra={"sip_call": self.key, "codec": codec, "held": held})

    @_guarded
    def onStreamDestroyed(self, prm: Any) -> None:  # worker, while the stream still exists
        index = prm.streamIdx
        stat = self.getStreamStat(index)
        rx, tx = stat.rtcp.rxStat, stat.rtcp.txStat
        stats = RtpStats(
            codec=str(self.getStreamInfo(index).codecName),
            rx_packets=int(rx.pkt),
            rx_lost=int(rx.loss),
            rx_discarded=int(rx.discard),
            rx_jitter_ms=round(rx.jitterUsec.mean / 1000, 2),
            tx_packets=int(tx.pkt),
        )
        self._owner.notify(self._owner.listener.media_stats, self.key, stats)

    @_guarded
    def onDtmfDigit(self, prm: Any) -> None:  # media thread (RFC 4733) or worker (SIP INFO)
        self._owner.notify(self._owner.listener.dtmf, self.key, prm.digit)

    @_guarded
    def onCallTransferStatus(self, prm: Any) -> None:  # worker: our REFER's answer, then NOTIFYs
        listener = self._owner.listener
        self._owner.notify(listener.transfer_status, self.key, prm.statusCode, prm.reason, prm.finalNotify)


class SipEndpoint:
    """The pjsua2 library, its transports and its calls, run by one worker thread.

    ``start`` and the commands are called on the asyncio loop; the ``listener`` hears about
    calls on the loop too. Calls are named by ``key``, a number this endpoint gives each
    incoming call (pjsua2's own call ids are reused as soon as a call ends).
    """

    _instance_lock = threading.Lock()
    _running = False  # pjsua2 allows one endpoint per process

    def __init__(self, listener: Listener, config: EndpointConfig) -> None:
        self.listener = listener
        self.config = config
        self.port: int | None = None
        """The bound SIP port (UDP and TCP) once started."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._stopping = threading.Event()
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = queue.SimpleQueue()
        self._jobs_lock = threading.Lock()
        self._jobs_closed = False
        self._keys = itertools.count(1)
        # Worker-thread state: pjsua2 objects kept alive while pjsua2 uses them.
        self._lib: _Library | None = None
        self._account: _Account | None = None
        self._calls: dict[int, _Call] = {}
        self._finished: list[int] = []
        self.registration: RegistrationState | None = None
        """The latest registration state (replaced whole, so any thread may read it); None when
        no registrar is configured."""
        if config.registration is not None:
            self.registration = RegistrationState(registered=False, last_status_code=None, expires=0)

    # ----- loop side -----
    async def start(self) -> None:
        """Start the worker and wait until SIP is listening; raises what start-up raised."""
        with SipEndpoint._instance_lock:
            if SipEndpoint._running:
                raise RuntimeError("pjsua2 allows one SIP endpoint per process, and one is running")
            SipEndpoint._running = True
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="pjsua2", daemon=True)
        self._thread.start()
        try:
            self.port = await asyncio.wrap_future(self._ready)
        except BaseException:  # start-up failed, or was cancelled: the worker must end either way
            self._stopping.set()
            await asyncio.to_thread(self._thread.join)
            raise
        log.info("sip listening", extra={"host": self.config.host, "port": self.port, "transports": "udp,tcp"})

    async def stop(self) -> None:
        """Hang up what is left, destroy the library and end the worker."""
        if self._thread is None:
            return
        self._stopping.set()
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    def notify(self, callback: Callable[P, None], *args: P.args, **kwargs: P.kwargs) -> None:
        """Run ``callback`` on the loop, from any thread; never waits."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
                self._loop.call_soon_threadsafe(functools.partial(callback, *args, **kwargs))

    def _command(self, job: Callable[[], T]) -> asyncio.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._jobs_lock:
            if self._jobs_closed:
                future.set_exception(EndpointClosed("the SIP endpoint has stopped"))
            else:
                self._jobs.put((job, future))
        return asyncio.wrap_future(future)

    async def answer(self, key: int, status: int, headers: Mapping[str, str] | None = None) -> bool:
        """Send a response to the call's INVITE; False if the call is gone or pjsua2 refused."""
        return await self._command(functools.partial(self._answer, key, status, headers or {}))

    async def hangup(self, key: int) -> bool:
        """BYE for an answered call (CANCEL is the caller's; a ringing call gets 603)."""
        return await self._command(functools.partial(self._hangup, key))

    async def transfer(self, key: int, uri: str) -> bool:
        """Send a blind-transfer REFER; its progress comes to ``Listener.transfer_status``."""
        return await self._command(functools.partial(self._transfer, key, uri))

    # ----- worker thread -----
    def _run(self) -> None:
        try:
            self._ready.set_result(self._open())
        except BaseException as exc:
            log.exception("sip endpoint failed to start")
            self._ready.set_exception(exc)
            self._teardown()
            return
        try:
            while not self._stopping.is_set():
                assert self._lib is not None
                self._lib.libHandleEvents(POLL_MS)
                self._run_jobs()
                self._reap()
        except Exception:
            log.exception("sip endpoint stopped on an error; SIP calls are no longer answered")
        finally:
            self._teardown()

    def _open(self) -> int:
        """Create, configure and start pjsua2; returns the bound SIP port."""
        config = self.config
        self._lib = lib = _Library(self)
        # pjlib logs its own start raw to stdout before libInit hands it the log writer below;
        # its level is a plain variable that may be set before pjlib exists.
        ctypes.CDLL(pj._pjsua2.__file__).pj_log_set_level(0)
        lib.libCreate()
        ep = pj.EpConfig()
        ep.uaConfig.threadCnt = 0  # SIP events are polled by this thread (libHandleEvents)
        ep.uaConfig.mainThreadOnly = False
        ep.uaConfig.maxCalls = MAX_CALLS
        ep.uaConfig.userAgent = USER_AGENT
        writer = _LogWriter()
        writer.__disown__()  # pjsua2's from here: libDestroy deletes it (see the module docstring)
        ep.logConfig.writer = writer
        ep.logConfig.level = ep.logConfig.consoleLevel = config.log_level
        ep.logConfig.decor = pj.PJ_LOG_HAS_SENDER
        media = ep.medConfig
        media.clockRate = media.sndClockRate = PIPELINE_RATE
        media.channelCount = 1
        media.audioFramePtime = FRAME_MS
        media.noVad = True  # steady RTP: no silence suppression towards phones that expect it
        media.ecTailLen = 0  # no sound device, so no echo to cancel
        media.quality = RESAMPLE_QUALITY
        lib.libInit(ep)
        lib.audDevManager().setNullDev()  # the bridge's clock ticks without any sound card

        transport = pj.TransportConfig()
        transport.boundAddress = config.host
        transport.port = config.port
        udp = lib.transportCreate(pj.PJSIP_TRANSPORT_UDP, transport)
        transport.port = port = int(lib.transportGetInfo(udp).localName.rsplit(":", 1)[1])
        lib.transportCreate(pj.PJSIP_TRANSPORT_TCP, transport)
        lib.libStart()
        for codec in lib.codecEnum2():
            lib.codecSetPriority(codec.codecId, CODEC_PRIORITIES.get(codec.codecId, 0))

        account = pj.AccountConfig()
        account.idUri = f"sip:inzwa@{config.host}:{port}"
        account.mediaConfig.transportConfig.boundAddress = config.host
        account.mediaConfig.transportConfig.port = config.rtp_port
        registration = config.registration
        if registration is not None:
            account.idUri = registration.aor
            account.regConfig.registrarUri = registration.registrar
            account.regConfig.timeoutSec = registration.expires_s
            account.regConfig.registerOnAdd = True
            account.sipConfig.authCreds.append(
                pj.AuthCredInfo("digest", registration.realm, registration.username, 0, registration.password)
            )
        self._account = _Account(self)
        self._account.create(account)  # the only account: it takes every INVITE that reaches us
        if registration is not None:
            log.info("sip registering", extra={"registrar": registration.registrar, "aor": registration.aor})
        return port

    def _run_jobs(self) -> None:
        while True:
            try:
                job, future = self._jobs.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job())
            except Exception as exc:
                future.set_exception(exc)

    def _reap(self) -> None:
        """Drop the pjsua2 objects of calls that ended during the last poll."""
        for key in self._finished:
            call = self._calls.pop(key, None)
            if call is not None:
                call.release()
        self._finished.clear()

    def _teardown(self) -> None:
        with self._jobs_lock:
            self._jobs_closed = True
        while True:
            try:
                _, future = self._jobs.get_nowait()
            except queue.Empty:
                break
            if future.set_running_or_notify_cancel():
                future.set_exception(EndpointClosed("the SIP endpoint has stopped"))
        lib = self._lib
        if lib is not None:
            try:
                self._hang_up_all(lib)
            finally:
                for call in self._calls.values():
                    call.release()
                self._calls.clear()
                _destroy(self._account)
                self._account = None
                try:
                    # The BYEs went out above; NO_NETWORK skips pjsua2's fixed one-second wait.
                    lib.libDestroy(pj.PJSUA_DESTROY_NO_NETWORK)
                except pj.Error as exc:
                    log.warning("pjsua2 destroy failed", extra={"error": exc.info()})
                _destroy(lib)
                self._lib = None
        with SipEndpoint._instance_lock:
            SipEndpoint._running = False

    def _hang_up_all(self, lib: _Library) -> None:
        if not self._calls:
            return
        lib.hangupAllCalls()
        deadline = time.monotonic() + HANGUP_WAIT_S
        while self._calls and time.monotonic() < deadline:
            lib.libHandleEvents(POLL_MS)
            self._reap()

    def registration_changed(self, state: RegistrationState) -> None:
        self.registration = state
        self.notify(self.listener.registration, state)

    def incoming(self, account: _Account, prm: Any) -> None:
        key = next(self._keys)
        assert self._loop is not None
        pipe = MediaPipe(self._loop)
        call = _Call(self, account, prm.callId, key, pipe)
        self._calls[key] = call
        source = str(prm.rdata.srcAddress)
        if not source_allowed(source, self.config.allowed_sources):
            # The loop never hears of this call (its DISCONNECTED reaches ``ended`` with a key
            # the listener does not know); the call object lives until then, like any other.
            self.notify(self.listener.forbidden, source)
            self._answer(key, pj.PJSIP_SC_FORBIDDEN, {})
            return
        info = call.getInfo()
        message = IncomingCall(
            request_uri=request_uri(prm.rdata.wholeMsg),
            from_header=info.remoteUri,
            call_id=info.callIdString,
            source=prm.rdata.srcAddress,
        )
        # Told before ringing: if ringing fails and the call ends, the loop hears it in order.
        self.notify(self.listener.incoming, key, message, pipe)
        self._answer(key, pj.PJSIP_SC_RINGING, {})

    def ended(self, call: _Call, status: int, reason: str) -> None:
        self._finished.append(call.key)
        self.notify(self.listener.ended, call.key, status, reason)

    def _answer(self, key: int, status: int, headers: Mapping[str, str]) -> bool:
        call = self._calls.get(key)
        if call is None:
            return False
        prm = pj.CallOpParam()
        prm.statusCode = status
        for name, value in headers.items():
            header = pj.SipHeader()
            header.hName, header.hValue = name, value
            prm.txOption.headers.append(header)
        try:
            call.answer(prm)
        except pj.Error as exc:
            log.info("sip answer failed", extra={"sip_call": key, "status": status, "error": exc.info()})
            return False
        return True

    def _hangup(self, key: int) -> bool:
        call = self._calls.get(key)
        if call is None:
            return False
        try:
            info = call.getInfo()
            if info.state == pj.PJSIP_INV_STATE_CONNECTING and info.role == pj.PJSIP_ROLE_UAS:
                # Our 200 OK is not acknowledged: pjsip would hold the BYE until an ACK that may
                # never come (its 32 s timer), keeping one of the four call slots. Send it now.
                prm = pj.CallSendRequestParam()
                prm.method = "BYE"
                call.sendRequest(prm)
                return True
            call.hangup(pj.CallOpParam())
        except pj.Error as exc:
            log.info("sip hangup failed", extra={"sip_call": key, "error": exc.info()})
            return False
        return True

    def _transfer(self, key: int, uri: str) -> bool:
        call = self._calls.get(key)
        if call is None:
            return False
        try:
            call.xfer(uri, pj.CallOpParam(True))
        except pj.Error as exc:
            log.warning("sip transfer not sent", extra={"sip_call": key, "target": uri, "error": exc.info()})
            return False
        return True
