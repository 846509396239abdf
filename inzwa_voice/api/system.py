"""Health, metrics, the API description, voices and admin routes."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import yaml
from aiohttp import web

from inzwa_voice import __version__
from inzwa_voice.api.keys import CALLS, ENGINES, GATE, METRICS
from inzwa_voice.legs.audiosocket import AUDIOSOCKET
from inzwa_voice.legs.sip import SIP

OPENAPI_PATH = Path(__file__).resolve().parents[2] / "api" / "openapi.yaml"


async def health(request: web.Request) -> web.Response:
    engines = request.app[ENGINES]
    return web.json_response(
        {
            "status": "ok",
            "version": __version__,
            "engines": {
                "vad": type(engines.vad).__name__,
                "asr": type(engines.asr).__name__,
                "llm": engines.llm.name,
                "tts": [v.id for v in engines.tts.voices()],
            },
            "active_calls": len(request.app[CALLS].sessions),
            "legs": legs(request.app),
            "requests_in_flight": request.app[GATE].in_flight,
        }
    )


def legs(app: web.Application) -> dict[str, object]:
    """Where each call leg listens, so operators and the call simulator can find them."""
    audiosocket = app.get(AUDIOSOCKET)
    sip = app.get(SIP)
    return {
        "ws": {"path": "/v1/ws"},
        "twilio": {"webhook": "/v1/twilio/voice", "media": "/v1/twilio/media"},
        "audiosocket": {"port": audiosocket.port if audiosocket is not None else None},
        "sip": {
            "port": sip.port if sip is not None else None,
            "registration": sip.registration_health() if sip is not None else None,
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
