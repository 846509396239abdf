"""The PostgreSQL call store against a real server: Debian's PostgreSQL, started once for the
session in a throwaway cluster on 127.0.0.1 (as the ``postgres`` user when the tests run as root,
since the server refuses root), each test on its own fresh database.

The backend-neutral behaviour tests of tests/test_store.py run here too, on this module's
``store`` fixture; what follows them is what only a shared database has.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import SecretStr

from inzwa_voice.api import admin_calls
from inzwa_voice.api.keys import CALLS
from inzwa_voice.config import load_settings
from inzwa_voice.core import CallInfo
from inzwa_voice.simulator.process import free_port
from inzwa_voice.simulator.ws import WsCaller
from inzwa_voice.store import CallStore, StoreError, keep_alive
from inzwa_voice.store.call_store import INTERRUPTED
from inzwa_voice.store.postgres import MIGRATIONS
from tests.conftest import ServerFactory, english_server
from tests.test_store import (  # noqa: F401  (collected here, on the PostgreSQL store)
    INFO,
    ROOT,
    test_a_call_round_trips_with_turns_and_events_in_order,
    test_a_recording_is_named_in_its_record_and_deleted_with_it,
    test_a_turn_written_at_its_endpoint_is_rewritten_when_its_reply_ends,
    test_bad_writes_are_refused_clearly,
    test_ending_a_call_twice_keeps_the_first_disposition,
    test_list_filters_and_pages_newest_first,
    test_more_concurrent_writes_than_the_backlog_all_land,
    test_retention_purges_at_start_and_then_every_hour,
    test_retention_purges_old_calls_with_their_turns_and_keeps_new_ones,
    test_what_is_stored_is_bounded,
    turn,
)

PASSWORD = "s3cret-Pa55word"
USER = "inzwa"


class Cluster:
    """A PostgreSQL server in a temporary folder; ``database()`` makes a fresh database."""

    def __init__(self) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        assert bins, "PostgreSQL is missing: run `make test` (it installs Debian's postgresql)"
        self.bin = bins[-1].parent
        self.root = Path(tempfile.mkdtemp(prefix="inzwa-pg-"))
        self.port = free_port()
        self.data = self.root / "data"
        self._names = (f"calls_{n}" for n in itertools.count())
        (self.root / "pw").write_text(PASSWORD)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.root / "pw", "postgres")

    def run(self, *args: str) -> None:
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*as_postgres, *args], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self.run(
            str(self.bin / "initdb"),
            "--no-sync",
            "-D",
            str(self.data),
            "-U",
            USER,
            f"--pwfile={self.root / 'pw'}",
            "--auth=scram-sha-256",
        )
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root} -c fsync=off"
        self.run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-o", options, "-w", "start"
        )

    def stop(self) -> None:
        self.run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root)

    def url(self, database: str = "postgres", password: str = PASSWORD) -> str:
        return f"postgresql://{USER}:{password}@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        name = next(self._names)
        with psycopg.connect(self.url(), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        return self.url(name)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    server = Cluster()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def db_url(cluster: Cluster) -> str:
    return cluster.database()


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[CallStore]:
    opened = await CallStore.open_url(db_url)
    yield opened
    await opened.close()


def versions(url: str) -> list[int]:
    with psycopg.connect(url) as db:
        return [row[0] for row in db.execute("SELECT version FROM schema_migrations ORDER BY version")]


async def test_two_gateways_starting_at_once_apply_each_migration_once(db_url: str) -> None:
    first, second = await asyncio.gather(CallStore.open_url(db_url), CallStore.open_url(db_url))
    await first.start_call("c", INFO, "p", 1.0)
    await asyncio.gather(first.close(), second.close())
    assert versions(db_url) == list(range(1, len(MIGRATIONS) + 1))

    again = await CallStore.open_url(db_url)  # a restart migrates nothing and keeps the data
    assert await again.get_call("c") is not None
    await again.close()
    assert versions(db_url) == list(range(1, len(MIGRATIONS) + 1))

    with psycopg.connect(db_url, autocommit=True) as db:
        db.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (len(MIGRATIONS) + 1,))
    with pytest.raises(StoreError, match="newer than this gateway") as caught:
        await CallStore.open_url(db_url)
    assert PASSWORD not in str(caught.value)


async def test_what_one_gateway_writes_another_reads(db_url: str) -> None:
    one, two = await CallStore.open_url(db_url), await CallStore.open_url(db_url)
    try:
        assert one.shared and two.shared
        await one.start_call("from-one", INFO, "shona_helpline", 100.0)
        await two.start_call("from-two", CallInfo("twilio", caller="+263772"), "shona_helpline", 101.0)
        await one.add_turn("from-one", turn(0))
        await two.add_event("from-one", "transfer", {"target": "sip:counsellor@127.0.0.1"}, 102.0)
        await two.end_call("from-one", "transferred", 103.0)
        with pytest.raises(StoreError, match="already recorded"):  # a call id is unique across gateways
            await two.start_call("from-one", INFO, "p", 104.0)

        for store in (one, two):
            assert [c["id"] for c in await store.list_calls()] == ["from-two", "from-one"]
        seen: Any = await two.get_call("from-one")
        assert seen == await one.get_call("from-one")
        assert seen["disposition"] == "transferred" and seen["turn_count"] == 1
        assert seen["turns"][0]["barged_in"] is False and seen["turns"][0]["caller_text"] == "caller says 0"
        assert [e["kind"] for e in seen["events"]] == ["transfer"]
        # A shared database never ends another live gateway's call as "interrupted".
        assert await one.end_interrupted_calls() == 0
        assert (await two.get_call("from-two"))["active"]  # type: ignore[index]
        assert seen["instance"] == one.instance != two.instance
    finally:
        await one.close()
        await two.close()


async def test_the_admin_api_of_either_gateway_lists_both_calls(db_url: str, make_server: ServerFactory) -> None:
    """A real call on each of two gateways (WebSocket leg, one DTMF key, hang-up), both
    gateways wired to one database by their settings alone."""
    gateways = [await english_server(make_server, db_url=SecretStr(db_url)) for _ in range(2)]
    call_ids = []
    for gateway in gateways:
        with gateway.app[CALLS].watch() as recorded:
            caller = WsCaller(gateway.http, gateway.url.replace("http", "ws") + "/v1/ws")
            await caller.connect()
            call_id = caller.events("session.started")[0]["call_id"]
            await caller.send_json({"type": "dtmf", "digit": "#"})
            await caller.wait_for("dtmf")
            await caller.hang_up()
            async with asyncio.timeout(30):  # "end" is announced once its record is written
                while (event := await recorded.get()).kind != "end" or event.call_id != call_id:
                    pass
        call_ids.append(call_id)
    for gateway in gateways:
        async with gateway.http.get(gateway.v1 + "/admin/calls") as resp:
            assert resp.status == 200, await resp.text()
            listed = (await resp.json())["data"]
        assert [c["id"] for c in listed] == call_ids[::-1]
        assert {c["disposition"] for c in listed} == {"caller_hangup"}
        assert [c["instance"] for c in listed] == [g.app[admin_calls.STORE].instance for g in gateways[::-1]]
        for call_id in call_ids:
            async with gateway.http.get(f"{gateway.v1}/admin/calls/{call_id}") as resp:
                assert resp.status == 200
                events = (await resp.json())["events"]
            assert [e["data"] for e in events if e["kind"] == "dtmf"] == [{"digit": "#"}]


async def test_a_dropped_connection_fails_one_job_and_the_next_reconnects(store: CallStore, db_url: str) -> None:
    await store.start_call("c", INFO, "p", 1.0)
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "  # returns once they are gone
            "WHERE application_name = 'inzwa-voice' AND datname = current_database()"
        )
    with pytest.raises(StoreError, match="INZWA_DB_URL"):
        await store.add_event("c", "dtmf", {"digit": "1"}, 2.0)
    await store.add_event("c", "dtmf", {"digit": "2"}, 3.0)
    with pytest.raises(StoreError):
        await store.get_call("c")
    call: Any = await store.get_call("c")
    assert [e["data"] for e in call["events"]] == [{"digit": "2"}]


REACH = "cannot reach the call store at INZWA_DB_URL=postgresql://inzwa@127.0.0.1:"


@pytest.mark.parametrize(
    ("make_url", "said"),
    [
        (lambda cluster: f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{free_port()}/calls", REACH),  # nothing listens
        (lambda cluster: cluster.url(password=PASSWORD + "-wrong"), REACH),  # the server refuses
        (lambda cluster: f"mysql://{USER}:{PASSWORD}@127.0.0.1/calls", "INZWA_DB_URL is not a valid"),
    ],
    ids=["unreachable", "refused", "unparsable"],
)
async def test_a_database_it_cannot_use_is_named_without_the_password(
    cluster: Cluster, make_url: Callable[[Cluster], str], said: str
) -> None:
    with pytest.raises(StoreError) as caught:
        await CallStore.open_url(make_url(cluster))
    message = str(caught.value)
    assert message.startswith(said)
    assert PASSWORD not in message and "-wrong" not in message


def test_the_url_setting_is_never_shown() -> None:
    settings = load_settings(_env_file=None, db_url=f"postgresql://{USER}:{PASSWORD}@db/calls")
    assert PASSWORD not in repr(settings) and settings.masked()["db_url"] == "***"


class VirtualClock:
    """The time both gateways judge heartbeats by, moved by the test."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


NOW = 1_800_000_000.0
HEARTBEAT_S = 10.0


async def open_gateway(db_url: str, instance: str, clock: VirtualClock | None = None) -> CallStore:
    """A gateway's store as app.py opens it: its lease taken, left-over calls ended."""
    store = await CallStore.open_url(db_url, instance=instance, heartbeat_s=HEARTBEAT_S, clock=clock)
    await store.end_interrupted_calls()
    return store


def leases(url: str) -> dict[str, float]:
    with psycopg.connect(url) as db:
        return dict(db.execute("SELECT instance, expires_at FROM gateway_instances").fetchall())


async def test_a_gateway_that_stops_beating_has_its_calls_ended_by_another_after_three_beats(db_url: str) -> None:
    clock = VirtualClock()
    alive, crashed = await open_gateway(db_url, "gw-alive", clock), await open_gateway(db_url, "gw-crashed", clock)
    try:
        await alive.start_call("live", INFO, "p", NOW)
        await crashed.start_call("lost", INFO, "p", NOW)
        await crashed.add_turn("lost", turn(0, latency=1.0))
        await crashed.add_event("lost", "dtmf", {"digit": "1"}, NOW + 4)
        await crashed.start_call("done", INFO, "p", NOW)
        await crashed.end_call("done", "completed", NOW + 2)
        assert leases(db_url) == {"gw-alive": NOW + 30, "gw-crashed": NOW + 30}

        # From here "gw-crashed" is killed: it never beats again and ends nothing.
        for beat in range(1, 4):  # within its three beats it is only late, not dead
            clock.now = NOW + beat * HEARTBEAT_S
            assert await alive.beat()
            assert await alive.end_calls_of_dead_gateways() == 0
        assert (await alive.get_call("lost"))["active"]  # type: ignore[index]

        clock.now = NOW + 3 * HEARTBEAT_S + 0.5
        assert await alive.beat()
        assert await alive.end_calls_of_dead_gateways() == 1
        lost: Any = await alive.get_call("lost")
        assert (lost["active"], lost["disposition"], lost["instance"]) == (False, "error", "gw-crashed")
        assert lost["ended_at"] == NOW + 4, "ended when it was last heard of"
        assert lost["events"][-1] == {"kind": "error", "at": NOW + 4, "data": {"reason": INTERRUPTED}}
        assert (await alive.get_call("done"))["disposition"] == "completed"  # type: ignore[index]
        assert (await alive.get_call("live"))["active"], "a live gateway's call is never ended"  # type: ignore[index]
        assert set(leases(db_url)) == {"gw-alive"}, "the dead lease is gone"
        assert await alive.end_calls_of_dead_gateways() == 0

        # A gateway that was only frozen finds out at its next beat; its late end keeps 'error'.
        assert not await crashed.beat()
        await crashed.end_call("lost", "caller_hangup", NOW + 40)
        assert (await alive.get_call("lost"))["disposition"] == "error"  # type: ignore[index]
    finally:
        await alive.close()
        await crashed.close()
    assert leases(db_url) == {}, "a clean shutdown gives its lease back"


KILLED_GATEWAY = textwrap.dedent(
    """
    import asyncio, sys
    from inzwa_voice.core import CallInfo
    from inzwa_voice.store import CallStore

    async def main() -> None:
        store = await CallStore.open_url(sys.argv[1], instance="gw-killed", clock=lambda: float(sys.argv[2]))
        await store.start_call("killed", CallInfo("twilio", caller="+263771"), "p", float(sys.argv[2]))
        await store.add_event("killed", "dtmf", {"digit": "1"}, float(sys.argv[2]) + 5)
        print("in call", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)


async def test_a_sigkilled_gateways_call_is_ended_by_another_once_its_lease_expires(db_url: str) -> None:
    clock = VirtualClock()
    alive = await open_gateway(db_url, "gw-alive", clock)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", KILLED_GATEWAY, db_url, str(NOW), cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        assert await child.stdout.readline() == b"in call\n"
    finally:
        child.kill()
        await child.wait()
    try:
        clock.now = NOW + 3 * HEARTBEAT_S
        assert await alive.end_calls_of_dead_gateways() == 0
        clock.now += 1
        assert await alive.end_calls_of_dead_gateways() == 1
        killed: Any = await alive.get_call("killed")
        assert (killed["disposition"], killed["ended_at"], killed["instance"]) == ("error", NOW + 5, "gw-killed")
    finally:
        await alive.close()


async def test_gateways_noticing_a_dead_one_at_once_end_each_call_once(db_url: str) -> None:
    clock = VirtualClock()
    crashed = await open_gateway(db_url, "gw-crashed", clock)
    for i in range(5):
        await crashed.start_call(f"lost{i}", INFO, "p", NOW + i)
    watchers = [await open_gateway(db_url, f"gw-{i}", clock) for i in range(3)]
    try:
        clock.now = NOW + 100
        for watcher in watchers:
            await watcher.beat()
        ended = await asyncio.gather(*(w.end_calls_of_dead_gateways() for w in watchers))
        assert sorted(ended) == [0, 0, 5]
        for i in range(5):
            call: Any = await watchers[0].get_call(f"lost{i}")
            assert call["disposition"] == "error" and [e["kind"] for e in call["events"]] == ["error"]
    finally:
        for store in (crashed, *watchers):
            await store.close()


async def test_a_restart_under_the_same_instance_id_ends_its_previous_runs_calls_at_once(db_url: str) -> None:
    before = await open_gateway(db_url, "gw-fixed")  # by the database server's own clock
    other = await open_gateway(db_url, "gw-other")
    await before.start_call("old-run", INFO, "p", NOW)
    await other.start_call("others", INFO, "p", NOW)
    # Killed: nothing ended, its lease still fresh; the same id starts again at once.
    after = await open_gateway(db_url, "gw-fixed")
    try:
        assert (await after.get_call("old-run"))["disposition"] == "error"  # type: ignore[index]
        assert (await after.get_call("others"))["active"]  # type: ignore[index]
        assert await other.end_calls_of_dead_gateways() == 0, "by the server's clock the leases are fresh"
        with psycopg.connect(db_url, autocommit=True) as db:  # a minute later by the server's clock
            db.execute("UPDATE gateway_instances SET expires_at = expires_at - 60 WHERE instance = 'gw-other'")
        assert await after.end_calls_of_dead_gateways() == 1
        assert (await after.get_call("others"))["disposition"] == "error"  # type: ignore[index]
    finally:
        for store in (before, other, after):
            await store.close()


async def test_calls_from_before_instances_were_recorded_are_left_alone(db_url: str) -> None:
    gateway = await open_gateway(db_url, "gw")
    try:
        with psycopg.connect(db_url, autocommit=True) as db:  # as a not yet upgraded gateway writes it
            db.execute(
                "INSERT INTO calls (id, leg, caller, dialled, external_id, params, profile, started_at) "
                "VALUES ('legacy', 'sip', '', '', '', '{}', 'p', 1.0)"
            )
        assert await gateway.end_interrupted_calls() == 0
        legacy: Any = await gateway.get_call("legacy")
        assert legacy["active"] and legacy["instance"] is None
    finally:
        await gateway.close()


async def test_keep_alive_beats_every_heartbeat_and_ends_the_dead_calls(db_url: str) -> None:
    clock = VirtualClock()
    alive, crashed = await open_gateway(db_url, "gw-alive", clock), await open_gateway(db_url, "gw-crashed", clock)
    await crashed.start_call("lost", INFO, "p", NOW)
    slept: list[float] = []

    class Stop(Exception):
        pass

    async def sleep(seconds: float) -> None:  # each beat, 10 virtual seconds later
        slept.append(seconds)
        clock.now += seconds
        if len(slept) == 5:
            raise Stop

    try:
        with pytest.raises(Stop):
            await keep_alive(alive, sleep=sleep)
        assert slept == [HEARTBEAT_S] * 5
        assert leases(db_url) == {"gw-alive": NOW + 4 * HEARTBEAT_S + 3 * HEARTBEAT_S}
        assert (await alive.get_call("lost"))["disposition"] == "error"  # type: ignore[index]
    finally:
        await alive.close()
        await crashed.close()
