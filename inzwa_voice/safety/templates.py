"""The fixed replies: refusals, and the crisis safe message that carries the helpline's number.

These are the only texts a caller gets that no model wrote, and a caller in crisis gets nothing
else, so they are filled in and checked once at load: every language present, no unknown
placeholder left for the TTS to read out, and the helpline number really in every safe message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from inzwa_voice.safety.datafiles import LANGUAGES, SafetyDataError, read_mapping

PLACEHOLDER = "{helpline_number}"
FALLBACK_LANGUAGE = "en"


def template_language(language: str) -> str:
    """The template language for a declared call language: ``sn-ZW`` -> ``sn``, unknown -> ``en``."""
    primary = language.replace("_", "-").split("-")[0].strip().lower()
    return primary if primary in LANGUAGES else FALLBACK_LANGUAGE


@dataclass(frozen=True)
class Templates:
    """Filled-in texts by language; every language in ``LANGUAGES`` is present."""

    refusal: Mapping[str, str]
    safe_message: Mapping[str, str]


def load_templates(path: Path, helpline_number: str, safe_message: Mapping[str, str] | None = None) -> Templates:
    """Load ``{refusal: {lang: text}, safe_message: {lang: text}}``; ``safe_message`` overrides it."""
    data = read_mapping(path)
    for key in data:
        if key not in ("refusal", "safe_message"):
            raise SafetyDataError(f"{path}: unknown key {key!r} (expected refusal, safe_message)")
    refusal = _texts(data.get("refusal"), f"{path}: refusal", helpline_number, complete=True)
    safe = _texts(data.get("safe_message"), f"{path}: safe_message", helpline_number, complete=True, needs_number=True)
    if safe_message is not None:
        safe |= _texts(safe_message, "SafetyConfig.safe_message", helpline_number, needs_number=True)
    return Templates(refusal=refusal, safe_message=safe)


def _texts(
    value: object, where: str, number: str, *, complete: bool = False, needs_number: bool = False
) -> dict[str, str]:
    """Fill in the helpline number; ``complete`` wants every language, ``needs_number`` the number."""
    if not isinstance(value, Mapping):
        raise SafetyDataError(f"{where}: expected a mapping of language to text")
    texts: dict[str, str] = {}
    for language, text in value.items():
        entry = f"{where}.{language}"
        if language not in LANGUAGES:
            raise SafetyDataError(f"{entry}: unknown language (expected {', '.join(LANGUAGES)})")
        if not isinstance(text, str) or not text.strip():
            raise SafetyDataError(f"{entry}: expected non-empty text")
        filled = text.replace(PLACEHOLDER, number).strip()
        if "{" in filled or "}" in filled:
            raise SafetyDataError(f"{entry}: unknown placeholder; only {PLACEHOLDER} is filled in")
        if needs_number and number not in filled:
            raise SafetyDataError(f"{entry}: must contain {PLACEHOLDER}: it is how a caller in crisis reaches a person")
        texts[language] = filled
    missing = [language for language in LANGUAGES if language not in texts]
    if complete and missing:
        raise SafetyDataError(f"{where}: missing languages {', '.join(missing)}")
    return texts
