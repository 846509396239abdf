"""What a database backend gives the call store: two connections and the few SQL differences.

The store's SQL is written once, with ``?`` placeholders; a ``Session`` adapts it to its driver
and a ``Dialect`` names the handful of spellings that differ between SQLite and PostgreSQL.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from inzwa_voice.store.records import Row, StoreError


class Session(ABC):
    """One connection, in autocommit mode, with SQL written once for every backend: ``?``
    placeholders; driver errors become ``StoreError`` (``Conflict`` for a broken key)."""

    @abstractmethod
    def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        """Run one statement; the number of rows it changed."""

    @abstractmethod
    def fetch(self, sql: str, params: Sequence[object] = ()) -> Sequence[Row]:
        """Run one query; its rows."""

    @abstractmethod
    def close(self) -> None: ...

    @contextlib.contextmanager
    def transaction(self, begin: str = "BEGIN") -> Iterator[None]:
        """Several statements as one transaction on a connection that otherwise autocommits."""
        self.execute(begin)
        try:
            yield
        except BaseException:
            with contextlib.suppress(StoreError):  # a dead connection has no transaction left to end
                self.execute("ROLLBACK")
            raise
        self.execute("COMMIT")


@dataclass(frozen=True)
class Dialect:
    """The spellings that differ between the databases."""

    insertion_order: str  # an expression over calls ``c`` that grows with each insert
    greatest: str  # the scalar function of the largest of its arguments
    write_begin: str  # starts a transaction that writes
    snapshot_begin: str  # starts a read transaction that sees one snapshot throughout
    purge_lock: str | None  # taken inside a purge, so gateways sharing the database purge one at a time
    reap_lock: str | None  # taken while ending a dead gateway's calls, so that happens once
    lock_rows: str  # appended to a SELECT inside a write transaction to lock the rows it read
    now: str  # the database server's clock, in unix seconds
    shared: bool  # several gateways write this database at once


@dataclass(frozen=True)
class Backend:
    """An open database: a writing and a reading session, and how its SQL differs."""

    writer: Session
    reader: Session
    dialect: Dialect
    path: Path | None  # the SQLite file; None for a server
