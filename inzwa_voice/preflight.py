"""Start-up checks that need no model: files readable and well-formed, ports free.

Loading the models takes seconds; a port already taken or a model path with a typo must not
cost those seconds and then end in a library's traceback (``OSError: [Errno 98]``, a bare
``pjsua2.Error``, faster-whisper's ``HFValidationError`` for a directory that does not exist).
``inzwa-voice serve`` runs every check here before it loads anything, ``check-config`` runs the
file checks (and the port checks with ``--ports``), and each problem names the setting as an
operator writes it, its value, and what is wrong.
"""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from inzwa_voice.config import ENV_PREFIX, Settings
from inzwa_voice.dialplan import DEFAULT_DIALPLAN, Dialplan, DialplanError
from inzwa_voice.knowledge.loader import DEFAULT_KNOWLEDGE, KnowledgeError, load_knowledge

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class Problem:
    """One setting that would stop the gateway, worded for the operator."""

    setting: str
    value: object
    message: str

    def __str__(self) -> str:
        return f"{ENV_PREFIX}{self.setting.upper()}={self.value}: {self.message}"


def check(settings: Settings, *, ports: bool = True) -> list[Problem]:
    """Every problem found (an empty list: the gateway can start as configured)."""
    return [*file_problems(settings), *(port_problems(settings) if ports else [])]


# ----- files -----


def file_problems(settings: Settings) -> list[Problem]:
    """Model files, the dialplan and its knowledge bases, and the folders the gateway writes."""
    problems = [*_model_problems(settings), *_dialplan_problems(settings)]
    # The models may be assembled into data_dir at image build time, and the folder read-only
    # since (a container's read-only root): only a folder still to be created must be writable.
    data_dir = settings.data_dir
    if data_dir.exists() and not data_dir.is_dir():
        problems.append(Problem("data_dir", data_dir, "not a directory"))
    elif not data_dir.exists():
        problems += _folder_problem("data_dir", data_dir, data_dir)
    if settings.db_url is None:
        problems += _folder_problem("db_path", settings.db_path, settings.db_path.parent)
    return problems


def _model_problems(settings: Settings) -> list[Problem]:
    problems = []
    vad = settings.vad_model_path
    if vad is not None and not vad.is_file():
        problems.append(Problem("vad_model_path", vad, "no such file (a Silero VAD ONNX model)"))
    asr = settings.asr_model_path
    if asr is not None:
        if not asr.is_dir():
            problems.append(Problem("asr_model_path", asr, "no such directory (a CTranslate2 Whisper model)"))
        elif not (asr / "model.bin").is_file():
            problems.append(Problem("asr_model_path", asr, "not a CTranslate2 Whisper model: it has no model.bin"))
    llm = settings.llm_model_path
    if settings.llm_engine == "llama-cpp" and llm is not None:
        if not llm.is_file():
            problems.append(Problem("llm_model_path", llm, "no such file (a GGUF model for llama.cpp)"))
        elif not _starts_with(llm, GGUF_MAGIC):
            problems.append(Problem("llm_model_path", llm, "not a GGUF file (it does not start with 'GGUF')"))
    if settings.llm_engine == "openai":
        url = urlsplit(settings.llm_base_url)
        if url.scheme not in ("http", "https") or not url.netloc:
            problems.append(Problem("llm_base_url", settings.llm_base_url, "must be an http:// or https:// URL"))
    return problems


def _starts_with(path: Path, magic: bytes) -> bool:
    try:
        with path.open("rb") as file:
            return file.read(len(magic)) == magic
    except OSError:
        return False


def _dialplan_problems(settings: Settings) -> list[Problem]:
    """The dialplan and every knowledge base its profiles name, read and checked as at start-up."""
    path = settings.dialplan_path or DEFAULT_DIALPLAN
    try:
        dialplan = Dialplan.load(path)
    except DialplanError as exc:
        return [Problem("dialplan_path", path, str(exc))]
    problems = []
    for name in sorted({p.knowledge for p in dialplan.profiles.values() if p.knowledge is not None}):
        # Resolved as the calls resolve it: "helpline" is the packaged sample, else a path
        # relative to the dialplan.
        knowledge = DEFAULT_KNOWLEDGE if name == "helpline" else path.parent / name
        try:
            load_knowledge(knowledge)
        except KnowledgeError as exc:
            problems.append(Problem("dialplan_path", path, f"knowledge {name!r}: {exc}"))
    return problems


def _folder_problem(setting: str, value: Path, folder: Path) -> list[Problem]:
    """``folder`` is a writable directory, or can be created in one."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return [Problem(setting, value, f"{existing} is not a directory")]
    if not os.access(existing, os.W_OK | os.X_OK):
        return [Problem(setting, value, f"{existing} is not writable by this user")]
    return []


# ----- ports -----


@dataclass(frozen=True)
class _Port:
    setting: str
    host_setting: str
    host: str
    port: int
    kind: socket.SocketKind
    what: str

    @property
    def protocol(self) -> str:
        return "TCP" if self.kind == socket.SOCK_STREAM else "UDP"


def _ports(settings: Settings) -> list[_Port]:
    """The sockets ``serve`` will open; port 0 (any free port) cannot clash."""
    wanted = [_Port("port", "host", settings.host, settings.port, socket.SOCK_STREAM, "HTTP")]
    if settings.audiosocket_enabled:
        a = settings.audiosocket_host, settings.audiosocket_port
        wanted.append(_Port("audiosocket_port", "audiosocket_host", *a, socket.SOCK_STREAM, "AudioSocket"))
    if settings.sip_enabled:
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            wanted.append(_Port("sip_port", "sip_host", settings.sip_host, settings.sip_port, kind, "SIP"))
    return [p for p in wanted if p.port != 0]


def port_problems(settings: Settings) -> list[Problem]:
    """Ports another process holds, addresses this machine does not have, and two settings
    that name the same port."""
    problems = []
    seen: dict[tuple[int, socket.SocketKind], _Port] = {}
    for wanted in _ports(settings):
        earlier = seen.setdefault((wanted.port, wanted.kind), wanted)
        if earlier is not wanted and _overlap(earlier.host, wanted.host):
            message = f"{wanted.what} and {earlier.what} both want {wanted.protocol} port {wanted.port}"
            problems.append(Problem(wanted.setting, wanted.port, f"{message} ({ENV_PREFIX}{earlier.setting.upper()})"))
            continue
        reason = _bind_error(wanted)
        if reason is not None:
            problems.append(Problem(wanted.setting, wanted.port, reason))
    return problems


def _overlap(a: str, b: str) -> bool:
    return a == b or "0.0.0.0" in (a, b) or "::" in (a, b)


def _bind_error(wanted: _Port) -> str | None:
    where = f"{wanted.host}:{wanted.port} ({wanted.protocol}, {wanted.what})"
    try:
        infos = socket.getaddrinfo(wanted.host, wanted.port, type=wanted.kind, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        host = f"{ENV_PREFIX}{wanted.host_setting.upper()}={wanted.host}"
        return f"cannot bind {where}: {host} is not an address ({exc.strerror})"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        if kind == socket.SOCK_STREAM:  # as the servers do: a port in TIME_WAIT is free
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
            if kind == socket.SOCK_STREAM:
                probe.listen(1)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"{where} is already in use by another process: stop it or choose another port"
            if exc.errno == errno.EADDRNOTAVAIL:
                host = f"{ENV_PREFIX}{wanted.host_setting.upper()}={wanted.host}"
                return f"cannot bind {where}: {host} is not an address of this machine"
            if exc.errno == errno.EACCES:
                return f"cannot bind {where}: ports below 1024 need privileges"
            return f"cannot bind {where}: {exc.strerror}"
    return None
