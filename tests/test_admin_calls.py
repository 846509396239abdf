"""Admin call routes over a real store, each answer checked against api/openapi.yaml."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient

from inzwa_voice.api import admin_calls
from inzwa_voice.api.admin_calls import MAX_LIMIT, STORE
from inzwa_voice.api.middleware import add_extra_headers, error_middleware
from inzwa_voice.core import CallInfo, LegKind
from inzwa_voice.store import DISPOSITIONS, CallStore, TurnRecord
from inzwa_voice.telemetry import Metrics
from tests.test_openapi import SPEC_PATH, check

Client = TestClient[web.Request, web.Application]
LIST = "/v1/admin/calls"
ONE = "/v1/admin/calls/{id}"


@pytest.fixture(scope="module")
def spec() -> Any:
    return yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CallStore]:
    opened = await CallStore.open(tmp_path / "calls.db")
    yield opened
    await opened.close()


@pytest.fixture
async def client(store: CallStore, aiohttp_client: Any) -> Client:
    app = web.Application(middlewares=[error_middleware(Metrics())])
    app.on_response_prepare.append(add_extra_headers)
    app[STORE] = store
    admin_calls.add_routes(app)
    client: Client = await aiohttp_client(app)
    return client


async def seed(store: CallStore) -> None:
    """Five calls, c0 oldest: c0 and c2 ended, c2 with a turn and an event."""
    legs: list[LegKind] = ["sip", "twilio", "sip", "webrtc", "ws"]
    for i, leg in enumerate(legs):
        await store.start_call(f"c{i}", CallInfo(leg, caller=f"+26377100000{i}"), "shona_helpline", 100.0 + i)
    turn = TurnRecord(
        0, "Ndinoda rubatsiro.", "Ndiri pano", "Ndiri pano kuti ndikubatsirei.", True, "sn", None, {}, 3, 4
    )
    await store.add_turn("c2", turn)
    await store.add_event("c2", "barge_in", {"turn": 0}, 103.5)
    await store.end_call("c0", "completed", 130.0)
    await store.end_call("c2", "caller_hangup", 140.0)


async def get(client: Client, spec: Any, url: str, *, route: str = LIST, status: int = 200) -> Any:
    """GET ``url``, assert the status, and check the answer against ``route``'s documentation."""
    async with client.get(url) as resp:
        assert resp.status == status, await resp.text()
        [body] = await check(spec, "GET", route, resp)
    return body


async def test_an_empty_store_lists_nothing(client: Client, spec: Any) -> None:
    assert await get(client, spec, "/v1/admin/calls") == {"object": "list", "data": [], "has_more": False}


@pytest.mark.parametrize(
    ("query", "ids", "has_more"),
    [
        ("", ["c4", "c3", "c2", "c1", "c0"], False),
        ("?limit=2", ["c4", "c3"], True),
        ("?limit=2&offset=3", ["c1", "c0"], False),
        ("?offset=9", [], False),
        ("?leg=sip", ["c2", "c0"], False),
        ("?active=true", ["c4", "c3", "c1"], False),
        ("?active=false&limit=1", ["c2"], True),
        ("?active=false&leg=twilio", [], False),
    ],
)
async def test_list_pages_and_filters(
    client: Client, store: CallStore, spec: Any, query: str, ids: list[str], has_more: bool
) -> None:
    await seed(store)
    body = await get(client, spec, "/v1/admin/calls" + query)
    assert [c["id"] for c in body["data"]] == ids
    assert body["has_more"] is has_more


async def test_one_call_with_its_turns_and_events(client: Client, store: CallStore, spec: Any) -> None:
    await seed(store)
    call = await get(client, spec, "/v1/admin/calls/c2", route=ONE)
    assert (call["id"], call["disposition"], call["active"], call["turn_count"]) == ("c2", "caller_hangup", False, 1)
    assert call["turns"][0]["reply_text"] == "Ndiri pano" and call["turns"][0]["barged_in"] is True
    assert call["events"] == [{"kind": "barge_in", "at": 103.5, "data": {"turn": 0}}]
    active = await get(client, spec, "/v1/admin/calls/c4", route=ONE)
    assert active["active"] is True and active["ended_at"] is None and active["turns"] == []


async def test_unknown_call_is_404(client: Client, spec: Any) -> None:
    body = await get(client, spec, "/v1/admin/calls/nobody", route=ONE, status=404)
    assert body["error"]["type"] == "not_found_error" and body["error"]["code"] == "call_not_found"
    long = await get(client, spec, "/v1/admin/calls/" + "x" * 500, route=ONE, status=404)
    assert len(long["error"]["message"]) < 120


async def test_a_recording_is_served_as_wav_and_its_absence_is_404(
    client: Client, store: CallStore, spec: Any, tmp_path: Path
) -> None:
    route = "/v1/admin/calls/{id}/recording"
    await seed(store)
    wav = tmp_path / "c1.wav"
    wav.write_bytes(b"RIFF....WAVE")
    await store.set_recording("c1", wav, 0.5)
    await store.set_recording("c3", tmp_path / "elsewhere.wav", None)  # another gateway's disk
    async with client.get("/v1/admin/calls/c1/recording") as resp:
        assert resp.status == 200 and await check(spec, "GET", route, resp) == []  # audio/wav, as documented
        assert resp.headers["Content-Disposition"] == 'attachment; filename="c1.wav"'
        assert await resp.read() == wav.read_bytes()
    for call_id, code in (("nope", "call_not_found"), ("c0", "recording_not_found"), ("c3", "recording_not_found")):
        body = await get(client, spec, f"/v1/admin/calls/{call_id}/recording", route=route, status=404)
        assert body["error"]["code"] == code
    assert (await get(client, spec, "/v1/admin/calls/c1", route=ONE))["recording"] == {
        "path": str(wav),
        "duration_s": 0.5,
    }


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("limit=0", "limit"),
        (f"limit={MAX_LIMIT + 1}", "limit"),
        ("limit=ten", "limit"),
        ("offset=-1", "offset"),
        ("offset=1.5", "offset"),
        ("leg=pstn", "leg"),
        ("active=yes", "active"),
        ("active=", "active"),
    ],
)
async def test_bad_query_values_are_400(client: Client, spec: Any, query: str, param: str) -> None:
    body = await get(client, spec, "/v1/admin/calls?" + query, status=400)
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["param"] == param


def test_the_document_matches_the_routes_and_enums(spec: Any) -> None:
    app = web.Application()
    admin_calls.add_routes(app)
    registered = {(r.method, r.resource.canonical) for r in app.router.routes() if r.method != "HEAD" and r.resource}
    documented = {(m.upper(), p) for p, item in spec["paths"].items() for m in item if m in ("get", "post")}
    assert registered <= documented
    schemas = spec["components"]["schemas"]
    assert schemas["LegKind"]["enum"] == list(get_args(LegKind))
    assert schemas["Disposition"]["enum"] == list(DISPOSITIONS)
    limit = next(p for p in spec["paths"]["/v1/admin/calls"]["get"]["parameters"] if p.get("name") == "limit")
    assert limit["schema"]["maximum"] == MAX_LIMIT
