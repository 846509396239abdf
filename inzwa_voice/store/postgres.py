"""The PostgreSQL backend: one database that every gateway of a deployment writes to.

Selected by ``INZWA_DB_URL=postgresql://user:pass@host/db``. Each write is one autocommitted
statement (or one explicit transaction), so an acknowledged write is committed on the server.
Connections time out (connect and statement), and a connection that broke is opened again for
the next job, so a database restart costs the writes made during it, not the gateway.

The schema is versioned in ``schema_migrations``; each migration runs in its own transaction
under an advisory lock, so gateways starting at once against one database apply each exactly
once. No message ever holds the password: errors name ``INZWA_DB_URL`` and the URL without it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from inzwa_voice.store.backend import Backend, Dialect, Session
from inzwa_voice.store.records import Conflict, Row, StoreError

CONNECT_TIMEOUT_S = 5
STATEMENT_TIMEOUT_MS = 10_000
SETTING = "INZWA_DB_URL"

# Advisory lock keys (any bigint): one for schema changes, one for retention's purges.
_MIGRATION_LOCK = "SELECT pg_advisory_xact_lock(7275636001)"
_PURGE_LOCK = "SELECT pg_advisory_xact_lock(7275636002)"
_REAP_LOCK = "SELECT pg_advisory_xact_lock(7275636003)"  # ending a dead gateway's calls

DIALECT = Dialect(
    insertion_order="c.seq",
    greatest="greatest",
    write_begin="BEGIN",
    snapshot_begin="BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
    purge_lock=_PURGE_LOCK,
    reap_lock=_REAP_LOCK,
    lock_rows=" FOR UPDATE OF c",
    now="extract(epoch FROM clock_timestamp())::double precision",
    shared=True,
)

# Each entry is one schema version; never edit a released one, append a new one. The columns
# match SQLite's (JSON as text), so both backends share one row mapping.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE calls (
            id TEXT PRIMARY KEY,
            seq BIGINT GENERATED ALWAYS AS IDENTITY,
            leg TEXT NOT NULL,
            caller TEXT NOT NULL,
            dialled TEXT NOT NULL,
            external_id TEXT NOT NULL,
            params TEXT NOT NULL,
            profile TEXT NOT NULL,
            started_at DOUBLE PRECISION NOT NULL,
            ended_at DOUBLE PRECISION,
            disposition TEXT
        )""",
        "CREATE INDEX calls_by_start ON calls (started_at)",
        "CREATE INDEX calls_by_leg ON calls (leg, started_at)",
        "CREATE INDEX calls_by_age ON calls ((coalesce(ended_at, started_at)))",
        """CREATE TABLE turns (
            call_id TEXT NOT NULL REFERENCES calls (id),
            idx INTEGER NOT NULL,
            caller_text TEXT NOT NULL,
            reply_text TEXT NOT NULL,
            reply_full TEXT NOT NULL,
            barged_in BOOLEAN NOT NULL,
            language TEXT NOT NULL,
            safety TEXT,
            latency_ms TEXT NOT NULL,
            started_at DOUBLE PRECISION NOT NULL,
            ended_at DOUBLE PRECISION NOT NULL,
            outcome TEXT NOT NULL DEFAULT 'played',
            source TEXT,
            PRIMARY KEY (call_id, idx)
        )""",
        """CREATE TABLE events (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            call_id TEXT NOT NULL REFERENCES calls (id),
            kind TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL,
            data TEXT NOT NULL
        )""",
        "CREATE INDEX events_by_call ON events (call_id, id)",
    ),
    # The call's recording (when its profile records): the WAV file, and its length once it ended.
    (
        """ALTER TABLE calls ADD COLUMN recording_path TEXT,
                          ADD COLUMN recording_duration_s DOUBLE PRECISION""",
    ),
    # The gateway process that took the call, and each live gateway's heartbeat: the calls of
    # one whose heartbeat expired are ended by the others (``store.liveness``).
    (
        "ALTER TABLE calls ADD COLUMN instance TEXT",
        "CREATE INDEX calls_open ON calls (instance) WHERE ended_at IS NULL",
        """CREATE TABLE gateway_instances (
            instance TEXT PRIMARY KEY,
            started_at DOUBLE PRECISION NOT NULL,
            beat_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL
        )""",
    ),
)


def shown_url(parts: Mapping[str, object]) -> str:
    """The URL as it may be logged: scheme, user, host, port and database, never the password."""
    user = f"{parts['user']}@" if parts.get("user") else ""
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{parts.get('host', '')}{port}/{parts.get('dbname', '')}"


class PostgresSession(Session):
    """One connection, opened again when it broke; ``?`` placeholders become psycopg's ``%s``."""

    def __init__(self, url: str, *, read_only: bool) -> None:
        try:
            parts = conninfo_to_dict(url)
        except psycopg.ProgrammingError:  # its message may quote the URL, password and all
            raise StoreError(f"{SETTING} is not a valid PostgreSQL URL") from None
        self._url = url
        self._read_only = read_only
        self._password = str(parts.get("password") or "")
        self.where = f"{SETTING}={shown_url(parts)}"
        self._db = self._connect()

    def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        with self._errors("call store at"):
            return self._connection().execute(sql.replace("?", "%s"), params).rowcount

    def fetch(self, sql: str, params: Sequence[object] = ()) -> Sequence[Row]:
        with self._errors("call store at"):
            return self._connection().execute(sql.replace("?", "%s"), params).fetchall()

    def close(self) -> None:
        self._db.close()

    def _connection(self) -> psycopg.Connection[dict[str, Any]]:
        if self._db.closed:
            self._db = self._connect()
        return self._db

    def _connect(self) -> psycopg.Connection[dict[str, Any]]:
        with self._errors("cannot reach the call store at"):
            return psycopg.connect(
                self._url,
                autocommit=True,
                row_factory=dict_row,
                connect_timeout=CONNECT_TIMEOUT_S,
                application_name="inzwa-voice",
                options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"
                f" -c default_transaction_read_only={'on' if self._read_only else 'off'}",
            )

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """psycopg's errors as the store's, naming the setting, with the password cut out."""
        try:
            yield
        except psycopg.errors.IntegrityError as exc:
            raise Conflict(str(exc)) from None
        except psycopg.Error as exc:
            text = str(exc).strip()
            if self._password:
                text = text.replace(self._password, "***")
            raise StoreError(f"{doing} {self.where}: {text}") from None


def open_postgres(url: str) -> Backend:
    """Connect, and create or upgrade the schema; blocks, so run it in a thread."""
    writer = PostgresSession(url, read_only=False)
    try:
        _migrate(writer)
        reader = PostgresSession(url, read_only=True)
    except BaseException:
        writer.close()
        raise
    return Backend(writer, reader, DIALECT, None)


def _migrate(db: PostgresSession) -> None:
    with db.transaction():
        db.execute(_MIGRATION_LOCK)
        db.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                version INTEGER PRIMARY KEY,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )"""
        )
    for version, statements in enumerate(MIGRATIONS, start=1):
        with db.transaction():
            db.execute(_MIGRATION_LOCK)  # a second gateway waits here, then finds it applied
            current = db.fetch("SELECT coalesce(max(version), 0) AS version FROM schema_migrations")[0]["version"]
            if current > len(MIGRATIONS):
                raise StoreError(
                    f"{db.where} has schema version {current}, newer than this gateway's {len(MIGRATIONS)}"
                )
            if current < version:
                for sql in statements:
                    db.execute(sql)
                db.execute("INSERT INTO schema_migrations (version) VALUES (?)", (version,))
