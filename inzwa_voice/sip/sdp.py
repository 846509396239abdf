"""Codec choice: a call gets our best codec the caller offers, whatever order the caller lists.

pjsua2 negotiates in the offerer's order (pjmedia's ``PREFER_REMOTE_CODEC_ORDER``, fixed at
build time), so codec priorities alone only order our own offers: a phone offering
``PCMU G722`` would get narrowband PCMU. Wideband G.722 carries the 4-7 kHz band that
telephone audio cuts off, which Whisper hears the difference of, so before pjsua2 answers an
offer we narrow our answer SDP to the best shared codec (plus ``telephone-event`` for RFC 4733
DTMF), and the negotiation can only pick it. No shared codec: the SDP is left alone and pjsua2
answers ``488 Not Acceptable Here``.

This build has no Opus; G.722, PCMU and PCMA are the codecs the gateway takes (priorities in
:data:`CODEC_PRIORITIES`), every other codec it ships is disabled.
"""

from __future__ import annotations

from typing import Final

PREFERENCE: Final = ("G722", "PCMU", "PCMA")
"""Encoding names as SDP writes them, best first."""
CODEC_PRIORITIES: Final = {"G722/16000/1": 255, "PCMU/8000/1": 254, "PCMA/8000/1": 253}
"""pjsua2 codec ids and their priorities; any codec not named here gets 0 (disabled)."""
DTMF_EVENT: Final = "TELEPHONE-EVENT"

_STATIC: Final = {"0": "PCMU", "8": "PCMA", "9": "G722"}
"""RFC 3551 static payload types an offer may use without an ``a=rtpmap`` line."""
_PER_FORMAT: Final = ("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:")


def _audio_section(lines: list[str]) -> tuple[int, int] | None:
    """Line range [m=audio, next m=) of the first audio stream."""
    start = next((i for i, line in enumerate(lines) if line.startswith("m=audio ")), None)
    if start is None:
        return None
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("m=")), len(lines))
    return start, end


def _formats(lines: list[str]) -> dict[str, str]:
    """Payload type -> upper-case encoding name of the first audio stream, in m= line order."""
    section = _audio_section(lines)
    if section is None:
        return {}
    start, end = section
    names = {}
    for line in lines[start + 1 : end]:
        if line.startswith("a=rtpmap:"):
            payload_type, _, encoding = line[len("a=rtpmap:") :].partition(" ")
            names[payload_type] = encoding.split("/")[0].upper()
    return {pt: names.get(pt, _STATIC.get(pt, "")) for pt in lines[start].split()[3:]}


def best_codec(offer: str) -> str | None:
    """The encoding name we would pick from an SDP offer, or None when it has none of ours."""
    offered = set(_formats(offer.splitlines()).values())
    return next((name for name in PREFERENCE if name in offered), None)


def narrow_answer(local: str, offer: str) -> str | None:
    """Our SDP cut down to the best codec the offer shares, or None when there is nothing to cut.

    Keeps the line ending pjsua2 uses (CRLF) and every line that is not about a dropped payload
    type, so the SDP stays exactly what pjsua2 made apart from the codec list.
    """
    chosen = best_codec(offer)
    lines = local.split("\r\n")
    section = _audio_section(lines)
    if chosen is None or section is None:
        return None
    start, end = section
    keep = [pt for pt, name in _formats(lines).items() if name in (chosen, DTMF_EVENT)]
    media = lines[start].split()
    if not keep or media[3:] == keep:
        return None

    def wanted(line: str) -> bool:
        prefix = next((p for p in _PER_FORMAT if line.startswith(p)), None)
        return prefix is None or line[len(prefix) :].split(" ")[0] in (*keep, "*")

    body = [line for line in lines[start + 1 : end] if wanted(line)]
    return "\r\n".join([*lines[:start], " ".join(media[:3] + keep), *body, *lines[end:]])
