"""Recording files under retention: the file a purged call names, and old files nobody names.

A recording is ``<call id>.wav`` in the gateway's recordings folder; its record holds the path.
When retention deletes a record it deletes that file too, but only a file so named (a path read
from a shared database never makes a gateway delete anything else). Records and files can part
ways: several gateways share one PostgreSQL database, and whichever purges a call may not be the
one whose disk holds its file; a gateway can die between deleting a record and its file. So each
gateway also sweeps its own folder for recordings older than the cut-off.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from inzwa_voice.store.records import Row

log = logging.getLogger("inzwa_voice.store")

SUFFIX: Final = ".wav"
_NAME: Final = re.compile(r"[0-9a-f]{32}\.wav")  # call ids are uuid4 hex


def recording_name(call_id: str) -> str:
    """The file name of a call's recording."""
    return f"{call_id}{SUFFIX}"


def delete_recordings(rows: Iterable[Row]) -> int:
    """Delete the recordings of purged calls (rows with ``id`` and ``recording_path``) that are
    on this machine; how many were deleted. Blocks: run it in a thread."""
    deleted = 0
    for row in rows:
        path = row["recording_path"]
        if path is not None and Path(path).name == recording_name(row["id"]):
            deleted += _unlink(Path(path))
    return deleted


def sweep_recordings(directory: Path, cutoff: float) -> int:
    """Delete the recordings in ``directory`` last written before ``cutoff`` (unix seconds); how
    many. A recording in progress is written every half second, so it is never this old."""
    if not directory.is_dir():
        return 0
    deleted = 0
    for path in directory.iterdir():
        if _NAME.fullmatch(path.name):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    deleted += _unlink(path)
    return deleted


def _unlink(path: Path) -> int:
    try:
        path.unlink()
    except FileNotFoundError:
        return 0
    except OSError as exc:
        log.warning("recording not deleted", extra={"path": str(path), "error": str(exc)})
        return 0
    return 1
