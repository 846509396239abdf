"""Call records: every call, turn and event, in SQLite (one file per gateway, the default) or
PostgreSQL (``INZWA_DB_URL``: one database for all gateways), with optional retention.

The rest of the gateway uses only the names exported here.
"""

from __future__ import annotations

from inzwa_voice.config import Settings
from inzwa_voice.store.call_store import READ_BACKLOG, WRITE_BACKLOG, CallStore
from inzwa_voice.store.records import (
    DISPOSITIONS,
    MAX_CALL_ID,
    MAX_FIELD,
    MAX_JSON,
    MAX_TEXT,
    OUTCOMES,
    Disposition,
    Outcome,
    StoreError,
    TurnRecord,
)
from inzwa_voice.store.retention import purge_periodically
from inzwa_voice.store.sqlite import MIGRATIONS

__all__ = [
    "DISPOSITIONS",
    "MAX_CALL_ID",
    "MAX_FIELD",
    "MAX_JSON",
    "MAX_TEXT",
    "MIGRATIONS",
    "OUTCOMES",
    "READ_BACKLOG",
    "WRITE_BACKLOG",
    "CallStore",
    "Disposition",
    "Outcome",
    "StoreError",
    "TurnRecord",
    "open_configured",
    "purge_periodically",
]


async def open_configured(settings: Settings) -> CallStore:
    """The store the settings name: ``db_url`` when set, else the SQLite file ``db_path``."""
    if settings.db_url is not None:
        return await CallStore.open_url(settings.db_url.get_secret_value())
    return await CallStore.open(settings.db_path)
