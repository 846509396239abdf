"""Dialplans: which profile answers a call, chosen by number dialled, caller, leg and the clock.

A dialplan is a YAML file (``inzwa_voice/dialplans/default.yaml``, which ships in the package and
answers when ``INZWA_DIALPLAN_PATH`` is unset, is the commented reference). Rules are
tried in order and the first whose ``match`` fits the call wins; no match means ``default``.
Office ``hours`` send calls outside them to an ``after_hours_profile``.

The file is read once, at start-up, and everything is checked then: a mistake an operator makes
must stop the gateway with the file and line to fix, never surface as a strange call at night.
That is why the YAML is composed into its node tree (which keeps each value's line, see
``inzwa_voice.yamlfile``) instead of being loaded into plain dicts, and why every value is
converted here rather than in ``route``: routing a call is then only pattern matching.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from yaml.nodes import MappingNode, Node, ScalarNode

from inzwa_voice.core import CallInfo, LegKind, Profile
from inzwa_voice.yamlfile import YamlReader

# Package data beside this module, so a wheel install (or a container built from one) has it.
DEFAULT_DIALPLAN = Path(__file__).resolve().parent / "dialplans" / "default.yaml"

# Languages every dialplan may use; a file's top-level ``languages`` list adds more. Whisper
# knows ~100 codes, but a profile in a language nobody tested is a mistake more often than not.
BUILTIN_LANGUAGES = ("sn", "en")
LEGS: tuple[str, ...] = typing.get_args(LegKind)
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

# The profile fields a dialplan may set and their types, read from the dataclass so the two never
# drift apart. ``name`` is the profile's key in the file.
_FIELD_TYPES: dict[str, object] = {
    f.name: typing.get_type_hints(Profile)[f.name] for f in dataclasses.fields(Profile) if f.name != "name"
}
_TOP_KEYS = ("languages", "hours", "profiles", "default", "rules")
_RULE_KEYS = ("name", "match", "profile", "overrides", "hours")
_MATCH_KEYS = ("dialled", "caller", "leg")
_HOURS_KEYS = ("timezone", "open", "after_hours_profile")
_PROFILE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_TRANSFER_TARGET = re.compile(r"(sips?:\S+@\S+|tel:\+?[0-9]{2,20}|\+?[0-9]{2,20})")
_TIME_RANGE = re.compile(r"(\d\d):(\d\d)-(\d\d):(\d\d)")


class DialplanError(Exception):
    """An invalid dialplan; the message starts with ``file:line:column``."""


@dataclass(frozen=True)
class Hours:
    """When the helpline is open, in its own time zone; outside them ``after_hours`` answers."""

    timezone: ZoneInfo
    # Weekday (Monday 0) -> open ranges in minutes since local midnight, end exclusive.
    open: dict[int, tuple[tuple[int, int], ...]]
    after_hours: Profile

    def is_open(self, now: datetime) -> bool:
        local = now.astimezone(self.timezone)
        minute = local.hour * 60 + local.minute
        return any(start <= minute < end for start, end in self.open.get(local.weekday(), ()))

    def describe(self, language: str) -> str:
        """The open hours as words that follow a verb ("are open {office_hours}"), in Shona or
        English: consecutive days with the same hours are one span."""
        words = _HOURS_WORDS.get(language, _HOURS_WORDS["en"])
        spans: list[tuple[int, int, tuple[tuple[int, int], ...]]] = []
        for day in range(7):
            ranges = self.open.get(day, ())
            if not ranges:
                continue
            if spans and spans[-1][1] == day - 1 and spans[-1][2] == ranges:
                spans[-1] = (spans[-1][0], day, ranges)
            else:
                spans.append((day, day, ranges))
        parts = []
        for first, last, ranges in spans:
            days = (
                words["days"][first]
                if first == last
                else words["span"].format(words["days"][first], words["days"][last])
            )
            times = words["and"].join(words["range"].format(_clock(a), _clock(b)) for a, b in ranges)
            parts.append(f"{days}, {times}")
        return "; ".join(parts)


def _clock(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


_HOURS_WORDS: dict[str, dict[str, typing.Any]] = {
    "en": {
        "days": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
        "span": "{} to {}",
        "range": "from {} to {}",
        "and": " and ",
    },
    "sn": {
        "days": ("Muvhuro", "Chipiri", "Chitatu", "China", "Chishanu", "Mugovera", "Svondo"),
        "span": "kubva {} kusvika {}",
        "range": "kubva {} kusvika {}",
        "and": " uye ",
    },
}


@dataclass(frozen=True)
class Rule:
    """One routing rule. Each pattern list matches when any of its patterns does; an empty list
    matches every call. All patterns are compiled to regexes and tried with ``search``."""

    name: str
    dialled: tuple[re.Pattern[str], ...]
    caller: tuple[re.Pattern[str], ...]
    legs: frozenset[str]
    profile: Profile
    hours: Hours | None

    def matches(self, info: CallInfo) -> bool:
        return (
            (not self.legs or info.leg in self.legs)
            and (not self.dialled or any(p.search(info.dialled) for p in self.dialled))
            and (not self.caller or any(p.search(info.caller) for p in self.caller))
        )

    def choose(self, now: datetime) -> Profile:
        if self.hours is None or self.hours.is_open(now):
            return self.profile
        return self.hours.after_hours


class Dialplan:
    """A loaded, checked dialplan. Build it with ``Dialplan.load``."""

    def __init__(self, path: Path, profiles: dict[str, Profile], rules: list[Rule], default: Rule) -> None:
        self.path = path
        self.profiles = profiles
        self.rules = rules
        self.default = default

    @classmethod
    def load(cls, path: Path) -> Dialplan:
        """Read and check ``path``; raises ``DialplanError`` naming the file and line."""
        reader = _Reader(path)
        return reader.dialplan(reader.read("dialplan"))

    def route(self, info: CallInfo, now: datetime | None = None) -> Profile:
        """The profile for this call: the first matching rule's, or the default's.

        ``now`` must be timezone-aware (tests pass a fixed instant); it defaults to the clock.
        """
        if now is None:
            now = datetime.now(UTC)
        elif now.tzinfo is None:
            raise ValueError("route() needs a timezone-aware datetime")
        rule = next((r for r in self.rules if r.matches(info)), self.default)
        return rule.choose(now)

    def reachable(self) -> Iterator[tuple[str, Profile]]:
        """Every profile a call can get, with the rule that gives it (overrides included)."""
        for rule in [*self.rules, self.default]:
            yield rule.name, rule.profile
            if rule.hours is not None:
                yield f"{rule.name} (after hours)", rule.hours.after_hours

    def check(self, *, voices: Collection[str], languages: Collection[str]) -> None:
        """Fail at start-up when a profile needs a voice or language the loaded engines lack.

        Loading a dialplan does not need the engines; the app calls this once both exist.
        """
        for where, profile in self.reachable():
            if profile.voice not in voices:
                raise DialplanError(
                    f"{self.path}: {where}: profile {profile.name!r} uses voice {profile.voice!r}, "
                    f"which the TTS engine does not have (voices: {', '.join(sorted(voices))})"
                )
            if profile.language not in languages:
                raise DialplanError(
                    f"{self.path}: {where}: profile {profile.name!r} speaks {profile.language!r}, "
                    f"which the gateway does not serve (INZWA_LANGUAGES: {', '.join(languages)})"
                )


class _Reader(YamlReader):
    """Turns the YAML node tree into a ``Dialplan``, raising ``DialplanError`` at the first fault."""

    error_type = DialplanError
    string_hint = " (quote phone numbers and times: '+263...', '08:00-17:00')"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.languages = set(BUILTIN_LANGUAGES)
        self.profiles: dict[str, Profile] = {}

    # --- the document ---------------------------------------------------------------------------

    def dialplan(self, text: str) -> Dialplan:
        root = self.compose(text, "dialplan")
        top = self.mapping(root, "the dialplan", _TOP_KEYS, required=("profiles", "default"))
        if "languages" in top:
            self.languages.update(self.language_code(n) for n in self.items(top["languages"], "languages"))
        self.read_profiles(top["profiles"])
        hours = self.hours(top["hours"]) if "hours" in top else None
        default = Rule("default", (), (), frozenset(), self.profile_ref(top["default"], "default"), hours)
        rule_nodes = self.items(top["rules"], "rules") if "rules" in top else []
        rules = [self.rule(node, i, hours) for i, node in enumerate(rule_nodes)]
        return Dialplan(self.path, self.profiles, rules, default)

    def read_profiles(self, node: Node) -> None:
        entries = self.mapping(node, "profiles", None)
        if not entries:
            raise self.error(node, "profiles must define at least one profile")
        for name, body in entries.items():
            if not _PROFILE_NAME.fullmatch(name):
                raise self.error(body, f"profile name {name!r} must be 1-64 letters, digits, '_', '.' or '-'")
            fields = self.mapping(body, f"profile {name!r}", (*_FIELD_TYPES, "extends"))
            base = self.profile_ref(fields.pop("extends"), "extends") if "extends" in fields else Profile()
            self.profiles[name] = self.apply(dataclasses.replace(base, name=name), fields)

    def apply(self, base: Profile, fields: dict[str, Node]) -> Profile:
        """``base`` with ``fields`` set, each converted and checked against its Profile type."""
        values = {name: self.field(name, node) for name, node in fields.items()}
        profile = dataclasses.replace(base, **values)  # type: ignore[arg-type]
        if profile.recording and not profile.recording_consent.strip() and fields:
            # A caller is told before anything of theirs is kept: no notice, no recording.
            node = fields.get("recording_consent", fields.get("recording", next(iter(fields.values()))))
            raise self.error(node, "a profile with recording: true must say recording_consent (the words callers hear)")
        return profile

    def field(self, name: str, node: Node) -> object:
        if name == "language":
            return self.known_language(node)
        hint = _FIELD_TYPES[name]
        options = typing.get_args(hint) or (hint,)
        if type(None) in options and self.is_null(node):
            return None
        kind = next(o for o in options if o is not type(None))
        value = self.scalar(node, name, typing.cast(type[object], kind))
        if name == "transfer_target" and not _TRANSFER_TARGET.fullmatch(str(value)):
            raise self.error(node, f"transfer_target {value!r} must be a SIP URI (sip:user@host) or a phone number")
        if isinstance(value, float) and not (math.isfinite(value) and value > 0):
            raise self.error(node, f"{name} must be a positive number of seconds, not {value}")
        return value

    def rule(self, node: Node, index: int, inherited: Hours | None) -> Rule:
        fields = self.mapping(node, f"rule {index + 1}", _RULE_KEYS, required=("match", "profile"))
        name = self.scalar(fields["name"], "name", str) if "name" in fields else f"rule {index + 1}"
        match = self.mapping(fields["match"], f"{name}: match", _MATCH_KEYS)
        if not match:
            raise self.error(fields["match"], f"{name}: match needs at least one of {', '.join(_MATCH_KEYS)}")
        legs = frozenset(self.leg(n) for n in self.items(match["leg"], "leg")) if "leg" in match else frozenset()
        profile = self.profile_ref(fields["profile"], "profile")
        if "overrides" in fields:
            profile = self.apply(profile, self.mapping(fields["overrides"], f"{name}: overrides", tuple(_FIELD_TYPES)))
        return Rule(
            name=name,
            dialled=self.patterns(match.get("dialled"), "dialled"),
            caller=self.patterns(match.get("caller"), "caller"),
            legs=legs,
            profile=profile,
            hours=self.rule_hours(fields["hours"]) if "hours" in fields else inherited,
        )

    def rule_hours(self, node: Node) -> Hours | None:
        if isinstance(node, ScalarNode) and node.value == "always":
            return None
        if not isinstance(node, MappingNode):
            raise self.error(node, "hours must be a mapping (timezone, open, after_hours_profile) or 'always'")
        return self.hours(node)

    def hours(self, node: Node) -> Hours:
        fields = self.mapping(node, "hours", _HOURS_KEYS, required=_HOURS_KEYS)
        zone_name = self.scalar(fields["timezone"], "timezone", str)
        try:
            zone = ZoneInfo(zone_name)
        except (ZoneInfoNotFoundError, ValueError):
            raise self.error(fields["timezone"], f"unknown time zone {zone_name!r} (e.g. Africa/Harare)") from None
        open_: dict[int, list[tuple[int, int]]] = {}
        for days, ranges in self.mapping(fields["open"], "open", None).items():
            spans = [self.time_range(n) for n in self.items(ranges, f"open {days}")]
            for day in self.days(days, ranges):
                open_.setdefault(day, []).extend(spans)
        return Hours(
            timezone=zone,
            open={day: tuple(sorted(spans)) for day, spans in open_.items()},
            after_hours=self.profile_ref(fields["after_hours_profile"], "after_hours_profile"),
        )

    # --- values ---------------------------------------------------------------------------------

    def profile_ref(self, node: Node, what: str) -> Profile:
        name = self.scalar(node, what, str)
        if name not in self.profiles:
            known = ", ".join(self.profiles) or "none yet"
            raise self.error(node, f"{what}: unknown profile {name!r} (defined above: {known})")
        return self.profiles[name]

    def language_code(self, node: Node) -> str:
        code = self.scalar(node, "language", str).lower()
        if not code.isalpha() or not 2 <= len(code) <= 3:
            raise self.error(node, f"language {code!r} must be a Whisper code such as 'sn' or 'en'")
        return code

    def known_language(self, node: Node) -> str:
        code = self.language_code(node)
        if code not in self.languages:
            allowed = ", ".join(sorted(self.languages))
            raise self.error(node, f"unknown language {code!r}: allowed are {allowed}; add it to 'languages' first")
        return code

    def leg(self, node: Node) -> str:
        leg = self.scalar(node, "leg", str)
        if leg not in LEGS:
            raise self.error(node, f"unknown leg {leg!r}; one of {', '.join(LEGS)}")
        return leg

    def patterns(self, node: Node | None, what: str) -> tuple[re.Pattern[str], ...]:
        """Exact strings, ``prefix*``, or ``re:regex`` (searched), each compiled to a regex."""
        if node is None:
            return ()
        compiled = []
        for item in self.items(node, what):
            text = self.scalar(item, what, str)
            if text.startswith("re:"):
                try:
                    compiled.append(re.compile(text[3:]))
                except re.error as exc:
                    raise self.error(item, f"{what}: bad regular expression {text[3:]!r}: {exc}") from None
            elif "*" in text.rstrip("*") or text.endswith("**"):
                raise self.error(item, f"{what}: '*' may only end a prefix ('+26377*'); use 're:' for more")
            elif text.endswith("*"):
                compiled.append(re.compile(r"\A" + re.escape(text[:-1])))
            else:
                compiled.append(re.compile(r"\A" + re.escape(text) + r"\Z"))
        return tuple(compiled)

    def days(self, spec: str, node: Node) -> list[int]:
        """``mon``, ``mon-fri``, ``sat,sun`` or ``fri-mon`` (wrapping) as weekday numbers."""
        out: list[int] = []
        for part in spec.lower().split(","):
            first, _, last = part.strip().partition("-")
            if first not in DAYS or (last and last not in DAYS):
                raise self.error(node, f"open: {spec!r} is not a day or day range like 'mon-fri' or 'sat,sun'")
            start, end = DAYS.index(first), DAYS.index(last or first)
            out.extend((start + i) % 7 for i in range((end - start) % 7 + 1))
        return out

    def time_range(self, node: Node) -> tuple[int, int]:
        text = self.scalar(node, "open", str)
        found = _TIME_RANGE.fullmatch(text)
        if found:
            h1, m1, h2, m2 = (int(g) for g in found.groups())
            start, end = h1 * 60 + m1, h2 * 60 + m2
            if h1 < 24 and m1 < 60 and m2 < 60 and start < end <= 24 * 60:
                return start, end
        raise self.error(node, f"open: {text!r} must be 'HH:MM-HH:MM' within one day (end after start, at most 24:00)")
