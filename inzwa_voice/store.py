"""Call records in SQLite: every call, turn and event, written the moment it happens.

A helpline must be able to say what was said on a call even when the gateway died during it, so
nothing waits for the call to end: each write is its own short transaction, committed in WAL
mode with ``synchronous=FULL`` (a killed process loses nothing committed; a power cut neither).

Commits wait for the disk, and sqlite3 connections belong to one thread, so neither may touch
the event loop that carries the audio. One writer thread owns the writing connection and runs
writes in the order they were made (a turn never lands before its call); a second thread owns a
read-only connection for the admin API, so a long listing never delays a turn being written.
Both have a bounded backlog: when the disk is slow, callers wait (asynchronously) for room
instead of memory growing without end. An awaited write has been committed.

The schema evolves through ``MIGRATIONS`` and ``PRAGMA user_version``; each migration runs in
its own transaction, so an interrupted upgrade leaves the previous version intact.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import queue
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar, cast, get_args

from inzwa_voice.core import CallInfo

log = logging.getLogger("inzwa_voice.store")

T = TypeVar("T")

Outcome = Literal["answering", "played", "interrupted", "failed", "hangup", "unanswered"]
"""How a turn's reply ended: ``answering`` while it is under way; ``hangup`` when the call ended
during it (the reply is recorded as far as it was heard); ``unanswered`` when the call ended
before the caller's turn was answered at all."""
OUTCOMES: tuple[str, ...] = get_args(Outcome)

Disposition = Literal[
    "completed",
    "caller_hangup",
    "idle_timeout",
    "max_length",
    "transferred",
    "error",
    "rejected",
    "shutdown",
    "admin_hangup",
]
DISPOSITIONS: tuple[str, ...] = get_args(Disposition)

# Bounds on what one record may hold: caller speech and model output are unbounded otherwise.
MAX_TEXT = 4000
MAX_FIELD = 256
MAX_JSON = 8000
MAX_CALL_ID = 128
WRITE_BACKLOG = 256
READ_BACKLOG = 16
_EVENT_KIND = re.compile(r"[a-z][a-z0-9_]{0,31}")

# Each entry is one schema version; never edit a released one, append a new one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE calls (
            id TEXT PRIMARY KEY,
            leg TEXT NOT NULL,
            caller TEXT NOT NULL,
            dialled TEXT NOT NULL,
            external_id TEXT NOT NULL,
            params TEXT NOT NULL,
            profile TEXT NOT NULL,
            started_at REAL NOT NULL,
            ended_at REAL,
            disposition TEXT
        )""",
        "CREATE INDEX calls_by_start ON calls (started_at)",
        "CREATE INDEX calls_by_leg ON calls (leg, started_at)",
        """CREATE TABLE turns (
            call_id TEXT NOT NULL REFERENCES calls (id),
            idx INTEGER NOT NULL,
            caller_text TEXT NOT NULL,
            reply_text TEXT NOT NULL,
            reply_full TEXT NOT NULL,
            barged_in INTEGER NOT NULL,
            language TEXT NOT NULL,
            safety TEXT,
            latency_ms TEXT NOT NULL,
            started_at REAL NOT NULL,
            ended_at REAL NOT NULL,
            PRIMARY KEY (call_id, idx)
        )""",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            call_id TEXT NOT NULL REFERENCES calls (id),
            kind TEXT NOT NULL,
            at REAL NOT NULL,
            data TEXT NOT NULL
        )""",
        "CREATE INDEX events_by_call ON events (call_id, id)",
    ),
    # A turn is written at the endpoint and rewritten when its reply ends: how it ended.
    ("ALTER TABLE turns ADD COLUMN outcome TEXT NOT NULL DEFAULT 'played'",),
    # Where each answer came from: {"kind": knowledge|intent|safety|llm|fallback, "id": ...}.
    ("ALTER TABLE turns ADD COLUMN source TEXT",),
)

_CALL_SELECT = """SELECT c.*, (SELECT count(*) FROM turns t WHERE t.call_id = c.id) AS turn_count FROM calls c"""


class StoreError(Exception):
    """The call store cannot do what was asked: unknown call, duplicate turn, disk error, closed."""


@dataclass(frozen=True)
class TurnRecord:
    """One exchange of a call, as the caller experienced it."""

    index: int
    caller_text: str
    reply_text: str  # what the caller heard: cut where they barged in
    reply_full: str  # what the model produced
    barged_in: bool
    language: str
    safety: str | None  # the safety verdict when it was not "allow"
    latency_ms: dict[str, float]  # stage marks: endpoint, asr_final, llm_first_token, ...
    started_at: float
    ended_at: float  # when the record was last written, for an ``answering`` turn
    outcome: Outcome = "played"
    source: dict[str, object] | None = None  # where the answer came from (kind, id)


class CallStore:
    """The call records of one SQLite file. Open with ``await CallStore.open(path)``."""

    def __init__(self, path: Path, writer: _Worker, reader: _Worker) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader

    @classmethod
    async def open(cls, path: Path) -> CallStore:
        """Create or upgrade the database at ``path`` (and its folder); raises ``StoreError``."""
        try:
            writer = await asyncio.to_thread(_connect_writer, path)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the call store {path}: {exc}") from None
        try:
            reader = await asyncio.to_thread(_connect_reader, path)
        except sqlite3.Error as exc:
            writer.close()
            raise StoreError(f"cannot open the call store {path} for reading: {exc}") from None
        return cls(
            path,
            _Worker("call-store-writer", writer, WRITE_BACKLOG),
            _Worker("call-store-reader", reader, READ_BACKLOG),
        )

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
            _clip(info.caller, MAX_FIELD),
            _clip(info.dialled, MAX_FIELD),
            _clip(info.external_id, MAX_FIELD),
            _to_json(info.params),
            _clip(profile, MAX_FIELD),
            started_at,
        )
        sql = """INSERT INTO calls (id, leg, caller, dialled, external_id, params, profile, started_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)"""
        await self._write(f"call {call_id!r} is already recorded", sql, row)

    async def add_turn(self, call_id: str, turn: TurnRecord) -> None:
        sql = """INSERT INTO turns (call_id, idx, caller_text, reply_text, reply_full, barged_in, language, safety,
                                    latency_ms, started_at, ended_at, outcome, source)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
        row = (call_id, turn.index, *_turn_fields(turn))
        await self._write(f"turn {turn.index} of call {call_id!r}: unknown call or turn already recorded", sql, row)

    async def update_turn(self, call_id: str, turn: TurnRecord) -> None:
        """Rewrite a turn added before (at its endpoint) with how its reply ended."""

        def update(db: sqlite3.Connection) -> None:
            sql = """UPDATE turns SET caller_text = ?, reply_text = ?, reply_full = ?, barged_in = ?, language = ?,
                                      safety = ?, latency_ms = ?, started_at = ?, ended_at = ?, outcome = ?,
                                      source = ?
                     WHERE call_id = ? AND idx = ?"""
            if not db.execute(sql, (*_turn_fields(turn), call_id, turn.index)).rowcount:
                raise StoreError(f"no turn {turn.index} of call {call_id!r} to update")

        await self._writer.run(update)

    async def add_event(self, call_id: str, kind: str, data: dict[str, object], at: float) -> None:
        """Something that happened on the call: ``dtmf``, ``transfer``, ``barge_in``, ``error``, ``safety``..."""
        if not _EVENT_KIND.fullmatch(kind):
            raise ValueError(f"event kind {kind!r} must be a short lower-case identifier such as 'dtmf'")
        sql = "INSERT INTO events (call_id, kind, at, data) VALUES (?, ?, ?, ?)"
        await self._write(f"event of unknown call {call_id!r}", sql, (call_id, kind, at, _to_json(data)))

    async def end_call(self, call_id: str, disposition: str, ended_at: float) -> None:
        """Close the record; a second end of the same call keeps the first disposition."""
        if disposition not in DISPOSITIONS:
            raise ValueError(f"disposition {disposition!r} is not one of {', '.join(DISPOSITIONS)}")

        def end(db: sqlite3.Connection) -> None:
            sql = "UPDATE calls SET ended_at = ?, disposition = ? WHERE id = ? AND ended_at IS NULL"
            updated = db.execute(sql, (ended_at, disposition, call_id)).rowcount
            if not updated and db.execute("SELECT 1 FROM calls WHERE id = ?", (call_id,)).fetchone() is None:
                raise StoreError(f"no call {call_id!r} to end")

        await self._writer.run(end)

    async def end_interrupted_calls(self, reason: str = "the gateway stopped during the call") -> int:
        """End the calls a dead process left open, at the last moment they were heard of.

        Run it at start-up, before taking calls, when this process is the file's only writer:
        otherwise the records of a crashed gateway would stay "active" for ever.
        """

        def close(db: sqlite3.Connection) -> int:
            with _transaction(db):
                last = """max(c.started_at,
                              coalesce((SELECT max(ended_at) FROM turns WHERE call_id = c.id), 0),
                              coalesce((SELECT max(at) FROM events WHERE call_id = c.id), 0))"""
                db.execute(
                    f"""INSERT INTO events (call_id, kind, at, data)
                        SELECT c.id, 'error', {last}, ? FROM calls c WHERE c.ended_at IS NULL""",
                    (_to_json({"reason": reason}),),
                )
                ended = db.execute(
                    f"UPDATE calls AS c SET ended_at = {last}, disposition = 'error' WHERE c.ended_at IS NULL"
                )
                return ended.rowcount

        return await self._writer.run(close)

    async def _write(self, conflict: str, sql: str, row: tuple[object, ...]) -> None:
        def write(db: sqlite3.Connection) -> None:
            try:
                db.execute(sql, row)
            except sqlite3.IntegrityError:
                raise StoreError(conflict) from None

        await self._writer.run(write)

    # --- reads -------------------------------------------------------------------------------------

    async def get_call(self, call_id: str) -> dict[str, object] | None:
        """The call with its turns and events in the order they happened, or None."""

        def read(db: sqlite3.Connection) -> dict[str, object] | None:
            with _transaction(db):  # one snapshot: the turns belong to the call row read
                row = db.execute(_CALL_SELECT + " WHERE c.id = ?", (call_id,)).fetchone()
                if row is None:
                    return None
                turns = db.execute("SELECT * FROM turns WHERE call_id = ? ORDER BY idx", (call_id,)).fetchall()
                events = db.execute("SELECT * FROM events WHERE call_id = ? ORDER BY id", (call_id,)).fetchall()
            return {**_call(row), "turns": [_turn(t) for t in turns], "events": [_event(e) for e in events]}

        return await self._reader.run(read)

    async def list_calls(
        self, *, limit: int = 50, offset: int = 0, leg: str | None = None, active: bool | None = None
    ) -> list[dict[str, object]]:
        """Calls, newest first, without their turns (``turn_count`` says how many)."""
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must not be negative")
        where, params = [], []
        if leg is not None:
            where.append("c.leg = ?")
            params.append(leg)
        if active is not None:
            where.append("c.ended_at IS NULL" if active else "c.ended_at IS NOT NULL")
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        sql = f"{_CALL_SELECT}{clause} ORDER BY c.started_at DESC, c.rowid DESC LIMIT ? OFFSET ?"

        def read(db: sqlite3.Connection) -> list[dict[str, object]]:
            return [_call(row) for row in db.execute(sql, (*params, limit, offset))]

        return await self._reader.run(read)


# --- rows ------------------------------------------------------------------------------------------


def _call(row: sqlite3.Row) -> dict[str, object]:
    return {
        "id": row["id"],
        "leg": row["leg"],
        "caller": row["caller"],
        "dialled": row["dialled"],
        "external_id": row["external_id"],
        "params": json.loads(row["params"]),
        "profile": row["profile"],
        "started_at": row["started_at"],
        "ended_at": row["ended_at"],
        "disposition": row["disposition"],
        "active": row["ended_at"] is None,
        "turn_count": row["turn_count"],
    }


def _turn(row: sqlite3.Row) -> dict[str, object]:
    return {
        "index": row["idx"],
        "caller_text": row["caller_text"],
        "reply_text": row["reply_text"],
        "reply_full": row["reply_full"],
        "barged_in": bool(row["barged_in"]),
        "language": row["language"],
        "safety": row["safety"],
        "latency_ms": json.loads(row["latency_ms"]),
        "started_at": row["started_at"],
        "ended_at": row["ended_at"],
        "outcome": row["outcome"],
        "source": None if row["source"] is None else json.loads(row["source"]),
    }


def _turn_fields(turn: TurnRecord) -> tuple[object, ...]:
    """A turn's columns after (call_id, idx), bounded."""
    if turn.outcome not in OUTCOMES:
        raise ValueError(f"outcome {turn.outcome!r} is not one of {', '.join(OUTCOMES)}")
    latency = {k[:64]: round(v, 1) for k, v in turn.latency_ms.items() if math.isfinite(v)}
    return (
        _clip(turn.caller_text, MAX_TEXT),
        _clip(turn.reply_text, MAX_TEXT),
        _clip(turn.reply_full, MAX_TEXT),
        turn.barged_in,
        _clip(turn.language, MAX_FIELD),
        None if turn.safety is None else _clip(turn.safety, MAX_FIELD),
        _to_json(latency),
        turn.started_at,
        turn.ended_at,
        turn.outcome,
        None if turn.source is None else _to_json(turn.source),
    )


def _event(row: sqlite3.Row) -> dict[str, object]:
    return {"kind": row["kind"], "at": row["at"], "data": json.loads(row["data"])}


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _to_json(value: Mapping[str, object]) -> str:
    """JSON for a stored object; anything not JSON becomes its str(), an oversized one a preview."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    if len(text) <= MAX_JSON:
        return text
    return json.dumps({"truncated": _clip(text, MAX_JSON // 2)}, ensure_ascii=False)


# --- connections and their threads ------------------------------------------------------------------


def _connect_writer(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    try:
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            log.warning("call store is not in WAL mode", extra={"path": str(path), "mode": mode})
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA foreign_keys = ON")
        _migrate(db, path)
    except BaseException:
        db.close()
        raise
    return db


def _connect_reader(path: Path) -> sqlite3.Connection:
    uri = path.resolve().as_uri() + "?mode=ro"
    db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=5.0)
    db.row_factory = sqlite3.Row
    return db


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the schema to the newest version; each step re-reads the version inside its own
    write transaction, so two gateways starting on one file cannot both apply it."""
    for version, statements in enumerate(MIGRATIONS, start=1):
        with _transaction(db, "BEGIN IMMEDIATE"):
            current = db.execute("PRAGMA user_version").fetchone()[0]
            if current > len(MIGRATIONS):
                raise StoreError(f"{path} has schema version {current}, newer than this gateway's {len(MIGRATIONS)}")
            if current < version:
                for sql in statements:
                    db.execute(sql)
                db.execute(f"PRAGMA user_version = {version}")


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection, begin: str = "BEGIN") -> Iterator[None]:
    """Several statements as one transaction on a connection that otherwise autocommits."""
    db.execute(begin)
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class _Worker:
    """One thread that owns one connection and runs jobs on it, in the order they came."""

    def __init__(self, name: str, db: sqlite3.Connection, backlog: int) -> None:
        self._db = db
        self._jobs: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._room = asyncio.Semaphore(backlog)
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    async def run(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``job`` on the connection; once queued it runs even if the caller is cancelled."""
        await self._room.acquire()
        if self._closed:
            self._room.release()
            raise StoreError("the call store is closed")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()
        self._jobs.put(_Job(job, loop, done, self._room))
        return await done

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._jobs.put(None)
        await asyncio.to_thread(self._thread.join)

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            job.execute(self._db)
        self._db.close()


@dataclass
class _Job(Generic[T]):
    fn: Callable[[sqlite3.Connection], T]
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[T]
    room: asyncio.Semaphore

    def execute(self, db: sqlite3.Connection) -> None:
        """Runs in the worker thread; the outcome is handed to the loop that asked."""
        result: T | None = None
        error: Exception | None = None
        try:
            result = self.fn(db)
        except sqlite3.Error as exc:
            error = StoreError(f"call store: {exc}")
        except Exception as exc:
            error = exc
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            self.loop.call_soon_threadsafe(self._settle, result, error)

    def _settle(self, result: T | None, error: Exception | None) -> None:
        self.room.release()
        if self.done.cancelled():
            return
        if error is not None:
            self.done.set_exception(error)
        else:
            self.done.set_result(cast(T, result))
