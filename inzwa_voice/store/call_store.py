"""The call store: every call, turn and event, written the moment it happens.

A helpline must be able to say what was said on a call even when the gateway died during it, so
nothing waits for the call to end: each write is its own short transaction, committed before it
is acknowledged. One writer thread runs the writes in order; a second thread owns a read-only
connection for the admin API, so a long listing never delays a turn being written (``worker``).

The SQL is written once for both backends (``sqlite``: one file per gateway; ``postgres``: one
database shared by several); ``Dialect`` holds the few spellings that differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from pathlib import Path

from inzwa_voice.core import CallInfo
from inzwa_voice.store.backend import Backend, Session
from inzwa_voice.store.liveness import (
    HEARTBEAT_S,
    MISSED_BEATS,
    Clock,
    default_instance_id,
    end_calls_of_dead,
    end_open_calls,
    release,
    renew,
)
from inzwa_voice.store.postgres import open_postgres
from inzwa_voice.store.recordings import delete_recordings
from inzwa_voice.store.records import (
    DISPOSITIONS,
    EVENT_KIND,
    MAX_CALL_ID,
    MAX_FIELD,
    Conflict,
    Row,
    StoreError,
    TurnRecord,
    call_dict,
    clip,
    event_dict,
    to_json,
    turn_dict,
    turn_fields,
)
from inzwa_voice.store.sqlite import open_sqlite
from inzwa_voice.store.worker import Worker

WRITE_BACKLOG = 256
READ_BACKLOG = 16
PURGE_BATCH = 200
"""Calls deleted per purge transaction: each batch is one short writer job, so call writes
queued meanwhile run between batches instead of after the whole purge."""

_CALL_SELECT = """SELECT c.*, (SELECT count(*) FROM turns t WHERE t.call_id = c.id) AS turn_count FROM calls c"""
_AGE = "coalesce(ended_at, started_at)"  # the expression the calls_by_age index holds
INTERRUPTED = "the gateway stopped during the call"


class CallStore:
    """The call records of one database: ``await CallStore.open(path)`` (SQLite) or
    ``await CallStore.open_url(url)`` (PostgreSQL).

    ``instance`` names this gateway process in the calls it opens (default: host name and a
    random suffix); on a shared database it beats every ``heartbeat_s`` seconds (``liveness``),
    by ``clock`` when given, else by the database server's clock."""

    def __init__(
        self,
        backend: Backend,
        *,
        instance: str | None = None,
        heartbeat_s: float = HEARTBEAT_S,
        clock: Clock | None = None,
    ) -> None:
        self.path = backend.path
        self.instance = instance or default_instance_id()
        self.heartbeat_s = heartbeat_s
        self._clock = clock
        self._dialect = backend.dialect
        self._writer = Worker("call-store-writer", backend.writer, WRITE_BACKLOG)
        self._reader = Worker("call-store-reader", backend.reader, READ_BACKLOG)

    @classmethod
    async def open(cls, path: Path, *, instance: str | None = None) -> CallStore:
        """Create or upgrade the SQLite file at ``path`` (and its folder); raises ``StoreError``."""
        return cls(await asyncio.to_thread(open_sqlite, path), instance=instance)

    @classmethod
    async def open_url(
        cls, url: str, *, instance: str | None = None, heartbeat_s: float = HEARTBEAT_S, clock: Clock | None = None
    ) -> CallStore:
        """Connect to the PostgreSQL database at ``url``, upgrade its schema and take this
        gateway's heartbeat lease (before any call of its own, so no call is without one);
        raises ``StoreError``."""
        backend = await asyncio.to_thread(open_postgres, url)
        store = cls(backend, instance=instance, heartbeat_s=heartbeat_s, clock=clock)
        try:
            await store.beat()
        except BaseException:
            await store.close()
            raise
        return store

    @property
    def shared(self) -> bool:
        """Whether other gateways write to this database too."""
        return self._dialect.shared

    async def close(self) -> None:
        """Finish the writes already made, give back the heartbeat lease, then close both
        connections; idempotent."""
        if self.shared:
            with contextlib.suppress(StoreError):  # closed already, or the database is gone
                await self._writer.run(functools.partial(release, instance=self.instance))
        await self._writer.close()
        await self._reader.close()

    # --- writes ------------------------------------------------------------------------------------

    async def start_call(self, call_id: str, info: CallInfo, profile: str, started_at: float) -> None:
        if not 0 < len(call_id) <= MAX_CALL_ID:
            raise ValueError(f"a call id is 1 to {MAX_CALL_ID} characters")
        row = (
            call_id,
            info.leg,
            clip(info.caller, MAX_FIELD),
            clip(info.dialled, MAX_FIELD),
            clip(info.external_id, MAX_FIELD),
            to_json(info.params),
            clip(profile, MAX_FIELD),
            started_at,
            self.instance,
        )
        sql = """INSERT INTO calls (id, leg, caller, dialled, external_id, params, profile, started_at, instance)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"""
        await self._write(f"call {call_id!r} is already recorded", sql, row)

    async def add_turn(self, call_id: str, turn: TurnRecord) -> None:
        sql = """INSERT INTO turns (call_id, idx, caller_text, reply_text, reply_full, barged_in, language, safety,
                                    latency_ms, started_at, ended_at, outcome, source)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
        row = (call_id, turn.index, *turn_fields(turn))
        await self._write(f"turn {turn.index} of call {call_id!r}: unknown call or turn already recorded", sql, row)

    async def update_turn(self, call_id: str, turn: TurnRecord) -> None:
        """Rewrite a turn added before (at its endpoint) with how its reply ended."""
        fields = turn_fields(turn)

        def update(db: Session) -> None:
            sql = """UPDATE turns SET caller_text = ?, reply_text = ?, reply_full = ?, barged_in = ?, language = ?,
                                      safety = ?, latency_ms = ?, started_at = ?, ended_at = ?, outcome = ?,
                                      source = ?
                     WHERE call_id = ? AND idx = ?"""
            if not db.execute(sql, (*fields, call_id, turn.index)):
                raise StoreError(f"no turn {turn.index} of call {call_id!r} to update")

        await self._writer.run(update)

    async def add_event(self, call_id: str, kind: str, data: dict[str, object], at: float) -> None:
        """Something that happened on the call: ``dtmf``, ``transfer``, ``barge_in``, ``error``, ``safety``..."""
        if not EVENT_KIND.fullmatch(kind):
            raise ValueError(f"event kind {kind!r} must be a short lower-case identifier such as 'dtmf'")
        sql = "INSERT INTO events (call_id, kind, at, data) VALUES (?, ?, ?, ?)"
        await self._write(f"event of unknown call {call_id!r}", sql, (call_id, kind, at, to_json(data)))

    async def end_call(self, call_id: str, disposition: str, ended_at: float) -> None:
        """Close the record; a second end of the same call keeps the first disposition."""
        if disposition not in DISPOSITIONS:
            raise ValueError(f"disposition {disposition!r} is not one of {', '.join(DISPOSITIONS)}")

        def end(db: Session) -> None:
            sql = "UPDATE calls SET ended_at = ?, disposition = ? WHERE id = ? AND ended_at IS NULL"
            if not db.execute(sql, (ended_at, disposition, call_id)) and not db.fetch(
                "SELECT 1 FROM calls WHERE id = ?", (call_id,)
            ):
                raise StoreError(f"no call {call_id!r} to end")

        await self._writer.run(end)

    async def set_recording(self, call_id: str, path: Path, duration_s: float | None) -> None:
        """Where the call's recording is, and (once the call ended) how long it is."""

        def write(db: Session) -> None:
            sql = "UPDATE calls SET recording_path = ?, recording_duration_s = ? WHERE id = ?"
            if not db.execute(sql, (str(path), duration_s, call_id)):
                raise StoreError(f"no call {call_id!r} to attach a recording to")

        await self._writer.run(write)

    async def end_interrupted_calls(self, reason: str = INTERRUPTED) -> int:
        """End the calls a dead process left open, at the last moment they were heard of.

        Run it at start-up, before taking calls. On a SQLite file (one per gateway) that is every
        open call. On a shared database it is the calls of gateways whose heartbeat lease expired
        and this instance's own (a previous run under the same ``INZWA_INSTANCE_ID``), never a
        live gateway's; ``liveness.keep_alive`` then keeps the lease and ends the calls of
        gateways that die later. How many calls it ended.
        """
        if not self.shared:

            def close(db: Session) -> int:
                with db.transaction(self._dialect.write_begin):
                    return len(end_open_calls(db, self._dialect, reason))

            return await self._writer.run(close)
        return await self._end_calls_of_dead(reason, own=True)

    async def beat(self) -> bool:
        """Renew this gateway's lease on a shared database for ``MISSED_BEATS`` beats; False
        when it was not held (the first beat, or other gateways took this one for dead)."""
        if not self.shared:
            return True
        lease_s = self.heartbeat_s * MISSED_BEATS
        job = functools.partial(
            renew, dialect=self._dialect, instance=self.instance, lease_s=lease_s, clock=self._clock
        )
        return await self._writer.run(job)

    async def end_calls_of_dead_gateways(self, reason: str = INTERRUPTED) -> int:
        """On a shared database: end the open calls of the gateways whose lease expired (never a
        live gateway's, never this one's); how many."""
        return await self._end_calls_of_dead(reason, own=False) if self.shared else 0

    async def _end_calls_of_dead(self, reason: str, *, own: bool) -> int:
        job = functools.partial(
            end_calls_of_dead, dialect=self._dialect, instance=self.instance, clock=self._clock, reason=reason, own=own
        )
        return await self._writer.run(job)

    async def purge_before(self, cutoff: float) -> int:
        """Delete the calls that ended (or, never ended, started) before ``cutoff`` (unix
        seconds), with their turns, events and recording files; how many calls went."""

        def purge(db: Session) -> list[Row]:
            with db.transaction(self._dialect.write_begin):
                if self._dialect.purge_lock is not None:
                    db.execute(self._dialect.purge_lock)
                sql = f"SELECT id, recording_path FROM calls WHERE {_AGE} < ? LIMIT ?"
                rows = db.fetch(sql, (cutoff, PURGE_BATCH))
                ids = [row["id"] for row in rows]
                if ids:
                    marks = ", ".join("?" * len(ids))
                    for table in ("events", "turns"):
                        db.execute(f"DELETE FROM {table} WHERE call_id IN ({marks})", ids)
                    db.execute(f"DELETE FROM calls WHERE id IN ({marks})", ids)
                return list(rows)

        purged = 0
        while True:
            rows = await self._writer.run(purge)
            purged += len(rows)
            # After the commit: a file outlives its record only if the gateway dies in between
            # (retention's sweep of the recordings folder takes it then).
            await asyncio.to_thread(delete_recordings, rows)
            if len(rows) < PURGE_BATCH:
                return purged

    async def _write(self, conflict: str, sql: str, row: tuple[object, ...]) -> None:
        def write(db: Session) -> None:
            try:
                db.execute(sql, row)
            except Conflict:
                raise StoreError(conflict) from None

        await self._writer.run(write)

    # --- reads -------------------------------------------------------------------------------------

    async def get_call(self, call_id: str) -> dict[str, object] | None:
        """The call with its turns and events in the order they happened, or None."""

        def read(db: Session) -> dict[str, object] | None:
            with db.transaction(self._dialect.snapshot_begin):  # the turns belong to the call row read
                rows = db.fetch(_CALL_SELECT + " WHERE c.id = ?", (call_id,))
                if not rows:
                    return None
                turns = db.fetch("SELECT * FROM turns WHERE call_id = ? ORDER BY idx", (call_id,))
                events = db.fetch("SELECT * FROM events WHERE call_id = ? ORDER BY id", (call_id,))
            return {
                **call_dict(rows[0]),
                "turns": [turn_dict(t) for t in turns],
                "events": [event_dict(e) for e in events],
            }

        return await self._reader.run(read)

    async def recording(self, call_id: str) -> tuple[str | None, float | None] | None:
        """The call's recording path and duration (None, None: not recorded); None: no such call."""

        def read(db: Session) -> tuple[str | None, float | None] | None:
            sql = "SELECT recording_path, recording_duration_s FROM calls WHERE id = ?"
            rows = db.fetch(sql, (call_id,))
            return (rows[0]["recording_path"], rows[0]["recording_duration_s"]) if rows else None

        return await self._reader.run(read)

    async def list_calls(
        self, *, limit: int = 50, offset: int = 0, leg: str | None = None, active: bool | None = None
    ) -> list[dict[str, object]]:
        """Calls, newest first, without their turns (``turn_count`` says how many)."""
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must not be negative")
        where: list[str] = []
        params: list[object] = []
        if leg is not None:
            where.append("c.leg = ?")
            params.append(leg)
        if active is not None:
            where.append("c.ended_at IS NULL" if active else "c.ended_at IS NOT NULL")
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        order = f"c.started_at DESC, {self._dialect.insertion_order} DESC"
        sql = f"{_CALL_SELECT}{clause} ORDER BY {order} LIMIT ? OFFSET ?"

        def read(db: Session) -> list[dict[str, object]]:
            return [call_dict(row) for row in db.fetch(sql, (*params, limit, offset))]

        return await self._reader.run(read)
