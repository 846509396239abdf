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
from pathlib import Path

from inzwa_voice.core import CallInfo
from inzwa_voice.store.backend import Backend, Session
from inzwa_voice.store.postgres import open_postgres
from inzwa_voice.store.records import (
    DISPOSITIONS,
    EVENT_KIND,
    MAX_CALL_ID,
    MAX_FIELD,
    Conflict,
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


class CallStore:
    """The call records of one database: ``await CallStore.open(path)`` (SQLite) or
    ``await CallStore.open_url(url)`` (PostgreSQL)."""

    def __init__(self, backend: Backend) -> None:
        self.path = backend.path
        self._dialect = backend.dialect
        self._writer = Worker("call-store-writer", backend.writer, WRITE_BACKLOG)
        self._reader = Worker("call-store-reader", backend.reader, READ_BACKLOG)

    @classmethod
    async def open(cls, path: Path) -> CallStore:
        """Create or upgrade the SQLite file at ``path`` (and its folder); raises ``StoreError``."""
        return cls(await asyncio.to_thread(open_sqlite, path))

    @classmethod
    async def open_url(cls, url: str) -> CallStore:
        """Connect to the PostgreSQL database at ``url`` and upgrade its schema; raises ``StoreError``."""
        return cls(await asyncio.to_thread(open_postgres, url))

    @property
    def shared(self) -> bool:
        """Whether other gateways write to this database too."""
        return self._dialect.shared

    async def close(self) -> None:
        """Finish the writes already made, then close both connections; idempotent."""
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
        )
        sql = """INSERT INTO calls (id, leg, caller, dialled, external_id, params, profile, started_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)"""
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

    async def end_interrupted_calls(self, reason: str = "the gateway stopped during the call") -> int:
        """End the calls a dead process left open, at the last moment they were heard of.

        Run it at start-up, before taking calls. It does nothing on a shared database: there an
        open call may be another gateway's live one (retention removes a dead one in time).
        """
        if self._dialect.shared:
            return 0
        last = f"""{self._dialect.greatest}(c.started_at,
                      coalesce((SELECT max(ended_at) FROM turns WHERE call_id = c.id), 0),
                      coalesce((SELECT max(at) FROM events WHERE call_id = c.id), 0))"""

        def close(db: Session) -> int:
            with db.transaction(self._dialect.write_begin):
                db.execute(
                    f"""INSERT INTO events (call_id, kind, at, data)
                        SELECT c.id, 'error', {last}, ? FROM calls c WHERE c.ended_at IS NULL""",
                    (to_json({"reason": reason}),),
                )
                return db.execute(
                    f"UPDATE calls AS c SET ended_at = {last}, disposition = 'error' WHERE c.ended_at IS NULL"
                )

        return await self._writer.run(close)

    async def purge_before(self, cutoff: float) -> int:
        """Delete the calls that ended (or, never ended, started) before ``cutoff`` (unix
        seconds), with their turns and events; how many calls went."""

        def purge(db: Session) -> int:
            with db.transaction(self._dialect.write_begin):
                if self._dialect.purge_lock is not None:
                    db.execute(self._dialect.purge_lock)
                rows = db.fetch(f"SELECT id FROM calls WHERE {_AGE} < ? LIMIT ?", (cutoff, PURGE_BATCH))
                ids = [row["id"] for row in rows]
                if ids:
                    marks = ", ".join("?" * len(ids))
                    for table in ("events", "turns"):
                        db.execute(f"DELETE FROM {table} WHERE call_id IN ({marks})", ids)
                    db.execute(f"DELETE FROM calls WHERE id IN ({marks})", ids)
                return len(ids)

        purged = 0
        while (batch := await self._writer.run(purge)) == PURGE_BATCH:
            purged += batch
        return purged + batch

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
