"""Start-up checks: a port taken, a model path wrong, a file broken is named before any model loads.

``inzwa-voice serve`` must stop at once with a line naming the setting and its value, not after
seconds of loading with a library's traceback; ``check-config`` finds the same problems in the
files and exits 2 (0 when all is well).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from inzwa_voice import preflight
from inzwa_voice.config import Settings, load_settings
from inzwa_voice.simulator.process import free_port

CLI = Path(sys.executable).with_name("inzwa-voice")
ENGLISH = Path(__file__).parent / "dialplans" / "english.yaml"


def settings(tmp_path: Path, **overrides: object) -> Settings:
    base: dict[str, object] = {"data_dir": tmp_path / "data", "db_path": tmp_path / "calls.db"}
    return load_settings(_env_file=None, **(base | overrides))


@pytest.fixture
def taken() -> Iterator[tuple[int, int]]:
    """A TCP port and a UDP port another process (this one) holds on 127.0.0.1."""
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        udp.bind(("127.0.0.1", 0))
        yield tcp.getsockname()[1], udp.getsockname()[1]


def messages(problems: list[preflight.Problem]) -> list[str]:
    return [str(p) for p in problems]


def test_defaults_have_no_problems(tmp_path: Path) -> None:
    assert preflight.check(settings(tmp_path, port=free_port(), sip_port=0, audiosocket_port=0)) == []


def test_ports_in_use_are_named_with_their_setting(tmp_path: Path, taken: tuple[int, int]) -> None:
    tcp, udp = taken
    found = messages(preflight.port_problems(settings(tmp_path, port=tcp, sip_port=udp, audiosocket_port=0)))
    assert found == [
        f"INZWA_PORT={tcp}: 127.0.0.1:{tcp} (TCP, HTTP) is already in use by another process: "
        "stop it or choose another port",
        f"INZWA_SIP_PORT={udp}: 127.0.0.1:{udp} (UDP, SIP) is already in use by another process: "
        "stop it or choose another port",
    ]


def test_two_settings_on_one_port_and_a_foreign_address(tmp_path: Path, taken: tuple[int, int]) -> None:
    tcp, _ = taken
    free = tcp + 1 if tcp < 65535 else tcp - 1
    config = settings(tmp_path, port=free, audiosocket_port=free, sip_port=0, sip_host="192.0.2.1", sip_enabled=True)
    config = config.model_copy(update={"sip_port": 5999})
    found = "\n".join(messages(preflight.port_problems(config)))
    assert f"INZWA_AUDIOSOCKET_PORT={free}: AudioSocket and HTTP both want TCP port {free} (INZWA_PORT)" in found
    assert "INZWA_SIP_PORT=5999: cannot bind 192.0.2.1:5999 (UDP, SIP): INZWA_SIP_HOST=192.0.2.1" in found


def test_model_paths_are_checked_before_loading(tmp_path: Path) -> None:
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 a zip, not a model")
    empty_dir = tmp_path / "whisper"
    empty_dir.mkdir()
    found = messages(
        preflight.file_problems(
            settings(tmp_path, llm_model_path=not_gguf, asr_model_path=empty_dir, vad_model_path=tmp_path / "vad.onnx")
        )
    )
    assert found == [
        f"INZWA_VAD_MODEL_PATH={tmp_path / 'vad.onnx'}: no such file (a Silero VAD ONNX model)",
        f"INZWA_ASR_MODEL_PATH={empty_dir}: not a CTranslate2 Whisper model: it has no model.bin",
        f"INZWA_LLM_MODEL_PATH={not_gguf}: not a GGUF file (it does not start with 'GGUF')",
    ]
    missing = messages(preflight.file_problems(settings(tmp_path, llm_model_path=tmp_path / "gone.gguf")))
    assert missing == [f"INZWA_LLM_MODEL_PATH={tmp_path / 'gone.gguf'}: no such file (a GGUF model for llama.cpp)"]
    remote = settings(tmp_path, llm_engine="openai", llm_base_url="localhost:8000", llm_model_path=tmp_path / "x")
    assert messages(preflight.file_problems(remote)) == [
        "INZWA_LLM_BASE_URL=localhost:8000: must be an http:// or https:// URL"
    ]


def test_the_dialplan_and_its_knowledge_bases_are_read(tmp_path: Path) -> None:
    broken_kb = tmp_path / "kb.yaml"
    broken_kb.write_text("languages: [en]\ntexts: !!float x\nentries: []\n")
    dialplan = tmp_path / "dialplan.yaml"
    dialplan.write_text(ENGLISH.read_text().replace("knowledge: helpline", "knowledge: kb.yaml", 1))
    (found,) = messages(preflight.file_problems(settings(tmp_path, dialplan_path=dialplan)))
    assert found.startswith(f"INZWA_DIALPLAN_PATH={dialplan}: knowledge 'kb.yaml': {broken_kb}:2:8: ")
    dialplan.write_text("profiles: {p: {language: sn}}\ndefault: q\n")
    (found,) = messages(preflight.file_problems(settings(tmp_path, dialplan_path=dialplan)))
    assert found.startswith(f"INZWA_DIALPLAN_PATH={dialplan}: {dialplan}:2:10: default: unknown profile 'q'")


def test_folders_the_gateway_writes_must_be_writable(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    found = messages(preflight.file_problems(settings(tmp_path, db_path=a_file / "calls.db")))
    assert found == [f"INZWA_DB_PATH={a_file / 'calls.db'}: {a_file} is not a directory"]


def run_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("INZWA_")}
    env = {"INZWA_DATA_DIR": str(tmp_path / "data"), "INZWA_DB_PATH": str(tmp_path / "calls.db"), **env}
    return subprocess.run(
        [str(CLI), *args], env=clean | env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )


def test_check_config_exit_codes(tmp_path: Path, taken: tuple[int, int]) -> None:
    ok = run_cli(tmp_path, "check-config")
    assert ok.returncode == 0, ok.stderr
    assert '"port": 8080' in ok.stdout
    bad = run_cli(tmp_path, "check-config", INZWA_ASR_MODEL_PATH=str(tmp_path / "nope"))
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        f"invalid configuration: INZWA_ASR_MODEL_PATH={tmp_path / 'nope'}: "
        "no such directory (a CTranslate2 Whisper model)"
    )
    tcp, _ = taken
    assert run_cli(tmp_path, "check-config", INZWA_PORT=str(tcp)).returncode == 0  # files only
    ports = run_cli(tmp_path, "check-config", "--ports", INZWA_PORT=str(tcp), INZWA_SIP_PORT="0")
    assert ports.returncode == 2 and f"INZWA_PORT={tcp}: 127.0.0.1:{tcp} (TCP, HTTP) is already in use" in ports.stderr
    invalid = run_cli(tmp_path, "check-config", INZWA_PORT="eighty")
    assert invalid.returncode == 2 and "invalid setting INZWA_PORT" in invalid.stderr


def test_serve_stops_before_loading_any_model(tmp_path: Path, taken: tuple[int, int]) -> None:
    tcp, udp = taken
    result = run_cli(
        tmp_path,
        "serve",
        INZWA_PORT=str(tcp),
        INZWA_SIP_PORT=str(udp),
        INZWA_LLM_MODEL_PATH=str(tmp_path / "missing.gguf"),
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"invalid configuration: INZWA_LLM_MODEL_PATH={tmp_path / 'missing.gguf'}: "
        "no such file (a GGUF model for llama.cpp)",
        f"invalid configuration: INZWA_PORT={tcp}: 127.0.0.1:{tcp} (TCP, HTTP) is already in use by another "
        "process: stop it or choose another port",
        f"invalid configuration: INZWA_SIP_PORT={udp}: 127.0.0.1:{udp} (UDP, SIP) is already in use by another "
        "process: stop it or choose another port",
    ]
    assert "Traceback" not in result.stderr and "engines loaded" not in result.stderr
