"""Shared fixtures: the real engines loaded once per test session, and real HTTP servers.

Every server binds 127.0.0.1 on a free port and is stopped by the fixture that started it.
Speech for tests is made with the packaged TTS, so nothing is downloaded.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from aiohttp import ClientSession, web
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from inzwa_voice.app import build_app
from inzwa_voice.config import Settings, load_settings
from inzwa_voice.engines.loading import load_engines
from inzwa_voice.engines.runtime import Engines
from inzwa_voice.media.resample import Resampler
from inzwa_voice.telemetry import Metrics

# Property tests (tests/fuzz/): "ci" bounds every @given so the suite stays within CI's time;
# HYPOTHESIS_PROFILE=long searches far longer (for a night, not a commit).
hypothesis_settings.register_profile(
    "ci", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
hypothesis_settings.register_profile("long", max_examples=20_000, deadline=None)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    # Keys and limits from a developer's .env must not leak into tests, nor records into ~.
    return load_settings(_env_file=None, db_path=tmp_path_factory.mktemp("records") / "calls.db")


@pytest.fixture(scope="session")
def engines(settings: Settings) -> Engines:
    loaded = load_engines(settings, Metrics())
    loaded.warmup()
    return loaded


@dataclass
class Server:
    url: str
    app: web.Application
    http: ClientSession

    @property
    def v1(self) -> str:
        return self.url + "/v1"


ServerFactory = Callable[..., Awaitable[Server]]


@pytest.fixture
async def make_server(
    settings: Settings, engines: Engines, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ServerFactory]:
    runners: list[web.AppRunner] = []
    sessions: list[ClientSession] = []

    async def start(*, with_engines: Engines | None = None, **overrides: object) -> Server:
        """A gateway on the session's engines (or ``with_engines``) with these settings changed."""
        overrides.setdefault("db_path", tmp_path_factory.mktemp("server") / "calls.db")
        overrides.setdefault("audiosocket_port", 0)
        overrides.setdefault("sip_enabled", False)  # pjsua2 allows one endpoint per process
        overrides.setdefault("webrtc_host_addresses", ["127.0.0.1"])  # media stays on loopback
        app = build_app(settings.model_copy(update=overrides), with_engines or engines)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        http = ClientSession()
        sessions.append(http)
        return Server(f"http://127.0.0.1:{port}", app, http)

    yield start
    for http in sessions:
        await http.close()
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def server(make_server: ServerFactory) -> Server:
    return await make_server()


ENGLISH_DIALPLAN = Path(__file__).parent / "dialplans" / "english.yaml"


async def english_server(make_server: ServerFactory, **overrides: object) -> Server:
    """A gateway whose calls are in English (tests/dialplans/english.yaml), so ASR checks words."""
    return await make_server(language="en", tts_voice="joe", dialplan_path=ENGLISH_DIALPLAN, **overrides)


async def transcript(engines: Engines, pcm: np.ndarray, rate: int) -> str:
    """What ASR hears in audio a caller received (int16 at ``rate``), in English."""
    audio = Resampler(rate, 16000).process(pcm.astype(np.int16)).astype(np.float32) / np.float32(32768)
    return (await engines.transcribe(audio, language="en")).text.strip()


async def speak(engines: Engines, text: str, *, voice: str = "joe", rate: int = 16000) -> np.ndarray:
    """Real speech from the packaged TTS, as int16 at ``rate``."""
    chunks = [c async for c in engines.synthesize(text, voice=voice, sample_rate=rate)]
    return np.concatenate(chunks)
