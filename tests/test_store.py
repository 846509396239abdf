"""Call records: real SQLite files, written as calls happen and readable after a crash."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import socket
import sqlite3
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from inzwa_voice.core import CallInfo, LegKind
from inzwa_voice.store import (
    MAX_TEXT,
    MIGRATIONS,
    WRITE_BACKLOG,
    CallStore,
    StoreError,
    TurnRecord,
    call_store,
    purge_periodically,
    recording_name,
)

ROOT = Path(__file__).resolve().parents[1]
INFO = CallInfo("sip", caller="+263771234567", dialled="+263800123456", external_id="abc@pbx", params={"k": "v"})


def turn(
    index: int, *, caller_text: str = "", reply_full: str = "", safety: str | None = None, latency: float = 120.25
) -> TurnRecord:
    return TurnRecord(
        index=index,
        caller_text=caller_text or f"caller says {index}",
        reply_text=f"bot said {index}",
        reply_full=reply_full or f"bot said {index} and more",
        barged_in=index % 2 == 1,
        language="sn",
        safety=safety,
        latency_ms={"endpoint": 700.0, "asr_final": latency, "first_frame_sent": 480.0},
        started_at=1000.0 + 10 * index,
        ended_at=1005.0 + 10 * index,
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CallStore]:
    opened = await CallStore.open(tmp_path / "calls.db")
    yield opened
    await opened.close()


class WriteLock:
    """Holds the database's write lock from another connection, as a slow disk or a second
    gateway would: the store's writes wait for it, and nothing else must."""

    def __init__(self, path: Path | None) -> None:
        assert path is not None, "a SQLite store"
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        self.db.execute("COMMIT")
        self.db.close()


async def test_a_call_round_trips_with_turns_and_events_in_order(store: CallStore) -> None:
    await store.start_call("call-1", INFO, "shona_helpline", 1000.0)
    await store.add_event("call-1", "dtmf", {"digit": "1"}, 1001.0)
    await store.add_turn("call-1", turn(0))
    await store.add_event("call-1", "barge_in", {"played_ms": 840}, 1017.0)
    await store.add_turn("call-1", turn(1, safety="crisis"))
    await store.add_event("call-1", "transfer", {"target": "sip:counsellor@127.0.0.1:5070"}, 1020.0)
    await store.end_call("call-1", "transferred", 1021.5)

    call = await store.get_call("call-1")
    assert call == {
        "id": "call-1",
        "leg": "sip",
        "caller": "+263771234567",
        "dialled": "+263800123456",
        "external_id": "abc@pbx",
        "params": {"k": "v"},
        "profile": "shona_helpline",
        "instance": store.instance,
        "started_at": 1000.0,
        "ended_at": 1021.5,
        "disposition": "transferred",
        "active": False,
        "turn_count": 2,
        "recording": None,
        "turns": [
            {
                "index": 0,
                "caller_text": "caller says 0",
                "reply_text": "bot said 0",
                "reply_full": "bot said 0 and more",
                "barged_in": False,
                "language": "sn",
                "safety": None,
                "latency_ms": {"endpoint": 700.0, "asr_final": 120.2, "first_frame_sent": 480.0},
                "started_at": 1000.0,
                "ended_at": 1005.0,
                "outcome": "played",
                "source": None,
            },
            {
                "index": 1,
                "caller_text": "caller says 1",
                "reply_text": "bot said 1",
                "reply_full": "bot said 1 and more",
                "barged_in": True,
                "language": "sn",
                "safety": "crisis",
                "latency_ms": {"endpoint": 700.0, "asr_final": 120.2, "first_frame_sent": 480.0},
                "started_at": 1010.0,
                "ended_at": 1015.0,
                "outcome": "played",
                "source": None,
            },
        ],
        "events": [
            {"kind": "dtmf", "at": 1001.0, "data": {"digit": "1"}},
            {"kind": "barge_in", "at": 1017.0, "data": {"played_ms": 840}},
            {"kind": "transfer", "at": 1020.0, "data": {"target": "sip:counsellor@127.0.0.1:5070"}},
        ],
    }
    assert await store.get_call("nobody") is None


async def test_each_call_names_the_gateway_instance_that_took_it(tmp_path: Path) -> None:
    named = await CallStore.open(tmp_path / "named.db", instance="gw-7")
    first, second = await CallStore.open(tmp_path / "a.db"), await CallStore.open(tmp_path / "b.db")
    try:
        await named.start_call("c", INFO, "p", 1.0)
        assert [c["instance"] for c in await named.list_calls()] == ["gw-7"]
        host = socket.gethostname()
        assert first.instance.startswith(host + "-") and second.instance.startswith(host + "-")
        assert first.instance != second.instance, "a new suffix at each start"
    finally:
        for store in (named, first, second):
            await store.close()


async def test_a_turn_written_at_its_endpoint_is_rewritten_when_its_reply_ends(store: CallStore) -> None:
    await store.start_call("c", INFO, "p", 1.0)
    answering = dataclasses.replace(turn(0), reply_text="", reply_full="", outcome="answering")
    await store.add_turn("c", answering)
    call = await store.get_call("c")
    assert call is not None
    turns: list[dict[str, Any]] = call["turns"]  # type: ignore[assignment]
    assert [(t["caller_text"], t["outcome"]) for t in turns] == [("caller says 0", "answering")]
    await store.update_turn("c", dataclasses.replace(turn(0), reply_text="bot sa", outcome="hangup"))
    call = await store.get_call("c")
    assert call is not None
    turns = call["turns"]  # type: ignore[assignment]
    (only,) = turns
    assert (only["reply_text"], only["reply_full"], only["outcome"]) == ("bot sa", "bot said 0 and more", "hangup")
    with pytest.raises(StoreError, match="no turn 5 of call 'c'"):
        await store.update_turn("c", turn(5))
    with pytest.raises(ValueError, match="outcome 'lost'"):
        await store.update_turn("c", dataclasses.replace(turn(0), outcome="lost"))  # type: ignore[arg-type]


async def test_a_version_1_file_gains_turn_outcomes_and_keeps_its_turns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    for sql in MIGRATIONS[0]:
        db.execute(sql)
    db.execute("PRAGMA user_version = 1")
    db.execute(
        "INSERT INTO calls (id, leg, caller, dialled, external_id, params, profile, started_at) "
        "VALUES ('old', 'ws', '', '', '', '{}', 'p', 1.0)"
    )
    db.execute("INSERT INTO turns VALUES ('old', 0, 'hi', 'hello', 'hello', 0, 'en', NULL, '{}', 1.0, 2.0)")
    db.close()
    store = await CallStore.open(path)
    try:
        call = await store.get_call("old")
        assert call is not None
        turns: list[dict[str, Any]] = call["turns"]  # type: ignore[assignment]
        assert [(t["caller_text"], t["outcome"]) for t in turns] == [("hi", "played")]
    finally:
        await store.close()


async def test_list_filters_and_pages_newest_first(store: CallStore) -> None:
    legs: list[LegKind] = ["sip", "twilio", "sip", "webrtc", "sip"]
    for i, leg in enumerate(legs):
        await store.start_call(f"c{i}", CallInfo(leg), "p", 100.0 + i)
    await store.add_turn("c2", turn(0))
    await store.end_call("c0", "completed", 150.0)
    await store.end_call("c2", "caller_hangup", 150.0)

    def ids(calls: list[dict[str, object]]) -> list[object]:
        return [c["id"] for c in calls]

    assert ids(await store.list_calls()) == ["c4", "c3", "c2", "c1", "c0"]
    assert ids(await store.list_calls(limit=2, offset=1)) == ["c3", "c2"]
    assert ids(await store.list_calls(offset=5)) == []
    assert ids(await store.list_calls(leg="sip")) == ["c4", "c2", "c0"]
    assert ids(await store.list_calls(active=True)) == ["c4", "c3", "c1"]
    assert ids(await store.list_calls(active=False, leg="sip")) == ["c2", "c0"]
    listed = (await store.list_calls(leg="sip", active=False))[0]
    assert listed["turn_count"] == 1 and listed["disposition"] == "caller_hangup" and "turns" not in listed
    with pytest.raises(ValueError):
        await store.list_calls(limit=-1)


async def test_ending_a_call_twice_keeps_the_first_disposition(store: CallStore) -> None:
    await store.start_call("c", INFO, "p", 1.0)
    await store.end_call("c", "caller_hangup", 2.0)
    await store.end_call("c", "error", 3.0)
    call = await store.get_call("c")
    assert call is not None and (call["disposition"], call["ended_at"]) == ("caller_hangup", 2.0)


async def test_bad_writes_are_refused_clearly(store: CallStore) -> None:
    await store.start_call("c", INFO, "p", 1.0)
    await store.add_turn("c", turn(0))
    with pytest.raises(StoreError, match="already recorded"):
        await store.start_call("c", INFO, "p", 1.0)
    with pytest.raises(StoreError, match="turn 0 of call 'c'"):
        await store.add_turn("c", turn(0))
    with pytest.raises(StoreError, match="unknown call"):
        await store.add_turn("ghost", turn(0))
    with pytest.raises(StoreError, match="unknown call 'ghost'"):
        await store.add_event("ghost", "dtmf", {}, 1.0)
    with pytest.raises(StoreError, match="no call 'ghost'"):
        await store.end_call("ghost", "completed", 2.0)
    with pytest.raises(ValueError, match="disposition 'finished'"):
        await store.end_call("c", "finished", 2.0)
    with pytest.raises(ValueError, match="event kind"):
        await store.add_event("c", "DTMF; DROP TABLE calls", {}, 1.0)
    with pytest.raises(ValueError, match="call id"):
        await store.start_call("", INFO, "p", 1.0)
    call = await store.get_call("c")
    assert call is not None and call["turn_count"] == 1 and call["active"], "the call survives bad writes"


async def test_what_is_stored_is_bounded(store: CallStore) -> None:
    long = "mashoko " * 2000
    await store.start_call("c", CallInfo("ws", caller="9" * 1000), "p", 1.0)
    await store.add_turn("c", turn(0, caller_text=long, reply_full=long, latency=float("nan")))
    await store.add_event("c", "error", {"detail": long, "exc": ValueError("boom")}, 2.0)
    await store.add_event("c", "safety", {"exc": ValueError("boom")}, 3.0)
    call: Any = await store.get_call("c")
    stored = call["turns"][0]
    assert len(stored["caller_text"]) == MAX_TEXT and stored["caller_text"].endswith("…")
    assert len(stored["reply_full"]) == MAX_TEXT and stored["reply_text"] == "bot said 0"
    assert set(stored["latency_ms"]) == {"endpoint", "first_frame_sent"}, "NaN would make the JSON invalid"
    assert len(call["caller"]) == 256
    big, small = call["events"]
    assert set(big["data"]) == {"truncated"} and len(big["data"]["truncated"]) < 5000
    assert small["data"] == {"exc": "boom"}


async def test_reads_and_the_loop_never_wait_behind_a_slow_write(store: CallStore) -> None:
    await store.start_call("c", INFO, "p", 1.0)
    lock = WriteLock(store.path)
    try:
        write = asyncio.create_task(store.add_event("c", "dtmf", {"digit": "5"}, 2.0))
        listed = await store.list_calls()
        assert [c["id"] for c in listed] == ["c"]
        assert not write.done(), "the write is still waiting for the lock"
    finally:
        lock.release()
    await write
    call = await store.get_call("c")
    assert call is not None and call["events"] == [{"kind": "dtmf", "at": 2.0, "data": {"digit": "5"}}]


async def test_a_queued_write_lands_even_if_its_caller_is_cancelled(store: CallStore) -> None:
    await store.start_call("c", INFO, "p", 1.0)
    lock = WriteLock(store.path)
    try:
        write = asyncio.create_task(store.add_turn("c", turn(0)))
        await store.get_call("c")  # a round trip through the reader: the write is queued by now
        write.cancel()
    finally:
        lock.release()
    with pytest.raises(asyncio.CancelledError):
        await write
    await store.end_call("c", "caller_hangup", 9.0)  # writes run in order: the turn is in before this
    call = await store.get_call("c")
    assert call is not None and call["turn_count"] == 1


async def test_more_concurrent_writes_than_the_backlog_all_land(store: CallStore) -> None:
    await store.start_call("c", INFO, "p", 1.0)
    count = WRITE_BACKLOG * 2 + 7
    await asyncio.gather(*(store.add_event("c", "dtmf", {"n": i}, float(i)) for i in range(count)))
    call: Any = await store.get_call("c")
    assert sorted(e["data"]["n"] for e in call["events"]) == list(range(count))


async def test_close_finishes_pending_writes_then_refuses(tmp_path: Path) -> None:
    store = await CallStore.open(tmp_path / "calls.db")
    await store.start_call("c", INFO, "p", 1.0)
    # The writes start (and queue) before close runs; close waits for them.
    await asyncio.gather(*(store.add_turn("c", turn(i)) for i in range(20)), store.close())
    with pytest.raises(StoreError, match="closed"):
        await store.add_turn("c", turn(99))
    await store.close()
    reopened = await CallStore.open(tmp_path / "calls.db")
    call = await reopened.get_call("c")
    await reopened.close()
    assert call is not None and call["turn_count"] == 20


async def test_schema_version_and_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "calls.db"
    store = await CallStore.open(path)
    await store.start_call("c", INFO, "p", 1.0)
    await store.close()
    store = await CallStore.open(path)  # a second open migrates nothing and keeps the data
    assert await store.get_call("c") is not None
    await store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(StoreError, match="newer than this gateway"):
        await CallStore.open(path)


async def test_unusable_paths_fail_with_the_path(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match=r"cannot open the call store .*file/calls\.db"):
        await CallStore.open(tmp_path / "file" / "calls.db")
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match=r"junk\.db"):
        await CallStore.open(tmp_path / "junk.db")


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from inzwa_voice.core import CallInfo, LegKind
    from inzwa_voice.store import CallStore, TurnRecord

    async def main() -> None:
        store = await CallStore.open(Path(sys.argv[1]))
        await store.start_call("killed", CallInfo("twilio", caller="+263771"), "shona_helpline", 1000.0)
        for index in range(100_000):
            await store.add_turn("killed", TurnRecord(
                index, f"caller {index}", f"heard {index}", f"full {index}", False, "sn", None,
                {"endpoint": 1.0}, 1000.0 + index, 1000.5 + index))
            print(index, flush=True)  # only after the turn is committed

    asyncio.run(main())
    """
)


async def test_turns_survive_sigkill_mid_call(tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(path), cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        acknowledged = [int(await child.stdout.readline()) for _ in range(25)]
    finally:
        child.kill()  # SIGKILL, while it is writing the next turns
        await child.wait()
    assert acknowledged == list(range(25))
    assert child.returncode == -signal.SIGKILL

    store = await CallStore.open(path)
    try:
        call = await store.get_call("killed")
        assert call is not None and call["active"] and call["disposition"] is None
        turns = call["turns"]
        assert isinstance(turns, list) and len(turns) >= 25, "every acknowledged turn is there"
        assert [t["index"] for t in turns] == list(range(len(turns))), "and no torn or missing turn"
        assert all(t["reply_text"] == f"heard {t['index']}" for t in turns)

        assert await store.end_interrupted_calls() == 1
        assert await store.end_interrupted_calls() == 0
        ended = await store.get_call("killed")
        assert ended is not None and ended["disposition"] == "error" and not ended["active"]
        assert ended["ended_at"] == turns[-1]["ended_at"], "ended when it was last heard of"
        assert ended["events"] == [
            {"kind": "error", "at": turns[-1]["ended_at"], "data": {"reason": "the gateway stopped during the call"}}
        ]
    finally:
        await store.close()


NOW = 1_800_000_000.0
DAY = 86400.0


async def test_retention_purges_old_calls_with_their_turns_and_keeps_new_ones(
    store: CallStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(call_store, "PURGE_BATCH", 2)  # several batches: each its own transaction
    for i in range(5):
        await store.start_call(f"old{i}", INFO, "p", NOW - 40 * DAY)
        await store.add_turn(f"old{i}", turn(0))
        await store.add_event(f"old{i}", "dtmf", {"digit": "1"}, NOW - 40 * DAY)
        await store.end_call(f"old{i}", "completed", NOW - 40 * DAY + 60)
    await store.start_call("stale", INFO, "p", NOW - 31 * DAY)  # never ended: a gateway died in it
    await store.start_call("long", INFO, "p", NOW - 40 * DAY)  # started long ago, ended recently
    await store.end_call("long", "completed", NOW - 1 * DAY)
    await store.start_call("new", INFO, "p", NOW - 1 * DAY)
    await store.add_turn("new", turn(0))

    assert await store.purge_before(NOW - 30 * DAY) == 6
    assert sorted(c["id"] for c in await store.list_calls()) == ["long", "new"]  # type: ignore[type-var]
    assert await store.get_call("old0") is None
    kept: Any = await store.get_call("new")
    assert kept["turn_count"] == 1
    assert await store.purge_before(NOW - 30 * DAY) == 0


async def test_a_recording_is_named_in_its_record_and_deleted_with_it(store: CallStore, tmp_path: Path) -> None:
    old, new, kept = "a" * 32, "b" * 32, "c" * 32
    files = {call_id: tmp_path / recording_name(call_id) for call_id in (old, new)}
    for call_id, started in ((old, NOW - 40 * DAY), (new, NOW - DAY), (kept, NOW - 40 * DAY)):
        await store.start_call(call_id, INFO, "p", started)
    for call_id, path in files.items():
        path.write_bytes(b"RIFF")
        await store.set_recording(call_id, path, None)  # at the start: no length yet
    await store.set_recording(old, files[old], 12.5)  # at the end
    precious = tmp_path / "precious.wav"  # a record naming a file that is not its recording
    precious.write_bytes(b"RIFF")
    await store.set_recording(kept, precious, 1.0)

    call: Any = await store.get_call(old)
    assert call["recording"] == {"path": str(files[old]), "duration_s": 12.5}
    assert (await store.list_calls())[0]["recording"] == {"path": str(files[new]), "duration_s": None}
    assert await store.recording(old) == (str(files[old]), 12.5)
    assert await store.recording("unknown") is None
    with pytest.raises(StoreError, match="no call"):
        await store.set_recording("unknown", files[old], 1.0)

    assert await store.purge_before(NOW - 30 * DAY) == 2
    assert not files[old].exists() and files[new].exists() and precious.exists()


async def test_retention_purges_at_start_and_then_every_hour(store: CallStore) -> None:
    await store.start_call("old", INFO, "p", NOW - 10 * DAY)
    await store.end_call("old", "completed", NOW - 10 * DAY)
    await store.start_call("new", INFO, "p", NOW - 1 * DAY)
    slept: list[float] = []

    class Stop(Exception):
        pass

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 2:
            raise Stop

    with pytest.raises(Stop):
        await purge_periodically(store, 7, sleep=sleep, clock=lambda: NOW)
    assert slept == [3600.0, 3600.0]
    assert [c["id"] for c in await store.list_calls()] == ["new"]
