"""Admin routes over the call records: list calls, read one call with its turns and events,
download its recording.

Query values are checked strictly (``active=yes`` is a 400, not silently "no filter"): an
operator reading records during an incident must get exactly what they asked for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

from aiohttp import web

from inzwa_voice.api.keys import CALLS
from inzwa_voice.core import LEG_KINDS
from inzwa_voice.errors import ApiError, invalid
from inzwa_voice.store import CallStore

STORE = web.AppKey("store", CallStore)

MAX_LIMIT = 200
DEFAULT_LIMIT = 50
MAX_OFFSET = 1_000_000
_BOOLEANS = {"true": True, "false": False}


def _int_param(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid(f"{name} must be an integer from {low} to {high}", name) from None
    if not low <= value <= high:
        raise invalid(f"{name} must be an integer from {low} to {high}", name)
    return value


async def list_calls(request: web.Request) -> web.Response:
    query = request.query
    limit = _int_param(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    offset = _int_param(query, "offset", 0, 0, MAX_OFFSET)
    leg = query.get("leg")
    if leg is not None and leg not in LEG_KINDS:
        raise invalid(f"leg must be one of {', '.join(LEG_KINDS)}", "leg")
    active = query.get("active")
    if active is not None and active not in _BOOLEANS:
        raise invalid("active must be true or false", "active")
    # One row more than asked says whether another page exists, without a COUNT over the table.
    rows = await request.app[STORE].list_calls(
        limit=limit + 1, offset=offset, leg=leg, active=None if active is None else _BOOLEANS[active]
    )
    return web.json_response({"object": "list", "data": rows[:limit], "has_more": len(rows) > limit})


async def get_call(request: web.Request) -> web.Response:
    call_id = request.match_info["id"]
    call = await request.app[STORE].get_call(call_id)
    if call is None:
        raise _no_call(call_id)
    return web.json_response(call)


def _no_call(call_id: str) -> ApiError:
    shown = call_id if len(call_id) <= 64 else call_id[:64] + "…"
    return ApiError(f"no call {shown!r} is recorded", status=404, type="not_found_error", code="call_not_found")


async def get_recording(request: web.Request) -> web.StreamResponse:
    """The call's two-channel WAV (left: the caller, right: the bot), also while the call goes on."""
    call_id = request.match_info["id"]
    found = await request.app[STORE].recording(call_id)
    if found is None:
        raise _no_call(call_id)
    path = found[0]
    if path is None:
        raise ApiError("this call was not recorded", status=404, type="not_found_error", code="recording_not_found")
    if not await asyncio.to_thread(Path(path).is_file):
        # Another gateway's disk (a shared database), or deleted by retention meanwhile.
        raise ApiError(
            "the recording is not on this gateway", status=404, type="not_found_error", code="recording_not_found"
        )
    return web.FileResponse(
        path,
        headers={"Content-Type": "audio/wav", "Content-Disposition": f'attachment; filename="{Path(path).name}"'},
    )


async def hangup_call(request: web.Request) -> web.Response:
    """End a live call from the operator's side: the caller hears the goodbye, then the line drops."""
    call_id = request.match_info["id"]
    session = request.app[CALLS].sessions.get(call_id)
    if session is None:
        raise ApiError("no live call has this id", status=404, type="not_found_error", code="call_not_found")
    await session.end("admin_hangup", say_goodbye=request.query.get("goodbye", "true") != "false")
    return web.json_response({"id": call_id, "status": "ended", "disposition": "admin_hangup"})


def add_routes(app: web.Application) -> None:
    """The routes read ``app[STORE]``, which the app opens at start-up and closes at cleanup."""
    app.router.add_get("/v1/admin/calls", list_calls)
    app.router.add_get("/v1/admin/calls/{id}", get_call)
    app.router.add_get("/v1/admin/calls/{id}/recording", get_recording)
    app.router.add_post("/v1/admin/calls/{id}/hangup", hangup_call)
