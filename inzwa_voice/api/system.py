"""Health, metrics, the API description, voices and admin routes."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import yaml
from aiohttp import web

from inzwa_voice import __version__
from inzwa_voice.api.keys import CALLS, ENGINES, GATE, METRICS, SETTINGS
from inzwa_voice.conversation.prompts import Preparation
from inzwa_voice.engines.base import Probed
from inzwa_voice.engines.runtime import Engines
from inzwa_voice.legs.audiosocket import AUDIOSOCKET
from inzwa_voice.legs.sip import SIP
from inzwa_voice.legs.webrtc import WEBRTC

# The contract lives in api/openapi.yaml; the package's link to it becomes a copy in a wheel.
OPENAPI_PATH = Path(__file__).resolve().parent / "openapi.yaml"
# Where the legs take calls over HTTP, as the legs register them (api/openapi.yaml names them too).
WS_PATH = "/v1/ws"
TWILIO_WEBHOOK_PATH = "/v1/twilio/voice"
TWILIO_MEDIA_PATH = "/v1/twilio/media"
WEBRTC_OFFER_PATH = "/v1/webrtc/offer"


log = logging.getLogger(__name__)


async def health(request: web.Request) -> web.Response:
    engines, calls = request.app[ENGINES], request.app[CALLS]
    reasons = await degraded(engines)
    return web.json_response(
        {
            "status": "degraded" if reasons else "ok",
            "reasons": reasons,
            "version": __version__,
            "engines": {
                "vad": type(engines.vad).__name__,
                "asr": type(engines.asr).__name__,
                "llm": engines.llm.name,
                "tts": [v.id for v in engines.tts.voices()],
            },
            "instance": calls.store.instance if calls.store is not None else None,
            "active_calls": len(calls.sessions),
            "capacity": calls.capacity.as_dict(),
            "prompts": prompts(calls.preparation),
            "legs": legs(request.app),
            "requests_in_flight": request.app[GATE].in_flight,
        }
    )


async def degraded(engines: Engines) -> list[str]:
    """Why the gateway answers worse than it should (a remote LLM it cannot reach: calls then
    speak their authored apology instead of an answer), or nothing."""
    llm = engines.llm
    problem = await llm.problem() if isinstance(llm, Probed) else None
    return [f"llm: {problem}"] if problem else []


async def warn_if_degraded(app: web.Application) -> None:
    """At start-up: "gateway ready" must not hide a remote LLM that does not answer."""
    for reason in await degraded(app[ENGINES]):
        log.warning("gateway degraded", extra={"reason": reason})


def prompts(preparation: Preparation) -> dict[str, object]:
    """The ready-made audio: until ``ready``, an authored answer may wait for its synthesis."""
    return {
        "ready": preparation.ready,
        "synthesized": preparation.done - preparation.failed,
        "failed": preparation.failed,
        "total": preparation.total,
    }


def legs(app: web.Application) -> dict[str, dict[str, object]]:
    """Every call leg, whether it takes calls and where, so operators and the call simulator can
    find them. A leg is enabled when the app set it up and the settings did not turn it off."""
    settings = app[SETTINGS]
    routes = {resource.canonical for resource in app.router.resources()}
    audiosocket = app.get(AUDIOSOCKET) if settings.audiosocket_enabled else None
    sip = app.get(SIP) if settings.sip_enabled else None
    webrtc = app.get(WEBRTC)
    return {
        "ws": {"enabled": WS_PATH in routes, "path": WS_PATH},
        "twilio": {"enabled": TWILIO_MEDIA_PATH in routes, "webhook": TWILIO_WEBHOOK_PATH, "media": TWILIO_MEDIA_PATH},
        "audiosocket": {
            "enabled": audiosocket is not None,
            "port": audiosocket.port if audiosocket is not None else None,
        },
        "sip": {
            "enabled": sip is not None,
            "port": sip.port if sip is not None else None,
            "registration": sip.registration_health() if sip is not None else None,
        },
        "webrtc": {
            "enabled": webrtc is not None,
            "offer": WEBRTC_OFFER_PATH,
            "peers": len(webrtc.peers) if webrtc is not None else 0,
            "max_peers": settings.webrtc_max_peers,
        },
    }


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[METRICS].render(),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


async def openapi(request: web.Request) -> web.Response:
    spec = await asyncio.to_thread(lambda: yaml.safe_load(OPENAPI_PATH.read_text(encoding="utf-8")))
    return web.json_response(spec, dumps=lambda o: json.dumps(o, ensure_ascii=False))


async def voices(request: web.Request) -> web.Response:
    data = [
        {
            "id": v.id,
            "language": v.language,
            "sample_rate": v.sample_rate,
            "model": v.model,
            "description": v.description,
            "aliases": list(v.aliases),
        }
        for v in request.app[ENGINES].tts.voices()
    ]
    return web.json_response({"object": "list", "data": data})


async def warmup(request: web.Request) -> web.Response:
    engines = request.app[ENGINES]
    started = time.perf_counter()
    with request.app[GATE].enter():
        await asyncio.get_running_loop().run_in_executor(engines.executor, engines.warmup)
    return web.json_response({"status": "ok", "seconds": round(time.perf_counter() - started, 3)})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/v1/voices", voices)
    app.router.add_post("/v1/admin/warmup", warmup)
    app.on_startup.append(warn_if_degraded)
