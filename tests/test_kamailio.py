"""SIP scale-out: Kamailio's dispatcher in front of two gateway processes, SIPp calling it.

Each gateway is a real ``inzwa-voice serve`` (one pjsua2 endpoint, at most 4 calls) on its own
SIP port, RTP range and call database. Kamailio runs ``sip/kamailio/kamailio.cfg`` in the
foreground with a dispatcher list naming both, on a free loopback port. Eight concurrent calls
must all be answered, four by each gateway; with one gateway stopped, four more calls must all
be answered by the other (Kamailio fails over on a timeout and marks the dead one inactive).

Every process is bounded by a timeout and stopped in ``finally``. The only polling is on
Kamailio's own view of its gateways (``kamcmd dispatcher.list``), bounded, since its OPTIONS
probes run on a timer no test can hook.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from inzwa_voice.simulator.kamailio import dispatcher, dispatcher_state, sip_gateway, wait_until
from inzwa_voice.simulator.process import free_ports

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "sip" / "sipp" / "uac_basic.xml"
CALLER = "+263771234567"
SERVICE = "helpline"
SIPP_TIMEOUT_S = 60
STATE_TIMEOUT_S = 20


@pytest.fixture(autouse=True, scope="module")
def tools_installed() -> None:
    """Kamailio and SIPp are real peers here; `make test` installs them (kamailio, sip-tester)."""
    for tool in ("kamailio", "kamcmd", "sipp"):
        assert shutil.which(tool) is not None, f"{tool} is missing: run `make test` (it installs it)"


def sipp(tmp: Path, port: int, calls: int, name: str) -> subprocess.CompletedProcess[str]:
    """SIPp places ``calls`` concurrent calls to Kamailio and waits for them all to end."""
    args = ["sipp", "-sf", str(SCENARIO), f"127.0.0.1:{port}", "-i", "127.0.0.1", "-t", "u1"]
    args += ["-p", str(free_ports(1, tcp=True)), "-mp", str(free_ports(4, tcp=True)), "-s", SERVICE]
    args += ["-m", str(calls), "-l", str(calls), "-r", str(calls), "-nostdin"]
    args += ["-timeout", f"{SIPP_TIMEOUT_S}s", "-timeout_error", "-key", "caller", CALLER, "-key", "codecs", "0"]
    args += ["-trace_err", "-error_file", str(tmp / f"{name}.errors.log")]
    args += ["-trace_stat", "-stf", str(tmp / f"{name}.stats.csv"), "-cid_str", f"kam-{name}-%u-%p@%s"]
    return subprocess.run(args, cwd=tmp, capture_output=True, text=True, timeout=SIPP_TIMEOUT_S + 15, check=False)


def sip_calls(url: str) -> int:
    """How many SIP calls the gateway has recorded."""
    with urllib.request.urlopen(f"{url}/v1/admin/calls?leg=sip&limit=200", timeout=10) as response:
        return len(json.loads(response.read())["data"])


def test_kamailio_spreads_calls_over_gateways_and_fails_over(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        url_a, port_a, _ = stack.enter_context(sip_gateway(tmp_path, "a"))
        url_b, port_b, process_b = stack.enter_context(sip_gateway(tmp_path, "b"))
        kam_port, ctl, kam = stack.enter_context(dispatcher(tmp_path, [port_a, port_b], STATE_TIMEOUT_S))

        # Eight at once: more than one gateway can take (4 each), all answered.
        first = sipp(tmp_path, kam_port, 8, "eight")
        assert first.returncode == 0, first.stdout[-3000:] + _log(tmp_path / "eight.errors.log")
        assert (sip_calls(url_a), sip_calls(url_b)) == (4, 4)

        # Gateway b goes away. New calls must all land on a, whether Kamailio has already
        # marked b inactive by its probes or fails over when b's INVITE times out.
        process_b.terminate()
        process_b.wait(timeout=30)
        second = sipp(tmp_path, kam_port, 4, "four")
        assert second.returncode == 0, second.stdout[-3000:] + _log(tmp_path / "four.errors.log")
        assert sip_calls(url_a) == 8
        gone = f"sip:127.0.0.1:{port_b}"
        wait_until(
            lambda: dispatcher_state(ctl).get(gone, "").startswith("I"), kam, STATE_TIMEOUT_S, f"{gone} inactive"
        )
        assert dispatcher_state(ctl)[f"sip:127.0.0.1:{port_a}"] == "AP"


def _log(path: Path) -> str:
    return "\n" + path.read_text(errors="replace")[-3000:] if path.exists() else ""
