"""A person on every leg: transfer on Twilio, AudioSocket, WebSocket and the widget, and after hours.

SIP's REFER is tested in tests/test_sip.py. Here the calls run end to end with the real engines:
Twilio's side is the Media Streams stand-in plus signed HTTP requests as Twilio makes them, the
Asterisk side the AudioSocket stand-in plus the ``CURL()`` lookup the example dialplan makes.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from inzwa_voice.api.keys import CALLS
from inzwa_voice.conversation.calls import CallEvent
from inzwa_voice.engines.runtime import Engines
from inzwa_voice.legs.audiosocket import AUDIOSOCKET, TRANSFER_PATH
from inzwa_voice.legs.handoffs import Handoffs
from inzwa_voice.legs.twilio import ACTION_PATH, MEDIA_PATH, VOICE_PATH
from inzwa_voice.legs.twilio_protocol import signature
from inzwa_voice.simulator.audiosocket import AudioSocketCaller
from inzwa_voice.simulator.twilio import TwilioCaller
from inzwa_voice.simulator.ws import WsCaller
from tests.conftest import ENGLISH_DIALPLAN, Server, ServerFactory, english_server, transcript

TARGET = "sip:counsellor@127.0.0.1:5070"  # tests/dialplans/english.yaml
TOKEN = "12345"
KNOWLEDGE = Path(__file__).resolve().parents[1] / "inzwa_voice" / "knowledge" / "data" / "helpline.yaml"
WIDGET_JS = Path(__file__).resolve().parents[1] / "inzwa_voice" / "widget" / "widget.js"


async def until_end(recorded: asyncio.Queue[CallEvent], call_id: str | None = None) -> list[CallEvent]:
    """What was recorded about one call (the first seen, or ``call_id``) until its end."""
    seen: list[CallEvent] = []
    async with asyncio.timeout(60):
        while True:
            event = await recorded.get()
            call_id = call_id or event.call_id
            if event.call_id == call_id:
                seen.append(event)
                if event.kind == "end":
                    return seen


def kinds(events: list[CallEvent], kind: str) -> list[dict[str, object]]:
    return [event.data for event in events if event.kind == kind]


# ----- the book between the gateway's end of the call and the platform's question -----


def test_handoffs_are_bounded_expire_and_answer_again() -> None:
    now = [0.0]
    book = Handoffs(max_waiting=2, ttl_s=10.0, clock=lambda: now[0])
    book.put("a", "sip:one@example.org")
    book.put("b", "+263242700000")
    assert book.get("a") == book.get("a") == "sip:one@example.org"  # a retry gets the same answer
    book.put("c", "sip:three@example.org")  # beyond the bound the oldest goes
    assert (book.get("a"), book.get("b"), len(book)) == (None, "+263242700000", 2)
    now[0] = 10.0
    assert book.get("b") is None and len(book) == 0  # expired


# ----- Twilio: <Connect action> then <Dial> -----


def signed(url: str, form: dict[str, str]) -> dict[str, str]:
    return {"X-Twilio-Signature": signature(TOKEN, url, form.items())}


async def test_a_twilio_call_transferred_by_dtmf_zero_is_dialled_by_the_connect_action(
    make_server: ServerFactory,
) -> None:
    server = await english_server(make_server, twilio_auth_token=TOKEN)
    action_url = server.url + ACTION_PATH
    voice = {"CallSid": "CA00000000000000000000000000000001", "From": "+263771234567", "To": "+263800123456"}
    async with server.http.post(
        server.url + VOICE_PATH, data=voice, headers=signed(server.url + VOICE_PATH, voice)
    ) as r:
        assert f'<Connect action="{action_url}">' in await r.text()

    caller = TwilioCaller(server.http, server.url.replace("http", "ws", 1) + MEDIA_PATH, auth_token=TOKEN)
    with server.app[CALLS].watch() as recorded:
        await caller.connect()
        try:
            await caller.dtmf("0")
            events = await until_end(recorded)
            await asyncio.wait_for(caller.wait_closed(), 30)  # the gateway ended the stream
        finally:
            await caller.hang_up()
    assert kinds(events, "transfer") == [{"reason": "dtmf", "target": TARGET}]
    (result,) = kinds(events, "transfer_result")
    assert (result["target"], result["ok"]) == (TARGET, True)
    assert kinds(events, "end") == [{"disposition": "transferred"}]

    # Twilio now posts the action URL, signed like every webhook.
    form = {"CallSid": caller.call_sid, "CallStatus": "in-progress", "From": "+263771234567"}
    for headers in ({}, signed(action_url, {**form, "From": "+263779999999"})):
        async with server.http.post(action_url, data=form, headers=headers) as refused:
            assert refused.status == 403
            assert (await refused.json())["error"]["code"] == "invalid_signature"
    async with server.http.post(action_url, data=form, headers=signed(action_url, form)) as resp:
        assert (resp.status, resp.content_type) == (200, "text/xml")
        assert f'<Dial action="{action_url}"><Sip>{TARGET}</Sip></Dial>' in await resp.text()
    # The <Dial> is over: Twilio posts its outcome to the Dial's action, and the call record keeps it.
    dialled = {**form, "CallStatus": "completed", "DialCallStatus": "busy", "DialCallSid": "CA" + "9" * 32}
    async with server.http.post(action_url, data=dialled, headers=signed(action_url, dialled)) as resp:
        assert await resp.text() == '<?xml version="1.0" encoding="UTF-8"?><Response><Hangup /></Response>'
    store = server.app[CALLS].store
    assert store is not None
    record = await store.get_call(events[0].call_id)
    assert record is not None
    outcomes = [e["data"] for e in record["events"] if e["kind"] == "transfer_result"]  # type: ignore[attr-defined]
    assert [(o["ok"], o["reason"], o.get("talk_s")) for o in outcomes] == [
        (True, "the stream ends and Twilio dials the target", None),
        (False, "dial busy", None),
    ]
    # A second transfer of the same call that reached a person: how long they talked is kept.
    answered = {**dialled, "DialCallStatus": "completed", "DialCallDuration": "42"}
    async with server.http.post(action_url, data=answered, headers=signed(action_url, answered)) as resp:
        assert resp.status == 200
    record = await store.get_call(events[0].call_id)
    assert record is not None
    last = [e["data"] for e in record["events"] if e["kind"] == "transfer_result"][-1]  # type: ignore[attr-defined]
    assert (last["ok"], last["reason"], last["talk_s"]) == (True, "dial completed", 42)
    # A duration that is no whole number of seconds is left out, not a server error.
    odd = {**answered, "DialCallDuration": "4²"}
    async with server.http.post(action_url, data=odd, headers=signed(action_url, odd)) as resp:
        assert resp.status == 200
    record = await store.get_call(events[0].call_id)
    assert record is not None
    last = [e["data"] for e in record["events"] if e["kind"] == "transfer_result"][-1]  # type: ignore[attr-defined]
    assert (last["ok"], "talk_s" in last) == (True, False)
    # A stream that ended without a transfer: Twilio is told to hang up.
    other = {**form, "CallSid": "CA00000000000000000000000000000002"}
    async with server.http.post(action_url, data=other, headers=signed(action_url, other)) as resp:
        assert await resp.text() == '<?xml version="1.0" encoding="UTF-8"?><Response><Hangup /></Response>'


# ----- Asterisk AudioSocket: hang up, then the dialplan's CURL() lookup -----


async def test_an_audiosocket_transfer_hangs_up_and_the_dialplan_looks_up_the_target(
    make_server: ServerFactory,
) -> None:
    server = await english_server(make_server)
    port = server.app[AUDIOSOCKET].port
    assert port is not None
    caller = AudioSocketCaller("127.0.0.1", port)
    with server.app[CALLS].watch() as recorded:
        await caller.connect()
        try:
            await caller.heard(20)
            await caller.send_dtmf("0")
            events = await until_end(recorded)
            await asyncio.wait_for(caller.wait_closed(), 30)
        finally:
            await caller.hang_up()
    assert caller.events("hangup") == [{"type": "hangup"}]  # AudioSocket() returns to the dialplan
    assert [e["target"] for e in kinds(events, "transfer")] == [TARGET]
    assert [(r["target"], r["ok"]) for r in kinds(events, "transfer_result")] == [(TARGET, True)]
    assert kinds(events, "end") == [{"disposition": "transferred"}]

    # What extensions.conf does next: ${CURL(http://gateway/v1/audiosocket/${CALL_UUID}/transfer)}.
    async with server.http.get(f"{server.v1}/audiosocket/{caller.uuid}/transfer") as resp:
        assert (resp.status, resp.content_type, await resp.text()) == (200, "text/plain", TARGET)
    async with server.http.get(f"{server.v1}/audiosocket/00000000-0000-4000-8000-000000000000/transfer") as resp:
        assert (resp.status, await resp.text()) == (200, "")  # no transfer: the dialplan hangs up
    async with server.http.get(f"{server.v1}/audiosocket/not-a-uuid/transfer") as resp:
        assert resp.status == 400


# ----- WebSocket: the client gets the target, the call stays; after hours the authored words -----


def closed_dialplan(tmp_path: Path, *, menu_zero: bool) -> Path:
    """The English test profile with nobody in (no transfer target), its knowledge base with or
    without the keypad's ``0: human``."""
    knowledge = KNOWLEDGE.read_text(encoding="utf-8")
    if not menu_zero:
        assert "  0: human\n" in knowledge
        knowledge = knowledge.replace("  0: human\n", "")
    (tmp_path / "helpline.yaml").write_text(knowledge, encoding="utf-8")
    dialplan = ENGLISH_DIALPLAN.read_text(encoding="utf-8").replace("knowledge: helpline", "knowledge: helpline.yaml")
    dialplan = dialplan.replace(f"transfer_target: {TARGET}", "transfer_target: null")
    assert "transfer_target: null" in dialplan
    (tmp_path / "closed.yaml").write_text(dialplan, encoding="utf-8")
    return tmp_path / "closed.yaml"


async def ws_call(server: Server) -> WsCaller:
    caller = WsCaller(server.http, server.url.replace("http", "ws") + "/v1/ws")
    await caller.connect()
    await caller.wait_for("tts.end")  # the greeting
    caller.clear_bot_audio()
    return caller


async def test_a_websocket_client_gets_the_target_and_the_call_stays(make_server: ServerFactory) -> None:
    server = await english_server(make_server)
    caller = await ws_call(server)
    try:
        with server.app[CALLS].watch() as recorded:
            await caller.send_json({"type": "dtmf", "digit": "0"})
            transfer = await caller.wait_for("transfer")
            assert transfer == {"type": "transfer", "target": TARGET, "reason": "dtmf"}
            async with asyncio.timeout(30):
                while (event := await recorded.get()).kind != "transfer_result":
                    pass
        assert (event.data["target"], event.data["ok"]) == (TARGET, False)
        assert "offered to the client" in str(event.data["reason"])
        assert not caller.events("call.end")  # the caller stays with the bot until they hang up
    finally:
        await caller.hang_up()


@pytest.mark.parametrize("menu_zero", [True, False], ids=["keypad-menu", "no-menu-entry"])
async def test_after_hours_zero_says_when_people_are_in(
    make_server: ServerFactory, engines: Engines, tmp_path: Path, menu_zero: bool
) -> None:
    dialplan = closed_dialplan(tmp_path, menu_zero=menu_zero)
    server = await make_server(language="en", tts_voice="joe", dialplan_path=dialplan)
    caller = await ws_call(server)
    try:
        with server.app[CALLS].watch() as recorded:
            await caller.send_json({"type": "dtmf", "digit": "0"})
            words = await caller.wait_for("llm.partial")  # the phrase, then its tts.start
            start = await caller.wait_for("tts.start")
            assert start["source"] == {"kind": "intent", "id": "human"}
            await caller.wait_for("tts.end")
            # intents.yaml's `human` answers_closed, with the dialplan's hours filled in.
            assert str(words["text"]).startswith("Our staff are not in right now")
            assert await transcript(engines, caller.bot_audio(), 16000)
            if not menu_zero:  # the keypad's own 0: a transfer with nobody to take it, recorded
                assert caller.events("transfer")[0]["target"] is None
                async with asyncio.timeout(30):
                    while (event := await recorded.get()).kind != "transfer_result":
                        pass
                assert event.data == {"target": None, "ok": False, "status": 0, "reason": "no_target"}
        assert not caller.events("call.end")
    finally:
        await caller.hang_up()


# ----- the widget offers the target -----


def transfer_link(target: Any) -> Any:
    """The served widget's own ``transferLink``, run by node on ``target``."""
    node = shutil.which("node")
    assert node, "node is missing"
    source = WIDGET_JS.read_text(encoding="utf-8")
    start = source.index("  function transferLink(")
    end = source.index("\n  }\n", start) + 4
    script = source[start:end] + f"\nprocess.stdout.write(JSON.stringify(transferLink({json.dumps(target)})));\n"
    return json.loads(subprocess.run([node, "-e", script], capture_output=True, check=True, text=True).stdout)


async def test_the_widget_shows_the_real_target_as_a_link(make_server: ServerFactory) -> None:
    server = await make_server()
    async with server.http.get(server.url + "/widget/widget.js") as resp:
        served = await resp.text()
    assert served == WIDGET_JS.read_text(encoding="utf-8")
    assert "transferNote(event.target)" in served and "TEXT.noPerson" in served
    assert "Connecting you to a person" not in served  # it never claims a bridge it cannot make
    assert transfer_link(TARGET) == {"href": TARGET, "textContent": TARGET}
    assert transfer_link("+263 242 700 000") == {"href": "tel:+263242700000", "textContent": "+263 242 700 000"}
    for nothing in (None, "", "javascript:alert(1)", "sip:a b"):
        assert transfer_link(nothing) is None


def test_the_example_dialplan_asks_the_route_the_gateway_serves() -> None:
    dialplan = (Path(__file__).resolve().parents[1] / "sip" / "asterisk" / "extensions.conf").read_text()
    lookup = "${CURL(${GATEWAY_HTTP}" + TRANSFER_PATH.format(uuid="${CALL_UUID}") + ")}"
    assert f"Set(TARGET={lookup})" in dialplan
    assert "AudioSocket(${CALL_UUID},${GATEWAY})" in dialplan
