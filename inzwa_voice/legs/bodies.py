"""Request bodies read with a bound of their own, far under the app's upload limit.

The app accepts uploads up to ``max_upload_bytes`` (25 MiB) for the audio APIs; a route that
starts a call needs a few KiB (a Twilio form, an SDP offer). Such a route reads at most its own
bound, so an unauthenticated client cannot make the gateway buffer megabytes before the request
is refused.
"""

from __future__ import annotations

from aiohttp import web

from inzwa_voice.errors import ApiError


def too_large(limit: int) -> ApiError:
    return ApiError(
        f"request body is too large (this route takes at most {limit} bytes)",
        status=413,
        code="request_entity_too_large",
    )


async def read_bounded(request: web.Request, limit: int) -> bytes:
    """The whole body, or 413 as soon as it is known to exceed ``limit`` bytes (from its
    Content-Length before anything is read, or while a chunked body arrives)."""
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit)
    body = bytearray()
    async for chunk in request.content.iter_chunked(16 * 1024):
        body += chunk
        if len(body) > limit:
            raise too_large(limit)
    return bytes(body)
