"""Builds the aiohttp application: engines, safety, middleware and routes.

Engines can be passed in already loaded, so several apps in one process (tests, a benchmark)
share one set of models; otherwise ``serve`` loads them before the port opens, so a gateway
that answers ``/health`` can always answer calls.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from inzwa_voice import tracing, widget
from inzwa_voice.api import admin_calls, openai_routes, reload, rest, system
from inzwa_voice.api.keys import CALLS, ENGINES, GATE, METRICS, SAFETY, SETTINGS, Gate
from inzwa_voice.api.middleware import (
    add_extra_headers,
    auth_middleware,
    connection_cap_middleware,
    error_middleware,
    warn_if_admin_open,
)
from inzwa_voice.config import Settings
from inzwa_voice.conversation.calls import CallManager
from inzwa_voice.engines.runtime import Engines
from inzwa_voice.legs import audiosocket, sip, twilio, webrtc, websocket
from inzwa_voice.safety import Safety, SafetyConfig
from inzwa_voice.store import keep_alive, open_configured, purge_periodically


def build_app(settings: Settings, engines: Engines) -> web.Application:
    metrics = engines.metrics
    app = web.Application(
        client_max_size=settings.max_upload_bytes,
        middlewares=[
            error_middleware(metrics),
            connection_cap_middleware(settings, metrics),
            auth_middleware(settings, metrics),
        ],
        # aiohttp closes a connection still waiting for a whole request this long after it
        # opened (or after its last response): the header-read timeout against slowloris.
        handler_args={"keepalive_timeout": settings.http_header_timeout_s},
    )
    warn_if_admin_open(settings)
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[ENGINES] = engines
    app[SAFETY] = Safety.load(config=SafetyConfig(helpline_number=settings.helpline_number))
    app[GATE] = Gate(settings.max_concurrent_requests)
    # A bad dialplan or knowledge base fails here, before the port opens, with its file and line.
    dialplan = reload.load_dialplan(settings, engines)
    calls = app[CALLS] = CallManager(
        settings, engines, app[SAFETY], dialplan=dialplan, voices=_voices(settings, engines)
    )
    app.on_response_prepare.append(add_extra_headers)
    system.add_routes(app)
    rest.add_routes(app)
    openai_routes.add_routes(app)
    admin_calls.add_routes(app)
    reload.add_routes(app)

    async def stopping(app: web.Application) -> None:
        app[CALLS].stopping()

    app.on_shutdown.append(stopping)  # the first step of shutdown, before the legs drain their calls

    async def call_store(app: web.Application) -> AsyncIterator[None]:
        store = await open_configured(settings)
        await store.end_interrupted_calls()
        app[admin_calls.STORE] = store
        calls.store = store
        days = settings.records_retention_days
        background = [] if days is None else [purge_periodically(store, days, recordings=settings.recordings_dir)]
        if store.shared:  # beat, and end the calls of gateways that die
            background.append(keep_alive(store))
        tasks = [asyncio.create_task(job) for job in background]
        yield
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await store.close()  # after on_shutdown has ended the calls

    # Open before the legs listen and closed after they stop: a call that starts as the gateway
    # starts, or ends as its endpoint stops, is still recorded.
    app.cleanup_ctx.append(call_store)
    # Every leg gets the same call starter: a new leg is one module and one line here.
    websocket.add_routes(app, calls, settings)
    twilio.add_routes(app, calls, settings)
    audiosocket.setup(app, calls, settings)
    sip.setup(app, calls, settings)  # before end_calls below: its on_shutdown drain must run first
    webrtc.setup(app, calls, settings)
    widget.add_routes(app)

    async def prompts(app: web.Application) -> AsyncIterator[None]:
        # In the background: the port opens at once, and the first caller shares the synthesis.
        preparing = calls.prepare_soon()
        yield
        preparing.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await preparing

    async def end_calls(app: web.Application) -> None:
        await app[CALLS].shutdown()

    app.cleanup_ctx.append(prompts)
    app.cleanup_ctx.append(_traces)
    app.on_shutdown.append(end_calls)
    return app


async def _traces(app: web.Application) -> AsyncIterator[None]:
    """Calls' traces, when ``OTEL_*`` asks for them; what is buffered is exported once the calls
    have ended (cleanup runs after ``on_shutdown``)."""
    provider = tracing.start()
    yield
    if provider is not None:
        await tracing.stop(provider)


def _voices(settings: Settings, engines: Engines) -> dict[str, str]:
    """The voice a call switches to with its language: the configured one for its language,
    else the first the TTS has."""
    voices: dict[str, str] = {}
    for voice in engines.tts.voices():
        voices.setdefault(voice.language, voice.id)
    configured = engines.tts.resolve(settings.tts_voice)
    voices[configured.language] = configured.id
    return voices
