"""SIP load benchmark: N gateway processes behind Kamailio's dispatcher, SIPp placing calls, JSON out.

Each gateway is a real ``inzwa-voice serve`` (one pjsua2 endpoint, at most 4 calls) on its own
SIP port, RTP range and call database, with the English test dialplan. Kamailio runs
``sip/kamailio/kamailio.cfg`` in the foreground with a dispatcher list naming them all. SIPp
calls Kamailio: ``--calls`` in total at ``--rate`` new calls a second, at most 4 per gateway at
once; each call is answered, the caller speaks (RTP from a pcap of our own TTS, unless
``--no-speech``) and hangs up after ``--hold-ms``. ACK and BYE follow the recorded route, so they
pass Kamailio too.

Reported from SIPp's own statistics: calls attempted, answered (the 200 OK), completed and
failed; call setup time (INVITE sent → 200 OK received, per call from ``-trace_rtt``) p50/p95.
From each gateway's /metrics: CPU seconds per call it took and its peak RSS; how many SIP calls
it finished (``inzwa_calls_total{leg="sip"}``); its answered caller turns (``inzwa_turns``: the
speech got through and was understood); and its RTP counts (``inzwa_sip_rtp_packets_total``).
RTP loss is the caller→gateway direction as the gateway measured it: sequence gaps over packets
expected (received + lost), beside what SIPp played: the pcap's packets (or as many as fit in
the hold) times the calls completed.
SIPp drops the media it receives, so the gateway→caller direction is counted as sent only.

Everything runs on 127.0.0.1; every process is bounded by a timeout and stopped in ``finally``.

    .venv/bin/python loadtest/bench_sip.py [--instances 2] [--calls 8] [--rate 2] [--hold-ms 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from inzwa_voice.simulator.kamailio import dispatcher, sip_gateway
from inzwa_voice.simulator.process import free_ports
from inzwa_voice.simulator.run import gateway_usage
from inzwa_voice.sip.pcap import write_pcap

ROOT = Path(__file__).resolve().parents[1]
ENGLISH_DIALPLAN = ROOT / "tests" / "dialplans" / "english.yaml"
BASIC_SCENARIO = ROOT / "sip" / "sipp" / "uac_basic.xml"
CALLER = "+263771234567"
SERVICE = "helpline"
CALLS_PER_GATEWAY = 4
QUESTION = "What are your opening hours?"
STATE_TIMEOUT_S = 30
SIPP_TIMEOUT_S = 120


def scenario(tmp: Path, pcap: Path | None, hold_ms: int) -> Path:
    """``uac_basic.xml`` with the setup time measured (rtd on the 200), optional speech, given hold."""
    xml = BASIC_SCENARIO.read_text(encoding="iso-8859-1")
    xml = xml.replace('<recv response="200" rrs="true"/>', '<recv response="200" rrs="true" rtd="true"/>', 1)
    media = f'<nop><action><exec play_pcap_audio="{pcap}"/></action></nop>\n  ' if pcap else ""
    xml = xml.replace('<pause milliseconds="3000"/>', f'{media}<pause milliseconds="{hold_ms}"/>', 1)
    if 'rtd="true"' not in xml or f'milliseconds="{hold_ms}"' not in xml:
        raise RuntimeError(f"{BASIC_SCENARIO} changed shape; cannot derive the benchmark scenario")
    path = tmp / "bench_sip.xml"
    path.write_text(xml, encoding="iso-8859-1")
    return path


def speech_pcap(url: str, path: Path) -> int:
    """The caller's question from the gateway's own TTS, as a PCMU RTP pcap; returns its packets."""
    body = json.dumps({"text": QUESTION, "voice": "joe", "format": "pcm", "sample_rate": 8000}).encode()
    request = urllib.request.Request(
        f"{url}/v1/tts", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        audio = np.frombuffer(response.read(), dtype="<i2").copy()
    # Half a second of silence after the question, so the gateway's endpointing sees it end.
    audio = np.concatenate([audio, np.zeros(4000, dtype=np.int16)])
    return write_pcap(path, audio, "pcmu")


def run_sipp(tmp: Path, xml: Path, port: int, calls: int, rate: float, limit: int) -> subprocess.CompletedProcess[str]:
    args = ["sipp", "-sf", str(xml), f"127.0.0.1:{port}", "-i", "127.0.0.1", "-t", "u1"]
    args += ["-p", str(free_ports(1, tcp=True)), "-mp", str(free_ports(4, tcp=True)), "-s", SERVICE]
    # -r new calls per -rp milliseconds: a whole rate per second as it is, a fraction per 1000 s.
    per = (
        ["-r", str(int(rate)), "-rp", "1000"]
        if rate == int(rate)
        else ["-r", str(round(rate * 1000)), "-rp", "1000000"]
    )
    args += ["-m", str(calls), "-l", str(limit), *per, "-nostdin"]
    args += ["-timeout", f"{SIPP_TIMEOUT_S}s", "-timeout_error", "-key", "caller", CALLER, "-key", "codecs", "0"]
    args += ["-trace_err", "-error_file", str(tmp / "sipp.errors.log")]
    args += ["-trace_stat", "-stf", str(tmp / "sipp.stats.csv"), "-fd", "1"]
    args += ["-trace_rtt", "-rtt_freq", "1", "-cid_str", "bench-%u-%p@%s"]
    return subprocess.run(args, cwd=tmp, capture_output=True, text=True, timeout=SIPP_TIMEOUT_S + 30, check=False)


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def sipp_results(tmp: Path) -> dict[str, Any]:
    """Counts from the last row of SIPp's statistics CSV; setup times from its per-call RTT file."""
    with (tmp / "sipp.stats.csv").open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    last = rows[-1]
    setup_ms: list[float] = []
    for rtt in tmp.glob("*_rtt.csv"):
        for line in rtt.read_text().splitlines()[1:]:
            fields = line.split(";")
            if len(fields) >= 2 and fields[1].strip():
                setup_ms.append(float(fields[1]))
    return {
        "attempted": int(last["TotalCallCreated"]),
        "answered": len(setup_ms),
        "completed": int(last["SuccessfulCall(C)"]),
        "failed": int(last["FailedCall(C)"]),
        "setup_ms_p50": percentile(setup_ms, 50),
        "setup_ms_p95": percentile(setup_ms, 95),
        "setup_ms_max": round(max(setup_ms), 1) if setup_ms else None,
    }


async def usages(urls: list[str]) -> list[dict[str, float]]:
    async with aiohttp.ClientSession() as http:
        return list(await asyncio.gather(*(gateway_usage(http, url) for url in urls)))


COUNTERS = {
    "sip_calls": ("inzwa_calls_total", 'leg="sip"'),
    "caller_turns": ("inzwa_turns_total", 'leg="sip"'),
    "rx_received": ("inzwa_sip_rtp_packets_total", 'direction="rx",outcome="received"'),
    "rx_lost": ("inzwa_sip_rtp_packets_total", 'direction="rx",outcome="lost"'),
    "rx_discarded": ("inzwa_sip_rtp_packets_total", 'direction="rx",outcome="discarded"'),
    "tx_sent": ("inzwa_sip_rtp_packets_total", 'direction="tx",outcome="sent"'),
}
"""What the benchmark reads from each gateway: a metric's samples whose labels contain the text."""
RTP_KEYS = ("rx_received", "rx_lost", "rx_discarded", "tx_sent")


def counters(url: str) -> dict[str, int]:
    """The :data:`COUNTERS` from one scrape of the gateway's /metrics."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    return {
        key: int(
            sum(
                float(line.split()[-1])
                for line in lines
                if re.match(rf"{name}(\{{|\s)", line) and label in line.split()[0]
            )
        )
        for key, (name, label) in COUNTERS.items()
    }


def settle(urls: list[str], before: list[dict[str, int]], completed: int) -> list[dict[str, int]]:
    """Wait until the gateways have recorded as many finished SIP calls as SIPp completed (a
    call's RTP counts are exported as its stream ends), bounded by ``STATE_TIMEOUT_S``; returns
    each gateway's counters since ``before``."""
    deadline = time.monotonic() + STATE_TIMEOUT_S
    while True:
        since = [
            {key: n - earlier[key] for key, n in counters(url).items()}
            for url, earlier in zip(urls, before, strict=True)
        ]
        if sum(counts["sip_calls"] for counts in since) >= completed or time.monotonic() >= deadline:
            return since
        time.sleep(0.1)  # polling another process's metrics: there is nothing to wait on here


def loss_pct(lost: int, received: int) -> float | None:
    return round(100 * lost / (lost + received), 3) if lost + received else None


def run(instances: int, calls: int, rate: float, hold_ms: int, speech: bool, keep: bool) -> dict[str, Any]:
    for tool in ("kamailio", "kamcmd", "sipp"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    limit = instances * CALLS_PER_GATEWAY
    tmp = Path(tempfile.mkdtemp(prefix="inzwa-bench-sip-"))
    with contextlib.ExitStack() as stack:
        if not keep:
            stack.callback(shutil.rmtree, tmp, ignore_errors=True)  # last out: after every process stopped
        started = time.perf_counter()
        english = {"INZWA_LANGUAGE": "en", "INZWA_DIALPLAN_PATH": str(ENGLISH_DIALPLAN)}
        gateways = [stack.enter_context(sip_gateway(tmp, f"gw{i}", english)) for i in range(instances)]
        urls = [url for url, _, _ in gateways]
        pcap_packets = speech_pcap(urls[0], tmp / "speech.pcap") if speech else 0
        xml = scenario(tmp, tmp / "speech.pcap" if speech else None, hold_ms)
        kam_port, _, _ = stack.enter_context(dispatcher(tmp, [port for _, port, _ in gateways], STATE_TIMEOUT_S))
        startup_s = time.perf_counter() - started
        before = asyncio.run(usages(urls))
        counts_before = [counters(url) for url in urls]
        t0 = time.perf_counter()
        result = run_sipp(tmp, xml, kam_port, calls, rate, limit)
        wall_s = time.perf_counter() - t0
        if not (tmp / "sipp.stats.csv").exists():
            raise RuntimeError(f"SIPp wrote no statistics (rc {result.returncode}):\n{result.stderr[-2000:]}")
        stats = sipp_results(tmp)
        counts = settle(urls, counts_before, stats["completed"])
        after = asyncio.run(usages(urls))
        per_gateway = []
        for i, taken in enumerate(counts):
            cpu = after[i]["cpu_s"] - before[i]["cpu_s"]
            per_gateway.append(
                {
                    "sip_calls": taken["sip_calls"],
                    "caller_turns": taken["caller_turns"],
                    "cpu_s": round(cpu, 2),
                    "cpu_s_per_call": round(cpu / taken["sip_calls"], 3) if taken["sip_calls"] else None,
                    "peak_rss_mb": after[i]["peak_rss_mb"],
                    "rtp": {key: taken[key] for key in RTP_KEYS},
                }
            )
        rtp = {key: sum(taken[key] for taken in counts) for key in RTP_KEYS}
        errors = tmp / "sipp.errors.log"
        return {
            "instances": instances,
            "calls": calls,
            "rate_cps": rate,
            "max_concurrent": limit,
            "hold_ms": hold_ms,
            "rtp": "speech pcap (PCMU)" if speech else "none",
            "speech_s": round(pcap_packets * 0.02, 2),
            "startup_s": round(startup_s, 1),
            "sipp_rc": result.returncode,
            "sipp_wall_s": round(wall_s, 1),
            **stats,
            "rtp_rx_expected": min(pcap_packets, hold_ms // 20) * stats["completed"],  # SIPp stops at its BYE
            "rtp_rx_received": rtp["rx_received"],
            "rtp_rx_lost": rtp["rx_lost"],
            "rtp_rx_discarded": rtp["rx_discarded"],
            "rtp_loss_pct": loss_pct(rtp["rx_lost"], rtp["rx_received"]),
            "rtp_tx_sent": rtp["tx_sent"],
            "gateways": per_gateway,
            "sipp_errors_tail": errors.read_text(errors="replace")[-1500:] if errors.exists() else "",
            "workdir": str(tmp) if keep else None,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--instances", type=int, default=2, help="gateway processes behind Kamailio")
    parser.add_argument("--calls", type=int, default=8, help="calls in total")
    parser.add_argument("--rate", type=float, default=2.0, help="new calls per second")
    parser.add_argument("--hold-ms", type=int, default=5000, help="how long each call lasts after the answer")
    parser.add_argument("--no-speech", action="store_true", help="send no RTP (no TTS pcap)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (SIPp, Kamailio logs and stats)")
    args = parser.parse_args()
    # pjsua in each gateway logs to the stdout it inherits: point fd 1 at stderr while they run,
    # so stdout carries the JSON alone.
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        result = run(args.instances, args.calls, args.rate, args.hold_ms, not args.no_speech, args.keep)
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
