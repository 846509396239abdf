"""What a call record holds and how it maps to and from rows, for every backend.

Both databases store the same columns with the same JSON text in them, so the bounds (caller
speech and model output are unbounded otherwise) and the row-to-dict mapping live here once.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

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

MAX_TEXT = 4000
MAX_FIELD = 256
MAX_JSON = 8000
MAX_CALL_ID = 128
EVENT_KIND = re.compile(r"[a-z][a-z0-9_]{0,31}")

Row = Mapping[str, Any]
"""One result row by column name; each backend's connection yields these."""


class StoreError(Exception):
    """The call store cannot do what was asked: unknown call, duplicate turn, disk error, closed."""


class Conflict(StoreError):
    """A write broke a key or reference (duplicate call or turn, unknown call); the store says which."""


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


def call_dict(row: Row) -> dict[str, object]:
    return {
        "id": row["id"],
        "leg": row["leg"],
        "caller": row["caller"],
        "dialled": row["dialled"],
        "external_id": row["external_id"],
        "params": json.loads(row["params"]),
        "profile": row["profile"],
        "instance": row["instance"],
        "started_at": row["started_at"],
        "ended_at": row["ended_at"],
        "disposition": row["disposition"],
        "active": row["ended_at"] is None,
        "turn_count": row["turn_count"],
        "recording": None
        if row["recording_path"] is None
        else {"path": row["recording_path"], "duration_s": row["recording_duration_s"]},
    }


def turn_dict(row: Row) -> dict[str, object]:
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


def event_dict(row: Row) -> dict[str, object]:
    return {"kind": row["kind"], "at": row["at"], "data": json.loads(row["data"])}


def turn_fields(turn: TurnRecord) -> tuple[object, ...]:
    """A turn's columns after (call_id, idx), bounded."""
    if turn.outcome not in OUTCOMES:
        raise ValueError(f"outcome {turn.outcome!r} is not one of {', '.join(OUTCOMES)}")
    latency = {k[:64]: round(v, 1) for k, v in turn.latency_ms.items() if math.isfinite(v)}
    return (
        clip(turn.caller_text, MAX_TEXT),
        clip(turn.reply_text, MAX_TEXT),
        clip(turn.reply_full, MAX_TEXT),
        turn.barged_in,
        clip(turn.language, MAX_FIELD),
        None if turn.safety is None else clip(turn.safety, MAX_FIELD),
        to_json(latency),
        turn.started_at,
        turn.ended_at,
        turn.outcome,
        None if turn.source is None else to_json(turn.source),
    )


def clip(text: str, limit: int) -> str:
    """At most ``limit`` characters, without NUL (PostgreSQL text cannot hold it)."""
    text = text.replace("\x00", "")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def to_json(value: Mapping[str, object]) -> str:
    """JSON for a stored object; anything not JSON becomes its str(), an oversized one a preview."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    if len(text) <= MAX_JSON:
        return text
    return json.dumps({"truncated": clip(text, MAX_JSON // 2)}, ensure_ascii=False)
