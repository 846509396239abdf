"""Call records: every call, turn and event, and where its recording is, in SQLite (one file per
gateway, the default) or PostgreSQL (``INZWA_DB_URL``: one database for all gateways, which end
the calls of a gateway that died: ``liveness``), with optional retention.

The rest of the gateway uses only the names exported here.
"""

from __future__ import annotations

from inzwa_voice.config import Settings
from inzwa_voice.store.call_store import READ_BACKLOG, WRITE_BACKLOG, CallStore
from inzwa_voice.store.liveness import keep_alive
from inzwa_voice.store.recordings import recording_name
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
    "keep_alive",
    "open_configured",
    "purge_periodically",
    "recording_name",
]


async def open_configured(settings: Settings) -> CallStore:
    """The store the settings name: ``db_url`` when set, else the SQLite file ``db_path``."""
    instance = settings.instance_id
    if settings.db_url is not None:
        url = settings.db_url.get_secret_value()
        return await CallStore.open_url(url, instance=instance, heartbeat_s=settings.heartbeat_s)
    return await CallStore.open(settings.db_path, instance=instance)
