"""Dialplans: the shipped files route as documented, and every mistake names its file and line."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from inzwa_voice.core import CallInfo, Profile
from inzwa_voice.dialplan import DEFAULT_DIALPLAN, Dialplan, DialplanError

DIALPLANS = sorted(DEFAULT_DIALPLAN.parent.glob("*.yaml"))
# Harare is UTC+2 all year: 06:30 UTC is 08:30 there.
MONDAY_OPEN = datetime(2025, 1, 6, 6, 30, tzinfo=UTC)
MONDAY_BEFORE_8 = datetime(2025, 1, 6, 5, 59, tzinfo=UTC)
MONDAY_AT_17 = datetime(2025, 1, 6, 15, 0, tzinfo=UTC)
SATURDAY_NOON = datetime(2025, 1, 11, 10, 0, tzinfo=UTC)
HARARE = ZoneInfo("Africa/Harare")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def load(tmp_path: Path, text: str) -> Dialplan:
    return Dialplan.load(write(tmp_path, text))


# --- the shipped dialplans --------------------------------------------------------------------


@pytest.fixture(scope="module")
def default() -> Dialplan:
    return Dialplan.load(DEFAULT_DIALPLAN)


def test_default_dialplan_profiles(default: Dialplan) -> None:
    assert set(default.profiles) == {"shona_helpline", "shona_after_hours", "english_helpline", "english_after_hours"}
    shona = default.profiles["shona_helpline"]
    assert (shona.name, shona.language, shona.voice) == ("shona_helpline", "sn", "joe-sn")
    assert shona.greeting.startswith("Mhoro") and shona.goodbye.startswith("Tatenda")
    assert shona.transfer_target == "sip:counsellor@127.0.0.1:5070"
    english = default.profiles["english_helpline"]
    assert (english.language, english.voice) == ("en", "joe")
    after = default.profiles["shona_after_hours"]
    assert after.transfer_target is None
    assert (after.language, after.voice, after.reprompt) == ("sn", "joe-sn", shona.reprompt), "extends copies fields"


@pytest.mark.parametrize(
    ("info", "now", "expected"),
    [
        (CallInfo("sip", dialled="+263242000000"), MONDAY_OPEN, "shona_helpline"),
        (CallInfo("sip", dialled="+263242000000"), MONDAY_BEFORE_8, "shona_after_hours"),
        (CallInfo("twilio"), MONDAY_AT_17, "shona_after_hours"),
        (CallInfo("ws"), SATURDAY_NOON, "shona_after_hours"),
        (CallInfo("sip", dialled="+263800123456"), MONDAY_OPEN, "english_helpline"),
        (CallInfo("twilio", dialled="+263800123456"), SATURDAY_NOON, "english_after_hours"),
        (CallInfo("sip", dialled="+2638001234567"), MONDAY_OPEN, "shona_helpline"),
        (CallInfo("webrtc"), MONDAY_OPEN, "shona_helpline"),
    ],
)
def test_default_dialplan_routes(default: Dialplan, info: CallInfo, now: datetime, expected: str) -> None:
    assert default.route(info, now).name == expected


def test_rule_overrides_change_only_that_rule(default: Dialplan) -> None:
    web = default.route(CallInfo("webrtc"), MONDAY_OPEN)
    assert web.max_call_s == 600
    assert web == Profile(**{**vars(default.profiles["shona_helpline"]), "max_call_s": 600.0})
    assert default.profiles["shona_helpline"].max_call_s == 900
    assert default.route(CallInfo("webrtc"), SATURDAY_NOON).max_call_s == 900, "not after hours"


@pytest.mark.parametrize("path", DIALPLANS, ids=lambda p: p.name)
def test_every_shipped_dialplan_loads_and_fits_the_engines(path: Path) -> None:
    plan = Dialplan.load(path)
    plan.check(voices={"joe", "joe-sn"}, languages={"sn", "en", "sw"})
    assert plan.route(CallInfo("sip"), MONDAY_OPEN) in plan.profiles.values()


def test_route_without_a_clock_uses_now_and_needs_an_aware_time(default: Dialplan) -> None:
    assert default.route(CallInfo("ws")).language == "sn"
    with pytest.raises(ValueError, match="timezone-aware"):
        default.route(CallInfo("ws"), datetime(2025, 1, 6, 10, 0))


# --- matching -----------------------------------------------------------------------------------

MATCHING = """
    profiles:
      a: {}
      exact: {}
      prefix: {}
      regex: {}
      both: {}
      hidden: {}
    default: a
    rules:
      - match: {dialled: '+263800123456', leg: [sip, twilio]}
        profile: both
      - match: {dialled: ['+263800123456', '0800']}
        profile: exact
      - match: {dialled: '+26377*'}
        profile: prefix
      - match: {caller: 're:^\\+2637[178]'}
        profile: regex
      - match: {caller: ''}
        profile: hidden
"""


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        (CallInfo("sip", caller="x", dialled="+263800123456"), "both"),
        (CallInfo("ws", caller="x", dialled="+263800123456"), "exact"),
        (CallInfo("ws", caller="x", dialled="0800"), "exact"),
        (CallInfo("ws", caller="x", dialled="08001"), "a"),
        (CallInfo("ws", caller="x", dialled="+263771234567"), "prefix"),
        (CallInfo("ws", caller="x", dialled="+26377"), "prefix"),
        (CallInfo("ws", caller="+263712345678", dialled="+263242"), "regex"),
        (CallInfo("ws", caller="+263732345678", dialled="+263242"), "a"),
        (CallInfo("ws", caller="", dialled="+263242"), "hidden"),
        (CallInfo("ws", caller="", dialled="+263779"), "prefix"),
    ],
)
def test_patterns_and_first_match_wins(tmp_path: Path, info: CallInfo, expected: str) -> None:
    assert load(tmp_path, MATCHING).route(info, MONDAY_OPEN).name == expected


SCHEDULE = """
    hours:
      timezone: Africa/Harare
      open:
        mon-fri: ['07:30-12:30', '13:30-18:00']
        fri-sun: '20:00-24:00'
      after_hours_profile: closed
    profiles:
      open: {}
      closed: {}
      always: {}
    default: open
    rules:
      - match: {leg: sip}
        profile: always
        hours: always
"""


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (datetime(2025, 1, 6, 7, 29, tzinfo=HARARE), "closed"),
        (datetime(2025, 1, 6, 7, 30, tzinfo=HARARE), "open"),
        (datetime(2025, 1, 6, 12, 45, tzinfo=HARARE), "closed"),
        (datetime(2025, 1, 6, 13, 30, tzinfo=HARARE), "open"),
        (datetime(2025, 1, 6, 21, 0, tzinfo=HARARE), "closed"),
        (datetime(2025, 1, 10, 21, 0, tzinfo=HARARE), "open"),
        (datetime(2025, 1, 12, 23, 59, tzinfo=HARARE), "open"),
        (datetime(2025, 1, 12, 10, 0, tzinfo=HARARE), "closed"),
    ],
)
def test_hours_in_the_helplines_time_zone(tmp_path: Path, now: datetime, expected: str) -> None:
    plan = load(tmp_path, SCHEDULE)
    assert plan.route(CallInfo("ws"), now).name == expected
    assert plan.route(CallInfo("ws"), now.astimezone(UTC)).name == expected
    assert plan.route(CallInfo("sip"), now).name == "always", "hours: always opts a rule out"


def test_extra_languages_are_allowed_only_when_listed(tmp_path: Path) -> None:
    plan = load(tmp_path, "languages: [sw]\nprofiles: {a: {language: SW}}\ndefault: a\n")
    assert plan.profiles["a"].language == "sw"
    with pytest.raises(DialplanError, match=r"plan\.yaml:1:26: unknown language 'sw'"):
        load(tmp_path, "profiles: {a: {language: sw}}\ndefault: a\n")


def test_check_names_the_rule_and_what_is_missing(default: Dialplan) -> None:
    with pytest.raises(DialplanError, match=r"english line: profile 'english_helpline' uses voice 'joe'"):
        default.check(voices={"joe-sn"}, languages={"sn", "en"})
    with pytest.raises(DialplanError, match=r"profile 'english_helpline' speaks 'en'"):
        default.check(voices={"joe", "joe-sn"}, languages={"sn"})


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(DialplanError, match=r"missing\.yaml: cannot read the dialplan"):
        Dialplan.load(tmp_path / "missing.yaml")
    (tmp_path / "latin1.yaml").write_bytes(b"default: caf\xe9\n")
    with pytest.raises(DialplanError, match="cannot read"):
        Dialplan.load(tmp_path / "latin1.yaml")


# --- every mistake stops start-up at its line ---------------------------------------------------

VALID_HEAD = "profiles:\n  a: {}\ndefault: a\n"

BAD: list[tuple[str, str, int, str]] = [
    ("syntax", "profiles:\n  a: {}\n default: a\n", 3, "YAML syntax error"),
    ("syntax-unclosed", "profiles: {a: {}\ndefault: a\n", 2, "YAML syntax error"),
    ("empty", "# nothing\n", 1, "the dialplan is empty"),
    ("not-a-mapping", "- a\n", 1, "the dialplan must be a mapping"),
    ("missing-default", "profiles:\n  a: {}\n", 1, "missing 'default'"),
    ("missing-profiles", "default: a\n", 1, "missing 'profiles'"),
    ("no-profiles", "profiles: {}\ndefault: a\n", 1, "at least one profile"),
    ("unknown-top-key", VALID_HEAD + "rulez: []\n", 4, "unknown key 'rulez' in the dialplan"),
    ("duplicate-key", "profiles:\n  a: {}\n  a: {}\ndefault: a\n", 3, "duplicate key 'a'"),
    ("unknown-profile-key", "profiles:\n  a:\n    greting: Hi\ndefault: a\n", 3, "unknown key 'greting'"),
    ("name-not-settable", "profiles:\n  a:\n    name: b\ndefault: a\n", 3, "unknown key 'name'"),
    ("bad-profile-name", "profiles:\n  'a b': {}\ndefault: a\n", 2, "profile name 'a b'"),
    ("profile-not-mapping", "profiles:\n  a: hello\ndefault: a\n", 2, "profile 'a' must be a mapping"),
    ("greeting-list", "profiles:\n  a:\n    greeting: [Hi]\ndefault: a\n", 3, "greeting must be a string, not a list"),
    ("greeting-bool", "profiles:\n  a:\n    greeting: yes\ndefault: a\n", 3, "greeting must be a string, not 'yes'"),
    ("timeout-text", "profiles:\n  a:\n    idle_timeout_s: soon\ndefault: a\n", 3, "idle_timeout_s must be a number"),
    ("timeout-bool", "profiles:\n  a:\n    max_call_s: true\ndefault: a\n", 3, "max_call_s must be a number"),
    ("timeout-negative", "profiles:\n  a:\n    idle_timeout_s: -1\ndefault: a\n", 3, "positive number of seconds"),
    ("timeout-zero", "profiles:\n  a:\n    hold_after_s: 0\ndefault: a\n", 3, "positive number of seconds"),
    ("timeout-inf", "profiles:\n  a:\n    max_call_s: .inf\ndefault: a\n", 3, "positive number of seconds"),
    ("language-unknown", "profiles:\n  a:\n    language: fr\ndefault: a\n", 3, "unknown language 'fr'"),
    ("language-bad-code", "languages: [s1]\nprofiles:\n  a: {}\ndefault: a\n", 1, "language 's1' must be"),
    ("transfer-bad", "profiles:\n  a:\n    transfer_target: counsellor\ndefault: a\n", 3, "transfer_target"),
    ("transfer-number", "profiles:\n  a:\n    transfer_target: +263800\ndefault: a\n", 3, "quote phone numbers"),
    ("default-unknown", "profiles:\n  a: {}\ndefault: b\n", 3, "default: unknown profile 'b'"),
    ("default-not-string", "profiles:\n  a: {}\ndefault: [a]\n", 3, "default must be a string"),
    ("extends-later", "profiles:\n  a:\n    extends: b\n  b: {}\ndefault: a\n", 3, "extends: unknown profile 'b'"),
    ("rules-not-list", VALID_HEAD + "rules: {}\n", 4, "rules must be a value or a non-empty list"),
    ("rule-unknown-key", VALID_HEAD + "rules:\n  - match: {leg: sip}\n    profile: a\n    when: x\n", 7, "'when'"),
    ("rule-no-match", VALID_HEAD + "rules:\n  - profile: a\n", 5, "rule 1 is missing 'match'"),
    ("rule-empty-match", VALID_HEAD + "rules:\n  - match: {}\n    profile: a\n", 5, "match needs at least one"),
    ("rule-unknown-profile", VALID_HEAD + "rules:\n  - match: {leg: sip}\n    profile: c\n", 6, "unknown profile 'c'"),
    ("match-unknown-key", VALID_HEAD + "rules:\n  - match: {number: '1'}\n    profile: a\n", 5, "'number'"),
    ("leg-unknown", VALID_HEAD + "rules:\n  - match: {leg: [sip, pstn]}\n    profile: a\n", 5, "unknown leg 'pstn'"),
    ("regex-bad", VALID_HEAD + "rules:\n  - match: {caller: 're:(+'}\n    profile: a\n", 5, "bad regular expression"),
    ("star-inside", VALID_HEAD + "rules:\n  - match: {dialled: '+263*1'}\n    profile: a\n", 5, "may only end"),
    ("number-unquoted", VALID_HEAD + "rules:\n  - match: {dialled: +2638001}\n    profile: a\n", 5, "quote phone"),
    (
        "override-bad",
        VALID_HEAD + "rules:\n  - match: {leg: sip}\n    profile: a\n    overrides:\n      max_call_s: -5\n",
        8,
        "max_call_s must be a positive number",
    ),
    ("hours-not-mapping", VALID_HEAD + "hours: sometimes\n", 4, "hours must be a mapping"),
    ("hours-missing", VALID_HEAD + "hours:\n  timezone: UTC\n", 5, "missing 'open', 'after_hours_profile'"),
    (
        "timezone-unknown",
        "profiles: {a: {}}\ndefault: a\nhours:\n  timezone: Africa/Hararre\n  open: {}\n  after_hours_profile: a\n",
        4,
        "unknown time zone 'Africa/Hararre'",
    ),
    (
        "day-unknown",
        "profiles: {a: {}}\ndefault: a\nhours:\n  timezone: UTC\n  open: {weekdays: '08:00-17:00'}\n"
        "  after_hours_profile: a\n",
        5,
        "'weekdays' is not a day",
    ),
    (
        "time-unquoted",
        "profiles: {a: {}}\ndefault: a\nhours:\n  timezone: UTC\n  open:\n    mon: 17:00\n  after_hours_profile: a\n",
        6,
        "open must be a string, not '17:00'",
    ),
    (
        "time-backwards",
        "profiles: {a: {}}\ndefault: a\nhours:\n  timezone: UTC\n  open:\n    mon: '17:00-08:00'\n"
        "  after_hours_profile: a\n",
        6,
        "end after start",
    ),
    (
        "time-25",
        "profiles: {a: {}}\ndefault: a\nhours:\n  timezone: UTC\n  open:\n    mon: ['08:00-12:00', '13:00-25:00']\n"
        "  after_hours_profile: a\n",
        6,
        "'13:00-25:00'",
    ),
    (
        "after-hours-unknown",
        "profiles: {a: {}}\ndefault: a\nhours:\n  timezone: UTC\n  open: {mon: '08:00-17:00'}\n"
        "  after_hours_profile: night\n",
        6,
        "after_hours_profile: unknown profile 'night'",
    ),
    (
        "rule-hours-bad",
        VALID_HEAD + "rules:\n  - match: {leg: sip}\n    profile: a\n    hours: never\n",
        7,
        "or 'always'",
    ),
]


@pytest.mark.parametrize(("text", "line", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_invalid_dialplans_name_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DialplanError) as caught:
        Dialplan.load(path)
    error = str(caught.value)
    assert error.startswith(f"{path}:{line}:"), error
    assert message in error, error
