"""The log as an operator's collector reads it: JSON lines with ISO 8601 times, the gateway's own
lines at INFO without the libraries' chatter, and llama.cpp's native log among them as JSON."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from inzwa_voice import logs


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """``logs.setup`` replaces the root handlers (pytest's capture among them): put them back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in logs.QUIET}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)


def written(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines()]


@pytest.mark.usefixtures("restored_logging")
def test_at_info_the_libraries_say_only_warnings_and_times_are_iso(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup("INFO")
    logging.getLogger("aioice.ice").info("Connection(0) Check CandidatePair(...) State.FROZEN -> State.WAITING")
    logging.getLogger("faster_whisper").info("Processing audio with duration 00:02.000")
    logging.getLogger("aiortc.rtcdtlstransport").warning("DTLS handshake failed")
    logging.getLogger("inzwa_voice.conversation.calls").info("call started", extra={"call_id": "c1", "leg": "ws"})
    entries = written(capsys)
    assert [e["msg"] for e in entries] == ["DTLS handshake failed", "call started"]
    assert entries[1]["call_id"] == "c1"
    for entry in entries:
        ts = str(entry["ts"])
        assert ts.endswith("Z")
        parsed = datetime.fromisoformat(ts)
        assert parsed.utcoffset() is not None and parsed.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


@pytest.mark.usefixtures("restored_logging")
def test_at_debug_the_libraries_speak_too(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup("DEBUG")
    logging.getLogger("aioice.ice").info("Connection(0) Check CandidatePair(...)")
    assert [e["logger"] for e in written(capsys)] == ["aioice.ice"]


def test_llama_cpp_writes_its_native_log_through_logging(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    from llama_cpp import Llama

    from inzwa_voice.engines.llm import llamacpp  # noqa: F401  # routes llama.cpp's log

    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 60)
    caplog.set_level(logging.DEBUG, logger="llama_cpp")
    with pytest.raises(ValueError, match="Failed to load model"):
        Llama(model_path=str(broken), verbose=False)
    native = [r for r in caplog.records if r.name == "llama_cpp"]
    assert any(r.levelno == logging.ERROR and "failed to load model" in r.getMessage() for r in native), [
        (r.levelname, r.getMessage()) for r in native
    ]
    assert all(not r.getMessage().endswith("\n") and r.getMessage() for r in native)  # whole lines
    out, err = capfd.readouterr()
    assert "failed to load model" not in out + err


def test_pjsua_writes_nothing_raw_when_the_sip_endpoint_starts_and_stops(tmp_path: Path) -> None:
    """pjlib's start-up lines (``pjlib 2.15 for POSIX initialized`` ...) come before pjsua2 takes
    its log writer: none may reach stdout or stderr. In a process of its own: pjsua2 allows one
    endpoint per process."""
    code = """
        import asyncio
        from inzwa_voice.sip.endpoint import EndpointConfig, SipEndpoint

        class Listener:
            def __getattr__(self, name):
                return lambda *args: None

        async def main():
            endpoint = SipEndpoint(Listener(), EndpointConfig(host="127.0.0.1", port=0, rtp_port=0))
            await endpoint.start()
            await endpoint.stop()

        asyncio.run(main())
        print("stopped")
    """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("stopped\n", "")
