"""Which gateway process took a call, and ending the calls of one that died.

Every call record names its gateway instance (``INZWA_INSTANCE_ID``). On its own SQLite file a
gateway that starts knows every open call is a dead predecessor's. On a shared database an open
call may be another gateway's live one, so there a gateway ends only the calls of a gateway known
to be dead: each holds a lease in ``gateway_instances``, renewed every ``heartbeat_s`` seconds for
``MISSED_BEATS`` beats (the row carries its own expiry, so gateways with different settings still
agree). The first live gateway to see a lease expired (killed, frozen, cut off from the database)
deletes it and ends that gateway's open calls, in one transaction under an advisory lock, so it
happens once however many gateways see it. A clean shutdown gives its lease back.

Leases are timed by the database server's clock (a clock can be injected, for tests), so gateways
whose clocks disagree still agree on whose lease ran out.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from inzwa_voice.store.backend import Dialect, Session
from inzwa_voice.store.records import StoreError, to_json

if TYPE_CHECKING:
    from inzwa_voice.store.call_store import CallStore

log = logging.getLogger("inzwa_voice.store")

HEARTBEAT_S = 10.0
MISSED_BEATS = 3
"""A gateway silent for this many of its own beats is taken for dead."""

Clock = Callable[[], float]

_ORPHANED = "c.instance IS NOT NULL AND NOT EXISTS (SELECT 1 FROM gateway_instances g WHERE g.instance = c.instance)"
"""Over calls ``c``: a call whose gateway holds no lease (calls from before instances were
recorded have none and are left to retention: their gateway may be an older one still running)."""


def default_instance_id() -> str:
    """The host name (a container's or pod's name) and a suffix new at each start, so a restarted
    gateway is a new instance and two processes on one host are apart."""
    return f"{socket.gethostname()[:100] or 'gateway'}-{secrets.token_hex(4)}"


def now(db: Session, dialect: Dialect, clock: Clock | None) -> float:
    """The time leases are judged by: ``clock`` when given, else the database server's."""
    if clock is not None:
        return clock()
    return float(db.fetch(f"SELECT {dialect.now} AS now")[0]["now"])


def renew(db: Session, dialect: Dialect, instance: str, lease_s: float, clock: Clock | None) -> bool:
    """Hold this gateway's lease for ``lease_s`` more seconds; False when it was not held (the
    first beat, or others took this gateway for dead and ended its calls)."""
    at = now(db, dialect, clock)
    sql = "UPDATE gateway_instances SET beat_at = ?, expires_at = ? WHERE instance = ?"
    if db.execute(sql, (at, at + lease_s, instance)):
        return True
    sql = "INSERT INTO gateway_instances (instance, started_at, beat_at, expires_at) VALUES (?, ?, ?, ?)"
    db.execute(sql, (instance, at, at, at + lease_s))
    return False


def release(db: Session, instance: str) -> None:
    """Give the lease back at a clean shutdown: a call it left open is ended at the next
    heartbeat of any other gateway, without waiting for the lease to expire."""
    db.execute("DELETE FROM gateway_instances WHERE instance = ?", (instance,))


def end_calls_of_dead(
    db: Session, dialect: Dialect, instance: str, clock: Clock | None, reason: str, *, own: bool
) -> int:
    """Delete the expired leases and end the open calls of every gateway without a lease; with
    ``own``, this instance's open calls too (at start-up they are a previous run's)."""
    with db.transaction(dialect.write_begin):
        if dialect.reap_lock is not None:
            db.execute(dialect.reap_lock)
        # A beat committed meanwhile makes PostgreSQL re-check the row: a late lease is kept.
        sql = "DELETE FROM gateway_instances WHERE expires_at < ? AND instance <> ?"
        db.execute(sql, (now(db, dialect, clock), instance))
        if own:
            ended = end_open_calls(db, dialect, reason, f"({_ORPHANED} OR c.instance = ?)", (instance,))
        else:
            ended = end_open_calls(db, dialect, reason, _ORPHANED)
    for dead, calls in Counter(ended).items():
        log.warning(
            "ended the open calls of a gateway that stopped",
            extra={"instance": dead, "calls": calls, "by_instance": instance},
        )
    return len(ended)


def end_open_calls(
    db: Session, dialect: Dialect, reason: str, where: str = "TRUE", params: Sequence[object] = ()
) -> list[str | None]:
    """End the open calls that match ``where`` (over calls ``c``) with disposition ``error`` and an
    ``error`` event, at the last moment each was heard of; the instances of the calls ended.
    Runs inside the caller's write transaction; the rows are locked until it ends."""
    last = f"""{dialect.greatest}(c.started_at,
                  coalesce((SELECT max(ended_at) FROM turns WHERE call_id = c.id), 0),
                  coalesce((SELECT max(at) FROM events WHERE call_id = c.id), 0))"""
    sql = f"SELECT c.id, c.instance, {last} AS last FROM calls c WHERE c.ended_at IS NULL AND {where}"
    rows = db.fetch(sql + dialect.lock_rows, params)
    data = to_json({"reason": reason})
    event = "INSERT INTO events (call_id, kind, at, data) VALUES (?, 'error', ?, ?)"
    for row in rows:
        db.execute(event, (row["id"], row["last"], data))
        db.execute("UPDATE calls SET ended_at = ?, disposition = 'error' WHERE id = ?", (row["last"], row["id"]))
    return [row["instance"] for row in rows]


async def keep_alive(store: CallStore, *, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
    """Every ``store.heartbeat_s`` seconds, renew this gateway's lease and end the calls of dead
    gateways, until cancelled; a failure is logged and tried again at the next beat."""
    while True:
        await sleep(store.heartbeat_s)
        try:
            held = await store.beat()
            await store.end_calls_of_dead_gateways()
        except StoreError as exc:
            log.warning("call store heartbeat failed", extra={"instance": store.instance, "error": str(exc)})
            continue
        if not held:
            log.error(
                "this gateway's heartbeat had expired: other gateways took it for dead and ended its open calls",
                extra={"instance": store.instance},
            )
