"""``inzwa-voice``: serve the gateway, prepare its models, check its settings."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from inzwa_voice import __version__, logs, preflight
from inzwa_voice.config import Settings, SettingsError, load_settings
from inzwa_voice.dialplan import DialplanError
from inzwa_voice.engines.runtime import Engines
from inzwa_voice.knowledge.loader import KnowledgeError
from inzwa_voice.knowledge.match import Embed
from inzwa_voice.store.records import StoreError
from inzwa_voice.telemetry import Metrics

log = logging.getLogger("inzwa_voice")


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(2) from None


def _load_engines(settings: Settings) -> Engines:
    # Imported here: ``call`` and ``check-config`` must not pay for importing every model library.
    from inzwa_voice.engines.loading import load_engines

    return load_engines(settings, Metrics())


def _embed(settings: Settings) -> Embed | None:
    """The configured sentence embedder alone (``eval knowledge`` needs no other model)."""
    from inzwa_voice.engines.loading import load_embedder

    with ThreadPoolExecutor(1) as executor:
        loaded = load_embedder(settings, executor)
    return loaded[0].embed if loaded is not None else None


def _refuse_problems(problems: list[preflight.Problem]) -> None:
    """Print every problem, one a line, and stop (before any model is loaded)."""
    if problems:
        for problem in problems:
            print(f"invalid configuration: {problem}", file=sys.stderr)
        raise SystemExit(2)


def serve(settings: Settings) -> None:
    from inzwa_voice.api.reload import reload_on_sighup
    from inzwa_voice.app import build_app

    _refuse_problems(preflight.check(settings))
    started = time.perf_counter()
    engines = _load_engines(settings)
    if settings.warmup:
        engines.warmup()
    try:
        app = build_app(settings, engines)
    except (DialplanError, KnowledgeError) as exc:
        print(f"invalid configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

    reload_on_sighup(app)

    async def close_engines(_: web.Application) -> None:
        await engines.close()

    app.on_cleanup.append(close_engines)

    def ready(_: str) -> None:
        # run_app calls this once the listening socket is open: only now is the gateway ready.
        extra = {"host": settings.host, "port": settings.port, "startup_s": round(time.perf_counter() - started, 2)}
        log.info("gateway ready", extra=extra)

    try:
        web.run_app(app, host=settings.host, port=settings.port, print=ready, access_log=None)
    except StoreError as exc:
        # The call store opens as the app starts, before any leg listens: a database it cannot
        # use is a configuration or deployment fault, said in one line that names where (never
        # the password), not a traceback.
        print(f"cannot start: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    log.info("gateway stopped")


def prepare_models(settings: Settings) -> None:
    """Assemble the split packaged models and print the catalog (``make`` runs this once)."""
    _refuse_problems(preflight.file_problems(settings))
    engines = _load_engines(settings)
    print(json.dumps([vars(m) for m in engines.catalog], indent=2))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="inzwa-voice", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="start the gateway (settings from INZWA_* variables and .env)")
    sub.add_parser("models", help="assemble and verify the packaged models, print the catalog")
    check = sub.add_parser(
        "check-config", help="validate the settings and the files they name, print them (secrets hidden); 2: problems"
    )
    check.add_argument("--ports", action="store_true", help="also check that the ports to listen on are free")
    call = sub.add_parser("call", help="simulate callers against a running gateway; prints JSON")
    call.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway's HTTP base URL")
    call.add_argument("--leg", default="ws", help="ws, twilio, audiosocket or webrtc")
    call.add_argument("--calls", type=int, default=1, help="concurrent calls")
    call.add_argument("--barge-in-ms", type=int, default=None, help="talk over the first answer after this much of it")
    call.add_argument("--questions", type=int, default=2, help="questions each call asks, one after the other")
    call.add_argument("--seed", type=int, default=0, help="seed of the 0.3-0.6 s pauses between a question's sentences")
    call.add_argument(
        "--turn-timeout-s", type=float, default=None, help="an answer must start within this (default 30)"
    )
    call.add_argument(
        "--wav",
        action="append",
        default=[],
        help="ask this 16-bit WAV recording (any rate) instead of the TTS questions; repeatable, or a comma list",
    )
    evaluate = sub.add_parser("eval", help="measure a part of the gateway on a question set; prints JSON")
    evaluate.add_argument("what", choices=["knowledge"], help="knowledge: matching of questions to entries")
    evaluate.add_argument("rest", nargs=argparse.REMAINDER, help="FILE [--kb PATH]")
    args = parser.parse_args(argv)
    if args.command == "eval":
        from inzwa_voice.knowledge.evaluate import main as evaluate_knowledge

        raise SystemExit(evaluate_knowledge(args.rest, embed=_embed(_settings())))
    if args.command == "call":
        from inzwa_voice.simulator.questions import wav_paths
        from inzwa_voice.simulator.run import TURN_TIMEOUT_S, simulate

        summary = asyncio.run(
            simulate(
                args.url,
                leg=args.leg,
                calls=args.calls,
                questions_per_call=args.questions,
                barge_in_after_ms=args.barge_in_ms,
                wavs=wav_paths(args.wav),
                seed=args.seed,
                turn_timeout_s=args.turn_timeout_s or TURN_TIMEOUT_S,
            )
        )
        print(json.dumps(summary, indent=2))
        return
    settings = _settings()
    logs.setup(settings.log_level)
    if args.command == "serve":
        serve(settings)
    elif args.command == "models":
        prepare_models(settings)
    else:
        print(json.dumps(settings.masked(), indent=2))
        _refuse_problems(preflight.check(settings, ports=args.ports))


if __name__ == "__main__":
    main()
