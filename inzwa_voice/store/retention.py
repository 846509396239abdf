"""Records retention: calls older than ``INZWA_RECORDS_RETENTION_DAYS`` are deleted with their
recordings, at start and then hourly, in small batches that interleave with the calls' own
writes; then the gateway's recordings folder is swept for files as old (``store.recordings``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from inzwa_voice.store.call_store import CallStore
from inzwa_voice.store.recordings import sweep_recordings
from inzwa_voice.store.records import StoreError

log = logging.getLogger("inzwa_voice.store")

PURGE_EVERY_S = 3600.0
DAY_S = 86400.0


async def purge_periodically(
    store: CallStore,
    days: float,
    *,
    every: float = PURGE_EVERY_S,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.time,
    recordings: Path | None = None,
) -> None:
    """Purge now, then every ``every`` seconds, until cancelled; a failed purge is logged and
    tried again at the next one (the database may be back by then)."""
    while True:
        cutoff = clock() - days * DAY_S
        try:
            purged = await store.purge_before(cutoff)
        except StoreError as exc:
            log.warning("call records purge failed", extra={"error": str(exc)})
        else:
            if purged:
                log.info("call records purged", extra={"calls": purged, "retention_days": days})
        if recordings is not None:
            swept = await asyncio.to_thread(sweep_recordings, recordings, cutoff)
            if swept:
                log.info("old recordings deleted", extra={"files": swept, "retention_days": days})
        await sleep(every)
