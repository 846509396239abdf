"""SIP access control and trunk registration: who may call the gateway, and registering with a trunk.

Calls are SIPp scenarios against an in-process gateway, as in ``test_sip`` (whose helpers these
tests use): each test starts its own gateway, and its pjsua2 endpoint (one per process) is stopped
when the test's server is, before the next test starts one. The registrar is a real Kamailio
(``sip/kamailio/registrar.cfg``: digest auth, contacts in memory) on a free loopback port; what
it holds is read with ``kamcmd ul.dump``. Every wait is on the gateway's own reports (the
endpoint's registration callback, SIPp's exit), bounded; Kamailio's start-up is waited on by
its control socket answering, bounded too.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from inzwa_voice.api.keys import CALLS
from inzwa_voice.config import load_settings
from inzwa_voice.engines.runtime import Engines
from inzwa_voice.legs.sip import SIP, SipServer, registration
from inzwa_voice.simulator.kamailio import CONFIG_DIR, kamailio, kamcmd
from inzwa_voice.simulator.process import free_ports
from inzwa_voice.sip.endpoint import Registration, RegistrationState, parse_sources, source_allowed
from tests.conftest import ServerFactory
from tests.test_sip import SCENARIOS, rejected, sip_server, sipp

REALM = "inzwa.test"
USERNAME = "inzwa-trunk"
PASSWORD = "s3cret-Pa55"
REPORT_TIMEOUT_S = 15
"""How long a test waits for one of the endpoint's reports (a REGISTER answered, a 403 counted)."""


@pytest.fixture(autouse=True, scope="module")
def tools_installed() -> None:
    """Kamailio and SIPp are real peers here; `make test` installs them (kamailio, sip-tester)."""
    for tool in ("kamailio", "kamcmd", "sipp"):
        assert shutil.which(tool) is not None, f"{tool} is missing: run `make test` (it installs it)"


# ----- pieces -----


def test_sources_are_networks_and_only_the_packet_source_counts() -> None:
    allowed = parse_sources(["10.9.9.9", " 127.0.0.0/8 ", "", "2001:db8::/32"])
    assert [str(n) for n in allowed] == ["10.9.9.9/32", "127.0.0.0/8", "2001:db8::/32"]
    assert source_allowed("127.0.0.1:5061", allowed) and source_allowed("10.9.9.9:5060", allowed)
    assert source_allowed("[2001:db8::1]:5060", allowed) and source_allowed("2001:db8::1", allowed)
    assert not source_allowed("10.9.9.8:5060", allowed) and not source_allowed("garbage", allowed)
    assert source_allowed("192.0.2.1:5060", ())  # empty: anyone
    with pytest.raises(ValueError):
        parse_sources(["10.0.0.300/8"])


def test_registration_settings_keep_the_password_out_of_sight() -> None:
    reg = Registration("sip:trunk.example.net:5060;transport=udp", "alice", "hunter2")
    assert reg.aor == "sip:alice@trunk.example.net" and "hunter2" not in repr(reg)
    assert Registration("sip:[2001:db8::1]:5080", "bob", "x").aor == "sip:bob@[2001:db8::1]:5080"

    settings = load_settings(
        _env_file=None, sip_registrar="sip:127.0.0.1:5080", sip_username="alice", sip_password="hunter2"
    )
    assert registration(settings) == Registration("sip:127.0.0.1:5080", "alice", "hunter2", "*", 300)
    assert "hunter2" not in repr(settings)
    with pytest.raises(ValueError):
        registration(settings.model_copy(update={"sip_password": None}))
    assert registration(load_settings(_env_file=None)) is None


# ----- the source allow-list -----


def forbidden_scenario(workdir: Path) -> Path:
    """``uac_refused.xml`` expecting ``403 Forbidden`` and nothing else (no 180 either: a refused
    source hears nothing before the 403)."""
    text = (SCENARIOS / "uac_refused.xml").read_text(encoding="iso-8859-1")
    start, end = text.index('  <recv response="100"'), text.index('  <label id="1"/>')
    text = text[:start] + '  <recv response="100" optional="true"/>\n  <recv response="403"/>\n\n' + text[end:]
    path = workdir / "uac_forbidden.xml"
    path.write_text(text, encoding="iso-8859-1")
    return path


async def test_a_caller_outside_the_allow_list_gets_403(
    make_server: ServerFactory, engines: Engines, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await sip_server(make_server, sip_allowed_sources=["10.9.9.9/32"])
    sip = server.app[SIP]
    refused = asyncio.Event()
    forbidden = sip.forbidden

    def noted(source: str) -> None:
        forbidden(source)
        refused.set()

    monkeypatch.setattr(sip, "forbidden", noted)
    before = rejected(engines, "forbidden")
    result = await sipp(server, str(forbidden_scenario(tmp_path)), tmp_path)
    assert result.returncode == 0, result.errors
    assert result.responses() == ["SIP/2.0 403 Forbidden"]
    async with asyncio.timeout(REPORT_TIMEOUT_S):
        await refused.wait()
    assert rejected(engines, "forbidden") == before + 1
    assert not server.app[CALLS].sessions


async def test_a_caller_inside_the_allow_list_is_answered(make_server: ServerFactory, tmp_path: Path) -> None:
    server = await sip_server(make_server, sip_allowed_sources=["127.0.0.0/8"])
    result = await sipp(server, "uac_basic.xml", tmp_path)
    assert result.returncode == 0, result.errors
    assert "SIP/2.0 200 OK" in result.responses()


# ----- trunk registration -----


@pytest.fixture(scope="module")
def registrar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    """Kamailio as a digest-authenticating registrar: (its UDP port, its kamcmd socket)."""
    port = free_ports(1)
    defines = {
        "LISTEN": f"udp:127.0.0.1:{port}",
        "REALM": f'"{REALM}"',
        "USERNAME": f'"{USERNAME}"',
        "PASSWORD": f'"{PASSWORD}"',
    }
    workdir = tmp_path_factory.mktemp("registrar")
    with kamailio(CONFIG_DIR / "registrar.cfg", workdir, defines, memory_mb=(16, 4)) as (ctl, _):
        yield port, ctl


async def registration_reaches(sip: SipServer, monkeypatch: pytest.MonkeyPatch, done: Callable[[], bool]) -> None:
    """Wait, bounded, until the endpoint's registration reports satisfy ``done``."""
    changed = asyncio.Event()
    report = sip.registration

    def noted(state: RegistrationState) -> None:
        report(state)
        changed.set()

    monkeypatch.setattr(sip, "registration", noted)
    async with asyncio.timeout(REPORT_TIMEOUT_S):
        while not done():
            changed.clear()
            await changed.wait()


async def registering_gateway(
    make_server: ServerFactory, port: int, password: str, monkeypatch: pytest.MonkeyPatch, **overrides: object
) -> SipServer:
    """A gateway registering with the registrar on ``port`` as :data:`USERNAME`, once the
    registrar has answered its REGISTER (with a binding or a refusal)."""
    server = await sip_server(
        make_server,
        sip_registrar=f"sip:127.0.0.1:{port}",
        sip_username=USERNAME,
        sip_password=SecretStr(password),
        **overrides,
    )
    sip = server.app[SIP]
    await registration_reaches(
        sip,
        monkeypatch,
        lambda: sip.endpoint.registration is not None and sip.endpoint.registration.last_status_code is not None,
    )
    return sip


def registered_gauge(engines: Engines) -> float | None:
    return engines.metrics.registry.get_sample_value("inzwa_sip_registered")


async def test_the_gateway_registers_with_digest_auth(
    make_server: ServerFactory,
    engines: Engines,
    registrar: tuple[int, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    port, ctl = registrar
    caplog.set_level(logging.DEBUG)  # pjsua2's own log at level 4 too: the password is in none of it
    sip = await registering_gateway(
        make_server, port, PASSWORD, monkeypatch, log_level="DEBUG", sip_register_expires_s=120
    )
    health = sip.registration_health()
    assert health is not None and health["registered"] is True, health
    assert health["last_status_code"] == 200 and 0 < int(str(health["expires"])) <= 120
    assert registered_gauge(engines) == 1
    dump = kamcmd(ctl, "ul.dump").stdout
    assert f"AoR: {USERNAME}" in dump and f"Address: sip:{USERNAME}@127.0.0.1:{sip.port}" in dump, dump
    assert PASSWORD not in caplog.text


async def test_a_wrong_password_leaves_the_gateway_unregistered(
    make_server: ServerFactory,
    engines: Engines,
    registrar: tuple[int, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    port, ctl = registrar
    kamcmd(ctl, "ul.rm", "location", USERNAME)  # a binding left by the previous test must not count
    assert f"AoR: {USERNAME}" not in kamcmd(ctl, "ul.dump").stdout
    sip = await registering_gateway(make_server, port, "wrong-password", monkeypatch)
    health = sip.registration_health()
    assert health is not None and health["registered"] is False, health
    assert health["last_status_code"] in (401, 403) and health["expires"] == 0
    assert registered_gauge(engines) == 0
    assert f"AoR: {USERNAME}" not in kamcmd(ctl, "ul.dump").stdout
    assert "wrong-password" not in caplog.text
