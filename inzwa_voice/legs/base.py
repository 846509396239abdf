"""What the legs share beyond the ports: the protocol error they raise and one JSON reader.

The contract between a leg and its call lives in :mod:`inzwa_voice.conversation.ports` (the
``Leg`` a call plays through, the ``Call`` a leg drives, the ``CallStarter`` that admits it), and
the call types in :mod:`inzwa_voice.core`. This module holds only what every wire protocol needs.
"""

from __future__ import annotations

import json
from typing import Any

# WebSocket close code for a broken protocol (RFC 6455 leaves 4000-4999 to applications).
CLOSE_PROTOCOL = 4400


class ProtocolError(Exception):
    """The far end broke its wire protocol; ``code`` labels the error event and the metric,
    ``close_code`` is what a WebSocket leg closes with."""

    def __init__(self, code: str, message: str, close_code: int = CLOSE_PROTOCOL) -> None:
        super().__init__(message)
        self.code = code
        self.close_code = close_code


def json_object(text: str | bytes) -> dict[str, Any] | None:
    """``text`` parsed as a JSON object; None for anything else (not JSON, not UTF-8, an array,
    a number), including nesting too deep to parse: 64 KiB of ``[`` must not end a call."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None
