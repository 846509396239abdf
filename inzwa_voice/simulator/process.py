"""A gateway as a separate process, for end-to-end tests and benchmarks: ``inzwa-voice serve``
exactly as an operator starts it, ready when it says so, stopped when done.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(count: int, *, tcp: bool = False) -> int:
    """A base port with ``count`` consecutive ports free on 127.0.0.1 for UDP (and TCP), for
    peers that take port ranges (SIPp's media ports, pjsua2's RTP pairs, SIP on UDP and TCP)."""
    kinds = (socket.SOCK_DGRAM, socket.SOCK_STREAM) if tcp else (socket.SOCK_DGRAM,)
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1]) & ~1
        if base + count > 65535:
            continue
        with contextlib.ExitStack() as stack:
            try:
                for port in range(base, base + count):
                    for kind in kinds:
                        stack.enter_context(socket.socket(socket.AF_INET, kind)).bind(("127.0.0.1", port))
            except OSError:
                continue
            return base
    raise RuntimeError("no free port range on 127.0.0.1")


@contextmanager
def gateway_process(env: dict[str, str] | None = None) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Start ``inzwa-voice serve`` on a free loopback port; yield its URL and process."""
    port = free_port()
    full_env = {
        **os.environ,
        "INZWA_HOST": "127.0.0.1",
        "INZWA_PORT": str(port),
        "INZWA_AUDIOSOCKET_PORT": "0",
        "INZWA_SIP_PORT": "0",
        "INZWA_WEBRTC_HOST_ADDRESSES": "127.0.0.1",
        **(env or {}),
    }
    cli = Path(sys.executable).with_name("inzwa-voice")
    # Its stdout (pjsip logs there) goes to our stderr: a benchmark's stdout is its JSON alone.
    proc = subprocess.Popen([str(cli), "serve"], env=full_env, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # the gateway logs one JSON line once its port is open
            if line.startswith("{") and json.loads(line).get("msg") == "gateway ready":
                break
        else:
            raise RuntimeError(f"the gateway exited with {proc.wait()} before it was ready")
        # Keep draining its log, or a full pipe would block the gateway.
        threading.Thread(target=proc.stderr.read, daemon=True).start()
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def prompts_ready(url: str, process: subprocess.Popen[str], limit_s: float = 300.0) -> float:
    """Wait, bounded, until the gateway's ``/health`` says every greeting and authored answer is
    synthesized (what a load balancer in front of it would wait for); returns the seconds that
    took. Polled: the gateway announces it nowhere else."""
    started = time.monotonic()
    while True:
        with urllib.request.urlopen(f"{url}/health", timeout=10) as response:
            if json.loads(response.read())["prompts"]["ready"]:
                return round(time.monotonic() - started, 1)
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited with {process.returncode} before its prompts were ready")
        if time.monotonic() - started > limit_s:
            raise RuntimeError(f"the gateway's prompts were not ready after {limit_s:g} s")
        time.sleep(0.2)
