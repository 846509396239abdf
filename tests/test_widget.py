"""The web widget: its files at /widget/, and a real call through it in Debian's Chromium over WebRTC.

The browser test runs ``tests/browser/call.mjs`` (playwright-core driving ``/usr/bin/chromium``;
``make test`` installs both). Chromium's fake microphone plays a question spoken by the gateway's
own TTS; the script makes the call with the keyboard and prints one JSON line of what the page saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import struct
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from inzwa_voice.api.keys import CALLS
from inzwa_voice.conversation.calls import CallEvent
from tests.conftest import Server, ServerFactory, english_server

BROWSER_DIR = Path(__file__).parent / "browser"
CALL_SCRIPT = BROWSER_DIR / "call.mjs"
CHROMIUM = Path("/usr/bin/chromium")
QUESTION = "Hello. Where is the nearest clinic?"
RATE = 48000
# The fake microphone starts with the call: the question waits for the greeting to end. Chromium
# loops the file: the silence after the question lets the endpointer end the turn before it
# starts again.
LEADING_SILENCE_S = 4.0
TRAILING_SILENCE_S = 2.0
# call.mjs bounds each of its steps (the longest, the answer, at 90 s); this only catches a hang.
BROWSER_TIMEOUT_S = 180.0
SITE_KEY = "sk-helpline-site"
SITE_AUTH = {"Authorization": f"Bearer {SITE_KEY}"}
ADMIN_KEY = "sk-helpline-admin"
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
# The README's embedding snippet, as a helpline's page carries it (another origin than the gateway's).
EMBED_PAGE = """<!doctype html>
<html lang="sn"><meta charset="utf-8"><title>Helpline</title>
<div id="inzwa-widget"></div>
<script src="{gateway}/widget/widget.js" data-gateway="{gateway}" data-token="{token}"></script>
</html>
"""
# Peak RMS of the helper's audio on the page's AnalyserNode (full scale 1.0), as call.mjs waits for it.
RMS_THRESHOLD = 0.02


async def test_the_widget_is_served_without_a_key(make_server: ServerFactory) -> None:
    server = await make_server(api_keys=["sk-widget"])
    async with server.http.get(server.url + "/widget/") as page:
        assert page.status == 200
        assert page.content_type == "text/html"
        assert "default-src 'self'" in page.headers["Content-Security-Policy"]
        assert 'src="widget.js"' in await page.text()
        etag = page.headers["ETag"]
    async with server.http.get(server.url + "/widget/", headers={"If-None-Match": etag}) as cached:
        assert cached.status == 304
    for name, content_type in (("widget.js", "text/javascript"), ("widget.css", "text/css")):
        async with server.http.get(server.url + "/widget/" + name) as asset:
            assert (asset.status, asset.content_type, asset.charset) == (200, content_type, "utf-8")
    async with server.http.get(server.url + "/widget", allow_redirects=False) as bare:
        assert (bare.status, bare.headers["Location"]) == (308, "/widget/")
    async with server.http.get(server.url + "/widget/__init__.py") as source:
        assert source.status == 404
        assert (await source.json())["error"]["type"] == "not_found_error"


@pytest.fixture
def browser() -> None:
    assert CHROMIUM.exists(), "Debian's chromium is missing: `make test` installs it"
    assert (BROWSER_DIR / "node_modules" / "playwright-core").exists(), "run `npm ci --prefix tests/browser`"


@pytest.mark.usefixtures("browser")
async def test_a_browser_calls_the_helpline_through_the_widget(make_server: ServerFactory, tmp_path: Path) -> None:
    """With keys on: the built-in page holds no key and gets its call token from /widget/token."""
    server = await english_server(make_server, api_keys=[SITE_KEY], admin_keys=[ADMIN_KEY])
    with server.app[CALLS].watch() as recorded:
        result = await browser_call(server, server.url + "/widget/", tmp_path, SITE_AUTH)
        await call_ended(recorded, result)
    await check_call(server, result, tmp_path, ADMIN_AUTH)


@pytest.mark.usefixtures("browser")
async def test_a_helpline_page_embeds_the_widget(make_server: ServerFactory, tmp_path: Path) -> None:
    """The README's snippet on another origin, with a token its server got with an API key."""
    server = await english_server(make_server, api_keys=[SITE_KEY], admin_keys=[ADMIN_KEY])
    with server.app[CALLS].watch() as recorded:
        async with helpline_site(server) as page_url:
            result = await browser_call(server, page_url, tmp_path, SITE_AUTH)
        await call_ended(recorded, result)
    await check_call(server, result, tmp_path, ADMIN_AUTH)


async def browser_call(server: Server, page_url: str, tmp_path: Path, auth: dict[str, str]) -> dict[str, Any]:
    wav = tmp_path / "question.wav"
    await speak_to_wav(server, QUESTION, wav, auth)
    return await run_browser(page_url, wav, tmp_path)


# Screenshots are kept where CI and developers can look at them (the folder is git-ignored).
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


async def check_call(server: Server, result: dict[str, Any], out_dir: Path, auth: dict[str, str]) -> None:
    assert result["ok"], result
    screenshot = out_dir / "widget.png"
    assert screenshot.stat().st_size > 0
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(screenshot, ARTIFACTS / f"widget-{out_dir.name}.png")
    # The keyboard made the call, and focus followed the button that replaced the one pressed.
    assert result["focusAfterCall"] == "inzwa-hangup"
    assert result["focusAfterHangUp"] == "inzwa-call"
    assert result["states"][:3] == ["idle", "connecting", "listening"]
    assert "speaking" in result["states"]
    assert result["states"][-1] == "ended"
    # The microphone reached ASR and the transcript shows it; the helper's voice reached the page.
    assert any("clinic" in line.lower() for line in result["callerLines"]), result
    assert len(result["helperLines"]) >= 2  # the greeting and the answer
    assert result["rmsMax"] > RMS_THRESHOLD
    assert {"session.started", "asr.final", "llm.partial", "tts.start", "transfer"} <= set(result["eventTypes"])
    # The widget offers the profile's real target (tests/dialplans/english.yaml) as a link.
    assert "person" in result["transferNote"]
    assert result["transferHref"] == "sip:counsellor@127.0.0.1:5070"
    # The hang-up reached the gateway: the call's record is closed as the caller's.
    async with server.http.get(f"{server.v1}/admin/calls/{result['callId']}", headers=auth) as resp:
        record: dict[str, Any] = await resp.json()
    assert (record["leg"], record["disposition"]) == ("webrtc", "caller_hangup")
    assert {"transfer", "transfer_result"} <= {event["kind"] for event in record["events"]}


@contextlib.asynccontextmanager
async def helpline_site(gateway: Server) -> AsyncIterator[str]:
    """A helpline's own web server: it gets a call token with its key and serves a page embedding the widget."""

    async def page(request: web.Request) -> web.Response:
        async with gateway.http.post(gateway.v1 + "/webrtc/token", headers=SITE_AUTH) as resp:
            assert resp.status == 200, await resp.text()
            token = (await resp.json())["token"]
        return web.Response(text=EMBED_PAGE.format(gateway=gateway.url, token=token), content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/"
    finally:
        await runner.cleanup()


async def speak_to_wav(server: Server, text: str, path: Path, auth: dict[str, str]) -> None:
    """The gateway's TTS, rewritten as a sized 16-bit WAV with silence around the words.

    ``/v1/tts`` streams its WAV, so the header's sizes say "unknown" (0xFFFFFFFF); Chromium's
    fake capture reads the sizes, so the file is written again with real ones.
    """
    body = {"text": text, "voice": "joe", "format": "wav", "sample_rate": RATE}
    async with server.http.post(server.v1 + "/tts", json=body, headers=auth) as resp:
        assert resp.status == 200, await resp.text()
        data = await resp.read()
    fmt, channels, rate, bits = struct.unpack_from("<HHI6xH", data, 20)
    assert (data[:4], data[36:40], fmt, channels, rate, bits) == (b"RIFF", b"data", 1, 1, RATE, 16)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(silence(LEADING_SILENCE_S) + data[44:] + silence(TRAILING_SILENCE_S))


def silence(seconds: float) -> bytes:
    return bytes(2 * int(RATE * seconds))


async def run_browser(page_url: str, wav: Path, out_dir: Path) -> dict[str, Any]:
    """Run call.mjs in its own process group and return its JSON line; nothing it started outlives it."""
    node = shutil.which("node")
    assert node, "node is missing"
    proc = await asyncio.create_subprocess_exec(
        node,
        str(CALL_SCRIPT),
        page_url,
        str(wav),
        str(out_dir),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), BROWSER_TIMEOUT_S)
    finally:
        if proc.returncode is None:
            await stop(proc)
    lines = stdout.decode().strip().splitlines()
    assert lines, f"call.mjs printed nothing (exit {proc.returncode}): {stderr.decode()[-2000:]}"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


async def stop(proc: asyncio.subprocess.Process) -> None:
    # SIGTERM first: playwright closes the browser it launched (in a process group of its own)
    # before exiting. Then anything left in node's group goes.
    proc.terminate()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), 10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()


async def call_ended(recorded: asyncio.Queue[CallEvent], result: dict[str, Any]) -> None:
    """Wait until the gateway has recorded the end of the browser's call (it handles the
    hang-up after the page is done)."""
    async with asyncio.timeout(30):
        while (event := await recorded.get()).kind != "end" or event.call_id != result.get("callId"):
            pass
