"""Phrases for TTS: the safety layer releases sentences; long ones are cut at commas.

The first audio of an answer should start as soon as possible, and a phrase is the unit the
TTS speaks and the session accounts for at barge-in, so a long sentence is split at a comma or
semicolon once it has ``min_chars``; a phrase never exceeds ``max_chars`` (cut at a space).
"""

from __future__ import annotations

import re

_CLAUSE_END = re.compile(r"(?<=[,;:])\s+")


def split_phrases(text: str, *, min_chars: int = 24, max_chars: int = 160) -> list[str]:
    phrases: list[str] = []
    current = ""
    for clause in _CLAUSE_END.split(text.strip()):
        current = f"{current} {clause}".strip() if current else clause
        if len(current) >= min_chars:
            phrases.extend(_cap(current, max_chars))
            current = ""
    if current:
        phrases.extend(_cap(current, max_chars))
    return [p for p in phrases if p.strip()]


def _cap(text: str, max_chars: int) -> list[str]:
    out = []
    while len(text) > max_chars:
        cut = text.rfind(" ", 0, max_chars)
        cut = cut if cut > 0 else max_chars
        out.append(text[:cut].strip())
        text = text[cut:].strip()
    if text:
        out.append(text)
    return out


def heard_text(phrases: list[tuple[str, int, int]], played: int) -> str:
    """What the caller heard of ``(text, first_frame, end_frame)`` phrases by frame ``played``.

    Fully played phrases count whole; the phrase in flight counts the share of its words that
    matches the share of its frames played.
    """
    heard = []
    for text, start, end in phrases:
        if played >= end:
            heard.append(text)
        elif played > start:
            words = text.split()
            share = (played - start) / max(1, end - start)
            heard.append(" ".join(words[: int(len(words) * share)]))
            break
        else:
            break
    return " ".join(h for h in heard if h)
