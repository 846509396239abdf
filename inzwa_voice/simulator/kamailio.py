"""Kamailio and SIP gateways as real processes, for the SIP tests and the SIP load benchmark.

Kamailio runs in the foreground with ``-A NAME=value`` defines (the configs in ``sip/kamailio/``
read everything from them) and a ``kamcmd`` control socket in a work folder; each gateway is an
ordinary ``inzwa-voice serve`` on its own SIP port, RTP range and call database.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from inzwa_voice.simulator.process import free_ports, gateway_process, prompts_ready

CONFIG_DIR = Path(__file__).resolve().parents[2] / "sip" / "kamailio"


def kamcmd(ctl: str, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["kamcmd", "-s", ctl, *command], capture_output=True, text=True, timeout=5, check=False)


def dispatcher_state(ctl: str) -> dict[str, str]:
    """Kamailio's gateways and their state flags (``AP`` active and probed, ``IP`` inactive)."""
    return dict(re.findall(r"URI:\s*(\S+)\s+FLAGS:\s*(\S+)", kamcmd(ctl, "dispatcher.list").stdout))


def wait_until(condition: Callable[[], bool], process: subprocess.Popen[Any], timeout: float, what: str) -> None:
    """Poll, bounded, for a state Kamailio reaches on its own timers (probes, start-up), which it
    announces nowhere one could wait on."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise RuntimeError(f"Kamailio exited while waiting for {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"Kamailio never reached {what} within {timeout:g} s")
        time.sleep(0.1)


def stop(process: subprocess.Popen[Any]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def kamailio(
    config: Path, workdir: Path, defines: dict[str, str], *, memory_mb: tuple[int, int] = (32, 8)
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Kamailio running ``config`` with ``defines`` plus ``CTL_SOCKET``; yields (ctl, process) once
    its control socket answers. Its log is ``workdir/kamailio.log``."""
    ctl = f"unix:{workdir / 'kamailio.ctl'}"
    runtime = workdir / "kamailio-run"
    runtime.mkdir()
    shared, private = memory_mb
    args = ["kamailio", "-DD", "-E", "-f", str(config), "-m", str(shared), "-M", str(private), "-Y", str(runtime)]
    for name, value in {**defines, "CTL_SOCKET": f'"{ctl}"'}.items():
        args += ["-A", f"{name}={value}"]
    with (workdir / "kamailio.log").open("w") as log:
        process = subprocess.Popen(args, cwd=workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: kamcmd(ctl, "core.uptime").returncode == 0, process, 10, "its control socket")
        yield ctl, process
    finally:
        stop(process)


@contextlib.contextmanager
def dispatcher(
    workdir: Path, gateway_ports: list[int], timeout: float = 30
) -> Iterator[tuple[int, str, subprocess.Popen[bytes]]]:
    """``sip/kamailio/kamailio.cfg`` dispatching to the gateways on ``gateway_ports``, ready once it
    sees every gateway active; yields (its SIP port, ctl, process)."""
    port = free_ports(1, tcp=True)
    ds_list = workdir / "dispatcher.list"
    ds_list.write_text("".join(f"1 sip:127.0.0.1:{p}\n" for p in gateway_ports))
    defines = {
        "LISTEN": f"udp:127.0.0.1:{port}",
        "DS_LIST": f'"{ds_list}"',
        "DS_PING_INTERVAL": "1",
        "DS_PROBE_THRESHOLD": "2",
        "FR_TIMER_MS": "2000",
    }
    with kamailio(CONFIG_DIR / "kamailio.cfg", workdir, defines) as (ctl, process):
        expected = {f"sip:127.0.0.1:{p}": "AP" for p in gateway_ports}
        wait_until(lambda: dispatcher_state(ctl) == expected, process, timeout, "every gateway active")
        yield port, ctl, process


@contextlib.contextmanager
def sip_gateway(
    workdir: Path, name: str, env: dict[str, str] | None = None
) -> Iterator[tuple[str, int, subprocess.Popen[str]]]:
    """One gateway process on its own SIP port, RTP range and database: (URL, SIP port, process),
    once its authored answers are synthesized, as a dispatcher in front of it should wait for."""
    sip_port = free_ports(1, tcp=True)
    gateway_env = {
        "INZWA_SIP_HOST": "127.0.0.1",
        "INZWA_SIP_PORT": str(sip_port),
        "INZWA_SIP_RTP_PORT": str(free_ports(16, tcp=True)),
        "INZWA_SIP_DRAIN_TIMEOUT_S": "1",
        "INZWA_DB_PATH": str(workdir / f"{name}.db"),
        "INZWA_API_KEYS": "",
        **(env or {}),
    }
    with gateway_process(gateway_env) as (url, process):
        prompts_ready(url, process)
        yield url, sip_port, process
