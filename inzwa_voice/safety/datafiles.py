"""Reading the safety data files, and the one error every problem in them raises.

The pattern lists and templates are edited by helpline staff rather than programmers, so a mistake
in them must stop the gateway at start-up with the file and the entry named: a typo must never
silently weaken the filter or change the number a caller in crisis is given.
"""

from __future__ import annotations

from pathlib import Path

import yaml

LANGUAGES = ("sn", "en")
"""Languages with their own templates and pattern lists."""


class SafetyDataError(ValueError):
    """A safety data file is unreadable, malformed, or holds an entry that cannot be used."""


def read_mapping(path: Path) -> dict[object, object]:
    """Parse ``path`` as YAML whose top level is a non-empty mapping."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SafetyDataError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SafetyDataError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict) or not data:
        raise SafetyDataError(f"{path}: expected a non-empty mapping at the top level")
    return data
