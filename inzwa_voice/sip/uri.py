"""The few pieces of SIP URIs the gateway reads: who calls, which number was dialled, where to.

pjsua2 hands over headers as text (``"Ann" <sip:+26377...@host;user=phone>;tag=x``); the
dialplan matches on bare user parts (``+26377...``), so these helpers cut them out. They are
lenient: a caller's odd header gives an empty or partial user, never an exception, because a
call must not fail on how a phone formats its From header.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote

MAX_USER: Final = 64
"""Longest user part kept: the dialplan matches numbers, not essays."""
_BRACKETED: Final = re.compile(r"<([^>]*)>")
_NUMBER: Final = re.compile(r"\+?[0-9]{2,20}")


def uri_user(header: str) -> str:
    """The user part of a SIP, SIPS or tel URI, from a bare URI or a whole header value."""
    bracketed = _BRACKETED.search(header)
    # Without <...>, everything after ';' is a header parameter (;tag=...), not the URI's.
    uri = bracketed.group(1) if bracketed else header.strip().split(";")[0]
    scheme, _, rest = uri.partition(":")
    scheme = scheme.strip().lower()
    if scheme == "tel":
        user = rest.split(";")[0]
    elif scheme in ("sip", "sips") and "@" in rest:
        user = rest.split("@")[0].split(";")[0].split(":")[0]  # user;params:password@host
    else:
        user = ""
    return unquote(user)[:MAX_USER]


def request_uri(message: str) -> str:
    """The Request-URI of a request's start line (``INVITE sip:+100@gw SIP/2.0``)."""
    parts = message.split("\n", 1)[0].split()
    return parts[1] if len(parts) == 3 else ""


def refer_uri(target: str) -> str:
    """A dialplan transfer target as a Refer-To URI: SIP and tel URIs as they are, a bare
    number as ``tel:`` (RFC 3966), which the transferee's phone or PBX routes as it dials."""
    return "tel:" + target if _NUMBER.fullmatch(target) else target
