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
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import SecretStr

from inzwa_voice.api.keys import CALLS
from inzwa_voice.config import load_settings
from inzwa_voice.core import CallInfo
from inzwa_voice.simulator.process import free_port
from inzwa_voice.simulator.ws import WsCaller
from inzwa_voice.store import CallStore, StoreError
from inzwa_voice.store.postgres import MIGRATIONS
from tests.conftest import ServerFactory, english_server
from tests.test_store import (  # noqa: F401  (collected here, on the PostgreSQL store)
    INFO,
    test_a_call_round_trips_with_turns_and_events_in_order,
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
        # A shared database never ends another gateway's live call as "interrupted".
        assert await one.end_interrupted_calls() == 0
        assert (await two.get_call("from-two"))["active"]  # type: ignore[index]
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
