"""The SQLite backend: one file per gateway, in WAL mode with ``synchronous=FULL``.

A killed process loses nothing committed; a power cut neither. The schema evolves through
``MIGRATIONS`` and ``PRAGMA user_version``; each migration runs in its own transaction, so an
interrupted upgrade leaves the previous version intact.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from inzwa_voice.store.backend import Backend, Dialect, Session
from inzwa_voice.store.records import Conflict, Row, StoreError

log = logging.getLogger("inzwa_voice.store")

DIALECT = Dialect(
    insertion_order="c.rowid",
    greatest="max",
    write_begin="BEGIN IMMEDIATE",
    snapshot_begin="BEGIN",
    purge_lock=None,
    reap_lock=None,
    lock_rows="",  # BEGIN IMMEDIATE already holds the file's write lock
    now="(julianday('now') - 2440587.5) * 86400.0",
    shared=False,
)

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
    # Retention finds the calls that ended (or, never ended, started) before its cut-off.
    ("CREATE INDEX calls_by_age ON calls (coalesce(ended_at, started_at))",),
    # The call's recording (when its profile records): the WAV file, and its length once it ended.
    (
        "ALTER TABLE calls ADD COLUMN recording_path TEXT",
        "ALTER TABLE calls ADD COLUMN recording_duration_s REAL",
    ),
    # The gateway process that took the call; its open calls are found through a partial index.
    (
        "ALTER TABLE calls ADD COLUMN instance TEXT",
        "CREATE INDEX calls_open ON calls (instance) WHERE ended_at IS NULL",
    ),
)


class SqliteSession(Session):
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        try:
            return self._db.execute(sql, params).rowcount
        except sqlite3.IntegrityError as exc:
            raise Conflict(str(exc)) from None
        except sqlite3.Error as exc:
            raise StoreError(f"call store: {exc}") from None

    def fetch(self, sql: str, params: Sequence[object] = ()) -> Sequence[Row]:
        try:
            cursor = self._db.execute(sql, params)
            names = [column[0] for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        except sqlite3.Error as exc:
            raise StoreError(f"call store: {exc}") from None

    def close(self) -> None:
        self._db.close()


def open_sqlite(path: Path) -> Backend:
    """Create or upgrade the file at ``path`` (and its folder); blocks, so run it in a thread."""
    try:
        writer = _connect_writer(path)
    except (sqlite3.Error, OSError, StoreError) as exc:
        raise StoreError(f"cannot open the call store {path}: {exc}") from None
    try:
        reader = _connect_reader(path)
    except sqlite3.Error as exc:
        writer.close()
        raise StoreError(f"cannot open the call store {path} for reading: {exc}") from None
    return Backend(writer, SqliteSession(reader), DIALECT, path)


def _connect_writer(path: Path) -> SqliteSession:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    session = SqliteSession(db)
    try:
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            log.warning("call store is not in WAL mode", extra={"path": str(path), "mode": mode})
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA foreign_keys = ON")
        _migrate(session, path)
    except BaseException:
        db.close()
        raise
    return session


def _connect_reader(path: Path) -> sqlite3.Connection:
    uri = path.resolve().as_uri() + "?mode=ro"
    return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=5.0)


def _migrate(db: SqliteSession, path: Path) -> None:
    """Bring the schema to the newest version; each step re-reads the version inside its own
    write transaction, so two gateways starting on one file cannot both apply it."""
    for version, statements in enumerate(MIGRATIONS, start=1):
        with db.transaction("BEGIN IMMEDIATE"):
            current = db.fetch("PRAGMA user_version")[0]["user_version"]
            if current > len(MIGRATIONS):
                raise StoreError(f"{path} has schema version {current}, newer than this gateway's {len(MIGRATIONS)}")
            if current < version:
                for sql in statements:
                    db.execute(sql)
                db.execute(f"PRAGMA user_version = {version}")
