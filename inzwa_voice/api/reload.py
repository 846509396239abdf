"""Reloading the dialplan and its knowledge bases without a restart: ``POST /v1/admin/reload``
and SIGHUP.

A reload reads and checks everything before it applies anything: a broken file is refused with
its file and line and the gateway keeps what it had. The new dialplan and knowledge bases apply
to calls that start from then on; calls already up finish with what they started with.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from aiohttp import web

from inzwa_voice.api.keys import CALLS, ENGINES, SETTINGS
from inzwa_voice.config import Settings
from inzwa_voice.conversation.brain import Knowledge
from inzwa_voice.dialplan import DEFAULT_DIALPLAN, Dialplan, DialplanError
from inzwa_voice.engines.runtime import Engines
from inzwa_voice.errors import ApiError
from inzwa_voice.knowledge.loader import KnowledgeError

log = logging.getLogger(__name__)


def load_dialplan(settings: Settings, engines: Engines) -> Dialplan:
    """The configured dialplan, checked against the voices and languages this gateway has."""
    dialplan = Dialplan.load(settings.dialplan_path or DEFAULT_DIALPLAN)
    dialplan.check(voices={n for v in engines.tts.voices() for n in (v.id, *v.aliases)}, languages=settings.languages)
    return dialplan


async def reload_config(app: web.Application) -> dict[str, object]:
    """Read, check and apply; raises ``DialplanError``/``KnowledgeError`` keeping the old ones."""
    calls = app[CALLS]

    def load() -> tuple[Dialplan, dict[str, Knowledge]]:
        dialplan = load_dialplan(app[SETTINGS], app[ENGINES])
        return dialplan, calls.load_knowledge(dialplan)

    dialplan, knowledge = await asyncio.to_thread(load)
    calls.apply(dialplan, knowledge)
    calls.prepare_soon()  # new texts are synthesized before they are needed
    summary: dict[str, object] = {
        "status": "reloaded",
        "dialplan": str(Path(dialplan.path)),
        "profiles": sorted(dialplan.profiles),
        "knowledge": sorted(knowledge),
    }
    log.info("configuration reloaded", extra=summary)
    return summary


async def reload_route(request: web.Request) -> web.Response:
    try:
        return web.json_response(await reload_config(request.app))
    except (DialplanError, KnowledgeError) as exc:
        raise ApiError(f"nothing was reloaded: {exc}", status=400, code="invalid_config") from None


def reload_on_sighup(app: web.Application) -> None:
    """For the serving process only (one per process): SIGHUP reloads, as daemons do."""

    running: set[asyncio.Task[None]] = set()

    async def install(app: web.Application) -> None:
        def reload_soon() -> None:
            async def reload() -> None:
                try:
                    await reload_config(app)
                except (DialplanError, KnowledgeError) as exc:
                    log.error("reload refused, the previous configuration stays", extra={"error": str(exc)})

            task = asyncio.ensure_future(reload())
            running.add(task)
            task.add_done_callback(running.discard)

        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload_soon)

    app.on_startup.append(install)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/admin/reload", reload_route)
