"""The SIP leg: calls from phones, PBXs and trunks, answered by a pjsua2 endpoint in this process.

An INVITE rings at once (180), is routed by the dialplan on its Request-URI user (the number
dialled) and From user (the caller), starts a call through the one admission path
(``legs.admission``), and is answered (200 OK); the caller's Call-ID is the call's
``external_id``. The call lives in one task from INVITE to hang-up (pjsua2 only reports through
callbacks, which set what that task waits on), so the call is hung up on every path. After the
answer:

* BYE from the caller ends the call (``caller_hangup``); a call that ends (goodbye, idle,
  admin hangup, transfer) sends BYE. CANCEL before the answer gets pjsua2's 487, and a call
  that was starting meanwhile ends at once.
* re-INVITEs (hold, unhold, a new codec) are answered by pjsua2; the call's audio follows the
  stream to its new bridge slot (``sip.endpoint``).
* DTMF, RFC 4733 or SIP INFO ``application/dtmf-relay``, becomes ``Call.dtmf``.
* Bot audio counts as played when pjsua2's conference bridge takes it (``sip.media``).
* A transfer to a human (DTMF 0, a crisis) is a blind REFER to the profile's transfer target.
  It succeeded when the caller's side reports the new call answered (a final NOTIFY with a 2xx
  sipfrag); then the call ends and we hang up. A refused REFER, a failed or missing final
  report keeps the caller with the bot: a helpline must not drop a caller on a failed transfer.
  Either way the outcome is a ``transfer_result`` event in the call record.

Refusals: the build takes 4 calls; pjsua2 answers a fifth INVITE ``486 Busy Here`` itself
(counted as ``calls_rejected{leg="sip",reason="capacity"}``). 486 is pjsua2's choice, made
before any callback; it also suits a proxy in front (Kamailio's dispatcher fails over on 486
like on 503 when told to). A call the call manager refuses (its ``max_sessions``, or a
shutdown drain) gets ``503 Service Unavailable`` with ``Retry-After``: the server, not the
callee, is busy, and a proxy tries another gateway. An offer without PCMU, PCMA or G.722 gets
``488 Not Acceptable Here``. A caller that does not ACK our 200 OK within ``handshake_timeout_s``
is hung up (``call_errors{code="ack_timeout"}``): its session and pjsua2's call slot are freed
then, not after pjsip's 32 s ACK timeout.

Access: ``sip_allowed_sources`` (IPs, CIDRs) limits who may call; an INVITE from elsewhere gets
``403 Forbidden`` from the endpoint before any call (``calls_rejected{reason="forbidden"}``).
A trunk that wants us registered gets ``sip_registrar`` and digest credentials; the state is in
``/health`` (:meth:`SipServer.registration_health`) and the gauge ``inzwa_sip_registered``.

Media quality: every media stream's RTP counts (received, lost, discarded, jitter, sent) go to
the call record as an ``rtp`` event and to ``inzwa_sip_rtp_packets`` when the stream ends.

RTP from elsewhere: pjmedia takes a call's RTP from the address the caller's SDP gave. Packets
from any other address are dropped unseen (not played, not counted, no answer sent there) for as
long as the caller's own packets keep coming. It moves to a new source only after 10 packets in a
row from it with none from the caller between them, or at once if the caller has sent nothing
yet: symmetric RTP, which phones behind NAT need. A deployment that must rule that out lets only
its trunk's media addresses reach ``sip_rtp_port`` and up (``deploy/README.md``).

Shutdown drains: new calls get 503, live ones may finish for ``sip_drain_timeout_s``, then the
gateway hangs up the rest (``shutdown``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator, Coroutine
from typing import Any, Final

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge

from inzwa_voice.config import Settings
from inzwa_voice.conversation.ports import Call, CallRejected, CallStarter
from inzwa_voice.core import DTMF_DIGITS, PIPELINE_RATE, CallInfo, LegKind
from inzwa_voice.legs.admission import admitted
from inzwa_voice.legs.paced import CallerAudio, OutputLeg
from inzwa_voice.sip.endpoint import (
    EndpointClosed,
    EndpointConfig,
    IncomingCall,
    Registration,
    RegistrationState,
    RtpStats,
    SipEndpoint,
    parse_sources,
)
from inzwa_voice.sip.media import MediaPipe
from inzwa_voice.sip.uri import refer_uri, uri_user

log = logging.getLogger(__name__)

RETRY_AFTER_S: Final = {"overloaded": 5, "draining": 60}
"""Seconds a refused caller's proxy should wait, by ``CallRejected.code``."""
REJECTED: Final = {486: "capacity", 488: "codec"}
"""pjsua2's own refusals (``onRejectedIncomingCall``) as ``calls_rejected`` reasons."""
TRANSFER_TIMEOUT_S: Final = 45.0
"""How long a transfer may take to be reported done: the target may ring for a while."""
SIP_DTMF_DIGITS: Final = DTMF_DIGITS | frozenset("ABCD")
"""RFC 4733 and SIP INFO carry A-D too: valid on the wire (not counted as ``bad_dtmf``), and
handed to the call, which acts on the keypad digits only."""
MAX_CALL_ID: Final = 128

_GAUGES: weakref.WeakKeyDictionary[CollectorRegistry, Gauge] = weakref.WeakKeyDictionary()


def registered_gauge(registry: CollectorRegistry) -> Gauge:
    """``inzwa_sip_registered`` on this registry, made once: several apps may share one metrics
    registry (their engines'), and a registry refuses a second metric of the same name."""
    gauge = _GAUGES.get(registry)
    if gauge is None:
        gauge = _GAUGES[registry] = Gauge(
            "inzwa_sip_registered",
            "1 while the SIP trunk registration is active, else 0 (also 0 when no registrar is set)",
            registry=registry,
        )
    return gauge


class SipLeg(OutputLeg):
    """One SIP call as a :class:`~inzwa_voice.conversation.ports.Leg`; its audio is a ``MediaPipe``."""

    kind: LegKind = "sip"
    _out: MediaPipe

    def __init__(self, key: int, endpoint: SipEndpoint, pipe: MediaPipe) -> None:
        self.key = key
        self.call: Call | None = None
        self.gone = False
        """The far end hung up (BYE, CANCEL) or the call failed: nothing more goes out."""
        self._endpoint = endpoint
        self._out = pipe
        self._closed = False
        self._over = asyncio.Event()
        self.acknowledged = asyncio.Event()
        """The caller's ACK for our 200 OK came: the call is established."""
        self._transfer: asyncio.Future[tuple[int, str]] | None = None

    def attach(self, call: Call) -> None:
        self.call = call
        self._out.connect(CallerAudio(call.feed, PIPELINE_RATE).push)

    async def send_event(self, event: dict[str, object]) -> None:
        """SIP carries no JSON events: audio, DTMF, transfer and hangup are all there is."""

    async def close(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self._over.set()
        self._out.close()
        if not self.gone:
            with contextlib.suppress(EndpointClosed):
                await self._endpoint.hangup(self.key)

    def far_end_gone(self) -> None:
        self.gone = True
        self._over.set()
        self._out.close()
        self.transfer_status(0, "the call ended", final=True)

    async def over(self) -> None:
        """Return once either side has hung up."""
        await self._over.wait()

    async def wait_for_ack(self, timeout_s: float) -> bool:
        """True once the caller acknowledged our 200 OK; False if it did not in ``timeout_s``
        (or hung up first). Without it the call is not established, and pjsip would keep it,
        and one of the build's four call slots, for its 32 s ACK timeout."""
        ack = asyncio.ensure_future(self.acknowledged.wait())
        over = asyncio.ensure_future(self._over.wait())
        try:
            await asyncio.wait({ack, over}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ack.cancel()
            over.cancel()
        return self.acknowledged.is_set()

    async def transfer(self, target: str) -> bool:
        """Blind transfer by REFER; True once the caller's side reports the target answered."""
        call = self.call
        if call is None or self.gone or self._transfer is not None:
            return False
        uri = refer_uri(target)
        self._transfer = asyncio.get_running_loop().create_future()
        status, reason = 0, "REFER not sent"
        try:
            if await self._endpoint.transfer(self.key, uri):
                async with asyncio.timeout(TRANSFER_TIMEOUT_S):
                    status, reason = await self._transfer
        except TimeoutError:
            reason = f"no final report within {TRANSFER_TIMEOUT_S:.0f} s"
        except EndpointClosed:
            reason = "the SIP endpoint stopped"
        finally:
            self._transfer = None
        ok = 200 <= status < 300
        outcome: dict[str, object] = {"target": uri, "ok": ok, "status": status, "reason": reason}
        log.info("sip transfer", extra={"call_id": call.id, **outcome})
        await call.record_event("transfer_result", outcome)
        return ok

    def transfer_status(self, status: int, reason: str, final: bool) -> None:
        """Our REFER's answer and the NOTIFYs after it; only a final report ends ``transfer``.
        A REFER refused outright (4xx-6xx) is final too."""
        if self._transfer is not None and not self._transfer.done() and (final or status >= 300):
            self._transfer.set_result((status, reason))


class SipServer:
    """Runs the pjsua2 endpoint and turns its calls into calls; the endpoint's listener."""

    def __init__(self, calls: CallStarter, config: EndpointConfig, *, ack_timeout_s: float = 5.0) -> None:
        self.calls = calls
        self.ack_timeout_s = ack_timeout_s
        self.endpoint = SipEndpoint(self, config)
        self._legs: dict[int, SipLeg] = {}
        self._no_calls = asyncio.Event()
        self._no_calls.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.registered = registered_gauge(calls.metrics.registry)

    @property
    def port(self) -> int | None:
        """The bound SIP port (UDP and TCP) once started."""
        return self.endpoint.port

    @property
    def calls_in_progress(self) -> int:
        """SIP calls pjsua2 still holds (ringing, answered or hanging up): its slots in use."""
        return len(self._legs)

    async def start(self) -> None:
        await self.endpoint.start()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.endpoint.stop()

    async def drain(self, timeout_s: float) -> None:
        """Stop taking calls (503 from now on), let live ones finish, then hang up the rest."""
        self.calls.draining = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._no_calls.wait()
        for leg in list(self._legs.values()):
            if leg.call is not None:
                await leg.call.end("shutdown")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _error(self, code: str) -> None:
        self.calls.metrics.call_errors.labels("sip", code).inc()

    # ----- the endpoint's listener (on the loop) -----
    def incoming(self, key: int, call: IncomingCall, pipe: MediaPipe) -> None:
        leg = SipLeg(key, self.endpoint, pipe)
        self._legs[key] = leg
        self._no_calls.clear()
        self._spawn(self._serve(leg, call))

    async def _serve(self, leg: SipLeg, incoming: IncomingCall) -> None:
        """One SIP call from its INVITE to its end, in one task: admitted, answered, then held
        until either side hangs up. pjsua2's callbacks only set what this task waits on, so
        leaving the admitted block hangs the call up on every path (BYE, CANCEL, our hang-up,
        a failed answer, the endpoint stopping)."""
        info = CallInfo(
            leg="sip",
            caller=uri_user(incoming.from_header),
            dialled=uri_user(incoming.request_uri),
            external_id=incoming.call_id[:MAX_CALL_ID],
        )
        extra = {"sip_call": leg.key, "caller": info.caller, "dialled": info.dialled, "source": incoming.source}

        async def refuse(exc: CallRejected) -> None:
            log.info("sip call refused", extra={**extra, "reason": exc.code})
            await self.endpoint.answer(leg.key, 503, {"Retry-After": str(RETRY_AFTER_S.get(exc.code, 5))})

        try:
            async with admitted(self.calls, leg, info, refuse) as call:
                if call is None:
                    return
                leg.attach(call)
                log.info("sip call", extra={**extra, "call_id": call.id})
                if leg.gone:  # CANCEL (or a dropped INVITE) while the call was starting
                    return
                if not await self.endpoint.answer(leg.key, 200):
                    if not leg.gone:
                        self._error("answer_failed")
                        await call.end("error")
                    return
                if not await leg.wait_for_ack(self.ack_timeout_s):
                    if not leg.gone:  # no ACK in time: hang up now, the slot is free at once
                        self._error("ack_timeout")
                        log.info("sip call not acknowledged", extra={**extra, "call_id": call.id})
                        await call.end("error")
                    return
                await leg.over()
        except EndpointClosed:
            log.info("sip endpoint stopped during a call", extra=extra)
        except Exception:
            if leg.call is not None:
                log.exception("sip call failed", extra=extra)
                return
            log.exception("sip call failed to start", extra=extra)
            self._error("start_failed")
            with contextlib.suppress(EndpointClosed):
                await self.endpoint.answer(leg.key, 500)

    def ended(self, key: int, status: int, reason: str) -> None:
        leg = self._legs.pop(key, None)
        if not self._legs:
            self._no_calls.set()
        if leg is None:
            return
        leg.far_end_gone()  # its task leaves the admitted block, which hangs the call up
        log.info("sip call ended", extra={"sip_call": key, "status": status, "reason": reason})

    def confirmed(self, key: int) -> None:
        leg = self._legs.get(key)
        if leg is not None:
            leg.acknowledged.set()

    def dtmf(self, key: int, digit: str) -> None:
        leg = self._legs.get(key)
        if leg is None or leg.call is None:
            return
        if digit in SIP_DTMF_DIGITS:
            leg.call.dtmf(digit)
        else:
            self._error("bad_dtmf")

    def transfer_status(self, key: int, status: int, reason: str, final: bool) -> None:
        leg = self._legs.get(key)
        if leg is not None:
            leg.transfer_status(status, reason, final)

    def forbidden(self, source: str) -> None:
        self.calls.metrics.calls_rejected.labels("sip", "forbidden").inc()
        log.info("sip call refused: source not allowed", extra={"source": source, "status": 403})

    def registration(self, state: RegistrationState) -> None:
        """pjsua2 retries and refreshes on its own; this only reports, so a lost registration
        (a trunk that can no longer reach us) shows in metrics and ``/health``."""
        self.registered.set(1 if state.registered else 0)
        level = logging.INFO if state.registered else logging.WARNING
        log.log(level, "sip registration", extra=state.as_dict())

    def registration_health(self) -> dict[str, object] | None:
        """The trunk registration for ``/health`` (``registered``, ``last_status_code``,
        ``expires``, ``reason``); None when no registrar is configured."""
        state = self.endpoint.registration
        return None if state is None else state.as_dict()

    def media_stats(self, key: int, stats: RtpStats) -> None:
        """A media stream ended: its packet counts go to ``inzwa_sip_rtp_packets`` and, as an
        ``rtp`` event, to the call record (one per stream: a re-INVITE may replace it). They
        come before the SIP call's end, but after the call ended when the hang-up was ours."""
        packets = self.calls.metrics.rtp_packets
        packets.labels("rx", "received").inc(stats.rx_packets)
        packets.labels("rx", "lost").inc(stats.rx_lost)
        packets.labels("rx", "discarded").inc(stats.rx_discarded)
        packets.labels("tx", "sent").inc(stats.tx_packets)
        leg = self._legs.get(key)
        if leg is not None and leg.call is not None:
            self._spawn(leg.call.record_event("rtp", stats.as_dict()))

    def rejected(self, status: int, reason: str) -> None:
        self.calls.metrics.calls_rejected.labels("sip", REJECTED.get(status, "invalid")).inc()
        log.info("sip call refused by pjsua2", extra={"status": status, "reason": reason})


SIP = web.AppKey("sip", SipServer)


def registration(settings: Settings) -> Registration | None:
    """The trunk registration the settings ask for, or None without ``sip_registrar``.

    A username without a password (or the reverse) is a mistake, not anonymous registration: it
    fails here, at start-up.
    """
    if not settings.sip_registrar:
        return None
    password = settings.sip_password.get_secret_value() if settings.sip_password is not None else ""
    if not settings.sip_username or not password:
        raise ValueError("sip_registrar needs sip_username and sip_password")
    return Registration(
        registrar=settings.sip_registrar,
        username=settings.sip_username,
        password=password,
        realm=settings.sip_realm,
        expires_s=settings.sip_register_expires_s,
    )


def setup(app: web.Application, calls: CallStarter, settings: Settings) -> None:
    """Run the SIP endpoint beside the HTTP app; call before the app's own ``on_shutdown``
    handler that ends all calls, so the drain comes first.

    The server object is stored under :data:`SIP` at once (its ``port`` is set when it listens),
    enabled or not: ``/health`` reads its port and registration there. Start-up fails if the
    port is taken, like AudioSocket's.
    """
    config = EndpointConfig(
        host=settings.sip_host,
        port=settings.sip_port,
        rtp_port=settings.sip_rtp_port,
        log_level=4 if settings.log_level == "DEBUG" else 2,
        allowed_sources=parse_sources(settings.sip_allowed_sources),
        registration=registration(settings),
    )
    server = SipServer(calls, config, ack_timeout_s=settings.handshake_timeout_s)
    app[SIP] = server
    if not settings.sip_enabled:
        return

    async def endpoint(app: web.Application) -> AsyncIterator[None]:
        await server.start()
        yield
        await server.stop()

    async def drain(app: web.Application) -> None:
        await server.drain(settings.sip_drain_timeout_s)

    app.cleanup_ctx.append(endpoint)
    app.on_shutdown.append(drain)
