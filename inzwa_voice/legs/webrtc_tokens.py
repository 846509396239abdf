"""Short-lived call tokens for the WebRTC leg: HMAC-SHA256 signed, expiring, stateless.

A web page must not hold the gateway's API key, so the helpline's own web server (which does)
asks ``POST /v1/webrtc/token`` for a token and hands it to the page, which presents it with its
SDP offer. A token is ``v1.<expiry unix seconds>.<signature>``: checking it needs no store, and
gateways configured with the same ``webrtc_token_secret`` accept each other's tokens. It is
not single-use; its short lifetime bounds what a leaked one is worth.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

_VERSION = "v1"


class TokenError(Exception):
    """A token the offer cannot be admitted with; ``code`` names why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class CallTokens:
    """Issues and checks tokens signed with one secret; ``secret=None`` draws a random one."""

    def __init__(self, secret: str | None, ttl_s: int) -> None:
        self._key = secret.encode() if secret is not None else secrets.token_bytes(32)
        self.ttl_s = ttl_s

    def _sign(self, expires: int) -> str:
        digest = hmac.new(self._key, f"{_VERSION}.{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def issue(self, now: float | None = None, ttl_s: int | None = None) -> str:
        """A token valid for ``ttl_s`` (default: the signer's lifetime)."""
        expires = int(time.time() if now is None else now) + (self.ttl_s if ttl_s is None else ttl_s)
        return f"{_VERSION}.{expires}.{self._sign(expires)}"

    def check(self, token: str | None, now: float | None = None) -> None:
        """Raise ``TokenError`` unless ``token`` is ours and has not expired."""
        if not token:
            raise TokenError("missing_token", "a call token from POST /v1/webrtc/token is required")
        version, _, rest = token.partition(".")
        expires, _, signature = rest.partition(".")
        # ``isdigit`` alone passes '²' and other digits ``int`` cannot read: ASCII digits only.
        if version != _VERSION or not (expires.isascii() and expires.isdigit()) or len(expires) > 12:
            raise TokenError("invalid_token", "the call token is malformed")
        if not hmac.compare_digest(signature.encode(), self._sign(int(expires)).encode()):
            raise TokenError("invalid_token", "the call token's signature is wrong")
        if int(expires) < (time.time() if now is None else now):
            raise TokenError("expired_token", "the call token has expired: ask for a new one")
